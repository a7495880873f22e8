"""The search itself (issue 14): searchers (TPE, random), schedulers (ASHA, FIFO, PBT with lineage in
MLflow), two-objective studies with their Pareto front (report, export), label-free DANN selection
(DEV), the stored Optuna study and `gentune dashboard`, and benchmarks.search."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from trainables.errors import SpecError
from analysis.sweepdata import knee, pareto_front
from search.spec import load_spec, parse_spec
from tests.conftest import REPO, SPECS, gentune

GAN = {"family": "gan", "config": {"epochs": 6, "eval_every": 1}}


def study(**kw):
    return parse_spec({**GAN, **kw}).studies[0]


# --- specs: what each searcher / scheduler / objective list accepts and refuses, in one line each ---


def test_searcher_and_scheduler_defaults_and_refusals() -> None:
    st = study(search={"lr_g": {"loguniform": [1e-5, 1e-3]}})
    assert (st.searcher, st.scheduler, st.perturbation_interval) == ("tpe", "asha", 0)
    assert study(budget={"searcher": "random"}).searcher == "random"
    with pytest.raises(SpecError, match="budget.searcher: 'grid' is not a searcher; expected one of tpe, random"):
        study(budget={"searcher": "grid"})
    with pytest.raises(SpecError, match="budget.scheduler: 'hyperband' is not a scheduler; expected one of asha, fifo, pbt"):
        study(budget={"scheduler": "hyperband"})
    with pytest.raises(SpecError, match="budget.perturbation_interval is PBT's; scheduler asha has none"):
        study(budget={"perturbation_interval": 2})


def test_pbt_accepts_gan_learning_rates_and_refuses_what_cannot_work() -> None:
    search = {"lr_g": {"loguniform": [1e-5, 1e-3]}, "lr_d": {"loguniform": [1e-5, 1e-3]}}
    st = study(search=search, budget={"scheduler": "pbt", "perturbation_interval": 2})
    assert (st.scheduler, st.searcher, st.perturbation_interval) == ("pbt", "random", 2)
    assert study(search=search, budget={"scheduler": "pbt"}).perturbation_interval == 1  # eval_every
    with pytest.raises(SpecError, match="budget.searcher tpe with scheduler pbt: PBT chooses configurations itself"):
        study(search=search, budget={"scheduler": "pbt", "searcher": "tpe"})
    with pytest.raises(SpecError, match="only the gan family's trainer takes new learning rates mid-run; use asha or fifo for dann"):
        parse_spec({"family": "dann", "search": {"lr": {"loguniform": [1e-4, 1e-3]}}, "budget": {"scheduler": "pbt"}})
    with pytest.raises(SpecError, match="nothing to perturb"):
        study(search={"d_optimizer": {"choice": ["adam", "sgd"]}}, budget={"scheduler": "pbt"})
    with pytest.raises(SpecError, match="perturbation_interval: 3 must be a multiple of eval_every \\(2\\)"):
        parse_spec({"family": "gan", "config": {"epochs": 6, "eval_every": 2}, "search": search,
                    "budget": {"scheduler": "pbt", "perturbation_interval": 3}})
    with pytest.raises(SpecError, match="budget.scheduler pbt: it ranks trials on one metric"):
        study(search=search, metric=["face_rate", "diversity"], budget={"scheduler": "pbt"})


def test_pbt_on_the_shipped_gan_spec_needs_the_model_fixed() -> None:
    """gan.yaml's label ranges are searched when model=B: Tune's sampling has no conditions."""
    with pytest.raises(SpecError, match="search.real_label_lo.when: scheduler pbt samples with Tune's random search"):
        load_spec(SPECS / "gan.yaml", ["budget.scheduler=pbt"])
    st = load_spec(SPECS / "gan.yaml", ["budget.scheduler=pbt", "model=B"]).studies[0]
    assert {d.key for d in st.search} >= {"lr_g", "lr_d", "real_label_lo", "fake_label_hi"} and st.perturbation_interval == 10
    assert any("ignored with scheduler pbt" in n for n in st.notes)  # gan.yaml's grace period / reduction factor


def test_two_objectives_parse_with_their_modes_and_refusals() -> None:
    st = study(metric=["face_rate", "diversity"])
    assert st.objectives == (("face_rate", "max"), ("diversity", "max")) and (st.metric, st.scheduler) == ("face_rate", "fifo")
    assert study(metric=["face_rate", "diversity"], mode=["max", "min"]).objectives[1] == ("diversity", "min")
    with pytest.raises(SpecError, match="mode: with 2 metrics, give a list of 2 modes"):
        study(metric=["face_rate", "diversity"], mode="max")
    with pytest.raises(SpecError, match="a list needs two or more different metrics"):
        study(metric=["face_rate", "face_rate"])
    with pytest.raises(SpecError, match=r"metric\[1\]: gan trials do not report 'acc'"):
        study(metric=["face_rate", "acc"])
    with pytest.raises(SpecError, match="budget.scheduler asha: it ranks trials on one metric, and this study has 2"):
        study(metric=["face_rate", "diversity"], budget={"scheduler": "asha"})
    with pytest.raises(SpecError, match=r"metric\[0\]: target_test_acc is the held-out half"):
        parse_spec({"family": "dann", "metric": ["target_test_acc", "source_acc"]})
    assert len(study().objectives) == 1  # one metric (auto): one objective


def test_dann_label_free_metrics_rank_the_right_way() -> None:
    assert parse_spec({"family": "dann", "metric": "dev_risk"}).studies[0].mode == "min"
    assert parse_spec({"family": "dann", "metric": "source_acc"}).studies[0].mode == "max"


# --- Pareto front and the export's pick -------------------------------------------------------------


def test_pareto_front_and_knee() -> None:
    pts = {"a": (0.9, 0.1), "b": (0.5, 0.5), "c": (0.1, 0.9), "d": (0.4, 0.4), "e": (0.9, 0.05)}
    assert sorted(pareto_front(pts, ("max", "max"))) == ["a", "b", "c"]  # d < b, e < a
    assert sorted(pareto_front(pts, ("min", "min"))) == ["c", "d", "e"]
    front = {k: pts[k] for k in ("a", "b", "c")}
    assert knee(front, ("max", "max")) == "b"  # nearest the ideal (0.9, 0.9) once scaled
    assert knee({"a": (1.0, 0.0), "c": (0.0, 1.0)}, ("max", "max")) == "a"  # a tie: the better first objective
    assert pareto_front({"x": (1.0, 2.0), "y": (1.0, 2.0)}, ("min", "min")) == ["x", "y"]  # equal points: both kept


# --- DEV (deep embedded validation) -----------------------------------------------------------------


def test_dev_estimate_weights_the_source_samples_that_look_like_target() -> None:
    from trainables.dann import dev_estimate

    rng = np.random.default_rng(0)
    src = rng.normal(0, 1, (800, 4))
    val = rng.normal(0, 1, (400, 4))
    loss = np.where(val[:, 0] > 0.5, 2.0, 0.2)  # the model is bad where the target lies (x0 large)
    same = dev_estimate(src, rng.normal(0, 1, (800, 4)), val, loss)
    assert abs(same - loss.mean()) < 0.15 * loss.mean()  # no shift: DEV ~ the plain source validation loss
    shifted = dev_estimate(src, rng.normal([1.5, 0, 0, 0], 1, (800, 4)), val, loss)
    assert shifted > 1.5 * loss.mean()  # the target sits where the loss is high: DEV says so
    assert dev_estimate(src, rng.normal([-1.5, 0, 0, 0], 1, (800, 4)), val, loss) < loss.mean()


# --- real sweeps ------------------------------------------------------------------------------------


def tiny_gan_spec(tmp_path: Path, epochs: int, rest: str) -> Path:
    """A 4-trial GAN spec (width 16, tiny sizes, lr_g and lr_d searched, 2 trials at once) plus `rest`."""
    p = tmp_path / "spec.yaml"
    p.write_text(f"""
family: gan
config: {{model: A, width: 16, epochs: {epochs}, steps_per_epoch: 2, batch_size: 16, n_eval: 32, eval_every: 1, fid: off}}
search:
  lr_g: {{loguniform: [1.0e-5, 1.0e-3]}}
  lr_d: {{loguniform: [1.0e-5, 1.0e-3]}}
resources: {{cpu: 1, gpu: 0}}
concurrency: 2
{rest}""")
    return p


def runs_of(root: Path) -> list:
    info = json.loads((root / "sweep.json").read_text())
    return [r for r in MlflowClient(info["tracking_uri"]).search_runs([info["experiment_id"]], max_results=500)
            if r.data.tags.get("gentune.kind") == "trial"]


@pytest.mark.slow
@pytest.mark.ray
def test_pbt_gan_sweep_records_exploits_in_mlflow(tmp_path, cache_dir) -> None:
    """4 trials, 2 at a time, PBT every epoch: a bottom-quartile trial continues from a top one's
    checkpoint; its MLflow run names the donor and the epoch, its hp.lr_* metrics show the new values."""
    spec = tiny_gan_spec(tmp_path, 5, """
start_from: [{lr_g: 2.0e-4, lr_d: 2.0e-4}]
metric: face_score
budget: {trials: 4, scheduler: pbt}
""")
    p = gentune("sweep", str(spec), "--storage", str(tmp_path / "s"), "--name", "pbt", check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "random + pbt" in p.stderr
    runs = runs_of(tmp_path / "s" / "pbt")
    ids = {r.data.tags["gentune.trial_id"] for r in runs}
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    exploited = [r for r in runs if r.data.tags.get("gentune.pbt_lineage")]
    assert exploited, "no trial continued from another's checkpoint"
    c = MlflowClient(json.loads((tmp_path / "s" / "pbt" / "sweep.json").read_text())["tracking_uri"])
    for r in exploited:
        lineage = r.data.tags["gentune.pbt_lineage"]
        donors = [e.split("from trial ")[1].split(" ")[0] for e in lineage.split("; ")]
        assert set(donors) <= ids - {r.data.tags["gentune.trial_id"]}, lineage
        assert int(r.data.tags["gentune.pbt_exploits"]) == len(donors)
        assert c.get_metric_history(r.info.run_id, "hp.lr_g")  # the values PBT set, per epoch
    first = [r for r in runs if r.data.params.get("lr_g") == "0.0002" and r.data.params.get("lr_d") == "0.0002"]
    assert first, "start_from was not run as a trial"


@pytest.fixture(scope="module")
def two_objective_sweep(tmp_path_factory, cache_dir) -> Path:
    tmp = tmp_path_factory.mktemp("mo")
    spec = tiny_gan_spec(tmp, 2, """
metric: [face_rate, diversity]
budget: {trials: 4}
""")
    p = gentune("sweep", str(spec), "--storage", str(tmp / "s"), "--name", "mo", check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Pareto-optimal trials on face_rate, diversity" in p.stderr
    return tmp / "s" / "mo"


@pytest.mark.slow
@pytest.mark.ray
def test_two_objective_study_records_its_front_and_report_and_export_use_it(two_objective_sweep, tmp_path) -> None:
    root = two_objective_sweep
    runs = runs_of(root)
    vals = {r.data.tags["gentune.trial_id"]: (r.data.metrics["face_rate"], r.data.metrics["diversity"]) for r in runs}
    expect = sorted(pareto_front(vals, ("max", "max")))
    info = json.loads((root / "sweep.json").read_text())
    c = MlflowClient(info["tracking_uri"])
    parent = [r for r in c.search_runs([info["experiment_id"]]) if r.data.tags.get("gentune.kind") == "study"][0]
    assert parent.data.tags["gentune.pareto_trials"].split(",") == expect
    assert sorted(r.data.tags["gentune.trial_id"] for r in runs if r.data.tags.get("gentune.pareto") == "1") == expect
    import optuna

    stored = optuna.load_study(study_name="gan", storage=f"sqlite:///{root / 'optuna.db'}")  # the searcher's own study
    assert len(stored.directions) == 2 and len(stored.trials) == 4
    rep = gentune("report", str(root), "--out", str(tmp_path / "rep"))
    assert (tmp_path / "rep" / "sweep_gan_pareto.png").stat().st_size > 5000
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "Pareto-optimal trials" in md, rep.stderr
    # importances and parallel coordinates of the stored two-objective study, on its first objective
    assert "](sweep_gan_importances.png)" in md and "objective: final face_rate, max; the sweep's stored Optuna study" in md
    pick = knee({k: vals[k] for k in expect}, ("max", "max"))
    e = gentune("export", str(root), "--out", str(tmp_path / "b"))
    assert f"trial {pick} of study gan" in e.stderr and "Pareto-optimal" in e.stderr
    other = next((k for k in vals if k != pick), pick)
    e = gentune("export", str(root), "--trial", other, "--out", str(tmp_path / "b2"))
    assert json.loads((tmp_path / "b2" / "bundle.json").read_text())["trial_id"] == other


@pytest.mark.slow
@pytest.mark.ray
def test_dashboard_serves_the_stored_study_on_localhost(two_objective_sweep) -> None:
    p = subprocess.Popen([sys.executable, "-m", "search.cli", "dashboard", str(two_objective_sweep), "--port", "0", "--quiet"],
                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        url = p.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/dashboard"), (url, p.stderr.read() if p.poll() else "")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url.removesuffix("/dashboard") + "/api/studies", timeout=10) as r:
            studies = json.loads(r.read())["study_summaries"]
        assert [(s["study_name"], s["directions"]) for s in studies] == [("gan", ["maximize", "maximize"])]
    finally:
        os.killpg(p.pid, signal.SIGINT)
        p.wait(30)
    assert p.returncode == 0
    time.sleep(0.5)


def test_dashboard_refuses_a_folder_without_a_stored_study(tmp_path) -> None:
    (tmp_path / "sweep.json").write_text('{"name": "s", "studies": ["s"]}')
    p = gentune("dashboard", str(tmp_path), check=False)
    assert p.returncode != 0 and "has no stored Optuna study" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.slow
@pytest.mark.ray
def test_benchmark_search_runs_real_sweeps_and_writes_its_tables(tmp_path, cache_dir) -> None:
    res = tmp_path / "RESULTS.md"
    p = subprocess.run([sys.executable, "-m", "benchmarks.search", "--quick", "--methods",
                        "report,random+asha,tpe+asha-complete", "--results", str(res)], cwd=REPO, capture_output=True,
                       text=True, timeout=900, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stderr[-3000:]
    text = res.read_text()
    assert "| report |" in text and "| random+asha |" in text and "pick by dev_risk (min)" in text
    # each method's pick trained again with 2 fresh seeds (--quick): one row per method, n = 1 pick x 2 seeds, a
    # held-out accuracy of each, and no t-test without tpe+asha's row to compare with
    retrained = [line for line in text.split("trained again with 2 fresh seeds (100, 101)")[1].splitlines()
                 if line.startswith("| ") and not line.startswith("| method")]
    assert [r.split("|")[1].strip() for r in retrained] == ["report", "random+asha", "tpe+asha-complete"], retrained
    for r in retrained:
        cells = [c.strip() for c in r.split("|")[1:-1]]
        acc = [float(x) for x in cells[2].split(" ± ")]
        assert cells[4] == "2" and 0.0 <= acc[0] <= 1.0 and len(acc) == 2 and cells[5:] == ["-", "-", "-"], r
    assert (tmp_path / "search_anytime.png").stat().st_size > 5000
    row = next(line for line in text.splitlines() if line.startswith("| random+asha |") and "±" not in line)
    # best so far after a quarter, half and all of the budget: a running maximum never goes down, and with one seed
    # each is a selection-half accuracy printed to 3 decimals ("-" before the first evaluation)
    cols = [c.strip() for c in row.split("|")[2:5]]
    assert all(re.fullmatch(r"\d\.\d{3}|-", c) for c in cols) and cols[2] != "-", row
    seen = [float(c) for c in cols if c != "-"]
    assert seen == sorted(seen) and seen[-1] <= 1.0, row


@pytest.mark.slow
@pytest.mark.ray
def test_benchmark_search_on_the_real_report_layout(tmp_path, cache_dir) -> None:
    """--data real: the trials read the MNIST-M subset -> USPS of ../shared/datasets in the report's layout."""
    from tests.conftest import shared_datasets

    shared = shared_datasets()
    if not (shared / "mnist_m").is_dir() or not (shared / "usps" / "usps.t.bz2").is_file():
        pytest.skip(f"real MNIST-M / USPS files are not in {shared}")
    res = tmp_path / "RESULTS.md"
    p = subprocess.run([sys.executable, "-m", "benchmarks.search", "--quick", "--methods", "report", "--data", "real",
                        "--shared", str(shared), "--results", str(res)], cwd=REPO, capture_output=True, text=True,
                       timeout=900, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stderr[-3000:]
    text = res.read_text()
    assert "DANN real MNIST-M test subset -> USPS test split" in text and "| report |" in text
    assert (tmp_path / "search_anytime_real.png").stat().st_size > 5000
    p = subprocess.run([sys.executable, "-m", "benchmarks.search", "--quick", "--data", "real", "--shared",
                        str(tmp_path / "nowhere")], cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode != 0 and "--data real needs" in p.stderr and "Traceback" not in p.stderr
