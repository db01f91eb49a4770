"""HF weights of a GGUF model (the bundled Gemma 3 270M): the input of the real quantization producer.

The candidate checkpoints must be made by the real producer (llmcompressor) from the *same*
weights the reference runs, so we let transformers dequantize the GGUF
(``from_pretrained(dir, gguf_file=...)``) and save a plain HF checkpoint.

Pitfalls handled here (seen with transformers 5.17):

- The loaded config carries ``quantization_config = {quant_method: gguf}`` and the model an
  ``hf_quantizer``: ``save_pretrained`` refuses to save, and llmcompressor refuses a model with a
  quantization_config. Both are dropped.
- ``rms_norm_eps`` comes back as the float32 value widened to float64 (9.99999997e-07); we
  round it to 7 significant digits (1e-06) so configs compare equal to hand-written ones.
- transformers' GGUF *tokenizer* conversion for Gemma is broken: it tokenizes
  "The capital of France is" as ``The ▁c ap it al ▁of ▁Fr an ce ▁is`` with no ``<bos>``, and the
  model then babbles. We build the tokenizer ourselves from the GGUF vocabulary instead (see
  ``tokenizer_from_gguf``): SentencePiece-BPE semantics (repeatedly merge the adjacent pair
  whose merged piece has the highest score) expressed as a ``tokenizers`` BPE whose merges are
  ranked by that score, with byte fallback, spaces as "▁", no space prefix, ``<bos>`` prepended
  -- what llama.cpp does with ``tokenizer.ggml.model = llama``. The check: the real Gemma 3 ids
  of "The capital of France is" are ``[2, 818, 5279, 529, 7001, 563]``.

Verification after saving: the saved checkpoint is reloaded and its logits must equal the
in-memory model's (same weights, so equal up to dtype), and the greedy continuation of
"The capital of France is" must mention "Paris" for the bundled model (checked by the slow test).

Cached under ``cache_dir()/hf/<gguf-sha12>-<dtype>-<key>/`` and built atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from layerbisect.errors import InputError
from layerbisect.producers.cache import build_atomic, cache_dir, options_key, sha256_file
from layerbisect.quiet import output_to

DTYPES = ("bfloat16", "float32")
PROMPT = "The capital of France is"


def _read_gguf_tokenizer(gguf_path: Path) -> dict[str, Any]:
    from layerbisect.references.fast_reader import FastGGUFReader

    r = FastGGUFReader(gguf_path)

    def field(name: str) -> Any:
        f = r.fields.get(name)
        if f is None:
            return None
        if len(f.data) == 1 and len(f.types) == 1:  # scalar
            v = f.parts[f.data[0]]
            return bytes(v).decode() if f.types[0].name == "STRING" else v.tolist()[0]
        if f.types[-1].name == "STRING":
            return [bytes(f.parts[i]).decode("utf-8", errors="replace") for i in f.data]
        return [f.parts[i].tolist()[0] for i in f.data]

    out = {k: field(f"tokenizer.ggml.{k}") for k in (
        "model", "pre", "tokens", "scores", "token_type", "merges", "bos_token_id", "eos_token_id",
        "unknown_token_id", "padding_token_id", "add_bos_token", "add_eos_token", "add_space_prefix")}
    if not out["tokens"]:
        raise InputError(gguf_path, "no tokenizer.ggml.tokens: cannot build a tokenizer")
    return out


def tokenizer_from_gguf(gguf_path: str | Path) -> Any:
    """A ``PreTrainedTokenizerFast`` equivalent to llama.cpp's SPM ("llama") tokenizer of a GGUF."""
    from tokenizers import Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    t = _read_gguf_tokenizer(Path(gguf_path))
    if t["model"] != "llama":
        raise InputError(gguf_path, f"tokenizer model {t['model']!r}: only SentencePiece ('llama') is handled here")
    tokens: list[str] = t["tokens"]
    scores: list[float] = t["scores"] or [0.0] * len(tokens)
    types: list[int] = t["token_type"] or [1] * len(tokens)
    vocab = {tok: i for i, tok in enumerate(tokens)}
    # SentencePiece BPE merges the pair whose merged piece scores highest. Rank every split of
    # every normal piece by the merged piece's score (ties: by id, as sentencepiece does).
    merges: list[tuple[float, int, str, str]] = []
    for i, piece in enumerate(tokens):
        if types[i] != 1 or len(piece) < 2:  # 1 = NORMAL; skip control, byte, unused pieces
            continue
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in vocab and right in vocab:
                merges.append((-scores[i], i, left, right))
    merges.sort()
    model = BPE(vocab=vocab, merges=[(a, b) for _, _, a, b in merges], byte_fallback=True,
                unk_token=tokens[t["unknown_token_id"]] if t["unknown_token_id"] is not None else None,
                fuse_unk=True)
    tok = Tokenizer(model)
    # llama.cpp's SPM path: spaces become "▁", and a "▁" is prepended only if add_space_prefix.
    norm = [normalizers.Replace(" ", "▁")]
    if t["add_space_prefix"]:
        norm.insert(0, normalizers.Prepend("▁"))
    tok.normalizer = normalizers.Sequence(norm)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    specials = [tokens[i] for i, ty in enumerate(types) if ty in (3, 4)]  # CONTROL, USER_DEFINED
    tok.add_special_tokens(specials)
    bos = tokens[t["bos_token_id"]] if t["bos_token_id"] is not None else None
    if bos is not None and t["add_bos_token"] is not False:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, t["bos_token_id"])])

    def name(key: str) -> str | None:
        i = t[key]
        return tokens[i] if i is not None else None

    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=name("eos_token_id"),
                                   unk_token=name("unknown_token_id"), pad_token=name("padding_token_id"))


def load_hf_from_gguf(gguf_path: str | Path, dtype: str = "bfloat16") -> Any:
    """transformers' model from a GGUF, with the GGUF quantizer marks removed (see module notes)."""
    from transformers import AutoModelForCausalLM

    gguf_path = Path(gguf_path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                 dtype=getattr(torch, dtype))
    model.hf_quantizer = None
    for obj in (model.config, getattr(model.config, "text_config", None)):
        if obj is not None and hasattr(obj, "quantization_config"):
            delattr(obj, "quantization_config")
    model.is_quantized = False if hasattr(model, "is_quantized") else None
    eps = getattr(model.config, "rms_norm_eps", None)
    if isinstance(eps, float):
        model.config.rms_norm_eps = float(f"{eps:.7g}")
    return model.eval()


def hf_checkpoint_from_gguf(gguf_path: str | Path, out_dir: str | Path | None = None,
                            dtype: str = "bfloat16") -> Path:
    """Make (or reuse) an HF checkpoint directory with the weights and tokenizer of ``gguf_path``.

    ``dtype``: "bfloat16" (what the quantization producer was run on) or "float32" (the exact
    dequantized GGUF values, for comparing against the reference runner without BF16 rounding).
    With ``out_dir=None`` the result is cached under ``cache_dir()/hf/``; a given ``out_dir`` is
    (re)built if it has no config.json.
    """
    from transformers import AutoModelForCausalLM

    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise InputError(gguf_path, "no such GGUF file")
    if dtype not in DTYPES:
        raise InputError("dtype", f"{dtype!r} is not one of {', '.join(DTYPES)}")
    if out_dir is None:
        digest = sha256_file(gguf_path)
        final = cache_dir() / "hf" / f"{digest[:12]}-{dtype}-{options_key(kind='hf', dtype=dtype)}"
    else:
        final = Path(out_dir)
        if (final / "config.json").is_file():
            return final
        if final.exists() and any(final.iterdir()):
            raise InputError(final, "exists, is not empty and has no config.json; refusing to overwrite")
        if final.exists():
            final.rmdir()

    def build(tmp: Path) -> None:
        # transformers' "Converting and de-quantizing GGUF tensors", "Writing model shards": to a log
        # beside the checkpoint (not in it: its files key the candidates made from it)
        with output_to(final.parent / f"{final.name}.producer.log"):
            _build(tmp)

    def _build(tmp: Path) -> None:
        model = load_hf_from_gguf(gguf_path, dtype)
        tokenizer = tokenizer_from_gguf(gguf_path)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # Sanity: the saved checkpoint reloads to the same logits, and carries no quantization_config.
        cfg = json.loads((tmp / "config.json").read_text())
        if "quantization_config" in cfg:
            raise RuntimeError("quantization_config survived into the saved config")
        ids = tokenizer(PROMPT, return_tensors="pt").input_ids
        reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=getattr(torch, dtype)).eval()
        with torch.no_grad():
            a, b = model(ids).logits, reloaded(ids).logits
        if not torch.equal(a, b):
            raise RuntimeError(f"saved checkpoint differs from the loaded model: max |diff| {(a - b).abs().max():.3g}")
        (tmp / "layerbisect-source.json").write_text(json.dumps(
            {"gguf": str(gguf_path), "gguf_sha256": sha256_file(gguf_path), "dtype": dtype}, indent=1))

    return build_atomic(final, build)


def greedy_continuation(hf_dir: str | Path, prompt: str = PROMPT, max_new_tokens: int = 8) -> str:
    """Greedy text continuation of ``prompt`` by the checkpoint at ``hf_dir`` (a sanity check)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
