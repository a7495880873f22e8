"""A trial's checkpoint file: written atomically, read with weights_only=True and checked, with the RNG
state that makes a resumed run continue the same trajectory."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import torch

from trainables.errors import CheckpointError
from trainables.files import atomic_open

CHECKPOINT_FORMAT = 1


def code_version() -> str:
    try:
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except Exception:
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
