"""Pure readers of the real dataset formats gentune accepts, returning numpy arrays.

Every dataset reader returns ``(images, labels)``:

* ``images``: uint8 array of shape (N, H, W, 3), RGB at the source's native size (grey sources are
  replicated to 3 channels, nothing is resized);
* ``labels``: int64 array of shape (N,) with digits 0..9, or None for unlabeled data (faces).

Any bad input (missing file or folder, undecodable image, malformed header, label out of range...)
raises :class:`trainables.errors.DataError` with a one-line message naming the file and what was
expected. Writing is limited to :func:`build_mnistm`.

USPS is read by torchvision's own ``USPS``. The others are not, for one reason each:
MNIST: torchvision's ``MNIST(download=False)`` wants all four unpacked files under ``root/MNIST/raw``,
this reads one split from the ``.gz`` files as downloaded. SVHN: torchvision's ``SVHN`` refuses any
``.mat`` whose md5 is not the official file's (a subset or a re-save); the read is the same scipy call.
CelebA: torchvision's ``CelebA`` needs all five annotation files, this only the partition list.
MNIST-M and the report's ``digits/``/``face/`` layout: torchvision has no reader.
"""
from __future__ import annotations

import bz2
import csv
import gzip
import math
import os
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from trainables.errors import DataError
from trainables.filecheck import duplicates, show
from trainables.files import image_files

PathLike = str | os.PathLike


# ----------------------------------------------------------------------------------------- helpers

def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


def _check_split(split: str, allowed: Sequence[str], what: str) -> None:
    if split not in allowed:
        raise DataError(f"{what} split must be one of {', '.join(allowed)}, got {split!r}")


def _require_dir(folder: Path, what: str = "folder") -> None:
    if not folder.is_dir():
        raise DataError(f"{what} {folder} does not exist" if not folder.exists()
                        else f"{what} {folder} is not a folder")


def _require_file(path: Path, what: str = "file") -> None:
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist" if not path.exists()
                        else f"{what} {path} is not a file")


def _decode(path: Path) -> np.ndarray:
    """Decode one image file to an (H, W, 3) uint8 RGB array, or raise DataError naming it."""
    kind = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}.get(path.suffix.lower(), "image")
    if not path.is_file():
        raise DataError(f"image {path} does not exist")
    try:
        with Image.open(path) as img:
            img.load()  # decode now, so that a truncated file is detected here
            rgb = img.convert("RGB")
        return np.asarray(rgb, dtype=np.uint8)
    except Exception as e:  # PIL raises OSError, UnidentifiedImageError, SyntaxError, zlib.error...
        reason = _one_line(e)
        if "truncated" in reason.lower():
            reason = f"truncated ({reason})"
        raise DataError(f"cannot decode {kind} {path}: {reason}") from None


def _list_images(folder: Path) -> list[str]:
    return [p.name for p in image_files(folder)]


def _read_text(path: Path, what: str) -> list[str]:
    _require_file(path, what)
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {what} {path}: {_one_line(e)}") from None


def _parse_label(text: str, where: str) -> int:
    try:
        label = int(text.strip())
    except ValueError:
        raise DataError(f"label {text.strip()!r} in {where} is not an integer (expected a digit 0-9)") from None
    if not 0 <= label <= 9:
        raise DataError(f"label {label} in {where} is outside 0-9")
    return label


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=-1))


# ------------------------------------------------------------------------------------ image folders

def read_image_folder(folder: PathLike, names: Sequence[str] | None = None) -> np.ndarray:
    """Read a folder of images into a uint8 (N, H, W, 3) RGB array.

    Without ``names``: every image file in ``folder`` (trainables.files.IMAGE_SUFFIXES), sorted by name.
    With ``names``: exactly those files of ``folder``, in that order. All images must share one
    size; an empty selection, a missing file or an undecodable image raises DataError.
    """
    folder = Path(folder)
    _require_dir(folder, "image folder")
    if names is None:
        names = _list_images(folder)
        if not names:
            raise DataError(f"image folder {folder} has no image files (.png, .jpg, ...)")
    elif len(names) == 0:
        raise DataError(f"no images selected from {folder}")
    images: np.ndarray | None = None
    first = ""
    for i, name in enumerate(names):
        path = folder / name
        if not path.is_file():
            raise DataError(f"image {name} does not exist in {folder}")
        arr = _decode(path)
        if images is None:
            images = np.empty((len(names), *arr.shape), dtype=np.uint8)
            first = name
        elif arr.shape != images.shape[1:]:
            h, w = arr.shape[:2]
            fh, fw = images.shape[1:3]
            raise DataError(f"image {path} is {h}x{w} (HxW) but {folder / first} is {fh}x{fw}; "
                            f"all images in {folder} must share one size")
        images[i] = arr
    assert images is not None
    return images


def read_photos(folder: PathLike) -> list[np.ndarray]:
    """Read every image file in ``folder`` (sorted by name) as a list of
    (H, W, 3) uint8 RGB arrays of any sizes, e.g. the BSDS500 photos for :func:`build_mnistm`."""
    folder = Path(folder)
    _require_dir(folder, "photo folder")
    names = _list_images(folder)
    if not names:
        raise DataError(f"photo folder {folder} has no image files (.png, .jpg, ...)")
    return [_decode(folder / n) for n in names]


# ----------------------------------------------------------------------------------- report layout

def read_report_faces(root: PathLike, split: str) -> tuple[np.ndarray, None]:
    """The report's face layout: ``root/face/{train,val}/*.png`` (``root`` may also be the ``face``
    folder itself). Returns (images, None)."""
    _check_split(split, ("train", "val"), "face")
    root = Path(root)
    _require_dir(root, "dataset folder")
    base = root / "face" if (root / "face").is_dir() else root
    if base is root and not any((root / s).is_dir() for s in ("train", "val")):
        raise DataError(f"{root} has no face/ folder (expected {root}/face/{{train,val}}/*.png)")
    folder = base / split
    _require_dir(folder, "face split folder")
    return read_image_folder(folder), None


def read_report_digits(root: PathLike, domain: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The report's digit layout: ``root/digits/<domain>/data/*.png`` listed by
    ``root/digits/<domain>/{train,val}.csv`` (header ``image_name,label``; label a digit 0-9).
    ``root`` may also be the ``digits`` folder itself. Images come in CSV order."""
    _check_split(split, ("train", "val"), "digits")
    root = Path(root)
    _require_dir(root, "dataset folder")
    digits = root / "digits" if (root / "digits").is_dir() or root.name != "digits" else root
    dom = digits / domain
    _require_dir(dom, f"digit domain folder ({domain!r})")
    data = dom / "data"
    _require_dir(data, "digit image folder")
    csv_path = dom / f"{split}.csv"
    names, labels = _report_rows(csv_path, data)
    if not names:
        raise DataError(f"{csv_path} lists no images: the {split} split of {domain} is empty")
    other = dom / f"{'val' if split == 'train' else 'train'}.csv"
    if other.exists():  # an image both splits list must carry one label (listed consistently)
        theirs = dict(zip(*_report_rows(other, data)))
        for i, (name, label) in enumerate(zip(names, labels)):
            if name in theirs and theirs[name] != label:
                raise DataError(f"{csv_path}: row {i + 2}: expected the label {other.name} gives {name} "
                                f"({theirs[name]}), found {label}: contradictory")
    return read_image_folder(data, names), np.asarray(labels, dtype=np.int64)


def _report_rows(csv_path: Path, data: Path) -> tuple[list[str], list[int]]:
    """The (image names, labels) of a report-layout CSV, checked: the header, two fields per row, each name an
    image in `data` listed once, each label a digit 0-9."""
    rows = list(csv.reader(_read_text(csv_path, "split file")))
    if not rows or [c.strip() for c in rows[0]] != ["image_name", "label"]:
        got = ",".join(rows[0]) if rows else "an empty file"
        raise DataError(f"{csv_path} must start with the header image_name,label, got {got!r}")
    names: list[str] = []
    labels: list[int] = []
    places: list[str] = []
    for line_no, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        where = f"{csv_path} line {line_no}"
        if len(row) != 2:
            raise DataError(f"{where} has {len(row)} fields, expected 2 (image_name,label)")
        name = row[0].strip()
        if not (data / name).is_file():
            raise DataError(f"{where} names {name}, which does not exist in {data}")
        labels.append(_parse_label(row[1], where))
        names.append(name)
        places.append(f"line {line_no}")
    duplicates(zip(names, labels, places), csv_path, "image", DataError)
    return names, labels


# ----------------------------------------------------------------------------------------- MNIST

IDX_IMAGES, IDX_LABELS = 2051, 2049


def _find(base: str, dirs: Sequence[Path]) -> Path:
    for d in dirs:
        for name in (base, base + ".gz"):
            if (d / name).is_file():
                return d / name
    raise DataError(f"cannot find {base} (or {base}.gz) in " + ", ".join(str(d) for d in dirs))


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """Parse an IDX file (big-endian int32 magic, ndim int32 sizes, then uint8 data)."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # zlib.error: damaged compressed data
        raise DataError(f"cannot read IDX file {path}: {_one_line(e)}") from None
    header = 4 * (1 + ndim)
    found = int(np.frombuffer(raw, ">i4", 1)[0]) if len(raw) >= 4 else magic  # too short: said below
    if found != magic:
        raise DataError(f"IDX file {path} has magic {found}, expected {magic} "
                        f"({'images' if magic == IDX_IMAGES else 'labels'}, uint8, {ndim}-D)")
    if len(raw) < header:
        raise DataError(f"IDX file {path} is {len(raw)} bytes, too short for its {header}-byte header")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">i4", ndim, 4))
    size = math.prod(dims)
    if min(dims) < 0:
        raise DataError(f"IDX file {path} has the sizes {'x'.join(map(str, dims))} in its header, expected none negative")
    if len(raw) - header != size:
        raise DataError(f"IDX file {path} holds {len(raw) - header} data bytes, its header "
                        f"{'x'.join(map(str, dims))} says {size}")
    return np.frombuffer(raw, np.uint8, size, header).reshape(dims)


def read_mnist(root: PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """torchvision's MNIST files: ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` in ``root``,
    ``root/MNIST/raw`` or ``root/raw``. ``split`` is "train" or "test". Images (N, 28, 28, 3)."""
    _check_split(split, ("train", "test"), "MNIST")
    root = Path(root)
    _require_dir(root, "MNIST folder")
    dirs = [root, root / "MNIST" / "raw", root / "raw"]
    prefix = "train" if split == "train" else "t10k"
    img_path = _find(f"{prefix}-images-idx3-ubyte", dirs)
    lab_path = _find(f"{prefix}-labels-idx1-ubyte", dirs)
    images = _read_idx(img_path, IDX_IMAGES, 3)
    labels = _read_idx(lab_path, IDX_LABELS, 1)
    if images.shape[1:] != (28, 28):
        raise DataError(f"IDX file {img_path} holds {'x'.join(map(str, images.shape[1:]))} images, expected MNIST's 28x28")
    if len(images) != len(labels):
        raise DataError(f"{img_path} has {len(images)} images but {lab_path} has {len(labels)} labels")
    if len(images) == 0:
        raise DataError(f"{img_path} holds no images")
    if labels.max() > 9:
        bad = int(np.argmax(labels > 9))
        raise DataError(f"label {int(labels[bad])} at index {bad} in {lab_path} is outside 0-9")
    return _grey_to_rgb(images), labels.astype(np.int64)


def read_mnistm(root: PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-M's own distribution: ``root/mnist_m_{train,test}/*.png`` (32x32 RGB in the official
    release) and ``root/mnist_m_{train,test}_labels.txt`` with lines ``00000000.png 7``.
    ``root`` may also be a folder holding ``mnist_m/``. Images come in labels-file order."""
    _check_split(split, ("train", "test"), "MNIST-M")
    root = Path(root)
    _require_dir(root, "MNIST-M folder")
    if not (root / f"mnist_m_{split}").exists() and (root / "mnist_m" / f"mnist_m_{split}").is_dir():
        root = root / "mnist_m"
    folder = root / f"mnist_m_{split}"
    _require_dir(folder, "MNIST-M image folder")
    lab_path = root / f"mnist_m_{split}_labels.txt"
    names: list[str] = []
    labels: list[int] = []
    places: list[str] = []
    for line_no, line in enumerate(_read_text(lab_path, "MNIST-M labels file"), start=1):
        if not line.strip():
            continue
        where = f"{lab_path} line {line_no}"
        parts = line.split()
        if len(parts) != 2:
            raise DataError(f"{where} is {line.strip()!r}, expected '<file>.png <label>'")
        if not (folder / parts[0]).is_file():
            raise DataError(f"{where} names {parts[0]}, which does not exist in {folder}")
        labels.append(_parse_label(parts[1], where))
        names.append(parts[0])
        places.append(f"line {line_no}")
    duplicates(zip(names, labels, places), lab_path, "image", DataError)
    if not names:
        raise DataError(f"{lab_path} lists no images: the MNIST-M {split} split is empty")
    return read_image_folder(folder, names), np.asarray(labels, dtype=np.int64)


# ------------------------------------------------------------------------------------- SVHN, USPS

def read_svhn(root: PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """torchvision's SVHN files ``root/{train,test,extra}_32x32.mat``: ``X`` uint8 (32, 32, 3, N),
    ``y`` (N, 1) with 1..10 where 10 means digit 0 (mapped to 0)."""
    _check_split(split, ("train", "test", "extra"), "SVHN")
    import scipy.io  # local: only this reader needs scipy

    path = Path(root) / f"{split}_32x32.mat"
    _require_file(path, "SVHN file")
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as e:  # scipy raises ValueError, MatReadError, TypeError... on corrupt files
        raise DataError(f"cannot read SVHN .mat file {path}: {_one_line(e)}") from None
    for key in ("X", "y"):
        if key not in mat:
            raise DataError(f"SVHN file {path} has no variable {key!r} (expected X and y)")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"])
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DataError(f"X in {path} has shape {x.shape}, expected (32, 32, 3, N)")
    if x.dtype != np.uint8:
        raise DataError(f"X in {path} has dtype {x.dtype}, expected uint8")
    if y.dtype.kind not in "iuf" or y.ndim != 2 or 1 not in y.shape:  # loadmat gives (N, 1), or (1, N) for a 1-D y
        raise DataError(f"y in {path} is {y.dtype} {y.shape}, expected numeric labels (N, 1)")
    y = y.reshape(-1)
    if len(y) != x.shape[3]:
        raise DataError(f"{path} has {x.shape[3]} images in X but {len(y)} labels in y")
    if len(y) == 0:
        raise DataError(f"SVHN file {path} holds no images")
    bad = (y < 1) | (y > 10) | (y != np.round(y))
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"label {y[i]} at index {i} of y in {path} is outside 1-10 (10 means digit 0)")
    labels = y.astype(np.int64) % 10
    return np.ascontiguousarray(x.transpose(3, 0, 1, 2)), labels


def read_usps(root: PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """torchvision's own USPS reader (``root/usps.bz2`` train, ``root/usps.t.bz2`` test: bzip2'd
    LIBSVM text, label 1..10 = digit + 1, values in [-1, 1] mapped to uint8 as torchvision does).
    16x16 grey. The file is checked first (:func:`_check_usps`)."""
    _check_split(split, ("train", "test"), "USPS")
    from torchvision.datasets import USPS  # local: torchvision's import is slow and only this reader needs it

    path = Path(root) / ("usps.bz2" if split == "train" else "usps.t.bz2")
    _require_file(path, "USPS file")
    _check_usps(path)
    data = USPS(str(root), train=split == "train", download=False)
    return _grey_to_rgb(np.asarray(data.data, dtype=np.uint8)), np.asarray(data.targets, dtype=np.int64)


USPS_LABELS = {str(i) for i in range(1, 11)}


def _check_usps(path: Path) -> None:
    """Each line of a USPS file must be `<label 1-10> 1:<v> 2:<v> ... 256:<v>` with each v in [-1, 1]: torchvision's
    reader checks none of it (a value outside [-1, 1] wraps to a made-up pixel, a line with more or fewer values
    shifts every image after it against its label)."""
    try:
        with bz2.open(path, "rt", encoding="ascii") as f:
            lines = f.read().splitlines()
    except (OSError, EOFError, ValueError) as e:  # not bzip2, cut off, not text
        raise DataError(f"cannot read USPS file {path} (LIBSVM 'label idx:value' x 256 per line, "
                        f"bzip2): {_one_line(e)}") from None
    if not lines:
        raise DataError(f"USPS file {path} holds no samples")
    for n, line in enumerate(lines, start=1):
        parts = line.split()
        bad = f"{max(len(parts) - 1, 0)} values" if len(parts) != 257 else next(
            (show(item) for i, item in enumerate(parts[1:], start=1) if not _usps_entry(item, i)), None)
        if bad is not None:
            raise DataError(f"cannot read USPS file {path}: line {n}: expected '<label> 1:<v> 2:<v> ... 256:<v>' "
                            f"with each v in [-1, 1], found {bad}")
        if parts[0] not in USPS_LABELS:
            raise DataError(f"label {parts[0]} on line {n} of {path} is outside 1-10 (digit = label - 1)")


def _usps_entry(item: str, i: int) -> bool:
    """Whether `item` is `<i>:<v>` with v in [-1, 1], up to what torchvision's truncation of (v + 1) / 2 * 255 to a
    pixel absorbs (a file written to give exact pixels may hold 1.0039)."""
    key, _, value = item.partition(":")
    try:
        return key == str(i) and 0 <= (float(value) + 1) / 2 * 255 < 256
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------- CelebA

CELEBA_PARTITION = {"train": 0, "val": 1, "valid": 1, "test": 2}


def read_celeba(root: PathLike, split: str, limit: int | None = None) -> tuple[np.ndarray, None]:
    """torchvision's CelebA layout: ``root/img_align_celeba/*.jpg`` and
    ``root/list_eval_partition.txt`` with lines ``000001.jpg 0`` (0 train, 1 val, 2 test).
    ``root`` may also be a folder holding ``celeba/``. ``limit`` reads only the first N of the
    split (in partition-file order). Returns (images, None); aligned images are 218x178."""
    _check_split(split, tuple(CELEBA_PARTITION), "CelebA")
    if limit is not None and limit < 1:
        raise DataError(f"CelebA limit must be a positive number of images, got {limit}")
    root = Path(root)
    _require_dir(root, "CelebA folder")
    if not (root / "img_align_celeba").exists() and (root / "celeba").is_dir():
        root = root / "celeba"
    folder = root / "img_align_celeba"
    _require_dir(folder, "CelebA image folder")
    part_path = root / "list_eval_partition.txt"
    want = CELEBA_PARTITION[split]
    names: list[str] = []
    seen: dict[str, str] = {}
    for line_no, line in enumerate(_read_text(part_path, "CelebA partition file"), start=1):
        parts = line.split()
        if not parts:
            continue
        where = f"{part_path} line {line_no}"
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise DataError(f"{where} is {line.strip()!r}, expected '<file>.jpg <0|1|2>'")
        if parts[0] in seen:
            raise DataError(f"{where}: expected each image once; {parts[0]} is already listed with partition "
                            f"{seen[parts[0]]}" + (" (contradictory)" if seen[parts[0]] != parts[1] else ""))
        seen[parts[0]] = parts[1]
        if int(parts[1]) != want:
            continue
        if not (folder / parts[0]).is_file():
            raise DataError(f"{where} names {parts[0]}, which does not exist in {folder}")
        names.append(parts[0])
        if limit is not None and len(names) >= limit:
            break
    if not names:
        raise DataError(f"{part_path} lists no images with partition {want}: the CelebA {split} split is empty")
    return read_image_folder(folder, names), None


# -------------------------------------------------------------------------------------- MNIST-M

def _save_png(arr: np.ndarray, path: Path) -> None:
    Image.fromarray(arr).save(path, format="PNG")


def mnistm_blend(digits: np.ndarray, photos: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Ganin & Lempitsky's recipe: each grey uint8 digit d of (N, H, W) becomes |p - d| per channel, p an
    HxW crop of a random photo at a random offset; returns uint8 (N, H, W, 3). Offsets run from 0 to
    photo size - crop size - 1 (the demo data were made so; a photo of exactly the crop size gives its one crop)."""
    n, h, w = digits.shape
    out = np.empty((n, h, w, 3), np.uint8)
    for i, d in enumerate(digits.astype(np.int16)):
        p = photos[int(rng.integers(len(photos)))]
        y, x = int(rng.integers(max(1, p.shape[0] - h))), int(rng.integers(max(1, p.shape[1] - w)))
        out[i] = np.abs(p[y:y + h, x:x + w].astype(np.int16) - d[..., None]).astype(np.uint8)
    return out


def build_mnistm(mnist_images: np.ndarray, mnist_labels: np.ndarray, photos: Sequence[np.ndarray],
                 out_root: PathLike, split: str, seed: int = 0,
                 progress: Callable[[int, int], None] | None = None) -> Path:
    """Build MNIST-M with :func:`mnistm_blend` and write it in MNIST-M's own format.

    The digits are grey uint8 HxW (28x28 for MNIST; (N, H, W) or grey-replicated (N, H, W, 3) as
    :func:`read_mnist` returns), each photo (h, w, 3) uint8 with h >= H, w >= W. Writes
    ``out_root/mnist_m_<split>/%08d.png`` and ``out_root/mnist_m_<split>_labels.txt`` (lines
    ``00000000.png 7``) via a temporary folder in ``out_root``, so a failed build leaves no
    half-written split; an existing split there is replaced. ``progress(done, total)`` is called
    after each image. Returns ``out_root``.
    """
    _check_split(split, ("train", "test"), "MNIST-M")
    digits = np.asarray(mnist_images)
    if digits.ndim == 4 and digits.shape[3] == 3:
        if not (digits == digits[..., :1]).all():
            raise DataError("mnist_images has 3 channels that differ; expected grey digits")
        digits = digits[..., 0]
    if digits.ndim != 3 or digits.dtype != np.uint8 or len(digits) == 0:
        raise DataError(f"mnist_images must be a non-empty uint8 array (N, H, W), got "
                        f"{digits.dtype} {digits.shape}")
    labels = np.asarray(mnist_labels)
    if labels.shape != (len(digits),):
        raise DataError(f"mnist_labels has shape {labels.shape}, expected ({len(digits)},)")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() > 9:
        raise DataError(f"mnist_labels must be integers 0-9, got {labels.dtype} "
                        f"from {labels.min()} to {labels.max()}")
    h, w = digits.shape[1:]
    if len(photos) == 0:
        raise DataError("build_mnistm needs at least one colour photo, got none")
    photos = [np.asarray(p) for p in photos]
    for i, p in enumerate(photos):
        if p.ndim != 3 or p.shape[2] != 3 or p.dtype != np.uint8:
            raise DataError(f"photo {i} is {p.dtype} {p.shape}, expected uint8 (h, w, 3) RGB")
        if p.shape[0] < h or p.shape[1] < w:
            raise DataError(f"photo {i} is {p.shape[0]}x{p.shape[1]}, smaller than the "
                            f"{h}x{w} digit crop it must supply")

    out_root = Path(out_root)
    try:
        out_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".mnist_m_{split}.", suffix=".tmp", dir=out_root))
    except OSError as e:
        raise DataError(f"cannot create MNIST-M output folder {out_root}: {_one_line(e)}") from None
    folder, lab_path = out_root / f"mnist_m_{split}", out_root / f"mnist_m_{split}_labels.txt"
    try:
        (tmp / folder.name).mkdir()
        lines = []
        for i, (image, label) in enumerate(zip(mnistm_blend(digits, photos, np.random.default_rng(seed)), labels)):
            name = f"{i:08d}.png"
            _save_png(image, tmp / folder.name / name)
            lines.append(f"{name} {int(label)}\n")
            if progress is not None:
                progress(i + 1, len(digits))
        (tmp / lab_path.name).write_text("".join(lines), encoding="ascii")
        # Swap in: old split (if any) moves into tmp, then the new one moves out of it.
        old = tmp / "old"
        old.mkdir()
        for target in (folder, lab_path):
            if target.exists():
                os.replace(target, old / target.name)
        os.replace(tmp / lab_path.name, lab_path)
        os.replace(tmp / folder.name, folder)
    except OSError as e:
        raise DataError(f"cannot write MNIST-M {split} split to {out_root}: {_one_line(e)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_root
