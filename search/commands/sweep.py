"""`gentune sweep`."""
from __future__ import annotations

import argparse
import shlex
import sys
import time
import traceback
from pathlib import Path

from search.commands import Help
from trainables.errors import GentuneError
from trainables.storage import Folder, without_query


def cmd_sweep(args: argparse.Namespace) -> int:
    from search.spec import load_spec
    from search.sweep import result_trial_id, run_sweep, sweep_dir

    spec = load_spec(args.spec, args.set, smoke=args.smoke)
    meta = {"spec_path": str(Path(args.spec).resolve()), "overrides": args.set, "smoke": args.smoke}
    try:
        out = run_sweep(spec, storage=args.storage, name=args.name, address=args.address, resume=args.resume,
                        tracking_uri=args.tracking_uri, quiet=args.quiet, meta=meta)
    except GentuneError:
        raise
    except KeyboardInterrupt:  # a Ctrl-C that Tune did not catch: between studies, or a second one
        print(f"gentune sweep: interrupted; resume with: {resume_command(args)}", file=sys.stderr)
        return 130
    except Exception as e:  # a crash of the driver: one line here, the traceback in the sweep folder
        if args.debug:
            raise
        text = traceback.format_exc()
        log = f"/tmp/gentune-sweep-error-{int(time.time())}.log"
        try:  # in the sweep folder, wherever it is; else on this machine
            folder = Folder(sweep_dir(spec, args.storage, args.name))
            if folder.is_dir():
                folder.write_bytes("driver-error.log", text.encode())
                log = without_query(folder.uri("driver-error.log"))
        except GentuneError:  # the store itself is what failed
            pass
        if log.startswith("/tmp/"):
            Path(log).write_text(text)
        first = (str(e).strip().splitlines() or [""])[0][:200]
        print(f"gentune sweep: error: the sweep failed: {type(e).__name__}: {first} (traceback in {log}; "
              f"--debug shows it here)", file=sys.stderr)
        return 1
    for st in spec.studies:
        if st.name not in out["results"]:
            continue
        grid, best = out["results"][st.name]
        names = [m for m, _ in st.objectives] or [st.metric]
        print(f"\n== study {st.name} ({st.family}), {'metrics' if len(names) > 1 else 'metric'} "
              f"{', '.join(f'{m} ({d})' for m, d in st.objectives or [(st.metric, st.mode)])} ==")
        print(summary_table(grid, names))
        if len(names) > 1:
            print("Pareto-optimal trials: listed above the tables; `gentune report` draws the front, `gentune export` "
                  "picks the one nearest its ideal point")
        elif best is not None and best.metrics and st.metric in best.metrics:
            print(f"best: trial {result_trial_id(best)} {st.metric}={best.metrics[st.metric]:.4f}")
        else:
            print("best: none (no trial reported the metric)")
    print(f"\nsweep folder: {out['root']}\nMLflow: {out['tracking_uri']}  (open with: gentune ui {out['root']})")
    if out["interrupted"]:
        print(f"gentune sweep: interrupted; resume with: {resume_command(args)}", file=sys.stderr)
        return 130
    if out["failed"]:
        study, trial, msg = out["failed"][0]
        print(f"gentune sweep: {len(out['failed'])} trial(s) failed; first: study {study} trial {trial}: {msg}", file=sys.stderr)
        return 1
    return 0


def resume_command(args: argparse.Namespace) -> str:
    """The command line the user typed, plus --resume: every option (--address, --storage, --tracking-uri,
    each --set) as given, quoted for a shell. Called in-process with other arguments (main(argv)), it
    spells the parsed options out instead."""
    from search.cli import build_parser

    words = sys.argv[1:]
    try:
        typed = vars(build_parser().parse_args(words)) == vars(args)
    except SystemExit:
        typed = False
    if not typed:
        words = ["sweep", str(args.spec), *[w for s in args.set for w in ("--set", s)],
                 *(["--storage", args.storage] if args.storage else []), *(["--name", args.name] if args.name else []),
                 *(["--address", args.address] if args.address else []),
                 *(["--tracking-uri", args.tracking_uri] if args.tracking_uri else []),
                 *(["--smoke"] if args.smoke else []), *(["--quiet"] if args.quiet else [])]
    return shlex.join(["gentune", *words, *([] if "--resume" in words else ["--resume"])])


def register(sub) -> None:
    p = sub.add_parser("sweep", help="run a hyperparameter sweep (Ray Tune + Optuna + ASHA, tracked in MLflow)",
                       formatter_class=Help)
    p.add_argument("spec", help="sweep spec YAML (search/specs/*.yaml or your own)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (fixes it, removing its search domain; seed= seeds the trials) or "
                        "budget.*/resources.*/metric/mode, or sweep.seed= (the sampler's seed)")
    p.add_argument("--storage", default=None, help="folder or URI (s3://, gs://) holding sweeps; default: the spec's storage (runs)")
    p.add_argument("--name", default=None, help="sweep name (folder and MLflow experiment); default: the spec's name")
    p.add_argument("--address", default=None, help="Ray cluster to join: auto or HOST:PORT; default: start a local Ray instance")
    p.add_argument("--tracking-uri", default="", help="MLflow tracking URI; default $MLFLOW_TRACKING_URI or SQLite in the sweep folder")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep (same spec and --set): finished trials are kept, unfinished ones resume")
    p.add_argument("--smoke", action="store_true", help="shrink every study in sizes only (epochs, steps, batch, T, width) to a tiny run on demo data, at most 2 trials each")
    p.add_argument("--quiet", action="store_true", help="no live trial table")
    p.set_defaults(func=cmd_sweep)


def summary_table(grid, metrics: list[str]) -> str:
    """Plain-text table of trials: id, status, epochs, the study's metric(s), stop reason."""
    from search.sweep import result_trial_id

    lines = [f"{'trial':<12} {'status':<6} {'epochs':>6} " + " ".join(f"{m:>12}" for m in metrics) + "  stop reason"]
    for r in grid:
        m = r.metrics or {}
        vals = " ".join(f"{m[k]:>12.4f}" if isinstance(m.get(k), (int, float)) else f"{'-':>12}" for k in metrics)
        lines.append(f"{result_trial_id(r):<12} {'ERROR' if r.error else 'OK':<6} {m.get('epoch', 0):>6} {vals}  "
                     f"{m.get('stop_reason', '')}")
    return "\n".join(lines)
