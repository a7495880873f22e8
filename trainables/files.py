"""Atomic file writes: readers (a concurrent trial, `gentune status`) never see half a file."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """A file whose content replaces `path` in one step when the block ends; on an error nothing is left.
    The result has a plain open()'s permissions (0644), not a temporary file's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# The image files gentune reads from a folder (data folders, `gentune predict`, face rate): pytorch-fid's
# set (fid_score.IMAGE_EXTENSIONS), matched case-insensitively. FID's own folder listing is pytorch-fid's.
IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")


def image_files(folder: Path) -> list[Path]:
    """The image files of `folder` (not its subfolders), sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
