"""Writing what the user asked for without ever leaving a half-written or mixed result.

Design notes
- A report directory is written whole into a staging directory beside the target
  (``.NAME.tmp-XXXX`` in the same parent, so the final step is a ``rename`` on one filesystem)
  and moved into place only when every file is complete. An error or an interrupt before that
  removes the staging directory: the previous report stays exactly as it was.
- The move is a ``rename`` with SIGINT/SIGTERM/SIGHUP deferred (``signals_deferred``): a new
  target appears in one step; a previous layerbisect report (it holds the marker file
  ``.layerbisect-report``) is renamed aside, the new one renamed in, the old one deleted; into an
  existing empty directory (``-o .`` in a fresh directory) the files are moved one by one, so the
  directory itself (someone's working directory) stays. A signal
  that arrives meanwhile is delivered after the swap, so the directory holds either the old
  report or the new one, never a mix.
- A directory that layerbisect did not make (non-empty, no marker) is refused unless the user
  passes ``--overwrite``; even then only our files are replaced, one ``os.replace`` each, its other
  files are left alone, and no marker is written (the next run must say ``--overwrite`` again).
- A single output file (``--junit``) is written to ``.NAME.tmp-XXXX`` and ``os.replace``d; an
  existing file is replaced only when it is ours (``ours(path)``) or with ``--overwrite``.
- ``check_out_dir`` / ``check_out_file`` run before any work: a target under a file, a directory
  where a file should be, or a parent we cannot write (checked by creating and removing a probe
  directory, which is true even for root on a read-only filesystem) is an ``InputError`` in the
  first second, not after the model ran.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import InputError

MARKER = ".layerbisect-report"
COMMITTED: list[Path] = []  # every output moved into place by this process, in order (the CLI's interrupt line)
_MARKER_TEXT = json.dumps({"layerbisect_report": 1}) + "\n"
_DEFERRED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextmanager
def signals_deferred() -> Iterator[list[int]]:
    """Hold SIGINT/SIGTERM/SIGHUP until the block ends, then act on the first one as it would have.

    The handlers are swapped for a recorder (not masked: in a multi-threaded process the kernel may
    hand a process signal to any thread whose mask lets it through, and Python then runs the
    handler in the main thread at once). Yields the list of signals received so far, so that long
    work inside the block can stop early (``engines/llamacpp.py`` aborts llama.cpp's compute).
    Main thread only; elsewhere a no-op (the list stays empty).
    """
    pending: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield pending
        return
    old = {s: signal.getsignal(s) for s in _DEFERRED}
    for s in _DEFERRED:
        signal.signal(s, lambda n, f: pending.append(n))
    try:
        yield pending
    finally:
        for s, h in old.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        if pending:
            h = old[pending[0]]
            if callable(h):
                h(pending[0], None)  # e.g. raises Interrupted / KeyboardInterrupt, now that the block is done
            elif h == signal.SIG_DFL:
                os.kill(os.getpid(), pending[0])


def _umask() -> int:
    um = os.umask(0o022)
    os.umask(um)
    return um


def usual_mode(path: str | Path) -> None:
    """Give a file we wrote the mode a plain ``open`` would (0666 less the umask): some writers (safetensors'
    ``save_file``) create 0600 files, which a shared CI artifact folder should not hold."""
    os.chmod(path, 0o666 & ~_umask())


def is_ours(d: Path) -> bool:
    return (d / MARKER).is_file()


def _nearest_existing(p: Path) -> Path:
    q = p
    while not q.exists() and not q.is_symlink():
        if q.parent == q:
            break
        q = q.parent
    return q


def _probe_writable(d: Path, where: Path) -> None:
    """Create and remove a directory in ``d``: the only check that holds for root and read-only mounts."""
    try:
        probe = tempfile.mkdtemp(prefix=".layerbisect-probe-", dir=d)
        os.rmdir(probe)
    except OSError as e:
        raise InputError(where, f"cannot write in {d}: {e.strerror or e}") from None


def _check_parent(target: Path) -> None:
    anc = _nearest_existing(target.parent)
    if not anc.is_dir():
        raise InputError(target, f"cannot be created: {anc} is not a directory")
    _probe_writable(anc, target)


def check_out_dir(target: str | Path, *, overwrite: bool = False) -> None:
    """Raise ``InputError`` unless a report directory can be written to ``target`` (nothing is created)."""
    t = Path(target)
    if t.exists() or t.is_symlink():
        if not t.is_dir():
            raise InputError(t, "exists and is not a directory")
        if any(t.iterdir()) and not is_ours(t) and not overwrite:
            raise InputError(
                t, "directory is not empty and was not made by layerbisect; pass --overwrite to write into it"
            )
        _probe_writable(t.parent, t)  # the staging directory and the swap live in the parent
        if overwrite and not is_ours(t):
            _probe_writable(t, t)  # our files are moved into it one by one
        return
    _check_parent(t)


def check_out_file(target: str | Path, *, overwrite: bool = False, ours: Callable[[Path], bool] | None = None,
                   what: str = "file") -> None:
    """Raise ``InputError`` unless ``target`` may be (re)written as a single file."""
    t = Path(target)
    if t.is_dir():
        raise InputError(t, f"is a directory; give a {what} path")
    if t.exists() or t.is_symlink():
        try:
            mode = os.stat(t).st_mode
        except OSError as e:
            raise InputError(t, f"cannot stat: {e.strerror or e}") from None
        if not stat.S_ISREG(mode):
            raise InputError(t, f"exists and is not a regular file; give a {what} path")
        if not overwrite and not (ours is not None and ours(t)):
            raise InputError(t, "exists and was not written by layerbisect; pass --overwrite to replace it")
    _check_parent(t)


class StagedDir:
    """``with StagedDir(target, overwrite=...) as stage:`` write files into ``stage``; moved into place on success.

    ``files`` after the block: name → final path of every file written.
    """

    def __init__(self, target: str | Path, *, overwrite: bool = False):
        self.target = Path(os.path.abspath(target))  # "-o ." needs a name and a parent to stage beside
        self.overwrite = overwrite
        self.stage: Path | None = None
        self.files: dict[str, Path] = {}

    def __enter__(self) -> Path:
        check_out_dir(self.target, overwrite=self.overwrite)
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self.stage = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.tmp-", dir=self.target.parent))
            os.chmod(self.stage, 0o777 & ~_umask())  # mkdtemp's 0700 would become the report folder's mode
        except BaseException as e:  # an OSError, or a signal before the block owns the stage: none is left behind
            if self.stage is not None:
                with signals_deferred():
                    shutil.rmtree(self.stage, ignore_errors=True)
            if isinstance(e, OSError):
                raise InputError(self.target, f"cannot create the report directory: {e.strerror or e}") from None
            raise
        return self.stage

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        assert self.stage is not None
        if exc_type is not None:
            with signals_deferred():
                shutil.rmtree(self.stage, ignore_errors=True)
            return
        try:
            self._commit(self.stage)
        except OSError as e:
            with signals_deferred():
                shutil.rmtree(self.stage, ignore_errors=True)
            raise InputError(self.target, f"cannot move the finished report into place: {e.strerror or e}") from None

    def _commit(self, stage: Path) -> None:
        t = self.target
        names = sorted(p.name for p in stage.iterdir())
        foreign = t.is_dir() and any(t.iterdir()) and not is_ours(t)
        with signals_deferred():  # a signal now is delivered once the directory is whole again, old or new
            if foreign:  # --overwrite into a directory we did not make: replace our files only, one by one
                for n in names:
                    os.replace(stage / n, t / n)
                os.rmdir(stage)
            else:
                (stage / MARKER).write_text(_MARKER_TEXT, encoding="utf-8")
                if t.is_dir() and any(t.iterdir()):  # a previous report of ours: swap, then delete it
                    old = Path(tempfile.mkdtemp(prefix=f".{t.name}.old-", dir=t.parent))
                    os.rename(t, old / t.name)
                    os.rename(stage, t)
                    shutil.rmtree(old, ignore_errors=True)
                elif t.is_dir():  # an empty directory (maybe the cwd): keep it, move the files in
                    for n in [*names, MARKER]:
                        os.replace(stage / n, t / n)
                    os.rmdir(stage)
                else:
                    os.rename(stage, t)  # onto nothing: one step
            self.files = {n: t / n for n in names}
            COMMITTED.append(t)


def write_file_atomic(target: str | Path, data: str | bytes, *, overwrite: bool = False,
                      ours: Callable[[Path], bool] | None = None, what: str = "file") -> Path:
    """Write ``data`` to ``target`` through a temporary file and ``os.replace`` (see module notes)."""
    t = Path(target)
    check_out_file(t, overwrite=overwrite, ours=ours, what=what)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    tmp: str | None = None
    try:
        t.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{t.name}.tmp-", dir=t.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        with signals_deferred():
            os.replace(tmp, t)
            COMMITTED.append(t)
            tmp = None
    except OSError as e:
        raise InputError(t, f"cannot write: {e.strerror or e}") from None
    finally:
        if tmp is not None:
            with signals_deferred():
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
    return t


__all__ = ["COMMITTED", "MARKER", "StagedDir", "check_out_dir", "check_out_file", "is_ours", "signals_deferred",
           "usual_mode", "write_file_atomic"]
