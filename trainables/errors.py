"""The errors gentune reports to a user as one line (exit code 2), not as a traceback."""
from __future__ import annotations


class GentuneError(Exception):
    """A user-facing error: the message names the file, key or value and what was expected."""


class SpecError(GentuneError):
    """A sweep/training spec or a config value is invalid."""


class DataError(GentuneError):
    """A dataset is missing, unreadable or malformed."""


class CheckpointError(GentuneError):
    """A checkpoint or exported bundle cannot be read or does not match."""


class FileContentError(GentuneError):
    """A file gentune reads (a sweep folder's files, a checkpoint, a bundle, a label file) does not hold what it
    must: the message names the file, the place in it (key, row, line) and what was expected."""
