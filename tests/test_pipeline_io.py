"""Pipeline stages that go through the tiny VAEs: TI2V image encode (base and SR size), A2V reference
audio encode, and decoding. Expectations are computed with the VAEs and media helpers directly."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from magihuman import media
from magihuman import pipeline as P
from magihuman.loaders import load_audio_vae
from magihuman.loaders import load_turbo_vae
from magihuman.loaders import load_wan_vae
from magihuman.tiny import TINY_FILES

# helpers shared with test_pipeline.py (pytest runs with --import-mode=importlib: load it by path)
_spec = importlib.util.spec_from_file_location("_magihuman_test_pipeline", Path(__file__).with_name("test_pipeline.py"))
_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)
Recorder, StubDiT, denoised_latent, make_cond = (_helpers.Recorder, _helpers.StubDiT, _helpers.denoised_latent,
                                                 _helpers.make_cond)


@pytest.fixture(scope="module")
def wan(tiny_dir):
    return load_wan_vae(tiny_dir / TINY_FILES["video_vae"], dtype=torch.float32)


@pytest.fixture(scope="module")
def audio_vae(tiny_dir):
    return load_audio_vae(tiny_dir / TINY_FILES["audio_vae"])


def _image(h=40, w=70, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (1, h, w, 3), generator=g).float() / 255.0)  # ComfyUI IMAGE, 8-bit content


def test_encode_image_attaches_one_latent_frame(wan):
    lat = P.empty_latents(128, 64, 0.4)
    img = _image()
    out = P.encode_image(wan, img, lat)
    expected = wan.encode(media.prepare_image(img[0].numpy(), 128, 64))[:, :, :1]
    assert out.image_latent.shape == (1, 48, 1, 4, 8)
    torch.testing.assert_close(out.image_latent, expected, rtol=0, atol=1e-6)
    assert lat.image_latent is None  # input untouched
    assert out.image.shape == (40, 70, 3)


def test_super_resolve_reencodes_image_at_sr_size(wan):
    base = denoised_latent(t=2, h=4, w=8)
    img = _image(seed=1)
    base = P.AVLatent(video=base.video, audio=base.audio, denoised=True,
                      image_latent=wan.encode(media.prepare_image(img[0].numpy(), 128, 64))[:, :, :1],
                      image=img[0])
    model = StubDiT("sr_540p")
    out = P.super_resolve(model, base, make_cond(False, cond_value=0.1), width=256, height=128, steps=2,
                          video_vae=wan)
    expected = wan.encode(media.prepare_image(img[0].numpy(), 256, 128))[:, :, :1]
    assert out.image_latent.shape == (1, 48, 1, 8, 16)
    torch.testing.assert_close(out.image_latent, expected, rtol=0, atol=1e-6)
    for call in model.calls:
        assert torch.equal(call["video"][:, :, :1], out.image_latent)
    assert torch.equal(out.video[:, :, :1], out.image_latent)


def test_encode_reference_audio_sets_the_length(audio_vae):
    sr = 16000
    t = torch.arange(sr) / sr
    wave = torch.stack([torch.sin(2 * math.pi * 220 * t), torch.sin(2 * math.pi * 330 * t)]) * 0.5  # 1 s stereo
    lat = P.empty_latents(64, 64, 2)
    out = P.encode_reference_audio(audio_vae, wave, sr, lat)
    ref = media.encode_reference_audio(audio_vae, media.prepare_reference_audio(wave, sr, seconds=2.0))
    n = ref.shape[-1]
    assert n == 25  # 51200 samples / 2048
    assert out.audio.shape == (1, n, 64) and out.audio_fixed
    torch.testing.assert_close(out.audio, ref.transpose(1, 2), rtol=0, atol=1e-6)
    assert out.video.shape == (1, 48, (n - 1) // 4 + 1, 4, 4) and out.num_frames == n
    assert out.info["num_frames"] == n and out.info["latent_frames"] == 7
    # longer audio is trimmed to the latent's duration (official: trimmed to --seconds)
    long = torch.randn(1, 3 * sr, generator=torch.Generator().manual_seed(0)) * 0.1
    out = P.encode_reference_audio(audio_vae, long, sr, lat)
    assert out.num_frames == 50 and out.latent_frames == 13
    # the fixed audio survives a whole denoise untouched
    model = Recorder(StubDiT("distill"))
    res = P.denoise(model, out, make_cond(False, cond_value=0.2), sampler="distilled", steps=2)
    assert torch.equal(res.audio, out.audio)


def test_decode_turbo_and_wan(tiny_dir, wan, audio_vae):
    turbo = load_turbo_vae(None, tiny_dir / TINY_FILES["turbo_vae"], dtype=torch.float32)
    lat = denoised_latent(t=3, h=2, w=4, seed=4)
    frames, wave, rate = P.decode(turbo, audio_vae, lat)
    assert frames.shape == (9, 32, 64, 3) and frames.dtype == torch.float32  # 4(T-1)+1 frames
    expected = ((turbo.decode(lat.video).float()[0] + 1) / 2).clamp(0, 1).permute(1, 2, 3, 0)
    torch.testing.assert_close(frames, expected, rtol=0, atol=1e-6)
    assert rate == 51200 and wave.shape == (2, 2048 * lat.num_frames)
    torch.testing.assert_close(wave, audio_vae.decode(lat.audio.transpose(1, 2))[0], rtol=0, atol=1e-6)
    frames_wan = P.decode_video(wan, lat)
    assert frames_wan.shape == (9, 32, 64, 3) and 0 <= frames_wan.min() and frames_wan.max() <= 1
    torch.testing.assert_close(frames_wan, ((wan.decode(lat.video)[0] + 1) / 2).clamp(0, 1).permute(1, 2, 3, 0),
                               rtol=0, atol=1e-6)
    r = P.resample_audio(wave, rate, 44100)
    assert r.shape == (2, round(wave.shape[-1] * 441 / 512))
