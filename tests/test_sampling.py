"""magihuman.sampling against independent float64 transcriptions of the formulas."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch

from magihuman.sampling import (
    DEFAULT_NEGATIVE_PROMPT,
    UniPCSampler,
    cfg_combine,
    distilled_step,
    flow_schedule,
    make_generator,
    randn_like_gen,
    renoise_audio,
    sr_guidance_scales,
    upscale_and_renoise,
    video_guidance_scale,
    zero_snr_sigmas,
)

SIGMA_MAX = float(np.float32(0.999))  # float32 training sigma_max, widened exactly to float64


def hand_flow_sigmas(n: int, shift: float = 5.0) -> list[float]:
    """The shifted inference sigmas in float64 (before the float32 cast), by the formulas."""
    out = []
    for k in range(n):
        s = SIGMA_MAX + k * (0.0 - SIGMA_MAX) / n
        out.append(shift * s / (1 + (shift - 1) * s))
    return out


# ------------------------------------------------------------------------------- flow schedule

@pytest.mark.parametrize("n", [8, 32])
def test_flow_schedule_matches_hand_formula(n):
    timesteps, sigmas = flow_schedule(n)
    ref = hand_flow_sigmas(n)
    assert timesteps.dtype == torch.int64 and timesteps.shape == (n,)
    assert sigmas.dtype == torch.float32 and sigmas.shape == (n + 1,)
    assert timesteps.tolist() == [math.floor(1000 * s) for s in ref]  # truncated, not rounded
    assert sigmas[-1].item() == 0.0
    expect = torch.tensor(ref, dtype=torch.float64).to(torch.float32)
    assert torch.equal(sigmas[:-1], expect)


def test_flow_schedule_official_values_truncate():
    timesteps, sigmas = flow_schedule(8)
    assert timesteps.tolist() == [999, 972, 937, 892, 833, 749, 624, 416]
    # rounding would differ here: 1000·sigma_0 = 999.79..., so truncation is what gives 999
    assert 999.5 < 1000 * sigmas[0].item() < 1000
    assert flow_schedule(5)[0].tolist() == [999, 952, 882, 768, 555]
    # shift 1 is the plain linear grid from float32(0.999)
    _, s1 = flow_schedule(4, shift=1.0)
    assert s1.tolist() == pytest.approx([SIGMA_MAX, 0.75 * SIGMA_MAX, 0.5 * SIGMA_MAX, 0.25 * SIGMA_MAX, 0.0])
    with pytest.raises(ValueError, match="positive integer"):
        flow_schedule(0)


# ------------------------------------------------------------------------------- distilled step

def test_distilled_step_hand_arithmetic():
    x = torch.tensor([1.0, -2.0, 0.5])
    v = torch.tensor([0.5, 1.0, -1.0])
    eps = torch.tensor([0.25, -0.75, 2.0])
    out = distilled_step(v, x, 0.5, 0.25, eps)
    # x0 = x - 0.5 v = [0.75, -2.5, 1.0];  0.25 eps + 0.75 x0
    assert out.tolist() == [0.0625 + 0.5625, -0.1875 - 1.875, 0.5 + 0.75]
    out_t = distilled_step(v, x, torch.tensor(0.5), torch.tensor(0.25, dtype=torch.float64), eps)
    assert torch.equal(out, out_t) and out_t.dtype == torch.float32


def test_distilled_step_perfect_velocity_lands_on_the_path():
    g = torch.Generator().manual_seed(0)
    x0, eps0, eps1 = (torch.randn(2, 3, 4, generator=g, dtype=torch.float64) for _ in range(3))
    _, sigmas = flow_schedule(8)
    s, s_next = sigmas[2].item(), sigmas[3].item()
    x = (1 - s) * x0 + s * eps0
    out = distilled_step(eps0 - x0, x, s, s_next, eps1)
    torch.testing.assert_close(out, (1 - s_next) * x0 + s_next * eps1, rtol=0, atol=1e-7)
    # the last step (sigma_next = 0) returns the clean estimate
    torch.testing.assert_close(distilled_step(eps0 - x0, x, s, 0.0, eps1), x0, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="noise has shape"):
        distilled_step(eps0 - x0, x, s, s_next, eps1[:1])


# ------------------------------------------------------------------------------- UniPC

def unipc_reference(sigmas: list[float], x: torch.Tensor, velocity_at) -> tuple[torch.Tensor, list]:
    """UniPC-2 (bh2, data prediction, UniC corrector, warm-up and order-1 final step), all
    scalar coefficients in plain float64 Python math; returns the final sample and the trajectory."""
    n = len(sigmas) - 1

    def lam(s):
        return math.inf if s == 0 else math.log(1 - s) - math.log(s)

    def coeffs(s_to, s_from):
        h = lam(s_to) - lam(s_from)
        hh = -h
        e = math.expm1(hh)  # h·phi_1 and B(h) (bh2)
        return h, hh, e, e

    x0s: list[torch.Tensor] = []
    prev_sample, prev_order = None, None
    path = []
    for i in range(n):
        s_i = sigmas[i]
        m_i = x - s_i * velocity_at(i, x)
        if i > 0:  # UniC: redo the last step with the new prediction m_i
            s_prev = sigmas[i - 1]
            h, hh, hphi1, bh = coeffs(s_i, s_prev)
            base = (s_i / s_prev) * prev_sample - (1 - s_i) * hphi1 * x0s[-1]
            d_t = m_i - x0s[-1]
            if prev_order == 1:
                x = base - (1 - s_i) * bh * 0.5 * d_t
            else:
                rk = (lam(sigmas[i - 2]) - lam(s_prev)) / h
                d_1 = (x0s[-2] - x0s[-1]) / rk
                g1 = hphi1 / hh - 1
                g2 = g1 / hh - 0.5
                b1, b2 = g1 / bh, 2 * g2 / bh
                # [[1, 1], [rk, 1]] @ [r0, r1] = [b1, b2]
                r0 = (b1 - b2) / (1 - rk)
                r1 = b1 - r0
                x = base - (1 - s_i) * bh * (r0 * d_1 + r1 * d_t)
        x0s.append(m_i)
        order = 1 if i == 0 or i == n - 1 else 2
        prev_sample, prev_order = x, order
        s_next = sigmas[i + 1]
        h, hh, hphi1, bh = coeffs(s_next, s_i)
        if math.isinf(h):  # sigma_next = 0: the update collapses to the data prediction
            x = m_i
        else:
            x = (s_next / s_i) * x - (1 - s_next) * hphi1 * m_i
            if order == 2:
                rk = (lam(sigmas[i - 1]) - lam(s_i)) / h
                x = x - (1 - s_next) * bh * 0.5 * (x0s[-2] - m_i) / rk
        path.append(x)
    return x, path


@pytest.mark.parametrize("n", [8, 32])
def test_unipc_matches_float64_transcription_on_random_outputs(n):
    g = torch.Generator().manual_seed(n)
    shape = (1, 4, 2, 3, 3)
    x_init = torch.randn(shape, generator=g, dtype=torch.float64)
    outputs = [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(n)]
    sampler = UniPCSampler(n)
    ref_final, ref_path = unipc_reference(sampler.sigmas.tolist(), x_init.clone(), lambda i, _: outputs[i])

    x = x_init.clone()
    for i, t in enumerate(sampler.timesteps):
        x = sampler.step(outputs[i], t, x)
        torch.testing.assert_close(x, ref_path[i], rtol=0, atol=5e-6)  # float32 scalars vs float64
    assert sampler.step_index == n
    torch.testing.assert_close(x, ref_final, rtol=0, atol=5e-6)

    # float32 latents (the real case) stay within float32 accuracy of the same trajectory
    sampler.reset()
    x32 = x_init.float()
    for i, t in enumerate(sampler.timesteps):
        x32 = sampler.step(outputs[i].float(), t, x32)
    assert x32.dtype == torch.float32
    torch.testing.assert_close(x32.double(), ref_final, rtol=0, atol=1e-4)


@pytest.mark.parametrize("n", [5, 8, 32])
def test_unipc_exact_on_a_single_data_point(n):
    """The perfect velocity for one data point keeps every step on the straight path and the
    final sample is that point."""
    g = torch.Generator().manual_seed(1)
    x0_true = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    sampler = UniPCSampler(n)
    sig = sampler.sigmas.tolist()
    x = (1 - sig[0]) * x0_true + sig[0] * eps
    for i, t in enumerate(sampler.timesteps):
        x = sampler.step((x - x0_true) / sig[i], t, x)
        on_path = (1 - sig[i + 1]) * x0_true + sig[i + 1] * eps
        torch.testing.assert_close(x, on_path, rtol=0, atol=1e-6)
    torch.testing.assert_close(x, x0_true, rtol=0, atol=1e-12)


def test_unipc_state_start_index_and_errors():
    g = torch.Generator().manual_seed(2)
    outs = [torch.randn(1, 2, 5, generator=g) for _ in range(8)]
    x_init = torch.randn(1, 2, 5, generator=g)

    def run(sampler, start=0):
        x = x_init.clone()
        for k, t in enumerate(sampler.timesteps[start:]):
            x = sampler.step(outs[k], t, x)
        return x

    s = UniPCSampler(8)
    first = run(s)
    s.reset()
    assert s.step_index is None and torch.equal(run(s), first)  # reset gives a fresh trajectory
    with pytest.raises(RuntimeError, match="reset"):
        s.step(outs[0], s.timesteps[0], x_init)

    # the first timestep positions the sampler (as in the official loop); None means step 0
    s2 = UniPCSampler(8)
    s2.step(outs[0], s2.timesteps[3], x_init)
    assert s2.step_index == 4
    s3 = UniPCSampler(8)
    s3.step(outs[0], None, x_init)
    assert s3.step_index == 1
    with pytest.raises(ValueError, match="not in this sampler's schedule"):
        UniPCSampler(8).step(outs[0], 500, x_init)
    with pytest.raises(ValueError, match="model_output has shape"):
        UniPCSampler(8).step(outs[0][:, :1], 999, x_init)


# ------------------------------------------------------------------------------- ZeroSNR / SR inputs

def test_zero_snr_sigmas_against_float64():
    lo, hi = math.sqrt(0.00085), math.sqrt(0.012)
    acp, prod = [], 1.0
    for i in range(1000):
        beta = (lo + i * (hi - lo) / 999) ** 2
        prod *= 1 - beta
        acp.append(math.sqrt(prod))
    first, last = acp[0], acp[-1]
    ref = torch.tensor([(a - last) * first / (first - last) for a in acp], dtype=torch.float64)

    table = zero_snr_sigmas()
    assert table.dtype == torch.float32 and table.shape == (1000,)
    torch.testing.assert_close(table.double(), ref, rtol=0, atol=2e-6)
    assert table[0].item() == pytest.approx(math.sqrt(1 - 0.00085), abs=1e-6)  # clean end first
    assert table[-1].item() == 0.0
    assert bool((table[1:] < table[:-1]).all())
    assert table[220].item() == pytest.approx(0.8389, abs=1e-4)
    assert table[220].item() == pytest.approx(ref[220].item(), abs=1e-6)


def test_upscale_and_renoise_linear_field_and_corners():
    # a field linear in (t, h, w) is reproduced exactly on the finer align_corners grid
    T, H, W, H2, W2 = 3, 2, 3, 5, 7

    def field(t, h, w):
        return 0.5 + 2.0 * t - 1.5 * h + 0.25 * w

    def coords(*sizes):  # align_corners grid: first and last sample at 0 and 1
        axes = [torch.arange(n, dtype=torch.float64) / (n - 1) for n in sizes]
        return torch.meshgrid(*axes, indexing="ij")

    lat = field(*coords(T, H, W)).expand(1, 2, T, H, W).clone()
    expect = field(*coords(T, H2, W2)).expand(1, 2, T, H2, W2)
    noise = torch.zeros(1, 2, T, H2, W2, dtype=torch.float64)

    up = upscale_and_renoise(lat, (T, H2, W2), noise, 1.0)  # sigma 1: no noise
    assert up.shape == (1, 2, T, H2, W2)
    torch.testing.assert_close(up, expect, rtol=0, atol=1e-12)
    for h, w, h2, w2 in [(0, 0, 0, 0), (0, W - 1, 0, W2 - 1), (H - 1, 0, H2 - 1, 0), (H - 1, W - 1, H2 - 1, W2 - 1)]:
        assert torch.equal(up[..., h2, w2], lat[..., h, w])  # align_corners keeps the corners

    sigma = zero_snr_sigmas()[220]
    eps = torch.randn(1, 2, T, H2, W2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out = upscale_and_renoise(lat, (T, H2, W2), eps, sigma)
    s = sigma.item()
    torch.testing.assert_close(out, expect * s + eps * math.sqrt(1 - s * s), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="noise has shape"):
        upscale_and_renoise(lat, (T, H2, W2), eps[:, :, :1], sigma)
    with pytest.raises(ValueError, match=r"\[B, C, T, H, W\]"):
        upscale_and_renoise(lat[0], (T, H2, W2), eps, sigma)


def test_renoise_audio_hand_arithmetic():
    a = torch.tensor([[[1.0, -1.0], [2.0, 0.0]]], dtype=torch.float64)
    eps = torch.tensor([[[0.5, 0.5], [-1.0, 1.0]]], dtype=torch.float64)
    out = renoise_audio(a, eps)
    torch.testing.assert_close(out, torch.tensor([[[0.65, 0.05], [-0.1, 0.7]]], dtype=torch.float64),
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(renoise_audio(a, eps, scale=0.0), a)
    with pytest.raises(ValueError, match="noise has shape"):
        renoise_audio(a, eps[:, :1])


# ------------------------------------------------------------------------------- guidance

def test_video_guidance_switch():
    assert video_guidance_scale(501) == 5.0
    assert video_guidance_scale(500) == 2.0
    assert video_guidance_scale(torch.tensor(999)) == 5.0
    timesteps, _ = flow_schedule(32)
    scales = [video_guidance_scale(t) for t in timesteps]
    # 32 steps: timesteps above 500 are 999 ... 535 (27 of them)
    assert scales == [5.0] * 27 + [2.0] * 5


def test_cfg_combine_and_sr_trick_table():
    cond = torch.full((1, 2, 15, 1, 1), 3.0)
    uncond = torch.full((1, 2, 15, 1, 1), 1.0)
    assert torch.equal(cfg_combine(cond, uncond, 5.0), torch.full_like(cond, 11.0))
    table = sr_guidance_scales(15)
    assert table.shape == (1, 1, 15, 1, 1) and table.dtype == torch.float32
    assert table.flatten().tolist() == [2.0] * 13 + [3.5] * 2
    mixed = cfg_combine(cond, uncond, table)
    assert mixed[0, 1, :, 0, 0].tolist() == [5.0] * 13 + [8.0] * 2
    assert sr_guidance_scales(4).flatten().tolist() == [2.0] * 4
    assert sr_guidance_scales(15, scale=1.5).flatten().tolist() == [1.5] * 15  # min(2.0, scale)
    assert sr_guidance_scales(15, use_trick=False).flatten().tolist() == [3.5] * 15


def test_negative_prompt_is_the_official_text():
    assert len(DEFAULT_NEGATIVE_PROMPT) == 1719
    digest = hashlib.sha256(DEFAULT_NEGATIVE_PROMPT.encode()).hexdigest()
    assert digest == "4515a21f8d125d12e5a42b23e65bb09f46ea9817567f1834ad556e8cd1852c4b"


# ------------------------------------------------------------------------------- seeds

def test_seeded_noise_reproducible():
    x = torch.empty(2, 3, dtype=torch.float64)
    a = randn_like_gen(x, make_generator(42))
    b = randn_like_gen(x, make_generator(42))
    assert a.dtype == torch.float64 and a.shape == (2, 3) and torch.equal(a, b)
    g = make_generator(42)
    first, second = randn_like_gen(x, g), randn_like_gen(x, g)  # one generator: a fresh draw each call
    assert torch.equal(first, a) and not torch.equal(first, second)
    assert torch.equal(a, torch.randn(2, 3, generator=torch.Generator().manual_seed(42), dtype=torch.float64))
