"""CLI: the memory plan refuses a run before any model is loaded; `convert` round trips."""

import torch

from magihuman import cli, estimate
from magihuman.checkpoints import load_dit, write_tiny_dit


def test_plan_is_printed_and_too_big_runs_are_refused(tiny_dir, tmp_path, capsys, monkeypatch):
    loaded = []
    monkeypatch.setattr(estimate, "device_memory", lambda device=None, free=False: 4096)
    monkeypatch.setattr(cli, "_load_dit", lambda *a, **k: loaded.append(a))
    code = cli.main(["generate", "--preset", "tiny", "--prompt", "hello", "--seconds", "1", "--models",
                     str(tiny_dir), "--output", str(tmp_path / "o.mp4"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "needs ~" in err and "available" in err and "Traceback" not in err
    assert loaded == [] and not (tmp_path / "o.mp4").exists()


def test_convert_dit_folder_to_bf16_file(tmp_path, capsys):
    src = write_tiny_dit(tmp_path / "distill", variant="distill")
    dst = tmp_path / "distill_bf16.safetensors"
    assert cli.main(["convert", str(src), str(dst)]) == 0
    a, b = load_dit(src, show_progress=False), load_dit(dst, show_progress=False)
    assert b.variant == "distill"
    for (k, x), (k2, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert k == k2 and torch.equal(x, y)
    assert cli.main(["convert", str(src), str(tmp_path / "x.bin")]) == 2


def test_speed_options_are_applied(tiny_dir, tmp_path, capsys, monkeypatch):
    seen = {}
    real = cli._load_dit

    def spy(path, dtype, device, show, args, loras=()):
        model = real(path, dtype, device, show, args, loras)
        seen["compute"] = model.compute_dtype
        seen["offloaded"] = any(getattr(m, "_forward_pre_hooks", None) for m in model.block.layers)
        return model

    monkeypatch.setattr(cli, "_load_dit", spy)
    out = tmp_path / "o.mp4"
    code = cli.main(["generate", "--preset", "tiny", "--prompt", "hello", "--seconds", "0.5", "--models",
                     str(tiny_dir), "--output", str(out), "--quiet", "--compute-dtype", "fp32",
                     "--blocks-on-device", "2"])
    assert code == 0 and out.exists()
    assert seen == {"compute": torch.float32, "offloaded": True}
    code = cli.main(["generate", "--preset", "tiny", "--prompt", "hello", "--output", str(out), "--attention", "flash",
                     "--models", str(tiny_dir)])
    err = capsys.readouterr().err
    if not torch.cuda.is_available():
        assert code == 2 and "CUDA" in err


def test_threads_restored_and_no_process_wide_attention(tiny_dir, tmp_path, capsys):
    """generate sets torch's threads for the run only, also when it fails; the attention choice stays with the
    DiT it was given to (the module has no process-wide selection to leak)."""
    from magihuman import attention

    threads = torch.get_num_threads()
    for extra in (["--threads", "2", "--attention", "sdpa"], ["--threads", "2", "--attention", "sage"]):
        cli.main(["generate", "--preset", "tiny", "--prompt", "hello", "--seconds", "0.2", "--models", str(tiny_dir),
                  "--output", str(tmp_path / "o.mp4"), "--quiet", *extra])
        assert torch.get_num_threads() == threads
    assert not hasattr(attention, "set_attention_backend") and not hasattr(attention, "get_attention_backend")
    capsys.readouterr()
