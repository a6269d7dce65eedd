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
