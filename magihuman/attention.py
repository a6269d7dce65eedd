"""The one attention entry point of the engine, with a small swappable backend registry.

``attention(q, k, v, mask)`` takes q ``[B, Hq, L, D]`` and k, v ``[B, Hkv, L, D]`` (grouped-query:
query head ``h`` reads key/value head ``h // (Hq // Hkv)``), softmax scale ``1/sqrt(D)``, and an
optional boolean ``mask`` broadcastable to ``[B, Hq, L, L]`` where ``True`` means "may attend".
It returns ``[B, Hq, L, D]`` in the dtype of ``q``. Hosts add flash/sage/ComfyUI kernels with
:func:`register_attention_backend` and pick one with :func:`set_attention_backend`.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


def _check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"attention expects 4-D [B, H, L, D] tensors, got q{tuple(q.shape)} k{tuple(k.shape)} v{tuple(v.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got k{tuple(k.shape)} v{tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q{tuple(q.shape)} and k{tuple(k.shape)} differ in batch or head_dim")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"{q.shape[1]} query heads are not a multiple of {k.shape[1]} key/value heads")


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """torch ``scaled_dot_product_attention`` with native GQA (no repeated key/value copies)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Plain softmax attention in fp32 (debugging / numerics reference; memory O(L^2) per head)."""
    rep = q.shape[1] // k.shape[1]
    kf = k.float().repeat_interleave(rep, dim=1)
    vf = v.float().repeat_interleave(rep, dim=1)
    scores = torch.matmul(q.float(), kf.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(scores.softmax(dim=-1), vf).to(q.dtype)


_BACKENDS: dict[str, AttentionFn] = {"sdpa": sdpa_attention, "math": math_attention}
_active = "sdpa"


def register_attention_backend(name: str, fn: AttentionFn) -> None:
    """Add (or replace) a backend ``fn(q, k, v, mask) -> out`` with the contract of :func:`attention`."""
    if not callable(fn):
        raise TypeError(f"attention backend {name!r} must be callable, got {type(fn).__name__}")
    _BACKENDS[name] = fn


def set_attention_backend(name: str) -> None:
    """Route every :func:`attention` call to the backend registered as ``name``."""
    global _active
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; registered: {', '.join(sorted(_BACKENDS))} "
                         f"(add one with register_attention_backend)")
    _active = name


def get_attention_backend() -> str:
    return _active


def available_attention_backends() -> list[str]:
    return sorted(_BACKENDS)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Softmax attention ``[B, Hq, L, D] x [B, Hkv, L, D] -> [B, Hq, L, D]`` via the active backend."""
    _check_shapes(q, k, v)
    if mask is not None and mask.dtype != torch.bool:
        raise TypeError(f"attention mask must be boolean (True = attend), got {mask.dtype}")
    return _BACKENDS[_active](q, k, v, mask)
