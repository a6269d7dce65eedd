"""fp8 matmuls (torch._scaled_mm) for fp8-stored block linears: numerics against bf16 compute on the same fp8
weights, both activation scalings, every block-linear kind in fp8 (weights stored padded to the kernel's multiples of
16, outputs sliced), the probe and fallback per device / mode / output dtype, and the switches."""

from __future__ import annotations

import pytest
import torch

from magihuman.models.dit import DiTConfig, MagiHumanDiT
from magihuman.quant import fp8 as fp8_mod
from magihuman.quant.fp8 import fp8_linear, fp8_mm_supported, quantize_fp8
from magihuman.storage import BlockLinear

pytestmark = pytest.mark.skipif(not fp8_mm_supported(torch.device("cpu")),
                                reason="this torch build has no fp8 torch._scaled_mm on the CPU")


def _model(cfg=None):
    m = MagiHumanDiT(cfg or DiTConfig.preset("tiny"), dtype=torch.float32, compute_dtype=torch.bfloat16)
    m.init_random_(4, std=0.05)
    return m.store_block_linears_("fp8")


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
    # a narrower input is zero-padded to the (padded) weight: the zero columns change no product
    w_pad = torch.cat([w8[:, :90], torch.zeros(64, 6, dtype=w8.dtype)], dim=1)
    torch.testing.assert_close(fp8_linear(x[..., :90], w_pad, ws, torch.bfloat16, mode),
                               fp8_linear(torch.cat([x[..., :90], torch.zeros(3, 10, 6)], -1), w_pad, ws,
                                          torch.bfloat16, mode))


def test_model_fp8_compute_error_against_bf16_compute(monkeypatch):
    model = _model()
    with torch.no_grad():
        ref = model(*_inputs())  # bf16 matmuls on the dequantised fp8 weights
    calls = []
    real = fp8_mod.fp8_linear
    monkeypatch.setattr("magihuman.storage.layers.fp8_linear", lambda *a, **k: calls.append(1) or real(*a, **k))
    errors = {}
    for mode in ("tensor", "token"):
        assert model.set_fp8_compute(mode) == mode
        calls.clear()
        with torch.no_grad():
            out = model(*_inputs())
        # every block linear runs in fp8, the 260-row qkv and the 340-wide swiglu down_proj included (stored padded
        # to 272 / 352): one kernel call per linear, per expert in the 2 multi-modal layers
        cfg = model.config
        assert len(calls) == 4 * (cfg.num_layers - len(cfg.mm_layers)) + 4 * 3 * len(cfg.mm_layers)
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
    torch.manual_seed(0)
    delta = torch.randn(32, 64) * 0.1
    asked = []

    class HostBlockLinear(BlockLinear):
        def fetch(self, device, dtype):
            asked.append(dtype)
            return super().fetch(device, dtype)

        def host_patches(self):
            return [lambda w: w + delta.to(w.dtype)]

    w = torch.randn(32, 64) * 0.02
    lin = HostBlockLinear(64, 32, storage="fp8")
    lin.store_weight(w)
    w8, scale = quantize_fp8(w)
    expected = w8.float() * scale + delta
    got = lin.decoded_weight(torch.float32)
    assert asked == [torch.float32] and torch.allclose(got, expected, atol=1e-6)
    assert lin.has_patches()
    x = torch.randn(1, 5, 64)
    ref = torch.nn.functional.linear(x, expected)
    lin.compute_dtype = torch.float32
    for mode in ("off", "tensor", "token"):
        lin.fp8_compute = mode
        torch.testing.assert_close(lin(x), ref, rtol=1e-5, atol=1e-5)


def test_awkward_widths_of_the_release_scaled_down_all_run_in_fp8(monkeypatch):
    """Issue gate: a DiT with hidden 1280 has qkv 1802, swiglu up 6824 and down 3412 wide (the release's 7208 / 27304
    / 13652 scaled down; none a multiple of 16): stored padded, all four kinds run through torch._scaled_mm, and the
    result is the padded-free product within fp8 rounding."""
    cfg = DiTConfig(num_layers=2, hidden_size=1280, head_dim=128, num_query_groups=2, mm_layers=[0],
                    gelu7_layers=[0])
    model = _model(cfg)
    shapes = []
    real = torch._scaled_mm
    monkeypatch.setattr(torch, "_scaled_mm", lambda a, b, **k: shapes.append((tuple(a.shape), tuple(b.shape)))
                        or real(a, b, **k))
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(1, 48, 2, 4, 4, generator=g), torch.randn(1, 5, 64, generator=g),
         torch.randn(1, 6, cfg.text_in_channels, generator=g), [6])
    with torch.no_grad():
        ref = model(*x)
        model.set_fp8_compute("token")
        out = model(*x)
    kinds = {(b[1] % 16, b[0] % 16) for _, b in shapes}
    assert kinds == {(0, 0)} and len(shapes) == 4 * 3 + 4  # K and N multiples of 16; every linear and expert
    widths = {b[1] for _, b in shapes}  # N of each product: the padded output widths of the four kinds
    assert {1808, 6832, 1280, 5120} <= widths, widths  # qkv 1802, up 6824 padded; proj / down give h
    ks = {b[0] for _, b in shapes}
    assert 3424 in ks and 1280 in ks, ks  # down_proj's 3412-wide input padded to 3424
    assert max(_rel(a, b) for a, b in zip(out, ref)) < 0.1


def test_rowwise_refusal_is_probed_once_and_falls_back_with_a_log_line(monkeypatch, caplog):
    """Row-wise ("token") scales need a recent torch, a bf16 output on Ada and no Windows: a kernel that refuses is
    found by a probe once per device, mode and output dtype, logged, and the layer dequantises instead: never an
    exception mid-run."""
    import logging

    monkeypatch.setattr(fp8_mod, "_MM_SUPPORT", {})
    real = torch._scaled_mm

    def picky(a, b, *, scale_a, scale_b, out_dtype):
        if scale_a.dim() == 2 and out_dtype != torch.bfloat16:
            raise RuntimeError("Only bf16 high precision output types are supported for row-wise scaling.")
        return real(a, b, scale_a=scale_a, scale_b=scale_b, out_dtype=out_dtype)

    monkeypatch.setattr(torch, "_scaled_mm", picky)
    lin = BlockLinear(64, 32, storage="fp8")
    lin.store_weight(torch.randn(32, 64) * 0.02)
    lin.fp8_compute, lin.compute_dtype = "token", torch.float32
    x = torch.randn(2, 3, 64)
    with caplog.at_level(logging.INFO, logger="magihuman.quant.fp8"):
        out = lin(x)
        lin(x)
    torch.testing.assert_close(out, torch.nn.functional.linear(x, lin.decoded_weight(torch.float32)))
    refusals = [r for r in caplog.records if "not available" in r.getMessage()]
    assert len(refusals) == 1 and "row-wise" in refusals[0].getMessage()
    assert fp8_mod._MM_SUPPORT[("cpu", "token", torch.float32)] is False
    lin.compute_dtype = torch.bfloat16  # bf16 output: the kernel takes it
    assert fp8_mm_supported(torch.device("cpu"), "token", torch.bfloat16)


def test_capability_below_ada_is_refused_without_running_a_kernel(monkeypatch):
    monkeypatch.setattr(fp8_mod, "_MM_SUPPORT", {})
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch, "_scaled_mm", lambda *a, **k: pytest.fail("no kernel may run on sm86"))
    assert fp8_mm_supported(torch.device("cuda", 0), "tensor", torch.bfloat16) is False


def test_generate_with_fp8_weights_and_fp8_compute_runs_every_kind_in_fp8(tiny_dir, tmp_path, monkeypatch, capsys):
    """Issue gate, through the command line: ``generate --dtype fp8 --fp8-compute tensor`` on a DiT with the release's
    awkward widths scaled down (hidden 1280: qkv 1802, swiglu up 6824, down 3412 wide) runs all four block-linear
    kinds in fp8, every step."""
    from magihuman import cli
    from magihuman.checkpoints import write_tiny_dit

    cfg = DiTConfig(num_layers=2, hidden_size=1280, head_dim=128, num_query_groups=2, mm_layers=[0],
                    gelu7_layers=[0], text_in_channels=64)  # the tiny text encoder's width
    dit = write_tiny_dit(tmp_path / "magihuman_distill_mid.safetensors", config=cfg, layout="file",
                         dtype=torch.bfloat16)
    widths = []
    real = torch._scaled_mm
    monkeypatch.setattr(torch, "_scaled_mm", lambda a, b, **k: widths.append((b.shape[0], b.shape[1]))
                        or real(a, b, **k))
    code = cli.main(["generate", "--preset", "tiny", "--prompt", "A man smiles.", "--seconds", "0.2", "--models",
                     str(tiny_dir), "--dit", str(dit), "--dtype", "fp8", "--fp8-compute", "tensor",
                     "--compute-dtype", "bf16", "--output", str(tmp_path / "o.mp4"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    steps = 8  # the distilled sampler
    per_step = 4 * 1 + 4 * 3  # a shared layer and a multi-modal one (3 experts)
    assert len(widths) == steps * per_step
    kinds = {(1280, 1808), (1280, 1280), (1280, 6832), (3424, 1280), (1280, 5120), (5120, 1280)}  # (K, N), padded
    assert set(widths) <= kinds and {(1280, 1808), (1280, 6832), (3424, 1280)} <= set(widths), set(widths)
