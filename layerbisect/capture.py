"""Capture points: the name → activation store every runner fills and the comparator reads.

The names are the contract between runners, comparator and reports (docs/CAPTURE_NAMES.md);
which points a model has is derived from its graph (``graph.capture_points(spec)``).
Tensors are kept FP32 on the CPU with shape (T, F), one row per token position (``keep_device``:
where they were made, for a store that is reduced on the device at once: activation patching).
Insertion order is execution order, so "the first point that diverged" is well defined.

With ``summary_only`` a store keeps only per-token summaries (L2 norm, abs max, NaN and Inf
counts): memory then stays bounded by the number of points, not the model size.

``on(device)`` is the store's tensors on a GPU, copied once and kept: the stages after the passes
(patching, the expected lane, the audits, the comparison) read every point of the reference there,
and a copy from pageable host memory per point is a wait for the device per point (on two GPUs, in
threads that share one interpreter lock, each wait also queues for the lock).
"""

from __future__ import annotations

import fnmatch
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

_MIRRORS_LOCK = threading.Lock()


def layer_point(i: int, point: str) -> str:
    return f"layers.{i}.{point}"


def layer_of(name: str) -> int | None:
    """Layer index of a capture name, or None for points outside the layer stack."""
    parts = name.split(".")
    if len(parts) >= 3 and parts[0] == "layers" and parts[1].isdigit():
        return int(parts[1])
    return None


def op_of(name: str) -> str:
    """The op part of a name: ``layers.3.mlp.down`` → ``mlp.down``; others unchanged."""
    parts = name.split(".")
    if layer_of(name) is not None:
        return ".".join(parts[2:])
    return name


class Selector:
    """Glob-pattern selection of capture points (``layers.*.out``, ``logits*``)."""

    def __init__(self, patterns: Sequence[str] | str | None = None):
        if isinstance(patterns, str):
            patterns = [p for p in patterns.split(",") if p]
        self.patterns: list[str] = list(patterns) if patterns else ["*"]
        self._cache: dict[str, bool] = {}

    def __call__(self, name: str) -> bool:
        hit = self._cache.get(name)
        if hit is None:
            hit = any(fnmatch.fnmatchcase(name, p) for p in self.patterns)
            self._cache[name] = hit
        return hit


@dataclass
class PointSummary:
    """Per-token summaries of one capture point; enough to spot blow-up and NaN onset."""

    norm: torch.Tensor  # (T,) L2 norm over finite values
    amax: torch.Tensor  # (T,) max |x| over finite values
    nan: torch.Tensor  # (T,) int64 count
    inf: torch.Tensor  # (T,) int64 count

    @classmethod
    def of(cls, x: torch.Tensor) -> PointSummary:
        x = x.detach().float()
        finite = torch.isfinite(x)
        xf = torch.where(finite, x, torch.zeros((), dtype=x.dtype, device=x.device))
        return cls(
            norm=xf.norm(dim=-1).cpu(),
            amax=xf.abs().amax(dim=-1).cpu() if x.shape[-1] else torch.zeros(x.shape[0]),
            nan=torch.isnan(x).sum(dim=-1).cpu(),
            inf=torch.isinf(x).sum(dim=-1).cpu(),
        )

    def cat(self, other: PointSummary) -> PointSummary:
        return PointSummary(*(torch.cat([a, b]) for a, b in zip(self.astuple(), other.astuple())))

    def astuple(self) -> tuple[torch.Tensor, ...]:
        return (self.norm, self.amax, self.nan, self.inf)


@dataclass
class Captures:
    """Ordered name → (T, F) FP32 CPU tensors (or summaries), plus what produced them."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    summaries: dict[str, PointSummary] = field(default_factory=dict)
    token_ids: list[int] = field(default_factory=list)
    meta: dict[str, object] = field(default_factory=dict)
    selector: Selector = field(default_factory=Selector)
    summary_only: bool = False
    enabled: bool = True
    keep_device: bool = False  # FP32 where recorded instead of on the CPU (no host copy, no wait per point)
    _mirrors: dict[torch.device, Captures] = field(default_factory=dict, repr=False, compare=False)

    def wants(self, name: str) -> bool:
        return self.enabled and self.selector(name)

    def record(self, name: str, x: torch.Tensor) -> None:
        """Store x (any leading shape, last dims flattened to (T, F)); appends along T."""
        if not self.wants(name):
            return
        x = x.detach()
        x2 = x.reshape(-1, x.shape[-1]) if x.dim() == 2 else x.reshape(x.shape[0], -1)
        if self.summary_only:
            s = PointSummary.of(x2)
            self.summaries[name] = self.summaries[name].cat(s) if name in self.summaries else s
            return
        x2 = x2.to(dtype=torch.float32) if self.keep_device else x2.to(device="cpu", dtype=torch.float32)
        prev = self.tensors.get(name)
        self.tensors[name] = x2.clone() if prev is None else torch.cat([prev, x2])

    def names(self) -> list[str]:
        return list(self.tensors) if self.tensors else list(self.summaries)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors or name in self.summaries

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def summary(self, name: str) -> PointSummary:
        if name in self.summaries:
            return self.summaries[name]
        return PointSummary.of(self.tensors[name])

    def select(self, patterns: Iterable[str] | str) -> list[str]:
        sel = Selector(list(patterns) if not isinstance(patterns, str) else patterns)
        return [n for n in self.names() if sel(n)]

    def on(self, device: torch.device | str | None) -> Captures:
        """This store with every tensor on ``device``: itself when ``device`` is None or every tensor is there
        already (a CPU run's store on the CPU), else a copy made at the first call for that device and returned
        by every later one (a snapshot: points
        recorded afterwards are not in it; it is made again when the point names differ). Summaries, ids and
        metadata are shared. Safe to call from several threads."""
        if device is None:
            return self
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        if all(t.device == dev for t in self.tensors.values()):
            return self
        with _MIRRORS_LOCK:
            got = self._mirrors.get(dev)
            if got is None or list(got.tensors) != list(self.tensors):
                got = Captures(tensors={k: t.to(dev) for k, t in self.tensors.items()}, summaries=self.summaries,
                               token_ids=self.token_ids, meta=self.meta, selector=self.selector,
                               summary_only=self.summary_only, enabled=False, keep_device=True)
                self._mirrors[dev] = got
            return got

    def drop_copies(self) -> None:
        """Let the device copies made by ``on`` go (their memory with them)."""
        with _MIRRORS_LOCK:
            self._mirrors.clear()
