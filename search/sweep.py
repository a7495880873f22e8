"""`gentune sweep`: Ray Tune + Optuna (TPE, seeded) + ASHA over a validated spec, every trial in MLflow.

Folder of a sweep (local storage): <storage>/<name>/
  sweep.json      what was run (spec source, overrides, smoke, start time, tracking URI)
  mlflow.db       the MLflow store (unless --tracking-uri / $MLFLOW_TRACKING_URI), mlartifacts/
  <study>/        Ray Tune's experiment folder of each study (trials, checkpoints, resumable state)
"""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from trainables.errors import SpecError
from search.spec import Domain, Spec, Study

CHECKPOINT = "checkpoint.pt"


RANK_SCORE = "rank_score"  # every checkpoint's score for Tune's CheckpointConfig: keeps the best one besides the last


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
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    if repeats > 1:
        fit_repeated(family, config, repeats, sink, resume=resume, aggregate=aggregate, quiet=True)
    else:
        fit(family, config, sink, resume=resume, quiet=True, mutable=mutable)


def evaluated_optuna_search(max_epochs: int, **kwargs):
    """Ray's OptunaSearch, told what really happened to each trial.

    Trials report every epoch (each report carries the epoch's checkpoint, so a trial resumes from
    its last epoch and MLflow gets every loss), but the metric only at evaluation epochs
    (`eval_every`). Ray's OptunaSearch reads result[metric] from every result and ends the sweep with
    a KeyError on the others; ASHA already skips them, and its rungs are evaluation epochs (the spec
    rounds the grace period up to a multiple of eval_every).

    Optuna is told: each evaluated value as an intermediate value at its epoch; a trial that ASHA stopped
    before its last epoch as PRUNED (Ray tells it COMPLETE at its rung value, and TPE would then model a
    2-epoch accuracy as a final one); a diverged trial as FAIL, so TPE does not treat it as merely slow.
    The stored study names its objectives (optuna-dashboard shows "target_acc", not "Objective 0").
    """
    from ray.tune.search.optuna import OptunaSearch

    from trainables.loop import is_failure

    class EvaluatedOptunaSearch(OptunaSearch):
        def _setup_study(self, mode):
            import warnings

            import optuna

            super()._setup_study(mode)
            with warnings.catch_warnings():  # "experimental" since Optuna 3.2: not a line for the user
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._ot_study.set_metric_names(self._metric if isinstance(self._metric, list) else [self._metric])

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            # a multi-objective study has no intermediate values in Optuna
            if isinstance(self.metric, list) or trial_id in self._completed_trials:
                return
            value = result.get(self.metric)
            if isinstance(value, (int, float)) and math.isfinite(value):
                self._ot_trials[trial_id].report(float(value), int(result.get("epoch", result.get("training_iteration", 0))))

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            if result and is_failure(result.get("stop_reason")):
                result, error = None, True
            elif result and not error:
                # the result that ended the trial (a rung's or the last epoch's) comes here, not to on_trial_result
                self.on_trial_result(trial_id, result)
                if int(result.get("epoch", max_epochs)) < max_epochs:
                    result = None  # stopped at a rung: Ray's OptunaSearch tells a trial without a result PRUNED
            super().on_trial_complete(trial_id, result, error)

    return EvaluatedOptunaSearch(**kwargs)


class DefineByRun:
    """Optuna define-by-run space: conditional keys are only suggested when their `when` holds."""

    def __init__(self, domains: tuple[Domain, ...], fixed: dict[str, Any], defaults: dict[str, Any] | None = None) -> None:
        # `when` reads a key searched earlier, else its fixed value, else the family's default
        self.domains, self.fixed, self.lookup = domains, fixed, {**(defaults or {}), **fixed}

    def __call__(self, trial) -> dict[str, Any]:
        chosen: dict[str, Any] = {}
        for d in self.domains:
            if not all(chosen.get(k, self.lookup.get(k)) == v for k, v in d.when):
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


def full_config(st: Study) -> dict[str, Any]:
    from trainables.config import from_flat, to_flat
    from trainables.families import config_class

    return to_flat(from_flat(config_class(st.family), st.config))


def join_path(base: str, *parts: str) -> str:
    """`base`/parts for a folder or a URI. A URI's query string (pyarrow's options, e.g.
    s3://bucket/x?endpoint_override=host:9000) stays at the end, after the joined path."""
    if "://" not in base:
        return str(Path(base, *parts))
    head, q, query = base.partition("?")
    return "/".join([head.rstrip("/"), *(p.strip("/") for p in parts)]) + q + query


def sweep_dir(spec: Spec, storage: str | None, name: str | None) -> str:
    base = storage or spec.storage
    if "://" in base:
        return join_path(base, name or spec.name)
    return str((Path(base).expanduser() / (name or spec.name)).resolve())


def preflight(spec: Spec) -> None:
    """Checks that need more than the spec file: FID weights for an FID-ranked study, the digit evaluator."""
    from trainables.config import from_flat
    from trainables.families import config_class

    for st in spec.studies:
        cfg = from_flat(config_class(st.family), st.config)
        if st.family == "gan" and (st.metric == "fid" or cfg.fid == "on"):
            from trainables.metrics.fid import require_weights

            require_weights(cfg.fid_weights or None)
            if cfg.fid == "off":
                raise SpecError(f"study {st.name}: metric fid needs config fid: on or auto, not off")


def prepare(spec: Spec, quiet: bool) -> None:
    """Decode datasets and train the digit evaluator once in the driver, not once per concurrent trial."""
    from trainables import families
    from trainables.config import from_flat

    for st in spec.studies:
        families.prepare(st.family, from_flat(families.config_class(st.family), st.config), quiet)


def spool_dir(root: str, name: str) -> Path:
    """Where tracking's journal lives: in a local sweep folder (it is part of the sweep), on local disk for a
    remote one (appending to an object store is not possible; the driver that resumes it must run here)."""
    if "://" not in root:
        return Path(root) / ".tracking"
    import hashlib

    return Path.home() / ".cache" / "gentune" / "tracking" / f"{name}-{hashlib.sha1(root.encode()).hexdigest()[:10]}"


# How long a driver ending a study waits for MLflow to take what is left (an outage longer than this
# leaves the rest in the journal for --resume).
TRACKING_DRAIN_S = float(os.environ.get("GENTUNE_TRACKING_DRAIN_S", "60"))


def run_study(spec: Spec, st: Study, root: str, uri: str, exp_id: str, resume: bool, quiet: bool):
    """Run one study through Tune; returns (ResultGrid, best Result or None, interrupted)."""
    from search.tracking import Writer

    w = Writer(uri, exp_id, spool_dir(root, spec.name), spec.name, st.name)
    w.append({"op": "study", "run": "study", "name": st.name, "spec": json.dumps(spec.source, indent=2, default=str), "tags": {
        "gentune.sweep": spec.name, "gentune.study": st.name, "gentune.kind": "study", "gentune.family": st.family,
        "gentune.metric": st.metric, "gentune.mode": st.mode, "gentune.storage": join_path(root, st.name),
        "gentune.objectives": ",".join(f"{m}:{mode}" for m, mode in st.objectives), "gentune.rank_by": st.rank_by,
        "gentune.repeats": str(st.repeats), "gentune.aggregate": st.aggregate}})
    interrupted = True  # until fit() has returned and said otherwise
    try:
        grid, best, interrupted = _run_study(spec, st, root, resume, quiet, w)
        return grid, best, interrupted
    finally:
        # no run this driver opened is left RUNNING, whatever ended the study (Ctrl-C twice, an error)
        w.end_unended("interrupted: the driver stopped before the trial ended")
        w.append({"op": "end", "run": "study", "status": "KILLED" if interrupted else "FINISHED"})
        w.close(TRACKING_DRAIN_S if not interrupted else min(TRACKING_DRAIN_S, 10))


def _run_study(spec: Spec, st: Study, root: str, resume: bool, quiet: bool, w):
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
    from search.tracking import MlflowTrials
    from trainables import families

    pbt = st.scheduler == "pbt"
    mutable = tuple(d.key for d in st.search if d.key in families.family(st.family).pbt_mutable and d.kind != "choice") if pbt else ()
    trainable = tune.with_resources(tune.with_parameters(run_trial, family=st.family, mutable=mutable,
                                                         checkpoint_every=st.perturbation_interval if pbt else 1,
                                                         repeats=st.repeats, aggregate=st.aggregate, rank=(st.metric, st.mode)),
                                    {"cpu": st.cpu, "gpu": st.gpu})
    callbacks = [MlflowTrials(st.name, st.family, st.epochs, watch=mutable, repeats=st.repeats),
                 pending_watch(st.name, root if "://" not in root else None), sigint_watch(st.name)]
    path = join_path(root, st.name)
    multi = len(st.objectives) > 1
    if resume and tune.Tuner.can_restore(path):
        print(f"gentune sweep: resuming study {st.name} from {path}", file=sys.stderr)
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        param_space: dict[str, Any] = {}
        if st.scheduler == "fifo":
            scheduler = FIFOScheduler()
        elif pbt:
            scheduler = pbt_scheduler(st, mutable)
        else:
            scheduler = ASHAScheduler(time_attr="epoch", max_t=st.epochs, grace_period=min(st.grace_period, st.epochs),
                                      reduction_factor=st.reduction_factor)
        if pbt:  # Tune's seeded random sampling: PBT then copies and perturbs
            search = BasicVariantGenerator(points_to_evaluate=[dict(p) for p in st.start_from] or None,
                                           random_state=spec.seed, max_concurrent=st.concurrency)
            param_space = {**st.config, **{d.key: tune_domain(d) for d in st.search}}
        elif st.search:
            optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per study it makes
            if st.searcher == "random":
                sampler = optuna.samplers.RandomSampler(seed=spec.seed)
            else:
                sampler = optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=max(2, min(10, st.trials // 2)))
            metrics = [m for m, _ in st.objectives] if multi else st.metric
            modes = [m for _, m in st.objectives] if multi else st.mode
            searcher = evaluated_optuna_search(
                st.epochs, space=DefineByRun(st.search, dict(st.config), full_config(st)), metric=metrics, mode=modes, sampler=sampler,
                points_to_evaluate=[dict(p) for p in st.start_from] or None,
                storage=optuna_storage(root), study_name=st.name)
            search = ConcurrencyLimiter(searcher, st.concurrency)
        else:
            search, param_space = None, dict(st.config)
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                # a multi-objective study: the searcher holds the metrics, the FIFO scheduler needs none
                metric=None if multi else st.metric, mode=None if multi else st.mode, search_alg=search,
                scheduler=scheduler, num_samples=st.trials,
                # the ConcurrencyLimiter bounds a searched study; Tune's own cap bounds the others
                max_concurrent_trials=None if search is not None else st.concurrency, time_budget_s=st.time_budget_s or None,
            ),
            run_config=tune.RunConfig(
                name=st.name, storage_path=root, callbacks=callbacks, verbose=0 if quiet else 1,
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                # num_to_keep=1: Tune then saves its experiment state with every trial checkpoint (it
                # forces a save every num_to_keep checkpoints), so after a driver crash `--resume` never
                # reruns a trial that had finished, nor restarts one from an older checkpoint than its last.
                # Scored by RANK_SCORE, the one kept is the best evaluated epoch's, and Tune never deletes the
                # latest: at most two per trial. PBT checkpoints at perturbations only and keeps three: the
                # donor's checkpoint a trial continues from, the donor's next, and that trial's own last.
                checkpoint_config=tune.CheckpointConfig(num_to_keep=3) if pbt else tune.CheckpointConfig(
                    num_to_keep=1, checkpoint_score_attribute=RANK_SCORE, checkpoint_score_order=st.mode),
            ),
        )
    SIGINTS.discard(st.name)
    before = signal.getsignal(signal.SIGINT)
    try:
        grid = tuner.fit()
    finally:
        # Tune leaves its own handler installed after a run that was not interrupted: a Ctrl-C between
        # studies then went nowhere. Put back the one from before (Python's: KeyboardInterrupt).
        signal.signal(signal.SIGINT, before)
    states = trial_states(grid)
    # interrupted: Ctrl-C reached Tune (its cleanup marks the running trials TERMINATED as if finished, so the
    # states alone cannot tell), a trial left unfinished, or fewer trials made than planned (no time budget)
    interrupted = st.name in SIGINTS or any(v not in ("TERMINATED", "ERROR") for v in states.values()) or (
        bool(states) and len(states) < st.trials and not st.time_budget_s)
    # no best where no trial reported a finite value of the metric (all failed, or were interrupted before their
    # first evaluation): Ray would raise for that, and it is not an error of the sweep
    reported = any(r.metrics and isinstance(r.metrics.get(st.metric), (int, float))
                   and math.isfinite(r.metrics[st.metric]) for r in grid)
    scope = "all" if st.rank_by == "best" else "last"  # the trial's best evaluated epoch, or its last
    best = grid.get_best_result(metric=st.metric, mode=st.mode, scope=scope) if reported else None
    if best is not None and best.metrics and st.metric in best.metrics:
        value = float(best.metrics[st.metric])
        df = best.metrics_dataframe
        if scope == "all" and df is not None and st.metric in df:
            value = float(df[st.metric].max() if st.mode == "max" else df[st.metric].min())
        w.append({"op": "metrics", "run": "study", "step": 0, "ts": int(time.time() * 1000),
                  "values": {f"best_{st.metric}": value}})
        w.append({"op": "tags", "run": "study", "tags": {"gentune.best_trial_id": result_trial_id(best)}})
        w.append({"op": "text", "run": "study", "name": "best_config.json", "text": json.dumps(best.config, indent=2, default=str)})
    if multi:
        front = tag_pareto(w, grid, st.objectives)
        if not quiet:
            print(f"gentune sweep: study {st.name}: Pareto-optimal trials on {', '.join(m for m, _ in st.objectives)}: "
                  f"{', '.join(front) or 'none'}", file=sys.stderr)
    return grid, best, interrupted


def check_tune_state(folder: Path) -> None:
    """What Tuner.restore reads of a study's folder, checked first: a damaged file is one line naming it, not
    Ray's traceback from the middle of its restore. tuner.pkl and the searcher's state are unpickled (files this
    sweep wrote; Ray loads them the same way), the newest experiment state must be Tune's JSON."""
    import cloudpickle

    from trainables.filecheck import fail, read_json, require_file

    states = sorted(folder.glob("experiment_state-*.json"))
    if states:
        state = read_json(states[-1], "Ray Tune's experiment state (a JSON object)")
        if not isinstance(state, dict) or not isinstance(state.get("trial_data"), list):
            raise fail(states[-1], "trial_data", "Ray Tune's list of trials",
                       state.get("trial_data") if isinstance(state, dict) else state)
    for f in [folder / "tuner.pkl", *sorted(folder.glob("searcher-state-*.pkl"))[-1:]]:
        require_file(f, "Ray Tune's saved state")
        try:
            with open(f, "rb") as fh:
                cloudpickle.load(fh)
        except Exception as e:  # whatever unpickling raises on a damaged file: the file is named, the cause shown
            raise fail(f, "", f"Ray Tune's saved state (it does not unpickle: {type(e).__name__}: {str(e)[:120]})") from None


def tune_domain(d: Domain):
    from ray import tune

    if d.kind == "loguniform":
        return tune.loguniform(*d.args)
    if d.kind == "uniform":
        return tune.uniform(*d.args)
    if d.kind == "int":
        return tune.randint(d.args[0], d.args[1] + 1)
    return tune.choice(list(d.args))


def pbt_scheduler(st: Study, mutable: tuple[str, ...]):
    """Ray's PBT over the study's float domains: every `perturbation_interval` (evaluated) epochs a trial in
    the bottom quarter continues from a top-quarter trial's checkpoint with its values x0.8 or x1.2 or
    resampled, kept inside the searched range. Synchronous: all trials reach the epoch before any is
    compared, so with fewer slots than trials no trial is judged against others that have not run yet,
    and a donor is at most one interval ahead when the trial continuing from it starts."""
    from ray.tune.schedulers import PopulationBasedTraining

    domains = {d.key: d for d in st.search if d.key in mutable}

    def clip(config: dict) -> dict:
        for k, d in domains.items():
            config[k] = min(max(float(config[k]), d.args[0]), d.args[1])
        return config

    return PopulationBasedTraining(time_attr="epoch", perturbation_interval=st.perturbation_interval,
                                   hyperparam_mutations={k: tune_domain(d) for k, d in domains.items()},
                                   custom_explore_fn=clip, synch=True,
                                   require_attrs=False)  # results between evaluations lack the metric


def optuna_storage(root: str):
    """The Optuna study kept in the sweep folder (optuna.db, one study per gentune study): `gentune dashboard`
    opens it. None (in memory) for remote storage."""
    if "://" in root:
        return None
    import optuna

    Path(root).mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(f"sqlite:///{Path(root).resolve() / 'optuna.db'}")


def tag_pareto(w, grid, objectives) -> list[str]:
    """Record a multi-objective study's Pareto-optimal trials (on their final values): a tag on the study
    run (gentune.pareto_trials) and gentune.pareto = 1 on each such trial's run."""
    from analysis.sweepdata import pareto_front
    from trainables.loop import is_failure

    names = [m for m, _ in objectives]
    points = {}
    for r in grid:
        m = r.metrics or {}
        if r.error is None and not is_failure(m.get("stop_reason")) and all(k in m for k in names):
            points[result_trial_id(r)] = tuple(float(m[k]) for k in names)
    front = pareto_front(points, tuple(mode for _, mode in objectives))
    w.append({"op": "tags", "run": "study", "tags": {"gentune.pareto_trials": ",".join(sorted(front))}})
    for tid in sorted(front):
        w.append({"op": "tags", "run": tid, "tags": {"gentune.pareto": "1"}})
    return sorted(front)


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


def adapt_resources(spec: Spec, local: bool, quiet: bool) -> Spec:
    """Fit the studies' requests to a local Ray instance; on a cluster, keep them (nodes may join later).

    A local instance without a GPU runs GPU-asking studies on the CPU and says so in one line: Tune
    would otherwise leave every trial PENDING forever without a word (the shipped specs ask for
    fractional GPUs). A CPU request above the machine's CPUs is lowered to all of them, likewise.
    """
    import dataclasses

    import ray

    if not local:
        return spec
    have = ray.cluster_resources()
    gpus, cpus = float(have.get("GPU", 0)), float(have.get("CPU", 1))
    studies = []
    for st in spec.studies:
        new = st
        if st.gpu > 0 and gpus == 0:
            print(f"gentune sweep: study {st.name} asks gpu {st.gpu:g} per trial but this machine has no GPU; "
                  "running its trials on the CPU (--set resources.gpu=0 says so in the spec)", file=sys.stderr)
            new = dataclasses.replace(new, gpu=0.0)
        elif st.gpu > gpus:
            raise SpecError(f"study {st.name}: resources.gpu {st.gpu:g} per trial, but this machine has {gpus:g} GPU(s)")
        if st.cpu > cpus:
            if not quiet:
                print(f"gentune sweep: study {st.name} asks cpu {st.cpu:g} per trial; this machine has {cpus:g}: "
                      f"using {cpus:g}", file=sys.stderr)
            new = dataclasses.replace(new, cpu=cpus)
        studies.append(new)
    return dataclasses.replace(spec, studies=tuple(studies))


PENDING_WARN_S = float(os.environ.get("GENTUNE_PENDING_WARN_S", "120"))


def pending_watch(study: str, root: str | None):
    """A Tune callback that says, once, when trials wait long for resources the cluster does not offer.

    It prints one line naming what each waiting trial asks for and what the cluster has, and writes
    <sweep>/waiting.json for `gentune status`; the file goes when every trial has been placed."""
    import ray
    from ray.tune import Callback

    class PendingWatch(Callback):
        def __init__(self) -> None:
            self.since: dict[str, float] = {}
            self.last_running = time.time()
            self.warned = False

        def on_step_end(self, iteration, trials, **info):
            now = time.time()
            pending = [t for t in trials if t.status == "PENDING"]
            if any(t.status == "RUNNING" for t in trials):
                self.last_running = now
            self.since = {t.trial_id: self.since.get(t.trial_id, now) for t in pending}
            path = Path(root) / "waiting.json" if root else None
            if not pending:
                if path is not None and path.exists():
                    path.unlink(missing_ok=True)
                return
            asks = pending[0].placement_group_factory.required_resources
            total = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU") or k in asks}
            never_fits = any(v > total.get(k, 0) for k, v in asks.items())
            # waiting is normal while other trials run; it is news when nothing has run for a while,
            # or when a trial asks for more than the whole cluster has
            stuck = now - max(self.last_running, min(self.since.values())) >= PENDING_WARN_S
            if not (stuck or (never_fits and now - min(self.since.values()) >= min(PENDING_WARN_S, 30))):
                return
            free = {k: v for k, v in ray.available_resources().items() if k in total}
            wait_s = now - min(self.since.values())
            msg = (f"{len(pending)} trial(s) of study {study} waiting {wait_s:.0f} s for resources: each asks "
                   f"{_res(asks)}; the cluster has {_res(total)} in all, {_res(free)} free")
            if path is not None:
                _write_json(path, {"study": study, "message": msg, "trials": len(pending), "asks": asks,
                                   "cluster": total, "since": now - wait_s, "updated": now})
            if not self.warned:
                print(f"gentune sweep: {msg}", file=sys.stderr, flush=True)
                self.warned = True

    return PendingWatch()


# Studies whose tuner.fit() a Ctrl-C reached (sigint_watch), in this driver process.
SIGINTS: set[str] = set()


def sigint_watch(study: str):
    """A Tune callback that notes a Ctrl-C reaching Tune's run of `study` in SIGINTS.

    Tune's handler only ends its loop; its cleanup then marks the running trials TERMINATED like
    finished ones, so after the last planned trial has started nothing else tells an interrupted study
    from a finished one. setup() runs after Tune has installed its handler: this wraps it."""
    from ray.tune import Callback

    class SigintWatch(Callback):
        def setup(self, **info):
            import importlib
            import threading

            if threading.current_thread() is not threading.main_thread():
                return  # Tune installs no handler there either
            tune_handler = signal.getsignal(signal.SIGINT)

            def noted(sig, frame):
                # by module, not by this closure's global: Tune pickles its callbacks by value with the
                # experiment, and the copy restored on --resume would note into a copy of the set
                importlib.import_module("search.sweep").SIGINTS.add(study)
                if callable(tune_handler):
                    tune_handler(sig, frame)
                elif tune_handler != signal.SIG_IGN:
                    raise KeyboardInterrupt

            signal.signal(signal.SIGINT, noted)

    return SigintWatch()


def _res(d: dict) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted(d.items())) or "nothing"


def _write_json(path: Path, obj: Any) -> None:
    """Atomic: `gentune status` reads these files while the driver writes them."""
    from trainables.files import atomic_open

    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2, default=str)


def result_trial_id(r) -> str:
    """The trial id of a Tune Result. Not result.metrics["trial_id"]: a trial PBT restored from another's
    checkpoint that had no epoch left to run ends with the other trial's last result."""
    from analysis.sweepdata import trial_id_of

    return (trial_id_of(Path(r.path)) if r.path and "://" not in str(r.path) else None) or (r.metrics or {}).get("trial_id", "?")


def trial_states(grid) -> dict[str, str]:
    """Tune's final state of each trial of a finished tuner.fit(): TERMINATED, ERROR, or (interrupted) other."""
    analysis = getattr(grid, "_experiment_analysis", None)
    return {t.trial_id: t.status for t in getattr(analysis, "trials", [])}


def spec_differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two spec sources differ (an absent mapping counts as an empty one)."""
    if isinstance(old, dict) or isinstance(new, dict):
        old, new = (x if isinstance(x, dict) else {} if x is None else {"": x} for x in (old, new))
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += spec_differences(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [prefix.rstrip(".") or "spec"]


class SweepLock:
    """An exclusive lock on a sweep folder for the life of the driver (fcntl: released if it dies)."""

    def __init__(self, root: Path) -> None:
        import fcntl

        self.f = open(root / ".gentune.lock", "a+")
        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.f.seek(0)
            holder = self.f.read().strip() or "?"
            self.f.close()
            raise SpecError(f"sweep folder {root} is in use by another gentune sweep (pid {holder}); "
                            "wait for it to finish or stop it first") from None
        self.f.seek(0)
        self.f.truncate()
        self.f.write(str(os.getpid()))
        self.f.flush()

    def release(self) -> None:
        self.f.close()


def check_folder(rp: Path, resume: bool, source: dict, smoke: bool) -> dict | None:
    """What a sweep folder allows: a new sweep needs it empty or absent; --resume needs the same spec."""
    if rp.exists() and not rp.is_dir():
        raise SpecError(f"sweep folder {rp} is a file, not a folder")
    info_path = rp / "sweep.json"
    if not resume:
        if rp.exists() and any(p.name != ".gentune.lock" for p in rp.iterdir()):
            raise SpecError(f"sweep folder {rp} already exists; add --resume to continue it or --name for a new sweep")
        return None
    if not info_path.exists() and not info_path.is_symlink():
        raise SpecError(f"--resume: there is no sweep in {rp} (no sweep.json); check --name and --storage")
    from analysis.sweepdata import check_optuna_db, read_sweep_json

    info = read_sweep_json(rp)  # a folder or a damaged file in its place: one line naming it
    db = rp / "optuna.db"
    if db.exists() or db.is_symlink():  # before Optuna opens it: it would add its tables to a foreign or emptied file
        check_optuna_db(db)
    for name in info["studies"]:  # what Tune will restore, before any study resumes and writes
        if (rp / name / "tuner.pkl").exists():
            check_tune_state(rp / name)
    diff = [d.replace("__set__.", "--set ") for d in spec_differences(info.get("spec"), source)]
    if bool(info.get("smoke")) != bool(smoke):
        diff.append("--smoke")
    if diff:
        raise SpecError(f"--resume: the spec differs from the one {rp.name} ran with in {', '.join(diff[:6])}; "
                        "resume with the same spec and --set values, or start a new sweep with --name")
    return info


def run_sweep(spec: Spec, *, storage: str | None, name: str | None, address: str | None, resume: bool,
              tracking_uri: str = "", quiet: bool = False, meta: dict | None = None) -> dict[str, Any]:
    """Run every study of `spec`; returns {root, tracking_uri, results: {study: (ResultGrid, best Result)},
    interrupted, failed: [(study, trial_id, message)]}."""
    import dataclasses

    from search.spec import plain_name

    if name is not None:
        spec = dataclasses.replace(spec, name=plain_name("--name", name))
    root = sweep_dir(spec, storage, name)
    local = "://" not in root
    rp = Path(root)
    old_info = check_folder(rp, resume, spec.source, bool((meta or {}).get("smoke"))) if local else None
    uri = tracking_uri_for(rp if local else None, tracking_uri or spec.tracking_uri)
    # Everything that can refuse the sweep runs before its folder is made: a refused sweep leaves
    # nothing behind that would make the next run demand --resume.
    check_address(address)
    preflight(spec)
    prepare(spec, quiet)
    import ray  # here: a refused spec or dataset is said before seconds of Ray and MLflow imports

    from search.tracking import ensure_experiment, error_line, transient
    from trainables.loop import is_failure

    # Results lack the ranking metric between evaluations (eval_every > 1) and in the epoch a trial
    # diverges: Tune's strict check would end the sweep on one; the searcher and ASHA skip them.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    # one experiment-state save per trial checkpoint is intended (num_to_keep=1 below): no warning for it
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if local:
        try:
            rp.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SpecError(f"cannot make the sweep folder {rp}: {e.strerror or e}") from None
    # The tracking writer retries a server that does not answer for as long as it takes, in its own
    # thread; the client's own retries (7, about 4 minutes by default) would only hold each write that long.
    for k, v in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1"), ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
                 ("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")):
        os.environ.setdefault(k, v)
    lock = SweepLock(rp) if local else None
    info: dict[str, Any] = {}
    try:
        if not ray.is_initialized():
            try:
                # "local": a new instance, never a cluster some earlier `ray start` left running. Family
                # modules (GENTUNE_FAMILIES) reach the workers of every node through the job's environment.
                plugins = {k: os.environ[k] for k in ("GENTUNE_FAMILIES",) if os.environ.get(k)}
                ray.init(address=address or "local", include_dashboard=False, log_to_driver=not quiet,
                         logging_level="WARNING", configure_logging=True,
                         runtime_env={"env_vars": plugins} if plugins else None)
            except ConnectionError as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise SpecError(f"--address {address}: cannot join the Ray cluster ({first[:200]})") from None
        spec = adapt_resources(spec, local=address in (None, "local"), quiet=quiet)
        try:
            exp_id = ensure_experiment(uri, spec.experiment or spec.name, rp / "mlartifacts" if local else None)
        except Exception as e:
            if not transient(e):
                raise
            raise SpecError(f"MLflow at {uri} does not answer ({error_line(str(e))[:200]}); start it or pass "
                            "another --tracking-uri") from None
        if local:
            info = {"name": spec.name, "tracking_uri": uri, "local_store": uri == default_store(rp),
                    "experiment_id": exp_id, "studies": [s.name for s in spec.studies],
                    "families": {s.name: s.family for s in spec.studies}, "metrics": {s.name: [s.metric, s.mode] for s in spec.studies},
                    "objectives": {s.name: [list(o) for o in s.objectives] for s in spec.studies},
                    "time_budget_s": {s.name: s.time_budget_s for s in spec.studies},
                    "trials": {s.name: s.trials for s in spec.studies}, "rank_by": {s.name: s.rank_by for s in spec.studies},
                    "repeats": {s.name: s.repeats for s in spec.studies}, "spec": spec.source, **(meta or {})}
            info["started"] = (old_info or {}).get("started", time.time())
            info["state"] = "running"
            _write_json(rp / "sweep.json", info)
        results, failed, interrupted = {}, [], False
        for st in spec.studies:
            if not quiet:
                why = (" (metric auto: FID weights found)" if st.metric == "fid" else
                       " (metric auto: no FID weights found, see `gentune fid --help`)") if st.auto_metric else ""
                what = (f"metrics {', '.join(f'{m} ({d})' for m, d in st.objectives)} (Pareto front)" if len(st.objectives) > 1
                        else f"metric {st.metric} ({st.mode})")
                print(f"gentune sweep: study {st.name} ({st.family}): {st.trials} trial(s), {what}, "
                      f"{st.searcher} + {st.scheduler}{why}", file=sys.stderr)
            for note in st.notes:  # what parsing changed is said even with --quiet
                print(f"gentune sweep: study {st.name}: {note}", file=sys.stderr)
            grid, best, interrupted = run_study(spec, st, root, uri, exp_id, resume, quiet)
            results[st.name] = (grid, best)
            for r in grid:
                if r.error is not None:
                    failed.append((st.name, result_trial_id(r), error_line(str(r.error))))
                elif is_failure((r.metrics or {}).get("stop_reason")):
                    failed.append((st.name, result_trial_id(r), r.metrics["stop_reason"]))
            if interrupted:
                break
        if local:
            info["state"] = "interrupted" if interrupted else ("failed" if failed else "finished")
            info["ended"] = time.time()
            _write_json(rp / "sweep.json", info)
        return {"root": root, "tracking_uri": uri, "results": results, "interrupted": interrupted, "failed": failed}
    except KeyboardInterrupt:  # a Ctrl-C outside Tune's loop (between studies, a second one while it stops)
        if local and info:
            info.update(state="interrupted", ended=time.time())
            _write_json(rp / "sweep.json", info)
        raise
    finally:
        if lock is not None:
            lock.release()


def default_store(rp: Path) -> str:
    return f"sqlite:///{(rp / 'mlflow.db').resolve()}"


def tracking_uri_for(sweep_dir: Path | None, explicit: str = "") -> str:
    """--tracking-uri, then $MLFLOW_TRACKING_URI, then the SQLite file in the sweep folder."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri:
        return uri
    if sweep_dir is None or "://" in str(sweep_dir):
        raise SpecError("a sweep on remote storage needs an MLflow server: pass --tracking-uri or set MLFLOW_TRACKING_URI")
    return default_store(sweep_dir)


def summary_table(grid, metrics: list[str]) -> str:
    """Plain-text table of trials: id, status, epochs, the study's metric(s), stop reason."""
    lines = [f"{'trial':<12} {'status':<6} {'epochs':>6} " + " ".join(f"{m:>12}" for m in metrics) + "  stop reason"]
    for r in grid:
        m = r.metrics or {}
        vals = " ".join(f"{m[k]:>12.4f}" if isinstance(m.get(k), (int, float)) else f"{'-':>12}" for k in metrics)
        lines.append(f"{result_trial_id(r):<12} {'ERROR' if r.error else 'OK':<6} {m.get('epoch', 0):>6} {vals}  "
                     f"{m.get('stop_reason', '')}")
    return "\n".join(lines)
