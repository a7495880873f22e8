"""Ray Tune's experiment folder of a study (<sweep>/<study>/), read while Tune may be writing it.

experiment_state-*.json holds Ray's own trial states (PENDING / RUNNING / PAUSED / TERMINATED /
ERROR) and the study's start; each trial folder's result.json holds its results, one JSON line per
report. Nothing here writes. Each file is checked before it is used (trainables/filecheck.py): a damaged
one is an error naming it, except while the sweep runs, when a line being appended or a state file being
copied is expected and read as far as it is complete.

Why not Ray's ExperimentAnalysis: it decodes experiment_state with cloudpickle (its own docstring:
"executes arbitrary code"), so `gentune status/export` on a sweep folder someone else made would run
that folder's code; its checkpoints are those of the last state save (a killed driver leaves newer
checkpoint_<n> folders it does not know); and importing ray.tune costs 2.5 s per command here.
"""
from __future__ import annotations

import glob
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from trainables.errors import FileContentError
from trainables.filecheck import Range, fail, non_empty, parse, read_checked, read_json_lines


def finite(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def number(v: Any) -> float | None:
    try:
        return finite(float(v))
    except (TypeError, ValueError):
        return None


def _plain(v: Any) -> Any:
    """Ray keeps some trial fields JSON-encoded a second time; undo that where it is so.

    Only strings, objects and lists are decoded: a bare token such as the trial id 759e2719 is
    valid JSON too (a float, inf) but is meant as text."""
    if isinstance(v, str) and v[:1] in ('"', "{", "["):
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


RAY_STATES = ("PENDING", "RUNNING", "PAUSED", "TERMINATED", "ERROR")


@dataclass(frozen=True)
class StateStats:
    OPEN = True  # Ray's own file: only the keys gentune reads are checked
    start_time: float | None = None


@dataclass(frozen=True)
class ExperimentState:
    """experiment_state-*.json: what gentune reads of it (the rest is Ray's)."""

    OPEN = True
    trial_data: list[tuple[str, str]]  # per trial: its JSON state and its runtime metadata, each JSON-encoded again
    stats: StateStats | None = None


@dataclass(frozen=True)
class TrialMeta:
    OPEN = True
    trial_id: Annotated[str, non_empty]
    status: Literal[RAY_STATES]  # type: ignore[valid-type]
    relative_logdir: str | None = None


@dataclass(frozen=True)
class TrialRuntime:
    OPEN = True
    start_time: float | None = None
    last_result_time: Any = None  # a time; Ray writes -Infinity for a trial with no result yet (read by number())
    last_result: dict[str, Any] | None = None
    error_filename: str | None = None


@dataclass(frozen=True)
class ResultLine:
    """One line of a trial's result.json."""

    OPEN = True
    trial_id: Annotated[str, non_empty]
    training_iteration: Annotated[int, Range(0)] = 0
    done: bool = False
    timestamp: float | None = None
    epoch: Annotated[int, Range(0)] | None = None


def _decoded(text: str, path: Path, where: str) -> dict:
    """A JSON object Ray keeps as a string inside its state file, with its values decoded again (_plain)."""
    try:
        obj = json.loads(text)
    except ValueError:
        raise fail(path, where, "a JSON-encoded object", text) from None
    if not isinstance(obj, dict):
        raise fail(path, where, "a JSON-encoded object", obj)
    return {k: _plain(v) for k, v in obj.items()}


def read_results(path: Path, live: bool = False) -> list[dict]:
    """The result lines of a trial's result.json, each checked against ResultLine and naming one trial. While
    the sweep runs (`live`), a last line still being appended is left out."""
    lines = read_json_lines(path, "one JSON object per line (Ray's results)", partial_last=live)
    out = []
    for i, obj in lines:
        parse(obj, ResultLine, path, f"line {i}")
        if out and obj["trial_id"] != out[0]["trial_id"]:
            raise fail(path, f"line {i}.trial_id", f"the trial id of line {lines[0][0]} ({out[0]['trial_id']})",
                       obj["trial_id"])
        out.append(obj)
    return out


def read_state(path: Path) -> tuple[dict[str, dict[str, Any]], float | None]:
    """The trials of an experiment_state-*.json ({trial_id: ...} as read_ray_study gives them) and the start."""
    exp = read_checked(path, ExperimentState)
    trials: dict[str, dict[str, Any]] = {}
    for i, (meta_text, runtime_text) in enumerate(exp["trial_data"]):
        meta = parse(_decoded(meta_text, path, f"trial_data[{i}][0]"), TrialMeta, path, f"trial_data[{i}][0]")
        runtime = parse(_decoded(runtime_text, path, f"trial_data[{i}][1]"), TrialRuntime, path, f"trial_data[{i}][1]")
        tid = meta["trial_id"]
        if tid in trials:
            raise fail(path, f"trial_data[{i}][0].trial_id", "each trial once", tid)
        trials[tid] = {
            "state": meta["status"],
            "start": number(runtime.get("start_time")),
            "last_time": number(runtime.get("last_result_time")),
            "result": runtime.get("last_result"),
            "error": runtime.get("error_filename") not in (None, "None", "null", ""),
            "dir": str(meta.get("relative_logdir") or ""),
        }
    return trials, number((exp.get("stats") or {}).get("start_time"))


def read_ray_study(folder: Path, live: bool = False) -> tuple[dict[str, dict[str, Any]], float | None, list[str]]:
    """Trials of one Tune experiment folder: {trial_id: {state, start, last_time, result, error}}, study start, notes.

    Every file read is checked (trainables/filecheck.py); a damaged one is an error naming it. Only while the
    sweep runs (`live`: its driver holds the folder's lock) is a state file being copied in a note, and a result
    line being appended left out."""
    trials: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    start = None
    if not folder.is_dir():
        return trials, start, notes
    states = sorted(glob.glob(str(folder / "experiment_state-*.json")))  # names carry a sortable date
    if states:
        try:
            trials, start = read_state(Path(states[-1]))
        except FileContentError as e:
            if not live:
                raise
            notes.append(f"{Path(states[-1]).name}: not readable while Ray copies it ({e}); "
                         "trial states from trial folders only")
    # Trial folders: newer results than the state file, and trials the state file does not list yet.
    for d in sorted(p for p in folder.iterdir() if p.is_dir()):
        results = read_results(d / "result.json", live) if _present(d / "result.json") else []
        res = max(results, key=lambda r: r.get("training_iteration", 0)) if results else None
        tid = trial_id_of(d, results)
        if not tid or not (res or (d / "params.json").exists()):
            continue
        t = trials.setdefault(tid, {"state": "", "start": None, "last_time": None, "result": None, "error": False, "dir": d.name})
        if res:
            old = t.get("result") or {}
            if int(res.get("training_iteration", 0) or 0) >= int(old.get("training_iteration", 0) or 0):
                t["result"] = res
            t["last_time"] = max(filter(None, [t.get("last_time"), number(res.get("timestamp"))]), default=None)
        if (d / "error.txt").exists() or (d / "error.pkl").exists():
            t["error"] = True
        if not t["state"]:
            done = bool(res and res.get("done"))
            t["state"] = "ERROR" if t["error"] else ("TERMINATED" if done else "RUNNING")
    return trials, start, notes


def _present(path: Path) -> bool:
    """A file Ray writes is there (an empty one, being created, counts as absent; a folder in its place is
    there, so reading it is the error that names it)."""
    return path.is_dir() or (path.is_file() and path.stat().st_size > 0)


def trial_id_of(d: Path, results: list[dict] | None = None) -> str | None:
    """A Ray trial folder's trial id: from its result.json (checked), else from its name (<trainable>_<id>_<n>_...)."""
    if results is None:
        results = read_results(d / "result.json", live=True) if _present(d / "result.json") else []
    if results:
        return str(results[0]["trial_id"])
    m = re.match(r"^.+?_([0-9a-f]{5,}(?:_[0-9]{5})?)_\d+_", d.name)
    return m.group(1) if m else None
