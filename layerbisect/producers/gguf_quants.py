"""GGUF candidates for GGUF-vs-GGUF comparisons: llama.cpp quants (cached) and planted faults.

- ``quantized_gguf(src, ftype, tensor_types=...)``: llama.cpp's own quantizer
  (``llama_model_quantize`` through llama-cpp-python, as ``producers/llamacpp.py`` runs it)
  into the fixture cache, keyed by the source's sha256 and the arguments. ``tensor_types``
  is llama-quantize's ``--tensor-type PATTERN=TYPE`` (a regex searched in each tensor name,
  first match wins), passed as ``llama_model_quantize_params.tt_overrides``. A tensor whose
  override equals its current type is copied byte for byte (llama-quant.cpp: ``quantize =
  cur_type != new_type``), so keeping a tensor "at the reference's type" while requantizing
  the rest gives exactly the reference's bits for it: what ``restore.py`` predicts.
- ``rewrite_gguf(src, dst, edit)``: a copy through gguf-py's own reader and writer (the
  pattern of gguf-py's ``gguf_new_metadata.py``: every key/value as read, every tensor's raw
  bytes with its type), with ``edit(name, type, bytes) -> bytes | None`` changing some.
- ``corrupt_q4k_scales``: a planted fault: in chosen Q4_K blocks of one tensor, bit 5 of the
  6-bit scales of sub-blocks 0..3 flips (``block_q4_K``: d f16, dmin f16, scales[12], qs[128];
  scales[0..3] & 63 are those sub-blocks' scales, ggml-common.h), so those weights grow or
  shrink by the changed scale: what a corrupt write or a packing bug leaves behind.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from ..errors import InputError
from .cache import build_atomic, cache_dir, options_key, sha256_file

TensorEdit = Callable[[str, gguf.GGMLQuantizationType, np.ndarray], "np.ndarray | None"]

Q4_K_SCALES = slice(4, 8)  # bytes of block_q4_K holding the 6-bit scales of sub-blocks 0..3 (low 6 bits)


def rewrite_gguf(src: str | Path, dst: str | Path, edit: TensorEdit | None = None,
                 kv: Mapping[str, Any] | None = None) -> list[str]:
    """Copy ``src`` to ``dst`` through gguf-py, tensor bytes passed through ``edit``; returns the edited names.

    ``edit`` gets the tensor name, its type and a writable copy of its raw data (as
    ``GGUFReader`` gives it: uint8 rows for block types) and returns the new data of the same
    shape and dtype, or None to keep it. ``kv``: metadata values to replace (same key, same
    GGUF value type; e.g. a token list). Written to a temporary name and renamed.
    """
    from ..references.fast_reader import FastGGUFReader

    src, dst = Path(src), Path(dst)
    reader = FastGGUFReader(src, "r")
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    writer = gguf.GGUFWriter(tmp, arch=arch, endianess=reader.endianess)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # virtual fields, and the one GGUFWriter writes itself
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        value = kv[field.name] if kv is not None and field.name in kv else field.contents()
        writer.add_key_value(field.name, value, vtype, sub_type=sub)
    changed: list[str] = []
    datas = []
    for t in reader.tensors:
        data = t.data
        if edit is not None:
            new = edit(t.name, t.tensor_type, np.array(data, copy=True))
            if new is not None:
                if new.shape != data.shape or new.dtype != data.dtype:
                    raise InputError(t.name, f"edit changed shape/dtype {data.shape}/{data.dtype} -> "
                                             f"{new.shape}/{new.dtype}")
                data = new
                changed.append(t.name)
        datas.append(data)
        writer.add_tensor_info(t.name, data.shape, data.dtype, data.nbytes, t.tensor_type)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for data in datas:
            writer.write_tensor_data(data, tensor_endianess=reader.endianess)
        writer.close()
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    return changed


def corrupt_q4k_scales(
    src: str | Path,
    dst: str | Path,
    tensor: str,
    blocks: Sequence[tuple[int, int]] | None = None,
    *,
    bit: int = 5,
) -> list[tuple[int, int]]:
    """Flip ``bit`` of the sub-block 0..3 scales in Q4_K blocks (row, block) of ``tensor``; None = every block.

    Returns the (row, block) pairs changed. Raises ``InputError`` if the tensor is not Q4_K.
    """
    done: list[tuple[int, int]] = []

    def edit(name: str, qtype: gguf.GGMLQuantizationType, data: np.ndarray) -> np.ndarray | None:
        if name != tensor:
            return None
        if qtype != gguf.GGMLQuantizationType.Q4_K:
            raise InputError(name, f"is {qtype.name}, not Q4_K")
        _, size = gguf.GGML_QUANT_SIZES[qtype]
        b = data.reshape(data.shape[0], -1, size)  # (rows, blocks per row, 144)
        where = blocks if blocks is not None else [(r, k) for r in range(b.shape[0]) for k in range(b.shape[1])]
        for r, k in where:
            if not (0 <= r < b.shape[0] and 0 <= k < b.shape[1]):
                raise InputError(name, f"has {b.shape[0]} rows of {b.shape[1]} blocks: no block ({r}, {k})")
            b[r, k, Q4_K_SCALES] ^= np.uint8(1 << bit)
            done.append((int(r), int(k)))
        return b.reshape(data.shape)

    changed = rewrite_gguf(src, dst, edit)
    if tensor not in changed:
        raise InputError(src, f"has no tensor {tensor!r}")
    return done


# -- llama.cpp quantization with tensor-type overrides, cached ------------------------------------------------


def quantized_gguf(
    src: str | Path,
    ftype: str,
    *,
    tensor_types: Mapping[str, str] | None = None,
    allow_requantize: bool = False,
) -> Path:
    """``llamacpp.llama_quantize`` (``tensor_types`` overrides too) through the fixture cache:
    ``$LAYERBISECT_CACHE/llamacpp/quantized/<key>/``.

    Keyed by the source's sha256, the file type, the overrides and the requantize flag; the
    quantize log is kept beside ``model.gguf``.
    """
    src = Path(src)
    if not src.is_file():
        raise InputError(src, "no such GGUF")
    key = options_key(src=sha256_file(src), ftype=ftype.upper(), tt=sorted((tensor_types or {}).items()),
                      requant=allow_requantize)
    final = cache_dir() / "llamacpp" / "quantized" / f"{src.stem[:24]}-{ftype.upper()}-{key}"

    def build(tmp: Path) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        from .llamacpp import llama_quantize

        out = llama_quantize(src, tmp / "model.gguf", ftype, tensor_types=tensor_types,
                             allow_requantize=allow_requantize, nthread=2, overwrite=True)
        log = out.with_name(out.name + ".quantize.log")
        if log.is_file():
            shutil.move(log, tmp / "quantize.log")

    return build_atomic(final, build) / "model.gguf"


TINY_TYPES = ("Q8_0", "Q4_K_M", "Q2_K", "IQ4_XS")


def tiny_llamacpp_set(root: str | Path, types: Sequence[str] = TINY_TYPES) -> dict[str, Path]:
    """A tiny llama made by llama.cpp's own tools: "hf" (its HF dir), "F32" (``convert_hf_to_gguf.py``) and one
    GGUF per llama.cpp file type in ``types`` (``llama_model_quantize``), all but "hf" from the cache.

    Sizes: hidden 256, 4 heads of 64 (2 KV heads), FFN 512, 2 layers, Llama 2's 32k SentencePiece
    vocabulary (the converter needs a real one). Every weight's row (ne0 = in_features: 256 or
    512) is a multiple of 256, so K- and IQ-quants apply to every tensor with no fallback
    (at hidden 128 llama.cpp would fall back to Q4_0/Q5_0/IQ4_NL: ``fallbacks``).
    """
    from .llamacpp import converted_gguf
    from .tiny import make_tiny_hf

    root = Path(root)
    hf = make_tiny_hf("llama", root / "tiny-llama-hf", hidden=256, heads=4, kv_heads=2, n_layers=2,
                      vocabulary="llama-spm")
    out: dict[str, Path] = {"hf": hf, "F32": converted_gguf(hf, outtype="f32")}
    for t in types:
        out[t] = quantized_gguf(out["F32"], t)
    return out


def fallbacks(log: str | Path) -> list[str]:
    """The tensors llama.cpp gave a fallback type (its 'falling back to' warnings), one line each."""
    p = Path(log)
    if not p.is_file():
        return []
    out = []
    for line in p.read_text(errors="replace").splitlines():
        if "falling back to" in line and line.startswith("warning:"):
            out.append(" ".join(line.removeprefix("warning:").split()))
    return out


__all__ = [
    "TINY_TYPES",
    "corrupt_q4k_scales",
    "fallbacks",
    "quantized_gguf",
    "rewrite_gguf",
    "tiny_llamacpp_set",
]
