"""Faults during a sweep: a worker node lost, the driver killed, trials that diverge or collapse.

The scenarios live in benchmarks/faults.py (`python -m benchmarks.faults` prints their table); each
runs in a process of its own with a private RAY_TMPDIR, drives the real `gentune sweep` CLI and
checks its own outcome (`Outcome.problems`). The slow ones start Ray clusters; the fast ones call the
training loop directly.
"""
from __future__ import annotations

import json
import math
import pickle
import time

import pytest
import torch

from benchmarks import faults
from trainables.checkpoint import nonfinite_tensor
from trainables.loop import fit


def explain(o: faults.Outcome) -> str:
    return "\n".join(o.problems) + "\n" + json.dumps(o.details, indent=2, default=str)[:4000]


@pytest.mark.slow
@pytest.mark.ray
def test_node_loss_trial_resumes_on_the_other_node(tmp_path, cache_dir):
    """Head + two 'GPU' workers, shared storage, MLflow server on 127.0.0.1; one worker removed mid-sweep."""
    o = faults.isolated("node-loss", tmp_path / "node-loss", timeout_s=480)
    assert not o.problems, explain(o)
    assert o.faults == 1 and o.planned == o.finished == 2
    assert o.restarted == 1, "the trial of the removed node resumes from its checkpoint"
    assert o.epochs_lost == 0, "no epoch lost beyond the one in flight"
    before, after = o.details["nodes_before"], o.details["victim_node_after"]
    assert len(set(before.values())) == 2, "the two trials ran on the two worker nodes"
    assert after != before[o.details["victim"]]


@pytest.mark.slow
@pytest.mark.ray
def test_driver_loss_resume_reruns_nothing_finished(tmp_path, cache_dir):
    """SIGKILL of the driver's whole session after a trial finished; `--resume` completes the sweep."""
    o = faults.isolated("driver-loss", tmp_path / "driver-loss", timeout_s=480)
    assert not o.problems, explain(o)
    assert o.details["finished_before_kill"] >= 1 and o.details["in_flight_at_kill"] >= 1
    assert o.details["leftover_processes_after_kill"] == []
    assert o.faults == 1 and o.planned == o.finished == 3
    assert o.restarted >= 1 and o.epochs_lost == 0


@pytest.mark.slow
@pytest.mark.ray
def test_divergence_and_collapse_are_stopped_and_recorded(tmp_path, cache_dir):
    """DANN NaN, GAN NaN and GAN mode collapse: each trial stops in epoch 1; a GAN whose discriminator won
    stops before its last epoch; each FAILED with its reason in MLflow and in `gentune compare`; the sweep
    completes and exits 1 naming the failed trials."""
    o = faults.isolated("divergence", tmp_path / "divergence", timeout_s=480)
    assert not o.problems, explain(o)
    reasons = o.details["stop_reasons"]
    assert reasons["dann-nan"].startswith("diverged: loss")
    assert reasons["gan-nan"].startswith("diverged:")
    assert reasons["gan-collapse"] == "mode collapse"
    assert reasons["gan-d-won"].startswith("diverged: discriminator won")
    assert o.faults == o.finished == 4 and o.restarted == 0
    assert o.details["compare"] != "absent", "`gentune compare` should exist"


def _run(family: str, cfg: dict) -> tuple[str | None, list[int]]:
    epochs: list[int] = []
    reason = fit(family, cfg, lambda e: epochs.append(e.epoch), quiet=True)
    return reason, epochs


def test_nan_and_collapse_stop_within_the_first_epoch(cache_dir):
    """The loop's stop rules without Ray: NaN/inf losses end a trial inside its epoch, and a GAN whose
    weights blow up is 'diverged', not a crash (BCE refuses NaN probabilities before the loss check)."""
    reason, epochs = _run("dann", {"mode": "dann", "epochs": 3, "steps_per_epoch": 3, "batch_size": 32, "lr": 1e30})
    assert reason == "diverged: loss_cls is not finite" and epochs == [1]
    gan = {"epochs": 3, "steps_per_epoch": 2, "batch_size": 8, "n_eval": 8, "fid": "off"}
    reason, epochs = _run("gan", {**gan, "lr_g": 1e30, "lr_d": 1e30})
    assert reason is not None and reason.startswith("diverged:") and "not finite" in reason and epochs == [1]


def test_collapse_rule_at_its_default_threshold_tells_a_collapsed_generator_from_a_varied_one(cache_dir, monkeypatch):
    """The collapse rule with the shipped collapse_diversity (0.05 of the real images' diversity): a generator whose
    samples are all one image (every evaluation draws G(z_0) for all z) is stopped as "mode collapse" at its first
    evaluation; one whose samples are real training images (diversity ~1) runs all its epochs."""
    from trainables.gan import GANTrainer

    generate = GANTrainer.generate
    gan = {"epochs": 2, "steps_per_epoch": 1, "batch_size": 8, "n_eval": 8, "fid": "off", "width": 8, "rules_after": 0,
           "patience": 1}
    monkeypatch.setattr(GANTrainer, "generate", lambda self, z: generate(self, z[:1].expand_as(z).contiguous()))
    assert _run("gan", gan) == ("mode collapse", [1])
    seen, trainers = [], []

    def real_images(self, z):
        trainers.append(self)
        return self.train_set.batch(torch.arange(len(z))).float()

    monkeypatch.setattr(GANTrainer, "generate", real_images)
    assert fit("gan", gan, lambda e: seen.append(e), quiet=True) is None and [e.epoch for e in seen] == [1, 2]

    def spread(x: torch.Tensor) -> float:  # mean pairwise L2 distance at half resolution, by hand
        v = torch.nn.functional.avg_pool2d(x.double(), 2).flatten(1)
        return sum(float((v[i] - v[j]).norm()) for i in range(len(v)) for j in range(len(v)) if i != j) / (len(v) * (len(v) - 1))

    ts = trainers[0].train_set
    want = spread(ts.batch(torch.arange(8)).float()) / spread(ts.batch(torch.arange(min(128, len(ts)))).float())
    assert seen[-1].metrics["diversity"] == pytest.approx(want, rel=1e-4) and want > 0.05


def test_nonfinite_tensor_names_the_first_bad_weight():
    ok = {"G": {"w": torch.ones(3)}, "opt": {"state": {0: {"step": torch.tensor(3)}}, "lr": [0.1]}}
    assert nonfinite_tensor(ok) is None
    bad = {"G": {"w": torch.ones(3)}, "D": {"main.0.weight": torch.tensor([1.0, math.nan])}}
    assert nonfinite_tensor(bad) == "D.main.0.weight"
    assert nonfinite_tensor({"x": [torch.zeros(1), torch.tensor([math.inf])]}) == "x.1"


def test_faults_table_format():
    rows = [faults.Outcome("node-loss", faults=1, planned=2, finished=2, restarted=1, epochs_lost=0, seconds=95.4)]
    text = faults.table(rows)
    header, _, line = text.splitlines()
    for col in ("faults injected", "trials planned", "trials finished", "restarted from checkpoint", "epochs lost"):
        assert col in header
    assert line.split() == ["node-loss", "1", "2", "2", "1", "0", "95"]


def restored(callback):
    """The callback as Tune restores it with the experiment state on `--resume` (pickled, then loaded)."""
    return pickle.loads(pickle.dumps(callback))


class _Trial:
    def __init__(self, trial_id: str, config: dict) -> None:
        self.trial_id, self.config, self.last_result = trial_id, config, {}


def test_mlflow_callback_logs_each_epoch_once_across_a_driver_restart(tmp_path):
    """A resumed driver finds the trial's run by its tags and does not log an epoch the store already holds
    (Tune may hand the same epoch again when its state was one result behind at the crash), and a run the
    first driver left open is KILLED, not RUNNING, until the second reopens it."""
    from mlflow.tracking import MlflowClient

    from search.tracking import MlflowTrials, Writer, ensure_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = ensure_experiment(uri, "s", tmp_path / "art")
    trial = _Trial("t1", {"mode": "dann", "epochs": 3})
    result = lambda e: {"epoch": e, "epoch_time_s": 1.0 + e, "target_acc": 0.1 * e, "timestamp": e}

    def driver():
        w = Writer(uri, exp, tmp_path / "spool", "s", "st")
        w.append({"op": "study", "run": "study", "name": "st", "tags": {"gentune.sweep": "s", "gentune.study": "st",
                                                                        "gentune.kind": "study"}})
        return w

    w = driver()
    first = MlflowTrials("st", "dann", 3)
    first.on_trial_start(0, [], trial)
    for e in (1, 2):
        first.on_trial_result(0, [], trial, result(e))
    first.on_trial_result(0, [], trial, {**result(2), "timestamp": 9})  # the same epoch again within one driver
    first.on_experiment_end([trial])  # Ctrl-C: Tune stopped the trial without completing it
    assert w.close(30) == 0
    c = MlflowClient(uri)
    (run,) = c.search_runs([exp], "tags.`gentune.trial_id` = 't1'")
    assert run.info.status == "KILLED" and run.data.tags["gentune.stop_reason"].startswith("interrupted")

    w = driver()  # a new driver process
    second = restored(first)
    second.on_trial_start(0, [], trial)
    for e in (2, 3):  # resumed from the epoch-1 checkpoint: epoch 2 comes again
        second.on_trial_result(0, [], trial, {**result(e), "timestamp": 10 + e})
    trial.last_result = result(3)
    second.on_trial_complete(0, [], trial)
    assert w.close(30) == 0

    runs = c.search_runs([exp], "tags.`gentune.trial_id` = 't1'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert sorted(m.step for m in c.get_metric_history(runs[0].info.run_id, "target_acc")) == [1, 2, 3]
    assert runs[0].data.tags["gentune.stop_reason"] == "completed"


def test_writer_close_racing_an_empty_read_still_writes_everything(tmp_path, monkeypatch):
    """The CI failure of stop 21: the writer thread read an empty journal, the driver appended its entries and
    called close(), and the thread then saw "stop" and returned with the entries unwritten. The interleaving is
    forced here: the thread's first read returns nothing and waits until close() has set stop."""
    from mlflow.tracking import MlflowClient

    from search.tracking import Writer, ensure_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = ensure_experiment(uri, "s", tmp_path / "art")
    original, first = Writer._read, []

    def late_read(self, offset):
        out = original(self, offset)
        if not first:
            first.append(out)
            assert self.stop.wait(30), "close() was never called"
        return out

    monkeypatch.setattr(Writer, "_read", late_read)
    w = Writer(uri, exp, tmp_path / "spool", "s", "st")
    time.sleep(0.2)  # the thread is in its first read, which found the journal empty
    w.append({"op": "study", "run": "study", "name": "st", "tags": {"gentune.sweep": "s", "gentune.study": "st",
                                                                    "gentune.kind": "study"}})
    w.append({"op": "metrics", "run": "study", "step": 1, "ts": 1000, "values": {"trials_done": 1.0}})
    assert w.close(30) == 0
    assert first == [[]]
    (run,) = MlflowClient(uri).search_runs([exp])
    assert run.data.metrics == {"trials_done": 1.0}
