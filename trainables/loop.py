"""The family-independent training loop: resume, epochs, evaluation, stop rules, checkpoints.

Free of Ray and MLflow: what happens to each epoch's metrics and checkpoint is the `sink`'s
business (a JSON-lines file and a .pt file standalone, `tune.report` under Ray).
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

import torch

from trainables.checkpoint import CHECKPOINT_FORMAT, code_version, nonfinite_tensor, rng_state, set_rng_state
from trainables.config import from_flat, to_flat
from trainables.errors import CheckpointError
from trainables.families import build_trainer, config_class


class Diverged(Exception):
    """Raised inside an epoch when a loss becomes NaN/inf; the message is the stop reason."""


def is_failure(reason: str | None) -> bool:
    """Stop reasons that mean the trial failed (recorded FAILED), not that it was stopped early."""
    return bool(reason) and (reason.startswith("diverged") or reason.startswith("mode collapse"))


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
    seeds: dict[int, dict[str, float]] = field(default_factory=dict)  # fit_repeated: each seed's own metrics


def check_finite(**losses: torch.Tensor) -> None:
    """Raise Diverged naming the first non-finite loss (one host sync for all)."""
    vals = torch.stack([v.detach().float() for v in losses.values()])
    if not bool(torch.isfinite(vals).all()):
        bad = [k for k, v in zip(losses, vals.tolist()) if not math.isfinite(v)]
        raise Diverged(f"diverged: {bad[0]} is not finite")


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
    reason = resume.get("stop_reason") if resume is not None else None
    for e in epochs(family, flat_config, resume, quiet, mutable):
        sink(e)
        reason = e.stop_reason
    return reason


def epochs(family: str, flat_config: dict[str, Any], resume: dict[str, Any] | None = None, quiet: bool = False,
           mutable: tuple[str, ...] = ()) -> Iterator[Epoch]:
    """fit()'s epochs, one at a time. Between two epochs the global RNG is the caller's: each epoch starts from
    the state its checkpoint holds, so several of these interleaved (fit_repeated) train as each would alone."""
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
        try:
            trainer.load_state(resume["state"])
        except (RuntimeError, KeyError, ValueError, TypeError) as e:  # load_state_dict: missing keys, wrong shapes
            detail = " ".join(x.strip() for x in str(e).strip().splitlines()[:2])[:300] or type(e).__name__
            raise CheckpointError(f"the checkpoint's state does not fit the {family} model its config builds ({detail})") from None
        set_rng_state(resume["rng"], trainer.device)
        start, history = resume["epoch"], list(resume["history"])
        if resume.get("stop_reason"):
            return
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
        yield Epoch(epoch, metrics, ckpt, grid, reason, history)
        if reason:
            return
        set_rng_state(ckpt["rng"], trainer.device)


AGGREGATES = ("mean", "median")
PER_TRIAL = ("epoch", "on_gpu")  # the same in every seed: kept as is, not aggregated
SUMMED = ("epoch_time_s",)  # the configuration's wall time per epoch: its seeds' times added
# a configuration's value: the mean or the median of its seeds' values
_AGG = {"mean": statistics.fmean, "median": statistics.median}


def combine(per_seed: dict[int, dict[str, float]], aggregate: str) -> dict[str, float]:
    """One configuration's metrics from its seeds' metrics of one epoch: the aggregate of each metric all seeds
    reported, `<metric>_sd` (sample standard deviation) beside it, and `n_seeds`."""
    runs = list(per_seed.values())
    out: dict[str, float] = {"n_seeds": len(runs)}
    for k in sorted(set.intersection(*(set(m) for m in runs))):
        vals = [float(m[k]) for m in runs]
        if k in PER_TRIAL:
            out[k] = runs[0][k]
        elif k in SUMMED:
            out[k] = sum(vals)
        elif k == "peak_mem_mb":
            out[k] = max(vals)
        else:
            out[k] = _AGG[aggregate](vals)
            out[f"{k}_sd"] = statistics.stdev(vals) if len(vals) > 1 and all(map(math.isfinite, vals)) else 0.0
    return out


def fit_repeated(family: str, flat_config: dict[str, Any], repeats: int, sink: Callable[[Epoch], None],
                 resume: dict[int, dict[str, Any]] | None = None, aggregate: str = "mean", quiet: bool = False,
                 mutable: tuple[str, ...] = ()) -> str | None:
    """Train one configuration with `repeats` seeds (its seed + 0..repeats-1), epoch by epoch in turn, and hand
    the sink one Epoch per epoch: the seeds' combined metrics (`combine`), `seeds` {seed: its metrics} and
    `checkpoint` {seed: its checkpoint}. A seed that fails (diverged, mode collapse) fails the configuration:
    a recipe that breaks on one seed in k is not one to rank on the others.

    Why in one trial, epoch by epoch: the searcher and ASHA then judge a configuration by one number at each
    rung, and a checkpoint holds every seed at the same epoch, so resume trains nothing twice. Each seed runs
    exactly as it would alone (`epochs` keeps its RNG); k seeds take k times one seed's time."""
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
    base = int(from_flat(config_class(family), flat_config).seed)
    seeds = [base + i for i in range(repeats)]
    runs = {s: epochs(family, {**flat_config, "seed": s}, (resume or {}).get(s), quiet, mutable) for s in seeds}
    reason = next((r["stop_reason"] for r in (resume or {}).values() if r.get("stop_reason")), None)
    while True:
        got = {s: next(g, None) for s, g in runs.items()}
        if any(e is None for e in got.values()):
            return reason
        failed = [(s, e.stop_reason) for s, e in got.items() if e.stop_reason]
        reason = f"{failed[0][1]} [seed {failed[0][0]}]" if failed else None
        first = got[seeds[0]]
        sink(Epoch(first.epoch, combine({s: e.metrics for s, e in got.items()}, aggregate),
                   {s: e.checkpoint for s, e in got.items()}, first.grid, reason,
                   seeds={s: e.metrics for s, e in got.items()}))
        if reason:
            return reason
