"""Mutation testing of gentune's pure-logic core with mutmut 3 (docs/mutation.md).

    scripts/mutation.sh [MODULE ...] [--jobs N] [--before] [--keep]

Each MODULE (default: all of them, in the order below) gets a scratch project in .mutation/MODULE/: symlinks to
the source packages and tests/, and a pyproject.toml holding this repository's [tool.mutmut] and pytest settings
plus the module's own file, functions and test selection. mutmut copies that project to .mutation/MODULE/mutants/,
mutates the module's file there, runs the selected tests once to learn which test reaches which function, then
runs each mutant of the listed functions against the tests that reach that function (-x: the first failure kills).

Writes .mutation/scores.json and .mutation/scores.md (per module: mutants, killed, survived, score) and
.mutation/MODULE/survivors.txt (the diff of every mutant that survived). --before leaves out the tests written to
kill mutants (tests/test_mutation_MODULE.py), which measures the score the suite had before them. --keep reuses
.mutation/MODULE/mutants/ (mutmut's cache: mutants already decided are not run again); by default it is rebuilt,
so that every number comes from a full run.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRATCH = REPO / ".mutation"
PACKAGES = ("analysis", "search", "trainables", "models", "benchmarks")
NEW_TESTS = "tests/test_mutation_{}.py"  # each module's tests written to kill its surviving mutants (--before: without)

# module -> the file(s) mutated, the functions whose mutants count (mutmut's names: x_<function>,
# xǁ<Class>ǁ<method>), the existing tests selected for them. Tests that use the shared smoke sweep, run a
# subprocess (mutmut cannot see which function a subprocess reaches) or train for tens of seconds are left out.
MODULES: dict[str, dict] = {
    "sweepdata": {
        "about": "best-trial choice: better(), Trial.value, Sweep.finished/best_epoch/best_value/score/best_trial, parse_param",
        "files": ["analysis/sweepdata.py"],
        "functions": ["x_better", "xǁTrialǁvalue", "xǁSweepǁfinished", "xǁSweepǁbest_epoch", "xǁSweepǁbest_value",
                      "xǁSweepǁscore", "xǁSweepǁbest_trial", "x_parse_param"],
        "tests": ["tests/test_best_trial.py"],
    },
    "pareto": {
        "about": "Pareto front and knee: pareto_front(), knee(), Sweep.pareto",
        "files": ["analysis/sweepdata.py"],
        "functions": ["x_pareto_front", "x_knee", "xǁSweepǁpareto"],
        "tests": ["tests/test_properties.py", "tests/test_best_trial.py",
                  "tests/test_search_methods.py::test_pareto_front_and_knee"],
    },
    "spec": {
        "about": "spec and --set parsing: apply_overrides, parse_spec, parse_domain and the key/number/name helpers",
        "files": ["search/spec.py"],
        # parse_study (658 mutants), parse_objectives, parse_start_from and check_pbt are left out: the whole file
        # has 1383 mutants, more than the 30-minute budget of the command allows
        "functions": ["x_plain_name", "x__flatten", "x__check_keys", "x__num", "x__int", "x_parse_domain",
                      "x__check_value", "x__mapping", "x__family_keys", "x_apply_overrides", "x_parse_spec"],
        "tests": ["tests/test_config.py", "tests/test_properties.py", "tests/test_real_sweeps.py",
                  "tests/test_search_methods.py", "tests/test_sweep_driver.py"],
    },
    "config": {
        "about": "config coercion: flat_keys, _coerce, from_flat, to_flat, augment_policy, check_schedule",
        "files": ["trainables/config.py"],
        # validate() (398 mutants, one range check and message per key) is left out for time
        "functions": ["x_flat_keys", "x__coerce", "x_from_flat", "x_to_flat", "x_check_schedule", "x_augment_policy"],
        "tests": ["tests/test_config.py", "tests/test_properties.py", "tests/test_real_sweeps.py",
                  "tests/test_gan_regularisers.py::test_policy_is_parsed_strictly",
                  "tests/test_gan_regularisers.py::test_config_names_the_ops_models_implement"],
    },
    "ddpm": {
        "about": "DDPM noise schedules and the classifier-free-guided sampler (eager and graph-step paths)",
        "files": ["models/ddpm.py"],
        "functions": ["xǁNoiseScheduleǁ__init__", "xǁNoiseScheduleǁnoise", "xǁGuidedSamplerǁsample",
                      "xǁGuidedSamplerǁ_sample_graphed", "xǁ_GraphedStepǁ_step", "xǁ_GraphedStepǁreset",
                      "xǁ_GraphedStepǁreplay"],
        "tests": ["tests/test_models.py", "tests/test_properties.py", "tests/test_real_sweeps.py",
                  "tests/test_benchmarks.py"],
        # mutmut leaves decorated functions alone: the scratch copy applies this one's decorator after the class
        "undecorate": [("models/ddpm.py", "GuidedSampler", "sample", "torch.no_grad()")],
    },
    "fid": {
        "about": "FID's Frechet distance and feature statistics: trainables/metrics/fid.py",
        "files": ["trainables/metrics/fid.py"],
        "functions": ["x_stats", "x__sym_sqrt", "x__trace_sqrt_product", "x_frechet_distance"],
        "tests": ["tests/test_fid.py::test_frechet_diagonal_closed_form",
                  "tests/test_fid.py::test_frechet_commuting_nondiagonal_closed_form",
                  "tests/test_fid.py::test_frechet_general_matches_scipy_and_identical_is_zero",
                  "tests/test_fid.py::test_stats_npz_round_trip_pytorch_fid_format",
                  "tests/test_fid.py::test_cli_fid_between_npz_files"],
    },
    "dann": {
        "about": "DANN: gradient reversal, lambda schedule, DEV risk, selection/test split",
        "files": ["models/dann.py", "trainables/dann.py"],
        "functions": ["xǁGradReverseǁforward", "xǁGradReverseǁbackward", "x_grad_reverse", "x_lambda_at",
                      "x_selection_and_test", "x_dev_estimate"],
        "tests": ["tests/test_models.py", "tests/test_search_methods.py::test_dev_estimate_weights_the_source_samples_that_look_like_target",
                  "tests/test_real_sweeps.py::test_dann_ranks_on_the_selection_half_and_never_on_the_test_half"],
    },
    "gan": {
        "about": "GAN label ranges and stop rules: soft_targets, flip, bce, noise_sigma, stop_reason; loop's is_failure, check_finite",
        "files": ["trainables/gan.py", "trainables/loop.py"],
        "functions": ["x_soft_targets", "x_flip", "x_bce", "x_noise_sigma", "xǁGANTrainerǁstop_reason",
                      "x_is_failure", "x_check_finite"],
        "tests": ["tests/test_models.py", "tests/test_gan_regularisers.py",
                  "--deselect", "tests/test_gan_regularisers.py::test_discriminator_won_rule_stops_a_lost_run_and_leaves_a_learning_one",
                  "--deselect", "tests/test_gan_regularisers.py::test_g_ema_is_the_moving_average_and_what_samples_and_exports"],
    },
}

# mutmut's exit-code classes (mutmut.stats.status_by_exit_code); a timeout counts as killed, as mutmut's own score does
KILLED = {"killed", "timeout"}


def module_names(mod: dict) -> list[str]:
    return [f"{f[:-3].replace('/', '.')}.{fn}__mutmut_*" for f in mod["files"] for fn in mod["functions"]
            if _owns(f, fn, mod)]


def _owns(path: str, fn: str, mod: dict) -> bool:
    """A function listed for a two-file module belongs to the file that defines it."""
    if len(mod["files"]) == 1:
        return True
    name = fn[2:] if fn.startswith("x_") else fn.split("ǁ")[1]
    text = (REPO / path).read_text()
    return f"def {name}(" in text or f"class {name}(" in text


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML for {v!r}")


def scratch_project(name: str, mod: dict, before: bool, keep: bool) -> Path:
    """.mutation/NAME/: the packages and tests/ as symlinks, a pyproject.toml with this module's mutmut config."""
    d = SCRATCH / name
    if d.exists() and not keep:
        shutil.rmtree(d)
    d.mkdir(parents=True, exist_ok=True)
    for p in (*PACKAGES, "tests"):
        link = d / p
        if not link.exists() and not link.is_symlink():
            link.symlink_to(REPO / p, target_is_directory=True)
    for path, cls, fn, deco in mod.get("undecorate", []):
        undecorate(d, path, cls, fn, deco)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    common = dict(project["tool"].get("mutmut", {}))
    new = NEW_TESTS.format(name)
    tests = list(mod["tests"]) + ([] if before or not (REPO / new).exists() else [new])
    mutmut = {**common, "source_paths": list(PACKAGES), "only_mutate": list(mod["files"]),
              "pytest_add_cli_args_test_selection": tests}
    pytest_opts = dict(project["tool"]["pytest"]["ini_options"])
    lines = ["# written by scripts/mutation.py for one module; edit [tool.mutmut] in the repository's pyproject.toml",
             "[tool.mutmut]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in mutmut.items()]
    lines += ["", "[tool.pytest.ini_options]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in pytest_opts.items()]
    (d / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return d


def undecorate(d: Path, path: str, cls: str, fn: str, deco: str) -> None:
    """Make the scratch copy of `path` define cls.fn undecorated and apply `deco` to it after the class: the same
    method (mutmut's trampoline, then the decorator around it), but one mutmut mutates (it skips decorated ones).
    The package holding `path` becomes a real copy instead of a symlink."""
    pkg = d / path.split("/")[0]
    if pkg.is_symlink():
        pkg.unlink()
    else:
        shutil.rmtree(pkg)
    shutil.copytree(REPO / pkg.name, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    f = d / path
    src = (REPO / path).read_text()
    old = f"    @{deco}\n    def {fn}("
    if src.count(old) != 1 or f"class {cls}" not in src:
        raise SystemExit(f"{path}: expected one '@{deco}' right above 'def {fn}(' in class {cls}; update MODULES")
    f.write_text(src.replace(old, f"    def {fn}(") + f"\n\n{cls}.{fn} = {deco}({cls}.{fn})  # scripts/mutation.py\n")


def statuses(d: Path, mod: dict) -> dict[str, str]:
    """{mutant name: mutmut status} of the module's listed functions, read from mutmut's .meta files."""
    from mutmut.stats import status_by_exit_code

    patterns = module_names(mod)
    out: dict[str, str] = {}
    for f in mod["files"]:
        meta = d / "mutants" / (f + ".meta")
        if not meta.exists():
            continue
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        for k, code in codes.items():
            if any(fnmatch.fnmatchcase(k, p) for p in patterns):
                out[k] = status_by_exit_code[code] if code is not None else "not checked"
    return out


def survivor_diffs(d: Path, names: list[str]) -> str:
    """`mutmut show` of each survivor, in one process (run in the scratch project, where mutmut's config is)."""
    if not names:
        return ""
    code = ("import sys\nfrom mutmut.mutation.diff_apply import find_mutant, get_diff_for_mutant\n"
            "for n in sys.argv[1:]:\n    m = find_mutant(n)\n    print('#', n)\n    print(get_diff_for_mutant(n, path=m.path))\n")
    p = subprocess.run([sys.executable, "-c", code, *names], cwd=d, capture_output=True, text=True)
    return p.stdout + (f"\n(mutmut show failed: {p.stderr[-2000:]})" if p.returncode else "")


def run_module(name: str, mod: dict, jobs: int, before: bool, keep: bool) -> dict:
    d = scratch_project(name, mod, before, keep)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0",
           "GENTUNE_CACHE": os.environ.get("GENTUNE_CACHE", str(SCRATCH / "cache"))}
    mutmut = shutil.which("mutmut") or str(Path(sys.executable).with_name("mutmut"))
    t0 = time.time()
    with open(d / "run.log", "w") as log:
        p = subprocess.run([mutmut, "run", "--max-children", str(jobs), *module_names(mod)], cwd=d, env=env,
                           stdout=log, stderr=subprocess.STDOUT)
    wall = time.time() - t0
    st = statuses(d, mod)
    counts: dict[str, int] = {}
    for s in st.values():
        counts[s] = counts.get(s, 0) + 1
    killed = sum(counts.get(s, 0) for s in KILLED)
    survivors = sorted(k for k, s in st.items() if s not in KILLED)
    (d / "survivors.txt").write_text(survivor_diffs(d, survivors))
    res = {"module": name, "about": mod["about"], "files": mod["files"], "mutants": len(st), "killed": killed,
           "survived": len(survivors), "counts": counts, "score": round(100 * killed / len(st), 1) if st else None,
           "wall_s": round(wall), "mutmut_exit": p.returncode, "before": before, "jobs": jobs, "commit": commit(),
           "survivors": survivors}
    if p.returncode != 0 or not st:
        print(f"{name}: mutmut exited {p.returncode}; see {d / 'run.log'}", file=sys.stderr)
    return res


def commit() -> str:
    """The commit measured (+ "-dirty" when the mutated files or tests/ differ from it), for the record."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--", *PACKAGES, "tests"], cwd=REPO, capture_output=True,
                           text=True).stdout.strip()
    return head + ("-dirty" if dirty else "")


def write_scores(results: list[dict], jobs: int, quiet: bool = False) -> None:
    f = SCRATCH / "scores.json"
    old = json.loads(f.read_text()) if f.exists() else {}
    for r in results:
        old[("before:" if r["before"] else "") + r["module"]] = r
    f.write_text(json.dumps(old, indent=1, ensure_ascii=False) + "\n")
    rows = ["| module | mutants | killed | survived | score | time |", "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        score = "-" if r["score"] is None else f"{r['score']:.1f} %"
        rows.append(f"| {r['module']}{' (before)' if r['before'] else ''} | {r['mutants']} | {r['killed']} | "
                    f"{r['survived']} | {score} | {r['wall_s']} s |")
    text = "\n".join(rows) + f"\n\n{jobs} mutmut worker(s); survivors' diffs in .mutation/MODULE/survivors.txt\n"
    (SCRATCH / "scores.md").write_text(text)
    if not quiet:
        print(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("modules", nargs="*", metavar="MODULE", help=f"any of {', '.join(MODULES)} (default: all)")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("MUTATION_JOBS", "2")),
                    help="mutants tested at once (mutmut --max-children; default 2, or $MUTATION_JOBS)")
    ap.add_argument("--before", action="store_true", help="leave out tests/test_mutation_MODULE.py (the score before those tests)")
    ap.add_argument("--keep", action="store_true", help="reuse .mutation/MODULE/mutants/ (mutmut's cached verdicts)")
    ap.add_argument("--list", action="store_true", help="print the modules, their functions and tests, and exit")
    a = ap.parse_args(argv)
    bad = [m for m in a.modules if m not in MODULES]
    if bad:
        ap.error(f"unknown module {bad[0]!r}; expected any of {', '.join(MODULES)}")
    if a.list:
        for n, m in MODULES.items():
            print(f"{n}: {m['about']}\n  files: {' '.join(m['files'])}\n  mutants of: {' '.join(module_names(m))}\n"
                  f"  tests: {' '.join(m['tests'])} (+ {NEW_TESTS.format(n)})")
        return 0
    try:
        import mutmut  # noqa: F401
    except ImportError:
        print("mutmut is not installed: pip install -e '.[mutation]' (or pip install 'mutmut>=3.8,<4')", file=sys.stderr)
        return 2
    SCRATCH.mkdir(exist_ok=True)
    results = []
    t0 = time.time()
    for n in a.modules or list(MODULES):
        print(f"--- {n}: {MODULES[n]['about']}", flush=True)
        r = run_module(n, MODULES[n], a.jobs, a.before, a.keep)
        print(f"    {r['killed']}/{r['mutants']} killed ({r['score']} %), {r['survived']} survived, {r['wall_s']} s",
              flush=True)
        results.append(r)
        write_scores(results, a.jobs, quiet=True)  # after each module: a run stopped midway keeps what it measured
    write_scores(results, a.jobs)
    print(f"total {round(time.time() - t0)} s")
    return 0 if all(r["mutmut_exit"] == 0 and r["mutants"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
