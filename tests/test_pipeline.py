"""Stage rules of magihuman.pipeline, checked against hand-derived expectations (tiny models, CPU)."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
import torch.nn.functional as F

from magihuman import pipeline as P
from magihuman.models.dit import MagiHumanDiT
from magihuman.models.dit_config import DiTConfig
from magihuman.sampling import flow_schedule, zero_snr_sigmas

TINY = DiTConfig.preset("tiny")


# ----------------------------------------------------------------------------- helpers


def tiny_dit(variant="distill", seed=0, config=None):
    m = MagiHumanDiT(config or TINY, dtype=torch.float32)
    m.init_random_(seed, std=0.05)
    m.set_compute_dtype(torch.float32)
    m.variant = variant
    return m.eval()


class Recorder(torch.nn.Module):
    """Wraps a DiT and keeps a copy of every input it receives."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config
        self.variant = getattr(inner, "variant", None)
        self.calls = []

    def forward(self, video, audio, text, lens, *, coords, frame_receptive_field):
        self.calls.append(dict(video=video.clone(), audio=audio.clone(), text=text.clone(), lens=list(lens),
                               coords=coords, frf=frame_receptive_field))
        return self.inner(video, audio, text, lens, coords=coords, frame_receptive_field=frame_receptive_field)


class StubDiT(torch.nn.Module):
    """Velocity = text[b, 0, 0] everywhere: conditional (1.0) and negative (0.0) passes are told apart,
    so the guided velocity IS the guidance scale."""

    def __init__(self, variant="base"):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.config = TINY
        self.variant = variant
        self.calls = []

    def forward(self, video, audio, text, lens, *, coords, frame_receptive_field):
        self.calls.append(dict(video=video.clone(), audio=audio.clone(), lens=list(lens), coords=coords,
                               frf=frame_receptive_field))
        s = text[:, 0, 0].float()
        return (s.view(-1, 1, 1, 1, 1).expand_as(video).clone(), s.view(-1, 1, 1).expand_as(audio).clone())


def make_cond(negative=True, channels=64, seed=0, cond_value=None):
    g = torch.Generator().manual_seed(seed)
    e = torch.zeros(1, 640, channels)
    e[0, :7] = torch.randn(7, channels, generator=g)
    n = torch.zeros(1, 640, channels)
    n[0, :10] = torch.randn(10, channels, generator=g)
    if cond_value is not None:  # for StubDiT
        e[0, 0, 0], n[0, 0, 0] = cond_value, 0.0
    return P.TextConditioning(e, [7], n if negative else None, [10] if negative else None, prompt="x")


def small_latent(seconds=0.4, width=64, height=64):
    return P.empty_latents(width, height, seconds)  # 11 frames, T = 3, 4x4 latent cells


def denoised_latent(t=3, h=4, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = 4 * (t - 1) + 1
    return P.AVLatent(video=torch.randn(1, 48, t, h, w, generator=g), audio=torch.randn(1, n, 64, generator=g),
                      denoised=True)


def velocity_from_preview(call_video, x0, sigma):
    return (call_video - x0) / sigma


# ----------------------------------------------------------------------------- empty_latents


def test_empty_latents_snap_shapes_and_frames():
    lat = P.empty_latents(130, 70, 2)
    assert lat.pixel_size == (128, 64)
    assert lat.video.shape == (1, 48, 13, 4, 8) and lat.audio.shape == (1, 51, 64)
    assert lat.num_frames == 51 and lat.latent_frames == 13 and lat.decoded_frames == 49
    assert lat.info["snapped"] and lat.info["requested_size"] == (130, 70) and lat.info["size"] == (128, 64)
    assert torch.count_nonzero(lat.video) == 0 and torch.count_nonzero(lat.audio) == 0
    assert not lat.denoised and lat.stage == "base" and not lat.audio_fixed

    lat = P.empty_latents(448, 256, 4, batch=2)
    assert not lat.info["snapped"]
    assert lat.video.shape == (2, 48, 26, 16, 28) and lat.audio.shape == (2, 101, 64)  # official 4 s example

    # fractional seconds: whole frames, half up
    assert P.frame_counts(0.5) == (14, 4)     # 12.5 -> 13 frames + 1
    assert P.frame_counts(0.01) == (2, 1)     # at least one frame
    assert P.frame_counts(1) == (26, 7)


@pytest.mark.parametrize("kwargs, match", [
    (dict(width=64, height=64, seconds=0), "seconds must be > 0"),
    (dict(width=64, height=64, seconds=-1), "seconds must be > 0"),
    (dict(width=64, height=64, seconds=float("nan")), "seconds must be > 0"),
    (dict(width=31, height=64, seconds=1), "width 31 is too small"),
    (dict(width=64, height=16, seconds=1), "height 16 is too small"),
    (dict(width=64.5, height=64, seconds=1), "integer number of pixels"),
])
def test_empty_latents_errors(kwargs, match):
    with pytest.raises(P.PipelineError, match=match):
        P.empty_latents(**kwargs)


def test_latent_validation_catches_mismatched_lengths():
    lat = small_latent()
    bad = lat.clone()
    bad.audio = torch.zeros(1, 30, 64)
    with pytest.raises(P.PipelineError, match="audio and video lengths do not match"):
        P.denoise(StubDiT("distill"), bad, make_cond(False), sampler="distilled", steps=1)
    bad = lat.clone()
    bad.video = torch.zeros(1, 16, 3, 4, 4)
    with pytest.raises(P.PipelineError, match="video latent must be"):
        P.denoise(StubDiT("distill"), bad, make_cond(False), sampler="distilled", steps=1)
    bad = lat.clone()
    bad.audio = torch.zeros(1, 64, 11)
    with pytest.raises(P.PipelineError, match="transpose"):
        bad.validate()


# ----------------------------------------------------------------------------- denoise: noise order and maths


def test_distilled_sampler_noise_order_and_update():
    """Official order: initial audio, initial video, then per step video noise, audio noise."""
    model = StubDiT("distill")
    c = 0.3
    lat = small_latent()
    out = P.denoise(model, lat, make_cond(False, cond_value=c), sampler="distilled", steps=3, seed=5)
    g = torch.Generator().manual_seed(5)
    a = torch.randn(lat.audio.shape, generator=g)
    v = torch.randn(lat.video.shape, generator=g)
    _, s = flow_schedule(3, 5.0)
    for i in range(3):
        x0 = v - s[i] * c
        v = s[i + 1] * torch.randn(v.shape, generator=g) + (1 - s[i + 1]) * x0
        a = s[i + 1] * torch.randn(a.shape, generator=g) + (1 - s[i + 1]) * (a - s[i] * c)
    torch.testing.assert_close(out.video, v, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.audio, a, rtol=0, atol=1e-6)
    assert out.denoised and out.stage == "base"
    assert len(model.calls) == 3 and all(cl["coords"] == "v2" for cl in model.calls)
    assert all(cl["video"].shape[0] == 1 for cl in model.calls)  # no CFG: one pass


def _a2v_latent(lat, seed=9):
    a2v = lat.clone()
    a2v.audio = torch.randn(lat.audio.shape, generator=torch.Generator().manual_seed(seed))
    a2v.audio_fixed = True
    return a2v


@pytest.mark.parametrize("sampler, steps", [("distilled", 3), ("unipc", 3)])
def test_a2v_audio_is_never_updated(sampler, steps):
    lat = _a2v_latent(small_latent())
    ref = lat.audio.clone()
    model = Recorder(tiny_dit("distill" if sampler == "distilled" else "base"))
    out = P.denoise(model, lat, make_cond(sampler == "unipc"), sampler=sampler, steps=steps, seed=1)
    assert torch.equal(out.audio, ref) and out.audio_fixed
    for call in model.calls:  # every pass (cond and uncond) sees the untouched reference
        b = call["audio"].shape[0]
        assert torch.equal(call["audio"], ref.expand(b, -1, -1))
    assert len(model.calls) == steps


def test_a2v_distilled_still_consumes_the_audio_noise_draw():
    """The video noise stream must be the official one: the audio draw happens even when fixed."""
    model = StubDiT("distill")
    c = -0.2
    lat = _a2v_latent(small_latent())
    out = P.denoise(model, lat, make_cond(False, cond_value=c), sampler="distilled", steps=2, seed=2)
    g = torch.Generator().manual_seed(2)
    v = torch.randn(lat.video.shape, generator=g)  # no initial audio draw in A2V
    _, s = flow_schedule(2, 5.0)
    for i in range(2):
        x0 = v - s[i] * c
        v = s[i + 1] * torch.randn(v.shape, generator=g) + (1 - s[i + 1]) * x0
        torch.randn(lat.audio.shape, generator=g)
    torch.testing.assert_close(out.video, v, rtol=0, atol=1e-6)


@pytest.mark.parametrize("sampler, cfg, batch_cfg", [("distilled", False, True), ("unipc", True, True),
                                                     ("unipc", True, False)])
def test_ti2v_first_frame_is_the_image_latent_at_every_step(sampler, cfg, batch_cfg):
    lat = small_latent()
    image_latent = torch.randn(1, 48, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    lat.image_latent = image_latent
    model = Recorder(tiny_dit("distill" if sampler == "distilled" else "base"))
    out = P.denoise(model, lat, make_cond(cfg), sampler=sampler, steps=3, cfg=cfg, batch_cfg=batch_cfg, seed=0)
    assert len(model.calls) == (3 if (not cfg or batch_cfg) else 6)
    for call in model.calls:
        for b in range(call["video"].shape[0]):
            assert torch.equal(call["video"][b, :, 0], image_latent[0, :, 0])
        assert not torch.equal(call["video"][:, :, 1:], torch.zeros_like(call["video"][:, :, 1:]))
    assert torch.equal(out.video[:, :, :1], image_latent)
    assert torch.equal(out.image_latent, image_latent)


def test_batched_cfg_equals_two_passes():
    lat = small_latent()
    cond = make_cond(True)
    a = P.denoise(tiny_dit("base"), lat, cond, sampler="unipc", steps=3, seed=4, batch_cfg=True)
    m = Recorder(tiny_dit("base"))
    b = P.denoise(m, lat, cond, sampler="unipc", steps=3, seed=4, batch_cfg=False)
    assert len(m.calls) == 6 and [c["lens"] for c in m.calls[:2]] == [[7], [10]]
    torch.testing.assert_close(a.video, b.video, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a.audio, b.audio, rtol=1e-4, atol=1e-5)
    assert not torch.equal(a.video, P.denoise(tiny_dit("base"), lat, cond, sampler="unipc", steps=3, seed=4,
                                              cfg=False).video)  # CFG changes the result


@pytest.mark.parametrize("batch_cfg", [True, False])
def test_guidance_schedule(batch_cfg, monkeypatch):
    """Video scale 5 while t > 500 then 2; audio scale 5 (8 UniPC steps: t = 999 ... 624, 416)."""
    model = StubDiT("base")
    previews = []
    used = []
    stages = importlib.import_module("magihuman.pipeline.denoising")
    real_combine = stages.cfg_combine
    monkeypatch.setattr(stages, "cfg_combine", lambda c, u, s: used.append(s) or real_combine(c, u, s))
    P.denoise(model, small_latent(), make_cond(True, cond_value=1.0), sampler="unipc", steps=8, seed=0,
              batch_cfg=batch_cfg, callback=lambda i, n, x0: previews.append(x0.clone()))
    timesteps, sigmas = flow_schedule(8, 5.0)
    assert timesteps.tolist() == [999, 972, 937, 892, 833, 749, 624, 416]
    inputs = model.calls if batch_cfg else model.calls[::2]
    scales = [velocity_from_preview(inputs[i]["video"][:1], previews[i], sigmas[i]).mean().item() for i in range(8)]
    assert scales == pytest.approx([5.0] * 7 + [2.0], abs=1e-4)
    assert used[0::2] == [5.0] * 7 + [2.0] and used[1::2] == [5.0] * 8  # (video, audio) per step

    used.clear()
    P.denoise(StubDiT("base"), small_latent(), make_cond(True, cond_value=1.0), sampler="unipc", steps=4,
              video_guidance=7.0, video_guidance_low=1.5, guidance_switch_t=900, audio_guidance=3.0)
    t4, _ = flow_schedule(4, 5.0)
    assert used[0::2] == [7.0 if t > 900 else 1.5 for t in t4.tolist()] and used[1::2] == [3.0] * 4


def test_seed_determinism():
    lat, cond = small_latent(), make_cond(False)
    model = tiny_dit("distill")
    a = P.denoise(model, lat, cond, steps=3, seed=11)
    b = P.denoise(model, lat, cond, steps=3, seed=11)
    c = P.denoise(model, lat, cond, steps=3, seed=12)
    assert torch.equal(a.video, b.video) and torch.equal(a.audio, b.audio)
    assert not torch.allclose(a.video, c.video) and not torch.allclose(a.audio, c.audio)
    assert a.info["sampler"] == "distilled"  # "auto" follows model.variant


def test_denoise_builds_no_autograd_graph():
    """A DiT whose parameters require grad (a freshly built one) still samples without recording a graph."""
    model = tiny_dit("distill").requires_grad_(True)
    seen = []
    out = P.denoise(model, small_latent(), make_cond(False), steps=2, seed=1,
                    callback=lambda *a, **k: seen.append(torch.is_grad_enabled()))
    assert seen == [False, False] and not out.video.requires_grad and not out.audio.requires_grad


def test_interrupt_leaves_inputs_untouched():
    lat = _a2v_latent(small_latent())
    lat.image_latent = torch.randn(1, 48, 1, 4, 4)
    before = lat.clone()
    cond = make_cond(True)
    cond_before = cond.embeds.clone()

    class Interrupt(Exception):
        pass

    def cb(step, total, x0):
        assert total == 4 and x0.dim() == 5 and x0.shape[:3] == lat.video.shape[:3]
        if step == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        P.denoise(tiny_dit("base"), lat, cond, sampler="unipc", steps=4, callback=cb)
    for name in ("video", "audio", "image_latent"):
        assert torch.equal(getattr(lat, name), getattr(before, name))
    assert lat.denoised is False and torch.equal(cond.embeds, cond_before)
    base = denoised_latent()
    base_before = base.clone()
    with pytest.raises(Interrupt):
        P.super_resolve(tiny_dit("sr_540p"), base, cond, width=128, height=64, steps=4, callback=cb)
    assert torch.equal(base.video, base_before.video) and torch.equal(base.audio, base_before.audio)
    assert base.stage == "base"


# ----------------------------------------------------------------------------- super-resolution


def test_super_resolve_inputs_audio_and_coords():
    base = denoised_latent(t=3, h=4, w=4)
    model = StubDiT("sr_540p")
    out = P.super_resolve(model, base, make_cond(False, cond_value=0.5), width=140, height=70, seed=3, steps=3)
    # size snapped down to 128x64; video: trilinear(align_corners) upsample, re-noised at ZeroSNR[220]
    assert out.pixel_size == (128, 64) and out.video.shape == (1, 48, 3, 4, 8) and out.stage == "sr"
    g = torch.Generator().manual_seed(3)
    eps_v = torch.randn(1, 48, 3, 4, 8, generator=g)
    sigma = zero_snr_sigmas()[220]
    assert sigma.item() == pytest.approx(0.8389, abs=1e-4)
    up = F.interpolate(base.video, size=(3, 4, 8), mode="trilinear", align_corners=True)
    torch.testing.assert_close(model.calls[0]["video"], up * sigma + eps_v * math.sqrt(1 - sigma.item() ** 2),
                               rtol=0, atol=1e-5)
    eps_a = torch.randn(base.audio.shape, generator=g)
    audio_in = 0.7 * eps_a + 0.3 * base.audio
    assert len(model.calls) == 3
    for call in model.calls:
        torch.testing.assert_close(call["audio"], audio_in, rtol=0, atol=1e-6)
        assert call["coords"] == "v1" and call["frf"] == 11 and call["video"].shape[0] == 1
    assert torch.equal(out.audio, base.audio)  # output audio = the clean base audio


def test_super_resolve_local_attention_and_cfg_trick():
    base = denoised_latent(t=15, h=2, w=2)  # 15 latent frames: the trick caps the first 13
    model = StubDiT("sr_1080p")
    previews = []
    P.super_resolve(model, base, make_cond(True, cond_value=1.0), width=64, height=64, steps=2, cfg=True,
                    local_attention=-1, callback=lambda i, n, x0: previews.append(x0))
    assert all(c["frf"] == -1 and c["video"].shape[0] == 2 for c in model.calls)  # batched CFG
    _, sigmas = flow_schedule(2, 5.0)
    vel = velocity_from_preview(model.calls[0]["video"][:1], previews[0], sigmas[0])
    per_frame = vel.mean(dim=(0, 1, 3, 4))
    expected = torch.tensor([2.0] * 13 + [3.5] * 2)
    torch.testing.assert_close(per_frame, expected, rtol=0, atol=1e-4)

    model = StubDiT("sr_1080p")
    previews.clear()
    P.super_resolve(model, base, make_cond(True, cond_value=1.0), width=64, height=64, steps=1, cfg=True,
                    use_cfg_trick=False, callback=lambda i, n, x0: previews.append(x0))
    assert model.calls[0]["frf"] == 11
    vel = velocity_from_preview(model.calls[0]["video"][:1], previews[0], flow_schedule(1, 5.0)[1][0])
    torch.testing.assert_close(vel, torch.full_like(vel, 3.5), rtol=0, atol=1e-4)


def test_super_resolve_a2v_keeps_reference_and_renoises_input():
    base = _a2v_latent(denoised_latent())
    model = Recorder(tiny_dit("sr_540p"))
    out = P.super_resolve(model, base, make_cond(False), width=128, height=64, seed=0, steps=2)
    assert torch.equal(out.audio, base.audio) and out.audio_fixed
    assert not torch.allclose(model.calls[0]["audio"], base.audio)  # official: the SR input is re-noised


# ----------------------------------------------------------------------------- model / stage checks


def test_wrong_models_and_stages_are_refused():
    lat = small_latent()
    cond = make_cond(True)
    with pytest.raises(P.PipelineError, match="'sr_540p' DiT.*super_resolve"):
        P.denoise(StubDiT("sr_540p"), lat, cond)
    with pytest.raises(P.PipelineError, match="'base' DiT.*540p_sr or 1080p_sr"):
        P.super_resolve(StubDiT("base"), denoised_latent(), cond, width=128, height=64)
    with pytest.raises(P.PipelineError, match="not been denoised"):
        P.super_resolve(StubDiT("sr_540p"), lat, cond, width=128, height=64)
    sr = P.super_resolve(StubDiT("sr_540p"), denoised_latent(), cond, width=128, height=64, steps=1)
    with pytest.raises(P.PipelineError, match="already super-resolved"):
        P.denoise(StubDiT("base"), sr, cond)
    with pytest.raises(P.PipelineError, match="already super-resolved"):
        P.super_resolve(StubDiT("sr_540p"), sr, cond, width=128, height=64)
    with pytest.raises(P.PipelineError, match="CFG needs a negative prompt"):
        P.denoise(StubDiT("base"), lat, make_cond(False), sampler="unipc")
    with pytest.raises(P.PipelineError, match="text embeddings have 32 channels"):
        P.denoise(StubDiT("distill"), lat, make_cond(False, channels=32))
    with pytest.raises(P.PipelineError, match="sampler must be"):
        P.denoise(StubDiT("distill"), lat, make_cond(False), sampler="euler")
    with pytest.raises(P.PipelineError, match="steps must be a positive integer"):
        P.denoise(StubDiT("distill"), lat, make_cond(False), steps=0)
    ti2v = denoised_latent()
    ti2v.image_latent = torch.zeros(1, 48, 1, 4, 8)
    with pytest.raises(P.PipelineError, match="pass video_vae"):
        P.super_resolve(StubDiT("sr_540p"), ti2v, cond, width=128, height=64)


def test_encode_prompt_validation_and_pairs():
    class FakeEncoder:  # records what it is asked to encode; embeddings as the real encoder shapes them
        def __init__(self):
            self.seen = []

        def encode(self, prompts, max_length=640, warn_trim=True):
            self.seen.append(list(prompts))
            e = torch.zeros(len(prompts), max_length, 64)
            return e, [len(p) for p in prompts]

    with pytest.raises(P.PipelineError, match="prompt is empty"):
        P.encode_prompt(FakeEncoder(), "   ")
    with pytest.raises(P.PipelineError, match="negative prompt is empty"):
        P.encode_prompt(FakeEncoder(), "hi", "")
    enc = FakeEncoder()
    c = P.encode_prompt(enc, "hello", None)
    assert enc.seen == [["hello"]] and not c.has_negative and c.lens == [5]
    enc = FakeEncoder()
    c = P.encode_prompt(enc, "hello")
    assert enc.seen == [["hello"], [P.DEFAULT_NEGATIVE_PROMPT]] and c.has_negative  # each encoded alone


class _CountingEncoder:
    """Records each text it encodes; its embedding is the text's length (tells the texts apart)."""

    def __init__(self):
        self.texts = []

    def encode(self, texts, max_length, warn_trim=True):
        self.texts += texts
        return torch.full((1, max_length, 4), float(len(texts[0]))), torch.tensor([len(texts[0])])


def test_encode_prompts_encodes_each_text_once():
    """The windows of a long video: repeated prompts and the (long, 9B-encoder) negative prompt are encoded once."""
    enc = _CountingEncoder()
    conds = P.encode_prompts(enc, ["A man talks.", "He smiles.", "A man talks."], "blurry")
    assert enc.texts == ["A man talks.", "He smiles.", "blurry"]
    assert [c.prompt for c in conds] == ["A man talks.", "He smiles.", "A man talks."]
    assert [c.lens for c in conds] == [[12], [10], [12]] and all(c.negative_lens == [6] for c in conds)
    assert conds[0] is not conds[2] and conds[0].negative_embeds is conds[1].negative_embeds
    one = P.encode_prompt(_CountingEncoder(), "A man talks.", "blurry")
    assert torch.equal(one.embeds, conds[0].embeds) and torch.equal(one.negative_embeds, conds[0].negative_embeds)
    with pytest.raises(P.PipelineError, match="the prompt is empty"):
        P.encode_prompts(enc, ["ok", " "], None)


def test_batch_of_two():
    lat = P.empty_latents(64, 64, 0.4, batch=2)
    lat.image_latent = torch.randn(1, 48, 1, 4, 4).expand(2, -1, -1, -1, -1)
    cond = make_cond(True)
    model = Recorder(tiny_dit("base"))
    a = P.denoise(model, lat, cond, sampler="unipc", steps=2, seed=0, batch_cfg=True)
    assert [c["video"].shape[0] for c in model.calls] == [4, 4] and model.calls[0]["lens"] == [7, 7, 10, 10]
    b = P.denoise(tiny_dit("base"), lat, cond, sampler="unipc", steps=2, seed=0, batch_cfg=False)
    torch.testing.assert_close(a.video, b.video, rtol=1e-4, atol=1e-5)
    assert a.video.shape == (2, 48, 3, 4, 4) and a.audio.shape == (2, 11, 64)
    assert not torch.allclose(a.video[0, :, 1:], a.video[1, :, 1:])  # each sample has its own noise
    assert torch.equal(a.video[:, :, :1], lat.image_latent)
    with pytest.raises(P.PipelineError, match="batch_index 2 is outside the batch of 2"):
        P.decode_video(None, a, batch_index=2)
