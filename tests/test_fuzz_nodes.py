"""Property-based tests over node inputs (hypothesis), on the tiny models loaded once for the module.

Contract checked for every generated input: the node either returns finite outputs of exactly the
expected shapes, or raises one of the documented errors (a ValueError subclass whose message says what
is wrong); never another exception. Budget: the whole file runs in about a minute on 2 CPU cores
(fixed example counts, derandomized so CI is reproducible).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


FUZZ = dict(deadline=None, derandomize=True, database=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                   HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def env(node_pack, tiny_dir):
    np_ = node_pack(tiny_dir)
    compat, run = np_.compat, np_.run
    m = {
        "fp32": run("MagiHumanDiTLoader", model_name="magihuman_tiny_distill/", weight_dtype="fp32",
                    compute_dtype="fp32")[0],
        "bf16": run("MagiHumanDiTLoader", model_name="magihuman_tiny_base.safetensors", weight_dtype="bf16",
                    compute_dtype="bf16")[0],
        **np_.load_tiny("sr", "te", "turbo", "wan", "audio"),
    }
    pos, neg = run("MagiHumanTextEncode", text_encoder=m["te"], prompt="A man speaks.", negative_prompt="noise",
                   encode_negative=True)
    compat.request_interrupt(False)
    yield {"run": run, "m": m, "pos": pos, "neg": neg}
    np_.close()


def documented(e: BaseException) -> bool:
    """The errors nodes may raise for bad input: ValueError subclasses with a real message."""
    return isinstance(e, ValueError) and len(str(e).strip()) >= 15


def call(fn):
    """Run ``fn``; returns (result, None) or (None, documented error); any other exception propagates."""
    try:
        return fn(), None
    except Exception as e:  # noqa: BLE001 - the property is exactly "only documented errors"
        if not documented(e):
            raise
        return None, e


def expected_geometry(width: int, height: int, seconds: float):
    """Independent restatement of the latent geometry: snap down to 32, 25·s + 1 frames (whole frames, at least 1)."""
    w, h = width // 32 * 32, height // 32 * 32
    nf = max(1, math.floor(seconds * 25 + 0.5)) + 1
    return w, h, nf, (nf - 1) // 4 + 1


sizes = st.integers(min_value=32, max_value=160)
any_sizes = st.one_of(sizes, st.integers(min_value=-64, max_value=31), st.integers(min_value=161, max_value=5000))
secs = st.floats(min_value=0.04, max_value=1.0, allow_nan=False)
any_secs = st.one_of(secs, st.floats(allow_nan=True, allow_infinity=True, width=32), st.just(0.0))


@settings(max_examples=150, **FUZZ)
@given(w=any_sizes, h=any_sizes, s=any_secs, b=st.integers(min_value=0, max_value=3))
def test_fuzz_empty_latent(env, w, h, s, b):
    res, err = call(lambda: env["run"]("MagiHumanEmptyAVLatent", width=w, height=h, seconds=s, batch_size=b))
    valid = w >= 32 and h >= 32 and w <= 4096 and h <= 4096 and b >= 1 and math.isfinite(s) and 0 < s <= 60
    if not valid:
        assert err is not None, (w, h, s, b)
        return
    assert err is None, err
    (lat,) = res
    ew, eh, nf, t = expected_geometry(w, h, s)
    assert lat["samples"].shape == (b, 48, t, eh // 16, ew // 16)
    assert lat["magihuman_audio"].shape == (b, nf, 64)


@settings(max_examples=40, **FUZZ)
@given(w=sizes, h=sizes, s=secs, b=st.integers(min_value=1, max_value=2), dtype=st.sampled_from(["fp32", "bf16"]),
       steps=st.integers(min_value=1, max_value=2), seed=st.integers(min_value=0, max_value=2**64 - 1))
def test_fuzz_distilled_sampler(env, w, h, s, b, dtype, steps, seed):
    (lat,) = env["run"]("MagiHumanEmptyAVLatent", width=w, height=h, seconds=s, batch_size=b)
    (out,) = env["run"]("MagiHumanDistilledSampler", model=env["m"][dtype], positive=env["pos"], latent=lat,
                        seed=seed, steps=steps)
    assert out["samples"].shape == lat["samples"].shape and out["samples"].dtype == torch.float32
    assert out["magihuman_audio"].shape == lat["magihuman_audio"].shape
    assert torch.isfinite(out["samples"]).all() and torch.isfinite(out["magihuman_audio"]).all()


@settings(max_examples=12, **FUZZ)
@given(w=sizes, h=sizes, s=st.floats(min_value=0.04, max_value=0.5), batch_cfg=st.booleans(),
       seed=st.integers(min_value=0, max_value=2**32))
def test_fuzz_base_sampler_cfg(env, w, h, s, batch_cfg, seed):
    (lat,) = env["run"]("MagiHumanEmptyAVLatent", width=w, height=h, seconds=s)
    (out,) = env["run"]("MagiHumanBaseSampler", model=env["m"]["bf16"], positive=env["pos"], negative=env["neg"],
                        latent=lat, seed=seed, steps=2, batch_cfg=batch_cfg)
    assert out["samples"].shape == lat["samples"].shape
    assert torch.isfinite(out["samples"]).all() and torch.isfinite(out["magihuman_audio"]).all()


@settings(max_examples=20, **FUZZ)
@given(w=st.integers(min_value=32, max_value=96), h=st.integers(min_value=32, max_value=96),
       sw=st.integers(min_value=0, max_value=200), sh=st.integers(min_value=0, max_value=200),
       s=st.floats(min_value=0.04, max_value=0.4))
def test_fuzz_latent_sr(env, w, h, sw, sh, s):
    (lat,) = env["run"]("MagiHumanEmptyAVLatent", width=w, height=h, seconds=s)
    (den,) = env["run"]("MagiHumanDistilledSampler", model=env["m"]["fp32"], positive=env["pos"], latent=lat,
                        seed=0, steps=1)
    res, err = call(lambda: env["run"]("MagiHumanLatentSR", sr_model=env["m"]["sr"], positive=env["pos"],
                                       latent=den, resolution="custom", width=sw, height=sh, seed=1, steps=1))
    if sw < 32 or sh < 32:
        assert err is not None and "too small" in str(err)
        return
    assert err is None, err
    (out,) = res
    t = den["samples"].shape[2]
    assert out["samples"].shape == (1, 48, t, sh // 32 * 2, sw // 32 * 2)
    assert torch.isfinite(out["samples"]).all()
    assert torch.equal(out["magihuman_audio"], den["magihuman_audio"])


@settings(max_examples=5, **FUZZ)
@given(w=st.integers(min_value=32, max_value=80), h=st.integers(min_value=32, max_value=80),
       s=st.floats(min_value=0.04, max_value=0.3), rate=st.sampled_from(["48000", "51200 (true rate)"]))
def test_fuzz_decode(env, w, h, s, rate):
    (lat,) = env["run"]("MagiHumanEmptyAVLatent", width=w, height=h, seconds=s)
    (den,) = env["run"]("MagiHumanDistilledSampler", model=env["m"]["fp32"], positive=env["pos"], latent=lat,
                        seed=0, steps=1)
    ew, eh, nf, t = expected_geometry(w, h, s)
    (frames,) = env["run"]("MagiHumanTurboVAEDecode", turbo_vae=env["m"]["turbo"], latent=den)
    assert frames.shape == (4 * (t - 1) + 1, eh, ew, 3)
    assert torch.isfinite(frames).all() and frames.min() >= 0 and frames.max() <= 1
    (audio,) = env["run"]("MagiHumanAudioDecode", audio_vae=env["m"]["audio"], latent=den, sample_rate=rate)
    sr = audio["sample_rate"]
    assert audio["waveform"].shape[:2] == (1, 2) and torch.isfinite(audio["waveform"]).all()
    assert abs(audio["waveform"].shape[-1] - nf * 2048 * sr / 51200) <= 2


RATES = st.one_of(st.sampled_from([8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000]),
                  st.integers(min_value=8000, max_value=96000))


@settings(max_examples=30, **FUZZ)
@given(channels=st.integers(min_value=1, max_value=6), rate=RATES,
       length=st.floats(min_value=0.0, max_value=3.0), kind=st.sampled_from(["silent", "noise", "sine"]),
       s=st.floats(min_value=0.04, max_value=0.5), trim=st.booleans(), seed=st.integers(0, 1000))
def test_fuzz_reference_audio(env, channels, rate, length, kind, s, trim, seed):
    if not trim:
        length = min(length, 1.0)  # the untrimmed audio sets the clip length: keep the encode cheap
    n = int(length * rate)
    g = torch.Generator().manual_seed(seed)
    if kind == "silent":
        wave = torch.zeros(1, channels, n)
    elif kind == "noise":
        wave = (torch.rand(1, channels, n, generator=g) * 2 - 1) * 0.9
    else:
        tt = torch.arange(n, dtype=torch.float32) / rate
        f = 50 + 4000 * torch.rand(channels, 1, generator=g)
        wave = (0.8 * torch.sin(2 * math.pi * f * tt))[None]
    (lat,) = env["run"]("MagiHumanEmptyAVLatent", width=64, height=64, seconds=s)
    res, err = call(lambda: env["run"]("MagiHumanReferenceAudio", latent=lat, audio_vae=env["m"]["audio"],
                                       audio={"waveform": wave, "sample_rate": rate}, trim_to_latent=trim))
    used = n / rate if not trim else min(n / rate, s)
    if used * 51200 < 2048 - 64:  # shorter than one latent step (allow the resampler's rounding)
        assert err is not None and ("empty" in str(err) or "at least 0.04 s" in str(err)), err
        return
    if err is not None:  # only the "too short" error may appear, right at the limit
        assert "at least 0.04 s" in str(err) and used * 51200 < 2048 + 64, (used, err)
        return
    (out,) = res
    a = out["magihuman_audio"]
    assert a.shape[0] == 1 and a.shape[2] == 64 and torch.isfinite(a).all()
    assert abs(a.shape[1] - used * 51200 / 2048) <= 1
    assert out["samples"].shape == (1, 48, (a.shape[1] - 1) // 4 + 1, 4, 4)
    assert out["magihuman"]["audio_fixed"]


@settings(max_examples=40, **FUZZ)
@given(ih=st.integers(min_value=0, max_value=120), iw=st.integers(min_value=1, max_value=120),
       c=st.sampled_from([1, 2, 3, 4, 5]), kind=st.sampled_from(["float", "uint8", "uint16", "bf16"]),
       batch=st.integers(min_value=1, max_value=2), w=st.integers(min_value=32, max_value=100),
       h=st.integers(min_value=32, max_value=100), seed=st.integers(0, 1000))
def test_fuzz_image_to_video(env, ih, iw, c, kind, batch, w, h, seed):
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(batch, ih, iw, c, generator=g)
    if kind == "uint8":
        img = (img[0] * 255).round().numpy().astype(np.uint8)
    elif kind == "uint16":
        img = (img[0] * 65535).round().numpy().astype(np.uint16)
    elif kind == "bf16":
        img = img.to(torch.bfloat16)
    (lat,) = env["run"]("MagiHumanEmptyAVLatent", width=w, height=h, seconds=0.2)
    res, err = call(lambda: env["run"]("MagiHumanImageToVideo", latent=lat, video_vae=env["m"]["wan"], image=img))
    if ih == 0 or c == 5:
        assert err is not None and ("empty" in str(err) or "channels" in str(err)), err
        return
    assert err is None, err
    il = res[0]["magihuman"]["image_latent"]
    assert il.shape == (1, 48, 1, h // 32 * 2, w // 32 * 2) and torch.isfinite(il).all()


@settings(max_examples=40, **FUZZ)
@given(prompt=st.text(max_size=200), repeat=st.integers(min_value=1, max_value=4))
def test_fuzz_text_encode(env, prompt, repeat):
    text = prompt * repeat
    res, err = call(lambda: env["run"]("MagiHumanTextEncode", text_encoder=env["m"]["te"], prompt=text,
                                       negative_prompt="", encode_negative=False))
    if not text.strip():
        assert err is not None and "prompt is empty" in str(err)
        return
    assert err is None, err
    pos, neg = res
    e, n = pos[0][0], pos[0][1]["magihuman_len"]
    assert e.shape[1] == 640 and 1 <= n <= 640 and torch.isfinite(e).all()
    assert neg[0][1]["magihuman_len"] == 0


@settings(max_examples=60, **FUZZ)
@given(s1=secs, s2=secs, b1=st.integers(1, 2), b2=st.integers(1, 2))
def test_fuzz_split_join(env, s1, s2, b1, b2):
    (l1,) = env["run"]("MagiHumanEmptyAVLatent", width=64, height=32, seconds=s1, batch_size=b1)
    (l2,) = env["run"]("MagiHumanEmptyAVLatent", width=64, height=32, seconds=s2, batch_size=b2)
    v, _ = env["run"]("MagiHumanSplitAVLatent", latent=l1)
    _, a = env["run"]("MagiHumanSplitAVLatent", latent=l2)
    res, err = call(lambda: env["run"]("MagiHumanJoinAVLatent", video_latent=v, audio_latent=a))
    n2 = l2["magihuman_audio"].shape[1]
    ok = b1 == b2 and l1["samples"].shape[2] == (n2 - 1) // 4 + 1
    if not ok:
        assert err is not None, (s1, s2, b1, b2)
        return
    assert err is None, err
    assert torch.equal(res[0]["magihuman_audio"], l2["magihuman_audio"])
    assert torch.equal(res[0]["samples"], l1["samples"])
