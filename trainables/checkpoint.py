"""A trial's checkpoint file: written atomically, read with weights_only=True and checked, with the RNG
state that makes a resumed run continue the same trajectory."""
from __future__ import annotations

import subprocess
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch

from trainables.errors import CheckpointError
from trainables.files import atomic_open
from trainables.filecheck import NOTHING, Range, fail, parse, require_file

CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class CheckpointFile:
    """What a checkpoint holds (trainables/loop.py writes it); the config is then parsed by its family's
    config class, strictly, and the weights are loaded strictly into the model that config builds."""

    format: Literal[1]
    family: str
    config: dict[str, Any]
    epoch: Annotated[int, Range(0)]
    state: dict[str, Any]
    rng: dict[str, torch.Tensor]
    history: list[dict[str, Any]]
    stop_reason: str | None = None
    code_version: str = "unknown"
    trial_id: str = ""  # a sweep's trial (search/sweep.py run_trial) adds these two
    lineage: list[tuple[Annotated[int, Range(0)], str]] = dataclasses.field(default_factory=list)  # PBT: (epoch, donor trial)

    @classmethod
    def consistent(cls, ck: dict) -> tuple[str, str, Any] | None:
        if "cpu" not in ck["rng"]:
            return "rng.cpu", "the CPU generator's state", NOTHING
        if len(ck["history"]) != ck["epoch"]:
            return "history", f"one metrics entry per epoch ({ck['epoch']})", f"{len(ck['history'])} entries"
        for i, m in enumerate(ck["history"]):
            if m.get("epoch") != i + 1:
                return f"history[{i}].epoch", f"{i + 1} (epochs in order, each once)", m.get("epoch")
        return None


def code_version() -> str:
    try:
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):  # no git, or not a clone: the version is not known
        return "unknown"


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
    from trainables.config import from_flat
    from trainables.errors import GentuneError
    from trainables.families import config_class, known

    path = Path(path)
    require_file(path, f"a gentune checkpoint (format {CHECKPOINT_FORMAT})", CheckpointError)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load raises a dozen types on a damaged file; all are this one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {first[:200]}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or "family" not in ckpt:
        raise CheckpointError(f"{path} is not a gentune checkpoint (format {CHECKPOINT_FORMAT})")
    parse(ckpt, CheckpointFile, path, error=CheckpointError)
    if ckpt["family"] not in known():
        raise fail(path, "family", f"one of {', '.join(known())}", ckpt["family"], CheckpointError)
    if family is not None and ckpt["family"] != family:
        raise CheckpointError(f"{path} is a {ckpt['family']} checkpoint, but a {family} one was expected")
    try:
        from_flat(config_class(ckpt["family"]), dict(ckpt["config"]))
    except GentuneError as e:
        raise CheckpointError(f"{path}: config: expected a valid {ckpt['family']} config ({e})") from None
    return ckpt
