"""Datasets as uint8 tensors: decoded once into a cache file keyed by their source, then moved to
the training device and sampled by index there (no DataLoader in the hot loop).

Sources: the embedded demo data (no download), the report's folder layout, and torchvision's /
the original distributions' file formats (readers in trainables.formats).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trainables.files import IMAGE_SUFFIXES, atomic_open
from trainables.errors import DataError
from trainables.config import DataConfig

CACHE_VERSION = 1
DIGIT_DOMAINS = ("mnistm", "usps", "svhn")


@dataclass
class ImageSet:
    """images: uint8 (N,3,H,W); labels: int64 (N,) or None; fingerprint: hash of the contents."""

    images: torch.Tensor
    labels: torch.Tensor | None
    fingerprint: str
    name: str

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str) -> "ImageSet":
        labels = None if self.labels is None else self.labels.to(device)
        return ImageSet(self.images.to(device), labels, self.fingerprint, self.name)

    def subset(self, idx: torch.Tensor, tag: str = "subset") -> "ImageSet":
        idx = idx.to(self.images.device)
        labels = None if self.labels is None else self.labels[idx]
        return ImageSet(self.images[idx], labels, f"{self.fingerprint}:{tag}", f"{self.name}[{tag}]")

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        """Float images in [-1, 1] for the given indices (on the set's device)."""
        return self.images[idx].float().div_(127.5).sub_(1.0)


def epoch_steps(n: int, batch_size: int, steps: int) -> int:
    """How many batches `batches` yields in an epoch: `steps`, or one pass (at least one batch) when 0."""
    return steps or max(1, n // min(batch_size, n))


def batches(n: int, batch_size: int, steps: int, device: torch.device | str, generator: torch.Generator | None = None):
    """Index tensors for one epoch: a fresh permutation, `steps` batches (0 = one pass, last partial dropped
    unless it is the only one). Permutations repeat when steps exceed one pass."""
    bs = min(batch_size, n)
    per_pass = max(1, n // bs)
    total = epoch_steps(n, batch_size, steps)
    done = 0
    while done < total:
        perm = torch.randperm(n, device=device, generator=generator)
        for i in range(min(per_pass, total - done)):
            yield perm[i * bs : (i + 1) * bs]
            done += 1


def cache_root(cache_dir: str = "") -> Path:
    root = Path(cache_dir or os.environ.get("GENTUNE_CACHE") or Path.home() / ".cache" / "gentune")
    root.mkdir(parents=True, exist_ok=True)
    return root


def _source_stamp(root: str) -> list:
    """Cheap identity of a data source: every folder (entry count, mtime) and every non-image file
    (size, mtime) under it, so added/removed images and edited CSV/label files invalidate the cache.
    An image rewritten in place under the same name is not noticed (its folder's mtime stays)."""
    p = Path(root).expanduser().resolve()
    if not p.exists():
        raise DataError(f"dataset folder {p} does not exist")
    if p.is_file():
        return [(str(p), p.stat().st_size, p.stat().st_mtime_ns)]
    out = []
    for d, dirs, files in os.walk(p):
        dirs.sort()
        out.append((d, len(files), os.stat(d).st_mtime_ns))
        for f in sorted(files):
            if not f.lower().endswith(IMAGE_SUFFIXES):
                st = os.stat(os.path.join(d, f))
                out.append((os.path.join(d, f), st.st_size, st.st_mtime_ns))
    return out


def content_fingerprint(images: torch.Tensor, labels: torch.Tensor | None) -> str:
    h = hashlib.sha256(images.contiguous().numpy().tobytes())
    if labels is not None:
        h.update(labels.numpy().tobytes())
    return h.hexdigest()[:16]


def _to_tensor(images: np.ndarray, size: int) -> torch.Tensor:
    """(N,H,W,3) uint8 -> (N,3,size,size) uint8, resized with antialiased bilinear when needed."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    if x.shape[-1] == size and x.shape[-2] == size:
        return x.contiguous()
    out = []
    for chunk in x.split(4096):
        y = F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(y.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


def _read(dc: DataConfig, split: str, kind: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode one split from its source. kind is 'faces' or 'digits'."""
    train = split == "train"
    if dc.source == "demo":
        from trainables import demo

        return demo.faces() if kind == "faces" else demo.digits(dc.domain or "mnistm", split)
    from trainables import formats

    if not dc.root:
        raise DataError(f"data source {dc.source!r} needs data.root (the dataset folder)")
    root = Path(dc.root).expanduser()
    if not root.exists():
        raise DataError(f"dataset folder {root} does not exist (data.root for source {dc.source!r})")
    if dc.source == "report":
        if kind == "faces":
            return formats.read_report_faces(root, "train" if train else "val")
        if dc.domain not in DIGIT_DOMAINS and not (root / "digits" / dc.domain).exists():
            raise DataError(f"data.domain {dc.domain!r} not found under {root / 'digits'}")
        return formats.read_report_digits(root, dc.domain, "train" if train else "val")
    if dc.source == "folder":
        return formats.read_image_folder(root), None
    if dc.source == "celeba":
        return formats.read_celeba(root, "train" if train else "val", limit=dc.limit or None)
    reader = {"mnist": formats.read_mnist, "mnistm": formats.read_mnistm, "svhn": formats.read_svhn, "usps": formats.read_usps}
    return reader[dc.source](root, "train" if train else "test")


def read_cache(path: Path, size: int, kind: str) -> tuple[tuple | None, str]:
    """((images, labels, fingerprint), "") of a cache file if it holds what load_split wrote: uint8 images
    (N, 3, size, size), int64 labels 0-9 (N,) for digits (none for faces), and the fingerprint of exactly that
    content (so an edited or torn entry is caught); else (None, what is wrong)."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any undecodable cache file is rebuilt, with a line saying why
        return None, f"unreadable ({str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__})"
    if not isinstance(blob, dict) or set(blob) != {"images", "labels", "fingerprint"}:
        return None, "expected the keys images, labels, fingerprint"
    x, y, fp = blob["images"], blob["labels"], blob["fingerprint"]
    if not (isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and x.ndim == 4 and tuple(x.shape[1:]) == (3, size, size)
            and len(x) > 0):
        return None, f"expected images as uint8 (N, 3, {size}, {size})"
    if kind == "digits":
        if not (isinstance(y, torch.Tensor) and y.dtype == torch.int64 and tuple(y.shape) == (len(x),)):
            return None, f"expected {len(x)} int64 labels"
        if len(y) and (int(y.min()) < 0 or int(y.max()) > 9):
            return None, "expected labels 0-9"
    elif y is not None:
        return None, "expected no labels"
    if not isinstance(fp, str) or fp != content_fingerprint(x, y):
        return None, "its content does not match its fingerprint (damaged or edited)"
    return (x, y, fp), ""


def load_split(dc: DataConfig, split: str, size: int, kind: str, cache_dir: str = "", quiet: bool = False) -> ImageSet:
    """The split ('train' or 'val') of a dataset at size x size RGB, from the cache when it is there."""
    key = {
        "v": CACHE_VERSION, "source": dc.source, "domain": dc.domain, "limit": dc.limit, "split": split,
        "size": size, "kind": kind, "stamp": _source_stamp(dc.root) if dc.root else [],
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    name = f"{dc.source}-{dc.domain or kind}-{split}-{size}"
    path = cache_root(cache_dir) / "datasets" / f"{name}-{digest}.pt"
    if path.is_dir():
        raise DataError(f"dataset cache entry {path} is a folder, expected a cache file; remove it to rebuild it")
    if path.exists():
        cached, why = read_cache(path, size, kind)
        if cached is not None:
            return ImageSet(*cached, name)
        print(f"gentune: rebuilding the dataset cache entry {path}: {why}", file=sys.stderr)
    if not quiet:
        print(f"gentune: decoding {name} into the cache {path.parent} ...", file=sys.stderr)
    images, labels = _read(dc, split, kind)
    if len(images) == 0:
        raise DataError(f"the {split} split of {dc.source} data {dc.root or dc.domain!r} is empty")
    if dc.limit:
        images, labels = images[: dc.limit], None if labels is None else labels[: dc.limit]
    if kind == "digits":
        if labels is None:
            raise DataError(f"{name}: digit data needs labels")
        bad = labels[(labels < 0) | (labels > 9)]
        if len(bad):
            raise DataError(f"{name}: label {int(bad[0])} is outside 0-9")
    h, w = images.shape[1:3]
    if min(h, w) * 4 < size:  # more than 4x upscaling would feed the model mostly interpolation
        raise DataError(f"{name}: images are {h}x{w}, too small for this model's {size}x{size} input (need at least {size // 4}x{size // 4})")
    x = _to_tensor(images, size)
    y = None if labels is None else torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    fp = content_fingerprint(x, y)
    with atomic_open(path) as f:
        torch.save({"images": x, "labels": y, "fingerprint": fp}, f)
    if not quiet:
        print(f"gentune: cached {len(x)} images of {name} ({fp})", file=sys.stderr)
    return ImageSet(x, y, fp, name)
