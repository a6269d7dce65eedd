"""The command line, in-process on the tiny models: the README main job end to end, and its errors."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from magihuman import cli, media
from magihuman.tiny import TINY_FILES

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv):
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_readme_main_job(tiny_dir, tmp_path, capsys):
    out = tmp_path / "demo.mp4"
    code, _, err = run(capsys, "generate", "--preset", "tiny", "--prompt", "A man smiles and says hello.",
                       "--seconds", "2", "--models", str(tiny_dir), "--output", str(out), "--quiet")
    assert code == 0, err
    info = media.read_mp4_info(out)
    assert info["video_codec"] == "h264" and info["audio_codec"] == "aac"
    # 2 s = 51 frames -> 13 latent frames -> the decoders give 4*(13-1)+1 = 49 frames; audio 51*2048 samples
    assert info["frames"] == 49 and info["fps"] == 25
    assert (info["width"], info["height"]) == (128, 64)
    assert info["audio_channels"] == 2
    assert info["audio_duration"] == pytest.approx(51 * 2048 / 51200, abs=0.03)
    assert info["duration"] == pytest.approx(2.0, abs=0.1)
    for stage in ("text encode", "DiT", "decode video", "decode audio", "mux", "total"):
        assert stage in err
    assert "wrote" in err and "49 frames 128x64" in err


@pytest.mark.slow
def test_ti2v_a2v_with_super_resolution(tiny_dir, tmp_path, capsys):
    from PIL import Image
    import soundfile as sf

    img = tmp_path / "ref.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (90, 70, 3), dtype=np.uint8)).save(img)
    wav = tmp_path / "ref.wav"
    t = np.arange(int(0.3 * 22050)) / 22050
    sf.write(wav, 0.3 * np.sin(2 * np.pi * 440 * t), 22050)
    out = tmp_path / "sr.mp4"
    code, _, err = run(capsys, "generate", "--preset", "tiny_sr", "--prompt", "A woman talks.", "--image", str(img),
                       "--audio", str(wav), "--models", str(tiny_dir), "--output", str(out), "--quiet",
                       "--steps", "2", "--sr-steps", "1")
    assert code == 0, err
    info = media.read_mp4_info(out)
    n = math.ceil(0.3 * 51200 / 2048)       # audio steps of the 0.3 s reference (it sets the length)
    assert info["frames"] == 4 * ((n - 1) // 4) + 1
    assert (info["width"], info["height"]) == (128, 128)  # the SR size
    for stage in ("image encode", "audio encode", "SR"):
        assert stage in err


@pytest.mark.parametrize("argv, message", [
    (["--prompt", "  "], "error: --prompt is empty"),
    (["--prompt", "x", "--seconds", "0"], "error: --seconds must be > 0"),
    (["--prompt", "x", "--seconds", "-2"], "error: --seconds must be > 0"),
    (["--prompt", "x", "--width", "16"], "error: width 16 is too small: the minimum is 32 pixels"),
    (["--prompt", "x", "--image", "/nonexistent/ref.png"], "error: --image /nonexistent/ref.png: no such file"),
    (["--prompt", "x", "--sr-width", "256"], "error: preset 'tiny' has no super-resolution stage"),
    (["--prompt", "x", "--preset", "nope"], "error: argument --preset: invalid choice"),
])
def test_usage_errors_exit_2_with_one_line(tiny_dir, tmp_path, capsys, argv, message):
    base = ["generate", "--preset", "tiny", "--models", str(tiny_dir), "--output", str(tmp_path / "o.mp4"), "--quiet"]
    code, _, err = run(capsys, *(base + argv))
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(message), err
    assert "Traceback" not in err
    assert not (tmp_path / "o.mp4").exists()


def test_output_must_be_mp4(tiny_dir, tmp_path, capsys):
    code, _, err = run(capsys, "generate", "--preset", "tiny", "--prompt", "x", "--output", str(tmp_path / "o.avi"))
    assert code == 2 and "error: --output must end in .mp4" in err


def test_missing_model_files_are_listed(tmp_path, capsys):
    models = tmp_path / "models"
    (models / "vae").mkdir(parents=True)
    code, _, err = run(capsys, "generate", "--preset", "sr_540p", "--prompt", "x", "--models", str(models),
                       "--output", str(tmp_path / "o.mp4"))
    assert code == 2 and "Traceback" not in err
    assert "error: preset 'sr_540p' is missing 5 model file(s)" in err
    for where in ("diffusion_models/base/", "diffusion_models/540p_sr/",
                  "text_encoders/t5gemma-9b-9b-ul2", "vae/turbo_vae", "vae/stable-audio-open-1.0",
                  "540p_sr", "turbo_vae"):
        assert where in err
    code, _, err = run(capsys, "generate", "--preset", "base_256p", "--prompt", "x", "--output", str(tmp_path / "o.mp4"))
    assert code == 2 and "needs --models" in err


def test_official_layout_is_found(tmp_path):
    from magihuman.presets import PRESETS, required_roles, resolve_model_files

    root = tmp_path / "checkpoints"
    for rel in ("distill/model.safetensors.index.json", "t5gemma-9b-9b-ul2/config.json",
                "turbo_vae/TurboV3-Wan22-TinyShallow_7_7.json", "stable-audio-open-1.0/model.safetensors",
                "Wan2.2-TI2V-5B/Wan2.2_VAE.pth"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    preset = PRESETS["distill_256p"]
    files = resolve_model_files(preset, root, required_roles(preset, image=True))
    assert files == {"distill": root / "distill", "text_encoder": root / "t5gemma-9b-9b-ul2",
                     "turbo_vae": root / "turbo_vae", "video_vae": root / "Wan2.2-TI2V-5B/Wan2.2_VAE.pth",
                     "audio_vae": root / "stable-audio-open-1.0"}


def test_readme_comfyui_layout_is_found(tmp_path):
    """A models folder laid out exactly as the README's table says (parsed from README.md) is what the CLI finds."""
    import re

    from magihuman.presets import MODEL_FILES, PRESETS, required_roles, resolve_model_files

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Install into ComfyUI", 1)[1].split("\n## ", 1)[0]
    places = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and (m := re.match(r"`models/([^`]+)`", cells[1])):
            places[cells[0]] = m.group(1)
    root = tmp_path / "ComfyUI" / "models"
    for rel in places.values():
        target = root / rel
        if rel.endswith("/"):
            target.mkdir(parents=True, exist_ok=True)
            (target / "model.safetensors").write_bytes(b"x")
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"x")
    assert len(places) >= 8, places
    for name in ("sr_1080p", "distill_540p"):
        preset = PRESETS[name]
        roles = required_roles(preset, image=True) + (["distill"] if preset.dit != "distill" else ["base"])
        files = resolve_model_files(preset, root, roles)
        for role, path in files.items():
            assert path == root / MODEL_FILES[role].comfy_path, (role, path)


def test_tiny_models_and_presets_commands(tmp_path, capsys, tiny_dir):
    code, out, _ = run(capsys, "tiny-models", str(tiny_dir))
    assert code == 0 and all(rel in out for rel in TINY_FILES.values())
    code, out, _ = run(capsys, "presets")
    assert code == 0 and "sr_1080p" in out and "1920x1088" in out and "diffusion_models/distill/" in out


def test_module_entry_point_exit_code(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-m", "magihuman", "generate", "--preset", "tiny", "--prompt", "",
                          "--output", str(tmp_path / "o.mp4")], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=120)
    assert res.returncode == 2 and res.stderr.strip() == "error: --prompt is empty: describe the video (and what is said)"


@pytest.mark.slow
def test_wan_decoder_option(tiny_dir, tmp_path, capsys):
    out = tmp_path / "wan.mp4"
    code, _, err = run(capsys, "generate", "--preset", "tiny", "--prompt", "hi", "--seconds", "0.2", "--decoder", "wan",
                       "--models", str(tiny_dir), "--output", str(out), "--quiet", "--seed", "3")
    assert code == 0, err
    info = media.read_mp4_info(out)
    assert info["frames"] == 5 and info["video_codec"] == "h264"  # 0.2 s: 6 frames -> T = 2 -> 4*1+1 decoded
    assert "load video VAE" in err and "load Turbo VAE" not in err


def test_readme_model_table_is_the_generated_one():
    from magihuman.presets import model_files_markdown

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert model_files_markdown() in readme  # regenerate with magihuman.presets.model_files_markdown()
