"""The command line as a new user meets it (issue 23): one clear line for each mistake, before any model loads,
and what the run does said where it is decided. Exact messages are asserted."""

from __future__ import annotations

import math

import pytest
import torch

from magihuman import cli


def run(capsys, *argv):
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def errors(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("error:")]


def stop_at_dit_load(monkeypatch) -> list:
    """Replace the DiT load by a spy that records (path, loras) and stops the run there (exit 130)."""
    seen = []

    def spy(path, storage, device, show, args, loras=(), blocks_on_device=None):
        seen.append((path, list(loras)))
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_load_dit", spy)
    return seen


def generate(tiny_dir, tmp_path, *extra):
    return ["generate", "--preset", "tiny", "--prompt", "A man smiles.", "--models", str(tiny_dir),
            "--output", str(tmp_path / "o.mp4"), "--quiet", *extra]


# ---------------------------------------------------------------- 1. a device this torch cannot use


def test_cuda_device_without_cuda_build_is_one_line(tiny_dir, tmp_path, capsys, monkeypatch):
    loaded = []
    monkeypatch.setattr(cli, "_load_dit", lambda *a, **k: loaded.append(a))
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run(capsys, *generate(tiny_dir, tmp_path, "--device", "cuda"))
    assert code == 2 and "Traceback" not in err and loaded == []
    assert errors(err) == [f"error: --device cuda: this torch ({torch.__version__}) is built without CUDA; use "
                           "--device cpu, or install a CUDA build of torch"]
    code, _, err = run(capsys, "extract-lora", "a", "b", str(tmp_path / "l.safetensors"), "--rank", "4",
                       "--device", "cuda")
    assert code == 2 and errors(err) == [f"error: --device cuda: this torch ({torch.__version__}) is built without "
                                         "CUDA; use --device cpu, or install a CUDA build of torch"]


def test_cuda_device_without_a_gpu_is_one_line(tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run(capsys, *generate(tiny_dir, tmp_path, "--device", "cuda:1"))
    assert code == 2 and errors(err) == ["error: --device cuda:1: torch finds no CUDA GPU (driver missing or no "
                                         "device visible); use --device cpu"]


# ---------------------------------------------------------------- 2. --debug before or after the command


def test_debug_is_accepted_after_the_command(tiny_dir, tmp_path, capsys):
    argv = generate(tiny_dir, tmp_path, "--debug")
    argv[argv.index("--prompt") + 1] = " "
    with pytest.raises(cli.UsageError, match="--prompt is empty"):  # --debug: the traceback is shown
        cli.main(argv)
    with pytest.raises(cli.UsageError, match="--prompt is empty"):
        cli.main(["--debug", *argv[:-1]])
    code, out, _ = run(capsys, "prompt", "build", "--body", "A man smiles.", "--debug")
    assert code == 0 and out.startswith("A man smiles.")
    code, _, err = run(capsys, *argv[:-1])  # no --debug: one line
    assert code == 2 and errors(err) == ["error: --prompt is empty: describe the video (and what is said)"]


# ---------------------------------------------------------------- 3. an output that cannot be written


def test_unwritable_output_is_refused_before_anything_loads(tiny_dir, tmp_path, capsys, monkeypatch):
    touched = []
    monkeypatch.setattr(cli, "ensure_tiny_models", lambda *a: touched.append(a))
    monkeypatch.setattr(cli, "_load_dit", lambda *a, **k: touched.append(a))
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    argv = generate(tiny_dir, tmp_path)
    argv[argv.index("--output") + 1] = str(blocker / "sub" / "o.mp4")
    code, _, err = run(capsys, *argv)
    assert code == 2 and errors(err) == [f"error: --output {blocker / 'sub' / 'o.mp4'}: {blocker} is a file, not a "
                                         "folder"]
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        import tempfile

        try:  # root writes anywhere: then this case is not observable here
            with tempfile.TemporaryFile(dir=locked):
                writable = True
        except OSError:
            writable = False
        if not writable:
            argv[argv.index("--output") + 1] = str(locked / "o.mp4")
            code, _, err = run(capsys, *argv)
            assert code == 2 and errors(err) == [f"error: --output {locked / 'o.mp4'}: cannot create a file in "
                                                 f"{locked} (Permission denied)"]
    finally:
        locked.chmod(0o700)
    import os

    if os.path.isdir("/proc/self"):  # procfs takes no new files: the case of the issue
        argv[argv.index("--output") + 1] = "/proc/x.mp4"
        code, _, err = run(capsys, *argv)
        assert code == 2 and errors(err) == ["error: --output /proc/x.mp4: cannot create a file in /proc (No such "
                                             "file or directory)"]
    assert touched == []


# ---------------------------------------------------------------- 4. --lora PATH:STRENGTH


def test_lora_strength_and_lookup(tiny_dir, tmp_path, capsys, monkeypatch):
    from magihuman.tiny import TINY_LORA

    lora = tiny_dir / TINY_LORA
    loaded = stop_at_dit_load(monkeypatch)
    code, _, err = run(capsys, *generate(tiny_dir, tmp_path, "--lora", f"{lora}:abc"))
    assert code == 2 and errors(err) == [f"error: --lora {lora}:abc: the strength 'abc' is not a number "
                                         f"(PATH[:STRENGTH], e.g. {lora}:0.8)"]
    code, _, err = run(capsys, *generate(tiny_dir, tmp_path, "--lora", f"{lora}:12.5"))
    assert code == 2 and errors(err) == [f"error: --lora {lora}:12.5: the strength must lie in -10..10 (as in the "
                                         "LoRA node), got 12.5"]
    code, _, err = run(capsys, *generate(tiny_dir, tmp_path, "--lora", "missing.safetensors"))
    assert code == 2 and errors(err) == ["error: --lora missing.safetensors: no such file (looked for "
                                         f"missing.safetensors and {tiny_dir / 'loras' / 'missing.safetensors'})"]
    # a bare name is found in <models>/loras/ (with or without .safetensors); the strength is kept
    for name, strength in (("magihuman_tiny_lora.safetensors:-0.5", -0.5), ("magihuman_tiny_lora", 1.0)):
        loaded.clear()
        code, _, err = run(capsys, *generate(tiny_dir, tmp_path, "--lora", name))
        assert code == 130 and [loras for _, loras in loaded] == [[(lora, strength)]], err
    code, _, err = run(capsys, *generate(tiny_dir, tmp_path, "--sr-lora", "magihuman_tiny_lora"))
    assert code == 2 and errors(err) == ["error: --sr-lora: preset 'tiny' has no super-resolution stage (give LoRAs "
                                         "for its DiT with --lora)"]


# ---------------------------------------------------------------- 5. the reference audio sets the length


def test_reference_audio_sets_the_length_unless_seconds_trims_it(tiny_dir, tmp_path, capsys):
    import numpy as np
    import soundfile as sf

    from magihuman import media

    wav = tmp_path / "speech.wav"
    t = np.arange(int(2.5 * 22050)) / 22050  # longer than the tiny preset's 2 s
    sf.write(wav, 0.3 * np.sin(2 * np.pi * 220 * t), 22050)
    out = tmp_path / "o.mp4"
    code, _, err = run(capsys, *generate(tiny_dir, tmp_path, "--audio", str(wav)))
    assert code == 0, err
    assert "trimmed" not in err  # the preset's default length does not cut the audio: the whole speech is made,
    assert "long video: 2 windows of 1.92 s (the last 0.96 s)" in err  # windows of the preset's 49 frames
    info = media.read_mp4_info(out)
    assert info["frames"] == 65 >= 2.5 * 25 + 1  # whole latent frames holding the whole speech, then a little silence
    assert info["audio_duration"] == pytest.approx(65 / 25, abs=0.03)
    code, _, err = run(capsys, *generate(tiny_dir, tmp_path, "--audio", str(wav), "--seconds", "1"))
    assert code == 0, err
    assert f"--audio {wav}: 2.50 s, trimmed to 1 s (--seconds)" in err.splitlines()
    assert media.read_mp4_info(out)["frames"] == 25  # 1 s: 25 audio steps -> 7 latent frames -> 25 frames


def test_reference_audio_steps_are_the_encoders(tiny_dir):
    """The plan's count of audio steps (no model run) is what the audio VAE gives (the tiny one has the release's
    strides and paddings)."""
    from magihuman import media
    from magihuman.loaders import load_audio_vae
    from magihuman.tiny import TINY_FILES

    vae = load_audio_vae(tiny_dir / TINY_FILES["audio_vae"])
    g = torch.Generator().manual_seed(0)
    for samples, rate, seconds in ((2048, 51200, None), (4095, 51200, None), (6615, 22050, None),
                                   (73868, 22050, None), (73868, 22050, 2.0), (1000, 8000, None),
                                   (132300, 44100, 1.37), (132300, 44100, math.inf)):
        wave = media.prepare_reference_audio(torch.randn(1, samples, generator=g) * 0.1, rate, seconds=seconds)
        n = media.encode_reference_audio(vae, wave).shape[-1]
        assert media.reference_audio_steps(samples, rate, seconds) == n, (samples, rate, seconds)


# ---------------------------------------------------------------- 6. RAM without psutil; CPU remedies; the install


def test_ram_without_psutil_is_memavailable(tmp_path, monkeypatch):
    import sys

    from magihuman import estimate

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16303204 kB\nMemFree:         2055208 kB\n"
                       "MemAvailable:   12163364 kB\nBuffers:          402248 kB\n")
    monkeypatch.setattr(estimate, "MEMINFO", str(meminfo))
    monkeypatch.setitem(sys.modules, "psutil", None)  # `import psutil` raises ImportError
    assert estimate.device_memory("cpu") == 12163364 * 1024  # available (caches count), not the free pages
    assert estimate.device_memory("cpu", free=True) == 12163364 * 1024


def test_cpu_refusal_gives_cpu_remedies(tiny_dir, tmp_path, capsys, monkeypatch):
    from magihuman import estimate

    monkeypatch.setattr(estimate, "device_memory", lambda device=None, free=False: 4 << 20)
    code, _, err = run(capsys, *generate(tiny_dir, tmp_path, "--device", "cpu"))
    assert code == 2
    (line,) = errors(err)
    assert "of RAM (CPU run)" in line and "but only 4M is available" in line
    assert line.endswith(" Or store the DiT weights compactly (CLI --dtype fp8, half of bf16, or a Q8_0/Q4_K .gguf "
                         "from `python -m magihuman convert`), close other programs, or run on a GPU.")
    for gpu_remedy in ("lowvram", "block swap", "stream blocks", "device memory", "on the device"):
        assert gpu_remedy not in line
    plan = estimate.estimate("distill_256p")
    with pytest.raises(estimate.MemoryEstimateError, match="ComfyUI lowvram / block swap"):  # a GPU: offload
        estimate.check_fits(plan, 8 << 30)


def test_install_gives_gguf_and_zstandard_without_torch():
    """`pip install -e .` (the README's install) brings what GGUF files and the official .zst shards need, and
    requirements.txt (ComfyUI-Manager) lists the same runtime packages; neither package pulls torch."""
    import importlib.metadata as md
    import re
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]

    def name(req: str) -> str:
        return re.match(r"[A-Za-z0-9_.-]+", req.strip()).group(0).lower()

    deps = {name(d) for d in tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]}
    reqs = {name(ln) for ln in (root / "requirements.txt").read_text().splitlines()
            if ln.strip() and not ln.startswith("#")}
    assert {"gguf", "zstandard"} <= deps
    assert deps - {"torch", "comfyui-frontend-package"} <= reqs  # torch and the frontend come with ComfyUI
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert "pip install -e . " in readme
    for pkg in ("gguf", "zstandard"):
        requires = md.requires(pkg) or []
        assert not [r for r in requires if name(r) == "torch" and "extra ==" not in r], (pkg, requires)


# ---------------------------------------------------------------- 7. the built-in negative prompt is not the user's


def test_builtin_negative_prompt_trim_is_not_blamed_on_the_user(tiny_dir, tmp_path, capsys, monkeypatch, caplog):
    import logging

    from magihuman.sampling import DEFAULT_NEGATIVE_PROMPT

    stop_at_dit_load(monkeypatch)  # the prompts are encoded before the DiT loads
    argv = generate(tiny_dir, tmp_path)
    argv[argv.index("tiny")] = "tiny_sr"  # CFG: the negative prompt is encoded
    with caplog.at_level(logging.DEBUG, logger="magihuman"):
        code, _, err = run(capsys, *argv)
    assert code == 130, err
    trims = [r for r in caplog.records if "tokens; the DiT takes" in r.getMessage()
             or "built-in negative prompt is trimmed" in r.getMessage()]
    assert [r.levelno for r in trims] == [logging.DEBUG], [r.getMessage() for r in trims]  # said once, at debug
    assert "shorten the prompt" not in err and "shorten the prompt" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="magihuman"):  # a long negative prompt of one's own is still said
        code, _, err = run(capsys, *argv, "--negative-prompt", DEFAULT_NEGATIVE_PROMPT + ", blurry" * 200)
    assert code == 130, err
    assert any(r.levelno == logging.WARNING and "shorten the prompt" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- 8. one frame rule: the plan says what the file has


def test_plan_line_states_the_frames_of_the_file(tiny_dir, tmp_path, capsys):
    from magihuman import estimate, media

    # 2 s: 51 audio steps -> 13 latent frames -> 4*12+1 = 49 video frames; 4 s: 101 -> 26 -> 101
    assert estimate.estimate("tiny", seconds=2).format().splitlines()[0] == (
        "MagiHuman plan: tiny, 128x64, 2 s -> 49 video frames (13 latent), 51 audio steps, DiT weights bf16")
    assert estimate.estimate("tiny", seconds=4).format().splitlines()[0] == (
        "MagiHuman plan: tiny, 128x64, 4 s -> 101 video frames (26 latent), 101 audio steps, DiT weights bf16")
    argv = generate(tiny_dir, tmp_path, "--seconds", "0.5")
    argv.remove("--quiet")
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    assert ("MagiHuman plan: tiny, 128x64, 0.5 s -> 13 video frames (4 latent), 14 audio steps, DiT weights fp32"
            in err.splitlines())
    info = media.read_mp4_info(tmp_path / "o.mp4")
    assert info["frames"] == 13
    assert info["audio_duration"] == pytest.approx(14 * 2048 / 51200, abs=0.03)


# ---------------------------------------------------------------- 9. CLI words: which flag takes the file


def test_files_given_to_the_wrong_flag_name_the_right_one(tiny_dir, tmp_path, capsys, monkeypatch):
    from magihuman.tiny import TINY_DISTILL_LORA, TINY_FILES, TINY_LORA

    loaded = stop_at_dit_load(monkeypatch)
    sr, distill, base = (tiny_dir / TINY_FILES[r] for r in ("sr_540p", "distill", "base"))
    lora, distill_lora = tiny_dir / TINY_LORA, tiny_dir / TINY_DISTILL_LORA
    cases = [
        (generate(tiny_dir, tmp_path, "--dit", str(sr)),
         f"error: --dit {sr} is the 540p super-resolution DiT (variant sr_540p: safetensors metadata "
         "magihuman_variant='sr_540p'): give it with --sr-dit, with a preset that has a super-resolution stage "
         "(sr_540p, sr_1080p, distill_540p, tiny_sr); --dit takes the base-stage DiT (distill or base)"),
        (generate(tiny_dir, tmp_path, "--dit", str(lora)),
         f"error: --dit {lora} is a LoRA, not a DiT: give it with --lora (the DiT it applies to with --dit, or the "
         "one found in --models)"),
        (generate(tiny_dir, tmp_path, "--lora", str(base)),
         f"error: --lora {base} is the base DiT (variant base: safetensors metadata magihuman_variant='base'), not a "
         "LoRA: give it with --dit"),
        (generate(tiny_dir, tmp_path, "--preset", "tiny_sr", "--sr-dit", str(distill)),
         f"error: --sr-dit {distill} is the distilled DiT (variant distill: safetensors metadata "
         "magihuman_variant='distill'): give it with --dit; --sr-dit takes a super-resolution DiT (540p_sr or "
         "1080p_sr)"),
    ]
    for argv, message in cases:
        code, _, err = run(capsys, *argv)
        assert code == 2 and errors(err) == [message], err
    assert loaded == []
    # the base DiT with the distill-from-base LoRA samples as the distilled model: accepted as --dit
    code, _, err = run(capsys, *generate(tiny_dir, tmp_path, "--dit", str(base), "--lora", str(distill_lora)))
    assert code == 130 and loaded == [(base, [(distill_lora, 1.0)])], err


# ---------------------------------------------------------------- 10. which file the CLI took, the flag to take another


def test_models_folder_with_a_folder_and_a_gguf_says_which_it_took(tiny_dir, tmp_path, capsys, monkeypatch):
    import shutil

    from magihuman.tiny import TINY_FILES

    models = tmp_path / "models"  # ComfyUI layout, release names (tiny weights: only found, never loaded here)
    for role, rel in (("distill", "diffusion_models/distill"), ("text_encoder", "text_encoders/t5gemma-9b-9b-ul2"),
                      ("turbo_vae", "vae/turbo_vae"), ("audio_vae", "vae/stable-audio-open-1.0")):
        shutil.copytree(tiny_dir / TINY_FILES[role], models / rel)
    gguf = models / "diffusion_models" / "magihuman_distill_Q8_0.gguf"
    gguf.write_bytes(b"GGUF")  # where it is, not what it holds, decides here
    monkeypatch.setattr(cli, "_plan_and_check", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    argv = ["generate", "--preset", "distill_256p", "--prompt", "x", "--models", str(models), "--output",
            str(tmp_path / "o.mp4")]
    code, _, err = run(capsys, *argv)
    assert code == 130, err
    assert (f"the distilled DiT: using diffusion_models/distill (also in {models}: "
            f"diffusion_models/magihuman_distill_Q8_0.gguf); to use another: --dit {gguf}") in err.splitlines()
    assert err.count("using") == 1


def test_plan_gives_the_cli_flags_beside_the_node_settings(capsys):
    """Every setting of `plan`'s how-to has its CLI flag, per stage, and a converted file's suggested name is one
    the CLI finds in a models folder."""
    import fnmatch
    import re

    from magihuman.presets import MODEL_FILES

    lines = []
    for vram in ("12", "20", "24"):
        assert cli.main(["plan", "--preset", "sr_540p", "--vram", vram]) == 0
        lines += capsys.readouterr().out.split("how:\n", 1)[1].splitlines()
    flags = set()
    for line in lines:
        m = re.match(r"  (base|sr_540p) DiT (Q\w+): python -m magihuman convert <(\w+) folder> (\S+) --quant \2 "
                     r"\(DiT loader: the \.gguf, weight_dtype auto; CLI (--dit|--sr-dit) \4\), or quantised while "
                     r"loading: weight_dtype \2 \(CLI (--dtype|--sr-dtype) \2\)$", line)
        if m:
            role, _, folder, name, flag, dtype_flag = m.groups()
            assert flag == ("--dit" if role == "base" else "--sr-dit") and folder == MODEL_FILES[role].official
            assert dtype_flag == ("--dtype" if role == "base" else "--sr-dtype")
            flags.add(dtype_flag)
            assert any(fnmatch.fnmatch(name, pat) for pat in MODEL_FILES[role].also), (name, line)
            flags.add(flag)
            continue
        m = (re.match(r"  (base|sr_540p) DiT fp8: weight_dtype fp8 in the DiT loader \(CLI (--dtype|--sr-dtype) "
                      r"fp8\)", line)
             or re.match(r"  (base|sr_540p) DiT: \d+/40 layers on the GPU \(ComfyUI loads it partially by itself; "
                         r"CLI (--blocks-on-device|--sr-blocks-on-device) \d+\)$", line))
        if m:
            assert m.group(2).startswith("--sr-") == (m.group(1) == "sr_540p"), line
            flags.add(m.group(2))
            continue
        m = re.match(r"  text encoder (Q\w+): python -m magihuman convert <t5gemma-9b-9b-ul2 folder> "
                     r"(t5gemma_\1\.gguf) --quant \1 \(T5Gemma loader: the \.gguf; CLI --text-encoder \2\)$", line)
        assert m, line
        flags.add("--text-encoder")
    assert flags == {"--dit", "--sr-dit", "--dtype", "--sr-dtype", "--blocks-on-device", "--sr-blocks-on-device",
                     "--text-encoder"}, flags


def test_sr_stage_takes_its_own_dtype_and_offload(tiny_dir, tmp_path, capsys, monkeypatch):
    """The plan's per-stage settings exist on the CLI: --sr-dtype and --sr-blocks-on-device reach the SR DiT only."""
    seen = []

    def spy(path, storage, device, show, args, loras=(), blocks_on_device=None):
        seen.append((path.name, storage.spec, blocks_on_device))
        if len(seen) == 2:
            raise KeyboardInterrupt
        return real(path, storage, device, show, args, loras, blocks_on_device)

    real = cli._load_dit
    monkeypatch.setattr(cli, "_load_dit", spy)
    code, _, err = run(capsys, *generate(tiny_dir, tmp_path, "--preset", "tiny_sr", "--steps", "1", "--seconds",
                                         "0.2", "--blocks-on-device", "2", "--sr-blocks-on-device", "0",
                                         "--sr-dtype", "bf16"))
    assert code == 130, err
    assert seen == [("magihuman_tiny_base.safetensors", "file:fp32", 2), ("magihuman_tiny_540p_sr", "bf16", 0)]


# ---------------------------------------------------------------- 11. the tiny presets never touch a user's files


def test_tiny_models_never_replace_or_join_user_files(tmp_path, capsys, monkeypatch):
    from magihuman.tiny import STAMP_NAME, TINY_FILES, TinyModelsError, write_tiny_models

    stop_at_dit_load(monkeypatch)
    models = tmp_path / "ComfyUI_models"  # a user's models folder
    mine = models / "diffusion_models" / "my_model.safetensors"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"mine")
    argv = ["generate", "--preset", "tiny", "--prompt", "x", "--models", str(models), "--output",
            str(tmp_path / "o.mp4"), "--quiet"]
    code, _, err = run(capsys, *argv)
    assert code == 2 and errors(err) == [
        f"error: {models} holds other files and no tiny models: the tiny presets write random tiny models into "
        "their models folder, so they take an empty or new one, or none (the cache, "
        f"{cli.default_cache_dir()}); to add them to this folder on purpose: python -m magihuman tiny-models {models}"]
    assert sorted(p.relative_to(models).as_posix() for p in models.rglob("*")) == [
        "diffusion_models", "diffusion_models/my_model.safetensors"]
    # a file of the user's at a tiny path is never replaced, also by tiny-models (even --force)
    theirs = models / TINY_FILES["video_vae"]
    theirs.parent.mkdir(parents=True)
    theirs.write_bytes(b"their own VAE")
    for force in ([], ["--force"]):
        code, _, err = run(capsys, "tiny-models", str(models), *force)
        assert code == 2 and errors(err) == [
            f"error: {models} already holds {TINY_FILES['video_vae']}, which the tiny-model writer did not write (no "
            f"{STAMP_NAME} stamp lists them); they are left as they are: write the tiny models to another folder, "
            "or move those away first"]
    with pytest.raises(TinyModelsError):
        write_tiny_models(models)
    assert theirs.read_bytes() == b"their own VAE" and mine.read_bytes() == b"mine"
    theirs.unlink()
    code, out, _ = run(capsys, "tiny-models", str(models))  # added on purpose, beside the user's files
    assert code == 0 and mine.read_bytes() == b"mine" and (models / TINY_FILES["distill"]).is_dir()
    code, _, err = run(capsys, *argv)  # now a tiny models folder: used
    assert code == 130 and "writing the tiny" not in err, err
    fresh = tmp_path / "fresh"
    argv[argv.index(str(models))] = str(fresh)
    code, _, err = run(capsys, *argv)  # a new folder: written, and said
    assert code == 130, err
    assert f"writing the tiny random models to {fresh} (missing or from an older version)" in err.splitlines()


# ---------------------------------------------------------------- 12. the smaller ones


def test_snapped_size_is_said_once(tiny_dir, tmp_path, capsys, monkeypatch, caplog):
    import logging

    stop_at_dit_load(monkeypatch)
    with caplog.at_level(logging.WARNING):
        code, _, err = run(capsys, *generate(tiny_dir, tmp_path, "--width", "130", "--preset", "tiny_sr",
                                             "--sr-width", "140"))
    assert code == 130, err
    lines = err.splitlines() + [r.getMessage() for r in caplog.records]
    assert [ln for ln in lines if "snapped" in ln] == ["size 130x64 snapped down to 128x64 (multiples of 32)",
                                                       "SR size 140x128 snapped down to 128x128 (multiples of 32)"]


def test_usage_errors_are_one_line_without_the_usage_block(tiny_dir, tmp_path, capsys):
    code, _, err = run(capsys, *generate(tiny_dir, tmp_path, "--preset", "tnyi"))
    assert code == 2 and err.splitlines() == [
        "error: argument --preset: invalid choice: 'tnyi' (choose from 'distill_256p', 'base_256p', 'sr_540p', "
        "'sr_1080p', 'distill_540p', 'tiny', 'tiny_sr'); did you mean 'tiny'? (`python -m magihuman generate --help` "
        "lists the options)"]
    code, _, err = run(capsys, "prompt")
    assert code == 2 and err.splitlines() == ["error: `prompt` needs a subcommand: build, check, llm (`python -m "
                                              "magihuman prompt --help` says what each does)"]
    code, _, err = run(capsys)
    assert code == 2 and err.splitlines() == ["error: give a command: generate, tiny-models, convert, extract-lora, "
                                              "presets, prompt, plan (`python -m magihuman --help` says what each "
                                              "does)"]


def test_quant_and_dtype_choices_ignore_case(tmp_path, capsys):
    from magihuman.checkpoints import write_tiny_dit
    from magihuman.quant.gguf import GGMLType
    from magihuman.weights.gguf_file import open_gguf

    src = write_tiny_dit(tmp_path / "distill", variant="distill")
    dst = tmp_path / "d.gguf"
    code, _, err = run(capsys, "convert", str(src), str(dst), "--quant", "q4_0")
    assert code == 0, err
    assert "Q4_0" in {GGMLType(e.qtype).name for e in open_gguf(dst)[0].values() if e.quantized}
    code, _, err = run(capsys, "convert", str(src), str(tmp_path / "d.safetensors"), "--dtype", "FP16")
    assert code == 0, err


def test_blocks_on_device_zero_streams_every_layer(tiny_dir, tmp_path, capsys, monkeypatch):
    code, _, err = run(capsys, *generate(tiny_dir, tmp_path, "--blocks-on-device", "-1"))
    assert code == 2 and errors(err) == ["error: --blocks-on-device must be >= 0 (0 streams every layer), got -1"]
    seen = {}
    real = cli._load_dit

    def spy(path, storage, device, show, args, loras=(), blocks_on_device=None):
        model = real(path, storage, device, show, args, loras, blocks_on_device)
        seen["resident"] = model._magi_block_offload is not None and [
            i for i, layer in enumerate(model.block.layers) if not getattr(layer, "_forward_pre_hooks", None)]
        return model

    monkeypatch.setattr(cli, "_load_dit", spy)
    code, _, err = run(capsys, *generate(tiny_dir, tmp_path, "--blocks-on-device", "0", "--seconds", "0.2"))
    assert code == 0, err
    assert seen == {"resident": []}  # offload on, no layer kept: every layer streamed


def test_portrait_image_crop_is_said(tiny_dir, tmp_path, capsys, monkeypatch):
    import numpy as np
    from PIL import Image

    stop_at_dit_load(monkeypatch)
    img = tmp_path / "portrait.png"
    Image.fromarray(np.zeros((1280, 720, 3), dtype=np.uint8)).save(img)
    code, _, err = run(capsys, *generate(tiny_dir, tmp_path, "--image", str(img)))
    assert code == 130, err
    # 128x64 is 2:1: a 720-wide crop keeps 360 rows; (1280 - 360) / 2 = 460 cut at the top and at the bottom
    assert (f"--image {img}: 720x1280 centre-cropped to 720x360 (the 128x64 video's aspect; 460 px at the top and "
            "460 px at the bottom cut off), then resized") in err.splitlines()


def test_prompt_build_capitalises_each_joined_part(capsys):
    code, out, _ = run(capsys, "prompt", "build", "--character", "A woman on a bench, cheerful.", "--appearance",
                       "short black bob", "--camera", "static close-up")
    assert code == 0 and out.splitlines()[0] == ("A woman on a bench, cheerful. Short black bob. Static close-up.")


def test_generate_help_shows_the_defaults(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MAGIHUMAN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COLUMNS", "2000")  # one line per option: argparse wraps at hyphens too
    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "generation recipe (default: distill_256p)" in text
    assert f"tiny presets: where to keep the tiny models (default for them: {tmp_path / 'cache' / 'tiny'}, or " \
           "$MAGIHUMAN_CACHE/tiny)" in text
    assert "(default: auto)" in text  # --compute-dtype


def test_convert_refuses_a_missing_output_folder(tmp_path, capsys):
    from magihuman.checkpoints import write_tiny_dit

    src = write_tiny_dit(tmp_path / "distill", variant="distill")
    dst = tmp_path / "new" / "sub" / "d.safetensors"
    code, _, err = run(capsys, "convert", str(src), str(dst))
    assert code == 2 and errors(err) == [f"error: the output folder {dst.parent} does not exist: create it first "
                                         "(convert makes no folders)"]
    assert not (tmp_path / "new").exists()


def test_inferred_variant_is_shown_at_the_default_verbosity(tiny_dir, tmp_path, capsys):
    from magihuman.tiny import TINY_FILES

    argv = generate(tiny_dir, tmp_path, "--seconds", "0.2")
    argv.remove("--quiet")
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    src = tiny_dir / TINY_FILES["distill"] / "model.safetensors.index.json"
    assert (f"base DiT: {src} (2 shard(s)): variant distill (safetensors metadata magihuman_variant='distill'); "
            "fp32 on disk -> fp32 block linears") in err.splitlines()
