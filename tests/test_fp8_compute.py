"""fp8 matmuls (torch._scaled_mm) for fp8-stored block linears: numerics against bf16 compute on the same fp8
weights, both activation scalings, the fallback for widths the kernel does not take, and the switches."""

from __future__ import annotations

import pytest
import torch

from magihuman.models.dit import DiTConfig, MagiHumanDiT
from magihuman.quant import fp8 as fp8_mod
from magihuman.quant.fp8 import fp8_linear, fp8_mm_supported, quantize_fp8

pytestmark = pytest.mark.skipif(not fp8_mm_supported(torch.device("cpu")),
                                reason="this torch build has no fp8 torch._scaled_mm on the CPU")


def _model():
    m = MagiHumanDiT(DiTConfig.preset("tiny"), dtype=torch.float32, compute_dtype=torch.bfloat16)
    m.init_random_(4, std=0.05)
    return m.quantize_block_linears_fp8_()


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 48, 2, 4, 4, generator=g), torch.randn(2, 5, 64, generator=g), \
        torch.randn(2, 4, 64, generator=g), [4, 3]


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("mode", ["tensor", "token"])
def test_fp8_linear_against_dequantised_matmul(mode):
    g = torch.Generator().manual_seed(0)
    w8, ws = quantize_fp8(torch.randn(64, 96, generator=g) * 0.1)
    x = torch.randn(3, 10, 96, generator=g) * torch.linspace(0.1, 5, 10)[None, :, None]  # rows of varied scale
    ref = torch.nn.functional.linear(x.to(torch.bfloat16), (w8.float() * ws).to(torch.bfloat16))
    out = fp8_linear(x, w8, ws, torch.bfloat16, mode)
    assert out.shape == (3, 10, 64) and out.dtype == torch.bfloat16
    assert _rel(out, ref) < {"tensor": 0.08, "token": 0.05}[mode]
    assert fp8_linear(x[..., :90], w8[:, :90].contiguous(), ws, torch.bfloat16, mode) is None  # K % 16: no kernel


def test_model_fp8_compute_error_against_bf16_compute(monkeypatch):
    model = _model()
    with torch.no_grad():
        ref = model(*_inputs())  # bf16 matmuls on the dequantised fp8 weights
    calls = []
    real = fp8_mod.fp8_linear
    monkeypatch.setattr("magihuman.models.dit.fp8_linear", lambda *a, **k: calls.append(1) or real(*a, **k))
    errors = {}
    for mode in ("tensor", "token"):
        assert model.set_fp8_compute(mode) == mode
        calls.clear()
        with torch.no_grad():
            out = model(*_inputs())
        assert calls  # the fp8 kernel ran (every block linear but the swiglu down_proj of width 340)
        errors[mode] = (_rel(out[0], ref[0]), _rel(out[1], ref[1]))
        assert max(errors[mode]) < 0.1, errors
    assert errors["token"][0] <= errors["tensor"][0] * 1.5  # per-token scales are at least as good
    model.set_fp8_compute("off")
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model(*_inputs()), ref))


def test_switches():
    model = _model()
    assert model.set_fp8_compute("auto") == "off"  # off by default on the CPU
    with pytest.raises(ValueError, match="fp8 compute must be one of"):
        model.set_fp8_compute("fast")
    plain = MagiHumanDiT(DiTConfig.preset("tiny"), dtype=torch.float32)
    plain.set_fp8_compute("token")  # no fp8 weights: nothing to do, same result as off
    with torch.no_grad():
        a = plain(*_inputs())
    plain.set_fp8_compute("off")
    with torch.no_grad():
        b = plain(*_inputs())
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_host_patches_on_fp8_weights_are_never_skipped_or_doubled():
    """A host (ComfyUI) that patches fp8 weights after decoding: its cast path is asked for the raw e4m3 bytes
    only (a cast path that patched them would add the LoRA before the scale and once more after), and fp8
    compute steps aside for a patched weight instead of dropping the patch."""
    from magihuman import ops
    from magihuman.models.dit import block_linear

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32, bias=False)
    w8, scale = quantize_fp8(lin.weight.detach())
    ops.set_fp8_weight(lin, w8, scale)
    delta = torch.randn(32, 64) * 0.1
    asked = []

    class Host:
        @staticmethod
        def fetch_weight(module, dtype, device):
            asked.append(dtype)
            return module.weight.to(device=device, dtype=dtype)

        @staticmethod
        def decoded_patches(module):
            return [lambda w: w + delta.to(w.dtype)]

    ops.tag_operations(lin, Host)
    expected = w8.float() * scale + delta
    got = ops.linear_weight(lin, torch.float32, torch.device("cpu"))
    assert asked == [None] and torch.allclose(got, expected, atol=1e-6)
    assert ops.has_patches(lin)
    x = torch.randn(1, 5, 64)
    ref = torch.nn.functional.linear(x, expected)
    for mode in ("off", "tensor", "token"):
        torch.testing.assert_close(block_linear(lin, x, torch.float32, None, mode), ref, rtol=1e-5, atol=1e-5)
