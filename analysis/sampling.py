"""Images from a family's models, one function for bundles and checkpoints (`gentune generate`, the
report's samples), and the PNG grid they are saved as.

A family makes images when its trainer has the static `sample_plan` and `sample_images` (GAN, DDPM), and
labels when it has `classify_images` (DANN); SAMPLE_OPTIONS names its `gentune generate` options beyond
--n and --seed, DEFAULT_N its default --n.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainables.errors import GentuneError

MAX_IMAGES = 10000  # per `gentune generate`: one PNG grid (DDPM: 10000 x T network steps, hours on a CPU)


def log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def sampler_of(family: str):
    """The family's trainer class when it makes images, else a GentuneError saying what it does instead."""
    from trainables.families import trainer_class

    cls = trainer_class(family)
    if not hasattr(cls, "sample_images"):
        instead = "; use `gentune predict` for its bundles" if hasattr(cls, "classify_images") else ""
        raise GentuneError(f"a {family} model does not generate images{instead}")
    return cls


def image_families() -> tuple[str, ...]:
    from trainables.families import known, trainer_class

    return tuple(f for f in known() if hasattr(trainer_class(f), "sample_images"))


def check_sampling_args(family: str, n: int | None, options: dict[str, Any]) -> int:
    """The number of images to make, after refusing what cannot be sampled (before any model work)."""
    cls = sampler_of(family)
    n = int(getattr(cls, "DEFAULT_N", 100)) if n is None else int(n)
    if n < 1:
        raise GentuneError(f"--n must be >= 1, got {n}")
    if n > MAX_IMAGES:
        raise GentuneError(f"--n {n} is more than {MAX_IMAGES} images for one PNG grid; run generate several times "
                           "with different --seed values instead")
    takes = getattr(cls, "SAMPLE_OPTIONS", ())
    for opt, v in options.items():
        if v is not None and opt not in takes:
            users = [f for f in image_families() if opt in getattr(sampler_of(f), "SAMPLE_OPTIONS", ())]
            raise GentuneError(f"--{opt} is for {' or '.join(u.upper() for u in users) or 'other'} bundles only; "
                               f"this is a {family} bundle")
    return n


def grid_size(n: int, nrow: int, h: int, w: int, padding: int = 2) -> tuple[int, int]:
    """(width, height) in pixels of `image_grid` of n images of h x w, nrow per row."""
    cols = min(nrow, n)
    return cols * (w + padding) + padding, math.ceil(n / cols) * (h + padding) + padding


def fmt_seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.0f} min" if s < 5400 else f"{s / 3600:.1f} h"


class _Progress:
    """'k/n images, about X left' on stderr, at most every `every` seconds (none when quiet)."""

    def __init__(self, n: int, quiet: bool, every: float = 10.0) -> None:
        self.n, self.quiet, self.every = n, quiet, every
        self.t0 = self.last = time.perf_counter()

    def step(self, done: int) -> None:
        now = time.perf_counter()
        if self.quiet or done >= self.n or now - self.last < self.every:
            return
        self.last = now
        left = (now - self.t0) / done * (self.n - done)
        log(f"gentune: {done}/{self.n} images in {fmt_seconds(now - self.t0)}, about {fmt_seconds(left)} left", False)


@torch.no_grad()
def generate_images(family: str, cfg, models: dict[str, nn.Module], *, n: int | None = None, seed: int = 0,
                    metrics: dict[str, float] | None = None, device: torch.device | str = "cpu",
                    keep_at: tuple[int, ...] = (), quiet: bool = True,
                    **options: Any) -> tuple[torch.Tensor, dict[int, torch.Tensor], dict[str, Any]]:
    """Images in [-1, 1] (N,3,H,W) on the CPU, the x_t kept at `keep_at` (DDPM), and what was used (n, seed, nrow,
    and the family's own: the DDPM's w and labels). `options`: the family's SAMPLE_OPTIONS (DDPM: digit, guidance).
    Unless quiet, says on stderr how many images, the grid's size and (where the family estimates it) the time
    first, then progress every 10 s."""
    device = torch.device(device)
    n = check_sampling_args(family, n, options)
    cls = sampler_of(family)
    plan = cls.sample_plan(cfg, models, n, options, metrics, device, estimate=not quiet)
    about = f", about {fmt_seconds(plan['seconds'])}" if "seconds" in plan else ""
    log(f"gentune: {plan['verb']} {n} {plan['what']} on {device} "
        f"(grid {'x'.join(map(str, grid_size(n, plan['nrow'], *plan['size'])))} px{about}) ...",
        quiet or n < plan.get("announce_from", 0))
    progress = _Progress(n, quiet)
    x, kept = cls.sample_images(cfg, models, plan, seed, device, keep_at=keep_at, progress=progress.step)
    used = {k: v for k, v in plan.items() if k not in ("size", "verb", "what", "announce_from", "seconds")}
    return x, kept, {**used, "seed": seed}


def image_grid(x: torch.Tensor, nrow: int) -> torch.Tensor:
    """[-1, 1] images (N,3,H,W) -> uint8 grid (3,H',W') with 2-pixel white padding."""
    import torchvision.utils as vutils

    from trainables.common import to_uint8

    return to_uint8(vutils.make_grid(x.float().cpu(), nrow=nrow, padding=2, pad_value=1))


def save_png(grid_u8: torch.Tensor, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid_u8.permute(1, 2, 0).numpy()).save(path)
