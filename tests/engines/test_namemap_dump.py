"""Name maps (TOML, built-ins, split rules, vLLM-style tuples) and dump loading errors."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from layerbisect.engines import capture_activations, load_dump
from layerbisect.engines.namemap import NameMap, builtin_maps, resolve_name_map
from layerbisect.errors import InputError
from layerbisect.graph import capture_points  # noqa: E402
from layerbisect.spec import AttentionSpec, DenseFFNSpec, LayerSpec, ModelSpec, NormsSpec, Rope  # noqa: E402


def _spec(n_layers: int, *, softcap: float | None = 50.0, sandwich: bool = True) -> ModelSpec:
    """A small llama/Gemma-like spec: the points a map may name come from its graph."""
    attn = AttentionSpec(2, 1, 8, Rope(dim=8), 0.35, softcap=softcap)
    layers = tuple(LayerSpec(i, attn, DenseFFNSpec(32), NormsSpec(sandwich, sandwich)) for i in range(n_layers))
    return ModelSpec("test", "test", 64, 16, layers)


def _gemma4_points() -> set[str]:
    """Points of Gemma 4's MoE and per-layer-input variants (router, experts' norms, PLE)."""
    from layerbisect.families import spec_from_hf
    from layerbisect.producers.tiny_gemma4 import gemma4_config

    return {p for v in ("moe", "ple") for p in capture_points(spec_from_hf(gemma4_config(v).to_dict()))}


CANONICAL = set(capture_points(_spec(4))) | _gemma4_points()


def _canonical(name: str) -> bool:
    return name.replace("{i}", "0") in CANONICAL


def test_builtin_maps_found_as_package_data():
    maps = builtin_maps()
    assert set(maps) == {
        "hf_llama", "hf_qwen2", "hf_qwen3", "hf_gemma2", "hf_gemma3", "hf_gemma4",
        "vllm_llama", "sglang_llama", "trtllm_qwen", "llamacpp",
    }
    for nm in maps.values():
        if nm.engine == "llama.cpp":  # ggml node names, read by engines/llamacpp.py (tests/engines/test_llamacpp.py)
            continue
        targets = nm.targets(4)
        extras = {t for t in targets if not _canonical(t)}
        # HF maps name only canonical points; the fused-qkv engines add the pre-rope projections (documented).
        assert extras == (
            {f"layers.{i}.attn.{p}_proj" for i in range(4) for p in "qk"} if nm.engine != "transformers" else set()
        ), nm.name
        assert nm.qk_layout == "hf", nm.name
        assert len(targets) == len(set(targets)), f"{nm.name}: a point mapped twice"


@pytest.mark.parametrize(
    "model_type,engine,expected",
    [
        ("gemma3_text", "transformers", "hf_gemma3"),
        ("gemma3", "transformers", "hf_gemma3"),
        ("qwen3", "transformers", "hf_qwen3"),
        ("llama", "vllm", "vllm_llama"),
    ],
)
def test_auto_picks_by_model_type_and_engine(model_type, engine, expected):
    cls = type("M", (), {"__module__": f"{engine}.model_executor.models"})
    model = cls()
    model.config = SimpleNamespace(model_type=model_type)
    assert resolve_name_map("auto", model).name == expected


def test_auto_unknown_model_type():
    model = SimpleNamespace(config=SimpleNamespace(model_type="mamba"))
    with pytest.raises(InputError, match="no built-in name map"):
        resolve_name_map("auto", model)


def test_gemma3_both_layouts():
    nm = builtin_maps()["hf_gemma3"]
    for prefix in ("model.", "model.language_model."):
        b = nm.match(prefix + "layers.7.pre_feedforward_layernorm")
        assert b is not None and b.layer == 7
        assert [(e.name, e.source) for e in b.entries] == [
            ("layers.7.attn_residual", "input"),
            ("layers.7.mlp_norm", "output"),
        ]
    assert nm.match("model.vision_tower.encoder.layers.0.mlp.fc1") is None
    assert nm.match("model.layers.3.self_attn.q_norm") is None


def test_layer_offsets_and_last():
    nm = builtin_maps()["sglang_llama"]
    # input_layernorm of layer i returns layer i-1's output as its residual; layer 0's has none.
    b = nm.match("model.layers.3.input_layernorm", 4)
    assert [(e.name, e.index) for e in b.entries] == [("layers.3.attn_norm", 0), ("layers.2.out", 1)]
    assert [e.name for e in nm.match("model.layers.0.input_layernorm", 4).entries] == ["layers.0.attn_norm"]
    assert [e.name for e in nm.match("model.norm", 4).entries] == ["final_norm", "layers.3.out"]
    assert [e.name for e in nm.match("model.norm").entries] == ["final_norm"]  # {last} needs the layer count
    assert nm.targets(2).count("layers.1.out") == 1 and "layers.0.out" in nm.targets(2)
    t = builtin_maps()["trtllm_qwen"]  # call counters: decoder layer i is call i+2 of the model
    assert t.match("Qwen3Model-2.Qwen3DecoderLayer-1.RMSNorm").layer == 0
    assert t.match("Qwen3Model-1.Embedding").entries[0].name == "embed"
    # Out of the model's layers: the next key (the final norm) is tried.
    assert t.match("Qwen3Model-4.RMSNorm", 2).entries[0].name == "final_norm"
    assert [e.name for e in t.match("Qwen3Model-3.Qwen3DecoderLayer-2.QKNormRoPEAttention-5.Linear").entries] == [
        "layers.1.attn.out", "layers.1.attn.o_proj"
    ]


def test_unreachable():
    nm = builtin_maps()["hf_gemma3"]
    assert nm.unreachable(capture_points(_spec(2, softcap=None))) == [
        "layers.0.attn.q",
        "layers.0.attn.k",
        "layers.1.attn.q",
        "layers.1.attn.k",
    ]
    assert "logits.pre_softcap" in builtin_maps()["vllm_llama"].unreachable(capture_points(_spec(1, sandwich=False)))


@pytest.mark.parametrize(
    "text,match",
    [
        ("[map", "not valid TOML"),
        ("[meta]\nname='x'", "non-empty \\[map\\]"),
        ("[map]\n'a' = { name = 'embed', from = 'middle' }", "`from` must be"),
        ("[map]\n'a' = { name = 'embed', index = -1 }", "`index` must be"),
        ("[map]\n'a' = 'x'\n[split.x]\ninto = ['a', 'b']\nsizes = [1]", "as long as `into`"),
        ("[meta]\nqk_layout = 'neox'\n[map]\n'a' = 'x'", "qk_layout"),
        ("[map]\n'a.{i}.b.{i}' = 'x'", "only once"),
    ],
)
def test_bad_toml(text, match):
    with pytest.raises(InputError, match=match):
        NameMap.from_toml(text, source="bad.toml")


# -- a vLLM-shaped toy: fused qkv/gate_up, (out, bias) linears, fused-residual norms ---------


class _Lin(nn.Linear):
    def forward(self, x):  # vLLM linears return (output, output_bias)
        return super().forward(x), None


class _Norm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.w = nn.Parameter(torch.randn(d))

    def forward(self, x, residual=None):  # vLLM RMSNorm: fused residual add when given one
        if residual is None:
            return x * self.w
        s = x + residual
        return s * self.w, s


class _Core(nn.Module):  # stands in for vllm Attention: (q, k, v) after rope → softmax·V
    def forward(self, q, k, v):
        return q * 0.5 + torch.cat([v, v], -1)


class _Attn(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.q_size, self.kv_size = d, d // 2
        self.qkv_proj, self.o_proj, self.attn = _Lin(d, 2 * d), _Lin(d, d), _Core()

    def forward(self, positions, h):
        qkv, _ = self.qkv_proj(h)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q, k = q * 2, k * 3  # "rope"
        o, _ = self.o_proj(self.attn(q, k, v))
        return o


class _MLP(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.gate_up_proj, self.down_proj = _Lin(d, 4 * d), _Lin(2 * d, d)

    def forward(self, x):
        gu, _ = self.gate_up_proj(x)
        g, u = gu.chunk(2, -1)
        return self.down_proj(torch.relu(g) * u)[0]


class _Layer(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.input_layernorm, self.post_attention_layernorm = _Norm(d), _Norm(d)
        self.self_attn, self.mlp = _Attn(d), _MLP(d)

    def forward(self, positions, h, residual):
        if residual is None:
            residual, h = h, self.input_layernorm(h)
        else:
            h, residual = self.input_layernorm(h, residual)
        h = self.self_attn(positions, h)
        h, residual = self.post_attention_layernorm(h, residual)
        return self.mlp(h), residual


class _Inner(nn.Module):
    def __init__(self, d, n, vocab):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(_Layer(d) for _ in range(n))
        self.norm = _Norm(d)

    def forward(self, input_ids, positions):
        h, residual = self.embed_tokens(input_ids), None
        for layer in self.layers:
            h, residual = layer(positions, h, residual)
        return self.norm(h, residual)[0]


class _Logits(nn.Module):
    def forward(self, lm_head, h):
        return h @ lm_head.weight.T


class _ToyVllm(nn.Module):
    def __init__(self, d=16, n=2, vocab=32):
        super().__init__()
        self.model, self.lm_head, self.logits_processor = _Inner(d, n, vocab), nn.Linear(d, vocab), _Logits()

    def forward(self, input_ids, positions):  # (T,) flat tokens, like vLLM
        return self.model(input_ids, positions)

    def compute_logits(self, h):  # called after forward, for the sampled rows only
        return self.logits_processor(self.lm_head, h)


def test_vllm_style_map_on_toy(tmp_path):
    torch.manual_seed(0)
    m = _ToyVllm().eval()
    ids = torch.tensor([3, 1, 4, 1, 5])
    with torch.no_grad(), capture_activations(m, tmp_path, name_map="vllm_llama") as cap:
        h = m(input_ids=ids, positions=torch.arange(5))
        m.compute_logits(h[-1:])
    assert cap.problems == []
    caps = load_dump(tmp_path)
    with torch.no_grad():  # recompute what each point should be, by hand
        e = m.model.embed_tokens(ids)
        L0 = m.model.layers[0]
        x = L0.input_layernorm(e)
        qkv = L0.self_attn.qkv_proj(x)[0]
        q, k, v = qkv.split([16, 8, 8], -1)
        out0 = L0(None, e, None)
        normed, resid = L0.post_attention_layernorm(L0.self_attn(None, x), e)
        gu = L0.mlp.gate_up_proj(normed)[0]
    torch.testing.assert_close(caps["layers.0.attn.q_proj"], q)
    torch.testing.assert_close(caps["layers.0.attn.q"], q * 2)  # post-"rope": attn's input
    torch.testing.assert_close(caps["layers.0.attn.k"], k * 3)
    torch.testing.assert_close(caps["layers.0.attn.v"], v)
    torch.testing.assert_close(caps["layers.0.out"], out0[0] + out0[1])  # index = "sum"
    torch.testing.assert_close(caps["layers.0.mlp_norm"], normed)
    torch.testing.assert_close(caps["layers.0.attn_residual"], resid)  # element 1 of the fused norm
    torch.testing.assert_close(torch.cat([caps["layers.0.mlp.gate"], caps["layers.0.mlp.up"]], -1), gu)
    # logits: computed after forward, one row → the trailing position; left out unless asked.
    assert "logits" not in caps and caps.meta["incomplete"]["logits"] == [4]
    kept = load_dump(tmp_path, keep_incomplete=True)
    assert kept["logits"].shape == (1, 32) and kept.meta["row_positions"]["logits"] == [4]


def test_split_sizes_must_add_up(tmp_path):
    torch.manual_seed(0)
    m = _ToyVllm()
    nm = resolve_name_map("vllm_llama")
    bad = NameMap.from_dict({**nm.to_dict(), "split": {"layers.{i}.attn.qkv": {"into": ["a", "b"], "sizes": [3, 4]}}})
    with torch.no_grad(), capture_activations(m, tmp_path, name_map=bad) as cap:
        m(input_ids=torch.tensor([1, 2]), positions=torch.arange(2))
    assert any("add up to 7" in p for p in cap.problems)


# -- dump errors ------------------------------------------------------------------------


@pytest.fixture
def dump(tmp_path):
    torch.manual_seed(0)
    m = _ToyVllm()
    with torch.no_grad(), capture_activations(m, tmp_path, name_map="vllm_llama", patterns=["layers.0.*"]):
        m(input_ids=torch.tensor([1, 2, 3]), positions=torch.arange(3))
    return tmp_path


def test_dump_missing_manifest(tmp_path):
    with pytest.raises(InputError, match="manifest.json: missing"):
        load_dump(tmp_path)
    with pytest.raises(InputError, match="no such dump folder"):
        load_dump(tmp_path / "nope")


def test_dump_missing_shard(dump):
    (dump / "step00000.safetensors").unlink()
    with pytest.raises(InputError, match="step00000.safetensors: missing"):
        load_dump(dump)


def test_dump_shape_mismatch(dump):
    man = json.loads((dump / "manifest.json").read_text())
    man["points"]["layers.0.attn.v"]["features"] = 99
    (dump / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(InputError, match=r"step00000.safetensors: layers.0.attn.v: shape \(3, 8\)"):
        load_dump(dump)


def test_dump_token_mismatch(dump):
    assert load_dump(dump, token_ids=[1, 2, 3, 4]).token_ids == [1, 2, 3]
    with pytest.raises(InputError, match="position 1 is 2 in the dump, 7 in the reference"):
        load_dump(dump, token_ids=[1, 7, 3])


def test_dump_not_ours(tmp_path):
    (tmp_path / "manifest.json").write_text('{"format": "other"}')
    with pytest.raises(InputError, match="not a layerbisect-engine-dump"):
        load_dump(tmp_path)
