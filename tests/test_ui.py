"""`gentune status` and `gentune ui` on the finished smoke sweep (the session's `smoke_sweep`), against what
MlflowClient reads from the same store; status on a doctored copy of it for the states a finished smoke sweep
never shows (running, diverged, error, not started, a time budget)."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from tests.conftest import REPO, gentune

# ---------------------------------------------------------------- helpers shared with test_browser.py


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def no_proxy_open(url: str, data: bytes | None = None, timeout: float = 30):
    """HTTP to our own server on 127.0.0.1, never through $http_proxy."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    return opener.open(req, timeout=timeout)


class UiServer:
    """`gentune ui` as a user runs it: a foreground process, its URL read off stdout, Ctrl-C to stop."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.args, self.log = args, log
        self.lines: list[str] = []
        self.url: str | None = None
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> str:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.err = open(self.log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "search.cli", "ui", *self.args], cwd=REPO, env=env,
                                     stdout=subprocess.PIPE, stderr=self.err, text=True, start_new_session=True)
        got = threading.Event()

        def reader():
            for line in self.proc.stdout:  # keep draining, so a chatty server can never block on a full pipe
                self.lines.append(line.rstrip("\n"))
                if self.url is None and line.startswith("http"):
                    self.url = line.strip()
                    got.set()
            got.set()

        threading.Thread(target=reader, daemon=True).start()
        if not got.wait(timeout) or self.url is None:
            self.stop()
            raise AssertionError(f"gentune ui printed no URL within {timeout}s; exit {self.proc.returncode}\n"
                                 f"stdout: {self.lines}\nstderr:\n{self.log.read_text()[-4000:]}")
        return self.url

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)  # what Ctrl-C sends
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.err.close()
        return self.proc.returncode


@contextmanager
def ui_server(args: list[str], log: Path):
    s = UiServer(args, log)
    s.start()
    try:
        yield s
    finally:
        s.stop()


def mlflow_trials(uri: str, exp_id: str) -> list:
    from mlflow.tracking import MlflowClient

    runs = MlflowClient(tracking_uri=uri).search_runs([exp_id], max_results=1000)
    return [r for r in runs if r.data.tags.get("gentune.kind") == "trial"]


def listening(port: int) -> list[str]:
    """Local addresses of the sockets LISTENing on `port` (from /proc/net/tcp and tcp6)."""
    out = []
    for f, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        if not os.path.exists(f):
            continue
        for line in Path(f).read_text().splitlines()[1:]:
            parts = line.split()
            addr, st = parts[1], parts[3]
            host, p = addr.rsplit(":", 1)
            if st != "0A" or int(p, 16) != port:
                continue
            if v6:
                out.append("::" if set(host) == {"0"} else host)
            else:
                out.append(socket.inet_ntoa(bytes.fromhex(host)[::-1]))
    return out


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() + f":{p.stat().st_mtime_ns}"
            for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- status


def test_status_matches_mlflow(smoke_sweep):
    root, info = smoke_sweep["root"], smoke_sweep["info"]
    trials = mlflow_trials(smoke_sweep["tracking_uri"], info["experiment_id"])
    assert trials, "the smoke sweep recorded no trial runs"
    before = tree_digest(root)
    t0 = time.time()
    p = gentune("status", str(root), "--json")
    took = time.time() - t0
    st = json.loads(p.stdout)
    assert tree_digest(root) == before, "gentune status changed files in the sweep folder"
    assert st["state"] == "finished" and st["name"] == info["name"]
    assert [s["name"] for s in st["studies"]] == info["studies"]
    for s in st["studies"]:
        mine = [r for r in trials if r.data.tags["gentune.study"] == s["name"]]
        assert len(s["trials"]) == len(mine) == sum(s["counts"].values()), s["name"]
        assert {t["run_id"] for t in s["trials"]} == {r.info.run_id for r in mine}
        assert s["counts"]["running"] == s["counts"]["pending"] == 0
        assert s["states"]["TERMINATED"] + s["states"]["ERROR"] == len(mine)
        # each trial's outcome follows the stop reason the sweep recorded
        for t in s["trials"]:
            reason = next(r for r in mine if r.info.run_id == t["run_id"]).data.tags.get("gentune.stop_reason", "")
            assert t["stop_reason"] == reason
            want = {"completed": "completed"}.get(reason) or ("early-stopped" if reason.startswith("early-stopped") else None)
            if want:
                assert t["outcome"] == want, t
        metric, mode = info["metrics"][s["name"]]
        values = [r.data.metrics[metric] for r in mine if metric in r.data.metrics]
        if values:
            best = max(values) if mode == "max" else min(values)
            assert s["best"]["value"] == pytest.approx(best, rel=0, abs=0)
            assert s["best"]["run_name"] in {r.info.run_name for r in mine if r.data.metrics.get(metric) == best}
        assert s["time_budget_s"] is None and s["left_s"] is None  # the quickstart sets no time budget
        assert s["used_s"] is not None and s["used_s"] > 0
    assert st["used_s"] > 0
    assert took < 60

    text = gentune("status", str(root)).stdout
    assert text.splitlines()[0].startswith(f"sweep {info['name']}: finished")
    assert "time used:" in text
    assert text.count("no time budget") == len(info["studies"])
    for s in st["studies"]:
        metric = s["metric"]
        assert f"== study {s['name']} " in text
        if s["best"]:
            assert f"best so far: {metric}={s['best']['value']:.4f}  trial {s['best']['trial_id']}" in text
        for t in s["trials"]:
            row = rf"^\s+{t['trial_id']}\s+{re.escape(t['run_name'])}\s+{t['state']}\s+{t['outcome']}"
            assert re.search(row, text, re.M), t
    brief = gentune("status", str(root), "--brief").stdout
    assert "best so far" in brief and "stop reason" not in brief


def test_status_takes_the_planned_trials_from_sweep_json(smoke_sweep):
    """sweep.json records each study's planned trials, so `gentune status` need not parse the spec (which
    imports torch to resolve the GAN's metric auto); a sweep from before that falls back on the spec."""
    from search.commands.ui import planned_trials
    from search.spec import parse_spec

    info = smoke_sweep["info"]
    spec = parse_spec(info["spec"], list(info.get("overrides") or []), bool(info.get("smoke")))
    assert info["trials"] == {s.name: s.trials for s in spec.studies}
    assert planned_trials({**info, "spec": "not: [a spec"}) == info["trials"]
    older = {k: v for k, v in info.items() if k != "trials"}
    assert planned_trials(older) == info["trials"]


def test_status_reads_trial_ids_that_look_like_numbers(smoke_sweep, tmp_path):
    """Ray's 8-hex trial ids can read as JSON numbers (759e2719 is a float, inf; 12345678 an int):
    the state file and the trial folders must still agree on them (a CI run once saw 3 trials of 2)."""
    from analysis.rayfolder import read_ray_study

    src = smoke_sweep["root"] / "dann-baselines"
    old, _, _ = read_ray_study(src)
    assert len(old) == 2
    dst = tmp_path / "dann-baselines"
    shutil.copytree(src, dst)
    swap = dict(zip(sorted(old), ["759e2719", "12345678"]))
    for f in [*dst.glob("experiment_state-*.json"), *dst.glob("*/result.json")]:
        text = f.read_text()
        for a, b in swap.items():
            text = text.replace(a, b)
        f.write_text(text)
    for d in dst.iterdir():
        for a, b in swap.items():
            if a in d.name:
                d.rename(dst / d.name.replace(a, b))
    new, _, _ = read_ray_study(dst)
    assert sorted(new) == sorted(swap.values())
    assert {t["state"] for t in new.values()} == {"TERMINATED"}
    assert all(t["result"]["trial_id"] == tid for tid, t in new.items())


def test_status_missing_folder(tmp_path):
    for target, words in ((tmp_path / "nowhere", "does not exist"), (tmp_path, "no sweep.json")):
        p = gentune("status", str(target), check=False)
        assert p.returncode == 2
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1, p.stderr
        assert lines[0].startswith("gentune status: error:") and str(target) in lines[0] and words in lines[0]
        assert "Traceback" not in p.stderr and p.stdout == ""


@pytest.mark.slow  # in .ci/run's slow set: keeps the default run under 10 minutes
def test_status_while_running(smoke_sweep, tmp_path):
    """A copy of the finished sweep doctored into a running one: a trial still running (its Ray folder not yet
    synced), one diverged, one errored, a study not started, a time budget with time left."""
    from mlflow.tracking import MlflowClient

    src, info = smoke_sweep["root"], dict(smoke_sweep["info"])
    root = tmp_path / "sweep"
    shutil.copytree(src, root)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    first, last = info["studies"][0], info["studies"][-1]
    assert first != last
    now = time.time()
    info.update(tracking_uri=uri, started=now - 600, time_budget_s={**info["time_budget_s"], first: 3600.0})
    (root / "sweep.json").write_text(json.dumps(info))
    c = MlflowClient(tracking_uri=uri)
    runs = c.search_runs([info["experiment_id"]], max_results=1000)
    study_run = {r.data.tags["gentune.study"]: r for r in runs if r.data.tags.get("gentune.kind") == "study"}
    trials = {}
    for r in runs:
        if r.data.tags.get("gentune.kind") == "trial":
            trials.setdefault(r.data.tags["gentune.study"], []).append(r)
    second = info["studies"][1]
    run_t = trials[first][0].info.run_id
    div_t, err_t = (t.info.run_id for t in trials[second][:2])
    c.update_run(study_run[first].info.run_id, status="RUNNING")
    c.update_run(run_t, status="RUNNING")
    shutil.rmtree(root / first)  # Ray copies its files to the sweep folder late: MLflow alone knows the study yet
    c.set_tag(div_t, "gentune.stop_reason", "diverged: loss_d is not finite")
    c.update_run(div_t, status="FAILED")
    c.set_tag(err_t, "gentune.stop_reason", "error: trial raised")
    c.update_run(err_t, status="FAILED")
    for r in trials[last] + [study_run[last]]:
        c.delete_run(r.info.run_id)
    shutil.rmtree(root / last)

    before = tree_digest(root)
    st = json.loads(gentune("status", str(root), "--json").stdout)
    assert tree_digest(root) == before
    by = {s["name"]: s for s in st["studies"]}
    assert st["state"] == "running"
    s0 = by[first]
    assert s0["state"] == "running" and s0["counts"]["running"] == 1 and s0["states"]["RUNNING"] == 1
    assert s0["time_budget_s"] == 3600 and 0 < s0["left_s"] < 3600
    assert s0["left_s"] == pytest.approx(3600 - s0["used_s"], abs=1)
    s1 = by[second]
    outcome = {t["run_id"]: t for t in s1["trials"]}
    assert outcome[div_t]["outcome"] == "diverged" and outcome[div_t]["state"] == "TERMINATED"
    assert outcome[err_t]["outcome"] == "error" and outcome[err_t]["state"] == "ERROR"
    assert by[last]["state"] == "not started" and by[last]["trials"] == [] and by[last]["best"] is None

    text = gentune("status", str(root)).stdout
    assert text.splitlines()[0].startswith(f"sweep {info['name']}: running")
    assert "so far" in text.splitlines()[1]
    assert re.search(r"left of a 1h 00m budget", text), text
    assert re.search(r"1 diverged.*1 error|1 error.*1 diverged", text) or ("1 diverged" in text and "1 error" in text)
    assert f"metric {info['metrics'][last][0]} ({info['metrics'][last][1]}): not started" in text
    assert "best so far: none" in text


# ---------------------------------------------------------------- ui


@pytest.mark.slow  # in .ci/run's slow set: keeps the default run under 10 minutes
def test_ui_serves_the_sweep_on_localhost(smoke_sweep, tmp_path):
    root, info = smoke_sweep["root"], smoke_sweep["info"]
    exp = info["experiment_id"]
    port = free_port()
    t0 = time.time()
    with ui_server([str(root), "--port", str(port)], tmp_path / "ui.log") as ui:
        started = time.time() - t0
        assert ui.url == f"http://127.0.0.1:{port}/#/experiments/{exp}/runs?workflowType=machine_learning"
        assert ui.lines == [ui.url], "stdout must carry the URL alone (the server's log goes to stderr)"
        addrs = listening(port)
        assert addrs and set(addrs) == {"127.0.0.1"}, f"listening on {addrs}, want 127.0.0.1 only"
        # the REST API of the UI returns the sweep's runs
        with no_proxy_open(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get?experiment_id={exp}") as r:
            assert json.load(r)["experiment"]["name"] == info["name"]
        body = json.dumps({"experiment_ids": [exp], "filter": "tags.`gentune.kind` = 'trial'",
                           "max_results": 1000}).encode()
        with no_proxy_open(f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search", body) as r:
            served = json.load(r).get("runs", [])
        want = mlflow_trials(smoke_sweep["tracking_uri"], exp)
        assert {x["info"]["run_id"] for x in served} == {r.info.run_id for r in want}
        assert {x["info"]["run_name"] for x in served} == {r.info.run_name for r in want}
        with no_proxy_open(f"http://127.0.0.1:{port}/") as r:
            assert r.status == 200 and b"<html" in r.read(4000).lower()
    assert ui.proc.returncode == 0, (ui.proc.returncode, (tmp_path / "ui.log").read_text()[-3000:])
    assert "gentune ui: stopped" in (tmp_path / "ui.log").read_text()
    # Ctrl-C ended the server and its workers too: the port is free again
    deadline = time.time() + 20
    while listening(port) and time.time() < deadline:
        time.sleep(0.5)
    assert not listening(port), "the MLflow server outlived gentune ui"
    assert started < 180


@pytest.mark.slow  # in .ci/run's slow set: keeps the default run under 10 minutes
def test_ui_quiet_tracking_uri_and_sigterm(smoke_sweep, tmp_path):
    port = free_port()
    ui = UiServer(["--tracking-uri", smoke_sweep["tracking_uri"], "--port", str(port), "--quiet"], tmp_path / "ui.log")
    ui.start()
    try:
        assert ui.url == f"http://127.0.0.1:{port}/"
        with no_proxy_open(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search",
                           json.dumps({"max_results": 100}).encode()) as r:
            names = [e["name"] for e in json.load(r)["experiments"]]
        assert smoke_sweep["info"]["name"] in names
    finally:
        rc = ui.stop(signal.SIGTERM)
    assert rc == 0
    assert ui.lines == [ui.url] and (tmp_path / "ui.log").read_text().strip() == ""  # --quiet: the URL alone
    assert not listening(port)


def test_ui_errors_are_one_line(tmp_path, smoke_sweep):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        cases = [
            (["ui", str(tmp_path / "nowhere"), "--port", str(free_port())], "does not exist"),
            (["ui", str(smoke_sweep["root"]), "--port", str(busy)], f"port {busy} on 127.0.0.1 is in use"),
            (["ui"], "give a sweep folder"),
        ]
        for args, words in cases:
            p = gentune(*args, check=False, timeout=120)
            lines = p.stderr.strip().splitlines()
            assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("gentune ui: error:"), (args, p.stderr)
            assert words in lines[0], lines[0]


def test_help_shows_defaults():
    wide = {"COLUMNS": "200"}  # argparse wraps help to the terminal's width
    ui = gentune("ui", "--help", env=wide).stdout
    assert "(default: 127.0.0.1)" in ui and "(default: 5000)" in ui and "--quiet" in ui
    st = gentune("status", "--help", env=wide).stdout
    assert "--json" in st and "--tracking-uri" in st
    assert "status" in gentune("--help").stdout and "ui" in gentune("--help").stdout
