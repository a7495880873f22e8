"""The trials of a sweep side by side, from MLflow: the params that vary, the final and best value of the
study's metric, status and stop reason; sorted best first. Markdown (one table per study) or CSV."""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Any

from analysis.sweepdata import Sweep, varied_params

BASE_COLUMNS = ["trial_id", "status", "stop_reason", "epochs"]


@dataclass
class StudyTable:
    study: str
    family: str
    metric: str
    mode: str
    params: list[str]  # the params that vary between the study's trials
    rows: list[dict[str, Any]] = field(default_factory=list)  # best first

    @property
    def columns(self) -> list[str]:
        return [*BASE_COLUMNS, f"final {self.metric}", f"best {self.metric}", *self.params]


def sort_key(value: float | None, mode: str) -> tuple[int, float]:
    if value is None:
        return (1, 0.0)
    return (0, -value if mode == "max" else value)


def study_table(sweep: Sweep, study: str, metric: str | None = None, mode: str | None = None) -> StudyTable:
    st = sweep.studies[study]
    metric, mode = metric or st.metric, mode or st.mode
    trials = sweep.trials(study)
    params = varied_params(trials)
    table = StudyTable(study, st.family, metric, mode, params)
    for t in trials:
        hist = sweep.history(t, metric) if metric in t.metrics else []
        table.rows.append({
            "trial_id": t.trial_id, "status": t.status, "stop_reason": t.stop_reason,
            "epochs": hist[-1][0] if hist else 0, "final": t.value(metric),
            "best": sweep.best_value(t, metric, mode) if hist else None,
            "params": {k: t.params.get(k) for k in params}, "trial": t,
        })
    tagged = sweep.best_tags.get(study) if (metric, mode) == (st.metric, st.mode) else None
    # ties: the trial the sweep itself named best first, so the table agrees with `gentune sweep`
    table.rows.sort(key=lambda r: (*sort_key(r["final"], mode), r["trial_id"] != tagged))
    return table


def fmt_value(v: Any, precise: bool = False) -> str:
    if v is None:
        return "-" if not precise else ""
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return repr(v) if precise else f"{v:.6g}"
    if isinstance(v, list):
        return " ".join(fmt_value(x, precise) for x in v)
    return str(v)


def table_cells(t: StudyTable, precise: bool = False) -> list[list[str]]:
    out = []
    for r in t.rows:
        out.append([r["trial_id"], r["status"], r["stop_reason"] or "-", str(r["epochs"]), fmt_value(r["final"], precise),
                    fmt_value(r["best"], precise), *(fmt_value(r["params"][k], precise) for k in t.params)])
    return out


def md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(md_escape(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def html_table(columns: list[str], rows: list[list[str]]) -> str:
    from html import escape

    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def to_markdown(tables: list[StudyTable], sweep_name: str) -> str:
    parts = [f"# Trials of sweep {sweep_name}"]
    for t in tables:
        parts.append(f"\n## study {t.study} ({t.family}): {t.metric} ({t.mode}), {len(t.rows)} trial(s)\n")
        parts.append(markdown_table(t.columns, table_cells(t)) if t.rows else "(no trials recorded)")
    return "\n".join(parts) + "\n"


def to_csv(tables: list[StudyTable]) -> str:
    """One CSV for every study: study, trial_id, status, stop_reason, epochs, metric, metric_mode, final, best,
    then the params (one named like a column before it is headed `param.<name>`)."""
    params: list[str] = []
    for t in tables:
        params += [p for p in t.params if p not in params]
    fixed = ["study", *BASE_COLUMNS, "metric", "metric_mode", "final", "best"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*fixed, *(f"param.{p}" if p in fixed else p for p in params)])
    for t in tables:
        for r in t.rows:
            w.writerow([t.study, r["trial_id"], r["status"], r["stop_reason"], r["epochs"], t.metric, t.mode,
                        fmt_value(r["final"], True), fmt_value(r["best"], True),
                        *(fmt_value(r["params"].get(p), True) if p in r["params"] else "" for p in params)])
    return buf.getvalue()


def compare(sweep: Sweep, fmt: str = "md", study: str | None = None) -> str:
    names = [sweep.study(study).name] if study is not None else list(sweep.studies)
    tables = [study_table(sweep, n) for n in names]
    return to_csv(tables) if fmt == "csv" else to_markdown(tables, sweep.name)
