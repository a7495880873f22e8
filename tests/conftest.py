"""Shared fixtures: a finished smoke sweep of the quickstart spec (run once per test session in a
subprocess, so its Ray instance never leaks into the test process), and paths."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A shell starts background jobs with SIGINT ignored, and an ignored signal stays ignored in every child:
# the Ctrl-C tests' `gentune` processes would never see their SIGINT. Give the test run Python's default.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
SPECS = REPO / "search" / "specs"


def shared_datasets() -> Path:
    env = os.environ.get("GENTUNE_SHARED_DATASETS")
    return Path(env) if env else REPO.parent / "shared" / "datasets"


def gentune(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real `gentune` CLI in a fresh process."""
    e = {**os.environ, **(env or {})}
    p = subprocess.run([sys.executable, "-m", "search.cli", *args], cwd=cwd or REPO, env=e, capture_output=True,
                       text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"gentune {' '.join(args)} exited {p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-5000:]}")
    return p


def interrupt(p: subprocess.Popen, group: bool = False) -> str:
    """SIGINT to a running `gentune` (its whole process group with group=True), SIGKILL after 120 s; its output."""
    import signal

    (os.killpg if group else os.kill)(p.pid, signal.SIGINT)
    try:
        return p.communicate(timeout=120)[0]
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        return p.communicate()[0]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One dataset/evaluator cache for the whole session (GENTUNE_CACHE), so demo data decodes once."""
    d = Path(os.environ.get("GENTUNE_CACHE") or tmp_path_factory.mktemp("cache"))
    os.environ["GENTUNE_CACHE"] = str(d)
    return d


@pytest.fixture(scope="session")
def smoke_sweep(tmp_path_factory, cache_dir) -> dict:
    """`gentune sweep search/specs/quickstart.yaml --smoke` finished once: {root, tracking_uri, info}."""
    storage = tmp_path_factory.mktemp("sweeps")
    reuse = os.environ.get("GENTUNE_TEST_SMOKE_SWEEP")  # a finished smoke sweep to copy instead (quicker reruns)
    if reuse:
        import shutil

        shutil.copytree(reuse, storage / "quickstart")
        root = storage / "quickstart"
        info = json.loads((root / "sweep.json").read_text())
        uri = f"sqlite:///{(root / 'mlflow.db').resolve()}"
        info["tracking_uri"] = uri
        (root / "sweep.json").write_text(json.dumps(info, indent=2))
        return {"root": root, "tracking_uri": uri, "info": info}
    gentune("sweep", str(SPECS / "quickstart.yaml"), "--smoke", "--storage", str(storage), "--quiet")
    root = storage / "quickstart"
    info = json.loads((root / "sweep.json").read_text())
    return {"root": root, "tracking_uri": info["tracking_uri"], "info": info}
