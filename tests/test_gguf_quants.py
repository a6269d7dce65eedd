"""GGUF quantisation kernels: exact against the ``gguf`` package (numpy), fallback and error paths."""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from magihuman.quant import gguf as gq
from magihuman.quant.gguf import GGMLType as T

# Byte offsets of the fp16 scale fields inside one block, written down from the GGML layouts (not taken
# from the module under test). Random bytes there would give inf/nan scales (inf * 0 = nan).
F16_FIELDS: dict[T, tuple[int, ...]] = {
    T.Q8_0: (0,), T.Q4_0: (0,), T.Q5_0: (0,), T.Q4_1: (0, 2), T.Q5_1: (0, 2),
    T.Q2_K: (80, 82), T.Q3_K: (108,), T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,),
    T.IQ4_NL: (0,), T.F32: (), T.F16: (), T.BF16: (),
}
BLOCK_TYPES = sorted(t for t in gq.TORCH_DEQUANT_TYPES if gq.BLOCK_SIZES[t][0] > 1)
FLOAT_TYPES = [T.F32, T.F16, T.BF16]


def _gguf():
    return pytest.importorskip("gguf")


def _ref_dequant(raw: np.ndarray, qt: T) -> torch.Tensor:
    gguf = _gguf()
    out = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(int(qt)))
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


def _ref_quant(x: np.ndarray, qt: T) -> torch.Tensor:
    gguf = _gguf()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy: "overflow encountered in cast" (fp16 inf)
        out = gguf.quants.quantize(x, gguf.GGMLQuantizationType(int(qt)))
    return torch.from_numpy(np.ascontiguousarray(out).view(np.uint8))


def _random_raw(qt: T, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Random bytes for ``shape`` elements, with finite fp16 scales in [-2, 2]."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=gq.byte_shape(shape, qt), dtype=np.uint8)
    blocks = raw.reshape(-1, gq.BLOCK_SIZES[qt][1])  # a view: edits land in raw
    for off in F16_FIELDS[qt]:
        scale = rng.uniform(-2.0, 2.0, size=blocks.shape[0]).astype(np.float16)
        blocks[:, off:off + 2] = scale.view(np.uint8).reshape(-1, 2)
    return raw


def _equal_nan(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Exact equality where nans only need to be at the same places (float types hold nan bit patterns)."""
    nan = torch.isnan(a)
    return torch.equal(nan, torch.isnan(b)) and torch.equal(a[~nan], b[~nan])


# ------------------------------------------------------------------------------------------- tables


def test_enum_and_block_sizes_match_gguf():
    gguf = _gguf()
    for member in gguf.GGMLQuantizationType:
        assert T[member.name] == int(member)
        assert gq.BLOCK_SIZES[T(int(member))] == gguf.GGML_QUANT_SIZES[member]
    assert set(gq.BLOCK_SIZES) == set(T)
    assert gq.TORCH_DEQUANT_TYPES >= {T.BF16, T.F16, T.F32, T.Q8_0, T.Q5_0, T.Q5_1, T.Q4_0, T.Q4_1, T.Q6_K,
                                      T.Q5_K, T.Q4_K, T.Q3_K, T.Q2_K}
    assert gq.QUANTIZE_TYPES >= {T.Q8_0, T.Q5_1, T.Q5_0, T.Q4_1, T.Q4_0, T.BF16, T.F16, T.F32}


@pytest.mark.parametrize("qt", sorted(gq.TORCH_DEQUANT_TYPES))
def test_shapes_match_gguf(qt):
    gguf = _gguf()
    gt = gguf.GGMLQuantizationType(int(qt))
    for shape in [(256,), (3, 5, 512), (7, 1024)]:
        bshape = gq.byte_shape(shape, qt)
        assert bshape == gguf.quants.quant_shape_to_byte_shape(shape, gt)
        assert gq.element_shape(bshape, qt) == shape


def test_module_imports_without_gguf(monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # "import gguf" now raises ImportError
    path = Path(gq.__file__)
    spec = importlib.util.spec_from_file_location("_gguf_quants_without_gguf", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    raw = torch.from_numpy(np.zeros(34 * 4, dtype=np.uint8))
    assert torch.equal(mod.dequantize(raw, mod.GGMLType.Q8_0, (128,)), torch.zeros(128))


# ------------------------------------------------------------------------------------------ dequant


@pytest.mark.parametrize("qt", sorted(gq.TORCH_DEQUANT_TYPES))
@pytest.mark.parametrize("shape", [(300 * 256,), (3, 5, 256), (40, 2048)])
def test_dequantize_exact(qt, shape):
    raw = _random_raw(qt, shape, seed=int(qt) * 7 + len(shape))
    ref = _ref_dequant(raw, qt).reshape(shape)
    out = gq.dequantize(torch.from_numpy(raw), qt)
    assert out.dtype == torch.float32 and out.shape == shape
    if qt in FLOAT_TYPES:
        assert _equal_nan(out, ref)  # random bytes hold nans here (scales are never nan)
    else:
        assert torch.equal(out, ref)


@pytest.mark.parametrize("qt", [T.Q8_0, T.Q4_1, T.Q3_K, T.Q6_K, T.BF16, T.F16])
def test_dequantize_flat_raw_with_shape_and_dtype(qt):
    shape = (4, 512)
    raw = torch.from_numpy(_random_raw(qt, shape, seed=1))
    ref = gq.dequantize(raw, qt)
    flat = gq.dequantize(raw.reshape(-1), qt, shape)
    assert flat.shape == shape and _equal_nan(flat, ref)
    half = gq.dequantize(raw.reshape(-1), qt, list(shape), dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and _equal_nan(half.float(), ref.to(torch.bfloat16).float())


@pytest.mark.parametrize("qt", [T.Q8_0, T.Q4_K, T.Q5_K, T.Q2_K])
def test_dequantize_chunked_equals_whole(qt, monkeypatch):
    shape = (6, 1024)
    raw = torch.from_numpy(_random_raw(qt, shape, seed=2))
    whole = gq.dequantize(raw, qt)
    monkeypatch.setattr(gq, "DEQUANT_CHUNK_ELEMENTS", 1000)  # not a multiple of the block: ragged last chunk
    assert torch.equal(gq.dequantize(raw, qt), whole)
    assert torch.equal(gq.dequantize(raw, qt, dtype=torch.float16), whole.half())


def test_dequantize_unaligned_and_strided_raw():
    shape = (4, 64)
    raw = torch.from_numpy(_random_raw(T.F32, shape, seed=3))
    buf = torch.zeros(raw.numel() + 1, dtype=torch.uint8)
    buf[1:] = raw.reshape(-1)
    odd = buf[1:].reshape(raw.shape)  # storage offset 1: cannot be viewed as float32 in place
    assert _equal_nan(gq.dequantize(odd, T.F32), gq.dequantize(raw, T.F32))
    q = torch.from_numpy(_random_raw(T.Q5_1, (8, 64), seed=4))
    strided = torch.cat([q, q], dim=-1)[:, : q.shape[1]]  # non-contiguous rows
    assert torch.equal(gq.dequantize(strided, "q5_1"), gq.dequantize(q, T.Q5_1))


def test_accepts_gguf_enum_and_int():
    gguf = _gguf()
    raw = torch.from_numpy(_random_raw(T.Q4_0, (64,), seed=5))
    ref = gq.dequantize(raw, T.Q4_0)
    assert torch.equal(gq.dequantize(raw, gguf.GGMLQuantizationType.Q4_0), ref)
    assert torch.equal(gq.dequantize(raw, 2), ref)


# -------------------------------------------------------------------------------------------- quant


def _quant_cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(10)
    normal = rng.standard_normal((64, 512)).astype(np.float32)
    zeros = normal.copy()
    zeros[::3] = 0.0
    zeros[1, :40] = 0.0  # one zero block inside a live row
    ties = np.round(rng.standard_normal((32, 256)) * 4).astype(np.float32)  # equal |max| of both signs
    ties[0, :32] = 0.0
    ties[0, 3], ties[0, 9] = -5.0, 5.0
    ties[0, 40], ties[0, 41] = 5.0, -5.0
    nonfinite = normal[:16].copy()
    nonfinite[0, 5], nonfinite[1, 7], nonfinite[2, 9], nonfinite[4, 3] = np.nan, np.inf, -np.inf, -np.nan
    nonfinite[3, :32] = np.nan
    nonfinite[5, :2] = [np.inf, -np.inf]
    nonfinite[6, 2:4] = [np.nan, np.inf]
    return {
        "normal": normal,
        "nonfinite": nonfinite,  # whole rows of nan/inf quants: gguf's casts give 0 there (x86)
        "zeros": zeros,
        "tiny": (normal * 1e-6).astype(np.float32),  # fp16 scales become subnormal
        "subnormal": (normal * 1e-39).astype(np.float32),  # 1/d overflows to inf
        "large": (normal * 1e6).astype(np.float32),  # fp16 scales overflow to inf
        "ties": ties,
        "multidim": rng.standard_normal((2, 3, 128)).astype(np.float32) * 3,
    }


QUANT_CASES = _quant_cases()


@pytest.mark.parametrize("qt", sorted(gq.QUANTIZE_TYPES))
@pytest.mark.parametrize("case", sorted(QUANT_CASES))
def test_quantize_exact(qt, case):
    x = QUANT_CASES[case]
    ref = _ref_quant(x, qt)
    out = gq.quantize(torch.from_numpy(x), qt)
    assert out.dtype == torch.uint8 and out.shape == gq.byte_shape(x.shape, qt) == ref.shape
    assert torch.equal(out, ref)


@pytest.mark.parametrize("qt", [T.Q8_0, T.Q4_0, T.Q5_1, T.BF16])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_quantize_other_input_dtypes(qt, dtype):
    x = torch.from_numpy(QUANT_CASES["normal"][:8]).to(dtype)
    assert torch.equal(gq.quantize(x, qt), _ref_quant(x.float().numpy(), qt))


@pytest.mark.parametrize("qt", [T.F32, T.F16, T.BF16])
def test_quantize_float_types_all_bit_patterns(qt):
    """Random float32 bit patterns: nans (quiet and signalling), infs, subnormals, rounding ties."""
    rng = np.random.default_rng(11)
    bits = rng.integers(0, 2**32, size=(64, 256), dtype=np.uint64).astype(np.uint32)
    bits[0, :8] = [0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00001, 0x7F800001, 0x7F802000, 0xFF800001,
                   0x7F7FFFFF]
    bits[1, :4] = [0x3F808000, 0x3F818000, 0x477FF000, 0x33000000]  # bf16/f16 ties and overflow edge
    bits[2] = rng.integers(0x7F800001, 0x80000000, size=256, dtype=np.uint64).astype(np.uint32)  # nans
    if qt == T.F16:
        snan = np.array([0x7F800001], dtype=np.uint32).view(np.float32)
        if snan.astype(np.float16).view(np.uint16)[0] != 0x7C01:
            # This numpy converts with the hardware (quieting signalling nans); we follow numpy's own
            # software rule, so only quiet nans can be compared here.
            is_nan = (bits & 0x7FFFFFFF) > 0x7F800000
            bits = np.where(is_nan, bits | 0x00400000, bits)
    x = bits.view(np.float32)
    out = gq.quantize(torch.from_numpy(x.copy()), qt)
    assert torch.equal(out, _ref_quant(x, qt))


def test_quantize_does_not_alias_input():
    x = torch.randn(4, 8)
    raw = gq.quantize(x, T.F32)
    raw.zero_()
    assert x.abs().sum() > 0


def test_round_trip_error_bounds():
    x = torch.from_numpy(QUANT_CASES["normal"])
    for qt, bound in [(T.Q8_0, 0.01), (T.Q5_0, 0.06), (T.Q5_1, 0.05), (T.Q4_0, 0.12), (T.Q4_1, 0.1)]:
        back = gq.dequantize(gq.quantize(x, qt), qt)
        rel = ((back - x).norm() / x.norm()).item()
        assert rel < bound, (qt.name, rel)
    assert torch.equal(gq.dequantize(gq.quantize(x, T.F32), T.F32), x)
    assert torch.equal(gq.dequantize(gq.quantize(x, T.F16), T.F16), x.half().float())
    assert torch.equal(gq.dequantize(gq.quantize(x, T.BF16), T.BF16), x.bfloat16().float())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    for qt in sorted(gq.TORCH_DEQUANT_TYPES):
        raw = torch.from_numpy(_random_raw(qt, (4, 512), seed=int(qt)))
        assert _equal_nan(gq.dequantize(raw.cuda(), qt).cpu(), gq.dequantize(raw, qt))
    for qt in sorted(gq.QUANTIZE_TYPES):
        x = torch.from_numpy(QUANT_CASES["normal"])
        assert torch.equal(gq.quantize(x.cuda(), qt).cpu(), gq.quantize(x, qt))


# ------------------------------------------------------------------------------------------- errors


def test_wrong_last_dim():
    with pytest.raises(ValueError, match="multiple of the Q4_K block size"):
        gq.byte_shape((4, 100), T.Q4_K)
    with pytest.raises(ValueError, match="multiple of the Q8_0 block size"):
        gq.element_shape((4, 35), T.Q8_0)
    with pytest.raises(ValueError, match="Q8_0"):
        gq.dequantize(torch.zeros(4, 35, dtype=torch.uint8), T.Q8_0)
    with pytest.raises(ValueError, match="needs 68 bytes"):
        gq.dequantize(torch.zeros(70, dtype=torch.uint8), T.Q8_0, (64,))
    with pytest.raises(ValueError, match="block size"):
        gq.quantize(torch.zeros(3, 48), T.Q4_0)


def test_unknown_types():
    for number in (4, 99):  # 4 was Q4_2, removed from GGML
        with pytest.raises(ValueError, match=f"unknown GGML type number {number}"):
            gq.dequantize(torch.zeros(18, dtype=torch.uint8), number, (32,))
    with pytest.raises(ValueError, match="Q9_9"):
        gq.byte_shape((32,), "Q9_9")
    with pytest.raises(NotImplementedError, match="Q4_K"):
        gq.quantize(torch.zeros(256), T.Q4_K)


@pytest.mark.parametrize("qt", [T.IQ4_NL])
def test_fallback_warns_once_and_matches_gguf(qt, monkeypatch):
    assert qt not in gq.TORCH_DEQUANT_TYPES
    monkeypatch.setattr(gq, "_FALLBACK_WARNED", set())
    shape = (3, 4, 64)
    raw = _random_raw(qt, shape, seed=12)
    with pytest.warns(RuntimeWarning, match=f"{qt.name}.*slow CPU fallback"):
        out = gq.dequantize(torch.from_numpy(raw), qt, dtype=torch.float16)
    assert out.shape == shape and out.dtype == torch.float16
    assert torch.equal(out, _ref_dequant(raw, qt).reshape(shape).half())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second call must not warn again
        gq.dequantize(torch.from_numpy(raw).reshape(-1), qt, shape)


def test_fallback_without_gguf_names_type_and_pip(monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)
    monkeypatch.setitem(sys.modules, "gguf.quants", None)
    raw = torch.zeros(gq.byte_shape((64,), T.IQ4_NL), dtype=torch.uint8)
    with pytest.raises(ImportError, match=r"IQ4_NL.*pip install gguf"):
        gq.dequantize(raw, T.IQ4_NL)


# ------------------------------------------------------------------------------------------- Q4_K encoder


def _q4k_cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(12)
    normal = rng.standard_normal((64, 512)).astype(np.float32)
    wide = normal[:8].copy()
    wide[:, :32] *= 100.0  # one sub-block dwarfs the others: their 6-bit steps get coarse
    constant = np.full((4, 256), 0.37, dtype=np.float32)
    constant[1] = -2.5
    constant[2] = 0.0
    return {
        "normal": normal,
        "positive": (normal * 0.02 + 0.5).astype(np.float32),  # min > 0: offsets clip to 0
        "negative": (-np.abs(normal) - 1.0).astype(np.float32),
        "weights": (normal * 0.02).astype(np.float32),  # DiT-like scale
        "wide": wide,
        "constant": constant,
        "multidim": rng.standard_normal((2, 3, 256)).astype(np.float32) * 3,
    }


Q4K_CASES = _q4k_cases()


@pytest.mark.parametrize("case", sorted(Q4K_CASES))
def test_encode_q4_k_decodes_the_same_in_gguf_and_is_bounded(case):
    """gguf's own dequantize of the bytes == ours, exactly; |x - decoded| <= step/2 + dmin/2 (+ fp16 rounding), with
    step and dmin bounded from the input alone (the encoder's documented rule)."""
    x = Q4K_CASES[case]
    raw = gq.encode_q4_k(torch.from_numpy(x))
    assert raw.dtype == torch.uint8 and raw.shape == gq.byte_shape(x.shape, T.Q4_K)
    ours = gq.dequantize(raw, T.Q4_K)
    assert torch.equal(ours, _ref_dequant(raw.numpy(), T.Q4_K).reshape(x.shape))
    sub = torch.from_numpy(x).reshape(-1, 8, 32).double()  # (super-blocks, 8 sub-blocks, 32)
    lo, hi = sub.amin(-1).clamp(max=0), sub.amax(-1)  # offsets are stored as -min >= 0
    dmin = (-lo).amax(-1, keepdim=True) / 63 * (1 + 2 ** -10)  # fp16 rounding of the super-block factors
    step = (hi - lo + dmin / 2) / 15
    d = step.amax(-1, keepdim=True) / 63 * (1 + 2 ** -10)
    bound = (step + d) / 2 + dmin / 2 + 15 * step.amax(-1, keepdim=True) * 2 ** -10 + 1e-7
    err = (ours.reshape(sub.shape).double() - sub).abs()
    assert bool((err <= bound.unsqueeze(-1)).all()), float((err - bound.unsqueeze(-1)).max())
    if case == "constant":
        assert torch.allclose(ours, torch.from_numpy(x), rtol=0, atol=1e-3)
        assert torch.equal(ours[2], torch.zeros(256))  # an all-zero block decodes to zeros


def test_encode_q4_k_error_vs_the_exact_4_bit_types():
    """On Gaussian data the simple Q4_K lands between Q4_0 and Q4_1 (same size as Q4_0: 4.5 bits a weight)."""
    x = torch.from_numpy(Q4K_CASES["normal"])
    rel = {qt: float((gq.dequantize(gq.quantize(x, qt), qt) - x).norm() / x.norm()) for qt in (T.Q4_0, T.Q4_1)}
    k = float((gq.dequantize(gq.encode_q4_k(x), T.Q4_K) - x).norm() / x.norm())
    assert k < rel[T.Q4_0] and k < 1.05 * rel[T.Q4_1], (k, rel)
    assert gq.BLOCK_SIZES[T.Q4_K][1] / 256 == gq.BLOCK_SIZES[T.Q4_0][1] / 32
    assert T.Q4_K not in gq.QUANTIZE_TYPES  # only the byte-exact quantisers are listed there
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        assert torch.equal(gq.encode_q4_k(x[:4].to(dtype)), gq.encode_q4_k(x[:4].to(dtype).float()))


def test_encode_q4_k_rejects_bad_input():
    with pytest.raises(ValueError, match="multiple of the Q4_K block size"):
        gq.encode_q4_k(torch.zeros(4, 128))
    bad = torch.zeros(2, 256)
    bad[1, 7] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        gq.encode_q4_k(bad)


def test_q4_k_files_are_written_and_loaded(tmp_path):
    """write_gguf writes Q4_K through encode_q4_k; convert_dit --quant Q4_K -> load_dit keeps the blocks and the
    forward stays close to the source model."""
    gguf = _gguf()
    from magihuman.checkpoints import convert_dit, load_dit, write_tiny_dit
    from magihuman.models.dit_config import DiTConfig
    from magihuman.storage import convert_choices
    from magihuman.weights.gguf_file import GGUFSpec, write_gguf

    x = torch.from_numpy(Q4K_CASES["normal"][:4])
    path = tmp_path / "one.gguf"
    write_gguf(path, [GGUFSpec("w", tuple(x.shape), int(T.Q4_K), lambda: x)], arch="test", metadata={})
    (t,) = gguf.GGUFReader(str(path)).tensors
    assert int(t.tensor_type) == int(T.Q4_K)
    assert torch.equal(torch.from_numpy(np.array(t.data)).reshape(-1), gq.encode_q4_k(x).reshape(-1))

    assert "Q4_K" in convert_choices()
    cfg = DiTConfig(num_layers=2, hidden_size=256, head_dim=64, num_query_groups=2, text_in_channels=64,
                    mm_layers=[0], gelu7_layers=[0])
    src = write_tiny_dit(tmp_path / "dit", config=cfg, dtype=torch.float32, seed=3)
    model = load_dit(convert_dit(src, tmp_path / "dit_Q4_K.gguf", quant="Q4_K", show_progress=False),
                     show_progress=False)
    assert {m.storage.name for m in model.block_linears()} == {"Q4_K"}  # the 170-wide down_proj too, padded
    assert model.load_info["source_dtype"] == "Q4_K" and model.load_info["dtype"] == "Q4_K"
    ref = load_dit(src, dtype=torch.float32, show_progress=False)
    g = torch.Generator().manual_seed(0)
    inputs = (torch.randn(1, 48, 2, 4, 4, generator=g), torch.randn(1, 5, 64, generator=g),
              torch.randn(1, 4, 64, generator=g), [4])
    outs = []
    for m in (model, ref):
        m.set_compute_dtype(torch.float32)
        with torch.no_grad():
            outs.append(m(*inputs))
    for a, b in zip(*outs):
        assert float((a - b).norm() / b.norm()) < 0.15
