"""llama.cpp as an oracle: our FP32 reference logits vs llama.cpp's own on the same GGUF and tokens.

"The GGUF works in llama.cpp" is what users check first, so the reference must agree with
llama.cpp to within llama.cpp's own precision, and we must know that precision. llama.cpp is
not an FP32 implementation:

- its CPU matmuls convert the activations to the dot-product type of the weight
  (``vec_dot_type``: Q8_0 for Q4_0/Q5_x/Q8_0 weights, Q8_K for K-quants, F16 for F16 weights);
  F32 weights are multiplied in F32;
- the KV cache holds K and V in F16 by default (``type_k``/``type_v``), so attention reads
  rounded keys and values (and, without flash attention, Q·K runs as an F16 dot product).

So the same model as an F32 GGUF with an F32 KV cache isolates summation order (≈1e-6), F32
weights with the default F16 cache shows the cache's share, and a quantized GGUF adds the
activation quantization. Disagreement beyond those is a bug on one side.

llama.cpp's logits come from ``llama_cpp.Llama(path, logits_all=True)``, ``eval(ids)``,
``scores`` (one batch; llama-cpp-python's defaults otherwise: flash attention off). Ours from
``ReferenceRunner(path).run(ids, select="logits")``. Metrics per position (float64):
cosine, max |Δlogit|, KL(llama.cpp‖ours) in nats, top-1 agreement.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from layerbisect.comparison.metrics import cosine, kl_divergence, max_abs, top1_agreement
from layerbisect.errors import InputError


@dataclass(frozen=True)
class OracleResult:
    """Per-position agreement of our reference with llama.cpp on one GGUF and one setting."""

    path: Path
    arch: str
    weights: str  # tensor types of the 2-D weights, most common first ("Q5_0 x115, Q8_0 x18, ...")
    kv_type: str
    token_ids: list[int]
    cosine: list[float]
    max_abs: list[float]
    kl: list[float]  # KL(llama.cpp || ours), nats
    top1: list[bool]

    @property
    def min_cosine(self) -> float:
        return min(self.cosine)

    @property
    def max_kl(self) -> float:
        return max(self.kl)

    @property
    def worst_abs(self) -> float:
        return max(self.max_abs)

    @property
    def top1_agree(self) -> int:
        return sum(self.top1)


def weight_types(path: str | Path) -> str:
    """The tensor types of a GGUF's matrices, most common first."""
    from layerbisect.references.fast_reader import FastGGUFReader

    r = FastGGUFReader(path)
    c = Counter(t.tensor_type.name for t in r.tensors if len(t.shape) >= 2 and int(np.prod(t.shape)) > 1)
    return ", ".join(f"{k} x{v}" for k, v in c.most_common())


def llamacpp_logits(path: str | Path, ids: Sequence[int], *, kv_type: str = "f16", flash_attn: bool = False,
                    n_threads: int | None = None) -> np.ndarray:
    """llama.cpp's logits for every position: ``Llama(path, logits_all=True).eval(ids).scores``, (T, V) float32."""
    from layerbisect.producers.llamacpp import llama_cpp_available, native_output_to

    why = llama_cpp_available()
    if why:
        raise InputError("llama_cpp", why)
    import llama_cpp

    if kv_type not in ("f16", "f32"):
        raise InputError(f"kv_type={kv_type!r}", "choose f16 or f32")
    types = {} if kv_type == "f16" else {"type_k": 0, "type_v": 0}  # GGML_TYPE_F32
    n = len(ids)
    with native_output_to(os.devnull):
        llm = llama_cpp.Llama(str(path), logits_all=True, verbose=False, n_ctx=max(n, 32), n_batch=max(n, 32),
                              n_ubatch=max(n, 32), n_threads=n_threads or os.cpu_count(), flash_attn=flash_attn,
                              **types)
    try:
        llm.eval(list(ids))
        return np.array(llm.scores[:n], dtype=np.float32)
    finally:
        llm.close()


def oracle_compare(path: str | Path, ids: Sequence[int], *, kv_type: str = "f16", flash_attn: bool = False,
                   n_threads: int | None = None) -> OracleResult:
    """Our FP32 reference vs llama.cpp on ``path`` for ``ids`` (see the module notes)."""
    from layerbisect.references.runner import ReferenceRunner

    runner = ReferenceRunner(path)
    ours = runner.run(list(ids), select="logits")["logits"].float()
    theirs = torch.from_numpy(llamacpp_logits(path, ids, kv_type=kv_type, flash_attn=flash_attn,
                                              n_threads=n_threads))
    if theirs.shape != ours.shape:
        raise InputError(path, f"llama.cpp gave logits {tuple(theirs.shape)}, our reference {tuple(ours.shape)}")
    return OracleResult(
        path=Path(path),
        arch=_arch(path),
        weights=weight_types(path),
        kv_type=kv_type,
        token_ids=[int(t) for t in ids],
        cosine=cosine(theirs, ours).tolist(),
        max_abs=max_abs(theirs, ours).tolist(),
        kl=kl_divergence(theirs, ours).tolist(),
        top1=[bool(x) for x in top1_agreement(theirs, ours).tolist()],
    )


def _arch(path: str | Path) -> str:
    from layerbisect.references.fast_reader import FastGGUFReader

    f = FastGGUFReader(path).fields.get("general.architecture")
    return str(f.contents()) if f is not None else "?"
