"""Layer streaming: run a model that does not fit, one layer at a time, straight from the mapped files.

Design note
-----------
A resident run dequantizes every weight to FP32 up front: 4 bytes per parameter, so an 8B
model needs ~32 GB per side before the first token. Streaming keeps the weights on disk
(GGUF and safetensors are both memory-mapped) and materializes one part at a time:

    embed rows ─▶ layer 0 ─▶ layer 1 ─▶ ... ─▶ layer N-1 ─▶ final norm + lm_head (vocab chunks)
                  build on meta, load this layer's tensors (dequantized / QuantLinear),
                  ``load_state_dict(assign=True)``, run over the whole sequence, free

``StreamedDecoder`` has the ``Decoder`` interface the rest of the package uses (``cfg``,
``rec``, ``device``, ``layers``, ``embed_tokens``, ``head``, ``forward``, ``set_kv_quant``),
and runs the *same* modules (``Layer``, ``RMSNorm``, ``Decoder.embed_tokens``/``head`` called
on a small shim), so a streamed pass is bit-for-bit the resident pass: same ops, same
operands. ``layers`` is a lazy sequence that keeps one layer alive (an LRU of one): a pass
over the stack, ``localize``'s patching and its per-module comparisons all touch layer i of
both runners, then move on, so at most a layer per runner is alive at once.

Two places may differ from a resident run and are kept exact where possible:
- the embedding: only the rows of the tokens in the sequence are read and dequantized
  (GGUF blocks never straddle rows, so these are the same bits);
- the head: the lm_head is applied in chunks of vocabulary rows when its FP32 weight exceeds
  the step budget. Each logit is the same dot product, but a BLAS may pick another kernel
  (or split-K) for another N, so chunked logits can differ in the last bits from a resident
  run (exact on CPU in our tests). With no chunking needed the head is one ``F.linear``.
  A quantized candidate lm_head (rare: producers ignore it) is loaded whole.

Generation in streaming mode goes through the KV cache as usual, but every new token streams
every layer again (dequantization per token): correct, slow; use few ``--generate`` tokens.
``bisect_modules`` (which swaps modules into a resident model) needs ``--resident``.

Memory accounting: ``LiveBytes`` counts the bytes of every weight tensor the streamer holds
(parameters and buffers of loaded parts, embedding rows, head chunks) at each step, and keeps
the peak: an exact figure, independent of allocator caching and RSS. ``peak_memory()`` adds
``torch.cuda.max_memory_allocated`` per device and the process's peak RSS.

Auto choice (``stream=None``): stream when the estimated FP32 size of the model (4 bytes per
parameter: what a resident reference holds; a candidate holds less) exceeds the budget:
``memory_cap`` if given, else 90% of the device's free memory (``cudaMemGetInfo``; on CPU
``MemAvailable``), divided among the runners sharing that device.
"""

from __future__ import annotations

import os
import resource
import threading
import types
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .graph import Decoder, KVCache, Layer, Recorder, RMSNorm, get_module, set_module
from .graph.inventory import estimate_fp32_bytes, layer_fp32_bytes
from .graph.per_layer import PerLayerInputs
from .spec import ModelSpec

if TYPE_CHECKING:
    from .runner import ModelRunner

__all__ = [
    "LiveBytes",
    "StreamedDecoder",
    "build_streamed",
    "decide_stream",
    "estimate_fp32_bytes",
    "free_device_bytes",
    "free_module",
    "module_nbytes",
    "peak_memory",
    "row_blocks",
]


# --- accounting --------------------------------------------------------------------------------


@dataclass
class LiveBytes:
    """Bytes of weights alive in a streamer, by tag; ``peak`` is the largest total seen."""

    live: dict[str, int] = field(default_factory=dict)
    peak: int = 0
    peak_at: str = ""
    steps: list[tuple[str, int]] = field(default_factory=list)  # (event, total after it)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def total(self) -> int:
        return sum(self.live.values())

    def add(self, tag: str, nbytes: int) -> None:
        with self._lock:
            self.live[tag] = self.live.get(tag, 0) + int(nbytes)
            t = self.total
            self.steps.append((f"+{tag}", t))
            if t > self.peak:
                self.peak, self.peak_at = t, tag

    def drop(self, tag: str) -> None:
        with self._lock:
            if self.live.pop(tag, None) is not None:
                self.steps.append((f"-{tag}", self.total))


def module_nbytes(m: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (shared storage counted once)."""
    seen: set[tuple[Any, int]] = set()
    n = 0
    for t in [*m.parameters(), *m.buffers()]:
        if t is None or t.device.type == "meta":
            continue
        key = (t.device, t.data_ptr())
        if key in seen:
            continue
        seen.add(key)
        n += t.numel() * t.element_size()
    return n


def free_module(m: nn.Module) -> None:
    """Give back the memory of a part that is done: every parameter's and buffer's storage is emptied.

    A layer handed out by the lazy sequence may still be referenced by a caller (a loop
    variable, a module taken from it, a ``state_dict`` view), which would keep its weights
    alive past the point where the streamer counted them freed. Emptying the storages
    (``resize_(0)``, as FSDP frees unsharded parameters) frees them whatever references
    remain; a released part is dead: using it afterwards raises. Storages that are not ours
    to resize (a memory-mapped file) are left alone. Tensors cached as plain attributes
    (a dequantized weight) are dropped.
    """
    seen: set[int] = set()
    for mod in m.modules():
        for t in [*mod._parameters.values(), *mod._buffers.values()]:
            if t is None or t.device.type == "meta":
                continue
            st = t.untyped_storage()
            if st.data_ptr() in seen:
                continue
            seen.add(st.data_ptr())
            if st.resizable():
                st.resize_(0)
        for k, v in list(vars(mod).items()):
            if isinstance(v, torch.Tensor):
                setattr(mod, k, None)


def free_device_bytes(device: str | torch.device) -> int:
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(dev)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def decide_stream(
    stream: bool | None,
    cfg: ModelSpec | None,
    device: str | torch.device,
    memory_cap: int | None,
    share: int = 1,
) -> tuple[bool, str]:
    """(stream?, why). ``share``: how many runners split the device's memory."""
    if stream is not None or cfg is None:
        return bool(stream), "forced (--stream)" if stream else "forced (--resident)"
    need = estimate_fp32_bytes(cfg)
    budget = memory_cap if memory_cap is not None else int(0.9 * free_device_bytes(device)) // max(share, 1)
    if need > budget:
        return True, f"FP32 estimate {need / 2**30:.2f} GiB > budget {budget / 2**30:.2f} GiB"
    return False, f"FP32 estimate {need / 2**30:.2f} GiB fits budget {budget / 2**30:.2f} GiB"


def peak_memory() -> dict[str, int]:
    """Process-wide peaks: host RSS and, per CUDA device, ``max_memory_allocated``."""
    out = {"host_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            out[f"cuda:{i}_bytes"] = int(torch.cuda.max_memory_allocated(i))
    return out


# --- weight sources: one per file format ------------------------------------------------------


class PartSource:
    """Where a streamer gets its parts. Every method returns tensors/modules on ``device``."""

    cfg: ModelSpec
    device: torch.device

    def layer(self, i: int, rec: Recorder) -> Layer:
        raise NotImplementedError

    def embed_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """FP32 embedding rows (len(ids), d) of these token ids (CPU int64)."""
        raise NotImplementedError

    def final_norm(self) -> RMSNorm:
        raise NotImplementedError

    def head_rows(self, lo: int, hi: int) -> torch.Tensor | None:
        """FP32 lm_head rows lo..hi, or None when the head is not row-sliceable (``head_module`` then)."""
        raise NotImplementedError

    def head_module(self) -> nn.Module:
        raise NotImplementedError

    def weight_rows(self, name: str, lo: int, hi: int) -> torch.Tensor | None:
        """FP32 rows lo..hi of ``embed.weight`` or ``lm_head.weight``; None when the head is quantized (whole only)."""
        if name == "embed.weight":
            return self.embed_rows(torch.arange(lo, hi))
        if name == "lm_head.weight":
            return self.head_rows(lo, hi)
        raise KeyError(name)

    def per_layer_part(self, rec: Recorder) -> PerLayerInputs:
        """The model-level half of per-layer input embeddings (Gemma 4 PLE), loaded whole."""
        raise NotImplementedError


def _load_part(module: nn.Module, state: dict[str, torch.Tensor], what: str, strict: bool = True) -> None:
    module.load_state_dict(state, assign=True, strict=strict)
    left = [n for n, p in [*module.named_parameters(), *module.named_buffers()] if p.device.type == "meta"]
    if left:
        raise RuntimeError(f"{what}: parameters left unloaded: {', '.join(left[:4])}")


class GGUFSource(PartSource):
    """Parts of a GGUF reference, dequantized to FP32 tensor by tensor (``impl`` as in ``dequantize``)."""

    def __init__(self, path: str, device: torch.device, impl: str = "auto"):
        from .references.gguf_file import GGUFFile
        from .references.gguf_model import map_tensors, read_spec

        self.file = GGUFFile(path)
        self.cfg = read_spec(self.file)
        self.device = device
        self.impl = impl
        self.tmap = map_tensors(self.file, self.cfg)

    def _dequant(self, src, rows: slice | np.ndarray | None = None) -> torch.Tensor:
        from .references.gguf_model import dequantize_source

        return dequantize_source(self.file, src, device=self.device, rows=rows, impl=self.impl)

    def layer(self, i: int, rec: Recorder) -> Layer:
        from .references.gguf_model import attach_extras

        with torch.device("meta"):
            layer = Layer(self.cfg, i, rec)
        pre = f"layers.{i}."
        state = {k: self.tmap.apply(pre + k, self._dequant(v)) for k, v in self.tmap.under(pre).items()}
        _load_part(layer, state, f"layer {i}")
        attach_extras(layer, self.file, self.tmap, self.device, layers=[layer])
        return layer.eval()

    def embed_rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self._dequant(self.tmap.sources["embed.weight"], ids.numpy())

    def final_norm(self) -> RMSNorm:
        with torch.device("meta"):
            norm = RMSNorm(self.cfg.d_model, self.cfg.norm_eps)
        _load_part(norm, {"weight": self._dequant(self.tmap.sources["final_norm.weight"])}, "final_norm")
        return norm

    def head_rows(self, lo: int, hi: int) -> torch.Tensor:
        src = self.tmap.sources["embed.weight" if self.cfg.tied_embeddings else "lm_head.weight"]
        return self._dequant(src, slice(lo, hi))

    def weight_rows(self, name: str, lo: int, hi: int) -> torch.Tensor | None:
        if name == "embed.weight":  # a range of rows: a slice of whole blocks, no index array
            return self._dequant(self.tmap.sources["embed.weight"], slice(lo, hi))
        return super().weight_rows(name, lo, hi)

    def per_layer_part(self, rec: Recorder) -> PerLayerInputs:
        with torch.device("meta"):
            part = PerLayerInputs(self.cfg, rec)
        _load_part(part, {k: self._dequant(v) for k, v in self.tmap.under("per_layer.").items()}, "per_layer")
        return part


class CheckpointSource(PartSource):
    """Parts of a quantized HF checkpoint, through the candidate runner's own plan and builders."""

    def __init__(self, runner: Any, device: torch.device):
        self.runner = runner
        self.plan = runner.plan()
        self.cfg = self.plan.spec
        self.device = device
        self.ck = runner.checkpoint

    def layer(self, i: int, rec: Recorder) -> Layer:
        with torch.device("meta"):
            layer = Layer(self.cfg, i, rec)
        state, linears = self.runner.materialize(self.plan, f"layers.{i}.")
        for name, lin in linears.items():
            set_module(layer, name, lin)
        _load_part(layer, state, f"layer {i}", strict=False)
        layer = layer.to(self.device)
        if hasattr(layer.attn, "kv_quant"):
            layer.attn.kv_quant = getattr(self.runner, "kv_quant", None)
        return layer.eval()

    def embed_rows(self, ids: torch.Tensor) -> torch.Tensor:
        from safetensors import safe_open

        key, _ = self.plan.dense["embed.weight"]
        with safe_open(self.ck.where[key], "pt") as f:
            sl = f.get_slice(key)
            rows = torch.cat([sl[int(t) : int(t) + 1] for t in ids.tolist()]) if len(ids) else None
        assert rows is not None
        return rows.to(self.device).float()  # converted where it lands: no FP32 copy on the host

    def final_norm(self) -> RMSNorm:
        from .candidates.whatif_norms import final_norm_module

        with torch.device("meta"):
            norm = final_norm_module(self.runner.options, self.cfg.d_model, self.cfg.norm_eps)
        state, _ = self.runner.materialize(self.plan, "final_norm.")
        if not state:  # a missing final norm runs as the identity, as in the resident runner
            state = {"weight": torch.ones(self.cfg.d_model)}
        _load_part(norm, state, "final_norm")
        return norm.to(self.device)

    @cached_property
    def _dense_head_key(self) -> str | None:
        """The checkpoint key of a row-sliceable head: the embedding when tied, else an unquantized lm_head."""
        if self.cfg.tied_embeddings:
            return self.plan.dense["embed.weight"][0]
        group = self.plan.groups.get("lm_head", {})
        if set(group) != {"weight"}:
            return None  # a quantized head (weight scales ...): loaded whole
        from safetensors import safe_open

        key = group["weight"]
        with safe_open(self.ck.where[key], "pt") as f:
            dtype = f.get_slice(key).get_dtype()
        return key if dtype in ("F32", "BF16", "F16") else None

    def head_rows(self, lo: int, hi: int) -> torch.Tensor | None:
        key = self._dense_head_key
        if key is None:
            return None
        from safetensors import safe_open

        with safe_open(self.ck.where[key], "pt") as f:
            return f.get_slice(key)[lo:hi].to(self.device).float()

    def head_module(self) -> nn.Module:
        _, linears = self.runner.materialize(self.plan, "lm_head")
        return linears[""].to(self.device)

    def weight_rows(self, name: str, lo: int, hi: int) -> torch.Tensor | None:
        if name == "embed.weight":  # a range of rows: one slice read, not one per row
            from safetensors import safe_open

            key, _ = self.plan.dense["embed.weight"]
            with safe_open(self.ck.where[key], "pt") as f:
                return f.get_slice(key)[lo:hi].to(self.device).float()
        return super().weight_rows(name, lo, hi)

    def per_layer_part(self, rec: Recorder) -> PerLayerInputs:
        with torch.device("meta"):
            part = PerLayerInputs(self.cfg, rec)
        state, linears = self.runner.materialize(self.plan, "per_layer.")
        for name, lin in linears.items():
            set_module(part, name, lin)
        _load_part(part, state, "per_layer", strict=False)
        return part.to(self.device)


# --- the streamed model -----------------------------------------------------------------------


class _LazyLayers(Sequence):
    """``model.layers`` for a streamer: layer i is built on access; one stays alive (the last used)."""

    def __init__(self, owner: StreamedDecoder):
        self.owner = owner
        self.index: int | None = None
        self.current: Layer | None = None

    def __len__(self) -> int:
        return self.owner.cfg.n_layers

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        if self.index != i:
            self.release()  # free the old layer before the new one is read: the peak stays one layer
            layer = self.owner.source.layer(i, self.owner.rec)
            if self.owner.kv_quant is not None and hasattr(layer.attn, "kv_quant"):
                layer.attn.kv_quant = self.owner.kv_quant
            self.owner.tracker.add(f"layer.{i}", module_nbytes(layer))
            self.index, self.current = i, layer
        assert self.current is not None
        return self.current

    def __iter__(self) -> Iterator[Layer]:
        for i in range(len(self)):
            yield self[i]

    def release(self) -> None:
        if self.index is not None:
            self.owner.tracker.drop(f"layer.{self.index}")
            if self.current is not None:
                free_module(self.current)  # freed now, whoever still holds a reference to it
        self.index, self.current = None, None


class StreamedDecoder:
    """The ``Decoder`` interface over a ``PartSource``: weights live only while their part runs."""

    def __init__(self, source: PartSource, *, head_chunk_bytes: int | None = None, tracker: LiveBytes | None = None):
        self.source = source
        self.cfg = source.cfg
        self.rec = Recorder()
        self.tracker = tracker or LiveBytes()
        self.head_chunk_bytes = head_chunk_bytes
        self.kv_quant = None
        self.layers = _LazyLayers(self)
        self.passes = 0

    @property
    def device(self) -> torch.device:
        return self.source.device

    def eval(self) -> StreamedDecoder:
        return self

    def set_kv_quant(self, fn) -> None:
        self.kv_quant = fn
        if self.layers.current is not None and hasattr(self.layers.current.attn, "kv_quant"):
            self.layers.current.attn.kv_quant = fn

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        uniq, inv = torch.unique(tokens.cpu(), return_inverse=True)
        rows = self.source.embed_rows(uniq)
        self.tracker.add("embed.rows", rows.numel() * rows.element_size())
        try:
            shim = types.SimpleNamespace(embed=lambda t: F.embedding(t, rows), spec=self.cfg, rec=self.rec)
            return Decoder.embed_tokens(shim, inv.to(self.device))  # type: ignore[arg-type]
        finally:
            self.tracker.drop("embed.rows")

    def head(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.source.final_norm()
        self.tracker.add("final_norm", module_nbytes(norm))
        try:
            shim = types.SimpleNamespace(final_norm=norm, lm_head=self._lm_head, spec=self.cfg, rec=self.rec)
            return Decoder.head(shim, x)  # type: ignore[arg-type]
        finally:
            self.tracker.drop("final_norm")

    def _lm_head(self, x: torch.Tensor) -> torch.Tensor:
        V, d = self.cfg.vocab_size, self.cfg.d_model
        rows = V
        if self.head_chunk_bytes is not None:
            rows = max(1, min(V, self.head_chunk_bytes // (4 * d)))
        first = self.source.head_rows(0, rows)
        if first is None:  # a quantized lm_head: loaded whole
            mod = self.source.head_module()
            self.tracker.add("lm_head", module_nbytes(mod))
            try:
                return mod(x)
            finally:
                self.tracker.drop("lm_head")
        outs = []
        lo, w = 0, first
        while True:
            hi = lo + w.shape[0]
            self.tracker.add(f"lm_head[{lo}:{hi}]", w.numel() * w.element_size())
            outs.append(F.linear(x.float(), w))
            del w
            self.tracker.drop(f"lm_head[{lo}:{hi}]")
            if hi >= V:
                break
            lo = hi
            w = self.source.head_rows(lo, min(V, lo + rows))  # type: ignore[assignment]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor, start_pos: int = 0, cache: KVCache | None = None) -> torch.Tensor:
        """tokens (T,) → logits (T, V), as ``Decoder.forward``, streaming the layers."""
        self.passes += 1
        tokens = tokens.to(self.device)
        pos = torch.arange(start_pos, start_pos + tokens.shape[0], device=self.device)
        x = self.embed_tokens(tokens)
        cache = cache if cache is not None else KVCache()
        if self.cfg.per_layer_input:  # Gemma 4 PLE: the model-level half, then freed like a layer
            part = self.per_layer_part()
            self.tracker.add("per_layer", module_nbytes(part))
            try:
                cache.per_layer_inputs = part(tokens, x)
            finally:
                del part
                self.tracker.drop("per_layer")
        for layer in self.layers:
            x = layer(x, pos, cache)
        self.layers.release()
        if cache is not None:
            cache.length = start_pos + tokens.shape[0]
        return self.head(x)

    __call__ = forward

    def per_layer_part(self) -> PerLayerInputs:
        return self.source.per_layer_part(self.rec)

    @property
    def spec(self) -> ModelSpec:
        return self.cfg

    def points(self) -> list[str]:
        from .graph import capture_points

        return list(capture_points(self.cfg))

    # -- whole-model views for the audits, one part at a time ------------------------------
    @property
    def lm_head(self) -> nn.Module:
        """The whole head as a module (built on access, not kept)."""
        rows = self.source.head_rows(0, self.cfg.vocab_size)
        if rows is None:
            return self.source.head_module()
        lin = nn.Linear(self.cfg.d_model, self.cfg.vocab_size, bias=False, device="meta")
        lin.load_state_dict({"weight": rows}, assign=True)
        return lin

    def state_dict(self) -> LazyStateDict:
        return LazyStateDict(self)

    def row_blocks(self, name: str, max_bytes: int) -> Iterator[torch.Tensor] | None:
        """``embed.weight`` / ``lm_head.weight`` as FP32 blocks of rows of at most ``max_bytes`` each, in order.

        Each block is counted live until the consumer asks for the next one. None for a quantized
        head (not row-sliceable: ``lm_head`` gives the whole module).
        """
        if name == "lm_head.weight" and self.source.weight_rows(name, 0, 1) is None:
            return None
        return self._row_blocks(name, max_bytes)

    def _row_blocks(self, name: str, max_bytes: int) -> Iterator[torch.Tensor]:
        self.layers.release()  # one part alive at a time: a layer left from the last walk goes first
        V, d = self.cfg.vocab_size, self.cfg.d_model
        step = max(1, min(V, max_bytes // (4 * d)))
        for lo in range(0, V, step):
            hi = min(V, lo + step)
            w = self.source.weight_rows(name, lo, hi)
            assert w is not None
            tag = f"{name}[{lo}:{hi}]"
            self.tracker.add(tag, w.numel() * w.element_size())
            try:
                yield w
            finally:
                del w
                self.tracker.drop(tag)


class LazyStateDict(Mapping):
    """``state_dict()`` of a streamer: names in graph order; a layer's tensors are read when asked for.

    Iterating ``items()`` visits layer after layer, so only one layer is alive at a time (the
    weight audit walks both models this way). A layer's names are those of the layer as loaded
    (a candidate's quantized linears have ``weight_q``/``weight_scale`` ...), so walking the
    keys loads each layer once. The embedding and the head come whole; a tied head is not listed.
    """

    def __init__(self, model: StreamedDecoder):
        self.model = model

    def _layer_keys(self, i: int) -> list[str]:
        return [f"layers.{i}.{k}" for k in self.model.layers[i].state_dict()]

    def __iter__(self) -> Iterator[str]:
        yield "embed.weight"
        if self.model.cfg.per_layer_input:
            yield from (f"per_layer.{k}" for k in self.model.per_layer_part().state_dict())
        for i in range(self.model.cfg.n_layers):
            yield from self._layer_keys(i)
        yield "final_norm.weight"
        if not self.model.cfg.tied_embeddings:
            if self.model.source.weight_rows("lm_head.weight", 0, 1) is not None:
                yield "lm_head.weight"  # a dense head: listed without reading it
            else:
                yield from (f"lm_head.{k}" for k in self.model.lm_head.state_dict())

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __getitem__(self, name: str) -> torch.Tensor:
        m, cfg = self.model, self.model.cfg
        if name.startswith("layers."):
            _, i, rest = name.split(".", 2)
            if i.isdigit() and int(i) < cfg.n_layers:
                return m.layers[int(i)].state_dict()[rest]
        elif name == "embed.weight":
            return m.source.embed_rows(torch.arange(cfg.vocab_size))
        elif name.startswith("per_layer.") and cfg.per_layer_input:
            return m.per_layer_part().state_dict()[name.removeprefix("per_layer.")]
        elif name == "final_norm.weight":
            return m.source.final_norm().weight.detach()
        elif name.startswith("lm_head.") and not cfg.tied_embeddings:
            return m.lm_head.state_dict()[name.removeprefix("lm_head.")]
        raise KeyError(name)


class LazyModules(Mapping):
    """name → module for a streamer's linear modules, built with their layer on access."""

    def __init__(self, model: StreamedDecoder, names: Sequence[str]):
        self.model, self.names = model, list(names)

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __contains__(self, name: object) -> bool:  # without building the layer (Mapping's default would)
        return name in self.names

    def __getitem__(self, name: str) -> nn.Module:
        if name not in self.names:
            raise KeyError(name)
        if name == "lm_head":
            return self.model.lm_head
        if name.startswith("per_layer."):  # Gemma 4 PLE projection: built with its part
            return get_module(self.model.per_layer_part(), name.removeprefix("per_layer."))
        _, i, rest = name.split(".", 2)
        m: nn.Module = self.model.layers[int(i)]
        for part in rest.split("."):
            m = m[int(part)] if part.isdigit() else getattr(m, part)  # type: ignore[index]
        return m


def row_blocks(model: Any, name: str, max_bytes: int) -> Iterator[torch.Tensor] | None:
    """``embed.weight`` / ``lm_head.weight`` of a resident ``Decoder`` or a ``StreamedDecoder`` as FP32 row blocks.

    Whole-vocabulary weights are the largest tensors of a model (4·V·d bytes: 3.9 GiB at
    vocabulary 128256 and width 8192); consumers that only reduce over them (the weight
    audit) take them a block of at most ``max_bytes`` at a time, so neither side's copy is
    ever whole in FP32 beyond what the model itself holds. None when the tensor is not
    row-sliceable (a quantized head): the caller takes the module's dequantized weight. A resident
    16-bit table (a tied BF16 embedding kept so on the CPU) gives its own rows, views in that dtype: widening
    is exact, and the consumer widens a chunk at a time (``audit.weights.PairSums``) instead of a copy here.
    """
    if isinstance(model, StreamedDecoder):
        return model.row_blocks(name, max_bytes)
    owner = model.embed if name == "embed.weight" else model.lm_head
    w = getattr(owner, "weight", None)
    if not isinstance(w, torch.Tensor):
        return None
    d = w.shape[-1]
    step = max(1, min(w.shape[0], max_bytes // (4 * max(d, 1))))
    return (w[lo : lo + step] if w.dtype in (torch.bfloat16, torch.float16) else w[lo : lo + step].float()
            for lo in range(0, w.shape[0], step))


# --- building a streamed runner ---------------------------------------------------------------


def build_streamed(runner: ModelRunner) -> None:
    """Set ``runner.model`` to a ``StreamedDecoder`` over the runner's files (and its tokenizer)."""
    dev = runner.device
    if hasattr(runner, "part_source"):  # a runner that brings its own source (the GGUF candidate)
        src: PartSource = runner.part_source(dev)
    elif runner.kind == "reference":
        src = GGUFSource(runner.path, dev, impl=getattr(runner, "dequant_impl", "auto"))
        runner.gguf = src.file  # type: ignore[attr-defined]
        runner._tokenizer_reader = src.file.reader  # type: ignore[attr-defined]
    elif runner.kind == "candidate":
        src = CheckpointSource(runner, dev)
    else:
        raise NotImplementedError(f"streaming is not implemented for {runner.kind} runners")
    chunk = None
    cap = getattr(runner, "memory_cap", None)
    head_bytes = 4 * src.cfg.vocab_size * src.cfg.d_model
    if cap is not None and head_bytes > cap:
        chunk = max(cap, layer_fp32_bytes(src.cfg))  # a head chunk never needs more than a layer does
    model = StreamedDecoder(src, head_chunk_bytes=chunk)
    if isinstance(src, CheckpointSource):
        runner.setup_kv_cache(model, src.plan.quant, src.plan.kv_scales)  # type: ignore[attr-defined]
        runner.tokenizer = runner.checkpoint.tokenizer()  # type: ignore[attr-defined]
    runner.model = model  # type: ignore[assignment]


def peek_config(runner: ModelRunner) -> ModelSpec:
    """The model spec from the file headers alone (no weights read)."""
    if hasattr(runner, "peek_spec"):
        return runner.peek_spec()
    if runner.kind == "reference":
        from .references.gguf_file import GGUFFile
        from .references.gguf_model import read_spec

        return read_spec(GGUFFile(runner.path))
    if runner.kind == "candidate":
        from .candidates.checkpoint import Checkpoint
        from .families import spec_from_hf

        ck = Checkpoint(runner.path)
        return spec_from_hf(ck.config, path=str(ck.dir / "config.json"))
    raise NotImplementedError(runner.kind)


def streaming_meta(runner: ModelRunner) -> dict[str, Any]:
    """What the report records about a runner's mode and its exact live-weight peak."""
    m = runner.model
    out: dict[str, Any] = {"mode": "stream" if isinstance(m, StreamedDecoder) else "resident"}
    why = getattr(runner, "stream_reason", None)
    if why:
        out["why"] = why
    if isinstance(m, StreamedDecoder):
        out["peak_live_weight_bytes"] = m.tracker.peak
        out["peak_live_at"] = m.tracker.peak_at
        out["layer_fp32_bytes"] = layer_fp32_bytes(m.cfg)
        out["passes"] = m.passes
    elif m is not None:
        out["weight_bytes"] = module_nbytes(m)
    return out


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "t": 1000**4, "tb": 1000**4, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str | int | None) -> int | None:
    """``--memory-cap``: bytes as an int or with a unit (``8GB``, ``6GiB``, ``512M``); None passes through.

    Sane range only: at least one byte, at most 1 PiB; ``1e400``, ``inf``, ``nan``, zero and negative sizes
    are refused (a cap below one layer's weights simply streams).
    """
    import math

    from .errors import InputError

    if text is None:
        return None
    bad = InputError("--memory-cap", f"{text!r} is not a size in bytes (e.g. 8000000000, 8GB, 6GiB)")
    if isinstance(text, int) and not isinstance(text, bool):
        value, unit = float(text), ""
    elif isinstance(text, str):
        s = text.strip().lower().replace(" ", "").replace("_", "")
        num = s.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = s[len(num) :]
        try:
            value = float(num)
        except (ValueError, OverflowError):
            raise bad from None
    else:
        raise bad
    if unit not in _UNITS or not math.isfinite(value) or value <= 0:
        raise bad
    n = value * _UNITS[unit]
    if not (MEMORY_CAP_MIN <= n <= MEMORY_CAP_MAX):
        raise InputError("--memory-cap", f"{text!r} is {n:.4g} bytes; give between 1 byte and 1 PiB")
    return int(n)


MEMORY_CAP_MIN = 1
MEMORY_CAP_MAX = 1 << 50
