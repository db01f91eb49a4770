"""llama.cpp as the producer of GGUF fixtures: its own converter, vocabularies and quantizer.

Nothing of llama.cpp is committed here. The pinned ``llama-cpp-python`` source distribution on
PyPI vendors llama.cpp (``vendor/llama.cpp`` at commit 0c1e570) with ``convert_hf_to_gguf.py``,
its per-family ``conversion/`` modules, the matching ``gguf-py`` (newer than the ``gguf`` wheel
on PyPI, whose 0.19 lacks constants the converter uses) and vocab-only GGUFs with tokenizer
test texts (``models/ggml-vocab-*``). :func:`llamacpp_source` downloads the sdist once with
pip, checks its sha256, and unpacks only those parts into the fixture cache::

    $LAYERBISECT_CACHE/llamacpp/
      sdist/llama_cpp_python-0.3.36.tar.gz
      src-0.3.36-<sha12>/llama.cpp/{convert_hf_to_gguf.py, conversion/, gguf-py/, models/ggml-vocab-*, LICENSE}
      src-0.3.36-<sha12>/source.json         version, sdist sha256, llama.cpp commit
      converted/<hf-sha12>-<outtype>-<key8>/{model.gguf, convert.log}

The converter runs in a subprocess (it is a script, not a library: module-level logging set-up,
``sys.exit`` on unsupported models) with the vendored gguf-py first on ``PYTHONPATH``; its log
is kept beside the output, and a failure is an ``InputError`` carrying the log's last lines.

Quantization (:func:`llama_quantize`) goes through llama-cpp-python's ctypes binding of
``llama_model_quantize``, the function the ``llama-quantize`` tool calls, so it needs the
compiled package (``scripts/ensure_llamacpp.sh`` builds it once per machine). IQ types whose
tensors need an importance matrix (llama.cpp's ``tensor_requires_imatrix``: IQ1_S, IQ1_M,
IQ2_XXS, IQ2_XS, IQ2_S, IQ2_M, IQ3_XXS, and Q2_K_S) are refused here up front, since we pass
no imatrix; IQ3_XS/IQ3_S/IQ3_M, IQ4_NL and IQ4_XS quantize without one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from layerbisect.errors import InputError
from layerbisect.producers.cache import build_atomic, cache_dir, options_key, sha256_dir, sha256_file

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
SDIST_NAME = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
LLAMA_CPP_COMMIT = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"

# What we unpack from vendor/llama.cpp/ (prefixes of member paths).
_KEEP = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/gguf/", "models/ggml-vocab-", "LICENSE")

OUTTYPES = ("f32", "f16", "bf16", "q8_0", "auto")

# llama.cpp's llama_ftype values (include/llama.h), by the names llama-quantize prints.
FTYPES: dict[str, int] = {
    "F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9,
    "Q2_K": 10, "Q3_K_S": 11, "Q3_K_M": 12, "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15,
    "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18, "IQ2_XXS": 19, "IQ2_XS": 20, "Q2_K_S": 21,
    "IQ3_XS": 22, "IQ3_XXS": 23, "IQ1_S": 24, "IQ4_NL": 25, "IQ3_S": 26, "IQ3_M": 27,
    "IQ2_S": 28, "IQ2_M": 29, "IQ4_XS": 30, "IQ1_M": 31, "BF16": 32, "TQ1_0": 36, "TQ2_0": 37,
}
NEEDS_IMATRIX = frozenset({"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "Q2_K_S"})


@dataclass(frozen=True)
class LlamaCppSource:
    """The unpacked parts of the vendored llama.cpp."""

    root: Path  # .../llama.cpp
    sdist_sha256: str
    commit: str

    @property
    def converter(self) -> Path:
        return self.root / "convert_hf_to_gguf.py"

    @property
    def gguf_py(self) -> Path:
        return self.root / "gguf-py"

    def vocab_gguf(self, name: str) -> Path:
        """``models/ggml-vocab-{name}.gguf`` (its ``.inp``/``.out`` test files lie beside it)."""
        p = self.root / "models" / f"ggml-vocab-{name}.gguf"
        if not p.is_file():
            have = sorted(q.name.removeprefix("ggml-vocab-").removesuffix(".gguf")
                          for q in (self.root / "models").glob("ggml-vocab-*.gguf"))
            raise InputError(p, f"no such llama.cpp vocabulary (have: {', '.join(have)})")
        return p


def _fetch_sdist(dest: Path) -> None:
    """pip download the pinned sdist (never a wheel: the source is what we want) into ``dest``."""
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "-d", tmp, f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / SDIST_NAME
        if r.returncode != 0 or not got.is_file():
            tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-5:])
            raise InputError(f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", f"pip download failed: {tail}")
        os.replace(got, dest)


def sdist_path() -> Path:
    """The pinned sdist in the cache, downloaded on first use; sha256-checked."""
    final = cache_dir() / "llamacpp" / "sdist" / SDIST_NAME
    build_atomic(final, _fetch_sdist, is_file=True)
    digest = sha256_file(final)
    if digest != SDIST_SHA256:
        raise InputError(final, f"sha256 {digest[:16]}… is not the pinned {SDIST_SHA256[:16]}…; delete it to refetch")
    return final


def llamacpp_source() -> LlamaCppSource:
    """The vendored llama.cpp's converter, gguf-py and vocabularies, unpacked once into the cache."""
    final = cache_dir() / "llamacpp" / f"src-{LLAMA_CPP_PYTHON_VERSION}-{SDIST_SHA256[:12]}"

    def build(tmp: Path) -> None:
        sdist = sdist_path()
        prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp/"
        with tarfile.open(sdist, "r:gz") as tar:
            members = []
            for m in tar.getmembers():
                rel = m.name[len(prefix):] if m.name.startswith(prefix) else None
                if rel and m.isfile() and rel.startswith(_KEEP):
                    m.name = "llama.cpp/" + rel
                    members.append(m)
            tar.extractall(tmp, members=members, filter="data")
        if not (tmp / "llama.cpp" / "convert_hf_to_gguf.py").is_file():
            raise InputError(sdist, "has no vendor/llama.cpp/convert_hf_to_gguf.py")
        info = {"package": "llama-cpp-python", "version": LLAMA_CPP_PYTHON_VERSION, "sdist_sha256": SDIST_SHA256,
                "llama_cpp_commit": LLAMA_CPP_COMMIT, "unpacked": list(_KEEP)}
        (tmp / "source.json").write_text(json.dumps(info, indent=2) + "\n")

    build_atomic(final, build)
    return LlamaCppSource(root=final / "llama.cpp", sdist_sha256=SDIST_SHA256, commit=LLAMA_CPP_COMMIT)


# -- conversion ----------------------------------------------------------------------------


def _tail(path: Path, n: int = 6) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return " | ".join(lines[-n:])


def convert_hf_to_gguf(
    hf_dir: str | Path,
    out: str | Path,
    *,
    outtype: str = "f32",
    extra_args: Sequence[str] = (),
    overwrite: bool = False,
) -> Path:
    """Run llama.cpp's ``convert_hf_to_gguf.py`` on a HF checkpoint directory; returns ``out``.

    ``outtype``: the converter's ``--outtype`` (f32, f16, bf16, q8_0, auto). ``extra_args``:
    more converter flags, e.g. ``("--no-mtp",)`` for Qwen3.5. The log goes to
    ``<out>.convert.log``. The GGUF is written to a temporary name and renamed into place, so
    ``out`` is never half-written; an existing ``out`` is refused unless ``overwrite``.

    Raises ``InputError`` (the HF dir, the converter's exit code and last log lines) on failure.
    """
    hf = Path(hf_dir)
    dst = Path(out)
    if not (hf / "config.json").is_file():
        raise InputError(hf, "not a HF checkpoint directory (no config.json)")
    if outtype not in OUTTYPES:
        raise InputError(f"outtype={outtype!r}", f"choose one of {', '.join(OUTTYPES)}")
    if dst.exists() and not overwrite:
        raise InputError(dst, "exists; pass overwrite=True to replace it")
    src = llamacpp_source()
    dst.parent.mkdir(parents=True, exist_ok=True)
    log = dst.with_name(dst.name + ".convert.log")
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src.gguf_py), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, str(src.converter), str(hf), "--outfile", str(tmp), "--outtype", outtype, *extra_args]
    t0 = time.perf_counter()
    with open(log, "w") as f:
        f.write(f"# {' '.join(cmd)}\n# llama.cpp {src.commit} (llama-cpp-python {LLAMA_CPP_PYTHON_VERSION})\n")
        f.flush()
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=str(dst.parent))
        f.write(f"# exit {r.returncode} after {time.perf_counter() - t0:.1f} s\n")
    if r.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        raise InputError(hf, f"convert_hf_to_gguf.py failed (exit {r.returncode}; log {log}): {_tail(log)}")
    os.replace(tmp, dst)
    return dst


def converted_gguf(hf_dir: str | Path, *, outtype: str = "f32", extra_args: Sequence[str] = ()) -> Path:
    """:func:`convert_hf_to_gguf` through the cache, keyed by the HF dir's content and the arguments.

    Returns ``$LAYERBISECT_CACHE/llamacpp/converted/<hf-sha12>-<outtype>-<key8>/model.gguf``
    (``convert.log`` beside it). Converting a tiny model takes a few seconds, a cache hit
    only the hash of the HF directory.
    """
    hf = Path(hf_dir)
    if not hf.is_dir():
        raise InputError(hf, "not a directory")
    key = options_key(outtype=outtype, extra_args=list(extra_args), sdist=SDIST_SHA256)
    final = cache_dir() / "llamacpp" / "converted" / f"{sha256_dir(hf)[:12]}-{outtype}-{key}"

    def build(tmp: Path) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        convert_hf_to_gguf(hf, tmp / "model.gguf", outtype=outtype, extra_args=extra_args)
        shutil.move(tmp / "model.gguf.convert.log", tmp / "convert.log")

    return build_atomic(final, build) / "model.gguf"


# -- quantization --------------------------------------------------------------------------


def llama_cpp_available() -> str | None:
    """None when ``llama_cpp`` (the compiled llama-cpp-python) imports, else why not (for skips)."""
    try:
        import llama_cpp  # noqa: F401
    except Exception as e:  # ImportError, or OSError from a broken shared library
        return f"llama-cpp-python is not installed ({type(e).__name__}: {e}); run scripts/ensure_llamacpp.sh"
    return None


def llama_quantize(
    in_gguf: str | Path,
    out_gguf: str | Path,
    ftype: str,
    *,
    tensor_types: Mapping[str, str] | None = None,
    allow_requantize: bool = False,
    nthread: int = 0,
    overwrite: bool = False,
) -> Path:
    """Quantize a GGUF with llama.cpp's ``llama_model_quantize``: what
    ``llama-quantize [--allow-requantize] [--tensor-type PATTERN=TYPE ...] IN OUT FTYPE`` runs.

    ``ftype``: a key of :data:`FTYPES` (Q8_0, Q4_K_M, Q5_K_S, Q3_K_M, Q2_K, IQ4_XS, …); types
    in :data:`NEEDS_IMATRIX` are refused (no imatrix is passed). ``tensor_types``: regex → GGML
    type name (``{"blk\\.3\\.ffn_down": "Q4_K"}``), llama.cpp's ``tt_overrides``.
    ``allow_requantize``: accept an input that is already quantized (its tensors are dequantized
    first, as llama-quantize ``--allow-requantize`` does). Tensors whose rows do not divide into
    the type's block (256 for K- and IQ-quants) get llama.cpp's fallback type. Writes to a
    temporary name and renames; the log goes to ``<out>.quantize.log``; returns ``out_gguf``.
    Raises ``InputError`` when llama_cpp is missing, a type is unknown or the quantization fails.
    """
    import ctypes

    import gguf

    src, dst = Path(in_gguf), Path(out_gguf)
    name = ftype.upper()
    if name not in FTYPES:
        raise InputError(f"ftype={ftype!r}", f"not a llama.cpp file type; choose one of {', '.join(FTYPES)}")
    if name in NEEDS_IMATRIX:
        raise InputError(f"ftype={name}", "needs an importance matrix (llama-imatrix); not supported here")
    if not src.is_file():
        raise InputError(src, "no such GGUF")
    if dst.exists() and not overwrite:
        raise InputError(dst, "exists; pass overwrite=True to replace it")
    why = llama_cpp_available()
    if why:
        raise InputError("llama_cpp", why)
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[name]
    params.nthread = nthread
    params.allow_requantize = allow_requantize
    overrides = list((tensor_types or {}).items())
    keep = None
    if overrides:
        arr = (llama_cpp.llama_model_tensor_override * (len(overrides) + 1))()
        patterns = [p.encode() for p, _ in overrides]
        for k, (pat, (_, t)) in enumerate(zip(patterns, overrides, strict=True)):
            try:
                qt = gguf.GGMLQuantizationType[t.upper()]
            except KeyError:
                raise InputError(f"--tensor-type {pat.decode()}={t}", "not a GGML type name") from None
            arr[k].pattern = pat
            arr[k].type = int(qt)
        arr[len(overrides)].pattern = None  # the list ends at a null pattern
        params.tt_overrides = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
        keep = (arr, patterns)  # alive until the call returns
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    log = dst.with_name(dst.name + ".quantize.log")
    with native_output_to(log):
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
    del keep
    if rc != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        hint = " (the input is quantized: pass allow_requantize=True)" if not allow_requantize else ""
        raise InputError(src, f"llama_model_quantize to {name} failed (return code {rc}){hint}: {_tail(log, 3)}")
    os.replace(tmp, dst)
    return dst


@contextmanager
def native_output_to(path: str | Path) -> Iterator[None]:
    """Send what C code prints to stdout/stderr (file descriptors 1 and 2) into ``path``.

    llama.cpp reports per tensor on stderr from C; Python's ``sys.stderr`` redirection does
    not see it, so the descriptors themselves are swapped for the duration.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(path, "ab") as f:
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
