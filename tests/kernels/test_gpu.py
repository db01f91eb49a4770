"""GPU paths vs the CPU emulation on the same quantized inputs (skipped without CUDA; no compressed-tensors needed)."""

from __future__ import annotations

import pytest
import torch

from layerbisect.kernels import fp8, nvfp4

from .tolerances import TOL, rel_err

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

@pytest.mark.parametrize("impl", ["scaled_mm", "triton"])
@pytest.mark.parametrize(
    "a_block,b_block",
    [((None, None), (None, None)), ((1, None), (1, None)), ((1, 128), (128, 128))],
    ids=["tensorwise", "rowwise", "blockwise"],
)
def test_native_gemm_vs_emulation(impl, a_block, b_block):
    torch.manual_seed(5)
    m, k, n = 256, 1024, 384
    a, b = torch.randn(m, k, device="cuda"), torch.randn(n, k, device="cuda") * 0.02
    a_q, a_s = fp8.quantize_fp8(a, a_block)
    b_q, b_s = fp8.quantize_fp8(b, b_block)
    ref = fp8.fp8_gemm(a_q.cpu(), a_s.cpu(), a_block, b_q.cpu(), b_s.cpu(), b_block, impl="emulate")
    kind = fp8.classify_blocks((m, k), a_block, (n, k), b_block)
    if impl == "scaled_mm" and not (fp8.scaled_mm_supports(kind) or fp8.scaled_mm_supports(kind, torch.bfloat16)):
        pytest.skip(f"this torch build has no {kind} scaled_mm")
    if impl == "triton":
        from layerbisect.kernels.triton_fp8 import TRITON_AVAILABLE

        if not TRITON_AVAILABLE:
            pytest.skip("triton not installed")
    got = fp8.fp8_gemm(a_q, a_s, a_block, b_q, b_s, b_block, impl=impl).cpu()
    tol = TOL["fp8_native_f32"] if impl == "triton" or fp8.scaled_mm_supports(kind) else TOL["fp8_native_bf16"]
    err = rel_err(got, ref)
    assert err <= tol, f"{impl} {kind}: rel err {err:.3e} > {tol}"


@pytest.mark.parametrize("shape", [(1, 256, 128), (77, 640, 200), (256, 2048, 512)])
@pytest.mark.parametrize("convention", ["divide", "multiply"])
def test_triton_gemm_vs_emulation(shape, convention):
    from layerbisect.kernels.triton_nvfp4 import TRITON_AVAILABLE

    if not TRITON_AVAILABLE:
        pytest.skip("triton not installed")
    torch.manual_seed(5)
    m, k, n = shape
    a, w = torch.randn(m, k), torch.randn(n, k) * 0.03
    ga, gw = nvfp4.global_scale_from_amax(a.abs().amax()), nvfp4.global_scale_from_amax(w.abs().amax())
    a_c, a_s, _ = nvfp4.quantize_nvfp4(a, ga)
    w_c, w_s, _ = nvfp4.quantize_nvfp4(w, gw)
    A = nvfp4.GlobalScale(ga)
    W = nvfp4.GlobalScale(gw) if convention == "divide" else nvfp4.GlobalScale(1.0 / gw, "multiply")
    ref = nvfp4.nvfp4_gemm(a_c, a_s, A, nvfp4.pack_fp4(w_c), w_s, W, impl="emulate")
    # activations quantized on the GPU by the same code must be bit-identical to the CPU quantization
    a_c_gpu, a_s_gpu, _ = nvfp4.quantize_nvfp4(a.cuda(), ga.cuda())
    assert torch.equal(a_c_gpu.cpu(), a_c) and torch.equal(a_s_gpu.cpu().view(torch.uint8), a_s.view(torch.uint8))
    got = nvfp4.nvfp4_gemm(a_c_gpu, a_s_gpu, nvfp4.GlobalScale(ga.cuda()), nvfp4.pack_fp4(w_c).cuda(), w_s.cuda(),
                           nvfp4.GlobalScale(W.value.cuda(), W.convention), impl="triton").cpu()
    err = rel_err(got, ref)
    assert err <= TOL["nvfp4_triton"], f"triton nvfp4 {shape} {convention}: rel err {err:.3e}"


@pytest.mark.parametrize("kind", ["fp8_static", "fp8_token", "fp8_block", "nvfp4", "nvfp4a16"])
def test_quant_linear_native_vs_emulate(kind):
    from layerbisect.candidates.qlinear import QuantOptions, build_linear
    from layerbisect.candidates.schemes import LinearScheme

    torch.manual_seed(6)
    out_f, in_f = 384, 1024
    w = torch.randn(out_f, in_f) * 0.02
    if kind.startswith("fp8"):
        block = {"fp8_static": (None, None), "fp8_token": (1, None), "fp8_block": (128, 128)}[kind]
        q, s = fp8.quantize_fp8(w, block)
        tensors = {"weight": q, "weight_scale": s, "input_scale": torch.tensor([0.01])}
        scheme = {
            "fp8_static": LinearScheme("fp8_tensor", "fp8_static_tensor", None, None, "compressed-tensors"),
            "fp8_token": LinearScheme("fp8_channel", "fp8_dynamic_token", None, None, "compressed-tensors"),
            "fp8_block": LinearScheme("fp8_block", "fp8_dynamic_group", (128, 128), None, "compressed-tensors", 128),
        }[kind]
        tol = TOL["fp8_native_bf16"]
    else:
        gs = nvfp4.global_scale_from_amax(w.abs().amax())
        codes, s8, _ = nvfp4.quantize_nvfp4(w, gs)
        tensors = {"weight_packed": nvfp4.pack_fp4(codes), "weight_scale": s8, "weight_global_scale": gs,
                   "input_global_scale": nvfp4.global_scale_from_amax(torch.tensor(4.0))}
        act = "nvfp4" if kind == "nvfp4" else "none"
        scheme = LinearScheme("nvfp4", act, None, 16, "compressed-tensors", 16)
        tol = TOL["nvfp4_triton"]
    emu = build_linear("m", tensors, scheme, QuantOptions())
    nat = build_linear("m", tensors, scheme, QuantOptions(impl="native")).cuda()
    x = torch.randn(3, 50, in_f)
    ref = emu(x)
    got = nat(x.cuda()).cpu()
    err = rel_err(got, ref)
    assert err <= tol, f"{kind}: native vs emulate rel err {err:.3e} > {tol}"
