"""Readers for other engines' own tensor dumps: SGLang's dumper, SGLang's per-pass tensor dump,
TensorRT-LLM's PyTorch debug hook. Each becomes a list of ``Record``s (step, module, input or
output, element, tensor) that ``dump.py`` maps to canonical names through a TOML name map.

All three formats are torch pickles. They are loaded with ``torch.load(weights_only=True)``
only: tensors, dicts, lists, strings and numbers load; anything else (a pickled class) is
refused with a one-line ``InputError`` naming the file. Never plain pickle.

Layouts, read from each engine's source (file and version named; see docs/ENGINE_CAPTURE.md):

- **SGLang dumper** (``sglang/srt/debug_utils/dumper.py``, sglang 0.5.23): one file per tensor,
  ``{dir}/{exp_name}/{k=v}___{k=v}….pt`` with keys ``step``, ``rank``, ``dump_index``, ``name``,
  ``recompute_status``, the call's extra kwargs and the context (``layer_id``); the file holds
  ``{"value": tensor, "meta": {...}}``. ``dumper.step()`` runs after every forward (model
  runner), so ``step`` is the forward pass. The non-intrusive mode (``DUMPER_NON_INTRUSIVE_MODE=all``)
  hooks every module and names tensors ``non_intrusive__{module}.inputs.{i|kwarg}[.{j}]`` and
  ``non_intrusive__{module}.output[.{j}]`` (``j``: index among the *tensor* elements of a tuple,
  absent when there is only one); the root's ``ForwardBatch`` yields ``input_ids`` and
  ``positions``. Manual ``dumper.dump(name, x)`` calls are records of module ``name``.
  A shared module (one rotary embedding for all layers) is registered under the first layer's
  name; its ``layer_id`` context tag says which layer called it, and the reader renames it.
- **SGLang ``--debug-tensor-dump-output-folder``** (``debug_utils/tensor_dump_forward_hook.py``):
  ``{dir}/TP{t}_PP{p}_Rank{r}_pid{pid}/Pass{n:05d}.pt``, a dict module name → output (tensor,
  or list of the non-None tensors of a tuple) of every *leaf* module plus the top-level
  ``model`` and ``model.forward_batch_info.{input_ids,positions,seq_lens}``. The hook on
  ``model`` writes the file before it records ``model``'s own output, so ``model`` and what runs
  after it (``logits_processor``) land in the *next* pass's file; the reader moves them back. The
  last pass's final hidden state and logits are never written.
- **TensorRT-LLM debug hook** (``tensorrt_llm/_torch/debug/debug_hook.py``, read at commit
  cd8f10d): ``{dir}/rank{r}/{call path}-{input|output}.{tensor}.pt``, one tensor per file.
  The call path is ``{k}.{Class}`` per level of the module stack joined by ``-`` (``k``: the
  call's 1-based order among its parent's hooked child calls; the top level keeps counting
  across forward passes). Inputs are the positional args only; after the forward the hook
  dumps the positional args *again*, then the outputs, all as ``output.*``, naming the c-th
  tensor after the forward's c-th parameter (``inspect.getfullargspec``) or ``c`` past the
  last one. So an output file named after an input file is the re-dumped input (after any
  in-place kernel), not an output; the reader drops those and orders the real outputs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from layerbisect.errors import InputError

SGLANG_DUMPER = "sglang-dumper"
SGLANG_PASSES = "sglang-tensor-dump"
TRTLLM_HOOK = "trtllm-debug-hook"
FOREIGN_FORMATS = (SGLANG_DUMPER, SGLANG_PASSES, TRTLLM_HOOK)

Source = Literal["input", "output"]


@dataclass
class Record:
    """One tensor a module saw or produced in one forward pass (``step``)."""

    step: int
    module: str
    source: Source
    index: int
    tensor: torch.Tensor
    order: int = 0  # the engine's own write order (dump_index, file order): first wins on duplicates


@dataclass
class ForeignDump:
    """A foreign dump read into records, with what it says about tokens and positions."""

    format: str
    root: Path
    records: list[Record]
    token_ids: dict[int, list[int]] = field(default_factory=dict)  # step → ids of the step's rows
    positions: dict[int, list[int]] = field(default_factory=dict)  # step → absolute positions
    problems: list[str] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)


def load_pt(path: Path) -> Any:
    """``torch.load(weights_only=True)`` on the CPU, or a one-line ``InputError``: never plain pickle."""
    try:
        return torch.load(str(path), weights_only=True, map_location="cpu")
    except Exception as e:  # UnpicklingError, RuntimeError, EOFError, zipfile errors...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(path, f"not loadable with torch.load(weights_only=True): {first[:160]}") from e


# -- detection ----------------------------------------------------------------------------------

_PASS_DIR = re.compile(r"TP(\d+)_PP(\d+)_Rank(\d+)_pid(\d+)\Z")
_PASS_FILE = re.compile(r"Pass(\d+)\.pt\Z")
_RANK_DIR = re.compile(r"rank(\d+)\Z")
_TRT_FILE = re.compile(r"(?P<path>\d+\.[^-/]+(?:-\d+\.[^-/]+)*)-(?P<kind>input|output)\.(?P<name>.+)\.pt\Z")


def _dumper_files(folder: Path) -> list[Path]:
    return [p for p in folder.glob("*.pt") if "___" in p.stem and "name=" in p.stem and "step=" in p.stem]


def detect(folder: Path) -> tuple[str, Path] | None:
    """The foreign format of ``folder`` and the directory holding its files, or None."""
    if not folder.is_dir():
        return None
    if _dumper_files(folder):
        return SGLANG_DUMPER, folder
    runs = sorted(d for d in folder.iterdir() if d.is_dir() and _dumper_files(d))
    if len(runs) == 1:
        return SGLANG_DUMPER, runs[0]
    if len(runs) > 1:
        names = ", ".join(d.name for d in runs[:4])
        raise InputError(folder, f"holds {len(runs)} SGLang dumper runs ({names}); give one of them")
    if any(_PASS_FILE.match(p.name) for p in folder.glob("Pass*.pt")):
        return SGLANG_PASSES, folder
    procs = sorted(d for d in folder.iterdir() if d.is_dir() and _PASS_DIR.match(d.name))
    if procs:
        if len(procs) > 1:
            names = ", ".join(d.name for d in procs[:4])
            raise InputError(
                folder,
                f"holds {len(procs)} SGLang process dumps ({names}); tensor-parallel shards or restarts: "
                "give one folder (capture with --tp-size 1 to compare against the reference)",
            )
        return SGLANG_PASSES, procs[0]
    if any(_TRT_FILE.match(p.name) for p in folder.glob("*.pt")):
        return TRTLLM_HOOK, folder
    ranks = sorted(d for d in folder.iterdir() if d.is_dir() and _RANK_DIR.match(d.name))
    if ranks:
        if len(ranks) > 1:
            raise InputError(
                folder,
                f"holds {len(ranks)} TensorRT-LLM rank folders ({', '.join(d.name for d in ranks[:4])}); "
                "tensor-parallel shards: give one rank (capture with tp_size=1 to compare against the reference)",
            )
        if any(_TRT_FILE.match(p.name) for p in ranks[0].glob("*.pt")):
            return TRTLLM_HOOK, ranks[0]
    return None


def read(fmt: str, folder: Path, *, top_module: str = "model") -> ForeignDump:
    """Read the files of a detected foreign dump (``folder`` as ``detect`` returned it)."""
    if fmt == SGLANG_DUMPER:
        return read_sglang_dumper(folder)
    if fmt == SGLANG_PASSES:
        return read_sglang_passes(folder, top_module=top_module)
    if fmt == TRTLLM_HOOK:
        return read_trtllm(folder)
    raise InputError(folder, f"unknown dump format {fmt!r}")


def _as_ids(t: torch.Tensor) -> list[int]:
    return [int(x) for x in t.reshape(-1).tolist()]


# -- SGLang dumper ------------------------------------------------------------------------------

_NI_PREFIX = "non_intrusive__"
_CORE_IDS = ("input_ids",)
_CORE_POS = ("positions", "position_ids")


def parse_dumper_filename(path: Path) -> dict[str, str]:
    """The ``k=v`` tags of a dumper file name (SGLang's ``_format_tags``: ``___``-joined)."""
    out: dict[str, str] = {}
    for kv in path.stem.split("___"):
        k, sep, v = kv.partition("=")
        if sep:
            out[k] = v
    return out


def _split_ni_name(rest: str) -> tuple[str, Source, str, str | None] | None:
    """``{module}.inputs.{arg}[.{j}]`` / ``{module}.output[.{j}]`` → (module, source, arg, j)."""
    toks = rest.split(".")
    for j in range(len(toks) - 1, -1, -1):
        if toks[j] == "output" and len(toks) - j <= 2:
            return ".".join(toks[:j]), "output", "", toks[j + 1] if len(toks) - j == 2 else None
        if toks[j] == "inputs" and 2 <= len(toks) - j <= 3:
            sub = toks[j + 2] if len(toks) - j == 3 else None
            return ".".join(toks[:j]), "input", toks[j + 1], sub
    return None


def read_sglang_dumper(folder: Path) -> ForeignDump:
    files = _dumper_files(folder)
    if not files:
        raise InputError(folder, "no SGLang dumper files (step=…___name=….pt)")
    dump = ForeignDump(SGLANG_DUMPER, folder, [], source={"engine": "sglang", "format": SGLANG_DUMPER})
    tagged = []
    for p in files:
        tags = parse_dumper_filename(p)
        try:
            step, rank, order = int(tags["step"]), int(tags.get("rank", 0)), int(tags.get("dump_index", 0))
        except (KeyError, ValueError) as e:
            raise InputError(p, f"dumper file name without an integer {e}") from e
        tagged.append((order, step, rank, tags, p))
    ranks = sorted({r for _, _, r, _, _ in tagged})
    if len(ranks) > 1:
        raise InputError(
            folder,
            f"has ranks {ranks}: tensor-parallel shards; dump with --tp-size 1 to compare against the reference",
        )
    tagged.sort(key=lambda t: (t[1], t[0]))
    # Keyword inputs get indices after the positional ones of the same call.
    kw_index: dict[tuple[int, str], dict[str, int]] = {}
    for order, step, _, tags, p in tagged:
        name = tags["name"]
        obj = load_pt(p)
        if isinstance(obj, dict) and "value" in obj:
            value, meta = obj["value"], obj.get("meta", {})
        else:
            value, meta = obj, {}
        if not isinstance(value, torch.Tensor):
            dump.problems.append(f"{p.name}: value is a {type(value).__name__}, not a tensor; skipped")
            continue
        if isinstance(meta, dict) and meta.get("world_size", 1) not in (1, "1") and not dump.problems:
            dump.problems.append(f"world_size {meta['world_size']}: tensors may be per-rank shards")
        if name in _CORE_IDS:
            dump.token_ids.setdefault(step, _as_ids(value))
            continue
        if name in _CORE_POS:
            dump.positions.setdefault(step, _as_ids(value))
            continue
        layer_hint = tags.get("layer_id")
        if name.startswith(_NI_PREFIX):
            parsed = _split_ni_name(name[len(_NI_PREFIX) :])
            if parsed is None:
                dump.problems.append(f"{p.name}: unrecognized non-intrusive name {name!r}; skipped")
                continue
            module, source, arg, sub = parsed
            if source == "output":
                index = int(sub) if sub is not None and sub.isdigit() else 0
            elif arg.isdigit() and sub is None:
                index = int(arg)
            elif arg.isdigit():
                index = int(arg)  # a tuple argument: its elements come as .{j}; keep the first
                if sub not in ("0", ""):
                    continue
            else:
                slots = kw_index.setdefault((step, module), {})
                index = slots.setdefault(arg, 1000 + len(slots))
        else:
            module, source, index = name, "output", 0
        if layer_hint is not None and layer_hint.isdigit():
            # A module shared by all layers is registered under one layer's name; the context says whose call it was.
            module = re.sub(r"(^|\.)layers\.\d+(\.|$)", rf"\g<1>layers.{layer_hint}\g<2>", module, count=1)
        dump.records.append(Record(step, module, source, index, value, order))
    _renumber_kwargs(dump.records)
    return dump


def _renumber_kwargs(records: list[Record]) -> None:
    """Keyword inputs (provisional 1000+) follow the call's positional inputs, in dump order."""
    by_call: dict[tuple[int, str], list[Record]] = {}
    for r in records:
        if r.source == "input":
            by_call.setdefault((r.step, r.module), []).append(r)
    for recs in by_call.values():
        positional = [r.index for r in recs if r.index < 1000]
        nxt = max(positional, default=-1) + 1
        for r in sorted((r for r in recs if r.index >= 1000), key=lambda r: r.index):
            r.index = nxt
            nxt += 1


# -- SGLang per-pass tensor dump ----------------------------------------------------------------


def read_sglang_passes(folder: Path, *, top_module: str = "model") -> ForeignDump:
    files = sorted((int(m.group(1)), p) for p in folder.glob("Pass*.pt") if (m := _PASS_FILE.match(p.name)))
    if not files:
        raise InputError(folder, "no Pass*.pt files")
    dump = ForeignDump(SGLANG_PASSES, folder, [], source={"engine": "sglang", "format": SGLANG_PASSES})
    m = _PASS_DIR.match(folder.name)
    if m:
        dump.source.update(tp_rank=int(m.group(1)), pp_rank=int(m.group(2)), rank=int(m.group(3)))
    fbi = f"{top_module}.forward_batch_info."
    order = 0
    for n, p in files:
        obj = load_pt(p)
        if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
            raise InputError(p, f"not a dict of module name → tensor (got {type(obj).__name__})")
        for key, value in obj.items():
            order += 1
            if key.startswith(fbi):
                what = key[len(fbi) :]
                if what == "input_ids" and isinstance(value, torch.Tensor):
                    dump.token_ids[n] = _as_ids(value)
                elif what == "positions" and isinstance(value, torch.Tensor):
                    dump.positions[n] = _as_ids(value)
                continue
            # The hook on the top-level module writes the file first, then records that module's
            # output: it and everything after it (logits_processor) belong to the previous pass.
            step = n - 1 if key == top_module or not key.startswith(top_module + ".") else n
            if step < 0:
                dump.problems.append(f"{p.name}: {key} precedes the first pass; skipped")
                continue
            tensors = value if isinstance(value, list) else [value]
            for i, t in enumerate(tensors):
                if isinstance(t, torch.Tensor):
                    dump.records.append(Record(step, key, "output", i, t, order))
                else:
                    dump.problems.append(f"{p.name}: {key}[{i}] is a {type(t).__name__}; skipped")
    last = files[-1][0]
    dump.problems.append(
        f"Pass{last:05d}: SGLang writes the final hidden state and logits of a pass into the next pass's file; "
        "the last pass has none"
    )
    return dump


# -- TensorRT-LLM debug hook --------------------------------------------------------------------


def read_trtllm(folder: Path) -> ForeignDump:
    files = []
    for p in folder.glob("*.pt"):
        m = _TRT_FILE.match(p.name)
        if m:
            files.append((m, p))
    if not files:
        raise InputError(folder, "no TensorRT-LLM debug-hook files ({k}.{Class}-…-input|output.{name}.pt)")
    dump = ForeignDump(TRTLLM_HOOK, folder, [], source={"engine": "tensorrt_llm", "format": TRTLLM_HOOK})
    m = _RANK_DIR.match(folder.name)
    if m:
        dump.source["rank"] = int(m.group(1))
    calls: dict[tuple[str, ...], dict[str, list[tuple[str, int, Path]]]] = {}
    for m, p in files:
        path = tuple(m.group("path").split("-"))
        calls.setdefault(path, {"input": [], "output": []})[m.group("kind")].append(
            (m.group("name"), p.stat().st_mtime_ns, p)
        )
    # Steps: each call of the first top-level class (the decoder model) opens a pass; other
    # top-level calls (lm_head) belong to the pass before them.
    tops = sorted({(int(path[0].split(".", 1)[0]), path[0].split(".", 1)[1]) for path in calls})
    model_cls = tops[0][1]
    step_of: dict[int, int] = {}
    step = -1
    for k, cls in tops:
        if cls == model_cls:
            step += 1
        step_of[k] = max(step, 0)
    order = 0
    for path in sorted(calls, key=lambda c: [int(x.split(".", 1)[0]) for x in c]):
        k, cls = path[0].split(".", 1)
        module = "-".join((cls, *path[1:]))
        ins = sorted(calls[path]["input"], key=lambda t: (t[1], t[0]))
        in_names = {n for n, _, _ in ins}
        outs = [t for t in calls[path]["output"] if t[0] not in in_names]
        named = sorted((t for t in outs if not t[0].isdigit()), key=lambda t: (t[1], t[0]))
        numbered = sorted((t for t in outs if t[0].isdigit()), key=lambda t: int(t[0]))
        if len(named) > 1:
            dump.problems.append(
                f"{'-'.join(path)}: {len(named)} outputs named after forward parameters; ordered by file time"
            )
        for source, items in (("input", ins), ("output", named + numbered)):
            for i, (_, _, p) in enumerate(items):
                t = load_pt(p)
                if not isinstance(t, torch.Tensor):
                    raise InputError(p, f"holds a {type(t).__name__}, not a tensor")
                order += 1
                dump.records.append(Record(step_of[int(k)], module, source, i, t, order))  # type: ignore[arg-type]
    return dump


def module_names(records: Iterable[Record]) -> list[str]:
    seen: dict[str, None] = {}
    for r in records:
        seen.setdefault(r.module, None)
    return list(seen)
