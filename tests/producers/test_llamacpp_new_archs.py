"""The producer functions on the new families' HF configs: Qwen3-MoE, Gemma 4 (dense, MoE), Qwen3.5 (dense, MoE).

Not in the graph yet (the lead adds them); this pins how each converts with llama.cpp's own
converter and a real vocabulary, and that llama.cpp runs the result (tokenizing like the HF
tokenizer). Slow: five converter runs on a cold cache (~1 min each on 2 busy cores), then cached.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from layerbisect.producers.llamacpp import converted_gguf, llama_cpp_available
from layerbisect.producers.vocab import cached_tokenizer, tokenizer_info
from layerbisect.references.fast_reader import FastGGUFReader

PROMPT = "The capital of France is"


def make_new_arch(kind: str, out: Path) -> tuple[Path, tuple[str, ...]]:
    """A tiny random HF checkpoint of ``kind`` with its family's vocabulary; returns (dir, converter flags)."""
    from transformers import (
        AutoModelForCausalLM,
        Gemma4TextConfig,
        Qwen3_5MoeTextConfig,
        Qwen3_5TextConfig,
        Qwen3MoeConfig,
    )

    vocab = {"qwen3moe": "qwen2", "gemma4": "gemma-4", "gemma4moe": "gemma-4", "qwen35": "qwen35",
             "qwen35moe": "qwen35"}[kind]
    tok = cached_tokenizer(vocab)
    info = tokenizer_info(tok)
    common = dict(vocab_size=info["size"], hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=256, bos_token_id=info["bos_token_id"], eos_token_id=info["eos_token_id"],
                  pad_token_id=info["pad_token_id"])
    flags: tuple[str, ...] = ()
    if kind == "qwen3moe":
        # No mlp_only_layers: llama.cpp's qwen3moe has no dense layers.
        cfg = Qwen3MoeConfig(**common, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
                             head_dim=16, num_experts=4, num_experts_per_tok=2, norm_topk_prob=True,
                             tie_word_embeddings=True)
    elif kind.startswith("gemma4"):
        moe = dict(enable_moe_block=True, num_experts=4, top_k_experts=2, moe_intermediate_size=32) if kind.endswith(
            "moe") else {}
        cfg = Gemma4TextConfig(**common, intermediate_size=128, num_hidden_layers=6, head_dim=16, global_head_dim=32,
                               sliding_window=8, layer_types=["sliding_attention"] * 5 + ["full_attention"],
                               hidden_size_per_layer_input=0, num_kv_shared_layers=0, **moe)
    else:
        # MRoPE sections must fit the rotary half-dimension: head_dim 32 x partial 0.5 = 16 rotary dims, 8 pairs.
        # (The default sections [11, 11, 10] are for head_dim 256; llama.cpp asserts sect_dims <= ne0 otherwise.)
        rope = {"rope_type": "default", "rope_theta": 10_000.0, "partial_rotary_factor": 0.5,
                "mrope_section": [3, 3, 2], "mrope_interleaved": True}
        lin = dict(layer_types=["linear_attention"] * 3 + ["full_attention"], linear_num_key_heads=2,
                   linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16)
        if kind == "qwen35":
            cfg = Qwen3_5TextConfig(**common, intermediate_size=128, num_hidden_layers=4, head_dim=32,
                                    rope_parameters=rope, tie_word_embeddings=True, **lin)
        else:
            cfg = Qwen3_5MoeTextConfig(**common, num_hidden_layers=4, head_dim=32, rope_parameters=rope,
                                       num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                       shared_expert_intermediate_size=32, tie_word_embeddings=True, **lin)
        flags = ("--no-mtp",)  # without it the converter asserts on a missing MTP layer count
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(out)
    for f in tok.iterdir():
        shutil.copyfile(f, out / f.name)
    return out, flags


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind,arch,tensor",
    [
        ("qwen3moe", "qwen3moe", "blk.0.ffn_gate_exps.weight"),
        ("gemma4", "gemma4", "blk.5.attn_q.weight"),
        ("gemma4moe", "gemma4", "blk.0.ffn_gate_up_exps.weight"),
        ("qwen35", "qwen35", "blk.0.ssm_conv1d.weight"),
        ("qwen35moe", "qwen35moe", "blk.0.ffn_gate_exps.weight"),
    ],
)
def test_new_family_converts_and_runs_in_llamacpp(tmp_path, kind, arch, tensor):
    from transformers import AutoTokenizer

    hf, flags = make_new_arch(kind, tmp_path / kind)
    gguf = converted_gguf(hf, extra_args=flags)
    r = FastGGUFReader(gguf)
    assert r.fields["general.architecture"].contents() == arch
    names = {t.name for t in r.tensors}
    assert tensor in names, sorted(names)[:20]
    if llama_cpp_available() is None:
        from layerbisect.engines.llamacpp import LlamaCppModel

        with LlamaCppModel(gguf) as m:
            ids = m.tokenize(PROMPT)
            assert ids == AutoTokenizer.from_pretrained(hf)(PROMPT).input_ids
            logits, _ = m.decode(ids)
        assert logits.shape == (len(ids), r.fields[f"{arch}.vocab_size"].contents() if f"{arch}.vocab_size" in
                                r.fields else logits.shape[1]) and torch.isfinite(torch.from_numpy(logits)).all()
