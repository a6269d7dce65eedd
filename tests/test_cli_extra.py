"""CLI: the memory plan refuses a run before any model is loaded; `convert` round trips."""

import pytest
import torch

from magihuman.storage import FILE, STORAGES

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

    def spy(path, storage, device, show, args, loras=(), blocks_on_device=None):
        model = real(path, storage, device, show, args, loras, blocks_on_device)
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


def test_plan_check_prices_block_offload_and_gguf_files(tmp_path, monkeypatch, capsys):
    """The up-front check prices what the run will hold: --blocks-on-device keeps only N layers on the device
    (the planner suggests it for small GPUs), and a .gguf DiT / text encoder is priced in its own format."""
    import argparse

    from magihuman.presets import get_preset
    from magihuman.tiny import tiny_gguf_files, write_tiny_gguf

    preset = get_preset("distill_256p")
    dev = torch.device("cuda")  # only priced, nothing is allocated
    args = argparse.Namespace(sr_width=None, sr_height=None, steps=None, sr_steps=None, quiet=True,
                              blocks_on_device=None)
    whole = estimate.estimate(preset, weight_dtype=torch.bfloat16).peak_device_bytes
    offloaded = estimate.estimate(preset, weight_dtype=torch.bfloat16, blocks_on_device=4).peak_device_bytes
    assert offloaded < whole / 2
    monkeypatch.setattr(estimate, "device_memory", lambda d: (offloaded + whole) // 2 if str(d) == "cuda" else 1 << 40)
    bf16 = FILE.keeping(STORAGES["bf16"])
    with pytest.raises(estimate.MemoryEstimateError):
        cli._plan_and_check(args, preset, dev, bf16, 448, 256, 4.0)
    args.blocks_on_device = 4
    cli._plan_and_check(args, preset, dev, bf16, 448, 256, 4.0)  # fits with 4 layers on the device

    write_tiny_gguf(tmp_path, quants=("Q4_0",))
    files = {role: tmp_path / rel for role, rel in tiny_gguf_files("Q4_0").items()}
    assert cli._file_format(files["distill"], FILE) == "Q4_0"
    assert cli._file_format(tmp_path / "x.safetensors", FILE) == "bf16"  # not there: the plain default
    assert cli._file_format(files["distill"], STORAGES["fp8"]) == "fp8"  # a storage asked for: priced in it
    args.blocks_on_device = None
    seen = {}
    real = estimate.estimate

    def spy(*a, **k):
        seen.update(k)
        return real(*a, **k)

    monkeypatch.setattr(estimate, "device_memory", lambda d: 1 << 40)
    monkeypatch.setattr(estimate, "estimate", spy)
    cli._plan_and_check(args, preset, dev, bf16, 448, 256, 4.0, files={"distill": files["distill"],
                                                                  "text_encoder": files["text_encoder"]})
    assert seen["weight_dtype"] == "Q4_0" and seen["text_encoder_format"] == "Q4_0"


def test_gguf_types_of_other_tools_are_priced_not_refused(tmp_path, monkeypatch):
    """A DiT GGUF in a type the converter does not write (Q6_K, Q3_K from other tools; the loader decodes them) is
    priced in its own type (the registry knows every GGML block type), not refused by the estimator."""
    from magihuman.checkpoints import WeightSource
    from magihuman.quant.gguf import GGMLType
    from magihuman.weights.entry import Entry

    (tmp_path / "x.gguf").write_bytes(b"")
    key = "block.layers.0.attention.linear_qkv.weight"
    for name in ("Q6_K", "Q5_K", "Q3_K", "Q8_0"):
        entry = Entry(key, key, tmp_path / "x.gguf", torch.uint8, (4, 256), 210, 0, int(GGMLType[name]))
        src = WeightSource(tmp_path / "x.gguf", [tmp_path / "x.gguf"], "gguf", {key: entry})
        monkeypatch.setattr(cli, "open_checkpoint", lambda p, s=src: s)
        got = cli._file_format(tmp_path / "x.gguf", FILE)
        assert got == name, (name, got)
        estimate.estimate("distill_256p", weight_dtype=got)  # priced