"""GGUF dequantization: bit-exact against gguf-py's `gguf.quants.dequantize`, the oracle.

Tier: bit-exact (an encoding), so no tolerance anywhere. "Bit-exact" means equal float32
bits everywhere both sides are numbers, and NaN at the same positions (NaN payloads may
differ by platform and carry no information).

Data: random bytes with the scale fields replaced by finite random f16 (subnormals and
zeros included), gguf-py's own quantizer where it has one, fully random bytes (inf/NaN
scales) for the NaN positions, and every tensor of the bundled Gemma 3 270M Q4_K_M file.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as QT

from layerbisect.errors import InputError
from layerbisect.references.gguf_dequant import (
    as_torch,
    dequantize,
    dequantize_reader_tensor,
    supported_types,
)

SEED = 1234

# Byte offsets of the f16 scale fields inside one block, per type (from gguf-py's hsplits).
# Types without an entry have no f16 field (MXFP4's E8M0 and NVFP4's UE4M3 are finite for
# every byte value; the float types are all "scale" and are tested with NaNs on purpose).
F16_FIELDS: dict[QT, tuple[int, ...]] = {
    QT.Q4_0: (0,),
    QT.Q4_1: (0, 2),
    QT.Q5_0: (0,),
    QT.Q5_1: (0, 2),
    QT.Q8_0: (0,),
    QT.Q2_K: (80, 82),
    QT.Q3_K: (108,),
    QT.Q4_K: (0, 2),
    QT.Q5_K: (0, 2),
    QT.Q6_K: (208,),
    QT.IQ4_NL: (0,),
    QT.IQ4_XS: (0,),
    QT.IQ3_XXS: (0,),
    QT.IQ3_S: (0,),
}
ALL_TYPES = [
    QT.F32, QT.F16, QT.BF16, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0, QT.Q2_K, QT.Q3_K,
    QT.Q4_K, QT.Q5_K, QT.Q6_K, QT.IQ4_NL, QT.IQ4_XS, QT.IQ3_XXS, QT.IQ3_S, QT.MXFP4, QT.NVFP4,
]
BLOCK_TYPES = [t for t in ALL_TYPES if gguf.GGML_QUANT_SIZES[t][0] > 1]
# The types gguf-py can also quantize (the others raise NotImplementedError there).
QUANTIZABLE = [QT.F16, QT.BF16, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0, QT.MXFP4]


# --- helpers ---------------------------------------------------------------------------------


def _finite_f16_bits(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random f16 bit patterns, all finite: an all-ones exponent gets its top bit cleared."""
    bits = rng.integers(0, 1 << 16, size=n, dtype=np.uint16)
    inf_nan = (bits & 0x7C00) == 0x7C00
    bits[inf_nan] &= np.uint16(~0x4000 & 0xFFFF)
    return bits


def random_blocks(qtype: QT, rows: int, blocks_per_row: int, *, finite: bool = True, seed: int = SEED) -> np.ndarray:
    """uint8 (rows, row_bytes) as GGUFReader gives a block tensor; scale fields finite if asked."""
    rng = np.random.default_rng([seed, int(qtype)])
    _, type_size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(rows * blocks_per_row, type_size), dtype=np.uint8)
    if finite:
        for off in F16_FIELDS.get(qtype, ()):
            raw[:, off : off + 2] = _finite_f16_bits(rng, raw.shape[0]).view(np.uint8).reshape(-1, 2)
    return raw.reshape(rows, blocks_per_row * type_size)


def assert_bit_exact(ours: torch.Tensor, ref: np.ndarray, qtype: QT, what: str) -> None:
    """Equal float32 bits where both are numbers, NaN at the same places; diagnose otherwise."""
    ref_t = torch.from_numpy(np.ascontiguousarray(ref, dtype=np.float32))
    assert ours.dtype == torch.float32, f"{what}: dtype {ours.dtype}, want float32"
    assert tuple(ours.shape) == tuple(ref_t.shape), f"{what}: shape {tuple(ours.shape)}, gguf-py {tuple(ref_t.shape)}"
    a, b = ours.detach().cpu().reshape(-1), ref_t.reshape(-1)
    nan_a, nan_b = torch.isnan(a), torch.isnan(b)
    both = ~(nan_a | nan_b)
    bad = (nan_a != nan_b) | (both & (a.view(torch.int32) != b.view(torch.int32)))
    if not bool(bad.any()):
        return
    block_size = gguf.GGML_QUANT_SIZES[qtype][0]
    bad_blocks = torch.unique(torch.nonzero(bad).flatten() // block_size)
    diff = torch.where(both, (a.double() - b.double()).abs(), torch.zeros_like(a, dtype=torch.float64))
    per_block = diff.reshape(-1, block_size).amax(dim=1)
    worst = int(per_block.argmax())
    xor = (a.view(torch.int32) ^ b.view(torch.int32))[both].numpy().view(np.uint8)
    bit_share = np.unpackbits(xor).sum() / max(1, 32 * int(both.sum()))
    wa, wb = a.reshape(-1, block_size)[worst], b.reshape(-1, block_size)[worst]
    raise AssertionError(
        f"{what} ({qtype.name}): {len(bad_blocks)}/{a.numel() // block_size} blocks differ, "
        f"{int(bad.sum())}/{a.numel()} elements, NaN-position mismatches {int((nan_a != nan_b).sum())}; "
        f"worst block {worst} (max |diff| {float(per_block[worst]):.3g}): ours[:4]={wa[:4].tolist()} "
        f"gguf[:4]={wb[:4].tolist()}; share of bits differing {bit_share:.2e}"
    )


def _as_reader_gives(raw: np.ndarray, qtype: QT) -> np.ndarray:
    """GGUFReader gives F32/F16 as float arrays of the logical shape, everything else as bytes."""
    if qtype == QT.F32:
        return raw.view(np.float32)
    if qtype == QT.F16:
        return raw.view(np.float16)
    return raw


def _gguf_ref(data: np.ndarray, qtype: QT) -> np.ndarray:
    with np.errstate(all="ignore"):  # random scales overflow and make NaNs on purpose
        return gguf.quants.dequantize(data, qtype)


# --- random blocks ---------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_random_blocks_bit_exact(qtype: QT) -> None:
    block_size = gguf.GGML_QUANT_SIZES[qtype][0]
    blocks_per_row = max(1, 1024 // block_size)
    data = _as_reader_gives(random_blocks(qtype, rows=24, blocks_per_row=blocks_per_row), qtype)
    assert_bit_exact(dequantize(data, qtype), _gguf_ref(data, qtype), qtype, "finite random blocks")


@pytest.mark.parametrize("qtype", BLOCK_TYPES, ids=lambda t: t.name)
def test_raw_random_bytes_nan_positions(qtype: QT) -> None:
    """Unconstrained bytes: inf/NaN/subnormal scales; NaN and inf must land where gguf-py puts them."""
    block_size = gguf.GGML_QUANT_SIZES[qtype][0]
    data = random_blocks(qtype, rows=64, blocks_per_row=max(1, 512 // block_size), finite=False, seed=SEED + 1)
    ref = _gguf_ref(data, qtype)
    assert_bit_exact(dequantize(data, qtype), ref, qtype, "raw random bytes")


@pytest.mark.parametrize("qtype", QUANTIZABLE, ids=lambda t: t.name)
def test_gguf_quantized_bit_exact(qtype: QT) -> None:
    """Real quantized blocks from gguf-py's quantizer: weights with per-row scales spanning 1e-4..10."""
    rng = np.random.default_rng([SEED, 7, int(qtype)])
    scale = np.logspace(-4, 1, 32, dtype=np.float32).reshape(-1, 1)
    weights = (rng.standard_normal((32, 512)) * scale).astype(np.float32)
    weights[0, :7] = 0.0  # a partly zero block
    weights[1, :32] = 0.0  # an all-zero block (d = 0)
    q = gguf.quants.quantize(weights, qtype)
    if qtype == QT.BF16:
        q = q.view(np.uint8)  # the reader gives BF16 as bytes
    ours = dequantize(q, qtype)
    assert_bit_exact(ours, _gguf_ref(q, qtype), qtype, "gguf-py quantized")
    # Not a tautology check: the round trip must land near the input (catches swapped nibbles
    # that both sides could only share if gguf-py had the same bug).
    err = (ours - torch.from_numpy(weights)).abs().amax(dim=1) / torch.from_numpy(scale).squeeze(1)
    assert float(err.max()) < 2.0, f"round-trip error {float(err.max()):.3g} x row scale for {qtype.name}"


# --- API -------------------------------------------------------------------------------------


def test_supported_types_lists_the_brief() -> None:
    want = {t.name for t in ALL_TYPES}
    assert want <= set(supported_types()), f"missing: {sorted(want - set(supported_types()))}"


def test_unsupported_type_raises_input_error() -> None:
    data = np.zeros((4, gguf.GGML_QUANT_SIZES[QT.IQ2_XXS][1]), dtype=np.uint8)
    with pytest.raises(InputError) as exc:
        dequantize(data, QT.IQ2_XXS, name="blk.0.ffn_up.weight")
    msg = str(exc.value)
    assert exc.value.where == "blk.0.ffn_up.weight"
    assert "tensor type IQ2_XXS is not supported" in msg and "Q4_K" in msg, msg


def test_unknown_type_number_raises_input_error() -> None:
    with pytest.raises(InputError, match="unknown GGML tensor type"):
        dequantize(np.zeros((1, 18), dtype=np.uint8), 9999)


def test_partial_block_row_raises_input_error() -> None:
    with pytest.raises(InputError, match="not a whole number of 144-byte blocks"):
        dequantize(np.zeros((2, 145), dtype=np.uint8), QT.Q4_K, name="w")


def test_wrong_shape_override_raises_input_error() -> None:
    with pytest.raises(InputError, match="has 10 elements but the data holds 64"):
        dequantize(np.zeros((2, 34), dtype=np.uint8), QT.Q8_0, shape=(2, 5))


def test_float_array_for_block_type_raises_input_error() -> None:
    with pytest.raises(InputError, match="must be raw bytes"):
        dequantize(np.zeros((2, 32), dtype=np.float32), QT.Q8_0)


def test_int_type_torch_input_and_shape_override() -> None:
    raw = random_blocks(QT.Q4_K, rows=3, blocks_per_row=2)
    ref = _gguf_ref(raw, QT.Q4_K)
    ours = dequantize(torch.from_numpy(raw), int(QT.Q4_K), shape=(2, 3, 256), device="cpu")
    assert ours.shape == (2, 3, 256)
    assert_bit_exact(ours.reshape(3, 512), ref, QT.Q4_K, "int qtype, torch input, shape override")


def test_one_dim_f32_result_does_not_alias_input() -> None:
    x = np.arange(8, dtype=np.float32)
    out = dequantize(x, QT.F32)
    out.fill_(-1.0)
    assert x[3] == 3.0, "the F32 result must be a copy, not a view of the (read-only) memory map"


def test_numpy_input_is_wrapped_not_copied() -> None:
    arr = np.zeros((16, 34), dtype=np.uint8)
    arr.flags.writeable = False  # as GGUFReader's memmap
    assert as_torch(arr, "t").data_ptr() == arr.ctypes.data


def test_chunked_path_matches_single_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Force many chunks (including a short last one) and check against gguf-py."""
    import layerbisect.references.gguf_dequant as gd

    monkeypatch.setitem(gd._CHUNK_ELEMS, "cpu", 7 * 256)
    raw = random_blocks(QT.Q6_K, rows=5, blocks_per_row=4)
    assert_bit_exact(dequantize(raw, QT.Q6_K), _gguf_ref(raw, QT.Q6_K), QT.Q6_K, "chunked")


# --- the real model --------------------------------------------------------------------------


# gguf-py's numpy reference is the slow part (~9 s for all 236 tensors single-threaded, minutes on 2 contended
# cores): one tensor of every (type, shape) the model holds covers what every layer repeats.
@pytest.mark.slow
def test_gemma_every_type_and_shape_bit_exact(gemma_gguf_reader: gguf.GGUFReader) -> None:
    tensors = gemma_gguf_reader.tensors
    types = {t.tensor_type for t in tensors}
    assert {QT.F32, QT.Q8_0, QT.Q5_0, QT.Q4_K, QT.Q6_K} <= types, f"unexpected tensor types {types}"
    kinds = {(t.tensor_type, tuple(int(x) for x in t.shape)): t for t in reversed(tensors)}
    assert 8 <= len(kinds) < len(tensors) / 4, len(kinds)
    failures = []
    for t in kinds.values():
        ours = dequantize_reader_tensor(t)
        want_shape = tuple(reversed([int(x) for x in t.shape]))
        ref = _gguf_ref(t.data, t.tensor_type).reshape(want_shape)
        try:
            assert_bit_exact(ours, ref, t.tensor_type, t.name)
        except AssertionError as e:
            failures.append(str(e))
        del ours, ref
    assert not failures, f"{len(failures)}/{len(kinds)} tensors differ:\n" + "\n".join(failures[:10])


# --- CUDA ------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("finite", [True, False], ids=["finite", "raw"])
@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_cuda_bit_exact_with_cpu(qtype: QT, finite: bool) -> None:
    block_size = gguf.GGML_QUANT_SIZES[qtype][0]
    data = _as_reader_gives(
        random_blocks(qtype, rows=256, blocks_per_row=max(1, 4096 // block_size), finite=finite), qtype
    )
    cpu = dequantize(data, qtype)
    cuda = dequantize(data, qtype, device="cuda")
    assert cuda.device.type == "cuda"
    assert_bit_exact(cuda, cpu.numpy(), qtype, f"CUDA vs CPU ({'finite' if finite else 'raw'} bytes)")
    assert_bit_exact(cuda, _gguf_ref(data, qtype), qtype, "CUDA vs gguf-py")
