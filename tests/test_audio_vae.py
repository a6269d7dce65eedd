"""Oobleck audio VAE: layout, weight-norm folding, Snake, encode/decode shapes, file loading."""

from __future__ import annotations

import json
import math
import types

import pytest
import torch
import torch.nn.functional as F

import magihuman.weights.safetensors_io as safetensors_io
from magihuman.models.audio_vae import (
    PRETRANSFORM_PREFIX,
    AudioVAELoadError,
    OobleckVAE,
    Snake,
    fold_weight_norm,
    release_model_config,
    tiny_model_config,
    to_released_state_dict,
)
from magihuman.loaders.audio_vae import load_audio_vae
from magihuman.tiny import write_tiny_audio_vae
from magihuman.weights.safetensors_io import load_file, write_file


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return write_tiny_audio_vae(tmp_path_factory.mktemp("sao"), seed=0)


@pytest.fixture(scope="module")
def released(tiny_folder):
    """The raw released-form VAE tensors (prefix stripped) of the tiny file."""
    sd = load_file(tiny_folder / "model.safetensors")
    return {k[len(PRETRANSFORM_PREFIX):]: v for k, v in sd.items() if k.startswith(PRETRANSFORM_PREFIX)}


@pytest.fixture(scope="module")
def vae(tiny_folder):
    return load_audio_vae(tiny_folder)


# ------------------------------------------------------------------ an independent functional reference


def _wn(sd, name):
    g, v = sd[name + ".weight_g"].double(), sd[name + ".weight_v"].double()
    norm = torch.sqrt((v * v).sum(dim=tuple(range(1, v.dim())), keepdim=True))
    return g * v / norm


def _snake_ref(sd, name, x):
    a = sd[name + ".alpha"].double().exp()[:, None]
    b = sd[name + ".beta"].double().exp()[:, None]
    return x + torch.sin(a * x) ** 2 / (b + 1e-9)


def _conv_ref(sd, name, x, **kw):
    return F.conv1d(x, _wn(sd, name), sd.get(name + ".bias", None) if name + ".bias" in sd else None, **kw)


def _res_ref(sd, name, x, dilation):
    y = _snake_ref(sd, f"{name}.layers.0", x)
    y = _conv_ref(sd, f"{name}.layers.1", y, dilation=dilation, padding=3 * dilation)
    y = _snake_ref(sd, f"{name}.layers.2", y)
    y = _conv_ref(sd, f"{name}.layers.3", y)
    return x + y


def _encoder_ref(sd, x, strides):
    sd = {k: v.double() for k, v in sd.items()}
    h = _conv_ref(sd, "encoder.layers.0", x.double(), padding=3)
    for i, s in enumerate(strides, start=1):
        for j, d in enumerate((1, 3, 9)):
            h = _res_ref(sd, f"encoder.layers.{i}.layers.{j}", h, d)
        h = _snake_ref(sd, f"encoder.layers.{i}.layers.3", h)
        h = _conv_ref(sd, f"encoder.layers.{i}.layers.4", h, stride=s, padding=math.ceil(s / 2))
    n = len(strides) + 1
    h = _snake_ref(sd, f"encoder.layers.{n}", h)
    return _conv_ref(sd, f"encoder.layers.{n + 1}", h, padding=1)


def _decoder_ref(sd, z, strides):
    sd = {k: v.double() for k, v in sd.items()}
    h = _conv_ref(sd, "decoder.layers.0", z.double(), padding=3)
    for i, s in enumerate(reversed(strides), start=1):
        h = _snake_ref(sd, f"decoder.layers.{i}.layers.0", h)
        name = f"decoder.layers.{i}.layers.1"
        h = F.conv_transpose1d(h, _wn(sd, name), sd[name + ".bias"], stride=s, padding=math.ceil(s / 2))
        for j, d in enumerate((1, 3, 9), start=2):
            h = _res_ref(sd, f"decoder.layers.{i}.layers.{j}", h, d)
    n = len(strides) + 1
    h = _snake_ref(sd, f"decoder.layers.{n}", h)
    return _conv_ref(sd, f"decoder.layers.{n + 1}", h, padding=3)  # no bias, final_tanh false


# ------------------------------------------------------------------ tests


def test_rates_and_constants(vae):
    assert OobleckVAE.sample_rate == 51200 and vae.sample_rate == 51200
    assert vae.nominal_sample_rate == 44100  # what model_config.json says
    assert vae.hop_length == 2048 and vae.latent_channels == 64 and vae.latent_rate == 25.0


def test_snake_matches_formula():
    torch.manual_seed(0)
    s = Snake(5)
    with torch.no_grad():
        s.alpha.normal_()
        s.beta.normal_()
    x = torch.randn(2, 5, 11) * 3
    a, b = s.alpha.exp()[None, :, None], s.beta.exp()[None, :, None]
    expected = x + (1.0 / (b + 1e-9)) * torch.sin(x * a) ** 2
    torch.testing.assert_close(s(x), expected, rtol=1e-6, atol=1e-6)


def test_snake_is_bitwise_the_official_expression_in_fp32():
    s = Snake(4)
    with torch.no_grad():
        s.alpha.copy_(torch.tensor([-0.7, 0.1, 0.4, 1.3]))
        s.beta.copy_(torch.tensor([0.9, -0.2, 0.05, -1.1]))
    x = torch.randn(3, 4, 257, generator=torch.Generator().manual_seed(1)) * 5
    alpha, beta = torch.exp(s.alpha[None, :, None]), torch.exp(s.beta[None, :, None])
    official = x + (1.0 / (beta + 1e-9)) * torch.pow(torch.sin(x * alpha), 2)  # stable-audio snake_beta
    assert torch.equal(s(x), official)


def test_weight_norm_fold_against_hand_computation():
    torch.manual_seed(1)
    v = torch.randn(3, 4, 5)
    g = torch.rand(3, 1, 1) + 0.5
    folded = fold_weight_norm({"c.weight_g": g, "c.weight_v": v, "c.bias": torch.ones(3)})
    assert set(folded) == {"c.weight", "c.bias"}
    for o in range(3):
        norm = math.sqrt(sum(float(v[o, i, k]) ** 2 for i in range(4) for k in range(5)))
        torch.testing.assert_close(folded["c.weight"][o], float(g[o, 0, 0]) * v[o] / norm)
    # the newer parametrization key names fold the same way
    par = fold_weight_norm({"c.parametrizations.weight.original0": g, "c.parametrizations.weight.original1": v})
    torch.testing.assert_close(par["c.weight"], folded["c.weight"])
    # and torch's own weight_norm on a transposed conv (dim 0 = input channels) agrees
    ct = torch.nn.utils.parametrizations.weight_norm(torch.nn.ConvTranspose1d(3, 4, 5))
    with torch.no_grad():
        ct.parametrizations.weight.original0.copy_(g)
        ct.parametrizations.weight.original1.copy_(v)
    torch.testing.assert_close(folded["c.weight"], ct.weight.detach())


def test_released_round_trip():
    torch.manual_seed(2)
    w = torch.randn(6, 3, 7)
    rel = to_released_state_dict({"x.weight": w, "x.bias": torch.zeros(6)})
    assert set(rel) == {"x.weight_g", "x.weight_v", "x.bias"} and rel["x.weight_g"].shape == (6, 1, 1)
    torch.testing.assert_close(fold_weight_norm(rel)["x.weight"], w)


def test_layout_and_key_names_match_release(released):
    model = OobleckVAE.from_config(tiny_model_config(), device="meta")
    expected = set(to_released_state_dict(model.state_dict()))
    assert expected == set(released)
    # spot checks of the release layout (weight norm on the transposed conv is over input channels)
    assert released["encoder.layers.1.layers.0.layers.0.alpha"].shape == (4,)
    # c_mults get a leading 1: block 1 keeps 4 channels (stride 2 -> kernel 4), block 2 doubles them
    assert released["encoder.layers.1.layers.4.weight_v"].shape == (4, 4, 4)
    assert released["encoder.layers.2.layers.4.weight_v"].shape == (8, 4, 8)
    assert released["decoder.layers.1.layers.1.weight_g"].shape == (32, 1, 1)  # ConvTranspose [in, out, k]
    assert "decoder.layers.7.bias" not in released and "decoder.layers.7.weight_v" in released
    assert released["encoder.layers.7.weight_v"].shape == (128, 32, 3)  # mean + scale
    assert released["decoder.layers.0.weight_v"].shape == (32, 64, 7)


def test_release_config_builds_the_real_size():
    model = OobleckVAE.from_config(release_model_config(), device="meta")
    n = sum(p.numel() for p in model.parameters())
    assert 150e6 < n < 160e6  # stable-audio-open-1.0's VAE has ~157M parameters
    assert model.encoder.layers[0].weight.shape == (128, 2, 7)
    assert model.decoder.layers[1].layers[1].weight.shape == (2048, 1024, 16)


def test_encode_decode_shapes_and_reference(vae, released):
    strides = tiny_model_config()["model"]["pretransform"]["config"]["encoder"]["config"]["strides"]
    torch.manual_seed(3)
    x = torch.randn(2, 2, 2048 * 3) * 0.3
    mean = vae.encode(x)
    assert mean.shape == (2, 64, 3) and mean.dtype == torch.float32
    ref = _encoder_ref(released, x[1:], strides)
    torch.testing.assert_close(mean[1:].double(), ref[:, :64], rtol=1e-4, atol=1e-5)
    z = torch.randn(2, 64, 2)
    y = vae.decode(z)
    assert y.shape == (2, 2, 2048 * 2)
    torch.testing.assert_close(y[:1].double(), _decoder_ref(released, z[:1], strides), rtol=1e-4, atol=1e-5)
    # unbatched input, as the official pipeline passes it, gives a batch of one
    torch.testing.assert_close(vae.encode(x[1]), mean[1:])
    # a length that is not a multiple of 2048 gives floor(S / 2048) steps (stride arithmetic)
    assert vae.encode(torch.zeros(1, 2, 2048 * 4 + 1000)).shape[-1] == 4


def test_final_tanh_squashes_the_decoder_output(vae):
    cfg = tiny_model_config()
    cfg["model"]["pretransform"]["config"]["decoder"]["config"]["final_tanh"] = True
    squashed = OobleckVAE.from_config(cfg)
    squashed.load_state_dict(vae.state_dict(), strict=True)
    z = torch.randn(1, 64, 2, generator=torch.Generator().manual_seed(5)) * 3
    torch.testing.assert_close(squashed.decode(z), torch.tanh(vae.decode(z)), rtol=0, atol=0)


def test_encode_is_the_mean_and_sampling_is_official(vae, released):
    strides = tiny_model_config()["model"]["pretransform"]["config"]["encoder"]["config"]["strides"]
    torch.manual_seed(4)
    x = torch.randn(1, 2, 2048 * 2) * 0.3
    a, b = vae.encode(x), vae.encode(x)
    assert torch.equal(a, b)
    h = _encoder_ref(released, x, strides)
    stdev = F.softplus(h[:, 64:]) + 1e-4
    noise = torch.randn(1, 64, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float32).double()
    sampled = vae.encode(x, sample=True, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(sampled.double(), h[:, :64] + stdev * noise, rtol=1e-4, atol=1e-5)
    assert (sampled - a).abs().max() > 1e-3


def test_load_state_dict_accepts_released_and_folded_keys(released, vae):
    m1 = OobleckVAE.from_config(tiny_model_config())
    m1.load_state_dict(released, strict=True)  # weight_g / weight_v
    m2 = OobleckVAE.from_config(tiny_model_config())
    m2.load_state_dict(fold_weight_norm(released), strict=True)  # plain weights
    for (k, p1), p2, p3 in zip(m1.state_dict().items(), m2.state_dict().values(), vae.state_dict().values()):
        assert torch.equal(p1, p2) and torch.equal(p1, p3), k
    broken = dict(released)
    broken.pop("decoder.layers.0.weight_v")
    with pytest.raises(RuntimeError, match="decoder.layers.0"):
        OobleckVAE.from_config(tiny_model_config()).load_state_dict(broken, strict=True)


def test_loader_reads_only_the_vae_tensors(tiny_folder, monkeypatch):
    seen = []
    real = safetensors_io.TensorReader.read_into

    def spy(self, info, dest, *a, **kw):
        seen.append(info.name)
        return real(self, info, dest, *a, **kw)

    monkeypatch.setattr(safetensors_io.TensorReader, "read_into", spy)
    model = load_audio_vae(tiny_folder / "model.safetensors", dtype=torch.bfloat16)
    assert seen and all(n.startswith(PRETRANSFORM_PREFIX) for n in seen)
    assert "model.model.preprocess_conv.weight" not in seen
    assert all(p.dtype == torch.bfloat16 and p.device.type == "cpu" for p in model.parameters())
    assert not any(p.requires_grad for p in model.parameters())
    # bf16 weights still encode to the fp32 mean, close to the fp32 model
    x = torch.randn(1, 2, 2048 * 3) * 0.3
    torch.testing.assert_close(model.encode(x), load_audio_vae(tiny_folder).encode(x), rtol=0.1, atol=0.05)


def test_vae_only_file_with_embedded_config(tmp_path, released, vae):
    path = tmp_path / "oobleck_vae.safetensors"
    write_file(path, released, metadata={"model_config": json.dumps(tiny_model_config())})
    model = load_audio_vae(path)
    x = torch.randn(1, 2, 2048 * 2)
    assert torch.equal(model.encode(x), vae.encode(x))


def test_wrong_files_give_clear_errors(tmp_path, released):
    other = tmp_path / "dit.safetensors"
    write_file(other, {"block.layers.0.attention.linear_qkv.weight": torch.zeros(4, 4)})
    with pytest.raises(AudioVAELoadError, match=r"dit\.safetensors.*not a Stable Audio VAE"):
        load_audio_vae(other)

    partial = dict(released)
    for k in [k for k in partial if k.startswith("decoder.layers.2.")]:
        partial.pop(k)
    partial["decoder.extra.weight"] = torch.zeros(1)
    bad = tmp_path / "partial.safetensors"
    write_file(bad, partial, metadata={"model_config": json.dumps(tiny_model_config())})
    with pytest.raises(AudioVAELoadError, match=r"(?s)partial\.safetensors.*\d+ missing.*decoder\.layers\.2.*1 unexpected"):
        load_audio_vae(bad)

    # the real-size release config does not fit the tiny weights: shapes are named
    folder = tmp_path / "mismatch"
    folder.mkdir()
    write_file(folder / "model.safetensors", {PRETRANSFORM_PREFIX + k: v for k, v in released.items()})
    (folder / "model_config.json").write_text(json.dumps(release_model_config()))
    with pytest.raises(AudioVAELoadError, match=r"key\(s\) with the wrong shape: encoder.layers.0.weight is \[4, 2, 7\]"):
        load_audio_vae(folder)

    with pytest.raises(AudioVAELoadError, match="no such file"):
        load_audio_vae(tmp_path / "nowhere")


def test_operations_namespace_builds_the_convs():
    made = []

    class Conv1d(torch.nn.Conv1d):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(type(self).__name__)

    class ConvTranspose1d(torch.nn.ConvTranspose1d):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(type(self).__name__)

    ops = types.SimpleNamespace(Conv1d=Conv1d, ConvTranspose1d=ConvTranspose1d)
    model = OobleckVAE.from_config(tiny_model_config(), operations=ops, dtype=torch.float64)
    convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.ConvTranspose1d))]
    assert len(convs) == len(made) == 2 * (2 + 5 * 7) and made.count("ConvTranspose1d") == 5
    assert all(getattr(m, "_magi_ops", None) is ops and m.weight.dtype == torch.float64 for m in convs)


def test_bad_inputs(vae):
    with pytest.raises(ValueError, match="duplicate a mono track"):
        vae.encode(torch.zeros(1, 1, 4096))
    with pytest.raises(ValueError, match="at least 2048"):
        vae.encode(torch.zeros(1, 2, 100))
    with pytest.raises(ValueError, match=r"transpose\(1, 2\)"):
        vae.decode(torch.zeros(1, 5, 64))
