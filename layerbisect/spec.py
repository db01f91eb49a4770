"""The per-layer model spec: what a model is, as frozen data.

Design note
-----------
One small adapter per family (``layerbisect/families/``) reads GGUF metadata or a HF
``config.json`` and returns a ``ModelSpec``: model-level facts plus one ``LayerSpec`` per
layer. The graph (``layerbisect/graph/``) is built from it; everything else (capture-point
names, the inventory of linear modules and their inputs, the GGUF and HF tensor-name maps,
shape checks, streaming byte counts) is derived from the built graph, never written down a
second time. A difference between layers (a sliding layer with head_dim 256 beside a global
one with 512, an MoE layer beside a dense one, a recurrent mixer (``GatedDeltaNetSpec``) between
attention layers) is
a different ``LayerSpec``, not a branch on the architecture's name.

Conventions of the canonical graph, restated where weights are loaded:
- A norm weight in the graph is the effective multiplier: ``y = x / rms(x) * w``. Where a
  family's HF code computes ``x * (1 + w)`` (Gemma 2/3, Qwen3-Next/3.5) the HF loader adds
  ``ModelSpec.hf_norm_offset``; llama.cpp's converter already stores ``1 + w`` for Gemma 2/3
  (``conversion/gemma.py``: ``norm_shift``) but not for Gemma 4, whose HF norms are plain ``w``.
- Rope ordering: ``normal`` rotates adjacent pairs (x0, x1); ``neox`` rotates halves
  (x_i, x_{i+dim/2}). llama.cpp's converter permutes llama Q/K rows for ``normal`` rope
  (``LlamaModel.permute``); the graph takes GGUF's layout and the HF loader permutes too.
- Shapes are those of ``torch.nn.Linear``: weight ``(out_features, in_features)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

RopeStyle = Literal["normal", "neox"]
Activation = Literal["silu", "gelu_tanh"]
Scoring = Literal["softmax", "sigmoid"]


@dataclass(frozen=True)
class RopeScaling:
    """Context-extension scaling of rope frequencies (HF ``rope_parameters`` / GGUF ``rope.scaling.*``)."""

    kind: Literal["none", "linear", "llama3"] = "none"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_context: int = 8192


@dataclass(frozen=True)
class Rope:
    """Rotary position embedding of one attention layer.

    ``dim``: features at the start of each head the rotation acts on (``head_dim`` unless
    partial rotary, e.g. Qwen3-Next's ``partial_rotary_factor`` 0.25 → ``head_dim / 4``);
    frequencies are ``base ** (-2j / dim)`` for ``j < dim / 2``.
    ``active_pairs``: None when every pair rotates; else only the first ``active_pairs``
    frequencies are non-zero (transformers' "proportional" rope of Gemma 4 global layers,
    ``modeling_rope_utils._compute_proportional_rope_parameters``; llama.cpp expresses the
    same with a ``rope_freqs`` tensor).
    ``freq_factors``: the layer divides its frequencies by a ``rope_freqs`` tensor loaded with
    the weights (llama.cpp's llama3 scaling and Gemma 4 proportional rope).
    """

    base: float = 10_000.0
    style: RopeStyle = "neox"
    dim: int = 0
    active_pairs: int | None = None
    scaling: RopeScaling = field(default_factory=RopeScaling)
    freq_factors: bool = False


@dataclass(frozen=True)
class AttentionSpec:
    """Softmax attention (GQA) of one layer. ``q_proj`` rows: ``n_heads * head_dim`` (×2 with ``output_gate``)."""

    n_heads: int
    n_kv_heads: int
    head_dim: int
    rope: Rope | None
    scale: float  # multiplies q·k before the softmax (1/sqrt(head_dim) unless the family says otherwise)
    window: int | None = None  # sliding window in tokens (key positions within pos - window < k <= pos)
    softcap: float | None = None  # attention-logit softcap (Gemma 2)
    qk_norm: bool = False  # RMSNorm with weight on q and k per head, before rope (Qwen3, Gemma 3/4)
    v_norm: bool = False  # RMSNorm without weight on v per head (Gemma 4)
    qkv_bias: bool = False  # biases on q/k/v (Qwen2)
    k_eq_v: bool = False  # no v_proj: v is k before its norm and rope (Gemma 4 ``attention_k_eq_v``)
    output_gate: bool = False  # q_proj also yields a sigmoid gate on the attention output (Qwen3-Next/3.5)
    kv_source: int | None = None  # read the KV cache of this earlier layer instead of writing one (Gemma 4)
    kind: Literal["attention"] = "attention"

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim


@dataclass(frozen=True)
class DenseFFNSpec:
    """Gated MLP: ``down(act(gate(x)) * up(x))``."""

    d_ff: int
    activation: Activation = "silu"
    kind: Literal["dense"] = "dense"


@dataclass(frozen=True)
class RouterSpec:
    """How an MoE layer picks and weights its experts, per token.

    scores = softmax(logits) or sigmoid(logits); the top ``top_k`` experts are chosen on
    ``scores + bias`` when ``score_bias`` (DeepSeek-V3's ``e_score_correction_bias``: it only
    changes the choice), among the best ``topk_group`` of ``n_group`` groups when grouped;
    their weights are the chosen scores, renormalized to sum 1 when ``norm_topk``, then
    multiplied by ``routed_scale``. Sources: transformers ``Qwen3MoeTopKRouter``,
    ``DeepseekV3TopkRouter``; llama.cpp ``llm_graph_context::build_moe_ffn``.
    """

    top_k: int
    scoring: Scoring = "softmax"
    norm_topk: bool = True
    routed_scale: float = 1.0
    score_bias: bool = False
    n_group: int = 1
    topk_group: int = 1


@dataclass(frozen=True)
class MoESpec:
    """Mixture of experts: a router, ``n_experts`` gated MLPs of width ``d_ff_expert``, optionally a shared expert.

    The shared expert (width ``shared_d_ff``) sees every token; with ``shared_gate`` its output
    is multiplied by ``sigmoid(shared_expert_gate(x))`` (Qwen2-MoE/Qwen3-Next).
    """

    n_experts: int
    d_ff_expert: int
    router: RouterSpec
    activation: Activation = "silu"
    shared_d_ff: int = 0
    shared_gate: bool = False
    kind: Literal["moe"] = "moe"


@dataclass(frozen=True)
class ParallelMoESpec:
    """A dense gated MLP beside routed experts, summed (Gemma 4's MoE layers, ``enable_moe_block``).

    The block gets the layer's residual stream as well as the pre-FFN norm's output:
    dense branch ``post_norm_1(MLP(pre_norm(x)))``; router on the residual itself
    (``rms(x) · router_scale · d^-0.5``, a weightless RMSNorm, then softmax top-k, renormalized,
    each weight × ``per_expert_scale[expert]``); experts on ``pre_norm_2(x)``, summed and
    ``post_norm_2``-ed; the two branch outputs are added (the layer's own post-FFN norm follows).
    Sources: transformers ``Gemma4TextDecoderLayer``/``Gemma4TextRouter``; llama.cpp
    ``src/models/gemma4.cpp`` (``ffn_gate_inp.scale``, ``ffn_down_exps.scale``).
    """

    d_ff: int
    n_experts: int
    d_ff_expert: int
    router: RouterSpec
    activation: Activation = "gelu_tanh"
    kind: Literal["dense+moe"] = "dense+moe"


@dataclass(frozen=True)
class GatedDeltaNetSpec:
    """Gated DeltaNet linear attention of one layer (Qwen3-Next / Qwen3.5 ``linear_attention`` layers).

    Sources: transformers ``Qwen3_5GatedDeltaNet`` / ``Qwen3NextGatedDeltaNet``
    (``torch_recurrent_gated_delta_rule``); llama.cpp ``src/models/qwen35.cpp``
    (``build_layer_attn_linear``) and ``delta-net-base.cpp``.

    ``in_proj_qkv`` yields q (``n_k_heads·head_k_dim``), k (same) and v (``n_v_heads·head_v_dim``)
    rows in that order; a causal depthwise conv1d of ``conv_kernel`` taps (+ SiLU) runs over
    those channels; q and k are L2-normalized per head (eps ``l2_eps``), q scaled by
    ``head_k_dim ** -0.5``; value head j reads q/k head ``j // (n_v_heads / n_k_heads)``
    (HF's grouped order, ``repeat_interleave``). ``beta = sigmoid(in_proj_b(x))``;
    ``g = -exp(A_log) · softplus(in_proj_a(x) + dt_bias)`` (log of the per-token state decay).
    The state ``S`` (n_v_heads, head_k_dim, head_v_dim) starts at zero and per token:
    ``S ← exp(g)·S; S ← S + k ⊗ β(v − Sᵀk); o = Sᵀq``. The output is RMS-normed per head with
    a plain gain ``w`` (not ``1 + w``: the gated norm is ``Qwen3_5RMSNormGated``), times
    ``silu(z)``, ``z = in_proj_z(x)``, then ``out_proj``.
    """

    n_k_heads: int
    n_v_heads: int
    head_k_dim: int
    head_v_dim: int
    conv_kernel: int = 4
    norm_eps: float = 1e-6
    l2_eps: float = 1e-6
    kind: Literal["gated_deltanet"] = "gated_deltanet"

    def __post_init__(self) -> None:
        if self.n_v_heads % self.n_k_heads:
            raise ValueError(f"n_v_heads {self.n_v_heads} is not a multiple of n_k_heads {self.n_k_heads}")

    @property
    def key_dim(self) -> int:
        return self.n_k_heads * self.head_k_dim

    @property
    def value_dim(self) -> int:
        return self.n_v_heads * self.head_v_dim

    @property
    def conv_dim(self) -> int:
        """Channels of the conv1d: q, k and v rows of ``in_proj_qkv``."""
        return 2 * self.key_dim + self.value_dim


MixerSpec = AttentionSpec | GatedDeltaNetSpec
FFNSpec = DenseFFNSpec | MoESpec | ParallelMoESpec


@dataclass(frozen=True)
class NormsSpec:
    """Which RMSNorms a layer has around its two sub-blocks (pre-norms always; post = "sandwich")."""

    attn_post: bool = False
    ffn_post: bool = False


@dataclass(frozen=True)
class LayerSpec:
    """One layer. ``per_layer_input``: width of the per-layer input block that follows the FFN (Gemma 4
    PLE, 0 = none); ``out_scale``: the layer's output (residual included) is multiplied by a
    learned scalar (Gemma 4 ``layer_scalar``, GGUF ``layer_output_scale``)."""

    index: int
    mixer: MixerSpec
    ffn: FFNSpec
    norms: NormsSpec = field(default_factory=NormsSpec)
    per_layer_input: int = 0
    out_scale: bool = False

    @property
    def kind(self) -> str:
        """Short description for tables: ``attention+dense``, ``attention(sliding)+moe``."""
        m = self.mixer.kind + ("(sliding)" if getattr(self.mixer, "window", None) else "")
        return f"{m}+{self.ffn.kind}"


@dataclass(frozen=True)
class ModelSpec:
    """A whole model. ``family``: the adapter that built it; ``arch``: GGUF ``general.architecture``.

    ``embed_scale`` multiplies the embedding rows (Gemma: sqrt(d_model), rounded as the family
    rounds it); ``hf_norm_offset`` is added to HF norm weights to get the effective multiplier.
    ``per_layer_input``: width P of Gemma 4's per-layer input embeddings (PLE, 0 = none): a second
    embedding table of ``per_layer_vocab`` rows × (n_layers · P) plus a projection of the
    embedded tokens feed every layer's PLE block (``graph/per_layer.py``).
    """

    family: str
    arch: str
    vocab_size: int
    d_model: int
    layers: tuple[LayerSpec, ...]
    norm_eps: float = 1e-6
    embed_scale: float = 1.0
    final_softcap: float | None = None
    tied_embeddings: bool = True
    hf_norm_offset: float = 0.0
    context_length: int = 8192
    per_layer_input: int = 0
    per_layer_vocab: int = 0
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        for i, layer in enumerate(self.layers):
            if layer.index != i:
                raise ValueError(f"layer {i} has index {layer.index}")

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def layer(self, i: int) -> LayerSpec:
        return self.layers[i]

    def with_(self, **kw: Any) -> ModelSpec:
        return replace(self, **kw)

    def summary(self) -> dict[str, Any]:
        """Plain-data description for reports: sizes and the layer kinds with their counts."""
        kinds: dict[str, int] = {}
        for layer in self.layers:
            kinds[layer.kind] = kinds.get(layer.kind, 0) + 1
        return {
            "family": self.family,
            "arch": self.arch,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "vocab_size": self.vocab_size,
            "layer_kinds": kinds,
            "final_softcap": self.final_softcap,
            "tied_embeddings": self.tied_embeddings,
        }

    def shape_signature(self) -> dict[str, Any]:
        """What two sides of a comparison must agree on (same model): sizes per layer, not conventions.

        ``{"arch", "n_layers", "d_model", "vocab_size", "layers.N": {"mixer", "n_heads", …, "ffn", "d_ff", …}}``;
        a layer's dict holds only the sizes its mixer and FFN kinds have.
        """
        sig: dict[str, Any] = {"arch": self.arch, "n_layers": self.n_layers, "d_model": self.d_model,
                               "vocab_size": self.vocab_size}
        sizes = ("n_heads", "n_kv_heads", "head_dim", "n_k_heads", "n_v_heads", "head_k_dim", "head_v_dim")
        for layer in self.layers:
            m, f = layer.mixer, layer.ffn
            d: dict[str, Any] = {"mixer": m.kind}
            d.update({k: getattr(m, k) for k in sizes if getattr(m, k, None) is not None})
            d["ffn"] = f.kind
            d.update({k: getattr(f, k) for k in ("d_ff", "n_experts", "d_ff_expert", "shared_d_ff")
                      if getattr(f, k, None) is not None})
            sig[f"layers.{layer.index}"] = d
        return sig


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)


__all__ = [
    "Activation",
    "AttentionSpec",
    "DenseFFNSpec",
    "FFNSpec",
    "GatedDeltaNetSpec",
    "LayerSpec",
    "MixerSpec",
    "MoESpec",
    "ModelSpec",
    "NormsSpec",
    "ParallelMoESpec",
    "Rope",
    "RopeScaling",
    "RopeStyle",
    "RouterSpec",
    "default_scale",
]
