"""Check native FP8 / NVFP4 kernels against the CPU emulation, then time them (CUDA events, median of repeats).

    python benchmarks/gpu_kernels.py --out gpu_kernels.md            # on an H100: checks + timings
    python benchmarks/gpu_kernels.py --out cpu.md                     # without CUDA: CPU checks only

(a) correctness: every native path (scaled_mm tensorwise / rowwise / blockwise, Triton block FP8, Triton NVFP4) on
    the same quantized inputs as ``impl="emulate"`` on CPU; reports max |got - ref| / max |ref| and the tolerance
    from tests/kernels/tolerances.py that FP32 accumulation order (and FP8 MMA accumulator precision) explains.
(b) speed: TFLOP/s (2*M*N*K / median time) per shape and path, with the plain bf16 matmul for scale.
Prints a markdown table and writes it to ``--out``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from layerbisect.kernels import fp8, nvfp4  # noqa: E402
from layerbisect.kernels.triton_fp8 import TRITON_AVAILABLE  # noqa: E402

# kept in sync with tests/kernels/tolerances.py (one table; restated here so the script runs standalone)
TOL = {"fp8_native_f32": 2e-3, "fp8_native_bf16": 8e-3, "nvfp4_triton": 1e-5, "emulate_vs_f64": 1e-5}

FP8_LAYOUTS = {
    "tensorwise": ((None, None), (None, None)),
    "rowwise": ((1, None), (1, None)),
    "blockwise": ((1, 128), (128, 128)),
}


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    g, r = got.double().cpu(), ref.double().cpu()
    d = r.abs().max().item()
    return (g - r).abs().max().item() / (d if d > 0 else 1.0)


def time_cuda(fn: Callable[[], object], repeats: int = 20, warmup: int = 3) -> float:
    """Median seconds of ``fn`` measured with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def time_cpu(fn: Callable[[], object], repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def make_fp8(m: int, n: int, k: int, layout: str, device: str):
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(m, k, generator=g)
    b = torch.randn(n, k, generator=g) * 0.02
    ab, bb = FP8_LAYOUTS[layout]
    a_q, a_s = fp8.quantize_fp8(a, ab)
    b_q, b_s = fp8.quantize_fp8(b, bb)
    return [t.to(device) for t in (a_q, a_s)], ab, [t.to(device) for t in (b_q, b_s)], bb


def make_nvfp4(m: int, n: int, k: int, device: str):
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(m, k, generator=g)
    w = torch.randn(n, k, generator=g) * 0.02
    ga, gw = nvfp4.global_scale_from_amax(a.abs().amax()), nvfp4.global_scale_from_amax(w.abs().amax())
    a_c, a_s, _ = nvfp4.quantize_nvfp4(a, ga)
    w_c, w_s, _ = nvfp4.quantize_nvfp4(w, gw)
    return (a_c, a_s, ga), (nvfp4.pack_fp4(w_c), w_s, gw), a


def run(shapes: list[tuple[int, int, int]], check_shape: tuple[int, int, int], repeats: int) -> list[str]:
    has_cuda = torch.cuda.is_available()
    dev = "cuda" if has_cuda else "cpu"
    rows = ["| check / path | shape MxNxK | max rel err | tolerance | ok |", "|---|---|---|---|---|"]

    # (a) correctness vs the CPU emulation, on one moderate shape (the emulation is a CPU FP32 matmul)
    m, n, k = check_shape
    for layout in FP8_LAYOUTS:
        (a_q, a_s), ab, (b_q, b_s), bb = make_fp8(m, n, k, layout, "cpu")
        ref = fp8.fp8_gemm(a_q, a_s, ab, b_q, b_s, bb, impl="emulate")
        f64 = fp8.dequantize_fp8(a_q, a_s, ab).double() @ fp8.dequantize_fp8(b_q, b_s, bb).double().T
        e = rel_err(ref, f64)
        rows.append(f"| fp8 {layout} emulate vs f64 | {m}x{n}x{k} | {e:.2e} | {TOL['emulate_vs_f64']:.0e} | "
                    f"{'yes' if e <= TOL['emulate_vs_f64'] else 'NO'} |")
        if not has_cuda:
            continue
        args = (a_q.cuda(), a_s.cuda(), ab, b_q.cuda(), b_s.cuda(), bb)
        paths = ["scaled_mm"] + (["triton"] if TRITON_AVAILABLE else [])
        for impl in paths:
            if impl == "scaled_mm":
                kind = fp8.classify_blocks((m, k), ab, (n, k), bb)
                f32 = fp8.scaled_mm_supports(kind, torch.float32)
                if not (f32 or fp8.scaled_mm_supports(kind, torch.bfloat16)):
                    rows.append(f"| fp8 {layout} scaled_mm | {m}x{n}x{k} | unsupported by this torch | - | - |")
                    continue
                tol = TOL["fp8_native_f32"] if f32 else TOL["fp8_native_bf16"]
            else:
                tol = TOL["fp8_native_f32"]
            try:
                got = fp8.fp8_gemm(*args, impl=impl)
                e = rel_err(got, ref)
                rows.append(f"| fp8 {layout} {impl} | {m}x{n}x{k} | {e:.2e} | {tol:.0e} | "
                            f"{'yes' if e <= tol else 'NO'} |")
            except Exception as ex:  # noqa: BLE001 - report, keep going
                rows.append(f"| fp8 {layout} {impl} | {m}x{n}x{k} | ERROR {type(ex).__name__}: {ex} | - | NO |")

    (a_c, a_s, ga), (w_p, w_s, gw), a = make_nvfp4(m, n, k, "cpu")
    A, W = nvfp4.GlobalScale(ga), nvfp4.GlobalScale(gw)
    ref = nvfp4.nvfp4_gemm(a_c, a_s, A, w_p, w_s, W, impl="emulate")
    if has_cuda and TRITON_AVAILABLE:
        c_gpu, s_gpu, _ = nvfp4.quantize_nvfp4(a.cuda(), ga.cuda())
        same = torch.equal(c_gpu.cpu(), a_c) and torch.equal(s_gpu.cpu().view(torch.uint8), a_s.view(torch.uint8))
        rows.append(f"| nvfp4 act quant GPU == CPU (bit-exact) | {m}x{k} | - | 0 | {'yes' if same else 'NO'} |")
        try:
            got = nvfp4.nvfp4_gemm(c_gpu, s_gpu, nvfp4.GlobalScale(ga.cuda()), w_p.cuda(), w_s.cuda(),
                                   nvfp4.GlobalScale(gw.cuda()), impl="triton")
            e = rel_err(got, ref)
            tol = TOL["nvfp4_triton"]
            rows.append(f"| nvfp4 triton fused | {m}x{n}x{k} | {e:.2e} | {tol:.0e} | {'yes' if e <= tol else 'NO'} |")
        except Exception as ex:  # noqa: BLE001
            rows.append(f"| nvfp4 triton fused | {m}x{n}x{k} | ERROR {type(ex).__name__}: {ex} | - | NO |")

    # (b) speed
    rows += ["", "| path | shape MxNxK | median ms | TFLOP/s |", "|---|---|---|---|"]
    for (m, n, k) in shapes:
        flops = 2.0 * m * n * k
        if not has_cuda:
            (a_q, a_s), ab, (b_q, b_s), bb = make_fp8(m, n, k, "rowwise", "cpu")
            t = time_cpu(lambda: fp8.fp8_gemm(a_q, a_s, ab, b_q, b_s, bb, impl="emulate"), repeats)  # noqa: B023 - called at once
            rows.append(f"| fp8 rowwise emulate (CPU) | {m}x{n}x{k} | {t * 1e3:.2f} | {flops / t / 1e12:.3f} |")
            continue
        a16 = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
        b16 = torch.randn(n, k, device=dev, dtype=torch.bfloat16)
        t = time_cuda(lambda: a16 @ b16.T, repeats)  # noqa: B023 - called at once
        rows.append(f"| bf16 matmul (reference speed) | {m}x{n}x{k} | {t * 1e3:.3f} | {flops / t / 1e12:.1f} |")
        for layout in FP8_LAYOUTS:
            (a_q, a_s), ab, (b_q, b_s), bb = make_fp8(m, n, k, layout, dev)
            for impl in ["scaled_mm"] + (["triton"] if TRITON_AVAILABLE else []):
                try:
                    fp8.fp8_gemm(a_q, a_s, ab, b_q, b_s, bb, impl=impl)
                    t = time_cuda(lambda: fp8.fp8_gemm(a_q, a_s, ab, b_q, b_s, bb, impl=impl), repeats)  # noqa: B023 - called at once
                    rows.append(f"| fp8 {layout} {impl} | {m}x{n}x{k} | {t * 1e3:.3f} | {flops / t / 1e12:.1f} |")
                except Exception as ex:  # noqa: BLE001
                    rows.append(f"| fp8 {layout} {impl} | {m}x{n}x{k} | n/a ({type(ex).__name__}) | - |")
        if TRITON_AVAILABLE:
            (a_c, a_s, ga), (w_p, w_s, gw), _ = make_nvfp4(m, n, k, "cpu")
            a_p = nvfp4.pack_fp4(a_c).cuda()
            from layerbisect.kernels import triton_nvfp4

            args = (a_p, a_s.cuda(), w_p.cuda(), w_s.cuda(), 1.0 / (float(ga) * float(gw)))
            try:
                t = time_cuda(lambda: triton_nvfp4.nvfp4_gemm(*args), repeats)  # noqa: B023 - called at once
                rows.append(f"| nvfp4 triton fused (GEMM only) | {m}x{n}x{k} | {t * 1e3:.3f} | "
                            f"{flops / t / 1e12:.1f} |")
            except Exception as ex:  # noqa: BLE001
                rows.append(f"| nvfp4 triton fused | {m}x{n}x{k} | n/a ({type(ex).__name__}) | - |")
    device = torch.cuda.get_device_name() if has_cuda else "CPU only (no CUDA): checks of the emulation only"
    return [f"# GPU kernel check and benchmark\n\ndevice: {device}; torch {torch.__version__}; "
            f"triton: {TRITON_AVAILABLE}\n"] + rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="markdown file to write")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="small shapes only")
    args = p.parse_args(argv)
    if args.quick or not torch.cuda.is_available():
        shapes = [(16, 1024, 1024), (256, 1024, 1024)]
        check = (64, 256, 512)
    else:
        shapes = [(16, 4096, 4096), (4096, 4096, 4096), (8192, 8192, 8192)]
        check = (256, 1024, 2048)
    lines = run(shapes, check, args.repeats)
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0 if "| NO |" not in text else 1


if __name__ == "__main__":
    raise SystemExit(main())
