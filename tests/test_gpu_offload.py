"""Block offload's pinned host memory, proven without a GPU: ``torch.cuda.cudart()`` (cudaHostRegister)
and ``Tensor.pin_memory`` are replaced by recorders, so every byte asked to be page-locked is counted.

``Tensor.pin_memory`` is recorded the way torch's caching host allocator reserves it: rounded up to a
power of two per call.
"""

import logging

import pytest
import torch

from magihuman import offload as O
from magihuman.estimate import HOST_ARENA_SLACK_PER_LAYER, dit_weight_storage, offload_weight_bytes
from magihuman.models.dit import DiTConfig, MagiHumanDiT
from magihuman.offload import HOST_ALIGNMENT, enable_block_offload


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


class _Pins:
    """Every page-lock request: cudaHostRegister (exact bytes) and pin_memory (power-of-two blocks)."""

    def __init__(self, monkeypatch, register_error=0):
        self.registered, self.unregistered, self.pin_calls = [], [], []
        self.register_error = register_error
        pins = self

        class Cudart:
            def cudaHostRegister(self, ptr, size, flags):
                pins.registered.append((ptr, size, flags))
                return register_error

            def cudaHostUnregister(self, ptr):
                pins.unregistered.append(ptr)
                return 0

        def pin_memory(t, *a, **k):
            pins.pin_calls.append(_pow2(t.numel() * t.element_size()))
            return t.clone()

        real_empty = torch.empty

        def empty(*a, pin_memory=False, **k):
            out = real_empty(*a, **k)
            if pin_memory:
                pins.pin_calls.append(_pow2(out.numel() * out.element_size()))
            return out

        monkeypatch.setattr(torch.cuda, "cudart", lambda: Cudart())
        monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
        monkeypatch.setattr(torch, "empty", empty)

    @property
    def allocations(self) -> int:
        return len(self.registered) + len(self.pin_calls)

    @property
    def pinned_bytes(self) -> int:
        return sum(size for _, size, _ in self.registered if not self.register_error) + sum(self.pin_calls)


def _streamed_tensors(model, first):
    return [t for layer in model.block.layers[first:] for t in list(layer.parameters()) + list(layer.buffers())]


@torch.no_grad()
def test_streamed_layers_live_in_one_exact_pinned_arena(monkeypatch):
    cfg = DiTConfig.preset("tiny")
    m = MagiHumanDiT(cfg, compute_dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    v, a, t = (torch.randn(1, 48, 2, 4, 4, generator=g), torch.randn(1, 5, 64, generator=g),
               torch.randn(1, 4, 64, generator=g))
    ref = m(v, a, t, [4])
    weights = [x.clone() for x in _streamed_tensors(m, 1)]
    pins = _Pins(monkeypatch)
    state = enable_block_offload(m, "cpu", blocks_on_device=1, pin_memory=True, copy_always=True)

    streamed = _streamed_tensors(m, 1)
    nbytes = [x.numel() * x.element_size() for x in streamed]
    assert pins.allocations == 1 and not pins.pin_calls  # one registration, no per-tensor pinned blocks
    ptr, size, flags = pins.registered[0]
    assert size == O.arena_bytes(nbytes) < sum(nbytes) + HOST_ALIGNMENT * len(nbytes) and flags == 1
    arena = state.arena.buffer
    assert (ptr, size) == (arena.data_ptr(), arena.numel()) and state.arena.pinned
    for x, w in zip(streamed, weights):  # views into the arena, aligned, same dtype/shape/values
        assert x.untyped_storage().data_ptr() == ptr
        assert (x.data_ptr() - ptr) % HOST_ALIGNMENT == 0 and x.is_contiguous()
        assert x.dtype == w.dtype and torch.equal(x, w)
    out = m(v, a, t, [4])
    assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])  # bitwise the resident result
    state.remove()
    assert pins.unregistered == [ptr] and not state.arena.pinned
    assert torch.equal(m(v, a, t, [4])[0], ref[0])


def test_arena_views_take_any_dtype_at_aligned_offsets():
    tensors = [torch.arange(3, dtype=torch.uint8), torch.randn(5, 7), torch.randn(3, 2).to(torch.bfloat16),
               torch.tensor(2.5, dtype=torch.float64), torch.zeros(0, 4), torch.tensor([True, False, True]),
               torch.randn(4, 8).to(torch.float8_e4m3fn)]
    arena = O.HostArena([x.numel() * x.element_size() for x in tensors])
    assert arena.offsets == [0, 256, 512, 768, 1024, 1024, 1280]
    assert arena.buffer.numel() == 1280 + 256
    views = [arena.view(i, x.dtype, x.shape) for i, x in enumerate(tensors)]
    for x, view in zip(tensors, views):
        view.copy_(x)
    for x, view in zip(tensors, views):
        assert view.dtype == x.dtype and view.shape == x.shape
        assert torch.equal(view.reshape(-1).view(torch.uint8), x.reshape(-1).view(torch.uint8))


def test_15b_offload_pins_its_weight_bytes_not_power_of_two_blocks(monkeypatch):
    """The released 40-layer DiT (bf16) on the meta device, 10 layers resident: the 30 streamed layers are
    pinned as their 20.7 GB (what the estimator prices), not 34.8 GB of per-tensor power-of-two blocks."""
    cfg = DiTConfig.preset("distill")
    with torch.device("meta"):
        m = MagiHumanDiT(cfg, dtype=torch.bfloat16)
    pins = _Pins(monkeypatch)
    enable_block_offload(m, "meta", blocks_on_device=10, offload_device="meta", pin_memory=True, prefetch=False)
    weights = sum(x.numel() * x.element_size() for x in _streamed_tensors(m, 10))
    assert pins.allocations == 1
    assert weights <= pins.pinned_bytes <= weights + 30 * HOST_ARENA_SLACK_PER_LAYER
    assert 20.7e9 < pins.pinned_bytes < 20.8e9
    per_tensor = sum(_pow2(x.numel() * x.element_size()) for x in _streamed_tensors(m, 10))
    assert per_tensor > 1.65 * weights  # what pinning each tensor on its own reserves (34.8 GB)
    priced = offload_weight_bytes(dit_weight_storage(cfg, "bf16"), 10)
    assert priced["streamed_per_forward"] == weights
    assert pins.pinned_bytes <= priced["host"] == weights + 30 * HOST_ARENA_SLACK_PER_LAYER


@torch.no_grad()
def test_pinning_refused_warns_and_streams_pageable(monkeypatch, caplog):
    m = MagiHumanDiT(DiTConfig.preset("tiny"), compute_dtype=torch.float32)
    x = (torch.randn(1, 48, 2, 4, 4), torch.randn(1, 5, 64), torch.randn(1, 4, 64))
    ref = m(*x, [4])
    pins = _Pins(monkeypatch, register_error=2)  # cudaErrorMemoryAllocation
    with caplog.at_level(logging.WARNING, logger="magihuman.offload"):
        state = enable_block_offload(m, "cpu", blocks_on_device=2, pin_memory=True, copy_always=True)
    assert "could not pin" in caplog.text and not state.arena.pinned and not pins.pin_calls
    assert torch.equal(m(*x, [4])[0], ref[0])
    state.remove()
    assert pins.unregistered == []


@pytest.mark.parametrize("pin", [None, False])
def test_no_arena_when_not_pinning(monkeypatch, pin):
    """CPU target (or pin_memory=False): nothing is pinned or copied into an arena."""
    pins = _Pins(monkeypatch)
    m = MagiHumanDiT(DiTConfig.preset("tiny"), compute_dtype=torch.float32)
    state = enable_block_offload(m, "cpu", blocks_on_device=1, pin_memory=pin)
    assert state.arena is None and pins.allocations == 0
