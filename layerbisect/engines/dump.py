"""Read an engine dump (written by ``capture_activations``) back as a candidate ``Captures``.

A dump is a folder: ``manifest.json`` plus one safetensors shard per step (more when a step
outgrew ``flush_bytes`` or the engine computed some points after its forward returned).
The manifest is the table of contents; shards hold tensors in the engine's dtype under
their canonical names. Here they become FP32 (T, F) tensors, rows ordered by absolute
position, whatever order the steps came in (prefill, then decode steps one token each).

Positions: every step lists the positions it covered; a point may cover only the trailing
ones (logits of the sampled token). Points that cover every position of the dump become
tensors; the rest are left out (``meta["incomplete"]`` says which and where) unless
``keep_incomplete``: a comparator aligns rows by position, and a short tensor would silently
misalign. ``meta["positions"]`` holds the absolute position of every row.

Everything that can be wrong with a dump (manifest missing or not ours, a shard missing, a
tensor missing or of the wrong shape, a position recorded twice, token ids that disagree
with the reference's) raises ``InputError`` naming the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from layerbisect.capture import Captures, Selector
from layerbisect.engines.capture import FORMAT, FORMAT_VERSION, MANIFEST
from layerbisect.errors import InputError


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The parsed ``manifest.json`` of a dump folder (or the manifest file itself), checked."""
    p = Path(path)
    man = p if p.name == MANIFEST else p / MANIFEST
    if not p.exists():
        raise InputError(p, "no such dump folder")
    if not man.exists() and not man.is_symlink():
        raise InputError(man, "missing: not an engine dump (write one with capture_activations)")
    from layerbisect.validation import parse_json, read_text

    data = parse_json(read_text(man, MANIFEST, max_bytes=1 << 30), man)  # a regular file: a FIFO would block
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(man, f"not a {FORMAT} manifest")
    if data.get("version") != FORMAT_VERSION:
        raise InputError(man, f"format version {data.get('version')!r}; this layerbisect reads {FORMAT_VERSION}")
    for key in ("names", "points", "steps", "token_ids"):
        if key not in data:
            raise InputError(man, f"has no {key!r}")
    return data


def load_dump(
    path: str | Path,
    *,
    select: Sequence[str] | str | None = None,
    token_ids: Sequence[int] | None = None,
    keep_incomplete: bool = False,
) -> Captures:
    """A dump folder as ``Captures``: names in execution order, FP32 (T, F), rows by position.

    ``select``: glob patterns over canonical names (default all). ``token_ids``: the
    reference's full sequence; every dumped position must hold the same token.
    """
    folder = Path(path)
    folder = folder.parent if folder.name == MANIFEST else folder
    man = read_manifest(folder)
    man_path = folder / MANIFEST
    sel = Selector(select)
    names = [n for n in man["names"] if sel(n)]
    wanted = set(names)

    rows: dict[str, dict[int, torch.Tensor]] = {n: {} for n in names}
    all_positions: set[int] = set()
    for step in man["steps"]:
        all_positions.update(int(p) for p in step["positions"])
        by_shard: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for name, ent in step["tensors"].items():
            if name in wanted:
                by_shard.setdefault(ent["shard"], []).append((name, ent))
        for shard, ents in by_shard.items():
            _read_shard(folder / shard, ents, step, man, rows, man_path)

    positions = sorted(all_positions)
    tokens = {int(p): int(t) for p, t in man["token_ids"].items()}
    if token_ids is not None:
        for p in positions:
            if p >= len(token_ids):
                raise InputError(man_path, f"dump has position {p}, the reference sequence only {len(token_ids)}")
            if p in tokens and tokens[p] != int(token_ids[p]):
                raise InputError(
                    man_path,
                    f"token id at position {p} is {tokens[p]} in the dump, {int(token_ids[p])} in the reference",
                )
            tokens.setdefault(p, int(token_ids[p]))

    tensors: dict[str, torch.Tensor] = {}
    incomplete: dict[str, list[int]] = {}
    row_positions: dict[str, list[int]] = {}
    for n in names:
        have = sorted(rows[n])
        if have != positions:
            incomplete[n] = have
            if not keep_incomplete or not have:
                continue
            row_positions[n] = have
        if have:
            tensors[n] = torch.cat([rows[n][p] for p in have]).float()

    meta: dict[str, Any] = {
        "runner": "engine-dump",
        "dump": str(folder),
        "source": man.get("source", {}),
        "name_map": man.get("name_map", {}).get("meta", {}).get("name"),
        "positions": positions,
        "incomplete": incomplete,
        "problems": list(man.get("problems", [])),
    }
    if row_positions:
        meta["row_positions"] = row_positions
    return Captures(tensors=tensors, token_ids=[tokens.get(p, -1) for p in positions], meta=meta)


def _read_shard(
    shard: Path,
    ents: list[tuple[str, dict[str, Any]]],
    step: dict[str, Any],
    man: dict[str, Any],
    rows: dict[str, dict[int, torch.Tensor]],
    man_path: Path,
) -> None:
    if not shard.exists() and not shard.is_symlink():
        raise InputError(shard, f"missing: {MANIFEST} lists it for step {step['step']}")
    from layerbisect.validation import regular_file

    regular_file(shard, "dump shard")
    try:
        with safe_open(str(shard), framework="pt") as f:
            keys = set(f.keys())
            for name, ent in ents:
                if name not in keys:
                    raise InputError(shard, f"has no tensor {name!r} ({MANIFEST} says it does)")
                x = f.get_tensor(name)
                pos = [int(p) for p in ent.get("positions", step["positions"])]
                feats = man["points"].get(name, {}).get("features")
                if (
                    x.dim() != 2
                    or x.shape[0] != len(pos)
                    or x.shape[0] != ent.get("rows", len(pos))
                    or (feats is not None and x.shape[1] != feats)
                ):
                    raise InputError(
                        shard,
                        f"{name}: shape {tuple(x.shape)}, {MANIFEST} says ({len(pos)}, {feats}), step {step['step']}",
                    )
                for r, p in enumerate(pos):
                    if p in rows[name]:
                        raise InputError(man_path, f"{name}: position {p} recorded twice (step {step['step']})")
                    rows[name][p] = x[r : r + 1]
    except SafetensorError as e:
        raise InputError(shard, f"not a readable safetensors file: {e}") from e


def align_to_dump(ref: Captures, dump: Captures) -> Captures:
    """The reference's rows at the dump's positions, so row i of both is the same token.

    A dump may hold a subset of positions (``positions=`` at capture time, decode steps
    captured from a later step); comparators align rows by index. Summaries are sliced too.
    """
    positions = [int(p) for p in dump.meta.get("positions", range(len(dump.token_ids)))]
    n = len(ref.token_ids) if ref.token_ids else None
    if n is not None and positions and max(positions) >= n:
        raise InputError(str(dump.meta.get("dump", "dump")), f"has position {max(positions)}, the reference only {n}")
    if positions == list(range(len(positions))) and (n is None or n == len(positions)):
        return ref
    idx = torch.tensor(positions, dtype=torch.long)
    out = Captures(
        tensors={k: v[idx] for k, v in ref.tensors.items()},
        summaries={k: type(s)(*(t[idx] for t in s.astuple())) for k, s in ref.summaries.items()},
        token_ids=[ref.token_ids[p] for p in positions] if ref.token_ids else [],
        meta={**ref.meta, "positions": positions},
        selector=ref.selector,
        summary_only=ref.summary_only,
    )
    return out
