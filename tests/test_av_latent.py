"""The AV latent inside ComfyUI: ``samples`` is a comfy NestedTensor([video, audio]) that core latent nodes
index consistently. Here the core nodes' own operations are replayed on it (the real-server run is
tests/test_comfyui_real_latent.py); ComfyUI's nested_tensor.py is used when a harness ComfyUI is set up,
else a stand-in with the same behaviour."""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

COMFY_NESTED = Path(os.environ.get("COMFYUI_DIR", "/tmp/comfyui-real")) / "ComfyUI" / "comfy" / "nested_tensor.py"


class StandInNestedTensor:
    """What ComfyUI 0.8.0's comfy.nested_tensor.NestedTensor does (same attributes and results)."""

    def __init__(self, tensors):
        self.tensors = list(tensors)
        self.is_nested = True

    def _copy(self):
        return StandInNestedTensor(self.tensors)

    def apply_operation(self, other, operation):
        o = self._copy()
        for i, t in enumerate(o.tensors):
            o.tensors[i] = operation(t, other.tensors[i] if isinstance(other, StandInNestedTensor) else other)
        return o

    def __add__(self, b):
        return self.apply_operation(b, lambda x, y: x + y)

    def __mul__(self, b):
        return self.apply_operation(b, lambda x, y: x * y)

    def __getitem__(self, *args, **kwargs):
        return self.apply_operation(None, lambda x, y: x.__getitem__(*args, **kwargs))

    def unbind(self):
        return self.tensors

    def to(self, *args, **kwargs):
        return self.apply_operation(None, lambda x, y: x.to(*args, **kwargs))

    def size(self):
        return self.tensors[0].size()

    @property
    def shape(self):
        return self.tensors[0].shape

    @property
    def ndim(self):
        return max(t.ndim for t in self.tensors)


def _nested_base():
    if COMFY_NESTED.is_file():
        spec = importlib.util.spec_from_file_location("comfy_nested_tensor_for_tests", COMFY_NESTED)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod.NestedTensor
    return StandInNestedTensor


@pytest.fixture(scope="module")
def lio(pack):
    return importlib.import_module(f"{pack.__name__}.nodes.latent_io")


@pytest.fixture(scope="module")
def base():
    return _nested_base()


@pytest.fixture
def nested(pack, base, monkeypatch):
    """Nodes behave as inside ComfyUI: their LATENTs carry NestedTensor samples."""
    compat = importlib.import_module(f"{pack.__name__}.nodes.compat")
    monkeypatch.setattr(compat, "ComfyNestedTensor", base)
    return base


def _av(pack, b=2, t=2, n=5, h=2, w=4, seed=0):
    from magihuman.pipeline import AVLatent

    g = torch.Generator().manual_seed(seed)
    return AVLatent(video=torch.randn(b, 48, t, h, w, generator=g), audio=torch.randn(b, n, 64, generator=g))


# ------------------------------------------------------------------ what core nodes do to samples
def test_samples_are_a_comfy_nested_tensor(lio, pack, nested):
    lat = lio.to_latent(_av(pack))
    s = lat["samples"]
    assert isinstance(s, nested) and s.is_nested and "magihuman_audio" not in lat
    video, audio = s.unbind()
    assert video.shape == (2, 48, 2, 2, 4) and audio.shape == (2, 5, 64)
    assert s.shape[0] == 2 and len(s) == 2  # core reads the batch from .shape[0]


def test_latent_from_batch_slices_video_and_audio_alike(lio, pack, nested):
    av = _av(pack, b=3)
    s = lio.to_latent(av)["samples"]
    out = s[1:3].clone()  # LatentFromBatch: s_in[batch_index:batch_index + length].clone()
    back = lio.from_latent({"samples": out}, "t")
    assert torch.equal(back.video, av.video[1:3]) and torch.equal(back.audio, av.audio[1:3])


def test_repeat_latent_batch_repeats_every_member(lio, pack, nested):
    av = _av(pack)
    s = lio.to_latent(av)["samples"]
    out = s.repeat((3,) + (1,) * (s.ndim - 1))  # RepeatLatentBatch
    back = lio.from_latent({"samples": out}, "t")
    assert torch.equal(back.video, av.video.repeat(3, 1, 1, 1, 1)) and torch.equal(back.audio, av.audio.repeat(3, 1, 1))


def test_latent_batch_concatenates_video_with_video_audio_with_audio(lio, pack, nested):
    a, b = _av(pack, seed=1), _av(pack, b=1, seed=2)
    out = torch.cat((lio.to_latent(a)["samples"], lio.to_latent(b)["samples"]), dim=0)  # LatentBatch
    back = lio.from_latent({"samples": out}, "t")
    assert torch.equal(back.video, torch.cat([a.video, b.video])) and torch.equal(back.audio, torch.cat([a.audio, b.audio]))


def test_latent_batch_refuses_other_sizes_and_kinds_clearly(lio, pack, nested):
    s = lio.to_latent(_av(pack))["samples"]
    with pytest.raises(TypeError, match="same size and length"):
        torch.cat((s, lio.to_latent(_av(pack, n=8))["samples"]))
    with pytest.raises(TypeError, match="another kind"):
        torch.cat((s, torch.zeros(2, 4, 8, 8)))


@pytest.mark.parametrize("op", ["narrow_t", "interpolate", "index_channels", "repeat_channels", "write_frames",
                                "reshape"])
def test_other_dimensions_raise_a_clear_error(lio, pack, nested, op):
    s = lio.to_latent(_av(pack))["samples"]
    calls = {"narrow_t": lambda: torch.narrow(s, s.ndim - 3, 0, 1),  # LatentCut on t
             "interpolate": lambda: torch.nn.functional.interpolate(s, size=(4, 4)),  # common_upscale
             "index_channels": lambda: s[:, :4],
             "repeat_channels": lambda: s.repeat(1, 2, 1, 1, 1),
             "write_frames": lambda: s.__setitem__((slice(None), slice(None), slice(0, 1)), 0.0),  # ReplaceVideoLatentFrames
             "reshape": lambda: s.reshape(2, -1)}  # common_upscale
    with pytest.raises((TypeError, AttributeError), match="not supported on the joint latent.*Split AV Latent"):
        calls[op]()
    assert not hasattr(s, "reshape")  # still an AttributeError for hasattr()


def test_save_and_load_latent_keep_video_audio_and_flags(lio, pack, nested, tmp_path):
    av = _av(pack)
    av.denoised, av.audio_fixed = True, True
    s = lio.to_latent(av)["samples"]
    path = tmp_path / "x.latent"
    # SaveLatent: {"latent_tensor": samples["samples"].contiguous(), "latent_format_version_0": tensor([])}
    save_file({"latent_tensor": s.contiguous(), "latent_format_version_0": torch.tensor([])}, str(path))
    loaded = {"samples": load_file(str(path))["latent_tensor"].float() * 1.0}  # LoadLatent
    back = lio.from_latent(loaded, "t")
    assert torch.equal(back.video, av.video) and torch.equal(back.audio, av.audio)
    assert back.denoised and back.audio_fixed and back.stage == "base"
    # the packed form survives core batch slicing too (each row carries its header)
    row = lio.from_latent({"samples": loaded["samples"][1:2].clone()}, "t")
    assert torch.equal(row.video, av.video[1:2]) and torch.equal(row.audio, av.audio[1:2])


def test_damaged_packed_latent_is_refused(lio, pack):
    packed = lio.pack_av(torch.zeros(1, 48, 2, 2, 2), torch.zeros(1, 5, 64))
    with pytest.raises(lio.LatentTypeError, match="damaged"):
        lio.from_latent({"samples": packed[:, :, :-1]}, "t")


def test_arithmetic_and_to_keep_the_class_and_flags(lio, pack, nested):
    av = _av(pack)
    av.stage, av.denoised = "sr", True
    s = lio.to_latent(av)["samples"]
    for out in (s * 2.0, s + s, s.to(torch.float64), s[0:1]):
        assert type(out) is type(s) and out.flags == s.flags


def test_ti2v_image_latent_follows_batch_slicing(lio, pack, nested):
    av = _av(pack, b=2)
    av.image_latent = torch.randn(1, 48, 1, 2, 4).expand(2, -1, -1, -1, -1).contiguous()
    lat = lio.to_latent(av)
    one = dict(lat, samples=lat["samples"][1:2].clone())
    assert lio.from_latent(one, "t").image_latent.shape[0] == 1
    four = dict(lat, samples=lat["samples"].repeat(2, 1, 1, 1, 1))
    assert torch.equal(lio.from_latent(four, "t").image_latent[3], av.image_latent[0])


# ------------------------------------------------------------------ other latents, split / join
@pytest.mark.parametrize("samples", [
    pytest.param(lambda base: base([torch.zeros(1, 128, 4, 8, 8), torch.zeros(1, 8, 16, 16)]), id="ltx_av_nested"),
    pytest.param(lambda base: torch.zeros(1, 4, 64, 64), id="sd_image"),
    pytest.param(lambda base: torch.zeros(1, 16, 4, 8, 8), id="wan21_video"),
])
def test_a_latent_from_another_model_gets_the_clear_error(lio, base, samples):
    with pytest.raises(lio.LatentTypeError, match="not a MagiHuman audio\\+video latent.*Empty AV Latent"):
        lio.from_latent({"samples": samples(base)}, "MagiHuman Turbo VAE Decode")


def test_split_and_join_round_trip_nested(lio, pack, nested):
    av = _av(pack)
    video, audio = lio.split_latent(lio.to_latent(av), "split")
    assert isinstance(video["samples"], torch.Tensor) and audio["samples"].shape == (2, 64, 5)
    with pytest.raises(lio.LatentTypeError, match="only a video latent"):
        lio.from_latent(video, "decode")
    joined = lio.join_latent(video, audio, "join")
    assert isinstance(joined["samples"], nested)
    back = lio.from_latent(joined, "t")
    assert torch.equal(back.video, av.video) and torch.equal(back.audio, av.audio)


def test_any_mapping_is_read(lio, pack, nested):
    from types import MappingProxyType

    av = _av(pack)
    back = lio.from_latent(MappingProxyType(lio.to_latent(av)), "t")
    assert torch.equal(back.audio, av.audio)
    v, a = lio.split_latent(MappingProxyType(lio.to_latent(av)), "t")
    assert lio.join_latent(MappingProxyType(v), MappingProxyType(a), "t")


def test_plain_form_outside_comfyui(lio, pack):
    lat = lio.to_latent(_av(pack))
    assert type(lat) is dict and isinstance(lat["samples"], torch.Tensor) and "magihuman_audio" in lat


# ------------------------------------------------------------------ nodes end to end in nested mode
def test_nodes_decode_a_core_sliced_batch_like_the_full_batch(nested, node_pack, tiny_dir, lio):
    env = node_pack(tiny_dir)
    try:
        m = env.load_tiny("dit", "te", "turbo", "audio")
        (pos, _neg) = env.run("MagiHumanTextEncode", text_encoder=m["te"], prompt="A man says hello.",
                              encode_negative=False)
        (lat,) = env.run("MagiHumanEmptyAVLatent", width=64, height=64, seconds=0.4, batch_size=2)
        (den,) = env.run("MagiHumanDistilledSampler", model=m["dit"], positive=pos, latent=lat, seed=3, steps=2)
        assert isinstance(den["samples"], nested)
        one = dict(den, samples=den["samples"][1:2].clone())  # core LatentFromBatch(batch_index=1)
        (full_audio,) = env.run("MagiHumanAudioDecode", audio_vae=m["audio"], latent=den, sample_rate="48000")
        (one_audio,) = env.run("MagiHumanAudioDecode", audio_vae=m["audio"], latent=one, sample_rate="48000")
        assert torch.allclose(one_audio["waveform"][0], full_audio["waveform"][1], atol=1e-5)
        (full_frames,) = env.run("MagiHumanTurboVAEDecode", turbo_vae=m["turbo"], latent=den)
        (one_frames,) = env.run("MagiHumanTurboVAEDecode", turbo_vae=m["turbo"], latent=one)
        assert torch.allclose(one_frames, full_frames[len(one_frames):], atol=1e-5)
    finally:
        env.close()


# ------------------------------------------------------------------ audio rate vs. core encoders
def _prompt(rate_label, consumer="SaveVideo"):
    p = {"5": {"class_type": "MagiHumanAudioDecode", "inputs": {"sample_rate": rate_label, "latent": ["4", 0]}},
         "6": {"class_type": "CreateVideo", "inputs": {"images": ["3", 0], "audio": ["5", 0], "fps": 25.0}},
         "7": {"class_type": "SaveVideo", "inputs": {"video": ["6", 0]}, "_meta": {"title": "Save Video"}}}
    if consumer != "SaveVideo":
        p["7"] = {"class_type": consumer, "inputs": {"audio": ["5", 0]}}
    return p


@pytest.mark.parametrize("consumer,label,fails", [
    ("SaveVideo", "51200 (true rate)", True), ("SaveVideo", "48000", False),
    ("SaveVideo", "44100 (official file rate)", False), ("SaveAudioMP3", "51200 (true rate)", True),
    ("SaveAudio", "51200 (true rate)", False)])
def test_audio_rate_that_mp4_cannot_store_is_caught_by_name(pack, consumer, label, fails):
    decode = importlib.import_module(f"{pack.__name__}.nodes.decode")
    rate = decode.AUDIO_RATES[label]
    check = lambda: decode.check_rate_fits_consumers(rate, label, _prompt(label, consumer), "5",  # noqa: E731
                                                     "MagiHuman Audio Decode")
    if fails:
        with pytest.raises(ValueError, match="cannot be stored in .*Choose sample_rate 48000"):
            check()
    else:
        check()


def test_every_audio_rate_option_is_accepted_by_aac_or_documented(pack):
    decode = importlib.import_module(f"{pack.__name__}.nodes.decode")
    schema = next(c for c in importlib.import_module(f"{pack.__name__}.nodes").NODE_CLASSES
                  if c.__name__ == "MagiHumanAudioDecode").define_schema()
    tip = next(i for i in schema.inputs if i.id == "sample_rate").tooltip
    for label, rate in decode.AUDIO_RATES.items():
        assert rate in decode.AAC_RATES or ("FLAC" in tip and str(rate) in tip), label
