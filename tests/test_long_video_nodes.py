"""MagiHuman Long Video and MagiHuman Extend without ComfyUI (nodes.v3.run_node, tiny models): the nodes give
what the engine gives, per-window prompts, progress per window and step, cancel, A2V, continuation, errors."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from magihuman import media
from magihuman import pipeline as P
from magihuman.geometry import AUDIO_HOP, AUDIO_SAMPLE_RATE

SIZE = 64
COMMON = dict(width=SIZE, height=SIZE, window_seconds=1.0, steps=2, seed=4)


@pytest.fixture(scope="module")
def env(node_pack, tiny_dir):
    e = node_pack(tiny_dir)
    e.models = e.load_tiny("dit", "te", "turbo", "wan", "audio")
    yield e
    e.close()


def long_video(env, **kw):
    m = env.models
    args = dict(model=m["dit"], video_vae=m["wan"], audio_vae=m["audio"], turbo_vae=m["turbo"], **COMMON)
    args.update(kw)
    return env.v3.run_node(env.nodes["MagiHumanLongVideo"], **args)


def encode(env, text):
    return env.run("MagiHumanTextEncode", text_encoder=env.models["te"], prompt=text, encode_negative=False)[0]


def engine(env, conds, **kw):
    """The engine run the node should be: same models, 2 distilled steps per window."""
    m = env.models
    models = P.LongVideoModels(dit=m["dit"].model, video_vae=m["wan"].model, audio_vae=m["audio"].model,
                               video_decoder=m["turbo"].model)
    return P.generate_long_video(models, conds, width=SIZE, height=SIZE, window_seconds=1.0, seed=4,
                                 denoise_options=dict(sampler="distilled", steps=2, cfg=False), **kw)


def test_schemas(env):
    for nid, name in (("MagiHumanLongVideo", "MagiHuman Long Video"), ("MagiHumanExtend", "MagiHuman Extend")):
        s = env.nodes[nid].define_schema()
        assert (s.display_name, s.category) == (name, "MagiHuman/long video")
        assert [o.io_type for o in s.outputs] == ["IMAGE", "AUDIO"]
    ids = [i.id for i in env.nodes["MagiHumanExtend"].define_schema().inputs]
    assert ids[0] == "images" and "clip_audio" in ids and "output" in ids


def test_long_video_node_is_the_engine(env):
    pos = encode(env, "A man talks.")
    out = long_video(env, positive=pos, seconds=2.0, overlap_frames=4, sample_rate="51200 (true rate)")
    images, audio = out.args
    expected = engine(env, [P.TextConditioning(embeds=pos[0][0], lens=[pos[0][1]["magihuman_len"]])], seconds=2,
                      overlap_frames=4)
    assert images.shape == (49, SIZE, SIZE, 3) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1
    assert torch.equal(images, expected.frames)
    assert audio["sample_rate"] == AUDIO_SAMPLE_RATE and audio["waveform"].shape == (1, 2, 49 * AUDIO_HOP)
    assert torch.equal(audio["waveform"][0], expected.audio)
    assert out.ui.value == "3 windows of 0.96 s, overlap 4 frames: 49 frames 64x64 (1.96 s)"
    # the default rate is 48 kHz (what Save Video's AAC takes), resampled properly
    _, audio48 = long_video(env, positive=pos, seconds=2.0, overlap_frames=4).args
    assert audio48["sample_rate"] == 48000
    torch.testing.assert_close(audio48["waveform"][0], P.resample_audio(expected.audio, AUDIO_SAMPLE_RATE, 48000))


def test_per_window_prompts(env):
    texts = ["A man talks.", "He laughs.", "He waves."]
    conds = [P.TextConditioning(embeds=encode(env, t)[0][0], lens=[encode(env, t)[0][1]["magihuman_len"]])
             for t in texts]
    expected = engine(env, conds, seconds=3)
    assert len(expected.plan.windows) == 3
    by_text, _ = long_video(env, text_encoder=env.models["te"], prompts="\n---\n".join(texts), seconds=3.0).args
    assert torch.equal(by_text, expected.frames)
    combined = encode(env, texts[0]) + encode(env, texts[1]) + encode(env, texts[2])  # Conditioning (Combine)
    by_cond, _ = long_video(env, positive=combined, seconds=3.0).args
    assert torch.equal(by_cond, expected.frames)


def test_progress_per_window_and_step_and_cancel(env, monkeypatch):
    compat = env.compat
    updates = []
    orig = compat.progress_callback

    def recording(total):
        cb = orig(total)

        def wrapped(step, total_steps=None, x0=None):
            updates.append((step, total_steps or total, None if x0 is None else tuple(x0.shape)))
            cb(step, total_steps, x0)
        return wrapped

    monkeypatch.setattr(compat, "progress_callback", recording)
    pos = encode(env, "A man talks.")
    long_video(env, positive=pos, seconds=1.5)  # 2 windows of 2 steps
    assert [u[:2] for u in updates] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert all(u[2] is not None and u[2][1] == 48 for u in updates)  # an x0 latent for the preview

    updates.clear()

    def interrupting(total):
        cb = recording(total)

        def wrapped(step, total_steps=None, x0=None):
            if step == 3:  # window 1, step 1
                compat.request_interrupt()
            cb(step, total_steps, x0)
        return wrapped

    monkeypatch.setattr(compat, "progress_callback", interrupting)
    with pytest.raises(compat.InterruptedByUser):
        long_video(env, positive=pos, seconds=1.5)
    assert [u[0] for u in updates] == [1, 2, 3]
    # between windows: the interrupt is checked before each window starts
    calls = []

    def check_interrupt():
        calls.append(1)
        if len(calls) == 3:
            raise compat.InterruptedByUser("processing interrupted")

    monkeypatch.setattr(compat, "progress_callback", orig)
    monkeypatch.setattr(compat, "check_interrupt", check_interrupt)
    with pytest.raises(compat.InterruptedByUser):
        long_video(env, positive=pos, seconds=1.5)
    assert len(calls) == 3  # before window 0, before its decode, before window 1


def speech_audio(seconds, rate=16000):
    t = torch.arange(int(seconds * rate)) / rate
    return {"waveform": (0.3 * torch.sin(2 * math.pi * 300 * t))[None, None].expand(1, 2, -1).contiguous(),
            "sample_rate": rate}


def test_a2v_whole_speech(env):
    speech = speech_audio(2.3)
    images, audio = long_video(env, positive=encode(env, "A man talks."), seconds=0.0, speech=speech,
                               sample_rate="51200 (true rate)").args
    assert images.shape[0] == 61  # 57.5 steps of speech, rounded up to whole latent frames
    prepared = media.prepare_reference_audio(speech["waveform"][0], 16000)
    n = prepared.shape[-1]
    assert torch.equal(audio["waveform"][0, :, :n], prepared)  # the speech exactly
    out = long_video(env, positive=encode(env, "A man talks."), seconds=1.0, speech=speech)
    assert "1 s trims the 2.30 s reference audio (its first 1 s are used)" in out.ui.value


def test_extend(env):
    g = torch.Generator().manual_seed(1)
    clip = torch.rand(30, 80, 96, 3, generator=g)
    t = torch.arange(int(30 / 25 * 44100)) / 44100
    sound = {"waveform": (0.2 * torch.sin(2 * math.pi * 440 * t))[None, None], "sample_rate": 44100}
    m = env.models
    args = dict(images=clip, model=m["dit"], video_vae=m["wan"], audio_vae=m["audio"], turbo_vae=m["turbo"],
                positive=encode(env, "He keeps talking."), seconds=1.0, overlap_frames=4, clip_audio=sound,
                sample_rate="51200 (true rate)", **COMMON)
    out = env.v3.run_node(env.nodes["MagiHumanExtend"], **args)
    images, audio = out.args
    assert images.shape == (30 + P.clip_frames(1) - 1, SIZE, SIZE, 3)
    assert "the clip to continue is 96x80; its frames are centre-cropped and resized to 64x64" in out.ui.value
    fitted = media.prepare_image(clip[0].numpy(), SIZE, SIZE)[0, :, 0].permute(1, 2, 0).add(1).mul(0.5).clamp(0, 1)
    assert torch.equal(images[0], fitted)
    head = (30 - 1 - 4) * AUDIO_HOP
    clip51 = media.resample(sound["waveform"][0], 44100, AUDIO_SAMPLE_RATE)
    assert torch.equal(audio["waveform"][0, :, :head], clip51.expand(2, -1)[:, :head])
    new, new_audio = env.v3.run_node(env.nodes["MagiHumanExtend"], output="new part only", **args).args
    assert torch.equal(new, images[30:]) and torch.equal(new_audio["waveform"], audio["waveform"][..., 30 * AUDIO_HOP:])


@pytest.mark.parametrize("kw, message", [
    (dict(seconds=2.0), "MagiHuman Long Video: connect 'positive' (from MagiHuman Text Encode) or write 'prompts' "
                        "with a text encoder connected"),
    (dict(seconds=2.0, prompts="a\n---\nb"), "MagiHuman Long Video: 'prompts' needs the text encoder"),
    (dict(seconds=0.0, positive=True), "MagiHuman Long Video: seconds is 0, which means 'the length of the speech', "
                                       "but no 'speech' audio is connected: set the seconds"),
    (dict(seconds=2.0, positive=True, overlap_frames=30),
     "MagiHuman Long Video: an overlap of 30 frames is not shorter than the window (25 frames, 0.96 s)"),
    (dict(seconds=8.0, positive=True, text_encoder=None, prompts="", window_seconds=1.0, overlap_frames=0,
          sample_rate="51200 (true rate)", image="ref.png"), "MagiHuman Long Video: 'image' must be a ComfyUI IMAGE"),
])
def test_errors(env, kw, message):
    if kw.get("positive") is True:
        kw["positive"] = encode(env, "x")
    with pytest.raises(ValueError) as e:
        long_video(env, **kw)
    assert str(e.value).startswith(message), str(e.value)


def test_base_model_needs_a_negative(env):
    base = env.load_tiny("base")["base"]
    with pytest.raises(ValueError, match=r"the base model samples with CFG: connect 'negative' \(the second output "
                                         r"of MagiHuman Text Encode\)"):
        long_video(env, model=base, positive=encode(env, "x"), seconds=2.0)


def test_registered(pack):
    nodes = importlib.import_module(f"{pack.__name__}.nodes")
    ids = [c.define_schema().node_id for c in nodes.NODE_CLASSES]
    assert "MagiHumanLongVideo" in ids and "MagiHumanExtend" in ids


def test_vae_calls_reserve_their_memory(env, monkeypatch):
    """Every VAE call of the run tells ComfyUI what it needs beside the weights, priced as the single-shot nodes
    price it (a decode next to a resident DiT must not run out of memory)."""
    handle_cls = type(env.models["wan"])
    real, calls = handle_cls.use, []
    monkeypatch.setattr(handle_cls, "use", lambda self, memory_required=0: calls.append((self, memory_required))
                        or real(self, memory_required))
    m, mem = env.models, P.memory
    long_video(env, positive=encode(env, "A man talks."), seconds=2.0, overlap_frames=4)
    asked = lambda h: sorted(r for s, r in calls if s is h)  # noqa: E731
    latents = [P.empty_latents(SIZE, SIZE, w.seconds) for w in P.plan_long_video(2.0, 1.0, 4).windows]
    assert asked(m["wan"]) == [mem.image_encode_bytes(m["wan"].model, SIZE, SIZE)] * 2  # windows 2, 3 start on a frame
    assert asked(m["turbo"]) == sorted(mem.video_decode_bytes(m["turbo"].model, lat) for lat in latents)
    assert asked(m["audio"]) == sorted(mem.audio_decode_bytes(m["audio"].model, lat.audio.shape[1]) for lat in latents)
    assert min(asked(m["turbo"]) + asked(m["audio"])) > 0
    calls.clear()  # A2V: the reference is encoded once, for the whole speech
    long_video(env, positive=encode(env, "A man talks."), seconds=0.0, speech=speech_audio(2.3))
    steps = P.plan_long_video(60 / 25, 1.0).audio_steps  # the windows' audio steps (61 frames in windows of 25)
    assert asked(m["audio"]) == [mem.reference_audio_encode_bytes(m["audio"].model, steps * AUDIO_HOP)]
