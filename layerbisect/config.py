"""Architectures as data: one table of per-architecture behaviour, one config dataclass.

The decoder graph in ``model.py`` is the same for every architecture; what differs is read
from ``ARCHITECTURES`` (behaviour fixed by the architecture) and from the model's own
metadata (sizes, rope bases, softcaps). Both runners build a ``ModelConfig``: the reference
from GGUF metadata, the candidate from a HF ``config.json``.

Conventions of the canonical graph (restated wherever weights are loaded):
- Norm weights are the effective multiplier: ``y = x / rms(x) * w``. GGUF already stores
  Gemma norms as ``1 + w`` (llama.cpp's converter adds 1); HF stores ``w`` and its Gemma
  modules compute ``1 + w``, so the HF loader adds 1.
- Rope ordering: ``normal`` rotates adjacent pairs (x0, x1); ``neox`` rotates halves
  (x_i, x_{i+d/2}). llama.cpp's converter permutes llama Q/K rows so that GGUF llama uses
  ``normal``; HF llama weights are permuted the same way on load (see ``permute_qk``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

RopeStyle = Literal["normal", "neox"]
Activation = Literal["silu", "gelu_tanh"]


@dataclass(frozen=True)
class ArchSpec:
    """What an architecture does, independent of model size."""

    rope_style: RopeStyle = "neox"
    activation: Activation = "silu"
    embed_scale: bool = False  # multiply embeddings by sqrt(d_model) (Gemma)
    sandwich_norms: bool = False  # post-attention and post-MLP norms (Gemma 2/3)
    qk_norm: bool = False  # RMSNorm on q and k per head before rope (Qwen3, Gemma 3)
    qkv_bias: bool = False  # Qwen2
    default_attn_softcap: float | None = None
    default_final_softcap: float | None = None
    sliding_pattern: int = 0  # n>0: layer i is global iff (i+1) % n == 0 (Gemma 2: 2, Gemma 3: 6)
    local_rope_base: float | None = None  # rope base of sliding layers when it differs (Gemma 3)
    hf_norm_offset: float = 0.0  # HF stores norm weight w, the graph uses w + offset
    hf_rope_permuted: bool = False  # HF q/k rows need llama.cpp's permutation to match GGUF


ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": ArchSpec(rope_style="normal", hf_rope_permuted=True),
    "mistral": ArchSpec(rope_style="normal", hf_rope_permuted=True),
    "qwen2": ArchSpec(qkv_bias=True),
    "qwen3": ArchSpec(qk_norm=True),
    "gemma2": ArchSpec(
        activation="gelu_tanh",
        embed_scale=True,
        sandwich_norms=True,
        default_attn_softcap=50.0,
        default_final_softcap=30.0,
        sliding_pattern=2,
        hf_norm_offset=1.0,
    ),
    "gemma3": ArchSpec(
        activation="gelu_tanh",
        embed_scale=True,
        sandwich_norms=True,
        qk_norm=True,
        sliding_pattern=6,
        local_rope_base=10_000.0,
        hf_norm_offset=1.0,
    ),
}

# HF model_type → our architecture name
HF_MODEL_TYPES = {
    "llama": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma2": "gemma2",
    "gemma3": "gemma3",
    "gemma3_text": "gemma3",
}


def supported() -> str:
    return ", ".join(sorted(ARCHITECTURES))


@dataclass(frozen=True)
class RopeScaling:
    kind: Literal["none", "linear", "llama3"] = "none"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_context: int = 8192


@dataclass(frozen=True)
class ModelConfig:
    arch: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    vocab_size: int
    norm_eps: float = 1e-6
    rope_base: float = 10_000.0
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)
    sliding_window: int | None = None
    attn_softcap: float | None = None
    final_softcap: float | None = None
    attn_scale: float | None = None  # None → 1/sqrt(head_dim)
    tied_embeddings: bool = True
    context_length: int = 8192
    local_rope_base: float | None = None  # overrides ArchSpec.local_rope_base (GGUF rope.freq_base_swa)
    sliding_layers: tuple[bool, ...] | None = None  # per-layer flags when the model states them

    def __post_init__(self) -> None:
        if self.sliding_layers is not None and len(self.sliding_layers) != self.n_layers:
            object.__setattr__(self, "sliding_layers", None)

    @property
    def spec(self) -> ArchSpec:
        return ARCHITECTURES[self.arch]

    @property
    def scale(self) -> float:
        return self.attn_scale if self.attn_scale is not None else 1.0 / math.sqrt(self.head_dim)

    def is_sliding(self, layer: int) -> bool:
        if not self.sliding_window:
            return False
        if self.sliding_layers is not None:
            return self.sliding_layers[layer]
        p = self.spec.sliding_pattern
        return bool(self.sliding_window) and p > 0 and (layer + 1) % p != 0

    def rope_base_for(self, layer: int) -> float:
        local = self.local_rope_base if self.local_rope_base is not None else self.spec.local_rope_base
        if self.is_sliding(layer) and local is not None:
            return local
        return self.rope_base

    def rope_scaling_for(self, layer: int) -> RopeScaling:
        # Gemma 3 scales rope on global layers only.
        if self.arch == "gemma3" and self.is_sliding(layer):
            return RopeScaling()
        return self.rope_scaling

    def with_(self, **kw: Any) -> ModelConfig:
        return replace(self, **kw)


_REQUIRED: Any = object()
LIMITS = {  # sanity bounds on sizes read from a model's metadata; far above any released model
    "n_layers": 1024,
    "d_model": 1 << 17,
    "n_heads": 1 << 12,
    "head_dim": 1 << 12,
    "d_ff": 1 << 20,
    "vocab": 1 << 24,
    "context": 1 << 24,
}


def _gemma_attn_scale(arch: str, n_layers: int, d_model: int, n_heads: int, head_dim: int) -> float:
    # query_pre_attn_scalar: head_dim, except the 27B models which use d_model / n_heads
    # (llama.cpp hard-codes the same rule since GGUF does not store the scalar).
    big = (arch == "gemma2" and n_layers == 46) or (arch == "gemma3" and n_layers == 62)
    return 1.0 / math.sqrt(d_model / n_heads if big else head_dim)


def config_from_gguf(fields: dict[str, Any], n_vocab: int, has_output: bool, path: str = "") -> ModelConfig:
    """Build the config from GGUF metadata (``fields``: key → python value); types and ranges checked
    (``validation.py``, bounds in ``LIMITS``), so a bad value is an ``InputError`` naming the key."""
    from .errors import InputError
    from .validation import as_int, field_float, field_int

    arch = fields.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise InputError(path, f"unsupported architecture {arch!r} (supported: {supported()})")

    def get(key: str, default: Any = None, *, required: bool = False) -> Any:
        full = f"{arch}.{key}"
        if full not in fields:
            if required:
                raise InputError(path, f"GGUF metadata lacks {full!r}")
            return default
        return fields[full]

    def num(key: str, lo: int, hi: int, default: Any = _REQUIRED) -> int:
        full = f"{arch}.{key}"
        v = fields.get(full)
        if isinstance(v, list) and v:  # per-layer arrays (llama.cpp writes some counts per layer)
            for k, x in enumerate(v):
                as_int(x, f"{full}[{k}]", where=path, lo=lo, hi=hi)
            v = v[0]
        if v is None and default is _REQUIRED:
            raise InputError(path, f"GGUF metadata lacks {full!r}")
        return default if v is None else as_int(v, full, where=path, lo=lo, hi=hi)

    def real(key: str, default: Any, *, lo: float | None = None, hi: float | None = None) -> Any:
        return field_float(fields, f"{arch}.{key}", where=path, lo=lo, hi=hi, positive=True, default=default)

    d_model = num("embedding_length", 1, LIMITS["d_model"])
    n_heads = num("attention.head_count", 1, LIMITS["n_heads"])
    n_kv = num("attention.head_count_kv", 1, n_heads, default=n_heads)
    if n_heads % n_kv:
        raise InputError(path, f"{arch}.attention.head_count {n_heads} is not a multiple of head_count_kv {n_kv}")
    head_dim = num("attention.key_length", 1, LIMITS["head_dim"], default=d_model // n_heads)
    if head_dim < 1:
        raise InputError(path, f"{arch}.embedding_length {d_model} < attention.head_count {n_heads} "
                               "and no attention.key_length")
    n_layers = num("block_count", 1, LIMITS["n_layers"])
    d_ff = num("feed_forward_length", 1, LIMITS["d_ff"])
    context = num("context_length", 1, LIMITS["context"], default=8192)
    spec = ARCHITECTURES[arch]
    scaling = RopeScaling()
    stype = get("rope.scaling.type")
    if stype in ("linear",):
        scaling = RopeScaling(kind="linear", factor=real("rope.scaling.factor", 1.0, hi=1e6))
    elif stype not in (None, "none"):
        raise InputError(path, f"rope scaling {stype!r} is not supported (supported: none, linear, llama3 rope_freqs)")
    attn_scale = None
    if arch in ("gemma2", "gemma3"):
        attn_scale = _gemma_attn_scale(arch, n_layers, d_model, n_heads, head_dim)
    pattern = get("attention.sliding_window_pattern")
    sliding_layers = None
    if isinstance(pattern, list) and len(pattern) == n_layers:
        sliding_layers = tuple(bool(x) for x in pattern)
    elif isinstance(pattern, int) and not isinstance(pattern, bool) and pattern > 0:
        sliding_layers = tuple((i + 1) % pattern != 0 for i in range(n_layers))
    swa_base = real("rope.freq_base_swa", None)
    window = field_int(fields, f"{arch}.attention.sliding_window", where=path, lo=1, hi=LIMITS["context"],
                       default=None) if spec.sliding_pattern else None
    return ModelConfig(
        arch=arch,
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        d_ff=d_ff,
        vocab_size=as_int(n_vocab, "vocabulary size", where=path, lo=1, hi=LIMITS["vocab"]),
        norm_eps=real("attention.layer_norm_rms_epsilon", 1e-6, hi=1.0),
        rope_base=real("rope.freq_base", 10_000.0),
        rope_scaling=scaling,
        sliding_window=window,
        attn_softcap=real("attn_logit_softcapping", spec.default_attn_softcap),
        final_softcap=real("final_logit_softcapping", spec.default_final_softcap),
        attn_scale=attn_scale,
        tied_embeddings=not has_output,
        context_length=context,
        local_rope_base=float(swa_base) if swa_base is not None and spec.local_rope_base is not None else None,
        sliding_layers=sliding_layers if spec.sliding_pattern else None,
    )


def config_from_hf(cfg: dict[str, Any], path: str = "") -> ModelConfig:
    """Build the config from a HF ``config.json`` dict (text config of multimodal Gemma 3 too).

    Every field is read with its type and range checked (``validation.py``, bounds in ``LIMITS``):
    a string where a number belongs, a negative count or a list where an object belongs is an
    ``InputError`` naming the file and the field.
    """
    from .errors import InputError
    from .validation import field_bool, field_dict, field_float, field_int, field_list

    w = path
    if not isinstance(cfg, dict):
        raise InputError(w, f"expected a JSON object, got {type(cfg).__name__}")
    if "text_config" in cfg and cfg.get("model_type") == "gemma3":
        cfg = {**field_dict(cfg, "text_config", where=w), "model_type": "gemma3_text"}
    mt = cfg.get("model_type")
    arch = HF_MODEL_TYPES.get(mt) if isinstance(mt, str) else None
    if arch is None:
        raise InputError(path, f"unsupported model_type {mt!r} (supported: {', '.join(sorted(HF_MODEL_TYPES))})")
    spec = ARCHITECTURES[arch]
    d_model = field_int(cfg, "hidden_size", where=w, lo=1, hi=LIMITS["d_model"])
    n_heads = field_int(cfg, "num_attention_heads", where=w, lo=1, hi=LIMITS["n_heads"])
    n_layers = field_int(cfg, "num_hidden_layers", where=w, lo=1, hi=LIMITS["n_layers"])
    n_kv = field_int(cfg, "num_key_value_heads", where=w, lo=1, hi=n_heads, default=n_heads)
    if n_heads % n_kv:
        raise InputError(w, f"'num_attention_heads' {n_heads} is not a multiple of 'num_key_value_heads' {n_kv}")
    head_dim = field_int(cfg, "head_dim", where=w, lo=1, hi=LIMITS["head_dim"], default=d_model // n_heads)
    if head_dim < 1:
        raise InputError(w, f"'hidden_size' {d_model} < 'num_attention_heads' {n_heads} and no 'head_dim'")
    rs = field_dict(cfg, "rope_scaling", where=w, default=None) or field_dict(
        cfg, "rope_parameters", where=w, default=None) or {}
    rope_base = field_float(cfg, "rope_theta", where=w, positive=True, default=None) or field_float(
        rs, "rope_theta", where=w, positive=True, default=10_000.0)
    scaling = RopeScaling()
    # transformers 5 nests per-layer-type rope parameters for Gemma 3.
    if "full_attention" in rs:
        full = field_dict(rs, "full_attention", where=f"{w}: rope_parameters", default=None) or {}
        rope_base = field_float(full, "rope_theta", where=f"{w}: rope_parameters.full_attention", positive=True,
                                default=rope_base)
        rs = full
    rtype = rs.get("rope_type") or rs.get("type")
    rw = f"{w}: rope scaling"
    if rtype == "linear":
        scaling = RopeScaling(kind="linear", factor=field_float(rs, "factor", where=rw, positive=True, hi=1e6))
    elif rtype == "llama3":
        scaling = RopeScaling(
            kind="llama3",
            factor=field_float(rs, "factor", where=rw, positive=True, hi=1e6),
            low_freq_factor=field_float(rs, "low_freq_factor", where=rw, positive=True, default=1.0),
            high_freq_factor=field_float(rs, "high_freq_factor", where=rw, positive=True, default=4.0),
            original_context=field_int(rs, "original_max_position_embeddings", where=rw, lo=1,
                                       hi=LIMITS["context"], default=8192),
        )
    elif rtype not in (None, "default"):
        raise InputError(path, f"rope scaling {rtype!r} is not supported")
    attn_scale = None
    qpas = field_float(cfg, "query_pre_attn_scalar", where=w, positive=True, default=None)
    if qpas:
        attn_scale = qpas**-0.5
    sliding = (field_int(cfg, "sliding_window", where=w, lo=1, hi=LIMITS["context"], default=None)
               if spec.sliding_pattern else None)
    lt = field_list(cfg, "layer_types", where=w, of=str, default=None)
    sliding_layers = None
    if lt is not None and spec.sliding_pattern:
        if len(lt) != n_layers:
            raise InputError(w, f"'layer_types' has {len(lt)} entries for {n_layers} layers")
        sliding_layers = tuple(t == "sliding_attention" for t in lt)
    def softcap(key: str, arch_default: float | None) -> float | None:  # absent: the arch's; null: none
        return field_float(cfg, key, where=w, positive=True, default=arch_default if key not in cfg else None)

    local_base = field_float(cfg, "rope_local_base_freq", where=w, positive=True, default=None)
    full_rs = cfg.get("rope_parameters") or {}
    if isinstance(full_rs, dict) and isinstance(full_rs.get("sliding_attention"), dict):
        local_base = field_float(full_rs["sliding_attention"], "rope_theta", positive=True, default=local_base,
                                 where=f"{w}: rope_parameters.sliding_attention")
    return ModelConfig(
        arch=arch,
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        d_ff=field_int(cfg, "intermediate_size", where=w, lo=1, hi=LIMITS["d_ff"]),
        vocab_size=field_int(cfg, "vocab_size", where=w, lo=1, hi=LIMITS["vocab"]),
        norm_eps=field_float(cfg, "rms_norm_eps", where=w, positive=True, hi=1.0, default=1e-6),
        rope_base=rope_base,
        rope_scaling=scaling,
        sliding_window=sliding,
        attn_softcap=softcap("attn_logit_softcapping", spec.default_attn_softcap),
        final_softcap=softcap("final_logit_softcapping", spec.default_final_softcap),
        attn_scale=attn_scale,
        tied_embeddings=field_bool(cfg, "tie_word_embeddings", where=w, default=True),
        context_length=field_int(cfg, "max_position_embeddings", where=w, lo=1, hi=LIMITS["context"], default=8192),
        local_rope_base=float(local_base) if local_base is not None and spec.local_rope_base is not None else None,
        sliding_layers=sliding_layers,
    )


def permute_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """llama.cpp's ``LlamaModel.permute``: HF (neox halves) rows → GGUF (adjacent pairs) rows.

    Works on any tensor whose dim 0 is the output feature (weights, per-row scales, bias).
    """
    rows = w.shape[0]
    rest = w.shape[1:]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *rest).transpose(1, 2).reshape(rows, *rest)


def qk_permutation(n_heads: int, head_dim: int) -> torch.Tensor:
    """Index vector p with permute_qk(w) == w[p]."""
    return permute_qk(torch.arange(n_heads * head_dim), n_heads)
