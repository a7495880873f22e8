"""Frechet Inception Distance with pytorch-fid's network, computed the way pytorch-fid does.

The network is pytorch-fid's own `InceptionV3` (FID-Inception blocks, bilinear resize to
299x299 and scaling from [0, 1] to [-1, 1] inside its forward). Only the source of its
state dict differs: a local weights file read with `torch.load(weights_only=True)`, never a
URL when a file is given, or pytorch-fid's own download into the torch hub cache when the
caller allows it (`allow_download=True`).

`random_init=True` builds the same architecture with seeded random weights. Its numbers are
NOT FID (they are not comparable to any published or other FID value) and must never be
reported under the name "fid": they exist for tests and for machines without the weights.

The Frechet distance of N(mu1, S1) and N(mu2, S2) is

    d = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)).

S1 S2 is similar to R S2 R with R = S1^(1/2) (the symmetric square root, from `eigh`), which is
symmetric positive semi-definite, so tr((S1 S2)^(1/2)) = sum_i sqrt(lambda_i(R S2 R)). This is
computed in float64 with `numpy.linalg.eigh` only: no `scipy.linalg.sqrtm` (whose `disp`
argument newer scipy removed), no complex arithmetic, and singular covariances (fewer samples
than dimensions) are fine because eigenvalues are clipped at zero.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Union

import numpy as np
import torch
from pytorch_fid import inception as _pfi
from pytorch_fid.inception import FID_WEIGHTS_URL, InceptionV3

from trainables.files import IMAGE_SUFFIXES, atomic_open
from trainables.errors import DataError, GentuneError

__all__ = [
    "WEIGHTS_ENV",
    "WEIGHTS_FILENAME",
    "FID_WEIGHTS_URL",
    "IMAGE_EXTENSIONS",
    "hub_weights_path",
    "find_weights",
    "require_weights",
    "weights_tag",
    "random_fid_state_dict",
    "build_inception",
    "inception_features",
    "stats",
    "frechet_distance",
    "save_stats",
    "load_stats",
    "cached_real_stats",
    "stats_of_path",
    "fid_between",
]

WEIGHTS_ENV = "GENTUNE_FID_WEIGHTS"
#: pytorch-fid's file name; torch.hub keeps downloads under <hub dir>/checkpoints/<this name>.
WEIGHTS_FILENAME = os.path.basename(FID_WEIGHTS_URL)
#: pytorch-fid's fid_score.IMAGE_EXTENSIONS (lower case, non-recursive glob), so a folder's FID reads the files
#: pytorch-fid reads; not imported from there: fid_score needs scipy, which the GPU nodes may lack.
IMAGE_EXTENSIONS = tuple(s[1:] for s in IMAGE_SUFFIXES)

ImageBatch = Union[torch.Tensor, np.ndarray]
PathLike = Union[str, "os.PathLike[str]"]

# Building an InceptionV3 swaps pytorch_fid.inception.load_state_dict_from_url for a moment;
# the lock keeps two threads from seeing each other's state dict.
_BUILD_LOCK = threading.Lock()


# ----------------------------------------------------------------------------- weights


def hub_weights_path() -> Path:
    """Where torch.hub (and so pytorch-fid) caches the FID weights: <hub dir>/checkpoints/<file>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILENAME


def _weights_candidates(explicit: PathLike | None) -> list[tuple[str, Path]]:
    """(source, path) in search order: explicit path, $GENTUNE_FID_WEIGHTS, torch hub cache."""
    out = []
    if explicit is not None and str(explicit) != "":
        out.append(("--weights", Path(explicit).expanduser()))
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        out.append((f"${WEIGHTS_ENV}", Path(env).expanduser()))
    out.append(("torch hub cache", hub_weights_path()))
    return out


def find_weights(explicit: PathLike | None = None) -> Path | None:
    """The first existing FID weights file among: `explicit`, env `GENTUNE_FID_WEIGHTS`,
    `<torch hub dir>/checkpoints/pt_inception-2015-12-05-6726825d.pth`; None if none exists.

    Use `require_weights` to turn a missing explicit or env file into an error rather than a
    silent fall-through to the next place.
    """
    for _, path in _weights_candidates(explicit):
        if path.is_file():
            return path
    return None


def require_weights(explicit: PathLike | None = None, allow_download: bool = False) -> Path | None:
    """Like `find_weights`, but a missing file is a `GentuneError` with the fix in one line.

    An explicit path or `$GENTUNE_FID_WEIGHTS` that names a missing file is an error (naming
    it), never skipped. Returns None only when nothing was found and `allow_download` is true:
    then `build_inception(weights=None)` lets pytorch-fid download the file into the hub cache.
    """
    for source, path in _weights_candidates(explicit):
        if path.is_file():
            return path
        if source != "torch hub cache":
            raise GentuneError(f"FID weights file {path} (from {source}) does not exist or is not a file")
    if allow_download:
        return None
    raise GentuneError(
        f"FID Inception weights not found: download {FID_WEIGHTS_URL} and put it at "
        f"{hub_weights_path()} (the torch hub cache), or set ${WEIGHTS_ENV} / pass --weights "
        f"to its path, or allow pytorch-fid to download it (--download)"
    )


def weights_tag(weights: PathLike | None, random_seed: int | None = None) -> str:
    """A short tag naming the network's weights, for stats cache file names.

    The first 8 hex digits of the file's sha256 (the real file gives "6726825d", as in its
    name), or "random<seed>" for a randomly initialised network.
    """
    if weights is None:
        if random_seed is None:
            raise ValueError("weights_tag needs a weights file or a random_seed")
        return f"random{random_seed}"
    digest = hashlib.sha256()
    with open(weights, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:8]


def _fid_inception_skeleton() -> torch.nn.Module:
    """pytorch-fid's `fid_inception_v3()` without loading any weights (mirrors its body).

    Only used to make a random state dict in pytorch-fid's key layout; the network that
    computes features is always built by pytorch-fid's own `fid_inception_v3`.
    """
    net = _pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = _pfi.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = _pfi.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = _pfi.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = _pfi.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = _pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = _pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = _pfi.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = _pfi.FIDInceptionE_1(1280)
    net.Mixed_7c = _pfi.FIDInceptionE_2(2048)
    return net


def random_fid_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A seeded random state dict in the layout of pytorch-fid's weights file.

    Convolutions get He-normal weights (fan_in, ReLU gain) so activations keep their scale
    through the ~50 layers; PyTorch's default init shrinks them to ~1e-8 at pool3, where
    covariances underflow into meaninglessness. Batch norms keep their identity defaults.
    The result depends only on `seed`, not on the global RNG.
    """
    net = _fid_inception_skeleton()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=gen)
            elif isinstance(module, torch.nn.Linear):
                torch.nn.init.normal_(module.weight, std=0.01, generator=gen)
                torch.nn.init.zeros_(module.bias)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, pickle with objects, not a torch file
        # PyTorch's own message suggests weights_only=False, which would run code from the file: never pass it on
        why = ("it holds pickled Python objects, which gentune does not load" if "Unsupported global" in str(e)
               else "not a PyTorch checkpoint of tensors (truncated, or another kind of file)")
        raise GentuneError(f"cannot read FID weights file {path}: {why}; expected pytorch-fid's Inception "
                           f"weights from {FID_WEIGHTS_URL}") from e
    if not isinstance(state, dict) or "Conv2d_1a_3x3.conv.weight" not in state:
        raise GentuneError(
            f"FID weights file {path} is not pytorch-fid's Inception state dict "
            f"(expected keys like 'Conv2d_1a_3x3.conv.weight'; get it from {FID_WEIGHTS_URL})"
        )
    return state


def build_inception(
    dims: int = 2048,
    weights: PathLike | None = None,
    device: str | torch.device = "cpu",
    random_init: bool = False,
    seed: int = 0,
) -> InceptionV3:
    """pytorch-fid's `InceptionV3` returning `dims`-d features, in eval mode on `device`.

    - `weights` given: its state dict is read from that file (`torch.load(weights_only=True)`)
      and handed to pytorch-fid's `fid_inception_v3` in place of its URL download.
    - `random_init=True`: seeded random weights (`random_fid_state_dict(seed)`); NOT an FID
      network, never report its distance as "fid".
    - neither: pytorch-fid's own loader runs, which reads the torch hub cache and downloads
      into it when the file is missing (call `require_weights` first to fail cleanly offline).
    """
    if dims not in InceptionV3.BLOCK_INDEX_BY_DIM:
        raise GentuneError(f"FID dims must be one of {sorted(InceptionV3.BLOCK_INDEX_BY_DIM)}, got {dims}")
    if random_init and weights is not None:
        raise ValueError("give either weights or random_init=True, not both")
    block = InceptionV3.BLOCK_INDEX_BY_DIM[dims]

    state: dict[str, torch.Tensor] | None = None
    if random_init:
        state = random_fid_state_dict(seed)
    elif weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise GentuneError(f"FID weights file {path} does not exist")
        state = _load_weights_file(path)

    with _BUILD_LOCK:
        original = _pfi.load_state_dict_from_url
        if state is not None:
            def _local(url: str, *args: object, **kwargs: object) -> dict[str, torch.Tensor]:
                assert url == FID_WEIGHTS_URL, url
                return state

            _pfi.load_state_dict_from_url = _local
        try:
            model = InceptionV3([block], use_fid_inception=True)
        except RuntimeError as e:  # load_state_dict key/shape mismatch: a multi-line message, keep its gist
            detail = " ".join(line.strip() for line in str(e).strip().splitlines()[:2])[:300]
            raise GentuneError(f"FID weights {weights} do not fit pytorch-fid's Inception ({detail})") from e
        finally:
            _pfi.load_state_dict_from_url = original
    return model.to(device).eval()


# ----------------------------------------------------------------------------- features


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _to_float01(batch: ImageBatch) -> torch.Tensor:
    """(B, C, H, W) uint8 or float in [0, 1] -> float32 in [0, 1], 3 channels."""
    t = torch.as_tensor(batch)
    if t.ndim != 4 or t.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 3, H, W) (or (N, 1, H, W)), got shape {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        t = t.float().div_(255)  # same as torchvision's ToTensor, which pytorch-fid uses
    elif t.is_floating_point():
        t = t.float()
        if t.numel() and (t.min() < -1e-3 or t.max() > 1 + 1e-3):
            raise ValueError(
                f"float images must be in [0, 1], got [{t.min().item():.3f}, {t.max().item():.3f}] "
                "(a tanh generator's output x maps to (x + 1) / 2)"
            )
    else:
        raise ValueError(f"images must be uint8 or float in [0, 1], got dtype {t.dtype}")
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    return t


class _Progress:
    """Batch counter on stderr; silent when quiet."""

    def __init__(self, total: int, label: str, quiet: bool) -> None:
        self.total, self.label, self.quiet = total, label, quiet
        self.done = 0
        self.every = max(1, total // 20)  # at most ~20 lines when stderr is not a terminal
        self.tty = sys.stderr.isatty()

    def step(self) -> None:
        self.done += 1
        if self.quiet:
            return
        if self.tty:
            end = "\n" if self.done == self.total else ""
            print(f"\r{self.label}: batch {self.done}/{self.total}", end=end, file=sys.stderr, flush=True)
        elif self.done % self.every == 0 or self.done == self.total:
            print(f"{self.label}: batch {self.done}/{self.total}", file=sys.stderr, flush=True)


def _dims_of(model: InceptionV3) -> int:
    return [d for d, b in InceptionV3.BLOCK_INDEX_BY_DIM.items() if b == model.output_blocks[-1]][0]


def inception_features(
    model: InceptionV3,
    images: ImageBatch,
    batch_size: int = 200,
    device: str | torch.device | None = None,
    quiet: bool = False,
) -> np.ndarray:
    """Inception features of `images`, float64 of shape (N, dims).

    images: (N, 3, H, W) uint8, or float in [0, 1] (torch or numpy; (N, 1, H, W) is repeated
    to 3 channels). Any H, W: pytorch-fid's network resizes to 299x299 itself. Batches go to
    `device` (default: the model's device; the model is moved there if it is elsewhere) one at
    a time, so `images` can stay on the CPU.
    On CUDA, TF32 is enabled for the duration of the call and restored afterwards.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(images)
    dev = torch.device(device) if device is not None else _model_device(model)
    if _model_device(model) != dev:
        model = model.to(dev)
    out = np.empty((n, _dims_of(model)), dtype=np.float64)
    progress = _Progress((n + batch_size - 1) // batch_size, "inception features", quiet)
    was_training = model.training
    model.eval()
    cuda = dev.type == "cuda"
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    if cuda:  # TF32 convolutions/matmuls: ~2x faster on Ampere+ at ~1e-3 relative feature error
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    try:
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                batch = torch.as_tensor(images[start : start + batch_size])
                pred = model(_to_float01(batch.to(dev, non_blocking=True)))[0]  # moved as uint8: 4x less traffic
                if pred.shape[2] != 1 or pred.shape[3] != 1:  # dims < 2048: pool like pytorch-fid
                    pred = torch.nn.functional.adaptive_avg_pool2d(pred, output_size=(1, 1))
                out[start : start + len(pred)] = pred.squeeze(3).squeeze(2).cpu().numpy()
                progress.step()
    finally:
        if cuda:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
        model.train(was_training)
    return out


def stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of (N, dims) features, float64, as pytorch-fid (np.cov, rowvar=False)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"features must be (N >= 2, dims), got shape {f.shape}")
    return np.mean(f, axis=0), np.cov(f, rowvar=False)


# ----------------------------------------------------------------------------- distance


def _sym_sqrt(a: np.ndarray) -> np.ndarray:
    """Symmetric PSD square root via eigh, negative round-off eigenvalues clipped to 0."""
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((sigma1 sigma2)^(1/2)) = sum sqrt(eig(R sigma2 R)), R = sigma1^(1/2)."""
    r = _sym_sqrt(sigma1)
    m = r @ sigma2 @ r
    m = (m + m.T) / 2  # exact symmetry for eigvalsh; removes round-off asymmetry only
    w = np.linalg.eigvalsh(m)
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    d = |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2)), the trace term
    from the eigenvalues of sigma1^(1/2) sigma2 sigma1^(1/2) (see the module docstring). As in
    pytorch-fid, if that fails or is not finite, eps * I is added to both covariances for the
    trace term and it is retried.
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors differ in length: {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0], mu1.shape[0]):
        raise ValueError(f"covariances {sigma1.shape}, {sigma2.shape} do not match means of length {mu1.shape[0]}")
    for name, a in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} has non-finite entries")
    diff = mu1 - mu2
    try:
        tr_covmean = _trace_sqrt_product(sigma1, sigma2)
    except np.linalg.LinAlgError:
        tr_covmean = float("nan")
    if not np.isfinite(tr_covmean):
        offset = np.eye(sigma1.shape[0]) * eps
        tr_covmean = _trace_sqrt_product(sigma1 + offset, sigma2 + offset)
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


# ----------------------------------------------------------------------------- stats files


def save_stats(path: PathLike, mu: np.ndarray, sigma: np.ndarray) -> Path:
    """Write pytorch-fid's stats format (`np.savez_compressed`, keys mu and sigma), atomically."""
    path = Path(path)
    with atomic_open(path) as f:  # a file object, so numpy does not append ".npz"
        np.savez_compressed(f, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64))
    return path


def load_stats(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read (mu, sigma) from a pytorch-fid `.npz` stats file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"FID stats file {path} does not exist")
    try:
        with np.load(path) as f:
            mu, sigma = f["mu"][:], f["sigma"][:]
    except KeyError as e:
        raise DataError(f"FID stats file {path} lacks key {e} (expected 'mu' and 'sigma')") from e
    except Exception as e:
        raise DataError(f"cannot read FID stats file {path}: {e}") from e
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise DataError(f"FID stats file {path}: mu {mu.shape} and sigma {sigma.shape} do not match")
    return mu.astype(np.float64), sigma.astype(np.float64)


def cached_real_stats(
    images: ImageBatch | Callable[[], ImageBatch],
    fingerprint: str,
    cache_dir: PathLike,
    model: InceptionV3,
    dims: int,
    weights_tag: str,
    batch_size: int = 200,
    device: str | torch.device | None = None,
    quiet: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Stats of the real images, from `<cache_dir>/fid_stats_<fingerprint>_<dims>_<weights_tag>.npz`.

    Computed and written (temp file, then os.replace) when the file is absent. `images` may be
    a zero-argument callable so the dataset is only decoded on a cache miss. `fingerprint`
    must identify the image set (dataset, split, resolution); `weights_tag` the network
    (see `weights_tag()`), so random-init stats never mix with real FID stats.
    """
    for name, part in (("fingerprint", fingerprint), ("weights_tag", weights_tag)):
        if not part or not all(c.isalnum() or c in "-." for c in part.replace("_", "-")):
            raise ValueError(f"{name} must be non-empty letters, digits, '-', '_' or '.', got {part!r}")
    path = Path(cache_dir) / f"fid_stats_{fingerprint}_{dims}_{weights_tag}.npz"
    if path.is_file():
        mu, sigma = load_stats(path)
        if mu.shape[0] != dims:
            raise DataError(f"FID stats file {path} has {mu.shape[0]} dims, expected {dims}")
        return mu, sigma
    imgs = images() if callable(images) else images
    mu, sigma = stats(inception_features(model, imgs, batch_size=batch_size, device=device, quiet=quiet))
    save_stats(path, mu, sigma)
    return mu, sigma


# ----------------------------------------------------------------------------- folders, CLI


def _image_files(folder: Path) -> list[Path]:
    """pytorch-fid's file list: non-recursive, lower-case extensions, sorted."""
    return sorted(f for ext in IMAGE_EXTENSIONS for f in folder.glob(f"*.{ext}"))


def stats_of_path(
    path: PathLike,
    model: InceptionV3,
    batch_size: int = 50,
    device: str | torch.device | None = None,
    quiet: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of a `.npz` stats file, or of an image folder read and batched by pytorch-fid's own
    `get_activations` (its dataset, its loader, its progress bar)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"path {path} does not exist (expected an image folder or a .npz stats file)")
    if path.suffix == ".npz" and path.is_file():
        return load_stats(path)
    if not path.is_dir():
        raise DataError(f"{path} is neither an image folder nor a .npz stats file")
    files = _image_files(path)
    if len(files) < 2:
        raise DataError(f"{path} holds {len(files)} images ({', '.join(IMAGE_EXTENSIONS)}); FID needs at least 2")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    from pytorch_fid.fid_score import get_activations  # imports scipy: only this folder path needs it

    dev = torch.device(device) if device is not None else _model_device(model)
    try:
        with contextlib.redirect_stderr(io.StringIO()) if quiet else contextlib.nullcontext():
            feats = get_activations(files, model.to(dev), min(batch_size, len(files)), _dims_of(model), dev,
                                    num_workers=0)
    except RuntimeError as e:
        if "stack expects each tensor to be equal size" not in str(e):
            raise
        raise DataError(f"the images in {path} differ in size; pytorch-fid batches them, so pass --batch-size 1 "
                        "(or resize them)") from None
    except (OSError, ValueError) as e:  # PIL: truncated or not an image
        raise DataError(f"cannot read an image in {path}: {' '.join(str(e).split())}") from None
    return stats(feats)


def fid_between(
    path1: PathLike,
    path2: PathLike,
    *,
    weights: PathLike | None = None,
    dims: int = 2048,
    batch_size: int = 50,
    device: str | torch.device | None = None,
    quiet: bool = False,
    allow_download: bool = False,
    model: InceptionV3 | None = None,
) -> float:
    """FID between two image folders and/or `.npz` stats files, like `python -m pytorch_fid`.

    Weights are resolved by `require_weights(weights, allow_download)` unless a prebuilt
    `model` is passed (tests pass a random-init one; its result is then not an FID).
    Paths are checked before the network is built, so a typo fails fast.
    """
    for p in (path1, path2):
        if not Path(p).exists():
            raise DataError(f"path {p} does not exist (expected an image folder or a .npz stats file)")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if model is None and not all(str(p).endswith(".npz") for p in (path1, path2)):
        model = build_inception(dims, require_weights(weights, allow_download), device)
    if model is None:  # two stats files: no network needed
        mu1, s1 = load_stats(path1)
        mu2, s2 = load_stats(path2)
    else:
        mu1, s1 = stats_of_path(path1, model, batch_size, device, quiet)
        mu2, s2 = stats_of_path(path2, model, batch_size, device, quiet)
    if mu1.shape != mu2.shape:
        raise DataError(f"{path1} has {mu1.shape[0]}-d statistics but {path2} has {mu2.shape[0]}-d")
    return frechet_distance(mu1, s1, mu2, s2)
