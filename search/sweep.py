"""`gentune sweep`: Ray Tune + Optuna (TPE, seeded) + ASHA over a validated spec, every trial in MLflow.

Folder of a sweep (local storage): <storage>/<name>/
  sweep.json      what was run (spec source, overrides, smoke, start time, tracking URI)
  mlflow.db       the MLflow store (unless --tracking-uri / $MLFLOW_TRACKING_URI), mlartifacts/
  <study>/        Ray Tune's experiment folder of each study (trials, checkpoints, resumable state)
"""
from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from analysis.errors import SpecError
from search.spec import Domain, Spec, Study

CHECKPOINT = "checkpoint.pt"


def run_trial(config: dict[str, Any], family: str) -> None:
    """The Tune function trainable: resume from Tune's checkpoint, report every epoch with a checkpoint."""
    from ray import tune
    from PIL import Image

    from trainables.loop import Epoch, fit, load_checkpoint, save_checkpoint

    resume = None
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            resume = load_checkpoint(Path(d) / CHECKPOINT, family)

    def sink(e: Epoch) -> None:
        with tempfile.TemporaryDirectory() as d:
            save_checkpoint(e.checkpoint, Path(d) / CHECKPOINT)
            if e.grid is not None:
                Image.fromarray(e.grid.permute(1, 2, 0).numpy()).save(Path(d) / "samples.png")
            metrics = dict(e.metrics)
            if e.stop_reason:
                metrics["stop_reason"] = e.stop_reason
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    fit(family, config, sink, resume=resume, quiet=True)


class DefineByRun:
    """Optuna define-by-run space: conditional keys are only suggested when their `when` holds."""

    def __init__(self, domains: tuple[Domain, ...], fixed: dict[str, Any]) -> None:
        self.domains, self.fixed = domains, fixed

    def __call__(self, trial) -> dict[str, Any]:
        chosen: dict[str, Any] = {}
        for d in self.domains:
            if not all(chosen.get(k, self.fixed.get(k)) == v for k, v in d.when):
                continue
            if d.kind == "loguniform":
                chosen[d.key] = trial.suggest_float(d.key, *d.args, log=True)
            elif d.kind == "uniform":
                chosen[d.key] = trial.suggest_float(d.key, *d.args)
            elif d.kind == "int":
                chosen[d.key] = trial.suggest_int(d.key, *d.args)
            else:
                chosen[d.key] = trial.suggest_categorical(d.key, list(d.args))
        return {**self.fixed, **chosen}


def sweep_dir(spec: Spec, storage: str | None, name: str | None) -> str:
    base = storage or spec.storage
    if "://" in base:
        return f"{base.rstrip('/')}/{name or spec.name}"
    return str((Path(base).expanduser() / (name or spec.name)).resolve())


def preflight(spec: Spec) -> None:
    """Checks that need more than the spec file: FID weights for an FID-ranked study, the digit evaluator."""
    from trainables.config import config_class, from_flat

    for st in spec.studies:
        cfg = from_flat(config_class(st.family), st.config)
        if st.family == "gan" and (st.metric == "fid" or cfg.fid == "on"):
            from analysis.metrics.fid import require_weights

            require_weights(cfg.fid_weights or None)
            if cfg.fid == "off":
                raise SpecError(f"study {st.name}: metric fid needs config fid: on or auto, not off")


def prepare(spec: Spec, quiet: bool) -> None:
    """Decode datasets and train the digit evaluator once in the driver, not once per concurrent trial."""
    import torch

    from trainables.config import config_class, from_flat
    from trainables.data import load_split
    from trainables.evaluator import ensure_evaluator

    for st in spec.studies:
        cfg = from_flat(config_class(st.family), st.config)
        if st.family == "ddpm":
            ensure_evaluator(cfg.data, torch.device("cpu"), cfg.cache_dir, quiet)
        elif st.family == "gan":
            load_split(cfg.data, "train", 64, "faces", cfg.cache_dir, quiet)
        else:
            for dc in (cfg.source, cfg.target):
                for split in ("train", "val"):
                    load_split(dc, split, 32, "digits", cfg.cache_dir, quiet)


def run_study(spec: Spec, st: Study, root: str, uri: str, exp_id: str, resume: bool, quiet: bool):
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from search.tracking import MlflowTrials, client, find_run

    parent = find_run(uri, exp_id, sweep=spec.name, study=st.name, kind="study")
    c = client(uri)
    if parent is None:
        parent = c.create_run(exp_id, run_name=st.name, tags={
            "gentune.sweep": spec.name, "gentune.study": st.name, "gentune.kind": "study", "gentune.family": st.family,
            "gentune.metric": st.metric, "gentune.mode": st.mode, "gentune.storage": f"{root}/{st.name}",
        })
        c.log_text(parent.info.run_id, json.dumps(spec.source, indent=2, default=str), "spec.json")
    else:
        c.update_run(parent.info.run_id, status="RUNNING")
    pid = parent.info.run_id

    trainable = tune.with_resources(tune.with_parameters(run_trial, family=st.family), {"cpu": st.cpu, "gpu": st.gpu})
    callbacks = [MlflowTrials(uri, exp_id, pid, spec.name, st.name, st.family, st.epochs)]
    path = f"{root}/{st.name}"
    if resume and tune.Tuner.can_restore(path):
        print(f"gentune sweep: resuming study {st.name} from {path}", file=sys.stderr)
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        scheduler = ASHAScheduler(time_attr="epoch", max_t=st.epochs, grace_period=min(st.grace_period, st.epochs),
                                  reduction_factor=st.reduction_factor)
        if st.search:
            sampler = optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=max(2, min(10, st.trials // 2)))
            search = ConcurrencyLimiter(OptunaSearch(DefineByRun(st.search, dict(st.config)), metric=st.metric, mode=st.mode, sampler=sampler), st.concurrency)
            param_space: dict[str, Any] = {}
        else:
            search, param_space = None, dict(st.config)
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric=st.metric, mode=st.mode, search_alg=search, scheduler=scheduler, num_samples=st.trials,
                max_concurrent_trials=st.concurrency, time_budget_s=st.time_budget_s or None,
            ),
            run_config=tune.RunConfig(
                name=st.name, storage_path=root, callbacks=callbacks, verbose=0 if quiet else 1,
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                # num_to_keep=1: Tune then saves its experiment state with every trial checkpoint (it
                # forces a save every num_to_keep checkpoints), so after a driver crash `--resume` never
                # reruns a trial that had finished, nor restarts one from an older checkpoint than its last.
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            ),
        )
    grid = tuner.fit()
    best = None
    try:
        best = grid.get_best_result(metric=st.metric, mode=st.mode, scope="last")
    except RuntimeError:
        pass
    if best is not None and best.metrics and st.metric in best.metrics:
        c.log_metric(pid, f"best_{st.metric}", float(best.metrics[st.metric]))
        c.set_tag(pid, "gentune.best_trial_id", best.metrics.get("trial_id", ""))
        c.log_text(pid, json.dumps(best.config, indent=2, default=str), "best_config.json")
    c.set_terminated(pid, status="FINISHED")
    return grid, best


def check_address(address: str | None) -> None:
    """Fail fast on a --address nobody answers at: ray.init would retry for minutes, then raise a traceback."""
    if not address or address in ("auto", "local"):
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise SpecError(f"--address {address!r}: expected auto or HOST:PORT of a Ray cluster's head")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise SpecError(f"--address {address}: no Ray cluster answers there ({e.strerror or e})") from None


def run_sweep(spec: Spec, *, storage: str | None, name: str | None, address: str | None, resume: bool,
              tracking_uri: str = "", quiet: bool = False, meta: dict | None = None) -> dict[str, Any]:
    """Run every study of `spec`; returns {study: (ResultGrid, best Result)}."""
    import ray

    from search.tracking import ensure_experiment, tracking_uri_for

    spec = spec if name is None else type(spec)(**{**spec.__dict__, "name": name})
    root = sweep_dir(spec, storage, name)
    local = "://" not in root
    if local:
        rp = Path(root)
        if rp.exists() and any(rp.iterdir()) and not resume:
            raise SpecError(f"sweep folder {rp} already exists; add --resume to continue it or --name for a new sweep")
    uri = tracking_uri_for(Path(root) if local else None, tracking_uri or spec.tracking_uri)
    # Everything that can refuse the sweep runs before its folder is made: a refused sweep leaves
    # nothing behind that would make the next run demand --resume.
    check_address(address)
    preflight(spec)
    prepare(spec, quiet)
    # Results may lack the ranking metric (epochs between evaluations with eval_every > 1, the epoch a
    # trial diverges in); Tune's strict check would end the whole sweep on one. ASHA and Optuna skip them.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    # one experiment-state save per trial checkpoint is intended (num_to_keep=1 below): no warning for it
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if not ray.is_initialized():
        try:
            # "local": a new instance, never a cluster some earlier `ray start` left running
            ray.init(address=address or "local", include_dashboard=False, log_to_driver=not quiet,
                     logging_level="WARNING", configure_logging=True)
        except ConnectionError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SpecError(f"--address {address}: cannot join the Ray cluster ({first[:200]})") from None
    if local:
        rp.mkdir(parents=True, exist_ok=True)
    exp_id = ensure_experiment(uri, spec.experiment or spec.name, Path(root) / "mlartifacts" if local else None)
    if local:
        info = {"name": spec.name, "tracking_uri": uri, "experiment_id": exp_id, "studies": [s.name for s in spec.studies],
                "families": {s.name: s.family for s in spec.studies}, "metrics": {s.name: [s.metric, s.mode] for s in spec.studies},
                "time_budget_s": {s.name: s.time_budget_s for s in spec.studies}, "spec": spec.source, **(meta or {})}
        old = Path(root) / "sweep.json"
        if old.exists():
            info["started"] = json.loads(old.read_text()).get("started", time.time())
        info.setdefault("started", time.time())
        old.write_text(json.dumps(info, indent=2, default=str))
    results = {}
    for st in spec.studies:
        if not quiet:
            print(f"gentune sweep: study {st.name} ({st.family}): {st.trials} trial(s), metric {st.metric} ({st.mode})", file=sys.stderr)
        results[st.name] = run_study(spec, st, root, uri, exp_id, resume, quiet)
    return {"root": root, "tracking_uri": uri, "results": results}


def summary_table(grid, st_metric: str) -> str:
    """Plain-text table of trials: id, status, epochs, metric, stop reason, searched params."""
    rows = []
    for r in grid:
        m = r.metrics or {}
        rows.append((m.get("trial_id", "?"), "ERROR" if r.error else "OK", m.get("epoch", 0),
                     m.get(st_metric), m.get("stop_reason", "")))
    lines = [f"{'trial':<12} {'status':<6} {'epochs':>6} {st_metric:>12}  stop reason"]
    for t, s, e, v, why in rows:
        vs = f"{v:.4f}" if isinstance(v, (int, float)) else "-"
        lines.append(f"{t:<12} {s:<6} {e:>6} {vs:>12}  {why}")
    return "\n".join(lines)
