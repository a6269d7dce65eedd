"""Fill a model built on the ``meta`` device from a :class:`~.source.WeightSource`, tensor by tensor.

Each parameter is allocated in its final dtype on its final device and read straight into, so loading
never holds the file's tensors and the model at once (peak RAM ~ the model plus one read chunk).
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch

from ..errors import CheckpointError
from .entry import Entry, OnBytes, Reader
from .source import WeightSource

__all__ = ["Slot", "state_slots", "expected_shapes", "install", "load_into", "check_materialized"]

Slot = tuple[torch.nn.Module, str, bool]  # (owning module, attribute, is_parameter)
# A handler may take over one tensor (e.g. keep it quantised); it returns False to leave it to the default.
Handler = Callable[[Entry, Reader, Slot, OnBytes], bool]


def state_slots(model: torch.nn.Module) -> dict[str, Slot]:
    """state-dict key -> (owning module, attribute, is_parameter), persistent entries only, in module order."""
    slots = {}
    for mname, mod in model.named_modules():
        pre = f"{mname}." if mname else ""
        for n, p in mod._parameters.items():
            if p is not None:
                slots[pre + n] = (mod, n, True)
        for n, b in mod._buffers.items():
            if b is not None and n not in mod._non_persistent_buffers_set:
                slots[pre + n] = (mod, n, False)
    return slots


def expected_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Every persistent state-dict key of ``model`` with its shape (works on meta-built models)."""
    return {k: tuple(getattr(m, a).shape) for k, (m, a, _) in state_slots(model).items()}


def install(mod: torch.nn.Module, attr: str, is_param: bool, tensor: torch.Tensor) -> None:
    """Put ``tensor`` in place of a (meta) parameter or buffer, without autograd."""
    if is_param:
        mod._parameters[attr] = torch.nn.Parameter(tensor, requires_grad=False)
    else:
        mod._buffers[attr] = tensor


def load_into(model: torch.nn.Module, src: WeightSource, *, device="cpu", keys: Optional[Iterable[str]] = None,
              handler: Optional[Handler] = None, on_bytes: OnBytes = None,
              chunk_bytes: Optional[int] = None) -> None:
    """Read every key of ``src`` (or ``keys``) into ``model``: each tensor in the dtype its meta placeholder
    has, on ``device``; fp8 tensors with a scale and GGUF blocks are dequantised while reading (unless
    ``handler`` keeps them compact). Keys and shapes must have been checked (:func:`~.report.check_keys`)."""
    slots = state_slots(model)
    device = torch.device(device)

    def take(e: Entry, reader: Reader) -> None:
        slot = slots[e.key]
        if handler is not None and handler(e, reader, slot, on_bytes):
            return
        mod, attr, is_param = slot
        meta = getattr(mod, attr)
        dest = torch.empty(meta.shape, dtype=meta.dtype, device=device)
        scale = src.scale_value(e.key) if e.key in src.scale_of else None
        reader.read_into(e, dest, on_bytes, scale=scale)
        install(mod, attr, is_param, dest)

    src.stream(list(src.entries if keys is None else keys), take, chunk_bytes=chunk_bytes)


def check_materialized(model: torch.nn.Module, where: str) -> None:
    """Refuse a model that still has meta tensors after loading (a key the file lacked and nothing filled)."""
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"{where}: the model still has uninitialised tensors after loading: {left[:5]}")
