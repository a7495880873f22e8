"""Reading a finished sweep: `sweep.json`, the MLflow runs of its trials, and each trial's checkpoints.

Folder of a sweep (written by `gentune sweep`): <root>/sweep.json, <root>/mlflow.db (unless the sweep
used a tracking server), and one Ray Tune experiment folder per study, <root>/<study>/<trial folder>/
checkpoint_<n>/checkpoint.pt. Nothing here imports Ray: the trial folders are found by walking them
(analysis/rayfolder.py says why not with Ray's ExperimentAnalysis).
"""
from __future__ import annotations

import json
import math
import os
import re
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from fractions import Fraction
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlparse

from analysis.rayfolder import read_results, trial_id_of
from trainables.errors import CheckpointError, FileContentError, GentuneError
from trainables.filecheck import NOTHING, check_sqlite, describe, Mode, parse, Plain, Range, non_empty, read_checked, unique
from trainables.lease import driver_alive
from trainables.storage import Folder, cache_dir, is_remote, without_query

CHECKPOINT = "checkpoint.pt"
LOCAL_DB = "mlflow.db"  # a local sweep's MLflow store, inside its folder
ARTIFACTS = "mlartifacts"  # ... and the artifacts of its runs
_CKPT_DIR = re.compile(r"^checkpoint_(\d+)$")


def parse_param(text: str) -> Any:
    """An MLflow param (always a string) back to a Python value: int, float, bool, list or str."""
    s = text.strip()
    if s in ("True", "False", "true", "false"):
        return s.lower() == "true"
    for conv in (int, float):
        try:
            return conv(s)
        except ValueError:
            pass
    if s.startswith("[") and s.endswith("]"):
        try:
            return json.loads(s.replace("'", '"'))
        except ValueError:
            pass
    return s


@dataclass
class Trial:
    """One trial as MLflow recorded it: params parsed back to values, metrics = each one's last value."""

    run_id: str
    trial_id: str
    study: str
    family: str
    status: str  # MLflow run status: FINISHED, FAILED, RUNNING, KILLED
    stop_reason: str
    params: dict[str, Any]
    metrics: dict[str, float]
    artifact_uri: str
    start_time: int = 0

    def value(self, metric: str) -> float | None:
        v = self.metrics.get(metric)
        return None if v is None or not math.isfinite(v) else float(v)


@dataclass
class Study:
    name: str
    family: str
    metric: str
    mode: str  # "min" or "max"
    run_id: str | None  # the MLflow parent run of the study
    search: dict[str, Any] = field(default_factory=dict)  # the spec's search domains (raw YAML)
    objectives: tuple[tuple[str, str], ...] = ()  # (metric, mode) of a multi-objective study's objectives
    rank_by: str = "last"  # a trial's value: its last epoch's, or its best evaluated epoch's (budget.rank_by)
    repeats: int = 1  # seeds per configuration (budget.repeats): a trial's metrics are their aggregate
    aggregate: str = "mean"  # ... the mean or the median (budget.aggregate)


def better(a: float, b: float, mode: str) -> bool:
    return a < b if mode == "min" else a > b


def pareto_front(points: dict[str, tuple[float, ...]], modes: tuple[str, ...]) -> list[str]:
    """Keys of the points no other point dominates (at least as good in every objective, better in one)."""
    sign = [1.0 if m == "min" else -1.0 for m in modes]
    vals = {k: [s * v for s, v in zip(sign, p)] for k, p in points.items()}

    def dominates(a, b):
        return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))

    return [k for k, v in vals.items() if not any(dominates(w, v) for j, w in vals.items() if j != k)]


def knee(points: dict[str, tuple[float, ...]], modes: tuple[str, ...]) -> str:
    """The point of a Pareto front closest to its ideal point once each objective is scaled to [0, 1] over
    the front (ties: the better first objective): the export's pick of a multi-objective study."""
    keys = sorted(points)
    cols = list(zip(*(points[k] for k in keys)))

    def scaled(i: int, v: float) -> Fraction:  # exact: equal distances tie exactly, never by float rounding
        lo, hi, x = Fraction(min(cols[i])), Fraction(max(cols[i])), Fraction(v)
        x = Fraction(0) if hi == lo else (x - lo) / (hi - lo)
        return x if modes[i] == "min" else 1 - x

    def dist(k: str) -> tuple[Fraction, float]:
        first = points[k][0] if modes[0] == "min" else -points[k][0]
        return (sum((scaled(i, v) ** 2 for i, v in enumerate(points[k])), Fraction(0)), first)

    return min(keys, key=dist)


@dataclass(frozen=True)
class SweepFile:
    """What sweep.json holds (search/sweep.py writes it; `gentune sweep` adds spec_path, overrides, smoke)."""

    name: Plain
    studies: Annotated[list[Plain], non_empty, unique]
    tracking_uri: str = ""
    local_store: bool = False
    experiment_id: str | None = None
    experiment: str = ""
    families: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, tuple[str, Mode]] = field(default_factory=dict)
    objectives: dict[str, list[tuple[str, Mode]]] = field(default_factory=dict)
    time_budget_s: dict[str, Annotated[float, Range(0)] | None] = field(default_factory=dict)
    trials: dict[str, Annotated[int, Range(0)]] = field(default_factory=dict)
    rank_by: dict[str, Literal["best", "last"]] = field(default_factory=dict)
    repeats: dict[str, Annotated[int, Range(1)]] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)
    spec_path: str = ""
    overrides: list[str] = field(default_factory=list)
    smoke: bool = False
    started: Annotated[float, Range(0)] | None = None
    ended: Annotated[float, Range(0)] | None = None
    state: Literal["running", "finished", "interrupted", "failed"] = "running"

    @classmethod
    def consistent(cls, info: dict) -> tuple[str, str, Any] | None:
        """Per-study keys name studies of `studies`; families are ones gentune knows."""
        from trainables.families import known

        names = set(info["studies"])
        for key in ("families", "metrics", "objectives", "time_budget_s", "trials", "rank_by", "repeats"):
            for name in info.get(key) or {}:
                if name not in names:
                    return f"{key}.{name}", f"a study listed in studies ({', '.join(info['studies'])})", NOTHING
        for name, fam in (info.get("families") or {}).items():
            if fam not in known():
                return f"families.{name}", f"one of the families {', '.join(known())}", fam
        return None


def read_sweep_json(root: str | Path) -> dict[str, Any]:
    """sweep.json of a sweep folder (a path, or a URI of remote storage), checked against SweepFile; a one-line
    error names what is wrong."""
    if is_remote(str(root)):
        folder = Folder(str(root))
        if not folder.is_dir():
            raise GentuneError(f"sweep {folder} does not exist (pass the address `gentune sweep` printed)")
        if not folder.is_file("sweep.json"):
            raise GentuneError(f"{folder} holds no sweep.json, so it is not a sweep folder (it is written when "
                               "`gentune sweep` starts)")
        name = without_query(folder.uri("sweep.json"))
        try:
            obj = json.loads(folder.read_bytes("sweep.json"))
        except ValueError as e:
            raise FileContentError(f"{name}: expected {describe(SweepFile)} ({first_line(e)})") from None
        return parse(obj, SweepFile, name)
    root = Path(root).expanduser()
    if not root.exists():
        raise GentuneError(f"sweep folder {root} does not exist (pass the folder `gentune sweep` printed, e.g. runs/quickstart)")
    if not root.is_dir():
        raise GentuneError(f"{root} is not a folder; pass a sweep folder (the one holding sweep.json)")
    f = root / "sweep.json"
    if not f.exists() and not f.is_symlink():
        raise GentuneError(f"{root} holds no sweep.json, so it is not a sweep folder (it is written when `gentune sweep` starts)")
    return read_checked(f, SweepFile)


def _viewed(rel: str) -> bool:
    """The files of a sweep folder that reading it needs: its records, Tune's experiment state, each trial's
    results, params and error (not checkpoints, TensorBoard events or progress.csv)."""
    parts = rel.split("/")
    if len(parts) == 1:
        return rel in ("sweep.json", "optuna.db", "waiting.json")
    if len(parts) == 2:
        return parts[1].startswith("experiment_state-") and parts[1].endswith(".json")
    return len(parts) == 3 and parts[2] in ("result.json", "params.json", "error.txt", "error.pkl")


def remote_view(folder: Folder) -> tuple[Path, dict[str, tuple[int, int]]]:
    """A remote sweep as a local folder to read: its records, Tune's state and the trials' results mirrored into
    this machine's cache (only files that changed since the last look are fetched); checkpoints are fetched one
    by one when needed. Returns (the local copy, the store's listing of every file)."""
    local = cache_dir("sweeps", folder.address)
    return local, folder.mirror(local, _viewed)


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def sqlite_path(uri: str) -> Path | None:
    """The file of a sqlite: URI (sqlite:////abs/path or sqlite:///rel/path), None for other URIs."""
    if not uri.startswith("sqlite:"):
        return None
    p = urlparse(uri).path
    if uri.startswith("sqlite:////"):
        return Path(unquote(p[1:]))
    return Path(unquote(p[1:])) if p.startswith("/") else Path(unquote(p))


def tracking_uri_of(root: str | Path, info: dict[str, Any]) -> str:
    """The MLflow store of sweep folder `root` (sweep.json's content `info`), resolved from the folder itself.

    A sweep that keeps its store in its folder ("local_store": true, or an older sweep.json whose recorded URI
    is a SQLite file named mlflow.db while <root>/mlflow.db exists) is read from <root>/mlflow.db, so a folder
    that was copied or moved reads its own store, never the original's. Otherwise the recorded URI (a server, or
    a store the sweep was pointed at)."""
    local = Path(root).expanduser().resolve() / LOCAL_DB
    uri = str(info.get("tracking_uri") or "")
    if info.get("local_store") is True or not uri:
        return f"sqlite:///{local}"
    db = sqlite_path(uri)
    if "local_store" not in info and db is not None and db.name == LOCAL_DB and local.is_file():
        return f"sqlite:///{local}"
    return uri


def store_exceptions() -> tuple[type[BaseException], ...]:
    """What MLflow raises when its store cannot be read: its own errors, SQL errors, I/O and connection errors."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    return (MlflowException, SQLAlchemyError, sqlite3.Error, OSError)


_URI_HINT = "expected sqlite:///PATH/mlflow.db, file:///PATH/mlruns or http(s)://HOST:PORT"
_DB_SCHEMES = ("postgresql", "mysql", "mssql", "databricks")


def check_store(uri: str, source: str) -> None:
    """Refuse, in one line naming the store and where its URI came from, a tracking URI gentune cannot read:
    a missing or unreadable (truncated, not SQLite, not MLflow) SQLite file, a missing file store, or a string
    that is no URI at all. Opens SQLite files read-only: checking never creates or changes a store."""
    db = sqlite_path(uri)
    if db is not None:
        if not db.is_file():
            raise GentuneError(f"MLflow store {db} (from {source}) does not exist")
        check_sqlite(db, {"experiments": "experiment_id, artifact_location", "runs": "run_uuid, artifact_uri"},
                     f"an MLflow database (the store named by {source})", GentuneError)
        return
    scheme = urlparse(uri).scheme.split("+")[0]
    if scheme in ("http", "https") or scheme in _DB_SCHEMES:
        return
    if scheme == "file":
        path = Path(unquote(urlparse(uri).path))
        if not path.is_dir():
            raise GentuneError(f"MLflow file store {path} (from {source}) does not exist or is not a folder")
        return
    raise GentuneError(f"{source}: {uri!r} is not an MLflow tracking URI gentune can read ({_URI_HINT})")


def check_optuna_db(db: Path) -> None:
    """SWEEP/optuna.db must be an SQLite file with Optuna's tables, checked read-only before Optuna opens it
    (Optuna would add its tables to a foreign or emptied file)."""
    check_sqlite(db, {"studies": "study_id, study_name", "trials": "trial_id, study_id, state",
                      "trial_values": "trial_id, value"}, "the sweep's stored Optuna studies (an Optuna SQLite file)")


# --- output paths (checked before any long work) -------------------------------------------------

def check_out_file(path: str | Path, option: str = "--out", suffix: str | None = None) -> Path:
    """An output file that can be written: not a folder, with `suffix` when one is required, inside a folder
    that exists or can be made (no file in the way). Checked before any long work."""
    out = Path(path).expanduser()
    if out.is_dir():
        raise GentuneError(f"{option} {out} is a folder; name the file to write in it, e.g. {out / ('out' + (suffix or ''))}")
    if suffix is not None and out.suffix.lower() != suffix:
        raise GentuneError(f"{option} {out}: the file is written as {suffix[1:].upper()}; give a name ending in {suffix}")
    check_parent(out, option)
    return out


def check_parent(path: Path, option: str) -> None:
    """Refuse an output whose folder cannot be made: the nearest existing ancestor is a file or not writable."""
    for a in path.absolute().parents:
        if a.exists():
            if not a.is_dir():
                raise GentuneError(f"{option} {path}: {a} is a file, not a folder")
            if not os.access(a, os.W_OK):
                raise GentuneError(f"{option} {path}: folder {a} is not writable")
            return


class Sweep:
    """A finished (or interrupted) sweep folder and its MLflow store."""

    def __init__(self, root: str | Path, tracking_uri: str = "") -> None:
        self.folder: Folder | None = None  # the store of a remote sweep (self.root is then its local copy)
        self._stored: dict[str, tuple[int, int]] = {}  # ... and the store's listing of its files
        self.info: dict[str, Any] = read_sweep_json(root)
        if is_remote(str(root)):
            self.folder = Folder(str(root))
            root, self._stored = remote_view(self.folder)
        root = Path(root).expanduser()
        self.address = str(self.folder) if self.folder is not None else str(root.resolve())
        self.root = root.resolve()
        self.name: str = self.info.get("name", root.name)
        self.tracking_uri = tracking_uri or tracking_uri_of(self.root, self.info)
        check_store(self.tracking_uri, "--tracking-uri" if tracking_uri else f"{self.address}/sweep.json")
        self._history: dict[tuple[str, str], list[tuple[int, float]]] = {}
        self._dirs: dict[str, dict[str, Path]] = {}  # trial_dirs of each study, once read

    @contextmanager
    def store_errors(self):
        """MLflow/SQLite failures while reading or writing the store -> one line naming the store."""
        try:
            yield
        except store_exceptions() as e:
            raise GentuneError(f"MLflow store {self.tracking_uri}: {first_line(e)}") from None

    @property
    def own_store(self) -> Path | None:
        """<root>/mlflow.db when this sweep's store is the SQLite file inside its folder, else None."""
        db = sqlite_path(self.tracking_uri)
        return db if db is not None and db.resolve() == self.root / LOCAL_DB else None

    def keep_artifacts_here(self, skip_hint: str = "") -> str | None:
        """Call before logging artifacts. A sweep folder's own store names its artifact folder as an absolute
        file URI; in a folder that was copied or moved that is still the original's mlartifacts/. Repoint this
        folder's own mlflow.db (the experiment's artifact_location and its runs' artifact_uri) to
        <root>/mlartifacts, and refuse when any run would still write elsewhere. Returns the old location when it
        was repointed. Stores that are not the folder's own (a server, --tracking-uri) are left as they are."""
        db = self.own_store
        if db is None:
            return None
        want = (self.root / ARTIFACTS).as_uri()
        eid = int(self.experiment_id)
        con = sqlite3.connect(db, timeout=30)
        try:
            with con:
                row = con.execute("SELECT artifact_location FROM experiments WHERE experiment_id = ?", (eid,)).fetchone()
                old = str(row[0] if row else "").rstrip("/")
                if old != want and old.endswith("/" + ARTIFACTS):
                    con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?", (want, eid))
                    con.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
                                "WHERE experiment_id = ? AND substr(artifact_uri, 1, ?) = ?",
                                (want, len(old) + 1, eid, len(old) + 1, old + "/"))
                stray = con.execute("SELECT artifact_uri FROM runs WHERE experiment_id = ? AND "
                                    "substr(artifact_uri, 1, ?) != ? LIMIT 1", (eid, len(want) + 1, want + "/")).fetchone()
                if stray:  # the transaction rolls back: nothing changed
                    raise GentuneError(f"{db}: a run of this sweep keeps its artifacts in {stray[0]}, outside "
                                       f"{self.root / ARTIFACTS}; not writing there" + (f" ({skip_hint})" if skip_hint else ""))
        except sqlite3.Error as e:
            raise GentuneError(f"MLflow store {db}: cannot update its artifact locations ({first_line(e)})") from None
        finally:
            con.close()
        return old if old != want else None

    # --- MLflow -----------------------------------------------------------------------------------

    @cached_property
    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri)

    @cached_property
    def experiment_id(self) -> str:
        exp_id = self.info.get("experiment_id")
        if exp_id is not None:
            try:
                with self.store_errors():
                    self.client.get_experiment(str(exp_id))
                return str(exp_id)
            except GentuneError:  # a store that was recreated: look the experiment up by name
                pass
        with self.store_errors():
            exp = self.client.get_experiment_by_name(self.info.get("experiment") or self.name)
        if exp is None:
            raise GentuneError(f"the MLflow store {self.tracking_uri} has no experiment for sweep {self.name!r}")
        return exp.experiment_id

    def _runs(self, kind: str) -> list:
        with self.store_errors():
            return all_runs(self.client, self.experiment_id, f"tags.`gentune.kind` = '{kind}'")

    @cached_property
    def studies(self) -> dict[str, Study]:
        """Every study of the sweep, in the spec's order."""
        parents = {r.data.tags.get("gentune.study"): r for r in self._runs("study")}
        spec_studies = {s.get("name"): s for s in (self.info.get("spec") or {}).get("studies", []) or []}
        if not spec_studies and isinstance(self.info.get("spec"), dict) and "family" in self.info["spec"]:
            single = self.info["spec"]
            spec_studies = {single.get("name", self.name): single}
        names = list(self.info.get("studies") or []) or list(parents)
        out: dict[str, Study] = {}
        for name in names:
            p = parents.get(name)
            tags = p.data.tags if p is not None else {}
            metric, mode = (self.info.get("metrics") or {}).get(name, [tags.get("gentune.metric"), tags.get("gentune.mode")])
            objectives = (self.info.get("objectives") or {}).get(name) or [
                o.split(":", 1) for o in tags.get("gentune.objectives", "").split(",") if ":" in o]
            family = (self.info.get("families") or {}).get(name) or tags.get("gentune.family", "")
            raw = spec_studies.get(name) or (next(iter(spec_studies.values())) if len(spec_studies) == 1 else {})
            budget = raw.get("budget") or {}
            rank_by = tags.get("gentune.rank_by") or ("last" if p is not None else budget.get("rank_by", "best"))
            repeats = tags.get("gentune.repeats") or budget.get("repeats", 1)
            out[name] = Study(name, family, metric or "", mode or "max", p.info.run_id if p is not None else None,
                              dict(raw.get("search") or {}), tuple((str(m), str(d)) for m, d in objectives),
                              rank_by if rank_by in ("best", "last") else "last", int(repeats) if str(repeats).isdigit() else 1,
                              tags.get("gentune.aggregate") or budget.get("aggregate", "mean"))
        return out

    def study(self, name: str | None) -> Study:
        """The named study, or the only one; a sweep of several needs a name."""
        if name is None:
            if len(self.studies) == 1:
                return next(iter(self.studies.values()))
            raise GentuneError(f"the sweep holds {len(self.studies)} studies; pick one with --study "
                               f"({', '.join(self.studies)})")
        if name not in self.studies:
            raise GentuneError(f"--study {name!r} is not in sweep {self.name}; it has {', '.join(self.studies) or 'none'}")
        return self.studies[name]

    def _trials_of(self, kind: str) -> list[Trial]:
        out = []
        for r in self._runs(kind):
            t = r.data.tags
            out.append(Trial(
                run_id=r.info.run_id, trial_id=t.get("gentune.trial_id", ""), study=t.get("gentune.study", ""),
                family=t.get("gentune.family", ""), status=r.info.status, stop_reason=t.get("gentune.stop_reason", ""),
                params={k: parse_param(v) for k, v in r.data.params.items()}, metrics=dict(r.data.metrics),
                artifact_uri=r.info.artifact_uri, start_time=r.info.start_time or 0,
            ))
        out.sort(key=lambda tr: (tr.start_time, tr.trial_id))
        return out

    @cached_property
    def all_trials(self) -> list[Trial]:
        return self._trials_of("trial")

    @cached_property
    def _seed_runs(self) -> dict[str, list[Trial]]:
        out: dict[str, list[Trial]] = {}
        for t in self._trials_of("seed"):  # trial id "<configuration's trial id>:s<seed>"
            out.setdefault(t.trial_id.rpartition(":s")[0], []).append(t)
        return {k: sorted(v, key=lambda t: int(t.params.get("seed", 0))) for k, v in out.items()}

    def seeds(self, trial: Trial) -> list[Trial]:
        """The runs of each seed of a configuration repeated over seeds (budget.repeats), by seed; [] otherwise."""
        return self._seed_runs.get(trial.trial_id, [])

    def trials(self, study: str | None = None) -> list[Trial]:
        return [t for t in self.all_trials if study is None or t.study == study]

    def trial(self, trial_id: str) -> Trial:
        for t in self.all_trials:
            if t.trial_id == trial_id:
                return t
        raise GentuneError(f"no trial {trial_id!r} in sweep {self.name}; it has {', '.join(t.trial_id for t in self.all_trials)}")

    def history(self, trial: Trial, metric: str) -> list[tuple[int, float]]:
        """(epoch, value) of `metric` over the trial's epochs (MLflow steps are epochs)."""
        key = (trial.run_id, metric)
        if key not in self._history:
            with self.store_errors():
                hist = self.client.get_metric_history(trial.run_id, metric)
            by_step = {}
            for m in sorted(hist, key=lambda m: (m.step, m.timestamp)):
                by_step[int(m.step)] = float(m.value)  # a resumed trial may log an epoch twice: keep the last
            self._history[key] = sorted(by_step.items())
        return self._history[key]

    def best_epoch(self, trial: Trial, metric: str, mode: str) -> tuple[int, float] | None:
        """(epoch, value) of the trial's best evaluated epoch; of equal values the latest (the checkpoint Tune
        keeps as best: of equal scores, the later one)."""
        best = None
        for epoch, v in self.history(trial, metric):
            if math.isfinite(v) and (best is None or not better(best[1], v, mode)):
                best = (epoch, v)
        return best

    def best_value(self, trial: Trial, metric: str, mode: str) -> float | None:
        b = self.best_epoch(trial, metric, mode)
        return None if b is None else b[1]

    def at_epoch(self, trial: Trial, epoch: int) -> Trial:
        """The trial as it stood at `epoch`: each metric's value logged at that epoch (others dropped)."""
        metrics = {}
        for k in trial.metrics:
            v = dict(self.history(trial, k)).get(epoch)
            if v is not None:
                metrics[k] = v
        return replace(trial, metrics=metrics)

    def score(self, trial: Trial, metric: str, mode: str, rank_by: str) -> float | None:
        """The trial's value by `rank_by`: its last epoch's (`last`) or its best evaluated epoch's (`best`)."""
        return trial.value(metric) if rank_by == "last" else self.best_value(trial, metric, mode)

    def finished(self, study: str, metric: str) -> list[Trial]:
        """Trials that ran to their end (completed or stopped early by ASHA, not diverged/failed) with `metric`."""
        return [t for t in self.trials(study) if t.status == "FINISHED" and t.value(metric) is not None]

    def best_trial(self, study: str, metric: str | None = None, mode: str | None = None,
                   where: dict[str, Any] | None = None, rank_by: str | None = None) -> Trial | None:
        """The finished trial with the best `metric` by the study's rank_by (its last epoch's value, or its best
        epoch's: the two checkpoints a trial keeps). A repeated configuration's metric is its seeds' aggregate."""
        st = self.studies[study]
        metric, mode = metric or st.metric, mode or st.mode
        trials = [t for t in self.finished(study, metric) if not where or all(t.params.get(k) == v for k, v in where.items())]
        return self.best_of(trials, metric, mode, rank_by or st.rank_by)

    def best_of(self, trials: list[Trial], metric: str, mode: str, rank_by: str | None = None) -> Trial | None:
        """The best of `trials` by `metric`: each scored by `rank_by`, or else as its study ranks it (its rank_by
        where `metric` is the study's own, its last value otherwise). On a tie, the trial its study tagged best
        (gentune.best_trial_id) when scored as that study ranks; otherwise the first."""
        best, best_v = None, None
        for t in trials:
            st = self.studies.get(t.study)
            own = st is not None and (metric, mode) == (st.metric, st.mode)
            by = rank_by or (st.rank_by if own else "last")
            v = self.score(t, metric, mode, by)
            if v is None:
                continue
            if best is None or better(v, best_v, mode):  # type: ignore[arg-type]
                best, best_v = t, v
            elif v == best_v and own and by == st.rank_by and t.trial_id == self.best_tags.get(t.study):
                best = t  # a tie: the trial the sweep itself named best
        return best

    def pareto(self, study: str) -> dict[str, tuple[float, ...]]:
        """A multi-objective study's Pareto-optimal finished trials: {trial id: final objective values}."""
        objectives = self.studies[study].objectives
        points = {t.trial_id: tuple(t.value(m) for m, _ in objectives) for t in self.trials(study)
                  if t.status == "FINISHED" and all(t.value(m) is not None for m, _ in objectives)}
        front = pareto_front(points, tuple(mode for _, mode in objectives))  # type: ignore[arg-type]
        return {k: points[k] for k in front}  # type: ignore[misc]

    @cached_property
    def best_tags(self) -> dict[str, str]:
        """{study: the trial id the sweep tagged best on the study's parent run}."""
        return {r.data.tags.get("gentune.study", ""): r.data.tags.get("gentune.best_trial_id", "")
                for r in self._runs("study")}

    # --- checkpoints ------------------------------------------------------------------------------

    def trial_dirs(self, study: str) -> dict[str, Path]:
        """{trial id: Ray trial folder} of a study's experiment folder (read once per study: `report` asks for every
        trial's, and each look reads every result.json of the study)."""
        if study in self._dirs:
            return self._dirs[study]
        exp = self.root / study
        out: dict[str, Path] = {}
        if not exp.is_dir():
            return out
        live = bool(driver_alive(self.folder or Folder(str(self.root))))  # a result line may be being appended only while the sweep runs
        for d in sorted(p for p in exp.iterdir() if p.is_dir()):
            res = d / "result.json"
            tid = trial_id_of(d, read_results(res, live) if res.is_dir() or (res.is_file() and res.stat().st_size) else [])
            if tid:
                out[tid] = d
        self._dirs[study] = out  # whole or not at all: a damaged file read next time is the same error again
        return out

    def checkpoint_dirs(self, trial: Trial) -> list[Path]:
        """The trial's checkpoint folders, oldest first (checkpoint_<n> holding checkpoint.pt, or seed_<s>.pt files
        of a configuration repeated over seeds): its last and, scored, its best."""
        d = self.trial_dirs(trial.study).get(trial.trial_id)
        if d is None:
            raise CheckpointError(f"trial {trial.trial_id}: no Ray trial folder for it under {self.address}/{trial.study}")
        ckpts = sorted((int(m.group(1)), d / name) for name in self._entries(d)  # a folder where a file should be: load says so
                       if (m := _CKPT_DIR.match(name)) and any(f == CHECKPOINT or f.startswith("seed_") and f.endswith(".pt")
                                                              for f in self._entries(d / name)))
        if not ckpts:
            raise CheckpointError(f"trial {trial.trial_id}: no checkpoint_*/{CHECKPOINT} in {self._stored_name(d)}")
        return [p for _, p in ckpts]

    def _entries(self, d: Path) -> set[str]:
        """Names of what folder `d` of the sweep holds (of a remote sweep: in the store, fetched or not)."""
        if self.folder is None:
            return {p.name for p in d.iterdir()} if d.is_dir() else set()
        rel = d.relative_to(self.root).as_posix() + "/"
        return {k[len(rel):].split("/")[0] for k in self._stored if k.startswith(rel)}

    def _stored_name(self, path: Path) -> str:
        return str(path) if self.folder is None else without_query(self.folder.uri(path.relative_to(self.root).as_posix()))

    def _fetched(self, path: Path) -> Path:
        """A file of the sweep on this machine: a remote sweep's checkpoint is copied down when first needed."""
        if self.folder is not None and not path.exists():
            rel = path.relative_to(self.root).as_posix()
            if rel in self._stored:
                self.folder.download(rel, path)
        return path

    def checkpoint_path(self, trial: Trial, seed: int | None = None) -> Path:
        """The trial's latest checkpoint file (of `seed`, for a configuration repeated over seeds)."""
        return self.checkpoint_dirs(trial)[-1] / (CHECKPOINT if seed is None else f"seed_{seed}.pt")

    def load_checkpoint(self, trial: Trial, epoch: int | None = None, seed: int | None = None) -> dict[str, Any]:
        """The trial's checkpoint: its last, or the one of `epoch` (the best a scored trial keeps); of `seed`."""
        from trainables.checkpoint import load_checkpoint

        name = CHECKPOINT if seed is None else f"seed_{seed}.pt"
        dirs = self.checkpoint_dirs(trial)
        if epoch is None:
            return load_checkpoint(self._fetched(dirs[-1] / name), trial.family or None)
        kept = []
        for d in reversed(dirs):
            ckpt = load_checkpoint(self._fetched(d / name), trial.family or None)
            if int(ckpt.get("epoch", -1)) == epoch:
                return ckpt
            kept.append(str(ckpt.get("epoch")))
        raise CheckpointError(f"trial {trial.trial_id}: no checkpoint of epoch {epoch} is kept (epochs kept: "
                              f"{', '.join(kept)}); a sweep that ranks by the last epoch keeps only the last")


def all_runs(client, experiment_id: str, filter_string: str = "", **kw) -> list:
    """Every run of an experiment matching the filter: MLflow's search_runs, page after page."""
    out, token = [], None
    while True:
        page = client.search_runs([str(experiment_id)], filter_string=filter_string, max_results=1000, page_token=token, **kw)
        out += list(page)
        token = getattr(page, "token", None)
        if not token:
            return out


def varied_params(trials: list) -> list[str]:
    """Param keys whose value is not the same in every trial (missing counts as a value); trials are anything
    with a `params` dict (a Trial, an Optuna FrozenTrial)."""
    keys = sorted({k for t in trials for k in t.params})
    return [k for k in keys if len({json.dumps(t.params.get(k), sort_keys=True, default=str) for t in trials}) > 1]
