"""fp8 (float8_e4m3fn) weights with one fp32 scale per tensor: ``weight ~= float(stored) * scale``."""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["FP8_DTYPE", "FP8_MAX", "FP8_COMPUTE_MODES", "quantize_fp8", "fp8_mm_supported", "fp8_linear"]

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite float8_e4m3fn value


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
_MM_SUPPORT: dict[str, bool] = {}


def fp8_mm_supported(device: torch.device) -> bool:
    """Whether ``torch._scaled_mm`` runs fp8 x fp8 on ``device`` (CUDA: Ada/Hopper and newer; CPU: this torch
    build's kernel, probed once)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 9)
    key = device.type
    if key not in _MM_SUPPORT:
        try:
            a = torch.zeros(16, 16, dtype=FP8_DTYPE, device=device)
            one = torch.ones((), device=device)
            torch._scaled_mm(a, a.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
            _MM_SUPPORT[key] = True
        except (RuntimeError, NotImplementedError, AttributeError):
            _MM_SUPPORT[key] = False
    return _MM_SUPPORT[key]


def fp8_linear(x: torch.Tensor, w8: torch.Tensor, w_scale: torch.Tensor, out_dtype: torch.dtype,
               mode: str = "token") -> Optional[torch.Tensor]:
    """``x @ (w8 * w_scale).T`` as an fp8 matmul: the activation is quantised to e4m3 with its own scale (per
    tensor, or per token = per row), ``torch._scaled_mm`` multiplies and rescales, the result is ``out_dtype``.
    Returns None when the shapes do not suit the kernel (widths not multiples of 16), so the caller takes the
    dequantising path instead."""
    n, k = w8.shape
    if k % 16 or n % 16:
        return None
    x2 = x.reshape(-1, k).float()  # [M, K]
    if mode == "tensor":
        xs = (x2.abs().amax() / FP8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
        ws = w_scale.to(device=x.device, dtype=torch.float32).reshape(())
    elif mode == "token":
        xs = (x2.abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp(min=torch.finfo(torch.float32).tiny)  # [M, 1]
        ws = w_scale.to(device=x.device, dtype=torch.float32).reshape(1, 1).expand(1, n).contiguous()
    else:
        raise ValueError(f"fp8 compute mode must be one of {FP8_COMPUTE_MODES[1:]}, got {mode!r}")
    x8 = (x2 / xs).clamp_(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    out = torch._scaled_mm(x8, w8.t(), scale_a=xs, scale_b=ws, out_dtype=out_dtype)  # [M, N]
    return out.reshape(*x.shape[:-1], n)
