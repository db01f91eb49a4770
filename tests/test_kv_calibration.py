"""KV-cache scale calibration on a chosen first pass (seed 003) and its diagnosis; fused-shard scale fits.

Fast: a random tiny hybrid graph built from a spec (no files), and the pure diagnosis helpers
on synthetic captures. The end-to-end cases on a real llama.cpp GGUF and llmcompressor
checkpoints are in tests/faults/ (kv_calibration_garbage_state, fused_shard_scale).
"""

from __future__ import annotations

import math

import pytest
import torch

from layerbisect.audit.kv_calibration import calibration_findings, calibration_rows
from layerbisect.audit.weights import shard_fault, shard_fits
from layerbisect.capture import Captures
from layerbisect.errors import InputError
from layerbisect.graph import Decoder, KVCache
from layerbisect.kv_cache import FP8KVQuant
from layerbisect.kv_calibration import calibrate, calibration_ids, garbage_state
from layerbisect.spec import (
    AttentionSpec,
    DenseFFNSpec,
    GatedDeltaNetSpec,
    LayerSpec,
    ModelSpec,
    Rope,
)

DN = GatedDeltaNetSpec(n_k_heads=2, n_v_heads=4, head_k_dim=8, head_v_dim=8)
ATT = AttentionSpec(n_heads=2, n_kv_heads=1, head_dim=8, rope=Rope(dim=4), scale=8 ** -0.5, qk_norm=True,
                    output_gate=True)
KINDS = [ATT, DN, DN, ATT]  # an attention layer before any recurrent one, one behind two
PROMPT = list(range(3, 15))


@pytest.fixture(scope="module")
def model() -> Decoder:
    spec = ModelSpec(family="qwen35", arch="qwen35", vocab_size=40, d_model=16,
                     layers=tuple(LayerSpec(i, m, DenseFFNSpec(32)) for i, m in enumerate(KINDS)), hf_norm_offset=1.0)
    torch.manual_seed(0)
    m = Decoder(spec).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_(torch.randn(p.shape) * (0.5 if p.ndim > 1 else 0.3) + (1.0 if name.endswith("norm.weight") else 0))
    return m


def _calibrated(model: Decoder, mode: str):
    kvq = FP8KVQuant(source="calibrate")
    model.set_kv_quant(kvq)
    try:
        return calibrate(model, kvq, PROMPT, mode), kvq
    finally:
        model.set_kv_quant(None)


def test_calibration_inputs():
    assert calibration_ids("zeros", PROMPT, 40) == [0] * len(PROMPT)
    assert calibration_ids("prompt", PROMPT, 40) == PROMPT == calibration_ids("garbage-state", PROMPT, 40)
    r = calibration_ids("random", PROMPT, 40, seed=1)
    assert r == calibration_ids("random", PROMPT, 40, seed=1) != PROMPT and max(r) < 40
    with pytest.raises(InputError, match="--kv-calibration"):
        calibration_ids("dummy", PROMPT, 40)


def test_prompt_calibration_is_the_first_pass_amax(model):
    rec, kvq = _calibrated(model, "prompt")
    caps = Captures()
    model.rec.captures = caps
    model(torch.tensor(PROMPT), 0, KVCache())
    model.rec.captures = None
    assert kvq.k_scale[0] == pytest.approx(float(caps["layers.0.attn.k"].abs().max()) / 448, rel=1e-6)
    # layer 3 calibrated behind layer 0's FP8 cache: its input differs by FP8 noise only (measured 9% on the amax)
    assert kvq.k_scale[3] == pytest.approx(float(caps["layers.3.attn.k"].abs().max()) / 448, rel=0.15)
    lay = {c.layer: c for c in rec.layers}
    assert lay[1].kind == "recurrent" and lay[1].state_initial == 0.0 and 0 < lay[1].state_max < 1e3


def test_garbage_state_poisons_only_attention_layers_downstream(model):
    rec, kvq = _calibrated(model, "garbage-state")
    assert math.isfinite(kvq.k_scale[0]) and math.isfinite(kvq.v_scale[0])  # nothing recurrent upstream of it
    assert not math.isfinite(kvq.k_scale[3])  # uninitialized bits: NaN/Inf reach the next attention layer
    lay = {c.layer: c for c in rec.layers}
    assert not math.isfinite(lay[1].state_initial) or lay[1].state_initial > 1e3
    st = garbage_state(DN, seed=3, kind="finite")
    assert st.ssm.shape == (4, 8, 8) and st.conv.shape == (3, DN.conv_dim) and float(st.ssm.std()) > 50


def test_diagnosis_names_the_attention_layer_and_the_recurrent_layer_upstream(model):
    rec, _ = _calibrated(model, "garbage-state")
    ref = Captures()
    model.rec.captures = ref
    model(torch.tensor(PROMPT), 0, KVCache())  # the reference's own pass on the prompt, clean state
    model.rec.captures = None
    rows = calibration_rows(rec, ref)
    far = [r["point"] for r in rows if r.get("far_off")]
    assert far and far[0] == "layers.3.attn.k" and "layers.0.attn.k" not in far
    assert [r["layer"] for r in rows if r.get("garbage")] == [1, 2]
    (f,) = calibration_findings(rec, rows)
    assert (f.kind, f.layer, f.op, f.evidence["recurrent_layer"]) == ("kv_calibration", 3, "attn.k", 2)
    assert "recurrent layer 2 upstream" in f.title
    clean, _ = _calibrated(model, "prompt")
    assert calibration_findings(clean, calibration_rows(clean, ref)) == []


def test_shard_fit_names_the_rows_of_a_scale_applied_to_the_first_shard_only():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(24, 16, generator=g)
    shards = (("q", 0, 8), ("k", 8, 16), ("v", 16, 24))
    c = w.clone()
    c[8:] *= 900.0
    note = shard_fault(shard_fits(w, c, shards))
    assert note is not None and note.startswith("rows 8:24 (k, v)") and "first shard (q) only" in note
    assert shard_fault(shard_fits(w, w * 1.001, shards)) is None  # all shards agree: no shard fault
    assert shard_fault(shard_fits(w, w * 5.0, shards)) is None  # one scale wrong everywhere: another cause


def test_recurrent_state_rows_show_garbage_start_and_blow_up():
    from layerbisect.comparison.recurrent import state_findings, state_rows

    ref, cand = Captures(), Captures()
    norms = torch.linspace(1.0, 2.0, 6)[:, None].repeat(1, 4)  # (T, Hv)
    ref.record("layers.1.attn.state", norms)
    cand.record("layers.1.attn.state", norms * 1.01)
    ref.record("layers.2.attn.state", norms)
    blow = norms.clone()
    blow[4:] *= 50  # takes off in the second decode step
    cand.record("layers.2.attn.state", blow)
    rows = state_rows(ref, cand, n_prompt=3)
    assert [r["first_off_token"] for r in rows] == [None, 4]
    assert rows[0]["ref_after_prompt"] == pytest.approx(1.4) and len(rows[0]["cand_decode"].split()) == 3
    (f,) = state_findings(rows)
    assert (f.kind, f.layer, f.token_index) == ("recurrent_state", 2, 4)
    garbage = norms.clone()
    garbage[0] = float("nan")
    cand = Captures()  # recording again would append (decode steps)
    cand.record("layers.1.attn.state", garbage)
    assert state_findings(state_rows(ref, cand, 3))[0].title.startswith("Recurrent state of layer 1 starts off")


def test_recurrent_state_behind_a_divergent_input_is_only_a_warning():
    from layerbisect.comparison.recurrent import state_findings, state_rows

    ref, cand = Captures(), Captures()
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    ref.record("layers.2.attn_norm", x)
    cand.record("layers.2.attn_norm", -x)  # the layer's input is already wrong
    ref.record("layers.2.attn.state", torch.ones(4, 2))
    cand.record("layers.2.attn.state", torch.full((4, 2), float("nan")))
    (f,) = state_findings(state_rows(ref, cand, 2))
    assert f.severity == "warning" and "behind an input that already diverged" in f.title
