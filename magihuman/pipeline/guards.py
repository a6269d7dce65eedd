"""Checks every stage runs before it allocates anything: the right model for the stage, inputs that fit it,
finite numbers, and memory (the DiT activations from :mod:`magihuman.estimate`; latents that the device can hold).
A refused run says why and what would fit."""

from __future__ import annotations

import logging
import math
from typing import Optional, Sequence

import torch

from .. import estimate
from ..errors import PipelineError
from ..geometry import AUDIO_LATENT_CHANNELS, FPS, VIDEO_LATENT_CHANNELS

log = logging.getLogger("magihuman.pipeline")

__all__ = ["check_variant", "effective_variant", "model_device", "check_model_fits", "available_bytes", "check_alloc",
           "check_fits", "dit_activation_bytes", "check_numbers", "SR_VARIANTS", "BASE_VARIANTS"]

SR_VARIANTS = ("sr_540p", "sr_1080p")
BASE_VARIANTS = ("distill", "base")


def effective_variant(model) -> Optional[str]:
    """The variant a DiT samples as: its own, or the target of a LoRA extracted from it (``lora_variant``, set
    by :func:`magihuman.lora.apply_lora` and by the ComfyUI model handles)."""
    return getattr(model, "lora_variant", None) or getattr(model, "variant", None)


def check_variant(model, allowed: Sequence[str], stage: str, hint: str) -> Optional[str]:
    variant = effective_variant(model)
    if variant is not None and variant not in allowed:
        raise PipelineError(f"{stage}: got a '{variant}' DiT, but this stage needs one of {list(allowed)}; {hint}")
    return variant


def model_device(model) -> torch.device:
    """Where ``model`` computes: its ``compute_device`` (set by the loaders and by hosts that load it partially:
    ComfyUI offloads the small layers first, so the first parameter's device says nothing), else the device of its
    first materialised parameter."""
    device = getattr(model, "compute_device", None)
    if device is not None:
        return torch.device(device)
    for p in model.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


def check_model_fits(model, latent, cond, where: str) -> None:
    """The DiT's input widths match MagiHuman latents and the text embeddings (AVLatent, TextConditioning)."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return
    if cfg.video_in_channels != VIDEO_LATENT_CHANNELS * 4 or cfg.audio_in_channels != AUDIO_LATENT_CHANNELS:
        raise PipelineError(f"{where}: the DiT takes {cfg.video_in_channels} video / {cfg.audio_in_channels} audio "
                            f"token channels; MagiHuman latents give {VIDEO_LATENT_CHANNELS * 4} / "
                            f"{AUDIO_LATENT_CHANNELS}")
    if cond.embeds.shape[-1] != cfg.text_in_channels:
        raise PipelineError(f"{where}: text embeddings have {cond.embeds.shape[-1]} channels but this DiT expects "
                            f"{cfg.text_in_channels}: the text encoder does not belong to this model (the release "
                            "uses T5Gemma-9B, 3584 channels)")


def available_bytes(device) -> Optional[int]:
    """Memory that can still be allocated on ``device`` (CPU: available RAM; CUDA: free), or None if unknown."""
    try:
        return estimate.device_memory(device, free=True)
    except Exception:  # noqa: BLE001 - unknown device kind / no driver: let the allocator decide
        return None


def check_alloc(nbytes: int, device, what: str) -> None:
    """Refuse a latent that cannot be allocated at all, before trying (clear error instead of an OOM)."""
    have = available_bytes(device)
    if have is None:
        return
    if nbytes > have:
        raise PipelineError(f"{what} needs {nbytes / 2**30:.1f} GiB for the latent alone, but only "
                            f"{have / 2**30:.1f} GiB is available; lower the size or the seconds")


def dit_activation_bytes(config, latent, *, cfg: bool, batch_cfg: bool = True, size=None,
                         seconds: Optional[float] = None, ranks: int = 1) -> int:
    """Estimated peak bytes of one DiT call on ``latent`` (activations + live latents, weights excluded;
    :func:`magihuman.estimate.estimate`), for the whole batch. ``size``: (width, height) when the run's size
    differs from the latent's (super-resolution); ``seconds``: another clip length to price. ``ranks``: the
    sequence-parallel split (each rank holds 1/N of the activations, the whole latents)."""
    width, height = size or latent.pixel_size
    sec = max(latent.num_frames - 1, 1) / FPS if seconds is None else seconds
    st = estimate.estimate(config, width, height, sec, cfg=cfg, cfg_batched=batch_cfg).stages[0].per_rank(ranks)
    return latent.batch * (st.activation_bytes + st.latent_bytes)


def sequence_ranks(model) -> int:
    """The ranks a sequence-parallel DiT splits its tokens over (1 for a plain one; magihuman.parallel)."""
    sp = getattr(model, "sequence_parallel", None)
    return int(getattr(sp, "world_size", None) or getattr(model, "world_size", None) or 1)


def check_fits(model, latent, where: str, *, cfg: bool, batch_cfg: bool = True, size=None, device=None,
               ranks: Optional[int] = None) -> Optional[int]:
    """Refuse a run whose DiT activations alone (:func:`dit_activation_bytes`; weights excluded, they can be
    offloaded) exceed the memory of ``device`` (default: the model's), BEFORE any noise or activation is
    allocated. ``size``: (width, height) of the run when it differs from the latent's (super-resolution).
    ``ranks``: the sequence-parallel split the run will use (default: the model's own, 1 for a plain DiT).
    Returns the bytes it priced (:func:`dit_activation_bytes`), None when it could not price the run."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "hidden_size"):
        return None
    width, height = size or latent.pixel_size
    seconds = max(latent.num_frames - 1, 1) / FPS
    device = torch.device(device) if device is not None else model_device(model)

    def need(sec: float) -> int:
        return dit_activation_bytes(config, latent, cfg=cfg, batch_cfg=batch_cfg, size=size, seconds=sec,
                                    ranks=ranks or sequence_ranks(model))

    try:
        n = need(seconds)
    except Exception as e:  # noqa: BLE001 - a guard only: an estimate that cannot be made never blocks a run
        log.debug("MagiHuman: no memory estimate for %s (%s)", where, e)
        return None
    try:
        have = estimate.device_memory(device)
    except Exception:  # noqa: BLE001 - unknown device kinds: let the allocator decide
        return n
    if n <= have:
        return n
    fits = [s for s in (30, 20, 10, 5, 4, 3, 2, 1, 0.5, 0.2) if s < seconds and need(s) <= have]
    hint = (f"at {width}x{height} at most ~{fits[0]:g} s fits" if fits
            else f"even 0.2 s does not fit at {width}x{height}: lower the size")
    has = (f"only {have / 2**30:.1f} GiB of RAM is available" if device.type == "cpu"
           else f"the {device.type} has {have / 2**30:.1f} GiB")
    window = estimate.window_seconds_for(fits[0]) if fits else None
    if window is not None:  # a long clip fits as windows of that length (generate_long_video)
        hint += f", or the whole clip in windows of {window:g} s (MagiHuman Long Video, generate --window-seconds)"
    raise PipelineError(f"{where}: {width}x{height}, {seconds:g} s (batch {latent.batch}) needs ~{n / 2**30:.1f} GiB "
                        f"for the DiT activations alone (estimate), but {has}; {hint} (generate small, then "
                        "super-resolve)")


def check_numbers(where: str, **values) -> None:
    """Guidance scales and mixing weights must be finite numbers (NaN/inf would silently give NaN video)."""
    for name, v in values.items():
        try:
            ok = math.isfinite(float(v))
        except (TypeError, ValueError):
            ok = False
        if isinstance(v, bool) or not ok:
            raise PipelineError(f"{where}: {name} must be a finite number, got {v!r}")
