"""The containers stages pass to each other, and the empty latents every generation starts from."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Optional

import torch

from ..errors import PipelineError
from ..geometry import (AUDIO_LATENT_CHANNELS, FPS, SIZE_MULTIPLE, SPATIAL_STRIDE, VIDEO_LATENT_CHANNELS,
                        decoded_frames, frame_counts, latent_frames_for, snap_size)
from .guards import check_alloc

log = logging.getLogger("magihuman.pipeline")

__all__ = ["AVLatent", "TextConditioning", "empty_latents"]


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
        return decoded_frames(self.latent_frames)

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
        want_t = latent_frames_for(a.shape[1])
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


def empty_latents(width: int, height: int, seconds: float, *, batch: int = 1, device="cpu") -> AVLatent:
    """Zero latents for a clip of ``seconds`` at ``width x height`` (snapped down to multiples of 32).

    The values are zeros, ComfyUI-style: :func:`denoise` draws the starting noise from its own seed and
    only uses the shapes. ``seconds`` may be fractional (rounded to whole 1/25 s frames; the official
    CLI takes whole seconds): the frame rule is :func:`magihuman.geometry.frame_counts`.
    The snap is logged and reported in ``latent.info``.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise PipelineError(f"batch must be a positive integer, got {batch!r}")
    w, h = snap_size(width, height)
    num_frames, latent_frames = frame_counts(seconds)
    info = {"requested_size": (int(width), int(height)), "size": (w, h), "snapped": (w, h) != (width, height),
            "seconds": float(seconds), "num_frames": num_frames, "latent_frames": latent_frames,
            "decoded_frames": decoded_frames(latent_frames)}
    if info["snapped"]:
        log.warning("MagiHuman: size %dx%d snapped down to %dx%d (multiples of %d)", width, height, w, h,
                    SIZE_MULTIPLE)
    log.info("MagiHuman latents: %dx%d, %s s -> %d video frames (%d latent), %d audio steps", w, h, seconds,
             info["decoded_frames"], latent_frames, num_frames)
    check_alloc(4 * batch * (VIDEO_LATENT_CHANNELS * latent_frames * (h // SPATIAL_STRIDE) * (w // SPATIAL_STRIDE)
                              + AUDIO_LATENT_CHANNELS * num_frames), device,
                 f"empty_latents({w}x{h}, {seconds} s{f', batch {batch}' if batch > 1 else ''})")
    video = torch.zeros(batch, VIDEO_LATENT_CHANNELS, latent_frames, h // SPATIAL_STRIDE, w // SPATIAL_STRIDE,
                        dtype=torch.float32, device=device)
    audio = torch.zeros(batch, num_frames, AUDIO_LATENT_CHANNELS, dtype=torch.float32, device=device)
    return AVLatent(video=video, audio=audio, info=info)
