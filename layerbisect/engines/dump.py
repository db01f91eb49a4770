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

Other engines' own dumps (``foreign.py``: SGLang's dumper and per-pass tensor dump,
TensorRT-LLM's debug hook) are detected from the folder's contents and read through the same
function: their records (module, input/output, element) go through a TOML name map
(``name_map``; default by format: ``sglang`` / ``trtllm`` built-ins) into canonical names,
rows become positions (the dump's own positions where it has them, else one running offset:
a pass's rows follow the previous pass's), and split sizes (``q_size``/``kv_size``) come from
the reference's config.

q/k layout: a map with ``qk_layout = "hf"`` (HF row order) gets llama.cpp's Q/K permutation on
its ``attn.q``/``attn.k``/``q_proj``/``k_proj`` points when the architecture's GGUF is permuted
(llama, mistral), so they line up with the reference's features (``meta["qk_permuted"]``).

Everything that can be wrong with a dump (manifest missing or not ours, a shard missing, a
tensor missing or of the wrong shape, a position recorded twice, token ids that disagree
with the reference's) raises ``InputError`` naming the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from layerbisect.capture import Captures, Selector
from layerbisect.engines import foreign
from layerbisect.engines.capture import FORMAT, FORMAT_VERSION, MANIFEST
from layerbisect.engines.namemap import NameMap, resolve_name_map, resolve_sizes
from layerbisect.errors import InputError

QK_OPS = (".attn.q", ".attn.k", ".attn.q_proj", ".attn.k_proj")
DEFAULT_FOREIGN_MAPS = {
    foreign.SGLANG_DUMPER: "sglang_llama",
    foreign.SGLANG_PASSES: "sglang_llama",
    foreign.TRTLLM_HOOK: "trtllm_qwen",
}


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


def detect_format(path: str | Path) -> tuple[str, Path]:
    """``(format, folder)`` of a dump: ours (``manifest.json``) or a foreign one (``foreign.py``)."""
    folder = Path(path)
    folder = folder.parent if folder.name == MANIFEST else folder
    if not folder.exists():
        raise InputError(folder, "no such dump folder")
    if (folder / MANIFEST).is_file() or not folder.is_dir():
        return FORMAT, folder
    found = foreign.detect(folder)
    if found is None:
        raise InputError(
            folder / MANIFEST,
            "missing: not an engine dump (write one with capture_activations; SGLang dumper, SGLang "
            "--debug-tensor-dump-output-folder and TensorRT-LLM debug-hook folders are read too)",
        )
    return found


def load_dump(
    path: str | Path,
    *,
    select: Sequence[str] | str | None = None,
    token_ids: Sequence[int] | None = None,
    keep_incomplete: bool = False,
    name_map: NameMap | str | Path | None = None,
    config: Any = None,
) -> Captures:
    """A dump folder as ``Captures``: names in execution order, FP32 (T, F), rows by position.

    ``select``: glob patterns over canonical names (default all). ``token_ids``: the
    reference's full sequence; every dumped position must hold the same token. ``name_map``:
    for foreign dumps (default by format); ours carry theirs. ``config``: the reference's
    ``ModelConfig`` (architecture, heads, head_dim), for split sizes and the q/k layout.
    """
    fmt, folder = detect_format(path)
    sel = Selector(select)
    if fmt == FORMAT:
        man = read_manifest(folder)
        man_path = folder / MANIFEST
        names = [n for n in man["names"] if sel(n)]
        rows, positions, tokens = _read_ours(folder, man, names, man_path)
        nm_dict = man.get("name_map", {})
        qk_layout = nm_dict.get("meta", {}).get("qk_layout", "gguf")
        meta: dict[str, Any] = {
            "runner": "engine-dump",
            "format": FORMAT,
            "dump": str(folder),
            "source": man.get("source", {}),
            "name_map": nm_dict.get("meta", {}).get("name"),
            "problems": list(man.get("problems", [])),
        }
        where: Path = man_path
    else:
        nm = resolve_name_map(name_map if name_map is not None else DEFAULT_FOREIGN_MAPS[fmt])
        fd = foreign.read(fmt, folder)
        names, rows, positions, tokens, problems = _map_foreign(fd, nm, config, sel)
        qk_layout = nm.qk_layout
        meta = {
            "runner": "engine-dump",
            "format": fmt,
            "dump": str(fd.root),
            "source": fd.source,
            "name_map": nm.name,
            "problems": fd.problems + problems,
        }
        where = fd.root

    if token_ids is not None:
        for p in positions:
            if p >= len(token_ids):
                raise InputError(where, f"dump has position {p}, the reference sequence only {len(token_ids)}")
            if p in tokens and tokens[p] != int(token_ids[p]):
                raise InputError(
                    where,
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

    meta.update(positions=positions, incomplete=incomplete)
    if row_positions:
        meta["row_positions"] = row_positions
    if qk_layout == "hf":
        _permute_qk(tensors, config, meta)
    # A dump without any token ids (SGLang's per-pass dump of a model not given a ForwardBatch) has none:
    # the comparison then takes the ids from --tokens / the prompt.
    ids = [tokens.get(p, -1) for p in positions] if tokens else []
    return Captures(tensors=tensors, token_ids=ids, meta=meta)


def _read_ours(
    folder: Path, man: dict[str, Any], names: list[str], man_path: Path
) -> tuple[dict[str, dict[int, torch.Tensor]], list[int], dict[int, int]]:
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
    tokens = {int(p): int(t) for p, t in man["token_ids"].items()}
    return rows, sorted(all_positions), tokens


_HF_PERMUTED = ("llama", "mistral")  # GGUF archs whose converter permutes Q/K rows (llama.cpp LlamaModel.permute)


def _qk_perm(name: str, cfg: Any, features: int) -> torch.Tensor | None:
    """Index p with reference_features = dump_features[:, p] for an HF-order q/k point, or None."""
    from layerbisect.capture import layer_of
    from layerbisect.families.base import qk_permutation

    kind = "q_proj" if name.endswith((".attn.q", ".attn.q_proj")) else "k_proj"
    layer = layer_of(name)
    if hasattr(cfg, "layers") and hasattr(cfg, "family"):  # the reference's ModelSpec: its family knows
        from layerbisect.families import family_of

        return family_of(cfg).hf_row_permutation(f"layers.{layer}.attn.{kind}", cfg)
    get = cfg.get if isinstance(cfg, dict) else lambda k, d=None: getattr(cfg, k, d)
    arch = get("arch") or get("model_type")
    if arch not in _HF_PERMUTED:
        return None
    head_dim = get("head_dim")
    if not head_dim and get("hidden_size") and get("num_attention_heads"):
        head_dim = int(get("hidden_size")) // int(get("num_attention_heads"))
    if not head_dim or features % int(head_dim):
        raise ValueError(f"{features} features is not a whole number of heads (head_dim {head_dim})")
    return qk_permutation(features // int(head_dim), int(head_dim))


def _permute_qk(tensors: dict[str, torch.Tensor], config: Any, meta: dict[str, Any]) -> None:
    """HF-order q/k features → the GGUF reference's order, for architectures whose GGUF permutes Q/K."""
    cfg: Any = config if config is not None else meta.get("source", {})
    done = []
    for n in [n for n in tensors if n.endswith(QK_OPS)]:
        f = tensors[n].shape[1]
        try:
            p = _qk_perm(n, cfg, f)
        except (ValueError, IndexError, TypeError) as e:
            meta["problems"].append(f"{n}: q/k in HF order, not permuted: {e}")
            continue
        if p is None:
            continue
        if p.numel() != f:
            meta["problems"].append(f"{n}: {f} features, the reference's q/k permutation has {p.numel()}")
            continue
        tensors[n] = tensors[n][:, p]
        done.append(n)
    if done:
        meta["qk_permuted"] = done


def _map_foreign(
    fd: foreign.ForeignDump, nm: NameMap, config: Any, sel: Selector
) -> tuple[list[str], dict[str, dict[int, torch.Tensor]], list[int], dict[int, int], list[str]]:
    """Records → canonical rows by position, through the map; problems instead of silent drops."""
    problems: list[str] = []
    n_layers = getattr(config, "n_layers", None)
    bindings = {b.module: b for b in nm.bind(foreign.module_names(fd.records), n_layers)}
    lookups = [_size_lookup(config)]
    calls: dict[tuple[int, str, str], dict[int, foreign.Record]] = {}
    for r in sorted(fd.records, key=lambda r: r.order):
        if r.module not in bindings:
            continue
        slot = calls.setdefault((r.step, r.module, r.source), {})
        if r.index in slot:
            problems.append(f"step {r.step}: {r.module} {r.source}[{r.index}] recorded twice; kept the first")
            continue
        slot[r.index] = r

    steps = sorted({r.step for r in fd.records})
    names: list[str] = []
    rows: dict[str, dict[int, torch.Tensor]] = {}
    tokens: dict[int, int] = {}
    all_positions: set[int] = set()
    offset = 0
    embed_modules = [b.module for b in bindings.values() if any(e.name == "embed" for e in b.entries)]
    for step in steps:
        step_vals: dict[str, torch.Tensor] = {}
        for (s, module, source), elems in calls.items():
            if s != step:
                continue
            for e in bindings[module].entries:
                if e.source != source:
                    continue
                x = _pick_record(elems, e.index)
                if x is None:
                    problems.append(f"step {step}: {module} {source}[{e.index}] is missing; {e.name} skipped")
                    continue
                rule = nm.split_rule(e.name)
                if rule is None:
                    step_vals.setdefault(e.name, x)
                    continue
                try:
                    sizes = resolve_sizes(rule, x.shape[-1], lookups, module)
                except InputError as err:
                    problems.append(f"step {step}: {err}")
                    continue
                for part, piece in zip(rule.into, x.split(sizes, dim=-1), strict=True):
                    if part:
                        step_vals.setdefault(part, piece)
        ids = fd.token_ids.get(step)
        if ids is None:
            for m in embed_modules:
                rec = calls.get((step, m, "input"), {}).get(0)
                if rec is not None and not rec.tensor.is_floating_point():
                    ids = [int(t) for t in rec.tensor.reshape(-1).tolist()]
                    break
        pos = fd.positions.get(step)
        n = len(pos) if pos is not None else len(ids) if ids is not None else None
        flat = {k: _flatten(v) for k, v in step_vals.items()}
        if n is None:
            n = max((v.shape[0] for v in flat.values()), default=0)
        if pos is None:
            pos = list(range(offset, offset + n))
        if ids is not None:
            for p, t in zip(pos[-len(ids):] if len(ids) <= len(pos) else pos, ids[-len(pos):], strict=False):
                tokens[p] = t
        all_positions.update(pos)
        offset = max(offset, max(pos, default=offset - 1) + 1)
        for name, x in flat.items():
            if not sel(name):
                continue
            if x.shape[0] > len(pos):
                problems.append(f"step {step}: {name} has {x.shape[0]} rows, the pass {len(pos)} tokens; skipped")
                continue
            if name not in rows:
                rows[name] = {}
                names.append(name)
            for r, p in enumerate(pos[len(pos) - x.shape[0] :]):
                if p in rows[name]:
                    problems.append(f"{name}: position {p} recorded twice (step {step}); kept the first")
                    continue
                rows[name][p] = x[r : r + 1]
    return names, rows, sorted(all_positions), tokens, problems


def _pick_record(elems: dict[int, foreign.Record], index: int | str) -> torch.Tensor | None:
    if index == "sum":
        ts = [elems[i].tensor for i in sorted(elems)]
        if not ts:
            return None
        out = ts[0].float()
        for t in ts[1:]:
            out = out + t.float()
        return out
    r = elems.get(int(index))
    return r.tensor if r is not None else None


def _flatten(x: torch.Tensor) -> torch.Tensor:
    """(T, F) rows: a leading batch of 1 is squeezed, heads flattened, 1-D becomes one column."""
    if x.dim() >= 3 and x.shape[0] == 1:
        x = x[0]
    if x.dim() == 1:
        x = x.unsqueeze(-1)
    return x.reshape(x.shape[0], -1)


def _size_lookup(config: Any) -> Any:
    """q_size/kv_size (per-rank sizes vLLM/SGLang keep on the attention module) from the reference config."""
    if config is None:
        return None
    layers = getattr(config, "layers", None)
    if layers:  # a ModelSpec: the first attention layer's sizes
        for layer in layers:
            a = layer.mixer
            if hasattr(a, "n_heads") and hasattr(a, "head_dim"):
                return SimpleNamespace(q_size=a.n_heads * a.head_dim, kv_size=a.n_kv_heads * a.head_dim)
        return None
    try:
        hd = int(config.head_dim)
        return SimpleNamespace(q_size=int(config.n_heads) * hd, kv_size=int(config.n_kv_heads) * hd, head_dim=hd)
    except (AttributeError, TypeError, ValueError):
        return None


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


def check_dump_model(dump: Captures, spec: Any) -> None:
    """Refuse a dump captured from another model than the reference (``spec``: its ``ModelSpec``).

    Checked where the dump says or shows it: the source's ``model_type`` (a GGUF architecture from
    llama.cpp, a HF ``model_type`` from ``capture_activations``) resolved to a family, the source's
    ``num_hidden_layers``/``hidden_size``, layer indices beyond the reference's, and the width of the
    residual stream (``layers.N.out``: d_model in any engine, whatever it got wrong inside a layer) and of
    the logits (the vocabulary).
    Raises ``InputError`` naming the dump; a dump that says nothing is not refused.
    """
    from layerbisect.families import by_gguf_arch, by_hf_model_type

    where = str(dump.meta.get("dump", "dump"))
    src = dump.meta.get("source") or {}
    model_type = src.get("model_type")
    if isinstance(model_type, str) and model_type:
        fam = None
        for resolve in (by_gguf_arch, by_hf_model_type):
            try:
                fam = resolve(model_type).name
                break
            except InputError:
                continue
        if fam is not None and fam != spec.family:
            raise InputError(where, f"was captured from a {model_type} model; the reference is {spec.arch}")
    for key, want in (("num_hidden_layers", spec.n_layers), ("hidden_size", spec.d_model)):
        got = src.get(key)
        if isinstance(got, int) and got != want:
            raise InputError(where, f"was captured from a model with {key} {got}; the reference has {want}")
    layers = [int(n.split(".")[1]) for n in dump.tensors if n.startswith("layers.") and n.split(".")[1].isdigit()]
    if layers and max(layers) >= spec.n_layers:
        raise InputError(where, f"has layer {max(layers)}; the reference has {spec.n_layers} layers")
    logits = dump.tensors.get("logits")
    if logits is not None and logits.shape[-1] != spec.vocab_size:
        raise InputError(where, f"logits have {logits.shape[-1]} entries; the reference's vocabulary has "
                                f"{spec.vocab_size}: captured from another model")
    for n, x in dump.tensors.items():
        parts = n.split(".")
        if len(parts) == 3 and parts[0] == "layers" and parts[2] == "out" and x.shape[-1] != spec.d_model:
            raise InputError(where, f"{n} has {x.shape[-1]} features; the reference's residual stream has "
                                    f"{spec.d_model}: captured from another model")
