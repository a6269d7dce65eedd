"""extract-lora on a synthetic pair whose answer is known: target = base + a rank-2 delta per block linear (per
expert in the multi-modal layers) + small noise, and a changed norm."""

from __future__ import annotations

import json

import pytest
import torch

from magihuman import cli
from magihuman.checkpoints import CheckpointError, load_dit, write_tiny_dit
from magihuman.lora import apply_lora
from magihuman.lora_extract import extract_lora, low_rank
from magihuman.models.dit import DiTConfig
from magihuman.storage import BlockLinear
from magihuman.weights import safetensors_io as sio

CFG = DiTConfig.preset("tiny")
RANK = 2
NOISE = 1e-5


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    base = write_tiny_dit(root / "base.safetensors", layout="file", variant="base", seed=1)
    sd = sio.load_file(base)
    g = torch.Generator().manual_seed(5)
    target = {}
    for key, t in sd.items():
        t = t.clone().float()
        if key.endswith(("linear_qkv.weight", "linear_proj.weight", "up_gate_proj.weight", "down_proj.weight")):
            experts = 3 if int(key.split(".")[2]) in CFG.mm_layers else 1
            rows = t.shape[0] // experts
            for e in range(experts):
                up = torch.randn(rows, RANK, generator=g) * 0.05
                down = torch.randn(RANK, t.shape[1], generator=g) * 0.05
                t[e * rows:(e + 1) * rows] += up @ down
            t += torch.randn(t.shape, generator=g) * NOISE
        elif key == "final_norm_video.weight":
            t += 0.01
        target[key] = t
    tpath = root / "distill.safetensors"
    sio.write_file(tpath, target, {"magihuman_variant": "distill"})
    return base, tpath, target


def _decoded(model):
    return {n + ".weight": m.decoded_weight(torch.float32) for n, m in model.named_modules()
            if isinstance(m, BlockLinear)}


def test_rank_r_recovers_the_known_delta(pair, tmp_path):
    base, target_path, target = pair
    report = extract_lora(base, target_path, tmp_path / "d.safetensors", rank=RANK, dtype=torch.float32,
                          show_progress=False)
    n_linear = sum(3 if i in CFG.mm_layers else 1 for i in range(CFG.num_layers)) * 4
    assert len(report.layers) == n_linear and report.diffs == ["final_norm_video.weight"]
    assert report.energy > 0.99999 and all(v["rank"] == RANK for v in report.layers.values())
    assert (report.base_variant, report.target_variant) == ("base", "distill")
    meta = sio.read_header(tmp_path / "d.safetensors").metadata
    assert meta["magihuman_lora_base"] == "base" and json.loads(meta["magihuman_lora_layers"])
    model = load_dit(base, dtype=torch.float32, show_progress=False)
    handle = apply_lora(model, tmp_path / "d.safetensors")
    assert handle.file.matched == n_linear + 1
    got = _decoded(model)
    for key, w in got.items():  # base + LoRA = target up to the noise the rank-2 LoRA cannot carry
        assert (w - target[key]).abs().max() < 20 * NOISE, key
    assert torch.equal(model.final_norm_video.weight, target["final_norm_video.weight"])
    ref = load_dit(target_path, dtype=torch.float32, show_progress=False)
    for m in (model, ref):
        m.set_compute_dtype(torch.float32)
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(1, 48, 2, 4, 4, generator=g), torch.randn(1, 5, 64, generator=g), torch.randn(1, 3, 64, generator=g))
    with torch.no_grad():
        a, b = model(*x, [3]), ref(*x, [3])
    for u, v in zip(a, b):
        assert float((u - v).norm() / v.norm()) < 1e-3


def test_energy_rule_and_lower_ranks(pair, tmp_path):
    base, target_path, _ = pair
    e = extract_lora(base, target_path, tmp_path / "e.safetensors", energy=0.999, dtype=torch.float32,
                     show_progress=False)
    assert all(v["rank"] <= RANK for v in e.layers.values()) and e.energy >= 0.999
    r1 = extract_lora(base, target_path, tmp_path / "r1.safetensors", rank=1, dtype=torch.float32,
                      show_progress=False)
    assert r1.energy < e.energy and all(v["rank"] == 1 for v in r1.layers.values())
    assert (tmp_path / "r1.safetensors").stat().st_size < (tmp_path / "e.safetensors").stat().st_size


def test_low_rank_is_exact_for_exact_low_rank():
    g = torch.Generator().manual_seed(1)
    d = torch.randn(40, 3, generator=g) @ torch.randn(3, 24, generator=g)
    up, down, kept = low_rank(d, rank=3)
    assert up.shape == (40, 3) and down.shape == (3, 24) and kept > 0.999999
    torch.testing.assert_close(up @ down, d, atol=1e-4, rtol=1e-4)
    up, down, kept = low_rank(d, energy=0.5)
    assert up.shape[1] < 3 and 0.5 <= kept < 1


def test_refusals(pair, tmp_path):
    base, target_path, _ = pair
    with pytest.raises(CheckpointError, match="same weights"):
        extract_lora(base, base, tmp_path / "x.safetensors", rank=2, show_progress=False)
    small = DiTConfig(**{**CFG.to_dict(), "num_layers": 3, "mm_layers": [0], "gelu7_layers": [0]})
    smaller = write_tiny_dit(tmp_path / "small.safetensors", layout="file", config=small)
    with pytest.raises(CheckpointError, match="not the same architecture.*num_layers"):
        extract_lora(base, smaller, tmp_path / "x.safetensors", rank=2, show_progress=False)
    with pytest.raises(ValueError, match="exactly one of rank"):
        extract_lora(base, target_path, tmp_path / "x.safetensors", show_progress=False)


def test_cli_extract_then_generate_with_the_lora(pair, tmp_path, capsys, tiny_dir):
    base, target_path, _ = pair
    out = tmp_path / "cli.safetensors"
    assert cli.main(["extract-lora", str(base), str(target_path), str(out), "--rank", "2", "--quiet"]) == 0
    assert "energy kept" in capsys.readouterr().out
    assert cli.main(["extract-lora", str(base), str(target_path), str(out)]) == 2  # no rank rule
    capsys.readouterr()
    video = tmp_path / "lora.mp4"
    code = cli.main(["generate", "--preset", "tiny", "--prompt", "A man smiles.", "--seconds", "0.5", "--models",
                     str(tiny_dir), "--lora", f"{out}:0.5", "--output", str(video), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert cli.main(["generate", "--preset", "tiny", "--prompt", "x", "--models", str(tiny_dir), "--lora",
                     str(tmp_path / "missing.safetensors"), "--output", str(video)]) == 2
    assert "--lora" in capsys.readouterr().err


def test_lora_file_bytes_match_an_extracted_file(tmp_path):
    """lora_file_bytes (the README's size figures for the release DiT) equals the tensor bytes extract_lora writes
    on the tiny base -> distill pair (diffs: at most, tensors equal in both are not written)."""
    from magihuman.lora_extract import lora_file_bytes
    from magihuman.models.dit_config import DiTConfig
    from magihuman.presets import TINY_FILES
    from magihuman.tiny import write_tiny_models
    from safetensors import safe_open

    write_tiny_models(tmp_path)
    out = tmp_path / "d.safetensors"
    extract_lora(tmp_path / TINY_FILES["base"], tmp_path / TINY_FILES["distill"], out, rank=8, show_progress=False)
    with safe_open(str(out), "pt") as f:
        sizes = {k: f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys()}
    expected = lora_file_bytes(DiTConfig.preset("tiny"), 8)
    assert sum(v for k, v in sizes.items() if k.endswith(("lora_up.weight", "lora_down.weight", ".alpha"))) \
        == expected["lowrank"]
    diffs = sum(v for k, v in sizes.items() if k.endswith((".diff", ".diff_b")))
    assert 0.9 * expected["diffs"] < diffs <= expected["diffs"]  # tiny norms and RoPE bands are equal: not written
    release = lora_file_bytes(DiTConfig.preset("distill"), 64)
    assert 0.45 * 2**30 < release["lowrank"] < 0.55 * 2**30 and 70 * 2**20 < release["diffs"] < 90 * 2**20


def test_the_1080p_sr_model_is_refused_as_a_lora_on_the_base(tmp_path):
    """Same weight shapes, but the 1080p SR model runs local attention where the base does not: no LoRA can carry
    that, so extract-lora refuses and says why."""
    from magihuman.presets import TINY_FILES
    from magihuman.tiny import write_tiny_models

    write_tiny_models(tmp_path)
    with pytest.raises(CheckpointError, match="local_attn_layers"):
        extract_lora(tmp_path / TINY_FILES["base"], tmp_path / TINY_FILES["sr_1080p"], tmp_path / "x.safetensors",
                     rank=4, show_progress=False)
    extract_lora(tmp_path / TINY_FILES["base"], tmp_path / TINY_FILES["sr_540p"], tmp_path / "y.safetensors",
                 rank=4, show_progress=False)  # the 540p SR model has the base's layout
