"""Name maps: engine module names → canonical capture names, as data (TOML).

An engine's module tree (``model.layers.3.self_attn.o_proj``) is not our naming contract
(``layers.3.attn.o_proj``, docs/CAPTURE_NAMES.md). A map is a small TOML file with ``{i}``
for the layer index; one file per engine family, shipped as package data in
``layerbisect/engines/maps/`` and found through ``importlib.resources``.

Format::

    [meta]
    name = "llama"
    model_types = ["llama", "mistral"]     # what "auto" matches against model.config.model_type
    notes = "free text: what the map cannot reach and why"

    [rewrite]                               # module-name prefixes rewritten before matching,
    "model.language_model." = "model."      # so one map covers several layouts of one family

    [map]
    "model.embed_tokens" = "embed"                         # output (first element of a tuple)
    "model.layers.{i}.self_attn.o_proj" = [                # one module, several points, in order
        { name = "layers.{i}.attn.out", from = "input" },  # the input of o_proj
        "layers.{i}.attn.o_proj",
    ]
    "model.layers.{i}" = { name = "layers.{i}.out", index = "sum" }   # vLLM: (hidden, residual)

    [split."layers.{i}.attn.qkv"]           # a fused output split along the last dim
    into = ["layers.{i}.attn.q_proj", "layers.{i}.attn.k_proj", ""]   # "" drops that part
    sizes = ["q_size", "kv_size", "kv_size"]   # ints, attribute names, or "equal"

Key placeholders: ``{i}`` is the layer; ``{i+K}`` / ``{i-K}`` when the number in the module
name is the layer plus K (TensorRT-LLM's call counters put decoder layer i at call i+2 of the
model); ``{*}`` any one name part (letters, digits, ``_``: a call counter or class name the map
does not care about). Canonical names take
``{i}``, ``{i-1}`` (SGLang's ``model.layers.{i}.input_layernorm`` returns the *previous* layer's
output as its residual; an entry whose layer falls outside the model is dropped) and ``{last}``
(``model.norm``'s residual is the last layer's output). Keys are tried in file
order, so a specific key (``-1.Linear``) goes before a general one (``-{*}.Linear``).

``[meta] qk_layout``: ``"hf"`` when the engine's q/k features are in HF's row order (rotate-half
pairs ``(j, j + d/2)`` per head, as HF checkpoints store them), ``"gguf"`` (default) when they
are as in the GGUF reference. For architectures whose GGUF permutes Q/K rows (llama, mistral:
llama.cpp's ``LlamaModel.permute``), ``load_dump`` applies that permutation to an ``"hf"`` dump's
``attn.q``/``attn.k`` (and ``q_proj``/``k_proj``) features before comparing.

A map entry's value is a canonical name, a table ``{name, from = "output"|"input", index}``
or a list of those. ``index`` picks the tuple element (default 0: HF modules return a tensor
or ``(hidden, attn_weights)``; vLLM linears return ``(out, bias)``); ``"sum"`` adds all
tensor elements (vLLM decoder layers return ``(hidden, residual)`` with the residual add
deferred to the next layer's fused norm). The empty module name ``""`` is the model itself:
its output is the final logits (``ModelOutput``'s first element; ``loss`` is None).

Split sizes name attributes looked up on the hooked module's parent first (vLLM attention
keeps ``q_size``/``kv_size`` per tensor-parallel rank), then on ``model.config``; ``"equal"``
splits into equal parts (vLLM's fused ``gate_up_proj``).

What a map cannot reach is simply absent: e.g. HF applies rope to q/k inside the attention
forward, so ``attn.q``/``attn.k`` are not module outputs there. The comparator compares the
intersection of the names two runs have; ``NameMap.unreachable`` lists the rest.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from layerbisect.capture import layer_of
from layerbisect.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

Source = Literal["output", "input"]
QkLayout = Literal["hf", "gguf"]

_PLACEHOLDER = re.compile(r"\{(i(?:[+-]\d+)?|\*)\}")


def _key_pattern(key: str) -> tuple[re.Pattern[str], int | None]:
    """Compile a map key: literal text, ``{i}``/``{i+K}``/``{i-K}`` (the layer, offset K), ``{*}`` (one name part)."""
    out, pos, offset = [], 0, None
    for m in _PLACEHOLDER.finditer(key):
        out.append(re.escape(key[pos : m.start()]))
        tok = m.group(1)
        if tok == "*":
            out.append(r"[A-Za-z0-9_]+")
        elif offset is not None:
            raise InputError(f"name map key {key!r}", "the layer placeholder {i} may appear only once")
        else:
            offset = int(tok[1:]) if len(tok) > 1 else 0
            out.append(r"(?P<i>\d+)")
        pos = m.end()
    out.append(re.escape(key[pos:]))
    return re.compile("".join(out) + r"\Z"), offset


@dataclass(frozen=True)
class MapEntry:
    """One capture point taken from a module: its canonical name (with ``{i}``), where from."""

    name: str
    source: Source = "output"
    index: int | Literal["sum"] = 0


@dataclass(frozen=True)
class SplitRule:
    """A fused output split along its last dim into parts; ``""`` parts are dropped."""

    into: tuple[str, ...]
    sizes: tuple[int | str, ...] | Literal["equal"]


@dataclass(frozen=True)
class Binding:
    """A concrete module of a concrete model and the points it yields (``{i}`` resolved)."""

    module: str
    layer: int | None
    entries: tuple[MapEntry, ...]


@dataclass
class NameMap:
    """Engine module-name patterns → capture entries, plus layout rewrites and split rules."""

    name: str
    entries: dict[str, tuple[MapEntry, ...]]
    model_types: tuple[str, ...] = ()
    rewrite: dict[str, str] = field(default_factory=dict)
    split: dict[str, SplitRule] = field(default_factory=dict)
    notes: str = ""
    engine: str = "transformers"
    source: str = "<memory>"
    qk_layout: QkLayout = "gguf"

    def __post_init__(self) -> None:
        # `{i}` (with an optional offset) becomes a digits group, `{*}` any digits; the rest is literal.
        self._patterns = [(*_key_pattern(k), k) for k in self.entries]

    # -- loading -------------------------------------------------------------------------

    @classmethod
    def from_toml(cls, text: str, *, source: str = "<string>") -> NameMap:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise InputError(source, f"not valid TOML: {e}") from e
        return cls.from_dict(data, source=source)

    @classmethod
    def from_file(cls, path: str | Path) -> NameMap:
        p = Path(path)
        if not p.is_file():
            raise InputError(p, "name map file not found")
        return cls.from_toml(p.read_text(), source=str(p))

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "<dict>") -> NameMap:
        meta = data.get("meta", {})
        raw = data.get("map")
        if not isinstance(raw, dict) or not raw:
            raise InputError(source, "a name map needs a non-empty [map] section")
        entries = {key: tuple(_parse_entries(value, f"{source}: [map] {key!r}")) for key, value in raw.items()}
        split = {}
        for target, rule in data.get("split", {}).items():
            where = f"{source}: [split] {target!r}"
            if not isinstance(rule, dict) or "into" not in rule or "sizes" not in rule:
                raise InputError(where, "a split rule needs `into` and `sizes`")
            sizes = rule["sizes"]
            if sizes != "equal":
                if not isinstance(sizes, list) or len(sizes) != len(rule["into"]):
                    raise InputError(where, '`sizes` must be "equal" or a list as long as `into`')
                sizes = tuple(sizes)
            split[target] = SplitRule(into=tuple(rule["into"]), sizes=sizes)
        qk_layout = meta.get("qk_layout", "gguf")
        if qk_layout not in ("hf", "gguf"):
            raise InputError(f"{source}: [meta] qk_layout", f'must be "hf" or "gguf", not {qk_layout!r}')
        return cls(
            name=str(meta.get("name", Path(source).stem)),
            entries=entries,
            model_types=tuple(meta.get("model_types", ())),
            rewrite=dict(data.get("rewrite", {})),
            split=split,
            notes=str(meta.get("notes", "")),
            engine=str(meta.get("engine", "transformers")),
            source=source,
            qk_layout=qk_layout,
        )

    def to_dict(self) -> dict[str, Any]:
        """The map as plain data (stored in a dump's manifest so the dump says how it was named)."""
        return {
            "meta": {
                "name": self.name,
                "engine": self.engine,
                "model_types": list(self.model_types),
                "notes": self.notes,
                "qk_layout": self.qk_layout,
            },
            "rewrite": dict(self.rewrite),
            "map": {
                k: [{"name": e.name, "from": e.source, "index": e.index} for e in v] for k, v in self.entries.items()
            },
            "split": {
                k: {"into": list(r.into), "sizes": r.sizes if r.sizes == "equal" else list(r.sizes)}
                for k, r in self.split.items()
            },
        }

    # -- matching ------------------------------------------------------------------------

    def canonical_module_name(self, module: str) -> str:
        for old, new in self.rewrite.items():
            if module.startswith(old):
                return new + module[len(old) :]
        return module

    def match(self, module: str, n_layers: int | None = None) -> Binding | None:
        """The binding for one engine module name, or None when the map does not use it.

        ``n_layers`` resolves ``{last}`` in canonical names; without it those entries are left out.
        A key whose layer falls outside the model (below 0, or ``n_layers`` and above) does not
        bind, and the next key is tried.
        """
        m_name = self.canonical_module_name(module)
        for pat, offset, key in self._patterns:
            m = pat.match(m_name)
            if m is None:
                continue
            layer = int(m.group("i")) - offset if offset is not None else None
            if layer is not None and (layer < 0 or (n_layers is not None and layer >= n_layers)):
                continue  # not a layer of this model: a later, more general key may still match
            ents = []
            for e in self.entries[key]:
                name = _resolve_name(e.name, layer, n_layers)
                if name is not None:
                    ents.append(MapEntry(name, e.source, e.index))
            return Binding(module=module, layer=layer, entries=tuple(ents)) if ents else None
        return None

    def bind(self, module_names: Iterable[str], n_layers: int | None = None) -> list[Binding]:
        """Bindings for a model's module names; ``n_layers`` defaults to the layers the names show."""
        names = list(module_names)
        if n_layers is None:
            layers = [b.layer for b in (self.match(n) for n in names) if b is not None and b.layer is not None]
            n_layers = max(layers) + 1 if layers else None
        return [b for b in (self.match(n, n_layers) for n in names) if b is not None]

    def split_rule(self, name: str) -> SplitRule | None:
        """The split rule for a concrete target name (``layers.3.attn.qkv``), ``{i}`` resolved."""
        for target, rule in self.split.items():
            pat = re.escape(target).replace(re.escape("{i}"), r"(?P<i>\d+)") + r"\Z"
            m = re.match(pat, name)
            if m is not None:
                i = m.groupdict().get("i")
                return SplitRule(into=tuple(p.replace("{i}", i) if i else p for p in rule.into), sizes=rule.sizes)
        return None

    def targets(self, n_layers: int) -> list[str]:
        """Every canonical name the map can produce for an n-layer model (after splits)."""
        out: list[str] = []
        for _pat, offset, key in self._patterns:
            layers: list[int | None] = list(range(n_layers)) if offset is not None else [None]
            for e in self.entries[key]:
                for i in layers:
                    name = _resolve_name(e.name, i, n_layers)
                    if name is None:
                        continue
                    rule = self.split_rule(name)
                    out.extend([p for p in rule.into if p] if rule else [name])
        return out

    def unreachable(self, points: Sequence[str]) -> list[str]:
        """Which of a model's capture ``points`` (``graph.capture_points(spec)``) this map cannot capture, in order."""
        n_layers = 1 + max((layer_of(p) for p in points if layer_of(p) is not None), default=-1)
        have = set(self.targets(n_layers))
        return [n for n in points if n not in have]


_NAME_LAYER = re.compile(r"\{i([+-]\d+)?\}")


def _resolve_name(name: str, layer: int | None, n_layers: int | None) -> str | None:
    """A canonical name with ``{i}``, ``{i±K}`` and ``{last}`` filled in; None when out of range."""
    bad = False

    def sub(m: re.Match[str]) -> str:
        nonlocal bad
        if layer is None:
            bad = True
            return m.group(0)
        j = layer + int(m.group(1) or 0)
        if j < 0 or (n_layers is not None and j >= n_layers):
            bad = True
        return str(j)

    out = _NAME_LAYER.sub(sub, name)
    if "{last}" in out:
        if n_layers is None:
            return None
        out = out.replace("{last}", str(n_layers - 1))
    return None if bad else out


def _parse_entries(value: Any, where: str) -> list[MapEntry]:
    items = value if isinstance(value, list) else [value]
    out = []
    for it in items:
        if isinstance(it, str):
            out.append(MapEntry(it))
            continue
        if not isinstance(it, dict) or not isinstance(it.get("name"), str):
            raise InputError(where, "an entry is a name or a table with a `name`")
        source = it.get("from", "output")
        if source not in ("output", "input"):
            raise InputError(where, f'`from` must be "output" or "input", not {source!r}')
        index = it.get("index", 0)
        if not (index == "sum" or (isinstance(index, int) and not isinstance(index, bool) and index >= 0)):
            raise InputError(where, f'`index` must be a non-negative int or "sum", not {index!r}')
        out.append(MapEntry(it["name"], source, index))
    return out


# -- built-in maps ---------------------------------------------------------------------------


def builtin_maps() -> dict[str, NameMap]:
    """The maps shipped in ``layerbisect/engines/maps/*.toml``, by map name."""
    maps: dict[str, NameMap] = {}
    root = resources.files("layerbisect.engines") / "maps"
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            nm = NameMap.from_toml(entry.read_text(), source=f"layerbisect/engines/maps/{entry.name}")
            maps[nm.name] = nm
    return maps


def map_for_model_type(model_type: str, engine: str = "transformers") -> NameMap:
    maps = builtin_maps()
    for nm in maps.values():
        if model_type in nm.model_types and nm.engine == engine:
            return nm
    raise InputError(
        f"model_type {model_type!r} ({engine})",
        f"no built-in name map; pass name_map= a TOML file (built-ins: {', '.join(sorted(maps))})",
    )


def resolve_name_map(spec: NameMap | str | Path, model: Any = None) -> NameMap:
    """``"auto"`` (from ``model.config.model_type``), a built-in map name, a TOML path, or a map."""
    if isinstance(spec, NameMap):
        return spec
    s = str(spec)
    if s == "auto":
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if not model_type:
            raise InputError("name_map='auto'", "the model has no config.model_type; pass a map name or TOML file")
        # vLLM models carry the HF config (same model_type) but another module tree.
        engine = type(model).__module__.split(".")[0]
        return map_for_model_type(str(model_type), engine if engine in ("vllm", "sglang") else "transformers")
    if s.endswith(".toml") or Path(s).is_file():
        return NameMap.from_file(s)
    maps = builtin_maps()
    if s in maps:
        return maps[s]
    raise InputError(f"name_map={s!r}", f"not a built-in map ({', '.join(sorted(maps))}) nor a TOML file")


def resolve_sizes(rule: SplitRule, total: int, lookups: Sequence[Any], where: str) -> list[int]:
    """Concrete split sizes for a fused output of last-dim ``total``; checks they add up."""
    n = len(rule.into)
    if rule.sizes == "equal":
        if total % n:
            raise InputError(where, f"cannot split {total} features into {n} equal parts")
        return [total // n] * n
    sizes: list[int] = []
    for s in rule.sizes:
        if isinstance(s, int):
            sizes.append(s)
            continue
        for obj in lookups:
            v = getattr(obj, s, None) if obj is not None else None
            if isinstance(v, int):
                sizes.append(v)
                break
        else:
            raise InputError(where, f"split size {s!r} is not an int attribute of the module's parent or config")
    if sum(sizes) != total:
        raise InputError(where, f"split sizes {sizes} add up to {sum(sizes)}, the fused output has {total}")
    return sizes
