"""layerbisect/validation.py: typed, ranged fields and regular files, each failure one InputError naming the field."""

from __future__ import annotations

import os

import pytest

from layerbisect.errors import InputError
from layerbisect.validation import (
    field_bool,
    field_dict,
    field_float,
    field_int,
    field_list,
    parse_json,
    read_json,
    read_text,
    regular_file,
    relative_inside,
)

CFG = {"hidden_size": 640, "eps": 1e-6, "px": "640px", "flag": True, "neg": -3, "none": None, "f4": 4.0,
       "half": 4.5, "nan": float("nan"), "lst": [1, 2], "obj": {"a": 1}, "big": 10**30}


@pytest.mark.parametrize(
    ("key", "kw", "needle"),
    [
        ("px", {}, "must be an integer, got str '640px'"),
        ("flag", {}, "must be an integer, got bool"),
        ("half", {}, "must be an integer, got 4.5"),
        ("nan", {}, "must be an integer"),
        ("neg", {"lo": 1}, "'neg' = -3 is outside [1, inf]"),
        ("big", {"hi": 1 << 20}, "outside"),
        ("missing", {}, "'missing' is missing"),
        ("none", {}, "'none' is null"),
        ("lst", {}, "got list"),
    ],
)
def test_field_int_refuses(key, kw, needle):
    with pytest.raises(InputError) as e:
        field_int(CFG, key, where="cfg.json", **kw)
    assert str(e.value).startswith("cfg.json: ") and needle in str(e.value), str(e.value)


def test_field_int_accepts_and_defaults():
    assert field_int(CFG, "hidden_size", where="c", lo=1, hi=1 << 20) == 640
    assert field_int(CFG, "f4", where="c") == 4  # an integral float is an integer
    assert field_int(CFG, "missing", where="c", default=7) == 7
    assert field_int(CFG, "none", where="c", default=None) is None  # HF writes null for unset


@pytest.mark.parametrize(("key", "kw", "needle"), [
    ("nan", {}, "finite"), ("px", {}, "number"), ("flag", {}, "number"), ("neg", {"positive": True}, "> 0"),
    ("big", {"hi": 1.0}, "outside"),
])
def test_field_float_refuses(key, kw, needle):
    with pytest.raises(InputError, match=needle):
        field_float(CFG, key, where="c", **kw)


def test_other_fields():
    assert field_float(CFG, "eps", where="c", positive=True, hi=1.0) == 1e-6
    assert field_bool(CFG, "flag", where="c") is True
    with pytest.raises(InputError, match="true or false"):
        field_bool(CFG, "hidden_size", where="c")
    assert field_list(CFG, "lst", where="c", of=int) == [1, 2]
    with pytest.raises(InputError, match=r"lst\[0\] must be a string"):
        field_list(CFG, "lst", where="c", of=str)
    with pytest.raises(InputError, match="must be a list"):
        field_list(CFG, "px", where="c")  # a string is not a list of characters
    assert field_dict(CFG, "obj", where="c") == {"a": 1}
    with pytest.raises(InputError, match="JSON object"):
        field_dict(CFG, "lst", where="c")
    with pytest.raises(InputError, match="expected a JSON object"):
        field_int([1, 2], "x", where="c")  # type: ignore[arg-type]


def test_regular_file_refuses_what_would_block_or_mislead(tmp_path):
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="is a FIFO"):
        regular_file(fifo)
    with pytest.raises(InputError, match="is a directory"):
        regular_file(tmp_path)
    with pytest.raises(InputError, match="no such"):
        regular_file(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="parent is not a directory"):
        regular_file(tmp_path / "file" / "below")
    dangling = tmp_path / "link"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(InputError, match="no such"):
        regular_file(dangling)
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(InputError, match="cannot stat"):
        regular_file(loop)


def test_read_json_bounds(tmp_path):
    p = tmp_path / "c.json"
    p.write_bytes(b"\xff\xfe{}")
    with pytest.raises(InputError, match="not UTF-8"):
        read_json(p)
    p.write_text("[" * 50_000 + "]" * 50_000)
    with pytest.raises(InputError, match="nested deeper"):
        read_json(p)
    p.write_text("[1]")
    with pytest.raises(InputError, match="expected a JSON object, got list"):
        read_json(p)
    p.write_text('{"a": NaN}')  # Python's json accepts it; field checks refuse it where a finite number belongs
    assert read_json(p)["a"] != read_json(p)["a"]
    p.write_text("x" * 100)
    with pytest.raises(InputError, match="at most 10"):
        read_text(p, max_bytes=10)
    with pytest.raises(InputError, match="not valid JSON"):
        parse_json("{", "w")


@pytest.mark.parametrize("name", ["/etc/passwd", "../x.safetensors", "a/../../x", "C:\\x", "\\\\srv\\x", "", 5,
                                  None, "a\x00b"])
def test_relative_inside_refuses(tmp_path, name):
    with pytest.raises(InputError):
        relative_inside(name, tmp_path, "index.json")


def test_relative_inside_allows_subdirectories_not_dotdot(tmp_path):
    assert relative_inside("sub/model.safetensors", tmp_path, "i") == tmp_path / "sub" / "model.safetensors"
    with pytest.raises(InputError, match="leaves"):  # lexical: any ".." is refused, even one that comes back
        relative_inside("a/../b.safetensors", tmp_path, "i")
