"""Generation stages of daVinci-MagiHuman as plain functions on tensors.

    empty_latents -> [encode_image] -> [encode_reference_audio] -> denoise -> [super_resolve] -> decode
    encode_prompt (text conditioning) feeds denoise and super_resolve.

Each stage is what one ComfyUI node calls. Stages write no files and read none except an image given
as a path to encode_image (models and media come in as objects and tensors), never modify their inputs,
and draw all their randomness from ONE ``torch.Generator`` made from their ``seed`` (or passed in as
``generator``). A ``callback(step, total, x0_preview)`` is called after every sampler step (``step``
counts completed steps, 1..total); it may raise (e.g. ComfyUI's interrupt) and the stage then stops
with its inputs untouched.

Noise order (matches the official ``MagiEvaluator`` draw for draw, so a CUDA generator seeded like the
official run gives the official noise):
- ``denoise``: the initial audio latent (unless the audio is a fixed reference), then the initial video
  latent; the distilled sampler then draws, every step, the video noise and then the audio noise (the
  audio draw happens even for a fixed A2V reference, whose draw the official loop also consumes).
- ``super_resolve``: the video re-noise, then the audio re-noise.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Callable, Optional, Sequence

import torch

from .sampling import (
    AUDIO_GUIDANCE_SCALE,
    DEFAULT_NEGATIVE_PROMPT,
    DEFAULT_SHIFT,
    SR_AUDIO_NOISE_SCALE,
    SR_CFG_TRICK_FRAMES,
    SR_CFG_TRICK_VALUE,
    SR_GUIDANCE_SCALE,
    SR_NOISE_INDEX,
    VIDEO_GUIDANCE_HIGH,
    VIDEO_GUIDANCE_LOW,
    VIDEO_GUIDANCE_SWITCH,
    UniPCSampler,
    cfg_combine,
    distilled_step,
    flow_schedule,
    make_generator,
    randn_like_gen,
    renoise_audio,
    sr_guidance_scales,
    upscale_and_renoise,
    video_guidance_scale,
    zero_snr_sigmas,
)

log = logging.getLogger(__name__)

__all__ = [
    "AVLatent", "TextConditioning", "PipelineError", "FPS", "VIDEO_LATENT_CHANNELS", "AUDIO_LATENT_CHANNELS",
    "SIZE_MULTIPLE", "snap_size", "frame_counts", "empty_latents", "encode_prompt", "encode_image",
    "encode_reference_audio", "denoise", "super_resolve", "decode", "decode_video", "decode_audio",
    "resample_audio", "DISTILLED_STEPS", "BASE_STEPS", "SR_STEPS", "check_fits",
]

FPS = 25
VIDEO_LATENT_CHANNELS = 48
AUDIO_LATENT_CHANNELS = 64
SPATIAL_STRIDE = 16   # Wan2.2 VAE pixels per latent cell
TEMPORAL_STRIDE = 4   # pixel frames per latent frame
SIZE_MULTIPLE = 32    # VAE stride 16 x DiT patch 2
DISTILLED_STEPS = 8
BASE_STEPS = 32
SR_STEPS = 5
DEFAULT_FRAME_RECEPTIVE_FIELD = 11  # 1080p SR local attention: +-11 latent frames
SR_VARIANTS = ("sr_540p", "sr_1080p")
BASE_VARIANTS = ("distill", "base")

Callback = Callable[[int, int, torch.Tensor], None]


class PipelineError(ValueError):
    """A stage was given inputs it cannot work with; the message says what and how to fix it."""


# ============================================================================ containers


@dataclass
class AVLatent:
    """Audio + video latents travelling together between stages (ComfyUI: one LATENT-like object).

    video        [B, 48, T, h, w]  normalised Wan2.2 latent; pixel size (16w, 16h)
    audio        [B, N, 64]        Oobleck latent, one step per video frame (N = num_frames)
    image_latent [B, 48, 1, h, w]  TI2V reference frame (replaces latent frame 0), or None
    image        [H, W, 3] in [0, 1], the TI2V source image (kept so SR can re-encode it at SR size)
    audio_fixed  True when ``audio`` is an encoded reference (A2V): no sampler ever changes it
    stage        "base" (base resolution) or "sr" (output of super_resolve)
    denoised     False for :func:`empty_latents` output (zeros: the sampler draws its own noise)
    info         how the sizes were derived (requested vs snapped, frame counts)
    """

    video: torch.Tensor
    audio: torch.Tensor
    image_latent: Optional[torch.Tensor] = None
    image: Optional[torch.Tensor] = None
    audio_fixed: bool = False
    stage: str = "base"
    denoised: bool = False
    info: dict = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return int(self.video.shape[0])

    @property
    def latent_frames(self) -> int:
        return int(self.video.shape[2])

    @property
    def num_frames(self) -> int:
        """Audio latent steps = nominal video frame count (25 per second)."""
        return int(self.audio.shape[1])

    @property
    def pixel_size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.video.shape[-1]) * SPATIAL_STRIDE, int(self.video.shape[-2]) * SPATIAL_STRIDE

    @property
    def decoded_frames(self) -> int:
        """Frames the video decoders produce: 4(T-1)+1 (can be fewer than num_frames)."""
        return TEMPORAL_STRIDE * (self.latent_frames - 1) + 1

    @property
    def seconds(self) -> float:
        return (self.num_frames - 1) / FPS

    def clone(self) -> "AVLatent":
        c = lambda t: None if t is None else t.clone()  # noqa: E731
        return replace(self, video=self.video.clone(), audio=self.audio.clone(), image_latent=c(self.image_latent),
                       image=c(self.image), info=dict(self.info))

    def validate(self, where: str = "latent") -> None:
        """Shape rules every stage relies on; raises :class:`PipelineError`."""
        v, a = self.video, self.audio
        if v.dim() != 5 or v.shape[1] != VIDEO_LATENT_CHANNELS:
            raise PipelineError(f"{where}: video latent must be [B, {VIDEO_LATENT_CHANNELS}, T, h, w], got "
                                f"{tuple(v.shape)} (is this a MagiHuman latent?)")
        if a.dim() != 3 or a.shape[2] != AUDIO_LATENT_CHANNELS:
            raise PipelineError(f"{where}: audio latent must be [B, N, {AUDIO_LATENT_CHANNELS}], got {tuple(a.shape)}"
                                " (an audio-VAE latent [B, 64, N] needs .transpose(1, 2))")
        if a.shape[0] != v.shape[0]:
            raise PipelineError(f"{where}: batch sizes differ: video {v.shape[0]}, audio {a.shape[0]}")
        if v.shape[-1] % 2 or v.shape[-2] % 2:
            raise PipelineError(f"{where}: video latent h, w must be even (pixel sizes multiples of 32), got "
                                f"{v.shape[-2]}x{v.shape[-1]}")
        want_t = (a.shape[1] - 1) // TEMPORAL_STRIDE + 1
        if v.shape[2] != want_t:
            raise PipelineError(f"{where}: audio has {a.shape[1]} steps, so the video latent needs "
                                f"(N-1)//4+1 = {want_t} frames, but it has {v.shape[2]}; audio and video lengths "
                                "do not match (create both with empty_latents / encode_reference_audio)")
        if self.image_latent is not None:
            il = self.image_latent
            if il.dim() != 5 or il.shape[1] != v.shape[1] or il.shape[-2:] != v.shape[-2:] or il.shape[2] < 1:
                raise PipelineError(f"{where}: image latent {tuple(il.shape)} does not fit the video latent "
                                    f"{tuple(v.shape)}; re-run encode_image on this latent")
        if self.stage not in ("base", "sr"):
            raise PipelineError(f"{where}: stage must be 'base' or 'sr', got {self.stage!r}")


@dataclass
class TextConditioning:
    """T5Gemma embeddings of the prompt (and of the negative prompt for CFG), padded to 640 tokens."""

    embeds: torch.Tensor                      # [1, 640, C] fp32
    lens: list[int]                           # real length(s)
    negative_embeds: Optional[torch.Tensor] = None
    negative_lens: Optional[list[int]] = None
    prompt: str = ""
    negative_prompt: Optional[str] = None

    @property
    def has_negative(self) -> bool:
        return self.negative_embeds is not None


# ============================================================================ geometry


def snap_size(width: int, height: int, *, what: str = "") -> tuple[int, int]:
    """Snap (width, height) DOWN to multiples of 32 (official: ``h // 16 // 2 * 2 * 16``)."""
    for name, v in (("width", width), ("height", height)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or int(v) != v:
            raise PipelineError(f"{what}{name} must be an integer number of pixels, got {v!r}")
        if v < SIZE_MULTIPLE:
            raise PipelineError(f"{what}{name} {int(v)} is too small: the minimum is {SIZE_MULTIPLE} pixels")
    w = int(width) // SIZE_MULTIPLE * SIZE_MULTIPLE
    h = int(height) // SIZE_MULTIPLE * SIZE_MULTIPLE
    return w, h


def frame_counts(seconds: float) -> tuple[int, int]:
    """(num_frames, latent_frames) for a duration: ``25·s + 1`` (fractional seconds are rounded to whole
    1/25 s frames, at least one) and ``(num_frames - 1)//4 + 1``."""
    try:
        s = float(seconds)
    except (TypeError, ValueError):
        raise PipelineError(f"seconds must be a number, got {seconds!r}") from None
    if not math.isfinite(s) or s <= 0:
        raise PipelineError(f"seconds must be > 0, got {seconds!r}")
    if s > 1e9:  # beyond any clip (and beyond float frame arithmetic): refuse before computing sizes
        raise PipelineError(f"seconds {seconds!r} is far too long; the model makes clips of a few seconds")
    num_frames = max(1, math.floor(s * FPS + 0.5)) + 1  # half-up, so 0.5 s -> 13 + 1
    return num_frames, (num_frames - 1) // TEMPORAL_STRIDE + 1


def _check_variant(model, allowed: Sequence[str], stage: str, hint: str) -> Optional[str]:
    variant = getattr(model, "variant", None)
    if variant is not None and variant not in allowed:
        raise PipelineError(f"{stage}: got a '{variant}' DiT, but this stage needs one of {list(allowed)}; {hint}")
    return variant


def _model_device(model) -> torch.device:
    for p in model.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


def _check_model_fits(model, latent: AVLatent, cond: TextConditioning, where: str) -> None:
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


def _available_bytes(device) -> Optional[int]:
    """Memory that can still be allocated on ``device`` (CPU: available RAM; CUDA: free), or None if unknown."""
    from .estimate import device_memory

    try:
        return device_memory(device, free=True)
    except Exception:  # noqa: BLE001 - unknown device kind / no driver: let the allocator decide
        return None


def _check_alloc(nbytes: int, device, what: str) -> None:
    """Refuse a latent that cannot be allocated at all, before trying (clear error instead of an OOM)."""
    have = _available_bytes(device)
    if have is None:
        return
    if nbytes > have:
        raise PipelineError(f"{what} needs {nbytes / 2**30:.1f} GiB for the latent alone, but only "
                            f"{have / 2**30:.1f} GiB is available; lower the size or the seconds")


def check_fits(model, latent: AVLatent, where: str, *, cfg: bool, batch_cfg: bool = True, size=None,
               device=None) -> None:
    """Refuse a run whose DiT activations alone (:mod:`.estimate`; weights excluded, they can be offloaded)
    exceed the memory of ``device`` (default: the model's), BEFORE any noise or activation is allocated.
    ``size``: (width, height) of the run when it differs from the latent's (super-resolution)."""
    from .estimate import device_memory, estimate

    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "hidden_size"):
        return
    width, height = size or latent.pixel_size
    seconds = max(latent.num_frames - 1, 1) / FPS
    device = torch.device(device) if device is not None else _model_device(model)
    try:
        have = device_memory(device)
    except Exception:  # noqa: BLE001 - unknown device kinds: let the allocator decide
        return

    def need(sec: float) -> int:
        st = estimate(config, width, height, sec, cfg=cfg, cfg_batched=batch_cfg).stages[0]
        return latent.batch * (st.activation_bytes + st.latent_bytes)

    try:
        n = need(seconds)
        if n <= have:
            return
        fits = [s for s in (30, 20, 10, 5, 4, 3, 2, 1, 0.5, 0.2) if s < seconds and need(s) <= have]
    except Exception as e:  # noqa: BLE001 - a guard only: an estimate that cannot be made never blocks a run
        log.debug("MagiHuman: no memory estimate for %s (%s)", where, e)
        return
    hint = (f"at {width}x{height} at most ~{fits[0]:g} s fits" if fits
            else f"even 0.2 s does not fit at {width}x{height}: lower the size")
    raise PipelineError(f"{where}: {width}x{height}, {seconds:g} s (batch {latent.batch}) needs ~{n / 2**30:.1f} GiB "
                        f"for the DiT activations alone (estimate), but the {device.type} has {have / 2**30:.1f} GiB; "
                        f"{hint} (generate small, then super-resolve)")


def _check_numbers(where: str, **values) -> None:
    """Guidance scales and mixing weights must be finite numbers (NaN/inf would silently give NaN video)."""
    for name, v in values.items():
        try:
            ok = math.isfinite(float(v))
        except (TypeError, ValueError):
            ok = False
        if isinstance(v, bool) or not ok:
            raise PipelineError(f"{where}: {name} must be a finite number, got {v!r}")


# ============================================================================ stages


def empty_latents(width: int, height: int, seconds: float, *, batch: int = 1, device="cpu") -> AVLatent:
    """Zero latents for a clip of ``seconds`` at ``width x height`` (snapped down to multiples of 32).

    The values are zeros, ComfyUI-style: :func:`denoise` draws the starting noise from its own seed and
    only uses the shapes. ``seconds`` may be fractional (rounded to whole 1/25 s frames; the official
    CLI takes whole seconds): num_frames = 25·s + 1, T = (num_frames - 1)//4 + 1, audio N = num_frames.
    The snap is logged and reported in ``latent.info``.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise PipelineError(f"batch must be a positive integer, got {batch!r}")
    w, h = snap_size(width, height)
    num_frames, latent_frames = frame_counts(seconds)
    info = {"requested_size": (int(width), int(height)), "size": (w, h), "snapped": (w, h) != (width, height),
            "seconds": float(seconds), "num_frames": num_frames, "latent_frames": latent_frames,
            "decoded_frames": TEMPORAL_STRIDE * (latent_frames - 1) + 1}
    if info["snapped"]:
        log.warning("MagiHuman: size %dx%d snapped down to %dx%d (multiples of %d)", width, height, w, h,
                    SIZE_MULTIPLE)
    log.info("MagiHuman latents: %dx%d, %s s -> %d frames, %d latent frames", w, h, seconds, num_frames,
             latent_frames)
    _check_alloc(4 * batch * (VIDEO_LATENT_CHANNELS * latent_frames * (h // SPATIAL_STRIDE) * (w // SPATIAL_STRIDE)
                              + AUDIO_LATENT_CHANNELS * num_frames), device,
                 f"empty_latents({w}x{h}, {seconds} s{f', batch {batch}' if batch > 1 else ''})")
    video = torch.zeros(batch, VIDEO_LATENT_CHANNELS, latent_frames, h // SPATIAL_STRIDE, w // SPATIAL_STRIDE,
                        dtype=torch.float32, device=device)
    audio = torch.zeros(batch, num_frames, AUDIO_LATENT_CHANNELS, dtype=torch.float32, device=device)
    return AVLatent(video=video, audio=audio, info=info)


def encode_prompt(text_encoder, prompt: str, negative_prompt: Optional[str] = DEFAULT_NEGATIVE_PROMPT,
                  *, max_length: int = 640) -> TextConditioning:
    """Prompt (+ negative prompt for CFG; ``None`` skips it, as the distilled model needs none) ->
    :class:`TextConditioning`. Each text is encoded alone, exactly as the official pipeline does."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise PipelineError("the prompt is empty: describe the video (and what is said) in the prompt")
    if negative_prompt is not None and (not isinstance(negative_prompt, str) or not negative_prompt.strip()):
        raise PipelineError("the negative prompt is empty: pass None to skip it (no CFG) or a text; the official "
                            "one is magihuman.sampling.DEFAULT_NEGATIVE_PROMPT")
    embeds, lens = text_encoder.encode([prompt], max_length=max_length)
    cond = TextConditioning(embeds=embeds.float(), lens=[int(lens[0])], prompt=prompt)
    if negative_prompt is not None:
        neg, neg_lens = text_encoder.encode([negative_prompt], max_length=max_length)
        cond.negative_embeds, cond.negative_lens = neg.float(), [int(neg_lens[0])]
        cond.negative_prompt = negative_prompt
    return cond


def _image_hw3(image) -> torch.Tensor:
    """A ComfyUI IMAGE [1, H, W, 3] / [H, W, 3] tensor, numpy array, PIL image or path -> [H, W, 3] in [0, 1]."""
    from .media import load_image

    if isinstance(image, torch.Tensor) and image.dim() == 4:
        if image.shape[0] != 1:
            log.warning("MagiHuman: %d reference images given; using the first", image.shape[0])
        image = image[0]
    arr = load_image(image.detach().cpu().float().numpy() if isinstance(image, torch.Tensor) else image)
    return torch.from_numpy(arr).float()


def _encode_image_at(video_vae, image_hw3: torch.Tensor, width: int, height: int, device) -> torch.Tensor:
    from .media import prepare_image

    pixels = prepare_image(image_hw3.numpy(), width, height)  # [1, 3, 1, H, W] in [-1, 1]
    with torch.no_grad():
        lat = video_vae.encode(pixels.to(device))
    return lat.float()[:, :, :1]  # [1, 48, 1, h, w]


def _vae_device(vae) -> torch.device:
    try:
        return _model_device(vae)
    except Exception:  # noqa: BLE001 - any object with an encode()
        return torch.device("cpu")


def encode_image(video_vae, image, latent: AVLatent) -> AVLatent:
    """TI2V: centre-crop and resize ``image`` to the latent's pixel size, encode it as ONE latent frame
    with the Wan2.2 VAE and attach it. Samplers put it into latent frame 0 before every step and at the end."""
    latent.validate("encode_image")
    if latent.stage != "base":
        raise PipelineError("encode_image: attach the image to the base latent (before denoise); super_resolve "
                            "re-encodes it at the SR size itself")
    img = _image_hw3(image)
    w, h = latent.pixel_size
    lat = _encode_image_at(video_vae, img, w, h, _vae_device(video_vae))
    if lat.shape[-2:] != latent.video.shape[-2:]:
        raise PipelineError(f"encode_image: the video VAE gave a {tuple(lat.shape[-2:])} latent for {w}x{h}; "
                            f"expected {tuple(latent.video.shape[-2:])} (is it the Wan2.2 VAE?)")
    out = latent.clone()
    out.image_latent = lat.to(latent.video.device).expand(latent.batch, -1, -1, -1, -1).contiguous()
    out.image = img
    return out


def encode_reference_audio(audio_vae, waveform: torch.Tensor, sample_rate: int, latent: AVLatent,
                           seconds: Optional[float] = None) -> AVLatent:
    """A2V: encode a reference waveform ``[C, S]`` (any rate) as the audio latent; it stays fixed in every
    sampler and SETS the length: num_frames = N, T = (N - 1)//4 + 1 (the video latent is resized).

    ``seconds=None`` trims the audio to the latent's duration (as the official pipeline trims to its
    ``--seconds``); a shorter reference makes a shorter clip. (The official distilled loop updates the
    reference audio anyway; we keep it fixed, as its base loop does.)
    """
    from . import media

    latent.validate("encode_reference_audio")
    if latent.stage != "base" or latent.denoised:
        raise PipelineError("encode_reference_audio: attach the reference audio to an empty base latent "
                            "(before denoise)")
    if seconds is None:
        seconds = latent.info.get("seconds", latent.seconds)
    wave = media.prepare_reference_audio(waveform, int(sample_rate), seconds=seconds)  # [2, S'] at 51.2 kHz
    if wave.shape[-1] < 2048:
        raise PipelineError(f"encode_reference_audio: the reference audio is {wave.shape[-1]} samples at 51.2 kHz "
                            f"({wave.shape[-1] / 51200 * 1000:.1f} ms); it must last at least 0.04 s (2048 samples, "
                            "one latent step): use a longer clip")
    with torch.no_grad():
        z = media.encode_reference_audio(audio_vae, wave.to(_vae_device(audio_vae)))  # [1, 64, N]
    audio = z.float().transpose(1, 2).to(latent.video.device)  # [1, N, 64]
    n = audio.shape[1]
    t = (n - 1) // TEMPORAL_STRIDE + 1
    b, c, _, hh, ww = latent.video.shape
    out = latent.clone()
    out.video = torch.zeros(b, c, t, hh, ww, dtype=latent.video.dtype, device=latent.video.device)
    out.audio = audio.expand(b, -1, -1).contiguous()
    out.audio_fixed = True
    out.info.update(num_frames=n, latent_frames=t, decoded_frames=TEMPORAL_STRIDE * (t - 1) + 1,
                    seconds=(n - 1) / FPS, reference_audio_seconds=wave.shape[-1] / media.REFERENCE_SAMPLE_RATE)
    log.info("MagiHuman A2V: reference audio gives %d audio steps -> %d latent frames", n, t)
    return out


# ============================================================================ sampling


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


def _resolve_sampler(sampler: str, steps: Optional[int], variant: Optional[str]) -> tuple[str, int]:
    if sampler == "auto":
        sampler = "distilled" if variant == "distill" else "unipc"
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
    ``video_guidance_low``; audio ``audio_guidance``. ``"auto"`` picks by ``model.variant``.
    ``batch_cfg`` runs cond and uncond as one batch (same result as two passes, within fp rounding).
    The latent's own values are not used (only its shapes, the A2V audio and the TI2V image latent).
    """
    variant = _check_variant(model, BASE_VARIANTS, "denoise",
                             "super-resolution models go into super_resolve, after a base denoise")
    latent.validate("denoise")
    if latent.stage != "base":
        raise PipelineError("denoise: this latent is already super-resolved ('sr' stage); denoise takes a base "
                            "latent from empty_latents")
    sampler, steps = _resolve_sampler(sampler, steps, variant)
    _check_numbers("denoise", video_guidance=video_guidance, video_guidance_low=video_guidance_low,
                   guidance_switch_t=guidance_switch_t, audio_guidance=audio_guidance, shift=shift)
    cfg = (sampler == "unipc") if cfg is None else bool(cfg)
    if cfg and not conditioning.has_negative:
        raise PipelineError("denoise: CFG needs a negative prompt: encode_prompt(..., negative_prompt=...) "
                            "or run with cfg=False")
    _check_model_fits(model, latent, conditioning, "denoise")
    check_fits(model, latent, "denoise", cfg=cfg, batch_cfg=batch_cfg)

    device = _model_device(model)
    gen = generator if generator is not None else make_generator(seed)
    fixed = latent.audio_fixed
    audio = latent.audio.to(device=device, dtype=torch.float32).clone()
    if not fixed:
        audio = randn_like_gen(audio, gen)
    video = randn_like_gen(latent.video.to(device=device, dtype=torch.float32), gen)
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
            video = distilled_step(v_vel, video, sigmas[i], sigmas[i + 1], randn_like_gen(video, gen))
            audio_noise = randn_like_gen(audio, gen)  # drawn even when fixed: keeps the official noise stream
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
    _check_variant(sr_model, SR_VARIANTS, "super_resolve",
                   "load the 540p_sr or 1080p_sr DiT for super-resolution (base/distill go into denoise)")
    latent.validate("super_resolve")
    if latent.stage != "base":
        raise PipelineError("super_resolve: this latent is already super-resolved; feed it the base latent")
    if not latent.denoised:
        raise PipelineError("super_resolve: this latent has not been denoised yet: run denoise first")
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise PipelineError(f"super_resolve: steps must be a positive integer, got {steps!r}")
    _check_numbers("super_resolve", guidance=guidance, audio_noise_scale=audio_noise_scale, shift=shift)
    if not 0.0 <= float(audio_noise_scale) <= 1.0:
        raise PipelineError(f"super_resolve: audio_noise_scale must be in 0..1 (official 0.7), got {audio_noise_scale}")
    sigma_table = zero_snr_sigmas()
    if not 0 <= int(noise_index) < len(sigma_table):
        raise PipelineError(f"super_resolve: noise_index must be in 0..{len(sigma_table) - 1}, got {noise_index}")
    if cfg and not conditioning.has_negative:
        raise PipelineError("super_resolve: CFG needs a negative prompt (encode_prompt with negative_prompt) or "
                            "cfg=False (the official SR runs without CFG)")
    _check_model_fits(sr_model, latent, conditioning, "super_resolve")
    sr_w, sr_h = snap_size(width, height, what="super_resolve: ")
    if (sr_w, sr_h) != (width, height):
        log.warning("MagiHuman SR: size %dx%d snapped down to %dx%d", width, height, sr_w, sr_h)
    steps = int(steps)
    device = _model_device(sr_model)
    check_fits(sr_model, latent, "super_resolve", cfg=bool(cfg), batch_cfg=batch_cfg, size=(sr_w, sr_h))
    _check_alloc(4 * latent.batch * VIDEO_LATENT_CHANNELS * latent.latent_frames * (sr_h // SPATIAL_STRIDE)
                 * (sr_w // SPATIAL_STRIDE) * 3, device, f"super_resolve to {sr_w}x{sr_h}")  # x3: input, noise, output
    gen = generator if generator is not None else make_generator(seed)
    frf = DEFAULT_FRAME_RECEPTIVE_FIELD if local_attention is None else int(local_attention)

    image_latent = None
    src_image = None
    if latent.image_latent is not None or image is not None:
        src_image = _image_hw3(image) if image is not None else latent.image
        if src_image is None or video_vae is None:
            raise PipelineError("super_resolve: this is a TI2V latent: pass video_vae (the Wan2.2 VAE) so the "
                                "reference image can be re-encoded at the SR size")
        image_latent = _encode_image_at(video_vae, src_image, sr_w, sr_h, _vae_device(video_vae)).to(device)

    base_video = latent.video.to(device=device, dtype=torch.float32)
    base_audio = latent.audio.to(device=device, dtype=torch.float32)
    t_lat = base_video.shape[2]
    size = (t_lat, sr_h // SPATIAL_STRIDE, sr_w // SPATIAL_STRIDE)
    if int(noise_index) != 0:
        up_shape = base_video.shape[:2] + size
        noise = torch.randn(up_shape, generator=gen, device=gen.device, dtype=torch.float32).to(device)
        video = upscale_and_renoise(base_video, size, noise, sigma_table[int(noise_index)])
    else:  # official: noise_value 0 means no re-noising (and no draw)
        video = torch.nn.functional.interpolate(base_video, size=size, mode="trilinear", align_corners=True)
    audio_in = renoise_audio(base_audio, randn_like_gen(base_audio, gen), audio_noise_scale)
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


# ============================================================================ decoding


def _is_wan_vae(decoder) -> bool:
    from .models.video_vae import WanVAE

    return isinstance(decoder, WanVAE)


@torch.no_grad()
def decode_video(video_decoder, latent: AVLatent, *, batch_index: int = 0, output_offload: bool = False,
                 tile=None) -> torch.Tensor:
    """Video latent -> frames ``[F, H, W, 3]`` float in [0, 1] (F = 4(T-1)+1), with the Turbo VAE
    decoder (fast, the official default) or the full Wan2.2 VAE (``tile`` = spatial tiles, latent units)."""
    latent.validate("decode")
    if not 0 <= batch_index < latent.batch:
        raise PipelineError(f"decode: batch_index {batch_index} is outside the batch of {latent.batch}")
    z = latent.video[batch_index:batch_index + 1]
    if _is_wan_vae(video_decoder):
        video = video_decoder.decode(z.to(_vae_device(video_decoder)), tile=tile)
    else:
        video = video_decoder.decode(z.to(_vae_device(video_decoder)), output_offload=output_offload)
    frames = video.float()[0].add(1).mul(0.5).clamp(0, 1)  # [3, F, H, W]
    return frames.permute(1, 2, 3, 0).contiguous().cpu()


@torch.no_grad()
def decode_audio(audio_vae, latent: AVLatent, *, batch_index: int = 0) -> tuple[torch.Tensor, int]:
    """Audio latent -> (waveform ``[2, 2048·N]`` float, 51 200 Hz: the VAE's true rate)."""
    latent.validate("decode")
    a = latent.audio[batch_index:batch_index + 1].transpose(1, 2)  # [1, 64, N]
    wave = audio_vae.decode(a.to(_vae_device(audio_vae)))[0].float().cpu()
    return wave, int(getattr(audio_vae, "sample_rate", 51200))


def decode(video_decoder, audio_vae, latent: AVLatent, *, output_offload: bool = False, batch_index: int = 0,
           tile=None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(frames ``[F, H, W, 3]`` in [0, 1], waveform ``[2, S]``, sample_rate 51 200) of one batch sample."""
    frames = decode_video(video_decoder, latent, batch_index=batch_index, output_offload=output_offload, tile=tile)
    wave, sr = decode_audio(audio_vae, latent, batch_index=batch_index)
    return frames, wave, sr


def resample_audio(waveform: torch.Tensor, sample_rate: int, new_rate: int = 44100) -> torch.Tensor:
    """Resample a decoded waveform to a standard rate (44.1 kHz as the official output, or 48 kHz)."""
    from .media import resample

    return resample(waveform, int(sample_rate), int(new_rate))
