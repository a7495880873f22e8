"""Subcommands of `gentune`. Each module has `register(subparsers)` which adds its parsers,
each with `set_defaults(func=...)`; a func takes the parsed args and returns an exit code."""
