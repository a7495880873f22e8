"""`gentune sweep`'s driver: each study of a spec through Ray Tune + Optuna (TPE, seeded) + ASHA, every trial in
MLflow, on one machine or a cluster, in a sweep folder on local or remote storage (search/folder.py).

The trial function is search/trial.py, the searcher and search space search/searcher.py, the Tune callbacks that
watch a study search/watches.py and search/tracking.py (MLflow).
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from search.checkpoints import deferred, prune
from search.cluster import adapt_resources, check_address
from search.folder import check_folder, default_store, spool_dir, sweep_dir, tracking_uri_for, write_info
from search.searcher import DefineByRun, evaluated_optuna_search, full_config, optuna_storage, pbt_scheduler, save_optuna, tune_domain
from search.spec import Spec, Study
from search.trial import RANK_SCORE, run_trial
from search.watches import SIGINTS, pending_watch, sigint_watch
from trainables.errors import SpecError
from trainables.lease import Lease
from trainables.storage import Folder, join


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


# How long a driver ending a study waits for MLflow to take what is left (an outage longer than this
# leaves the rest in the journal for --resume).
TRACKING_DRAIN_S = float(os.environ.get("GENTUNE_TRACKING_DRAIN_S", "60"))


def run_study(spec: Spec, st: Study, root: str, uri: str, exp_id: str, resume: bool, quiet: bool):
    """Run one study through Tune; returns (ResultGrid, best Result or None, interrupted)."""
    from search.tracking import Writer

    w = Writer(uri, exp_id, spool_dir(root), spec.name, st.name)
    w.append({"op": "study", "run": "study", "name": st.name, "spec": json.dumps(spec.source, indent=2, default=str), "tags": {
        "gentune.sweep": spec.name, "gentune.study": st.name, "gentune.kind": "study", "gentune.family": st.family,
        "gentune.metric": st.metric, "gentune.mode": st.mode, "gentune.storage": join(root, st.name),
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
        save_optuna(root)


def _run_study(spec: Spec, st: Study, root: str, resume: bool, quiet: bool, w):
    import optuna
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback
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
    # Tune's result.json logger is what every command reads; its CSV and TensorBoard loggers (off, below)
    # would write the same numbers twice more, per result, from the driver's loop
    callbacks = [JsonLoggerCallback(), MlflowTrials(st.name, st.family, st.epochs, watch=mutable, repeats=st.repeats),
                 pending_watch(st.name, root), sigint_watch(st.name)]
    path = join(root, st.name)
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
                # num_to_keep=1 scored by RANK_SCORE: the best evaluated epoch's checkpoint, and Tune never
                # deletes the latest: at most two per trial (search/checkpoints.py defers each deletion until
                # the stored experiment state no longer names it). PBT checkpoints at perturbations only and
                # keeps three: the donor's checkpoint a trial continues from, the donor's next, and that
                # trial's own last.
                checkpoint_config=tune.CheckpointConfig(num_to_keep=3) if pbt else tune.CheckpointConfig(
                    num_to_keep=1, checkpoint_score_attribute=RANK_SCORE, checkpoint_score_order=st.mode),
            ),
        )
    SIGINTS.discard(st.name)
    before = signal.getsignal(signal.SIGINT)
    # MLflow holds every metric and result.json (the JsonLoggerCallback above) every result: Tune adds no
    # progress.csv or TensorBoard events besides, unless the user's environment asks for them (0)
    auto_loggers = os.environ.get("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS")
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = auto_loggers or "1"
    try:
        with deferred():
            grid = tuner.fit()
    finally:
        if auto_loggers is None:  # as it was: this process's other Tune runs keep Tune's defaults
            os.environ.pop("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", None)
        # Tune leaves its own handler installed after a run that was not interrupted: a Ctrl-C between
        # studies then went nowhere. Put back the one from before (Python's: KeyboardInterrupt).
        signal.signal(signal.SIGINT, before)
    if resume:  # checkpoints a killed driver had queued for deletion
        prune(grid)
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


def result_trial_id(r) -> str:
    """The trial id of a Tune Result. Not result.metrics["trial_id"]: a trial PBT restored from another's
    checkpoint that had no epoch left to run ends with the other trial's last result."""
    from analysis.sweepdata import trial_id_of

    return (trial_id_of(Path(r.path)) if r.path and "://" not in str(r.path) else None) or (r.metrics or {}).get("trial_id", "?")


def trial_states(grid) -> dict[str, str]:
    """Tune's final state of each trial of a finished tuner.fit(): TERMINATED, ERROR, or (interrupted) other."""
    analysis = getattr(grid, "_experiment_analysis", None)
    return {t.trial_id: t.status for t in getattr(analysis, "trials", [])}


def run_sweep(spec: Spec, *, storage: str | None, name: str | None, address: str | None, resume: bool,
              tracking_uri: str = "", quiet: bool = False, meta: dict | None = None) -> dict[str, Any]:
    """Run every study of `spec`; returns {root, tracking_uri, results: {study: (ResultGrid, best Result)},
    interrupted, failed: [(study, trial_id, message)]}."""
    import dataclasses

    from search.spec import plain_name

    if name is not None:
        spec = dataclasses.replace(spec, name=plain_name("--name", name))
    root = sweep_dir(spec, storage, name)
    folder = Folder(root)
    local = not folder.remote
    rp = Path(root) if local else None
    uri = tracking_uri_for(rp, tracking_uri or spec.tracking_uri)
    old_info = check_folder(folder, resume, spec.source, bool((meta or {}).get("smoke")))
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
    lease = Lease.acquire(folder)  # one driver per sweep, on any storage
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
                # Ray sends this machine's token to a cluster it finds with "auto" only, never to an address typed
                # out; a cluster started with `ray start` (token auth by default) then refuses the driver
                hint = ("; if the cluster uses token authentication (Ray's default for `ray start`), set "
                        "RAY_AUTH_MODE=token" if address not in (None, "auto", "local")
                        and "RAY_AUTH_MODE" not in os.environ else "")
                raise SpecError(f"--address {address}: cannot join the Ray cluster ({first[:200]}){hint}") from None
        spec = adapt_resources(spec, local=address in (None, "local"), quiet=quiet)
        try:
            exp_id = ensure_experiment(uri, spec.experiment or spec.name, rp / "mlartifacts" if local else None)
        except Exception as e:
            if not transient(e):
                raise
            raise SpecError(f"MLflow at {uri} does not answer ({error_line(str(e))[:200]}); start it or pass "
                            "another --tracking-uri") from None
        info = {"name": spec.name, "tracking_uri": uri, "local_store": local and uri == default_store(rp),
                "experiment_id": exp_id, "studies": [s.name for s in spec.studies],
                "families": {s.name: s.family for s in spec.studies}, "metrics": {s.name: [s.metric, s.mode] for s in spec.studies},
                "objectives": {s.name: [list(o) for o in s.objectives] for s in spec.studies},
                "time_budget_s": {s.name: s.time_budget_s for s in spec.studies},
                "trials": {s.name: s.trials for s in spec.studies}, "rank_by": {s.name: s.rank_by for s in spec.studies},
                "repeats": {s.name: s.repeats for s in spec.studies}, "spec": spec.source, **(meta or {})}
        info["started"] = (old_info or {}).get("started", time.time())
        info["state"] = "running"
        write_info(folder, info)
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
        info["state"] = "interrupted" if interrupted else ("failed" if failed else "finished")
        info["ended"] = time.time()
        write_info(folder, info)
        return {"root": root, "tracking_uri": uri, "results": results, "interrupted": interrupted, "failed": failed}
    except KeyboardInterrupt:  # a Ctrl-C outside Tune's loop (between studies, a second one while it stops)
        if info:
            info.update(state="interrupted", ended=time.time())
            write_info(folder, info)
        raise
    finally:
        lease.release()
