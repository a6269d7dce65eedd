"""Standalone block offload for the DiT (CLI / scripts; inside ComfyUI its ModelPatcher does this).

``enable_block_offload(model, "cuda", blocks_on_device=N)`` keeps the first N transformer layers
and everything outside the layers (adapter, final heads) on the device; the other layers' weights
stay in (pinned) host memory and are copied in by a forward pre-hook just before the layer runs,
then dropped after it. On CUDA the next streamed layer is copied on a side stream while the current
layer computes. Weights are never written back (inference only), so leaving a layer is free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

import torch
import torch.nn as nn

__all__ = ["BlockOffload", "enable_block_offload"]

DeviceLike = Union[str, torch.device]


@dataclass
class _Streamed:
    """One streamed layer: its tensors' host copies and, while loaded, their device copies."""

    tensors: list[tuple[nn.Module, str]]  # (owner module, attribute name) of each parameter and buffer
    host: list[torch.Tensor]
    device_copies: Optional[list[torch.Tensor]] = None
    pending: Optional[list[torch.Tensor]] = None  # prefetched copies, not yet attached
    ready: Optional[object] = None  # CUDA event set when a prefetch finished copying


@dataclass
class BlockOffload:
    """Handle returned by :func:`enable_block_offload` (statistics + :meth:`remove`)."""

    device: torch.device
    resident: list[int]
    streamed: dict[int, _Streamed]
    copy_always: bool
    prefetch: bool
    side_stream: Optional[object] = None
    model: Optional[nn.Module] = field(default=None, repr=False)
    handles: list = field(default_factory=list)
    loads: int = 0  # layer copies made (synchronous + prefetched)
    prefetched: int = 0
    loaded_now: int = 0  # streamed layers on the device right now
    max_loaded: int = 0  # most streamed layers on the device at once

    # ------------------------------------------------------------ moving

    def _copy_in(self, s: _Streamed) -> list[torch.Tensor]:
        non_blocking = self.device.type == "cuda"
        return [t.to(self.device, non_blocking=non_blocking, copy=self.copy_always) for t in s.host]

    def _attach(self, s: _Streamed, tensors: list[torch.Tensor]) -> None:
        for (mod, name), t in zip(s.tensors, tensors):
            getattr(mod, name).data = t
        s.device_copies = tensors
        self.loaded_now += 1
        self.max_loaded = max(self.max_loaded, self.loaded_now)

    def _start_prefetch(self, s: _Streamed) -> None:
        if s.device_copies is not None or s.ready is not None:
            return
        with torch.cuda.stream(self.side_stream):
            s.pending = self._copy_in(s)
            s.ready = torch.cuda.Event()
            s.ready.record(self.side_stream)
        self.loads += 1
        self.prefetched += 1

    def load(self, index: int) -> None:
        s = self.streamed[index]
        if s.device_copies is not None:
            return
        if s.ready is not None:  # prefetched on the side stream
            main = torch.cuda.current_stream(self.device)
            main.wait_event(s.ready)
            tensors = s.pending
            for t in tensors:
                t.record_stream(main)  # allocated on the side stream, used (and freed) on the main one
            s.pending, s.ready = None, None
        else:
            tensors = self._copy_in(s)
            self.loads += 1
        self._attach(s, tensors)

    def unload(self, index: int) -> None:
        s = self.streamed[index]
        if s.device_copies is None:
            return
        for (mod, name), host in zip(s.tensors, s.host):
            getattr(mod, name).data = host
        s.device_copies = None
        self.loaded_now -= 1

    def next_streamed(self, index: int) -> Optional[int]:
        later = [i for i in self.streamed if i > index]
        return min(later) if later else None

    # ------------------------------------------------------------ hooks

    def _pre_hook(self, index: int):
        def hook(module, args):
            if index in self.streamed:
                self.load(index)
            nxt = self.next_streamed(index)
            if nxt is not None and self.prefetch and self.side_stream is not None:
                self._start_prefetch(self.streamed[nxt])
        return hook

    def _post_hook(self, index: int):
        def hook(module, args, output):
            self.unload(index)
        return hook

    def remove(self) -> None:
        """Remove the hooks; streamed layers stay in host memory (move the model as a whole after)."""
        for h in self.handles:
            h.remove()
        self.handles.clear()
        for i in self.streamed:
            self.unload(i)
        if self.model is not None:
            self.model._magi_block_offload = None


def _layer_tensors(layer: nn.Module) -> list[tuple[nn.Module, str]]:
    out = []
    for mod in layer.modules():
        out += [(mod, n) for n, _ in mod.named_parameters(recurse=False)]
        out += [(mod, n) for n, _ in mod.named_buffers(recurse=False)]
    return out


@torch.no_grad()
def enable_block_offload(model: nn.Module, device: DeviceLike, blocks_on_device: int, *,
                         offload_device: DeviceLike = "cpu", prefetch: bool = True,
                         pin_memory: Optional[bool] = None, copy_always: bool = False) -> BlockOffload:
    """Keep ``blocks_on_device`` transformer layers (the first ones) on ``device``, stream the rest.

    Everything outside ``model.block.layers`` moves to ``device``. Streamed layers live on
    ``offload_device`` (pinned when the target is CUDA, so copies are asynchronous) and are copied in
    right before their forward; with ``prefetch`` on CUDA the next one is copied on a side stream
    meanwhile. ``copy_always`` forces real copies even when ``device == offload_device`` (tests).
    Returns a :class:`BlockOffload` handle (``remove()`` undoes the hooks).
    """
    layers = model.block.layers
    n = len(layers)
    if not 0 <= int(blocks_on_device) <= n:
        raise ValueError(f"blocks_on_device must lie in 0..{n} (the model has {n} transformer layers), got {blocks_on_device}")
    if getattr(model, "_magi_block_offload", None) is not None:
        raise RuntimeError("block offload is already enabled on this model; call .remove() on its handle first")
    dev, host_dev = torch.device(device), torch.device(offload_device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    pin = (dev.type == "cuda" and host_dev.type == "cpu") if pin_memory is None else pin_memory

    for child in model.children():
        if child is not model.block:
            child.to(dev)
    for p in model.parameters(recurse=False):
        p.data = p.data.to(dev)
    resident = list(range(int(blocks_on_device)))
    for i in resident:
        layers[i].to(dev)
    streamed = {}
    for i in range(int(blocks_on_device), n):
        tensors = _layer_tensors(layers[i])
        host = []
        for mod, attr in tensors:
            t = getattr(mod, attr).data.to(host_dev)
            if pin:
                t = t.pin_memory()
            getattr(mod, attr).data = t
            host.append(t)
        streamed[i] = _Streamed(tensors, host)

    side = torch.cuda.Stream(dev) if (dev.type == "cuda" and prefetch) else None
    state = BlockOffload(dev, resident, streamed, copy_always, prefetch, side, model=model)
    for i, layer in enumerate(layers):
        state.handles.append(layer.register_forward_pre_hook(state._pre_hook(i)))
        if i in streamed:
            state.handles.append(layer.register_forward_hook(state._post_hook(i)))
    model._magi_block_offload = state
    return state
