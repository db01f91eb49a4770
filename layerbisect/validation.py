"""The edge where user files and values come in: typed, ranged access that fails as one ``InputError``.

Design notes
- Everything a user hands us is hostile until checked: a config.json field can be a string where a
  number belongs ("640px"), a list where an object belongs, negative, NaN, or 10**30; a "file" can be a
  FIFO (opening it blocks forever), a directory, unreadable, or larger than any sane config. Each check
  here raises ``InputError(where, problem)`` naming the file and the field, so the CLI prints one line
  and exits 2 instead of a traceback, a hang or a silent default.
- Field helpers (``field_int``, ``field_float``, ``field_str``, ``field_bool``, ``field_list``,
  ``field_dict``) read one key of a mapping (a parsed config.json, GGUF metadata) with a type and a
  closed range. ``default`` applies when the key is absent *or* null (HF writes ``null`` for unset
  fields); without a default a missing key is an error. ``bool`` is never accepted as a number
  (``True == 1`` in Python; in a config it is a typo).
- File helpers (``regular_file``, ``read_text``, ``read_json``) stat before they open: only a regular,
  readable file of bounded size is read, and every ``OSError`` becomes an ``InputError``.
- ``relative_inside`` keeps names taken from a file (an index's shard names) inside the directory they
  came from, lexically (no absolute path, no ``..``): symlinks are allowed, because the HF hub cache
  links every snapshot file to a blob outside the snapshot directory.
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import InputError

_MISSING: Any = object()

JSON_MAX_BYTES = 64 << 20  # config.json / index / tokenizer_config.json: real ones are < 10 MiB
_JSON_MAX_DEPTH = 64  # json.loads recurses; a 10**5-deep "[[[[..." would raise RecursionError


def _where(where: str | Path, key: str) -> str:
    return f"{where}: {key}" if key else str(where)


def _get(cfg: Mapping[str, Any], key: str, where: str | Path, default: Any) -> Any:
    if not isinstance(cfg, Mapping):
        raise InputError(where, f"expected a JSON object holding {key!r}, got {type(cfg).__name__}")
    v = cfg.get(key)
    if v is None:
        if default is _MISSING:
            raise InputError(where, f"{key!r} is missing" if key not in cfg else f"{key!r} is null")
        return default
    return v


def _range(v: float, key: str, where: str | Path, lo: float | None, hi: float | None, unit: str = "") -> None:
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "inf" if hi is None else f"{hi:g}"
        raise InputError(where, f"{key!r} = {v!r}{unit} is outside [{lo_s}, {hi_s}]")


def as_int(v: Any, key: str, *, where: str | Path, lo: int | None = None, hi: int | None = None) -> int:
    """``v`` as an int in [lo, hi]; an integral float (``4.0``) is accepted, a bool, a string or ``4.5`` is not."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) and not hasattr(v, "__index__"):
        raise InputError(where, f"{key!r} must be an integer, got {type(v).__name__} {_short(v)}")
    if isinstance(v, float):
        if not (math.isfinite(v) and v.is_integer()):
            raise InputError(where, f"{key!r} must be an integer, got {v!r}")
        v = int(v)
    v = int(v)
    _range(v, key, where, lo, hi)
    return v


def as_float(
    v: Any, key: str, *, where: str | Path, lo: float | None = None, hi: float | None = None, positive: bool = False
) -> float:
    """``v`` as a finite float in [lo, hi] (``positive``: > 0)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) and not hasattr(v, "__float__"):
        raise InputError(where, f"{key!r} must be a number, got {type(v).__name__} {_short(v)}")
    try:
        x = float(v)
    except (TypeError, ValueError, OverflowError):
        raise InputError(where, f"{key!r} must be a number, got {_short(v)}") from None
    if not math.isfinite(x):
        raise InputError(where, f"{key!r} must be finite, got {x!r}")
    if positive and x <= 0:
        raise InputError(where, f"{key!r} must be > 0, got {x!r}")
    _range(x, key, where, lo, hi)
    return x


def field_int(
    cfg: Mapping[str, Any], key: str, *, where: str | Path, lo: int | None = None, hi: int | None = None,
    default: Any = _MISSING,
) -> int:
    """``cfg[key]`` as an int in [lo, hi]; ``default`` when absent or null (returned unchecked)."""
    v = _get(cfg, key, where, default)
    if v is default and default is not _MISSING:
        return v
    return as_int(v, key, where=where, lo=lo, hi=hi)


def field_float(
    cfg: Mapping[str, Any], key: str, *, where: str | Path, lo: float | None = None, hi: float | None = None,
    positive: bool = False, default: Any = _MISSING,
) -> float:
    """``cfg[key]`` as a finite float in [lo, hi]; ``default`` when absent or null (returned unchecked)."""
    v = _get(cfg, key, where, default)
    if v is default and default is not _MISSING:
        return v
    return as_float(v, key, where=where, lo=lo, hi=hi, positive=positive)


def field_str(
    cfg: Mapping[str, Any], key: str, *, where: str | Path, choices: Any = None, default: Any = _MISSING
) -> str:
    v = _get(cfg, key, where, default)
    if v is default and default is not _MISSING:
        return v
    if not isinstance(v, str):
        raise InputError(where, f"{key!r} must be a string, got {type(v).__name__} {_short(v)}")
    if choices is not None and v not in choices:
        raise InputError(where, f"{key!r} = {v!r} is not one of {', '.join(map(str, choices))}")
    return v


def field_bool(cfg: Mapping[str, Any], key: str, *, where: str | Path, default: Any = _MISSING) -> bool:
    v = _get(cfg, key, where, default)
    if v is default and default is not _MISSING:
        return v
    if not isinstance(v, bool):
        raise InputError(where, f"{key!r} must be true or false, got {type(v).__name__} {_short(v)}")
    return v


def field_list(
    cfg: Mapping[str, Any], key: str, *, where: str | Path, of: type | tuple[type, ...] | None = None,
    max_len: int = 1 << 20, default: Any = _MISSING,
) -> list[Any]:
    """``cfg[key]`` as a list (elements of type ``of`` when given); a bare string is not a list."""
    v = _get(cfg, key, where, default)
    if v is default and default is not _MISSING:
        return v
    if not isinstance(v, (list, tuple)):
        raise InputError(where, f"{key!r} must be a list, got {type(v).__name__} {_short(v)}")
    if len(v) > max_len:
        raise InputError(where, f"{key!r} has {len(v)} entries (at most {max_len})")
    if of is not None:
        for k, x in enumerate(v):
            if isinstance(x, bool) and of is not bool or not isinstance(x, of):
                raise InputError(where, f"{key}[{k}] must be {_type_names(of)}, got {type(x).__name__} {_short(x)}")
    return list(v)


def field_dict(cfg: Mapping[str, Any], key: str, *, where: str | Path, default: Any = _MISSING) -> dict[str, Any]:
    v = _get(cfg, key, where, default)
    if v is default and default is not _MISSING:
        return v
    if not isinstance(v, Mapping):
        raise InputError(where, f"{key!r} must be a JSON object, got {type(v).__name__} {_short(v)}")
    return dict(v)


def _type_names(of: type | tuple[type, ...]) -> str:
    ts = of if isinstance(of, tuple) else (of,)
    return " or ".join({"str": "a string", "int": "an integer", "float": "a number", "dict": "an object"}.get(
        t.__name__, t.__name__) for t in ts)


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


# ---------------------------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------------------------


def regular_file(path: str | Path, what: str = "file") -> os.stat_result:
    """stat ``path`` and insist on a regular, readable file; never opens it (a FIFO would block the open)."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise InputError(p, f"no such {what}") from None
    except NotADirectoryError:
        raise InputError(p, f"no such {what} (a parent is not a directory)") from None
    except OSError as e:
        raise InputError(p, f"cannot stat the {what}: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(p, f"is a directory, expected a {what}")
    if not stat.S_ISREG(st.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device"
        raise InputError(p, f"is {kind}, not a regular {what}")
    if not os.access(p, os.R_OK):
        raise InputError(p, "is not readable (permission denied)")
    return st


def open_regular(path: str | Path, what: str = "file"):  # noqa: ANN201 - a binary file object
    """``regular_file`` then open for reading; O_NONBLOCK so a file swapped for a FIFO in between cannot block."""
    regular_file(path, what)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise InputError(path, f"is not a regular {what}")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except OSError as e:
        raise InputError(path, f"cannot open the {what}: {e.strerror or e}") from None


def read_bytes(path: str | Path, what: str = "file", max_bytes: int = JSON_MAX_BYTES) -> bytes:
    """A whole regular file of at most ``max_bytes``."""
    st = regular_file(path, what)
    if st.st_size > max_bytes:
        raise InputError(path, f"is {st.st_size} bytes; a {what} is at most {max_bytes}")
    try:
        with open_regular(path, what) as f:
            data = f.read(st.st_size + 1)  # read(n) preallocates n bytes: ask for what the file holds, not the cap
    except OSError as e:
        raise InputError(path, f"cannot read the {what}: {e.strerror or e}") from None
    if len(data) > max_bytes:
        raise InputError(path, f"is larger than {max_bytes} bytes; a {what} is at most that")
    return data


def read_text(path: str | Path, what: str = "file", max_bytes: int = JSON_MAX_BYTES) -> str:
    data = read_bytes(path, what, max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(path, f"is not UTF-8 text (byte {e.start}: {data[e.start:e.start + 1]!r})") from None


def parse_json(text: str | bytes, where: str | Path) -> Any:
    """json.loads with the nesting bounded (no RecursionError) and errors as ``InputError``."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(where, f"is not UTF-8 (byte {e.start})") from None
    if _depth_exceeds(text, _JSON_MAX_DEPTH):
        raise InputError(where, f"JSON nested deeper than {_JSON_MAX_DEPTH} levels")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(where, f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except (RecursionError, ValueError) as e:
        raise InputError(where, f"not valid JSON ({type(e).__name__})") from None


def _depth_exceeds(text: str, limit: int) -> bool:
    """Brackets outside strings nested deeper than ``limit`` (a linear scan; only when brackets are many)."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth, in_str, esc = 0, False, False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def read_json(path: str | Path, what: str = "JSON file", *, expect: type | None = dict,
              max_bytes: int = JSON_MAX_BYTES) -> Any:
    """A regular JSON file; ``expect`` (default: an object) checks the top-level type."""
    data = parse_json(read_text(path, what, max_bytes), path)
    if expect is not None and not isinstance(data, expect):
        want = "a JSON object" if expect is dict else f"a JSON {expect.__name__}"
        raise InputError(path, f"expected {want}, got {type(data).__name__}")
    return data


def relative_inside(name: Any, base: str | Path, where: str | Path, what: str = "file") -> Path:
    """``base / name`` for a relative name that stays inside ``base`` (lexically: no absolute path, no ``..``)."""
    if not isinstance(name, str) or not name:
        raise InputError(where, f"{what} name must be a non-empty string, got {_short(name)}")
    if "\x00" in name:
        raise InputError(where, f"{what} name {name!r} holds a NUL byte")
    pp = PurePosixPath(name.replace("\\", "/"))
    if pp.is_absolute() or name.startswith("\\") or (len(name) > 1 and name[1] == ":"):
        raise InputError(where, f"{what} {name!r} is an absolute path; it must be inside {base}")
    if ".." in pp.parts:
        raise InputError(where, f"{what} {name!r} leaves the directory {base}")
    return Path(base) / Path(*pp.parts)


__all__ = [
    "as_float", "as_int", "field_bool", "field_dict", "field_float", "field_int", "field_list", "field_str",
    "open_regular", "parse_json", "read_bytes", "read_json", "read_text", "regular_file", "relative_inside",
]
