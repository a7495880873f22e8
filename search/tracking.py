"""MLflow for sweeps: one experiment per sweep, a parent run per study, one nested run per trial.

Where a result reaches MLflow: the Tune callback (MlflowTrials) never talks to MLflow. It appends each
write to the study's journal (<spool>/<study>.jsonl, on local disk) and returns, so Tune's event loop
never waits on the tracking server. One writer thread per study (Writer) applies the journal in order
and records how far it got (<study>.done); while the server does not answer it says so in one line and
retries, and the trials go on. What is still unwritten when the driver ends stays in the journal and is
written by the next driver on the sweep (`--resume`). Every entry can be applied twice without
counting twice (runs are found by their tags, metrics carry an explicit step and timestamp, which the
store keeps once, and an epoch already in a run is not logged again), so a replay is harmless.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from search.trial import SAMPLES

SKIP_METRICS = {"epoch", "rank_score", "training_iteration", "time_this_iter_s", "time_total_s", "timestamp", "time_since_restore",
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


def numeric(result: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in result.items():
        if k in SKIP_METRICS or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(v):
            out[k] = float(v)
    return out


def transient(e: BaseException) -> bool:
    """An error worth retrying: the server did not answer or failed (MLflow reports a connection error
    as an internal error, HTTP 500). A refusal (4xx: a bad value, a deleted run) stays a refusal."""
    from mlflow.exceptions import MlflowException

    if isinstance(e, MlflowException):
        return e.get_http_status_code() >= 500
    return isinstance(e, (OSError, TimeoutError))


# The writer of each study in this driver process. A Tune callback restored on --resume is the pickled
# one from the first driver: it finds its writer here by study name instead of carrying a thread.
_WRITERS: dict[str, "Writer"] = {}


def writer(study: str) -> "Writer":
    return _WRITERS[study]


class Writer:
    """Applies a study's journal to MLflow in a thread of its own (see the module docstring)."""

    RETRY_MAX_S = 15.0

    def __init__(self, uri: str, exp_id: str, spool: Path, sweep: str, study: str) -> None:
        self.uri, self.exp_id, self.sweep, self.study = uri, exp_id, sweep, study
        spool.mkdir(parents=True, exist_ok=True)
        self.spool = spool
        self.journal, self.done_path, self.files = spool / f"{study}.jsonl", spool / f"{study}.done", spool / "files" / study
        self.lock = threading.Lock()
        self.wake, self.stop = threading.Event(), threading.Event()
        self.deadline = math.inf
        self.runs: dict[str, str] = {}  # "study" or a trial id -> MLflow run id
        self._stored: dict[str, str] | None = None  # the runs MLflow had when this writer started (_stored_runs)
        self.logged: dict[str, int] = {}  # run id -> last epoch in the store (a resumed trial may report one again)
        self.unended: set[str] = set()  # trials opened and not ended by this driver
        self.behind_since: float | None = None
        self.left = 0
        self.thread = threading.Thread(target=self._loop, name=f"gentune-mlflow-{study}", daemon=True)
        _WRITERS[study] = self
        self.thread.start()

    # -- the driver's side: a moment each
    def append(self, entry: dict[str, Any]) -> None:
        if entry["op"] == "open":
            self.unended.add(entry["run"])
        elif entry["op"] == "end":
            self.unended.discard(entry["run"])
        line = json.dumps(entry, default=str) + "\n"
        with self.lock, open(self.journal, "a") as f:
            f.write(line)
        self.wake.set()

    def end_unended(self, reason: str) -> None:
        """Close the runs of trials this driver opened and Tune never completed (Ctrl-C, a driver error):
        KILLED, so no run is left RUNNING; --resume sets them RUNNING again."""
        for tid in sorted(self.unended):
            self.append({"op": "tags", "run": tid, "tags": {"gentune.stop_reason": reason}})
            self.append({"op": "end", "run": tid, "status": "KILLED"})

    def close(self, wait_s: float) -> int:
        """Let the thread write what is left for up to `wait_s` seconds; returns the entries still unwritten."""
        self.deadline = time.time() + wait_s
        self.stop.set()
        self.wake.set()
        self.thread.join()
        self.left = len(self._read(self._done()))
        if _WRITERS.get(self.study) is self:
            del _WRITERS[self.study]
        if self.left:
            print(f"gentune sweep: study {self.study}: {self.left} write(s) for MLflow at {self.uri} are not done; they wait in "
                  f"{self.journal} and the same command with --resume writes them", file=sys.stderr, flush=True)
        return self.left

    # -- the thread's side
    def _done(self) -> int:
        """How far into the journal MLflow has everything."""
        try:
            return int(self.done_path.read_text() or 0) if self.done_path.exists() else 0
        except ValueError:
            return 0  # replaying from the start is harmless

    def _loop(self) -> None:
        offset = self._done()
        while True:
            # read "stop" before the journal: close() comes after the driver's last append, so a stop seen here
            # means the read below has every entry (checked after the read, a close racing it would lose them)
            stopping = self.stop.is_set()
            entries = self._read(offset)
            if not entries:
                if stopping:
                    return
                self.wake.wait(1.0)
                self.wake.clear()
                continue
            for entry, end in entries:
                if not self._apply_retrying(entry):
                    return  # the driver is ending and the server still does not answer: the journal keeps the rest
                offset = end
                tmp = self.done_path.with_suffix(".done.tmp")
                tmp.write_text(str(offset))
                os.replace(tmp, self.done_path)  # never half a number: that would point into the middle of a line

    def _read(self, offset: int) -> list[tuple[dict, int]]:
        if not self.journal.exists():
            return []
        with open(self.journal, "rb") as f:
            f.seek(offset)
            data = f.read()
        out = []
        for raw in data.splitlines(keepends=True):
            if not raw.endswith(b"\n"):
                break  # a line the driver is still writing
            offset += len(raw)
            out.append((json.loads(raw), offset))
        return out

    def _apply_retrying(self, entry: dict) -> bool:
        delay = 1.0
        while True:
            try:
                self._apply(entry)
            except Exception as e:
                if not transient(e):
                    print(f"gentune sweep: MLflow refused a write ({entry['op']} for {entry.get('run')}) and it is skipped: "
                          f"{error_line(str(e))}", file=sys.stderr, flush=True)
                    return True
                if self.behind_since is None:
                    self.behind_since = time.time()
                    print(f"gentune sweep: MLflow at {self.uri} does not answer ({error_line(str(e))[:160]}); the trials go on "
                          f"and their results wait in {self.journal} until it does", file=sys.stderr, flush=True)
                if time.time() >= self.deadline:
                    return False
                self.stop.wait(min(delay, max(self.deadline - time.time(), 0.1)))
                delay = min(delay * 2, self.RETRY_MAX_S)
                continue
            if self.behind_since is not None:
                print(f"gentune sweep: MLflow answers again after {time.time() - self.behind_since:.0f} s; writing what waited",
                      file=sys.stderr, flush=True)
                self.behind_since = None
            return True

    def _client(self):
        if not hasattr(self, "_c"):
            self._c = client(self.uri)
        return self._c

    def _stored_runs(self) -> dict[str, str]:
        """The study's runs already in MLflow ("study" or a trial id -> run id), read in one listing when the writer
        first needs a run (a resumed driver finds the first driver's); later runs are the ones this writer makes.
        One query per writer instead of one per trial: that query's cost grows with the experiment's runs."""
        if self._stored is None:
            from analysis.sweepdata import all_runs

            flt = f"tags.`gentune.sweep` = '{self.sweep}' and tags.`gentune.study` = '{self.study}'"
            found: dict[str, str] = {}
            for run in all_runs(self._client(), self.exp_id, flt):  # the latest first, should two share a key
                tags = run.data.tags
                key = "study" if tags.get("gentune.kind") == "study" else tags.get("gentune.trial_id")
                if key:
                    found.setdefault(key, run.info.run_id)
            self._stored = found
        return self._stored

    def _run(self, key: str) -> str | None:
        """The MLflow run of "study" or of a trial id, found by its tags (a resumed driver finds the first's)."""
        if key in self.runs:
            return self.runs[key]
        rid = self._stored_runs().get(key)
        if rid is None:
            return None
        self.runs[key] = rid
        if key != "study":
            history = self._client().get_metric_history(rid, "epoch_time_s")  # one per epoch
            self.logged[rid] = max((m.step for m in history), default=0)
        return rid

    def _apply(self, e: dict) -> None:
        from mlflow.entities import Metric, Param

        c, op, key = self._client(), e["op"], e["run"]
        if op in ("study", "open"):
            rid = self._run(key)
            if rid is None:
                tags = dict(e["tags"])
                if op == "open":  # a trial under its study, a seed under its configuration's trial
                    tags["mlflow.parentRunId"] = self._run(e.get("parent", "study")) or ""
                rid = self.runs[key] = c.create_run(self.exp_id, run_name=e["name"], tags=tags).info.run_id
                self.logged[rid] = 0
            else:
                c.update_run(rid, status="RUNNING")
            if e.get("spec"):
                c.log_text(rid, e["spec"], "spec.json")
            params = [Param(k, str(v)[:500]) for k, v in sorted((e.get("params") or {}).items())]
            for i in range(0, len(params), 100):  # the same value again is accepted, so a replay is harmless
                c.log_batch(rid, params=params[i : i + 100])
            return
        rid = self._run(key)
        if rid is None:
            raise LookupError(f"no MLflow run for {key} of study {self.study}")
        if op == "metrics":
            step = int(e["step"])
            if key != "study" and step <= self.logged.get(rid, 0):
                return
            c.log_batch(rid, metrics=[Metric(k, v, int(e["ts"]), step) for k, v in e["values"].items()])
            if key != "study":
                self.logged[rid] = step
        elif op == "tags":
            for k, v in e["tags"].items():
                c.set_tag(rid, k, v)
        elif op == "text":
            c.log_text(rid, e["text"], e["name"])
        elif op == "lineage":
            old = c.get_run(rid).data.tags.get("gentune.pbt_lineage", "")
            entries = [x for x in old.split("; ") if x]
            if e["entry"] not in entries:  # a replay does not add it twice
                entries.append(e["entry"])
            c.set_tag(rid, "gentune.pbt_lineage", "; ".join(entries)[:5000])
            c.set_tag(rid, "gentune.pbt_exploits", str(len(entries)))
            # the epochs after the donor's checkpoint are this trial's new history: log them again
            self.logged[rid] = min(self.logged.get(rid, 0), int(e["epoch"]))
        elif op == "artifact":
            f = self.spool / e["file"]  # relative: a sweep folder copied elsewhere still finds it
            if f.exists():  # gone: written (and removed) before a replay
                c.log_artifact(rid, str(f), artifact_path=e["dir"])
                f.unlink()
        elif op == "end":
            c.set_terminated(rid, status=e["status"])
        else:
            raise ValueError(f"unknown journal entry {op!r}")


def seed_run(trial_id: str, seed: int) -> str:
    """The key (and gentune.trial_id tag) of one seed's run of a configuration repeated over seeds."""
    return f"{trial_id}:s{seed}"


class MlflowTrials(Callback):
    """Tune callback: a nested MLflow run per trial with params, per-epoch metrics, sample grids, status.

    Each event becomes journal entries for the study's Writer; nothing here waits on MLflow."""

    def __init__(self, study: str, family: str, max_epochs: int, watch: tuple[str, ...] = (), repeats: int = 1) -> None:
        self.study, self.family, self.max_epochs, self.repeats = study, family, max_epochs, repeats
        self.watch = watch  # config keys PBT changes mid-run: logged as metrics hp.<key> each epoch

    def _w(self) -> Writer:
        return writer(self.study)

    def on_trial_start(self, iteration, trials, trial, **info):
        from trainables.config import from_flat, to_flat
        from trainables.families import config_class

        w, tid = self._w(), trial.trial_id
        full = to_flat(from_flat(config_class(self.family), dict(trial.config)))  # every key, defaults included
        common = {"gentune.sweep": w.sweep, "gentune.study": self.study, "gentune.family": self.family}
        w.append({"op": "open", "run": tid, "name": f"{self.study}-{tid}", "params": full, "tags": {
            **common, "mlflow.runName": f"{self.study}-{tid}", "gentune.trial_id": tid, "gentune.kind": "trial",
            "gentune.repeats": str(self._repeats)}})
        for seed in self._seeds(full):  # a configuration repeated over seeds: a run per seed under the trial's run
            name = f"{self.study}-{tid}-seed{seed}"
            w.append({"op": "open", "run": seed_run(tid, seed), "parent": tid, "name": name, "params": {**full, "seed": seed},
                      "tags": {**common, "mlflow.runName": name, "gentune.trial_id": seed_run(tid, seed), "gentune.kind": "seed",
                               "gentune.config_trial_id": tid, "gentune.seed": str(seed)}})

    @property
    def _repeats(self) -> int:
        return getattr(self, "repeats", 1)  # a callback pickled before repeats existed

    def _seeds(self, full: dict[str, Any]) -> list[int]:
        return [int(full["seed"]) + i for i in range(self._repeats)] if self._repeats > 1 else []

    def on_trial_result(self, iteration, trials, trial, result, **info):
        w, tid = self._w(), trial.trial_id
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        if result.get("exploited_from"):
            config = result.get("config") or {}
            now = ", ".join(f"{k}={config[k]:.4g}" for k in self.watch if isinstance(config.get(k), (int, float)))
            epoch, donor = int(result["exploited_epoch"]), result["exploited_from"]
            w.append({"op": "lineage", "run": tid, "epoch": epoch,
                      "entry": f"epoch {epoch}: from trial {donor}" + (f" ({now})" if now else "")})
        config = result.get("config") or {}
        hp = {f"hp.{k}": config[k] for k in self.watch if isinstance(config.get(k), (int, float))}
        values = {k: v for k, v in numeric({**result, **hp}).items() if k != "exploited_epoch"}
        # the result's own timestamp: the entry applied twice is the same metric, which the store keeps once
        ts = int(result.get("timestamp", 0) * 1000)
        if values:
            w.append({"op": "metrics", "run": tid, "step": step, "ts": ts, "values": values})
        for seed, m in sorted((result.get("seeds") or {}).items()):
            if numeric(m):
                w.append({"op": "metrics", "run": seed_run(tid, int(seed)), "step": step, "ts": ts, "values": numeric(m)})
        if result.get("stop_reason"):
            w.append({"op": "tags", "run": tid, "tags": {"gentune.stop_reason": result["stop_reason"]}})

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        # the grid is copied out now: Tune deletes the checkpoint (num_to_keep) before the writer may get to it
        w = self._w()
        if (trial.last_result or {}).get(SAMPLES) is False:  # the trial said it saved none (absent: look anyway)
            return
        epoch = int((trial.last_result or {}).get("epoch", 0))
        # that one file, from wherever the checkpoint is: on remote storage as_directory() would download it whole
        import pyarrow.fs as pafs

        fs, grid = checkpoint.filesystem, f"{checkpoint.path.rstrip('/')}/samples.png"
        if fs.get_file_info(grid).type == pafs.FileType.File:
            named = w.files / trial.trial_id / f"epoch_{epoch:04d}.png"
            named.parent.mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(grid) as src, open(named, "wb") as out:
                shutil.copyfileobj(src, out)
            w.append({"op": "artifact", "run": trial.trial_id, "file": str(named.relative_to(w.spool)), "dir": "samples"})

    def _finish(self, trial, status: str, reason: str) -> None:
        from trainables.config import from_flat, to_flat
        from trainables.families import config_class

        full = to_flat(from_flat(config_class(self.family), dict(trial.config)))
        for run in [seed_run(trial.trial_id, s) for s in self._seeds(full)] + [trial.trial_id]:
            self._w().append({"op": "tags", "run": run, "tags": {"gentune.stop_reason": reason}})
            self._w().append({"op": "end", "run": run, "status": status})

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

    def on_experiment_end(self, trials, **info):
        # Tune's own stop (Ctrl-C, an error in the loop) marks running trials TERMINATED without completing them
        self._w().end_unended("interrupted: the driver stopped before the trial ended")
