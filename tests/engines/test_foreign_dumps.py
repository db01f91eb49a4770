"""Other engines' own dumps read through ``load_dump``: SGLang's dumper and per-pass tensor dump,
TensorRT-LLM's debug hook.

Three kinds of evidence:

- Real SGLang files (``data/sglang/``), written by SGLang 0.5.23's own ``dumper.py`` and
  ``tensor_dump_forward_hook.py`` driving a tiny transformers Llama (``scripts/sglang_dump.py``,
  see ``data/README.md``): read with the ``hf_llama`` map and compared with our FP32 reference
  of the same weights. When the SGLang venv exists, a slow test writes them again.
- Files written to the engines' formats by the tests (layouts read from the engines' sources,
  cited in ``layerbisect/engines/foreign.py``) from toy models shaped like SGLang's and
  TensorRT-LLM's module trees; the canonical tensors must equal what ``capture_activations``
  records from the same toy through the equivalent hook map.
- Refusals: pickles that are not plain tensors/dicts, tensor-parallel shards, unknown folders.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from layerbisect.engines import capture_activations, load_dump
from layerbisect.engines.dump import detect_format
from layerbisect.errors import InputError

DATA = Path(__file__).parent / "data"
SGLANG_VENV_PY = Path(os.environ.get("LAYERBISECT_SGLANG_PYTHON", "/work/venvs/sglang/bin/python"))
REPO = Path(__file__).resolve().parents[2]
PROMPT = [1, 40, 41, 42, 43]


# -- real SGLang files --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llama64(tmp_path_factory):
    """The model behind data/sglang: tiny llama, hidden 64, 2 layers, vocab 260, bf16, seed 0."""
    from layerbisect.producers.gguf_writer import write_gguf_from_hf
    from layerbisect.producers.tiny import make_tiny_hf

    root = tmp_path_factory.mktemp("llama64")
    hf = make_tiny_hf("llama", root / "hf", dtype="bfloat16", hidden=64, n_layers=2, vocab=260)
    return hf, write_gguf_from_hf(hf, root / "ref.gguf", tensor_type="F32")


def _compare(gguf: Path, dump: Path, **kw):
    from layerbisect.pipeline import CompareOptions, compare

    opts = CompareOptions(generate=0, localize=False, dump_map="hf_llama", **kw)
    return compare(gguf, candidate_dump=dump, options=opts).comparison


def test_sglang_dumper_real_files(tiny_llama64):
    dump = DATA / "sglang" / "dumper"
    assert detect_format(dump)[0] == "sglang-dumper"
    caps = load_dump(dump, name_map="hf_llama")
    assert caps.token_ids == PROMPT and caps.meta["positions"] == [0, 1, 2, 3, 4]
    assert caps.meta["problems"] == []
    for i in range(2):  # module outputs, o_proj's input, the decoder layer's own output
        for op in ("attn_norm", "attn.out", "attn.o_proj", "mlp_norm", "mlp.down", "out"):
            assert f"layers.{i}.{op}" in caps.names(), (i, op, caps.names())
    cmp = _compare(tiny_llama64[1], dump)
    worst = min(p.min_cosine for p in cmp.points.values())
    assert len(cmp.points) >= 20 and worst > 0.999, {n: p.min_cosine for n, p in cmp.points.items()}


def test_sglang_passes_real_files(tiny_llama64):
    dump = DATA / "sglang" / "passes"
    fmt, folder = detect_format(dump)
    assert fmt == "sglang-tensor-dump" and folder.name.startswith("TP0_PP0_Rank0_pid")
    caps = load_dump(dump, name_map="hf_llama", keep_incomplete=True)
    # HF models get no ForwardBatch: no token ids in the files; prefill (5) + one decode step.
    assert caps.token_ids == [] and caps.meta["positions"] == [0, 1, 2, 3, 4, 5]
    # lm_head of pass 0 is in Pass00001 (written after the hook on `model` dumped pass 0): moved back.
    assert caps.meta["row_positions"]["logits.pre_softcap"] == [0, 1, 2, 3, 4]
    assert any("next pass's file" in p for p in caps.meta["problems"])
    cmp = _compare(tiny_llama64[1], dump, tokens=PROMPT + [172])
    worst = min(p.min_cosine for p in cmp.points.values())
    assert len(cmp.points) >= 14 and worst > 0.999, {n: p.min_cosine for n, p in cmp.points.items()}


@pytest.mark.slow
@pytest.mark.skipif(not SGLANG_VENV_PY.exists(), reason=f"no SGLang venv at {SGLANG_VENV_PY}; docs/ENGINE_CAPTURE.md")
def test_sglang_dumps_regenerate_with_sglang(tiny_llama64, tmp_path):
    """SGLang's own dump code writes the same layout and values as the committed files."""
    hf, _ = tiny_llama64
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run(
        [str(SGLANG_VENV_PY), str(REPO / "scripts" / "sglang_dump.py"), str(hf), str(tmp_path), "--decode", "1"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["steps"] == [PROMPT, [172]]
    fresh = load_dump(tmp_path / "dumper", name_map="hf_llama")
    kept = load_dump(DATA / "sglang" / "dumper", name_map="hf_llama")
    for n in kept.names():
        torch.testing.assert_close(fresh[n][: len(PROMPT)], kept[n], rtol=0, atol=0, msg=n)


# -- refusals -----------------------------------------------------------------------------------


class _NotATensor:
    pass


def test_pickled_object_refused_in_one_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    bad = run / "step=0___rank=0___dump_index=1___name=x.pt"
    torch.save({"value": _NotATensor(), "meta": {}}, bad)
    with pytest.raises(InputError) as e:
        load_dump(tmp_path, name_map="sglang_llama")
    msg = str(e.value)
    assert "weights_only=True" in msg and "\n" not in msg and bad.name in msg


def test_several_ranks_refused(tmp_path):
    for r in (0, 1):
        f = tmp_path / f"step=0___rank={r}___dump_index=1___name=a.pt"
        torch.save({"value": torch.zeros(2, 3), "meta": {}}, f)
    with pytest.raises(InputError, match=r"ranks \[0, 1\]: tensor-parallel shards"):
        load_dump(tmp_path, name_map="sglang_llama")
    t = tmp_path / "t"
    for r in (0, 1):
        (t / f"rank{r}").mkdir(parents=True)
        torch.save(torch.zeros(1), t / f"rank{r}" / "1.M-1.Linear-output.1.pt")
    with pytest.raises(InputError, match="2 TensorRT-LLM rank folders"):
        load_dump(t)


def test_pass_file_not_a_dict(tmp_path):
    torch.save([torch.zeros(1)], tmp_path / "Pass00000.pt")
    with pytest.raises(InputError, match="Pass00000.pt: not a dict"):
        load_dump(tmp_path)


def test_unknown_folder(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"")
    with pytest.raises(InputError, match="manifest.json: missing: not an engine dump"):
        load_dump(tmp_path)


# -- toy models shaped like the engines' module trees ---------------------------------------------

D, H, KV, HD, VOCAB, N = 32, 4, 2, 8, 50, 2


class _Lin(nn.Linear):  # vLLM/SGLang linears return (out, bias)
    def forward(self, x):
        return super().forward(x), None


class _Norm(nn.Module):  # fused residual add when given one: (normed, x + residual)
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(D) + 0.5)

    def forward(self, x, residual=None):
        if residual is None:
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight
        s = x + residual
        return s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight, s


class _Core(nn.Module):  # stands in for RadixAttention: (q, k, v) after rope → softmax·V
    def forward(self, q, k, v, forward_batch=None):
        qh, kh, vh = q.view(-1, H, HD), k.view(-1, KV, HD), v.view(-1, KV, HD)
        kh, vh = kh.repeat_interleave(H // KV, 1), vh.repeat_interleave(H // KV, 1)
        a = torch.softmax(torch.einsum("thd,shd->hts", qh, kh) / HD**0.5, -1)
        return torch.einsum("hts,shd->thd", a, vh).reshape(-1, H * HD)


class _SglAttn(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_size, self.kv_size = H * HD, KV * HD
        self.qkv_proj, self.o_proj, self.attn = _Lin(D, (H + 2 * KV) * HD), _Lin(H * HD, D), _Core()

    def forward(self, positions, h, fb=None):
        q, k, v = self.qkv_proj(h)[0].split([self.q_size, self.kv_size, self.kv_size], -1)
        q, k = q * torch.cos(positions[:, None] * 0.1), k * 1.5  # "rope"
        return self.o_proj(self.attn(q, k, v, fb))[0]


class _SglMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate_up_proj, self.down_proj = _Lin(D, 4 * D), _Lin(2 * D, D)

    def forward(self, x):
        g, u = self.gate_up_proj(x)[0].chunk(2, -1)
        return self.down_proj(torch.nn.functional.silu(g) * u)[0]


class _SglLayer(nn.Module):
    """SGLang 0.5.23 layer boundaries: the residual lives outside; the layer returns its MLP output."""

    def __init__(self):
        super().__init__()
        self.input_layernorm, self.post_attention_layernorm = _Norm(), _Norm()
        self.self_attn, self.mlp = _SglAttn(), _SglMLP()

    def forward(self, positions, h, stream):
        if stream["residual"] is None:
            stream["residual"], h = h, self.input_layernorm(h)
        else:
            h, stream["residual"] = self.input_layernorm(h, stream["residual"])
        h = self.self_attn(positions, h)
        h, stream["residual"] = self.post_attention_layernorm(h, stream["residual"])
        return self.mlp(h)


class _SglModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_tokens = nn.Embedding(VOCAB, D)
        self.layers = nn.ModuleList(_SglLayer() for _ in range(N))
        self.norm = _Norm()

    def forward(self, input_ids, positions):
        h, stream = self.embed_tokens(input_ids), {"residual": None}
        for layer in self.layers:
            h = layer(positions, h, stream)
        return self.norm(h, stream["residual"])[0]


class _Logits(nn.Module):
    def forward(self, input_ids, h, lm_head):  # sampled row only
        return h[-1:] @ lm_head.weight.T


class _SglCausalLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.model, self.lm_head, self.logits_processor = _SglModel(), nn.Linear(D, VOCAB), _Logits()
        self.config = SimpleNamespace(model_type="qwen3", num_hidden_layers=N)

    def forward(self, input_ids, positions):
        return self.logits_processor(input_ids, self.model(input_ids, positions), self.lm_head)


_CFG = SimpleNamespace(arch="qwen3", n_layers=N, n_heads=H, n_kv_heads=KV, head_dim=HD)


def _write_sglang_dumper(model: nn.Module, folder: Path, steps: list[list[int]]) -> None:
    """Files in the SGLang dumper's non-intrusive ``all`` layout (dumper.py, sglang 0.5.23):
    ``step=…___rank=0___dump_index=…___name=non_intrusive__{module}.{inputs.i|output[.j]}…``
    holding ``{"value", "meta"}``; ``input_ids``/``positions`` as core fields; ``layer_id``
    context on modules inside ``layers.N``."""
    state = {"step": 0, "index": 0, "layer": None}

    def save(name, t):
        state["index"] += 1
        tags = {"step": state["step"], "rank": 0, "dump_index": state["index"], "name": name,
                "recompute_status": "disabled"}
        if state["layer"] is not None:
            tags["layer_id"] = state["layer"]
        fname = "___".join(f"{k}={v}" for k, v in tags.items()) + ".pt"
        torch.save({"value": t.detach().clone(), "meta": {**tags, "world_rank": 0, "world_size": 1}}, folder / fname)

    def tensors(v):
        if isinstance(v, torch.Tensor):
            return {"": v}
        ts = [t for t in v if isinstance(t, torch.Tensor)] if isinstance(v, (tuple, list)) else []
        return {"": ts[0]} if len(ts) == 1 else {str(i): t for i, t in enumerate(ts)}

    def pre(name):
        def hook(mod, args, kwargs):
            if name.startswith("model.layers.") and name.count(".") == 2:
                state["layer"] = int(name.split(".")[2])
            for i, a in enumerate(args):
                for k, t in tensors(a).items():
                    save(f"non_intrusive__{name + '.' if name else ''}inputs.{i}" + (f".{k}" if k else ""), t)
        return hook

    def post(name):
        def hook(mod, args, out):
            for k, t in tensors(out).items():
                save(f"non_intrusive__{name + '.' if name else ''}output" + (f".{k}" if k else ""), t)
            if name.startswith("model.layers.") and name.count(".") == 2:
                state["layer"] = None
        return hook

    hs = []
    for name, mod in model.named_modules():
        if name:
            hs += [mod.register_forward_pre_hook(pre(name), with_kwargs=True), mod.register_forward_hook(post(name))]
    folder.mkdir(parents=True)
    start = 0
    with torch.no_grad():
        for ids in steps:
            pos = torch.arange(start, start + len(ids))
            save("input_ids", torch.tensor(ids))
            save("positions", pos)
            model(torch.tensor(ids), pos)
            state["step"] += 1
            start += len(ids)
    for h in hs:
        h.remove()


def test_sglang_map_on_dumper_layout_equals_hook_capture(tmp_path):
    torch.manual_seed(0)
    model = _SglCausalLM().eval()
    ids = [3, 1, 4, 1, 5, 9]
    _write_sglang_dumper(model, tmp_path / "dump" / "run", [ids])
    got = load_dump(tmp_path / "dump", config=_CFG, keep_incomplete=True)  # default map for the format
    assert got.meta["name_map"] == "sglang_llama" and got.meta["problems"] == []
    with torch.no_grad(), capture_activations(model, tmp_path / "hook", name_map="sglang_llama") as cap:
        model(torch.tensor(ids), torch.arange(len(ids)))
    assert cap.problems == []
    want = load_dump(tmp_path / "hook", keep_incomplete=True)
    assert set(got.names()) == set(want.names())
    for n in want.names():
        torch.testing.assert_close(got[n], want[n], msg=n)
    # Layer outputs come from the next norm's residual ({i-1}) and model.norm's ({last}).
    with torch.no_grad():
        e = model.model.embed_tokens(torch.tensor(ids))
        x0 = e + model.model.layers[0].self_attn(torch.arange(6), model.model.layers[0].input_layernorm(e))
        n0, r0 = model.model.layers[0].post_attention_layernorm(torch.zeros_like(x0), x0)
        out0 = r0 + model.model.layers[0].mlp(n0)
    torch.testing.assert_close(got["layers.0.out"], out0)
    assert {f"layers.{i}.out" for i in range(N)} <= set(got.names())
    assert got.meta["row_positions"]["logits"] == [5]


# -- TensorRT-LLM: toy with its class names and call structure; files in its debug-hook layout ---


class Linear(nn.Linear):
    def forward(self, input):  # noqa: A002 - TensorRT-LLM's parameter name, used in file names
        return super().forward(input)


class LMHead(Linear):
    pass


class Embedding(nn.Embedding):
    def forward(self, input):  # noqa: A002
        return super().forward(input)


class RMSNorm(nn.Module):  # modules/rms_norm.py: forward(hidden_states, residual=...)
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(D) + 0.5)

    def forward(self, hidden_states, residual=...):
        if isinstance(residual, torch.Tensor):
            hidden_states = hidden_states + residual
            residual = hidden_states
        out = hidden_states * torch.rsqrt(hidden_states.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight
        return out if residual is ... else (out, residual)


class QKNormRoPEAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_size, self.kv_size = H * HD, KV * HD
        self.qkv_proj, self.o_proj, self.core = Linear(D, (H + 2 * KV) * HD), Linear(H * HD, D), _Core()

    def forward(self, position_ids, hidden_states, attn_metadata=None):
        q, k, v = self.qkv_proj(hidden_states).split([self.q_size, self.kv_size, self.kv_size], -1)
        q, k = q * torch.cos(position_ids[:, None] * 0.1), k * 1.5
        return self.o_proj(self.core.forward(q, k, v))  # the backend is not a module call


class GatedMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate_up_proj, self.down_proj = Linear(D, 4 * D), Linear(2 * D, D)

    def forward(self, x, all_rank_num_tokens=None):
        g, u = self.gate_up_proj(x).chunk(2, -1)
        return self.down_proj(torch.nn.functional.silu(g) * u)


class Qwen3DecoderLayer(nn.Module):  # modeling_qwen3.py: returns (hidden_states, residual)
    def __init__(self):
        super().__init__()
        self.self_attn, self.mlp = QKNormRoPEAttention(), GatedMLP()
        self.input_layernorm, self.post_attention_layernorm = RMSNorm(), RMSNorm()

    def forward(self, position_ids, hidden_states, attn_metadata, residual):
        if residual is None:
            residual, hidden_states = hidden_states, self.input_layernorm(hidden_states)
        else:
            hidden_states, residual = self.input_layernorm(hidden_states, residual)
        hidden_states = self.self_attn(position_ids=position_ids, hidden_states=hidden_states, attn_metadata=None)
        hidden_states, residual = self.post_attention_layernorm(hidden_states, residual)
        return self.mlp(hidden_states), residual


class Qwen3Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_tokens = Embedding(VOCAB, D)
        self.layers = nn.ModuleList(Qwen3DecoderLayer() for _ in range(N))
        self.norm = RMSNorm()

    def forward(self, attn_metadata=None, input_ids=None, position_ids=None):
        h, residual = self.embed_tokens(input_ids), None
        for layer in self.layers:
            h, residual = layer(position_ids=position_ids, hidden_states=h, attn_metadata=None, residual=residual)
        return self.norm(h, residual)[0]


class _TrtCausalLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.model, self.lm_head = Qwen3Model(), LMHead(D, VOCAB)
        self.q_size = H * HD

    def forward(self, input_ids, position_ids):
        h = self.model(input_ids=input_ids, position_ids=position_ids)
        return self.lm_head(h[-1:])  # the logits processor keeps the last token


def _trtllm_debug_mode(model: nn.Module, folder: Path):
    """The naming of TensorRT-LLM's ``debug_hook.py`` (commit cd8f10d), ported for the test: a
    stack of class names with per-depth call counters, positional inputs before the forward,
    then positional inputs again and the outputs after it, each named after the forward's c-th
    parameter or ``c``."""
    names: list[str] = []
    counters: list[int] = []
    state = {"pre": True}

    def dump(module, data):
        argnames = inspect.getfullargspec(module.forward).args[1:]
        counter = 0

        def one(t):
            nonlocal counter
            path = "-".join(f"{counters[i]}.{names[i]}" for i in range(len(names)))
            kind = "input" if state["pre"] else "output"
            tname = argnames[counter] if counter < len(argnames) else str(counter)
            counter += 1
            torch.save(t.detach().clone(), folder / f"{path}-{kind}.{tname}.pt")

        def walk(x):
            if isinstance(x, torch.Tensor):
                one(x)
            elif isinstance(x, (tuple, list)):
                for y in x:
                    walk(y)

        walk(data)

    def pre(module, args, kwargs):
        state["pre"] = True
        names.append(type(module).__name__)
        if not counters:
            counters.append(0)
        if len(names) >= len(counters):
            counters.append(0)
        counters[len(names) - 1] += 1
        dump(module, args)

    def post(module, args, kwargs, output):
        state["pre"] = False
        dump(module, [args, output])
        names.pop()
        counters.pop()

    hs = []
    for name, sub in model.named_modules():
        if name:
            hs.append(sub.register_forward_hook(post, with_kwargs=True, always_call=True))
            hs.append(sub.register_forward_pre_hook(pre, with_kwargs=True))
    return hs


def test_trtllm_hook_layout_equals_hook_capture(tmp_path):
    torch.manual_seed(0)
    model = _TrtCausalLM().eval()
    folder = tmp_path / "dump" / "rank0"
    folder.mkdir(parents=True)
    prompt = [7, 3, 9, 2, 11]
    hs = _trtllm_debug_mode(model, folder)
    with torch.no_grad():  # prefill, then one decode step (the toy recomputes, like a cache-less engine)
        model(torch.tensor(prompt), torch.arange(5))
    for h in hs:
        h.remove()
    assert (folder / "1.Qwen3Model-2.Qwen3DecoderLayer-output.position_ids.pt").is_file()  # an OUTPUT, named so
    got = load_dump(tmp_path / "dump", config=_CFG, keep_incomplete=True)
    assert got.meta["format"] == "trtllm-debug-hook" and got.meta["name_map"] == "trtllm_qwen"
    assert got.token_ids == prompt  # from the Embedding's positional input
    vmap = tmp_path / "toy.toml"  # the same points by module name, for the hook capture
    vmap.write_text("""
[meta]
name = "toy"
qk_layout = "hf"
[map]
"model.embed_tokens" = "embed"
"model.norm" = "final_norm"
"model.layers.{i}.input_layernorm" = "layers.{i}.attn_norm"
"model.layers.{i}.self_attn.qkv_proj" = "layers.{i}.attn.qkv"
"model.layers.{i}.self_attn.o_proj" = [{ name = "layers.{i}.attn.out", from = "input" }, "layers.{i}.attn.o_proj"]
"model.layers.{i}.post_attention_layernorm" = [
    { name = "layers.{i}.mlp_norm" }, { name = "layers.{i}.attn_residual", index = 1 },
]
"model.layers.{i}.mlp.gate_up_proj" = "layers.{i}.mlp.gate_up"
"model.layers.{i}.mlp.down_proj" = [{ name = "layers.{i}.mlp.act", from = "input" }, "layers.{i}.mlp.down"]
"model.layers.{i}" = { name = "layers.{i}.out", index = "sum" }
"lm_head" = "logits"
[split."layers.{i}.attn.qkv"]
into = ["layers.{i}.attn.q_proj", "layers.{i}.attn.k_proj", "layers.{i}.attn.v"]
sizes = ["q_size", "kv_size", "kv_size"]
[split."layers.{i}.mlp.gate_up"]
into = ["layers.{i}.mlp.gate", "layers.{i}.mlp.up"]
sizes = "equal"
""")
    model.config = SimpleNamespace(model_type="qwen3", num_hidden_layers=N)
    with torch.no_grad(), capture_activations(model, tmp_path / "hook", name_map=vmap) as cap:
        model(input_ids=torch.tensor(prompt), position_ids=torch.arange(5))
    assert cap.problems == []
    want = load_dump(tmp_path / "hook", keep_incomplete=True)
    assert set(got.names()) == set(want.names()), set(got.names()) ^ set(want.names())
    for n in want.names():
        torch.testing.assert_close(got[n], want[n], msg=n)


# -- q/k layout ---------------------------------------------------------------------------------


def test_hf_qk_layout_permuted_for_llama(tmp_path):
    from layerbisect.families.base import qk_permutation

    torch.manual_seed(0)
    model = _SglCausalLM().eval()
    ids = [3, 1, 4]
    _write_sglang_dumper(model, tmp_path / "d" / "run", [ids])
    qwen = load_dump(tmp_path / "d", config=_CFG)
    llama = load_dump(tmp_path / "d", config=SimpleNamespace(**{**vars(_CFG), "arch": "llama"}))
    assert "qk_permuted" not in qwen.meta
    qk = {f"layers.{i}.attn.{p}" for i in range(N) for p in ("q", "k", "q_proj", "k_proj")}
    assert set(llama.meta["qk_permuted"]) == qk
    torch.testing.assert_close(llama["layers.1.attn.q"], qwen["layers.1.attn.q"][:, qk_permutation(H, HD)])
    torch.testing.assert_close(llama["layers.1.attn.k"], qwen["layers.1.attn.k"][:, qk_permutation(KV, HD)])
    torch.testing.assert_close(llama["layers.1.attn.v"], qwen["layers.1.attn.v"])


def test_committed_sglang_data_is_small():
    for kind in ("dumper", "passes"):
        total = sum(p.stat().st_size for p in (DATA / "sglang" / kind).rglob("*.pt"))
        assert total < 200_000, (kind, total)
