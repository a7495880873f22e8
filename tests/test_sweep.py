"""Sweeps end to end with a real Ray instance and a real MLflow SQLite store."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO, gentune, interrupt

pytestmark = pytest.mark.ray


def trial_runs(uri: str, exp_name: str):
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(exp_name)
    runs = c.search_runs([exp.experiment_id], max_results=1000)
    return c, [r for r in runs if r.data.tags.get("gentune.kind") == "trial"], [r for r in runs if r.data.tags.get("gentune.kind") == "study"]


_CLIENTS: dict[str, MlflowClient] = {}


def tracked_epochs(root: Path, uri: str, experiment: str) -> dict[str, list[int]]:
    """Epochs MLflow holds for each trial of a running sweep: the driver's tracking writer has an epoch within a
    second of its report, while result.json in the sweep folder gets it with Tune's next state save (every 10 s
    or so). Read only once the driver has written sweep.json (its store is made by then)."""
    if not (root / "sweep.json").is_file():
        return {}
    c = _CLIENTS.setdefault(uri, MlflowClient(uri))
    exp = c.get_experiment_by_name(experiment)
    out = {}
    for r in c.search_runs([exp.experiment_id], "tags.`gentune.kind` = 'trial'") if exp else []:
        steps = sorted({int(m.step) for m in c.get_metric_history(r.info.run_id, "epoch_time_s")})
        if steps:
            out[r.data.tags["gentune.trial_id"]] = steps
    return out


def result_epochs(root: Path) -> dict[str, list[int]]:
    """Epochs reported by each trial, from Ray's own result.json files (one JSON line per report)."""
    out = {}
    for f in root.glob("*/*/result.json"):
        lines = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        if lines:
            out[lines[0]["trial_id"]] = [x["epoch"] for x in lines]
    return out


def test_smoke_sweep_tracks_every_trial_in_mlflow(smoke_sweep) -> None:
    root, uri = smoke_sweep["root"], smoke_sweep["tracking_uri"]
    assert uri.startswith("sqlite:///") and str(root) in uri
    c, trials, studies = trial_runs(uri, "quickstart")
    assert sorted(s.data.tags["gentune.study"] for s in studies) == ["dann", "dann-baselines", "ddpm", "gan"]
    parents = {s.info.run_id: s.data.tags["gentune.study"] for s in studies}
    epochs = result_epochs(root)
    assert len(trials) == len(epochs) == 8  # --smoke: 2 trials per study
    # each trial folder: Tune's result.json, which every command reads; not the same numbers again as progress.csv
    # and TensorBoard events (Tune's default loggers, which the driver turns off for its own runs only)
    files = {f.name for f in root.glob("*/*/*") if f.is_file()}
    assert "result.json" in files and "progress.csv" not in files and not any(n.startswith("events.out") for n in files)
    for r in trials:
        tid = r.data.tags["gentune.trial_id"]
        study = parents[r.data.tags["mlflow.parentRunId"]]  # nested under its study's run
        assert r.data.tags["gentune.study"] == study
        assert r.info.status == "FINISHED" and r.data.tags["gentune.stop_reason"]
        assert "lr" in r.data.params or "lr_g" in r.data.params
        assert "seed" in r.data.params and "batch_size" in r.data.params  # all params, defaults included
        metric = {"gan": "face_score", "ddpm": "acc", "dann": "target_acc", "dann-baselines": "target_acc"}[study]
        hist = c.get_metric_history(r.info.run_id, metric)
        every = int(r.data.params["eval_every"])
        evaluated = [e for e in epochs[tid] if e % every == 0 or e == int(r.data.params["epochs"])]
        assert [m.step for m in hist] == evaluated  # a value at every evaluated epoch the trial ran
        assert [m.step for m in c.get_metric_history(r.info.run_id, "epoch_time_s")] == epochs[tid]  # every epoch
        if study in ("gan", "ddpm"):
            arts = [a.path for a in c.list_artifacts(r.info.run_id, "samples")]
            assert arts and all(a.endswith(".png") for a in arts)
        if study == "ddpm":  # guidance w is scored on each checkpoint, never retrained
            m = r.data.metrics
            assert {"acc_w0", "acc_w2", "acc_w4", "best_w", "evaluator_val_acc"} <= set(m)
            assert m[f"acc_w{m['best_w']:g}"] == max(m["acc_w0"], m["acc_w2"], m["acc_w4"])  # w picked on one set;
            # acc itself is scored on a fresh set (tests/test_real_sweeps.py checks it equals that set's accuracy)
    for s in studies:
        assert s.info.status == "FINISHED"
        metric = json.loads(Path(smoke_sweep["root"] / "sweep.json").read_text())["metrics"][s.data.tags["gentune.study"]][0]
        assert f"best_{metric}" in s.data.metrics


SMALL = """
name: small
seed: 3
concurrency: 1
resources: {cpu: 1, gpu: 0}
family: dann
config: {epochs: 3, steps_per_epoch: 2, batch_size: 16, device: cpu}
search:
  lr: {loguniform: [1.0e-4, 1.0e-2]}
  lamb: {uniform: [0.1, 0.5]}
budget: {trials: 4, grace_period: 3, reduction_factor: 2}
"""


def test_bad_spec_fails_before_any_trial(tmp_path) -> None:
    for old, new, needle in (("search:", "serach:", "unknown key 'serach'"),
                             ("[1.0e-4, 1.0e-2]", "[1.0e-2, 1.0e-2]", "search.lr.loguniform: empty range"),
                             ("[1.0e-4, 1.0e-2]", "[-1.0e-2, 1.0e-2]", "search.lr.loguniform: low must be > 0"),
                             ("batch_size: 16", "batch_size: -16", "batch_size")):
        spec = tmp_path / "bad.yaml"
        spec.write_text(SMALL.replace(old, new))
        p = gentune("sweep", str(spec), "--storage", str(tmp_path / "s"), check=False)
        assert p.returncode == 2 and needle in p.stderr and "Traceback" not in p.stderr, p.stderr[-1500:]
        assert not (tmp_path / "s" / "small").exists()


@pytest.mark.slow
def test_sigint_then_resume_finishes_the_planned_set(tmp_path, cache_dir) -> None:
    spec = tmp_path / "small.yaml"
    spec.write_text(SMALL)
    storage = tmp_path / "s"
    root = storage / "small"
    cmd = [sys.executable, "-m", "search.cli", "sweep", str(spec), "--storage", str(storage), "--quiet"]
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=os.environ.copy(), start_new_session=True)
    deadline = time.time() + 400
    while time.time() < deadline and p.poll() is None:  # wait until one trial finished and another started
        ep = result_epochs(root)
        if sum(1 for v in ep.values() if len(v) >= 3) >= 1 and len(ep) >= 2:
            break
        time.sleep(0.5)
    assert p.poll() is None, p.communicate()[0][-3000:]
    finished_before = {t: v for t, v in result_epochs(root).items() if len(v) >= 3}
    out = interrupt(p)
    # an interrupt is not a success: exit 130, the resume command, and `status` agrees
    assert p.returncode == 130, (p.returncode, out[-3000:])
    assert "interrupted; resume with: gentune sweep" in out and "--resume" in out
    status = gentune("status", str(root)).stdout
    assert status.splitlines()[0].startswith("sweep small: interrupted"), status
    assert json.loads((root / "sweep.json").read_text())["state"] == "interrupted"
    r = gentune("sweep", str(spec), "--storage", str(storage), "--resume", "--quiet", timeout=900)
    after = result_epochs(root)
    assert len(after) == 4, (r.stdout[-2000:], after)
    for t, ep in after.items():
        assert len(ep) == len(set(ep)), f"trial {t} reported an epoch twice: {ep}"
    for t, ep in finished_before.items():
        assert after[t] == ep  # a finished trial was not run again
    _, trials, _ = trial_runs(f"sqlite:///{root / 'mlflow.db'}", "small")
    ids = Counter(r.data.tags["gentune.trial_id"] for r in trials)
    assert set(ids) == set(after) and max(ids.values()) == 1  # one MLflow run per trial, no duplicates


@pytest.mark.slow  # in .ci/run's slow set: keeps the default run under 10 minutes
def test_fractional_gpus_run_four_at_once_on_cpu(tmp_path, cache_dir) -> None:
    """ray.init(num_gpus=2) on a CPU machine, gpu 0.5 per trial: four trials at once, each on the CPU."""
    spec = tmp_path / "gpu.yaml"
    spec.write_text(SMALL.replace("concurrency: 1", "concurrency: 4").replace("{cpu: 1, gpu: 0}", "{cpu: 0.5, gpu: 0.5}")
                    .replace("device: cpu", "device: auto").replace("epochs: 3", "epochs: 4"))
    script = textwrap.dedent(f"""
        import ray, json
        from search.spec import load_spec
        from search.sweep import run_sweep
        ray.init(num_cpus=2, num_gpus=2, include_dashboard=False)
        out = run_sweep(load_spec({str(spec)!r}), storage={str(tmp_path / 's')!r}, name=None, address=None, resume=False, quiet=True)
        grid, _ = out["results"]["dann"]
        rows = [dict(start=r.metrics["timestamp"] - r.metrics["time_total_s"], end=r.metrics["timestamp"],
                     on_gpu=r.metrics["on_gpu"], epochs=r.metrics["epoch"]) for r in grid]
        print("ROWS" + json.dumps(rows))
    """)
    p = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = json.loads(p.stdout.split("ROWS", 1)[1])
    assert len(rows) == 4
    assert all(r["on_gpu"] == 0.0 for r in rows)
    assert max(r["start"] for r in rows) < min(r["end"] for r in rows), rows  # all four overlapped
