import math

import pytest
import torch

from magihuman.attention import attention, register_attention_backend, resolve_attention_backend


def _explicit(q, k, v, mask=None):
    """Per-head loop: query head h reads kv head h // (Hq // Hkv); softmax(q k^T / sqrt(D)) v."""
    b, hq, n, d = q.shape
    rep = hq // k.shape[1]
    out = torch.zeros(b, hq, n, d, dtype=torch.float64)
    for bi in range(b):
        for h in range(hq):
            s = q[bi, h].double() @ k[bi, h // rep].double().T / math.sqrt(d)
            if mask is not None:
                m = mask.expand(b, hq, n, n)[bi, h]
                s = s.masked_fill(~m, float("-inf"))
            out[bi, h] = s.softmax(-1) @ v[bi, h // rep].double()
    return out


def test_gqa_matches_explicitly_repeated_heads():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 6, 7, 8, generator=g)
    k = torch.randn(2, 2, 7, 8, generator=g)
    v = torch.randn(2, 2, 7, 8, generator=g)
    out = attention(q, k, v)
    assert out.shape == (2, 6, 7, 8)
    torch.testing.assert_close(out.double(), _explicit(q, k, v), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_boolean_mask_per_batch_and_query(backend):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 4, 6, 8, generator=g)
    k = torch.randn(2, 1, 6, 8, generator=g)
    v = torch.randn(2, 1, 6, 8, generator=g)
    mask = torch.rand(2, 1, 6, 6, generator=g) > 0.4
    mask[..., 0] = True  # every query keeps at least one key
    torch.testing.assert_close(attention(q, k, v, mask, backend=backend).double(), _explicit(q, k, v, mask),
                               atol=1e-5, rtol=1e-5)
    keys = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])[:, None, None, :]
    torch.testing.assert_close(attention(q, k, v, keys, backend=backend).double(), _explicit(q, k, v, keys),
                               atol=1e-5, rtol=1e-5)


def test_registry_routes_calls_and_rejects_unknown_names():
    calls = []

    def fake(q, k, v, mask=None):
        calls.append(mask)
        return torch.zeros_like(q)

    register_attention_backend("test_fake", fake)
    q = torch.randn(1, 2, 3, 4)
    assert torch.equal(attention(q, q[:, :1], q[:, :1], backend="test_fake"), torch.zeros_like(q)) and calls == [None]
    assert resolve_attention_backend("test_fake") is fake
    assert not torch.equal(attention(q, q[:, :1], q[:, :1]), torch.zeros_like(q)) and calls == [None]  # default: sdpa
    with pytest.raises(ValueError, match="unknown attention backend 'nope'.*sdpa"):
        resolve_attention_backend("nope")
    with pytest.raises(TypeError, match="callable"):
        register_attention_backend("bad", 3)


def test_input_checks():
    q = torch.randn(1, 3, 4, 8)
    with pytest.raises(ValueError, match="not a multiple"):
        attention(q, torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8))
    with pytest.raises(TypeError, match="boolean"):
        attention(q, q, q, torch.zeros(1, 1, 4, 4))
