"""GGUF tensors → the canonical graph's parameters, dequantized to FP32.

The name map is data: GGUF names with ``{i}`` for the layer index → graph parameter names.
Every tensor in the file must be consumed and every parameter filled; what is left over on
either side is listed in the error, because a silently dropped tensor (a norm never mapped)
is exactly the class of bug this tool exists to find.

Conventions (see ``config.py``): GGUF stores Gemma norms as 1 + w and llama Q/K rows
permuted for the ``normal`` rope ordering; the graph takes both as stored.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch

from ..config import ModelConfig, config_from_gguf
from ..errors import InputError
from ..model import Decoder
from .gguf_dequant import dequantize_reader_tensor
from .gguf_file import GGUFFile

GLOBAL_MAP = {
    "token_embd.weight": "embed.weight",
    "output_norm.weight": "final_norm.weight",
    "output.weight": "lm_head.weight",
}
LAYER_MAP = {
    "attn_norm.weight": "attn_norm.weight",
    "attn_q.weight": "attn.q_proj.weight",
    "attn_q.bias": "attn.q_proj.bias",
    "attn_k.weight": "attn.k_proj.weight",
    "attn_k.bias": "attn.k_proj.bias",
    "attn_v.weight": "attn.v_proj.weight",
    "attn_v.bias": "attn.v_proj.bias",
    "attn_output.weight": "attn.o_proj.weight",
    "attn_q_norm.weight": "attn.q_norm.weight",
    "attn_k_norm.weight": "attn.k_norm.weight",
    "post_attention_norm.weight": "post_attn_norm.weight",
    "ffn_norm.weight": "mlp_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    "post_ffw_norm.weight": "post_mlp_norm.weight",
}
_BLK = re.compile(r"^blk\.(\d+)\.(.+)$")


def canonical_name(gguf_name: str) -> str | None:
    """GGUF tensor name → graph parameter name (None if the graph has no such parameter)."""
    if gguf_name in GLOBAL_MAP:
        return GLOBAL_MAP[gguf_name]
    m = _BLK.match(gguf_name)
    if m and m.group(2) in LAYER_MAP:
        return f"layers.{m.group(1)}.{LAYER_MAP[m.group(2)]}"
    return None


def read_config(f: GGUFFile) -> ModelConfig:
    return config_from_gguf(f.fields, f.vocab_size(), has_output="output.weight" in f.tensors, path=str(f.path))


def map_tensors(f: GGUFFile, cfg: ModelConfig, expected: dict[str, tuple[int, ...]]) -> dict[str, str]:
    """Graph parameter name → GGUF tensor name (plus ``rope_freqs`` if present), checked from metadata only.

    Shapes come from the file's header, so a whole model is validated without reading one weight
    (the streaming runner relies on this); every error names what was left over on either side.
    """
    mapping: dict[str, str] = {}
    unmapped: list[str] = []
    for name, t in f.tensors.items():
        if name == "rope_freqs.weight":
            mapping["rope_freqs"] = name
            continue
        target = canonical_name(name)
        if target is None or target not in expected:
            unmapped.append(name)
            continue
        shape = tuple(reversed([int(x) for x in t.shape]))
        if shape != tuple(expected[target]):
            raise InputError(f.path, f"tensor {name!r} has shape {shape}, expected {tuple(expected[target])}")
        mapping[target] = name
    missing = sorted(set(expected) - set(mapping))
    if missing or unmapped:
        parts = []
        if missing:
            parts.append(f"missing tensors for {len(missing)} parameters (e.g. {', '.join(missing[:4])})")
        if unmapped:
            parts.append(f"{len(unmapped)} tensors the {cfg.arch} graph does not use (e.g. {', '.join(unmapped[:4])})")
        raise InputError(f.path, "; ".join(parts))
    return mapping


def expected_shapes(model: Decoder) -> dict[str, tuple[int, ...]]:
    """Parameter name → shape the GGUF must provide (``lm_head`` is ``token_embd`` when tied)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if model.cfg.tied_embeddings:
        expected.pop("lm_head.weight")
    return expected


def load_reference_model(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[Decoder, GGUFFile]:
    """Build the graph on ``meta`` and fill it with the GGUF's tensors dequantized to FP32."""
    f = GGUFFile(path)
    cfg = read_config(f)
    with torch.device("meta"):
        model = Decoder(cfg)
    mapping = map_tensors(f, cfg, expected_shapes(model))
    state: dict[str, torch.Tensor] = {}
    for n, (target, name) in enumerate(mapping.items()):
        if progress:
            progress(name, n, len(mapping))
        state[target] = dequantize_reader_tensor(f.tensors[name], device=device)
    if progress:
        progress("done", len(mapping), len(mapping))
    rope_freqs = state.pop("rope_freqs", None)
    if cfg.tied_embeddings:
        state["lm_head.weight"] = state["embed.weight"]
    model.load_state_dict(state, assign=True, strict=True)
    if cfg.tied_embeddings:
        model.lm_head.weight = model.embed.weight
    for layer in model.layers:
        layer.attn.rope_freqs = rope_freqs
    return model.eval(), f
