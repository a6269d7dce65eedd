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
import difflib
import gc
import json
import logging
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import torch
from tqdm import tqdm

from . import media
from . import pipeline as P
from . import prompts
from .checkpoints import DIT_KEYMAP, convert_dit, file_storage, infer_variant, load_dit, open_checkpoint
from . import estimate as est
from . import plan as fit_plan
from .device import COMPUTE_DTYPE_NAMES, resolve_compute_dtype
from .lora import PAIRS as LORA_PAIRS
from .lora import SINGLE as LORA_SINGLE
from .lora import variant_with_loras
from .lora_extract import extract_lora
from .loaders import convert_turbo_checkpoint, load_audio_vae, load_turbo_vae, load_wan_vae, save_encoder_file
from .loaders.text_encoder import open_text_encoder, text_encoder_file_storage
from .models.text_encoder import T5GemmaEncoder
from .models.dit_config import DiTConfig
from .options import RunOptions
from .options import choices as run_choices
from .parallel import check_world_size, enable_sequence_parallel
from .parallel import launch as sp_launch
from .parallel.cost import per_rank_plan
from .presets import (MODEL_FILES, PRESETS, describe_files, found_model_files, get_preset, required_roles,
                      resolve_model_files)
from .storage import FILE, KEEP_FILE, PLAIN, STORAGES, Storage, convert_choices, load_choices, parse_storage
from .tiny import (default_cache_dir, describe_tiny_files, ensure_tiny_models, tiny_models_ready, write_tiny_gguf,
                   write_tiny_models)
from .weights.gguf_file import open_gguf
from .weights.source import open_source
from .weights.safetensors_io import read_header

log = logging.getLogger("magihuman.cli")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(ValueError):
    """Bad command-line input (exit code 2)."""


class _HelpFormatter(argparse.HelpFormatter):
    """``--help`` with each option's default, unless its text already gives it or there is none to give."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or not action.option_strings or action.default in (None, False, [], argparse.SUPPRESS)
                or isinstance(action, argparse._HelpAction)):
            return text
        return f"{text} (default: %(default)s)"


class _ArgumentParser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):  # argparse's own errors: one line (no usage block), exit 2
        m = re.match(r"argument (\S+): invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        if m:
            choices = re.findall(r"'([^']*)'", m.group(3)) or [c.strip() for c in m.group(3).split(",")]
            close = difflib.get_close_matches(m.group(2), choices, n=1, cutoff=0.5)
            message += f"; did you mean '{close[0]}'?" if close else ""
        raise UsageError(f"{message} (`{self.prog} --help` lists the options)")


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
    for name in ("width", "height", "sr_width", "sr_height", "steps", "sr_steps"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {v}")
    for name in ("blocks_on_device", "sr_blocks_on_device"):
        v = getattr(args, name)
        if v is not None and v < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0 (0 streams every layer), got {v}")
    if (args.sr_dtype or args.sr_blocks_on_device is not None) and not preset.sr:
        raise UsageError(f"preset '{preset.name}' has no super-resolution stage; --sr-dtype/--sr-blocks-on-device "
                         "need a preset with SR")
    if (args.sr_width or args.sr_height) and not preset.sr:
        raise UsageError(f"preset '{preset.name}' has no super-resolution stage; --sr-width/--sr-height need a preset "
                         "with SR (sr_540p, sr_1080p, distill_540p, tiny_sr)")
    if args.sr_lora and not preset.sr:
        raise UsageError(f"--sr-lora: preset '{preset.name}' has no super-resolution stage (give LoRAs for its DiT "
                         "with --lora)")
    for flag, texts in (("--lora", args.lora), ("--sr-lora", args.sr_lora)):
        for text in texts:
            _lora_arg(text, flag)  # the strength: checked now, the file once the models folder is known
    for name in ("image", "audio"):
        p = getattr(args, name)
        if p is not None and not Path(p).is_file():
            raise UsageError(f"--{name} {p}: no such file")
    out = Path(args.output)
    if out.suffix.lower() != ".mp4":
        raise UsageError(f"--output must end in .mp4, got {args.output}")
    _check_writable(out, "--output")


def _check_writable(out: Path, flag: str) -> None:
    """Refuse an output that cannot be written, before any work: a folder, or a place where no file can be created
    (tried with a temporary file in the nearest existing folder; missing folders are made when writing)."""
    if out.is_dir():
        raise UsageError(f"{flag} {out} is a folder")
    if out.exists():
        if not os.access(out, os.W_OK):
            raise UsageError(f"{flag} {out}: the file exists and cannot be overwritten (permission denied)")
        return
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"{flag} {out}: {folder} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UsageError(f"{flag} {out}: cannot create a file in {folder} ({e.strerror or e})") from None


def _device(name: Optional[str]) -> torch.device:
    """``--device``: ``auto`` (CUDA if available), or a device this torch can use (one line otherwise, before
    anything touches it: a CPU-only torch asserts deep inside ``torch.cuda``)."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise UsageError(f"--device {name!r}: {e}") from None
    if dev.type == "cuda":
        if not torch.backends.cuda.is_built():
            raise UsageError(f"--device {name}: this torch ({torch.__version__}) is built without CUDA; use --device "
                             "cpu, or install a CUDA build of torch")
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: torch finds no CUDA GPU (driver missing or no device visible); use "
                             "--device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                             f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UsageError(f"--device {name}: MPS (Apple GPU) is not available in this torch; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {name}: the CLI runs on cpu, cuda[:N] or mps")
    return dev


LORA_STRENGTH = (-10.0, 10.0)  # the range of the LoRA node's strength widget
LORA_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


def _lora_arg(text: str, flag: str = "--lora") -> tuple[str, float]:
    """``PATH[:STRENGTH]`` -> (path text, strength): strength 1 when absent; a path may itself contain ':' (a
    Windows drive, or an existing file named so). A strength that is not a number, or outside -10..10, is refused."""
    path, sep, strength = text.rpartition(":")
    if not sep or not path or Path(text).expanduser().is_file() or "/" in strength or "\\" in strength:
        return text, 1.0
    try:
        value = float(strength)
    except ValueError:
        if not path.lower().endswith(LORA_SUFFIXES) and not Path(path).expanduser().is_file():
            return text, 1.0  # no strength given: a name with a ':' in it (reported as missing if it is)
        raise UsageError(f"{flag} {text}: the strength {strength!r} is not a number (PATH[:STRENGTH], e.g. "
                         f"{path}:0.8)") from None
    lo, hi = LORA_STRENGTH
    if not math.isfinite(value) or not lo <= value <= hi:
        raise UsageError(f"{flag} {text}: the strength must lie in {lo:g}..{hi:g} (as in the LoRA node), got "
                         f"{strength}")
    return path, value


def _resolve_lora(text: str, models_dir: Optional[Path], flag: str) -> tuple[Path, float]:
    """A ``--lora`` / ``--sr-lora`` value -> (file, strength): the path as given, else (a bare name or a path
    relative to it) the same name in ``<models>/loras/``, with ``.safetensors`` added when it has no suffix."""
    name, strength = _lora_arg(text, flag)
    given = Path(name).expanduser()
    tried = [given]
    if models_dir is not None and not given.is_absolute():
        tried.append(models_dir / "loras" / name)
        if not given.suffix:
            tried.append(models_dir / "loras" / f"{name}.safetensors")
    for path in tried:
        if path.is_file():
            return path, strength
    if given.is_dir():
        raise UsageError(f"{flag} {text}: {given} is a folder; a LoRA is one file (.safetensors)")
    raise UsageError(f"{flag} {text}: no such file (looked for {' and '.join(str(p) for p in tried)})")


# ============================================================================ which flag takes which file

SR_ROLES = ("sr_540p", "sr_1080p")
_LORA_SUFFIXES = tuple(s for pair in LORA_PAIRS for s in pair) + LORA_SINGLE  # the LoRA reader's own key names
_DIT_KEY = re.compile(r"(^|\.)(block\.layers\.\d+\.attention\.linear_qkv|adapter\.video_embedder)\.weight$")


def _header(path: Path) -> Optional[tuple[list[str], dict]]:
    """(tensor names, metadata) of a .safetensors(.zst) or .gguf file from its header; None for a folder or
    another format (a pickle is not opened twice)."""
    name = path.name.lower()
    if path.is_file() and name.endswith((".safetensors", ".safetensors.zst")):
        h = read_header(path)
        return list(h.tensors), dict(h.metadata)
    if path.is_file() and name.endswith(".gguf"):
        entries, metadata, _ = open_gguf(path)
        return list(entries), metadata
    return None


def _dit_variant(path: Path) -> tuple[str, str]:
    """(variant, why) of a DiT checkpoint, headers only, as the loader will infer it (its warnings are the load's
    to give, once)."""
    logger = logging.getLogger("magihuman.checkpoints")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return infer_variant(open_checkpoint(path))
    finally:
        logger.setLevel(level)


def _what(role: str) -> str:
    """'the distilled DiT', 'the 540p super-resolution DiT', ... (the model table's words, without the details)."""
    return "the " + re.sub(r" \(.*\)$", "", MODEL_FILES[role].what)


def _check_dit_file(path: Path, flag: str, loras=()) -> None:
    """A ``--dit`` / ``--sr-dit`` file that belongs to another flag is named with that flag, before it loads: a LoRA,
    or a DiT of the other stage (with ``loras``, as they leave it: an extracted LoRA can change the variant)."""
    lora_flag = "--lora" if flag == "--dit" else "--sr-lora"
    header = _header(path)
    if header is not None and any(k.endswith(_LORA_SUFFIXES) for k in header[0]):
        raise UsageError(f"{flag} {path} is a LoRA, not a DiT: give it with {lora_flag} (the DiT it applies to with "
                         f"{flag}, or the one found in --models)")
    variant, why = _dit_variant(path)
    metas = [(_header(p) or ([], {}))[1] for p, _ in loras]
    became = variant_with_loras(variant, [(SimpleNamespace(metadata=m), s) for m, (_, s) in zip(metas, loras)])
    if became != variant:
        why = f"{why}, made {became} by its LoRA"
        variant = became
    if flag == "--dit" and variant in SR_ROLES:
        sr = ", ".join(n for n, p in PRESETS.items() if p.sr)
        raise UsageError(f"--dit {path} is {_what(variant)} (variant {variant}: {why}): give it with "
                         f"--sr-dit, with a preset that has a super-resolution stage ({sr}); --dit takes the "
                         "base-stage DiT (distill or base)")
    if flag == "--sr-dit" and variant not in SR_ROLES:
        raise UsageError(f"--sr-dit {path} is {_what(variant)} (variant {variant}: {why}): give it "
                         "with --dit; --sr-dit takes a super-resolution DiT (540p_sr or 1080p_sr)")


def _check_lora_file(path: Path, flag: str) -> None:
    """A ``--lora`` / ``--sr-lora`` file that is a whole DiT is named with the flag that takes it (headers only)."""
    header = _header(path)
    if header is None or any(k.endswith(_LORA_SUFFIXES) for k in header[0]) or \
            not any(_DIT_KEY.search(k) for k in header[0]):
        return
    try:
        variant, why = _dit_variant(path)
        what = f"{_what(variant)} (variant {variant}: {why})"
    except ValueError:
        variant, what = "distill", "a whole DiT checkpoint"
    raise UsageError(f"{flag} {path} is {what}, not a LoRA: give it with "
                     f"{'--sr-dit' if variant in SR_ROLES else '--dit'}")


def _run_options(args, loras=(), blocks_on_device=None) -> RunOptions:
    """The DiT run options the command line asks for (LoRAs as (file, strength) pairs from :func:`_resolve_lora`)."""
    return RunOptions(compute_dtype=getattr(args, "compute_dtype", "auto"), attention=getattr(args, "attention", "sdpa"),
                      local_attention=getattr(args, "local_attention", "window"),
                      fp8_compute=getattr(args, "fp8_compute", "off"), compile=bool(getattr(args, "compile", False)),
                      blocks_on_device=blocks_on_device, loras=tuple((str(p), s) for p, s in loras or ()))


def _load_dit(path, storage: Storage, device, show, args, loras=(), blocks_on_device=None, on_host=False):
    """Load a DiT in ``storage`` and set the run options of the command line on it (:class:`RunOptions`; block
    offload with ``blocks_on_device`` layers on the device; ``on_host``: leave it in RAM until it is used)."""
    options = _run_options(args, loras, blocks_on_device)
    offload = options.blocks_on_device is not None
    model = load_dit(path, storage=storage, device="cpu" if offload or on_host else device, show_progress=show)
    options.apply(model, device)
    enable_sequence_parallel(model)  # under torchrun: the sequence split over the ranks (nothing otherwise)
    return model


def _dtype_choice(dtype: torch.dtype) -> str:
    return next(name for name, dt in COMPUTE_DTYPE_NAMES.items() if dt == dtype)


def _storage_arg(text: Optional[str], default: str, flag: str = "--dtype") -> Storage:
    """``--dtype``: a storage name (any case); unset: what a file holds, plain tensors in the preset's dtype."""
    if text is None:
        return FILE.keeping(STORAGES[default])
    try:
        return parse_storage(text)
    except ValueError as e:
        raise UsageError(f"{flag} {text}: {e}") from None


def _file_format(path, storage: Storage) -> str:
    """What the estimator prices a model file in: ``storage``, or with "file" the storage of its block linears (from
    the headers; a GGUF type without a torch kernel is decoded to plain while loading, as the loader does)."""
    if storage.kind != KEEP_FILE:
        return storage.name
    if path is None or not Path(path).exists():
        return storage.default.name
    try:
        held = file_storage(open_checkpoint(path))
    except (ValueError, OSError):
        return storage.default.name
    return storage.resolve(held).name


def _sr_settings(args, storage: Storage):
    """(blocks_on_device, SR blocks_on_device, SR storage): the ``--sr-*`` values, else the base stage's."""
    blocks = getattr(args, "blocks_on_device", None)
    sr_blocks = getattr(args, "sr_blocks_on_device", None)
    sr_dtype = getattr(args, "sr_dtype", None)
    return blocks, blocks if sr_blocks is None else sr_blocks, _storage_arg(sr_dtype, "", "--sr-dtype") \
        if sr_dtype else storage


def _plan_and_check(args, preset, device, storage, width, height, seconds, ranks: int = 1, files=None) -> None:
    """Print the FLOP/memory estimate of the run and refuse it, before loading anything, if it cannot fit
    (``ranks``: sequence parallel, each rank holding 1/N of the DiT activations; ``files``: role -> path, so a
    GGUF file is priced in its own format; ``--blocks-on-device``: block offload; ``--sr-*``: the SR stage's)."""
    files = files or {}
    sr_w = (args.sr_width or preset.sr_width) if preset.sr else None
    sr_h = (args.sr_height or preset.sr_height) if preset.sr else None
    blocks, sr_blocks, sr_storage = _sr_settings(args, storage)
    te = files.get("text_encoder")
    te_format = "bf16"
    if te is not None and Path(te).exists():
        try:
            te_format = FILE.resolve(text_encoder_file_storage(te)).name  # the CLI loads it with "file"
        except (ValueError, OSError):
            pass
    plan = est.estimate(preset, width, height, seconds, sr_w, sr_h,
                        weight_dtype=_file_format(files.get(preset.dit), storage),
                        sr_weight_dtype=_file_format(files.get(preset.sr), sr_storage) if preset.sr else None,
                        steps=args.steps or None, sr_steps=args.sr_steps or None, blocks_on_device=blocks,
                        sr_blocks_on_device=sr_blocks, text_encoder_format=te_format, device_type=device.type)
    plan = per_rank_plan(plan, ranks)
    if not args.quiet:
        print(plan.format(), file=sys.stderr)
    host = est.device_memory("cpu")
    est.check_fits(plan, est.device_memory(device), host_memory_bytes=host if device.type != "cpu" else None,
                   device_type=device.type)


def generate(args) -> int:
    """Run one generation; torch's thread count is set for the run and restored (the attention kernel is a
    property of the loaded DiT, nothing process-wide)."""
    preset = get_preset(args.preset)
    threads = args.threads if args.threads is not None else (1 if preset.tiny else None)
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    _check_long_video_args(args, preset)  # long videos (issue 22): see their block below
    _check_generate_args(args, preset)
    _device(args.device)  # a device this torch cannot use: one line now, not a traceback after the models load
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


def _say_other_files(preset, models_dir: Path, files: dict) -> None:
    """When ``models_dir`` holds a role in more than one place (a DiT folder and a .gguf of it), which one the run
    takes and how to take another."""
    flags = {preset.dit: "--dit", preset.sr: "--sr-dit", "text_encoder": "--text-encoder"}
    for role, path in files.items():
        others = [p for p in found_model_files(preset, models_dir, role) if p != path]
        if not others:
            continue
        how = (f"; to use another: {flags[role]} {others[0]}" if role in flags
               else "; move the others away to use one of them")
        print(f"{_what(role)}: using {_rel(path, models_dir)} (also in {models_dir}: "
              f"{', '.join(_rel(p, models_dir) for p in others)}){how}", file=sys.stderr)


def _rel(path: Path, folder: Path) -> str:
    return str(path.relative_to(folder) if path.is_relative_to(folder) else path)


def _load_line(stage: str, model) -> str:
    """What the loader inferred about a DiT and why (``model.load_info``), as one line: the README promises it."""
    info = getattr(model, "load_info", None) or {}
    line = (f"{stage}: {info.get('source', '?')}: variant {info.get('variant', '?')} ({info.get('reason', '?')}); "
            f"{info.get('source_dtype', '?')} on disk -> {info.get('dtype', '?')} block linears")
    effective = P.effective_variant(model)
    if effective != info.get("variant"):
        line += f"; samples as {effective} with its LoRA"
    return line


def _snap(width: int, height: int, label: str, say: bool, what: str = "") -> tuple[int, int]:
    """(width, height) snapped down to multiples of 32, said once when that changes them."""
    w, h = P.snap_size(width, height, what=what)
    if say and (w, h) != (width, height):
        print(f"{label} {width}x{height} snapped down to {w}x{h} (multiples of {P.SIZE_MULTIPLE})", file=sys.stderr)
    return w, h


def _say_crop(path, w: int, h: int, width: int, height: int) -> None:
    """TI2V: the reference image is centre-cropped to the video's aspect before it is resized; say what is cut."""
    left, top, right, bottom = media.crop_box(w, h, width, height)
    if (right - left, bottom - top) != (w, h):
        cut = (f"{left} px left and {w - right} px right" if (right - left) != w
               else f"{top} px at the top and {h - bottom} px at the bottom")
        print(f"--image {path}: {w}x{h} centre-cropped to {right - left}x{bottom - top} (the {width}x{height} "
              f"video's aspect; {cut} cut off), then resized", file=sys.stderr)


def _audio_seconds(args, wave, sample_rate: int, say: bool = True) -> float:
    """A2V: the reference audio sets the clip's length, all of it without ``--seconds``, its first ``--seconds``
    with it (said when that cuts it). Returns the seconds to plan and allocate for: those of its audio steps
    (:func:`magihuman.media.reference_audio_steps`), so the plan's frame counts are the run's."""
    total = wave.shape[-1] / sample_rate
    steps = media.reference_audio_steps(wave.shape[-1], sample_rate, args.seconds)
    if steps < 1:
        raise UsageError(f"--audio {args.audio}: {total * 1000:.0f} ms is too short; the reference audio must last "
                         "at least 0.04 s (one latent step)")
    if say and args.seconds is not None and args.seconds < total:
        print(f"--audio {args.audio}: {total:.2f} s, trimmed to {args.seconds:g} s (--seconds)", file=sys.stderr)
    elif say and args.seconds is not None and args.seconds > total:
        print(f"--audio {args.audio}: {total:.2f} s, shorter than --seconds {args.seconds:g}: the clip lasts as long "
              "as the audio", file=sys.stderr)
    return max(steps - 1, 1) / P.FPS


def _generate_run(args, preset) -> int:
    timer = StageTimer()
    sp = sp_launch.torchrun_context(cpu=_device(args.device).type == "cpu")  # None unless torchrun, >1 process
    if sp is not None:  # rank 0 encodes, decodes and writes; every rank runs the DiT on its share of the tokens
        args.quiet = args.quiet or not sp.lead
        if sp.lead:
            print(f"sequence parallel: {sp.describe()}; rank 0 encodes the prompt, decodes and writes", file=sys.stderr)
    device = sp.device if sp is not None else _device(args.device)
    storage = _storage_arg(args.dtype, preset.dtype)
    if sp is not None and args.compute_dtype == "auto":  # one choice for every rank: rank 0's (a CPU measures it)
        args.compute_dtype = sp_launch.broadcast_object(_dtype_choice(resolve_compute_dtype("auto", device)), sp)
    vae_dtype = torch.float32 if (preset.tiny or device.type == "cpu") else torch.bfloat16
    decoder = args.decoder or preset.decoder
    show = not args.quiet
    seconds = args.seconds if args.seconds is not None else preset.seconds
    lead = sp is None or sp.lead
    width, height = _snap(args.width or preset.width, args.height or preset.height, "size", lead)
    if preset.sr:  # the SR size as the run will use it (super_resolve then has nothing to snap)
        args.sr_width, args.sr_height = _snap(args.sr_width or preset.sr_width, args.sr_height or preset.sr_height,
                                              "SR size", lead, what="SR ")

    with timer("find/write models"):
        if preset.tiny:
            target = Path(args.models).expanduser() if args.models else default_cache_dir()
            if not tiny_models_ready(target) and lead:
                print(f"writing the tiny random models to {target} (missing or from an older version)",
                      file=sys.stderr)
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
        if not args.quiet:
            _say_other_files(preset, models_dir, files)
        files.update(overrides)
        loras = [_resolve_lora(t, models_dir, "--lora") for t in args.lora]
        sr_loras = [_resolve_lora(t, models_dir, "--sr-lora") for t in args.sr_lora]
        for flag, chosen in (("--lora", loras), ("--sr-lora", sr_loras)):
            for path, _ in chosen:
                _check_lora_file(path, flag)
        if args.dit:
            _check_dit_file(files[preset.dit], "--dit", loras)
        if args.sr_dit:
            _check_dit_file(files[preset.sr], "--sr-dit", sr_loras)

    # ---- inputs that need no model: fail early on bad files
    image = ref_wave = ref_sr = None
    if args.image:
        with timer("read image"):
            image = torch.from_numpy(media.load_image(args.image))
        if lead:
            _say_crop(args.image, image.shape[1], image.shape[0], width, height)
    if args.audio:
        with timer("read audio"):
            ref_wave, ref_sr = media.load_audio(args.audio)
    if _is_long_video(args, preset, ref_wave, ref_sr):  # windows or continuation (issue 22): their own run
        return _generate_long(args, preset, timer, models_dir, files, device, image, (ref_wave, ref_sr), storage,
                              (loras, sr_loras))
    if ref_wave is not None:
        seconds = _audio_seconds(args, ref_wave, ref_sr, say=lead)

    with timer("estimate"):  # before any model is loaded or latent allocated
        _plan_and_check(args, preset, device, storage, width, height, seconds, sp.world_size if sp else 1, files)

    latent = P.empty_latents(width, height, seconds, device="cpu")  # sizes already snapped (said once, above)

    # ---- text
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
            latent = P.encode_reference_audio(audio_vae, ref_wave, ref_sr, latent,
                                              seconds=args.seconds if args.seconds is not None else math.inf)
    cond, latent = sp_launch.broadcast_object((cond, latent), sp)  # rank 0's conditioning on every rank

    # ---- base stage
    generator = torch.Generator(device=device).manual_seed(int(args.seed))  # one stream, as the official run
    with timer("load DiT"):
        dit = _load_dit(files[preset.dit], storage, device, show and not preset.tiny, args, loras,
                        getattr(args, "blocks_on_device", None))
    if show:
        print(_load_line("base DiT", dit), file=sys.stderr)
    steps = args.steps or preset.steps
    with timer("DiT"), _progress(f"DiT {preset.dit}", steps, show) as bar:
        latent = P.denoise(dit, latent, cond, sampler=preset.sampler, steps=steps, cfg=preset.cfg,
                           generator=generator, callback=lambda i, n, x0: bar.update(1))
    del dit
    _free()

    # ---- super-resolution
    if preset.sr:
        with timer("load SR DiT"):
            _, sr_blocks, sr_storage = _sr_settings(args, storage)
            sr_dit = _load_dit(files[preset.sr], sr_storage, device, show and not preset.tiny, args, sr_loras, sr_blocks)
        if show:
            print(_load_line("SR DiT", sr_dit), file=sys.stderr)
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
    return P.clip_frames(total) > P.clip_frames(preset.seconds) and sp_launch.torchrun_world_size() == 1


def _dit_swapper(device: torch.device, offloaded: dict[str, bool]):
    """``use`` hook of the long-video engine: with two DiTs (base + SR) on a GPU only the running one is there.
    ``offloaded`` (role -> block offload on): such a DiT stays as its offload placed it."""
    movable: dict = {}

    def use(role, model, latent, **fit):
        if role in offloaded and device.type == "cuda":
            if not offloaded[role]:
                movable[role] = model
            for other, m in movable.items():  # the others leave first: never two on the GPU
                if other != role:
                    m.to("cpu")
            if role in movable:
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


def _generate_long(args, preset, timer: StageTimer, models_dir, files: dict, device, image, ref, storage: Storage,
                   loras: tuple) -> int:
    """One long video (windows and/or continuation), written to ``--output`` as its windows finish."""
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
        _plan_and_check(args, preset, device, storage, width, height, min(window, seconds or window), 1, files)

    prompts = args.prompts or [args.prompt]
    negative = args.negative_prompt if args.negative_prompt is not None else P.DEFAULT_NEGATIVE_PROMPT
    with timer("load text encoder"):
        text_encoder = T5GemmaEncoder.from_pretrained(files["text_encoder"], dtype=vae_dtype if preset.tiny
                                                      else torch.bfloat16, device=device)
    with timer("text encode"):
        conds = P.encode_prompts(text_encoder, prompts, negative if (preset.cfg or preset.sr_cfg) else None,
                                 cjk_spacing=not getattr(args, "no_cjk_spacing", False))
    del text_encoder
    _free()

    with timer("load VAEs"):
        video_vae = load_wan_vae(files["video_vae"], dtype=vae_dtype, device=device)
        audio_vae = load_audio_vae(files["audio_vae"], dtype=torch.float32, device=device)
        video_decoder = (load_turbo_vae(None, files["turbo_vae"], dtype=vae_dtype, device=device)
                         if decoder == "turbo" else None)
    blocks, sr_blocks, sr_storage = _sr_settings(args, storage)
    with timer("load DiT"):
        dit = _load_dit(files[preset.dit], storage, device, show and not preset.tiny, args, loras[0], blocks)
        if show:
            print(_load_line("base DiT", dit), file=sys.stderr)
        sr_dit = None
        if preset.sr:  # kept in RAM until its first window: only the running DiT is on the GPU
            sr_dit = _load_dit(files[preset.sr], sr_storage, device, show and not preset.tiny, args, loras[1],
                               sr_blocks, on_host=True)
            if show:
                print(_load_line("SR DiT", sr_dit), file=sys.stderr)
    models = P.LongVideoModels(dit=dit, video_vae=video_vae, audio_vae=audio_vae, video_decoder=video_decoder,
                               sr_dit=sr_dit, use=_dit_swapper(device, {"dit": blocks is not None,
                                                                        "sr_dit": sr_blocks is not None}))
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
    ps = p.add_subparsers(dest="prompt_command", metavar="{build,check,llm}", parser_class=_ArgumentParser)

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
    p.set_defaults(func=None, subcommands=", ".join(ps.choices))


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


def _is_dit_pickle(src: Path) -> bool:
    """A torch pickle holding DiT tensors (any layout) rather than a Turbo VAE checkpoint (read weights-only)."""
    try:
        names = open_source(src, what="a DiT or a Turbo VAE checkpoint", keymap=DIT_KEYMAP).entries
    except (ValueError, OSError):
        return False
    return any(k.startswith(("block.layers.", "adapter.")) for k in names)


def convert(args) -> int:
    """One-time conversions, streamed (one tensor in memory at a time); pickles are read weights-only.

    DiT (official folder or file, or another tool's layout, also as a torch pickle) -> one official .safetensors
    (``--dtype``) or .gguf (``--quant``); T5Gemma folder -> one
    encoder .safetensors / .gguf (config and tokenizer inside the .gguf); Turbo VAE .ckpt -> .safetensors."""
    src, dst = Path(args.src), Path(args.dst)
    if dst.suffix not in (".safetensors", ".gguf"):
        raise UsageError(f"the output must be a .safetensors or .gguf file, got {dst}")
    if args.quant and dst.suffix != ".gguf":
        raise UsageError(f"--quant writes GGUF: give an output ending in .gguf, got {dst}")
    if not dst.parent.is_dir():
        raise UsageError(f"the output folder {dst.parent} does not exist: create it first (convert makes no folders)")
    _check_writable(dst, "output")
    if src.suffix in (".ckpt", ".pt", ".pth") and not _is_dit_pickle(src):
        if dst.suffix != ".safetensors":
            raise UsageError("a Turbo VAE checkpoint converts to .safetensors only")
        convert_turbo_checkpoint(src, dst)
    elif _is_text_encoder(src):
        save_encoder_file(src, dst, dtype=STORAGES[args.dtype].dtype, quant=args.quant)
    else:
        convert_dit(src, dst, dtype=STORAGES[args.dtype].dtype, quant=args.quant, show_progress=True)
    size = dst.stat().st_size
    print(f"wrote {dst} ({size / 2**20:.1f} MiB)", file=sys.stderr)
    return EXIT_OK


def extract_lora_cmd(args) -> int:
    """LoRA = target - base, factored per block linear (and per modality expert), other tensors as diffs."""
    if (args.rank is None) == (args.energy is None):
        raise UsageError("give --rank R or --energy E (e.g. --rank 64, or --energy 0.99)")
    report = extract_lora(args.base, args.target, args.out, rank=args.rank, energy=args.energy,
                          max_rank=args.max_rank, dtype=STORAGES[args.dtype].dtype, device=_device(args.device),
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


def _plain_names() -> list[str]:
    return [s.name for s in STORAGES.values() if s.kind == PLAIN]


def _choice(names: list[str]):
    """An argparse ``type`` taking one of ``names`` in any case (``q8_0`` is ``Q8_0``), returning the listed name."""
    by = {n.lower(): n for n in names}

    def parse(text: str) -> str:
        try:
            return by[text.strip().lower()]
        except KeyError:
            raise argparse.ArgumentTypeError(f"invalid choice {text!r} (choose from {', '.join(names)})") from None

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog="python -m magihuman", description="daVinci-MagiHuman audio+video generation")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for all errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_ArgumentParser)

    g = sub.add_parser("generate", help="generate an MP4 (video + audio) from a prompt")
    g.add_argument("--preset", default="distill_256p", choices=list(PRESETS), help="generation recipe")
    g.add_argument("--prompt", default=None, help="what happens and what is said (or --prompt-file)")
    g.add_argument("--negative-prompt", default=None, help="negative prompt for CFG (default: the official one)")
    g.add_argument("--image", default=None, help="reference image (TI2V: becomes the first frame)")
    g.add_argument("--audio", default=None, help="reference audio (A2V: the soundtrack); the clip lasts as long as "
                   "the audio, or --seconds when given (the audio is then trimmed to it)")
    g.add_argument("--seconds", type=float, default=None,
                   help="clip length (default: the preset's; with --audio, the audio's)")
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
                   help="a LoRA for the base-stage DiT: a path, or a name in <models>/loras/; STRENGTH -10..10 "
                   "(default 1); repeat to stack several")
    g.add_argument("--sr-lora", action="append", default=[], metavar="PATH[:STRENGTH]",
                   help="a LoRA for the SR DiT (as --lora; repeatable)")
    g.add_argument("--text-encoder", default=None, metavar="PATH",
                   help="the T5Gemma folder or file (.safetensors / .gguf) to use instead of --models' one")
    g.add_argument("--models", default=None, help="models folder: ComfyUI layout (diffusion_models/, text_encoders/, "
                   "vae/) or the official checkpoints folder; tiny presets: where to keep the tiny models (default "
                   f"for them: {default_cache_dir()}, or $MAGIHUMAN_CACHE/tiny)")
    g.add_argument("--dtype", type=_choice(load_choices()), metavar="{" + ",".join(load_choices()) + "}", default=None,
                   help="DiT block-weight storage (default: what the file holds, plain files in the preset's dtype): "
                        "file; bf16/fp16/fp32; fp8 = float8_e4m3fn with a per-tensor scale (half the memory of bf16); "
                        "a GGUF type (Q8_0 ... Q4_0) quantises every block linear while loading")
    g.add_argument("--sr-dtype", type=_choice(load_choices()), metavar="{" + ",".join(load_choices()) + "}",
                   default=None, help="the same for the SR DiT (default: --dtype)")
    g.add_argument("--compute-dtype", choices=run_choices()["compute_dtype"], default="auto",
                   help="DiT matmul dtype: bf16 = official numerics; auto = bf16 on GPUs (fp16 without bf16), the "
                   "faster of bf16/fp32 on CPUs (measured)")
    g.add_argument("--fp8-compute", choices=run_choices()["fp8_compute"], default="off",
                   help="fp8 matmuls (torch._scaled_mm) for --dtype fp8 weights: activations scaled per tensor or per "
                   "token; auto = token on GPUs with fp8 units, off elsewhere (default off)")
    g.add_argument("--attention", choices=run_choices()["attention"], default="sdpa",
                   help="attention kernel: sdpa (default), flash (FlashAttention 3/2) or sage (SageAttention) on CUDA, "
                   "math (fp32 reference)")
    g.add_argument("--local-attention", choices=run_choices()["local_attention"], default="window",
                   help="1080p SR local layers: per-frame key windows (default, no LxL mask) or one dense mask")
    g.add_argument("--compile", action="store_true", help="torch.compile the transformer layers (regional)")
    g.add_argument("--blocks-on-device", type=int, default=None, metavar="N",
                   help="keep only N transformer layers on the GPU and stream the others from RAM (GPUs smaller "
                   "than the model; 0 streams every layer)")
    g.add_argument("--sr-blocks-on-device", type=int, default=None, metavar="N",
                   help="the same for the SR DiT (default: --blocks-on-device)")
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
    c.add_argument("src", help="official DiT folder / DiT file (also ComfyUI-native, Wan2GP, quanto int8, FastVideo "
                   "layouts: written in the official one), the t5gemma-9b-9b-ul2 folder, or a Turbo VAE .ckpt")
    c.add_argument("dst", help="output .safetensors or .gguf")
    c.add_argument("--dtype", type=_choice(_plain_names()), metavar="{" + ",".join(_plain_names()) + "}",
                   default="bf16", help=".safetensors output dtype")
    c.add_argument("--quant", type=_choice(convert_choices()), metavar="{" + ",".join(convert_choices()) + "}",
                   default=None, help="GGUF type of every block linear / encoder matrix (default Q8_0 for .gguf); rows "
                   "that are not whole blocks are zero-padded to whole blocks; the small fp32 tensors stay F32")
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
    x.add_argument("--dtype", type=_choice(_plain_names()), metavar="{" + ",".join(_plain_names()) + "}",
                   default="bf16", help="dtype of the LoRA matrices")
    x.add_argument("--device", default="cpu", help="where the SVDs run (cuda is much faster)")
    x.add_argument("--verbose", action="store_true", help="print every layer's rank and kept energy")
    x.add_argument("--quiet", action="store_true", help="no progress bar")
    x.set_defaults(func=extract_lora_cmd)

    p = sub.add_parser("presets", help="list presets and where their model files go")
    p.set_defaults(func=presets)

    _add_prompt_parser(sub)
    fit_plan.add_parser(sub)  # python -m magihuman plan --preset NAME --vram GB [--ram GB] (magihuman/plan.py)
    _add_debug(sub)
    parser.set_defaults(func=None, subcommands=", ".join(sub.choices))
    return parser


def _add_debug(subparsers) -> None:
    """``--debug`` after the command too (``generate ... --debug``), in every (nested) subcommand; SUPPRESS keeps a
    ``--debug`` given before the command."""
    for p in set(subparsers.choices.values()):
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for all "
                       "errors")
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                _add_debug(action)


def main(argv: Optional[list[str]] = None) -> int:
    """Run the CLI; returns the exit code (``__main__`` raises SystemExit with it)."""
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "func", None) is None:
            what, prog = ((f"`{args.command}` needs a subcommand", f"python -m magihuman {args.command}")
                          if args.command else ("give a command", "python -m magihuman"))
            raise UsageError(f"{what}: {args.subcommands} (`{prog} --help` says what each does)")
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
