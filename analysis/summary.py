"""What each family of a sweep reached, in a few lines: the best GAN's face rate / diversity / FID, the
best DDPM's accuracy on fresh samples at its chosen w, and the report's DANN table (target accuracy
of the best source-only, DANN and target-only trial); any other family, the best trial of each study
by its metric. Read from the sweep's MLflow store."""
from __future__ import annotations

from analysis.sweepdata import Sweep, Trial

DANN_MODES = ("source-only", "dann", "target-only")


def _best(sweep: Sweep, trials: list[Trial], metric: str, mode: str) -> Trial | None:
    """The best trial as its study ranks them (budget.rank_by: last or best epoch), its values of that epoch."""
    best = sweep.best_of(trials, metric, mode)
    if best is None:
        return None
    st = sweep.studies.get(best.study)
    peak = sweep.best_epoch(best, metric, mode) if st is not None and st.rank_by == "best" else None
    return best if peak is None else sweep.at_epoch(best, peak[0])


def _f(t: Trial, key: str, fmt: str = "{:.3f}") -> str:
    v = t.value(key)
    return "-" if v is None else fmt.format(v)


def gan(sweep: Sweep, gan: list[Trial]) -> list[list[str]]:
    metrics = {(sweep.studies[t.study].metric, sweep.studies[t.study].mode) for t in gan if t.study in sweep.studies}
    metric, mode = sorted(metrics)[0] if len(metrics) == 1 else ("face_score", "max")
    if (t := _best(sweep, gan, metric, mode)) is None:
        return []
    return [["gan", f"best by {metric} (model {t.params.get('model', '?')})", t.trial_id,
             f"face rate {_f(t, 'face_rate')}, diversity {_f(t, 'diversity')}, FID {_f(t, 'fid', '{:.1f}')}"]]


def ddpm(sweep: Sweep, trials: list[Trial]) -> list[list[str]]:
    if (t := _best(sweep, trials, "acc", "max")) is None:
        return []
    return [["ddpm", "best by acc (fresh samples at best w)", t.trial_id,
             f"acc {_f(t, 'acc')} at w={_f(t, 'best_w', '{:g}')} (chance 0.100; evaluator {_f(t, 'evaluator_val_acc')})"]]


def dann(sweep: Sweep, trials: list[Trial]) -> list[list[str]]:
    rows = []
    for m in DANN_MODES:
        t = _best(sweep, [t for t in trials if t.params.get("mode", "dann") == m], "target_acc", "max")
        if t is not None:
            domains = f"{t.params.get('source.domain', '?')} -> {t.params.get('target.domain', '?')}"
            rows.append(["dann", f"{m} ({domains})", t.trial_id,
                         f"target test acc {_f(t, 'target_test_acc')} (selection {_f(t, 'target_acc')}), "
                         f"source acc {_f(t, 'source_acc')}"])
    return rows


def generic(family: str, sweep: Sweep, trials: list[Trial]) -> list[list[str]]:
    """A family without its own rows: the best finished trial of each of its studies, by the study's metric."""
    rows = []
    for st in sweep.studies.values():
        if st.family == family and (t := _best(sweep, [t for t in trials if t.study == st.name], st.metric, st.mode)):
            rows.append([family, f"best by {st.metric} (study {st.name})", t.trial_id, f"{st.metric} {_f(t, st.metric)}"])
    return rows


def summary_rows(sweep: Sweep) -> list[list[str]]:
    """[family, what, trial, value(s)] rows, from the function each family's registry entry names in
    `summary` ("module:function": fn(sweep, its finished trials) -> rows), else `generic`."""
    from trainables.families import hook, known

    finished = [t for t in sweep.all_trials if t.status == "FINISHED"]
    rows: list[list[str]] = []
    for name in known():
        trials = [t for t in finished if t.family == name]
        if trials:
            own = hook(name, "summary")
            rows += own(sweep, trials) if own else generic(name, sweep, trials)
    return rows


def format_summary(sweep: Sweep) -> str:
    rows = summary_rows(sweep)
    if not rows:
        return f"sweep {sweep.name}: no finished trial reported its metric yet"
    head = ["family", "trial of", "trial", "reached"]
    w = [max(len(r[i]) for r in [head, *rows]) for i in range(3)]
    ranked = sorted({st.rank_by for st in sweep.studies.values()})
    which = {"last": "final values", "best": "values at each trial's best evaluated epoch"}
    lines = [f"What sweep {sweep.name} reached (finished trials, {'; '.join(which[r] for r in ranked) or 'final values'}):",
             "  ".join(h.ljust(w[i]) if i < 3 else h for i, h in enumerate(head))]
    lines += ["  ".join(c.ljust(w[i]) if i < 3 else c for i, c in enumerate(r)) for r in rows]
    return "\n".join(lines)
