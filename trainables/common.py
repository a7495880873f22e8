"""Pieces the three trainers share: device placement, optimizers, evaluation-time helpers."""
from __future__ import annotations

import torch
from torch import nn

from trainables.config import TrainConfig
from trainables.data import ImageSet, load_split
from trainables.device import flag, resolve_device


class Base:
    """Device, bf16 autocast and channels_last switches, and the shared data loading."""

    family = ""

    def __init__(self, cfg: TrainConfig, quiet: bool = False) -> None:
        self.cfg, self.quiet = cfg, quiet
        self.device = resolve_device(cfg.device)
        self.channels_last = flag(cfg.channels_last, self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.cuda.reset_peak_memory_stats(self.device)

    def data(self, dc, split: str, size: int, kind: str) -> ImageSet:
        return load_split(dc, split, size, kind, self.cfg.cache_dir, quiet=self.quiet).to(self.device)

    def place(self, *modules: nn.Module) -> None:
        for m in modules:
            m.to(self.device)
            if self.channels_last:
                m.to(memory_format=torch.channels_last)

    def prep(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def adam(self, params, lr: float, betas=(0.9, 0.999)) -> torch.optim.Optimizer:
        # fused Adam where the device has it (CUDA, and CPU in torch >= 2.4): one kernel per step instead of
        # several per tensor (GAN A's step on one CPU thread: 10 ms instead of 63 ms of optimizer time)
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=fused_available(self.device))

    def sgd(self, params, lr: float, momentum: float) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=lr, momentum=momentum, fused=fused_available(self.device))

    def stop_reason(self, metrics: dict[str, float]) -> str | None:
        return None

    def sample_grid(self) -> torch.Tensor | None:
        return None


def fused_available(device: torch.device) -> bool:
    """Whether torch has fused optimizer kernels for this device type."""
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices

        return device.type in _get_fused_kernels_supported_devices()
    except ImportError:  # older torch: CUDA only
        return device.type == "cuda"


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for the weights; buffers (BatchNorm statistics) copied."""
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay)
    for eb, b in zip(ema.buffers(), model.buffers()):
        eb.copy_(b)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8 [0, 255]."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


@torch.no_grad()
def accuracy(model: nn.Module, images: ImageSet, batch: int = 512, prep=lambda x: x) -> float:
    """Top-1 accuracy of `model` on a labelled ImageSet (eval mode, restored afterwards)."""
    was = model.training
    model.eval()
    correct = 0
    for i in range(0, len(images), batch):
        idx = torch.arange(i, min(i + batch, len(images)), device=images.images.device)
        correct += int((model(prep(images.batch(idx))).argmax(1) == images.labels[idx]).sum())
    model.train(was)
    return correct / len(images)
