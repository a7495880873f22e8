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
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT
    resume = load_checkpoint(ckpt_path, family) if ckpt_path.exists() else None
    log = out / "metrics.jsonl"
    if resume is not None:
        print(f"gentune: resuming {out} from epoch {resume['epoch']}", file=sys.stderr)
        # keep exactly the epochs the checkpoint holds, so a crash between the two writes leaves no duplicate
        log.write_text("".join(json.dumps(m) + "\n" for m in resume["history"]))
    else:
        log.write_text("")

    def sink(e: Epoch) -> None:
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
