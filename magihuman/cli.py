"""``python -m magihuman``: generate a video with sound from the command line, or write the tiny models.

    python -m magihuman generate --preset tiny --prompt "A man smiles and says hello." --seconds 2 --output demo.mp4
    python -m magihuman generate --preset sr_540p --models ~/ComfyUI/models --prompt "..." --image ref.png --output out.mp4
    python -m magihuman tiny-models ./tiny_models
    python -m magihuman presets
    python -m magihuman prompt build --body "..." --dialogue "young man in grey hoodie | English | Hi!"
    python -m magihuman prompt check answer.txt      # or - for stdin
    python -m magihuman prompt llm "a chef welcomes the guests"

Exit codes: 0 success, 2 bad usage or input (one-line message, no traceback; ``--debug`` shows it),
1 unexpected failure (``prompt check``: the prompt does not follow the format), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import sys
import time
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from . import media
from . import pipeline as P
from . import prompts
from .checkpoints import GGUF_QUANTS, convert_dit, load_dit
from .compile import compile_dit_blocks
from . import estimate as est
from . import plan as fit_plan
from .lora import apply_lora
from .lora_extract import extract_lora
from .loaders import convert_turbo_checkpoint, load_audio_vae, load_turbo_vae, load_wan_vae, save_encoder_file
from .loaders.text_encoder import open_text_encoder
from .models.text_encoder import T5GemmaEncoder
from .offload import enable_block_offload
from .models.dit_config import DiTConfig
from .parallel import check_world_size, enable_sequence_parallel
from .parallel import launch as sp_launch
from .parallel.cost import per_rank_plan
from .presets import PRESETS, describe_files, get_preset, required_roles, resolve_model_files
from .quant.gguf import BLOCK_SIZES, GGMLType
from .tiny import describe_tiny_files, ensure_tiny_models, write_tiny_gguf, write_tiny_models
from .weights.gguf_file import open_gguf

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


def _lora_arg(text: str) -> tuple[Path, float]:
    """``PATH[:STRENGTH]`` (strength 1 when absent; a path may itself contain ':')."""
    path, sep, strength = text.rpartition(":")
    if sep:
        try:
            return Path(path), float(strength)
        except ValueError:
            pass
    return Path(text), 1.0


def _load_dit(path, dtype, device, show, args, loras=()):
    """Load a DiT and apply the speed options (compute dtype, attention kernel and local attention mode, block
    offload, compile) and the LoRAs (``PATH[:STRENGTH]`` strings)."""
    offload = getattr(args, "blocks_on_device", None)
    model = load_dit(path, dtype=dtype, device="cpu" if offload else device, show_progress=show)
    for text in loras or ():
        lora_path, strength = _lora_arg(text)
        if not lora_path.is_file():
            raise UsageError(f"--lora {text}: no such file")
        apply_lora(model, lora_path, strength)
    model.set_compute_dtype(getattr(args, "compute_dtype", "auto"), device=device)
    model.set_attention_backend(getattr(args, "attention", "sdpa"))
    model.set_fp8_compute(getattr(args, "fp8_compute", "off"), device=device)
    model.set_local_attention(getattr(args, "local_attention", "window"))
    if offload:
        enable_block_offload(model, device, offload)
    if getattr(args, "compile", False):
        compile_dit_blocks(model)
    enable_sequence_parallel(model)  # under torchrun: the sequence split over the ranks (nothing otherwise)
    return model


def _gguf_format(path) -> Optional[str]:
    """The storage a loader keeps for a ``.gguf`` file, as the estimator prices it: the GGML type holding most of
    its quantised bytes (``bf16`` when nothing is quantised; a type the estimator has no table for, e.g. another
    tool's Q6_K, is priced as the smallest one it knows with at least as many bits per weight); None for other
    files. Reads the header only."""
    if path is None or not str(path).lower().endswith(".gguf") or not Path(path).is_file():
        return None
    by: dict[str, int] = {}
    for e in open_gguf(Path(path))[0].values():
        if e.quantized:
            name = GGMLType(e.qtype).name
            by[name] = by.get(name, 0) + e.nbytes
    if not by:
        return "bf16"
    main = max(by, key=by.get)
    if main in est.GGUF_FORMATS:
        return main

    def bits(name: str) -> float:
        block, size = BLOCK_SIZES[GGMLType[name]]
        return 8.0 * size / block

    wider = [f for f in est.GGUF_FORMATS if bits(f) >= bits(main)]
    return min(wider, key=bits) if wider else "bf16"


def _plan_and_check(args, preset, device, dtype, width, height, seconds, ranks: int = 1, files=None) -> None:
    """Print the FLOP/memory estimate of the run and refuse it, before loading anything, if it cannot fit
    (``ranks``: sequence parallel, each rank holding 1/N of the DiT activations; ``files``: role -> path, so a
    GGUF file is priced in its own format; ``--blocks-on-device``: block offload)."""
    files = files or {}
    sr_w = (args.sr_width or preset.sr_width) if preset.sr else None
    sr_h = (args.sr_height or preset.sr_height) if preset.sr else None
    blocks = getattr(args, "blocks_on_device", None)
    plan = est.estimate(preset, width, height, seconds, sr_w, sr_h, weight_dtype=_gguf_format(files.get(preset.dit))
                        or dtype, sr_weight_dtype=(_gguf_format(files.get(preset.sr)) or dtype) if preset.sr else None,
                        steps=args.steps or None, sr_steps=args.sr_steps or None, blocks_on_device=blocks,
                        sr_blocks_on_device=blocks,
                        text_encoder_format=_gguf_format(files.get("text_encoder")) or "bf16")
    plan = per_rank_plan(plan, ranks)
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
    _check_long_video_args(args, preset)  # long videos (issue 22): see their block below
    _check_generate_args(args, preset)
    if args.gpus is not None and args.gpus < 1:
        raise UsageError(f"--gpus must be >= 1, got {args.gpus}")
    if args.gpus is not None and args.gpus > 1 and sp_launch.torchrun_world_size() == 1:
        return _relaunch(args, preset)
    args.prompt = _generate_prompt(args)
    saved_threads = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        return _generate_run(args, preset)
    finally:
        torch.set_num_threads(saved_threads)


def _relaunch(args, preset) -> int:
    """``--gpus N``: the same command on N local processes through torch.distributed.run (its exit code)."""
    cfg = DiTConfig.preset("tiny" if preset.tiny else preset.dit)
    try:
        check_world_size(cfg.num_heads_q, cfg.num_heads_kv, args.gpus)
    except ValueError as e:
        raise UsageError(f"--gpus {args.gpus}: {e}") from None
    if torch.cuda.is_available() and _device(args.device).type == "cuda" and args.gpus > torch.cuda.device_count():
        raise UsageError(f"--gpus {args.gpus}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    argv, skip = [], False
    for a in args.argv:
        if skip or a == "--gpus" or a.startswith("--gpus="):
            skip = a == "--gpus"
            continue
        argv.append(a)
    return sp_launch.relaunch(args.gpus, argv)


def _generate_run(args, preset) -> int:
    timer = StageTimer()
    sp = sp_launch.torchrun_context(cpu=_device(args.device).type == "cpu")  # None unless torchrun, >1 process
    if sp is not None:  # rank 0 encodes, decodes and writes; every rank runs the DiT on its share of the tokens
        args.quiet = args.quiet or not sp.lead
        if sp.lead:
            print(f"sequence parallel: {sp.describe()}; rank 0 encodes the prompt, decodes and writes", file=sys.stderr)
    device = sp.device if sp is not None else _device(args.device)
    dtype = DTYPES[args.dtype or preset.dtype]
    vae_dtype = torch.float32 if (preset.tiny or device.type == "cpu") else torch.bfloat16
    decoder = args.decoder or preset.decoder
    show = not args.quiet
    seconds = args.seconds if args.seconds is not None else preset.seconds
    width, height = args.width or preset.width, args.height or preset.height

    with timer("find/write models"):
        if preset.tiny:
            models_dir = sp_launch.lead_first(sp, lambda: ensure_tiny_models(args.models))
        else:
            if not args.models:
                raise UsageError(f"preset '{preset.name}' needs --models: a ComfyUI models folder or the official "
                                 "checkpoints folder (see `python -m magihuman presets`)")
            models_dir = Path(args.models)
        roles = required_roles(preset, image=args.image is not None, decoder=decoder)
        overrides = {}
        for flag, role, given in (("--dit", preset.dit, args.dit), ("--sr-dit", preset.sr, args.sr_dit),
                                  ("--text-encoder", "text_encoder", args.text_encoder)):
            if given and not role:
                raise UsageError(f"{flag}: preset '{preset.name}' has no such stage")
            if given and not Path(given).exists():
                raise UsageError(f"{flag} {given}: no such file or folder")
            if given:
                overrides[role] = Path(given)
        files = resolve_model_files(preset, models_dir, [r for r in roles if r not in overrides])
        files.update(overrides)

    # ---- inputs that need no model: fail early on bad files
    image = ref_wave = ref_sr = None
    if args.image:
        with timer("read image"):
            image = torch.from_numpy(media.load_image(args.image))
    if args.audio:
        with timer("read audio"):
            ref_wave, ref_sr = media.load_audio(args.audio)
    if _is_long_video(args, preset, ref_wave, ref_sr):  # windows or continuation (issue 22): their own run
        return _generate_long(args, preset, timer, models_dir, files, device, image, (ref_wave, ref_sr))

    with timer("estimate"):  # before any model is loaded or latent allocated
        _plan_and_check(args, preset, device, dtype, width, height, seconds, sp.world_size if sp else 1, files)

    latent = P.empty_latents(width, height, seconds, device="cpu")
    if latent.info["snapped"]:
        print(f"size {width}x{height} snapped down to {latent.pixel_size[0]}x{latent.pixel_size[1]} "
              "(multiples of 32)", file=sys.stderr)

    # ---- text
    lead = sp is None or sp.lead
    negative = args.negative_prompt if args.negative_prompt is not None else P.DEFAULT_NEGATIVE_PROMPT
    needs_negative = preset.cfg or preset.sr_cfg
    cond = None
    if lead:
        with timer("load text encoder"):
            text_encoder = T5GemmaEncoder.from_pretrained(files["text_encoder"], dtype=vae_dtype if preset.tiny
                                                          else torch.bfloat16, device=device)
        with timer("text encode"):
            cond = P.encode_prompt(text_encoder, args.prompt, negative if needs_negative else None,
                                   cjk_spacing=not getattr(args, "no_cjk_spacing", False))
        del text_encoder
        _free()

    # ---- conditioning: image (TI2V), reference audio (A2V)
    video_vae = audio_vae = None
    if (image is not None or decoder == "wan") and (lead or (image is not None and preset.sr)):
        with timer("load video VAE"):  # other ranks: the SR stage re-encodes the TI2V image at its size
            video_vae = load_wan_vae(files["video_vae"], dtype=vae_dtype, device=device)
    if image is not None and lead:
        with timer("image encode"):
            latent = P.encode_image(video_vae, image, latent)
    if lead:
        with timer("load audio VAE"):
            audio_vae = load_audio_vae(files["audio_vae"], dtype=torch.float32, device=device)
    if ref_wave is not None and lead:
        with timer("audio encode"):
            latent = P.encode_reference_audio(audio_vae, ref_wave, ref_sr, latent, seconds=args.seconds)
    cond, latent = sp_launch.broadcast_object((cond, latent), sp)  # rank 0's conditioning on every rank

    # ---- base stage
    generator = torch.Generator(device=device).manual_seed(int(args.seed))  # one stream, as the official run
    with timer("load DiT"):
        dit = _load_dit(files[preset.dit], dtype, device, show and not preset.tiny, args, args.lora)
    steps = args.steps or preset.steps
    with timer("DiT"), _progress(f"DiT {preset.dit}", steps, show) as bar:
        latent = P.denoise(dit, latent, cond, sampler=preset.sampler, steps=steps, cfg=preset.cfg,
                           generator=generator, callback=lambda i, n, x0: bar.update(1))
    del dit
    _free()

    # ---- super-resolution
    if preset.sr:
        with timer("load SR DiT"):
            sr_dit = _load_dit(files[preset.sr], dtype, device, show and not preset.tiny, args, args.sr_lora)
        sr_steps = args.sr_steps or preset.sr_steps
        with timer("SR"), _progress(f"DiT {preset.sr}", sr_steps, show) as bar:
            latent = P.super_resolve(sr_dit, latent, cond, width=args.sr_width or preset.sr_width,
                                     height=args.sr_height or preset.sr_height, steps=sr_steps, cfg=preset.sr_cfg,
                                     generator=generator, video_vae=video_vae, image=image,
                                     callback=lambda i, n, x0: bar.update(1))
        del sr_dit
        _free()
    if not lead:  # the other ranks' work ends with the DiT stages
        sp.close()
        return EXIT_OK

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
    if sp is not None:
        sp.close()
    return EXIT_OK


# ============================================================================ long videos (issue 22)
# generate --seconds 24 [--window-seconds 4] [--overlap-frames K] [--prompt-file FILE] [--continue-from clip.mp4]:
# the clip is made window by window with magihuman.pipeline.generate_long_video, frames written to the MP4 as
# windows finish. Single-window runs without these flags keep the one-pass path above.


def _add_long_video_args(g) -> None:
    g.add_argument("--window-seconds", type=float, default=None, metavar="W",
                   help="make the clip in windows of W seconds, each starting from the previous one's last frame "
                   f"(default: the preset's clip length; {P.MIN_WINDOW_SECONDS:g}-{P.MAX_WINDOW_SECONDS:g} s); a "
                   "clip longer than a window is always made in windows")
    g.add_argument("--overlap-frames", type=int, default=0, metavar="K",
                   help="frames each window makes again over the end of the previous one, cross-faded (default 0)")
    g.add_argument("--prompt-file", default=None, metavar="FILE",
                   help="one prompt per window, separated by lines holding only '---' (the last one carries on)")
    g.add_argument("--continue-from", default=None, metavar="CLIP",
                   help="continue this video (25 fps): its last frame starts the new part, its sound is kept; "
                   "--seconds is the length added (with --audio: the speech's length)")
    g.add_argument("--continue-output", choices=["full", "new"], default="full",
                   help="with --continue-from: write the clip followed by the new part (full, default) or the new "
                   "part alone")


def _check_long_video_args(args, preset) -> None:
    """The long-video flags, before anything is loaded (``--prompt-file`` read into ``args.prompts``)."""
    args.prompts = None
    w = args.window_seconds
    if w is not None and not P.MIN_WINDOW_SECONDS <= w <= P.MAX_WINDOW_SECONDS:
        raise UsageError(f"--window-seconds {w:g}: windows last {P.MIN_WINDOW_SECONDS:g} to {P.MAX_WINDOW_SECONDS:g} s "
                         "(the model was trained on clips of a few seconds; 4-5 s as the official examples)")
    if args.overlap_frames < 0:
        raise UsageError(f"--overlap-frames must be >= 0, got {args.overlap_frames}")
    window = P.clip_frames(w if w is not None else preset.seconds)
    if args.overlap_frames + 1 >= window:
        raise UsageError(f"--overlap-frames {args.overlap_frames} is not shorter than the window ({window} frames): "
                         f"use at most {window - 2}")
    if args.prompt_file is not None:
        if args.prompt is not None:
            raise UsageError("give --prompt or --prompt-file, not both")
        if args.dialogue or args.background_sound is not None:
            raise UsageError("--dialogue/--background-sound build one prompt; with --prompt-file write each window's "
                             "prompt in full")
        path = Path(args.prompt_file)
        if not path.is_file():
            raise UsageError(f"--prompt-file {path}: no such file")
        args.prompts = P.split_prompts(path.read_text(encoding="utf-8"))
        if not args.prompts:
            raise UsageError(f"--prompt-file {path} holds no prompt (prompts are separated by lines holding only "
                             "'---')")
        args.prompt = args.prompts[0]
    elif args.prompt is None:
        raise UsageError("give --prompt (or --prompt-file with one prompt per window)")
    if args.continue_from is not None:
        if not Path(args.continue_from).is_file():
            raise UsageError(f"--continue-from {args.continue_from}: no such file")
        if args.image is not None:
            raise UsageError("--image and --continue-from both set the first frame: give one")
    elif args.continue_output != "full":
        raise UsageError("--continue-output needs --continue-from")
    if _uses_windows_flags(args) and ((args.gpus or 1) > 1 or sp_launch.torchrun_world_size() > 1):
        raise UsageError("long videos run on one device for now: drop --gpus (or torchrun) with --window-seconds, "
                         "--overlap-frames, --prompt-file or --continue-from")


def _uses_windows_flags(args) -> bool:
    return (args.window_seconds is not None or args.prompt_file is not None or args.continue_from is not None
            or args.overlap_frames > 0)


def _is_long_video(args, preset, ref_wave, ref_sr) -> bool:
    """A windowed run: a long-video flag is given, or the clip (``--seconds``, else the whole ``--audio``, else the
    preset's length) is longer than one window (the preset's length) on one device."""
    if _uses_windows_flags(args):
        return True
    if args.seconds is not None:
        total = args.seconds
    elif ref_wave is not None:
        total = ref_wave.shape[-1] / ref_sr
    else:
        total = preset.seconds
    # several GPUs (torchrun): one sequence-parallel pass, as before windows existed
    long = P.clip_frames(total) > P.clip_frames(preset.seconds) and sp_launch.torchrun_world_size() == 1
    if not long and ref_wave is not None and args.seconds is not None:
        speech = ref_wave.shape[-1] / ref_sr
        if args.seconds < speech - 1 / P.FPS:
            print(f"note: --seconds {args.seconds:g} trims the {speech:.2f} s reference audio (its first "
                  f"{args.seconds:g} s are used)", file=sys.stderr)
    return long


def _dit_swapper(device: torch.device, keep: bool):
    """``use`` hook of the long-video engine: with two DiTs (base + SR) on a GPU only the running one is there
    (``keep``: leave the models where they are, e.g. with block offload)."""
    dits: dict = {}

    def use(role, model, latent, **fit):
        if role in ("dit", "sr_dit") and device.type == "cuda" and not keep:
            dits[role] = model
            for other, m in dits.items():
                if other != role:
                    m.to("cpu")
            model.to(device)
        return model

    return use


def _read_clip(path: str, keep_original: bool):
    """The clip to continue: its frames (read as they are needed) and its sound, checked first."""
    info = media.read_mp4_info(path)
    if not info.get("frames"):
        raise UsageError(f"--continue-from {path}: the file has no video frames")
    if info.get("fps") and abs(info["fps"] - P.FPS) > 0.01:
        raise UsageError(f"--continue-from {path} is {info['fps']:g} fps; MagiHuman makes {P.FPS} fps video: convert "
                         f"it first (e.g. ffmpeg -i clip.mp4 -r {P.FPS} clip{P.FPS}.mp4)")
    sound = media.load_audio(path) if info.get("audio_codec") else None
    return P.ClipToContinue(frames=media.iter_video_frames(path), audio=sound, keep_original=keep_original)


def _generate_long(args, preset, timer: StageTimer, models_dir, files: dict, device, image, ref) -> int:
    """One long video (windows and/or continuation), written to ``--output`` as its windows finish."""
    dtype = DTYPES[args.dtype or preset.dtype]
    vae_dtype = torch.float32 if (preset.tiny or device.type == "cpu") else torch.bfloat16
    decoder = args.decoder or preset.decoder
    show = not args.quiet
    width, height = args.width or preset.width, args.height or preset.height
    window = args.window_seconds if args.window_seconds is not None else preset.seconds
    ref_wave, ref_sr = ref
    seconds = args.seconds if args.seconds is not None or ref_wave is not None else preset.seconds
    if "video_vae" not in files:  # every window after the first re-encodes a frame with the Wan2.2 VAE
        files.update(resolve_model_files(preset, models_dir, ["video_vae"]))
    clip = None
    if args.continue_from:
        with timer("read clip"):
            clip = _read_clip(args.continue_from, args.continue_output == "full")

    with timer("estimate"):  # a run holds one window at a time: price one
        _plan_and_check(args, preset, device, dtype, width, height, min(window, seconds or window), 1, files)

    prompts = args.prompts or [args.prompt]
    negative = args.negative_prompt if args.negative_prompt is not None else P.DEFAULT_NEGATIVE_PROMPT
    with timer("load text encoder"):
        text_encoder = T5GemmaEncoder.from_pretrained(files["text_encoder"], dtype=vae_dtype if preset.tiny
                                                      else torch.bfloat16, device=device)
    with timer("text encode"):
        encoded: dict = {}
        for text in prompts:
            if text not in encoded:
                encoded[text] = P.encode_prompt(text_encoder, text, negative if (preset.cfg or preset.sr_cfg) else None,
                                                cjk_spacing=not getattr(args, "no_cjk_spacing", False))
        conds = [encoded[t] for t in prompts]
    del text_encoder, encoded
    _free()

    with timer("load VAEs"):
        video_vae = load_wan_vae(files["video_vae"], dtype=vae_dtype, device=device)
        audio_vae = load_audio_vae(files["audio_vae"], dtype=torch.float32, device=device)
        video_decoder = (load_turbo_vae(None, files["turbo_vae"], dtype=vae_dtype, device=device)
                         if decoder == "turbo" else None)
    with timer("load DiT"):
        dit = _load_dit(files[preset.dit], dtype, device, show and not preset.tiny, args, args.lora)
        sr_dit = (_load_dit(files[preset.sr], dtype, device, show and not preset.tiny, args, args.sr_lora)
                  if preset.sr else None)
    models = P.LongVideoModels(dit=dit, video_vae=video_vae, audio_vae=audio_vae, video_decoder=video_decoder,
                               sr_dit=sr_dit, use=_dit_swapper(device, bool(getattr(args, "blocks_on_device", None))))
    steps = args.steps or preset.steps
    sr_steps = (args.sr_steps or preset.sr_steps) if preset.sr else 0
    sr_size = (args.sr_width or preset.sr_width, args.sr_height or preset.sr_height) if preset.sr else None

    out = Path(args.output)
    part = out.with_name(f".{out.stem}.partial{out.suffix}")  # renamed when done: the output may be the clip read
    writer = media.MP4Writer(part, fps=P.FPS, sample_rate=media.REFERENCE_SAMPLE_RATE, channels=2)
    bars = []

    def on_plan(plan):
        print(f"long video: {plan.describe()}", file=sys.stderr)
        bars.append(_progress("windows", len(plan.windows) * (steps + sr_steps), show))

    def on_step(win, stage, i, n, x0):
        bars[0].set_postfix_str(f"window {win.index + 1} {stage}", refresh=False)
        bars[0].update(1)

    try:
        with timer("windows"):
            result = P.generate_long_video(
                models, conds, width=width, height=height, seconds=seconds, window_seconds=window,
                overlap_frames=args.overlap_frames, seed=int(args.seed),
                denoise_options=dict(sampler=preset.sampler, steps=steps, cfg=preset.cfg),
                sr_size=sr_size, sr_options=dict(steps=sr_steps, cfg=preset.sr_cfg) if preset.sr else None,
                image=image, reference_audio=None if ref_wave is None else (ref_wave, ref_sr), continue_from=clip,
                generator_device=device, callback=on_step, on_frames=writer.add_frames, on_plan=on_plan,
                on_note=lambda text: print(f"note: {text}", file=sys.stderr))
        for bar in bars:
            bar.close()
        with timer("mux"):
            writer.close(result.audio)
        part.replace(out)
    except BaseException:  # interrupted or failed: the partial file goes, the inputs are untouched
        for bar in bars:
            bar.close()
        writer.abort()
        raise
    w, h = result.size
    print(f"wrote {out}: {result.frame_count} frames {w}x{h} @ {P.FPS} fps ({result.frame_count / P.FPS:.2f} s), "
          f"audio {result.audio.shape[-1] / result.sample_rate:.2f} s", file=sys.stderr)
    print(timer.table(), file=sys.stderr)
    return EXIT_OK


# ============================================================================ prompts


def _build_prompt(body: str, args, dialogue: list[str]) -> str:
    """An Enhanced Prompt from the command line's fields (warnings to stderr; malformed input: exit 2)."""
    try:
        prompt, warnings = prompts.build_enhanced_prompt(
            body, character=getattr(args, "character", None) or "", appearance=getattr(args, "appearance", None) or "",
            performance=getattr(args, "performance", None) or "", camera=getattr(args, "camera", None) or "",
            dialogue="\n".join(dialogue), background_sound=args.background_sound or "",
            cjk_spacing=not args.no_cjk_spacing)
    except ValueError as e:
        raise UsageError(str(e).replace("dialogue line ", "--dialogue #").replace("main_body", "--body")) from None
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    return prompt


def _generate_prompt(args) -> str:
    """``generate``'s prompt: with --dialogue / --background-sound, --prompt is the main body of an Enhanced
    Prompt built around it; otherwise --prompt as given."""
    if not args.dialogue and args.background_sound is None:
        return args.prompt
    prompt = _build_prompt(args.prompt, args, args.dialogue or [])
    if not args.quiet:
        print(f"prompt (Enhanced Prompt format):\n{prompt}\n", file=sys.stderr)
    return prompt


def prompt_build(args) -> int:
    print(_build_prompt(args.body or "", args, args.dialogue or []))
    return EXIT_OK


def prompt_check(args) -> int:
    """Exit 0 when the text follows the Enhanced Prompt format, 1 with the problems listed."""
    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
    problems = prompts.check_enhanced_prompt(text)
    print(prompts.describe_problems(problems))
    return EXIT_FAILURE if problems else EXIT_OK


def prompt_llm(args) -> int:
    system, user = prompts.llm_messages(args.request, first_frame=args.first_frame or "")
    if args.json:
        print(json.dumps([{"role": "system", "content": system}, {"role": "user", "content": user}],
                         ensure_ascii=False, indent=2))
    else:
        print(f"=== system ===\n{system}\n=== user ===\n{user}")
    return EXIT_OK


def _add_prompt_parser(sub) -> None:
    p = sub.add_parser("prompt", help="Enhanced Prompts (the format the model was trained on): build, check, ask an "
                       "LLM")
    ps = p.add_subparsers(dest="prompt_command", required=True, parser_class=_ArgumentParser)

    b = ps.add_parser("build", help="print a prompt in the official three-part layout (warnings on stderr)")
    b.add_argument("--body", default=None, help="the main body: one English paragraph of 150-200 words that "
                   "quotes every spoken line (or give --character/--appearance/--performance/--camera)")
    for name, what in (("character", "who, where, overall mood"), ("appearance", "hair, face, clothing"),
                       ("performance", "the face in time order, spoken lines quoted with their delivery"),
                       ("camera", "static camera, light, focus, composition")):
        b.add_argument(f"--{name}", default=None, help=f"without --body: {what}")
    _add_prompt_fields(b)
    b.set_defaults(func=prompt_build)

    c = ps.add_parser("check", help="check a prompt (e.g. an LLM's answer): exit 0 if it follows the format, "
                      "1 with the problems listed")
    c.add_argument("file", help="text file with the prompt, or - for stdin")
    c.set_defaults(func=prompt_check)

    m = ps.add_parser("llm", help="print the system prompt (the format's rules) and the user message for any LLM")
    m.add_argument("request", help="your idea: who, where, the mood, what is said")
    m.add_argument("--first-frame", default=None, help="image to video: a description of the first frame")
    m.add_argument("--json", action="store_true", help="print the two chat messages as JSON "
                   "([{role, content}, ...])")
    m.set_defaults(func=prompt_llm)


def _add_prompt_fields(parser) -> None:
    """The Enhanced Prompt options shared by ``generate`` and ``prompt build``."""
    parser.add_argument("--dialogue", action="append", default=None, metavar='"SPEAKER | LANGUAGE | TEXT"',
                        help="a spoken line (repeat for more), e.g. \"young man in grey hoodie | English | Hi!\"; "
                        "the text should also be quoted in the main body")
    parser.add_argument("--background-sound", default=None, metavar="TEXT",
                        help="the most prominent background sound (default: none)")
    parser.add_argument("--no-cjk-spacing", action="store_true",
                        help="keep Chinese/Japanese/Korean text as typed (default: one space between CJK "
                        "characters, as the model was trained)")


# ============================================================================ other commands


def _is_text_encoder(src: Path) -> bool:
    """A T5Gemma folder (its config.json says so) or a file holding T5Gemma encoder tensors (headers only)."""
    if src.is_dir():
        cfg = src / "config.json"
        return cfg.is_file() and "t5gemma" in cfg.read_text(encoding="utf-8", errors="replace").lower()
    try:
        return bool(open_text_encoder(src)[0].entries)
    except (ValueError, OSError):
        return False


def convert(args) -> int:
    """One-time conversions, streamed (one tensor in memory at a time); pickles are read weights-only.

    DiT (official folder or file) -> one .safetensors (``--dtype``) or .gguf (``--quant``); T5Gemma folder -> one
    encoder .safetensors / .gguf (config and tokenizer inside the .gguf); Turbo VAE .ckpt -> .safetensors."""
    src, dst = Path(args.src), Path(args.dst)
    if dst.suffix not in (".safetensors", ".gguf"):
        raise UsageError(f"the output must be a .safetensors or .gguf file, got {dst}")
    if args.quant and dst.suffix != ".gguf":
        raise UsageError(f"--quant writes GGUF: give an output ending in .gguf, got {dst}")
    if src.suffix in (".ckpt", ".pt", ".pth"):
        if dst.suffix != ".safetensors":
            raise UsageError("a Turbo VAE checkpoint converts to .safetensors only")
        convert_turbo_checkpoint(src, dst)
    elif _is_text_encoder(src):
        save_encoder_file(src, dst, dtype=DTYPES[args.dtype], quant=args.quant)
    else:
        convert_dit(src, dst, dtype=DTYPES[args.dtype], quant=args.quant, show_progress=True)
    size = dst.stat().st_size
    print(f"wrote {dst} ({size / 2**20:.1f} MiB)", file=sys.stderr)
    return EXIT_OK


def extract_lora_cmd(args) -> int:
    """LoRA = target - base, factored per block linear (and per modality expert), other tensors as diffs."""
    if (args.rank is None) == (args.energy is None):
        raise UsageError("give --rank R or --energy E (e.g. --rank 64, or --energy 0.99)")
    report = extract_lora(args.base, args.target, args.out, rank=args.rank, energy=args.energy,
                          max_rank=args.max_rank, dtype=DTYPES[args.dtype], device=_device(args.device),
                          show_progress=not args.quiet)
    print(report.format() if args.verbose else report.format().split("\n")[0])
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 2**20:.1f} MiB)", file=sys.stderr)
    return EXIT_OK


def tiny_models(args) -> int:
    folder = Path(args.dir)
    write_tiny_models(folder, force=args.force)
    print(f"tiny MagiHuman models in {folder}:")
    print(describe_tiny_files(folder))
    if args.gguf:
        for name, path in write_tiny_gguf(folder).items():
            print(f"{name:<22} {path.relative_to(folder)}  {path.stat().st_size / 1e6:.2f} MB")
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
    g.add_argument("--prompt", default=None, help="what happens and what is said (or --prompt-file)")
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
    g.add_argument("--dit", default=None, metavar="PATH",
                   help="the base-stage DiT file/folder to use instead of the one found in --models (e.g. a .gguf)")
    g.add_argument("--sr-dit", default=None, metavar="PATH", help="the SR DiT to use instead of --models' one")
    g.add_argument("--lora", action="append", default=[], metavar="PATH[:STRENGTH]",
                   help="a LoRA for the base-stage DiT (strength 1 by default); repeat to stack several")
    g.add_argument("--sr-lora", action="append", default=[], metavar="PATH[:STRENGTH]",
                   help="a LoRA for the SR DiT (repeatable)")
    g.add_argument("--text-encoder", default=None, metavar="PATH",
                   help="the T5Gemma folder or file (.safetensors / .gguf) to use instead of --models' one")
    g.add_argument("--models", default=None, help="models folder: ComfyUI layout (diffusion_models/, text_encoders/, "
                   "vae/) or the official checkpoints folder; tiny presets: where to keep the tiny models")
    g.add_argument("--dtype", choices=list(DTYPES), default=None,
                   help="DiT block-weight storage dtype (default: the preset's); fp8 = float8_e4m3fn with a "
                        "per-tensor scale (half the memory of bf16)")
    g.add_argument("--compute-dtype", choices=["auto", "bf16", "fp16", "fp32"], default="auto",
                   help="DiT matmul dtype: bf16 = official numerics; auto = bf16 on GPUs (fp16 without bf16), the "
                   "faster of bf16/fp32 on CPUs (measured)")
    g.add_argument("--fp8-compute", choices=["off", "auto", "tensor", "token"], default="off",
                   help="fp8 matmuls (torch._scaled_mm) for --dtype fp8 weights: activations scaled per tensor or per "
                   "token; auto = token on GPUs with fp8 units, off elsewhere (default off)")
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
    g.add_argument("--gpus", type=int, default=None, metavar="N",
                   help="split the DiT's token sequence over N GPUs (sequence parallel; re-launches itself with "
                   "torch.distributed.run, like `torchrun --nproc-per-node N -m magihuman generate ...`); N must "
                   "divide the 40 attention heads and suit the 8 key/value heads: 2, 4 or 8. Without CUDA: N CPU "
                   "processes")
    g.add_argument("--output", required=True, help="output .mp4 path")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice; 1 for "
                   "the tiny presets, whose tensors are too small to gain from more and lose a lot on a busy CPU)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_prompt_fields(g)  # with --dialogue/--background-sound, --prompt is the main body of an Enhanced Prompt
    _add_long_video_args(g)
    g.set_defaults(func=generate)

    t = sub.add_parser("tiny-models", help="write tiny random checkpoints (ComfyUI layout) and list them")
    t.add_argument("dir", help="models folder to write into")
    t.add_argument("--force", action="store_true", help="rewrite even if present")
    t.add_argument("--gguf", action="store_true", help="also write Q8_0 and Q4_0 GGUF files of the tiny distill DiT "
                   "and text encoder (with the real converters)")
    t.set_defaults(func=tiny_models)

    c = sub.add_parser("convert", help="convert checkpoints, streamed: a DiT folder/file or the T5Gemma folder -> one "
                       ".safetensors or a quantised .gguf; a Turbo VAE .ckpt -> .safetensors")
    c.add_argument("src", help="official DiT folder / DiT file, the t5gemma-9b-9b-ul2 folder, or a Turbo VAE .ckpt")
    c.add_argument("dst", help="output .safetensors or .gguf")
    c.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16", help=".safetensors output dtype")
    c.add_argument("--quant", choices=list(GGUF_QUANTS), default=None,
                   help="GGUF quantisation of the block linears / encoder projections (default Q8_0 for .gguf); "
                        "rows that are not whole blocks and the small fp32 tensors stay BF16/F32")
    c.set_defaults(func=convert)

    x = sub.add_parser("extract-lora", help="the LoRA turning one DiT checkpoint into another (e.g. distill as a "
                       "LoRA on base), streamed layer by layer")
    x.add_argument("base", help="the base DiT (folder or file)")
    x.add_argument("target", help="the DiT to reach (same architecture)")
    x.add_argument("out", help="output LoRA .safetensors")
    x.add_argument("--rank", type=int, default=None, help="rank of every low-rank delta")
    x.add_argument("--energy", type=float, default=None,
                   help="per delta, the smallest rank keeping this fraction of its squared Frobenius norm (e.g. 0.99)")
    x.add_argument("--max-rank", type=int, default=None, help="cap for --energy")
    x.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16", help="dtype of the LoRA matrices")
    x.add_argument("--device", default="cpu", help="where the SVDs run (cuda is much faster)")
    x.add_argument("--verbose", action="store_true", help="print every layer's rank and kept energy")
    x.add_argument("--quiet", action="store_true", help="no progress bar")
    x.set_defaults(func=extract_lora_cmd)

    p = sub.add_parser("presets", help="list presets and where their model files go")
    p.set_defaults(func=presets)

    _add_prompt_parser(sub)
    fit_plan.add_parser(sub)  # python -m magihuman plan --preset NAME --vram GB [--ram GB] (magihuman/plan.py)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Run the CLI; returns the exit code (``__main__`` raises SystemExit with it)."""
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args = build_parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # generate --gpus re-launches the same command
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
