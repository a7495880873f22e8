"""`gentune report`, `compare`, `export`, `generate` and `predict`: from a finished sweep to figures, tables,
an exported bundle, and images or labels made from that bundle alone."""
from __future__ import annotations

import argparse
import json
import sys

from search.commands import Help


def cmd_report(args: argparse.Namespace) -> int:
    from analysis.report import build_report
    from search.commands.core import arch_text

    res = build_report(args.sweep, args.out, trial_ids=args.trial or None, arch_text=arch_text, device=args.device,
                       seed=args.seed, tsne_max=args.tsne_max, log_mlflow=not args.no_mlflow,
                       tracking_uri=args.tracking_uri, quiet=args.quiet)
    print(f"report: {res['index']} and {res['markdown']} ({len(res['figures'])} figures)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from analysis.compare import compare
    from analysis.sweepdata import Sweep, check_out_file

    out = check_out_file(args.out) if args.out else None
    text = compare(Sweep(args.sweep, args.tracking_uri), args.format, args.study)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"compare: wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from analysis.export import export_best, register_bundle
    from analysis.sweepdata import ARTIFACTS, Sweep

    sweep = Sweep(args.sweep, args.tracking_uri)
    if args.register:  # a copied or moved sweep folder logs into its own mlartifacts/, never the original's
        moved = sweep.keep_artifacts_here("export without --register")
        if moved and not args.quiet:
            print(f"export: this sweep folder was copied or moved: its MLflow store now keeps artifacts in "
                  f"{sweep.root / ARTIFACTS} (was {moved})", file=sys.stderr)
    trial, path = export_best(sweep, args.out, study=args.study, metric=args.metric, mode=args.mode,
                              trial_id=args.trial, force=args.force, quiet=args.quiet, rank_by=args.rank_by,
                              seed_pick=args.seed_pick)
    # DANN: the held-out half, never used to choose the trial, at the exported epoch (and seed)
    test = (json.loads((path / "bundle.json").read_text()).get("metrics") or {}).get("target_test_acc")
    held_out = f"; target test accuracy {test:.3f}, held out from the choice" if test is not None else ""
    print(f"export: trial {trial.trial_id} (study {trial.study}{held_out}) -> {path}")
    if args.register:
        mv = register_bundle(sweep.tracking_uri, path, trial.run_id, args.register)
        print(f"export: registered as model {args.register!r} version {mv.version} (models:/{args.register}/{mv.version})")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from analysis.export import generate_from_bundle
    from analysis.sampling import image_grid, save_png
    from analysis.sweepdata import check_out_file

    out = check_out_file(args.out, "--out", ".png")  # before sampling, which may take minutes
    b, x, used = generate_from_bundle(args.bundle, n=args.n, seed=args.seed, digit=args.digit, guidance=args.guidance,
                                      device=args.device, quiet=args.quiet)
    save_png(image_grid(x, used["nrow"]), out)
    extra = f", w={used['w']:g}" if "w" in used else ""
    print(f"generate: {used['n']} {b.family} image(s) (seed {used['seed']}{extra}) -> {out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from analysis.export import predict_folder

    names, labels = predict_folder(args.bundle, args.images, args.out, device=args.device, quiet=args.quiet)
    if args.out:
        print(f"predict: {len(names)} image(s) -> {args.out}")
    else:
        sys.stdout.write("image_name,label\n" + "".join(f"{n},{lab}\n" for n, lab in zip(names, labels)))
    return 0


def register(sub) -> None:
    fmt = Help
    tracking = "MLflow tracking URI; default: the one in the sweep's sweep.json (or SWEEP/mlflow.db)"

    p = sub.add_parser("report", formatter_class=fmt,
                       help="figures + index.html + report.md of a finished sweep (also logged to MLflow under report/)",
                       description="The report's figures and tables for the best trial of each family (or the trials "
                                   "named with --trial): architectures, GAN samples of model A and B, the DDPM digit "
                                   "grid and reverse process, the DANN table and t-SNE, and per study the metric over "
                                   "epochs, Optuna's parameter importances and parallel coordinates, and the trials table.")
    p.add_argument("sweep", metavar="SWEEP", help="sweep folder (holds sweep.json), e.g. runs/quickstart")
    p.add_argument("--out", required=True, help="output folder for the PNGs, index.html and report.md")
    p.add_argument("--trial", action="append", default=[], metavar="ID",
                   help="report on this trial id instead of the best of each family (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise for generated images and of t-SNE")
    p.add_argument("--device", default="auto", help="torch device for sampling and features: auto, cpu, cuda, cuda:1")
    p.add_argument("--tsne-max", type=int, default=500, help="at most this many validation images per domain in each t-SNE")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the figures to the sweep's MLflow study runs")
    p.add_argument("--tracking-uri", default="", help=tracking)
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("compare", formatter_class=fmt, help="the trials of a sweep side by side (from MLflow)",
                       description="Trials table from MLflow: the params that vary, final and best value of the "
                                   "study's metric, status and stop reason, best trial first.")
    p.add_argument("sweep", metavar="SWEEP", help="sweep folder (holds sweep.json)")
    p.add_argument("--format", choices=("md", "csv"), default="md", help="markdown (one table per study) or one CSV")
    p.add_argument("--study", default=None, help="only this study (default: every study of the sweep)")
    p.add_argument("--out", default=None, help="write to this file instead of stdout")
    p.add_argument("--tracking-uri", default="", help=tracking)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("export", formatter_class=fmt,
                       help="the best trial as a bundle: model.safetensors + bundle.json (optionally registered in MLflow)",
                       description="Export the best finished trial of a study (ranked by the study's budget.rank_by: each "
                                   "trial's best evaluated epoch or its last; that epoch's checkpoint) as a self-describing "
                                   "bundle folder that `gentune generate` / `gentune predict` use without the sweep.")
    p.add_argument("sweep", metavar="SWEEP", help="sweep folder (holds sweep.json)")
    p.add_argument("--out", required=True, help="bundle folder to create (must not exist or be empty, unless --force)")
    p.add_argument("--study", default=None, help="which study (needed when the sweep has several)")
    p.add_argument("--metric", default=None, help="rank trials by this metric; default: the study's metric")
    p.add_argument("--mode", choices=("min", "max"), default=None, help="min or max of --metric; default: the study's mode")
    p.add_argument("--trial", default=None, metavar="ID", help="export this trial instead of the best one")
    p.add_argument("--rank-by", choices=("best", "last"), default=None,
                   help="rank and export each trial's best evaluated epoch or its last; default: the study's budget.rank_by")
    p.add_argument("--seed-pick", choices=("nearest", "best"), default="nearest",
                   help="a configuration repeated over seeds (budget.repeats): export the seed nearest its aggregate, "
                        "or its best seed")
    p.add_argument("--register", default=None, metavar="NAME",
                   help="also log the bundle to the trial's MLflow run and add it as a new version of registered model NAME")
    p.add_argument("--force", action="store_true", help="replace the bundle an earlier export wrote in --out (only its own files; other files make it refuse)")
    p.add_argument("--tracking-uri", default="", help=tracking)
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("generate", formatter_class=fmt, help="images (a PNG grid) from a GAN or DDPM bundle",
                       description="Sample from an exported GAN or DDPM bundle alone (no sweep folder, no Ray). GAN: "
                                   "8 images per row; DDPM: rows are digits 0-9 (or all --digit), columns different noise.")
    p.add_argument("bundle", metavar="BUNDLE", help="bundle folder made by `gentune export`")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--n", type=int, default=None, help="number of images; default 32 (GAN) or 100 (DDPM, 10 per digit)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise (the same seed gives the same images)")
    p.add_argument("--digit", type=int, default=None, help="DDPM only: generate only this digit (0-9)")
    p.add_argument("--guidance", type=float, default=None, help="DDPM only: guidance w; default: the trial's best w")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 or auto")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("predict", formatter_class=fmt, help="classify a folder of digit images with a DANN bundle",
                       description="Label every image in IMAGES (non-recursive; resized to 32x32 RGB) with an exported "
                                   "DANN bundle; writes the report's CSV format: image_name,label.")
    p.add_argument("bundle", metavar="BUNDLE", help="DANN bundle folder made by `gentune export`")
    p.add_argument("images", metavar="IMAGES", help="folder of images (png/jpg/...)")
    p.add_argument("--out", default=None, metavar="CSV", help="CSV file to write; default: print to stdout")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 or auto")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=cmd_predict)
