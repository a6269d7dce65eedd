"""Device bytes, beside the weights, of the VAE and text-encoder calls of the pipeline.

A host that places models (ComfyUI's ``load_models_gpu(..., memory_required=...)``) needs them before the call:
told 0, it keeps a resident 15B DiT on the GPU and a 1080p decode runs out of memory. Each function prices one
call from the model's own configuration and the inputs, with the estimator's formulas
(:mod:`magihuman.estimate`, traced against the live tensors of these models).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

from .. import estimate as est
from ..geometry import MAX_TEXT_TOKENS
from ..media import AUDIO_WINDOW_SECONDS, REFERENCE_SAMPLE_RATE
from ..models.video_vae import WanVAE
from ..prompts import space_cjk
from .latents import AVLatent

__all__ = ["video_decode_bytes", "audio_decode_bytes", "image_encode_bytes", "reference_audio_encode_bytes",
           "text_encode_bytes"]


def video_decode_bytes(decoder, latent: AVLatent, *, output_offload: bool = False, tile=None) -> int:
    """One sample of ``latent`` through :func:`magihuman.pipeline.decode_video` with the Turbo decoder or the Wan2.2
    VAE: the decoder's peak (its finished chunks included unless ``output_offload`` moves them to the CPU), or
    after it the clip and the two fp32 copies ``decode_video`` makes of it, whichever is larger."""
    t, h, w = latent.video.shape[2:]
    if isinstance(decoder, WanVAE):
        d = est.wan_decode_bytes(t, h, w, tile=tile, dtype_bytes=decoder.compute_dtype.itemsize,
                                 dec_dim=decoder.config["dec_dim"])
        return max(d["peak"], 3 * d["video"])
    d = est.turbo_decode_bytes(t, h, w, dtype_bytes=decoder._compute_dtype().itemsize,
                               config=dict(decoder.source_config))
    if output_offload:  # the chunks and the clip go to the CPU as they are finished
        return d["peak"]
    clip = d["video"] // 4 * decoder._compute_dtype().itemsize
    return max(d["peak"] + d["pieces"], clip + 2 * d["video"])


def _oobleck(audio_vae, part: str) -> dict:
    cfg = audio_vae.config[part]["config"]
    return dict(channels=int(cfg.get("channels", 128)), strides=tuple(cfg.get("strides", (2, 4, 8, 8))),
                c_mults=tuple(cfg.get("c_mults", (1, 2, 4, 8))))


def audio_decode_bytes(audio_vae, latent_steps: int) -> int:
    """One audio latent of ``latent_steps`` steps through the Oobleck decoder (plus its fp32 waveform)."""
    wave = audio_vae.io_channels * int(latent_steps) * audio_vae.hop_length * 4
    return est.audio_vae_bytes(latent_steps, **_oobleck(audio_vae, "decoder")) + 2 * wave


def reference_audio_encode_bytes(audio_vae, samples: int, sample_rate: int = REFERENCE_SAMPLE_RATE) -> int:
    """A reference waveform of ``samples`` samples at ``sample_rate`` (resampled to 51.2 kHz first) through the
    Oobleck encoder: one pass of at most a 29 s window (:func:`magihuman.media.encode_reference_audio`), the stereo
    input included."""
    if sample_rate > 0:
        samples = math.ceil(int(samples) * REFERENCE_SAMPLE_RATE / sample_rate)
    window = min(int(samples), int(AUDIO_WINDOW_SECONDS * REFERENCE_SAMPLE_RATE))
    steps = max(1, math.ceil(window / audio_vae.hop_length))
    return est.audio_vae_bytes(steps, **_oobleck(audio_vae, "encoder")) + 2 * audio_vae.io_channels * window * 4


def image_encode_bytes(video_vae, width: int, height: int) -> int:
    """The TI2V image at ``width x height`` pixels through the Wan2.2 encoder (one frame)."""
    return est.wan_encode_bytes(height, width, dtype_bytes=video_vae.compute_dtype.itemsize,
                                dim=video_vae.config["dim"])


def text_encode_bytes(text_encoder, prompts: Sequence[Optional[str]], *, cjk_spacing: bool = True) -> int:
    """The prompts (None entries skipped), each encoded alone by the T5Gemma encoder at its full token count
    (:func:`magihuman.estimate.text_encode_activation_bytes`), plus one projection decoded to the compute dtype
    when the weights are stored otherwise (fp8, GGUF). Without a tokenizer: the longest text the DiT takes."""
    texts = [space_cjk(p) if cjk_spacing else p for p in prompts if p]
    tokens = MAX_TEXT_TOKENS
    if texts and getattr(text_encoder, "tokenizer", None) is not None:
        tokens = max(len(ids) for ids in text_encoder.tokenize(texts))
    cfg = text_encoder.config
    shape = dict(hidden_size=cfg.hidden_size, head_dim=cfg.head_dim, intermediate_size=cfg.intermediate_size,
                 num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_key_value_heads)
    compute = text_encoder.compute_dtype
    act = est.text_encode_activation_bytes(tokens, shape, compute_dtype=compute)
    decode = max((getattr(m, "in_features", 0) * getattr(m, "out_features", 0) for m in text_encoder.linear_layers()
                  if getattr(m, "weight", None) is None or m.weight.dtype != compute), default=0)
    return act + 2 * decode * compute.itemsize
