"""A sweep on object storage, end to end, as a cluster user runs it, with real parts the tests start and stop by
PID: an S3-compatible server (moto's, `moto_server`), an `mlflow server` on 127.0.0.1, and a Ray head started with
`ray start --head`. The sweep's address is an s3:// URI; every command a user runs afterwards takes that address."""
from __future__ import annotations

import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from benchmarks.faults import MlflowServer, dann_spec, free_port, kill_group, reap, short_tmp, start, tail
from tests.conftest import REPO, gentune
from tests.s3server import BUCKET, s3  # noqa: F401 (the fixture)
from tests.test_sweep_interrupts import trial_runs


@pytest.fixture(scope="module")
def ray_head(s3):
    """`ray start --head` on 127.0.0.1 (2 CPUs) started with the S3 environment, as a cluster's nodes are;
    its processes are found and stopped by PID afterwards (every one has this RAY_TMPDIR)."""
    tmp = short_tmp("gtr")
    port = free_port()
    env = {**os.environ, **s3, "RAY_TMPDIR": str(tmp)}
    subprocess.run([str(Path(sys.executable).parent / "ray"), "start", "--head", "--port", str(port),
                    "--node-ip-address", "127.0.0.1", "--num-cpus", "2", "--include-dashboard", "false",
                    "--disable-usage-stats"], env=env, check=True, capture_output=True, timeout=180)
    try:
        yield f"127.0.0.1:{port}", env
    finally:
        reap(tmp, wait_s=0)


def s3_results(folder, study: str) -> dict[str, list[int]]:
    """Epochs reported by each trial, from the result.json files Ray keeps in the sweep folder on S3."""
    out = {}
    for rel in folder.listing(study, recursive=True):
        if rel.endswith("/result.json"):
            lines = [json.loads(x) for x in folder.read_bytes(rel).decode().splitlines() if x.strip()]
            if lines:
                out[lines[0]["trial_id"]] = [int(x["epoch"]) for x in lines]
    return out


@pytest.mark.slow
@pytest.mark.ray
def test_sweep_on_s3_with_a_second_driver_a_lost_driver_and_a_tracking_outage(tmp_path, cache_dir, s3, ray_head, monkeypatch):
    from trainables.errors import SpecError
    from trainables.lease import Lease, read_holder
    from trainables.storage import Folder

    address, env = ray_head
    epochs = 8
    # RAY_AUTH_MODE=token: `ray start` turned token auth on, and Ray sends the token to an address typed out only so
    env = {**env, "GENTUNE_LEASE_TTL_S": "12", "GENTUNE_CACHE": str(cache_dir), "RAY_AUTH_MODE": "token"}
    for k, v in s3.items():
        monkeypatch.setenv(k, v)
    spec = dann_spec(tmp_path / "spec.yaml", "ons3", trials=2, epochs=epochs, concurrency=2, gpu=0)
    storage = f"s3://{BUCKET}/sweeps"
    sweep = f"{storage}/ons3"
    folder = Folder(sweep)
    with MlflowServer(tmp_path / "mlflow", env) as server:
        cmd = ["sweep", str(spec), "--address", address, "--storage", storage, "--tracking-uri", server.uri, "--quiet"]
        first = start([sys.executable, "-m", "search.cli", *cmd], tmp_path / "first.log", env)
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and first.poll() is None and not (
                    len(r := s3_results(folder, "dann")) == 2 and all(len(v) >= 2 for v in r.values())):
                time.sleep(1)
            assert first.poll() is None and len(s3_results(folder, "dann")) == 2, tail(tmp_path / "first.log")

            # a second driver on the same sweep is refused, told who holds it
            p = gentune(*cmd, "--resume", env=env, check=False)
            assert p.returncode == 2, p.stderr[-3000:]
            assert f"is in use by another gentune sweep: pid {first.pid} on host {socket.gethostname()} since" in p.stderr

            # MLflow's server goes away for longer than the client's retry window; the trials go on
            kill_group(server.proc, signal.SIGKILL)
            server.proc.wait(15)
            before, down = sum(map(len, s3_results(folder, "dann").values())), time.monotonic()
            during = 0
            # well past the retry window (about 2 s), and as long as the trials need to get on: no fixed time,
            # which a faster machine outruns (the same test with Toy trials did on CI, stop 29)
            while first.poll() is None and time.monotonic() - down < 60 and (time.monotonic() - down < 8 or not during):
                time.sleep(1)
                during = sum(map(len, s3_results(folder, "dann").values())) - before
            assert first.poll() is None
            assert during > 0, "the trials waited for MLflow"
            server.__enter__()  # the same port and store

            # the head's driver is lost: SIGKILL, no goodbye; its lease stays until it expires
            kill_group(first, signal.SIGKILL)
            first.wait(30)
        finally:
            if first.poll() is None:
                kill_group(first, signal.SIGKILL)
        holder = read_holder(folder)
        assert holder and holder["pid"] == first.pid
        with pytest.raises(SpecError, match=f"in use by another gentune sweep: pid {first.pid} on host"):
            Lease.acquire(folder)  # before it expires, nobody takes it
        time.sleep(max(0.0, holder["renewed"] + holder["ttl_s"] - time.time()) + 1)
        resumed = gentune(*cmd, "--resume", env=env, check=False, timeout=900)
        assert resumed.returncode == 0, resumed.stderr[-4000:]
        assert f"took over the expired lease of pid {first.pid} on host" in resumed.stderr
        assert read_holder(folder) is None  # released on exit
        info = json.loads(folder.read_bytes("sweep.json"))
        assert info["state"] == "finished" and info["tracking_uri"] == server.uri
        epochs_run = s3_results(folder, "dann")
        assert len(epochs_run) == 2 and all(sorted(set(v)) == list(range(1, epochs + 1)) for v in epochs_run.values())

        # every epoch of every trial in MLflow exactly once; nothing left RUNNING
        c, runs = trial_runs(server.uri, "ons3")
        assert {r.info.status for r in runs} == {"FINISHED"}, [(r.data.tags.get("gentune.kind"), r.info.status) for r in runs]
        trials = {r.data.tags["gentune.trial_id"]: r for r in runs if r.data.tags["gentune.kind"] == "trial"}
        assert set(trials) == set(epochs_run)
        for run in trials.values():
            assert [m.step for m in c.get_metric_history(run.info.run_id, "epoch_time_s")] == list(range(1, epochs + 1))

        # what a user runs next, on the address the sweep printed
        st = gentune("status", sweep, env=env)
        assert f"sweep ons3: finished  ({sweep})" in st.stdout and "2 completed" in st.stdout, st.stdout
        view = Path(cache_dir) / "sweeps"
        assert not list(view.rglob("*.pt")), "status fetched checkpoints"
        rows = list(csv.DictReader(io.StringIO(gentune("compare", sweep, "--format", "csv", env=env).stdout)))
        assert {r["trial_id"] for r in rows} == set(trials) and {r["epochs"] for r in rows} == {str(epochs)}
        top = max(float(r["best"]) for r in rows)
        tops = {r["trial_id"] for r in rows if float(r["best"]) == top}
        assert gentune("summary", sweep, env=env).stdout.count("dann") >= 1
        ex = gentune("export", sweep, "--out", str(tmp_path / "bundle"), env=env)
        assert any(f"export: trial {t} " in ex.stdout for t in tops), (tops, ex.stdout)
        assert (tmp_path / "bundle" / "model.safetensors").is_file()
        assert 1 <= len(list(view.rglob("*.pt"))) <= 2  # the exported trial's kept checkpoints, nothing else
        rep = gentune("report", sweep, "--out", str(tmp_path / "report"), "--tsne-max", "60", env=env)
        assert (tmp_path / "report" / "index.html").is_file(), rep.stdout
        d = subprocess.Popen([sys.executable, "-m", "search.cli", "dashboard", sweep, "--port", "0", "--quiet"], cwd=REPO,
                             env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
        try:
            url = d.stdout.readline().strip()
            base = url.split("/dashboard")[0]
            studies = json.loads(urllib.request.urlopen(f"{base}/api/studies", timeout=30).read())
            assert [(s["study_name"], s["directions"]) for s in studies["study_summaries"]] == [("dann", ["maximize"])], studies
        finally:
            kill_group(d, signal.SIGTERM)
            d.wait(30)
