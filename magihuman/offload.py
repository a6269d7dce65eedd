"""Standalone block offload for the DiT (CLI / scripts; inside ComfyUI its ModelPatcher does this).

``enable_block_offload(model, "cuda", blocks_on_device=N)`` keeps the first N transformer layers
and everything outside the layers (adapter, final heads) on the device; the other layers' weights
stay in (pinned) host memory and are copied in by a forward pre-hook just before the layer runs,
then dropped after it. On CUDA the next streamed layer is copied on a side stream while the current
layer computes. Weights are never written back (inference only), so leaving a layer is free.

Pinned host memory is one arena (:class:`HostArena`): every streamed tensor is a view at an aligned
offset of one exactly-sized host buffer, page-locked once with ``cudaHostRegister``. Pinning tensor by
tensor (``Tensor.pin_memory``) goes through torch's caching host allocator, which rounds each block up
to a power of two: ~1.8x the weight bytes for the DiT's streamed layers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import torch
import torch.nn as nn

__all__ = ["BlockOffload", "HostArena", "enable_block_offload", "HOST_ALIGNMENT", "arena_bytes"]

log = logging.getLogger(__name__)

DeviceLike = Union[str, torch.device]
# Offset alignment of each tensor in the host arena: what CUDA's allocators give a fresh tensor, so
# copies and any dtype view start aligned.
HOST_ALIGNMENT = 256


def _align(n: int) -> int:
    return -(-n // HOST_ALIGNMENT) * HOST_ALIGNMENT


def arena_bytes(nbytes) -> int:
    """Bytes of a host arena holding tensors of these sizes (each padded to :data:`HOST_ALIGNMENT`)."""
    return sum(_align(int(n)) for n in nbytes)


def register_host_memory(ptr: int, nbytes: int) -> Optional[Callable[[], None]]:
    """Page-lock ``nbytes`` of existing host memory at ``ptr`` for asynchronous CUDA copies (exactly
    those bytes, unlike the caching host allocator). Returns the matching unregister call, or None
    when CUDA refuses (e.g. the pinned-memory limit of Windows); the memory stays usable, pageable."""
    try:
        cudart = torch.cuda.cudart()
        err = cudart.cudaHostRegister(ptr, nbytes, 1)  # cudaHostRegisterPortable: pinned for every device
    except (RuntimeError, AssertionError, AttributeError):  # torch without CUDA
        return None
    if int(err) != 0:
        return None
    return lambda: cudart.cudaHostUnregister(ptr)


class HostArena:
    """One host buffer holding many tensors, each a view at a :data:`HOST_ALIGNMENT`-aligned offset,
    pinned with a single registration (see the module docstring for why not per-tensor pinning)."""

    def __init__(self, nbytes: list[int], device: DeviceLike = "cpu"):
        self.offsets, end = [], 0
        for n in nbytes:
            self.offsets.append(end)
            end += _align(int(n))
        # [total bytes]; untouched pages are not committed yet, so filling it while the originals are
        # released one by one keeps the host peak near the weights' own size
        self.buffer = torch.empty(end, dtype=torch.uint8, device=device)
        self.pinned = False
        self._unregister: Optional[Callable[[], None]] = None

    def view(self, index: int, dtype: torch.dtype, shape) -> torch.Tensor:
        """The bytes of tensor ``index`` as a contiguous ``dtype`` tensor of ``shape`` (aliases the buffer)."""
        start = self.offsets[index]
        nbytes = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        return self.buffer[start:start + nbytes].view(dtype).view(shape)

    def pin(self) -> bool:
        """Page-lock the whole buffer once; False (with a warning) when that is refused."""
        if self.pinned or self.buffer.numel() == 0:
            return self.pinned
        self._unregister = register_host_memory(self.buffer.data_ptr(), self.buffer.numel())
        self.pinned = self._unregister is not None
        if not self.pinned:
            log.warning("could not pin %.2f GiB of host memory for block offload (pinned-memory limit?): "
                        "streamed layers copy synchronously, slower", self.buffer.numel() / 2 ** 30)
        return self.pinned

    def unpin(self) -> None:
        """Release the page lock (the memory stays valid for the views that use it)."""
        if self._unregister is not None:
            self._unregister()
        self._unregister, self.pinned = None, False

    def __del__(self):  # the buffer is still alive here: unregister before its memory can be freed
        try:
            self.unpin()
        except Exception:  # interpreter shutdown: CUDA may already be gone
            pass


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
    arena: Optional[HostArena] = field(default=None, repr=False)  # pinned host memory of the streamed layers
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
        if self.arena is not None:
            if self.arena.pinned and self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # no copy may still read the pages being unlocked
            self.arena.unpin()
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
    ``offload_device`` (pinned when the target is CUDA, so copies are asynchronous; one :class:`HostArena`
    of exactly their bytes) and are copied in
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
    streamed = {i: _layer_tensors(layers[i]) for i in range(int(blocks_on_device), n)}
    arena = None
    if pin:  # one exactly-sized arena, each tensor copied in and its old storage released as we go
        slots = [(mod, attr) for tensors in streamed.values() for mod, attr in tensors]
        arena = HostArena([getattr(m, a).numel() * getattr(m, a).element_size() for m, a in slots], host_dev)
        for j, (mod, attr) in enumerate(slots):
            owner = getattr(mod, attr)
            dst = arena.view(j, owner.dtype, owner.shape)
            dst.copy_(owner.data)
            owner.data = dst  # the old storage goes now, not after the whole arena is filled
        arena.pin()
    for i, tensors in streamed.items():
        host = []
        for mod, attr in tensors:
            if not pin:
                getattr(mod, attr).data = getattr(mod, attr).data.to(host_dev)
            host.append(getattr(mod, attr).data)
        streamed[i] = _Streamed(tensors, host)

    side = torch.cuda.Stream(dev) if (dev.type == "cuda" and prefetch) else None
    state = BlockOffload(dev, resident, streamed, copy_always, prefetch, side, arena=arena, model=model)
    for i, layer in enumerate(layers):
        state.handles.append(layer.register_forward_pre_hook(state._pre_hook(i)))
        if i in streamed:
            state.handles.append(layer.register_forward_hook(state._post_hook(i)))
    model._magi_block_offload = state
    return state
