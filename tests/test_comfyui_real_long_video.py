"""MagiHuman Long Video and MagiHuman Extend in the real ComfyUI server (tiny models, CPU): a windowed clip, its
continuation, A2V from a whole speech through core Load Audio, per-window prompts, Create Video / Save Video, and
Cancel between windows. Skips, saying why, when no harness ComfyUI is set up."""

from __future__ import annotations

import math
import time
import uuid

import numpy as np
import pytest

from magihuman import media
from magihuman import pipeline as P
from tests.comfyui_harness import comfyui_server, requires_comfyui

pytestmark = requires_comfyui

LOADERS = {
    "dit": ("MagiHumanDiTLoader", {"model_name": "magihuman_tiny_distill/", "weight_dtype": "fp32"}),
    "te": ("MagiHumanTextEncoderLoader", {"text_encoder": "t5gemma_tiny/", "weight_dtype": "fp32"}),
    "turbo": ("MagiHumanTurboVAELoader", {"vae_name": "turbo_vae_tiny/", "weight_dtype": "fp32"}),
    "wan": ("MagiHumanVideoVAELoader", {"vae_name": "wan2.2_vae_tiny.safetensors", "weight_dtype": "fp32"}),
    "avae": ("MagiHumanAudioVAELoader", {"vae_name": "stable_audio_open_tiny/", "weight_dtype": "fp32"}),
}
SPEECH_SECONDS = 2.3


def node(class_type, **inputs):
    return {"class_type": class_type, "inputs": inputs}


def models() -> dict:
    return {key: node(cls, **kw) for key, (cls, kw) in LOADERS.items()}


def long_video(key: str = "long", **kw) -> dict:
    inputs = dict(model=["dit", 0], video_vae=["wan", 0], audio_vae=["avae", 0], turbo_vae=["turbo", 0],
                  width=64, height=64, window_seconds=1.0, overlap_frames=4, seed=3, steps=2, sample_rate="48000")
    inputs.update(kw)
    return {key: node("MagiHumanLongVideo", **inputs)}


def save(p: dict, src: str, prefix: str) -> dict:
    p[f"{prefix}_video"] = node("CreateVideo", images=[src, 0], audio=[src, 1], fps=25.0)
    p[f"{prefix}_save"] = node("SaveVideo", video=[f"{prefix}_video", 0], filename_prefix=f"long/{prefix}",
                               format="mp4", codec="h264")
    return p


class Server:
    """The real server; prompts get the widget defaults they leave out (as the frontend would fill them) from
    /object_info."""

    def __init__(self, srv):
        self.srv = srv
        self.object_info = srv.request("/object_info", timeout=120)[1]

    def complete(self, prompt: dict) -> dict:
        for entry in prompt.values():
            for name, spec in self.object_info[entry["class_type"]]["input"].get("required", {}).items():
                opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                if name not in entry["inputs"] and "default" in opts:
                    entry["inputs"][name] = opts["default"]
        return prompt

    def queue(self, prompt: dict) -> dict:
        return self.srv.queue(self.complete(prompt))

    def request(self, *a, **kw):
        return self.srv.request(*a, **kw)

    def log(self) -> str:
        return self.srv.log()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from magihuman.tiny import write_tiny_models

    import soundfile as sf

    root = tmp_path_factory.mktemp("long_video_real")
    write_tiny_models(root / "models")
    t = np.arange(int(SPEECH_SECONDS * 22050)) / 22050
    sf.write(root / "speech.wav", 0.3 * np.sin(2 * np.pi * 250 * t) * np.sin(2 * np.pi * 0.8 * t), 22050)
    with comfyui_server(root / "models", inputs=[root / "speech.wav"]) as srv:
        yield Server(srv)


def mp4s(run) -> dict:
    return {p.name.split("_")[0]: p for p in run["outputs"] if str(p).endswith(".mp4")}


def encoded(prompt: str) -> dict:
    """The models and one encoded prompt (node "enc")."""
    p = models()
    p["enc"] = node("MagiHumanTextEncode", text_encoder=["te", 0], prompt=prompt, encode_negative=False,
                    negative_prompt="")
    return p


def test_long_video_then_extend(server):
    p = encoded("A man talks.")
    p.update(long_video(positive=["enc", 0], seconds=2.0))
    save(p, "long", "first")
    p["more"] = node("MagiHumanExtend", images=["long", 0], clip_audio=["long", 1], model=["dit", 0],
                     video_vae=["wan", 0], audio_vae=["avae", 0], turbo_vae=["turbo", 0], positive=["enc", 0],
                     seconds=1.0, width=64, height=64, window_seconds=1.0, overlap_frames=4, seed=9, steps=2,
                     sample_rate="48000", output="clip + new part")
    save(p, "more", "extended")
    run = server.queue(p)
    assert run["status"] == "success", run["error"]
    files = mp4s(run)
    first, extended = media.read_mp4_info(files["first"]), media.read_mp4_info(files["extended"])
    assert first["frames"] == P.clip_frames(2) == 49 and (first["width"], first["height"]) == (64, 64)
    assert first["audio_codec"] == "aac" and math.isclose(first["audio_duration"], 49 / 25, abs_tol=0.05)
    assert extended["frames"] == 49 + P.clip_frames(1) - 1
    assert math.isclose(extended["audio_duration"], extended["frames"] / 25, abs_tol=0.05)
    ui = run["entry"]["outputs"]["long"]["text"][0]
    assert ui == "3 windows of 0.96 s, overlap 4 frames: 49 frames 64x64 (1.96 s)"
    assert "MagiHuman long video: window 3/3" in server.log()


def test_a2v_whole_speech_and_per_window_prompts(server):
    p = models()
    p["speech"] = node("LoadAudio", audio="speech.wav")
    p.update(long_video(text_encoder=["te", 0], prompts="A man talks.\n---\nHe smiles.", seconds=0.0,
                        speech=["speech", 0], overlap_frames=0))
    save(p, "long", "a2v")
    run = server.queue(p)
    assert run["status"] == "success", run["error"]
    info = media.read_mp4_info(mp4s(run)["a2v"])
    steps = math.ceil(SPEECH_SECONDS * 25)  # 57.5 -> 58 steps of speech, rounded up to 4j + 1 frames
    assert info["frames"] == 4 * math.ceil((steps - 1) / 4) + 1 == 61
    assert math.isclose(info["audio_duration"], 61 / 25, abs_tol=0.05)
    assert run["entry"]["outputs"]["long"]["text"][0].startswith("3 windows of 0.96 s")


def test_bad_input_says_why(server):
    p = encoded("x")
    p.update(long_video(positive=["enc", 0], seconds=2.0, overlap_frames=30))
    save(p, "long", "bad")
    run = server.queue(p)
    assert run["status"] == "error"
    assert ("MagiHuman Long Video: an overlap of 30 frames is not shorter than the window (25 frames, 0.96 s)"
            in run["error"]), run["error"]


def test_cancel_between_windows(server):
    p = encoded("A man talks.")
    p.update(long_video(positive=["enc", 0], seconds=8.0, seed=77))
    save(p, "long", "cancelled")
    start = len(server.log())
    code, resp = server.request("/prompt", {"prompt": server.complete(p), "client_id": uuid.uuid4().hex})
    assert code == 200, resp
    pid = resp["prompt_id"]
    end = time.time() + 300
    while "MagiHuman long video: window 2/" not in server.log()[start:]:
        assert time.time() < end, server.log()[-3000:]
        time.sleep(0.1)
    server.request("/interrupt", {})
    while True:
        assert time.time() < end, "the interrupted prompt did not finish"
        _, hist = server.request(f"/history/{pid}")
        entry = (hist or {}).get(pid)
        if entry and (entry.get("status") or {}).get("status_str") in ("success", "error"):
            break
        time.sleep(0.25)
    kinds = [kind for kind, _ in entry["status"]["messages"]]
    assert entry["status"]["status_str"] == "error" and "execution_interrupted" in kinds, kinds
    log = server.log()[start:]
    assert "window 4/" not in log  # stopped within window 2 or at the start of window 3
    assert not entry.get("outputs")
