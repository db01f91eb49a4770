"""A GGUF as the candidate: tiny llama converted and quantized by llama.cpp's own tools (F32 vs Q8_0, Q4_K_M,
Q2_K, IQ4_XS), every stage of `bisect REF.gguf CAND.gguf`, exit codes, and planted faults named by layer,
tensor and type."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gguf
import pytest
import torch
from typer.testing import CliRunner

from layerbisect.api import open_runner
from layerbisect.candidates.gguf_runner import GGUFCandidateRunner, GGUFLinear
from layerbisect.errors import InputError
from layerbisect.pipeline import CompareOptions, compare

TYPES = ("Q8_0", "Q4_K_M", "Q2_K", "IQ4_XS")
PROMPT = "The capital of France is Paris, and the capital of Italy is"

# A 2-layer random model with 32k-token logits amplifies quantization noise (clean Q4_K_M: logit KL ~0.8 nats,
# worst point cosine ~0.95): this gate passes the clean Q4_K_M and fails a broken tensor (cosine ~0.77).
TINY_GATE = """
[default]
min_cosine = 0.9
max_rel_l2 = 0.6
max_norm_ratio = 1.5
[[rule]]
pattern = "logits*"
max_kl = 1.5
min_top1 = 0.2
"""


def _types_in_file(path: Path) -> dict[str, str]:
    """GGUF tensor name → GGML type, read with gguf-py's reader (independently of our loader)."""
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}


def _cli(*args: str):
    from layerbisect.cli.app import app

    return CliRunner().invoke(app, list(args))


def _bisect(*args: str) -> subprocess.CompletedProcess:
    """The real entry point (bad input becomes one line on stderr and exit 2 there, not in typer's app)."""
    return subprocess.run([sys.executable, "-m", "layerbisect.cli.app", *args], capture_output=True, text=True,
                          timeout=600)


def _one_line_error(res: subprocess.CompletedProcess, *needles: str) -> None:
    assert res.returncode == 2, f"exit {res.returncode}\n{res.stderr}"
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture(scope="module")
def gate_toml(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("gate") / "tiny-gguf.toml"
    p.write_text(TINY_GATE)
    return p


@pytest.fixture(scope="module")
def faulty(llamacpp_tiny, tmp_path_factory) -> dict[str, Path]:
    """Q4_K_M with blk.1.ffn_gate's Q4_K scales bit-flipped in every block, and in one block only."""
    from layerbisect.producers.gguf_quants import corrupt_q4k_scales

    root = tmp_path_factory.mktemp("gguf-faults")
    q = llamacpp_tiny["Q4_K_M"]
    whole, one = root / "q4km-gate-all.gguf", root / "q4km-gate-block.gguf"
    corrupt_q4k_scales(q, whole, "blk.1.ffn_gate.weight")
    assert corrupt_q4k_scales(q, one, "blk.1.ffn_gate.weight", [(3, 0)]) == [(3, 0)]
    return {"whole": whole, "block": one}


@pytest.mark.parametrize("qtype", TYPES)
def test_runner_names_each_linear_with_its_ggml_type(llamacpp_tiny, qtype) -> None:
    path = llamacpp_tiny[qtype]
    runner = open_runner(path, role="candidate")
    assert isinstance(runner, GGUFCandidateRunner) and runner.kind == "candidate"
    runner.activate()
    in_file = _types_in_file(path)
    lins = runner.quant_linears()
    assert len(lins) == 2 * 7 + 1, list(lins)  # 7 linears per layer and the untied output
    for name, lin in lins.items():
        assert isinstance(lin, GGUFLinear), name
        assert lin.scheme.weight == in_file[lin.source.tensor], (name, lin.scheme, in_file[lin.source.tensor])
        assert lin.scheme.format == "gguf" and lin.scheme.quantized
    # the same dequantization as the reference: the candidate's weights are the reference runner's on this file
    ref_view = open_runner(path).activate()
    for name, lin in lins.items():
        assert torch.equal(lin.dequantized_weight(), ref_view.model.get_submodule(name).weight.detach()), name
    assert runner.tensor_types()["embed.weight"] == in_file["token_embd.weight"]
    units = runner.restore_units()
    assert units["embed"].tensor == "token_embd.weight" and units["embed"].modules == ("embed",)
    assert units["layers.1.mlp.down_proj"].label == f"blk.1.ffn_down.weight {in_file['blk.1.ffn_down.weight']}"


def test_no_k_quant_falls_back_at_these_sizes(llamacpp_tiny) -> None:
    """Rows of 256/512: llama.cpp gives every K/IQ tensor the file type's own types (no fallback warning)."""
    from layerbisect.producers.gguf_quants import fallbacks

    for t in TYPES:
        log = llamacpp_tiny[t].with_name("quantize.log")
        assert log.is_file() and not fallbacks(log), (t, fallbacks(log))
    q2 = _types_in_file(llamacpp_tiny["Q2_K"])
    assert q2["blk.0.attn_q.weight"] == "Q2_K" and q2["blk.0.ffn_down.weight"] == "Q3_K"
    assert set(_types_in_file(llamacpp_tiny["IQ4_XS"]).values()) == {"F32", "IQ4_XS", "Q6_K"}


@pytest.mark.parametrize("qtype", TYPES)
def test_every_stage_runs(llamacpp_tiny, qtype) -> None:
    ref, cand = llamacpp_tiny["F32"], llamacpp_tiny[qtype]
    report = compare(ref, cand, options=CompareOptions(prompt=PROMPT, generate=4))
    titles = [s.title for s in report.sections]
    for want in ("Local vs accumulated error", "Per-module local error", "Weight audit per tensor (GGML types)",
                 "Weight error per GGML type", "Weight error per layer", "KL divergence ("):
        assert any(t.startswith(want) for t in titles), (want, titles)
    in_file = _types_in_file(cand)
    modules = report.record.localization.modules
    assert len(modules) == 14 and all(m.scheme == in_file[_gguf_name(m.module)] for m in modules)
    audits = report.record.audits
    assert not audits.weight_faults, audits.weight_faults
    rows = {r.name: r for r in audits.weights}
    assert rows["layers.0.attn.q_proj.weight"].scheme == in_file["blk.0.attn_q.weight"]
    assert rows["layers.0.attn.q_proj.weight"].ref_scheme == "F32"
    # SQNR per type, F32 source: 6 dB per bit, roughly (Q8_0 ~45, Q6_K ~35, Q4_K/IQ4_XS ~22, Q3_K ~16, Q2_K ~10)
    expect = {"Q8_0": (40, 50), "Q6_K": (32, 38), "Q4_K": (20, 25), "IQ4_XS": (20, 25), "Q3_K": (14, 19),
              "Q2_K": (8, 13)}
    by_type = {d["cand_type"]: d for d in _section(report, "gguf-types").records()}
    for t, d in by_type.items():
        lo, hi = expect[t]
        assert lo < d["median_sqnr_db"] < hi, (t, d)
    assert report.record.quantization.format == "gguf"
    kld = report.record.kld
    assert kld.count == len(report.record.tokens.ids) - 1 and kld.mean_kld >= 0
    lg = report.comparison.logits
    # the report's logit KL (every position) and llama.cpp's (positions with a next token) are the same numbers
    assert kld.kld_percentiles["Maximum"] <= lg.max_kl + 1e-12
    assert "Same top p:" in _section(report, "kl-divergence").text


def _section(report, key: str):
    return next(s for s in report.sections if s.key == key)


def _gguf_name(module: str) -> str:
    _, i, rest = module.split(".", 2)
    name = {"attn.q_proj": "attn_q", "attn.k_proj": "attn_k", "attn.v_proj": "attn_v", "attn.o_proj": "attn_output",
            "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}[rest]
    return f"blk.{i}.{name}.weight"


def test_exit_codes_follow_the_gate(llamacpp_tiny, gate_toml, tmp_path) -> None:
    ref = str(llamacpp_tiny["F32"])
    r = _cli("compare", ref, str(llamacpp_tiny["Q8_0"]), "-p", PROMPT, "-n", "2", "-o", str(tmp_path / "q8"), "-q")
    assert r.exit_code == 0, r.output  # Q8_0 passes the built-in gate
    r = _cli("compare", ref, str(llamacpp_tiny["Q2_K"]), "-p", PROMPT, "-n", "2", "-o", str(tmp_path / "q2"), "-q",
             "--no-localize")
    assert r.exit_code == 1, r.output  # Q2_K does not
    r = _cli("compare", ref, str(llamacpp_tiny["Q4_K_M"]), "-p", PROMPT, "-n", "2", "-o", str(tmp_path / "q4"),
             "-q", "--gate", str(gate_toml))
    assert r.exit_code == 0, r.output  # the clean Q4_K_M passes the tiny gate the faults are judged by


def test_planted_fault_in_one_tensor_is_named(llamacpp_tiny, faulty, gate_toml, tmp_path) -> None:
    """Q4_K scale bits flipped in every block of blk.1.ffn_gate: localization, the audit and --bisect name it."""
    out = tmp_path / "rep"
    r = _cli("compare", str(llamacpp_tiny["F32"]), str(faulty["whole"]), "-p", PROMPT, "-n", "2", "-o", str(out),
             "--gate", str(gate_toml), "--bisect", "-q")
    assert r.exit_code == 1, r.output
    rep = json.loads((out / "report.json").read_text())
    culprits = [f for f in rep["findings"] if f["kind"] == "culprit"]
    loc = next(f for f in culprits if f["evidence"].get("source") != "bisect")
    assert loc["layer"] == 1 and loc["op"].startswith("mlp.gate"), loc  # the op, or its linear (evidence-first)
    assert loc["evidence"]["worst_module"]["module"] == "layers.1.mlp.gate_proj"
    assert loc["evidence"]["worst_module"]["scheme"] == "Q4_K"
    assert loc["evidence"]["cause"] == "quant_error_outlier", loc["evidence"]
    audit = [f for f in rep["findings"] if f["kind"] == "weight_audit"]
    assert len(audit) == 1 and "blk.1.ffn_gate.weight Q4_K" in audit[0]["title"], audit
    assert audit[0]["evidence"]["tensors"] == ["layers.1.mlp.gate_proj.weight"]
    bis = next(f for f in culprits if f["evidence"].get("source") == "bisect")
    assert bis["evidence"]["culprits"] == ["layers.1.mlp.gate_proj"], bis
    assert "blk.1.ffn_gate.weight Q4_K" in bis["title"] and bis["evidence"]["after_passed"], bis


def test_one_corrupt_block_is_named_by_the_audit(llamacpp_tiny, faulty, tmp_path) -> None:
    """One Q4_K block with flipped scale bits moves no activation past the noise; the block audit names it."""
    r = _cli("audit", str(llamacpp_tiny["F32"]), str(faulty["block"]), "--out", str(tmp_path / "a"))
    assert r.exit_code == 1, r.output
    audit = json.loads((tmp_path / "a" / "audit.json").read_text())
    (fault,) = audit["faults"]
    assert fault["name"] == "layers.1.mlp.gate_proj.weight" and fault["scheme"] == "Q4_K"
    assert fault["cause"] == "corrupt_blocks"
    worst = fault["evidence"]["blocks"]["worst"]
    assert (worst[0]["row"], worst[0]["block"]) == (3, 0) and fault["evidence"]["blocks"]["n_bad"] == 1, worst
    r = _cli("audit", str(llamacpp_tiny["F32"]), str(llamacpp_tiny["Q4_K_M"]))
    assert r.exit_code == 0, r.output


def test_not_the_same_model_is_one_line(llamacpp_tiny, tiny_models, tmp_path) -> None:
    from layerbisect.producers.gguf_quants import rewrite_gguf

    ref, cand = llamacpp_tiny["F32"], llamacpp_tiny["Q8_0"]
    other = tiny_models["llama"]["gguf"]  # hidden 128: other shapes
    _one_line_error(_bisect(str(ref), str(other), "-o", str(tmp_path / "x")), str(other), "is not the same model",
                    "the reference's 256")
    # same shapes, another vocabulary: two token strings swapped
    toks = gguf.GGUFReader(cand).fields["tokenizer.ggml.tokens"].contents()
    toks[1000], toks[1001] = toks[1001], toks[1000]
    swapped = tmp_path / "swapped-vocab.gguf"
    rewrite_gguf(cand, swapped, kv={"tokenizer.ggml.tokens": toks})
    with pytest.raises(InputError, match="the vocabulary differs"):
        compare(ref, swapped, options=CompareOptions(prompt=PROMPT, generate=0, localize=False))
    _one_line_error(_bisect(str(ref), str(swapped), "-o", str(tmp_path / "y")), str(swapped), "vocabulary differs")


def test_a_gguf_against_itself_passes(llamacpp_tiny, tmp_path) -> None:
    """Nothing quantized differently: the per-tensor sections are empty, every stage still runs, exit 0."""
    f32 = str(llamacpp_tiny["F32"])
    res = _bisect(f32, f32, "-o", str(tmp_path / "same"), "-q")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-2000:]
    kinds = [f["kind"] for f in json.loads((tmp_path / "same" / "report.json").read_text())["findings"]]
    assert "identical" in kinds and "culprit" not in kinds and "most_divergent_layer" not in kinds, kinds


def test_streamed_candidate_gives_the_resident_numbers(llamacpp_tiny) -> None:
    ref, cand = llamacpp_tiny["F32"], llamacpp_tiny["Q4_K_M"]
    o = dict(prompt=PROMPT, generate=0)
    a = compare(ref, cand, options=CompareOptions(**o, stream=False))
    b = compare(ref, cand, options=CompareOptions(**o, stream=True))
    assert b.record.runtime.memory_mode("candidate").mode == "stream"
    assert a.df["cosine"].tolist() == b.df["cosine"].tolist()
    assert a.record.audits.weights == b.record.audits.weights
