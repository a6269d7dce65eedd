"""Regional torch.compile of the DiT layers: one graph per layer kind, compiled == eager."""

import pytest
import torch
from torch._dynamo.utils import counters

from magihuman.compile import compile_dit_blocks, is_compiled, layer_kinds, uncompile_dit_blocks
from magihuman.models.dit import DiTConfig, MagiHumanDiT


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _inputs(cfg, t=3, n=9, l=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = cfg.video_in_channels // 4
    return (torch.randn(1, c, t, 4, 4, generator=g), torch.randn(1, n, cfg.audio_in_channels, generator=g),
            torch.randn(1, l, cfg.text_in_channels, generator=g))


def test_layer_kinds_of_the_released_configs():
    def kinds(name):
        return len(layer_kinds(MagiHumanDiT(DiTConfig.preset(name), device="meta")))

    assert kinds("base") == 3  # mm+gelu7 (0-3), swiglu7 (4-35), mm+swiglu7 (36-39)
    assert kinds("sr_1080p") == 5  # local/global split the shared and the mm+gelu7 layers
    assert layer_kinds(MagiHumanDiT(DiTConfig.preset("tiny"), device="meta")) == {
        (True, True, False, False): [0], (False, False, False, False): [1, 2], (True, False, False, False): [3]}


@torch.no_grad()
def test_tiny_compiles_one_graph_per_kind_and_reuses_them():
    cfg = DiTConfig.preset("tiny")
    m = MagiHumanDiT(cfg, compute_dtype=torch.float32)
    v, a, t = _inputs(cfg)
    ref = m(v, a, t, [5])
    compile_dit_blocks(m, backend="aot_eager")  # dynamo + AOT tracing without the C++ compile cost
    out = m(v, a, t, [5])
    assert counters["stats"]["unique_graphs"] == 3  # 4 layers, 3 kinds: layers 1 and 2 share a graph
    m(v, a, t, [5])
    m(*_inputs(cfg, seed=1), [5])  # same shapes, new values: no recompile
    assert counters["stats"]["unique_graphs"] == 3
    torch.testing.assert_close(out[0], ref[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out[1], ref[1], atol=1e-6, rtol=1e-6)
    uncompile_dit_blocks(m)
    assert not any(is_compiled(layer) for layer in m.block.layers)
    assert torch.equal(m(v, a, t, [5])[0], ref[0])


@torch.no_grad()
def test_inductor_compiled_equals_eager_fp32():
    """The real CPU compile (inductor, C++), on the smallest config with a single layer kind."""
    cfg = DiTConfig(num_layers=2, hidden_size=64, head_dim=16, num_query_groups=2, video_in_channels=16,
                    audio_in_channels=8, text_in_channels=24, mm_layers=[], gelu7_layers=[])
    m = MagiHumanDiT(cfg, compute_dtype=torch.float32)
    v, a, t = _inputs(cfg)
    ref = m(v, a, t, [5])
    compile_dit_blocks(m)
    out = m(v, a, t, [5])
    assert counters["stats"]["unique_graphs"] == 1
    torch.testing.assert_close(out[0], ref[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], ref[1], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_local_window_layers_compile_without_breaks_and_offload_hooks_stay_outside():
    from magihuman.offload import enable_block_offload

    cfg = DiTConfig.preset("tiny_sr_1080p")  # layers 0-2 local, 3 global
    m = MagiHumanDiT(cfg, compute_dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    v, a, t = torch.randn(2, 48, 5, 4, 4, generator=g), torch.randn(2, 9, 64, generator=g), torch.randn(2, 5, 64, generator=g)
    kw = dict(coords="v1", frame_receptive_field=1)
    ref = m(v, a, t, [5, 3], **kw)
    compile_dit_blocks(m, backend="aot_eager")
    out = m(v, a, t, [5, 3], **kw)
    assert counters["stats"]["unique_graphs"] == len(layer_kinds(m)) == 3 and not counters["graph_break"]
    torch.testing.assert_close(out[0], ref[0], atol=1e-6, rtol=1e-6)
    state = enable_block_offload(m, "cpu", blocks_on_device=1, copy_always=True)
    out = m(v, a, t, [5, 3], **kw)
    assert state.loads == 3 and counters["stats"]["unique_graphs"] == 3  # hooks run eagerly, no recompiles
    torch.testing.assert_close(out[0], ref[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out[1], ref[1], atol=1e-6, rtol=1e-6)
