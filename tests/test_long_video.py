"""Long videos (windows, continuation): the window plan on its own, the engine's mechanics on the tiny models
(conditioning chain, cross-fades, A2V slices, seeds, cancel, continuation, SR per window) against independent
recomputations, and the command line (flags, messages, memory per window)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from magihuman import cli, media
from magihuman import pipeline as P
from magihuman.checkpoints import load_dit
from magihuman.errors import PipelineError
from magihuman.geometry import AUDIO_HOP, AUDIO_SAMPLE_RATE
from magihuman.loaders import load_audio_vae, load_turbo_vae, load_wan_vae
from magihuman.models.text_encoder import T5GemmaEncoder
from magihuman.pipeline.conditioning import encode_image_at
from magihuman.pipeline.windows import plan_long_video, plan_windows, window_frames_for
from magihuman.tiny import TINY_FILES

ROOT = Path(__file__).resolve().parents[1]


# ============================================================================ the plan alone


def test_plan_24_seconds_in_4_second_windows():
    plan = plan_long_video(24, 4, seed=7)
    assert plan.total_frames == 601 and plan.window_frames == 101 and plan.stride == 100
    assert [w.start for w in plan.windows] == [0, 100, 200, 300, 400, 500]
    assert all(w.frames == 101 and w.keep == 101 for w in plan.windows)
    assert [w.seed for w in plan.windows] == [7, 8, 9, 10, 11, 12]
    assert [w.conditioned for w in plan.windows] == [False] + [True] * 5
    assert plan.describe() == "6 windows of 4 s"
    assert plan.audio_steps == 601


@pytest.mark.parametrize("seconds, window, overlap", [
    (24, 4, 0), (24, 4, 8), (24, 4, 3), (30, 4, 12), (9.3, 4, 5), (7, 1, 0), (7, 1, 22), (13, 10, 40), (4.5, 4, 0),
    (60, 5, 7)])
def test_plan_covers_the_timeline(seconds, window, overlap):
    plan = plan_long_video(seconds, window, overlap)
    wf = window_frames_for(window)
    assert plan.total_frames == P.clip_frames(seconds)
    for a, b in zip(plan.windows, plan.windows[1:]):
        assert b.start == a.start + wf - 1 - overlap  # b's frame 0 is a's conditioning frame
        assert a.frames == a.keep == wf
    last = plan.windows[-1]
    assert last.end == plan.total_frames and last.start < plan.total_frames
    assert (last.frames - 1) % 4 == 0 and last.keep <= last.frames <= wf
    assert len(plan.windows) == 1 or last.keep >= overlap + 2  # at least one new frame after the overlap
    if len(plan.windows) > 1:
        assert last.frames >= min(wf, 25)  # never a sub-second generation
        assert plan.windows[-2].start + wf < plan.total_frames  # no window more than needed


def test_plan_one_pass_when_the_clip_fits_a_window():
    plan = plan_long_video(2, 4)
    latent = P.empty_latents(64, 64, 2)
    assert len(plan.windows) == 1 and plan.describe() == "one pass of 1.92 s"
    assert plan.windows[0].frames == plan.total_frames == latent.decoded_frames == 49


def test_plan_overlap_and_last_window():
    plan = plan_long_video(24, 4, 8)
    assert plan.stride == 92 and [w.start for w in plan.windows] == [0, 92, 184, 276, 368, 460, 552]
    assert (plan.windows[-1].keep, plan.windows[-1].frames) == (49, 49)
    assert plan.describe() == "7 windows of 4 s (the last 1.92 s), overlap 8 frames"


def test_plan_prompts_per_window():
    plan = plan_long_video(24, 4, prompts=3)
    assert [w.prompt for w in plan.windows] == [0, 1, 2, 2, 2, 2]
    with pytest.raises(PipelineError, match=r"^7 prompts for 6 windows: the extra prompts would be lost; give at "
                                            r"most one prompt per window \(or a longer clip\)$"):
        plan_long_video(24, 4, prompts=7)


def test_plan_seeds_wrap_at_2_64():
    plan = plan_long_video(12, 4, seed=2**64 - 2)
    assert [w.seed for w in plan.windows] == [2**64 - 2, 2**64 - 1, 0]


@pytest.mark.parametrize("window, overlap, message", [
    (0.5, 0, "a window of 0.5 s is too short: windows last at least 1 s (each one is a whole generation)"),
    (12, 0, "a window of 12 s is beyond the model's limit of 10 s per pass (it was trained on clips of a few "
            "seconds); use windows of 4-5 s, as the official examples"),
    (4, 100, "an overlap of 100 frames is not shorter than the window (101 frames, 4 s): with the conditioning "
             "frame it must leave new frames; use at most 99 (a few frames, e.g. 4-12, is enough for a soft seam)"),
    (4, -1, "overlap_frames must be a whole number >= 0, got -1"),
])
def test_plan_bad_windows(window, overlap, message):
    with pytest.raises(PipelineError) as e:
        plan_long_video(24, window, overlap)
    assert str(e.value) == message


def test_plan_continuation():
    plan = plan_long_video(8, 4, 4, continued=True)
    assert plan.total_frames == P.clip_frames(8) + 4  # timeline from the clip's conditioning frame
    assert plan.total_frames - 4 - 1 == 200  # new frames: exactly 8 s
    assert all(w.conditioned for w in plan.windows)
    with pytest.raises(PipelineError, match="continuing by 0.04 s is too short"):
        plan_long_video(0.04, 4, continued=True)
    with pytest.raises(PipelineError, match="window_frames must be 4j"):
        plan_windows(100, 100)


def test_split_prompts():
    text = "first prompt\n\nsecond paragraph\n---\n  second prompt  \n ---  \n\n---\nthird"
    assert P.split_prompts(text) == ["first prompt\n\nsecond paragraph", "second prompt", "third"]


# ============================================================================ the engine on the tiny models

SIZE = 64


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    te = T5GemmaEncoder.from_pretrained(tiny_dir / TINY_FILES["text_encoder"], dtype=torch.float32, device="cpu")
    conds = [P.encode_prompt(te, text, None) for text in ("A man talks.", "He laughs.", "He waves.")]
    models = P.LongVideoModels(
        dit=load_dit(tiny_dir / TINY_FILES["distill"], dtype=torch.float32),
        video_vae=load_wan_vae(tiny_dir / TINY_FILES["video_vae"], dtype=torch.float32),
        audio_vae=load_audio_vae(tiny_dir / TINY_FILES["audio_vae"], dtype=torch.float32),
        video_decoder=load_turbo_vae(None, tiny_dir / TINY_FILES["turbo_vae"], dtype=torch.float32))
    return models, conds


def run(models, conds, **kw):
    """generate_long_video at 64x64, 4 steps, with every window's final latent and frames captured."""
    seen = []
    kw.setdefault("width", SIZE)
    kw.setdefault("height", SIZE)
    kw.setdefault("denoise_options", dict(sampler="distilled", steps=4))
    result = P.generate_long_video(models, conds, on_window=lambda w, lat, fr: seen.append((w, lat, fr)), **kw)
    return result, seen


def painted_video(plan, seen):
    """The expected output: window 0, then every window painted over the timeline, its first K frames blended in
    with weight j / (K + 1) for its frame j (an independent formulation of the cross-fade)."""
    k = plan.overlap
    canvas = torch.zeros(plan.total_frames, *seen[0][2].shape[1:])
    for w, _, frames in seen:
        if not w.conditioned:
            canvas[:w.keep] = frames[:w.keep]
            continue
        for j in range(1, k + 1):
            canvas[w.start + j] = (1 - j / (k + 1)) * canvas[w.start + j] + (j / (k + 1)) * frames[j]
        canvas[w.start + k + 1:w.end] = frames[k + 1:w.keep]
    return canvas


def painted_audio(plan, waves):
    """The expected soundtrack: every window's own audio painted at 2048 samples a frame, blended over the K + 1
    steps it shares with the previous one (weight (i + 0.5) / n for its sample i)."""
    n = (plan.overlap + 1) * AUDIO_HOP
    canvas = torch.zeros(2, plan.total_frames * AUDIO_HOP)
    for w, wave in waves:
        s = w.start * AUDIO_HOP
        if w.conditioned:
            b = (torch.arange(n, dtype=torch.float32) + 0.5) / n
            canvas[:, s:s + n] = (1 - b) * canvas[:, s:s + n] + b * wave[:, :n]
            canvas[:, s + n:w.end * AUDIO_HOP] = wave[:, n:w.keep * AUDIO_HOP]
        else:
            canvas[:, :w.keep * AUDIO_HOP] = wave[:, :w.keep * AUDIO_HOP]
    return canvas


def test_windows_chain_their_conditioning_frames_and_cross_fade(tiny):
    models, conds = tiny
    result, seen = run(models, conds[:1], seconds=2, window_seconds=1, overlap_frames=4, seed=11)
    plan = result.plan
    assert [w.start for w in plan.windows] == [0, 20, 40] and plan.windows[-1].keep == 9
    assert result.frames.shape == (49, SIZE, SIZE, 3) and result.frame_count == 49
    assert result.audio.shape == (2, 49 * AUDIO_HOP) and result.sample_rate == AUDIO_SAMPLE_RATE
    # window k+1's first latent frame is window k's conditioning frame (its frame `stride`), re-encoded
    for (_, _, prev_frames), (w, latent, _) in zip(seen, seen[1:]):
        expected = encode_image_at(models.video_vae, prev_frames[plan.stride], SIZE, SIZE, "cpu")
        assert torch.equal(latent.video[:, :, :1], expected)
        assert torch.equal(latent.image_latent, expected)
    assert seen[0][1].image_latent is None
    torch.testing.assert_close(result.frames, painted_video(plan, seen), rtol=0, atol=1e-6)
    waves = [(w, P.decode_audio(models.audio_vae, lat)[0]) for w, lat, _ in seen]
    torch.testing.assert_close(result.audio, painted_audio(plan, waves), rtol=0, atol=1e-6)


def test_window_seeds_are_reproducible(tiny):
    models, conds = tiny
    opts = dict(sampler="distilled", steps=4)
    result, seen = run(models, conds[:1], seconds=2, window_seconds=1, seed=5, denoise_options=opts)
    # window 0 is the ordinary one-pass pipeline with the run's seed
    lat0 = P.denoise(models.dit, P.empty_latents(SIZE, SIZE, seen[0][0].seconds), conds[0], seed=5, **opts)
    assert torch.equal(seen[0][1].video, lat0.video) and torch.equal(seen[0][1].audio, lat0.audio)
    # window 1: a TI2V generation from window 0's last frame with the seed 5 + 1
    w1 = seen[1][0]
    latent = P.encode_image(models.video_vae, seen[0][2][result.plan.stride], P.empty_latents(SIZE, SIZE, w1.seconds))
    lat1 = P.denoise(models.dit, latent, conds[0], seed=6, **opts)
    assert w1.seed == 6 and torch.equal(seen[1][1].video, lat1.video) and torch.equal(seen[1][1].audio, lat1.audio)
    again, _ = run(models, conds[:1], seconds=2, window_seconds=1, seed=5, denoise_options=opts)
    assert torch.equal(again.frames, result.frames) and torch.equal(again.audio, result.audio)


def test_prompts_go_to_their_windows(tiny):
    models, conds = tiny
    used = []
    orig = P.long_video.denoise

    def spy(model, latent, cond, **kw):
        used.append(cond.prompt)
        return orig(model, latent, cond, **kw)

    P.long_video.denoise = spy
    try:
        run(models, conds[:2], seconds=2, window_seconds=1, overlap_frames=4)
    finally:
        P.long_video.denoise = orig
    assert used == ["A man talks.", "He laughs.", "He laughs."]


def speech(seconds: float, rate: int = 16000) -> torch.Tensor:
    t = torch.arange(int(seconds * rate)) / rate
    return (0.3 * torch.sin(2 * math.pi * 330 * t) * torch.sin(2 * math.pi * 0.7 * t))[None]


def test_a2v_windows_take_the_reference_slices(tiny):
    models, conds = tiny
    wave = speech(2.3)
    result, seen = run(models, conds[:1], reference_audio=(wave, 16000), window_seconds=1, overlap_frames=2, seed=1)
    plan = result.plan
    assert plan.total_frames == 61 and result.notes == []  # 57.5 steps of speech, rounded up to 4j + 1 frames
    prepared = media.prepare_reference_audio(wave, 16000)  # [2, S] mono mix at 51.2 kHz
    padded = torch.nn.functional.pad(prepared, (0, plan.audio_steps * AUDIO_HOP - prepared.shape[-1]))
    z = media.encode_reference_audio(models.audio_vae, padded).transpose(1, 2)  # [1, N, 64]
    for w, latent, _ in seen:
        assert latent.audio_fixed and torch.equal(latent.audio, z[:, w.start:w.start + w.frames])
    # the soundtrack is the reference itself (silence after its end)
    n = min(prepared.shape[-1], result.audio.shape[-1])
    assert torch.equal(result.audio[:, :n], prepared[:, :n]) and not result.audio[:, n:].any()


def test_a2v_length_messages(tiny, caplog):
    models, conds = tiny
    wave = speech(1.5)
    result, _ = run(models, conds[:1], reference_audio=(wave, 16000), seconds=1.2, window_seconds=1)
    assert result.notes == ["1.2 s trims the 1.50 s reference audio (its first 1.2 s are used)"]
    assert result.frame_count == P.clip_frames(1.2)
    result, _ = run(models, conds[:1], reference_audio=(wave, 16000), seconds=3, window_seconds=2)
    assert result.notes == ["the reference audio lasts 1.50 s, less than the 3 s asked: the clip follows the audio "
                            "(1.50 s)", "the reference audio (1.50 s) is shorter than one window (1.92 s): one pass "
                            "of 1.6 s"]
    assert result.frame_count == 41 and "less than the 3 s asked" in caplog.text  # 37.5 steps -> 4j + 1 frames


def test_cancel_between_windows(tiny):
    models, conds = tiny
    calls, done = [], []

    def cancel():
        calls.append(1)
        if len(calls) == 3:  # before window 0, before its decode, then before window 1
            raise KeyboardInterrupt

    frames = []
    with pytest.raises(KeyboardInterrupt):
        P.generate_long_video(models, conds[:1], width=SIZE, height=SIZE, seconds=2, window_seconds=1,
                              denoise_options=dict(steps=2), check_cancel=cancel, on_frames=frames.append,
                              on_window=lambda w, lat, fr: done.append(w.index))
    assert done == [0] and sum(f.shape[0] for f in frames) == 25  # window 0's final frames only

    steps = []

    def stop_in_window_1(win, stage, i, n, x0):
        steps.append((win.index, stage, i, n))
        if win.index == 1 and i == 2:
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        P.generate_long_video(models, conds[:1], width=SIZE, height=SIZE, seconds=2, window_seconds=1,
                              denoise_options=dict(steps=3), callback=stop_in_window_1)
    assert steps == [(0, "base", 1, 3), (0, "base", 2, 3), (0, "base", 3, 3), (1, "base", 1, 3), (1, "base", 2, 3)]


def clip_frames_uint8(n: int, h: int, w: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, h, w, 3), generator=g, dtype=torch.uint8)


def test_continue_a_clip_of_another_size(tiny):
    models, conds = tiny
    clip = clip_frames_uint8(30, 80, 96)
    t = torch.arange(int(30 / 25 * 44100)) / 44100
    sound = torch.stack([0.2 * torch.sin(2 * math.pi * 440 * t), 0.1 * torch.sin(2 * math.pi * 550 * t)])
    k = 4
    full, seen = run(models, conds[:1], seconds=1, window_seconds=2, overlap_frames=k, seed=3,
                     continue_from=P.ClipToContinue(frames=clip, audio=(sound, 44100)))
    assert len(seen) == 1
    assert full.notes == ["the clip to continue is 96x80; its frames are centre-cropped and resized to 64x64, as a "
                          "TI2V image is"]
    assert full.frame_count == 30 + P.clip_frames(1) - 1 == 54
    fitted = torch.stack([media.prepare_image(f.numpy(), SIZE, SIZE)[0, :, 0].permute(1, 2, 0).add(1).mul(0.5)
                          .clamp(0, 1) for f in clip])  # each frame exactly as a TI2V image is prepared
    head = 30 - 1 - k
    assert torch.equal(full.frames[:head + 1], fitted[:head + 1])  # the clip, up to its conditioning frame
    w0, lat0, frames0 = seen[0]
    assert w0.conditioned and torch.equal(lat0.image_latent, encode_image_at(models.video_vae, fitted[head], SIZE,
                                                                             SIZE, "cpu"))
    a = torch.arange(1, k + 1, dtype=torch.float32).div(k + 1).view(k, 1, 1, 1)
    torch.testing.assert_close(full.frames[head + 1:30], fitted[head + 1:] * (1 - a) + frames0[1:k + 1] * a,
                               rtol=0, atol=1e-6)
    assert torch.equal(full.frames[30:], frames0[k + 1:w0.keep])
    resampled = media.resample(sound, 44100, AUDIO_SAMPLE_RATE)
    assert torch.equal(full.audio[:, :head * AUDIO_HOP], resampled[:, :head * AUDIO_HOP])
    new, _ = run(models, conds[:1], seconds=1, window_seconds=2, overlap_frames=k, seed=3,
                 continue_from=P.ClipToContinue(frames=clip, audio=(sound, 44100), keep_original=False))
    assert new.frame_count == P.clip_frames(1) - 1 == 24
    assert torch.equal(new.frames, full.frames[30:]) and torch.equal(new.audio, full.audio[:, 30 * AUDIO_HOP:])


def test_continue_a2v_keeps_the_clip_sound_and_the_speech(tiny):
    models, conds = tiny
    clip = clip_frames_uint8(12, SIZE, SIZE)
    sound = 0.1 * torch.ones(1, 12 * AUDIO_HOP)  # mono at the true rate, exactly the clip's length
    wave = speech(1.0, AUDIO_SAMPLE_RATE)
    result, seen = run(models, conds[:1], reference_audio=(wave, AUDIO_SAMPLE_RATE), window_seconds=1,
                       overlap_frames=2, continue_from=P.ClipToContinue(frames=clip, audio=(sound, AUDIO_SAMPLE_RATE)))
    assert result.frame_count == 12 + 28  # 25 steps of speech after the clip, rounded up to whole latent frames
    assert torch.equal(result.frames[:10], clip[:10].float() / 255)
    prepared = media.prepare_reference_audio(wave, AUDIO_SAMPLE_RATE)
    assert torch.equal(result.audio[:, :12 * AUDIO_HOP], sound.expand(2, -1))  # the clip's sound, then the speech
    assert torch.equal(result.audio[:, 12 * AUDIO_HOP:37 * AUDIO_HOP], prepared)
    assert not result.audio[:, 37 * AUDIO_HOP:].any()
    # the model hears the clip's last 3 steps, then the speech
    timeline = torch.cat([sound[:, -3 * AUDIO_HOP:].expand(2, -1), prepared], 1)
    steps = result.plan.audio_steps
    timeline = torch.nn.functional.pad(timeline, (0, steps * AUDIO_HOP - timeline.shape[-1]))
    z = media.encode_reference_audio(models.audio_vae, timeline).transpose(1, 2)
    assert all(torch.equal(lat.audio, z[:, w.start:w.start + w.frames]) for w, lat, _ in seen)


def test_super_resolution_runs_per_window(tiny, tiny_dir, monkeypatch):
    models, conds = tiny
    sr_models = P.LongVideoModels(dit=models.dit, video_vae=models.video_vae, audio_vae=models.audio_vae,
                                  video_decoder=models.video_decoder,
                                  sr_dit=load_dit(tiny_dir / TINY_FILES["sr_540p"], dtype=torch.float32))
    base_inputs = []
    orig = P.long_video.denoise
    monkeypatch.setattr(P.long_video, "denoise",
                        lambda m, lat, c, **kw: base_inputs.append(lat) or orig(m, lat, c, **kw))
    result, seen = run(sr_models, conds[:1], seconds=1.5, window_seconds=1, sr_size=(128, 96),
                       sr_options=dict(steps=1))
    assert result.size == (128, 96) and result.frames.shape == (P.clip_frames(1.5), 96, 128, 3)
    assert [lat.stage for _, lat, _ in seen] == ["sr", "sr"]
    # window 1's base stage starts from window 0's SR frame, resized to the base size like a TI2V image, and its
    # SR stage re-encodes that frame at the SR size
    frame = seen[0][2][result.plan.stride]
    assert torch.equal(base_inputs[1].image_latent, encode_image_at(models.video_vae, frame, SIZE, SIZE, "cpu"))
    assert torch.equal(seen[1][1].video[:, :, :1], encode_image_at(models.video_vae, frame, 128, 96, "cpu"))


def test_bad_engine_inputs(tiny):
    models, conds = tiny
    kw = dict(width=SIZE, height=SIZE, seconds=2, window_seconds=1)
    with pytest.raises(PipelineError, match="give either a first image"):
        P.generate_long_video(models, conds, image=torch.zeros(8, 8, 3),
                              continue_from=P.ClipToContinue(frames=clip_frames_uint8(4, 8, 8)), **kw)
    with pytest.raises(PipelineError, match=r"the clip to continue has 3 frame\(s\); an overlap of 4 frames needs at "
                                            r"least 5"):
        P.generate_long_video(models, conds[:1], continue_from=P.ClipToContinue(frames=clip_frames_uint8(3, 8, 8)),
                              overlap_frames=4, **kw)
    with pytest.raises(PipelineError, match="at least one prompt"):
        P.generate_long_video(models, [], **kw)
    with pytest.raises(PipelineError, match="give the length in seconds"):
        P.generate_long_video(models, conds[:1], width=SIZE, height=SIZE, window_seconds=1)
    with pytest.raises(PipelineError, match="'seed' is set per window"):
        P.generate_long_video(models, conds[:1], denoise_options=dict(seed=3), **kw)


# ============================================================================ command line


def cli_run(capsys, *argv):
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.err


def base_args(tiny_dir, out):
    return ["generate", "--preset", "tiny", "--models", str(tiny_dir), "--output", str(out), "--quiet",
            "--steps", "2"]


def test_cli_windows(tiny_dir, tmp_path, capsys):
    out = tmp_path / "long.mp4"
    code, err = cli_run(capsys, *base_args(tiny_dir, out), "--prompt", "A man talks.", "--seconds", "12",
                        "--window-seconds", "4", "--overlap-frames", "4")
    assert code == 0, err
    assert "long video: 4 windows of 4 s (the last 0.96 s), overlap 4 frames" in err
    info = media.read_mp4_info(out)
    assert info["frames"] == 301 and (info["width"], info["height"]) == (128, 64)
    assert info["audio_duration"] == pytest.approx(301 / 25, abs=0.03)
    assert not list(tmp_path.glob(".*partial*"))


def test_cli_clip_longer_than_the_preset_is_windowed(tiny_dir, tmp_path, capsys):
    out = tmp_path / "w.mp4"
    code, err = cli_run(capsys, *base_args(tiny_dir, out), "--prompt", "x", "--seconds", "3")
    assert code == 0, err
    assert "long video: 2 windows of 1.92 s (the last 0.96 s)" in err  # the tiny preset's own length: 2 s
    assert media.read_mp4_info(out)["frames"] == P.clip_frames(3)


def write_speech(path: Path, seconds: float, rate: int = 22050) -> Path:
    import soundfile as sf

    sf.write(path, speech(seconds, rate)[0].numpy(), rate)
    return path


def test_cli_audio_keeps_the_whole_speech(tiny_dir, tmp_path, capsys):
    wav = write_speech(tmp_path / "speech.wav", 5.3)
    out = tmp_path / "a2v.mp4"
    code, err = cli_run(capsys, *base_args(tiny_dir, out), "--prompt", "x", "--audio", str(wav),
                        "--window-seconds", "4")
    assert code == 0, err
    assert "long video: 2 windows of 4 s (the last 1.28 s)" in err
    info = media.read_mp4_info(out)
    assert info["frames"] == P.clip_frames(5.3) == 133
    assert info["audio_duration"] == pytest.approx(133 / 25, abs=0.03)
    # --seconds trims the speech, and says so (in windows and in one pass)
    code, err = cli_run(capsys, *base_args(tiny_dir, out), "--prompt", "x", "--audio", str(wav), "--seconds", "4.5",
                        "--window-seconds", "4")
    assert code == 0 and "note: 4.5 s trims the 5.30 s reference audio (its first 4.5 s are used)" in err
    assert media.read_mp4_info(out)["frames"] == P.clip_frames(4.5)
    code, err = cli_run(capsys, *base_args(tiny_dir, out), "--prompt", "x", "--audio", str(wav), "--seconds", "1")
    assert code == 0 and f"--audio {wav}: 5.30 s, trimmed to 1 s (--seconds)" in err
    assert "long video" not in err


def test_cli_continue_from(tiny_dir, tmp_path, capsys):
    clip = tmp_path / "clip.mp4"
    frames = clip_frames_uint8(40, 90, 160).numpy()
    t = np.arange(int(40 / 25 * 48000)) / 48000
    media.write_mp4(clip, frames, fps=25, audio=0.2 * np.sin(2 * np.pi * 440 * t)[None].astype(np.float32),
                    sample_rate=48000)
    out = tmp_path / "more.mp4"
    code, err = cli_run(capsys, *base_args(tiny_dir, out), "--prompt", "x", "--continue-from", str(clip),
                        "--seconds", "2", "--overlap-frames", "4")
    assert code == 0, err
    assert "note: the clip to continue is 160x90; its frames are centre-cropped and resized to 128x64" in err
    info = media.read_mp4_info(out)
    assert info["frames"] == 40 + P.clip_frames(2) - 1 == 88 and (info["width"], info["height"]) == (128, 64)
    assert info["audio_duration"] == pytest.approx(88 / 25, abs=0.03)
    code, err = cli_run(capsys, *base_args(tiny_dir, out), "--prompt", "x", "--continue-from", str(clip),
                        "--seconds", "2", "--continue-output", "new")
    assert code == 0, err
    assert media.read_mp4_info(out)["frames"] == 48
    # continuing a clip into the same file: read while the new one is written, replaced at the end
    same = tmp_path / "same.mp4"
    media.write_mp4(same, frames[:, :64, :128], fps=25)
    code, err = cli_run(capsys, *base_args(tiny_dir, same), "--prompt", "x", "--continue-from", str(same),
                        "--seconds", "1")
    assert code == 0, err
    assert media.read_mp4_info(same)["frames"] == 40 + 24
    assert "note: the clip to continue has no sound: its part of the soundtrack is silent" in err


def test_cli_prompt_file(tiny_dir, tmp_path, capsys, monkeypatch):
    pf = tmp_path / "prompts.txt"
    pf.write_text("A man talks.\n\nHe is calm.\n---\nHe laughs.\n", encoding="utf-8")
    seen = []
    orig = P.generate_long_video

    def spy(models, conds, **kw):
        seen.append([c.prompt for c in conds])
        return orig(models, conds, **kw)

    monkeypatch.setattr(cli.P, "generate_long_video", spy)
    code, err = cli_run(capsys, *base_args(tiny_dir, tmp_path / "p.mp4"), "--prompt-file", str(pf),
                        "--seconds", "3")
    assert code == 0, err
    assert seen == [["A man talks.\n\nHe is calm.", "He laughs."]]


@pytest.mark.parametrize("argv, message", [
    (["--prompt", "x", "--window-seconds", "0.5"], "error: --window-seconds 0.5: windows last 1 to 10 s"),
    (["--prompt", "x", "--window-seconds", "11"], "error: --window-seconds 11: windows last 1 to 10 s"),
    (["--prompt", "x", "--overlap-frames", "48"],
     "error: --overlap-frames 48 is not shorter than the window (49 frames): use at most 47"),
    (["--prompt", "x", "--overlap-frames", "-1"], "error: --overlap-frames must be >= 0, got -1"),
    ([], "error: give --prompt (or --prompt-file with one prompt per window)"),
    (["--prompt-file", "/nonexistent/p.txt"], "error: --prompt-file /nonexistent/p.txt: no such file"),
    (["--prompt", "x", "--prompt-file", "/nonexistent/p.txt"], "error: give --prompt or --prompt-file, not both"),
    (["--prompt", "x", "--continue-from", "/nonexistent/c.mp4"], "error: --continue-from /nonexistent/c.mp4: no such "
                                                                  "file"),
    (["--prompt", "x", "--continue-output", "new"], "error: --continue-output needs --continue-from"),
    (["--prompt", "x", "--window-seconds", "4", "--gpus", "2"], "error: long videos run on one device for now"),
])
def test_cli_long_video_usage_errors(tiny_dir, tmp_path, capsys, argv, message):
    code, err = cli_run(capsys, *base_args(tiny_dir, tmp_path / "o.mp4"), *argv)
    assert code == 2 and message in err, err
    assert not (tmp_path / "o.mp4").exists()


def test_cli_continue_from_other_fps(tiny_dir, tmp_path, capsys):
    clip = tmp_path / "c30.mp4"
    media.write_mp4(clip, clip_frames_uint8(6, 64, 128).numpy(), fps=30)
    code, err = cli_run(capsys, *base_args(tiny_dir, tmp_path / "o.mp4"), "--prompt", "x", "--continue-from",
                        str(clip), "--seconds", "1")
    assert code == 2
    assert f"error: --continue-from {clip} is 30 fps; MagiHuman makes 25 fps video: convert it first" in err
    code, err = cli_run(capsys, *base_args(tiny_dir, tmp_path / "o.mp4"), "--prompt", "x", "--continue-from",
                        str(clip), "--image", str(clip))
    assert code == 2 and "--image and --continue-from both set the first frame: give one" in err


def test_cli_interrupt_removes_the_partial_file(tiny_dir, tmp_path, capsys, monkeypatch):
    calls = []
    orig = P.long_video.decode_video

    def decode_then_stop(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return orig(*a, **kw)

    monkeypatch.setattr(P.long_video, "decode_video", decode_then_stop)
    out = tmp_path / "i.mp4"
    code, err = cli_run(capsys, *base_args(tiny_dir, out), "--prompt", "x", "--seconds", "3")
    assert code == 130 and "interrupted" in err
    assert list(tmp_path.iterdir()) == []  # neither the output nor its partial file


# VmHWM: this process's own peak RSS (ru_maxrss would also count the forking pytest process, kept across exec)
PEAK_RSS = """
import re, sys
from magihuman import cli
code = cli.main(sys.argv[1:])
with open("/proc/self/status") as f:
    print("PEAK_KB", re.search(r"VmHWM:\\s*(\\d+) kB", f.read()).group(1))
sys.exit(code)
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the peak RSS from /proc (Linux)")
def test_memory_stays_at_one_window(tiny_dir, tmp_path):
    """Peak RSS of a 24 s tiny clip in 4 s windows is at most 1.5x that of a 4 s one (one window at a time).

    glibc's malloc raises its mmap threshold as large blocks are freed, after which freed memory may stay in the
    heap: the same run then peaks anywhere from 400 to 740 MB (measured) depending on the order of frees. A fixed
    threshold (MALLOC_MMAP_THRESHOLD_) makes the peak what the run holds (measured: 4 s 375 MiB, 24 s 417 MiB; one
    24 s pass before windows existed: 604 MiB)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")

    def peak(seconds: int) -> int:
        out = tmp_path / f"m{seconds}.mp4"
        proc = subprocess.run([sys.executable, "-c", PEAK_RSS, "generate", "--preset", "tiny", "--models",
                               str(tiny_dir), "--prompt", "A man talks.", "--seconds", str(seconds),
                               "--window-seconds", "4", "--output", str(out), "--quiet", "--steps", "2"],
                              cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, proc.stderr
        assert media.read_mp4_info(out)["frames"] == P.clip_frames(seconds)
        return int(proc.stdout.split("PEAK_KB")[1])

    short, long = peak(4), peak(24)
    print(f"peak RSS: 4 s {short / 1024:.0f} MiB, 24 s {long / 1024:.0f} MiB, ratio {long / short:.3f}")
    assert long <= 1.5 * short


# ============================================================================ the estimator and plan price a window


def test_a_request_that_does_not_fit_suggests_windows(monkeypatch, capsys):
    import re

    from magihuman import estimate as est
    from magihuman.plan import plan_fit

    problem = plan_fit("sr_1080p", 24, seconds=30).problem
    m = re.search(r"A (\d+) s clip fits \(--seconds \1\), or the whole 30 s in windows of \1 s "
                  r"\(--window-seconds \1\)\.$", problem)
    assert m, problem
    plan = est.estimate("distill_256p", seconds=30)
    budget = est.estimate("distill_256p", seconds=4).peak_device_bytes + est.GIB // 8
    with pytest.raises(est.MemoryEstimateError) as e:
        est.check_fits(plan, budget)
    m = re.search(r"The whole 30 s fits as windows of (\d+) s \(generate --window-seconds \1; the MagiHuman Long "
                  r"Video node\)\.", str(e.value))
    assert m and est.estimate("distill_256p", seconds=int(m.group(1))).peak_device_bytes <= budget
    # the pipeline's own guard says it too
    from magihuman.models.dit import MagiHumanDiT
    from magihuman.models.dit_config import DiTConfig

    model = MagiHumanDiT(DiTConfig.preset("tiny"))
    lat = P.empty_latents(448, 256, 20)
    need = P.dit_activation_bytes(model.config, lat, cfg=False, seconds=4)
    monkeypatch.setattr(est, "device_memory", lambda *a, **k: need)
    with pytest.raises(PipelineError, match=r"at most ~4 s fits, or the whole clip in windows of 4 s \(MagiHuman "
                                            r"Long Video, generate --window-seconds\)"):
        P.check_fits(model, lat, "test", cfg=False)
    # a 60 s clip where 20 s fit: windows within what generate accepts (10 s), not of 20 s
    lat = P.empty_latents(448, 256, 60)
    monkeypatch.setattr(est, "device_memory", lambda *a, **k: P.dit_activation_bytes(model.config, lat, cfg=False,
                                                                                     seconds=20))
    with pytest.raises(PipelineError, match=r"at most ~20 s fits, or the whole clip in windows of 10 s "):
        P.check_fits(model, lat, "test", cfg=False)


def test_plan_command_prices_one_window(capsys):
    assert cli.main(["plan", "--preset", "distill_256p", "--vram", "24", "--seconds", "30", "--window-seconds",
                     "4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("one window of 4 s (a longer clip is made window by window)\n")
    assert "distill_256p, 448x256, 4 s on 24 GiB VRAM" in out


class _Placed:
    """A model that records where it is moved (no GPU needed: the swapper only calls .to)."""

    def __init__(self, log, name):
        self.log, self.name = log, name

    def to(self, device):
        self.log.append((self.name, str(device)))
        return self


def test_cli_keeps_one_dit_on_the_gpu_and_leaves_offloaded_ones_alone():
    log = []
    base, sr = _Placed(log, "base"), _Placed(log, "sr")
    use = cli._dit_swapper(torch.device("cuda"), {"dit": False, "sr_dit": False})
    use("dit", base, None)
    use("sr_dit", sr, None)
    use("video_vae", object(), None)  # other roles: untouched
    use("dit", base, None)
    assert log == [("base", "cuda"), ("base", "cpu"), ("sr", "cuda"), ("sr", "cpu"), ("base", "cuda")]
    log.clear()  # block offload on the base DiT (--blocks-on-device 0 included): it is never moved
    use = cli._dit_swapper(torch.device("cuda"), {"dit": True, "sr_dit": False})
    use("dit", base, None)
    use("sr_dit", sr, None)
    use("dit", base, None)
    assert log == [("sr", "cuda"), ("sr", "cpu")]
    log.clear()
    use = cli._dit_swapper(torch.device("cpu"), {"dit": False, "sr_dit": False})
    use("dit", base, None)
    assert log == []
