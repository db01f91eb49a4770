"""Tensor names of the graph's modules in each source, as data; resolved for a built graph.

Design note
-----------
The graph names its modules canonically (``layers.3.attn.q_proj``, ``layers.3.mlp.experts.5.down_proj``).
Two tables map canonical *module* patterns to where their parameters live:

- ``GGUF``: gguf-py's own tensor constants (``gguf.MODEL_TENSOR``/``TENSOR_NAMES``, the GGUF
  spec as llama.cpp writes it), ``{i}`` = layer. Experts are ``Stacked``: one 3-D tensor per
  layer whose outermost numpy dim is the expert (``blk.{i}.ffn_gate_exps``).
- ``HF``: transformers' module names without the ``model.`` prefix, ``{e}`` = expert, in the
  per-expert form transformers 5 ``save_pretrained`` and llmcompressor write
  (``mlp.experts.{e}.gate_proj``); the fused in-memory form (``mlp.experts.gate_up_proj``) is
  the ``HF_FUSED`` fallback.

A parameter's name is its module's name plus its leaf (``.weight``, ``.bias``); names that do
not follow that rule are listed per parameter (``*_PARAMS``). Families override entries
(Gemma's sandwich norms are ``post_attention_layernorm`` / ``pre_feedforward_layernorm``
where llama's ``post_attention_layernorm`` is the pre-MLP norm). Nothing else in the package
spells a tensor name: loaders walk the built graph and look names up here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import gguf

T = gguf.MODEL_TENSOR


@dataclass(frozen=True)
class Stacked:
    """A GGUF tensor that holds every expert of a layer, expert e at index e of its outermost numpy dim.

    ``part``/``parts``: the tensor also fuses several modules along the rows of each expert
    (llama.cpp's ``ffn_gate_up_exps``: gate rows first, then up, as ``build_moe_ffn`` splits
    them), this module being rows ``part``·n … (``part`` + 1)·n of ``parts``·n.
    """

    tensor: T
    part: int = 0
    parts: int = 1


@dataclass(frozen=True)
class Fused:
    """An HF tensor holding several modules: index ``expert`` of dim 0 (if any), then ``part`` of ``parts`` rows."""

    name: str
    part: int = 0
    parts: int = 1
    per_expert: bool = True


GGUF: dict[str, T | Stacked] = {
    "embed": T.TOKEN_EMBD,
    "final_norm": T.OUTPUT_NORM,
    "lm_head": T.OUTPUT,
    "layers.{i}.attn_norm": T.ATTN_NORM,
    "layers.{i}.attn.q_proj": T.ATTN_Q,
    "layers.{i}.attn.k_proj": T.ATTN_K,
    "layers.{i}.attn.v_proj": T.ATTN_V,
    "layers.{i}.attn.o_proj": T.ATTN_OUT,
    "layers.{i}.attn.q_norm": T.ATTN_Q_NORM,
    "layers.{i}.attn.k_norm": T.ATTN_K_NORM,
    "layers.{i}.post_attn_norm": T.ATTN_POST_NORM,
    "layers.{i}.mlp_norm": T.FFN_NORM,
    "layers.{i}.mlp.gate_proj": T.FFN_GATE,
    "layers.{i}.mlp.up_proj": T.FFN_UP,
    "layers.{i}.mlp.down_proj": T.FFN_DOWN,
    "layers.{i}.post_mlp_norm": T.FFN_POST_NORM,
    "layers.{i}.mlp.router": T.FFN_GATE_INP,
    "layers.{i}.mlp.experts.{e}.gate_proj": Stacked(T.FFN_GATE_EXP),
    "layers.{i}.mlp.experts.{e}.up_proj": Stacked(T.FFN_UP_EXP),
    "layers.{i}.mlp.experts.{e}.down_proj": Stacked(T.FFN_DOWN_EXP),
    "layers.{i}.mlp.shared_expert.gate_proj": T.FFN_GATE_SHEXP,
    "layers.{i}.mlp.shared_expert.up_proj": T.FFN_UP_SHEXP,
    "layers.{i}.mlp.shared_expert.down_proj": T.FFN_DOWN_SHEXP,
    "layers.{i}.mlp.shared_expert_gate": T.FFN_GATE_INP_SHEXP,
    # Gemma 4: the MoE block's own norms (graph/parallel_moe.py) and per-layer inputs (graph/per_layer.py)
    "layers.{i}.mlp.post_norm_1": T.FFN_POST_NORM_1,
    "layers.{i}.mlp.pre_norm_2": T.FFN_PRE_NORM_2,
    "layers.{i}.mlp.post_norm_2": T.FFN_POST_NORM_2,
    "per_layer.embed": T.PER_LAYER_TOKEN_EMBD,
    "per_layer.proj": T.PER_LAYER_MODEL_PROJ,
    "per_layer.norm": T.PER_LAYER_PROJ_NORM,
    "layers.{i}.ple.gate": T.PER_LAYER_INP_GATE,
    "layers.{i}.ple.proj": T.PER_LAYER_PROJ,
    "layers.{i}.ple.post_norm": T.PER_LAYER_POST_NORM,
    # Gated DeltaNet (graph/deltanet.py; llama.cpp qwen35/qwen35moe/qwen3next)
    "layers.{i}.attn.in_proj_qkv": T.ATTN_QKV,
    "layers.{i}.attn.in_proj_z": T.ATTN_GATE,
    "layers.{i}.attn.in_proj_b": T.SSM_BETA,
    "layers.{i}.attn.in_proj_a": T.SSM_ALPHA,
    "layers.{i}.attn.conv1d": T.SSM_CONV1D,
    "layers.{i}.attn.norm": T.SSM_NORM,
    "layers.{i}.attn.out_proj": T.SSM_OUT,
}
GGUF_PARAMS: dict[str, tuple[T, str]] = {  # leaf "" = a tensor name without a leaf (llama.cpp's ``blk.{i}.ssm_a``)
    "layers.{i}.mlp.score_bias": (T.FFN_EXP_PROBS_B, "bias"),
    "layers.{i}.layer_scalar": (T.LAYER_OUT_SCALE, "weight"),
    "layers.{i}.mlp.router_scale": (T.FFN_GATE_INP, "scale"),  # Gemma 4 router.scale (conversion/gemma.py)
    "layers.{i}.mlp.expert_scale": (T.FFN_DOWN_EXP, "scale"),  # Gemma 4 router.per_expert_scale
    "layers.{i}.attn.A_log": (T.SSM_A, ""),
    "layers.{i}.attn.dt_bias": (T.SSM_DT, "bias"),
}
GGUF_EXTRA: dict[str, T] = {"rope_freqs": T.ROPE_FREQS}  # tensors that are no parameter of the graph

HF: dict[str, str] = {
    "embed": "embed_tokens",
    "final_norm": "norm",
    "lm_head": "lm_head",
    "layers.{i}.attn_norm": "layers.{i}.input_layernorm",
    "layers.{i}.attn.q_proj": "layers.{i}.self_attn.q_proj",
    "layers.{i}.attn.k_proj": "layers.{i}.self_attn.k_proj",
    "layers.{i}.attn.v_proj": "layers.{i}.self_attn.v_proj",
    "layers.{i}.attn.o_proj": "layers.{i}.self_attn.o_proj",
    "layers.{i}.attn.q_norm": "layers.{i}.self_attn.q_norm",
    "layers.{i}.attn.k_norm": "layers.{i}.self_attn.k_norm",
    "layers.{i}.mlp_norm": "layers.{i}.post_attention_layernorm",
    "layers.{i}.mlp.gate_proj": "layers.{i}.mlp.gate_proj",
    "layers.{i}.mlp.up_proj": "layers.{i}.mlp.up_proj",
    "layers.{i}.mlp.down_proj": "layers.{i}.mlp.down_proj",
    "layers.{i}.mlp.router": "layers.{i}.mlp.gate",
    "layers.{i}.mlp.experts.{e}.gate_proj": "layers.{i}.mlp.experts.{e}.gate_proj",
    "layers.{i}.mlp.experts.{e}.up_proj": "layers.{i}.mlp.experts.{e}.up_proj",
    "layers.{i}.mlp.experts.{e}.down_proj": "layers.{i}.mlp.experts.{e}.down_proj",
    "layers.{i}.mlp.shared_expert.gate_proj": "layers.{i}.mlp.shared_expert.gate_proj",
    "layers.{i}.mlp.shared_expert.up_proj": "layers.{i}.mlp.shared_expert.up_proj",
    "layers.{i}.mlp.shared_expert.down_proj": "layers.{i}.mlp.shared_expert.down_proj",
    "layers.{i}.mlp.shared_expert_gate": "layers.{i}.mlp.shared_expert_gate",
    "layers.{i}.attn.in_proj_qkv": "layers.{i}.linear_attn.in_proj_qkv",
    "layers.{i}.attn.in_proj_z": "layers.{i}.linear_attn.in_proj_z",
    "layers.{i}.attn.in_proj_b": "layers.{i}.linear_attn.in_proj_b",
    "layers.{i}.attn.in_proj_a": "layers.{i}.linear_attn.in_proj_a",
    "layers.{i}.attn.conv1d": "layers.{i}.linear_attn.conv1d",
    "layers.{i}.attn.norm": "layers.{i}.linear_attn.norm",
    "layers.{i}.attn.out_proj": "layers.{i}.linear_attn.out_proj",
}
HF_PARAMS: dict[str, str] = {
    "layers.{i}.mlp.score_bias": "layers.{i}.mlp.gate.e_score_correction_bias",
    "layers.{i}.attn.A_log": "layers.{i}.linear_attn.A_log",
    "layers.{i}.attn.dt_bias": "layers.{i}.linear_attn.dt_bias",
}
HF_FUSED: dict[str, Fused] = {  # transformers 5's in-memory expert layout, should a checkpoint hold it
    "layers.{i}.mlp.experts.{e}.gate_proj": Fused("layers.{i}.mlp.experts.gate_up_proj", 0, 2),
    "layers.{i}.mlp.experts.{e}.up_proj": Fused("layers.{i}.mlp.experts.gate_up_proj", 1, 2),
    "layers.{i}.mlp.experts.{e}.down_proj": Fused("layers.{i}.mlp.experts.down_proj"),
}
HF_PREFIXES = ("model.language_model.", "language_model.model.", "model.")
HF_IGNORABLE = re.compile(r"(rotary_emb\.inv_freq|\.input_scale_inv$|^mtp\.)")
KV_SCALES = {  # compressed-tensors and ModelOpt spellings of the KV-cache scales, relative to the layer
    "self_attn.k_scale": "k_scale",
    "self_attn.v_scale": "v_scale",
    "self_attn.k_proj.k_scale": "k_scale",
    "self_attn.v_proj.v_scale": "v_scale",
}

_LAYER = re.compile(r"^layers\.(\d+)\.")
_EXPERT = re.compile(r"\.experts\.(\d+)\.")


def pattern_of(canonical: str) -> tuple[str, int | None, int | None]:
    """``layers.3.mlp.experts.5.up_proj`` → (``layers.{i}.mlp.experts.{e}.up_proj``, 3, 5)."""
    i = e = None
    m = _LAYER.match(canonical)
    if m:
        i = int(m.group(1))
        canonical = "layers.{i}." + canonical[m.end():]
    m = _EXPERT.search(canonical)
    if m:
        e = int(m.group(1))
        canonical = canonical[: m.start()] + ".experts.{e}." + canonical[m.end():]
    return canonical, i, e


def fill(pattern: str, i: int | None, e: int | None = None) -> str:
    return pattern.replace("{i}", str(i)).replace("{e}", str(e))


def gguf_tensor_name(t: T, i: int | None) -> str:
    """gguf-py's name of tensor kind ``t`` for block ``i`` (``blk.3.attn_q``), without the leaf."""
    return gguf.TENSOR_NAMES[t].format(bid=i)


def strip_hf_prefix(name: str) -> str:
    for p in HF_PREFIXES:
        if name.startswith(p):
            return name[len(p):]
    return name




@dataclass(frozen=True)
class GGUFSource:
    """Where one graph parameter lives in a GGUF: a tensor, the expert index into it if stacked, and
    which of ``parts`` equal row blocks of (each expert of) it when fused."""

    tensor: str
    expert: int | None = None
    part: int = 0
    parts: int = 1


def gguf_source(param: str, overrides: dict[str, object] | None = None) -> GGUFSource | None:
    """The GGUF tensor of graph parameter ``param`` (``layers.3.attn.q_proj.weight``), or None if unnamed.

    ``overrides`` (a family's ``gguf_names``) maps module patterns to a ``MODEL_TENSOR`` or
    ``Stacked``, and may map a whole parameter pattern to ``(MODEL_TENSOR, leaf)``.
    """
    table = {**GGUF, **(overrides or {})}
    pattern, i, e = pattern_of(param)
    param_entry = table.get(pattern) if isinstance(table.get(pattern), tuple) else GGUF_PARAMS.get(pattern)
    if param_entry is not None:
        t, leaf = param_entry  # type: ignore[misc]
        return GGUFSource(f"{gguf_tensor_name(t, i)}.{leaf}" if leaf else gguf_tensor_name(t, i))
    module, _, leaf = pattern.rpartition(".")
    entry = table.get(module)
    if entry is None or isinstance(entry, tuple):
        return None
    if isinstance(entry, Stacked):
        return GGUFSource(f"{gguf_tensor_name(entry.tensor, i)}.{leaf}", e, entry.part, entry.parts)
    return GGUFSource(f"{gguf_tensor_name(entry, i)}.{leaf}")  # type: ignore[arg-type]


def hf_module_name(module: str, overrides: dict[str, str] | None = None) -> str | None:
    """HF module name (no ``model.`` prefix) of canonical module ``module``, or None if unnamed."""
    pattern, i, e = pattern_of(module)
    name = {**HF, **(overrides or {})}.get(pattern)
    return None if name is None else fill(name, i, e)


def hf_param_name(param: str, overrides: dict[str, str] | None = None) -> str | None:
    """HF tensor name (no ``model.`` prefix) of a graph parameter: its module's name + leaf, or a listed exception.

    ``overrides`` (a family's ``hf_names``) may name a whole parameter pattern as well as modules.
    """
    pattern, i, e = pattern_of(param)
    if overrides and pattern in overrides:
        return fill(overrides[pattern], i, e)
    if pattern in HF_PARAMS:
        return fill(HF_PARAMS[pattern], i, e)
    module, _, leaf = param.rpartition(".")
    base = hf_module_name(module, overrides)
    return None if base is None else f"{base}.{leaf}"


def hf_fused_source(module: str, overrides: dict[str, Fused] | None = None) -> tuple[str, int | None, int, int] | None:
    """(HF tensor, expert index, part, parts) when ``module`` may live inside a fused HF tensor.

    ``overrides``: a family's ``hf_fused`` (Gemma 4's experts hang off the layer, not ``mlp``).
    """
    pattern, i, e = pattern_of(module)
    f = {**HF_FUSED, **(overrides or {})}.get(pattern)
    return None if f is None else (fill(f.name, i, e), e if f.per_expert else None, f.part, f.parts)


__all__ = [
    "GGUFSource",
    "gguf_source",
    "hf_fused_source",
    "hf_module_name",
    "hf_param_name",
    "GGUF",
    "GGUF_EXTRA",
    "GGUF_PARAMS",
    "HF",
    "HF_FUSED",
    "HF_IGNORABLE",
    "HF_PARAMS",
    "KV_SCALES",
    "Fused",
    "Stacked",
    "fill",
    "gguf_tensor_name",
    "pattern_of",
    "strip_hf_prefix",
]
