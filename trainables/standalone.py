"""Run one trial without Ray: metrics to the console and metrics.jsonl, a checkpoint every epoch,
and resume from that checkpoint when the same output folder is used again."""
from __future__ import annotations

import json
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image

from trainables.checkpoint import load_checkpoint, save_checkpoint
from trainables.errors import GentuneError
from trainables.loop import Epoch, fit

CHECKPOINT = "checkpoint.pt"


def fmt(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


def save_grid(grid, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)


@contextmanager
def sigint_deferred():
    """Ctrl-C during the block takes effect when it ends, so a checkpoint is never without its metrics line."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    old = signal.signal(signal.SIGINT, lambda sig, frame: caught.append(sig))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if caught:
        signal.raise_signal(signal.SIGINT)  # now to the handler that was there (Python's raises KeyboardInterrupt)


def train_standalone(family: str, flat: dict[str, Any], out: Path, quiet: bool = False) -> str | None:
    """Train one trial into `out`, resuming from its checkpoint.pt. Everything read is checked before anything is
    written: a damaged checkpoint, or a folder where a file must be, is one error and leaves `out` as it was."""
    if out.exists() and not out.is_dir():
        raise GentuneError(f"--out {out} is a file, not a folder")
    ckpt_path = out / CHECKPOINT
    log = out / "metrics.jsonl"
    resume = load_checkpoint(ckpt_path, family) if (ckpt_path.exists() or ckpt_path.is_symlink()) else None
    if log.is_dir():
        raise GentuneError(f"{log} is a folder, expected the metrics file gentune writes there")
    # metrics.jsonl is rebuilt from the checkpoint's history (the file is output, never read back): a crash between
    # the two writes, or an edit, leaves no line the checkpoint does not hold
    rebuilt = "".join(json.dumps(m) + "\n" for m in resume["history"]) if resume is not None else ""
    started = False
    if resume is not None:
        print(f"gentune: resuming {out} from epoch {resume['epoch']}", file=sys.stderr)

    def start_log() -> None:  # at the first epoch: a run refused before it (config changed) writes nothing
        nonlocal started
        started = True
        out.mkdir(parents=True, exist_ok=True)
        if resume is not None and log.is_file() and log.read_bytes() != rebuilt.encode():
            print(f"gentune: {log} did not match the checkpoint's {resume['epoch']} epoch(s); rewritten from it",
                  file=sys.stderr)
        log.write_text(rebuilt)

    def sink(e: Epoch) -> None:
        if not started:
            start_log()
        with sigint_deferred():
            save_checkpoint(e.checkpoint, ckpt_path)
            with log.open("a") as f:
                f.write(json.dumps(e.metrics) + "\n")
        if e.grid is not None:
            save_grid(e.grid, out / "samples" / f"epoch_{e.epoch:04d}.png")
        if not quiet:
            print(f"[{family}] epoch {e.epoch}: {fmt(e.metrics)}", flush=True)
        if e.stop_reason:
            print(f"[{family}] stopped: {e.stop_reason}", file=sys.stderr)

    reason = fit(family, flat, sink, resume=resume, quiet=quiet)
    return reason
