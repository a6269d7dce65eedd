"""Conditioning stages: the prompt (T5Gemma), the TI2V first frame (Wan2.2 VAE) and the A2V reference audio."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Optional, Sequence

import torch

from .. import media
from ..errors import PipelineError
from ..geometry import AUDIO_HOP, AUDIO_SAMPLE_RATE, FPS, MAX_TEXT_TOKENS, decoded_frames, latent_frames_for
from ..prompts import space_cjk
from ..sampling import DEFAULT_NEGATIVE_PROMPT
from .guards import model_device
from .latents import AVLatent, TextConditioning

log = logging.getLogger("magihuman.pipeline")

__all__ = ["encode_prompt", "encode_prompts", "encode_image", "encode_reference_audio", "image_hw3", "encode_image_at", "vae_device"]


def encode_prompt(text_encoder, prompt: str, negative_prompt: Optional[str] = DEFAULT_NEGATIVE_PROMPT,
                  *, max_length: int = MAX_TEXT_TOKENS, cjk_spacing: bool = True) -> TextConditioning:
    """Prompt (+ negative prompt for CFG; ``None`` skips it, as the distilled model needs none) ->
    :class:`TextConditioning`. Each text is encoded alone, exactly as the official pipeline does.

    ``cjk_spacing`` (default on): one space between CJK characters (``"你好"`` -> ``"你 好"``), the form the
    model was trained on (:func:`magihuman.prompts.space_cjk`; idempotent, Latin text unchanged). The
    conditioning keeps the texts as encoded. Texts longer than ``max_length`` tokens are trimmed with a warning,
    except the built-in negative prompt (long on purpose, trimmed as the official code does: a debug line)."""
    return encode_prompts(text_encoder, [prompt], negative_prompt, max_length=max_length, cjk_spacing=cjk_spacing)[0]


def encode_prompts(text_encoder, prompts: Sequence[str], negative_prompt: Optional[str] = DEFAULT_NEGATIVE_PROMPT,
                   *, max_length: int = MAX_TEXT_TOKENS, cjk_spacing: bool = True) -> list[TextConditioning]:
    """:func:`encode_prompt` for several prompts (the windows of a long video): one conditioning per prompt, each
    distinct text encoded once and the negative prompt once, shared by all of them."""
    if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
        raise PipelineError("the prompt is empty: describe the video (and what is said) in the prompt")
    if negative_prompt is not None and (not isinstance(negative_prompt, str) or not negative_prompt.strip()):
        raise PipelineError("the negative prompt is empty: pass None to skip it (no CFG) or a text; the official "
                            "one is magihuman.sampling.DEFAULT_NEGATIVE_PROMPT")
    spaced = space_cjk if cjk_spacing else (lambda text: text)
    encoded: dict[str, TextConditioning] = {}
    for prompt in map(spaced, prompts):
        if prompt not in encoded:
            embeds, lens = text_encoder.encode([prompt], max_length=max_length)
            encoded[prompt] = TextConditioning(embeds=embeds.float(), lens=[int(lens[0])], prompt=prompt)
    negative = {}
    if negative_prompt is not None:
        negative_prompt = spaced(negative_prompt)
        builtin = negative_prompt.strip() in (DEFAULT_NEGATIVE_PROMPT, space_cjk(DEFAULT_NEGATIVE_PROMPT))
        # the official negative prompt is longer than the DiT's 640 tokens on purpose, trimmed as the official code
        # trims it: no advice to shorten a text the user did not write
        neg, neg_lens = text_encoder.encode([negative_prompt], max_length=max_length, warn_trim=not builtin)
        negative = dict(negative_embeds=neg.float(), negative_lens=[int(neg_lens[0])], negative_prompt=negative_prompt)
    return [replace(encoded[p], **negative) for p in map(spaced, prompts)]


def image_hw3(image) -> torch.Tensor:
    """A ComfyUI IMAGE [1, H, W, 3] / [H, W, 3] tensor, numpy array, PIL image or path -> [H, W, 3] in [0, 1]."""
    if isinstance(image, torch.Tensor) and image.dim() == 4:
        if image.shape[0] != 1:
            log.warning("MagiHuman: %d reference images given; using the first", image.shape[0])
        image = image[0]
    arr = media.load_image(image.detach().cpu().float().numpy() if isinstance(image, torch.Tensor) else image)
    return torch.from_numpy(arr).float()


def encode_image_at(video_vae, image_hw3: torch.Tensor, width: int, height: int, device) -> torch.Tensor:
    """The TI2V image at ``width x height`` (centre crop + resize), encoded as one latent frame [1, 48, 1, h, w]."""
    pixels = media.prepare_image(image_hw3.numpy(), width, height)  # [1, 3, 1, H, W] in [-1, 1]
    with torch.no_grad():
        lat = video_vae.encode(pixels.to(device))
    return lat.float()[:, :, :1]  # [1, 48, 1, h, w]


def vae_device(vae) -> torch.device:
    """Where a VAE's weights are (CPU for objects without parameters)."""
    try:
        return model_device(vae)
    except Exception:  # noqa: BLE001 - any object with an encode()
        return torch.device("cpu")


def encode_image(video_vae, image, latent: AVLatent) -> AVLatent:
    """TI2V: centre-crop and resize ``image`` to the latent's pixel size, encode it as ONE latent frame
    with the Wan2.2 VAE and attach it. Samplers put it into latent frame 0 before every step and at the end."""
    latent.validate("encode_image")
    if latent.stage != "base":
        raise PipelineError("encode_image: attach the image to the base latent (before denoise); super_resolve "
                            "re-encodes it at the SR size itself")
    img = image_hw3(image)
    w, h = latent.pixel_size
    lat = encode_image_at(video_vae, img, w, h, vae_device(video_vae))
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
    ``--seconds``); ``math.inf`` keeps all of it (the CLI without ``--seconds``); a shorter reference makes a
    shorter clip. (The official distilled loop updates the
    reference audio anyway; we keep it fixed, as its base loop does.)
    """
    latent.validate("encode_reference_audio")
    if latent.stage != "base" or latent.denoised:
        raise PipelineError("encode_reference_audio: attach the reference audio to an empty base latent "
                            "(before denoise)")
    if seconds is None:
        seconds = latent.info.get("seconds", latent.seconds)
    wave = media.prepare_reference_audio(waveform, int(sample_rate), seconds=seconds)  # [2, S'] at 51.2 kHz
    if wave.shape[-1] < AUDIO_HOP:
        raise PipelineError(f"encode_reference_audio: the reference audio is {wave.shape[-1]} samples at 51.2 kHz "
                            f"({wave.shape[-1] / AUDIO_SAMPLE_RATE * 1000:.1f} ms); it must last at least 0.04 s "
                            f"({AUDIO_HOP} samples, one latent step): use a longer clip")
    with torch.no_grad():
        z = media.encode_reference_audio(audio_vae, wave.to(vae_device(audio_vae)))  # [1, 64, N]
    audio = z.float().transpose(1, 2).to(latent.video.device)  # [1, N, 64]
    n = audio.shape[1]
    t = latent_frames_for(n)
    b, c, _, hh, ww = latent.video.shape
    out = latent.clone()
    out.video = torch.zeros(b, c, t, hh, ww, dtype=latent.video.dtype, device=latent.video.device)
    out.audio = audio.expand(b, -1, -1).contiguous()
    out.audio_fixed = True
    out.info.update(num_frames=n, latent_frames=t, decoded_frames=decoded_frames(t),
                    seconds=(n - 1) / FPS, reference_audio_seconds=wave.shape[-1] / AUDIO_SAMPLE_RATE)
    log.info("MagiHuman A2V: reference audio gives %d audio steps -> %d latent frames", n, t)
    return out
