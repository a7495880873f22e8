"""Differentiable augmentation for data-efficient GANs (Zhao et al. 2020, "Differentiable Augmentation
for Data-Efficient GAN Training", policy color,translation,cutout), written after the authors' PyTorch code.

Applied to real and generated batches alike, in the discriminator's step and in the generator's, so
D never sees an un-augmented image and G's gradient flows through the same transform. Every op is
differentiable with respect to the image (random parameters are drawn, not learned). Images are in
[-1, 1] and stay there: colour changes are clamped, translation pads and cutout fills with 0 (grey).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

def _rand(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    """One uniform [0, 1) number per image, shaped (N, 1, 1, 1)."""
    return torch.rand(x.shape[0], 1, 1, 1, generator=g, device=x.device, dtype=x.dtype)


def color(x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
    """Random brightness (+-0.5), saturation (x0-2 around the pixel's grey) and contrast (x0.5-1.5 around the mean)."""
    x = x + (_rand(x, g) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_rand(x, g) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * (_rand(x, g) + 0.5) + mean
    return x.clamp(-1, 1)


def translation(x: torch.Tensor, ratio: float = 0.125, g: torch.Generator | None = None) -> torch.Tensor:
    """Shift each image by up to ratio * size pixels in x and y, filling with 0 (a gather: differentiable)."""
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sh, sh + 1, (n, 1, 1), generator=g, device=x.device)
    dx = torch.randint(-sw, sw + 1, (n, 1, 1), generator=g, device=x.device)
    gy = (torch.arange(h, device=x.device).view(1, h, 1) + dy + 1).clamp(0, h + 1)  # +1: index into the 1-pixel pad
    gx = (torch.arange(w, device=x.device).view(1, 1, w) + dx + 1).clamp(0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1])  # (N, C, H+2, W+2): out-of-image indices land on the zero border
    b = torch.arange(n, device=x.device).view(n, 1, 1)
    return padded.permute(0, 2, 3, 1)[b, gy, gx].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, ratio: float = 0.5, g: torch.Generator | None = None) -> torch.Tensor:
    """Zero one square of ratio * size per image, centred anywhere in the image (clipped at the border)."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), generator=g, device=x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), generator=g, device=x.device)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (ys >= cy - ch // 2) & (ys < cy - ch // 2 + ch) & (xs >= cx - cw // 2) & (xs < cx - cw // 2 + cw)
    return x * (~inside).unsqueeze(1).to(x.dtype)


OPS = {"color": color, "translation": translation, "cutout": cutout}  # in the paper's order


def diff_augment(x: torch.Tensor, policy: tuple[str, ...], g: torch.Generator | None = None) -> torch.Tensor:
    """Apply the policy's ops in the paper's order (color, translation, cutout); () returns x unchanged
    and draws no random numbers."""
    unknown = set(policy) - OPS.keys()
    if unknown:
        raise ValueError(f"unknown augmentation op(s) {sorted(unknown)}; known: {', '.join(OPS)}")
    for name, op in OPS.items():
        if name in policy:
            x = op(x, g=g)
    return x
