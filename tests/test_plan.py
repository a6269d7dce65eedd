"""Fit planner: the choices for a few GPU sizes checked against the estimator directly (the first setting in the
stated order that fits, the most layers on the GPU that fit), RAM limits, refusals, the CLI and the README table."""

from __future__ import annotations

from pathlib import Path

import pytest

from magihuman import cli
from magihuman import estimate as est
from magihuman.models.dit_config import DiTConfig
from magihuman.plan import dit_formats, fit_table_markdown, plan_fit, ranked_formats, text_encoder_formats

DIT_FORMATS = dit_formats()
TEXT_ENCODER_FORMATS = text_encoder_formats()

GIB = 2 ** 30


def _budget(vram_gib: float) -> int:
    return int((vram_gib - 1.0) * GIB)  # plan_fit's default reserve: 1 GiB


def test_80gb_runs_distill_in_bf16_whole():
    plan = plan_fit("distill_256p", 80)
    assert plan.fits and plan.dit_formats == ("bf16",) and plan.dit_blocks_on_device == (None,)
    assert (plan.text_encoder_format, plan.text_encoder_device, plan.text_encoder_kept) == ("bf16", "GPU", True)
    assert not plan.frames_to_ram
    ref = est.estimate("distill_256p")  # bf16 everywhere: the plain estimate
    by_name = {s.name: s for s in plan.stages}
    assert by_name["base DiT"].vram_bytes == ref.stages[0].peak_bytes
    assert by_name["decode"].vram_bytes == ref.decode_peak_bytes
    assert by_name["text encode"].vram_bytes == ref.text_encode_peak_bytes
    assert "all 40 layers on the GPU" in plan.format() and "how:" not in plan.format()


def test_16gb_takes_the_first_compact_format_that_fits():
    plan = plan_fit("distill_256p", 16)
    assert plan.fits and plan.dit_blocks_on_device == (None,)
    (fmt,) = plan.dit_formats
    assert fmt in DIT_FORMATS[1:]
    peaks = {f: est.estimate("distill_256p", weight_dtype=f).stages[0].peak_bytes for f in DIT_FORMATS}
    earlier = DIT_FORMATS[:DIT_FORMATS.index(fmt)]
    assert all(peaks[f] > _budget(16) for f in earlier) and peaks[fmt] <= _budget(16)
    assert plan.peak_vram_bytes <= _budget(16)
    text = plan.format()
    assert f"--quant {fmt}" in text or "--dtype fp8" in text  # says how to get that format
    assert f"--dit magihuman_distill_{fmt}.gguf" in text or "--dtype fp8" in text  # the CLI flag beside the node
    # the text encoder: the first format of its order that fits on the GPU
    te = plan.text_encoder_format
    assert TEXT_ENCODER_FORMATS.index(te) > 0 and plan.text_encoder_device == "GPU"
    need = {f: est.estimate("distill_256p", text_encoder_format=f).text_encode_peak_bytes for f in TEXT_ENCODER_FORMATS}
    earlier = TEXT_ENCODER_FORMATS[:TEXT_ENCODER_FORMATS.index(te)]
    assert need[te] <= _budget(16) and all(need[f] > _budget(16) for f in earlier)


def test_12gb_holds_the_whole_distilled_dit_in_4_bits():
    """Every block linear quantised (the swiglu down_proj included): the 15B DiT is 8.1 GiB in Q4_K and 9.0 GiB in
    Q4_1, so distill 256p runs with all 40 layers on a 12 GB card, in the more accurate of the two (Q4_1 by the
    measured errors); 5-bit types do not fit."""
    plan = plan_fit("distill_256p", 12)
    assert plan.fits and plan.dit_formats == ("Q4_1",) and plan.dit_blocks_on_device == (None,)
    assert "all 40 layers on the GPU" in plan.format()
    peaks = {f: est.estimate("distill_256p", weight_dtype=f).stages[0].peak_bytes for f in ("Q5_0", "Q4_1", "Q4_K")}
    assert peaks["Q4_K"] < peaks["Q4_1"] <= _budget(12) < peaks["Q5_0"]


def test_10gb_offloads_the_most_layers_that_fit():
    plan = plan_fit("distill_256p", 10)
    assert plan.fits
    (fmt,), (n,) = plan.dit_formats, plan.dit_blocks_on_device
    assert n is not None and 1 <= n < 40
    # no format fits whole; n layers fit, n + 1 do not
    assert all(est.estimate("distill_256p", weight_dtype=f).stages[0].peak_bytes > _budget(10) for f in DIT_FORMATS)
    at = lambda k: est.estimate("distill_256p", weight_dtype=fmt, blocks_on_device=k).stages[0]  # noqa: E731
    assert at(n).peak_bytes <= _budget(10) < at(n + 1).peak_bytes
    stage = next(s for s in plan.stages if s.name == "base DiT")
    assert stage.vram_bytes == at(n).peak_bytes and "streams" in stage.note
    assert f"--blocks-on-device {n}" in plan.format()


def test_ram_limit_picks_a_smaller_dit_and_frees_the_text_encoder():
    free = plan_fit("distill_256p", 10)
    limited = plan_fit("distill_256p", 10, ram_gib=16)
    assert free.dit_formats == ("bf16",) and free.text_encoder_kept
    assert limited.fits and limited.dit_formats[0] != "bf16" and not limited.text_encoder_kept
    assert limited.peak_ram_bytes <= int(13 * GIB)  # 16 GiB minus the 3 GiB reserve
    assert "freed after" in limited.format()
    roomy = plan_fit("distill_256p", 24, ram_gib=16)  # the bf16 encoder fits the GPU but not RAM, where it loads
    assert roomy.text_encoder_format == "Q8_0" and plan_fit("distill_256p", 24).text_encoder_format == "bf16"
    cfg = DiTConfig.preset("distill")
    whole = est.dit_weight_storage(cfg, limited.dit_formats[0]).total
    assert next(s for s in limited.stages if s.name == "base DiT").ram_bytes >= whole  # loaded into RAM first


def test_too_small_is_a_clear_refusal():
    # 4.1 GB -> refused, with the longest clip that fits (GGUF decoding on a GPU takes 512 MiB of chunk
    # temporaries whatever the clip's length: at 3.6 GB no clip fits)
    plan = plan_fit("distill_256p", 4.1)
    assert not plan.fits
    assert plan.problem.startswith("base DiT needs ")
    assert "of VRAM even Q4_K weights with 1 layer on the GPU, the rest streamed from RAM (3.1G usable)" in plan.problem
    assert "NOTHING FITS" in plan.format() and "does not fit" in plan.format() and "how:" not in plan.format()
    secs = float(plan.problem.split("--seconds ")[1].split(")")[0])
    assert plan_fit("distill_256p", 4.1, seconds=secs).fits
    assert not plan_fit("distill_256p", 4.1, seconds=secs + 1).fits
    assert "No shorter clip fits either" in plan_fit("distill_256p", 3.6).problem
    none = plan_fit("distill_256p", 3)
    assert not none.fits and "No shorter clip fits either" in none.problem
    sr = plan_fit("sr_1080p", 24)  # the 1080p SR activations alone exceed 24 GB at 4 s
    assert not sr.fits and sr.problem.startswith("SR DiT needs") and sr.dit_formats[0] is not None


def test_sr_stages_choose_on_their_own():
    plan = plan_fit("sr_540p", 24)
    assert plan.fits and len(plan.dit_formats) == 2
    names = [s.name for s in plan.stages]
    assert names == ["text encode", "base DiT", "SR DiT", "decode"]
    sr = est.estimate("sr_540p", weight_dtype=plan.dit_formats[0], sr_weight_dtype=plan.dit_formats[1])
    assert plan.stages[2].vram_bytes == sr.stages[1].peak_bytes <= _budget(24)


def test_bad_requests():
    with pytest.raises(ValueError, match="tiny CPU test preset"):
        plan_fit("tiny", 16)
    with pytest.raises(ValueError, match="unknown preset"):
        plan_fit("nope", 16)
    with pytest.raises(ValueError, match="--vram"):
        plan_fit("distill_256p", 0)
    with pytest.raises(ValueError, match="--ram"):
        plan_fit("distill_256p", 16, ram_gib=-2)


def test_cli_plan_output_and_exit_codes(capsys):
    assert cli.main(["plan", "--preset", "distill_256p", "--vram", "80"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("MagiHuman fit plan: distill_256p, 448x256, 4 s on 80 GiB VRAM")
    assert "bf16 weights, all 40 layers on the GPU" in out and "T5Gemma bf16 on the GPU" in out
    assert cli.main(["plan", "--preset", "base_256p", "--vram", "16", "--ram", "32", "--seconds", "2",
                     "--width", "480", "--height", "272"]) == 0
    out = capsys.readouterr().out
    assert "480x256, 2 s on 16 GiB VRAM" in out and "RAM 32 GiB" in out
    assert cli.main(["plan", "--preset", "sr_1080p", "--vram", "8"]) == 1
    assert "NOTHING FITS" in capsys.readouterr().out
    assert cli.main(["plan", "--preset", "tiny", "--vram", "8"]) == 2  # argparse: not a plannable preset
    assert cli.main(["plan", "--preset", "distill_256p", "--vram", "0"]) == 2
    assert "--vram" in capsys.readouterr().err
    assert cli.main(["plan", "--preset", "distill_256p", "--vram", "16", "--seconds", "-1"]) == 2
    assert cli.main(["plan", "--preset", "distill_256p"]) == 2  # --vram is required


def test_readme_fit_table_is_the_generated_one():
    """README's "What fits your GPU" (under "## Memory guidance") holds exactly fit_table_markdown()."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    guidance = readme.split("## Memory guidance", 1)[1].split("\n## ", 1)[0]
    section = guidance.split("### What fits your GPU", 1)[1]
    assert fit_table_markdown() in section  # regenerate with magihuman.plan.fit_table_markdown()


def test_formats_are_ranked_from_the_registry():
    """The planner's formats come from the storage registry: ordered by measured error, a less accurate one only
    when at least 5 % smaller; fp16/fp32 (no measurement) and larger-but-worse formats are never offered."""
    sizes = {"bf16": 100, "Q8_0": 60, "fp8": 58, "Q5_1": 40, "Q4_K": 30, "Q4_0": 29.9}
    assert ranked_formats(lambda name: sizes.get(name, 1000)) == ("bf16", "Q8_0", "Q5_1", "Q4_K")
    assert DIT_FORMATS[0] == "bf16" and "fp16" not in DIT_FORMATS and "fp32" not in DIT_FORMATS
    cfg = DiTConfig.preset("distill")
    totals = [est.dit_weight_storage(cfg, f).total for f in DIT_FORMATS]
    assert all(b <= 0.95 * a for a, b in zip(totals, totals[1:]))


def test_text_encoder_is_priced_on_the_device_it_runs_on():
    """On the GPU a GGUF text encoder decodes in GPU-sized chunks (64 Mi elements: float32 temporaries of a
    whole projection); the plan's text-encode VRAM is the GPU estimate, more than the same encoder on a CPU."""
    plan = plan_fit("distill_256p", 8)
    fmt = plan.text_encoder_format
    assert plan.text_encoder_device == "GPU" and fmt in ("Q5_1", "Q5_0", "Q4_1", "Q4_K")
    gpu = est.estimate("distill_256p", text_encoder_format=fmt, device_type="cuda")
    cpu = est.estimate("distill_256p", text_encoder_format=fmt, device_type="cpu")
    assert plan.stages[0].vram_bytes == gpu.text_encode_peak_bytes > cpu.text_encode_peak_bytes
    assert gpu.text_encode_peak_bytes == est.estimate("distill_256p", text_encoder_format=fmt).text_encode_peak_bytes


def test_suggested_windows_are_ones_generate_accepts():
    """When a clip longer than a window is the longest that fits, the windows suggested are MAX_WINDOW_SECONDS
    long (generate refuses longer ones)."""
    from magihuman.pipeline import MAX_WINDOW_SECONDS

    problem = plan_fit("distill_256p", 8, seconds=20).problem
    fits = float(problem.split("--seconds ")[1].split(")")[0])
    assert fits > MAX_WINDOW_SECONDS, problem
    assert problem.endswith(f"or the whole 20 s in windows of {MAX_WINDOW_SECONDS:g} s (--window-seconds "
                            f"{MAX_WINDOW_SECONDS:g}).")


def test_plan_window_seconds_takes_generates_limits(capsys):
    """plan --window-seconds refuses what generate refuses (1-10 s), with the same reason."""
    for bad in ("0.5", "12", "nan"):
        assert cli.main(["plan", "--preset", "distill_256p", "--vram", "24", "--window-seconds", bad]) == 2
        err = capsys.readouterr().err
        assert f"--window-seconds {float(bad):g}: windows last 1 to 10 s (the model was trained on clips" in err
    assert cli.main(["plan", "--preset", "distill_256p", "--vram", "24", "--window-seconds", "10"]) == 0
    assert capsys.readouterr().out.startswith("one window of 4 s")  # the preset's clip is shorter than the window
