"""Long-video nodes: a whole clip made window by window (MagiHuman Long Video) and an IMAGE + AUDIO clip continued
(MagiHuman Extend), both through magihuman.pipeline.generate_long_video."""

from __future__ import annotations

import torch

from ..magihuman import pipeline
from ..magihuman.geometry import BASE_STEPS, DISTILLED_STEPS, SR_STEPS
from ..magihuman.sampling import DEFAULT_NEGATIVE_PROMPT
from . import compat
from .v3 import MagiNode, io, ui
from .conditioning import audio_input, image_input
from .decode import AUDIO_RATES, TRUE_AUDIO_RATE, _hidden, check_rate_fits_consumers
from .latent_io import LatentTypeError, text_conditioning
from .sampling import SEED_MAX, SR_SIZES, prepare
from .types import MagiAudioVAE, MagiDiT, MagiSRDiT, MagiTextEncoder, MagiTurboVAE, MagiVideoVAE, node_name

MAX_TOTAL_SECONDS = 600.0  # the widget limit of the total length (10 minutes)


def _inputs(*, extend: bool) -> list:
    """The inputs both nodes share, in their order on the node."""
    what = "the length to add" if extend else "the whole clip"
    seconds = [io.Float.Input("seconds", default=4.0 if extend else 12.0, min=0.0, max=MAX_TOTAL_SECONDS, step=0.04,
                              tooltip=f"Length of {what} (25 frames a second). 0 = the length of the connected "
                                      "'speech' audio.")]
    return [
        MagiDiT.Input("model"),
        MagiVideoVAE.Input("video_vae", tooltip="The Wan2.2 VAE: re-encodes the frame each window starts from."),
        MagiAudioVAE.Input("audio_vae"),
        *seconds,
        io.Int.Input("width", default=448, min=32, max=4096, step=32,
                     tooltip="Base width (snapped down to a multiple of 32)."),
        io.Int.Input("height", default=256, min=32, max=4096, step=32,
                     tooltip="Base height (snapped down to a multiple of 32)."),
        io.Float.Input("window_seconds", default=4.0, min=pipeline.MIN_WINDOW_SECONDS,
                       max=pipeline.MAX_WINDOW_SECONDS, step=0.04,
                       tooltip="Length of one generation. Each window starts from the previous one's last frame "
                               "(re-encoded as its first frame); memory is one window's. The official examples "
                               "make 4-5 s."),
        io.Int.Input("overlap_frames", default=0, min=0, max=240,
                     tooltip="Frames each window makes again over the end of the previous one, cross-faded in "
                             "pixels (and its own audio over the same span). 0: seams are a single frame."),
        io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=True,
                     tooltip="Window k uses seed + k."),
        io.Int.Input("steps", default=0, min=0, max=200,
                     tooltip=f"Sampler steps per window; 0 = the model's own ({DISTILLED_STEPS} distilled, "
                             f"{BASE_STEPS} base with CFG)."),
        io.Combo.Input("sample_rate", options=list(AUDIO_RATES), default="48000",
                       tooltip="Rate of the AUDIO output: 48000 for Save Video (AAC), 51200 is the model's own."),
        io.Conditioning.Input("positive", optional=True,
                              tooltip="The prompt from MagiHuman Text Encode. Several prompts joined with "
                                      "Conditioning (Combine): one per window, in order (the last one carries on)."),
        MagiTextEncoder.Input("text_encoder", optional=True, tooltip="Needed for 'prompts'."),
        io.String.Input("prompts", multiline=True, default="", optional=True,
                        tooltip="Per-window prompts (instead of 'positive'), separated by lines holding only '---'; "
                                "the last one carries on. Needs the text encoder."),
        io.Conditioning.Input("negative", optional=True,
                              tooltip="For the base model's CFG (with 'prompts' and a text encoder the official "
                                      "negative prompt is used when this is not connected)."),
        MagiTurboVAE.Input("turbo_vae", optional=True,
                           tooltip="Fast decoder (the official default); without it the Wan2.2 VAE decodes."),
        io.Audio.Input("speech", optional=True,
                       tooltip="A2V: the soundtrack of the new frames (any length; sliced per window at 25 steps a "
                               "second, so the output audio is this audio exactly)."),
        MagiSRDiT.Input("sr_model", optional=True, tooltip="Super-resolution DiT, run on every window."),
        io.Combo.Input("sr_resolution", options=list(SR_SIZES), default="540p (896x512)", optional=True,
                       tooltip="SR size; 'custom' uses sr_width/sr_height."),
        io.Int.Input("sr_width", default=896, min=32, max=4096, step=32, optional=True,
                     tooltip="SR width when sr_resolution is custom (snapped down to a multiple of 32)."),
        io.Int.Input("sr_height", default=512, min=32, max=4096, step=32, optional=True,
                     tooltip="SR height when sr_resolution is custom (snapped down to a multiple of 32)."),
        io.Int.Input("sr_steps", default=SR_STEPS, min=1, max=50, optional=True,
                     tooltip=f"SR sampler steps per window (official {SR_STEPS})."),
    ]


def _conditionings(where: str, positive, prompts, text_encoder, negative, need_negative: bool) -> list:
    """One TextConditioning per window prompt: the ``prompts`` text (encoded here) or the entries of ``positive``."""
    texts = pipeline.split_prompts(prompts or "")
    if texts:
        if text_encoder is None:
            raise ValueError(f"{where}: 'prompts' needs the text encoder: connect MagiHuman T5Gemma Loader to "
                             "'text_encoder' (or connect 'positive' instead)")
        neg_text = DEFAULT_NEGATIVE_PROMPT if need_negative and negative is None else None
        need = pipeline.memory.text_encode_bytes(text_encoder.model, [*texts, neg_text])
        conds = pipeline.encode_prompts(text_encoder.use(memory_required=need), texts, neg_text)
        if need_negative and negative is not None:
            neg = text_conditioning(negative, where=where)
            for c in conds:
                c.negative_embeds, c.negative_lens, c.negative_prompt = neg.embeds, neg.lens, neg.prompt
        return conds
    if positive is None:
        raise ValueError(f"{where}: connect 'positive' (from {node_name('MagiHumanTextEncode')}) or write 'prompts' "
                         "with a text encoder connected")
    if need_negative and negative is None:
        raise ValueError(f"{where}: the base model samples with CFG: connect 'negative' (the second output of "
                         f"{node_name('MagiHumanTextEncode')})")
    if not isinstance(positive, (list, tuple)) or not positive:
        raise LatentTypeError(f"{where}: positive is not a CONDITIONING")
    return [text_conditioning([entry], negative if need_negative else None, where=where) for entry in positive]


def _vae_call_bytes(role: str, model, latent, *, size=None, samples=None) -> int:
    """What a VAE call of the long-video run needs beside the weights (see LongVideoModels), as the single-shot
    nodes reserve it."""
    memory = pipeline.memory
    if role == "video_vae":
        return memory.image_encode_bytes(model, *size)
    if role == "video_decoder":
        return memory.video_decode_bytes(model, latent)
    if latent is None:  # the A2V reference
        return memory.reference_audio_encode_bytes(model, samples)
    return memory.audio_decode_bytes(model, latent.audio.shape[1])


class _LongVideoBase(MagiNode):
    """The code both long-video nodes run (siblings, not subclasses of a registered node)."""

    @classmethod
    def _generate(cls, *, model, video_vae, audio_vae, seconds, width, height, window_seconds, overlap_frames, seed,
                  steps, sample_rate, positive=None, text_encoder=None, prompts="", negative=None, turbo_vae=None,
                  speech=None, sr_model=None, sr_resolution=None, sr_width=896, sr_height=512, sr_steps=SR_STEPS,
                  image=None, continue_from=None):
        where = cls.name()
        rate = AUDIO_RATES[sample_rate]
        check_rate_fits_consumers(rate, sample_rate, _hidden(cls, "prompt"), _hidden(cls, "unique_id"), where)
        cfg = pipeline.effective_variant(model.model) == "base"  # base: UniPC with CFG; distilled: 8 steps, no CFG
        conds = _conditionings(where, positive, prompts, text_encoder, negative, cfg)
        reference = None
        if speech is not None:
            wave, speech_rate = audio_input(speech, where)
            reference = (wave[0] if wave.dim() == 3 else wave).float(), speech_rate
        if not seconds and reference is None:
            raise ValueError(f"{where}: seconds is 0, which means 'the length of the speech', but no 'speech' audio "
                             "is connected: set the seconds")
        sr_size = None
        if sr_model is not None:
            sr_size = SR_SIZES.get(sr_resolution or "540p (896x512)") or (sr_width, sr_height)
        sr_steps_n = int(sr_steps or SR_STEPS) if sr_model is not None else 0
        steps_n = int(steps) or None
        steps_each = steps_n or (BASE_STEPS if cfg else DISTILLED_STEPS)
        bar = {}

        def on_plan(plan):
            bar["cb"] = compat.progress_callback(len(plan.windows) * (steps_each + sr_steps_n))

        def on_step(win, stage, i, n, x0):
            done = win.index * (steps_each + sr_steps_n) + (i if stage == "base" else steps_each + i)
            bar["cb"](done, None, x0)

        def use(role, handle, latent, **fit):
            if role in ("dit", "sr_dit"):
                return prepare(handle, latent, where, cfg=fit.get("cfg", False), batch_cfg=fit.get("batch_cfg", True),
                               size=fit.get("size"))
            return handle.use(memory_required=_vae_call_bytes(role, handle.model, latent, **fit))

        models = pipeline.LongVideoModels(dit=model, video_vae=video_vae, audio_vae=audio_vae, video_decoder=turbo_vae,
                                          sr_dit=sr_model, use=use)
        try:
            result = pipeline.generate_long_video(
                models, conds, width=width, height=height, seconds=seconds or None, window_seconds=window_seconds,
                overlap_frames=overlap_frames, seed=seed,
                denoise_options=dict(sampler="unipc" if cfg else "distilled", steps=steps_n, cfg=cfg),
                sr_size=sr_size, sr_options=dict(steps=sr_steps_n) if sr_model is not None else None,
                image=image, reference_audio=reference, continue_from=continue_from, callback=on_step,
                check_cancel=compat.check_interrupt, on_plan=on_plan)
        except pipeline.PipelineError as e:
            raise pipeline.PipelineError(f"{where}: {e}") from None
        wave = result.audio
        if rate != TRUE_AUDIO_RATE:
            wave = pipeline.resample_audio(wave, TRUE_AUDIO_RATE, rate)
        device = compat.intermediate_device()
        compat.free_memory()
        w, h = result.size
        text = "\n".join([f"{result.plan.describe()}: {result.frame_count} frames {w}x{h} "
                          f"({result.frame_count / pipeline.FPS:.2f} s)", *result.notes])
        return io.NodeOutput(result.frames.to(device), {"waveform": wave[None].contiguous(), "sample_rate": rate},
                             ui=ui.PreviewText(text))


class MagiHumanLongVideo(_LongVideoBase):
    DISPLAY_NAME, SUBCATEGORY = "MagiHuman Long Video", "long video"

    @classmethod
    def define_schema(cls):
        return cls.schema(
            description="A clip of any length, made in windows of a few seconds: each window after the first starts "
                        "from the previous one's last frame (re-encoded as its first frame, the TI2V path), with its "
                        "own prompt and seed + k. With 'speech', the audio drives the whole clip (A2V) and stays "
                        "exactly as given. Memory is one window's. Seams: see 'overlap_frames'.",
            inputs=[*_inputs(extend=False),
                    io.Image.Input("image", optional=True, tooltip="TI2V: the first frame of the clip.")],
            outputs=[io.Image.Output(display_name="images"), io.Audio.Output(display_name="audio")],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id] if compat.HAS_COMFY else [],
        )

    @classmethod
    def execute(cls, model, video_vae, audio_vae, seconds, width, height, window_seconds, overlap_frames, seed,
                steps, sample_rate, image=None, **optional):
        if image is not None:
            image = image_input(image, cls.name())
        return cls._generate(model=model, video_vae=video_vae, audio_vae=audio_vae, seconds=seconds, width=width,
                             height=height, window_seconds=window_seconds, overlap_frames=overlap_frames, seed=seed,
                             steps=steps, sample_rate=sample_rate, image=image, **optional)


EXTEND_OUTPUTS = {"clip + new part": True, "new part only": False}


class MagiHumanExtend(_LongVideoBase):
    DISPLAY_NAME, SUBCATEGORY = "MagiHuman Extend", "long video"

    @classmethod
    def define_schema(cls):
        return cls.schema(
            description="Continues a clip (IMAGE frames at 25 fps + its AUDIO): its last frame starts the first new "
                        "window and its sound is kept. A clip of another size is centre-cropped and resized to "
                        "width x height (or the SR size), as a TI2V image is.",
            inputs=[io.Image.Input("images", tooltip="The clip to continue, 25 frames a second."),
                    *_inputs(extend=True),
                    io.Audio.Input("clip_audio", optional=True, tooltip="The clip's sound (kept as it is)."),
                    io.Combo.Input("output", options=list(EXTEND_OUTPUTS), default="clip + new part", optional=True,
                                   tooltip="The clip followed by the new part, or the new part alone.")],
            outputs=[io.Image.Output(display_name="images"), io.Audio.Output(display_name="audio")],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id] if compat.HAS_COMFY else [],
        )

    @classmethod
    def execute(cls, images, model, video_vae, audio_vae, seconds, width, height, window_seconds, overlap_frames,
                seed, steps, sample_rate, clip_audio=None, output=None, **optional):
        where = cls.name()
        frames = image_input(images, where)
        if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[-1] != 3 or not frames.shape[0]:
            raise ValueError(f"{where}: 'images' must be the clip's frames [frames, height, width, 3]; got "
                             f"{tuple(getattr(frames, 'shape', ()))}")
        sound = None
        if clip_audio is not None:
            wave, rate = audio_input(clip_audio, where)
            sound = ((wave[0] if wave.dim() == 3 else wave).float(), rate)
        clip = pipeline.ClipToContinue(frames=frames.detach().cpu().float(), audio=sound,
                                       keep_original=EXTEND_OUTPUTS[output or "clip + new part"])
        return cls._generate(model=model, video_vae=video_vae, audio_vae=audio_vae, seconds=seconds, width=width,
                             height=height, window_seconds=window_seconds, overlap_frames=overlap_frames, seed=seed,
                             steps=steps, sample_rate=sample_rate, continue_from=clip, **optional)


LONG_VIDEO_NODES = [MagiHumanLongVideo, MagiHumanExtend]
