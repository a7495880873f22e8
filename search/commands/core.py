"""`gentune arch` and `gentune train`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from search.commands import Help
from trainables.errors import SpecError

ARCHS = ("gan-a", "gan-b", "ddpm", "dann")


def arch_modules(name: str) -> list:
    """The modules the report prints for each architecture, in its order."""
    if name in ("gan-a", "gan-b"):
        from models.gan import build_gan

        return list(build_gan("A" if name == "gan-a" else "B"))
    if name == "ddpm":
        from models.ddpm import DDPM

        return [DDPM(n_feat=128)]
    from models.dann import DomainClassifier, FeatureExtractor, LabelPredictor

    return [FeatureExtractor(), LabelPredictor(), DomainClassifier()]


def arch_text(name: str) -> str:
    parts = []
    for m in arch_modules(name):
        n = sum(p.numel() for p in m.parameters())
        parts.append(f"{m}\nparameters: {n:,}")
    return "\n\n".join(parts)


def cmd_arch(args: argparse.Namespace) -> int:
    print(arch_text(args.name))
    return 0


def pick_study(spec, name: str | None):
    if name is None:
        if len(spec.studies) > 1:
            raise SpecError(f"the spec holds {len(spec.studies)} studies; pick one with --study "
                            f"({', '.join(s.name for s in spec.studies)})")
        return spec.studies[0]
    for s in spec.studies:
        if s.name == name:
            return s
    raise SpecError(f"--study {name!r} is not in the spec; it has {', '.join(s.name for s in spec.studies)}")


def cmd_train(args: argparse.Namespace) -> int:
    from search.spec import load_spec
    from trainables.standalone import train_standalone

    spec = load_spec(args.spec, args.set, smoke=args.smoke)
    study = pick_study(spec, args.study)
    out = Path(args.out or f"runs/train-{study.name}{'-smoke' if args.smoke else ''}")
    print(f"gentune train: {study.family} ({study.name}) -> {out}", file=sys.stderr)
    reason = train_standalone(study.family, dict(study.config), out, quiet=args.quiet)
    print(f"gentune train: {'stopped: ' + reason if reason else 'finished'}; checkpoint {out / 'checkpoint.pt'}, metrics {out / 'metrics.jsonl'}")
    return 1 if reason else 0


def register(sub) -> None:
    fmt = Help
    p = sub.add_parser("arch", help="print an architecture as the report does, with its parameter count", formatter_class=fmt)
    p.add_argument("name", choices=ARCHS, help="which architecture")
    p.set_defaults(func=cmd_arch)

    p = sub.add_parser("train", help="run one trial without Ray (resumes when --out already holds a checkpoint)", formatter_class=fmt)
    p.add_argument("spec", help="spec YAML (its fixed config is used; the search space is ignored)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--out", default=None, help="output folder (checkpoint.pt, metrics.jsonl, samples/); default runs/train-<study>")
    p.add_argument("--study", default=None, help="which study of a multi-study spec to run")
    p.add_argument("--smoke", action="store_true", help="shrink the run to under a minute on 2 CPU cores with demo data")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines on the console")
    p.set_defaults(func=cmd_train)
