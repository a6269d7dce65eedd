"""fp8 (float8_e4m3fn) weights with one fp32 scale per tensor: ``weight ~= float(stored) * scale``; fp8 matmuls."""

from __future__ import annotations

import logging
import sys
from typing import Optional

import torch

__all__ = ["FP8_DTYPE", "FP8_MAX", "FP8_MM_MULTIPLE", "FP8_COMPUTE_MODES", "quantize_fp8", "fp8_mm_supported",
           "note_refusal", "fp8_linear"]

log = logging.getLogger(__name__)

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite float8_e4m3fn value
FP8_MM_MULTIPLE = 16  # torch._scaled_mm: both dims of the weight (K and N) multiples of 16


def quantize_fp8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor e4m3 quantisation: ``(w8, scale)`` with ``w ~= float(w8) * scale``, ``scale = amax / 448``
    (an all-zero tensor gets scale 1). ``scale`` is a 0-dim fp32 tensor on ``w``'s device."""
    amax = w.detach().abs().amax().to(torch.float32) if w.numel() else torch.zeros((), device=w.device)
    if not torch.isfinite(amax):
        raise ValueError("cannot quantise a weight holding inf/nan values to fp8; check the checkpoint")
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    w8 = (w.to(torch.float32) / scale).clamp_(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return w8, scale


# ------------------------------------------------------------------ fp8 matmuls (torch._scaled_mm)

FP8_COMPUTE_MODES = ("off", "tensor", "token")  # activation scale: one per tensor, or one per token (row)
_MM_SUPPORT: dict[tuple, bool] = {}


def _device_key(device: torch.device) -> str:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index}"
    return device.type


def _torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def _known_refusal(device: torch.device, mode: str, out_dtype: torch.dtype) -> str:
    """Why ``torch._scaled_mm`` is known not to run this product on a CUDA device (empty: not known to refuse)."""
    cap = torch.cuda.get_device_capability(device)
    if cap < (8, 9):
        return f"compute capability {cap} < (8, 9)"
    if mode == "token":
        if sys.platform == "win32":
            return "row-wise scaling is not built into Windows torch"
        if _torch_version() < ((2, 7) if cap < (9, 0) else (2, 5)):
            return f"row-wise scaling on compute capability {cap} needs a newer torch than {torch.__version__}"
        if out_dtype != torch.bfloat16 and _torch_version() < (2, 8):
            return "row-wise scaling gives bf16 only in this torch"
    return ""


def fp8_mm_supported(device, mode: str = "tensor", out_dtype: torch.dtype = torch.bfloat16) -> bool:
    """Whether ``torch._scaled_mm`` multiplies fp8 on ``device`` with this activation scaling ``mode`` and output
    dtype: CUDA needs compute capability 8.9 (Ada) or newer; per-token ("row-wise") scales also need a recent torch
    (2.7 for Ada, 2.5 for Hopper) and, before 2.8, a bf16 output, and are not built into Windows torch. Decided once
    per (device, mode, output dtype): by those rules and, where a kernel can run (the CPU, an initialised CUDA
    device), a 16x16 product. A refusal is logged once and the caller dequantises (also when a kernel refuses
    later: :func:`note_refusal`)."""
    device = torch.device(device)
    key = (_device_key(device), mode, out_dtype)
    if key in _MM_SUPPORT:
        return _MM_SUPPORT[key]
    why = _known_refusal(device, mode, out_dtype) if device.type == "cuda" else ""
    if not why and (device.type != "cuda" or torch.cuda.is_initialized()):
        try:
            x = torch.zeros(16, 16, dtype=torch.float32, device=device)
            w8 = torch.zeros(16, 16, dtype=FP8_DTYPE, device=device)
            _scaled(x, w8, torch.ones((), device=device), out_dtype, mode)
        except (RuntimeError, NotImplementedError, AttributeError, TypeError) as e:
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if why:
        note_refusal(device, mode, out_dtype, why)
    else:
        _MM_SUPPORT[key] = True
    return _MM_SUPPORT[key]


def note_refusal(device, mode: str, out_dtype: torch.dtype, why: str) -> None:
    """Remember (and log once) that fp8 products of this kind do not run on ``device``."""
    device = torch.device(device)
    key = (_device_key(device), mode, out_dtype)
    if _MM_SUPPORT.get(key) is not False:
        log.info("fp8 compute (%s scaling, %s output) not available on %s: %s; fp8 weights are dequantised instead",
                 mode, str(out_dtype).removeprefix("torch."), device, why)
    _MM_SUPPORT[key] = False


def _scaled(x2: torch.Tensor, w8: torch.Tensor, w_scale: torch.Tensor, out_dtype: torch.dtype,
            mode: str) -> torch.Tensor:
    """``x2 [M, K]`` (float) times ``w8 [N, K]`` (e4m3) with scales -> ``[M, N]`` in ``out_dtype``."""
    n = w8.shape[0]
    if mode == "tensor":
        xs = (x2.abs().amax() / FP8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
        ws = w_scale.to(device=x2.device, dtype=torch.float32).reshape(())
    elif mode == "token":
        xs = (x2.abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp(min=torch.finfo(torch.float32).tiny)  # [M, 1]
        ws = w_scale.to(device=x2.device, dtype=torch.float32).reshape(1, 1).expand(1, n).contiguous()
    else:
        raise ValueError(f"fp8 compute mode must be one of {FP8_COMPUTE_MODES[1:]}, got {mode!r}")
    x8 = (x2 / xs).clamp_(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return torch._scaled_mm(x8, w8.t(), scale_a=xs, scale_b=ws, out_dtype=out_dtype)


def fp8_linear(x: torch.Tensor, w8: torch.Tensor, w_scale: torch.Tensor, out_dtype: torch.dtype,
               mode: str = "token") -> Optional[torch.Tensor]:
    """``x @ (w8 * w_scale).T`` as an fp8 matmul: the activation is quantised to e4m3 with its own scale (per
    tensor, or per token = per row), ``torch._scaled_mm`` multiplies and rescales, the result is ``out_dtype``.
    ``w8 [N, K]`` must have both dims multiples of 16 (weights are stored padded for this); ``x [..., k]`` may be
    narrower than K (zero-padded here) and the result keeps all N columns. Returns None when ``w8`` does not
    suit the kernel, so the caller dequantises instead."""
    n, k = w8.shape
    if k % FP8_MM_MULTIPLE or n % FP8_MM_MULTIPLE or x.shape[-1] > k:
        return None
    x2 = x.reshape(-1, x.shape[-1]).float()  # [M, k]
    if x2.shape[1] < k:
        x2 = torch.nn.functional.pad(x2, (0, k - x2.shape[1]))
    return _scaled(x2, w8, w_scale, out_dtype, mode).reshape(*x.shape[:-1], n)
