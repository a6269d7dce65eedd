"""The pack beside other packs' and core nodes' types in the real ComfyUI 0.8 server (issue 15 item 3).

- ComfyUI-VideoHelperSuite (VHS, the most-installed video pack): Load Video (frames + its lazy AUDIO Mapping)
  -> MagiHuman Image To Video + Reference Audio -> sampler -> decoders -> VHS Video Combine (h264-mp4 with
  audio); VHS Load Audio (a plain dict) -> Reference Audio; a video without sound -> the node's clear error.
  VHS is read from ``MAGIHUMAN_VHS_DIR`` (default /tmp/vhs/ComfyUI-VideoHelperSuite: a checkout or
  ``git archive`` of Kosinkadink/ComfyUI-VideoHelperSuite, never copied into this repository) and needs its
  requirements in the harness venv: ``$COMFYUI_DIR/venv/bin/pip install opencv-python-headless imageio-ffmpeg``.
  Skipped, saying which, when any of that is missing.
- Core nodes only: Load Video -> Get Video Components -> our nodes -> Create Video / Save Video, our AUDIO into
  Save Audio (FLAC/MP3/Opus) and Preview Audio, our frames into Save Animated WEBP, core Load Audio -> Trim Audio
  Duration -> Audio Adjust Volume -> Reference Audio.

The input media are written at test time with PyAV (a 2 s 96x64 H.264 clip with an AAC sine track, the same
without sound, a 16 kHz WAV). Each test starts one server (~8 s) and runs the tiny models.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from tests.comfyui_harness import COMFYUI_DIR, PYTHON, explain, requires_comfyui, run_workflow, run_workflow_with_packs

pytestmark = requires_comfyui

VHS_DIR = Path(os.environ.get("MAGIHUMAN_VHS_DIR", "/tmp/vhs/ComfyUI-VideoHelperSuite"))
VHS_DEPS = ("cv2", "imageio_ffmpeg")  # opencv-python(-headless), imageio-ffmpeg: VHS's requirements.txt


@lru_cache(maxsize=None)
def vhs_missing() -> str:
    """Why the VHS tests cannot run here ('' when they can)."""
    if not (VHS_DIR / "__init__.py").is_file() or not (VHS_DIR / "videohelpersuite").is_dir():
        return (f"no ComfyUI-VideoHelperSuite source at {VHS_DIR} (set MAGIHUMAN_VHS_DIR to a checkout of "
                "Kosinkadink/ComfyUI-VideoHelperSuite; it is only read, never copied)")
    r = subprocess.run([str(PYTHON), "-c", f"import {', '.join(VHS_DEPS)}"], capture_output=True, text=True,
                       timeout=120)
    if r.returncode:
        return (f"VideoHelperSuite's requirements are not installed in {COMFYUI_DIR}/venv "
                f"({r.stderr.strip().splitlines()[-1] if r.stderr.strip() else 'import failed'}); run "
                f"{COMFYUI_DIR}/venv/bin/pip install opencv-python-headless imageio-ffmpeg")
    return ""


@pytest.fixture
def vhs():
    why = vhs_missing()
    if why:
        pytest.skip(why)
    return VHS_DIR


# ----------------------------------------------------------------------------------------------- media


def write_clip(path: Path, seconds=2.0, fps=25, size=(96, 64), rate=44100, sound=True, freq=440.0) -> Path:
    """A small H.264 MP4 (a colour ramp) with, if ``sound``, a stereo AAC sine track."""
    av = pytest.importorskip("av")
    w, h = size
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        if sound:
            audio = out.add_stream("aac", rate=rate)
            audio.layout = "stereo"
        n = int(round(seconds * fps))
        for i in range(n):
            img = np.zeros((h, w, 3), np.uint8)
            img[..., 0] = 255 * i // n
            img[:, : w * (i + 1) // n, 1] = 200
            for p in video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in video.encode():
            out.mux(p)
        if sound:
            t = np.arange(int(seconds * rate)) / rate
            mono = (0.4 * np.sin(2 * math.pi * freq * t)).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(np.repeat(mono, 2)[None], format="flt", layout="stereo")
            frame.sample_rate = rate
            for p in audio.encode(frame):
                out.mux(p)
            for p in audio.encode():
                out.mux(p)
    return path


def write_wav(path: Path, seconds=2.0, rate=16000, freq=300.0) -> Path:
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=rate)
        stream.layout = "mono"
        t = np.arange(int(seconds * rate)) / rate
        frame = av.AudioFrame.from_ndarray((0.4 * 32767 * np.sin(2 * math.pi * freq * t)).astype(np.int16)[None],
                                           format="s16", layout="mono")
        frame.sample_rate = rate
        for p in stream.encode(frame):
            out.mux(p)
        for p in stream.encode():
            out.mux(p)
    return path


def streams(path) -> dict:
    """{"video": (codec, decoded frames, w, h), "audio": (codec, rate, channels, seconds)} of a media file."""
    av = pytest.importorskip("av")
    info = {}
    with av.open(str(path)) as c:
        if c.streams.video:
            s = c.streams.video[0]
            info["video"] = (s.codec_context.name, sum(1 for _ in c.decode(video=0)), s.codec_context.width,
                             s.codec_context.height)
    with av.open(str(path)) as c:
        if c.streams.audio:
            s = c.streams.audio[0]
            n = sum(f.samples for f in c.decode(audio=0))
            info["audio"] = (s.codec_context.name, s.codec_context.sample_rate, s.codec_context.channels,
                             n / s.codec_context.sample_rate)
    return info


# ----------------------------------------------------------------------------------------------- workflows


def _l(node, slot=0):
    return [str(node), slot]


SECONDS = 1.0
FRAMES = 25  # decoded frames of a 1 s clip: 26 audio steps -> 7 latent frames -> 4·6 + 1


def magihuman_nodes() -> dict:
    """Tiny-model loaders, the prompt and an empty 1 s 64x64 latent (node ids "1".."7")."""
    return {
        "1": {"class_type": "MagiHumanDiTLoader", "inputs": {"model_name": "magihuman_tiny_distill/",
                                                             "weight_dtype": "fp32", "attention": "sdpa",
                                                             "compile": False, "compute_dtype": "auto"}},
        "2": {"class_type": "MagiHumanTextEncoderLoader", "inputs": {"text_encoder": "t5gemma_tiny/",
                                                                     "weight_dtype": "fp32"}},
        "3": {"class_type": "MagiHumanTurboVAELoader", "inputs": {"vae_name": "turbo_vae_tiny/", "weight_dtype": "fp32"}},
        "4": {"class_type": "MagiHumanAudioVAELoader", "inputs": {"vae_name": "stable_audio_open_tiny/",
                                                                  "weight_dtype": "fp32"}},
        "5": {"class_type": "MagiHumanVideoVAELoader", "inputs": {"vae_name": "wan2.2_vae_tiny.safetensors",
                                                                  "weight_dtype": "fp32"}},
        "6": {"class_type": "MagiHumanTextEncode", "inputs": {"text_encoder": _l(2), "prompt": "A man says hello.",
                                                              "negative_prompt": "x", "encode_negative": False}},
        "7": {"class_type": "MagiHumanEmptyAVLatent", "inputs": {"width": 64, "height": 64, "seconds": SECONDS,
                                                                 "batch_size": 1}},
    }


def a2v_ti2v_chain(image, audio) -> dict:
    """Reference Audio + Image To Video on node 7's latent -> sampler "13" -> frames "14", AUDIO (48 kHz) "15"."""
    return {
        "11": {"class_type": "MagiHumanReferenceAudio", "inputs": {"latent": _l(7), "audio_vae": _l(4), "audio": audio,
                                                                   "trim_to_latent": True}},
        "12": {"class_type": "MagiHumanImageToVideo", "inputs": {"latent": _l(11), "video_vae": _l(5), "image": image}},
        "13": {"class_type": "MagiHumanDistilledSampler", "inputs": {"model": _l(1), "positive": _l(6), "latent": _l(12),
                                                                     "seed": 42, "steps": 8, "shift": 5.0}},
        "14": {"class_type": "MagiHumanTurboVAEDecode", "inputs": {"turbo_vae": _l(3), "latent": _l(13),
                                                                   "offload_frames": False}},
        "15": {"class_type": "MagiHumanAudioDecode", "inputs": {"audio_vae": _l(4), "latent": _l(13),
                                                                "sample_rate": "48000"}},
    }


def vhs_load_video(name: str) -> dict:
    return {"class_type": "VHS_LoadVideo", "inputs": {"video": name, "force_rate": 0, "custom_width": 0,
                                                      "custom_height": 0, "frame_load_cap": 0, "skip_first_frames": 0,
                                                      "select_every_nth": 1}}


def vhs_video_combine(images, audio, prefix: str) -> dict:
    # the h264-mp4 format's own widgets (pix_fmt, crf, save_metadata, trim_to_audio) travel as extra inputs
    return {"class_type": "VHS_VideoCombine", "inputs": {
        "images": images, "audio": audio, "frame_rate": 25, "loop_count": 0, "filename_prefix": prefix,
        "format": "video/h264-mp4", "pingpong": False, "save_output": True,
        "pix_fmt": "yuv420p", "crf": 19, "save_metadata": True, "trim_to_audio": False}}


def _run(tmp_path, prompt: dict, models, inputs, packs=()) -> dict:
    wf = tmp_path / "workflow_api.json"
    wf.write_text(json.dumps(prompt, indent=1))
    if packs:
        r = run_workflow_with_packs(wf, models, extra_packs=packs, inputs=inputs)
        for name, st in r["extra_packs"].items():
            assert not st["import_failed"], f"{name} did not import:\n{st['error']}\n" + explain(r)
    else:
        r = run_workflow(wf, models, inputs=inputs)
    return r


def _outputs(r, suffix) -> list[Path]:
    return [Path(p) for p in r.get("outputs", []) if p.endswith(suffix)]


# ----------------------------------------------------------------------------------------------- tests


def test_vhs_load_video_to_video_combine(tmp_path, tiny_dir, vhs):
    """VHS Load Video's frames and lazy AUDIO Mapping drive TI2V + A2V; VHS Video Combine muxes our frames and
    AUDIO into an h264 MP4; VHS Load Audio's plain dict is taken too (decoded to FLAC by core Save Audio)."""
    clip = write_clip(tmp_path / "magihuman_interop_av.mp4")
    wav = write_wav(tmp_path / "magihuman_interop_voice.wav")
    prompt = {**magihuman_nodes(), "10": vhs_load_video(clip.name), **a2v_ti2v_chain(_l(10, 0), _l(10, 2)),
              "20": vhs_video_combine(_l(14), _l(15), "magihuman/vhs_interop"),
              # VHS Load Audio (eager, a plain dict) -> Reference Audio (untrimmed: 2 s) -> Audio Decode -> Save Audio
              "30": {"class_type": "VHS_LoadAudioUpload", "inputs": {"audio": wav.name, "start_time": 0, "duration": 0}},
              "31": {"class_type": "MagiHumanReferenceAudio", "inputs": {"latent": _l(7), "audio_vae": _l(4),
                                                                         "audio": _l(30), "trim_to_latent": False}},
              "32": {"class_type": "MagiHumanAudioDecode", "inputs": {"audio_vae": _l(4), "latent": _l(31),
                                                                      "sample_rate": "44100 (official file rate)"}},
              "33": {"class_type": "SaveAudio", "inputs": {"audio": _l(32), "filename_prefix": "audio/vhs_voice"}}}
    r = _run(tmp_path, prompt, tiny_dir, [clip, wav], packs=[vhs])
    assert r["returncode"] == 0 and r["workflow"] == "success", explain(r)
    # the video's 50 frames reached TI2V (first frame used), its sound reached A2V (sets the audio latent)
    assert "50 reference images given; using the first" in r["log"], explain(r)
    assert r["log"].count("MagiHuman A2V: reference audio gives") == 2, explain(r)
    muxed = _outputs(r, "-audio.mp4")
    assert len(muxed) == 1, explain(r)
    info = streams(muxed[0])
    assert info["video"] == ("h264", FRAMES, 64, 64), info
    codec, rate, channels, seconds = info["audio"]
    assert (codec, rate, channels) == ("aac", 48000, 2) and abs(seconds - FRAMES / 25) < 0.1, info
    (flac,) = _outputs(r, ".flac")
    codec, rate, channels, seconds = streams(flac)["audio"]
    assert (codec, rate, channels) == ("flac", 44100, 2) and abs(seconds - 2.0) < 0.1, (codec, rate, channels, seconds)


def test_vhs_video_without_sound_gives_the_node_error(tmp_path, tiny_dir, vhs):
    """VHS's lazy AUDIO of a video without a sound track fails when read: the error names our node and says why."""
    clip = write_clip(tmp_path / "magihuman_interop_silent.mp4", sound=False)
    prompt = {**magihuman_nodes(), "10": vhs_load_video(clip.name), **a2v_ti2v_chain(_l(10, 0), _l(10, 2)),
              "20": vhs_video_combine(_l(14), _l(15), "magihuman/vhs_silent")}
    r = _run(tmp_path, prompt, tiny_dir, [clip], packs=[vhs])
    assert r["workflow"] == "error", explain(r)
    out = r["stdout"]
    assert "execution_error: node 11 (MagiHumanReferenceAudio)" in out, explain(r)
    assert "MagiHuman Reference Audio (A2V): could not read the 'audio' input" in out, explain(r)
    assert "VHS failed to extract audio" in out and "sound track" in out, explain(r)


def test_core_video_and_audio_nodes(tmp_path, tiny_dir):
    """Core Load Video -> Get Video Components -> TI2V + A2V -> Create Video / Save Video; our AUDIO into Save Audio
    (FLAC, MP3, Opus) and Preview Audio, our frames into Save Animated WEBP; core Load Audio -> Trim Audio Duration
    -> Audio Adjust Volume -> Reference Audio -> Audio Decode -> Audio Concat (with the generated audio)."""
    clip = write_clip(tmp_path / "magihuman_interop_av.mp4")
    wav = write_wav(tmp_path / "magihuman_interop_voice.wav")
    prompt = {**magihuman_nodes(),
              "10": {"class_type": "LoadVideo", "inputs": {"file": clip.name}},
              "9": {"class_type": "GetVideoComponents", "inputs": {"video": _l(10)}},
              **a2v_ti2v_chain(_l(9, 0), _l(9, 1)),
              "20": {"class_type": "CreateVideo", "inputs": {"images": _l(14), "fps": 25.0, "audio": _l(15)}},
              "21": {"class_type": "SaveVideo", "inputs": {"video": _l(20), "filename_prefix": "video/core_interop",
                                                           "format": "mp4", "codec": "h264"}},
              "22": {"class_type": "SaveAudio", "inputs": {"audio": _l(15), "filename_prefix": "audio/core_interop"}},
              "23": {"class_type": "SaveAudioMP3", "inputs": {"audio": _l(15), "filename_prefix": "audio/core_interop",
                                                              "quality": "V0"}},
              "24": {"class_type": "SaveAudioOpus", "inputs": {"audio": _l(15), "filename_prefix": "audio/core_interop",
                                                               "quality": "64k"}},
              "25": {"class_type": "PreviewAudio", "inputs": {"audio": _l(15)}},
              "26": {"class_type": "SaveAnimatedWEBP", "inputs": {"images": _l(14), "filename_prefix": "core_interop",
                                                                  "fps": 25.0, "lossless": False, "quality": 80,
                                                                  "method": "default"}},
              "30": {"class_type": "LoadAudio", "inputs": {"audio": wav.name}},
              "31": {"class_type": "TrimAudioDuration", "inputs": {"audio": _l(30), "start_index": 0.25, "duration": 1.0}},
              "32": {"class_type": "AudioAdjustVolume", "inputs": {"audio": _l(31), "volume": -6}},
              "33": {"class_type": "MagiHumanReferenceAudio", "inputs": {"latent": _l(7), "audio_vae": _l(4),
                                                                         "audio": _l(32), "trim_to_latent": False}},
              "34": {"class_type": "MagiHumanAudioDecode", "inputs": {"audio_vae": _l(4), "latent": _l(33),
                                                                      "sample_rate": "48000"}},
              "35": {"class_type": "AudioConcat", "inputs": {"audio1": _l(34), "audio2": _l(15), "direction": "after"}},
              "36": {"class_type": "SaveAudio", "inputs": {"audio": _l(35), "filename_prefix": "audio/core_concat"}}}
    r = _run(tmp_path, prompt, tiny_dir, [clip, wav])
    assert r["returncode"] == 0 and r["workflow"] == "success", explain(r)
    assert "50 reference images given; using the first" in r["log"], explain(r)
    assert r["log"].count("MagiHuman A2V: reference audio gives") == 2, explain(r)
    (mp4,) = _outputs(r, ".mp4")
    info = streams(mp4)
    assert info["video"] == ("h264", FRAMES, 64, 64) and info["audio"][:3] == ("aac", 48000, 2), info
    for suffix, codec in ((".mp3", "mp3"), (".opus", "opus")):
        (f,) = _outputs(r, suffix)
        assert streams(f)["audio"][0].startswith(codec), (f, streams(f))
    flacs = {p.name.split("_0")[0]: p for p in _outputs(r, ".flac") if "temp" not in p.parts}
    assert set(flacs) == {"core_interop", "core_concat"}, r.get("outputs")
    one, both = streams(flacs["core_interop"])["audio"], streams(flacs["core_concat"])["audio"]
    assert one[1:3] == (48000, 2) and abs(both[3] - (one[3] + 1.0)) < 0.1, (one, both)  # 1 s trimmed voice + ours
    assert _outputs(r, ".webp"), explain(r)
