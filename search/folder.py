"""A sweep folder as the driver sees it, on any storage (trainables/storage.py, one layer for local folders and
URIs): where it is, what it allows (a new sweep, or --resume of the same spec), its record sweep.json, and where
the driver keeps its own files for it.

Folder of a sweep: <storage>/<name>/
  sweep.json      what was run (spec source, overrides, smoke, start time, tracking URI, state)
  optuna.db       the Optuna study of each searched study (`gentune dashboard`)
  waiting.json    trials waiting for resources, while they wait
  .gentune.lock (local) / .gentune.lease (remote)   the driver holding the sweep (trainables/lease.py)
  mlflow.db, mlartifacts/   the MLflow store of a local sweep run without --tracking-uri
  <study>/        Ray Tune's experiment folder of each study (trials, checkpoints, resumable state)
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from search.spec import Spec
from trainables.errors import SpecError
from trainables.lease import LEASE, LOCK
from trainables.storage import Folder, as_stored, cache_dir, is_remote, join


def sweep_dir(spec: Spec, storage: str | None, name: str | None) -> str:
    """The sweep's address: <storage>/<name>, a resolved local path or a URI (query string kept at the end)."""
    base = storage or spec.storage
    if is_remote(base):
        return join(base, name or spec.name)
    return str((Path(base.removeprefix("file://")).expanduser() / (name or spec.name)).resolve())


def spool_dir(root: str) -> Path:
    """The driver's own files for a sweep: tracking's journal, and the Optuna study while it runs. In a local
    sweep folder they are part of the sweep (.tracking/); for a remote one they are on this machine's disk
    (appending to an object store is not possible), and optuna.db is copied to the sweep folder."""
    return Path(root) / ".tracking" if not is_remote(root) else cache_dir("driver", root)


def write_info(folder: Folder, info: dict[str, Any]) -> None:
    """sweep.json, whole or not at all (`gentune status` reads it while the driver writes it)."""
    folder.write_bytes("sweep.json", json.dumps(info, indent=2, default=str).encode())


def spec_differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two spec sources differ (an absent mapping counts as an empty one)."""
    if isinstance(old, dict) or isinstance(new, dict):
        old, new = (x if isinstance(x, dict) else {} if x is None else {"": x} for x in (old, new))
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += spec_differences(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [prefix.rstrip(".") or "spec"]


def check_folder(folder: Folder, resume: bool, source: dict, smoke: bool) -> dict | None:
    """What a sweep folder allows: a new sweep needs it empty or absent; --resume needs the same spec."""
    if folder.exists() and not folder.is_dir():
        raise SpecError(f"sweep folder {folder} is a file, not a folder")
    if not resume:
        if any(not name.startswith((LOCK, LEASE)) for name in folder.listing(recursive=True)):
            raise SpecError(f"sweep folder {folder} already exists; add --resume to continue it or --name for a new sweep")
        return None
    from analysis.sweepdata import check_optuna_db, read_sweep_json

    record = Path(folder.base, "sweep.json")
    if not (folder.is_file("sweep.json") if folder.remote else record.exists() or record.is_symlink()):
        raise SpecError(f"--resume: there is no sweep in {folder} (no sweep.json); check --name and --storage")
    info = read_sweep_json(folder.address)  # missing, a folder or a damaged file in its place: one line naming it
    local = Path(folder.base) if not folder.remote else cache_dir("resume", folder.address)
    if folder.remote:  # what the checks below read, copied down: the Optuna study and Tune's saved state
        folder.mirror(local, lambda rel: rel == "optuna.db" or (rel.count("/") == 1 and (
            rel.endswith(".pkl") or rel.split("/")[1].startswith("experiment_state-"))))
    db = local / "optuna.db"
    if db.exists() or db.is_symlink():  # before Optuna opens it: it would add its tables to a foreign or emptied file
        with as_stored(local, folder):
            check_optuna_db(db)
    for name in info["studies"]:  # what Tune will restore, before any study resumes and writes
        if (local / name / "tuner.pkl").exists():
            with as_stored(local, folder):
                check_tune_state(local / name)
    diff = [d.replace("__set__.", "--set ") for d in spec_differences(info.get("spec"), source)]
    if bool(info.get("smoke")) != bool(smoke):
        diff.append("--smoke")
    if diff:
        raise SpecError(f"--resume: the spec differs from the one {folder.name} ran with in {', '.join(diff[:6])}; "
                        "resume with the same spec and --set values, or start a new sweep with --name")
    return info


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
