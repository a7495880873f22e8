"""`gentune status`, `compare`, `report` and `export` give the answers recorded in tests/answers/quickstart_smoke.json
on the session's smoke sweep of search/specs/quickstart.yaml (each study ranked on tests/conftest.py SMOKE_METRICS, so
that the best trial of a study is not also its worst).

A change of code must not change what a user is told unless it means to. The record was first checked against
the code from before the refactor of issue 15 (commit 582c97b, which read the same sweep and gave the same
answers exactly); since the GAN study's switch to DiffAugment and FIFO (whose config keys that code cannot read)
the record is the reference. A change that means to change an answer rewrites the record in the same commit
(GENTUNE_WRITE_ANSWERS=1 python -m pytest -m slow tests/test_answers.py), so its diff shows what users are now told.
Trial ids (random), run ids, times and code versions are replaced or left out; everything else (states, outcomes,
metrics, params, best trials, the report's tables and figures, the bundles' configs and metrics) is compared. The
record's sweep may have been trained on another machine, so numbers may differ by the float drift of training on
another CPU (measured up to 8% on the smoke models' losses, one or two images of a split in accuracy) and are
compared to 10% or 0.02.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from pathlib import Path

import pytest

from tests.conftest import gentune

pytestmark = pytest.mark.ray

RECORD = Path(__file__).parent / "answers" / "quickstart_smoke.json"
DROP = {"root", "now", "started", "ended", "last_result", "last_activity", "run_id", "tracking_uri", "experiment_id",
        "used_s", "left_s", "code_version", "sha256", "created", "mlflow_run_id", "epoch_time_s", "notes"}


def _id_labels(compare_csv: str) -> dict[str, str]:
    """{trial id: '<study>/<k>'}, k the trial's rank by its params within the study (ids are random)."""
    rows = list(csv.DictReader(io.StringIO(compare_csv)))
    skip = {"trial_id", "status", "stop_reason", "epochs", "final", "best", "best_epoch", "seed", "sd", "n"}
    by_study: dict[str, list[tuple[str, str]]] = {}
    for r in rows:
        sig = json.dumps({k: v for k, v in r.items() if k not in skip}, sort_keys=True)
        by_study.setdefault(r["study"], []).append((sig, r["trial_id"]))
    return {tid: f"{study}/{k}" for study, items in by_study.items() for k, (_, tid) in enumerate(sorted(items))}


def _clean(obj, labels: dict[str, str]):
    if isinstance(obj, dict):
        return {k: _clean(v, labels) for k, v in sorted(obj.items()) if k not in DROP}
    if isinstance(obj, list):
        return [_clean(v, labels) for v in obj]
    if isinstance(obj, str):
        return re.sub("|".join(map(re.escape, sorted(labels, key=len, reverse=True))) or "$^",
                      lambda m: labels[m.group(0)], obj)
    return obj


def answers(root: Path, out: Path) -> dict:
    """What the CLI answers about the sweep in `root` (its files written under `out`)."""
    compare_csv = gentune("compare", str(root), "--format", "csv").stdout
    labels = _id_labels(compare_csv)
    status = json.loads(gentune("status", str(root), "--json").stdout)
    for st in status["studies"]:
        st["trials"] = sorted(st["trials"], key=lambda t: labels.get(t["trial_id"], t["trial_id"]))
    gentune("report", str(root), "--out", str(out / "report"))
    report_md = (out / "report" / "report.md").read_text()
    bundles = {}
    for study in status["studies"]:
        name = study["name"]
        gentune("export", str(root), "--study", name, "--out", str(out / f"export_{name}"), "--quiet")
        bundles[name] = json.loads((out / f"export_{name}" / "bundle.json").read_text())
    compare_rows = sorted(csv.DictReader(io.StringIO(compare_csv)), key=lambda r: labels[r["trial_id"]])
    return _clean({
        "status": status,
        "compare": compare_rows,
        "report_tables": [line for line in report_md.splitlines() if line.startswith("|")],
        "report_figures": sorted(p.name for p in (out / "report").rglob("*.png")),
        "export": bundles,
    }, labels)


NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def _close(a: float, b: float, drift: bool) -> bool:
    return math.isclose(a, b, rel_tol=0.1, abs_tol=0.02) if drift else math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _diff(a, b, path: str = "", drift: bool = False) -> list[str]:
    """Where two answer trees differ. Floats compare to 1e-9 relative (the same arithmetic, any print); with
    `drift` (a sweep trained on another machine) numbers, also those inside strings, to 10% or 0.02."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}.{k}: only in {'reference' if k in a else 'now'}" for k in sorted(set(a) ^ set(b))]
        return out + [d for k in sorted(set(a) & set(b)) for d in _diff(a[k], b[k], f"{path}.{k}", drift)]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} entries in the reference, {len(b)} now"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _diff(x, y, f"{path}[{i}]", drift)]
    same = a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        same = _close(float(a), float(b), drift)
    elif drift and isinstance(a, str) and isinstance(b, str):
        na, nb = NUMBER.findall(a), NUMBER.findall(b)
        same = (NUMBER.sub("#", a) == NUMBER.sub("#", b) and len(na) == len(nb)
                and all(_close(float(x), float(y), drift) for x, y in zip(na, nb)))
    return [] if same else [f"{path}: reference {a!r}, now {b!r}"]


@pytest.mark.slow  # in .ci/run's slow set: keeps the default run under 10 minutes
def test_status_compare_report_export_answer_as_recorded(smoke_sweep, tmp_path):
    now = answers(smoke_sweep["root"], tmp_path / "now")
    if os.environ.get("GENTUNE_WRITE_ANSWERS"):
        RECORD.parent.mkdir(exist_ok=True)
        RECORD.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
    diffs = _diff(json.loads(RECORD.read_text()), now, drift=True)
    assert not diffs, f"{len(diffs)} answer(s) differ from the record {RECORD.name}:\n" + "\n".join(diffs[:40])
