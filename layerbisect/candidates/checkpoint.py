"""A HF-style checkpoint directory: config.json + one or more safetensors (with or without an index).

Tensors are read lazily through ``safetensors.safe_open`` (memory-mapped). Every file is checked
before it is opened (``validation.regular_file``: a FIFO, a directory named ``model.safetensors`` or
an unreadable file is refused, never opened), config.json and the index must be JSON objects of
the right shape, an index may only name shards inside the checkpoint directory (no absolute path,
no ``..``), and every safetensors header goes through the safetensors library's own validation
(JSON, dtypes, shapes against byte lengths, overlapping or non-contiguous offsets, a buffer that
does not cover the file) with its message mapped to one ``InputError`` naming the file; a file
shorter than its header claims says "truncated".
"""

from __future__ import annotations

import json
import struct
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from ..errors import InputError
from ..validation import field_dict, open_regular, read_json, regular_file, relative_inside

HEADER_MAX_BYTES = 100_000_000  # the safetensors library's own limit


def _check_header(path: Path) -> list[str]:
    """Validate one safetensors file with the library's own checks; returns its tensor names."""
    size = regular_file(path, "safetensors file").st_size
    try:
        with open_regular(path, "safetensors file") as f:
            head = f.read(8)
            if len(head) < 8:
                raise InputError(path, "truncated or corrupt safetensors file: shorter than its 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise InputError(path, f"truncated or corrupt: the header declares {n} bytes but the file has {size}")
            if n > HEADER_MAX_BYTES:
                raise InputError(path, f"corrupt safetensors header: declares {n} header bytes (limit 100 MB)")
            raw = f.read(n)
    except OSError as e:
        raise InputError(path, f"cannot read: {e.strerror or e}") from None
    try:
        with safe_open(path, "pt") as st:
            return list(st.keys())
    except SafetensorError as e:
        msg = str(e).removeprefix("Error while deserializing header: ")
        end = _declared_end(raw)
        if end is not None and 8 + n + end > size:
            raise InputError(path, f"truncated: its tensors end at byte {8 + n + end}, the file has {size}") from None
        raise InputError(path, f"corrupt safetensors header: {msg}") from None
    except (OSError, ValueError, IndexError, RuntimeError) as e:
        raise InputError(path, f"unreadable safetensors file ({type(e).__name__}: {e})") from None


def _declared_end(raw: bytes) -> int | None:
    """Largest end offset a header declares, when it is well-formed enough to say (for the 'truncated' wording)."""
    try:
        h = json.loads(raw)
        ends = [int(v["data_offsets"][1]) for k, v in h.items() if k != "__metadata__"]
        return max(ends, default=0)
    except Exception:  # noqa: BLE001 - any malformation: the library's message stands
        return None


class Checkpoint:
    """name → tensor access over all safetensors files of a checkpoint directory."""

    def __init__(self, path: str | Path):
        self.dir = Path(path)
        if not self.dir.is_dir():
            raise InputError(self.dir, "not a checkpoint directory")
        cfg_path = self.dir / "config.json"
        if not cfg_path.exists() and not cfg_path.is_symlink():
            raise InputError(self.dir, "not a checkpoint directory: no config.json")
        self.config: dict[str, Any] = read_json(cfg_path, "config.json")
        self.where: dict[str, Path] = {}
        index = self.dir / "model.safetensors.index.json"
        if index.exists() or index.is_symlink():
            wm = field_dict(read_json(index, "safetensors index"), "weight_map", where=index)
            shards: dict[str, Path] = {}
            for v in wm.values():
                if not isinstance(v, str) or v not in shards:
                    shards[v] = relative_inside(v, self.dir, index, "shard")
            for fn, p in shards.items():
                if not p.exists():
                    raise InputError(index, f"names shard {fn!r}, which does not exist")
            held: dict[str, set[str]] = {}
            for fn, p in sorted(shards.items()):
                held[fn] = set(_check_header(p))
            for k, v in wm.items():
                if k not in held[v]:
                    raise InputError(index, f"maps tensor {k!r} to {v!r}, which does not hold it")
            self.where = {k: shards[v] for k, v in wm.items()}
        else:
            try:
                files = sorted(p for p in self.dir.iterdir() if p.name.endswith(".safetensors"))
            except OSError as e:
                raise InputError(self.dir, f"cannot list the directory: {e.strerror or e}") from None
            if not files:
                raise InputError(self.dir, "no *.safetensors files")
            for p in files:
                for k in _check_header(p):
                    if k in self.where:
                        raise InputError(p, f"tensor {k!r} is also in {self.where[k].name}; which one is meant?")
                    self.where[k] = p
        self._handles: dict[Path, Any] = {}

    def keys(self) -> list[str]:
        return list(self.where)

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def close(self) -> None:
        """Drop the open files (and their mappings, once no tensor views them); the next read reopens."""
        self._handles.clear()

    def _handle(self, p: Path) -> Any:
        h = self._handles.get(p)
        if h is None:
            h = self._handles[p] = safe_open(p, "pt")
        return h

    def shape(self, name: str) -> tuple[int, ...]:
        """A tensor's shape from the header alone (no data read)."""
        return tuple(self._handle(self.where[name]).get_slice(name).get_shape())

    def dtype(self, name: str) -> str:
        """A tensor's safetensors dtype string (``F32``, ``BF16``, ``F8_E4M3`` ...) from the header alone."""
        return str(self._handle(self.where[name]).get_slice(name).get_dtype())

    def get(self, name: str) -> torch.Tensor:
        p = self.where[name]
        h = self._handle(p)
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

        t = self.dir / "tokenizer.json"
        if t.exists() or t.is_symlink():  # anything named so is read (and refused if it is not a regular file)
            return tokenizer_from_hf(self.dir)
        return None
