"""The family-independent training loop: resume, epochs, evaluation, stop rules, checkpoints.

Free of Ray and MLflow: what happens to each epoch's metrics and checkpoint is the `sink`'s
business (a JSON-lines file and a .pt file standalone, `tune.report` under Ray).
"""
from __future__ import annotations

import contextlib
import math
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from trainables.files import atomic_open
from trainables.errors import CheckpointError, GentuneError
from trainables.config import TrainConfig, from_flat, to_flat
from trainables.families import build_trainer, config_class

CHECKPOINT_FORMAT = 1


class Diverged(Exception):
    """Raised inside an epoch when a loss becomes NaN/inf; the message is the stop reason."""


def is_failure(reason: str | None) -> bool:
    """Stop reasons that mean the trial failed (recorded FAILED), not that it was stopped early."""
    return bool(reason) and (reason.startswith("diverged") or reason == "mode collapse")


class Trainer(Protocol):
    family: str
    cfg: Any
    device: torch.device

    def train_epoch(self, epoch: int) -> dict[str, float]: ...
    def evaluate(self, epoch: int) -> dict[str, float]: ...
    def stop_reason(self, metrics: dict[str, float]) -> str | None: ...
    def state(self) -> dict[str, Any]: ...
    def load_state(self, state: dict[str, Any]) -> None: ...
    def sample_grid(self) -> torch.Tensor | None: ...


@dataclass
class Epoch:
    """What the sink receives after each epoch."""

    epoch: int
    metrics: dict[str, float]
    checkpoint: dict[str, Any]
    grid: torch.Tensor | None = None  # uint8 (3,H,W) sample grid at evaluation epochs
    stop_reason: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)


def code_version() -> str:
    try:
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


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


def check_finite(**losses: torch.Tensor) -> None:
    """Raise Diverged naming the first non-finite loss (one host sync for all)."""
    vals = torch.stack([v.detach().float() for v in losses.values()])
    if not bool(torch.isfinite(vals).all()):
        bad = [k for k, v in zip(losses, vals.tolist()) if not math.isfinite(v)]
        raise Diverged(f"diverged: {bad[0]} is not finite")


def nonfinite_tensor(state: Any, prefix: str = "") -> str | None:
    """Dotted name of the first floating tensor in a (nested) state dict holding NaN/inf, or None."""
    if isinstance(state, torch.Tensor):
        if state.is_floating_point() and not bool(torch.isfinite(state).all()):
            return prefix or "tensor"
        return None
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, (list, tuple)) else ()
    for k, v in items:
        bad = nonfinite_tensor(v, f"{prefix}.{k}" if prefix else str(k))
        if bad is not None:
            return bad
    return None


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    s = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        s["cuda"] = torch.cuda.get_rng_state(device)
    return s


def set_rng_state(s: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(s["cpu"])
    if device.type == "cuda" and "cuda" in s:
        torch.cuda.set_rng_state(s["cuda"], device)


def save_checkpoint(ckpt: dict[str, Any], path: Path) -> None:
    """Atomic write: a reader never sees half a checkpoint."""
    with atomic_open(path) as f:
        torch.save(ckpt, f)


def load_checkpoint(path: Path | str, family: str | None = None) -> dict[str, Any]:
    """Read a checkpoint with weights_only=True (no pickled objects) and check what it is."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {first[:200]}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or "family" not in ckpt:
        raise CheckpointError(f"{path} is not a gentune checkpoint (format {CHECKPOINT_FORMAT})")
    if family is not None and ckpt["family"] != family:
        raise CheckpointError(f"{path} is a {ckpt['family']} checkpoint, but a {family} one was expected")
    return ckpt


def fit(
    family: str,
    flat_config: dict[str, Any],
    sink: Callable[[Epoch], None],
    resume: dict[str, Any] | None = None,
    quiet: bool = False,
    mutable: tuple[str, ...] = (),
) -> str | None:
    """Train `family` with `flat_config` from scratch or from the checkpoint `resume`; returns the stop reason
    (None when all epochs ran). Every epoch ends with one `sink(Epoch)` call. The `mutable` keys may differ
    from the checkpoint's (PBT's perturbed learning rates and labels): the trainer applies the new values."""
    cfg = from_flat(config_class(family), flat_config)
    if resume is not None and resume["family"] != family:
        raise CheckpointError(f"cannot resume a {family} trial from a {resume['family']} checkpoint")
    changed = sorted(k for k, v in to_flat(cfg).items() if k != "epochs" and k not in mutable and resume is not None and resume["config"].get(k) != v)
    if changed:  # more epochs may be asked for (training continues); anything else is another run
        raise CheckpointError(f"the checkpoint's config differs from this run's in {', '.join(changed)}; use a new --out folder")
    torch.manual_seed(cfg.seed)
    trainer = build_trainer(family, cfg, quiet=quiet)
    start, history = 0, []
    if resume is not None:
        trainer.load_state(resume["state"])
        set_rng_state(resume["rng"], trainer.device)
        start, history = resume["epoch"], list(resume["history"])
        if resume.get("stop_reason"):
            return resume["stop_reason"]
    version = code_version()
    reason = None
    for epoch in range(start + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        try:
            metrics = trainer.train_epoch(epoch)
        except Diverged as e:
            metrics, reason = {}, str(e)
        except RuntimeError as e:
            # NaN weights can make an op refuse its input before check_finite sees a loss (BCE raises
            # "all elements of input should be between 0 and 1" on NaN probabilities): that is a
            # diverged trial to stop and record, not a crash to retry from the last checkpoint.
            bad = nonfinite_tensor(trainer.state())
            if bad is None:
                raise
            first = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
            metrics, reason = {}, f"diverged: {bad} is not finite ({first})"
        grid = None
        metrics["epoch"] = epoch
        if reason is None and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs):
            metrics.update(trainer.evaluate(epoch))
            grid = trainer.sample_grid()
            reason = trainer.stop_reason(metrics)
        metrics["epoch_time_s"] = time.perf_counter() - t0
        metrics["on_gpu"] = float(trainer.device.type == "cuda")
        if trainer.device.type == "cuda":
            metrics["peak_mem_mb"] = torch.cuda.max_memory_allocated(trainer.device) / 2**20
        history.append(metrics)
        ckpt = {
            "format": CHECKPOINT_FORMAT, "family": family, "config": to_flat(cfg), "epoch": epoch,
            "state": trainer.state(), "rng": rng_state(trainer.device), "history": history,
            "stop_reason": reason, "code_version": version,
        }
        sink(Epoch(epoch, metrics, ckpt, grid, reason, history))
        if reason:
            break
    return reason
