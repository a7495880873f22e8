"""Status of a sweep folder, running or finished: trials by state, best so far, time used and left.

Read-only by design: it may run while `gentune sweep` writes the same folder, so it never takes a
lock, never creates a file (an absent mlflow.db is not opened, since opening it would create it)
and tolerates half-written files (a result line being appended, a state file being replaced).

Two sources, merged per trial (study, trial id):
- MLflow (sweep.json's tracking_uri): the driver's callback writes every result there at once, so
  it is the freshest; trial runs carry gentune.kind=trial, gentune.trial_id, gentune.stop_reason.
- Ray Tune's experiment folder of each study (<sweep>/<study>/, read by analysis/rayfolder.py):
  Ray's own trial states and each trial's results. Ray copies these to the sweep folder every few
  seconds, so while a sweep runs they may lag behind MLflow.

`gentune status`'s text is made by analysis/status_text.py.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import unquote, urlparse

from analysis.rayfolder import RAY_STATES, finite, number, read_ray_study
from analysis.sweepdata import (all_runs, check_store, read_sweep_json, remote_view, sqlite_path, store_exceptions,
                                tracking_uri_of)
from trainables.filecheck import Range, read_checked
from trainables.lease import driver_alive
from trainables.storage import Folder, as_stored

# What a trial came to, in the order they are listed.
OUTCOMES = ("running", "pending", "completed", "early-stopped", "diverged", "error", "killed")


@dataclass
class TrialStatus:
    study: str
    trial_id: str
    state: str  # Ray's state: PENDING / RUNNING / PAUSED / TERMINATED / ERROR
    outcome: str  # one of OUTCOMES
    value: float | None = None  # the study's metric, as last reported (what Tune ranks by: scope="last")
    epoch: int | None = None
    stop_reason: str = ""
    started: float | None = None  # unix seconds
    last_result: float | None = None
    run_id: str | None = None
    run_name: str | None = None


@dataclass
class StudyStatus:
    name: str
    family: str
    metric: str
    mode: str  # max / min
    time_budget_s: float | None
    trials: list[TrialStatus] = field(default_factory=list)
    planned: int | None = None  # trials the spec asks for, where known
    started: float | None = None  # when Tune began the study
    ended: float | None = None  # when the study's MLflow run was closed
    state: str = "not started"  # not started / running / finished
    best_trial_tag: str = ""  # gentune.best_trial_id on the study's run (Tune's pick, breaks ties)
    rank_by: str = "last"  # a trial's value: its last evaluated (last) or its best so far (best)

    def counts(self) -> dict[str, int]:
        out = {o: 0 for o in OUTCOMES}
        for t in self.trials:
            out[t.outcome] = out.get(t.outcome, 0) + 1
        return out

    def state_counts(self) -> dict[str, int]:
        out = {s: 0 for s in RAY_STATES}
        for t in self.trials:
            out[t.state] = out.get(t.state, 0) + 1
        return out

    @property
    def best(self) -> TrialStatus | None:
        """The best trial so far by its last reported metric; ties go to Tune's own pick."""
        scored = [t for t in self.trials if t.value is not None]
        if not scored:
            return None
        pick = max if self.mode == "max" else min
        top = pick(t.value for t in scored)
        tied = [t for t in scored if t.value == top]
        for t in tied:
            if t.trial_id == self.best_trial_tag:
                return t
        return tied[0]

    def used_s(self, now: float) -> float | None:
        if self.started is None:
            return None
        end = now if self.state == "running" else (self.ended or self.last_result or now)
        return max(0.0, end - self.started)

    @property
    def last_result(self) -> float | None:
        times = [t.last_result for t in self.trials if t.last_result is not None]
        return max(times) if times else None

    def left_s(self, now: float) -> float | None:
        """Seconds left of the study's time budget; None where it has no budget."""
        if not self.time_budget_s:
            return None
        used = self.used_s(now) or 0.0
        return max(0.0, float(self.time_budget_s) - used)


@dataclass
class SweepStatus:
    root: str  # the sweep's address: a folder, or a URI of remote storage
    name: str
    tracking_uri: str
    experiment_id: str
    started: float | None
    studies: list[StudyStatus]
    now: float
    notes: list[str] = field(default_factory=list)  # sources that could not be read, and why
    driver_state: str = ""  # sweep.json's "state": running / finished / interrupted / failed
    driver_alive: bool | None = None  # a `gentune sweep` holds the folder's lock (None: unknown)
    waiting: str = ""  # the driver's note on trials waiting for resources (waiting.json)

    @property
    def state(self) -> str:
        states = {s.state for s in self.studies}
        if self.driver_state == "interrupted" or (self.driver_alive is False and self.driver_state == "running"):
            return "interrupted"  # stopped by Ctrl-C, or the driver died: `--resume` continues it
        if states == {"finished"}:
            return "failed" if self.driver_state == "failed" else "finished"
        if states == {"not started"}:
            return "not started"
        return "running"

    @property
    def last_activity(self) -> float | None:
        times = [t for s in self.studies for t in (s.last_result, s.ended, s.started) if t is not None]
        return max(times) if times else self.started

    def used_s(self) -> float | None:
        if self.started is None:
            return None
        end = self.now if self.state != "finished" else (self.last_activity or self.now)
        return max(0.0, end - self.started)

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root), "name": self.name, "state": self.state, "tracking_uri": self.tracking_uri,
            "experiment_id": self.experiment_id, "started": self.started, "now": self.now, "used_s": self.used_s(),
            "last_activity": self.last_activity, "notes": self.notes,
            "studies": [{
                "name": s.name, "family": s.family, "metric": s.metric, "mode": s.mode, "state": s.state,
                "planned": s.planned, "started": s.started, "ended": s.ended, "used_s": s.used_s(self.now),
                "time_budget_s": s.time_budget_s or None, "left_s": s.left_s(self.now),
                "counts": s.counts(), "states": s.state_counts(),
                "best": None if s.best is None else {"trial_id": s.best.trial_id, "value": s.best.value,
                                                     "run_name": s.best.run_name},
                "trials": [t.__dict__ for t in s.trials],
            } for s in self.studies],
        }


# ---------------------------------------------------------------- reading the folder


def read_mlflow(uri: str, experiment_id: str, sweep: str) -> tuple[list, list[str]]:
    """All runs of the sweep in its MLflow experiment (studies and trials), read-only; (runs, notes)."""
    notes: list[str] = []
    db = sqlite_path(uri)
    if db is not None and not db.exists():
        return [], [f"MLflow store {db} does not exist yet (nothing tracked)"]
    if uri.startswith("file:") and not Path(unquote(urlparse(uri).path)).exists():
        return [], [f"MLflow store {uri} does not exist yet"]
    if db is not None:  # a damaged or foreign file is an error, not an empty sweep (opened read-only)
        check_store(uri, "sweep.json")
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    try:
        flt = f"tags.`gentune.sweep` = '{sweep}'" if sweep else ""
        return all_runs(MlflowClient(tracking_uri=uri), experiment_id, flt, run_view_type=ViewType.ACTIVE_ONLY), notes
    except store_exceptions() as e:  # a server that is down or busy: said in a note, Ray's files still show the trials
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return [], [f"MLflow store {uri} unreadable ({msg[:200]}); trial states from Ray's folders only"]


def _outcome(state: str, reason: str, epoch: int | None, max_epochs: int | None, ml_status: str | None) -> str:
    if state == "ERROR" or reason.startswith("error"):
        return "error"
    if state == "RUNNING":
        return "running"
    if state in ("PENDING", "PAUSED"):
        return "pending"
    if reason.startswith("diverged") or reason.startswith("mode collapse"):
        return "diverged"
    if reason.startswith("early-stopped"):
        return "early-stopped"
    if reason == "completed":
        return "completed"
    if ml_status == "KILLED":
        return "killed"
    if epoch is not None and max_epochs is not None and epoch < max_epochs:
        return "early-stopped"
    return "completed"


def merge_study(name: str, info: dict[str, Any], ray: dict[str, dict[str, Any]], runs: list, now: float) -> list[TrialStatus]:
    metric = (info.get("metrics") or {}).get(name, [None, "max"])[0]
    by_id: dict[str, Any] = {}
    for r in runs:
        tags = r.data.tags
        if tags.get("gentune.kind") == "trial" and tags.get("gentune.study") == name and tags.get("gentune.trial_id"):
            by_id[tags["gentune.trial_id"]] = r
    out = []
    for tid in sorted(set(ray) | set(by_id), key=lambda k: ((ray.get(k) or {}).get("start") or 0, k)):
        R, M = ray.get(tid) or {}, by_id.get(tid)
        res = R.get("result") or {}
        ml_status = M.info.status if M is not None else None
        reason = (M.data.tags.get("gentune.stop_reason", "") if M is not None else "") or str(res.get("stop_reason") or "")
        rstate = R.get("state") or ""
        if rstate == "ERROR" or R.get("error"):
            state = "ERROR"
        elif ml_status in ("FINISHED", "FAILED", "KILLED"):
            state = "ERROR" if reason.startswith("error") else "TERMINATED"
        elif rstate in RAY_STATES:
            state = rstate
        else:
            state = "RUNNING" if ml_status in ("RUNNING", "SCHEDULED", None) else "TERMINATED"
        # the value the study ranks by: the best evaluated so far (rank_by best, reported as <metric>_best) or the last
        ranked = f"{metric}_best" if (info.get("rank_by") or {}).get(name) == "best" else metric
        value = finite(M.data.metrics.get(ranked, M.data.metrics.get(metric))) if (M is not None and metric) else None
        if value is None and metric:
            value = finite(res.get(metric))
        epoch = res.get("epoch")
        epoch = int(epoch) if isinstance(epoch, (int, float)) and not isinstance(epoch, bool) else None
        max_epochs = (res.get("config") or {}).get("epochs")
        started = R.get("start") or (M.info.start_time / 1000 if M is not None and M.info.start_time else None)
        times = [R.get("last_time")]
        if M is not None and M.info.end_time and state != "RUNNING":
            times.append(M.info.end_time / 1000)
        last = max((t for t in times if t), default=None)
        out.append(TrialStatus(
            study=name, trial_id=tid, state=state, outcome=_outcome(state, reason, epoch, max_epochs, ml_status),
            value=value, epoch=epoch, stop_reason=reason, started=started, last_result=last,
            run_id=M.info.run_id if M is not None else None,
            run_name=(M.info.run_name if M is not None else None),
        ))
    return out


def fill_from_history(uri: str, st: StudyStatus) -> str | None:
    """Epoch and result time of running trials from MLflow, which the driver writes at once (Ray's copies lag);
    a note when the store stopped answering meanwhile."""
    need = [t for t in st.trials if t.run_id and (t.epoch is None or t.state == "RUNNING")]
    if not need or st.metric == "?":
        return None
    try:
        from mlflow.tracking import MlflowClient

        c = MlflowClient(tracking_uri=uri)
        for t in need:
            hist = c.get_metric_history(t.run_id, f"{st.metric}_best" if st.rank_by == "best" else st.metric)
            if not hist:
                continue
            last = max(hist, key=lambda m: (m.step, m.timestamp))
            if t.epoch is None or last.step > t.epoch:
                t.epoch = int(last.step)
                t.value = finite(last.value) if finite(last.value) is not None else t.value
            ts = last.timestamp / 1000 if last.timestamp else None
            if ts and (t.last_result is None or ts > t.last_result):
                t.last_result = ts
    except store_exceptions() as e:  # a server gone since the runs were read: the table loses its epochs only
        return f"{st.name}: MLflow store {uri} stopped answering ({str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__}); epochs from Ray's folders only"
    return None


@dataclass(frozen=True)
class WaitingFile:
    """waiting.json, which the driver writes while trials wait for resources (search/sweep.py pending_watch)."""

    study: str
    message: str
    trials: Annotated[int, Range(1)]
    asks: dict[str, Annotated[float, Range(0)]] = field(default_factory=dict)
    cluster: dict[str, Annotated[float, Range(0)]] = field(default_factory=dict)
    since: Annotated[float, Range(0)] | None = None
    updated: Annotated[float, Range(0)] | None = None


def _waiting(root: Path, studies: list[str]) -> str:
    """The driver's note on waiting trials, checked whenever the file is there (a dead driver's last one too)."""
    path = root / "waiting.json"
    if not (path.exists() or path.is_symlink()):
        return ""
    w = read_checked(path, WaitingFile)
    if w["study"] not in studies:
        from trainables.filecheck import fail

        raise fail(path, "study", f"a study of sweep.json ({', '.join(studies)})", w["study"])
    return w["message"]


def read_status(root: str | Path, *, tracking_uri: str | None = None, planned: dict[str, int] | None = None,
                now: float | None = None) -> SweepStatus:
    """Everything `gentune status` shows, read without writing anything."""
    info = read_sweep_json(root)
    folder = Folder(str(root))
    if folder.remote:  # its records, Tune's state and the trials' results, copied down (no checkpoints)
        local = remote_view(folder)[0]
        with as_stored(local, folder):
            out = _read_status(local, info, folder, tracking_uri, planned, now)
        out.notes = [n.replace(str(local), str(folder)) for n in out.notes]
        return out
    return _read_status(Path(root).expanduser(), info, folder, tracking_uri, planned, now)


def _read_status(root: Path, info: dict, folder: Folder, tracking_uri: str | None, planned: dict[str, int] | None,
                 now: float | None) -> SweepStatus:
    now = time.time() if now is None else now
    uri = tracking_uri or (tracking_uri_of(root, info) if info.get("tracking_uri") or info.get("local_store") else "")
    exp_id = str(info.get("experiment_id") or "")
    notes: list[str] = []
    runs: list = []
    alive = driver_alive(folder)
    waiting = _waiting(root, list(info["studies"]))
    if uri and exp_id:
        runs, n = read_mlflow(uri, exp_id, str(info.get("name") or ""))
        notes += n
    else:
        notes.append("sweep.json names no tracking URI / experiment; trial states from Ray's folders only")
    studies = []
    budgets = info.get("time_budget_s") or {}
    for name in info.get("studies") or []:
        metric, mode = ((info.get("metrics") or {}).get(name) or [None, "max"])[:2]
        ray, start, n = read_ray_study(root / name, live=bool(alive))
        notes += [f"{name}: {x}" for x in n]
        st = StudyStatus(name=name, family=(info.get("families") or {}).get(name, ""), metric=metric or "?",
                         mode=mode or "max", time_budget_s=number(budgets.get(name)) or None,
                         planned=(planned or {}).get(name), rank_by=(info.get("rank_by") or {}).get(name, "last"))
        st.trials = merge_study(name, info, ray, runs, now)
        note = fill_from_history(uri, st)
        if note:
            notes.append(note)
        parent = next((r for r in runs if r.data.tags.get("gentune.kind") == "study"
                       and r.data.tags.get("gentune.study") == name), None)
        st.started = start or (parent.info.start_time / 1000 if parent is not None and parent.info.start_time else None)
        if parent is not None:
            st.best_trial_tag = parent.data.tags.get("gentune.best_trial_id", "")
            if parent.info.status == "FINISHED" and parent.info.end_time:
                st.state, st.ended = "finished", parent.info.end_time / 1000
            else:
                st.state = "running"
        elif st.trials or (root / name).is_dir():
            # No MLflow run (store unreadable): Ray's files alone
            live = any(t.state in ("RUNNING", "PENDING", "PAUSED") for t in st.trials)
            enough = st.planned is None or len(st.trials) >= st.planned
            st.state = "finished" if st.trials and not live and enough and not runs else "running"
        studies.append(st)
    out = SweepStatus(root=str(folder), name=str(info.get("name") or root.name), tracking_uri=uri, experiment_id=exp_id,
                      started=number(info.get("started")), studies=studies, now=now, notes=notes,
                      driver_state=str(info.get("state") or ""), driver_alive=alive,
                      waiting=waiting if alive else "")
    # Files written while we read may be a moment newer than `now`: never show a negative age.
    out.now = max(now, out.last_activity or now)
    return out
