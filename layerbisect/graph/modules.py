"""Getting and replacing a submodule by its canonical dotted name (``layers.3.mlp.experts.5.up_proj``)."""

from __future__ import annotations

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


__all__ = ["get_module", "set_module"]
