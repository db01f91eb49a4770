"""Our ModelOpt loader against checkpoints written by NVIDIA ModelOpt itself (``tests/data/modelopt``).

The fixtures are tiny Llama / Gemma 3 models quantized with ``mtq.quantize`` (FP8_DEFAULT_CFG, NVFP4_DEFAULT_CFG) and
exported with ``export_hf_checkpoint`` on CPU (``scripts/make_modelopt_fixtures.py``, nvidia-modelopt 0.47.0).
CI has no modelopt: ModelOpt's dequantization is restated here in plain torch, as its source defines it
(``modelopt/torch/quantization/qtensor/{fp8,nvfp4}_tensor.py``, ``dequantize``):

- FP8:   ``w = q.to(dtype) * weight_scale.to(dtype)`` (per-tensor f32 ``weight_scale``)
- NVFP4: ``e2m1_values[nibble]`` with ``unpacked[..., 0::2] = byte & 0x0F``, ``unpacked[..., 1::2] = byte >> 4``
  (element 0 in the low nibble), ``per_block_scale = f32(weight_scale) * weight_scale_2``,
  ``w = e2m1 * per_block_scale`` per block of 16 along ``in``.

We evaluate both with ``dtype=float32`` (ModelOpt's default is the model dtype, bf16, which for FP8 rounds the scale
to bf16 before multiplying; inference kernels keep it f32, as we do).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from layerbisect.candidates.runner import CandidateRunner
from layerbisect.candidates.schemes import parse_quantization_config
from layerbisect.families import family_of

DATA = Path(__file__).resolve().parents[1] / "data" / "modelopt"
FIXTURES = sorted(p.parent for p in DATA.glob("*/*/fixture.json"))
IDS = [f"{p.parent.name}-{p.name}" for p in FIXTURES]
PROMPT = [1, 5, 9, 77, 300, 42, 17, 8, 99, 100, 3, 4]

E2M1 = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6, 0, -0.5, -1, -1.5, -2, -3, -4, -6])

# compare() residual cosine floors (min over tokens and residual points). Measured with modelopt 0.47.0 fixtures:
# fp8 llama 0.9940, gemma3 0.9988; nvfp4 (W4A4, static input_scale) llama 0.898, gemma3 0.987 (hidden 64, random
# weights: 4-bit weights and activations in every linear, errors add up over 2 layers).
RESID_FLOOR = {"fp8": 0.99, "nvfp4": 0.85}


def _scheme(d: Path) -> str:
    return d.parent.name


def modelopt_dequant(tensors: dict[str, torch.Tensor], scheme: str) -> torch.Tensor:
    """ModelOpt's ``FP8QTensor`` / ``NVFP4QTensor.dequantize(dtype=float32)`` on one module's exported tensors."""
    if scheme == "fp8":
        return tensors["weight"].to(torch.float32) * tensors["weight_scale"].to(torch.float32)
    packed = tensors["weight"]
    unpacked = torch.empty(*packed.shape[:-1], packed.shape[-1] * 2, dtype=torch.long)
    unpacked[..., 1::2] = (packed >> 4).long()
    unpacked[..., 0::2] = (packed & 0x0F).long()
    e2m1 = E2M1[unpacked]
    per_block_scale = tensors["weight_scale"].to(torch.float32) * tensors["weight_scale_2"]
    out_f, in_f = e2m1.shape
    return (e2m1.view(out_f, -1, 16) * per_block_scale.unsqueeze(-1)).reshape(out_f, in_f)


def _modules(d: Path) -> dict[str, dict[str, torch.Tensor]]:
    """HF module name → its tensors, for modules with a ``weight_scale`` (the quantized linears)."""
    st = load_file(d / "model.safetensors")
    mods = sorted(k[: -len(".weight_scale")] for k in st if k.endswith(".weight_scale"))
    return {m: {k[len(m) + 1:]: v for k, v in st.items() if k.startswith(m + ".")} for m in mods}


@pytest.fixture(scope="module", params=FIXTURES, ids=IDS)
def fixture_dir(request) -> Path:
    return request.param


@pytest.fixture(scope="module")
def unquantized(fixture_dir, tmp_path_factory) -> dict[str, Path]:
    """The tiny HF model the fixture was quantized from (same make_tiny_hf arguments), and its F32 GGUF."""
    from layerbisect.producers.gguf_writer import write_gguf_from_hf
    from layerbisect.producers.tiny import make_tiny_hf

    kw = dict(json.loads((fixture_dir / "fixture.json").read_text())["make_tiny_hf"])
    arch = kw.pop("arch")
    root = tmp_path_factory.mktemp(f"mo-{_scheme(fixture_dir)}-{arch}")
    hf = make_tiny_hf(arch, root / "hf", **kw)
    return {"hf": hf, "gguf": write_gguf_from_hf(hf, root / "ref.gguf", tensor_type="F32")}


def test_fixtures_present():
    assert {f"{s}-{a}" for s in ("fp8", "nvfp4") for a in ("llama", "gemma3")} <= set(IDS)


def test_what_modelopt_wrote(fixture_dir):
    """Pin the layout: names, dtypes, shapes of every quantized linear; unquantized tensors stay bf16."""
    scheme = _scheme(fixture_dir)
    cfg = json.loads((fixture_dir / "config.json").read_text())
    hq = json.loads((fixture_dir / "hf_quant_config.json").read_text())
    assert hq["producer"]["name"] == "modelopt"
    assert hq["quantization"]["quant_algo"] == scheme.upper()
    assert cfg["quantization_config"]["quant_method"] == "modelopt"
    assert cfg["quantization_config"]["quant_algo"] == scheme.upper()
    mods = _modules(fixture_dir)
    assert len(mods) == 7 * cfg["num_hidden_layers"]  # q k v o gate up down; lm_head excluded
    for name, t in mods.items():
        w = t["weight"]
        assert t["input_scale"].dtype == torch.float32 and t["input_scale"].shape == (), name
        if scheme == "fp8":
            assert set(t) == {"weight", "weight_scale", "input_scale"}, name
            assert w.dtype == torch.float8_e4m3fn, name
            assert t["weight_scale"].dtype == torch.float32 and t["weight_scale"].shape == (), name
        else:
            assert set(t) == {"weight", "weight_scale", "weight_scale_2", "input_scale"}, name
            assert w.dtype == torch.uint8, name
            assert t["weight_scale"].dtype == torch.float8_e4m3fn, name
            assert t["weight_scale"].shape == (w.shape[0], w.shape[1] * 2 // 16), name
            assert t["weight_scale_2"].dtype == torch.float32 and t["weight_scale_2"].shape == (), name


def test_parse_quantization_config(fixture_dir):
    scheme = _scheme(fixture_dir)
    cfg = json.loads((fixture_dir / "config.json").read_text())
    for config in (cfg, {k: v for k, v in cfg.items() if k != "quantization_config"}):  # config.json / hf_quant
        q = parse_quantization_config(config, fixture_dir)
        assert q.source == "modelopt" and q.format_name == f"modelopt-{scheme}"
        s = q.scheme_for("model.layers.0.self_attn.q_proj")
        if scheme == "fp8":
            assert (s.weight, s.act) == ("fp8_tensor", "fp8_static_tensor")
        else:
            assert (s.weight, s.act, s.group_size, s.act_group_size) == ("nvfp4", "nvfp4", 16, 16)
        assert q.scheme_for("lm_head").is_dense
        assert q.kv_cache is None


def test_unquantized_tensors_match_regenerated_model(fixture_dir, unquantized):
    """The reference we regenerate is the model ModelOpt quantized: every tensor it left alone is bit-identical."""
    got = load_file(fixture_dir / "model.safetensors")
    ref = load_file(unquantized["hf"] / "model.safetensors")
    dense = [k for k, v in got.items() if v.dtype == torch.bfloat16]
    assert dense and all(torch.equal(got[k], ref[k]) for k in dense)


@pytest.fixture(scope="module")
def runner(fixture_dir) -> CandidateRunner:
    return CandidateRunner(fixture_dir).activate()


def test_runner_loads(runner):
    assert runner.load_notes["missing"] == [] and runner.load_notes["unused"] == [], runner.load_notes


def test_dequantized_weight_equals_modelopt(fixture_dir, runner, unquantized):
    scheme = _scheme(fixture_dir)
    cfg = runner.model.cfg
    mods = _modules(fixture_dir)
    lins = runner.quant_linears()
    ref_w = load_file(unquantized["hf"] / "model.safetensors")
    assert set(runner.linear_names.values()) - {"lm_head"} == set(mods)
    for canon, hf_name in runner.linear_names.items():
        if hf_name == "lm_head":
            continue
        want = modelopt_dequant(mods[hf_name], scheme)
        perm = family_of(cfg).hf_row_permutation(canon, cfg)
        if perm is not None:
            want = want[perm]  # the runner permutes rows to GGUF's order
            orig = ref_w[hf_name + ".weight"].float()[perm]
        else:
            orig = ref_w[hf_name + ".weight"].float()
        got = lins[canon].dequantized_weight()
        assert torch.equal(got, want), hf_name
        # and the dequantized weight is the original weight, quantized: catches a convention both could share
        rel = ((got - orig).norm() / orig.norm()).item()
        assert rel < (0.05 if scheme == "fp8" else 0.15), (hf_name, rel)


def test_compare_against_unquantized_gguf(fixture_dir, unquantized):
    import layerbisect

    rep = layerbisect.compare(unquantized["gguf"], fixture_dir,
                              options=layerbisect.CompareOptions(tokens=PROMPT, generate=0))
    df = rep.df
    resid = df[df["point"].str.contains(r"attn_residual|\.out$|^logits$", regex=True)
               & ~df["point"].str.contains(r"attn\.out")]
    assert len(resid)
    assert resid["cosine"].min() >= RESID_FLOOR[_scheme(fixture_dir)], resid.groupby("point")["cosine"].min()


def test_logits_match_modelopt_fake_quant(fixture_dir, runner):
    """FP8 only: ModelOpt's own fake-quant forward (FP32, saved by the fixture script) vs our emulation.

    OPEN: the logits agree only to cosine 0.9945 (llama) / 0.9991 (gemma3), about as far as either is from the
    unquantized model, although one ModelOpt QuantLinear (fake-quant, FP32) matches our fp8(x/input_scale) and
    dequantized weight to 1.6e-7 rel (checked in the modelopt venv). Not yet explained (candidates: FP8 code flips
    amplified through 2 layers of hidden 64 by small HF-vs-our-graph differences, or a non-linear op of HF's
    model under ModelOpt). The floor below is a sanity floor, not a match.
    """
    f = fixture_dir / "modelopt_fake_quant_logits.st"
    if not f.is_file():
        pytest.skip("ModelOpt's NVFP4 fake-quant forward needs CUDA: no logits stored")
    saved = load_file(f)
    caps = runner.run(saved["tokens"].tolist(), select="logits")
    ours, theirs = caps["logits"], saved["logits"]
    cos = torch.nn.functional.cosine_similarity(ours, theirs, dim=-1).min().item()
    rel = ((ours - theirs).norm() / theirs.norm()).item()
    assert cos > 0.99 and rel < 0.15, (cos, rel)
