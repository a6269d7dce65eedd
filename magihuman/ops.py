"""The ``operations`` protocol shared by every engine model.

Models build their layers from an injected namespace (default ``torch.nn``), exactly like ComfyUI's
``comfy.ops``: ``operations.Linear(in, out, bias=..., dtype=..., device=...)`` and so on. A few
layers need a weight outside ``module.forward`` (per-modality expert slices of one fused tensor); they
ask the namespace for it through :func:`fetch_weight`, so a host (ComfyUI) can cast and offload
it the same way it does in its own ``forward``.
"""

from __future__ import annotations

import torch


def fetch_weight(module: torch.nn.Module, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Return ``module.weight`` as ``dtype`` on ``device``, via the host's hook when it has one.

    A namespace may define ``fetch_weight(module, dtype, device)``; the engine remembers the
    namespace on each module it builds as ``module._magi_ops``.
    """
    ops = getattr(module, "_magi_ops", None)
    hook = getattr(ops, "fetch_weight", None) if ops is not None else None
    if hook is not None:
        return hook(module, dtype, device)
    w = module.weight
    if w.dtype != dtype or w.device != device:
        w = w.to(device=device, dtype=dtype)
    return w


def tag_operations(module: torch.nn.Module, operations) -> torch.nn.Module:
    """Remember the namespace a layer was built from (see :func:`fetch_weight`)."""
    module._magi_ops = operations
    return module
