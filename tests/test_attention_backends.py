"""Optional flash / sage backends: clear errors when unusable; layout and GQA handling checked with
stand-in modules (the real kernels need CUDA, which CI does not have)."""

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from magihuman import attention as A


@pytest.fixture(autouse=True)
def _restore():
    saved = dict(A._BACKENDS)
    yield
    A._BACKENDS.clear()
    A._BACKENDS.update(saved)


def _blhd_reference(q, k, v, causal=False):
    """A flash_attn_func stand-in: [B, L, H, D] layout, GQA by head groups, independent of SDPA's GQA flag."""
    assert not causal
    rep = q.shape[2] // k.shape[2]
    qh, kh, vh = (t.transpose(1, 2).float() for t in (q, k, v))
    kh, vh = kh.repeat_interleave(rep, dim=1), vh.repeat_interleave(rep, dim=1)
    return (qh @ kh.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1).matmul(vh).transpose(1, 2).to(q.dtype)


def _pretend_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(A, "_half_precision", lambda name, q: None)  # CPU tensors stand in for CUDA ones


@pytest.mark.parametrize("name", ["flash", "sage"])
def test_optional_backend_without_cuda_is_a_clear_error(name, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=f"'{name}' runs on CUDA only.*sdpa"):
        A.resolve_attention_backend(name)
    assert name not in A.available_attention_backends()


@pytest.mark.parametrize("name,package", [("flash", "flash-attn"), ("sage", "sageattention")])
def test_optional_backend_missing_package_is_a_clear_error(name, package, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for mod in ("flash_attn_interface", "flash_attn", "sageattention"):
        monkeypatch.setitem(sys.modules, mod, None)  # import fails even where installed
    with pytest.raises(ValueError, match=f"'{name}' needs the .*{package}.*not installed"):
        A.resolve_attention_backend(name)


@pytest.mark.parametrize("module_name,returns_tuple", [("flash_attn", False), ("flash_attn_interface", True)])
def test_flash_backend_layout_and_gqa(module_name, returns_tuple, monkeypatch):
    _pretend_cuda(monkeypatch)
    fake = types.ModuleType(module_name)
    fake.flash_attn_func = (lambda q, k, v, causal=False: (_blhd_reference(q, k, v, causal), None)) if returns_tuple \
        else _blhd_reference
    monkeypatch.setitem(sys.modules, "flash_attn_interface", fake if module_name == "flash_attn_interface" else None)
    monkeypatch.setitem(sys.modules, "flash_attn", fake)
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 6, 9, 16, generator=g), torch.randn(2, 2, 9, 16, generator=g), torch.randn(2, 2, 9, 16, generator=g)
    ref = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    torch.testing.assert_close(A.attention(q, k, v, backend="flash"), ref, atol=1e-5, rtol=1e-5)
    # local-window attention runs on it (dense calls on gathered keys, no masks with 1-frame blocks)
    win = A.LocalWindow(6, 2, 1)
    ref_local = A.local_window_attention(q, k, v, win)
    torch.testing.assert_close(A.local_window_attention(q, k, v, win, backend="flash"), ref_local, atol=1e-5,
                               rtol=1e-5)
    with pytest.raises(ValueError, match="takes no mask"):
        A.attention(q, k, v, torch.ones(1, 1, 9, 9, dtype=torch.bool), backend="flash")


def test_sage_backend_passes_nhd_layout(monkeypatch):
    _pretend_cuda(monkeypatch)
    seen = {}

    def sageattn(q, k, v, tensor_layout="HND", is_causal=False):
        seen.update(layout=tensor_layout, causal=is_causal, shapes=(q.shape, k.shape))
        return _blhd_reference(q, k, v)

    monkeypatch.setitem(sys.modules, "sageattention", types.SimpleNamespace(sageattn=sageattn))
    q, k = torch.randn(1, 4, 5, 8), torch.randn(1, 2, 5, 8)
    out = A.attention(q, k, k, backend="sage")
    assert seen == {"layout": "NHD", "causal": False, "shapes": ((1, 5, 4, 8), (1, 5, 2, 8))}
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, k, enable_gqa=True), atol=1e-5, rtol=1e-5)


def test_half_precision_check_names_the_fix():
    with pytest.raises(ValueError, match="fp16/bf16 tensors on CUDA.*set_compute_dtype"):
        A._half_precision("flash", torch.zeros(1, dtype=torch.float32))
