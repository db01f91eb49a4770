"""Throughput of GGUF dequantization: ours on CPU, ours on CUDA (if present), gguf-py (numpy).

Design note: one tensor of `--size` elements per type (default 4096x4096), random bytes with
realistic finite f16 scales (|N(0, 1)| * 0.01; float types from N(0, 1)), so no NaN/inf or
f32 subnormals skew the timing. Throughput counts the bytes a dequantizer must move:
input bytes read + FP32 output written, divided by the median time of `--repeats` runs.
"copy %" relates it to a device copy of the output-sized buffer measured in the same run
(`dst.copy_(src)`, counting read + write), the ceiling for a memory-bound kernel. GPU timing
uses CUDA events around the call with the input already on the device (no host transfer);
"ours CUDA" is the eager torch path (impl="torch"), "Triton" the Triton kernels (impl="triton",
``layerbisect/kernels/gguf_triton.py``, "-" for the types it does not cover).
The "x gguf-py" columns are ratios within this one run. The CPU columns use torch's
current intra-op thread count (`--threads` sets it); numpy is single-threaded.

    python benchmarks/dequant_bench.py --size 4096x4096 --out benchmarks/results/dequant.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as QT

from layerbisect.kernels import gguf_triton
from layerbisect.references.gguf_dequant import dequantize

TYPES = [
    QT.F32, QT.F16, QT.BF16, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0, QT.Q2_K, QT.Q3_K,
    QT.Q4_K, QT.Q5_K, QT.Q6_K, QT.IQ4_NL, QT.IQ4_XS, QT.MXFP4, QT.NVFP4,
]
# Byte offsets of the f16 scale fields in one block (as in gguf-py's hsplits).
F16_FIELDS: dict[QT, tuple[int, ...]] = {
    QT.Q4_0: (0,), QT.Q4_1: (0, 2), QT.Q5_0: (0,), QT.Q5_1: (0, 2), QT.Q8_0: (0,),
    QT.Q2_K: (80, 82), QT.Q3_K: (108,), QT.Q4_K: (0, 2), QT.Q5_K: (0, 2), QT.Q6_K: (208,),
    QT.IQ4_NL: (0,), QT.IQ4_XS: (0,),
}


def make_data(qtype: QT, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """The tensor as GGUFReader would give it: float arrays for F32/F16, uint8 rows otherwise."""
    rng = np.random.default_rng([seed, int(qtype)])
    if qtype in (QT.F32, QT.F16, QT.BF16):
        x = rng.standard_normal((rows, cols), dtype=np.float32)
        if qtype == QT.F32:
            return x
        if qtype == QT.F16:
            return x.astype(np.float16)
        return gguf.quants.quantize(x, QT.BF16).view(np.uint8)
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(rows * cols // block_size, type_size), dtype=np.uint8)
    for off in F16_FIELDS.get(qtype, ()):
        scale = (np.abs(rng.standard_normal(raw.shape[0])) * 0.01).astype(np.float16)
        raw[:, off : off + 2] = scale.view(np.uint8).reshape(-1, 2)
    if qtype == QT.MXFP4:
        raw[:, 0] = rng.integers(115, 125, size=raw.shape[0], dtype=np.uint8)  # 2^-12 .. 2^-2
    return raw.reshape(rows, cols // block_size * type_size)


def time_cpu(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_cuda(fn: Callable[[], object], repeats: int) -> float:
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


def copy_bandwidth(device: str, n_bytes: int, repeats: int) -> float:
    """GB/s of dst.copy_(src) on one device, counting the read and the write."""
    src = torch.ones(n_bytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    timer = time_cuda if device == "cuda" else time_cpu
    t = timer(lambda: dst.copy_(src), repeats)
    return 2 * n_bytes / t / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="4096x4096", help="ROWSxCOLS (or N for NxN) elements per type")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs of ours (median)")
    ap.add_argument("--ref-repeats", type=int, default=3, help="timed runs of gguf-py (median; it is slow)")
    ap.add_argument("--types", default=",".join(t.name for t in TYPES), help="comma-separated type names")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--no-ref", action="store_true", help="skip gguf-py")
    ap.add_argument("--no-cpu", action="store_true", help="skip ours on CPU")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/dequant.md"))
    args = ap.parse_args()

    rows, _, cols = args.size.partition("x")
    rows, cols = int(rows), int(cols or rows)
    if args.threads:
        torch.set_num_threads(args.threads)
    types = [QT[name.strip()] for name in args.types.split(",") if name.strip()]
    has_cuda = torch.cuda.is_available()
    out_bytes = rows * cols * 4

    cpu_copy = copy_bandwidth("cpu", out_bytes, args.repeats)
    gpu_copy = copy_bandwidth("cuda", out_bytes, max(args.repeats, 20)) if has_cuda else float("nan")

    header = ["type", "in MB"]
    if not args.no_cpu:
        header += ["ours CPU GB/s", "CPU copy %"]
    if has_cuda:
        header += ["ours CUDA GB/s", "CUDA copy %", "Triton GB/s", "Triton copy %"]
    if not args.no_ref:
        header += ["gguf-py GB/s"]
        if not args.no_cpu:
            header += ["CPU x gguf-py"]
        if has_cuda:
            header += ["CUDA x gguf-py"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    for qtype in types:
        data = make_data(qtype, rows, cols)
        moved = data.nbytes + out_bytes
        row = [qtype.name, f"{data.nbytes / 1e6:.1f}"]
        t_cpu = t_gpu = t_ref = float("nan")
        if not args.no_cpu:
            t_cpu = time_cpu(lambda d=data, q=qtype: dequantize(d, q), args.repeats)
            row += [f"{moved / t_cpu / 1e9:.2f}", f"{100 * moved / t_cpu / 1e9 / cpu_copy:.0f}%"]
        if has_cuda:
            on_gpu = torch.from_numpy(np.ascontiguousarray(data)).cuda()
            t_gpu = time_cuda(lambda d=on_gpu, q=qtype: dequantize(d, q, impl="torch"), max(args.repeats, 20))
            row += [f"{moved / t_gpu / 1e9:.1f}", f"{100 * moved / t_gpu / 1e9 / gpu_copy:.0f}%"]
            if gguf_triton.usable(qtype, on_gpu.device):
                t_tr = time_cuda(lambda d=on_gpu, q=qtype: dequantize(d, q, impl="triton"), max(args.repeats, 20))
                row += [f"{moved / t_tr / 1e9:.1f}", f"{100 * moved / t_tr / 1e9 / gpu_copy:.0f}%"]
            else:
                row += ["-", "-"]
            del on_gpu
        if not args.no_ref:
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t_ref = time_cpu(lambda d=data, q=qtype: gguf.quants.dequantize(d, q), args.ref_repeats)
            row += [f"{moved / t_ref / 1e9:.2f}"]
            if not args.no_cpu:
                row += [f"{t_ref / t_cpu:.1f}x"]
            if has_cuda:
                row += [f"{t_ref / t_gpu:.0f}x"]
        lines.append("| " + " | ".join(row) + " |")
        print(lines[-1], flush=True)

    device = torch.cuda.get_device_name(0) if has_cuda else "none"
    notes = [
        f"# GGUF dequantization throughput ({rows}x{cols} elements per type)",
        "",
        f"- CPU: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
        f"copy {cpu_copy:.1f} GB/s; CUDA: {device}"
        + (f", copy {gpu_copy:.0f} GB/s" if has_cuda else ""),
        f"- torch {torch.__version__}, numpy {np.__version__}, gguf-py {_gguf_version()}; "
        f"median of {args.repeats} (ours; CUDA max({args.repeats}, 20)) / {args.ref_repeats} (gguf-py) runs",
        "- GB/s = (input bytes + FP32 output bytes) / time; copy % = that / device copy GB/s "
        "(read + write of an output-sized buffer)",
        "- gguf-py's F32 'dequantization' is a zero-copy view, so its F32 row is not comparable",
        "",
    ]
    text = "\n".join(notes + lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"\nwritten to {args.out}")


def _gguf_version() -> str:
    from importlib.metadata import version

    return version("gguf")


if __name__ == "__main__":
    main()
