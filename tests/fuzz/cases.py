"""Hypothesis strategies for hostile inputs, and how each case becomes a file on disk.

Four targets, each mutating a real seed made by the real producers (gguf-py through our writer for the GGUF;
llmcompressor for the compressed-tensors checkpoints):

- ``gguf``: one header field (any count, length, type tag, dimension or offset) set to an interesting or
  random integer; a scalar metadata value set to a hostile number; random bytes written over the header;
  bytes inserted or deleted in the header (everything after shifts); the file cut anywhere.
- ``safetensors``: the header replaced by any JSON; one field of one tensor entry (dtype, shape,
  data_offsets) set to any JSON or a near-miss; an entry or a field dropped; ``__metadata__`` mutated; the
  declared header length set to any u64; header bytes flipped; the file cut; the data bytes of a scale
  tensor overwritten (NaN, Inf, zero): the model then runs.
- ``config``: one top-level field (the model's own, or one the loader reads) set to any JSON or deleted; a
  field inside ``quantization_config`` set to any JSON; the whole document replaced by any JSON or by
  random bytes; a file swapped for a FIFO, a directory or a dangling symlink.
- ``index``: ``model.safetensors.index.json`` with a weight_map of hostile shard names (absolute, ``..``,
  missing, empty, NUL, non-strings) or any JSON at all.

``materialize(target, case, seeds, work)`` writes the case under ``work`` and returns the argv to run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from .mutate import Slot, gguf_slots, st_split, st_write

U64 = (1 << 64) - 1
INTERESTING = sorted({0, 1, 2, 3, 4, 5, 7, 8, 9, 12, 13, 16, 24, 31, 32, 63, 64, 127, 128, 255, 256, 1023, 1024,
                      4095, 4096, 65535, 65536, (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32, (1 << 32) + 1,
                      10**9, 10**12, (1 << 62), (1 << 63) - 1, 1 << 63, U64 - 1, U64})
RUN_ARGS = ["--tokens", "2,10,11", "-n", "1"]

json_scalars = (st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.sampled_from(INTERESTING)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=24))
json_values = st.recursive(
    json_scalars,
    lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=10), c, max_size=5),
    max_leaves=12,
)
numbers = (st.sampled_from([0, -1, -(1 << 40), 1 << 40, 10**30, 0.5, -0.0, 1e-300, 1e308])
           | st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(1 << 63), U64))


# ---------------------------------------------------------------------------------------------------------------
# GGUF
# ---------------------------------------------------------------------------------------------------------------


@st.composite
def gguf_cases(draw: Any, n_slots: int, n_values: int, header_bytes: int, file_bytes: int) -> dict[str, Any]:
    kind = draw(st.sampled_from(["slot", "slot", "slot", "value", "flip", "splice", "cut"]))
    seed = draw(st.sampled_from(["gemma3", "llama"]))
    c: dict[str, Any] = {"target": "gguf", "seed": seed, "kind": kind}
    if kind == "slot":
        c["slot"] = draw(st.integers(0, n_slots - 1))
        c["value"] = draw(st.sampled_from(INTERESTING + [file_bytes - 1, file_bytes, file_bytes + 1, header_bytes])
                          | st.integers(0, U64) | st.integers(-64, 64).map(lambda d: ("delta", d)))
    elif kind == "value":
        c["slot"] = draw(st.integers(0, max(n_values - 1, 0)))
        c["value"] = draw(numbers)
    elif kind == "flip":
        c["bytes"] = draw(st.lists(st.tuples(st.integers(0, header_bytes - 1), st.integers(0, 255)), min_size=1,
                                   max_size=8))
    elif kind == "splice":
        c["at"] = draw(st.integers(0, header_bytes))
        c["insert"] = draw(st.binary(max_size=16))
        c["delete"] = draw(st.integers(0, 16))
    else:
        c["at"] = draw(st.integers(0, file_bytes))
    return c


def _apply_gguf(c: dict[str, Any], seed: Path, dst: Path) -> None:
    data = bytearray(seed.read_bytes())
    slots, values, _ = gguf_slots(seed)
    k = c["kind"]
    if k == "slot":
        s: Slot = slots[c["slot"] % len(slots)]
        v = c["value"]
        if isinstance(v, tuple):
            (old,) = struct.unpack(s.fmt, data[s.offset : s.offset + s.size])
            v = old + v[1]
        data[s.offset : s.offset + s.size] = struct.pack(s.fmt, v & ((1 << (8 * s.size)) - 1))
    elif k == "value" and values:
        vs = values[c["slot"] % len(values)]
        data[vs.offset : vs.offset + struct.calcsize(vs.fmt)] = _pack_number(vs.fmt, c["value"])
    elif k == "flip":
        for pos, b in c["bytes"]:
            if pos < len(data):
                data[pos] = b
    elif k == "splice":
        at = c["at"]
        data[at : at + c["delete"]] = c["insert"]
    elif k == "cut":
        del data[c["at"] :]
    dst.write_bytes(bytes(data))


def _pack_number(fmt: str, v: Any) -> bytes:
    """``v`` in the value's own format, wrapped or clamped the way a bad writer would store it."""
    code = fmt[-1]
    if code in "fd":
        x = float(v) if not isinstance(v, int) or abs(v) < 1 << 1000 else math.inf
        try:
            return struct.pack(fmt, x)
        except OverflowError:
            return struct.pack(fmt, math.copysign(math.inf, x))
    if code == "?":
        return struct.pack(fmt, bool(v))
    size = struct.calcsize(fmt)
    iv = int(v) if isinstance(v, int) or (isinstance(v, float) and math.isfinite(v)) else 0
    return (iv & ((1 << (8 * size)) - 1)).to_bytes(size, "little")


# ---------------------------------------------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------------------------------------------

DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2", "F8_E8M0",
          "F4", "U64", "C64", "Q17", "", "f32"]


@st.composite
def safetensors_cases(draw: Any) -> dict[str, Any]:
    kind = draw(st.sampled_from(["field", "field", "field", "header", "drop", "meta", "declared", "flip", "cut",
                                 "scale_data"]))
    c: dict[str, Any] = {"target": "safetensors", "seed": draw(st.sampled_from(["FP8", "NVFP4"])), "kind": kind}
    if kind == "field":
        c["entry"] = draw(st.integers(0, 1 << 16))
        c["field"] = draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
        c["value"] = draw(st.one_of(
            json_values,
            st.sampled_from(DTYPES),
            st.lists(st.sampled_from(INTERESTING) | st.integers(-2, 2), max_size=5),
            st.tuples(st.integers(-8, 1 << 40), st.integers(-8, 1 << 40)).map(list),
        ))
    elif kind == "header":
        c["value"] = draw(json_values)
    elif kind == "drop":
        c["entry"] = draw(st.integers(0, 1 << 16))
        c["field"] = draw(st.sampled_from([None, "dtype", "shape", "data_offsets"]))
    elif kind == "meta":
        c["value"] = draw(json_values)
    elif kind == "declared":
        c["value"] = draw(st.sampled_from(INTERESTING) | st.integers(0, U64))
    elif kind == "flip":
        c["bytes"] = draw(st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=8))
    elif kind == "cut":
        c["frac"] = draw(st.floats(0, 1))
    else:
        c["entry"] = draw(st.integers(0, 1 << 16))
        c["fill"] = draw(st.sampled_from([b"\x00", b"\xff", b"\x7f", b"\x7f\xc0\x00\x00", b"\x00\x00\x80\x7f"]))
    return c


def _apply_safetensors(c: dict[str, Any], f: Path) -> None:
    h, data = st_split(f)
    names = [k for k in h if k != "__metadata__"]
    k = c["kind"]
    if k == "field":
        h[names[c["entry"] % len(names)]][c["field"]] = c["value"]
        st_write(f, h, data)
    elif k == "header":
        st_write(f, c["value"], data)
    elif k == "drop":
        name = names[c["entry"] % len(names)]
        if c["field"] is None:
            del h[name]
        else:
            h[name].pop(c["field"], None)
        st_write(f, h, data)
    elif k == "meta":
        h["__metadata__"] = c["value"]
        st_write(f, h, data)
    elif k == "declared":
        st_write(f, h, data, declared_len=c["value"])
    elif k == "flip":
        raw = bytearray(f.read_bytes())
        n = struct.unpack("<Q", raw[:8])[0]
        for pos, b in c["bytes"]:
            raw[8 + pos % max(n, 1)] = b
        f.write_bytes(bytes(raw))
    elif k == "cut":
        raw = f.read_bytes()
        f.write_bytes(raw[: int(len(raw) * c["frac"])])
    else:  # overwrite a scale tensor's data: the checkpoint stays valid, its numbers do not
        scales = [n for n in names if n.rsplit(".", 1)[-1] in ("weight_scale", "input_scale", "weight_global_scale",
                                                                 "input_global_scale")]
        name = scales[c["entry"] % len(scales)] if scales else names[0]
        lo, hi = h[name]["data_offsets"]
        fill = (c["fill"] * (hi - lo))[: hi - lo]
        st_write(f, h, data[:lo] + fill + data[hi:])


# ---------------------------------------------------------------------------------------------------------------
# config.json, index, non-regular files
# ---------------------------------------------------------------------------------------------------------------

CONFIG_KEYS = ["hidden_size", "num_attention_heads", "num_hidden_layers", "num_key_value_heads", "head_dim",
               "intermediate_size", "vocab_size", "rms_norm_eps", "rope_theta", "rope_scaling", "rope_parameters",
               "query_pre_attn_scalar", "sliding_window", "layer_types", "rope_local_base_freq",
               "attn_logit_softcapping", "final_logit_softcapping", "tie_word_embeddings",
               "max_position_embeddings", "model_type", "text_config", "quantization_config", "bos_token_id",
               "eos_token_id"]
QC_PATHS = [("quant_method",), ("format",), ("config_groups",), ("ignore",), ("kv_cache_scheme",),
            ("config_groups", "group_0"), ("config_groups", "group_0", "targets"),
            ("config_groups", "group_0", "weights"), ("config_groups", "group_0", "input_activations"),
            ("config_groups", "group_0", "format"), ("config_groups", "group_0", "weights", "num_bits"),
            ("config_groups", "group_0", "weights", "strategy"), ("config_groups", "group_0", "weights", "type"),
            ("config_groups", "group_0", "weights", "group_size"),
            ("config_groups", "group_0", "weights", "block_structure"),
            ("config_groups", "group_0", "input_activations", "dynamic")]
FILES = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]


@st.composite
def config_cases(draw: Any) -> dict[str, Any]:
    kind = draw(st.sampled_from(["set", "set", "set", "delete", "qc", "qc", "doc", "bytes", "special"]))
    c: dict[str, Any] = {"target": "config", "seed": draw(st.sampled_from(["FP8", "NVFP4"])), "kind": kind}
    if kind in ("set", "delete"):
        c["key"] = draw(st.sampled_from(CONFIG_KEYS))
        c["value"] = draw(json_values | numbers) if kind == "set" else None
    elif kind == "qc":
        c["path"] = list(draw(st.sampled_from(QC_PATHS)))
        c["value"] = draw(json_values | numbers | st.sampled_from(["re:(", "re:.*", "Linear", "dense", "tensor"]))
    elif kind == "doc":
        c["value"] = draw(json_values)
    elif kind == "bytes":
        c["value"] = draw(st.binary(max_size=64) | st.just(b"[" * 20000) | st.just(b'{"a": "\xff"}'))
        c["file"] = draw(st.sampled_from(["config.json", "tokenizer_config.json"]))
    else:
        c["file"] = draw(st.sampled_from(FILES))
        c["as"] = draw(st.sampled_from(["fifo", "dir", "dangling", "loop", "empty"]))
    return c


def _set_path(d: dict, path: list[str], value: Any) -> None:
    for p in path[:-1]:
        nxt = d.get(p) if isinstance(d, dict) else None
        if not isinstance(nxt, dict):
            return
        d = nxt
    if isinstance(d, dict):
        d[path[-1]] = value


def _apply_config(c: dict[str, Any], d: Path) -> None:
    cfg_p = d / "config.json"
    k = c["kind"]
    if k in ("set", "delete", "qc"):
        cfg = json.loads(cfg_p.read_text())
        if k == "set":
            cfg[c["key"]] = c["value"]
        elif k == "delete":
            cfg.pop(c["key"], None)
        else:
            _set_path(cfg.setdefault("quantization_config", {}), c["path"], c["value"])
        cfg_p.write_text(json.dumps(cfg))
    elif k == "doc":
        cfg_p.write_text(json.dumps(c["value"]))
    elif k == "bytes":
        (d / c["file"]).write_bytes(c["value"])
    else:
        f = d / c["file"]
        if f.exists() or f.is_symlink():
            f.unlink()
        if c["as"] == "fifo":
            os.mkfifo(f)
        elif c["as"] == "dir":
            f.mkdir()
        elif c["as"] == "dangling":
            f.symlink_to(d / "nowhere")
        elif c["as"] == "loop":
            f.symlink_to(f)
        else:
            f.write_bytes(b"")


SHARD_NAMES = ["model.safetensors", "/etc/passwd", "../model.safetensors", "a/../../model.safetensors", "",
               "nope.safetensors", ".", "config.json", "tokenizer.json", "model.safetensors\x00x", "C:\\model",
               "\\\\server\\share", "sub/model.safetensors", "~/model.safetensors"]


@st.composite
def index_cases(draw: Any) -> dict[str, Any]:
    kind = draw(st.sampled_from(["map", "map", "map", "doc", "weight_map"]))
    c: dict[str, Any] = {"target": "index", "seed": "FP8", "kind": kind}
    if kind == "map":
        c["names"] = draw(st.lists(st.sampled_from(SHARD_NAMES) | json_scalars, min_size=1, max_size=4))
        c["extra_keys"] = draw(st.lists(st.text(max_size=12), max_size=2))
        c["drop"] = draw(st.integers(0, 3))
    else:
        c["value"] = draw(json_values)
    return c


def _apply_index(c: dict[str, Any], d: Path) -> None:
    idx = d / "model.safetensors.index.json"
    h, _ = st_split(d / "model.safetensors")
    keys = [k for k in h if k != "__metadata__"]
    if c["kind"] == "map":
        keys = keys[c["drop"] :] + c["extra_keys"]
        wm = {k: c["names"][i % len(c["names"])] for i, k in enumerate(keys)}
        idx.write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    elif c["kind"] == "doc":
        idx.write_text(json.dumps(c["value"]))
    else:
        idx.write_text(json.dumps({"weight_map": c["value"]}))


# ---------------------------------------------------------------------------------------------------------------
# materialize
# ---------------------------------------------------------------------------------------------------------------


def materialize(c: dict[str, Any], seeds: dict[str, Path], work: Path) -> list[str]:
    """Write case ``c`` under ``work`` (emptied first) and return the `bisect` argv that exercises it."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    if c["target"] == "gguf":
        p = work / "model.gguf"
        _apply_gguf(c, seeds[f"gguf-{c['seed']}"], p)
        return ["run", str(p), *RUN_ARGS]
    d = work / "cand"
    shutil.copytree(seeds[c["seed"]], d, symlinks=True)
    if c["target"] == "safetensors":
        _apply_safetensors(c, d / "model.safetensors")
    elif c["target"] == "config":
        _apply_config(c, d)
    else:
        _apply_index(c, d)
    return ["run", str(d), *RUN_ARGS]


def seed_sizes(seeds: dict[str, Path]) -> tuple[int, int, int, int]:
    """(slots, value slots, header bytes, file bytes) of the smaller GGUF seed, for the GGUF strategy's ranges."""
    sizes = []
    for name in ("gguf-gemma3", "gguf-llama"):
        slots, values, data_off = gguf_slots(seeds[name])
        sizes.append((len(slots), len(values), data_off, seeds[name].stat().st_size))
    return tuple(min(x) for x in zip(*sizes))  # type: ignore[return-value]


def make_seeds(root: Path) -> dict[str, Path]:
    """Seeds from the real producers: tiny HF models → our GGUF writer (gguf-py); llmcompressor FP8 / NVFP4."""
    from layerbisect.producers.gguf_writer import write_gguf_from_hf
    from layerbisect.producers.quantize import quantize_checkpoint
    from layerbisect.producers.tiny import make_tiny_hf

    hf = make_tiny_hf("gemma3", root / "gemma3-hf", dtype="bfloat16")
    seeds = {"gguf-gemma3": write_gguf_from_hf(hf, root / "gemma3.gguf", tensor_type="F32")}
    llama = make_tiny_hf("llama", root / "llama-hf")
    seeds["gguf-llama"] = write_gguf_from_hf(llama, root / "llama.gguf", tensor_type="Q8_0")
    for scheme in ("FP8", "NVFP4"):
        seeds[scheme] = quantize_checkpoint(hf, scheme, root / f"gemma3-{scheme}")
    return seeds


STRATEGIES = {
    "safetensors": lambda sizes: safetensors_cases(),
    "config": lambda sizes: config_cases(),
    "index": lambda sizes: index_cases(),
    "gguf": lambda sizes: gguf_cases(*sizes),
}
