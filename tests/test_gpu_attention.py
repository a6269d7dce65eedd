"""GPU attention paths proven on the CPU: grouped-query SDPA never falls to torch's O(L^2) math kernel,
and "auto" compute dtype never picks an emulated bf16.

CUDA tensors are fake (``FakeTensorMode``: shapes, dtypes and a ``cuda`` device, no data), the
capability queries are patched to the card being modelled, and ``F.scaled_dot_product_attention`` is
wrapped to record what the engine hands torch.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from magihuman import attention as A
from magihuman import device as D
from magihuman.models import text_encoder as TE


class _OpLog(TorchDispatchMode):
    """Names of the aten ops that run (which SDPA kernel torch picked)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.fixture
def sdpa_calls(monkeypatch):
    """Record (kv heads, enable_gqa, has mask) of every torch SDPA call."""
    calls = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, *args, enable_gqa=False, **kw):
        calls.append((k.shape[1], enable_gqa, attn_mask is not None))
        return real(q, k, v, attn_mask, *args, enable_gqa=enable_gqa, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    return calls


def _gpu(monkeypatch, capability, *, flash_built=True, flash_enabled=True, torch_says=True):
    """Model a CUDA card: its capability, torch's flash build/switch and torch's own flash verdict."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.backends.cuda, "is_flash_attention_available", lambda: flash_built)
    monkeypatch.setattr(torch.backends.cuda, "flash_sdp_enabled", lambda: flash_enabled)
    monkeypatch.setattr(torch.backends.cuda, "can_use_flash_attention", lambda params, debug=False: torch_says)


def _fake_qkv(dtype, hq=8, hkv=2, n=64, d=128):
    q = torch.empty(1, hq, n, d, device="cuda", dtype=dtype)
    k = torch.empty(1, hkv, n, d, device="cuda", dtype=dtype)
    return q, k, torch.empty_like(k)


# card, dtype, mask, head_dim, torch's flash verdict -> does SDPA get the 2 kv heads (native GQA)?
CASES = [
    ("rtx3090 bf16", (8, 6), torch.bfloat16, False, 128, True, True),
    ("rtx4090 fp16", (8, 9), torch.float16, False, 128, True, True),
    ("rtx2080ti fp16", (7, 5), torch.float16, False, 128, True, False),  # Turing: no flash
    ("t4 fp16", (7, 5), torch.float16, False, 64, True, False),
    ("v100 fp16", (7, 0), torch.float16, False, 128, True, False),
    ("rtx3090 fp32", (8, 6), torch.float32, False, 128, True, False),  # flash is fp16/bf16 only
    ("rtx3090 bf16 + mask", (8, 6), torch.bfloat16, True, 128, True, False),  # flash takes no mask
    ("rtx3090 head_dim 320", (8, 6), torch.bfloat16, False, 320, True, False),
    ("rtx3090 head_dim 100", (8, 6), torch.bfloat16, False, 100, True, False),
    ("new arch, older torch", (12, 0), torch.bfloat16, False, 128, False, False),  # torch's own check says no
]


@pytest.mark.parametrize("name,cap,dtype,masked,d,torch_says,native", CASES, ids=[c[0] for c in CASES])
def test_sdpa_repeats_kv_heads_unless_flash_serves_gqa(monkeypatch, sdpa_calls, name, cap, dtype, masked, d,
                                                       torch_says, native):
    _gpu(monkeypatch, cap, torch_says=torch_says)
    with FakeTensorMode():
        q, k, v = _fake_qkv(dtype, d=d)
        mask = torch.ones(1, 1, 64, 64, device="cuda", dtype=torch.bool) if masked else None
        out = A.attention(q, k, v, mask)
    assert out.shape == q.shape
    assert sdpa_calls == [(2, True, masked)] if native else sdpa_calls == [(8, False, masked)]


def test_flash_switched_off_or_not_built_repeats_kv_heads(monkeypatch, sdpa_calls):
    for built, enabled in ((False, True), (True, False)):
        _gpu(monkeypatch, (8, 6), flash_built=built, flash_enabled=enabled)
        with FakeTensorMode():
            q, k, v = _fake_qkv(torch.bfloat16)
            A.attention(q, k, v)
    assert sdpa_calls == [(8, False, False)] * 2


def test_math_fallback_is_what_repeating_avoids(monkeypatch):
    """What a GQA call costs when no fused kernel takes it: torch's math path materialises a
    [B*Hq, L, L] score matrix (here on fake CUDA tensors of a CPU build, where only math exists)."""
    scores = []

    class Bmm(_OpLog):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func is torch.ops.aten.bmm.default:
                scores.append(tuple(out.shape))
            return out

    with FakeTensorMode():
        q, k, v = _fake_qkv(torch.float16, n=4096)
        with Bmm():
            F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    assert (8, 4096, 4096) in scores  # 8 heads x 4096^2 x 2 bytes = 256 MiB for a 4k-token toy


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_keeps_native_gqa_in_the_fused_kernel(sdpa_calls, masked, dtype):
    """On the CPU torch's flash kernel takes GQA (with a mask too): no key/value copies there."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 8, 32, 16, generator=g).to(dtype)
    k, v = (torch.randn(1, 2, 32, 16, generator=g).to(dtype) for _ in range(2))
    mask = (torch.rand(1, 1, 32, 32, generator=g) > 0.3) | torch.eye(32, dtype=torch.bool) if masked else None
    with _OpLog() as log:
        A.attention(q, k, v, mask)
    assert sdpa_calls == [(2, True, masked)]
    assert "aten._scaled_dot_product_flash_attention_for_cpu.default" in log.ops
    assert "aten.bmm.default" not in log.ops


@pytest.mark.parametrize("masked", [False, True])
def test_repeated_kv_heads_give_the_native_gqa_result(monkeypatch, masked):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 6, 40, 16, generator=g)
    k, v = (torch.randn(2, 2, 40, 16, generator=g) for _ in range(2))
    mask = (torch.rand(2, 1, 40, 40, generator=g) > 0.4) | torch.eye(40, dtype=torch.bool) if masked else None
    native = A.sdpa_attention(q, k, v, mask)
    monkeypatch.setattr(A, "flash_serves_gqa", lambda *a: False)
    repeated = A.sdpa_attention(q, k, v, mask)
    torch.testing.assert_close(repeated, native, atol=1e-6, rtol=1e-6)
    # and both are the grouped-query definition: query head h reads kv head h // 3
    ref = torch.empty(2, 6, 40, 16, dtype=torch.float64)
    for h in range(6):
        s = q[:, h].double() @ k[:, h // 3].double().transpose(-1, -2) / math.sqrt(16)
        if mask is not None:
            s = s.masked_fill(~mask[:, 0], float("-inf"))
        ref[:, h] = s.softmax(-1) @ v[:, h // 3].double()
    torch.testing.assert_close(repeated.double(), ref, atol=1e-5, rtol=1e-5)


def test_repeat_kv_heads_is_grouped_query_order():
    k = torch.arange(2)[None, :, None, None].expand(1, 2, 3, 4).float()
    rk, rv = A.repeat_kv_heads(k, k + 10, 6)
    assert rk[0, :, 0, 0].tolist() == [0, 0, 0, 1, 1, 1] and rv[0, :, 0, 0].tolist() == [10, 10, 10, 11, 11, 11]


@pytest.mark.parametrize("cap,native", [((7, 5), False), ((8, 6), True)])
def test_t5gemma_attention_follows_the_same_rule(monkeypatch, sdpa_calls, cap, native):
    """T5Gemma (8 query / 4 kv heads, head_dim 256 in the 9B): a fused kernel on every card."""
    _gpu(monkeypatch, cap)
    with FakeTensorMode():
        q, k, v = _fake_qkv(torch.bfloat16 if native else torch.float16, hq=8, hkv=4, d=256)
        out = TE.attention(q, k, v, None, 256 ** -0.5)
        masked = TE.attention(q, k, v, torch.ones(1, 1, 64, 64, device="cuda", dtype=torch.bool), 256 ** -0.5)
    assert out.shape == masked.shape == q.shape
    assert sdpa_calls == [(4 if native else 8, native, False), (8, False, True)]


def test_t5gemma_cpu_attention_unchanged_numerically():
    g = torch.Generator().manual_seed(2)
    q = torch.randn(1, 8, 20, 32, generator=g)
    k, v = (torch.randn(1, 4, 20, 32, generator=g) for _ in range(2))
    mask = TE.sliding_window_mask(20, 5)[None, None]
    for m in (None, mask):
        rk, rv = A.repeat_kv_heads(k, v, 8)
        ref = F.scaled_dot_product_attention(q, rk, rv, attn_mask=m, scale=0.1)
        torch.testing.assert_close(TE.attention(q, k, v, m, 0.1), ref, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("cap,expected", [((7, 5), torch.float16), ((7, 0), torch.float16), ((6, 1), torch.float16),
                                          ((8, 0), torch.bfloat16), ((8, 9), torch.bfloat16), ((12, 0), torch.bfloat16)])
def test_auto_compute_dtype_never_picks_emulated_bf16(monkeypatch, cap, expected):
    """torch.cuda.is_bf16_supported() is True on a 2080 Ti / T4 / V100 (emulated bf16): fp16 there."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation
                        or cap >= (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: cap)
    monkeypatch.setattr(torch.version, "hip", None)
    assert D.pick_compute_dtype("cuda:0") == expected
    assert D.resolve_compute_dtype("auto", "cuda:1") == expected
