"""Conditioning nodes: prompt encoding, empty AV latent, image (TI2V) and reference audio (A2V)."""

from __future__ import annotations

import logging

import torch

from ..magihuman import pipeline
from ..magihuman.sampling import DEFAULT_NEGATIVE_PROMPT
from . import compat
from .compat import io, ui
from .latent_io import from_latent, to_conditioning, to_latent
from .types import node_name, node_schema, MagiAudioVAE, MagiTextEncoder, MagiVideoVAE

log = logging.getLogger("magihuman.nodes")


class MagiHumanTextEncode(compat.MagiNode):
    @classmethod
    def define_schema(cls):
        return node_schema(
            "MagiHumanTextEncode",
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
            ],
            outputs=[io.Conditioning.Output(display_name="positive"), io.Conditioning.Output(display_name="negative")],
        )

    @classmethod
    def execute(cls, text_encoder, prompt, negative_prompt, encode_negative):
        where = cls.name()
        if not isinstance(prompt, str) or not prompt.strip():
            raise pipeline.PipelineError(f"{where}: the prompt is empty: describe the video (and what is said)")
        if encode_negative and (not isinstance(negative_prompt, str) or not negative_prompt.strip()):
            raise pipeline.PipelineError(f"{where}: the negative prompt is empty: write one (the default is the "
                                         "official negative prompt) or turn 'encode_negative' off (distilled "
                                         "sampler, no CFG)")
        model = text_encoder.use()
        neg = negative_prompt if encode_negative else None
        cond = pipeline.encode_prompt(model, prompt, neg)
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


class MagiHumanEmptyAVLatent(compat.MagiNode):
    @classmethod
    def define_schema(cls):
        return node_schema(
            "MagiHumanEmptyAVLatent",
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


class MagiHumanImageToVideo(compat.MagiNode):
    @classmethod
    def define_schema(cls):
        return node_schema(
            "MagiHumanImageToVideo",
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
        out = pipeline.encode_image(video_vae.use(), image, av)
        device = compat.intermediate_device()
        out.image_latent = out.image_latent.to(device)
        return io.NodeOutput(to_latent(out))


class MagiHumanReferenceAudio(compat.MagiNode):
    @classmethod
    def define_schema(cls):
        return node_schema(
            "MagiHumanReferenceAudio",
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
        if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
            raise ValueError(f"{where}: 'audio' must be a ComfyUI AUDIO (waveform + sample_rate)")
        wave = audio["waveform"]
        if not isinstance(wave, torch.Tensor):
            raise ValueError(f"{where}: 'audio' waveform must be a tensor [batch, channels, samples]")
        if wave.dim() == 3:
            if wave.shape[0] > 1:
                log.warning("%s: %d audio clips given; using the first", where, wave.shape[0])
            wave = wave[0]
        seconds = None if trim_to_latent else wave.shape[-1] / float(audio["sample_rate"])
        out = pipeline.encode_reference_audio(audio_vae.use(), wave.float(), int(audio["sample_rate"]), av,
                                              seconds=seconds)
        out.audio = out.audio.to(compat.intermediate_device())
        return io.NodeOutput(to_latent(out))


CONDITIONING_NODES = [MagiHumanTextEncode, MagiHumanEmptyAVLatent, MagiHumanImageToVideo, MagiHumanReferenceAudio]
