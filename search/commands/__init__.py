"""Subcommands of `gentune`. Each module has `register(subparsers)` which adds its parsers,
each with `set_defaults(func=...)`; a func takes the parsed args and returns an exit code."""
from __future__ import annotations

import argparse


class Help(argparse.ArgumentDefaultsHelpFormatter):
    """--help with each option's default, except where there is none to show (required, a flag, None, empty)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.required or action.nargs == 0 or action.default is None or action.default in ("", []):
            return action.help
        return super()._get_help_string(action)
