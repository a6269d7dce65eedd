"""Conditioning nodes: prompt encoding, empty AV latent, image (TI2V) and reference audio (A2V)."""

from __future__ import annotations

import logging
import numbers
from collections.abc import Mapping

import numpy as np
import torch
from PIL import Image

from ..magihuman import pipeline
from ..magihuman.sampling import DEFAULT_NEGATIVE_PROMPT
from . import compat
from .v3 import MagiNode, io, ui
from .latent_io import from_latent, to_conditioning, to_latent
from .types import node_name, MagiAudioVAE, MagiTextEncoder, MagiVideoVAE

log = logging.getLogger("magihuman.nodes")


class MagiHumanTextEncode(MagiNode):
    DISPLAY_NAME, SUBCATEGORY = "MagiHuman Text Encode", "conditioning"
    CONNECT = ("In: `text_encoder` from the T5Gemma Loader. Out: `positive` → sampler / SR; `negative` → Base "
               "Sampler (CFG) or SR with CFG.")

    @classmethod
    def define_schema(cls):
        return cls.schema(
            description="Encodes the prompt (and the negative prompt for CFG) with T5Gemma into 640-token features.",
            inputs=[
                MagiTextEncoder.Input("text_encoder"),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="What happens and what is said. Supported: English, Chinese, Japanese, Korean, "
                                        "German, French. More than 640 tokens are trimmed (a warning says so)."),
                io.String.Input("negative_prompt", multiline=True, default=DEFAULT_NEGATIVE_PROMPT,
                                tooltip="Used by the base sampler's CFG (and optional SR CFG). The default is the "
                                        "official negative prompt."),
                io.Boolean.Input("encode_negative", default=True,
                                 tooltip="Off for the distilled model (no CFG): skips encoding the negative prompt."),
                io.Boolean.Input("cjk_spacing", default=True, optional=True,
                                 tooltip="On (as the model was trained): one space between Chinese, Japanese and "
                                         "Korean characters ('你好' -> '你 好'), in both prompts. Already spaced "
                                         "text and Latin text are unchanged. Off: the text is encoded as typed."),
            ],
            outputs=[io.Conditioning.Output(display_name="positive"), io.Conditioning.Output(display_name="negative")],
        )

    @classmethod
    def execute(cls, text_encoder, prompt, negative_prompt, encode_negative, cjk_spacing=None):
        where = cls.name()
        if not isinstance(prompt, str) or not prompt.strip():
            raise pipeline.PipelineError(f"{where}: the prompt is empty: describe the video (and what is said)")
        if encode_negative and (not isinstance(negative_prompt, str) or not negative_prompt.strip()):
            raise pipeline.PipelineError(f"{where}: the negative prompt is empty: write one (the default is the "
                                         "official negative prompt) or turn 'encode_negative' off (distilled "
                                         "sampler, no CFG)")
        neg = negative_prompt if encode_negative else None
        need = pipeline.memory.text_encode_bytes(text_encoder.model, [prompt, neg], cjk_spacing=cjk_spacing is not False)
        model = text_encoder.use(memory_required=need)
        # an API prompt written before this input existed leaves it out: the schema default (on) applies
        cond = pipeline.encode_prompt(model, prompt, neg, cjk_spacing=cjk_spacing is not False)
        device = compat.intermediate_device()
        positive = to_conditioning(cond.embeds.to(device), cond.lens[0], cond.prompt)
        if cond.has_negative:
            negative = to_conditioning(cond.negative_embeds.to(device), cond.negative_lens[0], cond.negative_prompt)
        else:
            negative = to_conditioning(torch.zeros_like(cond.embeds, device=device), 0, "")
        return io.NodeOutput(positive, negative)


MAX_SIZE, MAX_SECONDS, MAX_BATCH = 4096, 60.0, 16  # the widget limits of MagiHuman Empty AV Latent


def check_latent_request(width, height, seconds, batch_size, where: str) -> None:
    """Refuse requests beyond the node's widget limits (empty_latents then checks sizes and memory)."""
    for name, v in (("width", width), ("height", height)):
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v > MAX_SIZE:
            raise ValueError(f"{where}: {name} {v} is above the maximum of {MAX_SIZE} pixels; generate at the base "
                             f"size (e.g. 448x256) and upscale with '{node_name('MagiHumanLatentSR')}'")
    if isinstance(seconds, (int, float)) and seconds > MAX_SECONDS:
        raise ValueError(f"{where}: {seconds} s is above the maximum of {MAX_SECONDS:g} s; generate shorter clips "
                         "(the model was trained on clips of a few seconds) and join them")
    if isinstance(batch_size, int) and batch_size > MAX_BATCH:
        raise ValueError(f"{where}: batch_size {batch_size} is above the maximum of {MAX_BATCH}; queue several runs")


class MagiHumanEmptyAVLatent(MagiNode):
    DISPLAY_NAME, SUBCATEGORY = "MagiHuman Empty AV Latent", "latent"
    CONNECT = "`latent` → a sampler, or first through Image To Video (TI2V) / Reference Audio (A2V)."

    @classmethod
    def define_schema(cls):
        return cls.schema(
            description="Empty joint video+audio latent. Sizes snap down to multiples of 32; 25 fps; the audio latent "
                        "has one step per video frame.",
            inputs=[
                io.Int.Input("width", default=448, min=32, max=4096, step=32,
                             tooltip="Pixels; snapped down to a multiple of 32. Official base size: 448."),
                io.Int.Input("height", default=256, min=32, max=4096, step=32,
                             tooltip="Pixels; snapped down to a multiple of 32. Official base size: 256."),
                io.Float.Input("seconds", default=4.0, min=0.04, max=60.0, step=0.04,
                               tooltip="Clip length: 25·seconds + 1 frames (rounded to whole frames)."),
                io.Int.Input("batch_size", default=1, min=1, max=16, tooltip="Clips generated together."),
            ],
            outputs=[io.Latent.Output(display_name="latent")],
        )

    @classmethod
    def execute(cls, width, height, seconds, batch_size):
        where = cls.name()
        check_latent_request(width, height, seconds, batch_size, where)
        try:
            av = pipeline.empty_latents(width, height, seconds, batch=batch_size, device=compat.intermediate_device())
        except pipeline.PipelineError as e:
            raise pipeline.PipelineError(f"{where}: {e}") from None
        i = av.info
        text = (f"{i['size'][0]}x{i['size'][1]}" + (f" (snapped from {width}x{height})" if i["snapped"] else "")
                + f", {i['num_frames']} frames ({i['latent_frames']} latent), audio {i['num_frames']} steps")
        return io.NodeOutput(to_latent(av), ui=ui.PreviewText(text))


class MagiHumanImageToVideo(MagiNode):
    DISPLAY_NAME, SUBCATEGORY = "MagiHuman Image To Video (TI2V)", "conditioning"
    CONNECT = ("In: the empty AV latent, `video_vae` (Wan2.2 VAE Loader), an IMAGE (Load Image). Out: `latent` → a "
               "sampler.")

    @classmethod
    def define_schema(cls):
        return cls.schema(
            description="Uses an image as the first frame: centre-cropped to the latent's aspect, resized and encoded "
                        "with the Wan2.2 VAE; the samplers keep latent frame 0 equal to it.",
            inputs=[
                io.Latent.Input("latent", tooltip=f"From '{node_name('MagiHumanEmptyAVLatent')}' (after reference audio, if any)."),
                MagiVideoVAE.Input("video_vae"),
                io.Image.Input("image", tooltip="The first frame. With a batch of images, the first one is used."),
            ],
            outputs=[io.Latent.Output(display_name="latent")],
        )

    @classmethod
    def execute(cls, latent, video_vae, image):
        av = from_latent(latent, cls.name())
        image = image_input(image, cls.name())
        need = pipeline.memory.image_encode_bytes(video_vae.model, *av.pixel_size)
        out = pipeline.encode_image(video_vae.use(memory_required=need), image, av)
        device = compat.intermediate_device()
        out.image_latent = out.image_latent.to(device)
        return io.NodeOutput(to_latent(out))


# ComfyUI passes whatever the upstream node returned; core nodes only index AUDIO (audio["waveform"],
# audio["sample_rate"]) and compute on IMAGE tensors, so other packs return other containers: e.g.
# VideoHelperSuite's Load Video gives AUDIO as a lazy collections.abc.Mapping that reads the file on first
# access. These accept what core nodes accept and name the node when the input really is something else.
AUDIO_HELP = "a ComfyUI AUDIO (waveform [batch, channels, samples] + sample_rate), e.g. from Load Audio"


def audio_input(audio, where: str) -> tuple[torch.Tensor, int]:
    """A ComfyUI AUDIO (a dict, any Mapping such as VideoHelperSuite's lazy one, or another object that core
    nodes can index by ``"waveform"``/``"sample_rate"``) -> (waveform tensor, whole sample rate in Hz)."""
    if audio is None or isinstance(audio, (str, bytes, torch.Tensor, np.ndarray, list, tuple)):
        raise ValueError(f"{where}: 'audio' must be {AUDIO_HELP}; got {type(audio).__name__}")
    try:
        wave, rate = audio["waveform"], audio["sample_rate"]
    except Exception as e:  # noqa: BLE001 - whatever the object (or its lazy loader) raises
        if not isinstance(audio, Mapping):
            if isinstance(e, (KeyError, TypeError, IndexError, ValueError)):
                raise ValueError(f"{where}: 'audio' must be {AUDIO_HELP}; got {type(audio).__name__}") from None
        elif isinstance(e, KeyError) and e.args and e.args[0] in ("waveform", "sample_rate"):
            try:
                keys = ", ".join(repr(k) for k in list(audio)[:8]) or "none"
            except Exception:  # noqa: BLE001 - only for the message
                keys = "unreadable"
            raise ValueError(f"{where}: 'audio' must be {AUDIO_HELP}; this {type(audio).__name__} has no "
                             f"{e.args[0]!r} (its keys: {keys})") from None
        # a lazy AUDIO that fails to load, e.g. VideoHelperSuite's for a video without a sound track
        raise ValueError(f"{where}: could not read the 'audio' input ({type(e).__name__}: {e}); if it comes from "
                         "a video, does the file have a sound track?") from e
    if not isinstance(wave, torch.Tensor):
        raise ValueError(f"{where}: 'audio' waveform must be a tensor [batch, channels, samples]; "
                         f"got {type(wave).__name__}")
    try:
        r = rate.item() if isinstance(rate, (torch.Tensor, np.ndarray, np.generic)) else rate
        if isinstance(r, bool) or not isinstance(r, numbers.Real) or r != int(r):
            raise TypeError
    except (TypeError, ValueError, OverflowError, RuntimeError):
        raise ValueError(f"{where}: 'audio' sample_rate must be a whole number of Hz; got {rate!r}") from None
    return wave, int(r)


IMAGE_HELP = "a ComfyUI IMAGE (a [batch, height, width, channels] tensor), e.g. from Load Image"


def image_input(image, where: str):
    """A ComfyUI IMAGE: a tensor (what core nodes and other packs pass; [B, H, W, C] or [H, W, C]); numpy arrays
    and PIL images are also taken (the engine reads them). Anything else, a file path string included (a graph
    input is not a path on the server), gets an error naming the node."""
    if isinstance(image, (torch.Tensor, np.ndarray, Image.Image)):
        return image
    raise ValueError(f"{where}: 'image' must be {IMAGE_HELP}; got {type(image).__name__}")


class MagiHumanReferenceAudio(MagiNode):
    DISPLAY_NAME, SUBCATEGORY = "MagiHuman Reference Audio (A2V)", "conditioning"
    CONNECT = "In: the empty AV latent, `audio_vae`, an AUDIO (Load Audio). Out: `latent` → a sampler."

    @classmethod
    def define_schema(cls):
        return cls.schema(
            description="Audio-driven video: the reference audio (any rate/channels; mixed to mono, resampled to "
                        "51.2 kHz) becomes the fixed audio latent and sets the clip length.",
            inputs=[
                io.Latent.Input("latent", tooltip=f"From '{node_name('MagiHumanEmptyAVLatent')}'."),
                MagiAudioVAE.Input("audio_vae"),
                io.Audio.Input("audio", tooltip="e.g. from Load Audio. Longer than the latent: trimmed to it."),
                io.Boolean.Input("trim_to_latent", default=True,
                                 tooltip="On: cut the audio to the latent's seconds. Off: the audio length decides."),
            ],
            outputs=[io.Latent.Output(display_name="latent")],
        )

    @classmethod
    def execute(cls, latent, audio_vae, audio, trim_to_latent):
        where = cls.name()
        av = from_latent(latent, where)
        wave, rate = audio_input(audio, where)
        if wave.dim() == 3:
            if wave.shape[0] == 0:
                raise ValueError(f"{where}: 'audio' holds no clip (its waveform is {tuple(wave.shape)})")
            if wave.shape[0] > 1:
                log.warning("%s: %d audio clips given; using the first", where, wave.shape[0])
            wave = wave[0]
        seconds = None if trim_to_latent or rate <= 0 else wave.shape[-1] / float(rate)
        need = pipeline.memory.reference_audio_encode_bytes(audio_vae.model, wave.shape[-1], rate)  # untrimmed
        out = pipeline.encode_reference_audio(audio_vae.use(memory_required=need), wave.float(), rate, av,
                                              seconds=seconds)
        out.audio = out.audio.to(compat.intermediate_device())
        return io.NodeOutput(to_latent(out))


CONDITIONING_NODES = [MagiHumanTextEncode, MagiHumanEmptyAVLatent, MagiHumanImageToVideo, MagiHumanReferenceAudio]
