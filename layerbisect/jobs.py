"""Stages that read only the runners and the captures, run at once or one after another, with the same results.

Design notes
- After the capture passes, the expected lane (the reference's device, on its own copy of the
  reference's graph: ``expected/lane.py``), the activation patching (``localize.patch``: the
  candidate's device; the reference's model is read, never changed) and the audits' measurements
  (``audit.measure``) depend on nothing but the runners and the captures, and none of them writes
  into the report. The pipeline submits them here, compares meanwhile, and asks for each result
  where the sequential pipeline computed it; it adds the results to the report in that same order,
  so the report is the same either way.
- ``concurrent``: every job starts at once in its own thread (torch releases the GIL in its kernels and
  while it waits on a device, so two devices work at once). Otherwise a job runs when its result is
  first asked for: exactly the sequential order, status messages included.
- ``timed`` adds a part's seconds to ``timings`` under a name: a job's own time, wherever it ran.
- ``map_devices`` splits one job over devices (the weight audit's tensor pairs: half on each GPU).
- Every thread works on CUDA streams of its own (``own_streams``): on the shared default stream, each
  wait for a result (a number brought to the host, a copy from pageable memory) would wait for every
  other thread's queued kernels on that device too, and the threads would run one after another.
  A new stream first waits for what its device's current stream holds (the loads, the passes).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@contextmanager
def own_streams(devices: Sequence[Any]) -> Iterator[None]:
    """The calling thread's current stream on each CUDA device of ``devices`` is a new one until the exit, which
    waits for it; nothing on the CPU."""
    import torch

    cuda = [torch.device(d) for d in devices if torch.device(d).type == "cuda"]
    idx = sorted({d.index if d.index is not None else torch.cuda.current_device() for d in cuda})
    prev = [torch.cuda.current_stream(i) for i in idx]
    mine = [torch.cuda.Stream(device=i) for i in idx]
    for s, p in zip(mine, prev):
        s.wait_stream(p)  # what was queued before comes first
        torch.cuda.set_stream(s)
    try:
        yield
    finally:
        for s, p in zip(mine, prev):
            s.synchronize()
            torch.cuda.set_stream(p)


class Jobs:
    def __init__(self, concurrent: bool, timings: dict[str, float], devices: Sequence[Any] = ()):
        self.timings = timings
        self.devices = list(devices)  # the CUDA devices the jobs use: each job on streams of its own there
        self._fns: dict[str, Callable[[], Any]] = {}
        self._done: dict[str, Any] = {}
        self._futures: dict[str, Future] = {}
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="bisect-job") if concurrent else None

    @property
    def concurrent(self) -> bool:
        return self._pool is not None

    def timed(self, name: str, fn: Callable[[], Any]) -> Any:
        """fn(), its seconds added to ``timings[name]``."""
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0

    def submit(self, name: str, fn: Callable[[], Any]) -> None:
        """Job ``name`` is fn(): started now when concurrent, else run by the first ``result(name)``."""
        self._fns[name] = fn
        if self._pool is not None:
            self._futures[name] = self._pool.submit(self._on_own_streams, fn)

    def _on_own_streams(self, fn: Callable[[], Any]) -> Any:
        with own_streams(self.devices):
            return fn()

    def __contains__(self, name: str) -> bool:
        return name in self._fns

    def result(self, name: str) -> Any:
        """Job ``name``'s result (waits for it, or runs it now); the job's error is raised here."""
        if name not in self._done:
            fut = self._futures.get(name)
            self._done[name] = fut.result() if fut is not None else self._fns[name]()
        return self._done[name]

    def close(self) -> None:
        """Wait for every job (an error is left to ``result``, which nobody asked for) and let the threads go."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def map_devices(fn: Callable[[T, Any], R], items: Sequence[T], devices: Sequence[Any]) -> list[R]:
    """[fn(item, device)] in the order of ``items``; with several devices, one thread per device takes the next item.

    Which device computes an item depends on timing, so ``fn`` must give the same result on each (identical GPUs
    run the same kernels).
    """
    if len(devices) <= 1:
        dev = devices[0] if devices else None
        return [fn(x, dev) for x in items]
    out: list[Any] = [None] * len(items)
    todo = iter(range(len(items)))
    lock = threading.Lock()

    def worker(dev: Any) -> None:
        import torch

        cuda = getattr(dev, "type", "") == "cuda"
        with torch.no_grad(), own_streams(devices), (torch.cuda.device(dev) if cuda else nullcontext()):
            while True:
                with lock:
                    i = next(todo, None)
                if i is None:
                    return
                out[i] = fn(items[i], dev)

    with ThreadPoolExecutor(max_workers=len(devices), thread_name_prefix="bisect-device") as pool:
        for f in [pool.submit(worker, d) for d in devices]:
            f.result()
    return out


__all__ = ["Jobs", "map_devices", "own_streams"]
