"""MXFP4 kernels pinned bit-exactly against compressed-tensors' own MX code (quantize, compress, decompress)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("compressed_tensors")

from compressed_tensors.compressors.mx_utils import decompress_mx_scale  # noqa: E402
from compressed_tensors.compressors.mxfp4.base import MXFP4PackedCompressor  # noqa: E402
from compressed_tensors.quantization import preset_name_to_scheme  # noqa: E402
from compressed_tensors.quantization.lifecycle.forward import fake_quantize  # noqa: E402
from compressed_tensors.quantization.utils import calculate_qparams  # noqa: E402
from compressed_tensors.quantization.utils.helpers import compute_dynamic_scales_and_zp  # noqa: E402
from compressed_tensors.quantization.utils.mxfp_utils import round_to_power_2 as ct_round_to_power_2  # noqa: E402

from layerbisect.candidates.qlinear import QuantOptions, build_linear  # noqa: E402
from layerbisect.candidates.schemes import parse_quantization_config  # noqa: E402
from layerbisect.kernels import mxfp4 as kmx  # noqa: E402

from .tolerances import TOL, bit_report, rel_err  # noqa: E402

SCHEME = preset_name_to_scheme("MXFP4", ["Linear"])


def _weight(seed: int = 0, shape: tuple[int, int] = (48, 256)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * 0.05
    w[0, :32] = 0.0  # an all-zero block
    w[1, 40] = 3.0  # an outlier block
    w[2, 64:96] = 1e-30  # blocks of subnormal-range magnitudes
    w[3, 100] = 1.75 * 2.0**-4  # the round-up threshold of round_to_power_2 exactly
    return w.to(torch.bfloat16)


def _ct_compress(w: torch.Tensor) -> dict[str, torch.Tensor]:
    g = w.unflatten(-1, (-1, 32))
    scale, zp = calculate_qparams(g.amin(-1), g.amax(-1), SCHEME.weights)
    return MXFP4PackedCompressor.compress({"weight": w, "weight_scale": scale, "weight_zero_point": zp}, SCHEME)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_round_to_power_2_matches_the_producer(dtype: torch.dtype) -> None:
    x = torch.cat([torch.tensor([1.0, 1.5, 1.74, 1.75, 1.76, 3.0, 6.0, 7.0, 0.1, 1e-3]),
                   torch.rand(500) * 100]).to(dtype)
    got, want = kmx.round_to_power_2(x), ct_round_to_power_2(x.clone())
    assert torch.equal(got, want), bit_report(got.float(), want.float())
    assert kmx.round_to_power_2(torch.tensor([1.74, 1.75])).tolist() == [1.0, 2.0]


def test_e8m0_decodes_like_compressed_tensors() -> None:
    e = torch.arange(0, 255, dtype=torch.uint8)
    assert torch.equal(kmx.e8m0_to_float(e), decompress_mx_scale(e).float())
    assert kmx.e8m0_to_float(torch.tensor([127, 125], dtype=torch.uint8)).tolist() == [1.0, 0.25]


def test_weight_compress_and_decompress_are_bit_exact() -> None:
    w = _weight()
    comp = _ct_compress(w)
    assert set(comp) == {"weight_packed", "weight_scale"}
    assert comp["weight_scale"].dtype == torch.uint8 and tuple(comp["weight_scale"].shape) == (48, 8)
    theirs = MXFP4PackedCompressor.decompress(dict(comp), SCHEME)["weight"].float()
    ours = kmx.dequantize_mxfp4_packed(comp["weight_packed"], comp["weight_scale"])
    assert torch.equal(ours, theirs), bit_report(ours, theirs)
    codes, e = kmx.quantize_mxfp4(w)  # our quantizer gives the producer's exponents and codes
    assert torch.equal(e, comp["weight_scale"]), bit_report(e.float(), comp["weight_scale"].float())
    assert torch.equal(kmx.dequantize_mxfp4(codes, e), theirs)


def test_dynamic_activation_fake_quant_is_bit_exact() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, 256, generator=g) * 3
    x[0, 5], x[1, :32], x[2, 200] = 1000.0, 0.0, -7.0
    scale, zp = compute_dynamic_scales_and_zp(x, SCHEME.input_activations, module=None)
    want = fake_quantize(x, scale, zp, SCHEME.input_activations)
    got = kmx.fake_quantize_mxfp4(x)
    assert torch.equal(got, want), bit_report(got, want)


def test_exponent_offset_error_names_the_power() -> None:
    assert kmx.exponent_offset_error(0.25) == -2  # element offset subtracted twice (vLLM 35562)
    assert kmx.exponent_offset_error(0.26) == -2 and kmx.exponent_offset_error(4.0) == 2
    assert kmx.exponent_offset_error(1.01) is None and kmx.exponent_offset_error(0.37) is None


@pytest.mark.parametrize("preset,act", [("MXFP4A16", "none"), ("MXFP4", "mxfp4")])
def test_qlinear_from_producer_tensors(preset: str, act: str) -> None:
    """The config group compressed-tensors writes parses to mxfp4; the linear's forward matches a float64 reference."""
    sch = preset_name_to_scheme(preset, ["Linear"])
    cfg = {"quantization_config": {
        "quant_method": "compressed-tensors", "format": "mxfp4-pack-quantized",
        "config_groups": {"group_0": {"targets": ["Linear"], **sch.model_dump(include={"weights",
                                                                                         "input_activations"})}},
    }}
    cfg["quantization_config"]["config_groups"]["group_0"]["weights"]["scale_dtype"] = "torch.uint8"
    scheme = parse_quantization_config(cfg, __import__("pathlib").Path(".")).scheme_for("model.layers.0.mlp.up_proj")
    assert (scheme.weight, scheme.act, scheme.group_size) == ("mxfp4", act, 32)
    w = _weight(3)
    lin = build_linear("up_proj", _ct_compress(w), scheme, QuantOptions())
    x = torch.randn(5, 256, generator=torch.Generator().manual_seed(4))
    y = lin(x)
    wd = MXFP4PackedCompressor.decompress(dict(_ct_compress(w)), SCHEME)["weight"].double()
    xa = x.double() if act == "none" else fake_quantize(
        x, *compute_dynamic_scales_and_zp(x, SCHEME.input_activations, module=None), SCHEME.input_activations
    ).double()
    assert rel_err(y, xa @ wd.T) < TOL["emulate_vs_f64"]
    assert torch.equal(lin.dequantized_weight(), wd.float())
