"""layerbisect/outputs.py: staged report directories and atomic files; nothing of the user's overwritten or mixed."""

from __future__ import annotations

import os
import signal

import pytest

from layerbisect.errors import InputError
from layerbisect.outputs import (
    MARKER,
    StagedDir,
    check_out_dir,
    check_out_file,
    signals_deferred,
    write_file_atomic,
)


def _tree(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_new_directory_appears_whole(tmp_path):
    t = tmp_path / "deep" / "rep"
    with StagedDir(t) as stage:
        (stage / "a.txt").write_text("a")
        assert not t.exists()  # nothing visible until the block ends
    assert _tree(t) == {MARKER: (t / MARKER).read_bytes(), "a.txt": b"a"}
    assert [p.name for p in t.parent.iterdir()] == ["rep"]
    um = os.umask(0o022)
    os.umask(um)
    assert t.stat().st_mode & 0o777 == 0o777 & ~um  # a folder's usual mode, not mkdtemp's 0700


def test_previous_report_is_swapped_not_mixed(tmp_path):
    t = tmp_path / "rep"
    with StagedDir(t) as s:
        (s / "old.md").write_text("old")
        (s / "only-old.json").write_text("{}")
    with StagedDir(t) as s:
        (s / "old.md").write_text("new")
    assert sorted(p.name for p in t.iterdir()) == [MARKER, "old.md"]  # only-old.json is gone with the old report
    assert (t / "old.md").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]


def test_error_inside_leaves_the_previous_report(tmp_path):
    t = tmp_path / "rep"
    with StagedDir(t) as s:
        (s / "r.json").write_text("good")
    before = _tree(t)
    with pytest.raises(RuntimeError), StagedDir(t) as s:
        (s / "r.json").write_text("hal")
        raise RuntimeError("renderer crashed")
    assert _tree(t) == before and sorted(p.name for p in tmp_path.iterdir()) == ["rep"]


def test_foreign_directory(tmp_path):
    t = tmp_path / "home"
    t.mkdir()
    (t / "thesis.tex").write_text("precious")
    with pytest.raises(InputError, match="not made by layerbisect"):
        check_out_dir(t)
    with StagedDir(t, overwrite=True) as s:
        (s / "report.md").write_text("r")
    assert (t / "thesis.tex").read_text() == "precious" and (t / "report.md").read_text() == "r"
    assert not (t / MARKER).exists()  # still foreign: the next run needs --overwrite again


def test_empty_directory_is_fine_and_becomes_ours(tmp_path):
    t = tmp_path / "empty"
    t.mkdir()
    with StagedDir(t) as s:
        (s / "x").write_text("x")
    assert (t / MARKER).is_file()


def test_paths_that_cannot_work(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        check_out_dir(tmp_path / "f")
    with pytest.raises(InputError, match="is not a directory"):
        check_out_dir(tmp_path / "f" / "sub" / "deeper")
    with pytest.raises(InputError, match="is a directory"):
        check_out_file(tmp_path)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(InputError, match="not a regular file"):
        check_out_file(tmp_path / "fifo", overwrite=True)


def test_atomic_file_never_replaces_a_foreign_file_silently(tmp_path):
    p = tmp_path / "out.xml"
    p.write_text("theirs")
    with pytest.raises(InputError, match="--overwrite"):
        write_file_atomic(p, "mine")
    assert p.read_text() == "theirs"
    write_file_atomic(p, "mine", ours=lambda q: q.read_text() == "theirs")
    assert p.read_text() == "mine"
    write_file_atomic(p, "again", overwrite=True)
    assert p.read_text() == "again" and sorted(x.name for x in tmp_path.iterdir()) == ["out.xml"]


def test_signals_deferred_delivers_after_the_block():
    seen = []
    old = signal.signal(signal.SIGINT, lambda n, f: seen.append("handler"))
    try:
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            seen.append("inside")
        seen.append("after")
    finally:
        signal.signal(signal.SIGINT, old)
    assert seen == ["inside", "handler", "after"]


def test_dot_in_an_empty_working_directory_keeps_the_directory(tmp_path, monkeypatch):
    d = tmp_path / "work"
    d.mkdir()
    monkeypatch.chdir(d)
    with StagedDir(".") as s:
        (s / "report.md").write_text("r")
    assert os.getcwd() == str(d) and sorted(os.listdir(d)) == [MARKER, "report.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_the_interrupt_line_names_what_was_already_written(tmp_path, capsys, monkeypatch):
    from layerbisect import outputs
    from layerbisect.cli.errors import interrupted

    monkeypatch.setattr(outputs, "COMMITTED", [])
    with pytest.raises(SystemExit) as e:
        interrupted(signal.SIGINT)
    assert e.value.code == 130 and capsys.readouterr().err == "bisect: interrupted; no output was changed\n"
    with StagedDir(tmp_path / "rep") as stage:
        (stage / "a.txt").write_text("a")
    assert outputs.COMMITTED == [tmp_path / "rep"]
    with pytest.raises(SystemExit):
        interrupted(signal.SIGTERM)
    assert f"already written in full: {tmp_path / 'rep'}" in capsys.readouterr().err
