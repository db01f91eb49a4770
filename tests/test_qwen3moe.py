"""Qwen3-MoE end to end: GGUF by llama.cpp's own converter, checked against transformers; llmcompressor candidates.

The tiny model (``producers/tiny.py``, arch ``qwen3moe``: 3 layers, every one MoE, 8 experts,
top-2 renormalized, real qwen2 vocabulary, BF16 weights) is built once per session by the
fault suite's sources (``faults.tiny_sources``) and converted by ``convert_hf_to_gguf.py``
(F32). transformers runs the same HF checkpoint as the independent implementation.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from layerbisect import faults
from layerbisect.references.runner import ReferenceRunner

pytestmark = pytest.mark.slow
N_LAYERS = 3


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("qwen3moe")


@pytest.fixture(scope="module")
def qwen3moe(root: Path) -> dict[str, Path]:
    pytest.importorskip("layerbisect.producers.llamacpp", reason="needs llama.cpp's converter")
    return faults.tiny_sources(root, ("qwen3moe",))["qwen3moe"]


def _hf_routes(hf_dir: Path, ids: list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """transformers' logits and, per layer, its chosen experts (T, k) from the router module's own output."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    routes: list[torch.Tensor] = []
    hooks = [layer.mlp.gate.register_forward_hook(lambda m, i, o: routes.append(o[2].detach()))
             for layer in model.model.layers]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    for h in hooks:
        h.remove()
    return logits, routes


def test_reference_matches_transformers_logits_routes_and_greedy(qwen3moe):
    from transformers import AutoModelForCausalLM

    ids = faults.prompt_ids_for(qwen3moe["hf"])
    theirs, their_routes = _hf_routes(qwen3moe["hf"], ids)
    ref = ReferenceRunner(qwen3moe["gguf"])
    caps = ref.run(ids, select=["logits", "layers.*.mlp.route"])
    cos = torch.nn.functional.cosine_similarity(caps["logits"].double(), theirs.double(), dim=-1)
    assert cos.min() >= 0.9999, f"worst position {int(cos.argmin())}: cosine {float(cos.min()):.6f}"
    assert torch.equal(caps["logits"].argmax(-1), theirs.argmax(-1))
    assert len(their_routes) == N_LAYERS
    for i, theirs_i in enumerate(their_routes):
        ours_i = caps[f"layers.{i}.mlp.route"].long()
        assert ours_i.shape == theirs_i.shape == (len(ids), 2)
        same = [set(a.tolist()) == set(b.tolist()) for a, b in zip(ours_i, theirs_i)]
        assert all(same), f"layer {i}: tokens routed differently: {[t for t, s in enumerate(same) if not s]}"
    model = AutoModelForCausalLM.from_pretrained(qwen3moe["hf"], dtype=torch.float32).eval()
    with torch.no_grad():
        hf_new = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0, len(ids):].tolist()
    assert ref.generate(ids, 8) == hf_new


@pytest.mark.parametrize("scheme", ["FP8_DYNAMIC", "NVFP4"])
def test_llmcompressor_candidate_compares_cleanly_with_routing_in_every_format(qwen3moe, root, scheme, tmp_path):
    import pandas as pd

    from layerbisect.pipeline import CompareOptions, compare

    cand = faults.clean_candidate(root, qwen3moe, "qwen3moe", scheme)
    names = json.loads((cand / "model.safetensors.index.json").read_text())["weight_map"] \
        if (cand / "model.safetensors.index.json").exists() else None
    if names is None:
        from safetensors import safe_open

        with safe_open(str(cand / "model.safetensors"), "pt") as f:
            names = list(f.keys())
    # llmcompressor writes transformers' fused experts as one quantized linear per expert
    assert any(".mlp.experts.7.down_proj.weight" in n for n in names)
    assert not any(n.endswith("mlp.gate.weight_scale") for n in names), "the router stays unquantized"
    ids = faults.prompt_ids_for(cand)
    report = compare(qwen3moe["gguf"], cand, options=CompareOptions(prompt=None, tokens=ids, generate=4))
    critical = [f.title for f in report.findings if f.severity == "critical"]
    assert not critical, critical
    assert not [f for f in report.findings if f.kind == "culprit" and f.evidence.get("cause") != "quantization_noise"]
    assert len(report.comparison.routing) == N_LAYERS
    written = report.save(tmp_path / "r", ["md", "html", "json", "parquet"])
    assert "Expert routing" in written["md"].read_text()
    assert "Expert routing" in written["html"].read_text()
    data = json.loads(written["json"].read_text())
    assert [r["layer"] for r in data["routing"]] == list(range(N_LAYERS))
    table = pd.read_parquet(written["routing"])
    assert set(table["layer"]) == set(range(N_LAYERS)) and len(table) == N_LAYERS * len(report.record.tokens.ids)
