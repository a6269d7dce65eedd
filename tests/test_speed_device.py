"""Device-aware compute dtype: measured GEMM rates, the choice rule, and that the faster dtype keeps
bf16-reference accuracy."""

import pytest
import torch

from magihuman import device as D
from magihuman.models.dit import DiTConfig, MagiHumanDiT


def test_gemm_rates_measure_and_cache(monkeypatch):
    rates = D.gemm_rates("cpu", (torch.float32, torch.bfloat16), size=64, repeats=1)
    assert set(rates) == {torch.float32, torch.bfloat16} and all(r > 0 for r in rates.values())
    calls = []
    monkeypatch.setattr(D, "_measure", lambda *a: calls.append(a) or 1.0)
    assert D.gemm_rates("cpu", (torch.float32,), size=64) == {torch.float32: rates[torch.float32]}  # cached
    assert calls == []
    assert D.gemm_rates("cpu", (torch.float32,), size=64, refresh=True) == {torch.float32: 1.0}
    assert len(calls) == 1


def test_pick_rule_on_cpu():
    # bf16 units (this machine class): bf16 ~2x fp32 -> bf16; no bf16 units: fp32 several times faster -> fp32
    assert D.pick_compute_dtype("cpu", rates={torch.bfloat16: 130.0, torch.float32: 60.0}) == torch.bfloat16
    assert D.pick_compute_dtype("cpu", rates={torch.bfloat16: 15.0, torch.float32: 60.0}) == torch.float32
    # within the margin the official bf16 numerics win
    assert D.pick_compute_dtype("cpu", rates={torch.bfloat16: 58.0, torch.float32: 60.0}) == torch.bfloat16
    assert D.pick_compute_dtype("cpu", rates={torch.bfloat16: 0.0, torch.float32: 60.0}) == torch.float32


def test_pick_measures_once_and_agrees_with_rates(monkeypatch):
    D._PICK_CACHE.clear()
    calls = []

    def fake(dev, dtypes, *a, **k):
        calls.append(dev)
        return {torch.bfloat16: 10.0, torch.float32: 40.0}

    monkeypatch.setattr(D, "gemm_rates", fake)
    assert D.pick_compute_dtype("cpu") == torch.float32
    assert D.pick_compute_dtype("cpu") == torch.float32
    assert len(calls) == 1
    D._PICK_CACHE.clear()


def test_resolve_names_and_errors():
    assert D.resolve_compute_dtype("bf16") == torch.bfloat16
    assert D.resolve_compute_dtype("FP32") == torch.float32
    assert D.resolve_compute_dtype(torch.float16) == torch.float16
    with pytest.raises(ValueError, match="unknown compute dtype 'int4'.*auto"):
        D.resolve_compute_dtype("int4")


def test_set_compute_dtype_auto_uses_the_pick(monkeypatch):
    m = MagiHumanDiT(DiTConfig.preset("tiny"), device="meta")
    monkeypatch.setattr(D, "pick_compute_dtype", lambda device=None: torch.float32 if str(device) == "cpu" else torch.float16)
    assert m.set_compute_dtype("auto") == torch.float32 and m.compute_dtype == torch.float32
    assert m.set_compute_dtype("bf16") == torch.bfloat16 and m.compute_dtype == torch.bfloat16
    assert m.set_compute_dtype("auto", device="cuda:0") == torch.float16  # the given compute device decides
    with pytest.raises(ValueError, match="unknown compute dtype"):
        m.set_compute_dtype("fast")


def _test_dit_reference():
    """The fp64 per-token reference of tests/test_dit.py (bf16 rounding at the official cast points optional)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("_magi_test_dit_ref", Path(__file__).with_name("test_dit.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.reference_sample


@torch.no_grad()
def test_fp32_compute_stays_within_bf16_reference_error():
    """Both candidate dtypes are acceptable: fp32-compute and bf16-compute outputs differ by no more
    than the error the official bf16 numerics already carry against an fp64 computation."""
    cfg = DiTConfig.preset("tiny")
    m = MagiHumanDiT(cfg)
    g = torch.Generator().manual_seed(0)
    for p in m.parameters():  # O(1) activations, nonzero norm weights
        p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() == 1 else p.shape[-1] ** -0.5))
    v, a, t = torch.randn(1, 48, 3, 4, 4, generator=g), torch.randn(1, 9, 64, generator=g), torch.randn(1, 5, 64, generator=g)
    reference_sample = _test_dit_reference()
    rv, ra = reference_sample(m.state_dict(), cfg, v[0], a[0], t[0], "v2")  # exact (fp64)
    exact = torch.cat([rv.flatten(), ra.flatten()])

    def run(cd):
        m.set_compute_dtype(cd)
        ov, oa = m(v, a, t, [5])
        return torch.cat([ov.flatten(), oa.flatten()]).double()

    bf16, fp32 = run(torch.bfloat16), run(torch.float32)
    err_bf16 = float((bf16 - exact).abs().max())
    assert float((fp32 - exact).abs().max()) < err_bf16 / 10  # fp32 compute is much closer to exact
    assert float((fp32 - bf16).abs().max()) <= 1.1 * err_bf16
