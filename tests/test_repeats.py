"""Rankings over seeds (budget.repeats), the searcher told what happened (PRUNED, intermediate values, metric
names), and the best epoch kept and exported (budget.rank_by). Real runs of the small toy family
(tests/toy_family.py) through the CLI; expected values come from the MLflow store, the Optuna study and the
exported weights directly, never from the ranking code under test."""
from __future__ import annotations

import csv
import io
import json
import math
import statistics

import pytest
import torch

from tests.conftest import gentune
from tests.test_families import TOY_ENV, toy_registered  # noqa: F401 (a fixture)
from trainables.errors import SpecError

# Found by training the toy family at these sizes (epochs 4, 5 steps of 32): LUCKY reaches the best single
# seed of the two (seed 0) and a poor mean; STEADY is good on every seed. One run each would pick LUCKY.
SIZES = {"epochs": 4, "steps_per_epoch": 5, "batch_size": 32}
LUCKY = {"lr": 0.01, "hidden": 16}
STEADY = {"lr": 0.0005, "hidden": 64}
PEAKS = {"lr": 0.1, "hidden": 64}  # seed 0: val_acc rises to epoch 3, then falls at epoch 4

SPEC = f"""\
name: reps
studies:
  - name: seeds
    family: toy
    config: {json.dumps(SIZES)}
    search:
      lr: {{loguniform: [1.0e-4, 1.0e-1]}}
      hidden: {{choice: [16, 64]}}
    start_from: [{json.dumps(LUCKY)}, {json.dumps(STEADY)}]
    budget: {{trials: 2, scheduler: fifo, repeats: 3, rank_by: last}}
    resources: {{cpu: 1, gpu: 0}}
    concurrency: 1
  - name: peak
    family: toy
    config: {json.dumps({**SIZES, **PEAKS})}
    budget: {{trials: 1, scheduler: fifo}}
    resources: {{cpu: 1, gpu: 0}}
  - name: asha
    family: toy
    config: {json.dumps(SIZES)}
    search:
      lr: {{loguniform: [1.0e-4, 3.0e-1]}}
      hidden: {{choice: [4, 64]}}
    start_from: [{{lr: 0.003, hidden: 64}}, {{lr: 0.3, hidden: 4}}]
    budget: {{trials: 2, scheduler: asha, grace_period: 1, reduction_factor: 2}}
    resources: {{cpu: 1, gpu: 0}}
    concurrency: 1
"""


def test_combine_aggregates_each_metric_with_its_spread():
    from trainables.loop import combine

    per_seed = {0: {"epoch": 2, "acc": 0.2, "loss": 1.0, "epoch_time_s": 1.0, "on_gpu": 0.0},
                1: {"epoch": 2, "acc": 0.5, "loss": 3.0, "epoch_time_s": 2.0, "on_gpu": 0.0},
                2: {"epoch": 2, "acc": 0.8, "loss": 8.0, "epoch_time_s": 4.0, "on_gpu": 0.0, "only_here": 1.0}}
    mean = combine(per_seed, "mean")
    assert mean["epoch"] == 2 and mean["n_seeds"] == 3 and mean["epoch_time_s"] == 7.0  # the configuration's time
    assert mean["acc"] == pytest.approx(0.5) and mean["loss"] == pytest.approx(4.0)
    assert mean["acc_sd"] == pytest.approx(0.3)  # sample sd of 0.2, 0.5, 0.8: sqrt((0.09 + 0 + 0.09) / 2)
    assert mean["loss_sd"] == pytest.approx(math.sqrt(((1 - 4) ** 2 + (3 - 4) ** 2 + (8 - 4) ** 2) / 2))
    assert "only_here" not in mean  # not every seed reported it
    median = combine(per_seed, "median")
    assert median["loss"] == 3.0 and median["acc"] == pytest.approx(0.5)


def test_repeated_seeds_train_exactly_as_each_would_alone(cache_dir, toy_registered):  # noqa: F811
    """fit_repeated interleaves its seeds epoch by epoch; each keeps its own random state, so seed 6 inside a
    repetition of seeds 5, 6 gives the same numbers as seed 6 trained on its own."""
    from trainables.loop import fit, fit_repeated

    cfg = {**SIZES, **LUCKY, "epochs": 2, "seed": 5}
    alone = {}
    for seed in (5, 6):
        seen = []
        fit("toy", {**cfg, "seed": seed}, lambda e: seen.append(e.metrics), quiet=True)
        alone[seed] = seen
    together = []
    fit_repeated("toy", cfg, 2, together.append, quiet=True)
    assert [e.epoch for e in together] == [1, 2]
    for i, e in enumerate(together):
        for seed in (5, 6):
            assert e.seeds[seed]["val_acc"] == alone[seed][i]["val_acc"] and e.seeds[seed]["loss"] == alone[seed][i]["loss"]
        assert e.metrics["val_acc"] == pytest.approx(statistics.fmean([alone[5][i]["val_acc"], alone[6][i]["val_acc"]]))
        assert set(e.checkpoint) == {5, 6} and e.checkpoint[6]["config"]["seed"] == 6
    assert alone[5][-1]["val_acc"] != alone[6][-1]["val_acc"]  # two seeds that differ: the check above can fail


@pytest.mark.parametrize("budget, message", [
    ({"repeats": 0}, "budget.repeats: 0 is out of range"),
    ({"repeats": 2, "scheduler": "pbt"}, "PBT copies one trial's weights"),
    ({"aggregate": "max"}, "budget.aggregate: 'max' is not an aggregate"),
    ({"rank_by": "first"}, "budget.rank_by: 'first'"),
])
def test_budget_refuses_what_it_cannot_do(budget, message):
    from search.spec import parse_spec

    with pytest.raises(SpecError, match=message):
        parse_spec({"family": "dann", "search": {"lr": {"loguniform": [1e-4, 1e-2]}}, "budget": budget})
    with pytest.raises(SpecError, match="multi-objective study ranks trials by their Pareto front"):
        parse_spec({"family": "dann", "metric": ["target_acc", "source_acc"], "budget": {"rank_by": "best"}})
    st = parse_spec({"family": "dann", "metric": ["target_acc", "source_acc"]}).studies[0]
    assert st.rank_by == "last" and parse_spec({"family": "dann"}).studies[0].rank_by == "best"


@pytest.fixture(scope="module")
def reps(tmp_path_factory, cache_dir):
    tmp = tmp_path_factory.mktemp("reps")
    (tmp / "reps.yaml").write_text(SPEC)
    gentune("sweep", str(tmp / "reps.yaml"), "--storage", str(tmp / "runs"), "--quiet", env=TOY_ENV)
    return tmp, tmp / "runs" / "reps"


def _runs(root, kind: str, study: str) -> list:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = c.get_experiment_by_name("reps").experiment_id
    return c.search_runs([exp], f"tags.`gentune.kind` = '{kind}' and tags.`gentune.study` = '{study}'")


def test_a_steady_configuration_beats_one_lucky_seed(reps):
    tmp, root = reps
    configs = {r.data.tags["gentune.trial_id"]: r for r in _runs(root, "trial", "seeds")}
    seeds = _runs(root, "seed", "seeds")
    assert len(configs) == 2 and len(seeds) == 6
    finals: dict[str, dict[int, float]] = {}
    for r in seeds:  # each seed run sits under its configuration's run, tagged with it
        tid = r.data.tags["gentune.config_trial_id"]
        assert r.data.tags["mlflow.parentRunId"] == configs[tid].info.run_id and r.info.status == "FINISHED"
        finals.setdefault(tid, {})[int(r.data.params["seed"])] = r.data.metrics["val_acc"]
    assert all(sorted(v) == [0, 1, 2] for v in finals.values())
    by_lr = {float(configs[t].data.params["lr"]): t for t in configs}
    lucky, steady = by_lr[LUCKY["lr"]], by_lr[STEADY["lr"]]
    # what the runs show: the lucky configuration has the best single seed, the steady one the better mean
    assert max(finals[lucky].values()) > max(finals[steady].values())
    assert statistics.fmean(finals[steady].values()) > statistics.fmean(finals[lucky].values())
    for t in (lucky, steady):  # the configuration's run holds its seeds' mean and sd
        assert configs[t].data.metrics["val_acc"] == pytest.approx(statistics.fmean(finals[t].values()))
        assert configs[t].data.metrics["val_acc_sd"] == pytest.approx(statistics.stdev(finals[t].values()))

    rows = list(csv.DictReader(io.StringIO(gentune("compare", str(root), "--study", "seeds", "--format", "csv",
                                                   env=TOY_ENV).stdout)))
    assert [r["trial_id"] for r in rows if not r["seed"]] == [steady, lucky]  # ranked by the aggregate
    for t in (lucky, steady):
        own = {int(r["seed"]): float(r["final"]) for r in rows if r["trial_id"].startswith(f"{t}:s")}
        assert own == finals[t]
        (agg,) = [r for r in rows if r["trial_id"] == t]
        assert agg["n"] == "3" and float(agg["sd"]) == pytest.approx(statistics.stdev(finals[t].values()))

    p = gentune("export", str(root), "--study", "seeds", "--out", str(tmp / "bundle"), env=TOY_ENV)
    mean = statistics.fmean(finals[steady].values())
    nearest = min(finals[steady], key=lambda s: abs(finals[steady][s] - mean))
    assert f"trial {steady} of study seeds" in p.stderr and f"; seed {nearest} (val_acc" in p.stderr, p.stderr
    meta = json.loads((tmp / "bundle" / "bundle.json").read_text())
    assert meta["trial_id"] == f"{steady}:s{nearest}" and meta["metrics"]["val_acc"] == finals[steady][nearest]
    p = gentune("export", str(root), "--study", "seeds", "--seed-pick", "best", "--out", str(tmp / "bundle-best"), env=TOY_ENV)
    best_seed = max(finals[steady], key=finals[steady].get)
    assert json.loads((tmp / "bundle-best" / "bundle.json").read_text())["trial_id"] == f"{steady}:s{best_seed}"


def _val_acc_of_bundle(path) -> float:
    from analysis.export import load_bundle
    from trainables.data import load_split

    b = load_bundle(path, "toy")
    val = load_split(b.cfg.data, "val", 16, "digits", b.cfg.cache_dir, quiet=True)
    with torch.no_grad():
        pred = b.models["model"].eval()(val.batch(torch.arange(len(val)))).argmax(1)
    return int((pred == val.labels).sum()) / len(val)


def test_rank_by_best_exports_the_peak_epoch_and_last_the_last(reps, toy_registered):  # noqa: F811
    tmp, root = reps
    (run,) = _runs(root, "trial", "peak")
    from mlflow.tracking import MlflowClient

    hist = {m.step: m.value for m in MlflowClient(f"sqlite:///{root / 'mlflow.db'}").get_metric_history(run.info.run_id, "val_acc")}
    peak = max(hist, key=hist.get)
    assert sorted(hist) == [1, 2, 3, 4] and peak < 4 and hist[peak] > hist[4]  # it peaked before its last epoch
    dirs = [d for d in next((root / "peak").glob("run_trial_*")).iterdir() if d.name.startswith("checkpoint_")]
    assert len(dirs) == 2  # the best and the last: bounded, whatever the number of epochs

    p = gentune("export", str(root), "--study", "peak", "--out", str(tmp / "peak-best"), env=TOY_ENV)
    assert f"at its best epoch, {peak} (rank_by best)" in p.stderr, p.stderr
    assert _val_acc_of_bundle(tmp / "peak-best") == pytest.approx(hist[peak], abs=1e-9)
    gentune("export", str(root), "--study", "peak", "--rank-by", "last", "--out", str(tmp / "peak-last"), env=TOY_ENV)
    assert _val_acc_of_bundle(tmp / "peak-last") == pytest.approx(hist[4], abs=1e-9)


def test_an_asha_stopped_trial_reaches_optuna_pruned_with_its_values(reps):
    import optuna

    tmp, root = reps
    study = optuna.load_study(study_name="asha", storage=f"sqlite:///{root / 'optuna.db'}")
    assert study.metric_names == ["val_acc"]
    runs = {float(r.data.params["lr"]): r for r in _runs(root, "trial", "asha")}
    by_lr = {t.params["lr"]: t for t in study.trials}
    good, bad = by_lr[0.003], by_lr[0.3]
    assert runs[0.3].data.tags["gentune.stop_reason"].startswith("early-stopped by ASHA at epoch 1")
    assert bad.state == optuna.trial.TrialState.PRUNED  # not COMPLETE at its rung value, as Ray's OptunaSearch tells it
    assert bad.intermediate_values == {1: pytest.approx(runs[0.3].data.metrics["val_acc"])}
    assert good.state == optuna.trial.TrialState.COMPLETE and sorted(good.intermediate_values) == [1, 2, 3, 4]
    assert good.value == pytest.approx(runs[0.003].data.metrics["val_acc"])


@pytest.mark.slow
@pytest.mark.ray
def test_a_driver_killed_mid_study_resumes_every_seed_once(tmp_path, cache_dir):
    """SIGKILL of the driver's whole session while configurations of 2 seeds train; `--resume` finishes them
    from their checkpoints (every seed's state at the same epoch), and MLflow holds each seed's epochs once."""
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import REPO
    from tests.test_sweep import tracked_epochs
    from tests.test_sweep_interrupts import sweep, wait_until

    epochs = 8
    spec = tmp_path / "toy.yaml"
    spec.write_text(f"""\
name: kill
family: toy
config: {{epochs: {epochs}, steps_per_epoch: 150, batch_size: 64}}
search:
  lr: {{loguniform: [1.0e-3, 1.0e-2]}}
budget: {{trials: 2, scheduler: fifo, repeats: 2}}
resources: {{cpu: 1, gpu: 0}}
concurrency: 2
""")
    args = [str(spec), "--storage", str(tmp_path / "runs"), "--quiet"]
    root = tmp_path / "runs" / "kill"
    p = sweep(*args)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    wait_until(p, lambda: len(ep := tracked_epochs(root, uri, "kill")) == 2 and all(2 <= max(v) < epochs - 2 for v in ep.values()))
    os.killpg(p.pid, signal.SIGKILL)
    p.communicate(timeout=60)
    r = subprocess.run([sys.executable, "-m", "search.cli", "sweep", *args, "--resume"], cwd=REPO,
                       env={**os.environ, **TOY_ENV}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = c.search_runs([c.get_experiment_by_name("kill").experiment_id], max_results=100)
    kinds = [r.data.tags["gentune.kind"] for r in runs]
    assert sorted(kinds) == ["seed"] * 4 + ["study"] + ["trial"] * 2 and {r.info.status for r in runs} == {"FINISHED"}
    seeds: dict[str, list[int]] = {}
    for run in runs:
        if run.data.tags["gentune.kind"] == "seed":
            seeds.setdefault(run.data.tags["gentune.config_trial_id"], []).append(int(run.data.params["seed"]))
        if run.data.tags["gentune.kind"] != "study":  # every epoch once, none lost, none twice
            assert [m.step for m in c.get_metric_history(run.info.run_id, "epoch_time_s")] == list(range(1, epochs + 1))
        if run.data.tags["gentune.kind"] == "trial":  # the best so far, carried across the restart
            accs = {m.step: m.value for m in c.get_metric_history(run.info.run_id, "val_acc")}
            assert run.data.metrics["val_acc_best"] == max(accs.values())
            assert run.data.metrics["best_epoch"] == max(e for e, v in accs.items() if v == max(accs.values()))
    assert sorted(map(sorted, seeds.values())) == [[0, 1], [0, 1]]
