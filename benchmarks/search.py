"""python -m benchmarks.search: what gentune's search finds for a given budget, as the HPO literature measures it.

    python -m benchmarks.search [--seeds 0,1,2] [--budget 48] [--results benchmarks/RESULTS.md]
                                [--data demo|real [--shared ../shared/datasets]] [--quick]

On the DANN task (MNIST-M-like -> USPS-like demo data; with --data real the MNIST-M test subset -> USPS
test split of ../shared/datasets, in the report's folder layout), with search/specs/dann.yaml's search space, at
equal compute counted in trial-epochs (every epoch any trial trains, evaluated or not):

  report       the report's configuration (lambda 0.3 fixed, Adam 1e-3), one trial per seed
  random+fifo  Optuna's random sampler, every trial runs all its epochs
  random+asha  random sampler, ASHA stops weak trials at evaluated epochs
  tpe+fifo     Optuna's TPE, FIFO
  tpe+asha     TPE + ASHA (gentune's default: a trial ASHA stops reaches Optuna as PRUNED)
  tpe+asha-complete  the same, but a stopped trial is told to Optuna as Ray's OptunaSearch tells it (COMPLETE at
               its rung value, as if its 2-epoch accuracy were a final one): what that choice changes

Each search method starts from the report's configuration (start_from, as the shipped spec) and gets
`--budget` trial-epochs (FIFO: budget / epochs trials; ASHA: twice as many trials, its curve cut
at the budget). The anytime curve is the best target accuracy (the selection half, the number that
ranks trials) found so far against trial-epochs used, in the order the epochs finished. The table
gives it at 1/4, 1/2 and all of the budget, mean +- standard deviation over seeds, and how many
trial-epochs TPE + ASHA needed to reach random + FIFO's final best. A second table shows how far each
selection criterion's pick (target_acc with labels; source_acc and dev_risk without) is from the
best held-out test accuracy among the same trials.

One run is one seed, and on this task the seed moves the result as much as the configuration does. So each
method's pick (the configuration its sweep ranks first) is then trained again, from scratch at the same size,
with --retrain-seeds fresh seeds (100, 101, ...: the same ones for every pick, so that the picks are compared on
equal draws), and the third table gives the quality of the configuration found: its held-out test accuracy at
its best epoch by the selection half (as a sweep ranks and exports, rank_by: best), mean +- sd over every pick
and fresh seed, with Welch's two-sample t-test against tpe+asha
(gentune's default); a difference is called real only at p < 0.05.

Every sweep is a real `gentune sweep` (Ray Tune, Optuna, MLflow) in a temporary folder, one Ray
instance for all of them, two trials at a time on one CPU each.
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("report", "random+fifo", "random+asha", "tpe+fifo", "tpe+asha", "tpe+asha-complete")
RETRAIN_SEED = 100  # the first fresh seed of the re-training
CRITERIA = (("target_acc", "max"), ("source_acc", "max"), ("dev_risk", "min"))
DATA = {"demo": "demo MNIST-M-like -> USPS-like", "real": "real MNIST-M test subset -> USPS test split (report layout)"}


def real_layout(a: argparse.Namespace, tmp: Path) -> list[str]:
    """The report's digits/ layout built from --shared (as the GPU check builds it); the --set values that read it."""
    from benchmarks.gpu_check import build_report_layout

    shared = Path(a.shared).expanduser()
    if not (shared / "mnist_m" / "mnist_m_test_labels.txt").is_file() or not (shared / "usps" / "usps.t.bz2").is_file():
        raise SystemExit(f"benchmarks.search: --data real needs mnist_m/mnist_m_test_labels.txt and usps/usps.t.bz2 "
                         f"in {shared} (--shared)")
    root = tmp / "report-data"
    build_report_layout(shared, root)
    return [f"{side}.{k}={v}" for side, dom in (("source", "mnistm"), ("target", "usps"))
            for k, v in (("source", "report"), ("root", str(root)), ("domain", dom))]


def overrides(method: str, seed: int, a: argparse.Namespace) -> list[str]:
    sizes = [f"epochs={a.epochs}", f"eval_every={a.eval_every}", f"steps_per_epoch={a.steps}", f"batch_size={a.batch}",
             "resources.gpu=0", "resources.cpu=1", "concurrency=2", f"seed={seed}", *a.data_sets]
    if method == "report":
        return sizes + ["lr=0.001", "lamb=0.3", "lambda_schedule=fixed", "budget.trials=1", "budget.scheduler=fifo"]
    searcher, scheduler = method.split("+")
    scheduler = scheduler.split("-")[0]
    fifo_trials = max(1, a.budget // a.epochs)
    trials = fifo_trials if scheduler == "fifo" else 2 * fifo_trials
    extra = [f"budget.grace_period={a.eval_every}", "budget.reduction_factor=2"] if scheduler == "asha" else []
    return sizes + [f"budget.trials={trials}", f"budget.scheduler={scheduler}", f"budget.searcher={searcher}", *extra]


def run_method(method: str, seed: int, a: argparse.Namespace, storage: Path) -> tuple[list[dict], dict | None]:
    """One sweep; every epoch of every trial as {t, trial, epoch, metrics...}, in the order epochs finished, and
    the configuration the sweep ranks first (its trial's flat config; None if no trial reported the metric)."""
    import functools

    import search.sweep as driver
    from search.spec import load_spec
    from search.sweep import result_trial_id, run_sweep

    spec = load_spec(ROOT / "search/specs/dann.yaml", overrides(method, seed, a))
    told = driver.evaluated_optuna_search
    if method.endswith("-complete"):
        driver.evaluated_optuna_search = functools.partial(told, stopped_as="complete")
    try:
        out = run_sweep(spec, storage=str(storage), name=f"{method.replace('+', '-')}-s{seed}", address=None,
                        resume=False, quiet=True)
    finally:
        driver.evaluated_optuna_search = told
    rows, pick = [], None
    for st, (grid, best) in out["results"].items():
        pick = dict(best.config) if best is not None else None
        for r in grid:
            df = r.metrics_dataframe
            if df is None:
                continue
            tid = result_trial_id(r)
            for rec in df.to_dict("records"):
                rows.append({"trial": tid, **{k: rec[k] for k in rec if isinstance(rec[k], (int, float))}})
    rows.sort(key=lambda x: (x.get("timestamp", 0), x.get("time_total_s", 0)))
    return rows, pick


def retrain(picks: dict[tuple[str, int], dict], n: int) -> dict[tuple[str, int], list[dict]]:
    """Each pick trained again with seeds RETRAIN_SEED .. + n - 1, two at a time as Ray tasks (one CPU each), by
    the trials' own training loop; {(method, sweep seed): [best evaluated epoch's metrics, per fresh seed]}."""
    import ray

    @ray.remote(num_cpus=1)
    def one(config: dict) -> dict:
        """The run's best evaluated epoch by target_acc (the selection half; of equal values the later), as a
        sweep ranks and exports a trial (rank_by: best, the default)."""
        from trainables.loop import fit

        evaluated: list[dict] = []
        fit("dann", config, lambda e: evaluated.append(dict(e.metrics)) if "target_acc" in e.metrics else None, quiet=True)
        best: dict = {}
        for m in evaluated:
            if not best or m["target_acc"] >= best["target_acc"]:
                best = m
        return best

    jobs = {(key, k): one.remote({**cfg, "seed": RETRAIN_SEED + k}) for key, cfg in picks.items() for k in range(n)}
    out: dict[tuple[str, int], list[dict]] = {}
    for (key, k), ref in jobs.items():
        out.setdefault(key, []).append(ray.get(ref))
    return out


def retrain_table(runs: dict[str, dict[int, list[dict]]], trained: dict[tuple[str, int], list[dict]], n: int) -> list[str]:
    """Per method: the held-out test accuracy of its picks trained again (mean +- sd, n), the same on the selection
    half, and Welch's t-test of the test accuracies against tpe+asha's."""
    from scipy.stats import ttest_ind

    def values(m: str, metric: str) -> list[float]:
        return [float(r[metric]) for (mm, _), rs in trained.items() if mm == m for r in rs
                if isinstance(r.get(metric), (int, float)) and not math.isnan(r[metric])]

    ref = values("tpe+asha", "target_test_acc")
    lines = [f"| method | its search's best (one run; selection half) | re-trained: test acc (held out) | re-trained: selection half | n | difference from tpe+asha | Welch t-test p | exceeds the spread (p < 0.05) |",
             "|---|---|---|---|---|---|---|---|"]
    for m, by_seed in runs.items():
        test = values(m, "target_test_acc")
        found = [c[-1][1] for c in (anytime(rows) for rows in by_seed.values()) if c]
        diff, p = "-", "-"
        verdict = "-"
        if m != "tpe+asha" and len(test) > 1 and len(ref) > 1:
            d = statistics.mean(test) - statistics.mean(ref)
            pv = float(ttest_ind(test, ref, equal_var=False).pvalue)
            diff, p = f"{d:+.3f}", ("1" if math.isnan(pv) else f"{pv:.3f}")  # nan: both constant and equal
            verdict = "yes" if pv < 0.05 else "no"
        lines.append(f"| {m} | {mean_sd(found)} | {mean_sd(test)} | {mean_sd(values(m, 'target_acc'))} | {len(test)} | "
                     f"{diff} | {p} | {verdict} |")
    return lines


def anytime(rows: list[dict], metric: str = "target_acc") -> list[tuple[int, float]]:
    """(trial-epochs used, best metric so far) after each evaluated epoch."""
    best, out = -math.inf, []
    for used, r in enumerate(rows, 1):
        v = r.get(metric)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            best = max(best, v)
            out.append((used, best))
    return out


def best_at(curve: list[tuple[int, float]], budget: float) -> float:
    vals = [b for used, b in curve if used <= budget]
    return vals[-1] if vals else float("nan")


def epochs_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((used for used, b in curve if b >= target - 1e-12), None)


def picks(rows: list[dict]) -> dict[str, float]:
    """For each selection criterion: the held-out test accuracy of its pick minus the best test accuracy
    among the same trials (each trial's last evaluation)."""
    last: dict[str, dict] = {}
    for r in rows:
        if r.get("target_acc") is not None and not math.isnan(r["target_acc"]):
            last[r["trial"]] = r
    if not last:
        return {}
    oracle = max(r["target_test_acc"] for r in last.values())
    out = {}
    for metric, mode in CRITERIA:
        have = [r for r in last.values() if r.get(metric) is not None and not math.isnan(r[metric])]
        if have:
            pick = (max if mode == "max" else min)(have, key=lambda r: r[metric])
            out[metric] = pick["target_test_acc"] - oracle
    return out


def mean_sd(xs: list[float]) -> str:
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return "-"
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


def plot(curves: dict[str, list[list[tuple[int, float]]]], budget: int, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.2))
    grid = np.arange(1, budget + 1)
    for method, runs in curves.items():
        ys = np.array([[best_at(c, g) for g in grid] for c in runs], dtype=float)
        m = np.nanmean(ys, axis=0)
        (line,) = ax.plot(grid, m, label=method, lw=2 if method == "tpe+asha" else 1.3)
        if len(runs) > 1:
            ax.fill_between(grid, np.nanmin(ys, axis=0), np.nanmax(ys, axis=0), color=line.get_color(), alpha=0.12)
    ax.set_xlabel("trial-epochs used")
    ax.set_ylabel("best target accuracy so far (selection half)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(a: argparse.Namespace, runs: dict[str, dict[int, list[dict]]], wall: float, png: Path,
           trained: dict[tuple[str, int], list[dict]] | None = None) -> str:
    budget = a.budget
    curves = {m: [anytime(rows) for rows in by_seed.values()] for m, by_seed in runs.items()}
    lines = [f"| method | best at {budget // 4} | best at {budget // 2} | best at {budget} | trials | trial-epochs run (curve cut at the budget) |",
             "|---|---|---|---|---|---|"]
    for m, cs in curves.items():
        used = [len(rows) for rows in runs[m].values()]
        ntrials = [len({r["trial"] for r in rows}) for rows in runs[m].values()]
        at = [mean_sd([best_at(c, budget * f) for c in cs]) for f in (0.25, 0.5, 1.0)]
        lines.append(f"| {m} | {' | '.join(at)} | {statistics.mean(ntrials):.1f} | {statistics.mean(used):.0f} |")
    goal = []
    if "random+fifo" in runs and "tpe+asha" in runs:
        for seed in runs["tpe+asha"]:
            if seed in runs["random+fifo"]:
                target = best_at(anytime(runs["random+fifo"][seed]), budget)
                hit = epochs_to_reach(anytime(runs["tpe+asha"][seed]), target)
                goal.append(f"seed {seed}: random+fifo's final best {target:.3f}; tpe+asha reached it after "
                            + (f"{hit} of {budget} trial-epochs ({hit / budget:.2f} of the budget)" if hit and hit <= budget
                               else f"never within {budget} trial-epochs"))
    crit = ["| method | " + " | ".join(f"pick by {m} ({mode})" for m, mode in CRITERIA) + " |",
            "|---|" + "---|" * len(CRITERIA)]
    for m, by_seed in runs.items():
        if m == "report":
            continue
        ps = [picks(rows) for rows in by_seed.values()]
        crit.append(f"| {m} | " + " | ".join(mean_sd([p[c] for p in ps if c in p]) for c, _ in CRITERIA) + " |")
    from benchmarks.throughput import commit

    data = DATA[a.data]
    return "\n".join([
        f"## Search: {datetime.datetime.now():%Y-%m-%d %H:%M}, DANN {data}, commit {commit()}",
        "",
        f"`{' '.join(['python -m benchmarks.search', *sys.argv[1:]])}`: {len(a.seed_list)} seed(s) "
        f"({', '.join(map(str, a.seed_list))}), budget {budget} trial-epochs per sweep, trials of {a.epochs} epochs x "
        f"{a.steps} steps at batch {a.batch}, evaluated every {a.eval_every}; wall time {wall / 60:.1f} min on this "
        f"machine ({os.cpu_count()} CPU cores, two trials at a time). Best target accuracy found (selection half; "
        "mean ± sd over seeds):",
        "",
        *lines,
        "",
        *(f"- {g}" for g in goal),
        "",
        f"![anytime]({png.name})",
        "",
        "Model selection: the held-out test accuracy of each criterion's pick minus the best test accuracy among "
        "the same trials (0 = the best possible pick; target_acc uses target labels, source_acc and dev_risk "
        "do not):",
        "",
        *crit,
        "",
        *([f"The configuration each method found, trained again with {a.retrain_seeds} fresh seeds "
           f"({', '.join(str(RETRAIN_SEED + k) for k in range(a.retrain_seeds))}) per pick, at the same size "
           "(test acc: the held-out half of the target, at the run's best epoch by the selection half, as a sweep "
           "ranks and exports; n = picks x fresh seeds):", "",
           *retrain_table(runs, trained, a.retrain_seeds), ""] if trained else []),
    ])


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.search", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (each: the sweep's and the trials' seed)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of: {', '.join(METHODS)}")
    p.add_argument("--budget", type=int, default=48, help="trial-epochs per sweep")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--eval-every", type=int, default=2)
    p.add_argument("--steps", type=int, default=12, help="training steps per epoch")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--data", choices=tuple(DATA), default="demo", help="demo: the embedded data; real: ../shared's "
                   "MNIST-M subset -> USPS, in the report's layout")
    p.add_argument("--shared", default=str(ROOT.parent / "shared" / "datasets"), help="where --data real finds them")
    p.add_argument("--retrain-seeds", type=int, default=3, help="fresh seeds each method's pick is trained again "
                   "with (0: none)")
    p.add_argument("--results", default="", help="append the tables to this markdown file (e.g. benchmarks/RESULTS.md)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: proves the plumbing, not a measurement")
    a = p.parse_args(argv)
    if a.quick:
        a.seeds, a.budget, a.epochs, a.eval_every, a.steps, a.batch = "0", 8, 2, 1, 2, 16
        a.retrain_seeds = min(a.retrain_seeds, 2)
    a.data_sets = []  # --set values that point the trials at --data real's layout (made in main)
    a.seed_list = [int(s) for s in a.seeds.split(",") if s.strip()]
    a.method_list = [m.strip() for m in a.methods.split(",") if m.strip()]
    bad = [m for m in a.method_list if m not in METHODS]
    if bad or not a.seed_list:
        p.error(f"--methods: unknown {bad[0]!r}; expected of {', '.join(METHODS)}" if bad else "--seeds: none given")
    if a.retrain_seeds < 0:
        p.error(f"--retrain-seeds {a.retrain_seeds}: expected 0 or more")
    if a.budget < a.epochs or a.eval_every > a.epochs:
        p.error(f"--budget {a.budget} must hold at least one trial of --epochs {a.epochs}, evaluated (--eval-every)")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    if a.results:  # before hours of sweeps: a --results folder that cannot be made fails now, not at the end
        Path(a.results).expanduser().parent.mkdir(parents=True, exist_ok=True)
    import ray

    t0 = time.time()
    runs: dict[str, dict[int, list[dict]]] = {}
    picks: dict[tuple[str, int], dict] = {}
    trained: dict[tuple[str, int], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="gentune-search-") as tmp:
        a.data_sets = real_layout(a, Path(tmp)) if a.data == "real" else []
        ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        try:
            for seed in a.seed_list:
                for m in a.method_list:
                    t = time.time()
                    rows, pick = run_method(m, seed, a, Path(tmp))
                    runs.setdefault(m, {})[seed] = rows
                    if pick is not None:
                        picks[(m, seed)] = pick
                    c = anytime(rows)
                    print(f"benchmarks.search: {m} seed {seed}: {len({r['trial'] for r in rows})} trial(s), {len(rows)} "
                          f"trial-epochs, best target_acc {c[-1][1] if c else float('nan'):.3f} ({time.time() - t:.0f} s)",
                          file=sys.stderr, flush=True)
            if a.retrain_seeds and picks:
                t = time.time()
                print(f"benchmarks.search: training {len(picks)} pick(s) again with {a.retrain_seeds} fresh seed(s) each",
                      file=sys.stderr, flush=True)
                trained = retrain(picks, a.retrain_seeds)
                print(f"benchmarks.search: re-training done ({time.time() - t:.0f} s)", file=sys.stderr, flush=True)
        finally:
            ray.shutdown()
    wall = time.time() - t0
    out_dir = Path(a.results).parent if a.results else Path(tempfile.gettempdir())
    png = out_dir / ("search_anytime.png" if a.data == "demo" else f"search_anytime_{a.data}.png")
    plot({m: [anytime(r) for r in s.values()] for m, s in runs.items()}, a.budget, png,
         f"DANN {a.data}: best target accuracy vs trial-epochs ({len(a.seed_list)} seeds; band = min-max)")
    text = report(a, runs, wall, png, trained)
    print(text)
    if a.results:
        with open(a.results, "a") as f:
            f.write("\n" + text)
        print(f"benchmarks.search: appended to {a.results}; plot {png}", file=sys.stderr)
    else:
        print(f"benchmarks.search: plot {png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
