"""Ray Tune's experiment folder of a study (<sweep>/<study>/), read while Tune may be writing it.

experiment_state-*.json holds Ray's own trial states (PENDING / RUNNING / PAUSED / TERMINATED /
ERROR) and the study's start; each trial folder's result.json holds its results, one JSON line per
report. Nothing here writes, and half-written files (a line being appended, a state file being
replaced) are read as far as they are complete.

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
from pathlib import Path
from typing import Any


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


def _last_json_line(path: Path) -> dict | None:
    """The last complete JSON line of a result.json that may be being appended to."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    for line in reversed(data.splitlines()):
        try:
            obj = json.loads(line)
        except ValueError:
            continue  # a line still being written
        if isinstance(obj, dict):
            return obj
    return None


def read_ray_study(folder: Path) -> tuple[dict[str, dict[str, Any]], float | None, list[str]]:
    """Trials of one Tune experiment folder: {trial_id: {state, start, last_time, result, error}}, study start, notes."""
    trials: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    start = None
    if not folder.is_dir():
        return trials, start, notes
    states = sorted(glob.glob(str(folder / "experiment_state-*.json")))  # names carry a sortable date
    if states:
        try:
            exp = json.loads(Path(states[-1]).read_text())
            start = number((exp.get("stats") or {}).get("start_time"))
            for pair in exp.get("trial_data") or []:
                meta, runtime = json.loads(pair[0]), json.loads(pair[1])
                tid = str(_plain(meta.get("trial_id")))
                last = _plain(runtime.get("last_result"))
                trials[tid] = {
                    "state": str(_plain(meta.get("status")) or ""),
                    "start": number(_plain(runtime.get("start_time"))),
                    "last_time": number(_plain(runtime.get("last_result_time"))),
                    "result": last if isinstance(last, dict) else None,
                    "error": _plain(runtime.get("error_filename")) not in (None, "None", "null", ""),
                    "dir": str(_plain(meta.get("relative_logdir")) or ""),
                }
        except (OSError, ValueError, TypeError, KeyError, IndexError) as e:
            notes.append(f"{Path(states[-1]).name}: unreadable ({type(e).__name__}); trial states from trial folders only")
    # Trial folders: newer results than the state file, and trials the state file does not list yet.
    for d in sorted(p for p in folder.iterdir() if p.is_dir()):
        res = _last_json_line(d / "result.json") if (d / "result.json").exists() else None
        tid = trial_id_of(d)
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


def trial_id_of(d: Path) -> str | None:
    """A Ray trial folder's trial id: from its result.json, else from its name (<trainable>_<id>_<n>_...)."""
    res = d / "result.json"
    if res.is_file():
        try:
            with res.open() as f:
                first = f.readline()
            if first.strip():
                tid = json.loads(first).get("trial_id")
                if tid:
                    return str(tid)
        except (OSError, ValueError):
            pass
    m = re.match(r"^.+?_([0-9a-f]{5,}(?:_[0-9]{5})?)_\d+_", d.name)
    return m.group(1) if m else None
