"""Speed and scale benchmarks in one script: markdown tables under ``--out``, printed as they come.

    python benchmarks/bench.py --out $OUT                                   # all sections
    python benchmarks/bench.py --out $OUT --gguf gemma-3-270m-Q4_K_M.gguf --cand gemma-fp8/
    python benchmarks/bench.py --out $OUT --sections a,e                    # a subset

(a) ``dequant.md``   GGUF dequantization throughput per type: ours on GPU (torch, Triton), ours on
                     CPU, gguf-py (numpy); GB/s = (input + FP32 output bytes) / median time, as a
                     fraction of the same device's measured copy bandwidth, and ratios to gguf-py.
(b) ``gemma.md``     end-to-end bisect of Gemma 3 270M (``--gguf``, ``--cand``; skipped without
                     them) on CPU and GPU vs what a user would otherwise do (transformers' GGUF
                     loading + ``output_hidden_states``), with a profile: GGUF open (read
                     header), tensor bytes read, dequantization, forward, compare, report.
(c) ``synthetic.md`` a synthetic llama-shaped model (``--shape 8b``: 32 layers, d 4096, ff 14336,
                     32/8 heads, vocab 128256; ``small`` on CPU) written as Q8_0 and Q4_0 GGUFs
                     and as FP8 and NVFP4 compressed-tensors checkpoints; bisect end to end on
                     the GPU with peak memory and the same breakdown. Weights are random and
                     reused across layers (a template per shape), and the two sides are
                     unrelated: this measures time and memory, not a verdict.
(d) ``streaming.md`` the synthetic model with a memory cap far below its FP32 size, streaming
                     forced: peak live weight bytes vs one layer, peak device memory, time.
(e) ``gemm.md``      FP8/NVFP4 GEMM throughput of our kernels vs ``torch._scaled_mm``
                     (``benchmarks/gpu_kernels.py``).
(f) ``bounded.md``   streamed bisect (localization and audits on) of a model with 70B-shaped layers
                     (``--f-shape``; 1/8 of the width on CPU) at several depths (``--depths 2,6,12``):
                     peak GPU memory against 3 FP32 layers + embedding and head per side, host
                     anonymous and file-mapped memory, per stage.
(g) ``two_gpus.md``  the synthetic model on one GPU and on two (reference on cuda:0, candidate on
                     cuda:1), alternated in one process; with one GPU, the jobs one after another
                     against the same jobs in threads on it (item 4's ratio needs 2 GPUs).
``ratios.md``        every section's ratios against issue 14's targets, in one table.

Without CUDA every section runs its CPU part only. Files go to ``--work`` (default: a temp dir).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import dequant_bench as db  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
GB = 1e9

# (item of issue 14, what, measured ratio, target, the numbers behind it): every section adds its ratios here and
# ``ratios.md`` collects them in one table at the end
RATIOS: list[tuple[str, str, float, str, str]] = []


def ratio(item: str, what: str, value: float, target: float | None, numbers: str) -> None:
    ok = "-" if target is None or value != value else ("yes" if value <= target else "NO")
    RATIOS.append((item, what, value, f"<= {target:g}" if target is not None else "-", numbers + f" | met: {ok}"))


def ratios_section(out: Path) -> str:
    rows = [[item, what, f"{v:.3f}" if v == v else "-", target, numbers] for item, what, v, target, numbers in RATIOS]
    return emit(out, "ratios.md", "Ratios (issue 14): each measured within one run", table(
        ["item", "ratio", "value", "target", "numbers"], rows))

SHAPES = {
    "8b": dict(n_layers=32, d=4096, ff=14336, heads=32, kv=8, vocab=128256),
    "small": dict(n_layers=4, d=512, ff=1792, heads=8, kv=2, vocab=8192),
    # one layer of a 70B llama (Llama 3 70B): what (f) streams at several depths
    "70b-layer": dict(n_layers=12, d=8192, ff=28672, heads=64, kv=8, vocab=128256),
    # the same proportions at 1/8 of the width, for CPU runs of (f)
    "70b-layer/8": dict(n_layers=12, d=1024, ff=3584, heads=8, kv=1, vocab=16032),
}


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(str(c) for c in r) + " |" for r in rows
    ]


def env_line() -> str:
    dev = torch.cuda.get_device_name(0) if HAS_CUDA else "no CUDA"
    try:
        import triton

        tv = triton.__version__
    except Exception:  # noqa: BLE001
        tv = "absent"
    return (f"{time.strftime('%Y-%m-%d %H:%M')}; {platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, "
            f"torch threads {torch.get_num_threads()}); GPU: {dev}; torch {torch.__version__}; triton {tv}")


def emit(out: Path, name: str, title: str, lines: list[str], notes: list[str] = ()) -> str:
    text = "\n".join([f"## {title}", "", f"- {env_line()}", *[f"- {n}" for n in notes], "", *lines, ""])
    (out / name).write_text(text)
    print(text, flush=True)
    return text


# --- (a) dequantization ----------------------------------------------------------------------


def time_cuda_graph(fns: list, repeats: int = 20) -> float:
    """Median seconds of one call of ``fns`` (run in turn, one per input copy) timed as CUDA graph replays.

    Per-call event timing (``dequant_bench.time_cuda``) puts the host's launch path inside the
    window: at 4096x4096 a kernel takes ~25-70 us, about what Python dispatch and a Triton launch
    take on the host, so that number is launch-bound. A graph replay times the device work alone;
    several input copies (more bytes than the L2 holds) keep the reads from coming from the cache.
    NaN when a path cannot be captured.
    """
    try:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for f in fns:
                f()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for f in fns:
                f()
        g.replay()
        torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            g.replay()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b) / 1e3 / len(fns))
        return float(np.median(times))
    except Exception as e:  # noqa: BLE001 - a path that cannot be captured has no graph number
        print(f"graph capture failed: {type(e).__name__}: {e}", flush=True)
        return float("nan")


def section_a(out: Path, size: int, repeats: int) -> str:
    from gguf import GGMLQuantizationType as QT

    from layerbisect.kernels import gguf_triton
    from layerbisect.references.gguf_dequant import dequantize

    types = [QT.Q8_0, QT.Q4_0, QT.Q5_0, QT.Q4_K, QT.Q5_K, QT.Q6_K, QT.Q2_K, QT.BF16, QT.F16]
    rows, cols = size, size
    out_bytes = rows * cols * 4
    cpu_copy = db.copy_bandwidth("cpu", out_bytes, repeats)
    gpu_copy = db.copy_bandwidth("cuda", out_bytes, 20) if HAS_CUDA else float("nan")
    gpu_copy_graph = float("nan")
    if HAS_CUDA:
        src = torch.ones(out_bytes // 4, device="cuda")
        dst = torch.empty_like(src)
        gpu_copy_graph = 2 * out_bytes / time_cuda_graph([lambda: dst.copy_(src)]) / GB
        del src, dst
    res, graph_rows = [], []
    for qt in types:
        data = db.make_data(qt, rows, cols)
        moved = data.nbytes + out_bytes
        t_cpu = db.time_cpu(lambda d=data, q=qt: dequantize(d, q), repeats)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import gguf

            t_ref = db.time_cpu(lambda d=data, q=qt: gguf.quants.dequantize(d, q), max(1, repeats // 2))
        t_gt = t_gtr = float("nan")
        exact = "-"
        if HAS_CUDA:
            g = torch.from_numpy(np.ascontiguousarray(data)).cuda()
            t_gt = db.time_cuda(lambda d=g, q=qt: dequantize(d, q, impl="torch"), 20)
            copies = [g] + [g.clone() for _ in range(3)]  # 4 inputs: more than the L2 between replays
            outs = {}
            for impl in ("torch", "triton"):
                if impl == "triton" and not gguf_triton.usable(qt, g.device):
                    continue
                tg = time_cuda_graph([lambda d=d, q=qt, i=impl: dequantize(d, q, impl=i) for d in copies])
                outs[impl] = moved / tg / GB if tg == tg else float("nan")
            del copies
            best_graph = max((v for v in outs.values() if v == v), default=float("nan"))
            graph_rows.append([qt.name, *(f"{outs[k]:.0f} ({100 * outs[k] / gpu_copy_graph:.0f}%)" if k in outs
                                          and outs[k] == outs[k] else "-" for k in ("triton", "torch"))])
            if best_graph == best_graph:
                ratio("3", f"dequant {qt.name} {rows}x{cols}, H200 kernel time (graph replay): copy / best path "
                      "(<= 2 is >= 50%)", gpu_copy_graph / best_graph, 2.0,
                      f"{best_graph:.0f} GB/s of copy {gpu_copy_graph:.0f} GB/s, both as graph replays")
            if gguf_triton.usable(qt, g.device):
                t_gtr = db.time_cuda(lambda d=g, q=qt: dequantize(d, q, impl="triton"), 20)
                a, b = dequantize(g, qt, impl="triton"), dequantize(g, qt, impl="torch")
                same = (a.view(torch.int32) == b.view(torch.int32)) | (a.isnan() & b.isnan())
                exact = "yes" if bool(same.all()) else "NO"
            del g
        bw = lambda t, m=moved: m / t / GB  # noqa: E731
        res.append([
            qt.name, f"{data.nbytes / 1e6:.1f}",
            f"{bw(t_gtr):.0f} ({100 * bw(t_gtr) / gpu_copy:.0f}%)" if t_gtr == t_gtr else "-",
            f"{bw(t_gt):.0f} ({100 * bw(t_gt) / gpu_copy:.0f}%)" if t_gt == t_gt else "-",
            f"{bw(t_cpu):.2f} ({100 * bw(t_cpu) / cpu_copy:.0f}%)", f"{bw(t_ref):.2f}",
            f"{t_ref / t_gtr:.0f}x" if t_gtr == t_gtr else "-", f"{t_ref / t_gt:.0f}x" if t_gt == t_gt else "-",
            f"{t_ref / t_cpu:.1f}x", exact,
        ])
        print(res[-1], flush=True)
        if HAS_CUDA:
            best = max(x for x in (bw(t_gtr), bw(t_gt)) if x == x)
            ratio("3", f"dequant {qt.name} {rows}x{cols}, per call (host launch inside the timing): copy / best "
                  "path (<= 2 is >= 50%)", gpu_copy / best, 2.0, f"{best:.0f} GB/s of copy {gpu_copy:.0f} GB/s")
    header = ["type", "in MB", "Triton GPU GB/s (copy %)", "torch GPU GB/s (copy %)", "torch CPU GB/s (copy %)",
              "gguf-py GB/s", "Triton x gguf-py", "torch GPU x gguf-py", "CPU x gguf-py", "Triton == torch bits"]
    notes = [f"{rows}x{cols} elements per type; GB/s = (input + FP32 output bytes) / median time; copy % relative "
             f"to dst.copy_(src) of an output-sized buffer (CPU {cpu_copy:.1f} GB/s"
             + (f", GPU {gpu_copy:.0f} GB/s)" if HAS_CUDA else ")"),
             "BF16/F16 are casts (torch path under impl=auto); gguf-py is single-threaded numpy"]
    lines = table(header, res)
    if graph_rows:
        lines += ["", f"Device time alone (CUDA graph replays of 4 calls on 4 input copies; copy {gpu_copy_graph:.0f} "
                  "GB/s timed the same way):", ""]
        lines += table(["type", "Triton GB/s (copy %)", "torch GB/s (copy %)"], graph_rows)
    return emit(out, "dequant.md", "(a) GGUF dequantization throughput", lines, notes)


# --- synthetic models ------------------------------------------------------------------------

QK_TEMPLATES: dict[tuple, np.ndarray] = {}


def _gguf_blocks(qtype, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Random blocks with valid f16 scales ~ 1/(qmax·sqrt(cols)), as GGUFReader rows (rows, row_bytes)."""
    import gguf
    from gguf import GGMLQuantizationType as QT

    key = (int(qtype), rows, cols)
    if key in QK_TEMPLATES:
        return QK_TEMPLATES[key]
    bs, ts = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(rows * cols // bs, ts), dtype=np.uint8)
    qmax = 127 if qtype == QT.Q8_0 else 8
    d = (np.abs(rng.standard_normal(raw.shape[0])) * 2 / (qmax * math.sqrt(cols))).astype(np.float16)
    raw[:, 0:2] = d.view(np.uint8).reshape(-1, 2)
    QK_TEMPLATES[key] = arr = raw.reshape(rows, cols // bs * ts)
    return arr


def write_synthetic_gguf(path: Path, shape: dict, qtype_name: str) -> Path:
    import gguf

    qt = gguf.GGMLQuantizationType[qtype_name]
    rng = np.random.default_rng(0)
    n, d, ff, h, kv, V = (shape[k] for k in ("n_layers", "d", "ff", "heads", "kv", "vocab"))
    hd = d // h
    w = gguf.GGUFWriter(path=None, arch="llama")
    w.add_name("synthetic")
    w.add_block_count(n)
    w.add_context_length(8192)
    w.add_embedding_length(d)
    w.add_feed_forward_length(ff)
    w.add_head_count(h)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if qtype_name == "Q8_0" else gguf.LlamaFileType.MOSTLY_Q4_0)
    # a placeholder SPM vocabulary (ids are passed directly; generation only needs an EOS id)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"<t{i}>" for i in range(V)])
    w.add_token_scores([0.0] * V)
    w.add_token_types([1] * V)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    norm = (1 + 0.1 * rng.standard_normal(d)).astype(np.float32)
    w.add_tensor("token_embd.weight", _gguf_blocks(qt, V, d, rng), raw_dtype=qt)
    for i in range(n):
        for name, (r, c) in {"attn_q": (h * hd, d), "attn_k": (kv * hd, d), "attn_v": (kv * hd, d),
                             "attn_output": (d, h * hd), "ffn_gate": (ff, d), "ffn_up": (ff, d),
                             "ffn_down": (d, ff)}.items():
            w.add_tensor(f"blk.{i}.{name}.weight", _gguf_blocks(qt, r, c, rng), raw_dtype=qt)
        w.add_tensor(f"blk.{i}.attn_norm.weight", norm)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", norm)
    w.add_tensor("output_norm.weight", norm)
    w.add_tensor("output.weight", _gguf_blocks(qt, V, d, rng), raw_dtype=qt)
    w.write_header_to_file(path=path)
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _ct_config(shape: dict, scheme: str) -> dict:
    n, d, ff, h, kv, V = (shape[k] for k in ("n_layers", "d", "ff", "heads", "kv", "vocab"))
    if scheme == "FP8":
        fmt = "float-quantized"
        wq = {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False, "symmetric": True}
        aq = dict(wq)
    else:
        fmt = "nvfp4-pack-quantized"
        wq = {"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16, "dynamic": False,
              "symmetric": True, "scale_dtype": "torch.float8_e4m3fn"}
        aq = {**wq, "dynamic": "local"}
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": d, "intermediate_size": ff,
        "num_hidden_layers": n, "num_attention_heads": h, "num_key_value_heads": kv, "head_dim": d // h,
        "vocab_size": V, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 8192,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "hidden_act": "silu",
        "quantization_config": {
            "quant_method": "compressed-tensors", "format": fmt, "ignore": ["lm_head"], "kv_cache_scheme": None,
            "quantization_status": "compressed",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": wq, "input_activations": aq,
                                          "format": fmt}},
        },
    }


def write_synthetic_ct(path: Path, shape: dict, scheme: str) -> Path:
    """A compressed-tensors checkpoint (FP8 or NVFP4): the producer's names, dtypes and shapes; one shard a layer."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    n, d, ff, h, kv, V = (shape[k] for k in ("n_layers", "d", "ff", "heads", "kv", "vocab"))
    hd = d // h
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(_ct_config(shape, scheme), indent=1))
    templates: dict[tuple[int, int], dict[str, torch.Tensor]] = {}

    def linear(r: int, c: int) -> dict[str, torch.Tensor]:
        if (r, c) not in templates:
            if scheme == "FP8":
                templates[(r, c)] = {
                    "weight": (torch.randn(r, c, generator=g) * 64).to(torch.float8_e4m3fn),
                    "weight_scale": torch.tensor([1 / (64 * math.sqrt(c))], dtype=torch.bfloat16),
                    "input_scale": torch.tensor([0.02], dtype=torch.bfloat16),
                }
            else:
                templates[(r, c)] = {
                    "weight_packed": torch.randint(0, 256, (r, c // 2), generator=g, dtype=torch.uint8),
                    "weight_scale": (torch.rand(r, c // 16, generator=g) * 200 + 50).to(torch.float8_e4m3fn),
                    "weight_global_scale": torch.tensor([448.0 * 6 * math.sqrt(c)], dtype=torch.float32),
                    "input_global_scale": torch.tensor([448.0 * 6 / 8], dtype=torch.float32),
                }
        return {k: v.clone() for k, v in templates[(r, c)].items()}

    weight_map: dict[str, str] = {}

    def shard(name: str, tensors: dict[str, torch.Tensor]) -> None:
        save_file(tensors, path / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in tensors})

    norm = (1 + 0.1 * torch.randn(d, generator=g)).to(torch.bfloat16)
    shard("globals.safetensors", {
        "model.embed_tokens.weight": (torch.randn(V, d, generator=g) * 0.5).to(torch.bfloat16),
        "model.norm.weight": norm.clone(),
        "lm_head.weight": (torch.randn(V, d, generator=g) / math.sqrt(d)).to(torch.bfloat16),
    })
    for i in range(n):
        t: dict[str, torch.Tensor] = {}
        p = f"model.layers.{i}."
        for name, (r, c) in {"self_attn.q_proj": (h * hd, d), "self_attn.k_proj": (kv * hd, d),
                             "self_attn.v_proj": (kv * hd, d), "self_attn.o_proj": (d, h * hd),
                             "mlp.gate_proj": (ff, d), "mlp.up_proj": (ff, d), "mlp.down_proj": (d, ff)}.items():
            t.update({f"{p}{name}.{k}": v for k, v in linear(r, c).items()})
        t[p + "input_layernorm.weight"] = norm.clone()
        t[p + "post_attention_layernorm.weight"] = norm.clone()
        shard(f"layer-{i:03d}.safetensors", t)
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return path


def dir_bytes(p: Path) -> int:
    return p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def run_compare(ref: Path, cand: Path, device: str, *, tokens: list[int], generate: int, stream: bool | None = None,
                memory_cap: int | None = None, localize: bool = True, out_dir: Path | None = None,
                ref_device: str | None = None, cand_device: str | None = None, concurrent: bool | None = None) -> dict:
    import layerbisect
    from layerbisect.pipeline import CompareOptions

    t0 = time.perf_counter()
    with MemProbe() as probe:
        rep = layerbisect.compare(ref, cand, options=CompareOptions(
            tokens=tokens, generate=generate, device=device, stream=stream, memory_cap=memory_cap, localize=localize,
            ref_device=ref_device, cand_device=cand_device, concurrent=concurrent), status=probe.say)
    t_cmp = time.perf_counter() - t0
    t0 = time.perf_counter()
    if out_dir is not None:
        rep.save(out_dir, ["md", "json"], overwrite=True)
    t_rep = time.perf_counter() - t0
    rt = rep.record.runtime.to_dict()
    return {"total_s": t_cmp + t_rep, "report_s": t_rep, **rt["timings_s"], "peak": rt["peak_memory_bytes"],
            "memory": rt["memory"], "host_rss_sampled": probe.rss_peak, "gpu_peak_sampled": max(probe.gpu.values(),
                                                                                                  default=None)}


def profile_reference_load(path: Path, device: str) -> dict[str, float]:
    """GGUF open (header parse), tensor bytes read (page cache → memory), dequantization, separately."""
    from layerbisect.references.gguf_dequant import dequantize
    from layerbisect.references.gguf_file import GGUFFile

    t0 = time.perf_counter()
    f = GGUFFile(path)
    t_open = time.perf_counter() - t0
    t_read = t_deq = 0.0
    n_bytes = 0
    for t in f.tensors.values():
        t0 = time.perf_counter()
        raw = torch.from_numpy(np.ascontiguousarray(np.array(t.data)))  # forces the read
        if device != "cpu":
            raw = raw.to(device)
            torch.cuda.synchronize()
        t_read += time.perf_counter() - t0
        n_bytes += raw.numel() * raw.element_size()
        t0 = time.perf_counter()
        dequantize(raw, t.tensor_type, tuple(reversed([int(x) for x in t.shape])))
        if device != "cpu":
            torch.cuda.synchronize()
        t_deq += time.perf_counter() - t0
    return {"open_s": t_open, "read_s": t_read, "dequant_s": t_deq, "bytes": n_bytes}


def _fmt_gib(x: Any) -> str:
    return f"{x / 2**30:.2f}" if isinstance(x, (int, float)) else "-"


def _breakdown_rows(label: str, r: dict, device: str) -> list[Any]:
    pk = r["peak"]
    cuda_peak = r.get("gpu_peak_sampled") if HAS_CUDA else None
    return [label, device, f"{r['total_s']:.1f}", f"{r.get('load_reference', 0):.1f}",
            f"{r.get('load_candidate', 0):.1f}",
            f"{r.get('generate', 0):.1f}", f"{r.get('run_reference', 0):.1f}", f"{r.get('run_candidate', 0):.1f}",
            f"{r.get('compare', 0):.2f}", f"{r.get('expected_lane', 0):.1f}", f"{r.get('localize', 0):.1f}",
            f"{r.get('audit', 0):.1f}", f"{r['report_s']:.2f}",
            _fmt_gib(cuda_peak), _fmt_gib(r.get("host_rss_sampled") or pk.get("host_rss")),
            "/".join(m.get("mode", "?") for m in r["memory"])]


BREAKDOWN = ["run", "device", "total s", "load ref (read+dequant) s", "load cand s", "generate s", "ref pass s",
             "cand pass s", "compare s", "expected lane s", "localize s", "audit s", "report s", "peak GPU GiB",
             "peak host RSS GiB", "mode ref/cand"]


# --- (b) Gemma 3 270M ------------------------------------------------------------------------


def section_b(out: Path, gguf_path: Path | None, cand: Path | None, work: Path) -> str:
    if gguf_path is None or not gguf_path.is_file():
        return emit(out, "gemma.md", "(b) Gemma 3 270M end to end", ["skipped: pass --gguf PATH (and --cand DIR)"])
    ids = [2, 818, 5279, 529, 7001, 563]  # "The capital of France is" with BOS
    devices = ["cpu"] + (["cuda"] if HAS_CUDA else [])
    rows, prof_rows, user_rows = [], [], []
    for dev in devices:
        p = profile_reference_load(gguf_path, dev)
        prof_rows.append([dev, f"{p['open_s']:.2f}", f"{p['read_s']:.2f}", f"{p['dequant_s']:.2f}",
                          f"{p['bytes'] / 1e6:.0f}"])
        r = None
        if cand is not None and cand.is_dir():
            for label in ("bisect compare (ours), first", "bisect compare (ours), warm"):
                r = run_compare(gguf_path, cand, dev, tokens=ids, generate=8, out_dir=work / f"rep-{dev}")
                rows.append(_breakdown_rows(label, r, dev))
        try:
            user_rows.append(transformers_path(gguf_path, ids, dev))
        except Exception as e:  # noqa: BLE001 - report and continue
            user_rows.append([dev, f"failed: {type(e).__name__}: {str(e)[:80]}", "-", "-", "-"])
        if r is not None and len(user_rows[-1]) == 5 and not str(user_rows[-1][1]).startswith("failed"):
            hf_s = float(user_rows[-1][3])
            ratio("2", f"Gemma 3 270M bisect (warm) / transformers GGUF load + hidden states, {dev}",
                  r["total_s"] / hf_s, None, f"{r['total_s']:.1f} s vs {hf_s:.1f} s; {os.cpu_count()} CPUs, "
                  f"torch threads {torch.get_num_threads()}")
        if r is not None and dev == "cpu":
            ratio("2", "Gemma 3 270M bisect, warm, CPU: seconds / 15 s", r["total_s"] / 15, 1.0,
                  f"{r['total_s']:.1f} s (noisy on a shared machine: the ratio above is the measure)")
            ratio("2", "Gemma 3 270M bisect, CPU: peak host RSS / 3 GiB", r["host_rss_sampled"] / 2**30 / 3, 1.0,
                  f"{r['host_rss_sampled'] / 2**30:.2f} GiB (RssAnon + RssFile sampled every 2 ms)")
        print(prof_rows[-1], rows[-1:] , user_rows[-1], flush=True)
    lines = ["Reference load profile (GGUF open = header and metadata; read = tensor bytes from the page cache "
             "(and to the GPU); dequant = ours, impl auto):", ""]
    lines += table(["device", "open s", "read s", "dequant s", "tensor MB"], prof_rows)
    lines += ["", "End to end (`layerbisect.compare`, 6 prompt tokens + 8 generated, localize on, md+json report):",
              ""]
    lines += table(BREAKDOWN, rows) if rows else ["(no --cand given: end-to-end compare skipped)"]
    lines += ["", "What a user would otherwise do: transformers GGUF loading (dequantizes to FP32 on load) + one "
              "forward with `output_hidden_states=True` on the same 6 tokens (no comparison, no report):", ""]
    lines += table(["device", "load s", "forward s", "total s", "hidden states"], user_rows)
    return emit(out, "gemma.md", "(b) Gemma 3 270M end to end", lines)


def transformers_path(gguf_path: Path, ids: list[int], dev: str) -> list[Any]:
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                 dtype=torch.float32).eval().to(dev)
    if dev == "cuda":
        torch.cuda.synchronize()
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        o = m(torch.tensor([ids], device=dev), output_hidden_states=True)
    if dev == "cuda":
        torch.cuda.synchronize()
    t_fwd = time.perf_counter() - t0
    n = len(o.hidden_states)
    del m, o
    return [dev, f"{t_load:.2f}", f"{t_fwd:.2f}", f"{t_load + t_fwd:.2f}", n]


# --- (c), (d) synthetic ----------------------------------------------------------------------


def make_synthetic(work: Path, shape_name: str) -> dict[str, tuple[Path, float, int]]:
    shape = SHAPES[shape_name]
    made = {}
    for name, fn in {
        "Q8_0.gguf": lambda p: write_synthetic_gguf(p, shape, "Q8_0"),
        "Q4_0.gguf": lambda p: write_synthetic_gguf(p, shape, "Q4_0"),
        "FP8": lambda p: write_synthetic_ct(p, shape, "FP8"),
        "NVFP4": lambda p: write_synthetic_ct(p, shape, "NVFP4"),
    }.items():
        p = work / f"synthetic-{shape_name}-{name}"
        t0 = time.perf_counter()
        if not p.exists():
            fn(p)
        made[name] = (p, time.perf_counter() - t0, dir_bytes(p))
        QK_TEMPLATES.clear()
        print(f"wrote {p} ({made[name][2] / 1e9:.2f} GB) in {made[name][1]:.1f} s", flush=True)
    return made


def section_c(out: Path, made: dict, shape_name: str) -> str:
    dev = "cuda" if HAS_CUDA else "cpu"
    ids = list(range(1, 33))  # 32 tokens
    rows = []
    for ref, cand in (("Q8_0.gguf", "FP8"), ("Q4_0.gguf", "NVFP4")):
        if HAS_CUDA:
            torch.cuda.empty_cache()
        r = run_compare(made[ref][0], made[cand][0], dev, tokens=ids, generate=4)
        rows.append(_breakdown_rows(f"{ref} vs {cand}", r, dev))
        print(rows[-1], flush=True)
    files = [[k, f"{v[2] / 1e9:.2f}", f"{v[1]:.1f}"] for k, v in made.items()]
    lines = table(["file", "GB", "write s"], files) + [""] + table(BREAKDOWN, rows)
    return emit(out, "synthetic.md", f"(c) Synthetic {shape_name} model end to end", lines,
                [f"shape {SHAPES[shape_name]}; 32 prompt tokens + 4 generated; localize and audits on",
                 "random weights, unrelated between the sides: timings and memory only"])


def section_d(out: Path, made: dict, shape_name: str) -> str:
    from layerbisect.graph import estimate_fp32_bytes, layer_fp32_bytes
    from layerbisect.references.gguf_file import GGUFFile
    from layerbisect.references.gguf_model import read_spec

    dev = "cuda" if HAS_CUDA else "cpu"
    cfg = read_spec(GGUFFile(made["Q4_0.gguf"][0]))
    full, layer = estimate_fp32_bytes(cfg), layer_fp32_bytes(cfg)
    cap = 2 * layer
    ids = list(range(1, 33))
    rows = []
    runs = (("resident", dict(stream=False)), (f"streamed, cap {cap / 2**30:.2f} GiB", dict(memory_cap=cap)))
    for label, kw in runs:
        if HAS_CUDA:
            torch.cuda.empty_cache()
        r = run_compare(made["Q4_0.gguf"][0], made["NVFP4"][0], dev, tokens=ids, generate=1, **kw)
        mem = {m["side"]: m for m in r["memory"]}
        rows.append(_breakdown_rows(label, r, dev) + [
            _fmt_gib(mem["reference"].get("peak_live_weight_bytes")),
            _fmt_gib(mem["candidate"].get("peak_live_weight_bytes")),
        ])
        print(rows[-1], flush=True)
    lines = table(BREAKDOWN + ["ref peak live weights GiB", "cand peak live weights GiB"], rows)
    return emit(out, "streaming.md", f"(d) Streaming: {shape_name} model under a memory cap", lines, [
        f"model FP32 estimate {full / 2**30:.2f} GiB per side; one layer {layer / 2**30:.3f} GiB FP32; "
        f"cap {cap / 2**30:.2f} GiB per side (auto-selects streaming)",
        "peak live weights: exact count of weight bytes held by the streamer at any step (LiveBytes)",
        "streaming re-reads every layer per pass (generate, capture, localize, audit): time traded for memory",
    ])


# --- (f) bounded streaming at the 70B-layer shape ---------------------------------------------


def _status_kb() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("RssAnon", "RssFile", "RssShmem", "VmHWM"):
                out[k] = int(v.split()[0]) * 1024
    return out


class MemProbe:
    """Peak memory per pipeline stage (the pipeline's status messages name the stages).

    GPU: ``torch.cuda.max_memory_allocated`` per device, reset at each stage change. Host:
    ``RssAnon`` (anonymous: heap, tensors) and ``RssFile`` (mapped file pages) sampled every
    2 ms from /proc/self/status; tensors this large live for far longer than that.
    """

    def __init__(self) -> None:
        import threading

        self.stage = "start"
        self.gpu: dict[str, int] = {}
        self.anon: dict[str, int] = {}
        self.file: dict[str, int] = {}
        self.rss_peak = 0  # RssAnon + RssFile + RssShmem, sampled: this run's own peak (getrusage's never resets)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            st, stage = _status_kb(), self.stage
            self.anon[stage] = max(self.anon.get(stage, 0), st.get("RssAnon", 0))
            self.file[stage] = max(self.file.get(stage, 0), st.get("RssFile", 0) + st.get("RssShmem", 0))
            self.rss_peak = max(self.rss_peak, sum(st.get(k, 0) for k in ("RssAnon", "RssFile", "RssShmem")))
            self._stop.wait(0.002)

    def _close(self) -> None:
        if HAS_CUDA:
            peak = sum(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count()))
            self.gpu[self.stage] = max(self.gpu.get(self.stage, 0), peak)
            for i in range(torch.cuda.device_count()):
                torch.cuda.reset_peak_memory_stats(i)

    def say(self, stage: str) -> None:
        self._close()
        self.stage = stage.split(" (")[0].split(":")[0]

    def __enter__(self) -> MemProbe:
        if HAS_CUDA:
            for i in range(torch.cuda.device_count()):
                torch.cuda.reset_peak_memory_stats(i)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()
        self._stop.set()
        self._thread.join()


STAGE_ORDER = ["loading reference", "loading candidate", "greedy", "reference", "candidate", "capture passes",
               "comparing", "localizing", "auditing weights and scales"]


def _stage_key(k: str) -> int:
    return next((j for j, s in enumerate(STAGE_ORDER) if k.startswith(s)), len(STAGE_ORDER))


def write_synthetic_ct_depths(path: Path, shape: dict, scheme: str, depths: list[int]) -> dict[int, Path]:
    """The deepest checkpoint written once; shallower ones share its shards through symlinks (own config/index)."""
    deepest = max(depths)
    full = path / f"n{deepest}"
    if not (full / "config.json").exists():
        write_synthetic_ct(full, {**shape, "n_layers": deepest}, scheme)
    out = {deepest: full}
    wm = json.loads((full / "model.safetensors.index.json").read_text())["weight_map"]
    for n in depths:
        if n == deepest:
            continue
        d = path / f"n{n}"
        d.mkdir(parents=True, exist_ok=True)
        keep = {k: v for k, v in wm.items() if not k.startswith("model.layers.") or int(k.split(".")[2]) < n}
        for shard in set(keep.values()):
            if not (d / shard).exists():
                os.symlink(full / shard, d / shard)
        (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": keep}))
        (d / "config.json").write_text(json.dumps(_ct_config({**shape, "n_layers": n}, scheme), indent=1))
        out[n] = d
    return out


def section_f(out: Path, work: Path, shape_name: str, depths: list[int], generate: int = 2) -> str:
    """Streamed bisect (localization and audits on) at several depths: peak memory must not grow with depth."""
    from layerbisect.graph import layer_fp32_bytes
    from layerbisect.references.gguf_file import GGUFFile
    from layerbisect.references.gguf_model import read_spec

    shape = SHAPES[shape_name]
    dev = "cuda" if HAS_CUDA else "cpu"
    t0 = time.perf_counter()
    cands = write_synthetic_ct_depths(work / f"f-{shape_name.replace('/', '_')}-FP8", shape, "FP8", depths)
    ggufs = {}
    for n in depths:
        p = work / f"f-{shape_name.replace('/', '_')}-n{n}-Q8_0.gguf"
        if not p.exists():
            write_synthetic_gguf(p, {**shape, "n_layers": n}, "Q8_0")
        ggufs[n] = p
    QK_TEMPLATES.clear()
    t_write = time.perf_counter() - t0
    cfg = read_spec(GGUFFile(ggufs[depths[0]]))
    layer = layer_fp32_bytes(cfg)
    vd = 4 * cfg.vocab_size * cfg.d_model
    ends = vd * (1 if cfg.tied_embeddings else 2)  # embedding and head of one side, FP32
    cap = 2 * layer
    bound = 3 * layer + 2 * ends
    ids = list(range(1, 33))
    rows, stage_rows = [], []
    peaks: list[tuple[int, int, int, int]] = []
    for n in depths:
        if HAS_CUDA:
            torch.cuda.empty_cache()
        import layerbisect
        from layerbisect.pipeline import CompareOptions

        with MemProbe() as probe:
            t1 = time.perf_counter()
            rep = layerbisect.compare(ggufs[n], cands[n], options=CompareOptions(
                tokens=ids, generate=generate, device=dev, memory_cap=cap, localize=True), status=probe.say)
            total = time.perf_counter() - t1
        rt = rep.record.runtime
        mem = {m.side: m for m in rt.memory}
        gpu_peak = max(probe.gpu.values(), default=0)
        at = max(probe.gpu, key=probe.gpu.get) if probe.gpu else "-"
        rows.append([n, f"{total:.1f}", _fmt_gib(gpu_peak) if HAS_CUDA else "-", _fmt_gib(bound),
                     f"{gpu_peak / layer:.2f}" if HAS_CUDA else "-", at,
                     _fmt_gib(mem["reference"].peak_live_weight_bytes),
                     _fmt_gib(mem["candidate"].peak_live_weight_bytes),
                     _fmt_gib(max(probe.anon.values())), _fmt_gib(max(probe.file.values())),
                     "/".join(m.mode for m in rt.memory)])
        for st in sorted(set(probe.anon) | set(probe.gpu), key=_stage_key):
            stage_rows.append([n, st, _fmt_gib(probe.gpu.get(st)) if HAS_CUDA else "-", _fmt_gib(probe.anon.get(st)),
                               _fmt_gib(probe.file.get(st)), f"{rt.timings_s.get(_timing_of(st), float('nan')):.1f}"])
        print(rows[-1], flush=True)
        peaks.append((n, gpu_peak, max(probe.anon.values()), max(probe.file.values())))
        del rep
    (n0, g0, a0, f0), (n1, g1, a1, f1) = peaks[0], peaks[-1]
    if HAS_CUDA:
        for n, g, _, _ in peaks:
            ratio("1", f"streamed {shape_name}, {n} layers: peak GPU / (3 FP32 layers + embedding and head per side)",
                  g / bound, 1.0, f"{g / 2**30:.2f} of {bound / 2**30:.2f} GiB")
        ratio("1", f"streamed {shape_name}: peak GPU at {n1} layers / at {n0}", g1 / g0, 1.05,
              f"{g1 / 2**30:.2f} vs {g0 / 2**30:.2f} GiB")
    ratio("1", f"streamed {shape_name}: host anonymous peak at {n1} layers / at {n0}", a1 / a0, 1.1,
          f"{a1 / 2**30:.2f} vs {a0 / 2**30:.2f} GiB (file-mapped: {f1 / 2**30:.2f} vs {f0 / 2**30:.2f} GiB)")
    head = ["layers", "total s", "peak GPU GiB", "bound GiB", "peak / FP32 layer", "peak stage",
            "ref live weights GiB", "cand live weights GiB", "host anon peak GiB", "host file-mapped peak GiB",
            "mode ref/cand"]
    lines = table(head, rows) + ["", "Per stage (peak GPU reset at each stage; host peaks sampled every 2 ms):", ""]
    lines += table(["layers", "stage", "peak GPU GiB", "host anon GiB", "host file-mapped GiB", "stage s"],
                   stage_rows)
    return emit(out, "bounded.md", f"(f) Bounded streaming at the {shape_name} shape over depth", lines, [
        f"shape {shape}; Q8_0 GGUF vs FP8 (compressed-tensors) checkpoint, both streamed under a cap of "
        f"{cap / 2**30:.2f} GiB per side (2 FP32 layers); {len(ids)} prompt tokens + {generate} generated; "
        f"localization and audits on; files written in {t_write:.0f} s",
        f"one FP32 layer {layer / 2**30:.2f} GiB; embedding + head of one side {ends / 2**30:.2f} GiB FP32; "
        f"bound = 3 layers + embedding and head of each side = {bound / 2**30:.2f} GiB",
        "live weights: the streamer's exact count of weight bytes it holds (LiveBytes), per side",
    ])


# --- (g) two GPUs ----------------------------------------------------------------------------------


def section_g(out: Path, work: Path, shape_name: str, repeats: int = 2,
              devices: tuple[str, str] = ("cuda:0", "cuda:1")) -> str:
    """The synthetic model (Q8_0 vs FP8, localization and audits on) on one GPU and on two (reference on cuda:0,
    candidate on cuda:1), alternated in one process; the best of ``repeats`` runs of each. With one GPU (or none:
    the CPU): the jobs one after another against the same jobs in threads on that device
    (``CompareOptions.concurrent``: the interpreter lock and the device shared as on two GPUs, the device's work not
    split), and item 4's ratio is not taken."""
    if not HAS_CUDA:
        devices = ("cpu", "cpu")
    one_gpu = devices[0] == devices[1] or torch.cuda.device_count() < 2
    shape = SHAPES[shape_name]
    t0 = time.perf_counter()
    ref, cand = work / f"g-{shape_name}-Q8_0.gguf", work / f"g-{shape_name}-FP8"
    if not ref.exists():
        write_synthetic_gguf(ref, shape, "Q8_0")
    if not (cand / "config.json").exists():
        write_synthetic_ct(cand, shape, "FP8")
    QK_TEMPLATES.clear()
    t_write = time.perf_counter() - t0
    ids = list(range(1, 33))
    a, b = devices
    kind = "GPU" if a.startswith("cuda") else "CPU"
    configs = {f"one {kind} ({a})": dict(ref_device=a, cand_device=a),
               f"two GPUs (ref {a}, cand {b})": dict(ref_device=a, cand_device=b)}
    if one_gpu:
        configs = {f"one {kind} ({a})": dict(ref_device=a, cand_device=a),
                   f"one {kind} ({a}), jobs in threads": dict(ref_device=a, cand_device=a, concurrent=True)}
    order = [k for i in range(repeats) for k in (list(configs) if i % 2 == 0 else list(configs)[::-1])]
    best: dict[str, dict] = {}
    rows = []
    for label in order:
        if HAS_CUDA:
            torch.cuda.empty_cache()
        r = run_compare(ref, cand, a, tokens=ids, generate=4, **configs[label])
        rows.append(_breakdown_rows(label, r, a))
        print(rows[-1], flush=True)
        if label not in best or r["total_s"] < best[label]["total_s"]:
            best[label] = r
    one, two = (best[k]["total_s"] for k in configs)
    if one_gpu:
        ratio("4", f"{shape_name} Q8_0 vs FP8 on one {kind}: jobs in threads / one after another (best of {repeats} "
              "each; not item 4's two-GPU ratio)", two / one, None, f"{two:.1f} s vs {one:.1f} s")
    else:
        ratio("4", f"{shape_name} Q8_0 vs FP8, localization on: two GPUs / one GPU (best of {repeats} each)",
              two / one, 0.6, f"{two:.1f} s vs {one:.1f} s")
    title = f"One {kind}, jobs one after another vs in threads" if one_gpu else "One GPU vs two"
    return emit(out, "two_gpus.md", f"(g) {title}, synthetic {shape_name}", table(BREAKDOWN, rows), [
        f"shape {shape}; 32 prompt tokens + 4 generated; localization and audits on; runs alternate "
        f"({', '.join(order)}); files written in {t_write:.0f} s",
        "in threads (two devices, or concurrent on one): both sides load, generate and run their capture passes "
        "at once (two threads); then the "
        "expected lane (reference's device), the patching (candidate's device), the audits (weight pairs split "
        "over both) and the comparison run at once (layerbisect/jobs.py): their columns overlap",
    ])


def _timing_of(stage: str) -> str:
    return {"loading reference": "load_reference", "loading candidate": "load_candidate", "greedy": "generate",
            "reference": "run_reference", "candidate": "run_candidate", "capture passes": "run_both_wall",
            "comparing": "compare", "localizing": "localize", "auditing weights and scales": "audit",
            "expected lane": "expected_lane"}.get(
        stage, stage)


# --- (e) GEMM --------------------------------------------------------------------------------


def section_e(out: Path, repeats: int) -> str:
    import gpu_kernels

    if HAS_CUDA:
        shapes = [(16, 4096, 4096), (32, 4096, 14336), (4096, 4096, 4096), (8192, 8192, 8192)]
        check = (256, 1024, 2048)
    else:
        shapes, check = [(16, 1024, 1024), (256, 1024, 1024)], (64, 256, 512)
    lines = gpu_kernels.run(shapes, check, repeats)
    return emit(out, "gemm.md", "(e) FP8 / NVFP4 GEMM: our kernels vs torch._scaled_mm", lines[1:],
                ["via benchmarks/gpu_kernels.py (checks first, then TFLOP/s = 2MNK / median time)"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="directory for the markdown tables")
    ap.add_argument("--sections", default="a,b,c,d,e,f,g")
    ap.add_argument("--gguf", type=Path, default=None, help="Gemma 3 270M GGUF for (b)")
    ap.add_argument("--cand", type=Path, default=None, help="quantized Gemma 3 270M checkpoint dir for (b)")
    ap.add_argument("--shape", choices=list(SHAPES), default="8b" if HAS_CUDA else "small")
    ap.add_argument("--size", type=int, default=4096, help="(a): NxN elements per type")
    ap.add_argument("--f-shape", choices=list(SHAPES), default="70b-layer" if HAS_CUDA else "70b-layer/8",
                    help="(f): the layer shape streamed at several depths")
    ap.add_argument("--depths", default="2,6,12", help="(f): the depths")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--work", type=Path, default=None, help="where synthetic files go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic files")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    sections = {s.strip() for s in args.sections.split(",")}
    work = args.work or Path(tempfile.mkdtemp(prefix="layerbisect-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    texts: list[str] = [f"# layerbisect benchmarks\n\n{env_line()}\n"]
    summary: list[str] = []
    t_all = time.perf_counter()

    def step(name: str, fn) -> None:
        t0 = time.perf_counter()
        try:
            texts.append(fn())
            summary.append(f"({name}) ok in {time.perf_counter() - t0:.0f} s")
        except Exception as e:  # noqa: BLE001 - one failing section must not lose the others
            import traceback

            traceback.print_exc()
            summary.append(f"({name}) FAILED after {time.perf_counter() - t0:.0f} s: {type(e).__name__}: {e}")

    try:
        if "a" in sections:
            step("a", lambda: section_a(args.out, args.size, args.repeats))
        if "b" in sections:
            step("b", lambda: section_b(args.out, args.gguf, args.cand, work))
        made: dict = {}
        if {"c", "d"} & sections:
            step("synthetic files", lambda: (made.update(make_synthetic(work, args.shape)) or ""))
        if "c" in sections and made:
            step("c", lambda: section_c(args.out, made, args.shape))
        if "d" in sections and made:
            step("d", lambda: section_d(args.out, made, args.shape))
        if "e" in sections:
            step("e", lambda: section_e(args.out, 20 if HAS_CUDA else 3))
        if "g" in sections:
            step("g", lambda: section_g(args.out, work, args.shape))
        if "f" in sections:
            depths = [int(x) for x in args.depths.split(",")]
            step("f", lambda: section_f(args.out, work, args.f_shape, depths))
        step("ratios", lambda: ratios_section(args.out))
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    (args.out / "BENCHMARKS-run.md").write_text("\n".join(texts))
    print("\n# summary\n" + "\n".join(summary) + f"\ntotal {time.perf_counter() - t_all:.0f} s; tables in {args.out}")
    return 0 if all("FAILED" not in s for s in summary) else 1


if __name__ == "__main__":
    raise SystemExit(main())
