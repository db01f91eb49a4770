"""GGUF vs GGUF on a real model: a reference GGUF against lower quants of it made by llama.cpp's quantizer.

Writes the measured tables of docs/GGUF_VS_GGUF.md (default: the bundled Gemma 3 270M Q4_K_M as the
reference, requantized to Q3_K_M, Q2_K and IQ3_M with ``llama_model_quantize --allow-requantize``):

    python scripts/gguf_vs_gguf.py --out docs/GGUF_VS_GGUF.md

Per candidate: ``layerbisect.compare`` with every stage on (per-layer table, per-type weight error, llama.cpp
KLD statistics); for ``--restore`` candidates the restore search (which tensors to keep at the reference's
type), then the file llama.cpp writes with those tensors kept (``--tensor-type``), measured again; and
llama.cpp's own KLD on the same tokens (its logits through llama-cpp-python), beside ours.

Needs the llama.cpp producers (``layerbisect.producers.llamacpp``) and the compiled llama-cpp-python. CPU only;
about 25 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

# An original passage (no copyrighted text), long enough for ~300 scored positions.
TEXT = (
    "The river town woke slowly in the cold months. Before the sun cleared the hills, the baker had already "
    "lit the ovens, and the smell of bread drifted over the square where the market would open at eight. "
    "Fishermen checked their nets on the stone quay, counting the torn squares and arguing, as they did every "
    "morning, about the weather and the price of diesel. The school bell rang at half past eight. Children ran "
    "across the bridge with their bags bouncing, and the old ferry, which had not carried a passenger in years, "
    "creaked on its moorings as the current pushed against it.\n\n"
    "In the library above the post office, a retired engineer was writing a history of the town's water mill. "
    "The mill had ground wheat for three centuries before a flood in 1911 broke its wheel. He had found the "
    "miller's ledgers in a box of tax records: every sack weighed, every debt noted in a careful hand, and in "
    "the margins, small drawings of birds. The engineer thought the drawings were the most interesting part. "
    "They showed herons, kingfishers and a pair of swans that seemed to return every spring, year after year, "
    "long after any swan could have lived.\n\n"
    "By noon the market was crowded. A woman sold honey from her own hives, explaining to anyone who asked that "
    "the dark jars came from the chestnut trees and the pale ones from clover. A boy played the violin badly but "
    "with great confidence, and people gave him coins anyway. When the rain began in the afternoon, the square "
    "emptied in minutes, and only the pigeons stayed, walking in circles around the puddles as if they were "
    "looking for something they had lost."
)


def _fmt(x: Any, nd: int = 4) -> str:
    if isinstance(x, float):
        if x == math.inf:
            return "="
        if not math.isfinite(x):
            return "-"
        return f"{x:.{nd}g}"
    return str(x)


def md_table(rows: list[dict[str, Any]], cols: list[str] | None = None, nd: int = 4) -> str:
    if not rows:
        return "(none)\n"
    cols = cols or list(dict.fromkeys(k for r in rows for k in r))
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(_fmt(r.get(c, ""), nd) for c in cols) + " |" for r in rows]
    return "\n".join(out) + "\n"


def llamacpp_logits(path: Path, ids: list[int]) -> np.ndarray:
    """llama.cpp's own logits for ``ids`` (llama-cpp-python, CPU), (T, V) float32."""
    from llama_cpp import Llama

    m = Llama(model_path=str(path), n_ctx=max(512, len(ids) + 8), logits_all=True, verbose=False, n_threads=2)
    m.reset()
    m.eval(ids)
    out = np.array(m.scores[: len(ids)], dtype=np.float32)
    del m
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", type=Path, default=None, help="reference GGUF (default: the bundled Gemma 3 270M Q4_K_M)")
    ap.add_argument("--quant", action="append", default=None, help="llama.cpp file types to requantize to")
    ap.add_argument("--restore", action="append", default=None, help="candidates to run the restore search on")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path("docs/GGUF_VS_GGUF.md"))
    ap.add_argument("--label", default="Q4_K_M", help="what to call the reference in headings")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    a = ap.parse_args(argv)

    import torch

    import layerbisect
    from layerbisect.api import open_runner
    from layerbisect.comparison.kld import kld_stats
    from layerbisect.pipeline import CompareOptions
    from layerbisect.producers.cache import bundled_gguf
    from layerbisect.producers.gguf_quants import fallbacks, quantized_gguf
    from layerbisect.references.gguf_file import GGUFFile
    from layerbisect.restore import Scorer, restore_search
    from layerbisect.tokenizer import tokenizer_from_gguf

    torch.set_num_threads(2)
    ref = a.ref or bundled_gguf()
    quants = a.quant or ["Q3_K_M", "Q2_K", "IQ3_M"]
    restore = a.restore or ["Q2_K"]
    t_all = time.time()
    raw: dict[str, Any] = {"ref": str(ref), "candidates": {}}
    md: list[str] = []
    ref_logits_cpp: np.ndarray | None = None
    ref_file = GGUFFile(ref)
    ids = tokenizer_from_gguf(ref_file.reader, str(ref)).encode(TEXT)
    md.append(f"Reference: `{Path(ref).name}` ({len(ids)} tokens of text, {len(ids) - 1} scored positions). "
              "Reference tensor types: "
              + ", ".join(f"{t} ×{n}" for t, n in sorted(ref_file.type_counts().items())) + ".\n")
    for ft in quants:
        t0 = time.time()
        cand = quantized_gguf(ref, ft, allow_requantize=True)
        qlog = cand.with_name("quantize.log")
        t_q = time.time() - t0
        print(f"[{ft}] quantized in {t_q:.0f} s: {cand}", file=sys.stderr)
        t0 = time.time()
        rep = layerbisect.compare(ref, cand, options=CompareOptions(prompt=None, tokens=ids, generate=0))
        t_c = time.time() - t0
        print(f"[{ft}] compared in {t_c:.0f} s", file=sys.stderr)
        sec = {s.key: s for s in rep.sections}
        q = rep.record.quantization
        entry: dict[str, Any] = {
            "path": str(cand), "quantize_s": t_q, "compare_s": t_c, "fallbacks": fallbacks(qlog),
            "kld": rep.record.kld.to_dict(),
            "types": {"by_type": sec["gguf-types"].records(), "by_pair": sec["gguf-type-pairs"].records()},
            "tensor_types": GGUFFile(cand).type_counts(),
            "linear_schemes": {x.scheme: x.modules for x in q.linear_schemes} if q is not None else {},
        }
        layers = sec["gguf-layers"].records()
        local = {r.layer: r for r in rep.record.localization.layers}
        for r in layers:
            lr = local.get(r["layer"])
            r["acc_cosine"] = lr.accumulated_cosine if lr is not None else math.nan
        entry["layers"] = layers
        del rep
        gc.collect()
        # llama.cpp's own KLD on the same tokens: its logits, its dot products
        if ref_logits_cpp is None:
            ref_logits_cpp = llamacpp_logits(Path(ref), ids)
        cand_cpp = llamacpp_logits(cand, ids)
        cpp = kld_stats(torch.from_numpy(ref_logits_cpp), torch.from_numpy(cand_cpp), ids)
        entry["kld_llamacpp_logits"] = cpp.to_dict() if cpp is not None else None
        if ft in restore:
            ref_runner = open_runner(ref).activate()
            cand_runner = open_runner(cand, role="candidate").activate()
            t0 = time.time()
            res = restore_search(ref_runner, cand_runner, ids, steps=a.steps, pool=8,
                                 status=lambda s, ft=ft: print(f"[{ft}] {s}", file=sys.stderr))
            entry["restore"] = res.to_dict() | {"seconds": time.time() - t0}
            print(f"[{ft}] restore search: {res.passes} passes in {time.time() - t0:.0f} s", file=sys.stderr)
            keep = res.keep(0.5)
            info = {u.name: u for u in res.units}
            kept = {re.escape(info[r["unit"]].tensor.removesuffix(".weight")): info[r["unit"]].ref_type
                    for r in keep if info[r["unit"]].tensor}
            mixed = quantized_gguf(ref, ft, tensor_types=kept, allow_requantize=True)
            other = open_runner(mixed, role="candidate").activate()
            measured = Scorer(ref_runner, other, ids, {})(frozenset())
            entry["validation"] = {"kept": kept, "predicted_mean_kld": keep[-1]["mean_kld"],
                                   "measured_mean_kld": measured.mean_kld, "file": str(mixed),
                                   "size_candidate": cand.stat().st_size, "size_mixed": mixed.stat().st_size}
            del cand_runner, other, ref_runner
            gc.collect()
        raw["candidates"][ft] = entry
        md += _section(ft, entry, a.label)
    raw["seconds"] = time.time() - t_all
    a.out.write_text(_doc(md, raw, quants))
    if a.json:
        a.json.write_text(json.dumps(raw, indent=1, default=str))
    print(f"wrote {a.out} in {raw['seconds']:.0f} s", file=sys.stderr)
    return 0


def _count(types: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in types.values():
        out[t] = out.get(t, 0) + 1
    return out


def _kld_rows(ours: dict[str, Any], cpp: dict[str, Any] | None) -> list[dict[str, Any]]:
    rows = []
    for label, key in (("Mean KLD", "mean_kld"), ("Maximum KLD", None), ("99.0% KLD", "99.0%"),
                       ("Median KLD", "Median"), ("Same top p (%)", "same_top_p"), ("RMS Δp (%)", "rms_dp"),
                       ("Mean ln(PPL(Q)/PPL(base))", "ln_ppl_ratio")):
        def get(d: dict[str, Any] | None, key: str | None = key) -> float:
            if d is None:
                return math.nan
            if key is None:
                return d["kld_percentiles"]["Maximum"]
            if key in d:
                v = d[key]
                return 100 * v if key in ("same_top_p", "rms_dp") else v
            return d["kld_percentiles"][key]

        rows.append({"statistic": label, "layerbisect (FP32 dequant)": get(ours), "llama.cpp logits": get(cpp)})
    return rows


def _section(ft: str, e: dict[str, Any], ref_label: str) -> list[str]:
    out = [f"\n## {ref_label} → {ft}\n"]
    out.append("Candidate tensor types: " + ", ".join(f"{t} ×{n}" for t, n in sorted(e["tensor_types"].items()))
               + f". llama.cpp fell back on {len(e['fallbacks'])} tensors (rows not a multiple of 256), "
               + ("e.g. `" + e["fallbacks"][0] + "`" if e["fallbacks"] else "none") + ".\n")
    out.append("\n### KL divergence (llama-perplexity --kl-divergence units)\n")
    out.append(md_table(_kld_rows(e["kld"], e.get("kld_llamacpp_logits")), nd=5))
    out.append("\n### Weight error per candidate type\n")
    out.append(md_table(e["types"]["by_type"], ["cand_type", "tensors", "bpw", "from", "median_sqnr_db",
                                               "min_sqnr_db", "mean_module_out_rel_l2"]))
    out.append("\n### Per layer (type and weight SQNR in dB per tensor; '=' identical to the reference)\n")
    cols = ["layer", "attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
            "mlp.down_proj", "local_rel_l2", "acc_cosine", "costliest_type"]
    out.append(md_table(e["layers"], cols))
    r = e.get("restore")
    if r:
        base = r["baseline"]
        out.append(f"\n### Which tensors to keep at the reference's type (restore search, {r['passes']} passes, "
                   f"{r['seconds']:.0f} s)\n")
        out.append(f"Nothing restored: mean KLD {base['mean_kld']:.5f}, same top p {100 * base['same_top_p']:.2f}%.\n")

        def pct(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
            return [x | {"recovered %": 100 * x["recovered"], "added MiB": x["added_bytes"] / 2**20} for x in rows]

        out.append("\nEach candidate type restored alone:\n\n")
        out.append(md_table(pct(r["types"], ""), ["cand_type", "ref_types", "tensors", "added MiB", "mean_kld",
                                                  "recovered %"]))
        out.append("\nGreedy over tensor roles (cumulative):\n\n")
        out.append(md_table(pct(r["roles"], ""), ["role", "types", "tensors", "added MiB", "mean_kld",
                                                  "recovered %"]))
        out.append("\nEach layer restored alone:\n\n")
        out.append(md_table(pct(r["layers"], ""), ["layer", "types", "tensors", "added MiB", "mean_kld",
                                                   "recovered %"]))
        out.append("\nGreedy over single tensors (cumulative; `alone`: that tensor restored by itself):\n\n")
        out.append(md_table(pct(r["path"], ""), ["tensor", "type", "alone", "added MiB", "mean_kld", "recovered %"]))
        v = e["validation"]
        args = " ".join(f"--tensor-type '{k}={t.lower()}'" for k, t in v["kept"].items())
        out.append(f"\nChecked with llama.cpp: `llama-quantize --allow-requantize {args} REF {ft}` writes a file of "
                   f"{v['size_mixed'] / 2**20:.2f} MiB (plain {ft}: {v['size_candidate'] / 2**20:.2f} MiB) whose "
                   f"measured mean KLD is {v['measured_mean_kld']:.6f}; predicted {v['predicted_mean_kld']:.6f}.\n")
    return out


def _doc(md: list[str], raw: dict[str, Any], quants: list[str]) -> str:
    head = f"""# GGUF vs GGUF: Gemma 3 270M Q4_K_M against lower quants of it

`bisect REF.gguf CAND.gguf` compares two GGUFs of one model layer by layer and tensor by tensor
(README, "GGUF vs GGUF"). Here the bundled Gemma 3 270M Q4_K_M is the reference and llama.cpp's own
quantizer (`llama_model_quantize`, what `llama-quantize --allow-requantize` runs; llama-cpp-python
0.3.36, llama.cpp 0c1e570) requantizes it to {", ".join(quants)}. IQ3_M needs no importance matrix
(its tensors are IQ3_S); IQ3_XXS and the IQ2/IQ1 types do and are not made here. Numbers from

    python scripts/gguf_vs_gguf.py --out docs/GGUF_VS_GGUF.md

(CPU, 2 cores, {raw['seconds'] / 60:.0f} minutes in all). What each table is:

- **KL divergence**: llama.cpp's `--kl-divergence` statistics (docs/METRICS.md) over the scored positions
  of one text, from our FP32 dequantization of both files (`layerbisect`), and from llama.cpp's own
  logits of both files on the same tokens (llama-cpp-python; llama.cpp's quantized dot products, the
  numbers `llama-perplexity` would print for this text).
- **Weight error per candidate type**: SQNR = 10·log10(‖ref‖²/‖cand−ref‖²) per tensor against the
  reference's own (Q4_K_M) tensors; `mean_module_out_rel_l2`: each linear's own output error on the
  reference's activations (activation patching).
- **Per layer**: each weight's candidate type and SQNR, the layer's local error (its candidate run on
  the reference's input), the accumulated residual cosine, and the type whose linears add the most error
  there.
- **Which tensors to keep**: the restore search (`--restore-search`; `layerbisect/restore.py`): each type,
  layer, role and tensor restored to the reference's bits, one logits pass each, scored by mean KLD;
  then a greedy path over single tensors. Restoring a tensor is exactly what `llama-quantize
  --allow-requantize --tensor-type NAME=<its reference type>` writes (an override equal to the current
  type copies the bytes), and the last line of each such section checks that with a real file.

"""
    return head + "\n".join(md) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
