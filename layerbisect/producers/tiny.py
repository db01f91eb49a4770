"""Tiny random HF checkpoints, one per supported architecture, for fast tests.

A tiny model must be able to *fail* a test, so the random init is chosen to make every
architecture-specific convention visible in the outputs, not just to be small:

- Norm weights are random, not 1 (or 0 for Gemma). HF Llama/Qwen store the gain ``w`` and
  compute ``x * w``; HF Gemma stores ``w`` and computes ``x * (1 + w)`` (GGUF stores ``1 + w``).
  With gains drawn from U(0.5, 1.5) (Llama style) or stored values from U(-0.5, 0.5) (Gemma
  style), forgetting or doubling the +1 changes the output by tens of percent.
- Linear weights are N(0, 1/in_features) so activations stay O(1) through the layers, and
  embeddings are N(0, 0.5²) so logits spread over several units: a softmax that is not
  nearly uniform, and for Gemma 2 logits large enough that the final softcap (30) bends them.
- Gemma 2's Q/K are scaled up so attention scores reach the attention softcap (50); without
  that the softcap is a no-op and a runner that skips it would pass.
- Gemma 2/3 get a sliding window (8) shorter than a typical test prompt, so the window mask
  matters; Gemma 3 defaults to 6 layers so llama.cpp's hard-coded pattern (every 6th layer is
  global) and the HF config agree, and the local rope base (10 000) differs from the global
  one (1 000 000).
- Qwen 2 has random q/k/v biases; Qwen 3 and Gemma 3 random q/k-norm gains.
- Llama optionally carries rope scaling (``linear`` or ``llama3``); "mistral" is a
  Mistral-style Llama (explicit head_dim != hidden/heads, rope_theta 1e6).

The tokenizer is a byte-level BPE trained with ``tokenizers`` on a fixed corpus up to the
model's vocab size (padded with ``<unused_N>`` specials if the corpus runs out of merges), so
its ids are always in range. Ids 0/1/2 are ``<pad>``/``<bos>``/``<eos>`` for every
architecture, and a post-processor prepends ``<bos>`` as llama.cpp does with add_bos_token.

``vocabulary=`` gives the model a *real* tokenizer instead: one rebuilt from llama.cpp's
vocab GGUFs (``producers/vocab.py``; "auto" picks llama-bpe for llama, llama-spm for mistral
and Gemma 2/3, qwen2 for Qwen 2/3). ``vocab_size`` is then that vocabulary's size and the
bos/eos/pad ids are its own. This is what llama.cpp's ``convert_hf_to_gguf.py`` needs: it
recognizes a BPE tokenizer only by the hash of its output on a fixed text, and Gemma 2 wants
a SentencePiece ``tokenizer.model``. The embedding table grows with the vocabulary (32k to
152k rows), so pass a small ``hidden`` (64) with it.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import torch

from layerbisect.errors import InputError

ARCHS: tuple[str, ...] = ("llama", "mistral", "qwen2", "qwen3", "qwen3moe", "gemma2", "gemma3")

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIALS = (PAD, BOS, EOS)

_CORPUS = """\
The capital of France is Paris, and the capital of Italy is Rome.
A quantized model stores its weights in fewer bits than the model it was made from.
Layer by layer, the reference and the candidate should agree to a few parts in a thousand.
When they do not, the first layer that diverges is where the bug usually lives.
Rotary position embeddings rotate pairs of query and key features by an angle per position.
The quick brown fox jumps over the lazy dog while the cat sleeps in the warm afternoon sun.
Numbers like 3.14159, 2.71828 and 1.41421 appear in mathematics, physics and engineering.
She sells sea shells by the sea shore; the shells she sells are surely sea shells.
In the beginning the universe was created, which made a lot of people very angry.
To be, or not to be, that is the question: whether it is nobler in the mind to suffer.
def forward(self, x): return self.down(self.act(self.gate(x)) * self.up(x))
Mixed precision training keeps a master copy of the weights in thirty-two bit floats.
Attention heads share key and value projections in grouped query attention.
"""


_MODEL_TYPE = {"qwen3moe": "qwen3_moe"}  # our arch names that differ from HF's model_type


def _arch_config(arch: str, *, n_layers: int | None, hidden: int | None, heads: int, kv_heads: int,
                 head_dim: int | None, vocab: int, rope_scaling: dict[str, Any] | None) -> Any:
    from transformers import (
        Gemma2Config,
        Gemma3TextConfig,
        LlamaConfig,
        MistralConfig,
        Qwen2Config,
        Qwen3Config,
        Qwen3MoeConfig,
    )

    common: dict[str, Any] = dict(
        vocab_size=vocab,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    if rope_scaling is not None and arch != "llama":
        raise InputError(arch, "rope_scaling is only offered for the llama tiny model")

    if arch == "llama":
        hidden = hidden or 128
        cfg = LlamaConfig(
            **common, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=n_layers or 2,
            head_dim=head_dim or hidden // heads, rms_norm_eps=1e-5, tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, **(rope_scaling or {})},
        )
    elif arch == "mistral":
        hidden = hidden or 128
        # Mistral-style: head_dim set explicitly and not hidden/heads (as in Mistral NeMo / Small).
        cfg = MistralConfig(
            **common, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=n_layers or 2,
            head_dim=head_dim or 2 * hidden // heads, rms_norm_eps=1e-5, tie_word_embeddings=False,
            sliding_window=None, rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        )
    elif arch == "qwen2":
        hidden = hidden or 128
        cfg = Qwen2Config(
            **common, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=n_layers or 2,
            rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        )
        if head_dim is not None and head_dim != hidden // heads:
            raise InputError(arch, "Qwen2 derives head_dim = hidden / heads; pass hidden instead")
    elif arch == "qwen3":
        hidden = hidden or 128
        # head_dim 64 != hidden/heads (32), as in real Qwen3 (128 with hidden 1024 / 16 heads).
        cfg = Qwen3Config(
            **common, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=n_layers or 2,
            head_dim=head_dim or 64, rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        )
    elif arch == "qwen3moe":
        hidden = hidden or 128
        # Every layer MoE (llama.cpp's qwen3moe has no dense layers), 8 experts, top-2 renormalized
        # (llama.cpp always renormalizes qwen3moe's top-k: the GGUF has no norm_topk_prob).
        cfg = Qwen3MoeConfig(
            **common, hidden_size=hidden, intermediate_size=2 * hidden, moe_intermediate_size=32,
            num_experts=8, num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
            num_hidden_layers=n_layers or 3, head_dim=head_dim or 32, rms_norm_eps=1e-6, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        )
    elif arch == "gemma2":
        hidden = hidden or 128
        n = n_layers or 2
        hd = head_dim or 32
        cfg = Gemma2Config(
            **common, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=n, head_dim=hd,
            query_pre_attn_scalar=hd, rms_norm_eps=1e-6, sliding_window=8,
            attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
            layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)],
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        )
    elif arch == "gemma3":
        hidden = hidden or 128
        n = n_layers or 6
        hd = head_dim or 32
        cfg = Gemma3TextConfig(
            **common, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=n, head_dim=hd,
            query_pre_attn_scalar=hd, rms_norm_eps=1e-6, sliding_window=8,
            # llama.cpp hard-codes this pattern for gemma3: every 6th layer is global.
            layer_types=["sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(n)],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
            },
        )
    else:
        raise InputError(arch, f"unknown tiny architecture; choose one of {', '.join(ARCHS)}")
    return cfg


def _randomize(model: torch.nn.Module, arch: str, seed: int) -> None:
    """Seeded init that makes conventions visible (see the module notes)."""
    g = torch.Generator().manual_seed(seed)
    gemma = arch.startswith("gemma")
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                # Gemma stores w for x*(1+w): draw around 0. Others store the gain: draw around 1.
                lo, hi = (-0.5, 0.5) if gemma else (0.5, 1.5)
                p.copy_(torch.empty(p.shape).uniform_(lo, hi, generator=g))
            elif name.endswith("embed_tokens.weight") or name == "lm_head.weight":
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif p.ndim in (2, 3):  # a linear, or stacked experts (E, out, in)
                w = torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1])
                if arch == "gemma2" and name.endswith(("q_proj.weight", "k_proj.weight")):
                    w *= 6.0  # push scores into the attention softcap's range (~50)
                p.copy_(w)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def make_tiny_tokenizer(vocab_size: int) -> Any:
    """A byte-level BPE with exactly ``vocab_size`` tokens, ``<bos>`` prepended on encode."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 256 + len(SPECIALS):
        raise InputError("vocab_size", f"{vocab_size} is too small for a byte-level BPE (need >= 259)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=1,
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    # A short corpus can run out of merges before vocab_size: pad with unused specials so the
    # tokenizer and the embedding table have the same number of rows.
    n = tok.get_vocab_size()
    if n < vocab_size:
        tok.add_special_tokens([f"<unused_{i}>" for i in range(vocab_size - n)])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    assert tok.get_vocab_size() == vocab_size, (tok.get_vocab_size(), vocab_size)
    assert [tok.token_to_id(s) for s in SPECIALS] == [0, 1, 2]
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS)


def make_tiny_hf(
    arch: str,
    out_dir: str | Path,
    *,
    seed: int = 0,
    dtype: str = "float32",
    n_layers: int | None = None,
    hidden: int | None = None,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int | None = None,
    vocab: int = 512,
    rope_scaling: dict[str, Any] | None = None,
    vocabulary: str | None = None,
) -> Path:
    """Write a tiny random HF checkpoint (config, safetensors, tokenizer) of ``arch`` to ``out_dir``.

    ``rope_scaling`` (llama only), e.g. ``{"rope_type": "linear", "factor": 2.0}`` or
    ``{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64}``. ``vocabulary``: None (a BPE of ``vocab``
    tokens trained on a fixed corpus), ``"auto"`` or a name of ``producers.vocab.VOCABS``
    (a real llama.cpp vocabulary; ``vocab`` is ignored). Returns ``out_dir``.
    """
    from transformers import AutoModelForCausalLM

    if dtype not in ("float32", "bfloat16", "float16"):
        raise InputError("dtype", f"{dtype!r} is not one of float32, bfloat16, float16")
    tok_dir = None
    ids: dict[str, int | None] = {}
    if vocabulary is not None:
        from layerbisect.producers.vocab import cached_tokenizer, tokenizer_info, vocab_for_model_type

        if arch not in ARCHS:
            raise InputError(arch, f"unknown tiny architecture; choose one of {', '.join(ARCHS)}")
        name = vocab_for_model_type(_MODEL_TYPE.get(arch, arch)) if vocabulary == "auto" else vocabulary
        # Gemma's SentencePiece tokenizers add no dummy prefix (Llama's do).
        tok_dir = cached_tokenizer(name, add_dummy_prefix=False if arch.startswith("gemma") else None)
        info = tokenizer_info(tok_dir)
        vocab = int(info["size"])
        ids = {k: info.get(k) for k in ("pad_token_id", "bos_token_id", "eos_token_id")}
    cfg = _arch_config(arch, n_layers=n_layers, hidden=hidden, heads=heads, kv_heads=kv_heads,
                       head_dim=head_dim, vocab=vocab, rope_scaling=rope_scaling)
    for k, v in ids.items():
        setattr(cfg, k, v)
    torch.manual_seed(seed)  # transformers' own init runs first; ours overwrites every parameter
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    _randomize(model, arch, seed)
    model = model.to(getattr(torch, dtype)).eval()

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    if tok_dir is None:
        make_tiny_tokenizer(vocab).save_pretrained(out)
    else:
        for f in sorted(tok_dir.iterdir()):
            if f.is_file():
                shutil.copyfile(f, out / f.name)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Qwen3.5 (hybrid Gated DeltaNet + gated attention), with llama.cpp's real qwen35 vocabulary
# ---------------------------------------------------------------------------------------------------------------

QWEN35_KINDS: tuple[str, ...] = ("dense", "moe")
QWEN35_RECIPE = "3"  # bump when the config or the init below changes (cache key of cached_tiny_qwen35)


def _qwen35_config(kind: str, *, n_layers: int, hidden: int, layer_types: list[str] | None, ids: dict[str, Any],
                   vocab: int) -> Any:
    from transformers import Qwen3_5MoeTextConfig, Qwen3_5TextConfig

    if kind not in QWEN35_KINDS:
        raise InputError(kind, f"unknown Qwen3.5 tiny kind; choose one of {', '.join(QWEN35_KINDS)}")
    types = layer_types or ["full_attention" if (i + 1) % 3 == 0 else "linear_attention" for i in range(n_layers)]
    common: dict[str, Any] = dict(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=len(types), num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, linear_conv_kernel_dim=4, linear_key_head_dim=32,
        # more value heads than key heads: llama.cpp's converter reorders them (tiled), HF groups them
        linear_value_head_dim=32, linear_num_key_heads=2, linear_num_value_heads=4, layer_types=types,
        tie_word_embeddings=False, max_position_embeddings=256, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25}, **ids,
    )
    if kind == "dense":
        return Qwen3_5TextConfig(intermediate_size=2 * hidden, **common)
    return Qwen3_5MoeTextConfig(moe_intermediate_size=hidden // 2, shared_expert_intermediate_size=48, num_experts=8,
                                num_experts_per_tok=2, **common)


def _randomize_qwen35(model: torch.nn.Module, seed: int, *, qk_corr: float = 0.9, out_scale: float = 0.3,
                      router_scale: float = 4.0) -> None:
    """Seeded init that makes Qwen3.5's conventions visible and keeps quantization noise realistic.

    - RMSNorms compute x·(1 + w): stored w ~ U(-0.5, 0.5); the DeltaNet's gated norm computes x·w:
      w ~ U(0.5, 1.5). Adding the offset to the wrong one changes outputs by tens of percent.
    - A_log ~ U(-3, 0.5), dt_bias ~ N(-1, 0.5²): per-head decays exp(g) from ~0.6 to ~0.99, so
      the state carries information over many tokens (a wrong state shows in later tokens).
    - conv1d taps N(0, 0.5²); linears N(0, 1/in); embeddings and the (untied) head N(0, 0.5²).
    - Key rows of ``in_proj_qkv`` and their conv taps are correlated with the query rows
      (``qk_corr``): with independent random q and k, q·k ≈ 0 for some heads and tokens, the
      recurrence output o = Sᵀq nearly cancels and the per-head gated norm blows its relative
      error up to full size — a random-init artefact that makes FP8 look like a fault.
    - Output projections (out_proj, o_proj, down_proj) scaled by ``out_scale`` (GPT-2's
      1/√(2·layers) idea): each layer adds a modest update to the residual stream, as trained
      models do, so 6 layers do not amplify per-layer noise chaotically.
    - MoE router weights × ``router_scale``: trained routers are peaked; a random one's top-k
      margins are so thin that FP8 noise flips experts for most tokens.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("linear_attn.norm.weight"):
                p.copy_(torch.empty(p.shape).uniform_(0.5, 1.5, generator=g))
            elif name.endswith("norm.weight"):
                p.copy_(torch.empty(p.shape).uniform_(-0.5, 0.5, generator=g))
            elif name.endswith("A_log"):
                p.copy_(torch.empty(p.shape).uniform_(-3.0, 0.5, generator=g))
            elif name.endswith("dt_bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 - 1.0)
            elif "conv1d" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif name.endswith("embed_tokens.weight") or name == "lm_head.weight":
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
                if name.endswith(("out_proj.weight", "o_proj.weight", "down_proj.weight", "experts.down_proj")):
                    p.mul_(out_scale)
                elif name.endswith("mlp.gate.weight"):
                    p.mul_(router_scale)
            else:
                raise InputError(name, "no init rule for this Qwen3.5 parameter")
            if name.endswith(("in_proj_qkv.weight", "conv1d.weight")):
                kd = model.config.linear_key_head_dim * model.config.linear_num_key_heads
                p[kd:2 * kd] = qk_corr * p[:kd] + math.sqrt(1 - qk_corr ** 2) * p[kd:2 * kd]


def make_tiny_qwen35(
    kind: str,
    out_dir: str | Path,
    *,
    seed: int = 0,
    dtype: str = "float32",
    n_layers: int = 6,
    hidden: int = 64,
    layer_types: list[str] | None = None,
) -> Path:
    """A tiny Qwen3.5 checkpoint (``Qwen3_5ForCausalLM`` / ``Qwen3_5MoeForCausalLM``) with the real qwen35 vocabulary.

    ``kind``: "dense" or "moe". Default layers: linear, linear, full, linear, linear, full
    (Qwen3.5's pattern with an interval of 3 instead of 4, so a tiny model has two attention
    layers each behind two recurrent ones). The tokenizer is llama.cpp's ``qwen35`` vocabulary
    (151 936 tokens, ``producers/vocab.py``), which llama.cpp's converter recognizes; the
    embedding table and the untied head dominate the size (2 × 39 MB in FP32 at hidden 64; a
    tied head echoes the input token in a random model). Returns ``out_dir``.
    """
    from transformers import AutoModelForCausalLM

    from layerbisect.producers.vocab import cached_tokenizer, tokenizer_info

    if dtype not in ("float32", "bfloat16"):
        raise InputError("dtype", f"{dtype!r} is not one of float32, bfloat16")
    tok_dir = cached_tokenizer("qwen35")
    info = tokenizer_info(tok_dir)
    ids = {k: info.get(k) for k in ("pad_token_id", "bos_token_id", "eos_token_id")}
    cfg = _qwen35_config(kind, n_layers=n_layers, hidden=hidden, layer_types=layer_types, ids=ids,
                         vocab=int(info["size"]))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    _randomize_qwen35(model, seed)
    model = model.to(getattr(torch, dtype)).eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    for f in sorted(tok_dir.iterdir()):
        if f.is_file():
            shutil.copyfile(f, out / f.name)
    return out


def cached_tiny_qwen35(kind: str, *, dtype: str = "float32", **kw: Any) -> Path:
    """``make_tiny_qwen35`` built once into ``cache_dir()/tiny/`` (keyed by its arguments and the producer version)."""
    from layerbisect.producers.cache import PRODUCER_VERSION, build_atomic, cache_dir, options_key

    key = options_key(kind=kind, dtype=dtype, v=PRODUCER_VERSION, recipe=QWEN35_RECIPE, **kw)
    final = cache_dir() / "tiny" / f"qwen35-{kind}-{dtype}-{key}"

    def build(tmp: Path) -> None:
        make_tiny_qwen35(kind, tmp, dtype=dtype, **kw)

    return build_atomic(final, build)
