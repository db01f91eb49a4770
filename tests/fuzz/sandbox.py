"""Run the `bisect` CLI on one input at a time, bounded in time and memory, without paying torch's import each time.

Design notes
- A *fork server*: one worker process imports ``layerbisect.cli.app`` (torch and all) once and runs no
  tensor op; for each case it forks a child that sets ``RLIMIT_AS`` (the worker's address space plus
  ``mem_bytes``), calls ``layerbisect.cli.app.main(argv)`` exactly as the console script does, and leaves
  with the CLI's exit code, or 1 with the traceback on stderr when an exception escapes (what Python
  itself does). The worker waits with ``os.wait4`` (the child's peak RSS comes with it) and kills a child
  that outlives ``timeout``: a hang. Forking from a process that never ran a kernel keeps OpenMP sane.
- Verdicts: ``clean`` = exit 0 (the mutation was harmless) or exit 2 with exactly one stderr line
  ``bisect: error: ...`` and no traceback; ``traceback`` = anything else (an escaped exception, a
  ``MemoryError`` from the address-space limit, a multi-line error); ``hang`` = killed at the timeout.
- RSS: a forked child shares the worker's pages, so its peak (``VmHWM``, or ``ru_maxrss`` when it was
  killed) includes what it inherited from the worker (torch's import, ~0.4 GiB); ``rss_at_fork`` is
  the child's own RSS right after the fork and ``rss_growth`` the difference: what the case itself
  made resident.

Used by tests/fuzz/test_fuzz_inputs.py (short run in CI) and tests/fuzz/long_run.py (docs/RELIABILITY.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Outcome:
    verdict: str  # clean / traceback / hang
    rc: int | None
    stderr: str
    seconds: float
    maxrss_bytes: int
    rss_at_fork: int = 0  # the child's resident set right after the fork (what it inherited and touched)

    @property
    def rss_growth(self) -> int:
        """Peak RSS above what the child inherited (its own allocations, roughly)."""
        return max(0, self.maxrss_bytes - self.rss_at_fork)

    @property
    def clean(self) -> bool:
        return self.verdict == "clean"


def classify(rc: int | None, stderr: str, *, ok_codes: tuple[int, ...] = (0, 2)) -> str:
    if rc is None:
        return "hang"
    if "Traceback" in stderr or rc not in ok_codes:
        return "traceback"
    if rc == 2:
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        if len(lines) != 1 or not lines[0].startswith("bisect: error: "):
            return "traceback"
    return "clean"


class Sandbox:
    """One fork-server worker; ``run(argv)`` → ``Outcome``. Use as a context manager."""

    def __init__(self, *, timeout: float = 30.0, mem_bytes: int = 2 << 30):
        self.timeout = timeout
        self.mem_bytes = mem_bytes
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   COLUMNS="200", TERM="dumb")
        self.proc = subprocess.Popen(
            [sys.executable, "-u", str(Path(__file__).resolve()), "--worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=str(REPO),
        )
        hello = json.loads(self._readline())
        self.baseline_rss = int(hello["rss"])

    def _readline(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fuzz worker died (exit {self.proc.poll()})")
        return line

    def run(self, argv: list[str], *, timeout: float | None = None) -> Outcome:
        assert self.proc.stdin is not None
        req = {"argv": argv, "timeout": timeout or self.timeout, "mem": self.mem_bytes}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        r = json.loads(self._readline())
        rc = r["rc"]
        ok = (0, 2) if argv and argv[0] == "run" else (0, 1, 2)  # compare/audit exit 1 on a failed gate / faults
        return Outcome(classify(rc, r["stderr"], ok_codes=ok), rc, r["stderr"], r["seconds"], r["maxrss"],
                       r["rss0"])

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------------------------
# the worker side
# ---------------------------------------------------------------------------------------------------------------


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _child(argv: list[str], mem: int, err_path: str) -> None:
    import resource
    import traceback

    rss_start = _status("VmRSS")

    fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 2)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    sys.stdin = open(0)  # noqa: SIM115 - the child exits with os._exit
    sys.stdout = open(1, "w")  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1)  # noqa: SIM115
    limit = _vm_size() + mem
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import torch

    torch.set_num_threads(1)
    from layerbisect.cli.app import main

    code = 0
    try:
        main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - exactly what the interpreter would print
        traceback.print_exc()
        code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        with open(err_path + ".mem", "w") as f:
            json.dump({"rss_start": rss_start, "hwm": _status("VmHWM")}, f)
    finally:
        os._exit(code)


def _warm() -> None:
    """Pay torch's lazy imports once (building a graph on ``meta`` pulls in torch._decomp etc.), no CPU kernel."""
    from layerbisect.families import spec_from_hf
    from layerbisect.graph.inventory import meta_model

    cfg = {"model_type": "gemma3_text", "hidden_size": 32, "num_attention_heads": 2, "num_key_value_heads": 1,
           "head_dim": 16, "num_hidden_layers": 1, "intermediate_size": 64, "vocab_size": 64, "sliding_window": 8}
    meta_model(spec_from_hf(cfg, path="<warm-up>"))
    import layerbisect.api  # noqa: F401
    import layerbisect.candidates.runner  # noqa: F401
    import layerbisect.cli.compare_cmd  # noqa: F401
    import layerbisect.comparison.report  # noqa: F401
    import layerbisect.pipeline  # noqa: F401
    import layerbisect.preflight  # noqa: F401
    import layerbisect.references.runner  # noqa: F401
    import layerbisect.reports.html  # noqa: F401
    import layerbisect.tokenizer  # noqa: F401


def _worker() -> None:
    import signal
    import tempfile

    import layerbisect.cli.app  # noqa: F401 - the import the children share

    _warm()

    print(json.dumps({"rss": _rss()}), flush=True)
    err_path = os.path.join(tempfile.mkdtemp(prefix="bisect-fuzz-"), "stderr")
    for line in sys.stdin:
        req = json.loads(line)
        t0 = time.monotonic()
        try:
            os.unlink(err_path + ".mem")
        except OSError:
            pass
        pid = os.fork()
        if pid == 0:
            _child(req["argv"], int(req["mem"]), err_path)
        rc: int | None = None
        maxrss = 0
        deadline = t0 + float(req["timeout"])
        while True:
            wpid, status, ru = os.wait4(pid, os.WNOHANG)
            if wpid:
                rc = os.waitstatus_to_exitcode(status)
                rc = 128 - rc if rc < 0 else rc  # killed by a signal: the shell's 128+N
                maxrss = ru.ru_maxrss * 1024
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                _, _, ru = os.wait4(pid, 0)
                maxrss = ru.ru_maxrss * 1024
                break
            time.sleep(0.002)
        try:
            with open(err_path, errors="replace") as f:
                err = f.read()[-4000:]
        except OSError:
            err = ""
        rss0 = 0
        try:
            with open(err_path + ".mem") as f:
                mem = json.load(f)
            rss0, maxrss = mem["rss_start"], max(maxrss, mem["hwm"])
        except (OSError, ValueError, KeyError):
            pass  # killed (a hang) or died before writing it: ru_maxrss alone
        out = {"rc": rc, "stderr": err, "seconds": time.monotonic() - t0, "maxrss": maxrss, "rss0": rss0}
        print(json.dumps(out), flush=True)


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    _worker()
