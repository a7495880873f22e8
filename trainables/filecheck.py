"""The one rule for files gentune reads but did not just write (sweep.json, waiting.json, Ray's state and result
files, checkpoints, bundles, label files, dataset caches, optuna.db): check what a file holds before anything uses
it. A violation is one FileContentError naming the file, the place in it (key, row, line) and what was expected;
the CLI prints it as one line and exits 2 (search/cli.py).

A JSON file's shape is a schema: a dataclass whose annotated fields say what each key holds (str, int, float,
bool, None, Literal, lists, dicts, tuples, nested schemas, `X | Y`, and `Annotated[T, check]` for ranges and
names). A field without a default is required; a key the schema does not name is an error unless the class sets
OPEN = True (a file another program writes, e.g. Ray's). A classmethod `consistent(obj)` may check keys against
each other and returns the first problem as (place, expected, found) or None. `parse` returns the object it was
given, unchanged: the schema is a check, the readers keep their dicts.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import sqlite3
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

from trainables.errors import FileContentError, GentuneError

NOTHING = object()  # "found" when there is nothing to show (a key that is missing)


def show(v: Any) -> str:
    """A found value, short enough for one line."""
    try:
        text = json.dumps(v, default=str)
    except (TypeError, ValueError):  # (a circular structure cannot come from JSON, but say something anyway)
        text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def fail(path: Path | str, where: str, expected: str, found: Any = NOTHING,
         error: type[GentuneError] = FileContentError) -> GentuneError:
    """The one-line error: `<file>: <place>: expected <what>, found <value>` (place and value where known)."""
    msg = f"{path}: " + (f"{where}: " if where else "") + f"expected {expected}"
    if found is not NOTHING:
        msg += f", found {show(found)}"
    return error(msg)


# --- reading ---------------------------------------------------------------------------------------------

def require_file(path: Path, what: str, error: type[GentuneError] = FileContentError) -> Path:
    """`path` must be a file that is not empty; a folder, a missing file or an empty one is one error."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{path} is a folder, expected {what}")
    if not path.is_file():
        raise error(f"{path} does not exist (expected {what})")
    if path.stat().st_size == 0:
        raise error(f"{path} is empty, expected {what}")
    return path


def read_json(path: Path, what: str = "a JSON object", error: type[GentuneError] = FileContentError) -> Any:
    """The JSON value of a whole file; a truncated or edited file is an error naming its line and column."""
    require_file(path, what, error)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{path}: cannot read it ({first_line(e)}), expected {what}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{path}: line {e.lineno} column {e.colno}: expected {what} ({e.msg})") from None


def read_json_lines(path: Path, what: str = "one JSON object per line", *, partial_last: bool = False,
                    error: type[GentuneError] = FileContentError) -> list[tuple[int, dict]]:
    """(line number, object) of each line of a JSON-lines file. With `partial_last`, a last line that has no
    newline yet and does not parse is one being appended right now, and is left out; any other line that is
    not a JSON object is an error naming it."""
    require_file(path, what, error)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise error(f"{path}: cannot read it ({first_line(e)}), expected {what}") from None
    lines = data.split(b"\n")
    out = []
    for i, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except ValueError:
            if partial_last and i == len(lines):  # no newline after it: still being written
                continue
            raise error(f"{path}: line {i}: expected {what}, found a line that is not JSON "
                        f"({'cut off' if i == len(lines) else 'damaged'})") from None
        if not isinstance(obj, dict):
            raise fail(path, f"line {i}", "a JSON object", obj, error)
        out.append((i, obj))
    return out


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


def check_sqlite(path: Path, tables: dict[str, str], what: str, error: type[GentuneError] = FileContentError) -> None:
    """A SQLite file holding `tables` ({table: "col1, col2"} it must be able to select), opened read-only: a
    folder, an empty, truncated or foreign file is one error naming it. Checking never changes the file."""
    require_file(path, what, error)
    try:
        con = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            ok = con.execute("PRAGMA quick_check").fetchone()[0]
            if ok == "ok":
                for table, cols in tables.items():
                    con.execute(f"SELECT {cols} FROM {table} LIMIT 1").fetchall()
        finally:
            con.close()
    except sqlite3.Error as e:
        raise error(f"{path}: expected {what} ({first_line(e)})") from None
    if ok != "ok":
        raise error(f"{path}: expected {what}; it is damaged (SQLite integrity check: {str(ok)[:200]})")


# --- value checks for Annotated[...] ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Range:
    """A number in [lo, hi] (either end open when None)."""

    lo: float | None = None
    hi: float | None = None

    def __call__(self, v: Any) -> str | None:
        if (self.lo is not None and v < self.lo) or (self.hi is not None and v > self.hi):
            lo = "-inf" if self.lo is None else f"{self.lo:g}"
            hi = "inf" if self.hi is None else f"{self.hi:g}"
            return f"a value in [{lo}, {hi}]"
        return None


def non_empty(v: Any) -> str | None:
    return "a non-empty value" if len(v) == 0 else None


def unique(v: Any) -> str | None:
    seen = set()
    for x in v:
        key = json.dumps(x, sort_keys=True, default=str)
        if key in seen:
            return f"each entry once ({show(x)} is listed twice)"
        seen.add(key)
    return None


_PLAIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def plain_name(v: Any) -> str | None:
    """A sweep, study or file name: letters, digits, -_. (so never a path such as ../x)."""
    return None if _PLAIN.match(v) and v not in (".", "..") else "a plain name (letters, digits, -_.)"


Plain = Annotated[str, plain_name]
Mode = Literal["min", "max"]


# --- the schema check ----------------------------------------------------------------------------------------

Problem = tuple[str, str, Any]  # (place, expected, found)


def _join(where: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else f"key {key!r}" if not _PLAIN.match(str(key)) else str(key)


def describe(tp: Any) -> str:
    """What a type means to a user: 'a string', 'a list of integers', 'one of "min", "max"'."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return "any value"
    if origin is Annotated:
        return describe(args[0])
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(show(a) for a in args)
    if origin is list:
        return f"a list of {_plural(args[0])}"
    if origin is dict:
        return f"an object of {_plural(args[1])}"
    if origin is tuple:
        return f"a list [{', '.join(describe(a) for a in args)}]"
    if dataclasses.is_dataclass(tp):
        req = [f.name for f in dataclasses.fields(tp) if _required(f)]
        return "an object" + (f" with {', '.join(req)}" if req else "")
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false",
            type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


def _plural(tp: Any) -> str:
    d = describe(tp)
    simple = {"a string": "strings", "an integer": "integers", "a number": "numbers", "true or false": "booleans",
              "any value": "values"}
    return simple.get(d, d)


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def problem(v: Any, tp: Any, where: str = "") -> Problem | None:
    """The first place where `v` does not hold what type `tp` says, or None."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return None
    if origin is Annotated:
        p = problem(v, args[0], where)
        if p is not None:
            return p
        for check in args[1:]:
            want = check(v)
            if want is not None:
                return where, want, v
        return None
    if origin in (Union, types.UnionType):
        # the option of the value's kind says what is wrong inside it (a number out of range, a bad key of an
        # object), rather than "a number or null"
        for a in args:
            if _kind(v, a):
                return problem(v, a, where)
        return where, describe(tp), v
    if origin is Literal:
        ok = any(v == a and type(v) is type(a) for a in args)
        return None if ok else (where, describe(tp), v)
    if tp is type(None):
        return None if v is None else (where, "null", v)
    if tp is bool:
        return None if isinstance(v, bool) else (where, "true or false", v)
    if tp is int:
        return None if isinstance(v, int) and not isinstance(v, bool) else (where, "an integer", v)
    if tp is float:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return None
        return where, "a finite number", v
    if tp is str:
        return None if isinstance(v, str) else (where, "a string", v)
    if origin is list:
        if not isinstance(v, list):
            return where, describe(tp), v
        for i, x in enumerate(v):
            p = problem(x, args[0], _join(where, i))
            if p is not None:
                return p
        return None
    if origin is tuple:
        if not isinstance(v, (list, tuple)) or len(v) != len(args):
            return where, describe(tp), v
        for i, (x, a) in enumerate(zip(v, args)):
            p = problem(x, a, _join(where, i))
            if p is not None:
                return p
        return None
    if origin is dict:
        if not isinstance(v, dict):
            return where, describe(tp), v
        for k, x in v.items():
            p = problem(k, args[0], _join(where, k)) or problem(x, args[1], _join(where, k))
            if p is not None:
                return p
        return None
    if dataclasses.is_dataclass(tp):
        return _record(v, tp, where)
    if isinstance(tp, type):  # a class such as torch.Tensor: an instance of it
        return None if isinstance(v, tp) else (where, f"a {tp.__name__}", type(v).__name__)
    raise TypeError(f"schema type {tp!r} is not supported")  # a bug in a schema, not in a file


def _kind(v: Any, tp: Any) -> bool:
    """Whether `v` is of the kind `tp` asks for, looking no deeper than its top level."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return _kind(v, args[0])
    if origin in (list, tuple):
        return isinstance(v, (list, tuple) if origin is tuple else list)
    if origin is dict or dataclasses.is_dataclass(tp):
        return isinstance(v, dict)
    if origin in (Union, types.UnionType):
        return any(_kind(v, a) for a in args)
    return problem(v, tp) is None


def _record(v: Any, cls: type, where: str) -> Problem | None:
    if not isinstance(v, dict):
        return where, describe(cls), v
    hints = get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if not getattr(cls, "OPEN", False):
        extra = [k for k in v if k not in fields]
        if extra:
            return _join(where, extra[0]), f"only the keys {', '.join(fields)} (an unknown key)", NOTHING
    for name, f in fields.items():
        if name not in v:
            if _required(f):
                return _join(where, name), f"{describe(hints[name])} (the key is missing)", NOTHING
            continue
        p = problem(v[name], hints[name], _join(where, name))
        if p is not None:
            return p
    consistent: Callable[[dict], Problem | None] | None = getattr(cls, "consistent", None)
    if consistent is not None:
        p = consistent(v)
        if p is not None:
            return (_join(where, p[0]) if where and p[0] else p[0] or where), p[1], p[2]
    return None


def parse(obj: Any, schema: Any, path: Path | str, where: str = "",
          error: type[GentuneError] = FileContentError) -> Any:
    """`obj` (read from file `path`) if it holds what `schema` says, else one error naming the place."""
    p = problem(obj, schema, where)
    if p is not None:
        raise fail(path, p[0], p[1], p[2], error)
    return obj


def read_checked(path: Path, schema: Any, error: type[GentuneError] = FileContentError) -> Any:
    """read_json + parse: a JSON file that must hold what `schema` says."""
    return parse(read_json(path, describe(schema), error), schema, path, error=error)


def duplicates(entries: typing.Iterable[tuple[str, Any, str]], path: Path | str, what: str,
               error: type[GentuneError] = FileContentError) -> None:
    """Each (name, value, place) once: a name listed twice is one error naming both places (and, where the
    two disagree, that they contradict each other)."""
    seen: dict[str, tuple[Any, str]] = {}
    for name, value, place in entries:
        if name in seen:
            v0, p0 = seen[name]
            how = (f"listed with {show(v0)} at {p0} and {show(value)} here: contradictory" if v0 != value
                   else f"already listed at {p0}")
            raise error(f"{path}: {place}: expected each {what} once; {name} is {how}")
        seen[name] = (value, place)
