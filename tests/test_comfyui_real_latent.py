"""The AV latent through ComfyUI's own latent nodes, in the real server (tiny models, CPU).

One server for the module. A batch-2 latent goes through core Latent From Batch, Repeat Latent Batch, Latent
Batch and Save Latent; the saved files are read back here and compared member by member (video AND audio);
Load Latent feeds the decoders; nodes that cannot keep video and audio together must stop with a message
that says what to do. Skips, saying why, when no harness ComfyUI is set up."""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.comfyui_harness import comfyui_server, requires_comfyui

pytestmark = requires_comfyui

DIT = ("MagiHumanDiTLoader", {"model_name": "magihuman_tiny_distill/", "weight_dtype": "fp32"})
TE = ("MagiHumanTextEncoderLoader", {"text_encoder": "t5gemma_tiny/", "weight_dtype": "fp32"})
TURBO = ("MagiHumanTurboVAELoader", {"vae_name": "turbo_vae_tiny/", "weight_dtype": "fp32"})
AVAE = ("MagiHumanAudioVAELoader", {"vae_name": "stable_audio_open_tiny/", "weight_dtype": "fp32"})
SECONDS = 0.4  # 11 frames: 3 latent frames, 11 audio steps


def node(class_type, **inputs):
    return {"class_type": class_type, "inputs": inputs}


def loaders() -> dict:
    return {"dit": node(DIT[0], **DIT[1]), "te": node(TE[0], **TE[1]), "turbo": node(TURBO[0], **TURBO[1]),
            "avae": node(AVAE[0], **AVAE[1])}


def sampled(batch: int = 2) -> dict:
    p = loaders()
    p["enc"] = node("MagiHumanTextEncode", text_encoder=["te", 0], prompt="A man says hello.", encode_negative=False)
    p["empty"] = node("MagiHumanEmptyAVLatent", width=64, height=64, seconds=SECONDS, batch_size=batch)
    p["sample"] = node("MagiHumanDistilledSampler", model=["dit", 0], positive=["enc", 0], latent=["empty", 0],
                       seed=5, steps=2, shift=5.0)
    return p


def to_video(p: dict, latent_src: list, prefix: str, rate: str = "48000") -> dict:
    p[f"{prefix}_frames"] = node("MagiHumanTurboVAEDecode", turbo_vae=["turbo", 0], latent=latent_src, offload_frames=False)
    p[f"{prefix}_audio"] = node("MagiHumanAudioDecode", audio_vae=["avae", 0], latent=latent_src, sample_rate=rate)
    p[f"{prefix}_video"] = node("CreateVideo", images=[f"{prefix}_frames", 0], audio=[f"{prefix}_audio", 0], fps=25.0)
    p[f"{prefix}_save"] = node("SaveVideo", video=[f"{prefix}_video", 0], filename_prefix=f"av/{prefix}", format="mp4",
                               codec="h264")
    return p


@pytest.fixture(scope="module")
def lio(pack):
    return importlib.import_module(f"{pack.__name__}.nodes.latent_io")


class Server:
    """The real server; ``queue`` fills the widget inputs a prompt leaves out with their defaults (as the
    frontend would have them) from /object_info."""

    def __init__(self, srv):
        self.srv = srv
        self.object_info = srv.request("/object_info", timeout=120)[1]

    def add_input(self, path):
        self.srv.add_input(path)

    def queue(self, prompt: dict) -> dict:
        for entry in prompt.values():
            info = self.object_info[entry["class_type"]]["input"].get("required", {})
            for name, spec in info.items():
                opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                if name not in entry["inputs"] and "default" in opts:
                    entry["inputs"][name] = opts["default"]
        return self.srv.queue(prompt)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from magihuman.tiny import write_tiny_models

    models = tmp_path_factory.mktemp("tiny_models")
    write_tiny_models(models)
    with comfyui_server(models) as srv:
        yield Server(srv)


@pytest.fixture(scope="module")
def core_run(server):
    """One prompt: sample a batch of 2, then core batch nodes -> Save Latent, and decode a sliced latent."""
    p = sampled(2)
    p["from_batch"] = node("LatentFromBatch", samples=["sample", 0], batch_index=1, length=1)
    p["repeat"] = node("RepeatLatentBatch", samples=["from_batch", 0], amount=3)
    p["batch"] = node("LatentBatch", samples1=["sample", 0], samples2=["from_batch", 0])
    for key in ("sample", "from_batch", "repeat", "batch"):
        p[f"save_{key}"] = node("SaveLatent", samples=[key, 0], filename_prefix=f"av/{key}")
    to_video(p, ["from_batch", 0], "sliced")  # the decoders refused this before ("batch sizes differ")
    p["split"] = node("MagiHumanSplitAVLatent", latent=["repeat", 0])
    p["join"] = node("MagiHumanJoinAVLatent", video_latent=["split", 0], audio_latent=["split", 1])
    p["save_joined"] = node("SaveLatent", samples=["join", 0], filename_prefix="av/joined")
    run = server.queue(p)
    assert run["status"] == "success", run["error"]
    files = {Path(f).name.split("_")[0]: Path(f) for f in run["outputs"] if str(f).endswith(".latent")}
    return run, files


def _saved(lio, path: Path):
    """(video, audio, flags) of a .latent file written by core Save Latent (read as core Load Latent does)."""
    packed = load_file(str(path))["latent_tensor"].float()
    out = lio.unpack_av(packed)
    assert out is not None, f"{path.name} is not a packed MagiHuman latent: {tuple(packed.shape)}"
    return out


def test_core_batch_nodes_keep_video_and_audio_together(core_run, lio):
    _, files = core_run
    full_v, full_a, full_flags = _saved(lio, files["sample"])
    assert full_v.shape[0] == full_a.shape[0] == 2 and full_flags & 1  # denoised
    one_v, one_a, _ = _saved(lio, files["from"])
    assert torch.equal(one_v, full_v[1:2]) and torch.equal(one_a, full_a[1:2])            # LatentFromBatch
    rep_v, rep_a, _ = _saved(lio, files["repeat"])
    assert torch.equal(rep_v, one_v.repeat(3, 1, 1, 1, 1)) and torch.equal(rep_a, one_a.repeat(3, 1, 1))  # Repeat
    cat_v, cat_a, _ = _saved(lio, files["batch"])
    assert torch.equal(cat_v, torch.cat([full_v, one_v])) and torch.equal(cat_a, torch.cat([full_a, one_a]))  # Batch
    j_v, j_a, _ = _saved(lio, files["joined"])
    assert torch.equal(j_v, rep_v) and torch.equal(j_a, rep_a)                           # Split + Join


def test_a_sliced_latent_decodes_to_one_clip(core_run):
    from magihuman import media

    run, _ = core_run
    mp4 = [f for f in run["outputs"] if str(f).endswith(".mp4")]
    assert len(mp4) == 1
    info = media.read_mp4_info(mp4[0])
    frames = 4 * ((round(SECONDS * 25)) // 4) + 1
    assert info["video_codec"] == "h264" and info["audio_codec"] == "aac" and info["frames"] == frames


def test_load_latent_feeds_the_decoders(server, core_run, lio):
    _, files = core_run
    server.add_input(files["repeat"])
    p = loaders()
    p["load"] = node("LoadLatent", latent=files["repeat"].name)
    to_video(p, ["load", 0], "loaded")
    run = server.queue(p)
    assert run["status"] == "success", run["error"]
    assert any(str(f).endswith(".mp4") for f in run["outputs"])


@pytest.mark.parametrize("case,expect", [
    ("other_model", "not a MagiHuman audio+video latent"),
    ("latent_cut", "not supported on the joint latent"),
    ("upscale", "not supported on the joint latent"),
    ("crop", "not supported on the joint latent"),
    ("replace_frames", "not supported on the joint latent"),
    ("rate_51200_mp4", "cannot be stored in an MP4"),
])
def test_what_cannot_work_says_why(server, case, expect):
    if case == "other_model":
        p = {"turbo": node(TURBO[0], **TURBO[1]), "sd": node("EmptyLatentImage", width=64, height=64, batch_size=1),
             "dec": node("MagiHumanTurboVAEDecode", turbo_vae=["turbo", 0], latent=["sd", 0], offload_frames=False),
             "prev": node("PreviewImage", images=["dec", 0])}
    elif case in ("latent_cut", "upscale", "crop", "replace_frames"):
        p = {"empty": node("MagiHumanEmptyAVLatent", width=128, height=128, seconds=SECONDS, batch_size=1)}
        p["op"] = {"latent_cut": node("LatentCut", samples=["empty", 0], dim="t", index=0, amount=1),
                   "upscale": node("LatentUpscaleBy", samples=["empty", 0], upscale_method="nearest-exact", scale_by=2.0),
                   "crop": node("LatentCrop", samples=["empty", 0], width=64, height=64, x=8, y=8),
                   "replace_frames": node("ReplaceVideoLatentFrames", destination=["empty", 0], source=["empty", 0],
                                          index=0)}[case]
        p["save"] = node("SaveLatent", samples=["op", 0], filename_prefix="av/x")
    else:
        p = to_video(sampled(1), ["sample", 0], "rate", rate="51200 (true rate)")
    run = server.queue(p)
    assert run["status"] == "error" and expect in run["error"], run["error"] or run["status"]
    if case == "rate_51200_mp4":  # caught by the decoder node, before the AAC encoder's bare "Invalid argument"
        assert "MagiHumanAudioDecode" in run["error"] and "Invalid argument" not in run["error"]


def test_true_rate_audio_still_saves_as_flac(server):
    p = sampled(1)
    p["audio"] = node("MagiHumanAudioDecode", audio_vae=["avae", 0], latent=["sample", 0], sample_rate="51200 (true rate)")
    p["save"] = node("SaveAudio", audio=["audio", 0], filename_prefix="av/true_rate")
    run = server.queue(p)
    assert run["status"] == "success", run["error"]
    import soundfile

    flac = [f for f in run["outputs"] if str(f).endswith(".flac")]
    info = soundfile.info(str(flac[0]))
    assert info.samplerate == 51200 and math.isclose(info.duration, round(SECONDS * 25) / 25, abs_tol=0.05)
