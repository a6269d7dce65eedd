"""Latent geometry and pipeline constants of daVinci-MagiHuman, in one leaf module.

Everything that turns seconds and pixels into latent shapes, and back, reads its numbers from here.
"""

from __future__ import annotations

import math

from .errors import PipelineError

__all__ = [
    "FPS", "VIDEO_LATENT_CHANNELS", "AUDIO_LATENT_CHANNELS", "SPATIAL_STRIDE", "TEMPORAL_STRIDE", "PATCH_SIZE",
    "SIZE_MULTIPLE", "DEFAULT_FRAME_RECEPTIVE_FIELD", "MAX_TEXT_TOKENS", "AUDIO_SAMPLE_RATE", "AUDIO_HOP",
    "DISTILLED_STEPS", "BASE_STEPS", "SR_STEPS", "MIN_WINDOW_SECONDS", "MAX_WINDOW_SECONDS", "snap_size",
    "frame_counts", "decoded_frames", "latent_frames_for",
]

FPS = 25                    # video frames per second; also audio latent steps per second
VIDEO_LATENT_CHANNELS = 48  # Wan2.2 TI2V-5B VAE
AUDIO_LATENT_CHANNELS = 64  # Stable Audio Open (Oobleck) VAE
SPATIAL_STRIDE = 16         # Wan2.2 VAE pixels per latent cell
TEMPORAL_STRIDE = 4         # pixel frames per latent frame (first frame alone)
PATCH_SIZE = (1, 2, 2)      # DiT token patch over (t, h, w) of the video latent
SIZE_MULTIPLE = SPATIAL_STRIDE * PATCH_SIZE[1]  # 32: pixel sizes snap down to multiples of it
DEFAULT_FRAME_RECEPTIVE_FIELD = 11  # 1080p SR local attention: video frames see +-11 latent frames
MAX_TEXT_TOKENS = 640       # T5Gemma features padded / trimmed to this length (official target length)
AUDIO_SAMPLE_RATE = 51200   # the audio VAE's true rate (its decoder output is labelled 44.1 kHz officially)
AUDIO_HOP = 2048            # waveform samples per audio latent step (51200 / 2048 = 25 per second)
DISTILLED_STEPS = 8
BASE_STEPS = 32
SR_STEPS = 5
MIN_WINDOW_SECONDS = 1.0    # the shortest generation a long video is made of (each window is a whole one)
# Longest window: twice the official examples' 4-5 s. The model was trained on clips of a few seconds; longer
# single passes leave those lengths and cost attention memory with the square of the length.
MAX_WINDOW_SECONDS = 10.0


def snap_size(width: int, height: int, *, what: str = "") -> tuple[int, int]:
    """Snap (width, height) DOWN to multiples of 32 (official: ``h // 16 // 2 * 2 * 16``)."""
    for name, v in (("width", width), ("height", height)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or int(v) != v:
            raise PipelineError(f"{what}{name} must be an integer number of pixels, got {v!r}")
        if v < SIZE_MULTIPLE:
            raise PipelineError(f"{what}{name} {int(v)} is too small: the minimum is {SIZE_MULTIPLE} pixels")
    return int(width) // SIZE_MULTIPLE * SIZE_MULTIPLE, int(height) // SIZE_MULTIPLE * SIZE_MULTIPLE


def latent_frames_for(num_frames: int) -> int:
    """Latent frames of a clip of ``num_frames`` video frames (= audio steps): ``(N - 1)//4 + 1``."""
    return (int(num_frames) - 1) // TEMPORAL_STRIDE + 1


def decoded_frames(latent_frames: int) -> int:
    """Frames the video decoders give for ``latent_frames``: ``4(T - 1) + 1``."""
    return TEMPORAL_STRIDE * (int(latent_frames) - 1) + 1


def frame_counts(seconds: float) -> tuple[int, int]:
    """(num_frames, latent_frames) for a duration: THE frame rule, as the official code has it.

    ``num_frames = 25·s + 1`` (fractional seconds rounded to whole 1/25 s frames, at least one) is the number of
    audio latent steps (2048 samples each: the audio lasts num_frames/25 s); the video latent has
    ``T = (num_frames - 1)//4 + 1`` frames, and the video decoders give ``4(T - 1) + 1`` frames
    (:func:`decoded_frames`). The file has num_frames video frames only when 25·s is a multiple of 4: 4 s ->
    101 steps, T = 26, 101 frames; 2 s -> 51 steps, T = 13, 49 frames (1.96 s of video, 2.04 s of audio)."""
    try:
        s = float(seconds)
    except (TypeError, ValueError):
        raise PipelineError(f"seconds must be a number, got {seconds!r}") from None
    if not math.isfinite(s) or s <= 0:
        raise PipelineError(f"seconds must be > 0, got {seconds!r}")
    if s > 1e9:  # beyond any clip (and beyond float frame arithmetic): refuse before computing sizes
        raise PipelineError(f"seconds {seconds!r} is far too long; the model makes clips of a few seconds")
    num_frames = max(1, math.floor(s * FPS + 0.5)) + 1  # half-up, so 0.5 s -> 13 + 1
    return num_frames, latent_frames_for(num_frames)
