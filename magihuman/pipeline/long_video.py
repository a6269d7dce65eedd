"""Long videos: a clip of any length made window by window (:mod:`.windows` says which frames each one makes),
or an existing clip continued; one window's latents and frames in memory at a time.

Every window is one ordinary generation through the stage functions (empty_latents, encode_image, denoise,
super_resolve, decode_video, decode_audio). Window k+1 starts from window k's conditioning frame, decoded and
re-encoded with the Wan2.2 VAE as its TI2V first frame (the official TI2V path). An A2V reference is encoded once
and each window's audio latent is its slice at 25 steps a second, so the windows' audio is the reference exactly;
T2V/TI2V windows make their own audio. Seams are cross-faded in pixels over the overlap frames and in samples over
the shared audio steps. Window k uses the seed ``seed + k`` (one generator for its base and SR stages) and its own
prompt. Frames go to ``on_frames`` as soon as they are final (they never change afterwards), so the caller can
write them out and memory stays at one window's.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence

import torch

from .. import media
from ..errors import PipelineError
from ..geometry import AUDIO_HOP, AUDIO_SAMPLE_RATE, FPS, snap_size
from .conditioning import encode_image, vae_device
from .decoding import decode_audio, decode_video
from .denoising import denoise, super_resolve, uses_cfg
from .guards import effective_variant
from .latents import AVLatent, TextConditioning, empty_latents
from .windows import MIN_CLIP_FRAMES, Window, WindowPlan, aligned_up, plan_long_video

log = logging.getLogger("magihuman.pipeline")

__all__ = ["LongVideoModels", "ClipToContinue", "LongVideoResult", "generate_long_video", "WindowCallback",
           "split_prompts", "PROMPT_SEPARATOR"]

PROMPT_SEPARATOR = "---"  # a line holding only this separates per-window prompts (prompts have blank lines)

# callback(window, stage "base" | "sr", step, total, x0_preview) after every sampler step; it may raise (cancel)
WindowCallback = Callable[[Window, str, int, int, torch.Tensor], None]


@dataclass
class LongVideoModels:
    """The models a long video needs. ``use(role, model, latent, **fit)`` (optional) returns the module to run for
    a role just before each use (ComfyUI: load it onto its device and reserve the memory of the call), with what the
    call works on: "dit" / "sr_dit" the latent and ``cfg``, ``batch_cfg`` (and the SR ``size``); "video_vae" (an
    image encode) the ``size``; "video_decoder" the latent it decodes (the model is ``video_vae`` when no decoder is
    given); "audio_vae" the latent it decodes, or for the A2V encode the reference's ``samples``. Without it the
    models are used as given."""

    dit: Any
    video_vae: Any                  # Wan2.2 VAE: re-encodes every conditioning frame (and the TI2V image)
    audio_vae: Any                  # Oobleck: encodes an A2V reference, decodes the windows' own audio
    video_decoder: Any = None       # e.g. the Turbo VAE decoder; None decodes with video_vae
    sr_dit: Any = None              # super-resolution DiT, run on every window
    use: Optional[Callable[..., Any]] = None

    def get(self, role: str, latent: Optional[AVLatent] = None, **fit):
        model = getattr(self, role)
        if role == "video_decoder" and model is None:
            model = self.video_vae
        return self.use(role, model, latent, **fit) if self.use is not None else model


@dataclass
class ClipToContinue:
    """A clip to continue: its last frame starts the first window and its sound is kept."""

    frames: Any                                     # [F, H, W, 3] (uint8 or float in [0, 1]) or an iterable of frames
    audio: Optional[tuple[torch.Tensor, int]] = None  # (waveform [C, S], sample rate) of its sound, if any
    keep_original: bool = True                      # output the clip + the new part (False: the new part alone)


@dataclass
class LongVideoResult:
    plan: WindowPlan
    frames: Optional[torch.Tensor]  # [F, H, W, 3] float in [0, 1]; None when they went to on_frames
    frame_count: int                # frames of the output
    audio: torch.Tensor             # [2, frame_count·2048] at 51 200 Hz
    sample_rate: int
    size: tuple[int, int]           # (width, height) of the frames
    notes: list[str] = field(default_factory=list)  # what was adjusted (also logged)


def split_prompts(text: str) -> list[str]:
    """Per-window prompts from one text: parts separated by lines holding only ``---``; empty parts dropped."""
    parts, current = [], []
    for line in str(text).splitlines():
        if line.strip() == PROMPT_SEPARATOR:
            parts.append("\n".join(current))
            current = []
        else:
            current.append(line)
    parts.append("\n".join(current))
    return [p.strip() for p in parts if p.strip()]


class _Notes(list):
    """What the run adjusted: each note goes to ``on_note`` (default: a logged warning) as it happens."""

    def __init__(self, on_note) -> None:
        super().__init__()
        self.on_note = on_note

    def add(self, text: str) -> None:
        self.append(text)
        if self.on_note is not None:
            self.on_note(text)
        else:
            log.warning("MagiHuman long video: %s", text)


def _frame_float(frame) -> torch.Tensor:
    """One frame [H, W, 3] (uint8, or float in [0, 1]; tensor or array) -> float32 tensor in [0, 1]."""
    t = torch.as_tensor(frame).detach().cpu()
    if t.dim() != 3 or t.shape[-1] != 3:
        raise PipelineError(f"a frame of the clip to continue must be [H, W, 3] (RGB), got {tuple(t.shape)}")
    return t.float() / 255.0 if t.dtype == torch.uint8 else t.float()


def _fit_frame(frame: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """A frame at ``width x height``: centre crop + Lanczos resize, exactly as a TI2V image is prepared."""
    if tuple(frame.shape[:2]) == (height, width):
        return frame
    x = media.prepare_image(frame.numpy(), width, height)  # [1, 3, 1, H, W] in [-1, 1]
    return x[0, :, 0].permute(1, 2, 0).add(1).mul(0.5).clamp(0, 1).contiguous()


def _iter_frames(frames) -> Iterable:
    if isinstance(frames, torch.Tensor) or hasattr(frames, "shape"):
        if len(frames.shape) != 4:
            raise PipelineError(f"the clip to continue must be frames [F, H, W, 3], got shape {tuple(frames.shape)}")
        return (frames[i] for i in range(frames.shape[0]))
    return iter(frames)


def _stereo_51k(wave: torch.Tensor, rate: int) -> torch.Tensor:
    """Any waveform [C, S] (or [1, C, S]) -> [2, S'] at 51 200 Hz (mono doubled, more channels mixed)."""
    x = torch.as_tensor(wave).detach().cpu().float()
    if x.dim() == 3 and x.shape[0] == 1:
        x = x[0]
    if x.dim() == 1:
        x = x[None]
    if x.dim() != 2 or x.shape[0] < 1:
        raise PipelineError(f"the clip's audio must be a waveform [channels, samples], got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise PipelineError("the clip's audio contains NaN or infinite samples")
    if x.shape[0] != 2:
        x = x.mean(0, keepdim=True).expand(2, -1)
    if x.shape[-1] and int(rate) != AUDIO_SAMPLE_RATE:
        x = media.resample(x.contiguous(), int(rate), AUDIO_SAMPLE_RATE).float()
    return x.contiguous()


def _fit_samples(wave: torch.Tensor, samples: int) -> torch.Tensor:
    """``wave`` [C, S] cut or zero-padded to ``samples``."""
    if wave.shape[-1] >= samples:
        return wave[:, :samples]
    return torch.nn.functional.pad(wave, (0, samples - wave.shape[-1]))


class _Output:
    """The output clip: timeline frames/audio mapped to output positions (``offset``), frames handed on in order
    (``on_frames``) or kept in one preallocated tensor."""

    def __init__(self, frame_count: int, offset: int, width: int, height: int, on_frames) -> None:
        self.frame_count, self.offset, self.on_frames = frame_count, offset, on_frames
        self.frames = None if on_frames is not None else torch.empty(frame_count, height, width, 3)
        self.audio = torch.zeros(2, frame_count * AUDIO_HOP)
        self.written = 0

    def put_frames(self, timeline_start: int, frames: torch.Tensor) -> None:
        """Frames [n, H, W, 3] at timeline frame ``timeline_start`` (must follow the last ones written)."""
        first = timeline_start + self.offset
        if first < 0:
            frames, first = frames[-first:], 0
        frames = frames[: max(0, self.frame_count - first)]
        if not frames.shape[0]:
            return
        if first != self.written:
            raise AssertionError(f"frames out of order: {first} after {self.written}")
        if self.on_frames is not None:
            self.on_frames(frames)
        else:
            self.frames[first:first + frames.shape[0]] = frames
        self.written += frames.shape[0]

    def put_audio(self, timeline_sample: int, wave: torch.Tensor) -> None:
        """Samples [2, n] at timeline sample ``timeline_sample`` (51.2 kHz)."""
        first = timeline_sample + self.offset * AUDIO_HOP
        if first < 0:
            wave, first = wave[:, -first:], 0
        n = max(0, min(wave.shape[-1], self.audio.shape[-1] - first))
        self.audio[:, first:first + n] = wave[:, :n]


def _crossfade(old: torch.Tensor, new: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``(1 - w)·old + w·new`` with ``weights`` along the first axis of frames / the last axis of audio."""
    return old + (new - old) * weights


def generate_long_video(models: LongVideoModels, prompts: Sequence[TextConditioning], *, width: int, height: int,
                        seconds: Optional[float] = None, window_seconds: float = 4.0, overlap_frames: int = 0,
                        seed: int = 0, denoise_options: Optional[dict] = None, sr_size: Optional[tuple] = None,
                        sr_options: Optional[dict] = None, image=None,
                        reference_audio: Optional[tuple[torch.Tensor, int]] = None,
                        continue_from: Optional[ClipToContinue] = None, generator_device="cpu",
                        callback: Optional[WindowCallback] = None, check_cancel: Optional[Callable[[], None]] = None,
                        on_frames: Optional[Callable[[torch.Tensor], None]] = None,
                        on_window: Optional[Callable[[Window, AVLatent, torch.Tensor], None]] = None,
                        on_plan: Optional[Callable[[WindowPlan], None]] = None,
                        on_note: Optional[Callable[[str], None]] = None) -> LongVideoResult:
    """A clip of ``seconds`` (or, continuing ``continue_from``, ``seconds`` more) in windows of ``window_seconds``
    (one pass when it fits one window), ``overlap_frames`` made twice and cross-faded at every seam.

    ``prompts``: one conditioning per window, or fewer (the last one carries on). ``image``: TI2V first frame of a
    new clip. ``reference_audio`` (waveform [C, S], rate): A2V; ``seconds=None`` (or longer than the audio) takes
    all of it (rounded up to whole latent frames, silence after its end), a shorter ``seconds`` trims it.
    ``denoise_options`` / ``sr_options``: keyword arguments of :func:`denoise` / :func:`super_resolve` (seeds and
    generators are the windows'). With
    ``sr_size`` (width, height) and ``models.sr_dit`` every window is super-resolved. ``check_cancel()`` runs
    before every window and decode (it may raise); ``on_frames(frames [n, H, W, 3])`` receives the output frames
    in order as they become final (otherwise the result holds them); ``on_window(window, latent, frames)`` sees
    each window's final latent and decoded frames; ``on_plan(plan)`` the plan before any work; ``on_note(text)``
    each adjustment the run makes (default: logged as a warning; all are in ``result.notes``).
    Returns the frames (or their count) and the whole soundtrack at 51.2 kHz.
    """
    notes = _Notes(on_note)
    if not prompts:
        raise PipelineError("a long video needs at least one prompt")
    if image is not None and continue_from is not None:
        raise PipelineError("give either a first image (TI2V) or a clip to continue: both set the first frame")
    w, h = snap_size(width, height)
    sr = None
    if sr_size is not None or models.sr_dit is not None:
        if sr_size is None or models.sr_dit is None:
            raise PipelineError("super-resolution needs both the SR DiT and the SR size")
        sr = snap_size(*sr_size, what="super-resolution ")
    out_w, out_h = sr or (w, h)
    k_over = overlap_frames  # checked by plan_long_video before its first use

    # ---- A2V: the speech sets (or is trimmed to) the length
    speech = None
    if reference_audio is not None:
        wave, rate = reference_audio
        speech = media.prepare_reference_audio(wave, int(rate))  # [2, S] mono mix at 51.2 kHz
        speech_seconds = speech.shape[-1] / AUDIO_SAMPLE_RATE
        if seconds is not None and seconds > speech_seconds + 1e-9:
            notes.add(f"the reference audio lasts {speech_seconds:.2f} s, less than the {seconds:g} s asked: the "
                      f"clip follows the audio ({speech_seconds:.2f} s)")
            seconds = None
        elif seconds is not None and seconds < speech_seconds - 1 / FPS:
            notes.add(f"{seconds:g} s trims the {speech_seconds:.2f} s reference audio (its first {seconds:g} s are "
                      "used)")
        if seconds is None:  # the whole speech: whole latent frames covering it (silence after its end)
            need = math.ceil(speech.shape[-1] / AUDIO_HOP) + (continue_from is not None)  # + the shared frame
            seconds = (max(aligned_up(need), MIN_CLIP_FRAMES) - 1) / FPS
    if seconds is None:
        raise PipelineError("give the length in seconds (only an A2V reference audio sets it by itself)")
    plan = plan_long_video(seconds, window_seconds, k_over, seed=seed, prompts=len(prompts),
                           continued=continue_from is not None)
    if speech is not None and len(plan.windows) == 1 and continue_from is None and \
            seconds < (plan.window_frames - 1) / FPS:
        notes.add(f"the reference audio ({speech_seconds:.2f} s) is shorter than one window "
                  f"({(plan.window_frames - 1) / FPS:g} s): one pass of {seconds:g} s")
    if on_plan is not None:
        on_plan(plan)
    log.info("MagiHuman long video: %s, %d frames", plan.describe(), plan.total_frames)

    # ---- the clip to continue: its frames (to the output when kept: streamed to on_frames as they are read),
    # its conditioning frame and overlap tail, its sound
    clip_len, clip_tail, clip_audio, streamed = 0, None, None, 0
    held: list[torch.Tensor] = []  # kept clip frames waiting for the output tensor (no on_frames)
    if continue_from is not None:
        tail: deque = deque(maxlen=k_over + 1)
        resized = None
        for frame in _iter_frames(continue_from.frames):
            if check_cancel is not None and clip_len % 64 == 0:
                check_cancel()
            f = _frame_float(frame)
            if resized is None:
                resized = tuple(f.shape[:2]) != (out_h, out_w)
                if resized:
                    notes.add(f"the clip to continue is {f.shape[1]}x{f.shape[0]}; its frames are centre-cropped "
                              f"and resized to {out_w}x{out_h}, as a TI2V image is")
            if len(tail) == tail.maxlen and continue_from.keep_original:  # resized only when it is output
                kept = _fit_frame(tail[0], out_w, out_h)
                if on_frames is not None:
                    on_frames(kept[None])
                    streamed += 1
                else:
                    held.append(kept)
            tail.append(f)
            clip_len += 1
        if clip_len < k_over + 1:
            raise PipelineError(f"the clip to continue has {clip_len} frame(s); an overlap of {k_over} frames needs "
                                f"at least {k_over + 1}")
        clip_tail = torch.stack([_fit_frame(f, out_w, out_h) for f in tail])  # [K+1, H, W, 3]: the conditioning
        # frame, then the overlap frames
        if continue_from.audio is not None:
            wave, rate = continue_from.audio
            clip_audio = _fit_samples(_stereo_51k(wave, rate), clip_len * AUDIO_HOP)
        else:
            clip_audio = torch.zeros(2, clip_len * AUDIO_HOP)
            notes.add("the clip to continue has no sound: its part of the soundtrack is silent")

    # ---- output geometry: the timeline (window 0's frame 0 = timeline frame 0) placed in the output
    if continue_from is None:
        offset, frame_count = 0, plan.total_frames
    elif continue_from.keep_original:
        offset = clip_len - 1 - k_over
        frame_count = offset + plan.total_frames
    else:
        offset = -(k_over + 1)
        frame_count = plan.total_frames - k_over - 1
    out = _Output(frame_count, offset, out_w, out_h, on_frames)
    out.written = streamed
    hop = AUDIO_HOP
    if continue_from is not None and continue_from.keep_original:
        for f in held:
            out.put_frames(out.written - offset, f[None])
        out.put_frames(0, clip_tail[:1])  # the conditioning frame is the clip's own
        out.put_audio(-offset * hop, clip_audio[:, :offset * hop])
    held.clear()

    # ---- A2V: one reference over the timeline, encoded once, sliced per window
    ref_latent = None
    if speech is not None:
        steps = plan.audio_steps
        wave = speech[:, :int(round(seconds * AUDIO_SAMPLE_RATE))]
        out_wave = wave
        if continue_from is not None:  # the shared steps: the clip's own sound (mono mix for the model)
            tail_wave = clip_audio[:, (clip_len - 1 - k_over) * hop:]
            wave = torch.cat([tail_wave.mean(0, keepdim=True).expand(2, -1), wave], 1)
            out_wave = torch.cat([tail_wave, out_wave], 1)
        wave = _fit_samples(wave, steps * hop)  # silence after the end of the speech
        audio_vae = models.get("audio_vae", samples=wave.shape[-1])
        with torch.no_grad():
            z = media.encode_reference_audio(audio_vae, wave.to(vae_device(audio_vae)))
        ref_latent = z.float().transpose(1, 2).cpu()  # [1, N, 64]
        if ref_latent.shape[1] < steps:
            raise PipelineError(f"the audio VAE gave {ref_latent.shape[1]} latent steps for {steps} (is it the "
                                "Stable Audio Open VAE?)")
        out.put_audio(0, _fit_samples(out_wave, plan.total_frames * hop))

    dn = dict(denoise_options or {})
    sro = dict(sr_options or {})
    for key in ("seed", "generator", "callback"):
        if key in dn or key in sro:
            raise PipelineError(f"long video: '{key}' is set per window; pass seed to generate_long_video")
    dit = models.dit if isinstance(models.dit, torch.nn.Module) else getattr(models.dit, "model", models.dit)
    cfg = uses_cfg(effective_variant(dit), dn.get("sampler", "auto"), dn.get("cfg"))

    # ---- the windows
    pending_frames = clip_tail[1:] if clip_tail is not None else None    # [K, H, W, 3]
    pending_audio = clip_audio[:, (clip_len - 1 - k_over) * hop:] if clip_audio is not None else None
    cond_frame = clip_tail[0] if clip_tail is not None else None
    for win in plan.windows:
        if check_cancel is not None:
            check_cancel()
        last = win.index == len(plan.windows) - 1
        log.info("MagiHuman long video: window %d/%d, frames %d-%d, seed %d, prompt %d", win.index + 1,
                 len(plan.windows), win.start, win.start + win.keep - 1, win.seed, win.prompt + 1)
        cond = prompts[win.prompt]
        latent = empty_latents(w, h, win.seconds)
        if latent.num_frames != win.frames:
            raise AssertionError(f"window latent of {latent.num_frames} frames, planned {win.frames}")
        first = cond_frame if win.conditioned else image
        if first is not None:
            latent = encode_image(models.get("video_vae", size=(w, h)), first, latent)
        if ref_latent is not None:
            latent.audio = ref_latent[:, win.start:win.start + win.frames].clone()
            latent.audio_fixed = True
        gen = torch.Generator(device=generator_device).manual_seed(win.seed)

        def step_cb(stage):
            return None if callback is None else (lambda i, n, x0: callback(win, stage, i, n, x0))

        dit = models.get("dit", latent, cfg=bool(cfg), batch_cfg=dn.get("batch_cfg", True))
        latent = denoise(dit, latent, cond, generator=gen, callback=step_cb("base"), **dn)
        if sr is not None:
            sr_dit = models.get("sr_dit", latent, cfg=bool(sro.get("cfg", False)),
                                batch_cfg=sro.get("batch_cfg", True), size=sr)
            latent = super_resolve(sr_dit, latent, cond, width=sr[0], height=sr[1], generator=gen,
                                   video_vae=models.get("video_vae", size=sr) if latent.image_latent is not None
                                   else None,
                                   callback=step_cb("sr"), **sro)
        if check_cancel is not None:
            check_cancel()
        frames = decode_video(models.get("video_decoder", latent), latent)  # [frames, H, W, 3]
        if frames.shape[0] != win.frames or tuple(frames.shape[1:3]) != (out_h, out_w):
            raise AssertionError(f"decoded {tuple(frames.shape)} for a window of {win.frames} frames "
                                 f"{out_w}x{out_h}")
        wave = None
        if ref_latent is None:
            wave, rate = decode_audio(models.get("audio_vae", latent), latent)  # [2, frames·2048]
            if rate != AUDIO_SAMPLE_RATE:
                wave = media.resample(wave, rate, AUDIO_SAMPLE_RATE)
            wave = _fit_samples(wave, win.frames * hop)
        if on_window is not None:
            on_window(win, latent, frames)

        # video: overlap cross-fade, then the frames that are final now
        s, k = win.start, plan.overlap if win.conditioned else 0
        upto = win.keep if last else plan.stride + 1  # window-local end of what is final after this window
        if not win.conditioned:
            out.put_frames(s, frames[:1])
        if k:
            a = torch.arange(1, k + 1, dtype=torch.float32).div(k + 1).view(k, 1, 1, 1)
            out.put_frames(s + 1, _crossfade(pending_frames, frames[1:k + 1], a))
        out.put_frames(s + 1 + k, frames[1 + k:upto])
        if not last:
            pending_frames = frames[plan.stride + 1:plan.stride + 1 + plan.overlap].clone()
            cond_frame = frames[plan.stride].clone()

        # audio the windows make themselves: cross-fade over the K + 1 shared steps
        if wave is not None:
            a_end = (win.keep if last else plan.stride) * hop
            if win.conditioned:
                n = (plan.overlap + 1) * hop
                b = (torch.arange(n, dtype=torch.float32) + 0.5) / n
                out.put_audio(s * hop, _crossfade(pending_audio, wave[:, :n], b))
                out.put_audio(s * hop + n, wave[:, n:a_end])
            else:
                out.put_audio(s * hop, wave[:, :a_end])
            if not last:
                pending_audio = wave[:, plan.stride * hop:(plan.stride + plan.overlap + 1) * hop].clone()
        del latent, frames, wave

    if out.written != frame_count:
        raise AssertionError(f"wrote {out.written} of {frame_count} frames")
    return LongVideoResult(plan=plan, frames=out.frames, frame_count=frame_count, audio=out.audio,
                           sample_rate=AUDIO_SAMPLE_RATE, size=(out_w, out_h), notes=list(notes))
