"""`gentune status`'s text: a SweepStatus (analysis/status.py) as lines for a terminal."""
from __future__ import annotations

import time

from analysis.status import OUTCOMES, SweepStatus


def fmt_duration(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {(s % 3600) // 60:02d}m"


def fmt_time(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def fmt_value(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def format_status(s: SweepStatus, *, trials: bool = True) -> str:
    lines = [f"sweep {s.name}: {s.state}  ({s.root})"]
    used = s.used_s()
    when = f"started {fmt_time(s.started)}"
    if s.state == "finished":
        lines.append(f"time used: {fmt_duration(used)}  ({when}, last result {fmt_time(s.last_activity)})")
    else:
        ago = None if s.last_activity is None else s.now - s.last_activity
        lines.append(f"time used: {fmt_duration(used)} so far  ({when}, last activity {fmt_duration(ago)} ago)")
        if s.state == "running" and s.driver_alive is None and ago is not None and ago > 1800:
            lines.append("  nothing new for over 30 minutes: a long epoch, or the sweep was interrupted "
                         "(continue it with `gentune sweep SPEC --resume --name NAME`)")
    if s.state == "interrupted":
        lines.append("  the sweep was interrupted: continue it with `gentune sweep SPEC --resume --name NAME` "
                     "(the same spec and --set values)")
    if s.waiting:
        lines.append(f"  waiting: {s.waiting}")
    lines.append(f"MLflow: {s.tracking_uri or '-'}  experiment {s.experiment_id or '-'}")
    for st in s.studies:
        c = st.counts()
        n = len(st.trials)
        planned = f" of {st.planned}" if st.planned else ""
        lines.append("")
        lines.append(f"== study {st.name} ({st.family}), metric {st.metric} ({st.mode}): {st.state}, {n}{planned} trial(s) ==")
        parts = [f"{c[o]} {o}" for o in OUTCOMES if c.get(o)]
        sc = st.state_counts()
        lines.append("trials: " + (", ".join(parts) if parts else "none yet")
                     + ("  [Ray: " + ", ".join(f"{k} {v}" for k, v in sc.items() if v) + "]" if n else ""))
        b = st.best
        if b is not None:
            lines.append(f"best so far: {st.metric}={fmt_value(b.value)}  trial {b.trial_id}"
                         + (f" (run {b.run_name})" if b.run_name else "")
                         + ("  (each trial at its best evaluated epoch: rank_by best)" if st.rank_by == "best" else ""))
        else:
            lines.append(f"best so far: none (no trial has reported {st.metric} yet)")
        used = st.used_s(s.now)
        if not st.time_budget_s:
            lines.append(f"time: {fmt_duration(used)} used; no time budget")
        elif st.state == "not started":
            lines.append(f"time: not started; budget {fmt_duration(st.time_budget_s)}")
        elif st.state == "finished":
            lines.append(f"time: {fmt_duration(used)} used of a {fmt_duration(st.time_budget_s)} budget (finished)")
        else:
            lines.append(f"time: {fmt_duration(used)} used, {fmt_duration(st.left_s(s.now))} left of a "
                         f"{fmt_duration(st.time_budget_s)} budget")
        if trials and st.trials:
            w = max(12, max(len(t.run_name or "") for t in st.trials))
            lines.append(f"  {'trial':<10} {'run':<{w}} {'state':<10} {'outcome':<13} {'epoch':>5} {st.metric:>12}  stop reason")
            for t in st.trials:
                ep = "-" if t.epoch is None else str(t.epoch)
                lines.append(f"  {t.trial_id:<10} {(t.run_name or '-'):<{w}} {t.state:<10} {t.outcome:<13} {ep:>5} "
                             f"{fmt_value(t.value):>12}  {t.stop_reason}")
    for n in s.notes:
        lines.append(f"note: {n}")
    return "\n".join(lines)
