"""The GGUF weight audit's pure parts: block outliers, type-relative tensor outliers, summaries."""

from __future__ import annotations

import math

import numpy as np
import torch
from gguf import GGMLQuantizationType as QT
from gguf import quants

from layerbisect.audit.gguf_types import (
    bits_per_weight,
    block_outliers,
    cand_type_summary,
    judge_tensors,
    layer_table,
    sqnr_db,
    type_summary,
)
from layerbisect.audit.weights import TensorAudit
from layerbisect.references.gguf_dequant import dequantize

SEED = 11


def _q8(w: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    """gguf-py's own Q8_0 quantizer: the bytes and their dequantization."""
    q = quants.quantize(w.numpy(), QT.Q8_0)
    return q, dequantize(q, QT.Q8_0)


def test_quantization_noise_has_no_outlier_block_and_a_changed_scale_does() -> None:
    g = torch.Generator().manual_seed(SEED)
    w = torch.randn(64, 256, generator=g) * torch.logspace(-2, 0, 64).reshape(-1, 1)  # rows of very different scale
    q, deq = _q8(w)
    assert block_outliers(w, deq, "Q8_0") is None
    bad = q.copy()
    blk = bad.reshape(64, 8, 34)
    blk[5, 3, 0:2] = np.frombuffer(np.float16(np.frombuffer(blk[5, 3, 0:2].tobytes(), np.float16)[0] * 4).tobytes(),
                                   np.uint8)  # the f16 scale d of row 5, block 3, times 4
    found = block_outliers(w, dequantize(bad, QT.Q8_0), "Q8_0")
    assert found is not None and found["n_bad"] == 1 and found["block_size"] == 32
    assert (found["worst"][0]["row"], found["worst"][0]["block"], found["worst"][0]["cols"]) == (5, 3, [96, 128])
    assert found["worst"][0]["rel_err"] > 2.5, found


def _row(name: str, layer: int, op: str, ref: str, cand: str, sq: float) -> TensorAudit:
    r = TensorAudit(name, "linear", layer, op, cand, (256, 256), ref_scheme=ref)
    r.sqnr_db, r.rel_err = sq, 10 ** (-sq / 20) if math.isfinite(sq) else 0.0
    return r


def test_tensor_outliers_are_judged_against_their_own_type() -> None:
    rows = [_row(f"layers.{i}.mlp.up_proj.weight", i, "mlp.up_proj", "F32", "Q2_K", 10.5 + 0.1 * i) for i in range(6)]
    rows += [_row(f"layers.{i}.mlp.down_proj.weight", i, "mlp.down_proj", "F32", "Q6_K", 35.0) for i in range(6)]
    rows[8].sqnr_db = 27.0  # 8 dB below its Q6_K peers, still far better than any Q2_K tensor
    assert [r.name for r in judge_tensors(rows)] == ["layers.2.mlp.down_proj.weight"]
    assert rows[8].evidence["group"] == "F32→Q6_K" and rows[8].evidence["group_median_sqnr_db"] == 35.0
    lone = [_row("layers.0.attn.q_proj.weight", 0, "attn.q_proj", "F32", "Q4_K", 1.0)]
    assert judge_tensors(lone) == lone  # below the floor: no peers needed


def test_summaries_rank_types_and_fill_layers() -> None:
    rows = [_row(f"layers.{i}.mlp.up_proj.weight", i, "mlp.up_proj", "Q4_K", "Q2_K", 10.0) for i in range(2)]
    rows += [_row(f"layers.{i}.mlp.down_proj.weight", i, "mlp.down_proj", "Q6_K", "Q6_K", math.inf) for i in range(2)]
    mods = [{"module": f"layers.{i}.mlp.up_proj", "rel_l2": 0.3} for i in range(2)]
    mods += [{"module": f"layers.{i}.mlp.down_proj", "rel_l2": 0.0} for i in range(2)]
    by = type_summary(rows, mods)
    assert [d["cand_type"] for d in by] == ["Q2_K", "Q6_K"]
    assert by[0]["mean_module_out_rel_l2"] == 0.3 and by[1]["identical"] == 2
    assert cand_type_summary(rows, mods)[0]["from"] == "Q4_K×2"
    table = layer_table(rows, mods, [{"layer": 0, "local_rel_l2": 0.1}])
    assert table[0]["mlp.up_proj"] == "Q2_K 10.0" and table[0]["mlp.down_proj"] == "Q6_K ="
    assert table[0]["costliest_type"].startswith("Q2_K") and table[0]["local_rel_l2"] == 0.1


def test_small_helpers() -> None:
    assert bits_per_weight("Q4_K") == 4.5 and bits_per_weight("Q8_0") == 8.5 and bits_per_weight("IQ3_S") == 3.4375
    x = torch.ones(10)
    assert sqnr_db(x, x) == math.inf and abs(sqnr_db(x, 1.1 * x) - 20.0) < 1e-5  # 1.1 in float32
