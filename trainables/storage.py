"""Where a sweep folder lives, read and written through one layer: pyarrow's filesystems, which Ray Tune uses too.

A sweep's address is what `gentune sweep` prints and every command takes: a local folder, or a URI that pyarrow's
filesystems take (s3://bucket/sweeps/x, gs://bucket/x, hdfs://...), pyarrow's options included as a query string
(s3://bucket/x?endpoint_override=host:9000&scheme=http). A URI never goes through pathlib (Path("s3://b/x") is
"s3:/b/x"); `join` keeps a query string at the end.

Reading a remote sweep fetches only what a command needs: `mirror` copies the small files of the folder (its
records, Tune's state, the trials' results) into a local cache, each file only when its size or time changed
since the last copy, and skips checkpoints; a command that needs a checkpoint fetches that one file (`fetch`).
"""
from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from trainables.errors import GentuneError
from trainables.files import atomic_open


def is_remote(address: str) -> bool:
    """A URI of a remote filesystem (not a path, not file://)."""
    return "://" in address and not address.startswith("file://")


def join(base: str, *parts: str) -> str:
    """`base`/parts for a folder or a URI. A URI's query string (pyarrow's options, e.g.
    s3://bucket/x?endpoint_override=host:9000) stays at the end, after the joined path."""
    parts = tuple(p for p in parts if p)
    if not is_remote(base):
        return str(Path(base.removeprefix("file://"), *parts))
    head, q, query = base.partition("?")
    return "/".join([head.rstrip("/"), *(p.strip("/") for p in parts)]) + q + query


def without_query(address: str) -> str:
    """The address as a user reads it: a URI without its (possibly secret-bearing) query string."""
    return address.partition("?")[0] if is_remote(address) else address


def cache_dir(kind: str, address: str) -> Path:
    """A local folder of this machine's cache for a remote sweep ($GENTUNE_CACHE or ~/.cache/gentune)."""
    root = Path(os.environ.get("GENTUNE_CACHE") or Path.home() / ".cache" / "gentune")
    name = without_query(address).rstrip("/").rsplit("/", 1)[-1] or "sweep"
    return root / kind / f"{name}-{hashlib.sha1(address.encode()).hexdigest()[:10]}"


@contextmanager
def as_stored(local: Path, folder: "Folder | None") -> Iterator[None]:
    """Errors about the files of `local`, a copy of a remote `folder`, name the files in the store."""
    try:
        yield
    except GentuneError as e:
        if folder is None or not folder.remote:
            raise
        raise type(e)(str(e).replace(str(local), str(folder))) from None


class Folder:
    """A folder on local disk or remote storage: read, write, list, copy down and up."""

    def __init__(self, address: str) -> None:
        import pyarrow.fs as pafs

        self.remote = is_remote(address)
        if self.remote:
            self.address = address
            try:
                self.fs, base = pafs.FileSystem.from_uri(address)
            except Exception as e:  # pyarrow's ArrowInvalid / OSError for an unknown scheme or a bad option
                raise GentuneError(f"storage {without_query(address)}: not a storage URI pyarrow can open "
                                   f"({str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__})") from None
            self.base = base.rstrip("/")
        else:
            self.address = str(Path(address.removeprefix("file://")).expanduser().resolve())
            self.fs, self.base = pafs.LocalFileSystem(), self.address

    def __str__(self) -> str:
        return without_query(self.address)

    @property
    def name(self) -> str:
        return self.base.rstrip("/").rsplit("/", 1)[-1]

    def uri(self, rel: str = "") -> str:
        return join(self.address, rel)

    def _path(self, rel: str) -> str:
        return f"{self.base}/{rel.strip('/')}" if rel else self.base

    @contextmanager
    def errors(self, what: str) -> Iterator[None]:
        """A failure of the store (unreachable, denied) is one line naming the address and what was being done."""
        try:
            yield
        except GentuneError:
            raise
        except (OSError, ValueError) as e:
            if isinstance(e, FileNotFoundError) and not self.remote:
                raise
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:240]
            raise GentuneError(f"storage {self}: cannot {what} ({first})") from None

    def info(self, rel: str = ""):
        with self.errors(f"read {rel or 'the folder'}"):
            return self.fs.get_file_info(self._path(rel))

    def exists(self, rel: str = "") -> bool:
        import pyarrow.fs as pafs

        return self.info(rel).type != pafs.FileType.NotFound

    def is_dir(self, rel: str = "") -> bool:
        import pyarrow.fs as pafs

        return self.info(rel).type == pafs.FileType.Directory

    def is_file(self, rel: str) -> bool:
        import pyarrow.fs as pafs

        return self.info(rel).type == pafs.FileType.File

    def read_bytes(self, rel: str) -> bytes:
        with self.errors(f"read {rel}"):
            with self.fs.open_input_stream(self._path(rel)) as f:
                return f.read()

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Readers never see half a file: an object store's PUT replaces the object whole; a local file is
        written beside and renamed."""
        if not self.remote:
            with atomic_open(Path(self._path(rel)), "wb") as f:
                f.write(data)
            return
        with self.errors(f"write {rel}"):
            with self.fs.open_output_stream(self._path(rel)) as f:
                f.write(data)

    def delete(self, rel: str) -> None:
        import pyarrow.fs as pafs

        with self.errors(f"delete {rel}"):
            if self.info(rel).type == pafs.FileType.File:
                self.fs.delete_file(self._path(rel))

    def listing(self, rel: str = "", recursive: bool = False) -> dict[str, tuple[int, int]]:
        """{path relative to this folder: (size, mtime in ns)} of the files under `rel` (none when it is absent)."""
        import pyarrow.fs as pafs

        with self.errors(f"list {rel or 'the folder'}"):
            infos = self.fs.get_file_info(pafs.FileSelector(self._path(rel), recursive=recursive, allow_not_found=True))
        n = len(self.base) + 1
        return {i.path[n:]: (int(i.size or 0), int(i.mtime_ns or 0)) for i in infos if i.type == pafs.FileType.File}

    def subfolders(self, rel: str = "") -> list[str]:
        import pyarrow.fs as pafs

        with self.errors(f"list {rel or 'the folder'}"):
            infos = self.fs.get_file_info(pafs.FileSelector(self._path(rel), allow_not_found=True))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)

    def download(self, rel: str, dest: Path) -> Path:
        """Copy one file down to `dest` (whole or not at all)."""
        with self.errors(f"read {rel}"):
            with self.fs.open_input_stream(self._path(rel)) as src, atomic_open(dest, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
        return dest

    def upload(self, src: Path, rel: str) -> None:
        if not self.remote:
            with open(src, "rb") as f, atomic_open(Path(self._path(rel)), "wb") as out:
                shutil.copyfileobj(f, out, 1 << 20)
            return
        with self.errors(f"write {rel}"):
            with open(src, "rb") as f, self.fs.open_output_stream(self._path(rel)) as out:
                shutil.copyfileobj(f, out, 1 << 20)

    def mirror(self, dest: Path, fetch: Callable[[str], bool]) -> dict[str, tuple[int, int]]:
        """Copy the files of this folder for which `fetch(relative path)` holds into `dest`, each only when its
        size or time changed since the last mirror into `dest`; files gone from the store go from `dest` too.
        Returns the listing of the whole folder (what was not copied can be fetched one by one)."""
        import json

        files = self.listing(recursive=True)
        index_path = dest / ".mirror.json"
        try:
            seen = {k: tuple(v) for k, v in json.loads(index_path.read_text()).items()}
        except (OSError, ValueError, AttributeError):
            seen = {}
        kept = {rel: stamp for rel, stamp in sorted(files.items()) if fetch(rel)}
        todo = [rel for rel, stamp in kept.items() if seen.get(rel) != stamp or not (dest / rel).is_file()]
        if len(todo) > 1:  # an object store answers each request in tens of ms: many at once
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda rel: self.download(rel, dest / rel), todo))
        elif todo:
            self.download(todo[0], dest / todo[0])
        for rel in set(seen) - set(kept):
            (dest / rel).unlink(missing_ok=True)
        dest.mkdir(parents=True, exist_ok=True)
        with atomic_open(index_path, "w") as f:
            json.dump(kept, f)
        return files
