"""python -m benchmarks.scale: gentune's driver cost against plain Ray Tune as the number of trials grows.

    python -m benchmarks.scale [--n 50,200,1000] [--epochs 5] [--work 0.1] [--concurrency 2]
                               [--storage DIR | s3://bucket/prefix] [--cli status,summary,compare,report]
                               [--cli-on largest|all|none] [--compute sleep|cpu] [--quick]

At each N (--n) it runs, in one Ray instance, in this order:

  plain    ray.tune.Tuner over a function that does the same per-epoch work as gentune's trial and reports
           each epoch with ray.tune.report and a checkpoint (the same checkpoint.pt: a small state dict
           saved with torch.save), Tune's default sampler (BasicVariantGenerator over the same search
           space), FIFO, max_concurrent_trials = --concurrency, Tune's default CheckpointConfig (keeps every
           checkpoint), no callbacks.
  gentune  search.sweep.run_sweep over a spec this benchmark writes (family `scale` below, searched key x
           uniform in [0, 1], budget.searcher tpe (gentune's default; --searcher), scheduler fifo, cpu 1 per
           trial, concurrency --concurrency): gentune's own run_trial, its Optuna searcher wrapper (study in
           the sweep folder's optuna.db), its MLflow tracking (SQLite store in the sweep folder), its
           CheckpointConfig(num_to_keep=1) and its other callbacks. The wall time includes everything
           run_sweep does after Ray is up: preparing the family, MLflow's experiment, the studies, and
           waiting for the tracking writer to drain its journal into MLflow at the end.

Family `scale` (registered when this module is imported; the Ray workers import it through
GENTUNE_FAMILIES=benchmarks.scale): each epoch is --work seconds of "compute" and one evaluated result
(score, a smooth function of x and the epoch). --compute sleep (the default) sleeps: the trial holds its
slot as a GPU trial does and leaves the CPU to the driver, and the compute a run needs is known exactly;
--compute cpu spins the CPU for that long instead (competes with the driver for the 2 cores).

Measures (each printed per N, and as a markdown table at the end):
  results   N x E, every trial runs all E epochs (FIFO, no early stopping).
  ideal     the wall time the trials' compute needs at the available concurrency c (--concurrency, which is
            also what Ray's CPUs allow here: c = min(--concurrency, Ray's CPUs)): ceil(N / c) * E * work.
  wall      measured around tuner.fit() (plain) or run_sweep() (gentune), Ray already started.
  overhead  (wall - ideal) / results: seconds of driver, scheduling and bookkeeping per reported result.
  ratio     gentune wall / plain wall (the issue's goal: <= 1.2 at every N); also gentune overhead / plain
            overhead (how much more bookkeeping per result gentune does than Tune alone).
  marginal  from the previous N to this one: (d wall - d ideal) / d results. The fixed costs (Tune's and
            MLflow's start, the end of a study) cancel, so a marginal overhead that rises with N is a cost
            that grows with the number of trials (the issue's goal: the largest N's overhead per result
            within 1.5x of N = 50's).
  driver CPU  time.process_time() of this process (all its threads: Tune's loop, the searcher, the
            callbacks, gentune's MLflow writer) over each run, per result.
  profile   (unless --no-profile) cumulative wall seconds and calls of the driver functions in PROFILED.
Each trial runs in a new Ray actor on both sides (Tune's default reuse_actors=False, which gentune keeps):
process start and imports are part of both sides' overhead per trial.
Then `gentune status`, `summary`, `compare` and `report` run as subprocesses (python -m search.cli ...,
as a user would) on the largest N's gentune sweep (--cli-on all: on every N's), each wall time printed
(goal: <= 10 s each).

--storage s3://bucket/prefix runs both sides on that storage (needs AWS_ENDPOINT_URL or real credentials
and an MLflow server: --tracking-uri or MLFLOW_TRACKING_URI, since a remote sweep has no local store).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainables.config import TrainConfig
from trainables.families import Family, register

ROOT = Path(__file__).resolve().parents[1]
FAMILY_MODULE = "benchmarks.scale"
CLI_COMMANDS = ("status", "summary", "compare", "report")
STATE_FLOATS = 4096  # the trial's "weights": 16 KB of float32 in every checkpoint (both sides)


@dataclass(frozen=True)
class ScaleConfig(TrainConfig):
    epochs: int = 5
    work_s: float = 0.1  # seconds of compute per epoch (= per result)
    compute: str = "sleep"  # sleep | cpu
    x: float = 0.5  # the searched key


def do_work(seconds: float, compute: str) -> None:
    if compute == "cpu":
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass
    else:
        time.sleep(seconds)


def score(x: float, epoch: int) -> float:
    return 1.0 - (x - 0.3) ** 2 - 0.5 / (epoch + 1)


def _trainer_class() -> type:
    import torch

    from trainables.common import Base

    class ScaleTrainer(Base):
        """One epoch: work_s seconds of compute, then an evaluated result (score)."""

        family = "scale"

        def __init__(self, cfg: ScaleConfig, quiet: bool = False) -> None:
            super().__init__(cfg, quiet)
            self.weights = torch.zeros(STATE_FLOATS)

        def train_epoch(self, epoch: int) -> dict[str, float]:
            do_work(self.cfg.work_s, self.cfg.compute)
            self.weights += 1.0
            return {"loss": 1.0 / epoch}

        def evaluate(self, epoch: int) -> dict[str, float]:
            return {"score": score(self.cfg.x, epoch)}

        def state(self) -> dict:
            return {"weights": self.weights.clone()}

        def load_state(self, s: dict) -> None:
            self.weights = s["weights"].clone()

    ScaleTrainer.__module__, ScaleTrainer.__qualname__ = __name__, "ScaleTrainer"
    return ScaleTrainer


def __getattr__(name: str):
    """ScaleTrainer made on first use (a trial starts): importing this module (every gentune command does, through
    GENTUNE_FAMILIES) loads no torch, as the built-in families' modules load none to parse a spec or read a sweep."""
    if name == "ScaleTrainer":
        globals()["ScaleTrainer"] = cls = _trainer_class()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


register(Family("scale", ScaleConfig, f"{FAMILY_MODULE}:ScaleTrainer", {"score": "max"}, "score",
                smoke={"epochs": 1}))


def plain_trial(config: dict[str, Any]) -> None:
    """Plain Tune's trainable: the same per-epoch work, a report with a checkpoint every epoch."""
    import torch
    from ray import tune

    weights, start = torch.zeros(STATE_FLOATS), 0
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            c = torch.load(Path(d) / "checkpoint.pt", weights_only=True)
        weights, start = c["weights"], int(c["epoch"])
    for epoch in range(start + 1, int(config["epochs"]) + 1):
        t0 = time.perf_counter()
        do_work(float(config["work_s"]), str(config["compute"]))
        weights += 1.0
        metrics = {"epoch": epoch, "loss": 1.0 / epoch, "score": score(float(config["x"]), epoch),
                   "epoch_time_s": time.perf_counter() - t0}
        with tempfile.TemporaryDirectory() as d:
            torch.save({"weights": weights, "epoch": epoch}, Path(d) / "checkpoint.pt")
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


# ------------------------------------------------------------------------------------------ profile

# Where the driver spends its time: cumulative wall seconds and calls of these functions in the driver process,
# reset before each run (a perf_counter pair per call). Nested: the experiment-state sync includes its save,
# which includes the searcher's and the callbacks' pickles; the per-result processing includes the callbacks
# and the searcher's on_trial_result. The MLflow writer runs in its own thread (it competes for the GIL).
PROFILE: dict[str, list] = {}
PROFILED = (  # (module, class, method, label)
    ("ray.tune.execution.tune_controller", "TuneController", "_process_trial_results", "Tune: per-result processing"),
    ("ray.tune.execution.tune_controller", "TuneController", "_process_trial_save", "Tune: trial checkpoint handling"),
    ("ray.tune.execution.experiment_state", "_ExperimentCheckpointManager", "sync_up_experiment_state",
     "Tune: experiment-state save + sync"),
    ("ray.tune.execution.tune_controller", "TuneController", "save_to_dir", "Tune: experiment-state write"),
    ("ray.tune.search.search_generator", "SearchGenerator", "save_to_dir", "searcher state pickle"),
    ("ray.tune.callback", "CallbackList", "save_to_dir", "callbacks pickle"),
    ("ray.tune.search.search_generator", "SearchGenerator", "next_trial", "searcher: suggest"),
    ("ray.tune.search.search_generator", "SearchGenerator", "on_trial_result", "searcher: on_trial_result"),
    ("ray.tune.search.search_generator", "SearchGenerator", "on_trial_complete", "searcher: on_trial_complete"),
    ("ray.tune.callback", "CallbackList", "on_trial_result", "callbacks: on_trial_result (all)"),
    ("ray.tune.callback", "CallbackList", "on_checkpoint", "callbacks: on_checkpoint (all)"),
    ("ray.tune.callback", "CallbackList", "on_step_end", "callbacks: on_step_end (all)"),
    ("search.tracking", "MlflowTrials", "on_trial_result", "gentune MlflowTrials.on_trial_result"),
    ("search.tracking", "MlflowTrials", "on_checkpoint", "gentune MlflowTrials.on_checkpoint"),
    ("search.tracking", "MlflowTrials", "on_trial_start", "gentune MlflowTrials.on_trial_start"),
    ("search.tracking", "Writer", "_apply", "gentune Writer._apply (MLflow writes, its thread)"),
    ("search.tracking", "Writer", "close", "gentune Writer.close (drain at the study's end)"),
)


def instrument() -> None:
    import functools
    import importlib

    for module, cls, meth, label in PROFILED:
        try:
            owner = getattr(importlib.import_module(module), cls)
            orig = getattr(owner, meth)
        except (ImportError, AttributeError):
            continue  # a Ray or gentune without it: not profiled
        if getattr(orig, "_scale_profiled", False):
            continue

        def wrap(orig=orig, label=label):
            @functools.wraps(orig)
            def timed(*args, **kwargs):
                t0 = time.perf_counter()
                try:
                    return orig(*args, **kwargs)
                finally:
                    c = PROFILE.setdefault(label, [0, 0.0])
                    c[0] += 1
                    c[1] += time.perf_counter() - t0
            timed._scale_profiled = True
            return timed

        setattr(owner, meth, wrap())


def profile_lines(side: str, n: int, prof: dict[str, list], results: int) -> list[str]:
    return [f"profile N {n} {side}: {label}: {calls} calls, {secs:.2f} s, {secs / max(results, 1) * 1000:.2f} ms/result"
            for label, (calls, secs) in prof.items()]


# ---------------------------------------------------------------------------------------------- runs

def ideal_s(n: int, epochs: int, work: float, conc: int) -> float:
    return math.ceil(n / conc) * epochs * work


def overhead(wall: float, ideal: float, results: int) -> float:
    return (wall - ideal) / results


def make_row(n: int, epochs: int, work: float, conc: int, plain: dict, gen: dict, prev: dict | None) -> dict[str, Any]:
    """One N's measures from its two runs' wall times (see the module docstring)."""
    ideal = ideal_s(n, epochs, work, conc)
    row = {"n": n, "epochs": epochs, "ideal": ideal, "plain": plain, "gentune": gen,
           "plain_overhead": overhead(plain["wall"], ideal, n * epochs),
           "gentune_overhead": overhead(gen["wall"], ideal, n * epochs)}
    row["ratio_wall"] = gen["wall"] / plain["wall"]
    row["ratio_overhead"] = row["gentune_overhead"] / row["plain_overhead"] if row["plain_overhead"] > 0 else float("nan")
    if prev is not None:  # what one more result costs between the previous N and this one: the fixed costs cancel
        d_res = (n - prev["n"]) * epochs
        for side in ("plain", "gentune"):
            row[f"{side}_marginal"] = overhead(row[side]["wall"] - prev[side]["wall"], ideal - prev["ideal"], d_res)
    return row


def estimate_s(row: dict, n_next: int, epochs: int, work: float, conc: int) -> float:
    """Both runs' wall time at n_next trials, extrapolated from `row` at each side's overhead per result (the
    marginal one where known, which includes what grows with N so far)."""
    ideal = ideal_s(n_next, epochs, work, conc)
    per = [row.get(f"{side}_marginal", row[f"{side}_overhead"]) for side in ("plain", "gentune")]
    return sum(ideal + max(p, 0.0) * n_next * epochs for p in per)


def run_plain(n: int, a: argparse.Namespace, storage: str) -> dict[str, Any]:
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    trainable = tune.with_resources(plain_trial, {"cpu": 1})
    tuner = tune.Tuner(
        trainable,
        param_space={"epochs": a.epochs, "work_s": a.work, "compute": a.compute, "x": tune.uniform(0.0, 1.0)},
        # Tune's default sampler, seeded; its max_concurrent is what max_concurrent_trials would set
        tune_config=tune.TuneConfig(metric="score", mode="max", num_samples=n,
                                    reuse_actors=a.plain_reuse_actors or a.reuse_actors,
                                    search_alg=BasicVariantGenerator(random_state=0, max_concurrent=a.concurrency)),
        run_config=tune.RunConfig(name=f"plain-n{n}", storage_path=storage, verbose=0),
    )
    PROFILE.clear()
    t0, c0 = time.perf_counter(), time.process_time()
    grid = tuner.fit()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    results = sum(len(r.metrics_dataframe) if r.metrics_dataframe is not None else 0 for r in grid)
    errors = sum(r.error is not None for r in grid)
    return {"wall": wall, "cpu": cpu, "results": results, "errors": errors, "trials": len(grid),
            "profile": {k: list(v) for k, v in PROFILE.items()}}


def spec_text(n: int, a: argparse.Namespace) -> str:
    return (f"name: scale\nfamily: scale\nseed: 0\n"
            f"config: {{epochs: {a.epochs}, work_s: {a.work}, compute: {a.compute}}}\n"
            f"search:\n  x: {{uniform: [0.0, 1.0]}}\n"
            f"budget: {{trials: {n}, scheduler: fifo, searcher: {a.searcher}}}\n"
            f"resources: {{cpu: 1, gpu: 0}}\nconcurrency: {a.concurrency}\n")


def reuse_actors_in_gentune():
    """Every tune.TuneConfig made from now on has reuse_actors=True unless told otherwise (gentune's run_sweep sets
    none): what that change to search/sweep.py would do, measured without editing it. Returns the undo."""
    from ray import tune

    orig = tune.TuneConfig.__init__

    def init(self, *args, **kwargs):
        kwargs.setdefault("reuse_actors", True)
        orig(self, *args, **kwargs)

    tune.TuneConfig.__init__ = init
    return lambda: setattr(tune.TuneConfig, "__init__", orig)


def run_gentune(n: int, a: argparse.Namespace, storage: str, tmp: Path) -> dict[str, Any]:
    from search.spec import load_spec
    from search.sweep import run_sweep

    spec_path = tmp / f"scale-n{n}.yaml"
    spec_path.write_text(spec_text(n, a))
    spec = load_spec(spec_path)
    undo = reuse_actors_in_gentune() if a.reuse_actors else None
    PROFILE.clear()
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        out = run_sweep(spec, storage=storage, name=f"gentune-n{n}", address=None, resume=False, quiet=True,
                        tracking_uri=a.tracking_uri)
    finally:
        if undo is not None:
            undo()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    results, errors, trials = 0, len(out["failed"]), 0
    for grid, _ in out["results"].values():
        for r in grid:
            trials += 1
            results += len(r.metrics_dataframe) if r.metrics_dataframe is not None else 0
    return {"wall": wall, "cpu": cpu, "results": results, "errors": errors, "trials": trials, "root": out["root"],
            "interrupted": out["interrupted"], "profile": {k: list(v) for k, v in PROFILE.items()}}


def time_cli(root: str, commands: list[str], tmp: Path, env: dict[str, str], timeout: float) -> dict[str, dict]:
    """Each command as a user runs it (a fresh `python -m search.cli` process): wall seconds and exit code."""
    args = {"status": ["status", root], "summary": ["summary", root], "compare": ["compare", root],
            "report": ["report", root, "--out", str(tmp / f"report-{len(list(tmp.glob('report-*')))}"), "--quiet"]}
    out = {}
    for c in commands:
        t0 = time.perf_counter()
        try:
            p = subprocess.run([sys.executable, "-m", "search.cli", *args[c]], cwd=ROOT, env=env, capture_output=True,
                               text=True, timeout=timeout)
            rc, err = p.returncode, p.stderr.strip().splitlines()[-1:] if p.returncode else []
        except subprocess.TimeoutExpired:
            rc, err = 124, [f"timed out after {timeout:.0f} s"]
        out[c] = {"wall": time.perf_counter() - t0, "rc": rc, "error": err[0][:300] if err else ""}
    return out


def cli_startup(env: dict[str, str]) -> float:
    """What any gentune command costs before it reads anything: `gentune --help` (imports, argument parser)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "search.cli", "--help"], cwd=ROOT, env=env, capture_output=True, timeout=300)
    return time.perf_counter() - t0


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu}, {os.cpu_count()} cores, load average {load:.1f} at the start"


def table(rows: list[dict]) -> str:
    head = ("| N | E | results | ideal s | plain wall s | gentune wall s | plain overhead s/result | "
            "gentune overhead s/result | ratio wall | ratio overhead | marginal plain s/result | marginal gentune s/result |")
    lines = [head, "|" + "---:|" * 12]
    for r in rows:
        lines.append(f"| {r['n']} | {r['epochs']} | {r['n'] * r['epochs']} | {r['ideal']:.2f} | {r['plain']['wall']:.2f} | "
                     f"{r['gentune']['wall']:.2f} | {r['plain_overhead']:.4f} | {r['gentune_overhead']:.4f} | "
                     f"{r['ratio_wall']:.3f} | {r['ratio_overhead']:.3f} | "
                     + (f"{r['plain_marginal']:.4f} | {r['gentune_marginal']:.4f} |" if "plain_marginal" in r else "- | - |"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", default="50,200,1000", help="numbers of trials, comma-separated (default 50,200,1000)")
    p.add_argument("--epochs", "-E", type=int, default=5, help="results per trial (default 5)")
    p.add_argument("--work", type=float, default=0.1, help="seconds of compute per result (default 0.1)")
    p.add_argument("--compute", choices=("sleep", "cpu"), default="sleep", help="how a trial spends --work (default sleep)")
    p.add_argument("--concurrency", type=int, default=2, help="trials at a time (default 2: the 2 cores here)")
    p.add_argument("--searcher", choices=("tpe", "random"), default="tpe", help="gentune's budget.searcher (default tpe)")
    p.add_argument("--plain-reuse-actors", action="store_true",
                   help="plain Tune reuses each trial's Ray actor for the next (reuse_actors=True; gentune keeps Tune's "
                        "default, a new actor per trial): what starting an actor per trial costs")
    p.add_argument("--reuse-actors", action="store_true",
                   help="both sides reuse actors: plain through TuneConfig, gentune through a patched TuneConfig default "
                        "in this process (the change proposed for search/sweep.py, measured without editing it)")
    p.add_argument("--storage", default=None, help="where both sides write (a folder or s3://...); default a temp folder")
    p.add_argument("--tracking-uri", default="", help="MLflow for gentune (needed with s3:// storage); default the sweep's SQLite")
    p.add_argument("--cli", default=",".join(CLI_COMMANDS), help="gentune commands to time, comma-separated ('' for none)")
    p.add_argument("--cli-on", choices=("largest", "all", "none"), default="largest", help="which N's sweep the commands read")
    p.add_argument("--cli-timeout", type=float, default=600, help="seconds before a command is given up (default 600)")
    p.add_argument("--max-wall", type=float, default=0,
                   help="stop before an N whose two runs are estimated (from the rates measured so far) to take longer "
                        "than this many seconds (0: never stop)")
    p.add_argument("--no-profile", dest="profile", action="store_false",
                   help="do not time the driver's functions (PROFILE: a perf_counter pair per call)")
    p.add_argument("--json", default=None, help="also write the measurements to this JSON file")
    p.add_argument("--quick", action="store_true", help="tiny sizes for a test: --n 4 -E 2 --work 0.05")
    a = p.parse_args(argv)
    if a.quick:
        a.n, a.epochs, a.work = ("4" if a.n == p.get_default("n") else a.n), 2 if a.epochs == 5 else a.epochs, 0.05 if a.work == 0.1 else a.work
    sizes = [int(x) for x in str(a.n).split(",") if x.strip()]
    commands = [c for c in a.cli.split(",") if c]
    bad = [c for c in commands if c not in CLI_COMMANDS]
    if bad:
        p.error(f"--cli: unknown command(s) {', '.join(bad)}; expected some of {', '.join(CLI_COMMANDS)}")

    # the workers import this module (the `scale` family) through GENTUNE_FAMILIES, from the repository
    os.environ["GENTUNE_FAMILIES"] = ",".join(filter(None, [os.environ.get("GENTUNE_FAMILIES", ""), FAMILY_MODULE]))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # what run_sweep sets, for both sides
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

    import ray

    if a.profile:
        import search.tracking  # noqa: F401 - its classes are wrapped too

        instrument()
    tmp = Path(tempfile.mkdtemp(prefix="gentune-scale-"))
    storage = a.storage or str(tmp / "runs")
    print(f"benchmarks.scale: machine {machine()}; storage {storage}; N {sizes}, E {a.epochs}, work {a.work} s "
          f"({a.compute}), concurrency {a.concurrency}, gentune searcher {a.searcher}"
          + ("; reuse_actors on both sides" if a.reuse_actors else "; plain reuses actors" if a.plain_reuse_actors else ""),
          flush=True)
    t_ray = time.perf_counter()
    ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="WARNING",
             runtime_env={"env_vars": {"GENTUNE_FAMILIES": os.environ["GENTUNE_FAMILIES"], "PYTHONPATH": os.environ["PYTHONPATH"]}})
    conc = min(a.concurrency, int(ray.cluster_resources().get("CPU", 1)))
    print(f"benchmarks.scale: Ray up in {time.perf_counter() - t_ray:.1f} s; {conc} trial(s) at a time", flush=True)

    # a first Tuner starts Ray's worker processes; later ones reuse them: a tiny plain run first, not timed
    t_warm = time.perf_counter()
    run_plain(2, argparse.Namespace(**{**vars(a), "epochs": 1}), str(tmp / "warm-up"))
    print(f"benchmarks.scale: warm-up (plain Tune, 2 trials of 1 epoch) {time.perf_counter() - t_warm:.1f} s", flush=True)

    rows, stopped = [], ""
    for i, n in enumerate(sizes):
        t_n = time.perf_counter()
        plain = run_plain(n, a, storage)
        gen = run_gentune(n, a, storage, tmp)
        row = make_row(n, a.epochs, a.work, conc, plain, gen, rows[-1] if rows else None)
        rows.append(row)
        ideal = row["ideal"]
        print(f"N {n}: results plain {plain['results']} gentune {gen['results']} (expected {n * a.epochs}; trial errors "
              f"plain {plain['errors']} gentune {gen['errors']}), ideal {ideal:.2f} s", flush=True)
        print(f"N {n}: plain wall {plain['wall']:.2f} s, overhead {row['plain_overhead']:.4f} s/result; "
              f"gentune wall {gen['wall']:.2f} s, overhead {row['gentune_overhead']:.4f} s/result", flush=True)
        print(f"N {n}: ratio gentune/plain wall {row['ratio_wall']:.3f}, overhead {row['ratio_overhead']:.3f}", flush=True)
        print(f"N {n}: driver process CPU plain {plain['cpu']:.2f} s ({plain['cpu'] / max(plain['results'], 1) * 1000:.2f} "
              f"ms/result), gentune {gen['cpu']:.2f} s ({gen['cpu'] / max(gen['results'], 1) * 1000:.2f} ms/result)", flush=True)
        if a.profile:
            for side, r in (("plain", plain), ("gentune", gen)):
                print("\n".join(profile_lines(side, n, r["profile"], r["results"])), flush=True)
        if "plain_marginal" in row:
            print(f"N {n}: marginal overhead from N {rows[-2]['n']}: plain {row['plain_marginal']:.4f} s/result, "
                  f"gentune {row['gentune_marginal']:.4f} s/result", flush=True)
        if a.max_wall and i + 1 < len(sizes):
            est = estimate_s(row, sizes[i + 1], a.epochs, a.work, conc)
            print(f"N {n}: both runs took {time.perf_counter() - t_n:.0f} s; N {sizes[i + 1]} estimated at {est:.0f} s", flush=True)
            if est > a.max_wall:
                stopped = (f"stopped after N {n}: N {sizes[i + 1]} would take about {est:.0f} s for its two runs at the "
                           f"rates measured so far (> --max-wall {a.max_wall:.0f} s); not run: N {', '.join(map(str, sizes[i + 1:]))}")
                print(f"benchmarks.scale: {stopped}", flush=True)
                break
    ray.shutdown()

    if len(rows) > 1:
        print(f"overhead per result, gentune: N {rows[-1]['n']} / N {rows[0]['n']} = "
              f"{rows[-1]['gentune_overhead'] / rows[0]['gentune_overhead']:.3f} (goal <= 1.5)", flush=True)
    cli: dict[int, dict] = {}
    if commands and a.cli_on != "none" and rows:
        env = {**os.environ}
        startup = cli_startup(env)
        print(f"cli: `gentune --help` (start-up alone) {startup:.2f} s", flush=True)
        for row in (rows if a.cli_on == "all" else rows[-1:]):
            cli[row["n"]] = time_cli(row["gentune"]["root"], commands, tmp, env, a.cli_timeout)
            for c, r in cli[row["n"]].items():
                print(f"cli N {row['n']}: gentune {c} {r['wall']:.2f} s (exit {r['rc']}){' ' + r['error'] if r['error'] else ''}",
                      flush=True)
    else:
        startup = None
    print()
    print(table(rows))
    if cli:
        print()
        print("| N | " + " | ".join(f"gentune {c} s" for c in commands) + " |")
        print("|---:|" + "---:|" * len(commands))
        for n, res in cli.items():
            print(f"| {n} | " + " | ".join(f"{res[c]['wall']:.2f}" + ("" if res[c]["rc"] == 0 else f" (exit {res[c]['rc']})")
                                          for c in commands) + " |")
    out = {"rows": rows, "cli": cli, "cli_startup": startup, "stopped": stopped, "storage": storage,
           "args": vars(a), "when": datetime.datetime.now().isoformat(timespec="minutes")}
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2, default=str))
    return out


if __name__ == "__main__":
    main()
