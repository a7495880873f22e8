"""The trial of a sweep: Tune's function trainable around trainables.loop, and its checkpoint files."""
from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path
from typing import Any

CHECKPOINT = "checkpoint.pt"


RANK_SCORE = "rank_score"  # every checkpoint's score for Tune's CheckpointConfig: keeps the best one besides the last
SAMPLES = "samples_png"  # in a checkpoint's result: whether the checkpoint holds the epoch's sample grid


def seed_file(seed: int) -> str:
    """A repeated configuration's checkpoint of one seed, beside the others in the trial's checkpoint folder."""
    return f"seed_{seed}.pt"


def load_trial_checkpoint(folder: Path, family: str) -> dict[str, Any]:
    """The checkpoint in a trial's checkpoint folder: one run's (checkpoint.pt), or {seed: checkpoint} of a
    configuration repeated over seeds (seed_<n>.pt each)."""
    from trainables.checkpoint import load_checkpoint

    seeds = sorted(int(p.name[5:-3]) for p in folder.glob("seed_*.pt") if p.name[5:-3].isdigit())
    if seeds and not (folder / CHECKPOINT).exists():
        return {s: load_checkpoint(folder / seed_file(s), family) for s in seeds}
    return load_checkpoint(folder / CHECKPOINT, family)


def run_trial(config: dict[str, Any], family: str, mutable: tuple[str, ...] = (), checkpoint_every: int = 1,
              repeats: int = 1, aggregate: str = "mean", rank: tuple[str, str] = ("", "max")) -> None:
    """The Tune function trainable: resume from Tune's checkpoint, report every epoch, with a checkpoint
    every `checkpoint_every` epochs (1; PBT's perturbation interval) and at the last.

    With `repeats` > 1 the trial is a configuration trained with that many seeds (fit_repeated): it reports
    their aggregate under each metric's name (what ASHA and the searcher judge), `<metric>_sd`, `n_seeds` and
    `seeds` {seed: metrics}, and its checkpoint folder holds every seed's checkpoint.

    Each checkpoint result carries RANK_SCORE, the `rank` metric's value at an evaluated epoch and the worst
    possible value at any other, so that Tune keeps the best-scoring checkpoint as well as the last.

    Each checkpoint names the trial that wrote it and the trials its weights came from: under PBT a
    trial may be restored from another trial's checkpoint (with the `mutable` keys perturbed); its first
    result then says whose (exploited_from, at epoch exploited_epoch) for MLflow's lineage tag."""
    from ray import tune
    from PIL import Image

    from trainables.checkpoint import save_checkpoint
    from trainables.loop import Epoch, combine, fit, fit_repeated

    me = tune.get_context().get_trial_id() or ""
    resume, lineage, came = None, [], {}
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            resume = load_trial_checkpoint(Path(d), family)
        if repeats == 1:
            lineage = [list(x) for x in resume.get("lineage", [])]
            donor = resume.get("trial_id")
            if donor and donor != me:
                lineage.append([int(resume["epoch"]), str(donor)])
                came = {"exploited_from": str(donor), "exploited_epoch": int(resume["epoch"])}
    metric, mode = rank
    # the worst score, finite: Tune's TensorBoard logger prints a line for every inf it is given
    worst = -sys.float_info.max if mode == "max" else sys.float_info.max
    # the best evaluated value so far and its epoch, reported with every result (`status` reads them from the run)
    peak: list = [None, None]

    def offer(m: dict) -> None:  # of equal values the later epoch, as Tune keeps the later of equal-scored checkpoints
        v = m.get(metric)
        if isinstance(v, (int, float)) and math.isfinite(v) and (peak[0] is None or (v >= peak[0] if mode == "max" else v <= peak[0])):
            peak[:] = [float(v), int(m["epoch"])]

    if resume is not None:  # the epochs before the checkpoint: the run's own, or its seeds' combined
        runs = list(resume.values()) if repeats > 1 else [resume]
        for i in range(min(len(r["history"]) for r in runs)):
            offer(combine({n: r["history"][i] for n, r in enumerate(runs)}, aggregate) if repeats > 1 else runs[0]["history"][i])

    def sink(e: Epoch) -> None:
        metrics = {**e.metrics, **came}
        came.clear()
        offer(e.metrics)
        if peak[0] is not None and metric:
            metrics[f"{metric}_best"], metrics["best_epoch"] = peak
        if e.seeds:
            metrics["seeds"] = {str(s): m for s, m in e.seeds.items()}
        if e.stop_reason:
            metrics["stop_reason"] = e.stop_reason
        if e.epoch % checkpoint_every and not e.stop_reason and e.epoch < int(config["epochs"]):
            tune.report(metrics)
            return
        value = e.metrics.get(metric)
        metrics[RANK_SCORE] = float(value) if isinstance(value, (int, float)) and math.isfinite(value) else worst
        with tempfile.TemporaryDirectory() as d:
            if e.seeds:
                for s, c in e.checkpoint.items():
                    save_checkpoint({**c, "trial_id": me}, Path(d) / seed_file(s))
            else:
                save_checkpoint({**e.checkpoint, "trial_id": me, "lineage": lineage}, Path(d) / CHECKPOINT)
            if e.grid is not None:
                Image.fromarray(e.grid.permute(1, 2, 0).numpy()).save(Path(d) / "samples.png")
            # whether the checkpoint holds samples.png: the driver then looks for it (a request per checkpoint on S3)
            metrics[SAMPLES] = e.grid is not None
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    if repeats > 1:
        fit_repeated(family, config, repeats, sink, resume=resume, aggregate=aggregate, quiet=True)
    else:
        fit(family, config, sink, resume=resume, quiet=True, mutable=mutable)
