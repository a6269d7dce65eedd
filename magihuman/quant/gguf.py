"""GGML/GGUF block quantisation in pure torch: dequantize (and quantize the simple types).

Why our own: GGUF checkpoints of the DiT are dequantised layer by layer *on the compute device*
while the model runs, so the kernels must be torch ops (CPU or CUDA, vectorised over all blocks,
no numpy, no Python loop per block). The optional ``gguf`` package (numpy) is the oracle the tests
compare against, and the slow CPU fallback for types without a torch kernel here.

Bit-exactness: every dequant kernel computes in float32 with the same operations as
``gguf.quants`` (most products are exact anyway: fp16 scale x small integer), then casts to the
requested dtype. The quantisers reproduce ``gguf.quants.quantize`` byte for byte: same max/min
picks (first index on ties), IEEE divisions (never "multiply by the reciprocal" of a constant),
``np_roundf`` (round half away from zero), truncation + clip, fp16 scale rounding and nibble order.

Layouts assume a little-endian host (as GGUF files and the ``gguf`` package do).
"""

from __future__ import annotations

import functools
import math
import operator
import warnings
from enum import IntEnum
from typing import Callable, NamedTuple, Optional, Sequence

import torch

__all__ = [
    "GGMLType",
    "QK_K",
    "TypeInfo",
    "TYPES",
    "BLOCK_SIZES",
    "TORCH_DEQUANT_TYPES",
    "QUANTIZE_TYPES",
    "ENCODE_TYPES",
    "byte_shape",
    "element_shape",
    "padded_width",
    "chunk_elements",
    "encode",
    "dequantize",
    "quantize",
    "encode_q4_k",
]


class GGMLType(IntEnum):
    """GGML tensor type numbers, as stored in a GGUF file (= ``gguf.GGMLQuantizationType``)."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    IQ1_M = 29
    BF16 = 30
    TQ1_0 = 34
    TQ2_0 = 35
    MXFP4 = 39
    NVFP4 = 40
    Q1_0 = 41


# Elements per super-block of the K-quants.
QK_K = 256

_T = GGMLType


def _as_type(qtype: GGMLType | int | str) -> GGMLType:
    """Normalise a type given as enum member (ours or gguf's), number or name."""
    if isinstance(qtype, str):
        try:
            return GGMLType[qtype.upper()]
        except KeyError:
            raise ValueError(f"unknown GGML type name {qtype!r}") from None
    number = operator.index(qtype)
    try:
        return GGMLType(number)
    except ValueError:
        raise ValueError(f"unknown GGML type number {number} (not a GGMLQuantizationType)") from None


def byte_shape(shape: Sequence[int], qtype: GGMLType | int | str) -> tuple[int, ...]:
    """Element shape -> stored byte shape (the last dim becomes blocks * bytes per block)."""
    qt = _as_type(qtype)
    shape = tuple(int(s) for s in shape)
    block, size = BLOCK_SIZES[qt]
    if not shape:
        raise ValueError(f"{qt.name} tensors need at least one dimension")
    if shape[-1] % block:
        raise ValueError(f"last dim {shape[-1]} of shape {shape} is not a multiple of the "
                         f"{qt.name} block size ({block} elements)")
    return (*shape[:-1], shape[-1] // block * size)


def element_shape(byte_shape: Sequence[int], qtype: GGMLType | int | str) -> tuple[int, ...]:
    """Stored byte shape -> element shape (inverse of :func:`byte_shape`)."""
    qt = _as_type(qtype)
    shape = tuple(int(s) for s in byte_shape)
    block, size = BLOCK_SIZES[qt]
    if not shape:
        raise ValueError(f"{qt.name} byte tensors need at least one dimension")
    if shape[-1] % size:
        raise ValueError(f"last dim {shape[-1]} of byte shape {shape} is not a multiple of the "
                         f"{qt.name} block size ({size} bytes)")
    return (*shape[:-1], shape[-1] // size * block)


# ----------------------------------------------------------------------------------------------
# small helpers (all torch, device-agnostic)


def _view(b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Reinterpret the bytes of the last dim as ``dtype`` (copies only if unaligned/strided)."""
    b = b.contiguous()
    try:
        return b.view(dtype)
    except RuntimeError:  # storage offset not a multiple of the item size
        return b.clone().view(dtype)


def _f16(b: torch.Tensor) -> torch.Tensor:
    """(n, 2) little-endian fp16 bytes -> (n, 1) float32."""
    return _view(b, torch.float16).to(torch.float32)


def _u8(values: Sequence[int], device: torch.device, shape: Sequence[int]) -> torch.Tensor:
    """A small uint8 constant on ``device``, made once per (values, device, shape): no host-to-device copy per
    decoded chunk."""
    return _u8_cached(tuple(values), str(device), tuple(shape))


@functools.lru_cache(maxsize=64)
def _u8_cached(values: tuple[int, ...], device: str, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.uint8, device=device).view(*shape)


def _nibbles(b: torch.Tensor) -> torch.Tensor:
    """(..., k) bytes -> (..., 2, k): all low nibbles, then all high nibbles (GGML order)."""
    return torch.stack((b & 0x0F, b >> 4), dim=-2)


def _bits(b: torch.Tensor, n: int) -> torch.Tensor:
    """(..., k) bytes -> (..., 8 // n, k): the n-bit fields, lowest first."""
    shifts = _u8(range(0, 8, n), b.device, (-1, 1))
    return (b.unsqueeze(-2) >> shifts) & ((1 << n) - 1)


def _k_scale_min(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K 12-byte table -> 8 six-bit scales and 8 six-bit mins, each (n, 8) uint8.

    Bytes 0-3 hold scales 0-3 (low 6 bits) plus the top 2 bits of scales 4-7, bytes 4-7 the same
    for the mins, bytes 8-11 the low nibbles of scales 4-7 (low) and mins 4-7 (high).
    """
    s = scales.reshape(-1, 3, 4)
    a, m, lo = s[:, 0], s[:, 1], s[:, 2]  # (n, 4) each
    sc = torch.cat((a & 0x3F, (lo & 0x0F) | ((a >> 2) & 0x30)), dim=-1)
    mn = torch.cat((m & 0x3F, (lo >> 4) | ((m >> 2) & 0x30)), dim=-1)
    return sc, mn


# ----------------------------------------------------------------------------------------------
# dequant kernels: (n_blocks, bytes per block) uint8 -> (n_blocks, elements per block)


def _dq_f32(b: torch.Tensor) -> torch.Tensor:
    return _view(b, torch.float32)


def _dq_f16(b: torch.Tensor) -> torch.Tensor:
    # Kept in fp16: the cast to the output dtype is exact (via float32) and free for fp16 output.
    return _view(b, torch.float16)


def _dq_bf16(b: torch.Tensor) -> torch.Tensor:
    # bf16 -> f32 is a 16-bit shift in torch as in gguf (nan payloads included).
    return _view(b, torch.bfloat16)


def _dq_q8_0(b: torch.Tensor) -> torch.Tensor:
    d = _f16(b[:, :2])  # (n, 1)
    return b[:, 2:].view(torch.int8).to(torch.float32).mul_(d)


def _dq_q4_0(b: torch.Tensor) -> torch.Tensor:
    d = _f16(b[:, :2])
    q = _nibbles(b[:, 2:]).reshape(-1, 32)  # (n, 2, 16) -> (n, 32)
    return q.to(torch.float32).sub_(8).mul_(d)


def _dq_q4_1(b: torch.Tensor) -> torch.Tensor:
    d, m = _f16(b[:, :2]), _f16(b[:, 2:4])
    q = _nibbles(b[:, 4:]).reshape(-1, 32)
    return q.to(torch.float32).mul_(d).add_(m)


def _q5(qh: torch.Tensor, qs: torch.Tensor) -> torch.Tensor:
    """Q5_0/Q5_1 quants: low nibbles from qs, bit i of the 32-bit qh is the 5th bit of element i."""
    high = _bits(qh, 1).transpose(-1, -2).reshape(-1, 32)  # (n, 8, 4) -> (n, 4, 8) -> (n, 32)
    return _nibbles(qs).reshape(-1, 32) | (high << 4)


def _dq_q5_0(b: torch.Tensor) -> torch.Tensor:
    d = _f16(b[:, :2])
    return _q5(b[:, 2:6], b[:, 6:]).to(torch.float32).sub_(16).mul_(d)


def _dq_q5_1(b: torch.Tensor) -> torch.Tensor:
    d, m = _f16(b[:, :2]), _f16(b[:, 2:4])
    return _q5(b[:, 4:8], b[:, 8:]).to(torch.float32).mul_(d).add_(m)


def _dq_q2_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    scales, qs = b[:, :16], b[:, 16:80]
    d, dmin = _f16(b[:, 80:82]), _f16(b[:, 82:84])
    dl = (d * (scales & 0x0F).to(torch.float32)).unsqueeze(-1)  # (n, 16, 1)
    ml = (dmin * (scales >> 4).to(torch.float32)).unsqueeze(-1)
    q = _bits(qs.reshape(n, 2, 32), 2).reshape(n, 16, 16)  # (n, 2, 4, 32) -> (n, 16, 16)
    return (dl * q.to(torch.float32)).sub_(ml).reshape(n, QK_K)


def _dq_q3_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    hmask, qs, scales = b[:, :32], b[:, 32:96], b[:, 96:108]
    d = _f16(b[:, 108:110])
    # 16 six-bit scales: low nibbles from bytes 0-7 (low halves first), 2-bit tops from bytes 8-11.
    low = _nibbles(scales[:, :8]).reshape(n, 16)
    high = _bits(scales[:, 8:], 2).reshape(n, 16)  # (n, 4, 4): shift-major
    sc = (low | (high << 4)).to(torch.float32).sub_(32)
    dl = (d * sc).unsqueeze(-1)  # (n, 16, 1)
    ql = _bits(qs.reshape(n, 2, 32), 2).reshape(n, QK_K)  # (n, 2, 4, 32) -> (n, 256)
    hm = _bits(hmask, 1).reshape(n, QK_K)  # (n, 8, 32) -> (n, 256)
    # value = ql - 4 when the hmask bit is clear, ql when set.
    q = (ql | (hm << 2)).to(torch.float32).sub_(4).reshape(n, 16, 16)
    return (dl * q).reshape(n, QK_K)


def _dq_q4_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    d, dmin = _f16(b[:, :2]), _f16(b[:, 2:4])
    sc, mn = _k_scale_min(b[:, 4:16])
    dl = (d * sc.to(torch.float32)).unsqueeze(-1)  # (n, 8, 1)
    ml = (dmin * mn.to(torch.float32)).unsqueeze(-1)
    q = _nibbles(b[:, 16:].reshape(n, 4, 32)).reshape(n, 8, 32)  # (n, 4, 2, 32) -> (n, 8, 32)
    return (dl * q.to(torch.float32)).sub_(ml).reshape(n, QK_K)


def _dq_q5_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    d, dmin = _f16(b[:, :2]), _f16(b[:, 2:4])
    sc, mn = _k_scale_min(b[:, 4:16])
    dl = (d * sc.to(torch.float32)).unsqueeze(-1)  # (n, 8, 1)
    ml = (dmin * mn.to(torch.float32)).unsqueeze(-1)
    ql = _nibbles(b[:, 48:].reshape(n, 4, 32)).reshape(n, 8, 32)
    qh = _bits(b[:, 16:48], 1)  # (n, 8, 32): bit j of byte l -> sub-block j, element l
    q = ql | (qh << 4)
    return (dl * q.to(torch.float32)).sub_(ml).reshape(n, QK_K)


def _dq_q6_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    ql, qh, scales = b[:, :128], b[:, 128:192], b[:, 192:208]
    d = _f16(b[:, 208:210])
    dl = (d * scales.view(torch.int8).to(torch.float32)).unsqueeze(-1)  # (n, 16, 1)
    lo = _nibbles(ql.reshape(n, 2, 64)).reshape(n, QK_K)  # (n, 2, 2, 64) -> (n, 256)
    hi = _bits(qh.reshape(n, 2, 32), 2).reshape(n, QK_K)  # (n, 2, 4, 32) -> (n, 256)
    q = (lo | (hi << 4)).to(torch.float32).sub_(32).reshape(n, 16, 16)
    return (dl * q).reshape(n, QK_K)


# Block tensors larger than this many elements are dequantised in chunks of about this size: on a CPU a chunk's
# float32 temporaries stay in cache; on a GPU each chunk is a few kernel launches, so chunks are 16x larger there
# (64 Mi elements: the fused qkv of the release decodes in 1 chunk instead of 9).
DEQUANT_CHUNK_ELEMENTS = 1 << 22
DEVICE_CHUNK_ELEMENTS = 1 << 26


def chunk_elements(device: torch.device | str) -> int:
    """Elements dequantised per chunk on ``device`` (see :data:`DEQUANT_CHUNK_ELEMENTS`)."""
    return DEQUANT_CHUNK_ELEMENTS if torch.device(device).type == "cpu" else DEVICE_CHUNK_ELEMENTS

# Types for which the slow-fallback warning was already emitted.
_FALLBACK_WARNED: set[GGMLType] = set()


def _gguf_dequantize(raw: torch.Tensor, qt: GGMLType) -> torch.Tensor:
    """Numpy fallback through the optional ``gguf`` package (CPU), result on raw's device."""
    try:
        import gguf
        from gguf import quants as gguf_quants
    except ImportError as e:
        raise ImportError(f"GGUF tensor type {qt.name} ({int(qt)}) has no torch kernel; its "
                          f"dequantisation needs the optional 'gguf' package: pip install gguf") from e
    if qt not in _FALLBACK_WARNED:
        _FALLBACK_WARNED.add(qt)
        warnings.warn(f"GGUF type {qt.name} has no torch kernel: dequantising with gguf's numpy code "
                      f"(slow CPU fallback)", RuntimeWarning, stacklevel=3)
    try:
        gtype = gguf.GGMLQuantizationType(int(qt))
    except ValueError:
        raise NotImplementedError(f"the installed gguf package does not know GGML type {qt.name}") from None
    out = gguf_quants.dequantize(raw.detach().cpu().contiguous().numpy(), gtype)
    return torch.from_numpy(out.copy()).to(raw.device)


def dequantize(raw: torch.Tensor, qtype: GGMLType | int | str, shape: Sequence[int] | None = None, *,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """GGUF bytes -> float tensor of the element shape, in ``dtype``.

    ``raw``: uint8 (..., bytes) with the blocks of each row along the last dim, or any layout of
    the right byte count when ``shape`` (the element shape) is given. Computed in float32 exactly
    as ``gguf.quants.dequantize``, then cast. F32 (and F16/BF16 to their own dtype) may return a
    view of ``raw``. Types without a torch kernel go through gguf's numpy code on CPU (warned once).
    """
    qt = _as_type(qtype)
    if raw.dtype != torch.uint8:
        raw = _view(raw, torch.uint8)
    if shape is not None:
        shape = tuple(int(s) for s in shape)
        bshape = byte_shape(shape, qt)
        if raw.numel() != math.prod(bshape):
            raise ValueError(f"{qt.name} tensor of shape {shape} needs {math.prod(bshape)} bytes, "
                             f"got {raw.numel()}")
        raw = raw.reshape(bshape)
    else:
        if raw.dim() == 0:
            raise ValueError("raw must have at least one dimension (or pass shape=)")
        shape = element_shape(raw.shape, qt)
    kernel = TYPES[qt].dequant
    if kernel is None:
        return _gguf_dequantize(raw, qt).reshape(shape).to(dtype)
    block, size = BLOCK_SIZES[qt]
    blocks = raw.reshape(-1, size)  # (n_blocks, bytes per block)
    n_blocks = blocks.shape[0]
    chunk = chunk_elements(raw.device)
    if block == 1 or n_blocks * block <= chunk:
        return kernel(blocks).reshape(shape).to(dtype)  # (n_blocks, block) -> element shape
    # Large tensors go in chunks: the float32 temporaries stay small (cache-resident on a CPU, a bounded
    # workspace on a GPU) and a low-precision output never needs a full float32 copy.
    out = torch.empty((n_blocks, block), dtype=dtype, device=raw.device)
    step = max(1, chunk // block)
    for start in range(0, n_blocks, step):
        out[start:start + step] = kernel(blocks[start:start + step])
    return out.reshape(shape)


# ----------------------------------------------------------------------------------------------
# quantisers: (n_blocks, elements per block) float32 -> (n_blocks, bytes per block) uint8


def _div(x: torch.Tensor, c: float) -> torch.Tensor:
    # A tensor on x's device, not a Python scalar: CUDA turns "x / cpu scalar" into x * (1/c),
    # which is not the correctly rounded quotient numpy computes.
    return x / torch.tensor(c, dtype=x.dtype, device=x.device)


def _inv(d: torch.Tensor) -> torch.Tensor:
    """1/d, and 0 where d == 0 (as gguf)."""
    return torch.where(d == 0, torch.zeros_like(d), torch.reciprocal(d))


def _roundf(x: torch.Tensor) -> torch.Tensor:
    """gguf's np_roundf: round half away from zero, with only exact float operations."""
    a = x.abs()
    fl = a.floor()
    return torch.sign(x) * (fl + torch.floor(2 * (a - fl)))


def _finite_or_zero(q: torch.Tensor) -> torch.Tensor:
    """Non-finite quants -> 0, as gguf's float->int cast gives on x86 (cvttss2si: 0x80000000).

    They only arise when 1/d overflows (a block whose largest magnitude is below ~1e-36) or the
    input holds inf/nan; torch's own cast of those is device-dependent, so pin it explicitly.
    """
    return torch.where(torch.isfinite(q), q, torch.zeros_like(q))


def _f16_bytes(d: torch.Tensor) -> torch.Tensor:
    """(n, 1) float32 -> (n, 2) bytes of the round-to-nearest-even fp16."""
    return d.to(torch.float16).contiguous().view(torch.uint8)


def _pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """(n, 32) quants -> (n, 16) bytes: element i in the low nibble of byte i, i+16 in the high."""
    return (q[:, :16] & 0x0F) | ((q[:, 16:] & 0x0F) << 4)


def _pack_high_bits(q: torch.Tensor) -> torch.Tensor:
    """(n, 32) 5-bit quants -> (n, 4) bytes: bit 4 of element i is bit i of a little-endian u32."""
    bits = ((q >> 4) & 1).reshape(-1, 4, 8)  # (n, 4, 8)
    return (bits << _u8(range(8), q.device, (1, 1, 8))).sum(-1, dtype=torch.uint8)


def _signed_absmax(x: torch.Tensor) -> torch.Tensor:
    """(n, k) -> (n, 1): the signed value of largest magnitude (first one on ties, as argmax)."""
    return x.gather(-1, x.abs().argmax(-1, keepdim=True))


def _q_q8_0(x: torch.Tensor) -> torch.Tensor:
    d = _div(x.abs().amax(-1, keepdim=True), 127.0)  # (n, 1)
    q = _finite_or_zero(_roundf(x * _inv(d))).to(torch.int8).view(torch.uint8)  # (n, 32)
    return torch.cat((_f16_bytes(d), q), dim=-1)


def _q_q4_0(x: torch.Tensor) -> torch.Tensor:
    d = _div(_signed_absmax(x), -8.0)
    q = _finite_or_zero(torch.trunc(x * _inv(d) + 8.5)).clamp_(0, 15).to(torch.uint8)
    return torch.cat((_f16_bytes(d), _pack_nibbles(q)), dim=-1)


def _q_q4_1(x: torch.Tensor) -> torch.Tensor:
    mx, mn = x.amax(-1, keepdim=True), x.amin(-1, keepdim=True)
    d = _div(mx - mn, 15.0)
    q = _finite_or_zero(torch.trunc((x - mn) * _inv(d) + 0.5)).clamp_(0, 15).to(torch.uint8)
    return torch.cat((_f16_bytes(d), _f16_bytes(mn), _pack_nibbles(q)), dim=-1)


def _q_q5_0(x: torch.Tensor) -> torch.Tensor:
    d = _div(_signed_absmax(x), -16.0)
    q = _finite_or_zero(torch.trunc(x * _inv(d) + 16.5)).clamp_(0, 31).to(torch.uint8)
    return torch.cat((_f16_bytes(d), _pack_high_bits(q), _pack_nibbles(q)), dim=-1)


def _q_q5_1(x: torch.Tensor) -> torch.Tensor:
    mx, mn = x.amax(-1, keepdim=True), x.amin(-1, keepdim=True)
    d = _div(mx - mn, 31.0)
    q = _finite_or_zero(torch.trunc((x - mn) * _inv(d) + 0.5)).clamp_(0, 31).to(torch.uint8)
    return torch.cat((_f16_bytes(d), _f16_bytes(mn), _pack_high_bits(q), _pack_nibbles(q)), dim=-1)


def _le16_bytes(v: torch.Tensor) -> torch.Tensor:
    """(..., k) int32 in [0, 65535] -> (..., 2k) little-endian bytes."""
    return torch.stack(((v & 0xFF), (v >> 8) & 0xFF), dim=-1).to(torch.uint8).flatten(-2)


def _quantize_f16(x: torch.Tensor) -> torch.Tensor:
    h = x.to(torch.float16)
    nan = torch.isnan(x)
    if bool(nan.any()):
        # numpy keeps the top 10 payload bits without setting the quiet bit (torch quiets):
        # sign | 0x7c00 | max(mantissa >> 13, 1).
        bits = x.view(torch.int32)
        payload = ((bits & 0x007FFFFF) >> 13).clamp_(min=1)
        hbits = ((bits >> 16) & 0x8000) | 0x7C00 | payload  # int32 in [0, 65535]
        hbits = torch.where(hbits >= 0x8000, hbits - 0x10000, hbits).to(torch.int16)
        h = torch.where(nan, hbits.view(torch.float16), h)
    return h.view(torch.uint8)


def _quantize_bf16(x: torch.Tensor) -> torch.Tensor:
    # ggml_compute_fp32_to_bf16: quiet nans (keep the top 7 payload bits, set bit 6), else round
    # to nearest even on the top 16 bits. Done on the two halves so int32 never overflows.
    bits = x.view(torch.int32)
    hi = (bits >> 16) & 0xFFFF
    lo = bits & 0xFFFF
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    rounded = hi + ((lo + 0x7FFF + (hi & 1)) >> 16)  # never > 0xffff: only nans have hi == 0xffff
    return _le16_bytes(torch.where(nan, hi | 0x40, rounded))


def quantize(tensor: torch.Tensor, qtype: GGMLType | int | str) -> torch.Tensor:
    """Float tensor -> GGUF bytes (uint8, :func:`byte_shape`), identical to
    ``gguf.quants.quantize(tensor.float().numpy(), qtype)`` (viewed as bytes). For inf/nan input
    the block types follow gguf on x86 (its float->int casts of inf/nan are platform-defined).

    Block types need the last dim to be a multiple of the block size. Runs on tensor's device.
    """
    qt = _as_type(qtype)
    if qt not in QUANTIZE_TYPES:
        raise NotImplementedError(f"no quantiser for GGML type {qt.name}; supported: "
                                  f"{', '.join(sorted(t.name for t in QUANTIZE_TYPES))}")
    x = tensor.detach().to(torch.float32).contiguous()
    bshape = byte_shape(x.shape, qt)
    if qt == _T.F32:
        return x.view(torch.uint8).clone()  # never alias the caller's tensor
    if qt == _T.F16:
        return _quantize_f16(x).reshape(bshape)
    if qt == _T.BF16:
        return _quantize_bf16(x).reshape(bshape)
    block, _ = BLOCK_SIZES[qt]
    blocks = x.reshape(-1, block)  # (n_blocks, block)
    return TYPES[qt].quant(blocks).reshape(bshape)  # (n_blocks, bytes per block) -> byte shape


# ----------------------------------------------------------------------------------------------
# Q4_K: a simple encoder (gguf has no Q4_K quantiser, so there is no reference to be exact against)


def encode_q4_k(tensor: torch.Tensor) -> torch.Tensor:
    """Float tensor -> Q4_K bytes (uint8, :func:`byte_shape`): a simple encoder, not llama.cpp's.

    Each 256-element super-block holds 8 sub-blocks of 32. A sub-block's offset is its minimum (clipped to
    at most 0: the format stores ``-min >= 0``) and its step the rest of its range / 15. The 8 offsets and
    the 8 steps are stored as 6-bit integers times one fp16 super-block factor each (``dmin``, ``d`` = the
    largest / 63); offsets round to nearest, steps round up so the 16 levels still cover the sub-block, and
    every value takes the nearest of the 16 levels. So ``|x - decoded| <= step/2 + dmin/2`` (+ fp16
    rounding). llama.cpp's ``quantize_row_q4_K`` searches each sub-block's step and offset for the least
    (weighted) squared error (``make_qkx2_quants``) and gets lower errors; this encoder does not search.

    Not in :data:`QUANTIZE_TYPES` (those are byte-exact with ``gguf.quants.quantize``). The last dim must be a
    multiple of 256; the input must be finite. Runs on the tensor's device; decode with :func:`dequantize`.
    """
    x = tensor.detach().to(torch.float32).contiguous()
    bshape = byte_shape(x.shape, _T.Q4_K)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("Q4_K encoding needs finite values (the tensor holds inf or nan)")
    sub = x.reshape(-1, 8, 32)  # (n, 8 sub-blocks, 32)
    offset = sub.amin(-1).clamp_(max=0).neg_()  # (n, 8): -min >= 0
    dmin = (offset.amax(-1, keepdim=True) / 63).to(torch.float16).to(torch.float32)  # (n, 1), as stored
    lm = (offset * _inv(dmin)).add_(0.5).floor_().clamp_(0, 63)  # 6-bit offsets, nearest
    ml = dmin * lm  # (n, 8) offsets as decoded
    step = (sub.amax(-1) + ml).clamp_(min=0) / 15  # range above the decoded offset, per level
    d = (step.amax(-1, keepdim=True) / 63).to(torch.float16).to(torch.float32)  # (n, 1), as stored
    ls = (step * _inv(d)).ceil_().clamp_(0, 63)  # 6-bit steps, rounded up: the levels cover the range
    dl = (d * ls).unsqueeze(-1)  # (n, 8, 1) steps as decoded
    q = ((sub + ml.unsqueeze(-1)) * _inv(dl)).add_(0.5).floor_().clamp_(0, 15).to(torch.uint8)  # (n, 8, 32)
    ls, lm = ls.to(torch.uint8), lm.to(torch.uint8)
    # 12-byte scale table (see _k_scale_min): bytes 0-3 / 4-7 the low 6 bits of steps / offsets 0-3 and, in
    # their top 2 bits, the top 2 bits of steps / offsets 4-7; bytes 8-11 the low nibbles of steps 4-7 (low)
    # and offsets 4-7 (high).
    table = torch.cat(((ls[:, :4] & 0x3F) | ((ls[:, 4:] >> 4) << 6), (lm[:, :4] & 0x3F) | ((lm[:, 4:] >> 4) << 6),
                       (ls[:, 4:] & 0x0F) | ((lm[:, 4:] & 0x0F) << 4)), dim=-1)  # (n, 12)
    pairs = q.reshape(-1, 4, 2, 32)  # sub-blocks 2i (low nibbles) and 2i+1 (high) share 32 bytes
    qs = (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).reshape(-1, 128)
    blocks = torch.cat((_f16_bytes(d), _f16_bytes(dmin), table, qs), dim=-1)  # (n, 144)
    return blocks.reshape(bshape)


# ----------------------------------------------------------------------------------------------
# The one table of GGML types: block geometry and, where this module has them, the kernels


class TypeInfo(NamedTuple):
    """One GGML type: ``block`` elements stored in ``size`` bytes; ``dequant``: its torch kernel on (n_blocks,
    bytes) (None: only gguf's numpy code decodes it); ``quant``: a quantiser on (n_blocks, block) floats,
    byte-exact with ``gguf.quants.quantize``; ``encoder``: a whole-tensor encoder of our own where gguf has no
    quantiser to be exact against (Q4_K)."""

    block: int
    size: int
    dequant: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    quant: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    encoder: Optional[Callable[[torch.Tensor], torch.Tensor]] = None


TYPES: dict[GGMLType, TypeInfo] = {
    _T.F32: TypeInfo(1, 4, _dq_f32),
    _T.F16: TypeInfo(1, 2, _dq_f16),
    _T.Q4_0: TypeInfo(32, 2 + 16, _dq_q4_0, quant=_q_q4_0),
    _T.Q4_1: TypeInfo(32, 2 + 2 + 16, _dq_q4_1, quant=_q_q4_1),
    _T.Q5_0: TypeInfo(32, 2 + 4 + 16, _dq_q5_0, quant=_q_q5_0),
    _T.Q5_1: TypeInfo(32, 2 + 2 + 4 + 16, _dq_q5_1, quant=_q_q5_1),
    _T.Q8_0: TypeInfo(32, 2 + 32, _dq_q8_0, quant=_q_q8_0),
    _T.Q8_1: TypeInfo(32, 4 + 4 + 32),
    _T.Q2_K: TypeInfo(QK_K, 2 + 2 + QK_K // 16 + QK_K // 4, _dq_q2_k),
    _T.Q3_K: TypeInfo(QK_K, 2 + QK_K // 4 + QK_K // 8 + 12, _dq_q3_k),
    _T.Q4_K: TypeInfo(QK_K, 2 + 2 + QK_K // 2 + 12, _dq_q4_k, encoder=encode_q4_k),
    _T.Q5_K: TypeInfo(QK_K, 2 + 2 + QK_K // 2 + QK_K // 8 + 12, _dq_q5_k),
    _T.Q6_K: TypeInfo(QK_K, 2 + QK_K // 2 + QK_K // 4 + QK_K // 16, _dq_q6_k),
    _T.Q8_K: TypeInfo(QK_K, 4 + QK_K + QK_K // 8),
    _T.IQ2_XXS: TypeInfo(QK_K, 2 + QK_K // 4),
    _T.IQ2_XS: TypeInfo(QK_K, 2 + QK_K // 4 + QK_K // 32),
    _T.IQ3_XXS: TypeInfo(QK_K, 2 + QK_K // 4 + QK_K // 8),
    _T.IQ1_S: TypeInfo(QK_K, 2 + QK_K // 8 + QK_K // 16),
    _T.IQ4_NL: TypeInfo(32, 2 + 16),
    _T.IQ3_S: TypeInfo(QK_K, 2 + QK_K // 4 + QK_K // 8 + QK_K // 32 + 4),
    _T.IQ2_S: TypeInfo(QK_K, 2 + QK_K // 4 + QK_K // 16),
    _T.IQ4_XS: TypeInfo(QK_K, 2 + 2 + QK_K // 2 + QK_K // 64),
    _T.I8: TypeInfo(1, 1),
    _T.I16: TypeInfo(1, 2),
    _T.I32: TypeInfo(1, 4),
    _T.I64: TypeInfo(1, 8),
    _T.F64: TypeInfo(1, 8),
    _T.IQ1_M: TypeInfo(QK_K, QK_K // 8 + QK_K // 16 + QK_K // 32),
    _T.BF16: TypeInfo(1, 2, _dq_bf16),
    _T.TQ1_0: TypeInfo(QK_K, 2 + 4 * 13),
    _T.TQ2_0: TypeInfo(QK_K, 2 + 64),
    _T.MXFP4: TypeInfo(32, 1 + 16),
    _T.NVFP4: TypeInfo(64, 4 + 32),
    _T.Q1_0: TypeInfo(128, 2 + 16),
}
assert set(TYPES) == set(GGMLType)

# Views of the table (not tables of their own).
BLOCK_SIZES: dict[GGMLType, tuple[int, int]] = {t: (i.block, i.size) for t, i in TYPES.items()}
TORCH_DEQUANT_TYPES: frozenset[GGMLType] = frozenset(t for t, i in TYPES.items() if i.dequant is not None)
# Byte-exact with gguf.quants.quantize (plain float types included); gguf itself has no K-quant quantiser.
QUANTIZE_TYPES: frozenset[GGMLType] = frozenset({_T.F32, _T.F16, _T.BF16} | {t for t, i in TYPES.items() if i.quant})
# What a writer can produce: the exact quantisers and our own encoders (Q4_K).
ENCODE_TYPES: frozenset[GGMLType] = frozenset(QUANTIZE_TYPES | {t for t, i in TYPES.items() if i.encoder})


def padded_width(width: int, qtype: GGMLType | int | str) -> int:
    """``width`` rounded up to whole blocks of ``qtype`` (a row shorter than that is zero-padded when stored)."""
    block = BLOCK_SIZES[_as_type(qtype)][0]
    return -(-int(width) // block) * block


ENCODE_CHUNK_BYTES = 16 << 20  # float32 rows encoded at a time: the quantisers' temporaries stay this small


def encode(tensor: torch.Tensor, qtype: GGMLType | int | str) -> torch.Tensor:
    """Float tensor (last dim whole blocks) -> GGUF bytes with the writer's encoder of ``qtype``: the byte-exact
    quantiser (:func:`quantize`) or our own (:func:`encode_q4_k`). Rows are encoded a chunk at a time (blocks never
    span rows, so the bytes are those of one call; the quantisers hold several float copies of what they get)."""
    qt = _as_type(qtype)
    if qt in QUANTIZE_TYPES:
        fn = functools.partial(quantize, qtype=qt)
    elif TYPES[qt].encoder is not None:
        fn = TYPES[qt].encoder
    else:
        raise NotImplementedError(f"no encoder for GGML type {qt.name}; supported: "
                                  f"{', '.join(sorted(t.name for t in ENCODE_TYPES))}")
    if tensor.dim() < 2:
        return fn(tensor)
    rows = tensor.reshape(-1, tensor.shape[-1])
    step = max(1, ENCODE_CHUNK_BYTES // (4 * rows.shape[1]))
    if rows.shape[0] <= step:
        return fn(rows).reshape(byte_shape(tensor.shape, qt))
    out = torch.empty(byte_shape(rows.shape, qt), dtype=torch.uint8, device=tensor.device)
    for i in range(0, rows.shape[0], step):
        out[i:i + step] = fn(rows[i:i + step])
    return out.reshape(byte_shape(tensor.shape, qt))
