"""Which device a run uses, and the on/off/auto switches that depend on it (bf16 autocast, channels_last)."""
from __future__ import annotations

import contextlib

import torch

from trainables.config import TrainConfig
from trainables.errors import GentuneError


def resolve_device(name: str = "auto", what: str = "device") -> torch.device:
    """auto = CUDA where there is one; `what` names the setting in errors (device=..., --device)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GentuneError(f"{what} {name} was asked for but CUDA is not available; use auto or cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise GentuneError(f"{what} {name!r} is not a torch device (cpu, cuda, cuda:1, auto)") from None


def flag(value: str, device: torch.device) -> bool:
    """Resolve an auto/on/off switch: auto = on for CUDA only."""
    return value == "on" or (value == "auto" and device.type == "cuda")


def autocast(cfg: TrainConfig, device: torch.device):
    if flag(cfg.amp, device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
