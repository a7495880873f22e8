"""The embedded demo data: real images that ship with scikit-learn and scikit-image, no download.

- digits: scikit-learn's 1,797 real handwritten 8x8 digits, rendered into three domains that
  mimic MNIST-M (digit |minus| colour photo patch, Ganin's recipe), USPS (grey, digit fills a
  16x16 frame) and SVHN (coloured 32x32 crops with neighbouring digits and blur);
- faces: the 100 real face crops of scikit-image's `lfw_subset` (25x25 grey).
Small and named as demo data wherever used; not a stand-in for the report's datasets.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from trainables.errors import DataError
from trainables.formats import mnistm_blend

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    """(N,h,w) float in [0,1] -> (N,size,size) float, bilinear."""
    t = torch.from_numpy(x).float()[:, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[:, 0].clamp(0, 1).numpy()


@lru_cache(maxsize=1)
def _base_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def _split(n: int, split: str, seed: int) -> np.ndarray:
    perm = np.random.default_rng(seed).permutation(n)
    cut = int(0.8 * n)
    return np.sort(perm[:cut] if split == "train" else perm[cut:])


def photos() -> list[np.ndarray]:
    import skimage.data

    return [getattr(skimage.data, name)()[..., :3] for name in PHOTOS]


def _svhn(base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N,8,8) -> coloured 32x32 house-number-like crops: digit 24px tall, neighbours at the edges."""
    n = len(base)
    big = _resize(base, 24)  # (N,24,24)
    canvas = np.zeros((n, 32, 48), np.float32)
    canvas[:, 4:28, 12:36] = big
    others = big[rng.permutation(n)]
    canvas[:, 4:28, 0:12] = np.maximum(canvas[:, 4:28, 0:12], others[:, :, 12:])  # left neighbour's right half
    others = big[rng.permutation(n)]
    canvas[:, 4:28, 36:48] = np.maximum(canvas[:, 4:28, 36:48], others[:, :, :12])
    shift = rng.integers(-3, 4, size=n)
    crops = np.stack([canvas[i, :, 8 + s : 40 + s] for i, s in enumerate(shift)])  # (N,32,32)
    crops = F.avg_pool2d(torch.from_numpy(crops)[:, None], 3, 1, 1)[:, 0].numpy()  # blur
    bg = rng.uniform(0, 1, (n, 1, 1, 3)).astype(np.float32)
    fg = np.clip(1 - bg + rng.normal(0, 0.15, (n, 1, 1, 3)), 0, 1).astype(np.float32)
    img = bg * (1 - crops[..., None]) + fg * crops[..., None] + rng.normal(0, 0.04, (n, 32, 32, 3))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


@lru_cache(maxsize=8)
def digits(domain: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N,H,W,3), labels) of a demo digit domain: mnistm (28px), usps (16px), svhn (32px)."""
    base, labels = _base_digits()
    seed = {"mnistm": 1, "usps": 2, "svhn": 3}.get(domain)
    if seed is None:
        raise DataError(f"unknown demo digit domain {domain!r}; expected mnistm, usps or svhn")
    idx = _split(len(base), split, seed)
    rng = np.random.default_rng(100 * seed + (split == "train"))
    x = base[idx]
    if domain == "mnistm":
        g = np.zeros((len(x), 28, 28), np.float32)
        g[:, 4:24, 4:24] = _resize(x, 20)  # MNIST: digit in a 20x20 box centred in 28x28
        imgs = mnistm_blend((g * 255).astype(np.uint8), photos(), rng)
    elif domain == "usps":
        grey = (_resize(x, 16) * 255).astype(np.uint8)
        imgs = np.repeat(grey[..., None], 3, axis=-1)
    else:
        imgs = _svhn(x, rng)
    return imgs, labels[idx]


def faces() -> tuple[np.ndarray, None]:
    """The 100 real faces of scikit-image's lfw_subset, 25x25 grey -> RGB uint8 (resized by the caller)."""
    import skimage.data

    lfw = skimage.data.lfw_subset()[:100]  # the first 100 of its 200 images are faces
    grey = (np.clip(lfw, 0, 1) * 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1), None
