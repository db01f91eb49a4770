"""llama.cpp as a captured engine: every graph node it computes, read through the scheduler's eval callback.

    res = capture_llamacpp("model.gguf", "dump/", prompt="The capital of France is")
    # then: bisect REF.gguf --candidate-dump dump/

How: ``llama_context_params.cb_eval`` (``ggml_backend_sched_eval_callback``, reachable through
llama-cpp-python's ctypes bindings) is called twice per graph node: with ``ask=True`` before
the scheduler computes it (return True to see the result), then with ``ask=False`` once it is
computed. We answer True only for nodes the map (``engines/maps/llamacpp.toml``) turns into a
capture point, so the scheduler splits the graph only there. A node's data is read with
``ggml_backend_tensor_get`` (host copy, any backend), honouring its strides (views).

Layout: ggml tensors are ``ne = [features, tokens]`` or ``[head_dim, heads, tokens]`` (ne0
fastest); numpy sees them as (tokens, heads, head_dim). The outermost dimension must be the
token axis; the rest is flattened into F, giving our (T, F) rows (heads flattened as
``h * head_dim + d``, our layout too).

What runs: the prompt is one ``llama_decode`` of one batch with every position marked as an
output (so the logits and the last layer exist for every row, as ``logits_all``), batch and
micro-batch as large as the prompt (one graph). Defaults are llama-cpp-python's: flash
attention off, KV cache F16; ``flash_attn``, ``kv_type`` change them. llama.cpp's CPU matmuls
quantize the activations to the weight type's dot-product type (Q8_0/Q8_K for quantized
weights, F16 for an F16 KV cache), which is the arithmetic being compared.

The dump is the format of ``engines/capture.py`` (manifest.json + one safetensors shard, F32),
so ``load_dump`` and ``bisect --candidate-dump`` read it. ``llamacpp-graph.json`` beside it lists
every node of the graph (name, op, type, shape) for writing maps of new architectures.
"""

from __future__ import annotations

import ctypes
import fnmatch
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from layerbisect.capture import Selector
from layerbisect.engines.capture import FORMAT, FORMAT_VERSION, MANIFEST, SHARD_PREFIX
from layerbisect.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

GRAPH_FILE = "llamacpp-graph.json"
_GGML_MAX_DIMS, _GGML_MAX_SRC = 4, 10


class _GGMLTensor(ctypes.Structure):
    """``struct ggml_tensor`` of ggml/include/ggml.h (vendored llama.cpp 0c1e570)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * _GGML_MAX_DIMS),
        ("nb", ctypes.c_size_t * _GGML_MAX_DIMS),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * 16),  # GGML_MAX_OP_PARAMS / sizeof(int32_t)
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * _GGML_MAX_SRC),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * 64),  # GGML_MAX_NAME
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


_NUMPY = {"f32": np.float32, "f16": np.float16, "i32": np.int32}  # i32: chosen expert ids (ffn_moe_topk)


@dataclass(frozen=True)
class _Lib:
    """The few ggml functions we call, from llama-cpp-python's bundled libggml-base."""

    op_name: Any
    type_name: Any
    tensor_get: Any

    @classmethod
    def load(cls) -> _Lib:
        import llama_cpp

        lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
        lib.ggml_op_name.restype, lib.ggml_op_name.argtypes = ctypes.c_char_p, [ctypes.c_int]
        lib.ggml_type_name.restype, lib.ggml_type_name.argtypes = ctypes.c_char_p, [ctypes.c_int]
        get = lib.ggml_backend_tensor_get
        get.restype, get.argtypes = None, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
        return cls(lib.ggml_op_name, lib.ggml_type_name, get)


# -- the map -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeRule:
    """One way of finding a capture point among the graph's nodes."""

    target: str  # canonical name, "{i}" for the layer
    name: str | None = None  # node name pattern ("Qcur-{i}"), or None for an input rule
    op: str | None = None  # ggml op name (ROPE, MUL_MAT, ...) the node must have
    input: str | None = None  # a named node that must be among the sources
    depth: int = 1

    def _regex(self, pattern: str) -> re.Pattern[str]:
        return re.compile(re.escape(pattern).replace(re.escape("{i}"), r"(?P<i>\d+)") + r"\Z")


@dataclass
class GGMLNameMap:
    """ggml node names → canonical names (``[map]``) plus rules by op and input (``[by_input]``)."""

    name: str
    rules: list[NodeRule]
    archs: tuple[str, ...]
    notes: str = ""
    source: str = "<memory>"
    _by_name: list[tuple[re.Pattern[str], NodeRule]] = field(default_factory=list, repr=False)
    _by_input: list[tuple[re.Pattern[str], NodeRule]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        for r in self.rules:
            if r.name is not None:
                self._by_name.append((r._regex(r.name), r))
            else:
                self._by_input.append((r._regex(r.input or ""), r))

    @classmethod
    def from_toml(cls, text: str, *, source: str = "<string>") -> GGMLNameMap:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise InputError(source, f"not valid TOML: {e}") from e
        meta = data.get("meta", {})
        rules: list[NodeRule] = []
        for key, val in data.get("map", {}).items():
            items = val if isinstance(val, list) else [val]
            for it in items:
                if isinstance(it, str):
                    rules.append(NodeRule(target=it, name=key))
                elif isinstance(it, dict) and isinstance(it.get("name"), str):
                    rules.append(NodeRule(target=it["name"], name=key, op=it.get("op")))
                else:
                    raise InputError(source, f"[map] {key!r}: an entry is a name or a table with `name`")
        for target, it in data.get("by_input", {}).items():
            if not isinstance(it, dict) or not isinstance(it.get("input"), str):
                raise InputError(source, f"[by_input] {target!r}: needs `input` (a node name) and usually `op`")
            rules.append(NodeRule(target=target, op=it.get("op"), input=it["input"], depth=int(it.get("depth", 1))))
        if not rules:
            raise InputError(source, "a llama.cpp map needs a [map] or [by_input] section")
        return cls(name=str(meta.get("name", Path(source).stem)), rules=rules,
                   archs=tuple(meta.get("model_types", ())), notes=str(meta.get("notes", "")), source=source)

    @classmethod
    def builtin(cls) -> GGMLNameMap:
        entry = resources.files("layerbisect.engines") / "maps" / "llamacpp.toml"
        return cls.from_toml(entry.read_text(), source="layerbisect/engines/maps/llamacpp.toml")

    def by_name(self, node: str, op: str) -> str | None:
        for pat, r in self._by_name:
            m = pat.match(node)
            if m and (r.op is None or r.op == op):
                i = m.groupdict().get("i")
                return r.target.replace("{i}", i) if i is not None else r.target
        return None

    def by_input(self, op: str, ancestors: Sequence[str]) -> str | None:
        for pat, r in self._by_input:
            if r.op is not None and r.op != op:
                continue
            for names in ancestors[: r.depth]:
                for n in names:
                    m = pat.match(n)
                    if m:
                        i = m.groupdict().get("i")
                        return r.target.replace("{i}", i) if i is not None else r.target
        return None

    @property
    def max_depth(self) -> int:
        return max((r.depth for _, r in self._by_input), default=1)

    def to_dict(self) -> dict[str, Any]:
        return {"meta": {"name": self.name, "engine": "llama.cpp", "model_types": list(self.archs),
                         "notes": self.notes},
                "rules": [{k: v for k, v in vars(r).items() if v is not None} for r in self.rules]}


def resolve_ggml_map(spec: GGMLNameMap | str | Path | None) -> GGMLNameMap:
    if spec is None or spec == "llamacpp":
        return GGMLNameMap.builtin()
    if isinstance(spec, GGMLNameMap):
        return spec
    p = Path(spec)
    if not p.is_file():
        raise InputError(p, "llama.cpp name map not found (built-in: llamacpp)")
    return GGMLNameMap.from_toml(p.read_text(), source=str(p))


# -- running llama.cpp -------------------------------------------------------------------------


@dataclass
class LlamaCppResult:
    """What one capture did: where the dump is, the points, timings, and llama.cpp's own logits."""

    out_dir: Path
    token_ids: list[int]
    names: list[str]
    problems: list[str]
    n_nodes: int
    decode_seconds: float
    logits: np.ndarray  # (T, vocab) float32, llama.cpp's own output
    arch: str


def _require_llama_cpp() -> Any:
    from layerbisect.producers.llamacpp import llama_cpp_available

    why = llama_cpp_available()
    if why:
        raise InputError("llama_cpp", why)
    import llama_cpp

    return llama_cpp


_LOG_TAIL: list[str] = []


def _log_sink(level: int, text: bytes, _user: Any) -> None:
    # llama.cpp logs every load and context creation; keep the tail for error messages only.
    _LOG_TAIL.append(text.decode(errors="replace"))
    del _LOG_TAIL[:-200]


_LOG_CALLBACK: Any = None


def _quiet(lc: Any) -> None:
    global _LOG_CALLBACK
    if _LOG_CALLBACK is None:
        _LOG_CALLBACK = lc.llama_log_callback(_log_sink)  # kept referenced: C holds the pointer
        lc.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))


def _log_tail(n: int = 3) -> str:
    lines = [ln.strip() for ln in "".join(_LOG_TAIL).splitlines() if ln.strip()]
    return " | ".join(lines[-n:])


class LlamaCppModel:
    """A GGUF loaded by llama.cpp (CPU), decoding one prompt per call; a context manager.

    ``flash_attn``: None = llama.cpp's auto, False/True = off/on (llama-cpp-python's default is
    off). ``kv_type``: "f16" (llama.cpp's default) or "f32" for the K/V cache. ``stop``: a list that,
    once non-empty (a signal arrived: ``outputs.signals_deferred``), aborts the model load (llama.cpp's
    progress callback) and the compute (its abort callback); the caller then acts on the signal.
    """

    def __init__(self, path: str | Path, *, n_threads: int | None = None, flash_attn: bool | None = False,
                 kv_type: str = "f16", stop: list[int] | None = None):
        self.path = Path(path)
        if self.path.is_dir():
            raise InputError(self.path, "is a directory; give a GGUF file")
        if not self.path.is_file():
            raise InputError(self.path, "no such GGUF file")
        if kv_type not in ("f16", "f32"):
            raise InputError("--kv-type", f"{kv_type!r}: choose f16 or f32")
        if n_threads is not None and n_threads < 1:
            raise InputError("--threads", f"{n_threads}: give at least 1")
        self.llama_cpp = _require_llama_cpp()
        self.n_threads = n_threads or max(1, os.cpu_count() or 1)
        self.flash_attn = flash_attn
        self.kv_type = kv_type
        self.stop = stop if stop is not None else []
        self.model = None
        self.vocab = None
        # kept referenced while C may call them
        self._progress = self.llama_cpp.llama_progress_callback(lambda _p, _u: not self.stop)
        self._abort = self.llama_cpp.ggml_abort_callback(lambda _u: bool(self.stop))

    def __enter__(self) -> LlamaCppModel:
        lc = self.llama_cpp
        _quiet(lc)
        lc.llama_backend_init()
        mp = lc.llama_model_default_params()
        mp.n_gpu_layers = 0
        mp.progress_callback = self._progress
        self.model = lc.llama_model_load_from_file(str(self.path).encode(), mp)
        if not self.model:
            why = "interrupted" if self.stop else _log_tail()
            raise InputError(self.path, f"llama.cpp could not load it: {why}")
        self.vocab = lc.llama_model_get_vocab(self.model)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.model:
            self.llama_cpp.llama_model_free(self.model)
            self.model = None

    @property
    def n_ctx_train(self) -> int:
        """The context length the model was trained with (``{arch}.context_length``)."""
        return int(self.llama_cpp.llama_model_n_ctx_train(self.model))

    @property
    def n_vocab(self) -> int:
        return int(self.llama_cpp.llama_vocab_n_tokens(self.vocab))

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(256)
        n = self.llama_cpp.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode() if n >= 0 else None

    def tokenize(self, text: str) -> list[int]:
        """llama.cpp's own tokenization (``add_special``, ``parse_special``), as its tools do."""
        raw = text.encode()
        n_max = len(raw) + 16
        toks = (self.llama_cpp.llama_token * n_max)()
        n = self.llama_cpp.llama_tokenize(self.vocab, raw, len(raw), toks, n_max, True, True)
        if n < 0:
            raise InputError("prompt", f"llama.cpp tokenized it into more than {n_max} tokens")
        return list(toks[:n])

    def decode(self, ids: Sequence[int], callback: Any = None) -> tuple[np.ndarray, float]:
        """One prompt, every position an output: (logits (T, V) float32, seconds in llama_decode)."""
        lc = self.llama_cpp
        n = len(ids)
        if n == 0:
            raise InputError("tokens", "empty prompt")
        bad = [t for t in ids if not 0 <= t < self.n_vocab]
        if bad:
            raise InputError("tokens", f"id {bad[0]} is outside the {self.n_vocab}-token vocabulary of {self.path}")
        if n > self.n_ctx_train > 0:
            raise InputError("tokens", f"{n} tokens exceed the model's context of {self.n_ctx_train} ({self.path})")
        cp = lc.llama_context_default_params()
        cp.n_ctx = max(n, 32)
        cp.n_batch = cp.n_ubatch = n  # one batch, one graph
        cp.n_threads = cp.n_threads_batch = self.n_threads
        cp.no_perf = True
        cp.abort_callback = self._abort
        if self.flash_attn is not None:
            cp.flash_attn_type = (lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if self.flash_attn
                                  else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        if self.kv_type == "f32":
            cp.type_k = cp.type_v = 0  # GGML_TYPE_F32
        if callback is not None:
            cp.cb_eval = callback
            cp.cb_eval_user_data = None
        ctx = lc.llama_init_from_model(self.model, cp)
        if not ctx:
            raise InputError(self.path, f"llama.cpp could not create a context: {_log_tail()}")
        batch = lc.llama_batch_init(n, 0, 1)
        try:
            for i, tok in enumerate(ids):
                batch.token[i] = int(tok)
                batch.pos[i] = i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 1
            batch.n_tokens = n
            t0 = time.perf_counter()
            rc = lc.llama_decode(ctx, batch)
            dt = time.perf_counter() - t0
            if self.stop:  # a signal: the caller acts on it once llama.cpp has returned
                return np.zeros((0, self.n_vocab), np.float32), dt
            if rc != 0:
                raise InputError(self.path, f"llama_decode failed (return code {rc}): {_log_tail()}")
            ptr = lc.llama_get_logits(ctx)
            logits = np.ctypeslib.as_array(ptr, shape=(n, self.n_vocab)).astype(np.float32, copy=True)
        finally:
            lc.llama_batch_free(batch)
            lc.llama_free(ctx)
        return logits, dt


class _Recorder:
    """The eval callback's state: which nodes to take, what they held, every node seen."""

    def __init__(self, lib: _Lib, nmap: GGMLNameMap, select: Selector, n_tokens: int, raw: bool,
                 stop: list[int] | None = None):
        self.lib, self.nmap, self.select, self.n_tokens, self.raw = lib, nmap, select, n_tokens, raw
        self.stop = stop if stop is not None else []
        self.offered: set[str] = set()  # every point the graph offered, selected or not (to check --select)
        self.raw_skipped: list[str] = []  # --raw nodes without an outer token axis, said in one line
        self.names_by_addr: dict[int, str] = {}
        self.src_by_addr: dict[int, tuple[int, ...]] = {}
        self.wanted: dict[int, list[str]] = {}  # node address -> canonical names, decided at ask time
        self.values: dict[str, np.ndarray] = {}
        self.source: dict[str, str] = {}
        self.order: list[str] = []
        self.graph: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.error: BaseException | None = None

    def _ancestors(self, addr: int) -> list[list[str]]:
        out, frontier = [], [addr]
        for _ in range(self.nmap.max_depth):
            frontier = [s for a in frontier for s in self.src_by_addr.get(a, ())]
            out.append([self.names_by_addr.get(a, "") for a in frontier])
        return out

    def __call__(self, t: int, ask: bool, _user: Any) -> bool:
        if self.stop:
            return False  # a signal arrived: take nothing more (the abort callback stops the compute)
        try:
            tt = ctypes.cast(t, ctypes.POINTER(_GGMLTensor)).contents
            if ask:
                name = tt.name.decode(errors="replace")
                op = self.lib.op_name(tt.op).decode()
                self.names_by_addr[t] = name
                self.src_by_addr[t] = tuple(s for s in tt.src if s)
                self.graph.append({"name": name, "op": op, "type": self.lib.type_name(tt.type).decode(),
                                   "ne": [int(x) for x in tt.ne]})
                # One node can be two points: llama's result_output is logits and logits.pre_softcap.
                targets = [x for x in (self.nmap.by_name(name, op), self.nmap.by_input(op, self._ancestors(t)))
                           if x is not None]
                if not targets and self.raw and not name.startswith(("cache_", "node_")) and "(" not in name:
                    targets = [f"llamacpp.{name}"]
                self.offered.update(targets)
                targets = [x for x in dict.fromkeys(targets) if self.select(x)]
                if targets:
                    self.wanted[t] = targets
                    return True
                return False
            for target in self.wanted.pop(t, []):
                self._read(tt, t, target)
            return True
        except BaseException as e:  # never raise through C; re-raised after llama_decode returns
            self.error = e
            return False

    def _read(self, tt: _GGMLTensor, addr: int, target: str) -> None:
        name = tt.name.decode(errors="replace")
        tname = self.lib.type_name(tt.type).decode()
        if tname not in _NUMPY:
            self.problems.append(f"{target}: node {name!r} is {tname}, not f32/f16/i32; skipped")
            return
        ne = [int(x) for x in tt.ne]
        nb = [int(x) for x in tt.nb]
        dims = [d for d in range(_GGML_MAX_DIMS) if ne[d] > 1] or [0]
        outer = max(dims)
        if self.n_tokens > 1 and ne[outer] != self.n_tokens:  # one token: the whole node is its row
            if target.startswith("llamacpp."):  # --raw: nodes not laid out per token (kq-N spans the KV slots)
                self.raw_skipped.append(name)
                return
            self.problems.append(f"{target}: node {name!r} has shape {ne}, no outer token axis of {self.n_tokens}")
            return
        itemsize = np.dtype(_NUMPY[tname]).itemsize
        span = sum((ne[d] - 1) * nb[d] for d in range(_GGML_MAX_DIMS)) + itemsize
        buf = np.empty(span, dtype=np.uint8)
        self.lib.tensor_get(addr, buf.ctypes.data, 0, span)
        arr = np.ndarray(shape=ne[::-1], dtype=_NUMPY[tname], buffer=buf, strides=nb[::-1])
        x = np.ascontiguousarray(arr).astype(np.float32).reshape(self.n_tokens, -1)
        if target not in self.values:
            self.order.append(target)
        self.values[target] = x  # a later node under the same target wins (see the map's notes)
        self.source[target] = f"{name} ({self.lib.op_name(tt.op).decode()})"


def capture_llamacpp(
    model: str | Path,
    out_dir: str | Path,
    *,
    prompt: str | None = None,
    token_ids: Sequence[int] | None = None,
    select: Sequence[str] | str | None = None,
    name_map: GGMLNameMap | str | Path | None = None,
    n_threads: int | None = None,
    flash_attn: bool | None = False,
    kv_type: str = "f16",
    raw: bool = False,
    overwrite: bool = False,
) -> LlamaCppResult:
    """Run ``model`` (a GGUF) in llama.cpp on one prompt and write a candidate dump to ``out_dir``.

    ``prompt`` is tokenized by llama.cpp itself (BOS and specials as its tools do); or pass
    ``token_ids``. ``select``: canonical-name globs (default all). ``raw``: also keep every other
    named node under ``llamacpp.<node name>`` (engine-vs-engine diffs). ``out_dir`` must not exist,
    be empty, or hold an earlier layerbisect output, unless ``overwrite`` (then only our files in it are
    replaced). The dump is written whole beside ``out_dir`` and moved into place (``outputs.StagedDir``):
    an error or a signal (SIGINT, SIGTERM: the model load and llama.cpp's compute are aborted, then the
    signal acts as it would have) leaves ``out_dir`` as it was. Raises ``InputError`` for a missing
    llama_cpp, an unloadable model, bad ids or length, a ``select`` pattern that matches no point of the
    graph, or an ``out_dir`` that cannot be written.
    """
    from layerbisect.outputs import StagedDir, check_out_dir, is_ours, signals_deferred

    if (prompt is None) == (token_ids is None):
        raise InputError("capture-llamacpp", "give exactly one of prompt= and token_ids=")
    if token_ids is not None and not len(token_ids):
        raise InputError("--tokens", "holds no ids")
    pats = select.split(",") if isinstance(select, str) else list(select or [])
    if any(not str(p).strip() for p in pats):
        raise InputError("--select", f"{','.join(map(str, pats))!r} has an empty pattern; e.g. 'layers.*.out,logits*'")
    out = Path(out_dir)
    if out.is_dir() and any(out.iterdir()) and not overwrite and not (is_ours(out) and _is_dump(out)):
        raise InputError(out, "is not empty and holds no earlier dump; pass --overwrite (Python: overwrite=True) "
                              "to write into it, or give another folder")
    check_out_dir(out, overwrite=overwrite)
    nmap = resolve_ggml_map(name_map)
    sel = Selector(select)
    with signals_deferred() as stop:  # a signal aborts llama.cpp, then acts when this block ends
        with LlamaCppModel(model, n_threads=n_threads, flash_attn=flash_attn, kv_type=kv_type, stop=stop) as m:
            ids = m.tokenize(prompt) if prompt is not None else [int(t) for t in token_ids or []]
            arch = m.meta("general.architecture") or "?"
            rec = _Recorder(_Lib.load(), nmap, sel, len(ids), raw, stop=stop)
            cb = m.llama_cpp.ggml_backend_sched_eval_callback(rec)
            logits, dt = m.decode(ids, callback=cb)
    if rec.error is not None:
        raise rec.error
    for p in sel.patterns if select else ():
        if not any(fnmatch.fnmatchcase(n, p) for n in rec.offered):
            raise InputError("--select", f"pattern {p!r} matches none of the {len(rec.offered)} points llama.cpp's "
                                         "graph offered (named like embed, layers.0.attn.q, logits; "
                                         "docs/CAPTURE_NAMES.md)")
    if rec.raw_skipped:
        kinds = sorted({re.sub(r"-\d+$", "-N", n) for n in rec.raw_skipped})
        rec.problems.append(f"--raw: {len(rec.raw_skipped)} nodes have no outer token axis and were not kept "
                            f"({', '.join(kinds[:6])}{', …' if len(kinds) > 6 else ''})")
    if arch not in nmap.archs:
        rec.problems.append(f"architecture {arch!r} is not among the map's {list(nmap.archs)}: check the points")
    with StagedDir(out, overwrite=overwrite) as stage:
        _write_dump(stage, rec, ids, nmap, model, arch, dt, flash_attn, kv_type, m.n_threads)
    return LlamaCppResult(out_dir=out, token_ids=ids, names=list(rec.order), problems=list(rec.problems),
                          n_nodes=len(rec.graph), decode_seconds=dt, logits=logits, arch=arch)


def _is_dump(d: Path) -> bool:
    """``d`` holds a dump of ours (its manifest names our format)."""
    try:
        return json.loads((d / MANIFEST).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _write_dump(out: Path, rec: _Recorder, ids: list[int], nmap: GGMLNameMap, model: str | Path, arch: str,
                dt: float, flash_attn: bool | None, kv_type: str, n_threads: int) -> None:
    """The dump's files into ``out`` (a fresh staging folder)."""
    import torch
    from safetensors.torch import save_file

    from layerbisect.outputs import usual_mode
    from layerbisect.producers.llamacpp import LLAMA_CPP_COMMIT, LLAMA_CPP_PYTHON_VERSION

    shard = f"{SHARD_PREFIX}00000.safetensors"
    tensors = {n: torch.from_numpy(rec.values[n]) for n in rec.order}
    save_file(tensors, str(out / shard), metadata={"format": "pt", "step": "0"})
    usual_mode(out / shard)
    positions = list(range(len(ids)))
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "source": {
            "engine": "llama.cpp",
            "engine_version": f"llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}, llama.cpp {LLAMA_CPP_COMMIT[:7]}",
            "model": str(Path(model).resolve()),
            "model_type": arch,
            "flash_attn": "auto" if flash_attn is None else bool(flash_attn),
            "kv_type": kv_type,
            "n_threads": n_threads,
            "graph_nodes": len(rec.graph),
            "decode_seconds": round(dt, 4),
        },
        "name_map": nmap.to_dict(),
        "patterns": list(rec.select.patterns),
        "names": list(rec.order),
        "points": {n: {"features": int(rec.values[n].shape[1]), "dtype": "float32", "module": rec.source[n]}
                   for n in rec.order},
        "token_ids": {str(p): int(t) for p, t in zip(positions, ids)},
        "steps": [{"step": 0, "positions": positions, "shards": [shard],
                   "tensors": {n: {"shard": shard, "rows": len(ids)} for n in rec.order}}],
        "problems": list(rec.problems),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    (out / GRAPH_FILE).write_text(json.dumps(rec.graph, indent=0))


def decode_overhead(model: str | Path, token_ids: Sequence[int], *, repeats: int = 5,
                    n_threads: int | None = None) -> dict[str, float]:
    """Median seconds inside ``llama_decode`` without and with the capture callback (every mapped point).

    The callback's work (asking per node, graph splits at captured nodes, host copies) all happens
    inside ``llama_decode``; writing the dump afterwards is not counted.
    """
    nmap = GGMLNameMap.builtin()
    plain: list[float] = []
    hooked: list[float] = []
    points = 0
    with LlamaCppModel(model, n_threads=n_threads) as m:
        lib = _Lib.load()
        for _ in range(repeats):
            plain.append(m.decode(token_ids)[1])
            rec = _Recorder(lib, nmap, Selector(None), len(token_ids), raw=False)
            hooked.append(m.decode(token_ids, callback=m.llama_cpp.ggml_backend_sched_eval_callback(rec))[1])
            points = len(rec.order)
    p, h = float(np.median(plain)), float(np.median(hooked))
    return {"plain_s": p, "capture_s": h, "ratio": h / max(p, 1e-9), "tokens": len(token_ids), "points": points}
