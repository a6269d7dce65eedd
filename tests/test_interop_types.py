"""Other packs' AUDIO / IMAGE / LATENT containers (issue 15 item 1), driven without ComfyUI on the tiny models.

ComfyUI hands a node whatever the upstream node returned. Core nodes only index an AUDIO
(``audio["waveform"]``, ``audio["sample_rate"]``), so packs return other containers: ComfyUI-VideoHelperSuite's
Load Video gives AUDIO as a lazy ``collections.abc.Mapping`` that reads the file on first access. The stand-ins
here behave like that (written from the description, not copied). Things that really are not audio / images keep
an error that names the node. The real VideoHelperSuite chain runs in ``test_comfyui_interop.py``.
"""

from __future__ import annotations

import math
import types
from collections.abc import Mapping

import numpy as np
import pytest
import torch

A2V = "MagiHuman Reference Audio (A2V)"
TI2V = "MagiHuman Image To Video (TI2V)"


class LazyAudio(Mapping):
    """An AUDIO that builds its dict on the first key access (like VideoHelperSuite's Load Video output)."""

    def __init__(self, make):
        self._make, self._data, self.loads = make, None, 0

    def _load(self):
        if self._data is None:
            self.loads += 1
            self._data = self._make()
        return self._data

    def __getitem__(self, key):
        return self._load()[key]

    def __iter__(self):
        return iter(self._load())

    def __len__(self):
        return len(self._load())


class IndexableAudio:
    """Not a Mapping, but indexable by key, which is all core nodes do with an AUDIO."""

    def __init__(self, d):
        self._d = d

    def __getitem__(self, key):
        return self._d[key]


class MappingLatent(Mapping):
    """A read-only LATENT Mapping over a latent dict."""

    def __init__(self, d):
        self._d = dict(d)

    def __getitem__(self, key):
        return self._d[key]

    def __iter__(self):
        return iter(self._d)

    def __len__(self):
        return len(self._d)


def _sine(seconds=1.0, rate=44100, channels=2, f=330.0):
    t = torch.arange(int(seconds * rate), dtype=torch.float32) / rate
    return (0.4 * torch.sin(2 * math.pi * f * t)).repeat(1, channels, 1)  # [1, C, S]


@pytest.fixture(scope="module")
def env(node_pack, tiny_dir):
    np_ = node_pack(tiny_dir)
    models = np_.load_tiny("dit", "te", "turbo", "wan", "audio")
    yield {"run": np_.run, "m": models, "nodes": np_.nodes}
    np_.close()


def _latent(env, seconds=0.5):
    return env["run"]("MagiHumanEmptyAVLatent", width=64, height=64, seconds=seconds)[0]


def _ref(env, audio, latent=None, trim=True):
    return env["run"]("MagiHumanReferenceAudio", latent=_latent(env) if latent is None else latent,
                      audio_vae=env["m"]["audio"], audio=audio, trim_to_latent=trim)[0]


# ----------------------------------------------------------------------------------------------- AUDIO


def test_reference_audio_accepts_a_lazy_mapping(env):
    wave = _sine()
    plain = _ref(env, {"waveform": wave, "sample_rate": 44100})
    lazy = LazyAudio(lambda: {"waveform": wave.clone(), "sample_rate": 44100})
    assert lazy.loads == 0
    out = _ref(env, lazy)
    assert lazy.loads == 1  # read once, when the node used it
    assert torch.equal(out["magihuman_audio"], plain["magihuman_audio"])
    assert out["magihuman"]["audio_fixed"] and out["samples"].shape == plain["samples"].shape
    # untrimmed: the Mapping's length sets the clip length, as a dict's does
    assert torch.equal(_ref(env, LazyAudio(lambda: {"waveform": wave, "sample_rate": 44100}), trim=False)
                       ["magihuman_audio"], _ref(env, {"waveform": wave, "sample_rate": 44100}, trim=False)
                       ["magihuman_audio"])


@pytest.mark.parametrize("wrap", [
    pytest.param(types.MappingProxyType, id="MappingProxyType"),
    pytest.param(IndexableAudio, id="indexable-non-Mapping"),
    pytest.param(lambda d: {**d, "sample_rate": torch.tensor(44100)}, id="tensor-rate"),
    pytest.param(lambda d: {**d, "sample_rate": np.int64(44100)}, id="numpy-rate"),
    pytest.param(lambda d: {**d, "sample_rate": 44100.0}, id="float-whole-rate"),
    pytest.param(lambda d: {**d, "waveform": d["waveform"][0]}, id="2d-waveform"),
    pytest.param(lambda d: {**d, "waveform": d["waveform"].half()}, id="fp16-waveform"),
])
def test_reference_audio_accepts_what_core_nodes_accept(env, wrap):
    wave = _sine()
    ref = _ref(env, {"waveform": wave, "sample_rate": 44100})["magihuman_audio"]
    out = _ref(env, wrap({"waveform": wave, "sample_rate": 44100}))["magihuman_audio"]
    torch.testing.assert_close(out, ref, atol=2e-3, rtol=0)  # fp16 rounding only for the fp16 case


def _bad_lazy(exc):
    def load():
        raise exc
    return LazyAudio(load)


@pytest.mark.parametrize("audio,problem", [
    pytest.param("voice.wav", "must be a ComfyUI AUDIO", id="string"),
    pytest.param(None, "must be a ComfyUI AUDIO", id="None"),
    pytest.param(torch.zeros(1, 1, 16000), "must be a ComfyUI AUDIO", id="bare-tensor"),
    pytest.param([torch.zeros(1, 1, 16000), 16000], "must be a ComfyUI AUDIO", id="list"),
    pytest.param({"samples": torch.zeros(1, 64, 10)}, "has no 'waveform'", id="dict-without-waveform"),
    pytest.param({"waveform": torch.zeros(1, 1, 16000)}, "has no 'sample_rate'", id="dict-without-rate"),
    pytest.param(LazyAudio(lambda: {"waveform": [0.0] * 16000, "sample_rate": 16000}), "waveform must be a tensor",
                 id="mapping-list-waveform"),
    pytest.param(LazyAudio(lambda: {"waveform": np.zeros((1, 1, 16000), np.float32), "sample_rate": 16000}),
                 "waveform must be a tensor", id="mapping-numpy-waveform"),
    pytest.param(LazyAudio(lambda: {"path": "a.wav"}), "has no 'waveform'", id="mapping-without-waveform"),
    pytest.param({"waveform": torch.zeros(1, 1, 16000), "sample_rate": "fast"}, "sample_rate must be a whole number",
                 id="text-rate"),
    pytest.param({"waveform": torch.zeros(1, 1, 16000), "sample_rate": 44100.5}, "sample_rate must be a whole number",
                 id="fractional-rate"),
    pytest.param({"waveform": torch.zeros(1, 1, 16000), "sample_rate": torch.tensor([16000, 16000])},
                 "sample_rate must be a whole number", id="tensor-of-rates"),
    pytest.param({"waveform": torch.zeros(0, 1, 16000), "sample_rate": 16000}, "holds no clip", id="empty-batch"),
    # a lazy AUDIO that cannot load (VideoHelperSuite raises a plain Exception for a video without sound)
    pytest.param(_bad_lazy(Exception("VHS failed to extract audio from clip.mp4")), "could not read the 'audio' input",
                 id="lazy-load-fails"),
    pytest.param(_bad_lazy(KeyError("5.1(side)")), "could not read the 'audio' input", id="lazy-load-keyerror"),
])
def test_reference_audio_refuses_what_is_not_audio(env, audio, problem):
    with pytest.raises(ValueError) as e:
        _ref(env, audio)
    msg = str(e.value)
    assert msg.startswith(A2V + ":"), msg  # names the node
    assert problem in msg, msg
    if "could not read" in problem:
        assert ("VHS failed to extract audio" in msg or "5.1(side)" in msg) and "sound track" in msg


# ----------------------------------------------------------------------------------------------- IMAGE


def _ti2v(env, image, latent=None):
    return env["run"]("MagiHumanImageToVideo", latent=_latent(env) if latent is None else latent,
                      video_vae=env["m"]["wan"], image=image)[0]


def test_image_inputs_from_video_loaders(env, caplog):
    """VideoHelperSuite (and core GetVideoComponents) IMAGE: a float32 [frames, H, W, 3] tensor -> first frame."""
    frames = torch.rand(12, 40, 56, 3, generator=torch.Generator().manual_seed(0))
    first = _ti2v(env, frames[:1])["magihuman"]["image_latent"]
    with caplog.at_level("WARNING"):
        out = _ti2v(env, frames)["magihuman"]["image_latent"]
    assert torch.equal(out, first) and "12 reference images given; using the first" in caplog.text
    # a non-contiguous frame slice (select-every-nth style) and an RGBA batch (alpha dropped) work too
    assert torch.equal(_ti2v(env, frames[::3])["magihuman"]["image_latent"], first)
    rgba = torch.cat([frames[:1], torch.rand(1, 40, 56, 1)], -1)
    assert torch.equal(_ti2v(env, rgba)["magihuman"]["image_latent"], first)


@pytest.mark.parametrize("image", [
    pytest.param("/etc/hostname", id="path-string"),
    pytest.param(None, id="None"),
    pytest.param({"samples": torch.zeros(1, 4, 8, 8)}, id="latent-dict"),  # e.g. a VAE-encoded video output
    pytest.param([torch.rand(1, 8, 8, 3)], id="list-of-tensors"),
])
def test_image_to_video_refuses_what_is_not_an_image(env, image):
    with pytest.raises(ValueError) as e:
        _ti2v(env, image)
    msg = str(e.value)
    assert msg.startswith(TI2V + ":") and "must be a ComfyUI IMAGE" in msg, msg


# ----------------------------------------------------------------------------------------------- LATENT


def test_latent_mappings_through_every_latent_input(env):
    """A LATENT that is a Mapping (not a dict) through every node with a LATENT input."""
    run, m = env["run"], env["m"]
    pos, _ = run("MagiHumanTextEncode", text_encoder=m["te"], prompt="hello", negative_prompt="",
                 encode_negative=False)
    lat = MappingLatent(_latent(env))
    a2v = run("MagiHumanReferenceAudio", latent=lat, audio_vae=m["audio"],
              audio=LazyAudio(lambda: {"waveform": _sine(1.0, 16000), "sample_rate": 16000}), trim_to_latent=True)[0]
    ti2v = run("MagiHumanImageToVideo", latent=MappingLatent(a2v), video_vae=m["wan"], image=torch.rand(1, 32, 32, 3))[0]
    den = run("MagiHumanDistilledSampler", model=m["dit"], positive=pos, latent=MappingLatent(ti2v), seed=0, steps=1)[0]
    ref = run("MagiHumanDistilledSampler", model=m["dit"], positive=pos, latent=ti2v, seed=0, steps=1)[0]
    assert torch.equal(den["samples"], ref["samples"])
    frames = run("MagiHumanTurboVAEDecode", turbo_vae=m["turbo"], latent=MappingLatent(den))[0]
    assert frames.dim() == 4 and frames.shape[-1] == 3
    audio = run("MagiHumanAudioDecode", audio_vae=m["audio"], latent=MappingLatent(den), sample_rate="48000")[0]
    assert audio["sample_rate"] == 48000
    v, a = run("MagiHumanSplitAVLatent", latent=MappingLatent(den))
    joined = run("MagiHumanJoinAVLatent", video_latent=MappingLatent(v), audio_latent=MappingLatent(a))[0]
    assert torch.equal(joined["magihuman_audio"], den["magihuman_audio"])


def test_audio_decode_takes_a_mapping_audio_latent(env):
    """An audio-only LATENT (from Split AV Latent) as a Mapping is still told apart from an AV latent."""
    run, m = env["run"], env["m"]
    _, a = run("MagiHumanSplitAVLatent", latent=_latent(env))
    ref = run("MagiHumanAudioDecode", audio_vae=m["audio"], latent=a, sample_rate="48000")[0]
    out = run("MagiHumanAudioDecode", audio_vae=m["audio"], latent=MappingLatent(a), sample_rate="48000")[0]
    assert torch.equal(out["waveform"], ref["waveform"])


def test_our_outputs_are_plain_core_types(env):
    """What we hand to other packs: AUDIO a plain dict (float32 CPU [B, C, S] + int rate, what VideoHelperSuite's
    Video Combine pipes to ffmpeg as f32le), IMAGE a float32 [F, H, W, 3] tensor in [0, 1], LATENT a dict."""
    run, m = env["run"], env["m"]
    pos, _ = run("MagiHumanTextEncode", text_encoder=m["te"], prompt="hello", negative_prompt="", encode_negative=False)
    den = run("MagiHumanDistilledSampler", model=m["dit"], positive=pos, latent=_latent(env), seed=0, steps=1)[0]
    assert type(den) is dict and isinstance(den["samples"], torch.Tensor)
    frames = run("MagiHumanTurboVAEDecode", turbo_vae=m["turbo"], latent=den)[0]
    assert frames.dtype == torch.float32 and frames.device.type == "cpu" and frames.shape[-1] == 3
    assert 0 <= float(frames.min()) and float(frames.max()) <= 1
    audio = run("MagiHumanAudioDecode", audio_vae=m["audio"], latent=den, sample_rate="48000")[0]
    assert type(audio) is dict and type(audio["sample_rate"]) is int
    w = audio["waveform"]
    assert w.dtype == torch.float32 and w.device.type == "cpu" and w.dim() == 3 and not w.requires_grad
    assert w.squeeze(0).transpose(0, 1).numpy().tobytes()  # how Video Combine feeds ffmpeg
