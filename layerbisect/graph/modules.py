"""Getting and replacing a submodule by its canonical dotted name (``layers.3.mlp.experts.5.up_proj``), and a
second module tree over the same tensors (``shared_copy``)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def get_module(root: nn.Module, dotted: str) -> nn.Module:
    m = root
    for part in dotted.split("."):
        m = getattr(m, part) if not part.isdigit() else m[int(part)]  # type: ignore[index]
    return m


def set_module(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parent, _, leaf = dotted.rpartition(".")
    p = get_module(root, parent) if parent else root
    if leaf.isdigit():
        p[int(leaf)] = new  # type: ignore[index]
    else:
        setattr(p, leaf, new)


def shared_copy(root: nn.Module) -> nn.Module:
    """A new module tree over ``root``'s own tensors (nothing is copied but the modules and their plain state).

    Swapping modules, hooks or attributes (a KV quantizer, a capture recorder) into the copy leaves ``root``
    as it is, so another thread may run ``root`` meanwhile (the expected lane beside the localization). The
    copy starts with no hooks: those on ``root`` belong to whoever put them there (a probe in another thread),
    and their tables are never read here while that thread may change them.
    """
    memo: dict[int, object] = {}
    for m in root.modules():
        for k, v in vars(m).items():  # parameters, buffers and any tensor kept as a plain attribute
            if isinstance(v, torch.Tensor):
                memo[id(v)] = v
            elif "hooks" in k and isinstance(v, dict):
                memo[id(v)] = type(v)()
        for d in (m._parameters, m._buffers):
            memo.update({id(t): t for t in d.values() if t is not None})
    spec = getattr(root, "spec", None)
    if spec is not None:
        memo[id(spec)] = spec  # frozen: shared
    return copy.deepcopy(root, memo)


__all__ = ["get_module", "set_module", "shared_copy"]
