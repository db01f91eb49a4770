"""A HF-style checkpoint directory: config.json + one or more safetensors (with or without an index).

Tensors are read lazily through ``safetensors.safe_open`` (memory-mapped). Corrupt headers,
index entries pointing at missing files, and directories without weights are one
``InputError`` each, naming the file.
"""

from __future__ import annotations

import json
import struct
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..errors import InputError


def _check_header(path: Path) -> None:
    """Validate the safetensors header ourselves: the library's own errors are not user-facing."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise InputError(path, "corrupt safetensors file: shorter than its 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100_000_000:
            raise InputError(path, f"corrupt safetensors header: declares {n} header bytes in a {size}-byte file")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(path, f"corrupt safetensors header: not JSON ({e.__class__.__name__})") from None
    end = 8 + n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            lo, hi = info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise InputError(path, f"corrupt safetensors header: entry {name!r} has no data_offsets") from None
        if end + hi > size:
            raise InputError(path, f"truncated: tensor {name!r} ends at byte {end + hi} but the file has {size}")


class Checkpoint:
    """name → tensor access over all safetensors files of a checkpoint directory."""

    def __init__(self, path: str | Path):
        self.dir = Path(path)
        cfg_path = self.dir / "config.json"
        if not cfg_path.is_file():
            raise InputError(self.dir, "not a checkpoint directory: no config.json")
        try:
            self.config: dict[str, Any] = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise InputError(cfg_path, f"not valid JSON ({e})") from None
        self.where: dict[str, Path] = {}
        index = self.dir / "model.safetensors.index.json"
        if index.is_file():
            try:
                wm = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise InputError(index, f"not a safetensors index ({e.__class__.__name__})") from None
            files = sorted(set(wm.values()))
            for fn in files:
                if not (self.dir / fn).is_file():
                    raise InputError(index, f"names shard {fn!r}, which does not exist")
            for fn in files:
                _check_header(self.dir / fn)
            self.where = {k: self.dir / v for k, v in wm.items()}
        else:
            files = sorted(p.name for p in self.dir.glob("*.safetensors"))
            if not files:
                raise InputError(self.dir, "no *.safetensors files")
            for fn in files:
                p = self.dir / fn
                _check_header(p)
                with safe_open(p, "pt") as f:
                    for k in f.keys():
                        self.where[k] = p
        self._handles: dict[Path, Any] = {}

    def keys(self) -> list[str]:
        return list(self.where)

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def get(self, name: str) -> torch.Tensor:
        p = self.where[name]
        h = self._handles.get(p)
        if h is None:
            h = self._handles[p] = safe_open(p, "pt")
        try:
            return h.get_tensor(name)
        except Exception as e:
            raise InputError(p, f"cannot read tensor {name!r} ({e.__class__.__name__}: {e})") from None

    @cached_property
    def quant(self):
        from .schemes import parse_quantization_config

        return parse_quantization_config(self.config, self.dir)

    def tokenizer(self):
        from ..tokenizer import tokenizer_from_hf

        if (self.dir / "tokenizer.json").is_file():
            return tokenizer_from_hf(self.dir)
        return None
