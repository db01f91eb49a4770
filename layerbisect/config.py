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


def _gemma_attn_scale(arch: str, n_layers: int, d_model: int, n_heads: int, head_dim: int) -> float:
    # query_pre_attn_scalar: head_dim, except the 27B models which use d_model / n_heads
    # (llama.cpp hard-codes the same rule since GGUF does not store the scalar).
    big = (arch == "gemma2" and n_layers == 46) or (arch == "gemma3" and n_layers == 62)
    return 1.0 / math.sqrt(d_model / n_heads if big else head_dim)


def config_from_gguf(fields: dict[str, Any], n_vocab: int, has_output: bool, path: str = "") -> ModelConfig:
    """Build the config from GGUF metadata (``fields``: key → python value)."""
    from .errors import InputError

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

    d_model = int(get("embedding_length", required=True))
    n_heads = int(get("attention.head_count", required=True))
    n_kv = get("attention.head_count_kv", n_heads)
    head_dim = int(get("attention.key_length", d_model // n_heads))
    n_layers = int(get("block_count", required=True))
    spec = ARCHITECTURES[arch]
    scaling = RopeScaling()
    stype = get("rope.scaling.type")
    if stype in ("linear",):
        scaling = RopeScaling(kind="linear", factor=float(get("rope.scaling.factor", 1.0)))
    elif stype not in (None, "none"):
        raise InputError(path, f"rope scaling {stype!r} is not supported (supported: none, linear, llama3 rope_freqs)")
    attn_scale = None
    if arch in ("gemma2", "gemma3"):
        attn_scale = _gemma_attn_scale(arch, n_layers, d_model, n_heads, head_dim)
    pattern = get("attention.sliding_window_pattern")
    sliding_layers = None
    if isinstance(pattern, list) and len(pattern) == n_layers:
        sliding_layers = tuple(bool(x) for x in pattern)
    elif isinstance(pattern, int) and pattern > 0:
        sliding_layers = tuple((i + 1) % pattern != 0 for i in range(n_layers))
    swa_base = get("rope.freq_base_swa")
    return ModelConfig(
        arch=arch,
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=int(n_kv if not isinstance(n_kv, list) else n_kv[0]),
        head_dim=head_dim,
        d_ff=int(get("feed_forward_length", required=True)),
        vocab_size=n_vocab,
        norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-6)),
        rope_base=float(get("rope.freq_base", 10_000.0)),
        rope_scaling=scaling,
        sliding_window=get("attention.sliding_window") if spec.sliding_pattern else None,
        attn_softcap=get("attn_logit_softcapping", spec.default_attn_softcap),
        final_softcap=get("final_logit_softcapping", spec.default_final_softcap),
        attn_scale=attn_scale,
        tied_embeddings=not has_output,
        context_length=int(get("context_length", 8192)),
        local_rope_base=float(swa_base) if swa_base is not None and spec.local_rope_base is not None else None,
        sliding_layers=sliding_layers if spec.sliding_pattern else None,
    )


def config_from_hf(cfg: dict[str, Any], path: str = "") -> ModelConfig:
    """Build the config from a HF ``config.json`` dict (text config of multimodal Gemma 3 too)."""
    from .errors import InputError

    if "text_config" in cfg and cfg.get("model_type") == "gemma3":
        cfg = {**cfg["text_config"], "model_type": "gemma3_text"}
    mt = cfg.get("model_type")
    arch = HF_MODEL_TYPES.get(mt)
    if arch is None:
        raise InputError(path, f"unsupported model_type {mt!r} (supported: {', '.join(sorted(HF_MODEL_TYPES))})")
    spec = ARCHITECTURES[arch]
    d_model = int(cfg["hidden_size"])
    n_heads = int(cfg["num_attention_heads"])
    head_dim = int(cfg.get("head_dim") or d_model // n_heads)
    rs = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    rope_base = float(cfg.get("rope_theta") or rs.get("rope_theta") or 10_000.0)
    scaling = RopeScaling()
    # transformers 5 nests per-layer-type rope parameters for Gemma 3.
    if isinstance(rs, dict) and "full_attention" in rs:
        full = rs["full_attention"] or {}
        rope_base = float(full.get("rope_theta", rope_base))
        rs = full
    rtype = (rs or {}).get("rope_type") or (rs or {}).get("type")
    if rtype == "linear":
        scaling = RopeScaling(kind="linear", factor=float(rs["factor"]))
    elif rtype == "llama3":
        scaling = RopeScaling(
            kind="llama3",
            factor=float(rs["factor"]),
            low_freq_factor=float(rs.get("low_freq_factor", 1.0)),
            high_freq_factor=float(rs.get("high_freq_factor", 4.0)),
            original_context=int(rs.get("original_max_position_embeddings", 8192)),
        )
    elif rtype not in (None, "default"):
        raise InputError(path, f"rope scaling {rtype!r} is not supported")
    attn_scale = None
    if "query_pre_attn_scalar" in cfg and cfg["query_pre_attn_scalar"]:
        attn_scale = float(cfg["query_pre_attn_scalar"]) ** -0.5
    sliding = cfg.get("sliding_window") if spec.sliding_pattern else None
    lt = cfg.get("layer_types")
    sliding_layers = None
    if isinstance(lt, list) and spec.sliding_pattern:
        sliding_layers = tuple(t == "sliding_attention" for t in lt)
    local_base = cfg.get("rope_local_base_freq")
    full_rs = cfg.get("rope_parameters") or {}
    if isinstance(full_rs, dict) and isinstance(full_rs.get("sliding_attention"), dict):
        local_base = full_rs["sliding_attention"].get("rope_theta", local_base)
    return ModelConfig(
        arch=arch,
        n_layers=int(cfg["num_hidden_layers"]),
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads),
        head_dim=head_dim,
        d_ff=int(cfg["intermediate_size"]),
        vocab_size=int(cfg["vocab_size"]),
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_base=rope_base,
        rope_scaling=scaling,
        sliding_window=sliding,
        attn_softcap=cfg.get("attn_logit_softcapping", spec.default_attn_softcap),
        final_softcap=cfg.get("final_logit_softcapping", spec.default_final_softcap),
        attn_scale=attn_scale,
        tied_embeddings=bool(cfg.get("tie_word_embeddings", True)),
        context_length=int(cfg.get("max_position_embeddings", 8192)),
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
