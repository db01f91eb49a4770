"""A small convert_hf_to_gguf for our five architectures, so tests can make GGUFs of tiny models.

We follow llama.cpp's ``convert_hf_to_gguf.py`` (classes LlamaModel, Qwen2Model, Qwen3Model,
Gemma2Model, Gemma3Model) because the reference runner must read GGUFs *as llama.cpp writes
them*; a writer that matched only our own reader would prove nothing. The test that keeps us
honest: transformers' independent GGUF loader reads what we write back into the original
logits (tests/producers/test_gguf_writer.py).

Conventions, each from the converter:

- **Q/K rope permutation, llama only** (``LlamaModel.permute``): llama.cpp's ``llama`` arch
  uses interleaved ("normal") rope, HF uses rotate-half, so Q and K rows (and biases) are
  reordered per head: ``w.reshape(n_head, 2, d/2, ...).swapaxes(1, 2)``, K with n_head_kv.
  Qwen2/3 and Gemma use NeoX rope in llama.cpp: no permutation.
- **Gemma norms +1**: HF Gemma computes ``x * (1 + w)`` and stores ``w``; GGUF stores ``1 + w``
  for every tensor whose name ends in ``norm.weight`` (Gemma 3's q/k norms included).
- ``lm_head`` is written as ``output`` only when untied; Gemma 2 never writes it.
- 1-D tensors (norms, biases) stay F32 whatever the requested type, as llama.cpp does; a 2-D
  tensor whose rows don't divide into the quant block falls back to F16 (llama.cpp's fallback).

Metadata: the keys llama.cpp writes for each arch, plus ``key_length``/``value_length`` always
(Qwen 3 and Mistral-style head_dim differ from hidden/heads), ``vocab_size``, and for Gemma 2/3
the per-layer ``attention.sliding_window_pattern`` (bool per layer, True = sliding) and for
Gemma 3 ``rope.freq_base_swa`` -- llama.cpp hard-codes these two for gemma3 (pattern 6, local
base 10 000), writing them makes the file self-describing. A Mistral-style Llama is written
as arch ``llama``, as llama.cpp does. (transformers 5.17 turns a llama GGUF whose
``general.name`` contains "mistral" into model_type mistral and then fails to map its tensors,
so don't put "mistral" in ``name`` if transformers must read the file.)

Tokenizer: "gpt2" (byte-level BPE) metadata from the HF tokenizer.json: tokens, token types
(3 = control for added special tokens), merges, pre "gpt-2", bos/eos/pad, add_bos_token.

Tensor names are data (``_TENSOR_MAP``, ``{}`` = layer index); every HF tensor must be
consumed, or we raise listing the leftovers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from layerbisect.errors import InputError

TENSOR_TYPES: tuple[str, ...] = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")

# HF model_type -> GGUF architecture name.
_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma2": "gemma2",
         "gemma3_text": "gemma3", "gemma3": "gemma3"}

_GLOBAL_MAP = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER_MAP_COMMON = {
    "model.layers.{}.input_layernorm.weight": "blk.{}.attn_norm.weight",
    "model.layers.{}.self_attn.q_proj.weight": "blk.{}.attn_q.weight",
    "model.layers.{}.self_attn.k_proj.weight": "blk.{}.attn_k.weight",
    "model.layers.{}.self_attn.v_proj.weight": "blk.{}.attn_v.weight",
    "model.layers.{}.self_attn.q_proj.bias": "blk.{}.attn_q.bias",
    "model.layers.{}.self_attn.k_proj.bias": "blk.{}.attn_k.bias",
    "model.layers.{}.self_attn.v_proj.bias": "blk.{}.attn_v.bias",
    "model.layers.{}.self_attn.o_proj.weight": "blk.{}.attn_output.weight",
    "model.layers.{}.self_attn.q_norm.weight": "blk.{}.attn_q_norm.weight",
    "model.layers.{}.self_attn.k_norm.weight": "blk.{}.attn_k_norm.weight",
    "model.layers.{}.mlp.gate_proj.weight": "blk.{}.ffn_gate.weight",
    "model.layers.{}.mlp.up_proj.weight": "blk.{}.ffn_up.weight",
    "model.layers.{}.mlp.down_proj.weight": "blk.{}.ffn_down.weight",
}
# The trap: HF's "post_attention_layernorm" is the *pre-MLP* norm in Llama/Qwen (ffn_norm) but
# a real post-attention sandwich norm in Gemma 2/3, whose pre-MLP norm is pre_feedforward_layernorm.
_LAYER_MAP_LLAMA = {**_LAYER_MAP_COMMON, "model.layers.{}.post_attention_layernorm.weight": "blk.{}.ffn_norm.weight"}
_LAYER_MAP_GEMMA = {
    **_LAYER_MAP_COMMON,
    "model.layers.{}.post_attention_layernorm.weight": "blk.{}.post_attention_norm.weight",
    "model.layers.{}.pre_feedforward_layernorm.weight": "blk.{}.ffn_norm.weight",
    "model.layers.{}.post_feedforward_layernorm.weight": "blk.{}.post_ffw_norm.weight",
}
_TENSOR_MAP = {"llama": _LAYER_MAP_LLAMA, "qwen2": _LAYER_MAP_LLAMA, "qwen3": _LAYER_MAP_LLAMA,
               "gemma2": _LAYER_MAP_GEMMA, "gemma3": _LAYER_MAP_GEMMA}


def gguf_tensor_name(arch: str, hf_name: str) -> str | None:
    """GGUF name of an HF tensor for a GGUF ``arch``, or None if it has no counterpart."""
    if hf_name in _GLOBAL_MAP:
        return _GLOBAL_MAP[hf_name]
    parts = hf_name.split(".")
    if len(parts) > 3 and parts[0] == "model" and parts[1] == "layers" and parts[2].isdigit():
        pattern = ".".join(parts[:2] + ["{}"] + parts[3:])
        target = _TENSOR_MAP[arch].get(pattern)
        return target.format(parts[2]) if target else None
    return None


def llama_permute(w: torch.Tensor, n_head: int, n_head_kv: int | None) -> torch.Tensor:
    """llama.cpp's ``LlamaModel.permute``: HF rotate-half row order -> interleaved pairs, per head."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _rope_params(cfg: dict[str, Any]) -> dict[str, Any]:
    """rope settings in transformers 5 (``rope_parameters``) or 4 (``rope_theta``/``rope_scaling``) form."""
    rp = cfg.get("rope_parameters")
    if isinstance(rp, dict):
        return rp
    out = {"rope_theta": cfg.get("rope_theta", 10000.0)}
    if cfg.get("rope_scaling"):
        out.update(cfg["rope_scaling"])
        out.setdefault("rope_type", out.get("type", "default"))
    return out


def _llama3_rope_factors(rp: dict[str, Any], head_dim: int) -> np.ndarray:
    """llama.cpp's ``rope_freqs`` tensor for llama3 rope scaling (LlamaModel.generate_extra_tensors)."""
    base = rp.get("rope_theta", 10000.0)
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    factor = rp.get("factor", 8.0)
    low, high = rp.get("low_freq_factor", 1.0), rp.get("high_freq_factor", 4.0)
    old_ctx = rp.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def _load_hf_tensors(hf_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        raise InputError(hf_dir, "no *.safetensors files: not an HF checkpoint directory")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        tensors.update(load_file(f))
    return tensors


def _add_metadata(w: Any, arch: str, cfg: dict[str, Any], n_vocab: int) -> None:
    n_layer = cfg["num_hidden_layers"]
    n_head = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads") or n_head
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    rp = _rope_params(cfg)

    w.add_block_count(n_layer)
    w.add_context_length(cfg.get("max_position_embeddings", 4096))
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-6))
    w.add_vocab_size(n_vocab)

    if arch == "gemma3":
        # Gemma 3 keeps one rope_parameters entry per attention type.
        full = rp.get("full_attention", rp)
        local = rp.get("sliding_attention", {})
        w.add_rope_freq_base(full.get("rope_theta", 1_000_000.0))
        w.add_rope_freq_base_swa(local.get("rope_theta", 10000.0))
        if full.get("rope_type", "default") != "default":
            _add_rope_scaling(w, full, arch, None)
    else:
        w.add_rope_freq_base(rp.get("rope_theta", 10000.0))

    if arch == "llama":
        w.add_rope_dimension_count(head_dim)
        _add_rope_scaling(w, rp, arch, head_dim)
    if arch in ("gemma2", "gemma3"):
        if arch == "gemma2":
            w.add_attn_logit_softcapping(cfg["attn_logit_softcapping"])
        elif cfg.get("attn_logit_softcapping") is not None:
            raise InputError("config.json", "gemma3 has no attention softcap, but the config sets one")
        if cfg.get("final_logit_softcapping") is not None:
            w.add_final_logit_softcapping(cfg["final_logit_softcapping"])
        w.add_sliding_window(cfg["sliding_window"])
        layer_types = cfg.get("layer_types")
        if layer_types:
            w.add_sliding_window_pattern([t == "sliding_attention" for t in layer_types])
    if arch == "qwen2" and cfg.get("use_sliding_window"):
        w.add_sliding_window(cfg["sliding_window"])


def _add_rope_scaling(w: Any, rp: dict[str, Any], arch: str, head_dim: int | None) -> None:
    import gguf

    kind = rp.get("rope_type", rp.get("type", "default"))
    if kind == "default":
        return
    if kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rp["factor"])
    elif kind == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(rp["factor"])
        w.add_rope_scaling_orig_ctx_len(rp["original_max_position_embeddings"])
    elif kind == "llama3" and arch == "llama":
        pass  # written as the rope_freqs tensor, as llama.cpp does; no scaling keys
    else:
        raise InputError("config.json", f"rope scaling {kind!r} is not supported for {arch}")


def _add_tokenizer(w: Any, hf_dir: Path, n_vocab: int, cfg: dict[str, Any]) -> None:
    import gguf

    path = hf_dir / "tokenizer.json"
    if not path.is_file():
        raise InputError(hf_dir, "no tokenizer.json (the writer only handles byte-level BPE tokenizers)")
    tj = json.loads(path.read_text())
    model = tj["model"]
    if model.get("type") != "BPE":
        raise InputError(path, f"tokenizer model {model.get('type')!r} is not BPE")
    vocab: dict[str, int] = dict(model["vocab"])
    special_ids = set()
    for t in tj.get("added_tokens", []):
        vocab[t["content"]] = t["id"]
        if t.get("special"):
            special_ids.add(t["id"])
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise InputError(path, "token ids are not contiguous from 0")
    tokens = [""] * len(vocab)
    for tok, i in vocab.items():
        tokens[i] = tok
    # llama.cpp pads the token list up to the model's vocab size with [PADn] tokens.
    tokens += [f"[PAD{i}]" for i in range(len(tokens), n_vocab)]
    types = [gguf.TokenType.CONTROL if i in special_ids else gguf.TokenType.NORMAL for i in range(len(vocab))]
    types += [gguf.TokenType.UNUSED] * (len(tokens) - len(vocab))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    for key, add in (("bos_token_id", w.add_bos_token_id), ("eos_token_id", w.add_eos_token_id),
                     ("pad_token_id", w.add_pad_token_id)):
        v = cfg.get(key)
        if isinstance(v, list):
            v = v[0]
        if v is not None:
            add(int(v))
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)


def _encode(data: np.ndarray, qtype: Any) -> tuple[np.ndarray, Any]:
    """Encode one tensor as ``qtype`` (1-D stays F32; non-divisible rows fall back to F16)."""
    import gguf
    from gguf.quants import quantize

    T = gguf.GGMLQuantizationType
    if data.ndim <= 1 or qtype == T.F32:
        return data.astype(np.float32), T.F32
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    if data.shape[-1] % block:
        qtype = T.F16
    return quantize(data.astype(np.float32), qtype), qtype


def write_gguf_from_hf(hf_dir: str | Path, out_path: str | Path, *, tensor_type: str = "F32",
                       name: str | None = None) -> Path:
    """Convert an HF checkpoint of llama/mistral/qwen2/qwen3/gemma2/gemma3 to a GGUF file.

    ``tensor_type``: one of TENSOR_TYPES (what gguf-py can quantize; K-quants are not there).
    ``name`` is written as ``general.name`` (default: the directory name).
    """
    import gguf

    hf_dir = Path(hf_dir)
    out_path = Path(out_path)
    if tensor_type not in TENSOR_TYPES:
        raise InputError("tensor_type", f"{tensor_type!r} is not one of {', '.join(TENSOR_TYPES)}")
    cfg_path = hf_dir / "config.json"
    if not cfg_path.is_file():
        raise InputError(hf_dir, "no config.json: not an HF checkpoint directory")
    cfg = json.loads(cfg_path.read_text())
    if "text_config" in cfg:  # multimodal Gemma 3 wrapper: the text model is what we convert
        cfg = {**cfg["text_config"], "model_type": "gemma3_text"}
    model_type = cfg.get("model_type")
    if model_type not in _ARCH:
        raise InputError(cfg_path, f"model_type {model_type!r} is not one of {', '.join(sorted(_ARCH))}")
    if cfg.get("quantization_config"):
        raise InputError(cfg_path, "quantized HF checkpoints are not converted; give the unquantized one")
    arch = _ARCH[model_type]
    qtype = getattr(gguf.GGMLQuantizationType, tensor_type)

    tensors = _load_hf_tensors(hf_dir)
    tensors = {k.removeprefix("language_model."): v for k, v in tensors.items()}
    n_vocab = cfg["vocab_size"]
    n_head = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads") or n_head
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    tied = cfg.get("tie_word_embeddings", True)

    gname = name or hf_dir.name
    w = gguf.GGUFWriter(path=None, arch=arch)
    w.add_name(gname)
    _add_metadata(w, arch, cfg, n_vocab)
    _add_tokenizer(w, hf_dir, n_vocab, cfg)

    out_tensors: list[tuple[str, np.ndarray, Any]] = []
    leftovers = []
    for hf_name in sorted(tensors, key=_natural_key):
        t = tensors[hf_name].to(torch.float32)
        if hf_name == "lm_head.weight" and (tied or arch == "gemma2"):
            continue  # the output projection is token_embd
        gname_t = gguf_tensor_name(arch, hf_name)
        if gname_t is None:
            leftovers.append(hf_name)
            continue
        if arch == "llama" and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            t = llama_permute(t, n_head, n_head)
        elif arch == "llama" and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            t = llama_permute(t, n_head, n_kv)
        if arch in ("gemma2", "gemma3") and hf_name.endswith("norm.weight"):
            t = t + 1.0  # HF Gemma's x * (1 + w) -> GGUF stores 1 + w
        data, used = _encode(t.numpy(), qtype)
        out_tensors.append((gname_t, data, used))
    if leftovers:
        raise InputError(hf_dir, f"tensors with no GGUF name for {arch}: {', '.join(leftovers)}")

    rp = _rope_params(cfg)
    if arch == "llama" and rp.get("rope_type") == "llama3":
        out_tensors.append(("rope_freqs.weight", _llama3_rope_factors(rp, head_dim), gguf.GGMLQuantizationType.F32))

    # File type: what most 2-D tensors ended up as (as llama.cpp reports it).
    ftype = {"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
             "BF16": gguf.LlamaFileType.MOSTLY_BF16, "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
             "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "Q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
             "Q5_0": gguf.LlamaFileType.MOSTLY_Q5_0, "Q5_1": gguf.LlamaFileType.MOSTLY_Q5_1}[tensor_type]
    w.add_file_type(ftype)

    for gname_t, data, used in out_tensors:
        w.add_tensor(gname_t, data, raw_dtype=used)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".partial")
    w.write_header_to_file(path=tmp)
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.replace(out_path)  # never leave a half-written .gguf under the final name
    return out_path


def _natural_key(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in name.split(".")]
