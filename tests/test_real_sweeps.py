"""Real sweeps (issue 11): the shipped specs run as written (shrunk only in sizes), results without the
metric never end a sweep, unmet resources are said at once, the noise schedule is valid for every T,
and DDPM guidance is chosen without peeking."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from trainables.errors import SpecError
from search.spec import load_spec, parse_spec
from tests.conftest import SPECS, gentune
from trainables.config import DDPMConfig, from_flat

# --- the noise schedule --------------------------------------------------------------------------


def test_scaled_and_cosine_schedules_end_in_noise_for_every_t() -> None:
    from models.ddpm import NoiseSchedule

    for T in (10, 15, 20, 21, 25, 40, 50, 100, 200, 400, 500, 750, 1000):
        assert NoiseSchedule(T, kind="cosine").signal_at_T <= 0.01, T
        if T * 1.0 > 20:  # scaled needs beta_end * 1000 / T < 1
            s = NoiseSchedule(T, 1e-4, 0.02, "scaled")
            assert s.signal_at_T <= 0.01, (T, s.signal_at_T)
            from_flat(DDPMConfig, {"T": T})  # the default schedule accepts it
        else:
            with pytest.raises(SpecError, match="schedule=scaled, T=.*invalid noise schedule"):
                from_flat(DDPMConfig, {"T": T})
        from_flat(DDPMConfig, {"T": T, "schedule": "cosine"})


def test_linear_schedule_is_the_reports_at_500_and_refused_where_it_never_reaches_noise() -> None:
    from models.ddpm import NoiseSchedule

    s = NoiseSchedule(500, 1e-4, 0.02, "linear")
    assert abs(s.signal_at_T - 0.0790) < 5e-4  # the report's T = 500
    ref_beta = (0.02 - 1e-4) * torch.arange(0, 501, dtype=torch.float64) / 500 + 1e-4  # TeaPearce's ddpm_schedules
    assert torch.allclose(s.beta_t, ref_beta.float())
    from_flat(DDPMConfig, {"T": 500, "schedule": "linear"})
    for T, left in ((40, 0.81), (100, 0.60), (400, 0.13)):
        assert abs(NoiseSchedule(T, 1e-4, 0.02, "linear").signal_at_T - left) < 0.01
        with pytest.raises(SpecError, match=rf"schedule=linear, T={T}, beta_start=0.0001, beta_end=0.02: sqrt\(abar_T\)"):
            from_flat(DDPMConfig, {"T": T, "schedule": "linear"})


# --- spec validation -----------------------------------------------------------------------------

BASE = {"family": "gan", "config": {"epochs": 4}}


def spec_of(**kw) -> dict:
    return {**BASE, **kw}


def test_when_must_name_a_key_fixed_or_searched_earlier() -> None:
    ok = spec_of(search={"model": {"choice": ["A", "B"]}, "label_flip": {"uniform": [0.0, 0.1], "when": {"model": "B"}}})
    parse_spec(ok)
    later = spec_of(search={"label_flip": {"uniform": [0.0, 0.1], "when": {"model": "B"}}, "model": {"choice": ["A", "B"]}})
    with pytest.raises(SpecError, match="search.label_flip.when: 'model' is searched after label_flip"):
        parse_spec(later)
    never = spec_of(search={"model": {"choice": ["A"]}, "label_flip": {"uniform": [0.0, 0.1], "when": {"model": "B"}}})
    with pytest.raises(SpecError, match="never 'B'"):
        parse_spec(never)
    fixed = spec_of(search={"label_flip": {"uniform": [0.0, 0.1], "when": {"model": "B"}}})  # model fixed (default A)
    with pytest.raises(SpecError, match="model is fixed to 'A', never 'B'"):
        parse_spec(fixed)
    unknown = spec_of(search={"label_flip": {"uniform": [0.0, 0.1], "when": {"modle": "B"}}})
    with pytest.raises(SpecError, match="'modle' is not a config key"):
        parse_spec(unknown)


def test_set_that_contradicts_a_when_drops_that_domain_and_its_start_point() -> None:
    """`--set model=A` on a spec that searches model B's label ranges: those go (one note each), and so does
    the start point written for model B; the same contradiction written in the spec stays an error."""
    st = load_spec(SPECS / "quickstart.yaml", ["model=A"]).studies[0]
    assert [d.key for d in st.search] == ["augment", "g_ema", "lr_g", "lr_d", "d_optimizer"]
    assert st.start_from == ({"augment": "diffaugment", "g_ema": 0.99, "lr_g": 4.0e-4, "lr_d": 2.0e-4, "d_optimizer": "adam"},)
    assert "search.real_label_lo dropped: it is searched when model=B, and --set fixed model=A" in st.notes


def test_define_by_run_reads_defaults_and_earlier_keys() -> None:
    import optuna

    from search.searcher import DefineByRun, full_config

    st = parse_spec(spec_of(config={"epochs": 4, "model": "B"},
                            search={"label_flip": {"uniform": [0.0, 0.1], "when": {"model": "B"}}})).studies[0]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    cfg = DefineByRun(st.search, dict(st.config), full_config(st))(study.ask())
    assert "label_flip" in cfg and cfg["model"] == "B"


def test_grace_period_falls_on_evaluated_epochs() -> None:
    st = parse_spec(spec_of(config={"epochs": 10, "eval_every": 3}, budget={"grace_period": 2})).studies[0]
    assert st.grace_period == 3 and "rounded up to 3" in st.notes[0]
    assert parse_spec(spec_of(config={"epochs": 10, "eval_every": 3})).studies[0].grace_period == 3  # default: first evaluation
    with pytest.raises(SpecError, match="budget.grace_period: 2 with eval_every 5 and epochs 5"):
        parse_spec(spec_of(config={"epochs": 5, "eval_every": 5}, budget={"grace_period": 2}))


def test_scheduler_is_asha_fifo_or_pbt() -> None:
    assert parse_spec(spec_of()).studies[0].scheduler == "asha"  # the default
    st = parse_spec(spec_of(config={"epochs": 5, "eval_every": 5}, budget={"scheduler": "fifo"})).studies[0]
    assert st.scheduler == "fifo" and not st.notes  # no ASHA rungs to round or refuse
    with pytest.raises(SpecError, match="budget.scheduler: 'pb' is not a scheduler; expected one of asha, fifo, pbt"):
        parse_spec(spec_of(budget={"scheduler": "pb"}))
    st = parse_spec(spec_of(budget={"scheduler": "fifo", "grace_period": 1})).studies[0]  # e.g. --set on dann.yaml
    assert "ignored with scheduler fifo" in st.notes[0]


def test_dann_ranks_on_the_selection_half_and_never_on_the_test_half() -> None:
    from trainables.data import ImageSet
    from trainables.dann import selection_and_test

    imgs = ImageSet(torch.arange(101, dtype=torch.uint8).view(101, 1, 1, 1).expand(101, 3, 2, 2).contiguous(),
                    torch.arange(101) % 10, "fp", "usps val")
    sel, test = selection_and_test(imgs)
    sel2, _ = selection_and_test(imgs)
    ids = lambda s: set(s.images[:, 0, 0, 0].tolist())  # noqa: E731
    assert len(sel) == 50 and len(test) == 51 and not ids(sel) & ids(test) and ids(sel) | ids(test) == set(range(101))
    assert torch.equal(sel.images, sel2.images)  # the same halves for every trial
    assert torch.equal(sel.labels, sel.images[:, 0, 0, 0].long() % 10)  # labels follow their images
    dann = {"family": "dann", "config": {"epochs": 2}}
    with pytest.raises(SpecError, match="target_test_acc is the held-out half"):
        parse_spec({**dann, "metric": "target_test_acc"})
    assert parse_spec(dann).studies[0].metric == "target_acc"


def test_metric_must_be_one_the_family_reports() -> None:
    with pytest.raises(SpecError, match="metric: dann trials do not report 'acc'"):
        parse_spec({"family": "dann", "metric": "acc"})
    st = parse_spec({"family": "dann", "metric": "domain_acc"}).studies[0]
    assert st.mode == "min"


def test_gan_metric_auto_is_face_score_without_fid_weights(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no hub cache with the Inception weights
    monkeypatch.delenv("GENTUNE_FID_WEIGHTS", raising=False)
    st = load_spec(SPECS / "gan.yaml").studies[0]
    assert (st.metric, st.mode, st.auto_metric) == ("face_score", "max", True)


def test_smoke_shrinks_sizes_only() -> None:
    for name in ("gan", "ddpm", "dann"):
        full, smoke = load_spec(SPECS / f"{name}.yaml").studies[0], load_spec(SPECS / f"{name}.yaml", smoke=True).studies[0]
        assert smoke.config["eval_every"] == full.config["eval_every"]
        assert (smoke.metric, smoke.mode) == (full.metric, full.mode)
        sizes = {"T", "n_feat", "epochs", "batch_size", "steps_per_epoch", "n_eval", "n_per_digit"}
        assert [d for d in smoke.search] == [d for d in full.search if d.key not in sizes]
        assert smoke.gpu == (full.gpu if torch.cuda.is_available() else 0.0)
    ddpm = load_spec(SPECS / "ddpm.yaml", smoke=True).studies[0]
    assert ddpm.config["T"] == 25 and "T" not in {d.key for d in ddpm.search}
    assert ddpm.start_from == ({"lr": 1e-4, "drop_prob": 0.1},)


def test_start_from_is_validated() -> None:
    s = {"family": "dann", "search": {"lr": {"loguniform": [1e-4, 1e-2]}}}
    assert parse_spec({**s, "start_from": [{"lr": 1e-3}]}).studies[0].start_from == ({"lr": 1e-3},)
    with pytest.raises(SpecError, match=r"start_from\[0\].lr: 0.5 is outside the searched range"):
        parse_spec({**s, "start_from": [{"lr": 0.5}]})
    with pytest.raises(SpecError, match=r"start_from\[0\].lamb: 'lamb' is not searched"):
        parse_spec({**s, "start_from": [{"lamb": 0.3}]})
    # a searched key fixed with --set leaves the start points too
    assert load_spec(SPECS / "ddpm.yaml", ["T=50"]).studies[0].start_from == ({"lr": 1e-4, "drop_prob": 0.1},)


# --- DDPM guidance without peeking ---------------------------------------------------------------


@pytest.mark.slow  # in .ci/run's slow set: keeps the default run under 10 minutes
def test_ddpm_acc_is_scored_on_fresh_samples(cache_dir) -> None:
    from trainables.ddpm import SELECT_SEED, TEST_SEED, DDPMTrainer

    cfg = from_flat(DDPMConfig, {"n_feat": 16, "T": 25, "n_per_digit": 2, "guidance": [0.0, 1.0], "device": "cpu",
                                 "data.domain": "usps", "epochs": 1})
    tr = DDPMTrainer(cfg, quiet=True)
    m = tr.evaluate(1)
    clf, _ = tr.evaluator()
    labels = torch.arange(10).repeat_interleave(2)
    acc_at = lambda seed, w: float((clf(tr.sample(labels, w, seed=seed)[0]).argmax(1) == labels).float().mean())  # noqa: E731
    assert m["acc_w0"] == acc_at(cfg.seed + SELECT_SEED, 0.0) and m["acc_w1"] == acc_at(cfg.seed + SELECT_SEED, 1.0)
    assert m["best_w"] == (1.0 if m["acc_w1"] > m["acc_w0"] else 0.0)
    assert m["acc"] == acc_at(cfg.seed + TEST_SEED, m["best_w"])  # the fresh set, not the one that chose w


# --- GAN ranking without FID ---------------------------------------------------------------------


def test_face_score_does_not_reward_a_collapsed_generator(cache_dir) -> None:
    from trainables.config import GANConfig
    from trainables.gan import GANTrainer

    tr = GANTrainer(from_flat(GANConfig, {"n_eval": 64, "device": "cpu", "fid": "off"}), quiet=True)
    faces = tr.train_set.batch(torch.arange(64)).float()  # real faces in [-1, 1]: face rate high, diversity ~1
    tr.generate = lambda z: faces
    real = tr.evaluate(1)
    tr.generate = lambda z: faces[:1].expand(64, -1, -1, -1)  # one face 64 times: collapsed
    collapsed = tr.evaluate(1)
    assert real["face_rate"] > 0.8 and collapsed["face_rate"] > 0.8
    assert collapsed["diversity"] < 0.01 and collapsed["face_score"] < 0.01
    assert real["face_score"] > 0.6


# --- sweeps --------------------------------------------------------------------------------------

SIZES = {  # each shipped spec shrunk in sizes only; eval_every/grace keep the spec's ratio
    "dann": ["epochs=4", "eval_every=2", "steps_per_epoch=3", "batch_size=32", "budget.trials=3", "budget.grace_period=1"],
}


def run_spec(tmp_path: Path, spec: str, sets: list[str], *extra: str, timeout: float = 900):
    args = ["sweep", str(SPECS / spec), *[a for s in sets for a in ("--set", s)], "--storage", str(tmp_path / "s"), "--quiet", *extra]
    return gentune(*args, check=False, timeout=timeout)


def trial_runs(root: Path) -> list:
    info = json.loads((root / "sweep.json").read_text())
    c = MlflowClient(info["tracking_uri"])
    runs = c.search_runs([info["experiment_id"]], max_results=500)
    return [r for r in runs if r.data.tags.get("gentune.kind") == "trial"]


@pytest.mark.slow  # in .ci/run's slow set: keeps the default run under 10 minutes
@pytest.mark.ray
def test_dann_spec_with_eval_every_runs_and_asks_no_gpu_here(tmp_path, cache_dir) -> None:
    """The issue's first command: results without target_acc (odd epochs) never end the sweep, and the
    spec's gpu 0.25 runs on the CPU with one line saying so (no --set resources.gpu=0)."""
    p = run_spec(tmp_path, "dann.yaml", SIZES["dann"])
    assert p.returncode == 0, p.stderr[-3000:]
    if not torch.cuda.is_available():
        assert "asks gpu 0.25 per trial but this machine has no GPU; running its trials on the CPU" in p.stderr
    assert "rounded up to 2" in p.stderr
    runs = trial_runs(tmp_path / "s" / "dann")
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)
    c = MlflowClient(json.loads((tmp_path / "s" / "dann" / "sweep.json").read_text())["tracking_uri"])
    for r in runs:
        steps = [m.step for m in c.get_metric_history(r.info.run_id, "target_acc")]
        losses = [m.step for m in c.get_metric_history(r.info.run_id, "loss_cls")]
        assert set(steps) <= {2, 4} and steps and losses == list(range(1, len(losses) + 1))
    first = min(runs, key=lambda r: r.info.start_time)  # the report's setting is tried first
    assert float(first.data.params["lr"]) == 1e-3 and float(first.data.params["lamb"]) == 0.3
    assert json.loads((tmp_path / "s" / "dann" / "sweep.json").read_text())["state"] == "finished"


@pytest.mark.slow  # in .ci/run's slow set: keeps the default run under 10 minutes
@pytest.mark.ray
def test_fifo_runs_every_trial_to_its_last_epoch(tmp_path, cache_dir) -> None:
    """dann.yaml switched to fifo with --set: its ASHA settings are said to be ignored, no trial is stopped."""
    p = run_spec(tmp_path, "dann.yaml", ["epochs=3", "eval_every=1", "steps_per_epoch=2", "budget.trials=2",
                                         "budget.scheduler=fifo", "concurrency=1"], "--smoke",
                 "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db")  # its own store: only this sweep's runs
    assert p.returncode == 0, p.stderr[-3000:]
    runs = trial_runs(tmp_path / "s" / "dann")
    assert "ignored with scheduler fifo" in p.stderr
    assert len(runs) == 2  # --smoke runs 2 trials at most
    c = MlflowClient(json.loads((tmp_path / "s" / "dann" / "sweep.json").read_text())["tracking_uri"])
    epochs = [[m.step for m in c.get_metric_history(r.info.run_id, "loss_cls")] for r in runs]
    assert epochs == [[1, 2, 3], [1, 2, 3]], epochs


@pytest.mark.slow
@pytest.mark.long  # 110 s: MLflow retries the unopenable SQLite file for 2 minutes before it raises
@pytest.mark.ray
def test_a_crashing_driver_is_one_line_with_the_traceback_in_a_log(tmp_path, cache_dir) -> None:
    bad = f"sqlite:///{tmp_path}"  # a folder where the SQLite file should be: the driver's MLflow calls raise
    p = run_spec(tmp_path, "dann.yaml", ["epochs=1", "steps_per_epoch=1", "budget.trials=1"], "--smoke", "--tracking-uri", bad)
    assert p.returncode == 1, p.stderr[-2000:]
    line = [x for x in p.stderr.splitlines() if x.startswith("gentune sweep: error:")]
    assert len(line) == 1 and "traceback in" in line[0] and "Traceback" not in p.stderr
    log = Path(line[0].split("traceback in ", 1)[1].split(";")[0])
    assert "Traceback (most recent call last)" in log.read_text()


@pytest.mark.slow  # in .ci/run's slow set: keeps the default run under 10 minutes
@pytest.mark.ray
def test_diverged_trials_make_the_sweep_exit_nonzero(tmp_path, cache_dir) -> None:
    p = run_spec(tmp_path, "dann.yaml", ["lr=1.0e30", "budget.trials=1"], "--smoke")
    assert p.returncode == 1
    assert "1 trial(s) failed; first: study dann trial" in p.stderr and "diverged" in p.stderr
    info = json.loads((tmp_path / "s" / "dann" / "sweep.json").read_text())
    assert info["state"] == "failed"


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize("spec,sets", [
    ("gan.yaml", ["epochs=4", "eval_every=2", "steps_per_epoch=2", "batch_size=16", "n_eval=32", "budget.trials=3",
                  "budget.grace_period=2"]),
    ("ddpm.yaml", ["epochs=2", "eval_every=1", "steps_per_epoch=2", "batch_size=16", "n_per_digit=1", "n_feat=16",
                   "T=50", "budget.trials=2", "budget.grace_period=1", "guidance=[0.0,2.0]"]),
    ("seed.yaml", ["epochs=2", "eval_every=1", "steps_per_epoch=1", "batch_size=16", "n_eval=16", "n_per_digit=1",
                   "n_feat=16"]),
    ("gan-seeds.yaml", ["epochs=2", "eval_every=1", "steps_per_epoch=2", "batch_size=16", "n_eval=16"]),
])
def test_every_shipped_spec_runs_as_written(spec, sets, tmp_path, cache_dir) -> None:
    """(quickstart.yaml runs as written, full size, in tests/test_readme.py::test_quickstart_script.)"""
    p = run_spec(tmp_path, spec, sets, timeout=1800)
    assert p.returncode == 0, p.stderr[-3000:]
    root = next((tmp_path / "s").iterdir())
    runs = trial_runs(root)
    studies = load_spec(SPECS / spec, sets).studies
    assert len(runs) == sum(s.trials for s in studies) and all(r.info.status == "FINISHED" for r in runs)
    info = json.loads((root / "sweep.json").read_text())
    seeds = MlflowClient(info["tracking_uri"]).search_runs([info["experiment_id"]], "tags.`gentune.kind` = 'seed'")
    assert len(seeds) == sum(s.trials * s.repeats for s in studies if s.repeats > 1)  # a run per seed where repeated
    assert all(r.info.status == "FINISHED" for r in seeds)


REAL_DANN = """
name: real-dann
seed: 0
resources: {cpu: 1, gpu: 0}
concurrency: 2
family: dann
config: {mode: dann, epochs: 6, steps_per_epoch: 100, batch_size: 64, lr: 1.0e-3, eval_every: 2,
         lambda_schedule: ramp, lamb: 0.3, source: SOURCE, target: TARGET}
search:  # the baseline and DANN side by side, one per core; DANN's lambda searched from the report's 0.3
  mode: {choice: [dann, source-only]}
  lamb: {loguniform: [0.1, 1.0], when: {mode: dann}}
start_from: [{mode: dann, lamb: 0.3}, {mode: source-only}]
budget: {trials: 3, grace_period: 6}
"""


@pytest.mark.slow
@pytest.mark.long  # 330 s
@pytest.mark.ray
def test_dann_beats_source_only_on_the_real_report_layout(tmp_path, cache_dir) -> None:
    """dann.yaml's structure (a searched DANN study started from the report's lambda, beside its
    source-only baseline) on the report's folder layout built from ../shared/datasets: the MNIST-M
    subset as source, USPS as target."""
    from benchmarks.gpu_check import build_report_layout
    from tests.conftest import shared_datasets

    shared = shared_datasets()
    if not (shared / "mnist_m").is_dir() or not (shared / "usps" / "usps.t.bz2").is_file():
        pytest.skip(f"real MNIST-M / USPS files are not in {shared}")
    root = tmp_path / "hw2"
    build_report_layout(shared, root)
    spec = tmp_path / "real.yaml"
    spec.write_text(REAL_DANN.replace("SOURCE", f"{{source: report, root: {root}, domain: mnistm}}")
                    .replace("TARGET", f"{{source: report, root: {root}, domain: usps}}"))
    p = gentune("sweep", str(spec), "--storage", str(tmp_path / "s"), "--quiet", check=False, timeout=2400)
    assert p.returncode == 0, p.stderr[-3000:]
    runs = trial_runs(tmp_path / "s" / "real-dann")
    acc: dict[str, list[float]] = {}
    for r in runs:
        acc.setdefault(r.data.params["mode"], []).append(r.data.metrics["target_acc"])
    print("real MNIST-M -> USPS target accuracy:", acc)
    # measured with these settings (seed 0): DANN (ramp to lambda 0.3) 0.72, source-only 0.16
    assert max(acc["dann"]) > max(acc["source-only"]) + 0.1, acc


@pytest.mark.slow
@pytest.mark.ray
def test_trials_waiting_for_resources_on_a_cluster_are_named(tmp_path, cache_dir) -> None:
    """On a cluster (--address) the requests are kept (GPU nodes may join later), and trials that wait
    for a GPU the cluster does not have are named in the live output and in `gentune status`."""
    import subprocess
    import sys
    import time

    from ray.cluster_utils import Cluster

    from tests.conftest import REPO, interrupt

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False})
    storage = tmp_path / "s"
    env = {**os.environ, "GENTUNE_PENDING_WARN_S": "5"}
    sets = [a for kv in ("epochs=2", "steps_per_epoch=2", "batch_size=16", "budget.trials=2") for a in ("--set", kv)]
    cmd = [sys.executable, "-m", "search.cli", "sweep", str(SPECS / "dann.yaml"), *sets,  # the spec's gpu 0.25
           "--address", cluster.address, "--storage", str(storage), "--quiet"]
    p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    try:
        waiting = storage / "dann" / "waiting.json"
        deadline = time.time() + 300
        while time.time() < deadline and p.poll() is None and not waiting.exists():
            time.sleep(1)
        assert waiting.exists(), p.communicate(timeout=30)[0][-3000:] if p.poll() is not None else "no waiting.json"
        status = gentune("status", str(storage / "dann")).stdout
        assert "waiting:" in status and "each asks CPU 2, GPU 0.25" in status and "GPU 0" in status, status
    finally:
        out = interrupt(p, group=True)
        cluster.shutdown()
    assert "trial(s) of study dann waiting" in out and "GPU 0.25" in out, out[-3000:]
