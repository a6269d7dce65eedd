"""Decoding stages: video latent -> frames (Turbo VAE or Wan2.2 VAE), audio latent -> waveform (Oobleck)."""

from __future__ import annotations

import torch

from .. import media
from ..errors import PipelineError
from ..geometry import AUDIO_SAMPLE_RATE
from ..models.video_vae import WanVAE
from .conditioning import vae_device
from .latents import AVLatent

__all__ = ["decode_video", "decode_audio", "decode", "resample_audio"]


@torch.no_grad()
def decode_video(video_decoder, latent: AVLatent, *, batch_index: int = 0, output_offload: bool = False,
                 tile=None) -> torch.Tensor:
    """Video latent -> frames ``[F, H, W, 3]`` float in [0, 1] (F = 4(T-1)+1), with the Turbo VAE
    decoder (fast, the official default) or the full Wan2.2 VAE (``tile`` = spatial tiles, latent units)."""
    latent.validate("decode")
    if not 0 <= batch_index < latent.batch:
        raise PipelineError(f"decode: batch_index {batch_index} is outside the batch of {latent.batch}")
    z = latent.video[batch_index:batch_index + 1]
    if isinstance(video_decoder, WanVAE):
        video = video_decoder.decode(z.to(vae_device(video_decoder)), tile=tile)
    else:
        video = video_decoder.decode(z.to(vae_device(video_decoder)), output_offload=output_offload)
    frames = video.float()[0].add(1).mul(0.5).clamp(0, 1)  # [3, F, H, W]
    return frames.permute(1, 2, 3, 0).contiguous().cpu()


@torch.no_grad()
def decode_audio(audio_vae, latent: AVLatent, *, batch_index: int = 0) -> tuple[torch.Tensor, int]:
    """Audio latent -> (waveform ``[2, 2048·N]`` float, 51 200 Hz: the VAE's true rate)."""
    latent.validate("decode")
    a = latent.audio[batch_index:batch_index + 1].transpose(1, 2)  # [1, 64, N]
    wave = audio_vae.decode(a.to(vae_device(audio_vae)))[0].float().cpu()
    return wave, int(getattr(audio_vae, "sample_rate", AUDIO_SAMPLE_RATE))


def decode(video_decoder, audio_vae, latent: AVLatent, *, output_offload: bool = False, batch_index: int = 0,
           tile=None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(frames ``[F, H, W, 3]`` in [0, 1], waveform ``[2, S]``, sample_rate 51 200) of one batch sample."""
    frames = decode_video(video_decoder, latent, batch_index=batch_index, output_offload=output_offload, tile=tile)
    wave, sr = decode_audio(audio_vae, latent, batch_index=batch_index)
    return frames, wave, sr


def resample_audio(waveform: torch.Tensor, sample_rate: int, new_rate: int = 44100) -> torch.Tensor:
    """Resample a decoded waveform to a standard rate (44.1 kHz as the official output, or 48 kHz)."""
    return media.resample(waveform, int(sample_rate), int(new_rate))
