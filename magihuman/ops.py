"""The ``operations`` protocol shared by every engine model, and the one path a stored weight takes to a matmul.

Models build their layers from an injected namespace (default ``torch.nn``), exactly like ComfyUI's
``comfy.ops``: ``operations.Linear(in, out, bias=..., dtype=..., device=...)`` and so on. Layers whose weight
is used outside ``module.forward`` (the DiT's per-modality expert slices, the text encoder's linears and
embedding) ask for it through :func:`linear_weight` / :func:`embedding_rows`, which

1. fetch the stored tensor onto the compute device through the namespace's ``fetch_weight(module, dtype,
   device)`` hook when it has one (ComfyUI: its cast/offload path), else ``.to``;
2. decode the storage: plain (cast to the compute dtype), fp8 e4m3 with a per-tensor scale
   (``weight_scale``), or GGUF blocks (``weight_qtype`` + ``weight_shape``; dequantised on the device);
3. add on-the-fly weight patches: the engine's own (``weight_patches``: :func:`magihuman.apply_lora`) and,
   for compact storage, the host's (the namespace's ``decoded_patches(module)``: ComfyUI's LoRA patches,
   which cannot be merged into fp8 / GGUF bytes), in that order, on the decoded weight.

So compact storage and patches work the same for every model, host and offload scheme.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .quant import gguf
from .quant.fp8 import FP8_DTYPE

__all__ = ["fetch_weight", "tag_operations", "storage_kind", "set_fp8_weight", "set_gguf_weight", "linear_weight",
           "linear", "embedding_rows", "has_patches", "Patch"]

# A weight patch: f(weight, dtype) -> weight with the patch added (weight already decoded to ``dtype``).
Patch = Callable[[torch.Tensor], torch.Tensor]


def fetch_weight(module: torch.nn.Module, dtype: Optional[torch.dtype], device: torch.device) -> torch.Tensor:
    """Return ``module.weight`` on ``device`` (as ``dtype``; None keeps the stored dtype), via the host's hook
    when it has one. A namespace may define ``fetch_weight(module, dtype, device)``; the engine remembers the
    namespace on each module it builds as ``module._magi_ops``."""
    ops = getattr(module, "_magi_ops", None)
    hook = getattr(ops, "fetch_weight", None) if ops is not None else None
    if hook is not None:
        return hook(module, dtype, device)
    w = module.weight
    if (dtype is not None and w.dtype != dtype) or w.device != device:
        w = w.to(device=device, dtype=dtype)
    return w


def tag_operations(module: torch.nn.Module, operations) -> torch.nn.Module:
    """Remember the namespace a layer was built from (see :func:`fetch_weight`)."""
    module._magi_ops = operations
    return module


# ------------------------------------------------------------------ storage


def storage_kind(module: torch.nn.Module) -> str:
    """``"gguf"``, ``"fp8"`` or ``"plain"``: how ``module.weight`` is stored."""
    if getattr(module, "weight_qtype", None) is not None:
        return "gguf"
    if getattr(module, "weight_scale", None) is not None:
        return "fp8"
    return "plain"


def _clear_storage(module: torch.nn.Module) -> None:
    module.weight_qtype = None
    module.weight_shape = None
    if "weight_scale" in module._buffers:
        module._buffers["weight_scale"] = None


def set_fp8_weight(module: torch.nn.Module, w8: torch.Tensor, scale: torch.Tensor) -> None:
    """Store ``w8`` (float8_e4m3fn) as ``module.weight`` with its per-tensor scale in the non-persistent buffer
    ``module.weight_scale`` (``weight = float(w8) * scale``; absent from ``state_dict()``)."""
    if w8.dtype != FP8_DTYPE:
        raise ValueError(f"fp8 weights must be {FP8_DTYPE}, got {w8.dtype}")
    _clear_storage(module)
    scale = torch.as_tensor(scale, dtype=torch.float32).reshape(()).to(w8.device)
    module._parameters["weight"] = torch.nn.Parameter(w8, requires_grad=False)
    module.register_buffer("weight_scale", scale, persistent=False)


def set_gguf_weight(module: torch.nn.Module, raw: torch.Tensor, qtype: int, shape: tuple[int, ...]) -> None:
    """Store GGUF-quantised blocks: ``module.weight`` is the raw ``uint8`` data ``[rows, bytes per row]``,
    decoded to the ``shape`` weight on the compute device at every use (:func:`linear_weight`)."""
    expected = gguf.byte_shape(shape, qtype)
    if raw.dtype != torch.uint8 or tuple(raw.shape) != tuple(expected):
        raise ValueError(f"GGUF {gguf.GGMLType(qtype).name} data for a {list(shape)} weight must be uint8 "
                         f"{list(expected)}, got {raw.dtype} {list(raw.shape)}")
    _clear_storage(module)
    module._parameters["weight"] = torch.nn.Parameter(raw, requires_grad=False)
    module.weight_qtype = int(qtype)
    module.weight_shape = tuple(int(s) for s in shape)


# ------------------------------------------------------------------ use


def linear_weight(module: torch.nn.Module, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``module``'s weight decoded to ``dtype`` on ``device`` (plain, fp8 + scale, or GGUF), patches added."""
    kind = storage_kind(module)
    if kind == "plain":
        w = fetch_weight(module, dtype, device)
    elif kind == "fp8":  # the e4m3 bytes (a host's cast path must not patch them before the scale), then
        w = fetch_weight(module, None, device).to(dtype)  # e4m3 -> dtype (exact; a new tensor), times the scale
        w.mul_(module.weight_scale.to(device=w.device, dtype=w.dtype))
    else:
        raw = fetch_weight(module, None, device)
        w = gguf.dequantize(raw, module.weight_qtype, module.weight_shape, dtype=dtype)
    for patch in _patches(module, kind):
        w = patch(w)
    return w


def _patches(module: torch.nn.Module, kind: str) -> list:
    """The patches to add to a decoded weight: the engine's, then (compact storage) the host's."""
    out = list(getattr(module, "weight_patches", None) or ())
    if kind != "plain":
        hook = getattr(getattr(module, "_magi_ops", None), "decoded_patches", None)
        out += list(hook(module)) if hook is not None else []
    return out


def has_patches(module: torch.nn.Module) -> bool:
    """Whether :func:`linear_weight` adds any patch to this weight (paths that skip decoding, such as fp8
    compute, must then decode instead)."""
    return bool(_patches(module, storage_kind(module)))


def linear(module: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``F.linear`` in ``dtype`` with the decoded weight (and the module's bias, if any)."""
    bias = getattr(module, "bias", None)
    if bias is not None:
        bias = bias.to(device=x.device, dtype=dtype)
    return F.linear(x.to(dtype), linear_weight(module, dtype, x.device), bias)


def embedding_rows(module: torch.nn.Module, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Rows ``ids`` of an embedding table in any storage, decoding only the rows looked up (a GGUF row is a
    whole number of blocks; fp8 rows take the per-tensor scale)."""
    kind = storage_kind(module)
    if kind == "plain" and not has_patches(module):
        return F.embedding(ids, fetch_weight(module, None, ids.device)).to(dtype)
    if kind == "gguf" and not has_patches(module):  # only the looked-up rows travel and are decoded
        raw = module.weight
        picked = raw[ids.reshape(-1).to(raw.device)].to(ids.device)
        rows = gguf.dequantize(picked, module.weight_qtype, (ids.numel(), module.weight_shape[-1]), dtype=dtype)
        return rows.reshape(*ids.shape, module.weight_shape[-1])
    return F.embedding(ids, linear_weight(module, dtype, ids.device))
