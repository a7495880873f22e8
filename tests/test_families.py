"""The family registry: a fourth family, declared in tests/toy_family.py and named in GENTUNE_FAMILIES,
runs through gentune train, a 2-trial sweep, export, report, status, compare and summary without any change to
gentune's own files."""
from __future__ import annotations

import json

import pytest

from tests.conftest import REPO, gentune
from trainables.errors import SpecError

TOY_ENV = {"GENTUNE_FAMILIES": "tests.toy_family", "PYTHONPATH": str(REPO)}
TOY_SPEC = """\
name: toy
family: toy
config: {epochs: 3, steps_per_epoch: 10, batch_size: 64}
search:
  lr: {loguniform: [1.0e-3, 1.0e-2]}
  hidden: {choice: [32, 64]}
budget: {trials: 2, scheduler: fifo}
resources: {cpu: 1, gpu: 0}
"""


@pytest.fixture
def toy_registered():
    """The toy family registered in this process for one test, and gone afterwards."""
    import importlib
    import sys

    from trainables.families import FAMILIES, load_plugins

    if "tests.toy_family" in sys.modules:
        importlib.reload(sys.modules["tests.toy_family"])  # registers again
    else:
        load_plugins("tests.toy_family")
    try:
        yield
    finally:
        FAMILIES.pop("toy", None)


def test_unknown_family_names_the_known_ones():
    from search.spec import parse_spec
    from trainables.families import family

    with pytest.raises(SpecError, match="unknown family 'gann'; expected one of gan, ddpm, dann"):
        family("gann")
    with pytest.raises(SpecError, match="unknown family 'toy'"):
        parse_spec({"family": "toy", "config": {}})


def test_a_registered_family_parses_and_trains_in_process(cache_dir, toy_registered):
    """Registering is all it takes: the spec parser knows its keys and metric, fit() trains it."""
    from search.spec import parse_spec
    from trainables.loop import fit

    st = parse_spec({"family": "toy", "config": {"epochs": 2, "steps_per_epoch": 5},
                     "search": {"lr": {"loguniform": [1e-3, 1e-2]}}}).studies[0]
    assert (st.metric, st.mode) == ("val_acc", "max")
    with pytest.raises(SpecError, match="toy trials do not report 'acc'; expected one of val_acc"):
        parse_spec({"family": "toy", "metric": "acc"})
    with pytest.raises(SpecError, match="config.width: unknown config key"):
        parse_spec({"family": "toy", "config": {"width": 8}})
    seen = []
    assert fit("toy", {"epochs": 2, "steps_per_epoch": 20, "lr": 5e-3}, lambda e: seen.append(e.metrics), quiet=True) is None
    assert [m["epoch"] for m in seen] == [1, 2] and seen[-1]["val_acc"] > 0.3  # 10 classes: chance is 0.1


def test_missing_family_module_is_one_line(tmp_path):
    spec = tmp_path / "toy.yaml"
    spec.write_text(TOY_SPEC)
    p = gentune("sweep", str(spec), "--storage", str(tmp_path / "s"), env={"GENTUNE_FAMILIES": "no_such_module"}, check=False)
    assert p.returncode != 0
    err = [line for line in p.stderr.strip().splitlines() if line.strip()]
    assert len(err) == 1 and "GENTUNE_FAMILIES" in err[0] and "no_such_module" in err[0], p.stderr


@pytest.mark.slow
def test_fourth_family_end_to_end(tmp_path, cache_dir, toy_registered):
    spec = tmp_path / "toy.yaml"
    spec.write_text(TOY_SPEC)
    p = gentune("train", str(spec), "--out", str(tmp_path / "train"), "--quiet", env=TOY_ENV)
    hist = [json.loads(line) for line in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [1, 2, 3] and hist[-1]["val_acc"] > 0.3, hist

    gentune("sweep", str(spec), "--storage", str(tmp_path / "runs"), "--quiet", env=TOY_ENV)
    root = tmp_path / "runs" / "toy"
    st = json.loads(gentune("status", str(root), "--json", env=TOY_ENV).stdout)
    (study,) = st["studies"]
    assert st["state"] == "finished" and {k: v for k, v in study["counts"].items() if v} == {"completed": 2}, study
    best = study["best"]
    assert best["value"] > 0.3

    csv = gentune("compare", str(root), "--format", "csv", env=TOY_ENV).stdout
    assert best["trial_id"] in csv and "val_acc" in csv
    summary = gentune("summary", str(root), env=TOY_ENV).stdout  # no rows of its own: the generic best-trial row
    assert f"best by val_acc (study toy)  {best['trial_id']}  val_acc {best['value']:.3f}" in summary, summary

    p = gentune("export", str(root), "--out", str(tmp_path / "bundle"), env=TOY_ENV)
    meta = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert meta["family"] == "toy" and meta["trial_id"] == best["trial_id"], p.stderr
    assert abs(meta["metrics"]["val_acc"] - best["value"]) < 1e-9
    from analysis.export import load_bundle

    b = load_bundle(tmp_path / "bundle", "toy")  # weights verified and loaded strictly into the toy model
    assert set(b.models) == {"model"}

    gentune("report", str(root), "--out", str(tmp_path / "report"), env=TOY_ENV)
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| toy | toy | val_acc (max) | 2 | 2 |" in md
    # the family's own section, drawn by the function its registry entry names, from the best checkpoint
    own = md.split("## Toy: per-digit accuracy", 1)[1].split("\n## ", 1)[0]
    assert f"| all | {100 * best['value']:.2f}% |" in own, own
    assert (tmp_path / "report" / "sweep_toy_metric.png").stat().st_size > 1000
