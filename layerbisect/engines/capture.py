"""Capture activations from any PyTorch engine with forward hooks, streamed to a dump on disk.

    with capture_activations(model, "dump/", name_map="auto") as cap:
        model(input_ids)                      # each call of `model` is one step
    caps = load_dump("dump/")                 # layerbisect.engines.dump

Design notes:

- **What is hooked.** A name map (``namemap.py``) binds engine module names to canonical
  names; the glob ``patterns`` then pick among those names, and only modules yielding a
  selected name get hooks. Outputs come from forward hooks, inputs (``from = "input"``:
  e.g. the input of ``o_proj`` is the attention output) from forward pre-hooks.
- **Steps.** A pre-hook and a hook on ``model`` itself bracket each call: the pre-hook reads
  the token ids and absolute positions of the step (vLLM ``positions``, HF ``cache_position``
  or ``position_ids``, else a running offset), the hook flushes the step's buffer to one
  safetensors shard (``step00000.safetensors``) and rewrites ``manifest.json``. Memory is
  bounded by one step; a step bigger than ``flush_bytes`` is split into parts.
- **Rows.** Tensors are flattened to (T, F): batch 1 is squeezed (``(1, T, ...)``), engines
  that flatten the batch already give ``(T, ...)``. A point with fewer rows than the step has
  tokens covers the *trailing* positions (HF ``logits_to_keep``, vLLM logits of the sampled
  token only); ``positions`` keeps only the requested absolute positions.
- **Overhead.** Per hook: row selection on the device, one copy to the host in the engine's
  dtype (no FP32 upcast, no extra GPU memory). On CUDA the copy is asynchronous into pinned
  memory: it is ordered on the stream before later kernels, so the in-place work of vLLM's
  fused norms and rope cannot change what was recorded, and the host waits once per flush,
  not per hook. On the CPU it is a real copy (``.to("cpu")`` would alias). FP32 conversion
  happens in ``load_dump``. The token ids are read once per step. The cost then scales with
  the bytes captured: choose ``patterns``/``positions`` for long prompts and big vocabularies.
- **Failures inside hooks** (a tensor of unexpected shape) are recorded as ``problems`` in
  the manifest instead of raised: an exception would kill the engine's forward. Bad user
  input (batch > 1, an unknown map) is raised before anything runs or at exit.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from layerbisect.capture import Selector
from layerbisect.engines.namemap import Binding, MapEntry, NameMap, resolve_name_map, resolve_sizes
from layerbisect.errors import InputError
from layerbisect.outputs import usual_mode

FORMAT = "layerbisect-engine-dump"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARD_PREFIX = "step"


def _engine_info(model: torch.nn.Module) -> dict[str, Any]:
    """Where the activations came from: engine package and version, model class and config."""
    top = type(model).__module__.split(".")[0]
    info: dict[str, Any] = {"engine": top, "model_class": type(model).__qualname__}
    try:
        info["engine_version"] = metadata.version(top)
    except metadata.PackageNotFoundError:
        pass
    cfg = getattr(model, "config", None)
    keys = ("model_type", "name_or_path", "_name_or_path", "num_hidden_layers", "hidden_size", "num_attention_heads",
            "num_key_value_heads", "head_dim")
    for key in keys:
        try:
            v = getattr(cfg, key, None) if cfg is not None else None
        except Exception:  # transformers refuses per-layer attributes of heterogeneous configs (Gemma 4 head_dim)
            v = None
        if isinstance(v, (str, int, float)) and v != "":
            info[key.lstrip("_")] = v
    p = next(iter(model.parameters()), None)
    if p is not None:
        info["param_dtype"] = str(p.dtype).removeprefix("torch.")
        info["device"] = str(p.device)
    info["torch"] = torch.__version__
    info["python"] = platform.python_version()
    return info


def _pick(value: Any, index: int | str) -> torch.Tensor | None:
    """The tensor a map entry means: element ``index`` of a tuple/ModelOutput, or their sum."""
    if isinstance(value, torch.Tensor):
        # A bare tensor is element 0 (and the "sum" of itself): a vLLM/SGLang norm called without
        # a residual returns one tensor where later calls return (normed, residual).
        return value if index in (0, "sum") else None
    if hasattr(value, "to_tuple"):  # transformers ModelOutput: drops None fields (loss)
        value = value.to_tuple()
    elif isinstance(value, dict):
        value = tuple(value.values())
    if not isinstance(value, (tuple, list)):
        return None
    if index == "sum":
        ts = [v for v in value if isinstance(v, torch.Tensor)]
        if not ts:
            return None
        out = ts[0]
        for t in ts[1:]:
            out = out + t
        return out
    assert isinstance(index, int)
    if index >= len(value):
        return None
    v = value[index]
    return v if isinstance(v, torch.Tensor) else None


def _first_tensor(args: tuple[Any, ...], kwargs: dict[str, Any], *names: str) -> torch.Tensor | None:
    for n in names:
        v = kwargs.get(n)
        if isinstance(v, torch.Tensor):
            return v
    return None


class ActivationCapture:
    """Hooks an engine's modules and streams canonical-named activations to ``out_dir``.

    Use through :func:`capture_activations`. After exit, ``names`` lists the captured points
    in execution order and ``problems`` anything a hook could not record.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        out_dir: str | Path,
        *,
        name_map: NameMap | str = "auto",
        patterns: Sequence[str] = ("*",),
        positions: Sequence[int] | None = None,
        token_ids: Sequence[int] | None = None,
        step: int = 0,
        flush_bytes: int = 1 << 30,
    ):
        if not isinstance(model, torch.nn.Module):
            raise InputError("model", f"expected a torch.nn.Module, got {type(model).__name__}")
        if step < 0:
            raise InputError("step", f"must be >= 0, got {step}")
        self.model = model
        self.out_dir = Path(out_dir)
        self.name_map = resolve_name_map(name_map, model)
        self.selector = Selector(list(patterns))
        self.keep_positions = None if positions is None else sorted({int(p) for p in positions})
        self.user_token_ids = None if token_ids is None else [int(t) for t in token_ids]
        self.first_step = step
        self.flush_bytes = flush_bytes
        self.bindings = self._bind()
        if not self.bindings:
            raise InputError(
                f"name_map={self.name_map.name}",
                f"no module of {type(model).__name__} maps to a point selected by {list(patterns)}",
            )
        self.names: list[str] = []
        self.problems: list[str] = []
        self._fatal: list[str] = []  # bad input seen inside hooks: raised at exit, not mid-forward
        self._handles: list[Any] = []
        self._manifest: dict[str, Any] = {}
        self._points: dict[str, dict[str, Any]] = {}
        self._tokens: dict[int, int] = {}  # absolute position → token id
        self._next_position = 0
        self._step = step
        self._step_open = False
        self._depth = 0
        self._pending_event = False
        self._reset_step_state()

    # -- set-up ----------------------------------------------------------------------------

    def _bind(self) -> list[Binding]:
        """The map's bindings for this model, keeping only entries whose names are selected."""
        out = []
        cfg = getattr(self.model, "config", None)
        cfg = getattr(cfg, "text_config", None) or cfg
        n_layers = getattr(cfg, "num_hidden_layers", None)
        n_layers = n_layers if isinstance(n_layers, int) and n_layers > 0 else None
        for b in self.name_map.bind((n for n, _ in self.model.named_modules()), n_layers):
            ents = tuple(e for e in b.entries if self._selected(e.name))
            if ents:
                out.append(Binding(b.module, b.layer, ents))
        return out

    def _selected(self, name: str) -> bool:
        rule = self.name_map.split_rule(name)
        if rule is not None:
            return any(p and self.selector(p) for p in rule.into)
        return self.selector(name)

    def __enter__(self) -> ActivationCapture:
        self._open_dir()
        modules = dict(self.model.named_modules())
        self._handles.append(self.model.register_forward_pre_hook(self._begin_step, with_kwargs=True))
        for b in self.bindings:
            mod = modules[b.module]
            ins = tuple(e for e in b.entries if e.source == "input")
            outs = tuple(e for e in b.entries if e.source == "output")
            parent = modules.get(b.module.rpartition(".")[0]) if b.module else None
            if ins:
                self._handles.append(
                    mod.register_forward_pre_hook(self._input_hook(b.module, ins, parent), with_kwargs=True)
                )
            if outs:
                self._handles.append(mod.register_forward_hook(self._output_hook(b.module, outs, parent)))
        # Registered last so that, on the model itself, the "" (logits) entry records first.
        self._handles.append(self.model.register_forward_hook(self._end_step))
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._step_open:
            self._flush(final=True)
        self._write_manifest()
        if exc_type is None and self._fatal:
            raise InputError(self.out_dir / MANIFEST, self._fatal[0])

    def _open_dir(self) -> None:
        """Fresh dump at step 0 (our own files removed); later steps append to the manifest."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        man = self.out_dir / MANIFEST
        if self.first_step == 0:
            for f in self.out_dir.glob(f"{SHARD_PREFIX}*.safetensors"):
                f.unlink()
            man.unlink(missing_ok=True)
            self._manifest = {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "source": _engine_info(self.model),
                "name_map": self.name_map.to_dict(),
                "patterns": list(self.selector.patterns),
                "names": [],
                "points": {},
                "token_ids": {},
                "steps": [],
                "problems": [],
            }
            return
        if not man.is_file():
            raise InputError(man, f"step={self.first_step} appends to an existing dump, but there is no manifest")
        self._manifest = json.loads(man.read_text())
        done = [s["step"] for s in self._manifest["steps"]]
        if done and max(done) >= self.first_step:
            raise InputError(man, f"step={self.first_step} but the dump already has steps up to {max(done)}")
        self.names = list(self._manifest["names"])
        self._points = dict(self._manifest["points"])
        self._tokens = {int(k): v for k, v in self._manifest["token_ids"].items()}
        ends = [max(s["positions"]) + 1 for s in self._manifest["steps"] if s["positions"]]
        self._next_position = max(ends, default=0)

    # -- per step --------------------------------------------------------------------------

    def _problem(self, text: str, *, fatal: bool = False) -> None:
        if text not in self.problems:  # the same problem at every step is one problem
            self.problems.append(text)
        if fatal:
            self._fatal.append(text)

    def _reset_step_state(self) -> None:
        self._buffer: dict[str, torch.Tensor] = {}
        self._buffer_rows: dict[str, list[int]] = {}
        self._buffer_bytes = 0
        self._step_positions: list[int] | None = None
        self._step_tokens: list[int] | None = None
        self._step_tensors: dict[str, dict[str, Any]] = {}
        self._step_shards: list[str] = []
        self._row_index: dict[tuple[int, str], tuple[list[int], torch.Tensor | None]] = {}

    def _begin_step(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._depth += 1
        if self._depth > 1:  # re-entrant call of the model (rare): same step
            return
        if self._step_open:
            self._flush(final=True)
        self._step_open = True
        ids = _first_tensor(args, kwargs, "input_ids")
        if ids is None and args and isinstance(args[0], torch.Tensor) and not args[0].is_floating_point():
            ids = args[0]
        pos = _first_tensor(args, kwargs, "positions", "cache_position", "position_ids")
        n = None
        if ids is not None:
            if ids.dim() > 1 and ids.shape[0] != 1:
                self._problem(f"step {self._step}: batch size {ids.shape[0]}; capture needs batch 1", fatal=True)
            n = ids.shape[-1]
            # One host sync per step (not per hook): the token ids of this step.
            self._step_tokens = ids.reshape(-1)[-n:].tolist()
        else:
            emb = _first_tensor(args, kwargs, "inputs_embeds")
            n = emb.shape[-2] if emb is not None else None
            self._step_tokens = None
        if pos is not None and n is not None and pos.numel() >= n:
            self._step_positions = [int(p) for p in pos.reshape(-1)[-n:].tolist()]
        elif n is not None:
            self._step_positions = list(range(self._next_position, self._next_position + n))

    def _rows_for(self, rows: int, device: torch.device) -> tuple[list[int], torch.Tensor | None]:
        """Absolute positions of ``rows`` trailing rows of this step, and the device index to keep."""
        key = (rows, str(device))
        hit = self._row_index.get(key)
        if hit is not None:
            return hit
        if self._step_positions is None:  # no input_ids seen: the first tensor fixes the step length
            self._step_positions = list(range(self._next_position, self._next_position + rows))
        pos = self._step_positions[len(self._step_positions) - rows :]
        if self.keep_positions is None:
            hit = (pos, None)
        else:
            keep = set(self.keep_positions)
            local = [r for r, p in enumerate(pos) if p in keep]
            idx = None if len(local) == rows else torch.tensor(local, dtype=torch.long, device=device)
            hit = ([pos[r] for r in local], idx)
        self._row_index[key] = hit
        return hit

    def _record(self, name: str, x: torch.Tensor, module: str) -> None:
        if not self._step_open:
            self._problem(f"{name} ({module}) fired outside a call of the model; skipped")
            return
        if name in self._buffer or name in self._step_tensors:
            self._problem(f"step {self._step}: {name} ({module}) fired twice in one step; kept the first")
            return
        x = x.detach()
        if x.dim() >= 3:
            if x.shape[0] != 1:
                self._problem(
                    f"step {self._step}: {name} ({module}) has batch {x.shape[0]}; needs batch 1", fatal=True
                )
                return
            x = x[0]
        if x.dim() == 1:
            x = x.unsqueeze(-1)
        x = x.reshape(x.shape[0], -1)  # (T, F)
        rows = x.shape[0]
        n_step = len(self._step_positions) if self._step_positions is not None else rows
        if rows > n_step:
            self._problem(
                f"step {self._step}: {name} ({module}) has {rows} rows but the step has {n_step} tokens; skipped"
            )
            return
        pos, idx = self._rows_for(rows, x.device)
        if not pos:
            return
        if idx is not None:
            x = x.index_select(0, idx)
        if x.is_cuda:
            # Async copy into pinned host memory: ordered on the stream before any later
            # in-place kernel (vLLM's fused norms, rope), so it records this value without a
            # host sync here; the flush waits on one event for the whole buffer.
            host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
            host.copy_(x, non_blocking=True)
            self._pending_event = True
            x = host
        else:
            # A real copy: on the CPU .to("cpu") would alias, and engines mutate in place.
            x = x.to("cpu", copy=True).contiguous()
        self._buffer[name] = x
        self._buffer_rows[name] = pos
        self._buffer_bytes += x.numel() * x.element_size()
        if name not in self._points:
            self._points[name] = {
                "features": x.shape[1],
                "dtype": str(x.dtype).removeprefix("torch."),
                "module": module,
            }
            self.names.append(name)
        if self._buffer_bytes >= self.flush_bytes:
            self._flush(final=False)

    def _emit(self, module: str, entries: tuple[MapEntry, ...], value: Any, parent: Any) -> None:
        for e in entries:
            x = _pick(value, e.index)
            if x is None:
                self._problem(f"step {self._step}: {module} {e.source}[{e.index}] is not a tensor; {e.name} skipped")
                continue
            rule = self.name_map.split_rule(e.name)
            if rule is None:
                self._record(e.name, x, module)
                continue
            try:
                sizes = resolve_sizes(rule, x.shape[-1], (parent, getattr(self.model, "config", None)), module)
            except InputError as err:
                self._problem(f"step {self._step}: {err}")
                continue
            for part, piece in zip(rule.into, x.split(sizes, dim=-1), strict=True):
                if part and self.selector(part):
                    self._record(part, piece, module)

    def _input_hook(self, module: str, entries: tuple[MapEntry, ...], parent: Any):
        def hook(mod: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            self._emit(module, entries, tuple(args) + tuple(kwargs.values()), parent)

        return hook

    def _output_hook(self, module: str, entries: tuple[MapEntry, ...], parent: Any):
        def hook(mod: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
            self._emit(module, entries, output, parent)

        return hook

    def _end_step(self, module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
        # The step stays open until the next call: vLLM computes logits (logits_processor)
        # after the model's forward returns, and those rows belong to this step.
        self._depth = max(0, self._depth - 1)
        if self._depth == 0:
            self._flush(final=False)

    # -- disk ------------------------------------------------------------------------------

    def _flush(self, *, final: bool) -> None:
        """Write the buffered tensors as one shard; on ``final`` close the step in the manifest."""
        if self._pending_event:
            torch.cuda.synchronize()  # the async copies of this buffer have landed
            self._pending_event = False
        if self._buffer:
            part = len(self._step_shards)
            fname = f"{SHARD_PREFIX}{self._step:05d}" + (f"-{part:03d}" if part else "") + ".safetensors"
            save_file(self._buffer, str(self.out_dir / fname), metadata={"format": "pt", "step": str(self._step)})
            usual_mode(self.out_dir / fname)
            self._step_shards.append(fname)
            for name, pos in self._buffer_rows.items():
                self._step_tensors[name] = {"shard": fname, "rows": len(pos), "positions": pos}
            self._buffer, self._buffer_rows, self._buffer_bytes = {}, {}, 0
        if not final:
            return
        positions = self._step_positions or []
        if self.keep_positions is not None:
            kept = set(self.keep_positions)
            positions = [p for p in positions if p in kept]
        if self._step_tokens is not None and self._step_positions is not None:
            for p, t in zip(self._step_positions, self._step_tokens, strict=False):
                if self.keep_positions is None or p in self.keep_positions:
                    self._tokens[p] = int(t)
        if self.user_token_ids is not None:
            for p in positions:
                if p >= len(self.user_token_ids):
                    self._problem(
                        f"token ids: position {p} is beyond the {len(self.user_token_ids)} given", fatal=True
                    )
                    break
                given = self.user_token_ids[p]
                if self._tokens.get(p, given) != given:
                    self._problem(
                        f"token ids: the model saw {self._tokens[p]} at position {p}, token_ids= says {given}",
                        fatal=True,
                    )
                    break
                self._tokens[p] = given
        for t in self._step_tensors.values():  # only store positions where they differ from the step's
            if t["positions"] == positions:
                del t["positions"]
        self._manifest["steps"].append(
            {"step": self._step, "positions": positions, "shards": self._step_shards, "tensors": self._step_tensors}
        )
        if self._step_positions:
            self._next_position = max(self._next_position, max(self._step_positions) + 1)
        self._step += 1
        self._step_open = False
        self._reset_step_state()
        self._write_manifest()

    def _write_manifest(self) -> None:
        """Rewritten after every step, atomically: a crash mid-run leaves a readable dump."""
        self._manifest["names"] = list(self.names)
        self._manifest["points"] = self._points
        self._manifest["token_ids"] = {str(p): t for p, t in sorted(self._tokens.items())}
        self._manifest["problems"] = list(self.problems)
        tmp = self.out_dir / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(self._manifest, indent=1))
        os.replace(tmp, self.out_dir / MANIFEST)

    # -- info ------------------------------------------------------------------------------

    def unreachable(self) -> list[str]:
        """Canonical points of this architecture the map cannot capture (compare the rest)."""
        from layerbisect.families import spec_from_hf
        from layerbisect.graph import capture_points

        cfg = getattr(self.model, "config", None)
        spec = spec_from_hf(cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg or {}), path="model.config")
        return self.name_map.unreachable(capture_points(spec))

    @property
    def bytes_per_token(self) -> int:
        """Host bytes one token costs across the captured points (known after the first step)."""
        return sum(p["features"] * _itemsize(p["dtype"]) for p in self._points.values())


def _itemsize(dtype: str) -> int:
    return torch.empty((), dtype=getattr(torch, dtype)).element_size() if hasattr(torch, dtype) else 4


def capture_activations(
    model: torch.nn.Module,
    out_dir: str | Path,
    *,
    name_map: NameMap | str = "auto",
    patterns: Sequence[str] = ("*",),
    positions: Sequence[int] | None = None,
    token_ids: Sequence[int] | None = None,
    step: int = 0,
    flush_bytes: int = 1 << 30,
) -> ActivationCapture:
    """Context manager: hook ``model``, run it inside the block, find a dump in ``out_dir``.

    ``name_map``: "auto" (from ``model.config.model_type`` and the engine), a built-in map
    name, a TOML file, or a :class:`NameMap`. ``patterns``: canonical-name globs.
    ``positions``: absolute positions to keep (default all). ``token_ids``: the full
    sequence, checked against what the model sees. ``step``: 0 starts a fresh dump in
    ``out_dir``; a later step number appends to the dump already there (decode steps run
    under separate ``with`` blocks). Each call of ``model`` inside one block is one step.
    """
    return ActivationCapture(
        model,
        out_dir,
        name_map=name_map,
        patterns=patterns,
        positions=positions,
        token_ids=token_ids,
        step=step,
        flush_bytes=flush_bytes,
    )
