"""The ``operations`` protocol shared by every engine model.

Models build their layers from an injected namespace (default ``torch.nn``), exactly like ComfyUI's
``comfy.ops``: ``operations.Linear(in, out, bias=..., dtype=..., device=...)`` and so on. Two more names a
namespace may define:

- ``BlockLinear`` / ``CompactEmbedding``: the layers that own a stored weight (plain, fp8 + scale or GGUF blocks;
  :mod:`magihuman.storage`); without them the engine's own classes are used. A host subclasses them to fetch the
  stored data through its own offloading cast.
- ``fetch_weight(module, dtype, device)``: how a small plain layer whose weight is used outside its own
  ``forward`` (the norms of the text encoder) gets that weight onto the compute device.
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["fetch_weight", "tag_operations", "layer_class"]


def fetch_weight(module: torch.nn.Module, dtype: Optional[torch.dtype], device: torch.device) -> torch.Tensor:
    """Return ``module.weight`` on ``device`` (as ``dtype``; None keeps the stored dtype), via the host's hook
    when it has one. The engine remembers the namespace on each module it builds as ``module._magi_ops``."""
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


def layer_class(operations, name: str, default: type) -> type:
    """``operations.<name>`` when the namespace defines it (a host's subclass), else the engine's ``default``."""
    return getattr(operations, name, default)
