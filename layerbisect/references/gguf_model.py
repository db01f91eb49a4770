"""GGUF tensors → the graph's parameters, dequantized to FP32; the map derived from the built graph.

The spec comes from the GGUF's metadata through its family adapter (``families``); the graph
is built on ``meta``; each of its parameters is looked up in the GGUF name table
(``graph/names.py``, gguf-py's own tensor constants, with the family's overrides). Every
tensor in the file must be consumed and every parameter filled: what is left over on either
side is listed in the error, because a silently dropped tensor (a norm never mapped) is
exactly the class of bug this tool exists to find. Stacked expert tensors
(``blk.{i}.ffn_gate_exps``, numpy shape (E, out, in)) give one expert per graph linear.

Conventions (see ``spec.py``): GGUF stores Gemma 2/3 norms as 1 + w and llama Q/K rows
permuted for the ``normal`` rope ordering; the graph takes both as stored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import InputError
from ..families import family_of, spec_from_gguf
from ..graph import Decoder, meta_model
from ..graph.inventory import params
from ..graph.names import GGUF_EXTRA, GGUFSource, gguf_source, gguf_tensor_name
from ..spec import ModelSpec
from .gguf_dequant import dequantize
from .gguf_file import GGUFFile


def read_spec(f: GGUFFile) -> ModelSpec:
    return spec_from_gguf(f.fields, list(f.tensors), f.vocab_size(), path=str(f.path))


@dataclass(frozen=True)
class TensorMap:
    """Graph parameter → GGUF source, checked against the file's header (no weight read).

    ``transforms``: graph parameter → the family's function from the stored tensor to the
    graph's (``Family.gguf_transform``: llama.cpp conventions undone); ``apply`` runs it.
    """

    sources: dict[str, GGUFSource]
    extras: dict[str, str]  # graph attribute (``rope_freqs``) → GGUF tensor
    transforms: dict[str, Callable[[torch.Tensor], torch.Tensor]] = field(default_factory=dict)

    def under(self, prefix: str) -> dict[str, GGUFSource]:
        return {k[len(prefix):]: v for k, v in self.sources.items() if k.startswith(prefix)}

    def apply(self, param: str, t: torch.Tensor) -> torch.Tensor:
        fn = self.transforms.get(param)
        return t if fn is None else fn(t).contiguous()


def _file_shape(f: GGUFFile, name: str) -> tuple[int, ...]:
    return tuple(reversed([int(x) for x in f.tensors[name].shape]))


def map_tensors(f: GGUFFile, spec: ModelSpec, model: torch.nn.Module | None = None) -> TensorMap:
    """Derive the GGUF source of every parameter of ``spec``'s graph and check shapes from metadata only.

    Raises ``InputError`` naming the file and listing parameters without a tensor, tensors the
    graph does not use, and shape mismatches.
    """
    model = model if model is not None else meta_model(spec)
    fam = family_of(spec)
    overrides = fam.gguf_names
    sources: dict[str, GGUFSource] = {}
    transforms: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    missing: list[str] = []
    used: set[str] = set()
    for p in params(model):
        if p.name == "lm_head.weight" and spec.tied_embeddings:
            continue
        src = gguf_source(p.name, overrides)
        if src is None or src.tensor not in f.tensors:
            missing.append(p.name if src is None else f"{p.name} ({src.tensor})")
            continue
        shape = _file_shape(f, src.tensor)
        if src.expert is not None:
            if len(shape) != 3 or src.expert >= shape[0]:
                raise InputError(f.path, f"tensor {src.tensor!r} has shape {shape}: no expert {src.expert}")
            shape = shape[1:]
        if src.parts > 1:  # fused along the rows (ffn_gate_up_exps): this module's share
            if shape[0] % src.parts:
                raise InputError(f.path, f"tensor {src.tensor!r} has {shape[0]} rows, not {src.parts} equal parts")
            shape = (shape[0] // src.parts, *shape[1:])
        fn = fam.gguf_transform(p.name, spec)
        stored = shape
        if fn is not None:
            transforms[p.name] = fn
            try:
                shape = tuple(fn(torch.empty(shape, device="meta")).shape)
            except RuntimeError:  # a reshape the stored shape cannot take
                shape = ()
        if shape != p.shape:
            raise InputError(f.path, f"tensor {src.tensor!r} has shape {stored}, expected {p.shape} for {p.name}"
                             + (" (after undoing llama.cpp's layout)" if fn is not None else ""))
        sources[p.name] = src
        used.add(src.tensor)
    extras = {attr: gguf_tensor_name(t, None) + ".weight" for attr, t in GGUF_EXTRA.items()}
    extras = {attr: name for attr, name in extras.items() if name in f.tensors}
    used |= set(extras.values())
    unused = [n for n in f.tensors if n not in used]
    if missing or unused:
        parts = []
        if missing:
            parts.append(f"missing tensors for {len(missing)} parameters (e.g. {', '.join(missing[:4])})")
        if unused:
            parts.append(f"{len(unused)} tensors the {spec.arch} graph does not use (e.g. {', '.join(unused[:4])})")
        raise InputError(f.path, "; ".join(parts))
    return TensorMap(sources, extras, transforms)


def dequantize_source(f: GGUFFile, src: GGUFSource | str, *, device: torch.device | str | None = None,
                      rows: slice | None = None, impl: str = "auto") -> torch.Tensor:
    """FP32 tensor of one source (one expert of a stacked tensor; optionally a row slice of a 2-D one)."""
    if isinstance(src, str):
        src = GGUFSource(src)
    t = f.tensors[src.tensor]
    shape = _file_shape(f, src.tensor)
    data = t.data
    if src.expert is not None:  # an expert's slab is whole rows of whole blocks: slicing the bytes is exact
        data, shape = data[src.expert], shape[1:]
    if src.parts > 1:  # one module of a row-fused tensor: whole rows again
        n = shape[0] // src.parts
        data, shape = data[src.part * n:(src.part + 1) * n], (n, *shape[1:])
    if rows is not None:
        data = data[rows]
        shape = (data.shape[0], *shape[1:])
    return dequantize(data, t.tensor_type, shape, device=device, name=src.tensor, impl=impl)


def load_reference_model(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[Decoder, GGUFFile]:
    """Build the graph on ``meta`` and fill it with the GGUF's tensors dequantized to FP32."""
    f = GGUFFile(path)
    spec = read_spec(f)
    model = meta_model(spec)
    tmap = map_tensors(f, spec, model)
    state: dict[str, torch.Tensor] = {}
    items = list(tmap.sources.items())
    for n, (target, src) in enumerate(items):
        if progress:
            progress(src.tensor, n, len(items))
        state[target] = tmap.apply(target, dequantize_source(f, src, device=device))
    if progress:
        progress("done", len(items), len(items))
    if spec.tied_embeddings:
        state["lm_head.weight"] = state["embed.weight"]
    model.load_state_dict(state, assign=True, strict=True)
    if spec.tied_embeddings:
        model.lm_head.weight = model.embed.weight
    attach_extras(model, f, tmap, device)
    return model.eval(), f


def attach_extras(model: torch.nn.Module, f: GGUFFile, tmap: TensorMap, device: torch.device | str | None,
                  layers: list | None = None) -> None:
    """Give layers that use a ``rope_freqs`` tensor their factors (llama3 scaling; Gemma 4 proportional rope)."""
    name = tmap.extras.get("rope_freqs")
    if name is None:
        return
    freqs = dequantize_source(f, name, device=device)
    for layer in layers if layers is not None else model.layers:
        rope = getattr(layer.attn, "spec", None) and layer.attn.spec.rope
        if rope is not None and rope.freq_factors:
            layer.attn.rope_freqs = freqs
