"""`gentune sweep`."""
from __future__ import annotations

import argparse


def cmd_sweep(args: argparse.Namespace) -> int:
    from search.spec import load_spec
    from search.sweep import run_sweep, summary_table

    spec = load_spec(args.spec, args.set, smoke=args.smoke)
    meta = {"spec_path": str(args.spec), "overrides": args.set, "smoke": args.smoke}
    out = run_sweep(spec, storage=args.storage, name=args.name, address=args.address, resume=args.resume,
                    tracking_uri=args.tracking_uri, quiet=args.quiet, meta=meta)
    for st in spec.studies:
        grid, best = out["results"][st.name]
        print(f"\n== study {st.name} ({st.family}), metric {st.metric} ({st.mode}) ==")
        print(summary_table(grid, st.metric))
        if best is not None and best.metrics and st.metric in best.metrics:
            print(f"best: trial {best.metrics.get('trial_id')} {st.metric}={best.metrics[st.metric]:.4f}")
        else:
            print("best: none (no trial reported the metric)")
    print(f"\nsweep folder: {out['root']}\nMLflow: {out['tracking_uri']}  (open with: gentune ui {out['root']})")
    return 0


def register(sub) -> None:
    p = sub.add_parser("sweep", help="run a hyperparameter sweep (Ray Tune + Optuna + ASHA, tracked in MLflow)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("spec", help="sweep spec YAML (search/specs/*.yaml or your own)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (fixes it, removing its search domain) or budget.*/resources.*/metric/mode/seed")
    p.add_argument("--storage", default=None, help="folder or URI (s3://, gs://) holding sweeps; default: the spec's storage (runs)")
    p.add_argument("--name", default=None, help="sweep name (folder and MLflow experiment); default: the spec's name")
    p.add_argument("--address", default=None, help="Ray cluster to join: auto or HOST:PORT; default: start a local Ray instance")
    p.add_argument("--tracking-uri", default="", help="MLflow tracking URI; default $MLFLOW_TRACKING_URI or SQLite in the sweep folder")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep: finished trials are kept, unfinished ones resume")
    p.add_argument("--smoke", action="store_true", help="shrink every study to a tiny run on demo data (at most 2 trials each)")
    p.add_argument("--quiet", action="store_true", help="no live trial table")
    p.set_defaults(func=cmd_sweep)
