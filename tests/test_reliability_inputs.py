"""Every bad input gets a clear error (issue "reliability"): checkpoints, sizes, media and prompts.

Each case asserts the error TYPE and that the message names the problem and the fix, at the node
level where a node is the entry point (driven without ComfyUI, on the tiny models) and at the engine
level otherwise. Valid-but-unusual inputs (RGBA, 16-bit, 6-channel audio, CJK prompts, ...) are checked
against independently computed references, not just "it ran".
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import shutil

import numpy as np
import pytest
import safetensors.torch
import torch

from magihuman import media
from magihuman.checkpoints import CheckpointError, load_dit, write_tiny_dit
from magihuman.models.video_vae import WanVAELoadError


# ============================================================================ fixtures


@pytest.fixture(scope="module")
def env(pack, node_pack, tiny_dir, tmp_path_factory):
    """Tiny models in a ComfyUI-style models folder (a copy: the tests add bad files), nodes, loaded handles."""
    root = tmp_path_factory.mktemp("models") / "models"
    shutil.copytree(tiny_dir, root)
    np_ = node_pack(root)
    compat, nodes, run = np_.compat, np_.nodes, np_.run
    models = np_.load_tiny("dit", "base", "sr", "te", "wan", "audio")
    pipeline = importlib.import_module(f"{pack.__name__}.magihuman.pipeline")
    def run_unchecked(node_id, **inputs):  # an API prompt naming a file that is gone: the node's own guards speak
        return importlib.import_module(compat.__name__.rsplit('.', 1)[0] + '.v3').run_node(
            nodes[node_id], validate=False, **inputs).args

    yield {"root": root, "compat": compat, "v3": np_.v3, "nodes": nodes, "run": run, "run_unchecked": run_unchecked, "m": models,
           "pack": pack.__name__,
           "pipeline": pipeline, "mod": lambda name: importlib.import_module(f"{pack.__name__}.magihuman.{name}")}
    np_.close()


def _msg(excinfo) -> str:
    return str(excinfo.value)


def _assert_names(msg: str, *parts: str) -> None:
    low = msg.lower()
    for p in parts:
        assert p.lower() in low, f"{p!r} not in message: {msg}"


# ============================================================================ checkpoints


def test_missing_model_file_names_folder_and_fix(env):
    with pytest.raises(FileNotFoundError) as e:
        env["run_unchecked"]("MagiHumanDiTLoader", model_name="magihuman_distill_missing.safetensors")
    _assert_names(_msg(e), "magihuman_distill_missing.safetensors", "not found", "diffusion_models", "refresh")
    with pytest.raises(CheckpointError) as e:  # engine level
        load_dit(env["root"] / "diffusion_models" / "nope")
    _assert_names(_msg(e), "does not exist", "model.safetensors.index.json")


def test_model_name_escaping_the_folder_is_refused(env):
    outside = env["root"].parent / "x.safetensors"
    shutil.copy(env["root"] / "diffusion_models" / "magihuman_tiny_base.safetensors", outside)
    for name in ("../x.safetensors", "../../x.safetensors", str(outside), "magihuman_tiny_distill/../../x.safetensors"):
        with pytest.raises(ValueError) as e:
            env["run_unchecked"]("MagiHumanDiTLoader", model_name=name)
        _assert_names(_msg(e), "outside the model folder", "pick an entry from the list")
    with pytest.raises(ValueError, match="no model selected"):
        env["run_unchecked"]("MagiHumanDiTLoader", model_name="")


def test_symlinked_model_inside_the_folder_still_loads(env, tmp_path):
    """ComfyUI users often symlink big files into models/: that is not an escape."""
    real = tmp_path / "elsewhere_base.safetensors"
    shutil.copy(env["root"] / "diffusion_models" / "magihuman_tiny_base.safetensors", real)
    link = env["root"] / "diffusion_models" / "linked_base.safetensors"
    os.symlink(real, link)
    try:
        (h,) = env["run"]("MagiHumanDiTLoader", model_name="linked_base.safetensors", weight_dtype="bf16")
        ref = env["m"]["base"].model.state_dict()
        assert all(torch.equal(v, ref[k]) for k, v in h.model.state_dict().items())
    finally:
        link.unlink()


def test_truncated_and_corrupt_safetensors(env):
    d = env["root"] / "diffusion_models"
    data = (d / "magihuman_tiny_base.safetensors").read_bytes()
    (d / "bad_truncated.safetensors").write_bytes(data[: len(data) - 777])
    (d / "bad_garbage.safetensors").write_bytes(b"this is not a safetensors file at all " * 8)
    try:
        with pytest.raises(env["mod"]("checkpoints").CheckpointError) as e:
            env["run"]("MagiHumanDiTLoader", model_name="bad_truncated.safetensors")
        _assert_names(_msg(e), "bad_truncated.safetensors", "truncated", "download it again")
        with pytest.raises(env["mod"]("checkpoints").CheckpointError) as e:
            env["run"]("MagiHumanDiTLoader", model_name="bad_garbage.safetensors")
        _assert_names(_msg(e), "bad_garbage.safetensors", "not a safetensors file")
    finally:
        (d / "bad_truncated.safetensors").unlink()
        (d / "bad_garbage.safetensors").unlink()


def test_shard_missing_from_index(env):
    d = env["root"] / "diffusion_models" / "distill_incomplete"
    shutil.copytree(env["root"] / "diffusion_models" / "magihuman_tiny_distill", d)
    shard = sorted(d.glob("model-*.safetensors"))[1]
    shard.unlink()
    try:
        with pytest.raises(env["mod"]("checkpoints").CheckpointError) as e:
            env["run"]("MagiHumanDiTLoader", model_name="distill_incomplete/")
        _assert_names(_msg(e), shard.name, "model.safetensors.index.json", "missing", "download the complete folder")
    finally:
        shutil.rmtree(d)


def _wan_like() -> dict:
    """Typical key names of a Wan2.x DiT (patch embedding, time/text embeddings, blocks.N.self_attn...)."""
    sd = {"patch_embedding.weight": torch.zeros(32, 48, 1, 2, 2), "patch_embedding.bias": torch.zeros(32),
          "text_embedding.0.weight": torch.zeros(32, 64), "time_embedding.0.weight": torch.zeros(32, 16),
          "time_projection.1.weight": torch.zeros(192, 32), "head.head.weight": torch.zeros(192, 32),
          "head.modulation": torch.zeros(1, 2, 32)}
    for i in range(2):
        for n in ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k"):
            sd[f"blocks.{i}.{n}.weight"] = torch.zeros(32, 32)
        sd[f"blocks.{i}.ffn.0.weight"] = torch.zeros(64, 32)
        sd[f"blocks.{i}.modulation"] = torch.zeros(1, 6, 32)
    return sd


def _ltx_like() -> dict:
    """Typical key names of an LTX-Video DiT in a ComfyUI single file."""
    p = "model.diffusion_model."
    sd = {p + "patchify_proj.weight": torch.zeros(32, 128), p + "adaln_single.linear.weight": torch.zeros(192, 32),
          p + "caption_projection.linear_1.weight": torch.zeros(32, 64), p + "proj_out.weight": torch.zeros(128, 32),
          p + "scale_shift_table": torch.zeros(2, 32)}
    for i in range(2):
        for n in ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn2.to_q", "ff.net.0.proj", "ff.net.2"):
            sd[f"{p}transformer_blocks.{i}.{n}.weight"] = torch.zeros(32, 32)
    return sd


@pytest.mark.parametrize("name,make", [("wan2.2_ti2v_5B_fake.safetensors", _wan_like),
                                       ("ltxv_2b_fake.safetensors", _ltx_like)])
def test_checkpoint_of_another_model(env, name, make):
    f = env["root"] / "diffusion_models" / name
    safetensors.torch.save_file(make(), f)
    try:
        for loader in ("MagiHumanDiTLoader", "MagiHumanSRDiTLoader"):
            with pytest.raises(env["mod"]("checkpoints").CheckpointError) as e:
                env["run"](loader, model_name=name)
            msg = _msg(e)
            _assert_names(msg, name, "does not hold a daVinci-MagiHuman DiT", "another model",
                          "adapter.video_embedder.weight", "unexpected key")
            first_foreign = sorted(make())[0]
            assert first_foreign in msg or "more" in msg  # the foreign keys are listed
    finally:
        f.unlink()


def test_sr_model_vs_base_model_guards(env):
    run, m, pl = env["run"], env["m"], env["pipeline"]
    with pytest.raises(ValueError) as e:  # node: SR file in the base loader
        run("MagiHumanDiTLoader", model_name="magihuman_tiny_540p_sr/")
    _assert_names(_msg(e), "super-resolution DiT", "sr_540p", "MagiHuman SR DiT Loader")
    with pytest.raises(ValueError) as e:  # node: base file in the SR loader
        run("MagiHumanSRDiTLoader", model_name="magihuman_tiny_base.safetensors")
    _assert_names(_msg(e), "not a super-resolution model", "MagiHuman DiT Loader")
    # the custom types keep them apart in the UI
    sampler_in = {i.id: i.io_type for i in env["nodes"]["MagiHumanDistilledSampler"].define_schema().inputs}
    sr_in = {i.id: i.io_type for i in env["nodes"]["MagiHumanLatentSR"].define_schema().inputs}
    assert sampler_in["model"] == "MAGIHUMAN_DIT" and sr_in["sr_model"] == "MAGIHUMAN_SR_DIT"
    # engine / pipeline guard (API users, or a handle forced through)
    pos, _ = run("MagiHumanTextEncode", text_encoder=m["te"], prompt="hi", negative_prompt="", encode_negative=False)
    (lat,) = run("MagiHumanEmptyAVLatent", width=64, height=64, seconds=0.2)
    with pytest.raises(pl.PipelineError) as e:
        run("MagiHumanDistilledSampler", model=m["sr"], positive=pos, latent=lat, seed=0, steps=1)
    _assert_names(_msg(e), "'sr_540p' DiT", "super_resolve")
    (den,) = run("MagiHumanDistilledSampler", model=m["dit"], positive=pos, latent=lat, seed=0, steps=1)
    with pytest.raises(pl.PipelineError) as e:
        run("MagiHumanLatentSR", sr_model=m["dit"], positive=pos, latent=den, resolution="custom", width=96,
            height=96, seed=0, steps=1)
    _assert_names(_msg(e), "'distill' DiT", "540p_sr or 1080p_sr")


def _fp8_tensors(tmp_path, n_scaled=None):
    """Tiny distill weights with the block linears in fp8 e4m3; ``n_scaled`` of them carry a scale."""
    ref = safetensors.torch.load_file(write_tiny_dit(tmp_path / "ref.safetensors", layout="file"))
    out, scaled = {}, 0
    for k, v in ref.items():
        if k.startswith("block.") and v.dim() == 2:
            if n_scaled is None or scaled < n_scaled:
                s = v.abs().max() / 448
                out[k], out[k + ".__fp8_scale"] = (v / s).to(torch.float8_e4m3fn), s.float()
                scaled += 1
            else:
                out[k] = v.to(torch.float8_e4m3fn)
        else:
            out[k] = v
    return ref, out


def test_fp8_without_scales(tmp_path, caplog):
    # every fp8 weight unscaled: a plain fp8 cast (ComfyUI's fp8_e4m3fn style) loads, with a warning
    ref, _ = _fp8_tensors(tmp_path)
    plain = {k: (v.to(torch.float8_e4m3fn) if k.startswith("block.") and v.dim() == 2 else v) for k, v in ref.items()}
    f = tmp_path / "distill_fp8_plain.safetensors"
    safetensors.torch.save_file(plain, f)
    with caplog.at_level(logging.WARNING):
        m = load_dit(f, dtype=torch.float32, show_progress=False)
    assert "carry no scales" in caplog.text and "__fp8_scale" in caplog.text
    k = "block.layers.0.attention.linear_qkv.weight"
    assert torch.equal(m.state_dict()[k], plain[k].float())  # the stored values, as they are
    # SOME fp8 weights scaled, others not: mixing would give wrong weights -> refused, naming a key and the fix
    _, mixed = _fp8_tensors(tmp_path, n_scaled=3)
    f = tmp_path / "distill_fp8_partial.safetensors"
    safetensors.torch.save_file(mixed, f)
    with pytest.raises(CheckpointError) as e:
        load_dit(f, show_progress=False)
    _assert_names(_msg(e), "fp8 weight(s) have no scale", "block.layers.", "download the fp8 checkpoint again",
                  "bf16/fp32 release")


class _Evil:
    """A pickle whose loading would create a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickles_are_refused_never_executed(env, tmp_path):
    marker = tmp_path / "PWNED"
    vae = env["root"] / "vae"
    evil_sd = {"decoder.conv_in.weight": torch.zeros(1), "payload": _Evil(marker)}
    torch.save({"ema_state_dict": evil_sd}, vae / "evil_turbo.ckpt")
    torch.save(evil_sd, vae / "evil_wan.pth")
    folder = vae / "evil_turbo_folder"
    folder.mkdir()
    shutil.copy(next((vae / "turbo_vae_tiny").glob("*.json")), folder)
    torch.save({"ema_state_dict": _Evil(marker)}, folder / "checkpoint-340000.ckpt")
    try:
        for name in ("evil_turbo.ckpt", "evil_turbo_folder/", "evil_wan.pth"):
            with pytest.raises(env["mod"]("models.turbo_vae").TurboVAEError) as e:
                env["run"]("MagiHumanTurboVAELoader", vae_name=name)
            _assert_names(_msg(e), "refused to load this pickle", "safetensors")
        for name in ("evil_wan.pth", "evil_turbo.ckpt"):
            with pytest.raises(env["mod"]("models.video_vae").WanVAELoadError) as e:
                env["run"]("MagiHumanVideoVAELoader", vae_name=name)
            _assert_names(_msg(e), "refused to load this pickle", "never executed", "wan2.2_vae")
            with pytest.raises(env["mod"]("models.audio_vae").AudioVAELoadError) as e:
                env["run"]("MagiHumanAudioVAELoader", vae_name=name)
            _assert_names(_msg(e), "safetensors only", "never opened", "stable-audio-open-1.0")
        assert not marker.exists()
    finally:
        shutil.rmtree(folder)
        (vae / "evil_turbo.ckpt").unlink()
        (vae / "evil_wan.pth").unlink()
    assert not marker.exists()


def test_vae_of_another_kind_in_each_vae_loader(env):
    """The three VAE loaders share models/vae: each says clearly when it got another kind of VAE."""
    run = env["run"]
    with pytest.raises(ValueError) as e:
        run("MagiHumanVideoVAELoader", vae_name="turbo_vae_tiny/")
    _assert_names(_msg(e), "turbo_vae_tiny/ is a folder", "wan2.2_vae.safetensors or Wan2.2_VAE.pth")
    with pytest.raises(env["mod"]("models.audio_vae").AudioVAELoadError) as e:
        run("MagiHumanAudioVAELoader", vae_name="wan2.2_vae_tiny.safetensors")
    _assert_names(_msg(e), "does not hold the Stable Audio (Oobleck) VAE", "missing", "unexpected")
    with pytest.raises(env["mod"]("models.turbo_vae").TurboVAEError) as e:
        run("MagiHumanTurboVAELoader", vae_name="stable_audio_open_tiny/")
    _assert_names(_msg(e), "Turbo VAE config", "TurboV3-Wan22-TinyShallow_7_7.json")
    with pytest.raises(env["mod"]("models.turbo_vae").TurboVAEError) as e:
        run("MagiHumanTurboVAELoader", vae_name="wan2.2_vae_tiny.safetensors")
    _assert_names(_msg(e), "wan2.2_vae_tiny.safetensors", "this is the Wan2.2 VAE", "MagiHuman Wan2.2 VAE Loader",
                  "turbo_vae folder")
    from magihuman.loaders import load_wan_vae  # engine level: a folder is named as such

    with pytest.raises(WanVAELoadError) as e:
        load_wan_vae(env["root"] / "vae" / "turbo_vae_tiny")
    _assert_names(_msg(e), "turbo_vae_tiny is a folder", "wan2.2_vae.safetensors", "Wan2.2_VAE.pth")


def test_another_model_in_the_text_encoder_loader(env):
    d = env["root"] / "text_encoders" / "not_t5gemma.safetensors"
    shutil.copy(env["root"] / "diffusion_models" / "magihuman_tiny_base.safetensors", d)
    try:
        with pytest.raises(ValueError) as e:
            env["run"]("MagiHumanTextEncoderLoader", text_encoder="not_t5gemma.safetensors")
        _assert_names(_msg(e), "not_t5gemma.safetensors", "no T5Gemma encoder tensors", "another model's file",
                      "google/t5gemma-9b-9b-ul2")
    finally:
        d.unlink()


# ============================================================================ sizes


def test_sizes_snapped_and_reported(env):
    out = env["v3"].run_node(env["nodes"]["MagiHumanEmptyAVLatent"], width=70, height=100, seconds=0.2)
    assert "64x96 (snapped from 70x100)" in out.ui.value
    assert out.args[0]["samples"].shape[-2:] == (96 // 16, 64 // 16)
    exact = env["v3"].run_node(env["nodes"]["MagiHumanEmptyAVLatent"], width=64, height=96, seconds=0.2)
    assert "snapped" not in exact.ui.value


@pytest.mark.parametrize("w,h,bad", [(16, 64, "width 16"), (64, 31, "height 31"), (0, 64, "width 0")])
def test_size_below_minimum(env, w, h, bad):
    with pytest.raises(ValueError) as e:
        env["run"]("MagiHumanEmptyAVLatent", width=w, height=h, seconds=0.2)
    _assert_names(_msg(e), bad, "too small", "minimum is 32")


@pytest.mark.parametrize("seconds", [0, 0.0, -1.0, float("nan"), float("-inf")])
def test_seconds_not_positive(env, seconds):
    with pytest.raises(ValueError) as e:
        env["run"]("MagiHumanEmptyAVLatent", width=64, height=64, seconds=seconds)
    _assert_names(_msg(e), "seconds must be > 0")


@pytest.mark.parametrize("w,h,s,what", [(100000, 256, 1.0, "width 100000"), (448, 100000, 1.0, "height 100000"),
                                        (1920, 1088, 600, "600 s")])
def test_absurd_sizes_refused_before_allocating(env, monkeypatch, w, h, s, what):
    def no_alloc(*a, **k):
        raise AssertionError("empty_latents was called: the request should have been refused first")

    monkeypatch.setattr(env["pipeline"], "empty_latents", no_alloc)
    with pytest.raises(ValueError) as e:
        env["run"]("MagiHumanEmptyAVLatent", width=w, height=h, seconds=s)
    _assert_names(_msg(e), what, "above the maximum")


def test_empty_latent_node_refuses_what_memory_cannot_hold(env, monkeypatch):
    """Within the widget limits, the engine's allocation guard speaks for the node (batch named)."""
    monkeypatch.setattr(env["mod"]("pipeline.guards"), "available_bytes", lambda device: 1024)
    with pytest.raises(ValueError) as e:
        env["run"]("MagiHumanEmptyAVLatent", width=64, height=64, seconds=1.0, batch_size=2)
    _assert_names(_msg(e), "MagiHuman Empty AV Latent", "64x64, 1.0 s, batch 2", "for the latent alone",
                  "lower the size")


def test_runs_that_cannot_fit_are_refused_before_sampling(env, monkeypatch):
    """magihuman.estimate: the sampler refuses when the DiT activations alone exceed the device memory,
    before any noise is drawn (denoise / super_resolve are never entered)."""
    run, m, pl = env["run"], env["m"], env["pipeline"]
    est = importlib.import_module(f"{env['pack']}.magihuman.estimate")
    pos, neg = run("MagiHumanTextEncode", text_encoder=m["te"], prompt="hi", negative_prompt="no", encode_negative=True)
    (lat,) = run("MagiHumanEmptyAVLatent", width=256, height=256, seconds=4.0)
    (small,) = run("MagiHumanEmptyAVLatent", width=64, height=64, seconds=0.2)
    (den,) = run("MagiHumanDistilledSampler", model=m["dit"], positive=pos, latent=small, seed=0, steps=1)

    def forbidden(*a, **k):
        raise AssertionError("the stage ran although the request cannot fit")

    monkeypatch.setattr(pl, "denoise", forbidden)
    monkeypatch.setattr(pl, "super_resolve", forbidden)
    monkeypatch.setattr(est, "device_memory", lambda *a, **k: 8 << 20)  # an 8 MiB device
    with pytest.raises(ValueError) as e:
        run("MagiHumanDistilledSampler", model=m["dit"], positive=pos, latent=lat, seed=0, steps=1)
    _assert_names(_msg(e), "MagiHuman Distilled Sampler", "256x256, 4 s", "GiB", "activations", "fits",
                  "super-resolve")
    with pytest.raises(ValueError) as e:
        run("MagiHumanBaseSampler", model=m["base"], positive=pos, negative=neg, latent=lat, seed=0, steps=1)
    _assert_names(_msg(e), "MagiHuman Base Sampler", "GiB")
    monkeypatch.setattr(est, "device_memory", lambda *a, **k: 16 << 30)
    with pytest.raises(ValueError) as e:  # an absurd custom SR size against a real-sized (16 GiB) device
        run("MagiHumanLatentSR", sr_model=m["sr"], positive=pos, latent=den, resolution="custom", width=100000,
            height=100000, seed=0, steps=1)
    _assert_names(_msg(e), "100000x100000", "GiB", "lower the size")


def test_engine_stages_refuse_runs_that_cannot_fit(env, monkeypatch):
    """Engine level: denoise / super_resolve run the same estimate check before drawing any noise."""
    pl, m = env["pipeline"], env["m"]
    est = importlib.import_module(f"{env['pack']}.magihuman.estimate")
    cond = pl.encode_prompt(m["te"].model, "hello", None)
    small = pl.denoise(m["dit"].model, pl.empty_latents(64, 64, 0.2), cond, steps=1, seed=0)
    big = pl.empty_latents(448, 256, 2.0)
    monkeypatch.setattr(est, "device_memory", lambda *a, **k: 1 << 20)
    with pytest.raises(pl.PipelineError) as e:
        pl.denoise(m["dit"].model, big, cond, steps=1, seed=0)
    _assert_names(_msg(e), "denoise: 448x256, 2 s", "GiB", "lower the size")
    with pytest.raises(pl.PipelineError) as e:
        pl.super_resolve(m["sr"].model, small, cond, width=896, height=512, steps=1)
    _assert_names(_msg(e), "super_resolve: 896x512", "GiB")
    with pytest.raises(pl.PipelineError) as e:  # a latent that cannot be allocated on any machine (~2.6 TiB)
        pl.empty_latents(100000, 100000, 60.0)
    _assert_names(_msg(e), "empty_latents(100000x100000, 60.0 s)", "for the latent alone", "lower the size")


def test_engine_estimate_refuses_600s_1080p():
    """Engine level: magihuman.estimate.check_fits says how much is needed and what fits instead."""
    from magihuman.estimate import MemoryEstimateError, check_fits, estimate

    plan = estimate("distill_256p", width=1920, height=1088, seconds=600)
    with pytest.raises(MemoryEstimateError) as e:
        check_fits(plan, 80 << 30)
    _assert_names(_msg(e), "1920x1088", "600 s", "needs", "only 80.0G is available", "Requests that fit")


# ============================================================================ media: images


def _image_latent(env, image, w=64, h=64):
    (lat,) = env["run"]("MagiHumanEmptyAVLatent", width=w, height=h, seconds=0.2)
    (out,) = env["run"]("MagiHumanImageToVideo", latent=lat, video_vae=env["m"]["wan"], image=image)
    il = out["magihuman"]["image_latent"]
    assert il.shape == (1, 48, 1, h // 16, w // 16) and torch.isfinite(il).all()
    return il


def test_ti2v_image_variants(env):
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(1, 40, 56, 3, generator=g)
    ref = _image_latent(env, rgb)
    # RGBA: the alpha channel is dropped (official convert("RGB"))
    rgba = torch.cat([rgb, torch.rand(1, 40, 56, 1, generator=g)], -1)
    assert torch.equal(_image_latent(env, rgba), ref)
    # grayscale [1, H, W, 1] = the gray value on all three channels
    gray = rgb[..., :1]
    assert torch.equal(_image_latent(env, gray), _image_latent(env, gray.expand(-1, -1, -1, 3).contiguous()))
    # 16-bit data (uint16 array) is divided by 65535
    u16 = (rgb[0].numpy() * 65535).round().astype(np.uint16)
    as_float = torch.from_numpy(u16.astype(np.float32) / 65535)[None]
    torch.testing.assert_close(_image_latent(env, u16), _image_latent(env, as_float), atol=1e-5, rtol=0)
    # 1x1: a flat colour, still encoded
    one = torch.tensor([[[[0.2, 0.5, 0.8]]]])
    flat = _image_latent(env, one)
    assert torch.equal(flat, _image_latent(env, one.expand(1, 64, 64, 3).contiguous()))


def test_ti2v_image_files(env, tmp_path):
    """Engine level (file paths): RGBA PNG, 16-bit grayscale PNG, 1x1 PNG."""
    from PIL import Image

    pl = env["pipeline"]
    vae = env["m"]["wan"].model
    lat = pl.empty_latents(64, 64, 0.2)
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (30, 50, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    Image.fromarray(rgba[..., :3], "RGB").save(tmp_path / "a_rgb.png")
    assert torch.equal(pl.encode_image(vae, str(tmp_path / "a.png"), lat).image_latent,
                       pl.encode_image(vae, str(tmp_path / "a_rgb.png"), lat).image_latent)
    g16 = rng.integers(0, 65536, (30, 50), dtype=np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    img = media.load_image(str(tmp_path / "g16.png"))
    np.testing.assert_allclose(img[..., 0], g16 / 65535.0, atol=1e-6)
    assert torch.isfinite(pl.encode_image(vae, str(tmp_path / "g16.png"), lat).image_latent).all()
    Image.fromarray(np.array([[[10, 200, 30]]], dtype=np.uint8)).save(tmp_path / "one.png")
    assert torch.isfinite(pl.encode_image(vae, str(tmp_path / "one.png"), lat).image_latent).all()
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(env["mod"]("media").MediaError) as e:
        pl.encode_image(vae, str(tmp_path / "broken.png"), lat)
    _assert_names(_msg(e), "broken.png", "cannot read this image", "PNG, JPEG or WebP")


def test_ti2v_batch_of_images_uses_the_first_with_a_warning(env, caplog):
    imgs = torch.rand(3, 40, 56, 3, generator=torch.Generator().manual_seed(1))
    with caplog.at_level(logging.WARNING):
        batch = _image_latent(env, imgs)
    assert "3 reference images given; using the first" in caplog.text
    assert torch.equal(batch, _image_latent(env, imgs[:1]))


@pytest.mark.parametrize("image,problem", [
    (torch.full((1, 8, 8, 3), float("nan")), "NaN or infinite"),
    (torch.rand(1, 0, 8, 3), "the image is empty"),
    (torch.rand(1, 8, 8, 5), "got 5"),
])
def test_ti2v_bad_images(env, image, problem):
    (lat,) = env["run"]("MagiHumanEmptyAVLatent", width=64, height=64, seconds=0.2)
    with pytest.raises(env["mod"]("media").MediaError) as e:
        env["run"]("MagiHumanImageToVideo", latent=lat, video_vae=env["m"]["wan"], image=image)
    _assert_names(_msg(e), problem)


# ============================================================================ media: audio


def _ref_audio(env, wave, rate, seconds=0.5, trim=True):
    (lat,) = env["run"]("MagiHumanEmptyAVLatent", width=64, height=64, seconds=seconds)
    (out,) = env["run"]("MagiHumanReferenceAudio", latent=lat, audio_vae=env["m"]["audio"],
                        audio={"waveform": wave, "sample_rate": rate}, trim_to_latent=trim)
    a = out["magihuman_audio"]
    assert a.dim() == 3 and a.shape[0] == 1 and a.shape[2] == 64 and torch.isfinite(a).all()
    assert out["samples"].shape[2] == (a.shape[1] - 1) // 4 + 1  # the video latent follows the audio length
    return a


def _sine(seconds, rate, channels=1, f=330.0):
    t = torch.arange(int(seconds * rate), dtype=torch.float32) / rate
    return (0.5 * torch.sin(2 * math.pi * f * t)).repeat(1, channels, 1)


def test_reference_audio_formats(env):
    # mono, 8 kHz, 96 kHz: all become 0.5 s of 51.2 kHz audio -> the same number of latent steps
    mono = _ref_audio(env, _sine(1.0, 16000), 16000)
    n = mono.shape[1]
    assert n == math.ceil(0.5 * 51200 / 2048) or n == 0.5 * 51200 // 2048
    assert _ref_audio(env, _sine(1.0, 8000), 8000).shape[1] == n
    assert _ref_audio(env, _sine(1.0, 96000, 2), 96000).shape[1] == n
    # 6 channels: mixed to mono (the channel mean), so equal to passing that mean
    six = torch.randn(1, 6, 24000, generator=torch.Generator().manual_seed(0)) * 0.1
    torch.testing.assert_close(_ref_audio(env, six, 48000), _ref_audio(env, six.mean(1, keepdim=True), 48000),
                               atol=1e-5, rtol=1e-4)
    # silent audio: a valid (finite) latent
    _ref_audio(env, torch.zeros(1, 2, 16000), 16000)


def test_reference_audio_batch_uses_the_first_with_a_warning(env, caplog):
    two = torch.stack([_sine(0.6, 16000)[0], _sine(0.6, 16000, f=900.0)[0]])  # [2, 1, S]
    with caplog.at_level(logging.WARNING):
        both = _ref_audio(env, two, 16000)
    assert "2 audio clips given; using the first" in caplog.text
    assert torch.equal(both, _ref_audio(env, two[:1], 16000))


def test_reference_audio_longer_than_the_video(env):
    long = _sine(3.0, 16000)
    trimmed = _ref_audio(env, long, 16000, seconds=0.5, trim=True)
    cut = _ref_audio(env, long[..., : 8000], 16000, seconds=0.5, trim=True)  # cut by hand to 0.5 s
    assert trimmed.shape == cut.shape
    # the same audio except at the cut: the resampler of the longer file also sees what follows it, and the
    # VAE's receptive field spreads that over the last latent steps
    diff = (trimmed - cut).abs().amax(dim=(0, 2))
    assert diff[: trimmed.shape[1] - 4].max() < 1e-4, diff
    untrimmed = _ref_audio(env, long, 16000, seconds=0.5, trim=False)
    assert untrimmed.shape[1] == 3 * 25  # the audio sets the clip length


@pytest.mark.parametrize("wave,rate,err,problem", [
    (torch.zeros(1, 1, 0), 16000, "MediaError", "empty"),
    (torch.zeros(1, 0, 100), 16000, "MediaError", "empty"),
    (torch.randn(1, 1, 100), 16000, "PipelineError", "at least 0.04 s"),
    (torch.full((1, 1, 16000), float("nan")), 16000, "MediaError", "NaN or infinite"),
    (torch.randn(1, 1, 16000), 0, "MediaError", "sample rate must be positive"),
])
def test_reference_audio_bad(env, wave, rate, err, problem):
    (lat,) = env["run"]("MagiHumanEmptyAVLatent", width=64, height=64, seconds=0.5)
    with pytest.raises(ValueError) as e:
        env["run"]("MagiHumanReferenceAudio", latent=lat, audio_vae=env["m"]["audio"],
                   audio={"waveform": wave, "sample_rate": rate}, trim_to_latent=True)
    assert type(e.value).__name__ == err
    _assert_names(_msg(e), problem)
    with pytest.raises(ValueError, match="must be a ComfyUI AUDIO"):
        env["run"]("MagiHumanReferenceAudio", latent=lat, audio_vae=env["m"]["audio"], audio=wave)


def test_load_audio_unreadable_and_missing(tmp_path):
    f = tmp_path / "voice.wav"
    f.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk" * 4)
    with pytest.raises(media.MediaError) as e:
        media.load_audio(f)
    _assert_names(_msg(e), "voice.wav", "cannot read this audio file", "use WAV, FLAC, MP3 or M4A")
    with pytest.raises(media.MediaError, match="no such audio file"):
        media.load_audio(tmp_path / "absent.wav")
    import soundfile as sf

    sf.write(tmp_path / "empty.wav", np.zeros((0, 1), dtype=np.float32), 16000)
    with pytest.raises(media.MediaError) as e:
        media.load_audio(tmp_path / "empty.wav")
    _assert_names(_msg(e), "empty")


# ============================================================================ prompts


def _encode(env, prompt):
    pos, _ = env["run"]("MagiHumanTextEncode", text_encoder=env["m"]["te"], prompt=prompt, negative_prompt="",
                        encode_negative=False)
    return pos[0][0], pos[0][1]["magihuman_len"]


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t \u3000"])
def test_empty_prompt(env, prompt):
    with pytest.raises(ValueError) as e:
        _encode(env, prompt)
    _assert_names(_msg(e), "MagiHuman Text Encode", "prompt is empty", "describe the video")
    with pytest.raises(env["pipeline"].PipelineError, match="prompt is empty"):  # engine level
        env["pipeline"].encode_prompt(env["m"]["te"].model, prompt, None)


def test_empty_negative_prompt_with_cfg(env):
    with pytest.raises(ValueError) as e:
        env["run"]("MagiHumanTextEncode", text_encoder=env["m"]["te"], prompt="hi", negative_prompt=" ",
                   encode_negative=True)
    _assert_names(_msg(e), "MagiHuman Text Encode", "negative prompt is empty", "turn 'encode_negative' off")
    pl = env["pipeline"]  # engine level: the same check, in API terms
    with pytest.raises(pl.PipelineError) as e:
        pl.encode_prompt(env["m"]["te"].model, "hi", "  ")
    _assert_names(_msg(e), "negative prompt is empty", "pass None", "DEFAULT_NEGATIVE_PROMPT")


def test_long_prompt_trimmed_with_warning(env, caplog):
    with caplog.at_level(logging.WARNING):
        embeds, n = _encode(env, "The speaker walks slowly. " * 300)
    assert n == 640 and embeds.shape[1] == 640 and torch.isfinite(embeds).all()
    assert "trimming" in caplog.text and "640" in caplog.text and "shorten the prompt" in caplog.text


@pytest.mark.parametrize("prompt", [
    "一位女士微笑着说：“你好，欢迎来到上海。”",
    "女性が微笑んで「こんにちは、東京へようこそ」と言う。",
    "한 여성이 미소 지으며 \"안녕하세요, 서울에 오신 것을 환영합니다\"라고 말한다.",
    "Eine Frau lächelt und sagt: „Grüß Gott, willkommen in München!“",
    "Une femme sourit et dit : « Bonjour, bienvenue à Paris ! » Ça va ?",
])
def test_prompts_in_supported_languages(env, prompt):
    embeds, n = _encode(env, prompt)
    assert 0 < n <= 640 and torch.isfinite(embeds).all()
    assert embeds[0, :n].abs().sum() > 0 and embeds[0, n:].abs().sum() == 0
    tok = env["m"]["te"].model.tokenizer
    spaced = env["mod"]("prompts").space_cjk(prompt)  # what Text Encode feeds T5Gemma (official CJK spacing)
    ids = tok([spaced])[0]
    assert len(ids) == n
    if spaced != prompt:  # zh / ja / ko: the spacing changes what the encoder sees
        assert tok([prompt])[0] != ids
    other, _ = _encode(env, "A man says hello.")
    assert not torch.equal(embeds, other)  # not everything collapsed onto unknown tokens


# ============================================================================ widget values out of range


def test_widget_values_out_of_range(env):
    """Values ComfyUI's widgets would not send, but API calls and scripts can: named, with the valid range."""
    run, m, pl = env["run"], env["m"], env["pipeline"]
    pos, neg = run("MagiHumanTextEncode", text_encoder=m["te"], prompt="hi", negative_prompt="no", encode_negative=True)
    (lat,) = run("MagiHumanEmptyAVLatent", width=64, height=64, seconds=0.2)
    dist = dict(model=m["dit"], positive=pos, latent=lat, seed=0, steps=1)
    cases = [
        ("MagiHumanDistilledSampler", dict(dist, seed=2**64), "seed must be an integer in 0..2^64-1"),
        ("MagiHumanDistilledSampler", dict(dist, steps=0), "steps must be a positive integer"),
        ("MagiHumanDistilledSampler", dict(dist, shift=0.0), "shift must be a positive number"),
        ("MagiHumanDistilledSampler", dict(dist, shift=float("nan")), "shift must be a finite number"),
        ("MagiHumanBaseSampler", dict(dist, model=m["base"], negative=neg, video_guidance=float("nan")),
         "video_guidance must be a finite number"),
        ("MagiHumanBaseSampler", dict(dist, model=m["base"], negative=neg, audio_guidance=float("inf")),
         "audio_guidance must be a finite number"),
    ]
    for node, kw, problem in cases:
        with pytest.raises(ValueError) as e:
            run(node, **kw)
        _assert_names(_msg(e), problem)
    (den,) = run("MagiHumanDistilledSampler", **dist)
    sr = dict(sr_model=m["sr"], positive=pos, latent=den, resolution="custom", width=96, height=96, seed=0, steps=1)
    for kw, problem in ((dict(noise_index=1000), "noise_index must be in 0..999"),
                        (dict(audio_noise_scale=2.0), "audio_noise_scale must be in 0..1"),
                        (dict(audio_noise_scale=float("nan")), "audio_noise_scale must be a finite number"),
                        (dict(cfg=True, negative=neg, guidance=float("inf")), "guidance must be a finite number"),
                        (dict(resolution="4k"), "resolution must be one of"),
                        (dict(local_attention_frames=-5), "-1 to disable local attention")):
        with pytest.raises(ValueError) as e:
            run("MagiHumanLatentSR", **dict(sr, **kw))
        _assert_names(_msg(e), problem)
    with pytest.raises(ValueError) as e:
        run("MagiHumanVideoVAEDecode", video_vae=m["wan"], latent=den, tile_size=4)
    _assert_names(_msg(e), "tile_size 4", "overlap", "use 0 (no tiling) or 16")
    with pytest.raises(ValueError) as e:
        run("MagiHumanAudioDecode", audio_vae=m["audio"], latent=den, sample_rate="22050")
    _assert_names(_msg(e), "sample_rate must be one of", "48000")
    with pytest.raises(ValueError) as e:
        run("MagiHumanDiTLoader", model_name="magihuman_tiny_distill/", weight_dtype="int8")
    _assert_names(_msg(e), "weight_dtype must be one of", "'int8'", "bf16")
    with pytest.raises(ValueError) as e:
        run("MagiHumanDiTLoader", model_name="magihuman_tiny_distill/", compute_dtype="int8")
    _assert_names(_msg(e), "compute_dtype must be one of", "'int8'", "auto")
    with pytest.raises(pl.PipelineError, match="empty_latents|batch must be a positive integer"):
        run("MagiHumanEmptyAVLatent", width=64, height=64, seconds=0.2, batch_size=0)
