"""The trials of a sweep side by side, from MLflow: the params that vary, the final and best value of the
study's metric (and the best one's epoch), status and stop reason; sorted best first by the study's rank_by.
A configuration repeated over seeds shows its seeds' aggregate, their standard deviation and n; the CSV also
has a row per seed. Markdown (one table per study) or CSV."""
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
    rank_by: str = "last"
    repeats: int = 1
    rows: list[dict[str, Any]] = field(default_factory=list)  # best first

    @property
    def columns(self) -> list[str]:
        spread = ["sd", "n"] if self.repeats > 1 else []
        return [*BASE_COLUMNS, f"final {self.metric}", f"best {self.metric}", "best epoch", *spread, *self.params]


def sort_key(value: float | None, mode: str) -> tuple[int, float]:
    if value is None:
        return (1, 0.0)
    return (0, -value if mode == "max" else value)


def study_table(sweep: Sweep, study: str, metric: str | None = None, mode: str | None = None) -> StudyTable:
    st = sweep.studies[study]
    metric, mode = metric or st.metric, mode or st.mode
    trials = sweep.trials(study)
    params = varied_params(trials)
    table = StudyTable(study, st.family, metric, mode, params, st.rank_by, st.repeats)
    for t in trials:
        row = trial_row(sweep, t, metric, mode, st.rank_by)
        row["params"], row["trial"] = {k: t.params.get(k) for k in params}, t
        row["seeds"] = [trial_row(sweep, s, metric, mode, st.rank_by) for s in sweep.seeds(t)]
        table.rows.append(row)
    tagged = sweep.best_tags.get(study) if (metric, mode) == (st.metric, st.mode) else None
    # ranked as the study ranks (its last or its best epoch); ties: the trial the sweep itself named best first
    table.rows.sort(key=lambda r: (*sort_key(r[st.rank_by if st.rank_by == "best" else "final"], mode), r["trial_id"] != tagged))
    return table


def trial_row(sweep: Sweep, t, metric: str, mode: str, rank_by: str) -> dict[str, Any]:
    """A trial's (or one seed's) cells: final and best value, best epoch, and for a configuration repeated over
    seeds the sd and n of its seeds at the epoch it is ranked by."""
    hist = sweep.history(t, metric) if metric in t.metrics else []
    peak = sweep.best_epoch(t, metric, mode) if hist else None
    sd = None
    if f"{metric}_sd" in t.metrics:
        at = peak[0] if rank_by == "best" and peak else None
        sds = dict(sweep.history(t, f"{metric}_sd"))
        sd = sds.get(at) if at is not None else t.metrics[f"{metric}_sd"]
    return {"trial_id": t.trial_id, "status": t.status, "stop_reason": t.stop_reason, "epochs": hist[-1][0] if hist else 0,
            "final": t.value(metric), "best": peak[1] if peak else None, "best_epoch": peak[0] if peak else None,
            "sd": sd, "n": int(t.metrics.get("n_seeds", 1)), "seed": t.params.get("seed")}


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
        spread = [fmt_value(r["sd"], precise), str(r["n"])] if t.repeats > 1 else []
        out.append([r["trial_id"], r["status"], r["stop_reason"] or "-", str(r["epochs"]), fmt_value(r["final"], precise),
                    fmt_value(r["best"], precise), fmt_value(r["best_epoch"]), *spread,
                    *(fmt_value(r["params"][k], precise) for k in t.params)])
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
    best_epoch, seed, sd, n, then the params (one named like a column before it is headed `param.<name>`).
    A configuration repeated over seeds is a row of its aggregate (seed empty, sd and n of its seeds) followed
    by a row per seed (trial_id `<trial>:s<seed>`, n 1)."""
    params: list[str] = []
    for t in tables:
        params += [p for p in t.params if p not in params]
    fixed = ["study", *BASE_COLUMNS, "metric", "metric_mode", "final", "best", "best_epoch", "seed", "sd", "n"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*fixed, *(f"param.{p}" if p in fixed else p for p in params)])
    for t in tables:
        for r in t.rows:
            for one in [r, *r["seeds"]]:
                w.writerow([t.study, one["trial_id"], one["status"], one["stop_reason"], one["epochs"], t.metric, t.mode,
                            fmt_value(one["final"], True), fmt_value(one["best"], True), fmt_value(one["best_epoch"], True),
                            "" if one is r and r["seeds"] else fmt_value(one["seed"], True), fmt_value(one["sd"], True),
                            one["n"], *(fmt_value(r["params"].get(p), True) if p in r["params"] else "" for p in params)])
    return buf.getvalue()


def compare(sweep: Sweep, fmt: str = "md", study: str | None = None) -> str:
    names = [sweep.study(study).name] if study is not None else list(sweep.studies)
    tables = [study_table(sweep, n) for n in names]
    return to_csv(tables) if fmt == "csv" else to_markdown(tables, sweep.name)
