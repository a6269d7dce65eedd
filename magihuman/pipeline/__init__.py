"""Generation stages of daVinci-MagiHuman as plain functions on tensors.

    empty_latents -> [encode_image] -> [encode_reference_audio] -> denoise -> [super_resolve] -> decode
    encode_prompt (text conditioning) feeds denoise and super_resolve.
    generate_long_video: all of that per window of a long clip (or to continue a clip).

Where things are: :mod:`.latents` (the AVLatent / TextConditioning containers, empty_latents),
:mod:`.conditioning` (prompt, TI2V image, A2V audio), :mod:`.denoising` (denoise, super_resolve),
:mod:`.decoding` (frames and waveform), :mod:`.windows` and :mod:`.long_video` (long clips in windows),
:mod:`.guards` (what every stage checks before allocating:
model kind, input widths, finite numbers, memory). This package is their one public face.

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

from ..errors import PipelineError
from ..geometry import (AUDIO_LATENT_CHANNELS, BASE_STEPS, DEFAULT_FRAME_RECEPTIVE_FIELD, DISTILLED_STEPS, FPS,
                        SIZE_MULTIPLE, SPATIAL_STRIDE, SR_STEPS, TEMPORAL_STRIDE, VIDEO_LATENT_CHANNELS, frame_counts,
                        snap_size)
from ..sampling import DEFAULT_NEGATIVE_PROMPT
from .conditioning import encode_image, encode_prompt, encode_prompts, encode_reference_audio
from .decoding import decode, decode_audio, decode_video, resample_audio
from .denoising import Callback, denoise, super_resolve
from .guards import check_fits, dit_activation_bytes, effective_variant
from .latents import AVLatent, TextConditioning, empty_latents
from . import memory  # noqa: E402 - bytes a host reserves for the VAE / text-encoder calls
from .long_video import ClipToContinue, LongVideoModels, LongVideoResult, generate_long_video, split_prompts
from .windows import (MAX_WINDOW_SECONDS, MIN_WINDOW_SECONDS, Window, WindowPlan, clip_frames, plan_long_video,
                      plan_windows)

__all__ = [
    "AVLatent", "TextConditioning", "PipelineError", "FPS", "VIDEO_LATENT_CHANNELS", "AUDIO_LATENT_CHANNELS",
    "SIZE_MULTIPLE", "SPATIAL_STRIDE", "TEMPORAL_STRIDE", "snap_size", "frame_counts", "empty_latents",
    "encode_prompt", "encode_prompts", "encode_image", "encode_reference_audio", "denoise", "super_resolve", "decode", "decode_video",
    "decode_audio", "resample_audio", "DISTILLED_STEPS", "BASE_STEPS", "SR_STEPS", "DEFAULT_FRAME_RECEPTIVE_FIELD",
    "DEFAULT_NEGATIVE_PROMPT", "check_fits", "dit_activation_bytes", "effective_variant", "Callback", "memory",
    "generate_long_video", "LongVideoModels", "ClipToContinue", "LongVideoResult", "split_prompts", "Window",
    "WindowPlan", "plan_windows", "plan_long_video", "clip_frames", "MIN_WINDOW_SECONDS", "MAX_WINDOW_SECONDS",
]
