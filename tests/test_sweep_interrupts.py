"""Ctrl-C and tracking outages against real parts: a `gentune sweep` process with its own Ray instance,
the toy family (tests/toy_family.py), and a real `mlflow server` on 127.0.0.1 that the tests start, kill by
PID and restart on the same SQLite store."""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.faults import MlflowServer, kill_group
from tests.conftest import REPO, interrupt
from tests.test_families import TOY_ENV
from tests.test_sweep import result_epochs, tracked_epochs

TOY = """\
name: toy
family: toy
config: {{epochs: {epochs}, steps_per_epoch: 300, batch_size: 64}}
search:
  lr: {{loguniform: [1.0e-3, 1.0e-2]}}
budget: {{trials: 2, scheduler: fifo}}
resources: {{cpu: 1, gpu: 0}}
concurrency: 2
"""


def env() -> dict[str, str]:
    return {**os.environ, **TOY_ENV}


def sweep(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "search.cli", "sweep", *args], cwd=REPO, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_until(p: subprocess.Popen, ready, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and p.poll() is None and not ready():
        time.sleep(0.3)
    if p.poll() is not None or not ready():
        out = p.communicate(timeout=60)[0] if p.poll() is not None else interrupt(p, group=True)
        raise AssertionError(f"the sweep did not get there (exit {p.returncode}):\n{out[-4000:]}")


def trial_runs(uri: str, experiment: str) -> tuple:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name(experiment).experiment_id], max_results=1000)
    return c, runs


@pytest.mark.slow
@pytest.mark.ray
def test_ctrl_c_after_every_trial_started_is_interrupted_and_the_printed_command_resumes(tmp_path, cache_dir):
    """Twice: in the first driver, and in the resumed one (whose Tune callbacks are the pickled copies)."""
    epochs = 16
    spec = tmp_path / "toy.yaml"
    spec.write_text(TOY.format(epochs=epochs))
    store = tmp_path / "elsewhere" / "mlflow.db"
    store.parent.mkdir()
    typed = [str(spec), "--storage", str(tmp_path / "runs"), "--name", "cc", "--set", "batch_size=32",
             "--tracking-uri", f"sqlite:///{store}", "--quiet"]
    root = tmp_path / "runs" / "cc"
    args, reached = typed, {}
    for _ in range(2):
        p = sweep(*args)
        # every planned trial has started (past where it was) and none has ended: Tune's cleanup will
        # mark both TERMINATED as if they had finished
        wait_until(p, lambda: len(ep := tracked_epochs(root, f"sqlite:///{store}", "cc")) == 2 and all(
            reached.get(t, 0) < max(v) < epochs for t, v in ep.items()))
        reached = {t: max(v) for t, v in tracked_epochs(root, f"sqlite:///{store}", "cc").items()}
        out = interrupt(p)
        assert p.returncode == 130, out[-3000:]
        assert json.loads((root / "sweep.json").read_text())["state"] == "interrupted"
        line = next(x for x in out.splitlines() if "interrupted; resume with: " in x).split("resume with: ", 1)[1]
        words = shlex.split(line)
        assert words == ["gentune", "sweep", *typed, "--resume"], line  # every option as typed, plus --resume
        _, runs = trial_runs(f"sqlite:///{store}", "cc")
        assert {r.info.status for r in runs} == {"KILLED"}, [(r.data.tags.get("gentune.kind"), r.info.status) for r in runs]
        args = words[2:]

    r = subprocess.run([sys.executable, "-m", "search.cli", "sweep", *args], cwd=REPO, env=env(), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((root / "sweep.json").read_text())["state"] == "finished"
    after = result_epochs(root)
    assert len(after) == 2 and all(sorted(set(v)) == list(range(1, epochs + 1)) for v in after.values()), after
    c, runs = trial_runs(f"sqlite:///{store}", "cc")
    assert {r.info.status for r in runs} == {"FINISHED"} and len(runs) == 3  # the study's run and one per trial
    for run in runs:
        if run.data.tags["gentune.kind"] == "trial":
            assert [m.step for m in c.get_metric_history(run.info.run_id, "epoch_time_s")] == list(range(1, epochs + 1))


@pytest.mark.slow
@pytest.mark.ray
def test_mlflow_server_down_mid_sweep_loses_and_stops_nothing(tmp_path, cache_dir):
    """The server is SIGKILLed after the trials' first epochs and stays down well past the client's retry
    window (the driver sets 1 retry with backoff factor 1: about 2 s) while the trials train at least 4 epochs.
    Restarted on the same store before the sweep ends, it ends up with every epoch of every trial exactly once
    and no run RUNNING. The outage lasts what this machine needs, not a fixed time: on a fast machine the
    trials outran a fixed 20 s outage (CI, stop 29)."""
    spec = tmp_path / "toy.yaml"
    epochs = 40
    spec.write_text(TOY.format(epochs=epochs))
    root = tmp_path / "runs" / "toy"
    with MlflowServer(tmp_path / "mlflow", env()) as server:
        p = sweep(str(spec), "--storage", str(tmp_path / "runs"), "--tracking-uri", server.uri, "--quiet")
        try:
            wait_until(p, lambda: len(ep := result_epochs(root)) == 2 and all(len(v) >= 2 for v in ep.values()))
            kill_group(server.proc, signal.SIGKILL)
            server.proc.wait(15)
            down = time.time()
            before = sum(len(v) for v in result_epochs(root).values())
            during = 0
            while p.poll() is None and time.time() - down < 60 and (time.time() - down < 8 or during < 4):
                time.sleep(0.5)
                during = sum(len(v) for v in result_epochs(root).values()) - before
            assert p.poll() is None
            server.__enter__()  # the same port and SQLite store
            print(f"server down {time.time() - down:.0f} s; {during} epochs trained meanwhile")
            out = p.communicate(timeout=600)[0]
        finally:
            if p.poll() is None:
                kill_group(p)
        assert p.returncode == 0, out[-4000:]
        assert during >= 4, during  # the trials did not wait for the tracking server
        assert out.count("does not answer") == 1 and "answers again" in out, out[-4000:]
        epochs_run = result_epochs(root)
        c, runs = trial_runs(server.uri, "toy")
        assert {r.info.status for r in runs} == {"FINISHED"}, [(r.data.tags.get("gentune.kind"), r.info.status) for r in runs]
        trials = {r.data.tags["gentune.trial_id"]: r for r in runs if r.data.tags["gentune.kind"] == "trial"}
        assert set(trials) == set(epochs_run) and len(trials) == 2
        for tid, run in trials.items():
            assert epochs_run[tid] == list(range(1, epochs + 1))
            for key in ("epoch_time_s", "loss", "val_acc"):
                assert [m.step for m in c.get_metric_history(run.info.run_id, key)] == epochs_run[tid], (tid, key)
        assert "best_val_acc" in next(r for r in runs if r.data.tags["gentune.kind"] == "study").data.metrics


def test_tracking_writer_never_makes_the_driver_wait_and_keeps_what_it_could_not_write(tmp_path, monkeypatch):
    """With nobody answering at the tracking URI, appending is a moment, closing gives up after the time it
    is given, and the journal keeps every entry for the next driver (`--resume`)."""
    from benchmarks.faults import free_port
    from search.tracking import MlflowTrials, Writer

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    w = Writer(f"http://127.0.0.1:{free_port()}", "1", tmp_path / "spool", "s", "st")
    cb = MlflowTrials("st", "dann", 3)

    class T:
        trial_id, config, last_result = "t1", {"mode": "dann"}, {}

    t0 = time.perf_counter()
    w.append({"op": "study", "run": "study", "name": "st", "tags": {}})
    cb.on_trial_start(0, [], T)
    for e in range(1, 201):
        cb.on_trial_result(0, [], T, {"epoch": e, "loss": 1.0 / e, "timestamp": e})
    spent = time.perf_counter() - t0
    assert spent < 1.0, spent  # 202 events: no waiting on the server
    t0 = time.perf_counter()
    left = w.close(1.5)
    assert left == 202 and time.perf_counter() - t0 < 10
    assert len((tmp_path / "spool" / "st.jsonl").read_text().splitlines()) == 202
    assert not (tmp_path / "spool" / "st.done").exists()
