"""Fault injection for gentune sweeps: node loss, driver loss, divergence and mode collapse.

    python -m benchmarks.faults                      # all scenarios, then the table
    python -m benchmarks.faults --only node-loss     # one (node-loss, driver-loss, divergence)

Each scenario drives the real CLI (`gentune sweep` in a subprocess) on tiny DANN/GAN runs of the
embedded demo data, injects its faults, checks the outcome and returns an `Outcome`:

- node-loss: a Ray cluster of a head and two "GPU" worker nodes on this machine
  (`ray.cluster_utils.Cluster`; each worker declares num_gpus=1, so one trial runs per worker), a
  shared storage folder and a real MLflow server on 127.0.0.1. Mid-sweep one worker node is
  removed; its trial must resume from its last checkpoint on the other node and the sweep finish.
- driver-loss: the sweep driver is killed with SIGKILL (its whole session: the local Ray instance
  it started and Ray's workers die with it) after a trial finished; `gentune sweep SAME --resume`
  must finish the sweep without running a finished trial again and without a second MLflow run
  for any trial.
- divergence: a DANN trial whose loss becomes NaN/inf, a GAN whose weights blow up, and a GAN
  whose samples collapse must be stopped by their rules and recorded as such in MLflow.

Every scenario runs in its own process (`isolated`), with a private RAY_TMPDIR: the Ray instances
it starts can neither be joined by another `ray.init()` on this machine (Ray's "latest cluster"
file lives in RAY_TMPDIR) nor outlive it (leftover processes are found by that variable and
reported). tests/test_faults.py calls the same functions and asserts on the outcomes.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = ("node-loss", "driver-loss", "divergence")
TABLE_COLUMNS = ("scenario", "faults injected", "trials planned", "trials finished",
                 "restarted from checkpoint", "epochs lost", "seconds")


@dataclass
class Outcome:
    """What a scenario did and found. `problems` lists every check that failed (empty: all held)."""

    scenario: str
    faults: int = 0  # faults injected (nodes removed, drivers killed, diverging/collapsing trials)
    planned: int = 0  # trials the spec asks for
    finished: int = 0  # trials that reached their end: all epochs, or stopped by a stop rule
    restarted: int = 0  # trials resumed from a checkpoint after a fault
    epochs_lost: int = 0  # completed (reported) epochs that had to be trained again
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def check(self, ok: bool, what: str) -> bool:
        if not ok:
            self.problems.append(what)
        return ok

    def row(self) -> tuple:
        return (self.scenario, self.faults, self.planned, self.finished, self.restarted, self.epochs_lost,
                f"{self.seconds:.0f}")


# ------------------------------------------------------------------------------------------ processes

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def short_tmp(prefix: str) -> Path:
    """A private temp folder with a short path: Ray's unix sockets live below it (108-byte limit)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def pids_with_env(key: str, value: str) -> list[int]:
    """Processes (other than this one) whose environment holds key=value exactly."""
    want, out = f"{key}={value}".encode(), []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if want in (d / "environ").read_bytes().split(b"\0"):
                out.append(int(d.name))
        except OSError:  # gone, or not ours to read
            pass
    return out


def parent_pid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def session_pids(sid: int) -> list[int]:
    """Processes of session `sid`: a process started with start_new_session=True and all it started,
    Ray's workers included (the raylet puts each worker in a process group of its own)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if int((d / "stat").read_text().rsplit(")", 1)[1].split()[3]) == sid:
                out.append(int(d.name))
        except (OSError, ValueError, IndexError):
            pass
    return out


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal every process of `proc`'s session (it was started as a session leader by `start`)."""
    for pid in session_pids(proc.pid):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()[:200]
    except OSError:
        return "?"


def reap(ray_tmpdir: Path, wait_s: float = 20.0) -> list[str]:
    """Wait for every process started under `ray_tmpdir` to exit; kill (by pid) and describe the stragglers."""
    deadline = time.monotonic() + wait_s
    left = pids_with_env("RAY_TMPDIR", str(ray_tmpdir))
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = pids_with_env("RAY_TMPDIR", str(ray_tmpdir))
    out = [f"{pid} {cmdline(pid)}" for pid in left]
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return out


def gentune_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "search.cli", *args]


def start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """A subprocess leading a session of its own (so `kill_group` reaches all it starts), output to `log`."""
    f = log.open("ab")
    try:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        f.close()


def tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 with a SQLite store, in its own session."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder, self.env = folder, env
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "MlflowServer":
        self.folder.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
               "--backend-store-uri", f"sqlite:///{(self.folder / 'mlflow.db').resolve()}",
               "--artifacts-destination", str((self.folder / "artifacts").resolve()), "--workers", "1"]
        self.proc = start(cmd, self.folder / "server.log", self.env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited {self.proc.returncode}:\n{tail(self.folder / 'server.log')}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"mlflow server did not answer on {self.uri}:\n{tail(self.folder / 'server.log')}")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            kill_group(self.proc, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                kill_group(self.proc, signal.SIGKILL)
                self.proc.wait(15)


# ------------------------------------------------------------------------------------------ specs

def dann_spec(path: Path, name: str, *, trials: int, epochs: int, concurrency: int, gpu: float,
              steps: int = 4, max_failures: int = 3) -> Path:
    """A tiny DANN sweep on the demo digits: an Optuna-searched lr, no early stopping (grace = epochs)."""
    path.write_text(f"""\
name: {name}
seed: 0
max_failures: {max_failures}
family: dann
config:
  mode: dann
  epochs: {epochs}
  steps_per_epoch: {steps}
  batch_size: 32
  eval_every: 1
  source: {{source: demo, domain: mnistm}}
  target: {{source: demo, domain: usps}}
search:
  lr: {{loguniform: [5.0e-4, 2.0e-3]}}
metric: target_acc
mode: max
budget: {{trials: {trials}, grace_period: {epochs}, reduction_factor: 2}}
resources: {{cpu: 1, gpu: {gpu}}}
concurrency: {concurrency}
""")
    return path


def divergence_spec(path: Path, name: str, epochs: int = 3) -> Path:
    """Four one-trial studies: DANN NaN, GAN NaN and GAN mode collapse must each stop at epoch 1; a GAN whose
    discriminator wins (model A at width 8 with D's rate 10x G's: D(G(z)) 0.1 after 15 steps, 0.02 after 30)
    must stop early by the "discriminator won" rule."""
    gan = "steps_per_epoch: 3, batch_size: 16, n_eval: 32, fid: 'off', eval_every: 1"
    path.write_text(f"""\
name: {name}
seed: 0
max_failures: 0
resources: {{cpu: 1, gpu: 0}}
concurrency: 1
studies:
  - name: dann-nan
    family: dann
    config: {{mode: dann, epochs: {epochs}, steps_per_epoch: 12, batch_size: 32, lr: 1.0e+30,
              source: {{domain: mnistm}}, target: {{domain: usps}}}}
    budget: {{trials: 1, grace_period: {epochs}}}
  - name: gan-nan
    family: gan
    config: {{epochs: {epochs}, {gan}, lr_g: 1.0e+30, lr_d: 1.0e+30}}
    budget: {{trials: 1, grace_period: {epochs}}}
  - name: gan-collapse
    family: gan
    config: {{epochs: {epochs}, {gan}, collapse_diversity: 10.0, rules_after: 0, patience: 1}}
    budget: {{trials: 1, grace_period: {epochs}}}
  - name: gan-d-won
    family: gan
    config: {{epochs: 8, model: A, width: 8, steps_per_epoch: 15, batch_size: 16, n_eval: 16, fid: 'off', eval_every: 1,
              lr_d: 1.0e-3, lr_g: 1.0e-4}}
    budget: {{trials: 1, scheduler: fifo}}
""")
    return path


# ------------------------------------------------------------------------------------------ reading results

def trial_results(study_dir: Path) -> dict[str, list[dict]]:
    """Ray Tune's result.json lines of every trial of a study folder, by trial id, in order."""
    out: dict[str, list[dict]] = {}
    for f in sorted(study_dir.glob("*/result.json")):
        for line in f.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:  # a line being written
                continue
            out.setdefault(r["trial_id"], []).append(r)
    return out


def last_change(study_dir: Path) -> float:
    """Newest modification time of a study's results and Tune state files (0 when there are none)."""
    files = [*study_dir.glob("*/result.json"), *study_dir.glob("experiment_state-*.json")]
    times = []
    for f in files:
        try:
            times.append(f.stat().st_mtime)
        except OSError:
            pass
    return max(times, default=0.0)


def restarts(lines: list[dict]) -> list[tuple[int, int]]:
    """(last epoch reported before, epoch resumed from) for each restart of a trial in its result lines."""
    out = []
    for prev, cur in zip(lines, lines[1:]):
        if cur.get("iterations_since_restore") == 1:
            out.append((int(prev.get("epoch", 0)), int(cur.get("epoch", 1)) - 1))
    return out


def mlflow_trials(uri: str, experiment: str) -> dict[str, list]:
    """MLflow runs of kind trial in an experiment, by gentune.trial_id (a list: duplicates would show)."""
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    runs = c.search_runs([exp.experiment_id], filter_string="tags.`gentune.kind` = 'trial'", max_results=1000)
    out: dict[str, list] = {}
    for r in runs:
        out.setdefault(r.data.tags.get("gentune.trial_id", "?"), []).append(r)
    return out


def steps(uri: str, run_id: str, metric: str = "epoch_time_s") -> list[int]:
    """Epochs (steps) at which a run logged `metric`, sorted; a repeated step means an epoch logged twice."""
    from mlflow.tracking import MlflowClient

    return sorted(m.step for m in MlflowClient(tracking_uri=uri).get_metric_history(run_id, metric))


def check_runs(o: Outcome, uri: str, experiment: str, trial_ids: set[str], epochs: int,
               statuses: tuple[str, ...] = ("FINISHED",)) -> dict[str, list]:
    """One MLflow run per trial id, in a final status, with every epoch 1..epochs logged exactly once."""
    runs = mlflow_trials(uri, experiment)
    o.check(set(runs) == trial_ids, f"MLflow trial runs {sorted(runs)} != Ray trials {sorted(trial_ids)}")
    for tid, rs in runs.items():
        o.check(len(rs) == 1, f"trial {tid} has {len(rs)} MLflow runs")
        r = rs[0]
        o.check(r.info.status in statuses, f"trial {tid}: MLflow status {r.info.status}, expected {statuses}")
        got = steps(uri, r.info.run_id)
        o.check(got == list(range(1, epochs + 1)), f"trial {tid}: epochs logged {got}, expected 1..{epochs} once each")
    return runs


# ------------------------------------------------------------------------------------------ scenarios

def node_loss(workdir: Path, epochs: int = 6, timeout_s: float = 420) -> Outcome:
    """Remove one of two GPU worker nodes mid-sweep; its trial resumes on the other from its checkpoint."""
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    t0 = time.monotonic()
    o = Outcome("node-loss", planned=2)
    if "RAY_TMPDIR" not in os.environ:  # Cluster() writes Ray's "latest cluster" file there
        os.environ["RAY_TMPDIR"] = str(short_tmp("gtf"))
    env = dict(os.environ)
    name = "nodeloss"  # a single-study spec: the study is named after its family
    spec = dann_spec(workdir / "spec.yaml", name, trials=2, epochs=epochs, concurrency=2, gpu=1)
    storage = workdir / "shared-storage"  # the one storage_path all nodes see (S3 on a real cluster)
    study_dir = storage / name / "dann"
    with MlflowServer(workdir / "mlflow", env) as server:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False})
        driver = None
        try:
            workers = [cluster.add_node(num_cpus=1, num_gpus=1, resources={"gpu_node": 1}) for _ in range(2)]
            cluster.wait_for_nodes()
            raylet = {w.raylet_socket_name: w.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
                      for w in workers}
            node_of_pid: dict[int, str] = {}
            driver = start(gentune_cmd("sweep", str(spec), "--address", cluster.address, "--storage", str(storage),
                                       "--tracking-uri", server.uri, "--quiet"), workdir / "driver.log", env)
            victim = None
            deadline = time.monotonic() + timeout_s
            while driver.poll() is None and time.monotonic() < deadline:
                res = trial_results(study_dir)
                for lines in res.values():
                    pid = int(lines[-1]["pid"])
                    if pid not in node_of_pid:
                        pp = parent_pid(pid)
                        node_of_pid[pid] = next((s for s, p in raylet.items() if p == pp), f"ppid {pp}")
                if victim is None and len(res) == 2 and all(1 <= int(ls[-1]["epoch"]) <= epochs - 2 for ls in res.values()):
                    nodes = {tid: node_of_pid.get(int(ls[-1]["pid"])) for tid, ls in res.items()}
                    o.details["nodes_before"] = nodes
                    if not o.check(len(set(nodes.values())) == 2 and all(n in raylet for n in nodes.values()),
                                   f"the two trials did not run on the two worker nodes: {nodes}"):
                        break
                    # the trial with the most epochs left loses its node: it must resume elsewhere
                    victim = min(res, key=lambda t: int(res[t][-1]["epoch"]))
                    node = next(w for w in workers if w.raylet_socket_name == nodes[victim])
                    cluster.remove_node(node, allow_graceful=False)  # a crash: processes killed, no goodbye
                    o.faults += 1
                    o.details.update(victim=victim, removed_at_epoch=int(res[victim][-1]["epoch"]),
                                     removed_after_s=round(time.monotonic() - t0, 1))
                time.sleep(0.5)
            try:
                driver.wait(max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                kill_group(driver)
                driver.wait()
                o.check(False, f"sweep did not finish within {timeout_s:.0f}s")
            o.check(driver.returncode == 0, f"driver exited {driver.returncode}: {tail(workdir / 'driver.log')}")
            o.check(victim is not None, "no node was removed: the two trials never ran side by side mid-sweep")
            res = trial_results(study_dir)
            o.check(len(res) == 2, f"{len(res)} trials ran, expected 2")
            for tid, lines in res.items():
                rs = restarts(lines)
                o.restarted += bool(rs)
                o.epochs_lost += sum(max(0, before - resumed) for before, resumed in rs)
                done = [l for l in lines if l.get("done")]
                o.finished += bool(done) and int(done[-1]["epoch"]) == epochs
                if tid == victim:
                    o.check(len(rs) == 1 and rs[0][1] >= 1, f"victim {tid} did not resume from a checkpoint: {rs}")
                    after = node_of_pid.get(int(lines[-1]["pid"]))
                    o.details["victim_node_after"] = after
                    o.check(after in raylet and after != o.details["nodes_before"].get(tid),
                            f"victim {tid} did not resume on the other worker node (ran on {after})")
                else:
                    o.check(not rs, f"trial {tid} restarted though its node stayed: {rs}")
            check_runs(o, server.uri, name, set(res), epochs)
        finally:
            if driver is not None and driver.poll() is None:
                kill_group(driver)
                driver.wait()
            cluster.shutdown()
    o.seconds = time.monotonic() - t0
    return o


def driver_loss(workdir: Path, trials: int = 3, epochs: int = 4, timeout_s: float = 420) -> Outcome:
    """SIGKILL the sweep driver (its session: Ray included) after a trial finished; `--resume` completes the sweep."""
    t0 = time.monotonic()
    o = Outcome("driver-loss", planned=trials)
    name = "driverloss"  # a single-study spec: the study is named after its family
    spec = dann_spec(workdir / "spec.yaml", name, trials=trials, epochs=epochs, concurrency=2, gpu=0)
    storage = workdir / "sweeps"
    root, study_dir = storage / name, storage / name / "dann"
    args = ("sweep", str(spec), "--storage", str(storage), "--quiet")

    tmp1 = short_tmp("gtk")
    driver = start(gentune_cmd(*args), workdir / "driver-killed.log", {**os.environ, "RAY_TMPDIR": str(tmp1)})
    deadline, snapshot = time.monotonic() + timeout_s, None
    while driver.poll() is None and time.monotonic() < deadline:
        res = trial_results(study_dir)
        done = {t for t, ls in res.items() if ls[-1].get("done")}
        running = {t for t, ls in res.items() if not ls[-1].get("done") and int(ls[-1]["epoch"]) < epochs}
        # A trial finished and another is mid-way. Kill in a quiet moment, not right as a result lands: a
        # crash in the milliseconds between Tune handing a result to the callbacks and saving its state
        # makes Tune redo that epoch (its snapshot is one result behind), which a real, unsynchronised
        # crash hits rarely but a kill triggered by that very result would hit on purpose.
        if done and running and time.time() - last_change(study_dir) > 0.5:
            snapshot = res
            kill_group(driver)  # the driver and the Ray instance it started (workers included), all at once
            o.faults += 1
            break
        time.sleep(0.2)
    driver.wait()
    leftovers = reap(tmp1)
    o.details["leftover_processes_after_kill"] = leftovers
    o.check(not leftovers, f"{len(leftovers)} Ray processes outlived the killed driver's session: {leftovers}")
    shutil.rmtree(tmp1, ignore_errors=True)
    if not o.check(snapshot is not None, f"driver ended (rc {driver.returncode}) before a trial finished: "
                                         f"{tail(workdir / 'driver-killed.log')}"):
        return o
    finished_before = {t: ls for t, ls in snapshot.items() if ls[-1].get("done")}
    o.details.update(finished_before_kill=len(finished_before), in_flight_at_kill=len(snapshot) - len(finished_before))
    uri = json.loads((root / "sweep.json").read_text())["tracking_uri"]
    hist_before = {t: steps(uri, rs[0].info.run_id) for t, rs in mlflow_trials(uri, name).items()}

    tmp2 = short_tmp("gtr")
    resumed = start(gentune_cmd(*args, "--resume"), workdir / "driver-resumed.log", {**os.environ, "RAY_TMPDIR": str(tmp2)})
    try:
        resumed.wait(max(60.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        kill_group(resumed)
        resumed.wait()
        o.check(False, "the resumed sweep did not finish in time")
    left = reap(tmp2, 10)
    o.check(not left, f"Ray processes outlived the resumed driver: {left}")
    shutil.rmtree(tmp2, ignore_errors=True)
    o.check(resumed.returncode == 0, f"resumed driver exited {resumed.returncode}: {tail(workdir / 'driver-resumed.log')}")

    res = trial_results(study_dir)
    o.check(len(res) == trials, f"{len(res)} trials after resume, expected {trials}")
    for tid, lines in res.items():
        rs = restarts(lines)
        o.restarted += bool(rs)
        # epochs the killed driver had recorded (MLflow) beyond the checkpoint the trial resumed from
        logged = max(hist_before.get(tid) or [0])
        o.epochs_lost += sum(max(0, max(before, logged) - resumed_from) for before, resumed_from in rs)
        done = [l for l in lines if l.get("done")]
        o.finished += bool(done) and int(done[-1]["epoch"]) == epochs
        if tid in finished_before:
            o.check(len(lines) == len(finished_before[tid]),
                    f"finished trial {tid} ran again: {len(finished_before[tid])} results before the kill, {len(lines)} after")
    runs = check_runs(o, uri, name, set(res), epochs)
    for tid, before in hist_before.items():
        if tid not in finished_before:
            continue
        after = steps(uri, runs[tid][0].info.run_id) if tid in runs else []
        o.check(after == before, f"finished trial {tid}: MLflow epochs {before} before the kill, {after} after")
    o.seconds = time.monotonic() - t0
    return o


def compare_output(root: Path) -> str | None:
    """`gentune compare SWEEP` if that command exists (None when it does not)."""
    p = subprocess.run(gentune_cmd("compare", str(root)), cwd=REPO, capture_output=True, text=True, timeout=300)
    if p.returncode == 2 and "invalid choice" in p.stderr:
        return None
    return p.stdout + p.stderr


def divergence(workdir: Path, epochs: int = 3, timeout_s: float = 420) -> Outcome:
    """NaN/inf losses and mode collapse stop their trials at epoch 1, a discriminator that won stops its trial
    before its last epoch; each recorded in MLflow as FAILED with the reason."""
    t0 = time.monotonic()
    o = Outcome("divergence", planned=4)
    name = "divergence"
    spec = divergence_spec(workdir / "spec.yaml", name, epochs)
    storage = workdir / "sweeps"
    tmp = short_tmp("gtd")
    p = start(gentune_cmd("sweep", str(spec), "--storage", str(storage), "--quiet"), workdir / "driver.log",
              {**os.environ, "RAY_TMPDIR": str(tmp)})
    try:
        p.wait(timeout_s)
    except subprocess.TimeoutExpired:
        kill_group(p)
        p.wait()
    left = reap(tmp, 10)
    o.check(not left, f"Ray processes outlived the driver: {left}")
    shutil.rmtree(tmp, ignore_errors=True)
    # every trial failed on purpose: the sweep completes, says so and exits 1 (failed trials are a failure)
    log = (workdir / "driver.log").read_text(errors="replace") if (workdir / "driver.log").exists() else ""
    o.check(p.returncode == 1 and "4 trial(s) failed" in log,
            f"sweep exited {p.returncode}, expected 1 naming 4 failed trials: {tail(workdir / 'driver.log')}")
    root = storage / name
    if not (root / "sweep.json").exists():
        o.check(False, "no sweep folder")
        return o
    uri = json.loads((root / "sweep.json").read_text())["tracking_uri"]
    expect = {"dann-nan": "diverged: loss", "gan-nan": "diverged:", "gan-collapse": "mode collapse",
              "gan-d-won": "diverged: discriminator won"}
    runs = mlflow_trials(uri, name)
    o.details["stop_reasons"] = {}
    for study, want in expect.items():
        mine = [r for rs in runs.values() for r in rs if r.data.tags.get("gentune.study") == study]
        if not o.check(len(mine) == 1, f"study {study}: {len(mine)} trial runs, expected 1"):
            continue
        r = mine[0]
        reason = r.data.tags.get("gentune.stop_reason", "")
        o.details["stop_reasons"][study] = reason
        o.faults += 1
        ok = o.check(reason.startswith(want), f"study {study}: stop reason {reason!r}, expected {want!r}...")
        ok &= o.check(r.info.status == "FAILED", f"study {study}: MLflow status {r.info.status}, expected FAILED")
        got = steps(uri, r.info.run_id)
        if study == "gan-d-won":  # the rule needs `patience` (2) evaluations in a row: epoch 2 at the earliest
            ok &= o.check(2 <= len(got) < 8 and got == list(range(1, len(got) + 1)),
                          f"study {study}: epochs logged {got}; the trial must stop before its 8th epoch")
        else:
            ok &= o.check(got == [1], f"study {study}: epochs logged {got}; the trial must stop within epoch 1")
        o.finished += ok
        lines = trial_results(root / study)
        o.restarted += sum(bool(restarts(ls)) for ls in lines.values())
    cmp = compare_output(root)
    o.details["compare"] = "absent" if cmp is None else cmp
    if cmp is not None:
        for want in ("diverged", "mode collapse", "discriminator won"):
            o.check(want in cmp, f"`gentune compare` does not show {want!r}:\n{cmp[-2000:]}")
    o.seconds = time.monotonic() - t0
    return o


SCENARIO_FUNCS: dict[str, Callable[[Path], Outcome]] = {
    "node-loss": node_loss, "driver-loss": driver_loss, "divergence": divergence,
}


# ------------------------------------------------------------------------------------------ isolation, table

def isolated(scenario: str, workdir: Path, timeout_s: float = 600) -> Outcome:
    """Run one scenario in a fresh process with a private RAY_TMPDIR; nothing of it survives."""
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = short_tmp("gtf")
    out = workdir / "outcome.json"
    out.unlink(missing_ok=True)
    env = {**os.environ, "RAY_TMPDIR": str(tmp), "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [sys.executable, "-m", "benchmarks.faults", "--scenario", scenario, "--workdir", str(workdir), "--json", str(out)]
    p = start(cmd, workdir / "scenario.log", env)
    try:
        p.wait(timeout_s)
    except subprocess.TimeoutExpired:
        kill_group(p)
        p.wait()
    kill_group(p)  # anything of its group still there
    left = reap(tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    if out.exists():
        o = Outcome(**json.loads(out.read_text()))
    else:
        o = Outcome(scenario, problems=[f"scenario process exited {p.returncode} without an outcome:\n"
                                        f"{tail(workdir / 'scenario.log', 5000)}"])
    o.check(not left, f"{len(left)} processes of the scenario were left running (killed now): {left}")
    return o


def table(outcomes: list[Outcome]) -> str:
    rows = [TABLE_COLUMNS] + [tuple(str(x) for x in o.row()) for o in outcomes]
    widths = [max(len(r[i]) for r in rows) for i in range(len(TABLE_COLUMNS))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    lines = [fmt(rows[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows[1:]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.faults", description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated scenarios of {', '.join(SCENARIOS)}")
    ap.add_argument("--workdir", default=None, help="where runs go (default: a temp folder, removed unless --keep)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--scenario", default=None, help=argparse.SUPPRESS)  # internal: run one scenario in this process
    ap.add_argument("--json", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.scenario:  # the isolated child
        o = SCENARIO_FUNCS[args.scenario](Path(args.workdir))
        Path(args.json).write_text(json.dumps(asdict(o), indent=2, default=str))
        return 0

    names = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in names if s not in SCENARIOS]
    if bad:
        ap.error(f"unknown scenario {bad[0]!r}; expected {', '.join(SCENARIOS)}")
    base = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="gentune-faults-"))
    outcomes = []
    for s in names:
        print(f"running {s} ...", file=sys.stderr, flush=True)
        o = isolated(s, base / s)
        print(f"  {s}: {o.seconds:.0f}s, {'ok' if not o.problems else f'{len(o.problems)} problem(s)'}", file=sys.stderr)
        outcomes.append(o)
    print(table(outcomes))
    for o in outcomes:
        for p in o.problems:
            print(f"PROBLEM {o.scenario}: {p}")
    if args.keep or args.workdir:
        print(f"work folder: {base}", file=sys.stderr)
    else:
        shutil.rmtree(base, ignore_errors=True)
    return 1 if any(o.problems for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
