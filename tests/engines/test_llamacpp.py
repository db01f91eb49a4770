"""llama.cpp as a captured engine and as an oracle, on tiny models converted by llama.cpp's own converter.

Tolerances come from llama.cpp's measured precision (docs/ORACLE.md): with F32 weights and an
F32 KV cache it agrees with our FP32 graph to summation order, except after GELU (Gemma), which
ggml-cpu computes through an F16 table; its default F16 KV cache adds ~1e-2 on the logits.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from layerbisect.engines.llamacpp import GGMLNameMap
from layerbisect.errors import InputError
from layerbisect.producers.llamacpp import llama_cpp_available
from layerbisect.producers.tiny import ARCHS

needs_llama_cpp = pytest.mark.skipif(llama_cpp_available() is not None, reason=str(llama_cpp_available()))

IDS = [1] + list(range(300, 320))  # longer than the tiny Gemma sliding window (8); in every vocabulary

# Relative L2 error per captured point, F32 GGUF and F32 KV cache: summation order only (~1e-7 per
# op, growing through the layers), except downstream of Gemma's GELU-tanh, which llama.cpp rounds
# through an F16 table (measured 3e-4 at mlp.down, up to ~1e-3 downstream).
REL_F32 = {"gemma2": 5e-3, "gemma3": 5e-3}
REL_F32_DEFAULT = 1e-5


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / a.norm().clamp_min(1e-30))


def test_map_resolves_names_ops_and_inputs():
    m = GGMLNameMap.builtin()
    assert m.by_name("Qcur-3", "ROPE") == "layers.3.attn.q"
    assert m.by_name("Qcur-3", "MUL_MAT") is None  # the pre-rope projection is not attn.q
    assert m.by_name("Vcur-0", "RESHAPE") == "layers.0.attn.v"
    assert m.by_name("ffn_out-2", "MUL_MAT") == "layers.2.mlp.down"
    assert m.by_name("ffn_out-2", "ADD") is None
    assert m.by_name("inp_scaled", "SCALE") == "embed" and m.by_name("result_output", "MUL_MAT") == "logits"
    assert m.by_input("MUL_MAT", [["kqv_out-7", "blk.7.attn_output.weight"]]) == "layers.7.attn.o_proj"
    assert m.by_input("MUL", [["", "norm"], ["ffn_out-4"]]) == "layers.4.mlp.post_norm"
    assert m.by_input("ADD", [["ffn_out-4"]]) is None
    with pytest.raises(InputError, match="needs `input`"):
        GGMLNameMap.from_toml('[by_input]\n"x" = { op = "MUL" }')


@needs_llama_cpp
@pytest.mark.parametrize("arch", ARCHS)
def test_capture_matches_reference_at_every_point(tiny_models, tmp_path, arch):
    from layerbisect.engines.dump import load_dump
    from layerbisect.engines.llamacpp import capture_llamacpp
    from layerbisect.references.runner import ReferenceRunner

    gguf = tiny_models[arch]["gguf"]
    res = capture_llamacpp(gguf, tmp_path / "d", token_ids=IDS, kv_type="f32")
    assert res.problems == [] and res.arch == ("llama" if arch == "mistral" else arch)
    dump = load_dump(tmp_path / "d", token_ids=IDS)
    ref = ReferenceRunner(gguf).run(IDS)
    missing = [n for n in ref.names() if n not in dump.tensors]
    # attn.scores (Gemma 2 only) has no llama.cpp node to map (see the map's notes).
    assert all(n.endswith("attn.scores") for n in missing), missing
    tol = REL_F32.get(arch, REL_F32_DEFAULT)
    errs = {n: _rel(ref[n], dump.tensors[n]) for n in ref.names() if n in dump.tensors}
    worst = max(errs, key=errs.get)
    assert errs[worst] < tol, f"{arch}: {worst} rel err {errs[worst]:.2e} (tolerance {tol:.0e})"
    # The dump's logits are llama.cpp's own output, bit for bit.
    assert np.array_equal(dump.tensors["logits"].numpy(), res.logits)
    graph = json.loads((tmp_path / "d" / "llamacpp-graph.json").read_text())
    assert len(graph) == res.n_nodes and any(g["name"] == "result_output" for g in graph)


@needs_llama_cpp
def test_oracle_tiny_within_llamacpp_precision(tiny_models):
    from layerbisect.engines.llamacpp import LlamaCppModel
    from layerbisect.engines.llamacpp_oracle import llamacpp_logits, oracle_compare

    gguf = tiny_models["qwen3"]["gguf"]
    exact = oracle_compare(gguf, IDS, kv_type="f32")
    assert exact.worst_abs < 1e-3 and exact.max_kl < 1e-8 and all(exact.top1), exact
    default = oracle_compare(gguf, IDS, kv_type="f16")  # llama.cpp's F16 KV cache: measured max |Δ| 1.4e-2
    assert default.min_cosine > 0.99999 and default.worst_abs < 0.05 and all(default.top1), default
    # Llama(logits_all=True).scores and the capture's llama_decode are the same computation.
    with LlamaCppModel(gguf) as m:
        mine, _ = m.decode(IDS)
    np.testing.assert_allclose(mine, llamacpp_logits(gguf, IDS), rtol=0, atol=1e-5)


@needs_llama_cpp
def test_planted_fault_and_lower_quant_findings(tiny_models, tmp_path):
    import layerbisect
    from layerbisect.comparison import gate as gate_mod
    from layerbisect.engines.llamacpp import capture_llamacpp
    from layerbisect.pipeline import CompareOptions
    from layerbisect.producers.gguf_edit import scale_tensor
    from layerbisect.producers.llamacpp import llama_quantize

    ref = tiny_models["mistral"]["gguf"]  # llama architecture, 32k vocabulary: the cheapest logits
    opts = CompareOptions(tokens=IDS, generate=0, localize=False)

    faulty = scale_tensor(ref, tmp_path / "fault.gguf", "blk.1.ffn_down.weight", 4.0)
    capture_llamacpp(faulty, tmp_path / "fault", token_ids=IDS)
    rep = layerbisect.compare(ref, candidate_dump=tmp_path / "fault", options=opts)
    blow = [f for f in rep.findings if f.kind == "norm_blowup"]
    assert blow and blow[0].point == "layers.1.mlp.down", [(f.kind, f.point) for f in rep.findings]
    assert blow[0].evidence["max_norm_ratio"] == pytest.approx(4.0, rel=0.02)
    assert not gate_mod.evaluate(rep).passed

    q4 = llama_quantize(ref, tmp_path / "q4_0.gguf", "Q4_0")
    capture_llamacpp(q4, tmp_path / "q4", token_ids=IDS)
    noisy = layerbisect.compare(ref, candidate_dump=tmp_path / "q4", options=opts)
    same_dir = tmp_path / "same"
    capture_llamacpp(ref, same_dir, token_ids=IDS)
    same = layerbisect.compare(ref, candidate_dump=same_dir, options=opts)
    kl = {name: r.comparison.logits.mean_kl for name, r in (("q4", noisy), ("same", same))}
    assert gate_mod.evaluate(same).passed
    # Format noise: every point still correlated, the logits measurably further off than llama.cpp's own arithmetic.
    assert kl["q4"] > 10 * kl["same"], kl
    # Format noise starts at the first point (token_embd itself is Q4_0) and spreads everywhere, where the
    # planted fault left everything before layers.1.mlp.down intact (random tiny weights: measured embed
    # cosine 0.994, logits 0.82 at Q4_0).
    assert noisy.comparison.points["embed"].min_cosine < 0.9999 <= same.comparison.points["embed"].min_cosine
    assert rep.comparison.points["layers.1.mlp.up"].min_cosine > 0.9999


@needs_llama_cpp
def test_cli_capture_then_compare(tiny_models, tmp_path):
    gguf = str(tiny_models["gemma3"]["gguf"])
    dump = tmp_path / "dump"

    def bisect(*args):
        return subprocess.run([sys.executable, "-m", "layerbisect.cli.app", *args], capture_output=True, text=True)

    res = bisect("capture-llamacpp", gguf, "--prompt", "The capital of France is", "-o", str(dump))
    assert res.returncode == 0, res.stderr
    assert "captured points" in res.stdout
    res = bisect(gguf, "--candidate-dump", str(dump), "-o", str(tmp_path / "rep"), "--formats", "json", "-q")
    assert res.returncode == 0, res.stdout + res.stderr
    res = bisect("capture-llamacpp", gguf, "-o", str(tmp_path / "rep"))  # a report folder is not a dump
    assert res.returncode == 2 and "not empty" in res.stderr and "Traceback" not in res.stderr


@needs_llama_cpp
def test_capture_errors(tiny_models, tmp_path):
    from layerbisect.engines.llamacpp import capture_llamacpp

    gguf = tiny_models["qwen2"]["gguf"]
    with pytest.raises(InputError, match="outside the 151936-token vocabulary"):
        capture_llamacpp(gguf, tmp_path / "a", token_ids=[1, 10**7])
    with pytest.raises(InputError, match="exactly one of"):
        capture_llamacpp(gguf, tmp_path / "a")
    with pytest.raises(InputError, match="no such GGUF"):
        capture_llamacpp(tmp_path / "nope.gguf", tmp_path / "a", token_ids=[1])
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(InputError, match="could not load"):
        capture_llamacpp(bad, tmp_path / "a", token_ids=[1])


@needs_llama_cpp
def test_a_signal_aborts_llamacpp_and_leaves_the_earlier_dump(tiny_models, tmp_path, monkeypatch):
    """SIGINT while llama.cpp computes: the compute stops, the signal acts once llama.cpp returned, and the
    earlier dump in the folder is untouched, byte for byte (the new one is staged beside it)."""
    import os
    import signal

    from layerbisect.engines import llamacpp as lcm

    gguf = tiny_models["gemma3"]["gguf"]
    dump = tmp_path / "dump"
    lcm.capture_llamacpp(gguf, dump, token_ids=IDS)
    before = {p.name: p.read_bytes() for p in dump.iterdir()}

    class Stop(BaseException):
        pass

    def raise_stop(signum, frame):
        raise Stop(signum)

    reads: list[str] = []
    real_read = lcm._Recorder._read

    def read_then_signal(self, tt, addr, target):
        reads.append(target)
        if len(reads) == 3:
            os.kill(os.getpid(), signal.SIGINT)  # recorded by the deferring handler, not raised in C's callback
        return real_read(self, tt, addr, target)

    monkeypatch.setattr(lcm._Recorder, "_read", read_then_signal)
    old = signal.signal(signal.SIGINT, raise_stop)
    try:
        with pytest.raises(Stop):
            lcm.capture_llamacpp(gguf, dump, token_ids=IDS[:5])
    finally:
        signal.signal(signal.SIGINT, old)
    assert len(reads) == 3  # nothing read after the signal
    assert {p.name: p.read_bytes() for p in dump.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["dump"]  # no staging folder left


@needs_llama_cpp
def test_one_token_and_output_folder_rules(tiny_models, tmp_path):
    from layerbisect.engines.dump import load_dump
    from layerbisect.engines.llamacpp import capture_llamacpp

    gguf = tiny_models["llama"]["gguf"]
    res = capture_llamacpp(gguf, tmp_path / "one", token_ids=[1])  # one token: every node is that token's row
    assert not res.problems and "layers.0.attn.q" in res.names and "logits" in res.names, res.problems
    caps = load_dump(tmp_path / "one")
    assert all(x.shape[0] == 1 for x in caps.tensors.values())
    web = tmp_path / "webapp"
    web.mkdir()
    (web / "manifest.json").write_text('{"name": "my web app"}')  # not a dump of ours
    with pytest.raises(InputError, match="holds no earlier dump"):
        capture_llamacpp(gguf, web, token_ids=[1, 2])
    assert (web / "manifest.json").read_text() == '{"name": "my web app"}'
    afile = tmp_path / "afile"
    afile.write_text("hi")
    with pytest.raises(InputError, match="not a directory"):
        capture_llamacpp(gguf, afile, token_ids=[1, 2])
    with pytest.raises(InputError, match="pattern 'layer.\\*.out' matches none"):
        capture_llamacpp(gguf, tmp_path / "sel", token_ids=[1, 2], select=["layer.*.out"])
    with pytest.raises(InputError, match="empty pattern"):
        capture_llamacpp(gguf, tmp_path / "sel", token_ids=[1, 2], select=["embed", ""])
    with pytest.raises(InputError, match="holds no ids"):
        capture_llamacpp(gguf, tmp_path / "sel", token_ids=[])
    with pytest.raises(InputError, match="is a directory"):
        capture_llamacpp(tmp_path, tmp_path / "sel", token_ids=[1])
    assert not (tmp_path / "sel").exists()


@needs_llama_cpp
def test_a_dump_sharing_no_point_with_the_reference_is_bad_input(tiny_models, tmp_path):
    from layerbisect.engines.llamacpp import capture_llamacpp

    gguf = tiny_models["llama"]["gguf"]
    cap = capture_llamacpp(gguf, tmp_path / "raw", token_ids=IDS, select=["llamacpp.*"], raw=True)
    # the attention-score nodes (kq-N spans the KV slots) are said once, not once per node
    assert [p for p in cap.problems if "token axis" in p] == [p for p in cap.problems if p.startswith("--raw:")]
    assert len([p for p in cap.problems if p.startswith("--raw:")]) <= 1, cap.problems

    def bisect(*args):
        return subprocess.run([sys.executable, "-m", "layerbisect.cli.app", *args], capture_output=True, text=True)

    res = bisect(str(gguf), "--candidate-dump", str(tmp_path / "raw"), "-o", str(tmp_path / "rep"))
    assert res.returncode == 2 and "holds none of the reference's capture points" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "rep").exists()
