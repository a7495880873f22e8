"""`gentune`: one entry point, one subcommand per task. Errors a user can fix are one line, exit 2."""
from __future__ import annotations

import argparse
import importlib
import sys

from search.commands import Help
from trainables.errors import GentuneError

# Modules under search/commands, each with register(subparsers).
COMMAND_MODULES = ("core", "sweep", "metrics", "analysis", "ui", "summary", "data")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gentune",
        description="Hyperparameter search for face GANs, conditional DDPM and DANN (Ray Tune + Optuna + MLflow).",
        formatter_class=Help,
    )
    p.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(f"search.commands.{name}")
        except ModuleNotFoundError as e:  # a command module not written yet must not break the others
            if e.name != f"search.commands.{name}":
                raise
            continue
        mod.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except GentuneError as e:
        if args.debug:
            raise
        print(f"gentune {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gentune {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
