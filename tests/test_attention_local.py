"""Frame-window local attention (no L x L mask) against dense attention with a loop-built mask."""

import math

import pytest
import torch

import magihuman.models.dit as dit_mod
from magihuman.attention import LocalWindow, attention, local_window_attention, register_attention_backend
from magihuman.models.dit import DiTConfig, MagiHumanDiT


def loop_mask(t, hw, n_other, frf, key_valid=None):
    """[B or 1, 1, L, L] mask from the rule, one (query, key) pair at a time."""
    n = t * hw + n_other
    m = torch.ones(n, n, dtype=torch.bool)
    for a in range(t * hw):
        for b in range(t * hw):
            if abs(a // hw - b // hw) > frf:
                m[a, b] = False
    m = m[None, None]
    if key_valid is not None:
        m = m & key_valid[:, None, None, :]
    return m


def qkv(b, hq, hkv, n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, hq, n, d, generator=g), torch.randn(b, hkv, n, d, generator=g),
            torch.randn(b, hkv, n, d, generator=g))


@pytest.mark.parametrize("t,frf,block", [(5, 1, 1), (5, 1, 2), (5, 0, 3), (6, 2, 4), (7, 1, 7), (4, 3, 1), (4, 5, 2)])
def test_window_equals_loop_mask(t, frf, block):
    hw, n_other = 3, 4
    q, k, v = qkv(1, 4, 2, t * hw + n_other, 8)
    win = LocalWindow(t * hw, hw, frf, block)
    ref = attention(q, k, v, loop_mask(t, hw, n_other, frf))
    torch.testing.assert_close(local_window_attention(q, k, v, win), ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("block", [1, 2])
def test_window_with_padded_keys_per_sample(block):
    t, hw, n_other, frf = 5, 2, 5, 1
    q, k, v = qkv(2, 4, 1, t * hw + n_other, 8, seed=3)
    key_valid = torch.ones(2, t * hw + n_other, dtype=torch.bool)
    key_valid[1, -3:] = False  # sample 1 has 3 padded text keys
    k[1, :, -3:] = 1e4  # garbage that must not leak
    ref = attention(q, k, v, loop_mask(t, hw, n_other, frf, key_valid))
    out = local_window_attention(q, k, v, LocalWindow(t * hw, hw, frf, block), key_valid)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)


def test_no_l_by_l_tensor_reaches_the_backend():
    t, hw, n_other, frf, hq, hkv = 9, 4, 6, 1, 4, 2
    n = t * hw + n_other
    calls = []

    def recording(q, k, v, mask=None):
        calls.append((q.shape[2], k.shape[2], None if mask is None else tuple(mask.shape)))
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)

    register_attention_backend("test_recording", recording)
    q, k, v = qkv(1, hq, hkv, n, 8)
    for block in (1, 2, 3):
        calls.clear()
        local_window_attention(q, k, v, LocalWindow(t * hw, hw, frf, block), backend="test_recording")
        video_calls = calls[:-1]
        assert calls[-1] == (n_other, n, None)  # audio/text queries: all keys, no mask
        assert len(video_calls) == math.ceil(t / block)
        for nq, nk, mask in video_calls:
            assert nq <= block * hw and nk <= (block + 2 * frf) * hw + n_other
            if block == 1:
                assert mask is None  # one frame per block: no mask at all
            elif mask is not None:
                assert mask == (1, 1, nq, nk)
            assert nq * nk < n * n


def test_local_window_validation():
    with pytest.raises(ValueError, match="do not split into frames"):
        LocalWindow(10, 3, 1)
    with pytest.raises(ValueError, match="block_frames"):
        LocalWindow(9, 3, 1, 0)
    with pytest.raises(ValueError, match="frame_receptive_field"):
        LocalWindow(9, 3, -1)
    assert LocalWindow(9, 3, 2).is_global and not LocalWindow(9, 3, 1).is_global


# ------------------------------------------------------------------ inside the DiT

def _model():
    cfg = DiTConfig(num_layers=3, hidden_size=64, head_dim=16, num_query_groups=2, video_in_channels=16,
                    audio_in_channels=8, text_in_channels=24, mm_layers=[0], gelu7_layers=[0],
                    local_attn_layers=[0, 1])
    m = MagiHumanDiT(cfg, compute_dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
    return m


def _inputs(b=2, t=6, n=5, l=4):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(b, 4, t, 4, 4, generator=g), torch.randn(b, n, 8, generator=g), torch.randn(b, l, 24, generator=g))


@pytest.mark.parametrize("block", [1, 2, 4])
def test_dit_window_mode_equals_mask_mode(block, monkeypatch):
    m = _model()
    v, a, t = _inputs()
    with torch.no_grad():
        m.set_local_attention("mask")
        ref = m(v, a, t, [4, 2], coords="v1", frame_receptive_field=1)
        far = m(v, a, t, [4, 2], coords="v1", frame_receptive_field=-1)

        def no_full_mask(*args, **kw):
            raise AssertionError("window mode must not build the L x L mask")

        monkeypatch.setattr(dit_mod, "local_attention_allowed", no_full_mask)
        m.set_local_attention("window", block_frames=block)
        out = m(v, a, t, [4, 2], coords="v1", frame_receptive_field=1)
    torch.testing.assert_close(out[0], ref[0], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], ref[1], atol=2e-5, rtol=1e-5)
    assert (out[0] - far[0]).abs().max() > 1e-3  # the window matters at this size


def test_set_local_attention_validation():
    m = _model()
    with pytest.raises(ValueError, match="local attention mode"):
        m.set_local_attention("sparse")
    with pytest.raises(ValueError, match="block_frames"):
        m.set_local_attention("window", 0)


def test_dit_window_mode_calls_backend_without_any_mask():
    m = _model()
    v, a, t = _inputs()
    seen = []

    def recording(q, k, v_, mask=None):
        seen.append((q.shape[0], k.shape[2], mask))
        return torch.nn.functional.scaled_dot_product_attention(q, k, v_, enable_gqa=True)

    register_attention_backend("test_recording_dit", recording)
    m.set_attention_backend("test_recording_dit")
    with torch.no_grad():
        m(v, a, t, [4, 2], coords="v1", frame_receptive_field=1)
    assert seen and all(mask is None for *_, mask in seen)
    assert all(b == 1 for b, *_ in seen)  # padded batch: one call per sample, keys sliced to its length
    n_real = [6 * 4 + 5 + 4, 6 * 4 + 5 + 2]
    assert {nk for _, nk, _ in seen if nk in n_real} == set(n_real)  # global layer 2 and audio/text queries
