"""FP8 KV-cache scales calibrated on a first pass the user chooses, frozen, then the real prompt (seed 003).

Engines that compute KV-cache scales at run time (vLLM ``--calculate-kv-scales``:
``k_scale = amax(k) / 448`` on the first forward, then frozen) calibrate on whatever that first
forward is: often a dummy profiling pass. In a hybrid model the recurrent layers of that pass
may run from uninitialized state; every attention layer downstream then freezes a scale taken
from activations the real prompt never produces (vLLM issue 37554: Qwen3.5 with FP8 KV cache
"hallucinated its input"). ``--kv-calibration`` chooses the calibration pass:

    prompt          the real prompt (what ``--kv-scales calibrate`` always did: amax of the first pass)
    zeros           as many copies of token id 0 as the prompt has tokens (a dummy profiling input)
    random          as many seeded random token ids
    garbage-state   the real prompt, with every recurrent layer starting from garbage state:
                    uninitialized memory, modeled as a seeded draw N(0, GARBAGE_STD²) in the conv
                    window and the delta-rule state (``garbage_state``); only the state differs
                    from ``prompt``, so any difference in the scales is the state's doing

The pass runs once on the candidate (captures only k/v and the recurrent state norms), the
scales freeze in the ``FP8KVQuant``, and the real prompt runs after it. ``KVCalibration``
records, per layer, what the pass saw: k/v amax and the frozen scales of attention layers, the
planted and the reached state norms of recurrent layers (``audit/kv_calibration.py`` compares
them with the real prompt and names the first attention layer whose scale is far off and the
recurrent layer upstream whose state was garbage).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch

from .errors import InputError
from .kernels.fp8 import FP8_MAX

CalibrationInput = Literal["prompt", "zeros", "random", "garbage-state"]
CALIBRATION_INPUTS: tuple[str, ...] = ("prompt", "zeros", "random", "garbage-state")
GARBAGE = "bits"  # how garbage-state fills the state (``garbage_state``)
GARBAGE_STD = 100.0  # "finite" garbage: leftover activations of a previous allocation, O(100) with outlier features


@dataclass(frozen=True)
class CalibrationLayer:
    """What the calibration pass saw in one layer (attention: k/v; recurrent: state norms, Frobenius over heads)."""

    layer: int
    kind: str  # "attention" | "recurrent"
    k_amax: float | None = None
    v_amax: float | None = None
    k_scale: float | None = None
    v_scale: float | None = None
    state_initial: float | None = None  # norm of the state the pass started from (0: a clean start)
    state_max: float | None = None  # largest per-token state norm during the pass (max over heads)
    nonfinite: int = 0  # non-finite values this layer's captured points held during the pass


@dataclass(frozen=True)
class KVCalibration:
    mode: str
    n_tokens: int
    token_ids_head: tuple[int, ...]
    seed: int
    layers: tuple[CalibrationLayer, ...] = field(default_factory=tuple)

    def layer(self, i: int) -> CalibrationLayer | None:
        return next((c for c in self.layers if c.layer == i), None)

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "n_tokens": self.n_tokens, "token_ids_head": list(self.token_ids_head),
                "seed": self.seed, "garbage_std": GARBAGE_STD if self.mode == "garbage-state" else None,
                "layers": [asdict(c) for c in self.layers]}


def calibration_ids(mode: str, prompt_ids: list[int], vocab_size: int, seed: int = 0) -> list[int]:
    """The token ids of the calibration pass for ``mode`` (as many as the prompt has)."""
    if mode not in CALIBRATION_INPUTS:
        raise InputError("--kv-calibration", f"{mode!r} is not one of {', '.join(CALIBRATION_INPUTS)}")
    n = len(prompt_ids)
    if mode == "zeros":
        return [0] * n
    if mode == "random":
        g = torch.Generator().manual_seed(seed)
        return torch.randint(0, vocab_size, (n,), generator=g).tolist()
    return list(prompt_ids)


def uninitialized(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """FP32 values as uninitialized memory holds them: seeded random 32-bit patterns (≈0.3 % NaN/Inf, ≈12 % > 1e30)."""
    n = math.prod(shape)
    bits = torch.randint(-(2 ** 31), 2 ** 31 - 1, (n,), generator=g, dtype=torch.int64).to(torch.int32)
    return bits.view(torch.float32).reshape(shape)


def garbage_state(spec: Any, seed: int, device: torch.device | str | None = None, kind: str | None = None):
    """A recurrent layer's state (conv window and S) as an engine's uninitialized cache holds it, seeded.

    ``kind``: "bits" (random bit patterns, ``uninitialized``) or "finite" (N(0, GARBAGE_STD²):
    leftover activations of a previous allocation); None: the module's ``GARBAGE``.
    """
    kind = kind or GARBAGE
    from .graph.deltanet import RecurrentState

    g = torch.Generator().manual_seed(seed)
    shapes = ((spec.conv_kernel - 1, spec.conv_dim), (spec.n_v_heads, spec.head_k_dim, spec.head_v_dim))
    if kind == "bits":
        conv, ssm = (uninitialized(s, g) for s in shapes)
    elif kind == "finite":
        conv, ssm = (torch.randn(s, generator=g) * GARBAGE_STD for s in shapes)
    else:
        raise InputError("garbage", f"{kind!r} is not one of bits, finite")
    return RecurrentState(conv.to(device), ssm.to(device))


@torch.no_grad()
def calibrate(model: Any, kvq: Any, prompt_ids: list[int], mode: str, seed: int = 0) -> KVCalibration:
    """Run the calibration pass of ``mode`` through ``model`` with ``kvq`` (source "calibrate") and freeze its scales.

    ``model``: a ``Decoder`` or ``StreamedDecoder`` whose attention layers call ``kvq``.
    Scales already frozen are kept (calibration happens once, as in engines).
    """
    from .capture import Captures, Selector
    from .graph import KVCache

    spec = model.cfg
    ids = calibration_ids(mode, list(prompt_ids), spec.vocab_size, seed)
    if not ids:
        raise InputError("--kv-calibration", "the prompt is empty: nothing to calibrate on")
    cache = KVCache()
    initial: dict[int, float] = {}
    for ls in spec.layers:
        if ls.mixer.kind == "gated_deltanet":
            if mode == "garbage-state":
                cache.state[ls.index] = garbage_state(ls.mixer, seed + 1000 * (ls.index + 1), model.device)
            initial[ls.index] = float(cache.state[ls.index].ssm.norm()) if ls.index in cache.state else 0.0
    caps = Captures(selector=Selector(["layers.*.attn.state", "layers.*.out"]), token_ids=ids)
    saved = model.rec.captures
    model.rec.captures = caps
    try:
        model(torch.tensor(ids, dtype=torch.long), 0, cache)
    finally:
        model.rec.captures = saved
    layers = []
    for ls in spec.layers:
        i = ls.index
        out = caps.tensors.get(f"layers.{i}.out")
        bad = int((~torch.isfinite(out)).sum()) if out is not None else 0
        if ls.mixer.kind == "gated_deltanet":
            st = caps.tensors.get(f"layers.{i}.attn.state")
            smax = float(torch.nan_to_num(st, nan=math.inf).max()) if st is not None and st.numel() else None
            layers.append(CalibrationLayer(i, "recurrent", state_initial=initial.get(i, 0.0), state_max=smax,
                                           nonfinite=bad))
        elif i in kvq.k_scale:
            ks, vs = kvq.k_scale[i], kvq.v_scale[i]
            layers.append(CalibrationLayer(i, "attention", k_amax=ks * FP8_MAX, v_amax=vs * FP8_MAX, k_scale=ks,
                                           v_scale=vs, nonfinite=bad))
    return KVCalibration(mode=mode, n_tokens=len(ids), token_ids_head=tuple(ids[:8]), seed=seed, layers=tuple(layers))


__all__ = ["CALIBRATION_INPUTS", "GARBAGE_STD", "CalibrationInput", "CalibrationLayer", "KVCalibration",
           "calibrate", "calibration_ids", "garbage_state"]
