"""Block offload hooks on CPU: device == offload device, with real copies forced (``copy_always``), so
the swapping of every streamed layer's tensors is observable. The CUDA side-stream prefetch cannot
run here."""

import pytest
import torch

from magihuman.models.dit import DiTConfig, MagiHumanDiT
from magihuman.offload import enable_block_offload


def _model_and_inputs():
    cfg = DiTConfig.preset("tiny")
    m = MagiHumanDiT(cfg, compute_dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    return m, (torch.randn(1, 48, 2, 4, 4, generator=g), torch.randn(1, 5, 64, generator=g),
               torch.randn(1, 4, 64, generator=g))


def _ptrs(layer):
    return [p.data_ptr() for p in layer.parameters()]


@torch.no_grad()
def test_streamed_layers_are_swapped_in_and_out_and_outputs_match():
    m, (v, a, t) = _model_and_inputs()
    ref = m(v, a, t, [4])
    layers = m.block.layers
    state = enable_block_offload(m, "cpu", blocks_on_device=1, copy_always=True)
    assert state.resident == [0] and sorted(state.streamed) == [1, 2, 3]
    host = {i: _ptrs(layers[i]) for i in range(4)}
    seen = {}

    def spy(i):
        def hook(module, args):  # runs after the offload pre-hook
            seen[i] = (_ptrs(module), state.loaded_now)
        return hook

    spies = [layer.register_forward_pre_hook(spy(i)) for i, layer in enumerate(layers)]
    out = m(v, a, t, [4])
    assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])
    assert seen[0] == (host[0], 0)  # resident: never touched, nothing streamed yet
    for i in (1, 2, 3):
        ptrs, loaded = seen[i]
        assert loaded == 1  # exactly this layer is in, the previous one already left
        assert not set(ptrs) & set(host[i])  # it computes on fresh copies
    assert {i: _ptrs(layers[i]) for i in range(4)} == host  # after the forward: back to host tensors
    assert state.loads == 3 and state.max_loaded == 1 and state.prefetched == 0
    m(v, a, t, [4])
    assert state.loads == 6
    for s in spies:
        s.remove()
    state.remove()
    assert m._magi_block_offload is None
    out2 = m(v, a, t, [4])
    assert state.loads == 6 and torch.equal(out2[0], ref[0])


@torch.no_grad()
def test_all_layers_resident_streams_nothing():
    m, (v, a, t) = _model_and_inputs()
    ref = m(v, a, t, [4])
    state = enable_block_offload(m, "cpu", blocks_on_device=4)
    assert state.streamed == {} and torch.equal(m(v, a, t, [4])[0], ref[0]) and state.loads == 0


def test_offload_argument_errors():
    m, _ = _model_and_inputs()
    with pytest.raises(ValueError, match=r"blocks_on_device must lie in 0\.\.4"):
        enable_block_offload(m, "cpu", blocks_on_device=5)
    state = enable_block_offload(m, "cpu", blocks_on_device=2)
    with pytest.raises(RuntimeError, match="already enabled"):
        enable_block_offload(m, "cpu", blocks_on_device=2)
    state.remove()
    enable_block_offload(m, "cpu", blocks_on_device=2).remove()


@torch.no_grad()
def test_prefetch_order_with_stand_in_cuda_streams(monkeypatch):
    """The CUDA prefetch protocol, replayed with stand-ins for streams and events (no GPU here):
    layer i's pre-hook starts copying layer i+1 on the side stream, and layer i+1 waits on that
    copy's event before using it."""
    log = []

    class Event:
        def record(self, stream):
            log.append(("record", stream))

    class Stream:
        def __init__(self, name):
            self.name = name

        def wait_event(self, ev):
            log.append(("wait", self.name))

    class StreamCtx:
        def __init__(self, s):
            self.s = s

        def __enter__(self):
            log.append(("enter", self.s.name))

        def __exit__(self, *a):
            log.append(("exit", self.s.name))

    main = Stream("main")
    monkeypatch.setattr(torch.cuda, "stream", StreamCtx)
    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: main)
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, s: log.append(("record_stream", s.name)),
                        raising=False)
    m, (v, a, t) = _model_and_inputs()
    ref = m(v, a, t, [4])
    state = enable_block_offload(m, "cpu", blocks_on_device=1, copy_always=True)
    state.side_stream = Stream("side")  # what enable_block_offload creates on CUDA
    order = []
    for i, layer in enumerate(m.block.layers):
        layer.register_forward_pre_hook(lambda mod, args, i=i: order.append((i, sorted(
            j for j, s in state.streamed.items() if s.pending is not None))))
    out = m(v, a, t, [4])
    assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])
    assert state.prefetched == 3 and state.loads == 3
    # when layer i runs, layer i+1 (if streamed) is already being copied
    assert order == [(0, [1]), (1, [2]), (2, [3]), (3, [])]
    assert [e for e in log if e[0] in ("enter", "wait")] == [("enter", "side"), ("wait", "main")] * 3
    assert all(s == "main" for kind, s in log if kind == "record_stream")
