"""Denoising stages: base-resolution joint denoising (distilled or UniPC with CFG) and latent super-resolution."""

from __future__ import annotations

import logging
from typing import Callable, Optional

import torch

from ..errors import PipelineError
from ..geometry import (BASE_STEPS, DEFAULT_FRAME_RECEPTIVE_FIELD, DISTILLED_STEPS, SPATIAL_STRIDE, SR_STEPS,
                        VIDEO_LATENT_CHANNELS, snap_size)
from ..sampling import (AUDIO_GUIDANCE_SCALE, DEFAULT_SHIFT, SR_AUDIO_NOISE_SCALE, SR_CFG_TRICK_FRAMES,
                        SR_CFG_TRICK_VALUE, SR_GUIDANCE_SCALE, SR_NOISE_INDEX, VIDEO_GUIDANCE_HIGH, VIDEO_GUIDANCE_LOW,
                        VIDEO_GUIDANCE_SWITCH, UniPCSampler, cfg_combine, distilled_step, flow_schedule, make_generator,
                        randn_like_gen, renoise_audio, sr_guidance_scales, upscale_and_renoise, video_guidance_scale,
                        zero_snr_sigmas)
from .conditioning import encode_image_at, image_hw3, vae_device
from .guards import (BASE_VARIANTS, SR_VARIANTS, check_alloc, check_fits, check_model_fits, check_numbers,
                     check_variant, model_device)
from .latents import AVLatent, TextConditioning

log = logging.getLogger("magihuman.pipeline")

__all__ = ["denoise", "super_resolve", "Callback"]

Callback = Callable[[int, int, torch.Tensor], None]


def _forward(model, video, audio, embeds, lens, coords: str, frf: int):
    return model(video, audio, embeds, lens, coords=coords, frame_receptive_field=frf)


def _guided_velocity(model, video, audio, cond: TextConditioning, *, cfg: bool, batch_cfg: bool, coords: str,
                     frf: int, video_scale, audio_scale):
    """Velocity for video and audio: one conditional pass, or CFG (``uncond + s·(cond - uncond)``)
    with cond and uncond as two passes or as one batch of 2B."""
    b = video.shape[0]
    pos = cond.embeds.to(video.device).expand(b, -1, -1)
    pos_lens = cond.lens * b
    if not cfg:
        return _forward(model, video, audio, pos, pos_lens, coords, frf)
    neg = cond.negative_embeds.to(video.device).expand(b, -1, -1)
    neg_lens = cond.negative_lens * b
    if batch_cfg:
        length = max(pos.shape[1], neg.shape[1])
        pad = lambda e: torch.nn.functional.pad(e, (0, 0, 0, length - e.shape[1]))  # noqa: E731
        v, a = _forward(model, torch.cat([video, video]), torch.cat([audio, audio]),
                        torch.cat([pad(pos), pad(neg)]), pos_lens + neg_lens, coords, frf)
        v_c, v_u, a_c, a_u = v[:b], v[b:], a[:b], a[b:]
    else:
        v_c, a_c = _forward(model, video, audio, pos, pos_lens, coords, frf)
        v_u, a_u = _forward(model, video, audio, neg, neg_lens, coords, frf)
    return cfg_combine(v_c, v_u, video_scale), cfg_combine(a_c, a_u, audio_scale)


def _sampler_for(sampler: str, variant: Optional[str]) -> str:
    """"auto": the distilled sampler for the distilled model, UniPC otherwise."""
    return ("distilled" if variant == "distill" else "unipc") if sampler == "auto" else sampler


def uses_cfg(variant: Optional[str], sampler: str = "auto", cfg: Optional[bool] = None) -> bool:
    """Whether :func:`denoise` samples with CFG: ``cfg`` when given, else with UniPC (the base model's sampler)."""
    return (_sampler_for(sampler, variant) == "unipc") if cfg is None else bool(cfg)


def _resolve_sampler(sampler: str, steps: Optional[int], variant: Optional[str]) -> tuple[str, int]:
    sampler = _sampler_for(sampler, variant)
    if sampler not in ("distilled", "unipc"):
        raise PipelineError(f"sampler must be 'distilled', 'unipc' or 'auto', got {sampler!r}")
    if steps is None:
        steps = DISTILLED_STEPS if sampler == "distilled" else BASE_STEPS
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise PipelineError(f"steps must be a positive integer, got {steps!r}")
    if variant == "distill" and sampler == "unipc":
        log.warning("MagiHuman: the distilled DiT is meant for the 8-step 'distilled' sampler, not UniPC")
    if variant == "base" and sampler == "distilled":
        log.warning("MagiHuman: the base DiT is meant for the 32-step 'unipc' sampler with CFG")
    return sampler, int(steps)


def _shared(model, noise: torch.Tensor) -> torch.Tensor:
    """Rank 0's ``noise`` on every rank when ``model`` runs sequence-parallel (under torchrun every rank samples):
    the ranks' generators need not agree (another GPU model, torch build or device draws other numbers), and
    ranks stepping on different noise would feed the split DiT inconsistent halves of one latent."""
    sp = getattr(model, "sequence_parallel", None)
    return noise if sp is None else sp.broadcast_from_lead(noise)


def _noise(model, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return _shared(model, randn_like_gen(x, gen))


@torch.no_grad()
def denoise(model, latent: AVLatent, conditioning: TextConditioning, *, sampler: str = "auto",
            steps: Optional[int] = None, seed: int = 0, shift: float = DEFAULT_SHIFT,
            video_guidance: float = VIDEO_GUIDANCE_HIGH, video_guidance_low: float = VIDEO_GUIDANCE_LOW,
            guidance_switch_t: int = VIDEO_GUIDANCE_SWITCH, audio_guidance: float = AUDIO_GUIDANCE_SCALE,
            cfg: Optional[bool] = None, batch_cfg: bool = True, callback: Optional[Callback] = None,
            generator: Optional[torch.Generator] = None) -> AVLatent:
    """Base-resolution joint denoising of video (and audio unless it is a fixed A2V reference).

    ``sampler="distilled"``: the 8-step re-noising step of the distilled model (``x0 = x - σv`` then
    ``σ'ε + (1-σ')x0``), no CFG by default. ``sampler="unipc"``: UniPC bh2 (one sampler for video, one
    for audio) with CFG by default: video scale ``video_guidance`` while t > ``guidance_switch_t`` else
    ``video_guidance_low``; audio ``audio_guidance``. ``"auto"`` picks by the model's variant
    (a LoRA extracted from it to another variant counts).
    ``batch_cfg`` runs cond and uncond as one batch (same result as two passes, within fp rounding).
    The latent's own values are not used (only its shapes, the A2V audio and the TI2V image latent).
    """
    variant = check_variant(model, BASE_VARIANTS, "denoise",
                             "super-resolution models go into super_resolve, after a base denoise")
    latent.validate("denoise")
    if latent.stage != "base":
        raise PipelineError("denoise: this latent is already super-resolved ('sr' stage); denoise takes a base "
                            "latent from empty_latents")
    sampler, steps = _resolve_sampler(sampler, steps, variant)
    check_numbers("denoise", video_guidance=video_guidance, video_guidance_low=video_guidance_low,
                   guidance_switch_t=guidance_switch_t, audio_guidance=audio_guidance, shift=shift)
    cfg = uses_cfg(variant, sampler, cfg)
    if cfg and not conditioning.has_negative:
        raise PipelineError("denoise: CFG needs a negative prompt: encode_prompt(..., negative_prompt=...) "
                            "or run with cfg=False")
    check_model_fits(model, latent, conditioning, "denoise")
    check_fits(model, latent, "denoise", cfg=cfg, batch_cfg=batch_cfg)

    device = model_device(model)
    gen = generator if generator is not None else make_generator(seed)
    fixed = latent.audio_fixed
    audio = latent.audio.to(device=device, dtype=torch.float32).clone()
    if not fixed:
        audio = _noise(model, audio, gen)
    video = _noise(model, latent.video.to(device=device, dtype=torch.float32), gen)
    image_latent = None if latent.image_latent is None else latent.image_latent.to(device=device,
                                                                                  dtype=torch.float32)
    timesteps, sigmas = flow_schedule(steps, shift)
    if sampler == "unipc":
        video_sampler, audio_sampler = UniPCSampler(steps, shift), UniPCSampler(steps, shift)

    for i, t in enumerate(timesteps):
        if image_latent is not None:
            video[:, :, :1] = image_latent[:, :, :1]
        v_scale = video_guidance_scale(t, video_guidance, video_guidance_low, guidance_switch_t)
        v_vel, a_vel = _guided_velocity(model, video, audio, conditioning, cfg=cfg, batch_cfg=batch_cfg,
                                        coords="v2", frf=DEFAULT_FRAME_RECEPTIVE_FIELD,
                                        video_scale=v_scale, audio_scale=audio_guidance)
        x0_preview = video - sigmas[i] * v_vel
        if sampler == "distilled":
            video = distilled_step(v_vel, video, sigmas[i], sigmas[i + 1], _noise(model, video, gen))
            audio_noise = _noise(model, audio, gen)  # drawn even when fixed: keeps the official noise stream
            if not fixed:
                audio = distilled_step(a_vel, audio, sigmas[i], sigmas[i + 1], audio_noise)
        else:
            video = video_sampler.step(v_vel, t, video)
            if not fixed:
                audio = audio_sampler.step(a_vel, t, audio)
        if callback is not None:
            callback(i + 1, steps, x0_preview)
    if image_latent is not None:
        video[:, :, :1] = image_latent[:, :, :1]

    out = latent.clone()
    out.video = video.to(latent.video.device)
    out.audio = audio.to(latent.audio.device) if not fixed else latent.audio.clone()
    out.denoised = True
    out.info.update(sampler=sampler, steps=steps, cfg=cfg, seed=None if generator is not None else int(seed))
    return out


@torch.no_grad()
def super_resolve(sr_model, latent: AVLatent, conditioning: TextConditioning, *, width: int, height: int,
                  seed: int = 0, steps: int = SR_STEPS, shift: float = DEFAULT_SHIFT,
                  noise_index: int = SR_NOISE_INDEX, audio_noise_scale: float = SR_AUDIO_NOISE_SCALE,
                  cfg: bool = False, guidance: float = SR_GUIDANCE_SCALE, use_cfg_trick: bool = True,
                  trick_frames: int = SR_CFG_TRICK_FRAMES, trick_value: float = SR_CFG_TRICK_VALUE,
                  batch_cfg: bool = True, video_vae=None, image=None, local_attention: Optional[int] = None,
                  callback: Optional[Callback] = None, generator: Optional[torch.Generator] = None) -> AVLatent:
    """Latent super-resolution of a denoised base latent (official SR stage):

    1. snap (width, height) down to multiples of 32; re-encode the TI2V image at that size;
    2. trilinear (align_corners) upsample of the video latent, re-noised at ``zero_snr_sigmas()[noise_index]``;
    3. the SR DiT sees ``audio_noise_scale·ε + (1 - audio_noise_scale)·a`` at every step (never updated);
    4. 5 UniPC steps on the video, coordinates "v1", optional CFG (``guidance``; the first
       ``trick_frames`` latent frames capped at ``trick_value``); local attention ±``local_attention``
       latent frames in the 1080p model's local layers (None = 11; -1 = off);
    5. the output audio is the clean base audio.
    """
    check_variant(sr_model, SR_VARIANTS, "super_resolve",
                   "load the 540p_sr or 1080p_sr DiT for super-resolution (base/distill go into denoise)")
    latent.validate("super_resolve")
    if latent.stage != "base":
        raise PipelineError("super_resolve: this latent is already super-resolved; feed it the base latent")
    if not latent.denoised:
        raise PipelineError("super_resolve: this latent has not been denoised yet: run denoise first")
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise PipelineError(f"super_resolve: steps must be a positive integer, got {steps!r}")
    check_numbers("super_resolve", guidance=guidance, audio_noise_scale=audio_noise_scale, shift=shift)
    if not 0.0 <= float(audio_noise_scale) <= 1.0:
        raise PipelineError(f"super_resolve: audio_noise_scale must be in 0..1 (official 0.7), got {audio_noise_scale}")
    sigma_table = zero_snr_sigmas()
    if not 0 <= int(noise_index) < len(sigma_table):
        raise PipelineError(f"super_resolve: noise_index must be in 0..{len(sigma_table) - 1}, got {noise_index}")
    if cfg and not conditioning.has_negative:
        raise PipelineError("super_resolve: CFG needs a negative prompt (encode_prompt with negative_prompt) or "
                            "cfg=False (the official SR runs without CFG)")
    check_model_fits(sr_model, latent, conditioning, "super_resolve")
    sr_w, sr_h = snap_size(width, height, what="super_resolve: ")
    if (sr_w, sr_h) != (width, height):
        log.warning("MagiHuman SR: size %dx%d snapped down to %dx%d", width, height, sr_w, sr_h)
    steps = int(steps)
    device = model_device(sr_model)
    check_fits(sr_model, latent, "super_resolve", cfg=bool(cfg), batch_cfg=batch_cfg, size=(sr_w, sr_h))
    check_alloc(4 * latent.batch * VIDEO_LATENT_CHANNELS * latent.latent_frames * (sr_h // SPATIAL_STRIDE)
                 * (sr_w // SPATIAL_STRIDE) * 3, device, f"super_resolve to {sr_w}x{sr_h}")  # x3: input, noise, output
    gen = generator if generator is not None else make_generator(seed)
    frf = DEFAULT_FRAME_RECEPTIVE_FIELD if local_attention is None else int(local_attention)

    image_latent = None
    src_image = None
    if latent.image_latent is not None or image is not None:
        src_image = image_hw3(image) if image is not None else latent.image
        if src_image is None or video_vae is None:
            raise PipelineError("super_resolve: this is a TI2V latent: pass video_vae (the Wan2.2 VAE) so the "
                                "reference image can be re-encoded at the SR size")
        image_latent = encode_image_at(video_vae, src_image, sr_w, sr_h, vae_device(video_vae)).to(device)

    base_video = latent.video.to(device=device, dtype=torch.float32)
    base_audio = latent.audio.to(device=device, dtype=torch.float32)
    t_lat = base_video.shape[2]
    size = (t_lat, sr_h // SPATIAL_STRIDE, sr_w // SPATIAL_STRIDE)
    if int(noise_index) != 0:
        up_shape = base_video.shape[:2] + size
        noise = _shared(sr_model, torch.randn(up_shape, generator=gen, device=gen.device, dtype=torch.float32)
                        .to(device))
        video = upscale_and_renoise(base_video, size, noise, sigma_table[int(noise_index)])
    else:  # official: noise_value 0 means no re-noising (and no draw)
        video = torch.nn.functional.interpolate(base_video, size=size, mode="trilinear", align_corners=True)
    audio_in = renoise_audio(base_audio, _noise(sr_model, base_audio, gen), audio_noise_scale)
    if image_latent is not None:
        image_latent = image_latent.expand(video.shape[0], -1, -1, -1, -1)

    v_scale = sr_guidance_scales(t_lat, guidance, trick_frames, trick_value, use_cfg_trick, device=device) \
        if cfg else 1.0
    timesteps, sigmas = flow_schedule(steps, shift)
    video_sampler = UniPCSampler(steps, shift)
    for i, t in enumerate(timesteps):
        if image_latent is not None:
            video[:, :, :1] = image_latent[:, :, :1]
        v_vel, _ = _guided_velocity(sr_model, video, audio_in, conditioning, cfg=cfg, batch_cfg=batch_cfg,
                                    coords="v1", frf=frf, video_scale=v_scale, audio_scale=1.0)
        x0_preview = video - sigmas[i] * v_vel
        video = video_sampler.step(v_vel, t, video)
        if callback is not None:
            callback(i + 1, steps, x0_preview)
    if image_latent is not None:
        video[:, :, :1] = image_latent[:, :, :1]

    out = latent.clone()
    out.video = video.to(latent.video.device)
    out.audio = latent.audio.clone()
    out.stage = "sr"
    out.image_latent = None if image_latent is None else image_latent.to(latent.video.device).contiguous()
    if src_image is not None:
        out.image = src_image
    out.info.update(sr_size=(sr_w, sr_h), sr_steps=steps, sr_cfg=bool(cfg), sr_noise_index=int(noise_index))
    return out
