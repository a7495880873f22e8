"""The best-trial choice on a real MLflow store, with expected values computed independently (issue 26).

A sweep folder is built here by hand: a sweep.json the SweepFile checker accepts and an MLflow SQLite
store (<root>/mlflow.db) whose runs this module logs itself through MLflow's client, tagged the way
search/tracking.py tags them (gentune.kind = study / trial, gentune.study, gentune.family,
gentune.trial_id). Every trial has a distinct final value, so the best and the worst trial differ in
every study, and the expected best is the plain min / max of the values logged here, never a call of
the function under test (analysis.sweepdata.better, Sweep.best_trial, Sweep.pareto, knee, the summary).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient  # at import: mutation testing's test server loads it once for every mutant

from analysis.summary import format_summary
from analysis.sweepdata import Sweep, knee

# study -> (family, metric, mode); every trial: (trial id, params, metric history [(step, value)], MLflow status)
GAN_FID = {  # mode min; the best (12.25, g2) is neither the first nor the last trial logged
    "g1": ({"model": "A"}, [(0, 80.0), (1, 41.5)], "FINISHED"),
    "g2": ({"model": "A"}, [(0, 60.0), (1, 12.25)], "FINISHED"),
    "g3": ({"model": "B"}, [(0, 95.0), (1, 77.0)], "FINISHED"),
    "g4": ({"model": "B"}, [(0, 3.0), (1, 30.5)], "FINISHED"),  # was best at step 0: the final value counts
    "g5": ({"model": "B"}, [(0, 70.0), (1, 55.75)], "FINISHED"),
    "g6": ({"model": "A"}, [(0, 50.0), (1, 20.0)], "FINISHED"),
    "g7": ({"model": "B"}, [(0, 1.0)], "FAILED"),  # better than all, but failed: never the best
    "g8": ({"model": "A"}, [(0, 200.0)], "KILLED"),  # worse than all, not finished: never the best
}
DANN_ACC = {  # mode max; the best (0.83, d3) sits in the middle
    "d1": ({"mode": "dann"}, [(0, 0.41), (1, 0.52)], "FINISHED"),
    "d2": ({"mode": "source-only"}, [(0, 0.30), (1, 0.47)], "FINISHED"),
    "d3": ({"mode": "dann"}, [(0, 0.50), (1, 0.83)], "FINISHED"),
    "d4": ({"mode": "source-only"}, [(0, 0.90), (1, 0.61)], "FINISHED"),  # 0.90 earlier: the final value counts
    "d5": ({"mode": "target-only"}, [(0, 0.20), (1, 0.74)], "FINISHED"),
    "d6": ({"mode": "dann"}, [(0, 0.10), (1, 0.35)], "FINISHED"),
    "d7": ({"mode": "dann"}, [(0, 0.99)], "FAILED"),
}
# (acc max, fid min): a front of five (m1, m4, m6, m8, m11) with one clear knee (m6: 0.80, 12) and seven dominated
MO_POINTS = {"m0": (0.85, 30.0), "m1": (0.95, 50.0), "m2": (0.5, 40.0), "m3": (0.7, 15.0), "m4": (0.9, 20.0),
             "m5": (0.2, 9.0), "m6": (0.8, 12.0), "m7": (0.55, 25.0), "m8": (0.6, 8.0), "m9": (0.92, 60.0),
             "m10": (0.4, 9.5), "m11": (0.3, 5.0)}
MO_OBJECTIVES = (("acc", "max"), ("fid", "min"))
STUDIES = {"gan": ("gan", "fid", "min"), "dann": ("dann", "target_acc", "max"), "mo": ("ddpm", "acc", "max")}


def final(trials: dict) -> dict[str, float]:
    """{trial id: last logged value} of the FINISHED trials: what the test expects the best to be chosen from."""
    return {k: hist[-1][1] for k, (_, hist, status) in trials.items() if status == "FINISHED"}


def _template() -> Path:
    """Where a finished copy of the store below is kept between test processes: making it (MLflow's schema
    migrations, 60 runs) takes seconds, and mutation testing (docs/mutation.md) runs this module once per mutant.
    Its name holds a hash of this file and MLflow's version, so an edit to either makes a new one; what it holds
    is written through MLflow's client only, never by the code under test."""
    import hashlib
    import tempfile
    from importlib.metadata import version

    key = hashlib.sha256(Path(__file__).read_bytes() + version("mlflow").encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"gentune-test-best-trial-{key}"


@pytest.fixture(scope="module")
def sweep_root(tmp_path_factory) -> Path:
    import os
    import shutil

    root = tmp_path_factory.mktemp("best") / "s"
    template = _template()
    if (template / "sweep.json").is_file():
        shutil.copytree(template, root)
        return root
    root.mkdir()
    _build(root)
    part = template.with_name(f"{template.name}.{os.getpid()}")
    shutil.copytree(root, part)
    try:
        os.rename(part, template)  # whole or not at all; another process may have made it first
    except OSError:
        shutil.rmtree(part, ignore_errors=True)
    return root


def _build(root: Path) -> None:
    from mlflow.entities import Metric, Param

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.create_experiment("s", artifact_location=(root / "mlartifacts").as_uri())

    def study_run(name: str, family: str, metric: str, mode: str, **extra: str) -> None:
        r = client.create_run(exp, run_name=name, tags={"gentune.sweep": "s", "gentune.study": name, "gentune.kind": "study",
                                                        "gentune.family": family, "gentune.metric": metric,
                                                        "gentune.mode": mode, **extra})
        client.set_terminated(r.info.run_id, "FINISHED")

    def trial_run(study: str, family: str, tid: str, params: dict, metrics: dict[str, list], status: str) -> None:
        r = client.create_run(exp, run_name=f"{study}-{tid}", tags={
            "gentune.sweep": "s", "gentune.study": study, "gentune.family": family, "gentune.trial_id": tid,
            "gentune.kind": "trial"})
        client.log_batch(r.info.run_id, params=[Param(k, str(v)) for k, v in params.items()],
                         metrics=[Metric(m, v, 1_000 + step, step) for m, hist in metrics.items() for step, v in hist])
        client.set_terminated(r.info.run_id, status)

    for name, (family, metric, mode) in STUDIES.items():
        study_run(name, family, metric, mode)
    for tid, (params, hist, status) in GAN_FID.items():
        trial_run("gan", "gan", tid, params, {"fid": hist}, status)
    for tid, (params, hist, status) in DANN_ACC.items():
        trial_run("dann", "dann", tid, params, {"target_acc": hist}, status)
    for tid, (acc, fid) in MO_POINTS.items():
        trial_run("mo", "ddpm", tid, {"guidance": "[0.0, 1.0]"}, {"acc": [(0, acc)], "fid": [(0, fid)]}, "FINISHED")
    info = {"name": "s", "studies": list(STUDIES), "local_store": True, "experiment_id": exp, "experiment": "s",
            "families": {k: v[0] for k, v in STUDIES.items()}, "metrics": {k: [v[1], v[2]] for k, v in STUDIES.items()},
            "objectives": {"mo": [list(o) for o in MO_OBJECTIVES]},
            "trials": {"gan": len(GAN_FID), "dann": len(DANN_ACC), "mo": len(MO_POINTS)}, "state": "finished"}
    (root / "sweep.json").write_text(json.dumps(info, indent=2))


def test_the_store_holds_what_was_logged(sweep_root) -> None:
    """The reading side sees each trial's final value and status as logged (so the checks below compare like with like)."""
    sw = Sweep(sweep_root)
    got = {t.trial_id: (t.status, t.metrics.get("fid", t.metrics.get("target_acc"))) for t in sw.all_trials if t.study != "mo"}
    want = {k: (s, h[-1][1]) for k, (_, h, s) in {**GAN_FID, **DANN_ACC}.items()}
    assert got == want
    assert (sw.studies["gan"].mode, sw.studies["dann"].mode) == ("min", "max")


@pytest.mark.parametrize("study, trials, metric", [("gan", GAN_FID, "fid"), ("dann", DANN_ACC, "target_acc")])
@pytest.mark.parametrize("mode", ["min", "max"])
def test_best_trial_is_the_plain_min_or_max_of_the_logged_final_values(sweep_root, study, trials, metric, mode) -> None:
    vals = final(trials)
    assert len(set(vals.values())) == len(vals) >= 5  # distinct: best, worst and the rest all differ
    pick = min if mode == "min" else max
    expect = pick(vals, key=vals.__getitem__)
    worst = (max if mode == "min" else min)(vals, key=vals.__getitem__)
    assert expect != worst
    best = Sweep(sweep_root).best_trial(study, metric, mode)
    assert best is not None and best.trial_id == expect, (mode, vals, best and best.trial_id)
    assert best.value(metric) == vals[expect]


def test_best_trial_defaults_to_the_study_metric_and_mode(sweep_root) -> None:
    sw = Sweep(sweep_root)
    g, d = final(GAN_FID), final(DANN_ACC)
    assert sw.best_trial("gan").trial_id == min(g, key=g.__getitem__) == "g2"
    assert sw.best_trial("dann").trial_id == max(d, key=d.__getitem__) == "d3"


@pytest.mark.parametrize("mode", ["min", "max"])
def test_best_trial_where_filters_before_choosing(sweep_root, mode) -> None:
    pick = min if mode == "min" else max
    for model in ("A", "B"):
        vals = {k: v for k, v in final(GAN_FID).items() if GAN_FID[k][0]["model"] == model}
        expect = pick(vals, key=vals.__getitem__)
        assert Sweep(sweep_root).best_trial("gan", "fid", mode, where={"model": model}).trial_id == expect


def test_summary_names_the_best_trial_of_each_family(sweep_root) -> None:
    """`gentune summary` (analysis.summary): the GAN row is the min fid (the study's metric), each DANN mode's row
    the max target_acc of that mode, the DDPM row the max acc; all from the values logged here."""
    lines = format_summary(Sweep(sweep_root)).splitlines()
    col = lines[1].rindex("trial")  # the header's "trial" column (after "trial of")
    picked = {line[:col].split(None, 1)[1].strip(): line[col:].split()[0] for line in lines[2:]}
    g, acc = final(GAN_FID), {k: a for k, (a, _) in MO_POINTS.items()}
    want = {f"best by fid (model {GAN_FID[min(g, key=g.__getitem__)][0]['model']})": min(g, key=g.__getitem__),
            "best by acc (fresh samples at best w)": max(acc, key=acc.__getitem__)}
    for mode in ("source-only", "dann", "target-only"):
        vals = {k: v for k, v in final(DANN_ACC).items() if DANN_ACC[k][0]["mode"] == mode}
        want[f"{mode} (? -> ?)"] = max(vals, key=vals.__getitem__)
    assert picked == want, "\n".join(lines)


def brute_front(points: dict[str, tuple[float, ...]], modes: tuple[str, ...]) -> set[str]:
    """Pareto-optimal keys by brute force: no other point at least as good everywhere and strictly better somewhere."""
    keys = list(points)
    a = np.array([points[k] for k in keys], dtype=float) * np.array([1.0 if m == "max" else -1.0 for m in modes])
    ge = (a[:, None, :] >= a[None, :, :]).all(-1)  # ge[j, i]: j at least as good as i everywhere
    gt = (a[:, None, :] > a[None, :, :]).any(-1)
    dominated = (ge & gt).any(0)
    return {k for k, d in zip(keys, dominated) if not d}


def brute_knee(points: dict[str, tuple[float, ...]], modes: tuple[str, ...]) -> str:
    """The front point nearest the ideal corner after min-max scaling each objective over the front (0 = ideal);
    ties: the better first objective, then the first key in sorted order."""
    keys = sorted(points)
    a = np.array([points[k] for k in keys], dtype=float)
    lo, hi = a.min(0), a.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    badness = np.where(np.array(modes) == "min", (a - lo) / span, (hi - a) / span)
    badness[:, hi == lo] = 0.0
    d = (badness**2).sum(1)
    first = a[:, 0] if modes[0] == "min" else -a[:, 0]
    order = np.lexsort((np.arange(len(keys)), first, d))
    return keys[int(order[0])]


def test_pareto_front_and_knee_of_a_stored_study_against_brute_force(sweep_root) -> None:
    sw = Sweep(sweep_root)
    front = sw.pareto("mo")
    expect = brute_front(MO_POINTS, ("max", "min"))
    assert set(front) == expect == {"m1", "m4", "m6", "m8", "m11"}, (sorted(front), sorted(expect))
    assert front == {k: MO_POINTS[k] for k in expect}
    assert knee(front, ("max", "min")) == brute_knee({k: MO_POINTS[k] for k in expect}, ("max", "min")) == "m6"


def test_a_tie_goes_to_the_trial_the_sweep_tagged_best(sweep_root, tmp_path) -> None:
    """Two trials tie on the best value: the study run's gentune.best_trial_id names the one to report (either of
    the two); without the tag, the first logged. (A second experiment in the same store, read by a sweep folder
    that names the store by its URI.)"""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{sweep_root / 'mlflow.db'}"
    c = MlflowClient(tracking_uri=uri)
    exp = c.create_experiment("ties", artifact_location=(tmp_path / "mlartifacts").as_uri())
    studies = {"x1": "t1", "x2": "t2", "x0": ""}
    for study, tagged in studies.items():
        tags = {"gentune.best_trial_id": tagged} if tagged else {}
        r = c.create_run(exp, tags={"gentune.study": study, "gentune.kind": "study", **tags})
        c.set_terminated(r.info.run_id)
        for i, (tid, v) in enumerate((("t0", 0.2), ("t1", 0.7), ("t2", 0.7), ("t3", 0.5))):
            r = c.create_run(exp, start_time=1_000 + i, tags={"gentune.study": study, "gentune.family": "dann",
                                                              "gentune.trial_id": tid, "gentune.kind": "trial"})
            c.log_metric(r.info.run_id, "target_acc", v, step=0)
            c.set_terminated(r.info.run_id)
    (tmp_path / "sweep.json").write_text(json.dumps({
        "name": "ties", "studies": list(studies), "tracking_uri": uri, "local_store": False, "experiment_id": exp,
        "families": {s: "dann" for s in studies}, "metrics": {s: ["target_acc", "max"] for s in studies}}))
    from analysis.summary import _best

    sw = Sweep(tmp_path)
    for study, tagged in studies.items():
        assert sw.best_trial(study).trial_id == (tagged or "t1"), study
        assert sw.best_trial(study).value("target_acc") == 0.7
        assert _best(sw, sw.trials(study), "target_acc", "max").trial_id == (tagged or "t1"), study  # `summary` too


def test_the_report_picks_across_studies_by_what_each_study_ranks(sweep_root, tmp_path) -> None:
    """Two studies of one family, both `rank_by: best`: the report's pick over both (Report.best_across, its GAN and
    DDPM sections) is the trial with the best evaluated epoch, 0.9 (peak, whose last epoch fell to 0.2), not the
    best last value, 0.6 (steady). Expected: the max over every logged value, worked out here."""
    from analysis.report import Report

    uri = f"sqlite:///{sweep_root / 'mlflow.db'}"
    c = MlflowClient(tracking_uri=uri)
    exp = c.create_experiment("across", artifact_location=(tmp_path / "mlartifacts").as_uri())
    logged = {"p1": {"peak": [(1, 0.9), (2, 0.2)]}, "p2": {"steady": [(1, 0.5), (2, 0.6)]}}
    for study, trials in logged.items():
        c.set_terminated(c.create_run(exp, tags={"gentune.study": study, "gentune.kind": "study",
                                                 "gentune.rank_by": "best"}).info.run_id)  # as search/sweep.py tags it
        for tid, hist in trials.items():
            r = c.create_run(exp, tags={"gentune.study": study, "gentune.family": "ddpm", "gentune.trial_id": tid,
                                        "gentune.kind": "trial"})
            for step, v in hist:
                c.log_metric(r.info.run_id, "acc", v, step=step)
            c.set_terminated(r.info.run_id)
    (tmp_path / "sweep.json").write_text(json.dumps({
        "name": "across", "studies": list(logged), "tracking_uri": uri, "local_store": False, "experiment_id": exp,
        "families": {s: "ddpm" for s in logged}, "metrics": {s: ["acc", "max"] for s in logged},
        "rank_by": {s: "best" for s in logged}}))  # as run_sweep writes it
    every = {tid: hist for trials in logged.values() for tid, hist in trials.items()}
    want = max(every, key=lambda tid: max(v for _, v in every[tid]))
    last = max(every, key=lambda tid: every[tid][-1][1])
    assert (want, last) == ("peak", "steady")  # the two rules disagree here
    rep = Report(Sweep(tmp_path), tmp_path / "report", device="cpu")
    assert rep.best_across("ddpm").trial_id == want
