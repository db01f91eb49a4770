"""The expected lane's quantizer reproduces the producer: on the producer's own BF16 weights, the tensors
llmcompressor wrote, bit for bit (expected/quantize.py)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from layerbisect import faults
from layerbisect.candidates.checkpoint import Checkpoint
from layerbisect.expected.quantize import BACKEND, fused_groups, quantize_linears

SCHEMES = ("FP8_DYNAMIC", "FP8_BLOCK", "NVFP4A16", "MXFP4A16")


def test_fused_groups_follow_the_producer() -> None:
    names = ["layers.0.attn.q_proj", "layers.0.attn.k_proj", "layers.0.attn.v_proj", "layers.0.attn.o_proj",
             "layers.0.mlp.gate_proj", "layers.0.mlp.up_proj", "layers.0.mlp.down_proj", "layers.1.mlp.up_proj"]
    assert fused_groups(names) == [["layers.0.attn.q_proj", "layers.0.attn.k_proj", "layers.0.attn.v_proj"],
                                   ["layers.0.mlp.gate_proj", "layers.0.mlp.up_proj"]]


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "compressed-tensors", reason="needs compressed-tensors")
@pytest.mark.parametrize("scheme", SCHEMES)
def test_bit_identical_to_the_producer(scheme: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.getbasetemp() / "expected-src"
    src = faults.tiny_sources(root, ("gemma3",))["gemma3"]
    ck = Checkpoint(faults.clean_candidate(root, src, "gemma3", scheme))
    files = sorted(src["hf"].glob("*.safetensors"))
    hf = {k.removeprefix("model."): v for f in files for k, v in load_file(f).items()}
    plan = ck.quant
    prefix = next(k.split("layers.")[0] for k in ck.keys() if "layers." in k)
    names = sorted({k[len(prefix):].rsplit(".", 1)[0] for k in ck.keys()
                    if k.startswith(prefix + "layers.") and k.endswith(("weight_scale",))})
    assert names
    schemes = {n: plan.scheme_for(prefix + n) for n in names}
    weights = {n: hf[f"{n}.weight"] for n in names}
    fused = fused_groups(names) if scheme.startswith("NVFP4") else []
    got = quantize_linears(weights, schemes, dtype=torch.bfloat16, fused=fused)
    bad, n_cmp = [], 0
    for n in names:
        for k, t in got[n].items():
            want = ck.get(f"{prefix}{n}.{k}")
            n_cmp += 1
            if not torch.equal(t.view(torch.uint8) if t.element_size() == 1 else t,
                               want.view(torch.uint8) if want.element_size() == 1 else want):
                bad.append(f"{n}.{k}")
    assert n_cmp >= 2 * len(names)  # codes and scales of every linear (NVFP4: + global scale)
    assert not bad, f"{len(bad)} tensors differ from the producer's, first {bad[:4]}"
