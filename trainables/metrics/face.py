"""Face rate: the share of images in which dlib's HOG frontal face detector finds exactly one face.

This is the report's grader rule: `dlib.get_frontal_face_detector()` run with one upsampling
step; an image counts only if exactly one face is found (zero or two or more do not count).
dlib-bin ships the detector's model inside the library, so no model file is needed.
"""
from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image

from trainables.errors import DataError
from trainables.files import IMAGE_SUFFIXES, image_files

__all__ = ["UPSAMPLE", "face_count", "single_face_count", "face_rate", "face_rate_folder"]

#: The grader's setting: upsample the image once before detection (finds faces down to ~40 px).
UPSAMPLE = 1

_detector: Any = None
_detector_lock = threading.Lock()


def _get_detector() -> Any:
    """The process-wide dlib detector, created on first use (creating one takes ~50 ms)."""
    global _detector
    if _detector is None:
        with _detector_lock:
            if _detector is None:
                import dlib  # imported lazily: only this metric needs it

                _detector = dlib.get_frontal_face_detector()
    return _detector


def face_count(img: np.ndarray) -> int:
    """Number of faces dlib's frontal detector (upsample 1) finds in one HxWx3 (or HxW) uint8 image."""
    a = np.asarray(img)
    if a.dtype != np.uint8:
        raise ValueError(f"face_count needs uint8 pixels, got {a.dtype} (scale [0, 1] floats by 255 and round)")
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
        raise ValueError(f"face_count needs an HxWx3 or HxW image, got shape {a.shape}")
    return len(_get_detector()(np.ascontiguousarray(a), UPSAMPLE))


def _as_hwc_images(images: Iterable[np.ndarray] | torch.Tensor | np.ndarray) -> Iterable[np.ndarray]:
    """A torch (N, 3, H, W) uint8 tensor becomes N HxWx3 arrays; other iterables pass through."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"a tensor of images must be (N, 3, H, W), got {tuple(images.shape)}")
        return images.detach().cpu().permute(0, 2, 3, 1).numpy()
    return images


def single_face_count(images: Iterable[np.ndarray] | torch.Tensor) -> tuple[int, int]:
    """(images with exactly one face, images seen)."""
    single = total = 0
    for img in _as_hwc_images(images):
        single += face_count(img) == 1
        total += 1
    return single, total


def face_rate(images: Iterable[np.ndarray] | torch.Tensor) -> float:
    """Share of `images` (HxWx3 uint8 arrays, or a (N, 3, H, W) uint8 tensor) with exactly one face."""
    single, total = single_face_count(images)
    if total == 0:
        raise ValueError("face_rate of no images is undefined")
    return single / total


def face_rate_folder(directory: Union[str, Path]) -> tuple[float, int, int]:
    """(rate, images with exactly one face, images) over the image files of `directory` (non-recursive)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"image folder {directory} does not exist")
    files = image_files(directory)
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {directory}")

    def read(path: Path) -> np.ndarray:
        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"), dtype=np.uint8)
        except Exception as e:
            raise DataError(f"cannot read image {path}: {e}") from e

    single, total = single_face_count(read(f) for f in files)
    return single / total, single, total
