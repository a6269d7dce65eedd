"""The window plan of a long video: which frames each window makes, from which seed and prompt.

A clip is laid on a timeline of frames at 25 fps (= audio latent steps). Window 0 starts at timeline frame 0.
Every window makes ``frames`` frames, a latent-aligned count (4j + 1, so its video and audio latents cover the
same frames and the decoders return every one of them). Window k+1 starts ``stride = window_frames - 1 - K``
frames after window k (K = ``overlap``):

- its frame 0 is window k's frame ``stride`` (the "conditioning frame"), decoded and re-encoded as its TI2V first
  frame; the output keeps window k's copy;
- its frames 1..K make the same moments as window k's last K frames again; the output cross-fades the two in
  pixels, the new window's weight rising ``(j + 1) / (K + 1)`` over overlap frame j;
- the audio the windows make themselves is cross-faded over the K + 1 steps they share (the conditioning frame's
  step included, so even K = 0 gets a 40 ms fade instead of a click); an A2V reference is the same on both sides
  and is used as it is.

The last window makes only what the clip still needs (rounded up to 4j + 1 frames, and at least 1 s: a shorter
generation would be a poor one; the extra frames are cut).
Continuing a clip, the clip plays "window -1": its frame ``len - 1 - K`` is window 0's conditioning frame and its
last K frames are cross-faded with window 0's frames 1..K.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import PipelineError
from ..geometry import (FPS, MAX_WINDOW_SECONDS, MIN_WINDOW_SECONDS, TEMPORAL_STRIDE, decoded_frames, frame_counts,
                        latent_frames_for)

__all__ = ["MIN_WINDOW_SECONDS", "MAX_WINDOW_SECONDS", "SEED_MODULUS", "Window", "WindowPlan", "clip_frames",
           "window_frames_for", "aligned_up", "plan_windows", "plan_long_video"]

MIN_CLIP_FRAMES = 5      # the shortest clip with a latent frame after the first (0.2 s)
SEED_MODULUS = 2 ** 64  # window k's seed is (seed + k) mod 2^64, inside what torch.Generator takes


def clip_frames(seconds: float) -> int:
    """Frames a clip of ``seconds`` has: what one pass of that length decodes, ``4·((25·s) // 4) + 1``."""
    num_frames, _ = frame_counts(seconds)
    return decoded_frames(latent_frames_for(num_frames))


def aligned_up(frames: int) -> int:
    """The smallest latent-aligned frame count (4j + 1) holding ``frames``."""
    return TEMPORAL_STRIDE * math.ceil((int(frames) - 1) / TEMPORAL_STRIDE) + 1


def window_frames_for(window_seconds: float) -> int:
    """Frames of a window of ``window_seconds`` (:func:`clip_frames`), refusing lengths outside 1..10 s."""
    try:
        w = float(window_seconds)
    except (TypeError, ValueError):
        raise PipelineError(f"window_seconds must be a number, got {window_seconds!r}") from None
    if not math.isfinite(w) or w < MIN_WINDOW_SECONDS:
        raise PipelineError(f"a window of {window_seconds!r} s is too short: windows last at least "
                            f"{MIN_WINDOW_SECONDS:g} s (each one is a whole generation)")
    if w > MAX_WINDOW_SECONDS:
        raise PipelineError(f"a window of {w:g} s is beyond the model's limit of {MAX_WINDOW_SECONDS:g} s per pass (it "
                            "was trained on clips of a few seconds); use windows of 4-5 s, as the official examples")
    return clip_frames(w)


@dataclass(frozen=True)
class Window:
    """One generation of a long video. Frames are timeline frames (window 0's frame 0 is timeline frame 0)."""

    index: int
    start: int          # timeline frame of its frame 0
    frames: int         # frames it makes (4j + 1 = its audio latent steps)
    keep: int           # frames of it on the timeline (the last window's extra frames are cut)
    seed: int
    prompt: int         # index into the prompts
    conditioned: bool   # its frame 0 is the previous window's (or the continued clip's) frame

    @property
    def end(self) -> int:
        """Timeline frame after its last kept frame."""
        return self.start + self.keep

    @property
    def seconds(self) -> float:
        """Its length as :func:`magihuman.pipeline.empty_latents` takes it: ``(frames - 1) / 25``."""
        return (self.frames - 1) / FPS


@dataclass(frozen=True)
class WindowPlan:
    """All windows of a long video, computed once (:func:`plan_windows`)."""

    total_frames: int        # timeline frames
    window_frames: int       # frames of a full window
    overlap: int             # K: frames made twice and cross-faded at every seam
    windows: tuple[Window, ...]

    @property
    def stride(self) -> int:
        """Frames between the starts of two windows: ``window_frames - 1 - overlap``."""
        return self.window_frames - 1 - self.overlap

    @property
    def audio_steps(self) -> int:
        """Audio latent steps the windows cover (an A2V reference is sliced over these)."""
        return max(w.start + w.frames for w in self.windows)

    def describe(self) -> str:
        w = self.windows
        if len(w) == 1:
            return f"one pass of {w[0].seconds:g} s"
        text = f"{len(w)} windows of {(self.window_frames - 1) / FPS:g} s"
        if w[-1].frames != self.window_frames:
            text += f" (the last {w[-1].seconds:g} s)"
        if self.overlap:
            text += f", overlap {self.overlap} frames"
        return text


def plan_windows(total_frames: int, window_frames: int, overlap: int = 0, *, seed: int = 0, prompts: int = 1,
                 continued: bool = False) -> WindowPlan:
    """Windows covering ``total_frames`` timeline frames with windows of ``window_frames`` (4j + 1) frames,
    ``overlap`` frames cross-faded at each seam, seeds ``seed + k`` and prompt ``min(k, prompts - 1)``."""
    total, wf, k_over = int(total_frames), int(window_frames), int(overlap)
    if total < 1:
        raise PipelineError(f"a long video needs at least 1 frame, got {total_frames}")
    if wf < 2 or (wf - 1) % TEMPORAL_STRIDE:
        raise PipelineError(f"window_frames must be 4j + 1 (latent-aligned), got {window_frames}")
    if isinstance(overlap, bool) or k_over != overlap or k_over < 0:
        raise PipelineError(f"overlap_frames must be a whole number >= 0, got {overlap!r}")
    if k_over + 1 >= wf:
        raise PipelineError(f"an overlap of {k_over} frames is not shorter than the window ({wf} frames, "
                            f"{(wf - 1) / FPS:g} s): with the conditioning frame it must leave new frames; "
                            f"use at most {wf - 2} (a few frames, e.g. 4-12, is enough for a soft seam)")
    if total < (k_over + 2 if continued else MIN_CLIP_FRAMES):
        raise PipelineError(f"{total} frames are too few: a long video needs at least "
                            f"{k_over + 2 if continued else MIN_CLIP_FRAMES} (0.2 s)")
    if isinstance(prompts, bool) or int(prompts) != prompts or prompts < 1:
        raise PipelineError(f"prompts must be a positive count, got {prompts!r}")
    if isinstance(seed, bool) or int(seed) != seed or not 0 <= int(seed) < SEED_MODULUS:
        raise PipelineError(f"seed must be an integer in 0..2^64-1, got {seed!r}")
    stride = wf - 1 - k_over
    starts = [0]
    while starts[-1] + wf < total:
        starts.append(starts[-1] + stride)
    if prompts > len(starts):
        raise PipelineError(f"{prompts} prompts for {len(starts)} window{'s' if len(starts) > 1 else ''}: the "
                            "extra prompts would be lost; give at most one prompt per window (or a longer clip)")
    windows = []
    for k, s in enumerate(starts):
        keep = min(wf, total - s)
        frames = min(wf, max(aligned_up(keep), aligned_up(FPS * MIN_WINDOW_SECONDS) if k or continued else 1))
        windows.append(Window(index=k, start=s, frames=frames, keep=keep,
                              seed=(int(seed) + k) % SEED_MODULUS, prompt=min(k, int(prompts) - 1),
                              conditioned=k > 0 or bool(continued)))
    return WindowPlan(total_frames=total, window_frames=wf, overlap=k_over, windows=tuple(windows))


def plan_long_video(seconds: float, window_seconds: float, overlap_frames: int = 0, *, seed: int = 0,
                    prompts: int = 1, continued: bool = False) -> WindowPlan:
    """The plan of a new clip of ``seconds`` (:func:`clip_frames` frames, one pass when it fits a window) or,
    ``continued``, of ``seconds`` more after a clip (the timeline then starts at the clip's conditioning frame:
    ``clip_frames(seconds) + overlap`` frames, of which ``clip_frames(seconds) - 1`` are new)."""
    wf = window_frames_for(window_seconds)
    total = clip_frames(seconds)
    if total < MIN_CLIP_FRAMES:
        raise PipelineError(f"{'continuing by' if continued else 'a clip of'} {seconds!r} s is too short: "
                            f"{'continue by' if continued else 'make'} at least 0.2 s")
    if continued and isinstance(overlap_frames, int) and not isinstance(overlap_frames, bool) and overlap_frames > 0:
        total += overlap_frames
    return plan_windows(total, wf, overlap_frames, seed=seed, prompts=prompts, continued=continued)

