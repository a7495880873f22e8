"""`gentune summary`."""
from __future__ import annotations

import argparse

from search.commands import Help


def cmd_summary(args: argparse.Namespace) -> int:
    from analysis.summary import format_summary
    from analysis.sweepdata import Sweep

    print(format_summary(Sweep(args.sweep, args.tracking_uri)))
    return 0


def register(sub) -> None:
    p = sub.add_parser("summary", formatter_class=Help,
                       help="what each family of a sweep reached: GAN face rate/FID, DDPM accuracy, the DANN table")
    p.add_argument("sweep", help="sweep folder (runs/<name>)")
    p.add_argument("--tracking-uri", default="", help="MLflow tracking URI; default: the one in sweep.json")
    p.set_defaults(func=cmd_summary)
