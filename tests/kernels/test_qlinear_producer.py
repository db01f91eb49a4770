"""Real producer fixtures: tiny Llama checkpoints quantized by llmcompressor ``oneshot`` and saved compressed.

For each scheme: the parsed scheme is right, every QuantLinear built from the saved tensors reproduces
compressed-tensors' own decompressed weight bit-exactly, and its forward matches a float64 reference made of the
producer's own activation fake-quant and the dequantized weight.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from layerbisect.candidates.qlinear import QuantOptions, build_linear, observing
from layerbisect.candidates.schemes import parse_quantization_config

from .tolerances import TOL, bit_report, rel_err

pytestmark = pytest.mark.slow

SCHEMES = ["FP8", "FP8_DYNAMIC", "FP8_BLOCK", "NVFP4", "NVFP4A16"]
EXPECTED = {
    "FP8": ("fp8_tensor", "fp8_static_tensor"),
    "FP8_DYNAMIC": ("fp8_channel", "fp8_dynamic_token"),
    "FP8_BLOCK": ("fp8_block", "fp8_dynamic_group"),
    "NVFP4": ("nvfp4", "nvfp4"),
    "NVFP4A16": ("nvfp4", "none"),
}
LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


@pytest.fixture(scope="session")
def producer_root(tmp_path_factory) -> dict:
    """Build the base model once; quantized variants are made lazily and cached per session."""
    pytest.importorskip("llmcompressor")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("producer")
    torch.manual_seed(0)
    vocab = {f"w{i}": i for i in range(1000)} | {"[UNK]": 1000}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[UNK]")
    cfg = LlamaConfig(hidden_size=256, intermediate_size=640, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=1001, max_position_embeddings=128)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    base = root / "base"
    model.save_pretrained(base)
    tok.save_pretrained(base)
    return {"root": root, "base": base, "tok": tok, "built": {}}


def _build(producer_root: dict, scheme: str) -> Path:
    built = producer_root["built"]
    if scheme in built:
        return built[scheme]
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(producer_root["base"], dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(1)
    ds = Dataset.from_dict({"input_ids": [torch.randint(0, 1000, (32,), generator=g).tolist() for _ in range(3)],
                            "attention_mask": [[1] * 32] * 3})
    recipe = QuantizationModifier(targets="Linear", scheme=scheme, ignore=["lm_head"])
    oneshot(model=model, recipe=recipe, processor=producer_root["tok"], dataset=ds, num_calibration_samples=3,
            max_seq_length=32)
    out = producer_root["root"] / scheme
    model.save_pretrained(out, save_compressed=True)
    built[scheme] = out
    return out


def _module_tensors(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _ct_quant_input_f64(x: torch.Tensor, scheme_ct, tensors: dict) -> torch.Tensor:
    """The producer's activation quantization (compressed-tensors ``quantize``), dequantized in float64.

    (Its fake-quant forward would round ``q * scale`` to the bf16 dtype of a bf16 ``input_scale``; inference
    kernels do not, so the reference dequantizes the producer's codes exactly.)
    """
    from compressed_tensors.quantization.lifecycle.forward import dequantize, quantize
    from compressed_tensors.quantization.utils import compute_dynamic_scales_and_zp

    args = scheme_ct.input_activations
    if args is None:
        return x.double()
    gs = tensors.get("input_global_scale")
    if args.dynamic in (True, "local"):
        scale, _ = compute_dynamic_scales_and_zp(value=x, args=args, module=None, global_scale=gs)
    else:
        scale = tensors["input_scale"]
    q = quantize(x=x, scale=scale, zero_point=None, args=args, global_scale=gs)
    return dequantize(q.double(), scale.double(), None, args, dtype=torch.float64,
                      global_scale=None if gs is None else gs.double())


@pytest.mark.parametrize("scheme", SCHEMES)
def test_producer_checkpoint(producer_root, scheme):
    from compressed_tensors.compressors.base import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig
    from safetensors.torch import load_file

    out = _build(producer_root, scheme)
    config = json.loads((out / "config.json").read_text())
    cq = parse_quantization_config(config, out)
    assert cq.format_name == config["quantization_config"]["format"]
    assert cq.scheme_for("lm_head").weight == "dense"
    qc = config["quantization_config"]
    scheme_ct = QuantizationConfig.model_validate(qc).config_groups["group_0"]
    compressor = BaseCompressor.get_value_from_registry(qc["format"])
    sd = load_file(out / "model.safetensors")
    torch.manual_seed(7)
    for layer in range(2):
        for lin in LINEARS:
            name = f"model.layers.{layer}.{lin}"
            s = cq.scheme_for(name)
            assert (s.weight, s.act) == EXPECTED[scheme], f"{name}: parsed {s}"
            tensors = _module_tensors(sd, name + ".")
            ql = build_linear(name, tensors, s, QuantOptions())
            # weight audit: bit-exact against the producer's decompression (which returns bf16)
            theirs = compressor.decompress(dict(tensors), scheme_ct)["weight"]
            ours = ql.dequantized_weight()
            assert ours.shape == theirs.shape
            assert torch.equal(ours.to(theirs.dtype), theirs), f"{name}: {bit_report(ours.to(theirs.dtype), theirs)}"
            # forward vs float64 reference of the same quantization (producer's activation QDQ)
            x = torch.randn(2, 5, ql.in_features) * 2
            with observing(ql):
                got = ql(x)
            xq = _ct_quant_input_f64(x, scheme_ct, tensors)
            ref = xq @ ours.double().T
            err = rel_err(got, ref)
            assert err <= TOL["emulate_vs_f64"], f"{name} {scheme}: forward rel err {err:.3e}"
            st = ql.activation_stats()
            assert st["calls"] == 1 and st["tokens"] == 10 and st["input_amax"] == pytest.approx(float(x.abs().max()))
