"""The sizes every decoder family reads the same way, from either source.

``read_gguf`` and ``read_hf`` fill one ``Dims`` from GGUF metadata (llama.cpp's keys:
``{arch}.embedding_length``, ``attention.head_count`` …, per-layer arrays allowed) or a HF
config (``hidden_size``, ``num_attention_heads`` …, ``per_layer_config`` honoured); an adapter
then builds its layers from ``Dims`` once, whatever the source.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..spec import RopeScaling
from .base import MAX_DIM, GGUFMeta, HFConfig


@dataclass
class Dims:
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: list[int]
    n_kv_heads: list[int]
    head_dim: list[int]
    d_ff: list[int]
    norm_eps: float
    rope_base: float
    rope_scaling: RopeScaling
    context_length: int
    tied_embeddings: bool
    rope_dim: int | None = None  # GGUF rope.dimension_count
    extra: dict = field(default_factory=dict)


def read_gguf(meta: GGUFMeta, *, ff_required: bool = True) -> Dims:
    n = meta.n_layers()
    d = meta.int("embedding_length", required=True)
    heads = meta.per_layer("attention.head_count", n, required=True, lo=1)
    kv = meta.per_layer("attention.head_count_kv", n, heads[0], lo=0)
    hd_default = d // heads[0]
    hd = meta.int("attention.key_length", hd_default)
    # a dense family needs a dense FFN in every layer (0 only where MoE families have none)
    ff = meta.per_layer("feed_forward_length", n, None if ff_required else 0, required=ff_required,
                        lo=1 if ff_required else 0)
    return Dims(
        vocab_size=meta.n_vocab,
        d_model=d,
        n_layers=n,
        n_heads=heads,
        n_kv_heads=kv,
        head_dim=[hd] * n,
        d_ff=ff,
        norm_eps=meta.float("attention.layer_norm_rms_epsilon", 1e-6, lo=0.0, hi=1.0),
        rope_base=meta.float("rope.freq_base", 10_000.0, lo=1e-6),
        rope_scaling=meta.rope_scaling(),
        context_length=meta.int("context_length", 8192, hi=1 << 31),
        tied_embeddings="output.weight" not in meta.tensors,
        rope_dim=meta.int("rope.dimension_count") if meta.has("rope.dimension_count") else None,
    )


def read_hf(cfg: HFConfig, *, ff_key: str | None = "intermediate_size", tied_default: bool = True) -> Dims:
    n = cfg.n_layers()
    d = cfg.int("hidden_size")
    heads = [cfg.int("num_attention_heads", layer=i) for i in range(n)]
    kv = [cfg.int("num_key_value_heads", heads[i], layer=i) for i in range(n)]
    hd = [cfg.int("head_dim", d // heads[i], layer=i) for i in range(n)]
    ff = [cfg.int(ff_key, layer=i, lo=0) for i in range(n)] if ff_key else [0] * n
    rp = cfg.rope()
    return Dims(
        vocab_size=cfg.int("vocab_size", hi=MAX_DIM * 4),
        d_model=d,
        n_layers=n,
        n_heads=heads,
        n_kv_heads=kv,
        head_dim=hd,
        d_ff=ff,
        norm_eps=cfg.float("rms_norm_eps", 1e-6, lo=0.0, hi=1.0),
        rope_base=float(rp.get("rope_theta", 10_000.0)),
        rope_scaling=cfg.rope_scaling(rp),
        context_length=cfg.int("max_position_embeddings", 8192, hi=1 << 31),
        tied_embeddings=cfg.bool("tie_word_embeddings", tied_default),
    )


__all__ = ["Dims", "read_gguf", "read_hf"]
