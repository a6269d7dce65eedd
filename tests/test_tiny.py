"""Tiny checkpoints: written in the real formats and layout, loadable by the real loaders, idempotent."""

from __future__ import annotations

import json

import pytest
import torch

from magihuman.checkpoints import load_dit
from magihuman.loaders import load_audio_vae, load_turbo_vae, load_wan_vae
from magihuman.models.dit_config import DiTConfig
from magihuman.models.text_encoder import T5GemmaEncoder
from magihuman.presets import PRESETS, required_roles, resolve_model_files
from magihuman.tiny import STAMP_NAME, TINY_FILES, default_cache_dir, describe_tiny_files, write_tiny_models


def test_layout_and_formats(tiny_dir):
    d = tiny_dir
    distill = d / TINY_FILES["distill"]
    assert (distill / "model.safetensors.index.json").is_file()
    assert len(list(distill.glob("model-*-of-00002.safetensors"))) == 2
    assert (d / TINY_FILES["base"]).is_file() and TINY_FILES["base"].endswith(".safetensors")
    assert (d / TINY_FILES["text_encoder"] / "config.json").is_file()
    assert (d / TINY_FILES["text_encoder"] / "tokenizer.json").is_file()
    assert sorted(p.suffix for p in (d / TINY_FILES["turbo_vae"]).iterdir()) == [".ckpt", ".json"]
    assert (d / TINY_FILES["audio_vae"] / "model_config.json").is_file()
    assert (d / TINY_FILES["audio_vae"] / "model.safetensors").is_file()
    stamp = json.loads((d / STAMP_NAME).read_text())
    assert stamp["files"] == TINY_FILES
    table = describe_tiny_files(d)
    assert all(rel in table for rel in TINY_FILES.values())


@pytest.mark.parametrize("role, variant, local", [("distill", "distill", False), ("base", "base", False),
                                                  ("sr_540p", "sr_540p", False), ("sr_1080p", "sr_1080p", True)])
def test_dits_load_with_their_variant(tiny_dir, role, variant, local):
    model = load_dit(tiny_dir / TINY_FILES[role], dtype=torch.float32, show_progress=False)
    assert model.variant == variant
    assert bool(model.config.local_attn_layers) == local
    assert model.config.text_in_channels == 64
    if role == "base":  # single file with bf16 block linears
        assert model.load_info["source_dtype"] == "bf16"
    if role == "distill":
        assert model.load_info["source_dtype"] == "fp32"


def test_other_models_load(tiny_dir):
    te = T5GemmaEncoder.from_pretrained(tiny_dir / TINY_FILES["text_encoder"], dtype=torch.float32)
    emb, lens = te.encode(["hello there"])
    assert emb.shape == (1, 640, DiTConfig.preset("tiny").text_in_channels) and 1 <= lens[0] <= 640
    turbo = load_turbo_vae(None, tiny_dir / TINY_FILES["turbo_vae"], dtype=torch.float32)
    assert turbo.decode(torch.zeros(1, 48, 2, 2, 2)).shape == (1, 3, 5, 32, 32)
    assert load_wan_vae(tiny_dir / TINY_FILES["video_vae"], dtype=torch.float32).z_dim == 48
    assert load_audio_vae(tiny_dir / TINY_FILES["audio_vae"]).sample_rate == 51200


def test_idempotent_and_force(tiny_dir):
    marker = tiny_dir / TINY_FILES["base"]
    mtime = marker.stat().st_mtime_ns
    state = torch.random.get_rng_state()
    write_tiny_models(tiny_dir)
    assert marker.stat().st_mtime_ns == mtime  # complete + stamped: nothing rewritten
    assert torch.equal(torch.random.get_rng_state(), state)


def test_interrupted_folder_is_rewritten_deterministically(tiny_dir, tmp_path):
    (tmp_path / TINY_FILES["base"]).parent.mkdir(parents=True)
    (tmp_path / TINY_FILES["base"]).write_bytes(b"half-written")  # an interrupted earlier run: incomplete stamp
    stamp = json.loads((tiny_dir / STAMP_NAME).read_text())
    (tmp_path / STAMP_NAME).write_text(json.dumps(dict(stamp, complete=False)))
    state = torch.random.get_rng_state()
    write_tiny_models(tmp_path)
    assert torch.equal(torch.random.get_rng_state(), state)  # the writers' torch.manual_seed is undone
    for role in ("base", "video_vae"):
        assert (tmp_path / TINY_FILES[role]).read_bytes() == (tiny_dir / TINY_FILES[role]).read_bytes()


def test_tiny_presets_resolve_their_files(tiny_dir):
    for name in ("tiny", "tiny_sr"):
        preset = PRESETS[name]
        files = resolve_model_files(preset, tiny_dir, required_roles(preset, image=True))
        assert files[preset.dit] == tiny_dir / TINY_FILES[preset.dit]
        assert "video_vae" in files and "turbo_vae" in files


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MAGIHUMAN_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "tiny"
    monkeypatch.delenv("MAGIHUMAN_CACHE")
    assert default_cache_dir().parts[-3:] == (".cache", "magihuman", "tiny")
