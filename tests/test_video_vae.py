"""Wan2.2 video VAE: geometry, causal chunking vs a whole-clip reference, tiling, normalisation, file loading.

The reference below is written independently of the engine: it processes the WHOLE clip at once with
plain functional ops (F.conv3d, einops, explicit softmax), using the closed-form equivalent of the
official chunked schedule derived from the official code:
- every cached causal conv equals a zero-padded (2 frames, past side) conv over the whole clip;
- the temporal downsampler keeps frame 0 as is and applies its stride-2 conv to windows [2j-2, 2j];
- the temporal upsampler passes frame 0 through, and runs its causal conv over frames 1.. with a zero
  history (the official "Rep" marker), interleaving the two channel halves in time;
- the AvgDown3D shortcut zero-pads one frame in front; DupUp3D drops its first ft-1 output frames.
"""

from __future__ import annotations

import math
import os
import pickle

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from magihuman.weights import safetensors_io
from magihuman.models import latent_stats
from magihuman.models.video_vae import (
    RELEASE_WAN_VAE_CONFIG,
    TINY_WAN_VAE_CONFIG,
    WanVAE,
    WanVAELoadError,
    init_random_wan_vae,
)
from magihuman.loaders.video_vae import (convert_wan_vae_to_safetensors, infer_wan_vae_config, load_wan_vae,
                                         map_wan_vae_keys)
from magihuman.tiny import write_tiny_wan_vae

torch.manual_seed(0)


@pytest.fixture(scope="module")
def vae() -> WanVAE:
    return init_random_wan_vae(WanVAE.from_config(TINY_WAN_VAE_CONFIG), seed=1).eval()


def _video(b=1, f=5, h=16, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, f, h, w, generator=g) * 2 - 1


def _latent(b=1, t=2, h=1, w=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 48, t, h, w, generator=g)


def _stats():
    mean = torch.tensor(latent_stats.WAN22_LATENT_MEAN).view(1, 48, 1, 1, 1)
    std = torch.tensor(latent_stats.WAN22_LATENT_STD).view(1, 48, 1, 1, 1)
    return mean, std


# ----------------------------------------------------------------------------- whole-clip reference


def _p(sd, name):
    return sd[name]


def _cconv(sd, name, x, hw_pad=1):
    """Causal conv over the whole clip: zero history of 2 frames (kernel 3) or none (kernel 1)."""
    w, b = sd[name + ".weight"], sd[name + ".bias"]
    kt, kh = w.shape[2], w.shape[3]
    if kt == 3 or kh == 3:
        x = F.pad(x, (hw_pad if kh == 3 else 0,) * 4 + ((kt - 1), 0))
    return F.conv3d(x, w, b)


def _rms(sd, name, x):
    g = sd[name + ".gamma"]
    g = g.view(1, -1, *([1] * (x.dim() - 2)))
    return x * torch.rsqrt((x * x).sum(1, keepdim=True).clamp_min(1e-24)) * math.sqrt(x.shape[1]) * g


def _res(sd, name, x):
    h = _cconv(sd, name + ".shortcut", x) if name + ".shortcut.weight" in sd else x
    y = _cconv(sd, name + ".residual.2", F.silu(_rms(sd, name + ".residual.0", x)))
    y = _cconv(sd, name + ".residual.6", F.silu(_rms(sd, name + ".residual.3", y)))
    return y + h


def _attn(sd, name, x):
    b, c, t, h, w = x.shape
    f = rearrange(x, "b c t h w -> (b t) c h w")
    qkv = F.conv2d(_rms(sd, name + ".norm", f), sd[name + ".to_qkv.weight"], sd[name + ".to_qkv.bias"])
    q, k, v = rearrange(qkv, "n (three c) h w -> three n (h w) c", three=3)
    a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(c), dim=-1) @ v
    y = F.conv2d(rearrange(a, "n (h w) c -> n c h w", h=h), sd[name + ".proj.weight"], sd[name + ".proj.bias"])
    return x + rearrange(y, "(b t) c h w -> b c t h w", b=b)


def _frames2d(fn, x):
    b = x.shape[0]
    return rearrange(fn(rearrange(x, "b c t h w -> (b t) c h w")), "(b t) c h w -> b c t h w", b=b)


def _avg_down(x, out_ch, ft, fs):
    x = F.pad(x, (0, 0, 0, 0, (-x.shape[2]) % ft, 0))
    x = rearrange(x, "b c (t ft) (h fh) (w fw) -> b (c ft fh fw) t h w", ft=ft, fh=fs, fw=fs)
    return rearrange(x, "b (o g) t h w -> b o g t h w", o=out_ch).mean(2)


def _dup_up(x, out_ch, ft, fs):
    rep = out_ch * ft * fs * fs // x.shape[1]
    x = rearrange(x.repeat_interleave(rep, 1), "b (c ft fh fw) t h w -> b c (t ft) (h fh) (w fw)", ft=ft, fh=fs, fw=fs)
    return x[:, :, ft - 1:]


def ref_encode_mu(sd, cfg, video):
    x = rearrange(video, "b c f (h q) (w r) -> b (c r q) f h w", q=2, r=2)
    x = _cconv(sd, "encoder.conv1", x)
    n = cfg["num_res_blocks"]
    dims = [cfg["dim"] * m for m in [1, *cfg["dim_mult"]]]
    for i in range(len(cfg["dim_mult"])):
        pre = f"encoder.downsamples.{i}"
        down = i != len(cfg["dim_mult"]) - 1
        tdown = down and cfg["temperal_downsample"][i]
        y = x
        for j in range(n):
            y = _res(sd, f"{pre}.downsamples.{j}", y)
        if down:
            r = f"{pre}.downsamples.{n}"
            y = _frames2d(lambda f: F.conv2d(F.pad(f, (0, 1, 0, 1)), sd[r + ".resample.1.weight"],
                                             sd[r + ".resample.1.bias"], stride=2), y)
            if tdown:
                rest = F.conv3d(y, sd[r + ".time_conv.weight"], sd[r + ".time_conv.bias"], stride=(2, 1, 1))
                y = torch.cat([y[:, :, :1], rest], 2)
        x = y + _avg_down(x, dims[i + 1], 2 if tdown else 1, 2 if down else 1)
    x = _res(sd, "encoder.middle.0", x)
    x = _attn(sd, "encoder.middle.1", x)
    x = _res(sd, "encoder.middle.2", x)
    x = _cconv(sd, "encoder.head.2", F.silu(_rms(sd, "encoder.head.0", x)))
    x = _cconv(sd, "conv1", x)
    return x[:, :48]


def ref_decode_raw(sd, cfg, z):
    """Un-normalised latent -> decoder output (no clamp), the whole clip at once."""
    x = _cconv(sd, "conv2", z)
    x = _cconv(sd, "decoder.conv1", x)
    x = _res(sd, "decoder.middle.0", x)
    x = _attn(sd, "decoder.middle.1", x)
    x = _res(sd, "decoder.middle.2", x)
    mult = cfg["dim_mult"]
    dims = [cfg["dec_dim"] * m for m in [mult[-1], *mult[::-1]]]
    tup = cfg["temperal_downsample"][::-1]
    n = cfg["num_res_blocks"] + 1
    for i in range(len(mult)):
        pre = f"decoder.upsamples.{i}"
        up = i != len(mult) - 1
        y = x
        for j in range(n):
            y = _res(sd, f"{pre}.upsamples.{j}", y)
        if up:
            r = f"{pre}.upsamples.{n}"
            if tup[i]:
                rest = F.conv3d(F.pad(y[:, :, 1:], (0, 0, 0, 0, 2, 0)), sd[r + ".time_conv.weight"],
                                sd[r + ".time_conv.bias"])
                rest = rearrange(rest, "b (two c) t h w -> b c (t two) h w", two=2)
                y = torch.cat([y[:, :, :1], rest], 2)
            y = _frames2d(lambda f: F.conv2d(F.interpolate(f, scale_factor=2.0, mode="nearest-exact"),
                                             sd[r + ".resample.1.weight"], sd[r + ".resample.1.bias"], padding=1), y)
            y = y + _dup_up(x, dims[i + 1], 2 if tup[i] else 1, 2)
        x = y
    x = _cconv(sd, "decoder.head.2", F.silu(_rms(sd, "decoder.head.0", x)))
    return rearrange(x, "b (c r q) f h w -> b c f (h q) (w r)", q=2, r=2)


# ----------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("frames,latent_frames", [(1, 1), (5, 2), (9, 3)])
def test_encode_shape(vae, frames, latent_frames):
    with torch.no_grad():
        z = vae.encode(_video(b=2, f=frames, h=16, w=48))
    assert z.shape == (2, 48, latent_frames, 1, 3) and z.dtype == torch.float32
    assert torch.isfinite(z).all()


@pytest.mark.parametrize("t,frames", [(1, 1), (2, 5), (3, 9)])
def test_decode_shape_and_range(vae, t, frames):
    with torch.no_grad():
        v = vae.decode(_latent(b=2, t=t, h=1, w=3))
    assert v.shape == (2, 3, frames, 16, 48)
    assert torch.isfinite(v).all() and v.abs().max() <= 1.0
    assert 0.05 < v.std() < 0.6  # random init gives a sensible, mostly unclamped range


def test_encode_drops_frames_beyond_4k_plus_1_like_official(vae):
    x = _video(f=7)
    with torch.no_grad():
        assert torch.equal(vae.encode(x), vae.encode(x[:, :, :5]))


def test_bad_inputs_raise_clear_errors(vae):
    with pytest.raises(ValueError, match="multiples of 16"):
        vae.encode(_video(h=24))
    with pytest.raises(ValueError, match=r"\[B, 3, F, H, W\]"):
        vae.encode(torch.zeros(1, 4, 1, 16, 16))
    with pytest.raises(ValueError, match="48"):
        vae.decode(torch.zeros(1, 16, 1, 2, 2))
    with pytest.raises(ValueError, match="unknown keys"):
        WanVAE.from_config({**TINY_WAN_VAE_CONFIG, "zdim": 4})


# ----------------------------------------------------------------------------- causal chunking


def test_chunked_encode_equals_whole_clip_reference(vae):
    sd = vae.state_dict()
    x = _video(b=2, f=9, h=32, w=32, seed=3)
    with torch.no_grad():
        got = vae.encode_mu(x)
        want = ref_encode_mu(sd, vae.config, x)
    assert got.shape == want.shape == (2, 48, 3, 2, 2)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_chunked_decode_equals_whole_clip_reference(vae):
    sd = vae.state_dict()
    z = _latent(b=2, t=3, h=2, w=2, seed=4)
    with torch.no_grad():
        got = vae._decode_chunked(z)
        want = ref_decode_raw(sd, vae.config, z)
    assert got.shape == want.shape == (2, 3, 9, 32, 32)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_causality_first_frames_do_not_see_the_future(vae):
    x = _video(f=9, seed=5)
    z = _latent(t=3, seed=6)
    with torch.no_grad():
        # TI2V: encoding the reference image alone gives the clip's first latent frame.
        torch.testing.assert_close(vae.encode(x[:, :, :1]), vae.encode(x)[:, :, :1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(vae.encode(x[:, :, :5]), vae.encode(x)[:, :, :2], atol=1e-5, rtol=1e-5)
        full = vae.decode(z)
        torch.testing.assert_close(vae.decode(z[:, :, :1]), full[:, :, :1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(vae.decode(z[:, :, :2]), full[:, :, :5], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- normalisation


def test_normalisation_uses_the_published_constants(vae):
    mean, std = _stats()
    x = _video(f=5, seed=7)
    z = _latent(t=2, seed=8)
    with torch.no_grad():
        mu = vae.encode_mu(x)
        torch.testing.assert_close(vae.encode(x), (mu - mean) / std, atol=1e-5, rtol=1e-5)
        # decode first undoes the normalisation: decode(n) == raw decode of n*std + mean
        torch.testing.assert_close(vae.decode(z), ref_decode_raw(vae.state_dict(), vae.config, z * std + mean)
                                   .clamp(-1, 1), atol=2e-5, rtol=1e-4)
        # and encode's output fed back through the inverse gives the raw posterior mean
        torch.testing.assert_close(vae.encode(x) * std + mean, mu, atol=1e-5, rtol=1e-5)


def test_encode_decode_deterministic(vae):
    x = _video(f=5, seed=9)
    with torch.no_grad():
        a = vae.decode(vae.encode(x))
        b = vae.decode(vae.encode(x))
    assert torch.equal(a, b) and a.shape == x.shape


# ----------------------------------------------------------------------------- tiled decode


def test_tiled_decode_single_tile_is_exact(vae):
    z = _latent(t=2, h=2, w=3, seed=10)
    with torch.no_grad():
        assert torch.equal(vae.decode(z, tile=(2, 3), overlap=1), vae.decode(z))
        assert torch.equal(vae.decode(z, tile=(8, 8), overlap=2), vae.decode(z))


def test_tiled_blending_is_a_partition_of_unity(vae, monkeypatch):
    """With a purely local decoder the blended tiles must reproduce the untiled output exactly."""

    def local_decoder(z):  # [B, 48, T, h, w] -> [B, 3, 4(T-1)+1, 16h, 16w], each pixel from its own latent
        x = z[:, :3].repeat_interleave(4, 2)[:, :, 3:]
        return x.repeat_interleave(16, 3).repeat_interleave(16, 4).sin()

    monkeypatch.setattr(vae, "_decode_chunked", local_decoder)
    z = _latent(t=2, h=7, w=9, seed=11) * 0.3
    full = vae.decode(z)
    for tile, overlap in [((3, 4), 1), ((4, 4), 2), (5, (1, 3)), ((2, 9), (1, 0))]:
        torch.testing.assert_close(vae.decode(z, tile=tile, overlap=overlap), full, atol=1e-6, rtol=1e-6)


def test_tiled_decode_blends_the_real_tile_decodes(vae):
    """Two tiles side by side: each owns its own columns, the shared columns are a linear cross-fade.

    (Tiles cannot match the untiled decode in general: the decoder's per-frame attention and its
    ~18-latent receptive field see only the tile. The blend itself is checked against tile decodes.)
    """
    mean, std = _stats()
    z = _latent(t=2, h=1, w=5, seed=12)
    with torch.no_grad():
        tiled = vae.decode(z, tile=(1, 3), overlap=1)  # tiles at latent columns [0, 3) and [2, 5)
        raw = z * std + mean
        left = vae._decode_chunked(raw[..., 0:3])
        right = vae._decode_chunked(raw[..., 2:5])
    n = 16  # shared pixels (1 latent column)
    q = torch.arange(n, dtype=torch.float32)
    w_left, w_right = (n - q) / (n + 1), (q + 1) / (n + 1)
    shared = left[..., 32:48] * w_left + right[..., 0:16] * w_right
    want = torch.cat([left[..., :32], shared, right[..., 16:]], dim=-1).clamp(-1, 1)
    assert tiled.shape == (1, 3, 5, 16, 80)
    torch.testing.assert_close(tiled, want, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        full = vae.decode(z)
    assert torch.isfinite(tiled).all() and not torch.equal(tiled, full)


def test_tiled_decode_rejects_bad_overlap(vae):
    with pytest.raises(ValueError, match="overlap"):
        vae.decode(_latent(h=6, w=6), tile=(3, 3), overlap=3)


# ----------------------------------------------------------------------------- files


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("wanvae")
    return {fmt: write_tiny_wan_vae(d / f"tiny.{fmt}", seed=2, fmt=fmt) for fmt in ("safetensors", "pth")}


def test_written_files_are_the_real_formats(tiny_files):
    ref = init_random_wan_vae(WanVAE.from_config(TINY_WAN_VAE_CONFIG), seed=2).state_dict()
    st = safetensors_io.load_file(tiny_files["safetensors"])
    pt = torch.load(tiny_files["pth"], map_location="cpu", weights_only=True)
    assert set(st) == set(pt) == set(ref)
    assert "decoder.middle.0.residual.0.gamma" in st and "decoder.upsamples.0.upsamples.0.residual.2.weight" in st
    for k in ref:
        assert torch.equal(st[k], ref[k]) and torch.equal(pt[k], ref[k]), k


def test_both_layouts_load_strictly_and_agree(tiny_files):
    a = load_wan_vae(tiny_files["safetensors"], dtype=torch.float32)
    b = load_wan_vae(tiny_files["pth"], dtype=torch.float32)
    assert a.config == b.config == {**TINY_WAN_VAE_CONFIG}
    x = _video(f=5, seed=13)
    with torch.no_grad():
        za, zb = a.encode(x), b.encode(x)
        assert torch.equal(za, zb)
        assert torch.equal(a.decode(za), b.decode(zb))
    # loaded with strict key checking: a fresh model accepts the state dict strictly as well
    WanVAE.from_config(TINY_WAN_VAE_CONFIG).load_state_dict(a.state_dict(), strict=True)


def test_loaded_weights_equal_the_file(tiny_files):
    ref = safetensors_io.load_file(tiny_files["safetensors"])
    for fmt in ("safetensors", "pth"):
        sd = load_wan_vae(tiny_files[fmt], dtype=torch.float32).state_dict()
        assert set(sd) == set(ref)
        assert all(torch.equal(sd[k], ref[k]) for k in ref), fmt


def test_bf16_load_converts_and_stays_close(tiny_files):
    a = load_wan_vae(tiny_files["safetensors"], dtype=torch.float32)
    b = load_wan_vae(tiny_files["safetensors"], dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in b.parameters())
    z = _latent(t=2, seed=14)
    with torch.no_grad():
        va, vb = a.decode(z), b.decode(z)
    assert vb.dtype == torch.float32 and torch.isfinite(vb).all()
    assert (va - vb).abs().mean() < 0.05


def test_key_map_strips_wrapper_prefixes_and_ignores_other_subtrees(tmp_path, tiny_files):
    sd = safetensors_io.load_file(tiny_files["safetensors"])
    bundle = {f"first_stage_model.{k}": v for k, v in sd.items()}
    bundle["model.diffusion_model.some.weight"] = torch.zeros(2)
    path = tmp_path / "bundle.safetensors"
    safetensors_io.write_file(path, bundle)
    km = map_wan_vae_keys(bundle)
    assert km.prefix == "first_stage_model." and km.ignored == ["model.diffusion_model.some.weight"]
    assert set(km.names) == set(sd) and km.names["conv2.weight"] == "first_stage_model.conv2.weight"
    assert map_wan_vae_keys(sd).names == {k: k for k in sd}
    m = load_wan_vae(path, dtype=torch.float32)
    ref = load_wan_vae(tiny_files["safetensors"], dtype=torch.float32)
    for k, v in ref.state_dict().items():
        assert torch.equal(m.state_dict()[k], v)
    # training wrappers (.pth with "module." + "state_dict") too
    p2 = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, p2)
    assert torch.equal(load_wan_vae(p2, dtype=torch.float32).conv2.weight, ref.conv2.weight)


def test_config_is_inferred_from_the_weights(tmp_path):
    cfg = {"dim": 8, "dec_dim": 12, "z_dim": 48, "dim_mult": [1, 2, 2, 2], "num_res_blocks": 1,
           "temperal_downsample": [True, False, True]}
    path = write_tiny_wan_vae(tmp_path / "odd.safetensors", seed=0, config=cfg)
    m = load_wan_vae(path, dtype=torch.float32)
    assert m.config == cfg
    with torch.no_grad():
        assert m.decode(_latent(t=2, h=1, w=1)).shape == (1, 3, 5, 16, 16)
    # names only, no shapes: the release defaults
    assert infer_wan_vae_config({}) == RELEASE_WAN_VAE_CONFIG


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_malicious_pickle_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "ran.txt"
    path = tmp_path / "Wan2.2_VAE.pth"
    torch.save({"encoder.conv1.weight": torch.zeros(1), "payload": _Evil(str(marker))}, path)
    with pytest.raises(WanVAELoadError, match="refused to load this pickle") as e:
        load_wan_vae(path)
    assert str(path) in str(e.value)
    assert not marker.exists()
    # a raw (non-torch) pickle stream is refused as well
    raw = tmp_path / "raw.pth"
    raw.write_bytes(pickle.dumps(_Evil(str(marker))))
    with pytest.raises(WanVAELoadError):
        load_wan_vae(raw)
    with pytest.raises(WanVAELoadError, match=r"rejected it \(Unsupported operand \d+\)"):
        load_wan_vae(raw)
    assert not marker.exists()


def test_refusal_gives_torchs_reason_without_its_unsafe_advice(tmp_path):
    path = tmp_path / "Wan2.2_VAE.pth"
    torch.save({"encoder.conv1.weight": torch.zeros(1), "payload": _Evil(str(tmp_path / "ran.txt"))}, path)
    with pytest.raises(WanVAELoadError) as e:
        load_wan_vae(path)
    msg = str(e.value)
    assert "exec was not an allowed global" in msg  # torch's reason names the rejected global
    assert "weights_only` set to `False`" not in msg and "add_safe_globals" not in msg


def test_unreadable_and_legacy_pth(tmp_path, tiny_files):
    junk = tmp_path / "notes.pth"
    junk.write_bytes(b"hello world, not a checkpoint")
    with pytest.raises(WanVAELoadError, match="notes.pth: cannot read this file as a torch checkpoint"):
        load_wan_vae(junk)
    legacy = tmp_path / "legacy.pth"  # pre-zip torch.save format: cannot be memory-mapped
    ref = safetensors_io.load_file(tiny_files["safetensors"])
    torch.save(ref, legacy, _use_new_zipfile_serialization=False)
    sd = load_wan_vae(legacy, dtype=torch.float32).state_dict()
    assert all(torch.equal(sd[k], ref[k]) for k in ref)


def test_wrong_keys_name_the_file_and_list_missing_and_unexpected(tmp_path, tiny_files):
    sd = safetensors_io.load_file(tiny_files["safetensors"])
    sd.pop("decoder.head.2.bias")
    sd.pop("encoder.middle.1.proj.weight")
    sd["decoder.head.3.weight"] = torch.zeros(1)
    path = tmp_path / "broken.safetensors"
    safetensors_io.write_file(path, sd)
    with pytest.raises(WanVAELoadError) as e:
        load_wan_vae(path)
    msg = str(e.value)
    assert str(path) in msg and "2 missing" in msg and "1 unexpected" in msg
    assert "decoder.head.2.bias" in msg and "encoder.middle.1.proj.weight" in msg and "decoder.head.3.weight" in msg


def test_wrong_shape_and_foreign_layouts_are_explained(tmp_path, tiny_files):
    sd = safetensors_io.load_file(tiny_files["safetensors"])
    sd["decoder.middle.1.to_qkv.weight"] = torch.zeros(3, 3, 1, 1)
    p = tmp_path / "shape.safetensors"
    safetensors_io.write_file(p, sd)
    with pytest.raises(WanVAELoadError, match=r"wrong shape: decoder\.middle\.1\.to_qkv\.weight is \[3, 3, 1, 1\]"):
        load_wan_vae(p)
    diffusers = tmp_path / "diffusers.safetensors"
    safetensors_io.write_file(diffusers, {"decoder.conv_in.weight": torch.zeros(1), "post_quant_conv.weight": torch.zeros(1)})
    with pytest.raises(WanVAELoadError, match="diffusers"):
        load_wan_vae(diffusers)
    with pytest.raises(FileNotFoundError):
        load_wan_vae(tmp_path / "nope.pth")


def test_official_module_parity_when_available(vae):
    """Direct comparison with the official implementation, when its source is on this machine."""
    src = "/tmp/official/inference/model/vae2_2/vae2_2_module.py"
    if not os.path.exists(src):
        pytest.skip("official source not present")
    import importlib.util

    spec = importlib.util.spec_from_file_location("_official_vae2_2", src)
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except Exception as e:  # pragma: no cover - depends on the environment
        pytest.skip(f"official module not importable: {e}")
    cfg = vae.config
    off = mod.WanVAE_(dim=cfg["dim"], dec_dim=cfg["dec_dim"], z_dim=48, dim_mult=cfg["dim_mult"],
                      num_res_blocks=cfg["num_res_blocks"], temperal_downsample=cfg["temperal_downsample"]).eval()
    off.load_state_dict(vae.state_dict(), strict=True)
    mean, std = _stats()
    scale = [mean.flatten(), 1.0 / std.flatten()]
    x, z = _video(f=9, h=32, w=32, seed=15), _latent(t=3, h=2, w=2, seed=16)
    # the official module wraps parts in torch.compile; run them eagerly even after other tests compiled
    with torch.no_grad(), torch._dynamo.config.patch(disable=True):
        torch.testing.assert_close(vae.encode(x), off.encode(x, scale), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(vae.decode(z), off.decode(z, scale).clamp(-1, 1), atol=1e-5, rtol=1e-5)


def test_layers_come_from_the_injected_operations():
    calls = []

    class Ops:
        class Conv3d(torch.nn.Conv3d):
            def forward(self, x):
                calls.append("3d")
                return super().forward(x)

        class Conv2d(torch.nn.Conv2d):
            def forward(self, x):
                calls.append("2d")
                return super().forward(x)

    m = WanVAE.from_config(TINY_WAN_VAE_CONFIG, operations=Ops, dtype=torch.float32)
    convs = [mod for mod in m.modules() if isinstance(mod, (torch.nn.Conv2d, torch.nn.Conv3d))]
    assert convs and all(isinstance(c, (Ops.Conv2d, Ops.Conv3d)) for c in convs)
    with torch.no_grad():
        m.decode(_latent(t=1, h=1, w=1))
    assert "3d" in calls and "2d" in calls
    meta = WanVAE.from_config(RELEASE_WAN_VAE_CONFIG, device="meta")  # release graph, no memory
    assert sum(p.numel() for p in meta.parameters()) > 600e6


def test_pth_converts_to_safetensors_once(tmp_path, tiny_files):
    out = convert_wan_vae_to_safetensors(tiny_files["pth"], tmp_path / "wan2.2_vae.safetensors")
    a, b = safetensors_io.load_file(out), torch.load(tiny_files["pth"], map_location="cpu", weights_only=True)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(load_wan_vae(out, dtype=torch.float32).decoder.head[2].weight, b["decoder.head.2.weight"])


def test_encode_decode_do_not_build_autograd_graphs():
    m = init_random_wan_vae(WanVAE.from_config(TINY_WAN_VAE_CONFIG), seed=0)
    assert all(p.requires_grad for p in m.parameters())
    assert not m.encode(_video(f=1)).requires_grad
    assert not m.decode(_latent(t=1, w=1), tile=(1, 1), overlap=0).requires_grad
