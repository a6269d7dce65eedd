"""``python -m magihuman``: generate a video with sound from the command line, or write the tiny models.

    python -m magihuman generate --preset tiny --prompt "A man smiles and says hello." --seconds 2 --output demo.mp4
    python -m magihuman generate --preset sr_540p --models ~/ComfyUI/models --prompt "..." --image ref.png --output out.mp4
    python -m magihuman tiny-models ./tiny_models
    python -m magihuman presets

Exit codes: 0 success, 2 bad usage or input (one-line message, no traceback; ``--debug`` shows it),
1 unexpected failure, 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import sys
import time
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from . import media
from . import pipeline as P
from .checkpoints import convert_dit, load_dit
from .compile import compile_dit_blocks
from . import estimate as est
from .loaders import convert_turbo_checkpoint, load_audio_vae, load_turbo_vae, load_wan_vae
from .models.text_encoder import T5GemmaEncoder
from .offload import enable_block_offload
from .presets import PRESETS, describe_files, get_preset, required_roles, resolve_model_files
from .tiny import describe_tiny_files, ensure_tiny_models, write_tiny_models

log = logging.getLogger("magihuman.cli")

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp8": torch.float8_e4m3fn}
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(ValueError):
    """Bad command-line input (exit code 2)."""


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, exit 2
        self.print_usage(sys.stderr)
        raise UsageError(message)


# ============================================================================ timing


class StageTimer:
    """Wall time per named stage (summed if a name repeats), printed as a table at the end."""

    def __init__(self):
        self.times: dict[str, float] = {}
        self.start = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0

    def table(self) -> str:
        total = time.perf_counter() - self.start
        width = max([len(k) for k in self.times] + [len("total")])
        lines = [f"{'stage'.ljust(width)}  {'seconds':>8}  {'share':>6}"]
        for name, sec in self.times.items():
            lines.append(f"{name.ljust(width)}  {sec:8.2f}  {100 * sec / max(total, 1e-9):5.1f}%")
        lines.append(f"{'total'.ljust(width)}  {total:8.2f}  100.0%")
        return "\n".join(lines)


def _progress(desc: str, total: int, enabled: bool):
    return tqdm(total=total, desc=desc, unit="step", disable=not enabled, leave=True, file=sys.stderr)


def _free() -> None:
    """Return the memory of models the caller has just dropped (``del``) before the next one loads."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ============================================================================ generate


def _check_generate_args(args, preset) -> None:
    if not args.prompt or not args.prompt.strip():
        raise UsageError("--prompt is empty: describe the video (and what is said)")
    if args.seconds is not None and not args.seconds > 0:
        raise UsageError(f"--seconds must be > 0, got {args.seconds}")
    for name in ("width", "height", "sr_width", "sr_height", "steps", "sr_steps", "blocks_on_device"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {v}")
    if (args.sr_width or args.sr_height) and not preset.sr:
        raise UsageError(f"preset '{preset.name}' has no super-resolution stage; --sr-width/--sr-height need a preset "
                         "with SR (sr_540p, sr_1080p, distill_540p, tiny_sr)")
    for name in ("image", "audio"):
        p = getattr(args, name)
        if p is not None and not Path(p).is_file():
            raise UsageError(f"--{name} {p}: no such file")
    out = Path(args.output)
    if out.suffix.lower() != ".mp4":
        raise UsageError(f"--output must end in .mp4, got {args.output}")
    if out.exists() and out.is_dir():
        raise UsageError(f"--output {out} is a folder")


def _device(name: Optional[str]) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise UsageError(f"--device {name!r}: {e}") from None


def _load_dit(path, dtype, device, show, args):
    """Load a DiT and apply the speed options: compute dtype, attention kernel and local attention mode, block
    offload, compile."""
    offload = getattr(args, "blocks_on_device", None)
    model = load_dit(path, dtype=dtype, device="cpu" if offload else device, show_progress=show)
    model.set_compute_dtype(getattr(args, "compute_dtype", "auto"), device=device)
    model.set_attention_backend(getattr(args, "attention", "sdpa"))
    model.set_local_attention(getattr(args, "local_attention", "window"))
    if offload:
        enable_block_offload(model, device, offload)
    if getattr(args, "compile", False):
        compile_dit_blocks(model)
    return model


def _plan_and_check(args, preset, device, dtype, width, height, seconds) -> None:
    """Print the FLOP/memory estimate of the run and refuse it, before loading anything, if it cannot fit."""
    sr_w = (args.sr_width or preset.sr_width) if preset.sr else None
    sr_h = (args.sr_height or preset.sr_height) if preset.sr else None
    plan = est.estimate(preset, width, height, seconds, sr_w, sr_h, weight_dtype=dtype,
                    steps=args.steps or None, sr_steps=args.sr_steps or None)
    if not args.quiet:
        print(plan.format(), file=sys.stderr)
    host = est.device_memory("cpu")
    est.check_fits(plan, est.device_memory(device), host_memory_bytes=host if device.type != "cpu" else None)


def generate(args) -> int:
    """Run one generation; torch's thread count is set for the run and restored (the attention kernel is a
    property of the loaded DiT, nothing process-wide)."""
    preset = get_preset(args.preset)
    threads = args.threads if args.threads is not None else (1 if preset.tiny else None)
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    _check_generate_args(args, preset)
    saved_threads = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        return _generate_run(args, preset)
    finally:
        torch.set_num_threads(saved_threads)


def _generate_run(args, preset) -> int:
    timer = StageTimer()
    device = _device(args.device)
    dtype = DTYPES[args.dtype or preset.dtype]
    vae_dtype = torch.float32 if (preset.tiny or device.type == "cpu") else torch.bfloat16
    decoder = args.decoder or preset.decoder
    show = not args.quiet
    seconds = args.seconds if args.seconds is not None else preset.seconds
    width, height = args.width or preset.width, args.height or preset.height

    with timer("find/write models"):
        if preset.tiny:
            models_dir = ensure_tiny_models(args.models)
        else:
            if not args.models:
                raise UsageError(f"preset '{preset.name}' needs --models: a ComfyUI models folder or the official "
                                 "checkpoints folder (see `python -m magihuman presets`)")
            models_dir = Path(args.models)
        files = resolve_model_files(preset, models_dir,
                                    required_roles(preset, image=args.image is not None, decoder=decoder))

    # ---- inputs that need no model: fail early on bad files
    image = ref_wave = None
    if args.image:
        with timer("read image"):
            image = torch.from_numpy(media.load_image(args.image))
    if args.audio:
        with timer("read audio"):
            ref_wave, ref_sr = media.load_audio(args.audio)

    with timer("estimate"):  # before any model is loaded or latent allocated
        _plan_and_check(args, preset, device, dtype, width, height, seconds)

    latent = P.empty_latents(width, height, seconds, device="cpu")
    if latent.info["snapped"]:
        print(f"size {width}x{height} snapped down to {latent.pixel_size[0]}x{latent.pixel_size[1]} "
              "(multiples of 32)", file=sys.stderr)

    # ---- text
    negative = args.negative_prompt if args.negative_prompt is not None else P.DEFAULT_NEGATIVE_PROMPT
    needs_negative = preset.cfg or preset.sr_cfg
    with timer("load text encoder"):
        text_encoder = T5GemmaEncoder.from_pretrained(files["text_encoder"], dtype=vae_dtype if preset.tiny
                                                      else torch.bfloat16, device=device)
    with timer("text encode"):
        cond = P.encode_prompt(text_encoder, args.prompt, negative if needs_negative else None)
    del text_encoder
    _free()

    # ---- conditioning: image (TI2V), reference audio (A2V)
    video_vae = None
    if image is not None or decoder == "wan":
        with timer("load video VAE"):
            video_vae = load_wan_vae(files["video_vae"], dtype=vae_dtype, device=device)
    if image is not None:
        with timer("image encode"):
            latent = P.encode_image(video_vae, image, latent)
    with timer("load audio VAE"):
        audio_vae = load_audio_vae(files["audio_vae"], dtype=torch.float32, device=device)
    if ref_wave is not None:
        with timer("audio encode"):
            latent = P.encode_reference_audio(audio_vae, ref_wave, ref_sr, latent, seconds=args.seconds)

    # ---- base stage
    generator = torch.Generator(device=device).manual_seed(int(args.seed))  # one stream, as the official run
    with timer("load DiT"):
        dit = _load_dit(files[preset.dit], dtype, device, show and not preset.tiny, args)
    steps = args.steps or preset.steps
    with timer("DiT"), _progress(f"DiT {preset.dit}", steps, show) as bar:
        latent = P.denoise(dit, latent, cond, sampler=preset.sampler, steps=steps, cfg=preset.cfg,
                           generator=generator, callback=lambda i, n, x0: bar.update(1))
    del dit
    _free()

    # ---- super-resolution
    if preset.sr:
        with timer("load SR DiT"):
            sr_dit = _load_dit(files[preset.sr], dtype, device, show and not preset.tiny, args)
        sr_steps = args.sr_steps or preset.sr_steps
        with timer("SR"), _progress(f"DiT {preset.sr}", sr_steps, show) as bar:
            latent = P.super_resolve(sr_dit, latent, cond, width=args.sr_width or preset.sr_width,
                                     height=args.sr_height or preset.sr_height, steps=sr_steps, cfg=preset.sr_cfg,
                                     generator=generator, video_vae=video_vae, image=image,
                                     callback=lambda i, n, x0: bar.update(1))
        del sr_dit
        _free()

    # ---- decode
    if decoder == "turbo":
        with timer("load Turbo VAE"):
            video_decoder = load_turbo_vae(None, files["turbo_vae"], dtype=vae_dtype, device=device)
    else:
        video_decoder = video_vae
    with timer("decode video"):
        frames = P.decode_video(video_decoder, latent)
    del video_decoder, video_vae
    _free()
    with timer("decode audio"):
        wave, sample_rate = P.decode_audio(audio_vae, latent)
    with timer("mux"):
        out = media.write_mp4(args.output, frames, fps=P.FPS, audio=wave, sample_rate=sample_rate)

    w, h = latent.pixel_size
    print(f"wrote {out}: {frames.shape[0]} frames {w}x{h} @ {P.FPS} fps ({frames.shape[0] / P.FPS:.2f} s), "
          f"audio {wave.shape[-1] / sample_rate:.2f} s", file=sys.stderr)
    print(timer.table(), file=sys.stderr)
    return EXIT_OK


# ============================================================================ other commands


def convert(args) -> int:
    """One-time conversions; both stream and never unpickle unsafely."""
    src, dst = Path(args.src), Path(args.dst)
    if dst.suffix != ".safetensors":
        raise UsageError(f"the output must be a .safetensors file, got {dst}")
    if src.suffix in (".ckpt", ".pt", ".pth"):
        convert_turbo_checkpoint(src, dst)
    else:
        convert_dit(src, dst, dtype=DTYPES[args.dtype])
    print(f"wrote {dst}", file=sys.stderr)
    return EXIT_OK


def tiny_models(args) -> int:
    folder = Path(args.dir)
    write_tiny_models(folder, force=args.force)
    print(f"tiny MagiHuman models in {folder}:")
    print(describe_tiny_files(folder))
    return EXIT_OK


def presets(args) -> int:
    for p in PRESETS.values():
        sr = f" + {p.sr} {p.sr_width}x{p.sr_height} ({p.sr_steps} steps)" if p.sr else ""
        print(f"{p.name:13s} {p.dit} {p.sampler} {p.steps} steps{' CFG' if p.cfg else ''} "
              f"{p.width}x{p.height}{sr} — {p.description}")
    print()
    print("model files (first ComfyUI name shown; see magihuman/presets.py for alternatives):")
    print(describe_files())
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog="python -m magihuman", description="daVinci-MagiHuman audio+video generation")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for all errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_ArgumentParser)

    g = sub.add_parser("generate", help="generate an MP4 (video + audio) from a prompt")
    g.add_argument("--preset", default="distill_256p", choices=list(PRESETS), help="generation recipe")
    g.add_argument("--prompt", required=True, help="what happens and what is said")
    g.add_argument("--negative-prompt", default=None, help="negative prompt for CFG (default: the official one)")
    g.add_argument("--image", default=None, help="reference image (TI2V: becomes the first frame)")
    g.add_argument("--audio", default=None, help="reference audio (A2V: the soundtrack; sets the length)")
    g.add_argument("--seconds", type=float, default=None, help="clip length (default: the preset's)")
    g.add_argument("--width", type=int, default=None, help="base width (snapped down to a multiple of 32)")
    g.add_argument("--height", type=int, default=None, help="base height (snapped down to a multiple of 32)")
    g.add_argument("--sr-width", type=int, default=None, help="super-resolution width (SR presets)")
    g.add_argument("--sr-height", type=int, default=None, help="super-resolution height (SR presets)")
    g.add_argument("--steps", type=int, default=None, help="base sampler steps (default: the preset's)")
    g.add_argument("--sr-steps", type=int, default=None, help="SR sampler steps (default 5)")
    g.add_argument("--seed", type=int, default=42, help="random seed (official default 42)")
    g.add_argument("--models", default=None, help="models folder: ComfyUI layout (diffusion_models/, text_encoders/, "
                   "vae/) or the official checkpoints folder; tiny presets: where to keep the tiny models")
    g.add_argument("--dtype", choices=list(DTYPES), default=None,
                   help="DiT block-weight storage dtype (default: the preset's); fp8 = float8_e4m3fn with a "
                        "per-tensor scale (half the memory of bf16)")
    g.add_argument("--compute-dtype", choices=["auto", "bf16", "fp16", "fp32"], default="auto",
                   help="DiT matmul dtype: bf16 = official numerics; auto = bf16 on GPUs (fp16 without bf16), the "
                   "faster of bf16/fp32 on CPUs (measured)")
    g.add_argument("--attention", choices=["sdpa", "flash", "sage"], default="sdpa",
                   help="attention kernel: sdpa (default), flash (FlashAttention 3/2) or sage (SageAttention), CUDA")
    g.add_argument("--local-attention", choices=["window", "mask"], default="window",
                   help="1080p SR local layers: per-frame key windows (default, no LxL mask) or one dense mask")
    g.add_argument("--compile", action="store_true", help="torch.compile the transformer layers (regional)")
    g.add_argument("--blocks-on-device", type=int, default=None, metavar="N",
                   help="keep only N transformer layers on the GPU and stream the others from RAM (GPUs smaller "
                   "than the model)")
    g.add_argument("--decoder", choices=["turbo", "wan"], default=None, help="video decoder (default turbo)")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    g.add_argument("--output", required=True, help="output .mp4 path")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice; 1 for "
                   "the tiny presets, whose tensors are too small to gain from more and lose a lot on a busy CPU)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.set_defaults(func=generate)

    t = sub.add_parser("tiny-models", help="write tiny random checkpoints (ComfyUI layout) and list them")
    t.add_argument("dir", help="models folder to write into")
    t.add_argument("--force", action="store_true", help="rewrite even if present")
    t.set_defaults(func=tiny_models)

    c = sub.add_parser("convert", help="convert checkpoints: a DiT folder -> one bf16 .safetensors (streamed); "
                       "a Turbo VAE .ckpt -> .safetensors")
    c.add_argument("src", help="official DiT folder / DiT file, or a Turbo VAE checkpoint .ckpt")
    c.add_argument("dst", help="output .safetensors")
    c.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16", help="DiT output dtype")
    c.set_defaults(func=convert)

    p = sub.add_parser("presets", help="list presets and where their model files go")
    p.set_defaults(func=presets)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Run the CLI; returns the exit code (``__main__`` raises SystemExit with it)."""
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, OSError) as e:  # expected input problems: our errors are ValueError subclasses
        if debug:
            raise
        msg = str(e).strip() or type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return EXIT_USAGE
