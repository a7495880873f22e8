"""MLflow for sweeps: one experiment per sweep, a parent run per study, one nested run per trial.

All writes happen in the driver (a Tune callback), so concurrent trials never write the store at
once, and a resumed sweep finds each trial's existing run by its tags instead of making a duplicate.
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

from ray.tune import Callback

SKIP_METRICS = {"epoch", "training_iteration", "time_this_iter_s", "time_total_s", "timestamp", "time_since_restore",
                "iterations_since_restore", "done", "pid"}


def error_line(text: str) -> str:
    """The line of a Ray error dump that says what went wrong ("DataError: ..."), not where."""
    import re

    lines = [x.strip() for x in text.splitlines() if x.strip()]
    hits = [x for x in lines if re.match(r"^[\w.]*(Error|Exception|Interrupt|Diverged)\b", x)]
    line = (hits or lines or ["unknown error"])[-1]
    return re.sub(r"^(\w+\.)+(?=\w+:)", "", line)[:300]


def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def ensure_experiment(uri: str, name: str, artifact_dir: Path | None) -> str:
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    loc = artifact_dir.resolve().as_uri() if artifact_dir is not None and "://" not in str(artifact_dir) else None
    return c.create_experiment(name, artifact_location=loc)


def find_run(uri: str, exp_id: str, **tags: str):
    flt = " and ".join(f"tags.`gentune.{k}` = '{v}'" for k, v in tags.items())
    runs = client(uri).search_runs([exp_id], filter_string=flt, max_results=2)
    return runs[0] if runs else None


def numeric(result: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in result.items():
        if k in SKIP_METRICS or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(v):
            out[k] = float(v)
    return out


class MlflowTrials(Callback):
    """Tune callback: a nested MLflow run per trial with params, per-epoch metrics, sample grids, status."""

    def __init__(self, uri: str, exp_id: str, parent_run_id: str, sweep: str, study: str, family: str, max_epochs: int,
                 watch: tuple[str, ...] = ()) -> None:
        self.uri, self.exp_id, self.parent = uri, exp_id, parent_run_id
        self.sweep, self.study, self.family, self.max_epochs = sweep, study, family, max_epochs
        self.watch = watch  # config keys PBT changes mid-run: logged as metrics hp.<key> each epoch
        self.runs: dict[str, str] = {}
        # last epoch logged per run: a trial resumed after a crash may report an epoch the store already holds
        self.logged: dict[str, int] = {}

    def __getstate__(self):  # the MLflow client is re-made after a restore
        return {k: v for k, v in self.__dict__.items() if k not in ("runs", "logged")} | {"runs": {}, "logged": {}}

    def run_id(self, trial) -> str:
        rid = self.runs.get(trial.trial_id)
        if rid is None:
            run = find_run(self.uri, self.exp_id, sweep=self.sweep, study=self.study, trial_id=trial.trial_id)
            if run is None:
                tags = {
                    "mlflow.parentRunId": self.parent, "mlflow.runName": f"{self.study}-{trial.trial_id}",
                    "gentune.sweep": self.sweep, "gentune.study": self.study, "gentune.family": self.family,
                    "gentune.trial_id": trial.trial_id, "gentune.kind": "trial",
                }
                run = client(self.uri).create_run(self.exp_id, tags=tags, run_name=f"{self.study}-{trial.trial_id}")
                from mlflow.entities import Param

                from trainables.config import from_flat, to_flat
                from trainables.families import config_class

                full = to_flat(from_flat(config_class(self.family), dict(trial.config)))  # every key, defaults included
                params = [Param(k, str(v)[:500]) for k, v in sorted(full.items())]
                for i in range(0, len(params), 100):
                    client(self.uri).log_batch(run.info.run_id, params=params[i : i + 100])
            else:
                client(self.uri).update_run(run.info.run_id, status="RUNNING")
                history = client(self.uri).get_metric_history(run.info.run_id, "epoch_time_s")  # one per epoch
                self.logged[run.info.run_id] = max((m.step for m in history), default=0)
            rid = run.info.run_id
            self.runs[trial.trial_id] = rid
        return rid

    def on_trial_start(self, iteration, trials, trial, **info):
        self.run_id(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        from mlflow.entities import Metric

        rid, step = self.run_id(trial), int(result.get("epoch", result.get("training_iteration", 0)))
        ts = int(result.get("timestamp", 0) * 1000)
        if result.get("exploited_from"):
            self.exploited(rid, result)
        config = result.get("config") or {}
        hp = {f"hp.{k}": config[k] for k in self.watch if isinstance(config.get(k), (int, float))}
        metrics = [Metric(k, v, ts, step) for k, v in numeric({**result, **hp}).items() if k != "exploited_epoch"]
        # An epoch already logged comes again when a driver crash left Tune's state one result behind the
        # store: the trial redoes it from the checkpoint before (same seed and RNG state); keep one record.
        if metrics and step > self.logged.get(rid, 0):
            client(self.uri).log_batch(rid, metrics=metrics)
            self.logged[rid] = step
        if result.get("stop_reason"):
            client(self.uri).set_tag(rid, "gentune.stop_reason", result["stop_reason"])

    def exploited(self, rid: str, result: dict) -> None:
        """PBT restored this trial from another's checkpoint: extend its lineage tag, and let the epochs
        after the donor's checkpoint be logged again (they are this trial's new history)."""
        c = client(self.uri)
        epoch, donor = int(result["exploited_epoch"]), result["exploited_from"]
        config = result.get("config") or {}
        now = ", ".join(f"{k}={config[k]:.4g}" for k in self.watch if isinstance(config.get(k), (int, float)))
        old = c.get_run(rid).data.tags.get("gentune.pbt_lineage", "")
        entries = [e for e in old.split("; ") if e] + [f"epoch {epoch}: from trial {donor}" + (f" ({now})" if now else "")]
        c.set_tag(rid, "gentune.pbt_lineage", "; ".join(entries)[:5000])
        c.set_tag(rid, "gentune.pbt_exploits", str(len(entries)))
        self.logged[rid] = min(self.logged.get(rid, 0), epoch)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        epoch = int((trial.last_result or {}).get("epoch", 0))
        with checkpoint.as_directory() as d:
            grid = Path(d) / "samples.png"
            if grid.exists():
                with tempfile.TemporaryDirectory() as tmp:
                    named = Path(tmp) / f"epoch_{epoch:04d}.png"
                    named.write_bytes(grid.read_bytes())
                    client(self.uri).log_artifact(self.run_id(trial), str(named), artifact_path="samples")

    def _finish(self, trial, status: str, reason: str) -> None:
        rid = self.run_id(trial)
        c = client(self.uri)
        c.set_tag(rid, "gentune.stop_reason", reason)
        c.set_terminated(rid, status=status)

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        reason = last.get("stop_reason") or (
            "completed" if int(last.get("epoch", 0)) >= self.max_epochs else f"early-stopped by ASHA at epoch {last.get('epoch')}"
        )
        from trainables.loop import is_failure

        self._finish(trial, "FAILED" if is_failure(reason) else "FINISHED", reason)

    def on_trial_error(self, iteration, trials, trial, **info):
        path = getattr(trial, "error_file", None)
        try:
            text = Path(path).read_text() if path else ""
        except OSError:
            text = ""
        self._finish(trial, "FAILED", f"error: {error_line(text) if text.strip() else 'the trial raised'}")
