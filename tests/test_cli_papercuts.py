"""The command line as a new user meets it (issue 23): one clear line for each mistake, before any model loads,
and what the run does said where it is decided. Exact messages are asserted."""

from __future__ import annotations

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

    def spy(path, dtype, device, show, args, loras=()):
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
    import pytest

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
