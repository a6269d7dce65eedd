"""Fit planner: the settings under which a preset fits a GPU (and host RAM), chosen from the estimator.

    python -m magihuman plan --preset distill_256p --vram 16 [--ram 32] [--seconds 4] [--width 448 --height 256]

:func:`plan_fit` prices every candidate with :func:`magihuman.estimate.estimate` and takes, stage by stage, the
first one that fits, best quality first, then speed. The storages offered (:func:`ranked_formats`): those of the
registry (:data:`magihuman.storage.STORAGES`) with a measured ``rel_error`` (output error against bf16 weights,
``benchmarks/bench_quant_quality.py``) that a loader can encode, ranked by that error, each kept only when it is at
least :data:`MIN_SAVING` (5 %) smaller than every more accurate one kept, for the model's own sizes; every block
linear is stored in it, rows zero-padded to whole GGUF blocks or fp8 matmul tiles.

- **DiT weights** (base and SR stage each on its own): the storages of :func:`dit_formats` with every layer on the
  GPU; then the same storages with block offload (the most layers on the GPU that fit, the rest in host RAM,
  streamed every forward).
- **Text encoder** (T5Gemma 9B): the storages of :func:`text_encoder_formats` on the GPU, else on the CPU. After
  encoding it is offloaded to RAM (kept for the next prompt) when RAM allows, else freed.
- **Decode** (Turbo VAE, sliding window of 7 latent frames): the decoded frames on the GPU, else sent to RAM as
  they are made (``offload_frames``).

VRAM is the device peak of each stage (weights on the GPU + activations, weight decoding included, in GPU-sized
GGUF chunks + latents; one model on the GPU at a time, as ComfyUI and the CLI run them); ``reserve_gib`` (1 GiB:
CUDA context, cuBLAS workspace, allocator slack) is kept free. RAM is what the run holds in host memory besides the
process itself: each model is loaded into RAM first (ComfyUI builds it on its offload device; the CLI too when it
streams layers), with the scratch of encoding to fp8 or GGUF while loading from the release's fp32 (distill, SR)
and bf16 (base) files (:func:`magihuman.estimate.dit_load_working_bytes`); streamed layers stay there; the text
encoder when it is kept after encoding or runs on the CPU; the decoded clip. ``ram_reserve_gib`` (3 GiB: the OS,
Python, torch and CUDA's host side) is kept free. Without ``ram_gib`` host RAM is only reported, not limited.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import sys
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from . import estimate as est
from .geometry import MAX_WINDOW_SECONDS, MIN_WINDOW_SECONDS
from .models.dit_config import DiTConfig
from .presets import MODEL_FILES, PRESETS, get_preset
from .storage import GGUF, STORAGES

__all__ = ["ranked_formats", "dit_formats", "text_encoder_formats", "README_VRAM_GIB", "StageFit", "FitPlan", "plan_fit",
           "fit_table_markdown", "add_parser", "main"]

README_VRAM_GIB = (8, 12, 16, 24, 32, 48, 80)
MIN_SAVING = 0.05  # a less accurate format is offered only when it is at least this much smaller
GIB = est.GIB
EXIT_FITS, EXIT_NOTHING_FITS = 0, 1
MIN_BLOCKS_ON_DEVICE = 1  # the fewest layers the planner keeps on the GPU (the CLI also takes 0: all streamed)


def ranked_formats(size_of) -> tuple[str, ...]:
    """The storages the planner offers, best quality first: those with a measured output error (the registry's
    ``rel_error``) that a loader can produce, ordered by that error, each kept only when it is at least
    :data:`MIN_SAVING` smaller than every more accurate one kept (``size_of(name)``: bytes of the model in it)."""
    ranked = sorted((s for s in STORAGES.values() if s.rel_error is not None and s.encodable), key=lambda s: s.rel_error)
    out, smallest = [], math.inf
    for s in ranked:
        size = size_of(s.name)
        if size <= (1 - MIN_SAVING) * smallest:
            out.append(s.name)
            smallest = size
    return tuple(out)


def dit_formats(config: Optional[DiTConfig] = None) -> tuple[str, ...]:
    """The DiT storages the planner tries, best first (sizes of the release config by default, computed once)."""
    if config is None:
        return _release_dit_formats()
    return ranked_formats(lambda name: est.dit_weight_storage(config, name).total)


@functools.lru_cache(maxsize=None)
def _release_dit_formats() -> tuple[str, ...]:
    return dit_formats(DiTConfig.preset("distill"))


@functools.lru_cache(maxsize=None)
def text_encoder_formats() -> tuple[str, ...]:
    """The T5Gemma storages the planner tries, best first (the registry's and the 9B encoder's: computed once)."""
    return ranked_formats(lambda name: est.text_encoder_storage(name).total)


def _release_dtype(role: str) -> torch.dtype:
    """The dtype the released files of a role hold the weights in (what loading converts from)."""
    return STORAGES[MODEL_FILES[role].release_storage].dtype


@dataclass(frozen=True)
class StageFit:
    """One stage of a run under the chosen settings."""

    name: str                      # "text encode" | "base DiT" | "SR DiT" | "decode"
    settings: str                  # what to use, in words
    vram_bytes: int                # device peak of the stage
    ram_bytes: int                 # host RAM the run holds during the stage (besides the process)
    fits: bool = True
    note: str = ""                 # e.g. bytes streamed from RAM per step
    kept_bytes: int = 0            # part of ram_bytes that is the text encoder kept in RAM after encoding


@dataclass(frozen=True)
class FitPlan:
    """What :func:`plan_fit` chose; ``format()`` is the table ``python -m magihuman plan`` prints."""

    preset: str
    vram_gib: float
    ram_gib: Optional[float]
    width: int
    height: int
    seconds: float
    sr_width: Optional[int]
    sr_height: Optional[int]
    fits: bool
    stages: tuple[StageFit, ...]
    dit_formats: tuple[Optional[str], ...]           # per DiT stage (base, SR)
    dit_blocks_on_device: tuple[Optional[int], ...]  # per DiT stage: None = all layers on the GPU
    num_layers: int
    text_encoder_format: Optional[str]
    text_encoder_device: str                         # "GPU" | "CPU"
    text_encoder_kept: bool                          # offloaded to RAM after encoding (else freed)
    frames_to_ram: bool                              # decode with offload_frames
    problem: str = ""                                # why nothing fits, and what would
    vram_budget: int = 0
    ram_budget: Optional[int] = None
    estimate: Optional[est.Plan] = field(default=None, repr=False, compare=False)

    @property
    def peak_vram_bytes(self) -> int:
        return max(s.vram_bytes for s in self.stages)

    @property
    def peak_ram_bytes(self) -> int:
        return max(s.ram_bytes for s in self.stages)

    @property
    def least_ram_bytes(self) -> int:
        """Peak host RAM when the text encoder is freed after encoding (the least this plan needs)."""
        return max(s.ram_bytes - s.kept_bytes for s in self.stages)

    def format(self) -> str:
        size = f"{self.width}x{self.height}" + (f" -> {self.sr_width}x{self.sr_height}" if self.sr_width else "")
        ram = (f"RAM {self.ram_gib:g} GiB ({_gib(self.ram_budget)} usable)" if self.ram_gib is not None
               else "RAM not limited (--ram GB to limit it)")
        rows = [f"MagiHuman fit plan: {self.preset}, {size}, {self.seconds:g} s on {self.vram_gib:g} GiB VRAM "
                f"({_gib(self.vram_budget)} usable), {ram}"]
        width = max(len(s.settings) for s in self.stages)
        rows.append(f"{'stage':<13}{'settings':<{width + 2}}{'VRAM':>8}{'RAM':>8}")
        for s in self.stages:
            flag = "" if s.fits else "  <- does not fit"
            rows.append(f"{s.name:<13}{s.settings:<{width + 2}}{_gib(s.vram_bytes):>8}{_gib(s.ram_bytes):>8}{flag}")
            if s.note:
                rows.append(f"{'':<13}  {s.note}")
        rows.append(f"{'peak':<13}{'':<{width + 2}}{_gib(self.peak_vram_bytes):>8}{_gib(self.peak_ram_bytes):>8}")
        if not self.fits:
            rows.append(f"NOTHING FITS: {self.problem}")
            return "\n".join(rows)
        rows += self._how()
        return "\n".join(rows)

    __str__ = format

    def _how(self) -> list[str]:
        """How to get these settings: the files to convert, the loader / CLI options."""
        p = PRESETS.get(self.preset)
        lines = []
        roles = [p.dit, p.sr] if p is not None else ["dit", "sr"]
        for i, (role, fmt, blocks) in enumerate(zip(roles, self.dit_formats, self.dit_blocks_on_device)):
            flag = "--sr-dtype" if i else "--dtype"
            if fmt in STORAGES and STORAGES[fmt].kind == GGUF:
                release = MODEL_FILES[role].official if role in MODEL_FILES else role  # the name --models finds
                name = f"magihuman_{release}_{fmt}.gguf"
                lines.append(f"  {role} DiT {fmt}: python -m magihuman convert <{release} folder> {name} --quant "
                             f"{fmt} (DiT loader: the .gguf, weight_dtype auto; CLI {'--sr-dit' if i else '--dit'} "
                             f"{name}), or quantised while loading: weight_dtype {fmt} (CLI {flag} {fmt})")
            elif fmt == "fp8":
                lines.append(f"  {role} DiT fp8: weight_dtype fp8 in the DiT loader (CLI {flag} fp8), quantised while "
                             "loading")
            if blocks is not None:
                lines.append(f"  {role} DiT: {blocks}/{self.num_layers} layers on the GPU (ComfyUI loads it "
                             f"partially by itself; CLI {'--sr-blocks-on-device' if i else '--blocks-on-device'} "
                             f"{blocks})")
        if self.text_encoder_format in STORAGES and STORAGES[self.text_encoder_format].kind == GGUF:
            name = f"t5gemma_{self.text_encoder_format}.gguf"
            lines.append(f"  text encoder {self.text_encoder_format}: python -m magihuman convert <t5gemma-9b-9b-ul2 "
                         f"folder> {name} --quant {self.text_encoder_format} (T5Gemma loader: the .gguf; CLI "
                         f"--text-encoder {name})")
        if self.text_encoder_device == "CPU":
            lines.append("  text encoder on the CPU: ComfyUI does so in --lowvram mode (or set its text encoder "
                         "device to cpu)")
        if self.frames_to_ram:
            lines.append("  decode: turn on offload_frames in MagiHuman Turbo VAE Decode")
        return (["how:"] + lines) if lines else []

    def cell(self) -> str:
        """The README fit table's cell: DiT weights (``N/40``: layers on the GPU, the rest streamed from RAM; SR
        stage after ``→`` when it differs), then peak VRAM / the least host RAM."""
        if not self.fits:
            return "—"
        parts = [f"{'SR ' if i else ''}{fmt}" + ("" if blocks is None else f" {blocks}/{self.num_layers}")
                 for i, (fmt, blocks) in enumerate(zip(self.dit_formats, self.dit_blocks_on_device))]
        text = " → ".join(parts) if len(set(zip(self.dit_formats, self.dit_blocks_on_device))) > 1 else parts[0]
        if self.frames_to_ram:
            text += ", frames to RAM"
        return f"{text} ({_gib(self.peak_vram_bytes)} / {_gib(self.least_ram_bytes)})"

    def text_encoder_cell(self) -> str:
        if self.text_encoder_format is None:
            return "—"
        where = "" if self.text_encoder_device == "GPU" else " on CPU"
        return f"{self.text_encoder_format}{where}"


def _gib(n: Optional[int]) -> str:
    if n is None:
        return "-"
    return f"{n / GIB:.1f}G" if n >= GIB // 10 else f"{n / 2 ** 20:.0f}M"


# ============================================================================ choosing


def _dit_choice(candidates: dict[str, est.StageEstimate], config: DiTConfig, source_dtype: torch.dtype, budget: int,
                ram_budget: Optional[int]):
    """(format, blocks_on_device or None) of the first candidate that fits, else None. Offload: the most layers
    on the device whose peak fits (at least :data:`MIN_BLOCKS_ON_DEVICE`). The whole DiT must fit the RAM budget
    (it is loaded into RAM first)."""
    def ram_ok(fmt: str) -> bool:
        need = est.dit_weight_storage(config, fmt).total + est.dit_load_working_bytes(config, fmt, source_dtype)
        return ram_budget is None or need <= ram_budget

    for fmt in candidates:
        if ram_ok(fmt) and candidates[fmt].peak_bytes <= budget:
            return fmt, None
    for fmt in candidates:
        if not ram_ok(fmt):
            continue
        st = candidates[fmt]
        storage = est.dit_weight_storage(config, fmt)
        rest = st.activation_bytes + st.latent_bytes
        for n in range(st.num_layers - 1, MIN_BLOCKS_ON_DEVICE - 1, -1):
            if est.offload_weight_bytes(storage, n)["device"] + rest <= budget:
                return fmt, n
    return None


def _text_encoder_choice(tokens: int, budget: int, ram_budget: Optional[int]):
    """(format, "GPU" | "CPU", bytes while encoding) of the first text-encoder setting that fits, else None. On the
    GPU too the encoder must fit the RAM budget (it is loaded into RAM first)."""
    activations = est.text_encode_activation_bytes(tokens)
    storages = {fmt: est.text_encoder_storage(fmt) for fmt in text_encoder_formats()}

    def need(fmt: str, device: str) -> int:
        return storages[fmt].total + activations + est.dequant_working_bytes(storages[fmt], device=device)

    for fmt in storages:
        gpu = need(fmt, "cuda")
        if gpu <= budget and (ram_budget is None or storages[fmt].total <= ram_budget):
            return fmt, "GPU", gpu
    for fmt in storages:
        cpu = need(fmt, "cpu")
        if ram_budget is None or cpu <= ram_budget:
            return fmt, "CPU", cpu
    return None


def plan_fit(preset: str, vram_gib: float, ram_gib: Optional[float] = None, *, seconds: Optional[float] = None,
             width: Optional[int] = None, height: Optional[int] = None, reserve_gib: float = 1.0,
             ram_reserve_gib: float = 3.0, prompt_tokens: int = est.DEFAULT_PROMPT_TOKENS,
             suggest: bool = True) -> FitPlan:
    """The settings under which ``preset`` fits ``vram_gib`` GiB of GPU memory (and ``ram_gib`` of host RAM, when
    given), stage by stage, in the order of the module docstring; ``fits`` is False with ``problem`` saying which
    stage needs what (and, with ``suggest``, the longest clip that would fit)."""
    p = get_preset(preset)
    if p.tiny:
        raise ValueError(f"preset {preset!r} is a tiny CPU test preset; plan a real one: "
                         f"{', '.join(n for n, q in PRESETS.items() if not q.tiny)}")
    for name, v in (("vram", vram_gib), ("ram", ram_gib)):
        if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"--{name} must be a positive number of GB, got {v!r}")
    budget = int((vram_gib - reserve_gib) * GIB)
    ram_budget = None if ram_gib is None else int((ram_gib - ram_reserve_gib) * GIB)
    if budget <= 0:
        raise ValueError(f"--vram {vram_gib:g}: {reserve_gib:g} GiB is kept for the CUDA context; give more")
    request = dict(width=width, height=height, seconds=seconds, prompt_tokens=prompt_tokens)
    formats = dit_formats()
    priced = {fmt: est.estimate(p.name, weight_dtype=fmt, **request) for fmt in formats}
    n_stages = len(priced[formats[0]].stages)

    roles = (p.dit, p.sr)[:n_stages]
    configs = [DiTConfig.preset(role) for role in roles]
    choices = [_dit_choice({f: priced[f].stages[i] for f in formats}, configs[i], _release_dtype(roles[i]),
                           budget, ram_budget) for i in range(n_stages)]
    tokens = max(prompt_tokens, est._default_negative_tokens()) if (p.cfg or p.sr_cfg) else prompt_tokens
    te = _text_encoder_choice(tokens, budget, ram_budget)
    ok = all(c is not None for c in choices)
    # the plan as priced: unfitting stages shown in their most compact setting
    shown = [c if c is not None else (formats[-1], MIN_BLOCKS_ON_DEVICE) for c in choices]
    final = est.estimate(p.name, weight_dtype=shown[0][0], blocks_on_device=shown[0][1],
                         sr_weight_dtype=shown[-1][0], sr_blocks_on_device=shown[-1][1],
                         text_encoder_format=te[0] if te else text_encoder_formats()[-1], **request)

    # decode: frames on the GPU, else to RAM as they are made
    frames_to_ram = final.decode_peak_bytes > budget
    decode_vram = final.decode_peak_bytes - (final.decoded_video_bytes if frames_to_ram else 0)
    decode_fits = decode_vram <= budget

    # host RAM per stage: each model is loaded into RAM first (ComfyUI builds it on its offload device, the CLI
    # too when it streams layers), streamed layers stay there; the clip ends in RAM (the MP4 is written from
    # there); the text encoder is kept in RAM after encoding when every later stage leaves room for it
    dit_ram = [st.weight_bytes + est.dit_load_working_bytes(cfg, st.weight_format, _release_dtype(st.model))
               for st, cfg in zip(final.stages, configs)]
    decode_ram = final.decoder_weight_bytes + final.decoded_video_bytes
    te_bytes = final.text_encoder_bytes
    te_vram = te[2] if te and te[1] == "GPU" else 0
    te_ram = te_bytes if te and te[1] == "GPU" else (te[2] if te else 0)
    later = max(dit_ram + [decode_ram])
    keep = te is not None and (ram_budget is None or later + te_bytes <= ram_budget)
    kept = te_bytes if keep else 0

    stages = []
    if te is None:
        stages.append(StageFit("text encode", f"T5Gemma {text_encoder_formats()[-1]} (no setting fits)",
                               final.text_encode_peak_bytes, final.text_encode_peak_bytes, fits=False))
    else:
        after = "freed after" if not keep else ("offloaded to RAM after" if te[1] == "GPU" else "kept in RAM after")
        settings = f"T5Gemma {te[0]} on the {te[1]}, {after}"
        stages.append(StageFit("text encode", settings, te_vram, te_ram,
                               fits=ram_budget is None or te_ram <= ram_budget))
    for i, (st, choice) in enumerate(zip(final.stages, choices)):
        label = "base DiT" if i == 0 else "SR DiT"
        fmt, blocks = shown[i]
        where = (f"all {st.num_layers} layers on the GPU" if blocks is None
                 else f"{blocks}/{st.num_layers} layers on the GPU")
        note = ""
        if blocks is not None:
            note = f"streams {_gib(st.streamed_bytes_per_step)} from RAM per step"
        ram = dit_ram[i] + kept
        stages.append(StageFit(label, f"{st.model}, {fmt} weights, {where}", st.peak_bytes, ram,
                               fits=choice is not None and (ram_budget is None or ram <= ram_budget), note=note,
                               kept_bytes=kept))
    frames = "frames to RAM (offload_frames)" if frames_to_ram else "frames on the GPU"
    stages.append(StageFit("decode", f"Turbo VAE, 7-frame chunks, {frames}", decode_vram, decode_ram + kept,
                           fits=decode_fits and (ram_budget is None or decode_ram + kept <= ram_budget),
                           kept_bytes=kept))
    fits = ok and te is not None and all(s.fits for s in stages)

    plan = FitPlan(preset=p.name, vram_gib=vram_gib, ram_gib=ram_gib, width=final.width, height=final.height,
                   seconds=final.seconds, sr_width=final.sr_width, sr_height=final.sr_height, fits=fits,
                   stages=tuple(stages), dit_formats=tuple(c[0] if c else None for c in choices),
                   dit_blocks_on_device=tuple(c[1] if c else None for c in choices),
                   num_layers=final.stages[0].num_layers, text_encoder_format=te[0] if te else None,
                   text_encoder_device=te[1] if te else "GPU", text_encoder_kept=keep, frames_to_ram=frames_to_ram,
                   vram_budget=budget, ram_budget=ram_budget, estimate=final)
    if fits:
        return plan
    problem = _problem(plan, budget, ram_budget)
    if suggest:
        problem += _shorter_clip(p.name, vram_gib, ram_gib, final.seconds, width=width, height=height,
                                 reserve_gib=reserve_gib, ram_reserve_gib=ram_reserve_gib, prompt_tokens=prompt_tokens)
    return dataclasses.replace(plan, problem=problem)


def _problem(plan: FitPlan, budget: int, ram_budget: Optional[int]) -> str:
    """Which stages do not fit and what they need at least."""
    out = []
    for s in plan.stages:
        if s.fits:
            continue
        if s.vram_bytes > budget:
            least = {"text encode": f"even {text_encoder_formats()[-1]}",
                     "decode": "even with the frames sent to RAM"}.get(
                s.name, f"even {dit_formats()[-1]} weights with {MIN_BLOCKS_ON_DEVICE} layer on the GPU, the rest "
                        "streamed from RAM")
            out.append(f"{s.name} needs {_gib(s.vram_bytes)} of VRAM {least} ({_gib(budget)} usable)")
        else:
            out.append(f"{s.name} needs {_gib(s.ram_bytes)} of host RAM ({_gib(ram_budget)} usable)")
    return "; ".join(out) + "."


def _shorter_clip(preset: str, vram_gib, ram_gib, seconds: float, **kw) -> str:
    """`` A x s clip fits.`` for the longest shorter clip that fits (whole seconds, then 0.5 s), else advice."""
    for x in est.shorter_seconds(seconds):
        if plan_fit(preset, vram_gib, ram_gib, seconds=x, suggest=False, **kw).fits:
            w = est.window_seconds_for(x)
            windows = f", or the whole {seconds:g} s in windows of {w:g} s (--window-seconds {w:g})" if w else ""
            return f" A {x:g} s clip fits (--seconds {x:g}){windows}."
    return " No shorter clip fits either: use a larger GPU (or more RAM), or a smaller size (--width/--height)."


# ============================================================================ README table


def fit_table_markdown(vram_sizes: Sequence[float] = README_VRAM_GIB, presets: Optional[Sequence[str]] = None) -> str:
    """The README's "What fits your GPU" table: one row per VRAM size, one column per preset (default length and
    size, host RAM not limited), each cell the DiT weights chosen (:meth:`FitPlan.cell`), peak VRAM and the least
    host RAM."""
    names = list(presets or [n for n, p in PRESETS.items() if not p.tiny])
    head = "| VRAM | text encoder | " + " | ".join(f"`{n}`" for n in names) + " |"
    rows = [head, "|" + "---|" * (len(names) + 2)]
    for v in vram_sizes:
        plans = [plan_fit(n, v, suggest=False) for n in names]
        te = {p.text_encoder_cell() for p in plans}
        te_cell = te.pop() if len(te) == 1 else " / ".join(p.text_encoder_cell() for p in plans)
        rows.append(f"| {v:g} GB | {te_cell} | " + " | ".join(p.cell() for p in plans) + " |")
    return "\n".join(rows)


# ============================================================================ command line


def add_parser(sub) -> argparse.ArgumentParser:
    """The ``plan`` subcommand (``python -m magihuman plan ...``) on the CLI's subparsers."""
    pl = sub.add_parser("plan", help="the settings that fit a GPU (and RAM): DiT weights format, layers on the GPU, "
                        "text encoder format and where it runs, decode; with the peak VRAM and RAM per stage")
    pl.add_argument("--preset", required=True, choices=[n for n, p in PRESETS.items() if not p.tiny])
    pl.add_argument("--vram", type=float, required=True, metavar="GB", help="GPU memory (GiB, as the card reports)")
    pl.add_argument("--ram", type=float, default=None, metavar="GB", help="host RAM (default: not limited)")
    pl.add_argument("--seconds", type=float, default=None, help="clip length (default: the preset's)")
    pl.add_argument("--window-seconds", type=float, default=None, metavar="W",
                    help="a long clip made in windows of W seconds: one window is what must fit (generate "
                    "--window-seconds)")
    pl.add_argument("--width", type=int, default=None, help="base width (default: the preset's)")
    pl.add_argument("--height", type=int, default=None, help="base height (default: the preset's)")
    pl.set_defaults(func=main)
    return pl


def main(args) -> int:
    """Print the plan; exit 0 when it fits, 1 when nothing does (bad input raises ValueError: exit 2)."""
    if args.seconds is not None and not args.seconds > 0:
        raise ValueError(f"--seconds must be > 0, got {args.seconds}")
    for name in ("width", "height"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ValueError(f"--{name} must be positive, got {v}")
    seconds = args.seconds
    window = args.window_seconds
    if window is not None:  # a long video holds one window at a time: price one
        if not MIN_WINDOW_SECONDS <= window <= MAX_WINDOW_SECONDS:  # generate's limits
            raise ValueError(f"--window-seconds {window:g}: windows last {MIN_WINDOW_SECONDS:g} to "
                             f"{MAX_WINDOW_SECONDS:g} s (the model was trained on clips of a few seconds; 4-5 s as "
                             "the official examples)")
        seconds = min(window, seconds if seconds is not None else get_preset(args.preset).seconds)
        print(f"one window of {seconds:g} s (a longer clip is made window by window)", file=sys.stdout)
    plan = plan_fit(args.preset, args.vram, args.ram, seconds=seconds, width=args.width, height=args.height)
    print(plan.format(), file=sys.stdout)
    return EXIT_FITS if plan.fits else EXIT_NOTHING_FITS
