"""Scheme parser: compressed-tensors and ModelOpt configs (shapes of the real files), errors naming file and value."""

from __future__ import annotations

import json

import pytest

from layerbisect.candidates.schemes import parse_quantization_config
from layerbisect.errors import InputError


def _ct(fmt="float-quantized", weights=None, acts=None, ignore=("lm_head",), targets=("Linear",), kv=None):
    return {"quantization_config": {
        "quant_method": "compressed-tensors", "format": fmt, "ignore": list(ignore), "kv_cache_scheme": kv,
        "config_groups": {"group_0": {"targets": list(targets), "weights": weights, "input_activations": acts,
                                      "format": fmt}},
    }}


FP8_BLOCK_W = {"num_bits": 8, "type": "float", "strategy": "block", "block_structure": [128, 128], "dynamic": False}
FP8_GROUP_A = {"num_bits": 8, "type": "float", "strategy": "group", "group_size": 128, "dynamic": True}


def test_ct_fp8_block_and_ignore(tmp_path):
    cq = parse_quantization_config(_ct(weights=FP8_BLOCK_W, acts=FP8_GROUP_A,
                                       ignore=["lm_head", "re:.*mlp.down_proj$"]), tmp_path)
    s = cq.scheme_for("model.layers.0.self_attn.q_proj")
    assert (s.weight, s.act, s.block, s.act_group_size, s.source) == (
        "fp8_block", "fp8_dynamic_group", (128, 128), 128, "compressed-tensors")
    assert cq.scheme_for("lm_head").weight == "dense"
    assert cq.scheme_for("model.layers.3.mlp.down_proj").weight == "dense"
    assert cq.kv_cache is None and cq.format_name == "float-quantized"


def test_ct_named_target_beats_class_target_and_kv_cache(tmp_path):
    cfg = _ct(weights=FP8_BLOCK_W, acts=FP8_GROUP_A,
              kv={"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False})
    groups = cfg["quantization_config"]["config_groups"]
    groups["group_1"] = {"targets": ["re:.*o_proj$"], "format": "nvfp4-pack-quantized",
                         "weights": {"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16},
                         "input_activations": None}
    cq = parse_quantization_config(cfg, tmp_path)
    assert cq.scheme_for("model.layers.0.self_attn.o_proj").weight == "nvfp4"
    assert cq.scheme_for("model.layers.0.self_attn.o_proj").act == "none"
    assert cq.scheme_for("model.layers.0.self_attn.q_proj").weight == "fp8_block"
    assert cq.kv_cache is not None and (cq.kv_cache.dtype, cq.kv_cache.strategy) == ("fp8_e4m3", "tensor")
    assert cq.format_name == "mixed-precision"


def test_untargeted_module_is_dense(tmp_path):
    cq = parse_quantization_config(_ct(weights=FP8_BLOCK_W, targets=["re:.*q_proj$"]), tmp_path)
    assert cq.scheme_for("model.layers.0.self_attn.k_proj").weight == "dense"
    assert cq.scheme_for("model.layers.0.self_attn.q_proj").act == "none"


def test_no_quantization_config_is_dense(tmp_path):
    cq = parse_quantization_config({"model_type": "llama"}, tmp_path)
    assert cq.format_name == "dense" and cq.scheme_for("x.q_proj").weight == "dense"


@pytest.mark.parametrize(
    "cfg,match",
    [
        (_ct(fmt="marlin-24", weights=FP8_BLOCK_W), "'marlin-24'"),
        (_ct(weights={"num_bits": 4, "type": "float", "strategy": "group", "group_size": 64}), "num_bits=4"),
        (_ct(weights=FP8_BLOCK_W, acts={"num_bits": 8, "type": "int", "strategy": "token", "dynamic": True}),
         "input_activations type='int'"),
        ({"quantization_config": {"quant_method": "gptq", "bits": 4}}, "'gptq'"),
    ],
    ids=["format", "fp4-group-64-weights", "int8-acts", "quant-method"],
)
def test_unknown_values_raise_input_error_naming_file_and_value(tmp_path, cfg, match):
    with pytest.raises(InputError, match=match) as ei:
        parse_quantization_config(cfg, tmp_path)
    assert ei.value.where == str(tmp_path / "config.json")


def test_modelopt_hf_quant_config_nvfp4(tmp_path):
    (tmp_path / "hf_quant_config.json").write_text(json.dumps({
        "producer": {"name": "modelopt", "version": "0.29.0"},
        "quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": "FP8", "group_size": 16,
                         "exclude_modules": ["lm_head", "model.layers.0.mlp*"]},
    }))
    cq = parse_quantization_config({"model_type": "llama"}, tmp_path)
    s = cq.scheme_for("model.layers.1.self_attn.q_proj")
    assert (s.weight, s.act, s.group_size, s.source) == ("nvfp4", "nvfp4", 16, "modelopt")
    assert cq.scheme_for("lm_head").weight == "dense"
    assert cq.scheme_for("model.layers.0.mlp.down_proj").weight == "dense"
    assert cq.scheme_for("model.layers.10.mlp.down_proj").weight == "nvfp4"
    assert cq.kv_cache is not None and cq.kv_cache.dtype == "fp8_e4m3"


def test_modelopt_in_config_json_fp8(tmp_path):
    cfg = {"quantization_config": {"quant_method": "modelopt", "quant_algo": "fp8", "ignore": ["lm_head"],
                                   "kv_cache_scheme": {"type": "float", "num_bits": 8}}}
    cq = parse_quantization_config(cfg, tmp_path)
    s = cq.scheme_for("model.layers.0.mlp.up_proj")
    assert (s.weight, s.act) == ("fp8_tensor", "fp8_static_tensor")
    assert cq.kv_cache is not None


def test_modelopt_unknown_algo(tmp_path):
    (tmp_path / "hf_quant_config.json").write_text(json.dumps({"quantization": {"quant_algo": "W4A8_AWQ"}}))
    with pytest.raises(InputError, match="'W4A8_AWQ'") as ei:
        parse_quantization_config({}, tmp_path)
    assert ei.value.where.endswith("hf_quant_config.json")
