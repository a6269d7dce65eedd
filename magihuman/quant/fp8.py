"""fp8 (float8_e4m3fn) weights with one fp32 scale per tensor: ``weight ~= float(stored) * scale``."""

from __future__ import annotations

import torch

__all__ = ["FP8_DTYPE", "FP8_MAX", "quantize_fp8"]

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
