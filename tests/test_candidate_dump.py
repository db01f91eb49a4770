"""`bisect REF.gguf --candidate-dump DIR`: an engine's own activations through the same comparator."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

IDS = [2] + list(range(5, 25))


def _dump(hf_dir, out, *, break_layer: int | None = None):
    transformers = pytest.importorskip("transformers")
    from layerbisect.engines import capture_activations

    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    if break_layer is not None:  # a loader that dropped one layer's MLP input norm
        model.model.layers[break_layer].post_attention_layernorm.forward = lambda x: x
    with capture_activations(model, out, name_map="auto", token_ids=IDS), torch.no_grad():
        model(torch.tensor([IDS]))
    return out


def _bisect(*args):
    return subprocess.run([sys.executable, "-m", "layerbisect.cli.app", *args], capture_output=True, text=True)


def test_dump_matches_reference(tiny_models, tmp_path):
    m = tiny_models["qwen3"]
    dump = _dump(m["hf"], tmp_path / "dump")
    res = _bisect(str(m["gguf"]), "--candidate-dump", str(dump), "--tokens", ",".join(map(str, IDS)),
                  "--out", str(tmp_path / "rep"), "-n", "0")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]


def test_dump_with_dropped_norm_names_layer(tiny_models, tmp_path):
    import layerbisect
    from layerbisect.pipeline import CompareOptions

    m = tiny_models["qwen3"]
    dump = _dump(m["hf"], tmp_path / "dump", break_layer=1)
    report = layerbisect.compare(m["gguf"], candidate_dump=dump, options=CompareOptions(tokens=IDS, generate=0))
    first = [f for f in report.findings if f.kind == "first_divergence"]
    assert first and first[0].layer == 1 and first[0].op == "mlp_norm", [
        (f.kind, f.layer, f.op) for f in report.findings
    ]


def test_dump_of_another_model_is_refused(tiny_models, tmp_path):
    """A dump captured from another architecture is bad input (exit 2, one line naming the dump), not a
    comparison that fails the gate; the same dump against its own model still compares."""
    dump = _dump(tiny_models["qwen3"]["hf"], tmp_path / "dump")
    res = _bisect(str(tiny_models["llama"]["gguf"]), "--candidate-dump", str(dump), "--tokens",
                  ",".join(map(str, IDS)), "--out", str(tmp_path / "rep"), "-n", "0")
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and str(dump) in err[0] and "qwen3" in err[0] and "llama" in err[0], err
    assert "Traceback" not in res.stderr and not (tmp_path / "rep").exists()


def test_dump_refuses_what_it_cannot_do(tiny_models, tmp_path):
    """--bisect, --generate and a prompt that is not the dump's text are one-line errors (exit 2), not ignored."""
    m = tiny_models["qwen3"]
    dump = _dump(m["hf"], tmp_path / "dump")
    for extra, flag in ((["--bisect"], "--bisect"), (["-n", "4"], "--generate"),
                        (["-p", "Something else entirely"], "--prompt")):
        res = _bisect(str(m["gguf"]), "--candidate-dump", str(dump), "--out", str(tmp_path / "rep"), *extra)
        err = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(err) == 1 and flag in err[0], (extra, res.stderr[-2000:])
        assert not (tmp_path / "rep").exists()
