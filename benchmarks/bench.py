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

SHAPES = {
    "8b": dict(n_layers=32, d=4096, ff=14336, heads=32, kv=8, vocab=128256),
    "small": dict(n_layers=4, d=512, ff=1792, heads=8, kv=2, vocab=8192),
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


def section_a(out: Path, size: int, repeats: int) -> str:
    from gguf import GGMLQuantizationType as QT

    from layerbisect.kernels import gguf_triton
    from layerbisect.references.gguf_dequant import dequantize

    types = [QT.Q8_0, QT.Q4_0, QT.Q5_0, QT.Q4_K, QT.Q5_K, QT.Q6_K, QT.Q2_K, QT.BF16, QT.F16]
    rows, cols = size, size
    out_bytes = rows * cols * 4
    cpu_copy = db.copy_bandwidth("cpu", out_bytes, repeats)
    gpu_copy = db.copy_bandwidth("cuda", out_bytes, 20) if HAS_CUDA else float("nan")
    res = []
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
    header = ["type", "in MB", "Triton GPU GB/s (copy %)", "torch GPU GB/s (copy %)", "torch CPU GB/s (copy %)",
              "gguf-py GB/s", "Triton x gguf-py", "torch GPU x gguf-py", "CPU x gguf-py", "Triton == torch bits"]
    notes = [f"{rows}x{cols} elements per type; GB/s = (input + FP32 output bytes) / median time; copy % relative "
             f"to dst.copy_(src) of an output-sized buffer (CPU {cpu_copy:.1f} GB/s"
             + (f", GPU {gpu_copy:.0f} GB/s)" if HAS_CUDA else ")"),
             "BF16/F16 are casts (torch path under impl=auto); gguf-py is single-threaded numpy"]
    return emit(out, "dequant.md", "(a) GGUF dequantization throughput", table(header, res), notes)


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
                memory_cap: int | None = None, localize: bool = True, out_dir: Path | None = None) -> dict:
    import layerbisect
    from layerbisect.pipeline import CompareOptions

    t0 = time.perf_counter()
    rep = layerbisect.compare(ref, cand, options=CompareOptions(
        tokens=tokens, generate=generate, device=device, stream=stream, memory_cap=memory_cap, localize=localize))
    t_cmp = time.perf_counter() - t0
    t0 = time.perf_counter()
    if out_dir is not None:
        rep.save(out_dir, ["md", "json"], overwrite=True)
    t_rep = time.perf_counter() - t0
    rt = rep.record.runtime.to_dict()
    return {"total_s": t_cmp + t_rep, "report_s": t_rep, **rt["timings_s"], "peak": rt["peak_memory_bytes"],
            "memory": rt["memory"]}


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
    cuda_peak = max((v for k, v in pk.items() if k.startswith("cuda:")), default=None)
    return [label, device, f"{r['total_s']:.1f}", f"{r.get('load_reference', 0):.1f}",
            f"{r.get('load_candidate', 0):.1f}",
            f"{r.get('generate', 0):.1f}", f"{r.get('run_reference', 0):.1f}", f"{r.get('run_candidate', 0):.1f}",
            f"{r.get('compare', 0):.2f}", f"{r.get('localize', 0):.1f}", f"{r['report_s']:.2f}",
            _fmt_gib(cuda_peak), _fmt_gib(pk.get("host_rss")),
            "/".join(m.get("mode", "?") for m in r["memory"])]


BREAKDOWN = ["run", "device", "total s", "load ref (read+dequant) s", "load cand s", "generate s", "ref pass s",
             "cand pass s", "compare s", "localize+audit s", "report s", "peak GPU GiB", "peak host RSS GiB",
             "mode ref/cand"]


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
        if cand is not None and cand.is_dir():
            r = run_compare(gguf_path, cand, dev, tokens=ids, generate=8, out_dir=work / f"rep-{dev}")
            rows.append(_breakdown_rows("bisect compare (ours)", r, dev))
        try:
            user_rows.append(transformers_path(gguf_path, ids, dev))
        except Exception as e:  # noqa: BLE001 - report and continue
            user_rows.append([dev, f"failed: {type(e).__name__}: {str(e)[:80]}", "-", "-", "-"])
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
    ap.add_argument("--sections", default="a,b,c,d,e")
    ap.add_argument("--gguf", type=Path, default=None, help="Gemma 3 270M GGUF for (b)")
    ap.add_argument("--cand", type=Path, default=None, help="quantized Gemma 3 270M checkpoint dir for (b)")
    ap.add_argument("--shape", choices=list(SHAPES), default="8b" if HAS_CUDA else "small")
    ap.add_argument("--size", type=int, default=4096, help="(a): NxN elements per type")
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
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    (args.out / "BENCHMARKS-run.md").write_text("\n".join(texts))
    print("\n# summary\n" + "\n".join(summary) + f"\ntotal {time.perf_counter() - t_all:.0f} s; tables in {args.out}")
    return 0 if all("FAILED" not in s for s in summary) else 1


if __name__ == "__main__":
    raise SystemExit(main())
