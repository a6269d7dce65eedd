"""Decode nodes (video -> IMAGE frames, audio -> AUDIO) and AV latent split/join helpers."""

from __future__ import annotations

import torch

from ..magihuman import pipeline
from . import compat
from .compat import io
from .latent_io import TRUE_AUDIO_RATE, from_latent, join_latent, split_latent
from .types import node_name, node_schema, MagiAudioVAE, MagiTurboVAE, MagiVideoVAE

WAN_TILE_OVERLAP = 8  # WanVAE.decode's default overlap between tiles (latent cells)
AUDIO_RATES = {"51200 (true rate)": TRUE_AUDIO_RATE, "48000": 48000, "44100 (official file rate)": 44100}


def _frames_all(decoder, av, **kw) -> torch.Tensor:
    """Decode every batch sample and stack the frames one clip after another: [B·F, H, W, 3]."""
    clips = []
    for b in range(av.batch):
        compat.check_interrupt()
        clips.append(pipeline.decode_video(decoder, av, batch_index=b, **kw))
    return torch.cat(clips, 0).to(compat.intermediate_device())


class MagiHumanTurboVAEDecode(compat.MagiNode):
    @classmethod
    def define_schema(cls):
        return node_schema(
            "MagiHumanTurboVAEDecode",
            description="Fast video decode (the official default): sliding-window chunks, bounded memory. "
                        "Gives 4(T-1)+1 frames at 25 fps.",
            inputs=[
                MagiTurboVAE.Input("turbo_vae"),
                io.Latent.Input("latent"),
                io.Boolean.Input("offload_frames", default=False,
                                 tooltip="Move each finished chunk to the CPU (long or 1080p clips on small GPUs)."),
            ],
            outputs=[io.Image.Output(display_name="images")],
        )

    @classmethod
    def execute(cls, turbo_vae, latent, offload_frames):
        av = from_latent(latent, cls.name())
        return io.NodeOutput(_frames_all(turbo_vae.use(), av, output_offload=offload_frames))


class MagiHumanVideoVAEDecode(compat.MagiNode):
    @classmethod
    def define_schema(cls):
        return node_schema(
            "MagiHumanVideoVAEDecode",
            description="Full-quality Wan2.2 decode, spatially tiled so high resolutions fit in memory.",
            inputs=[
                MagiVideoVAE.Input("video_vae"),
                io.Latent.Input("latent"),
                io.Int.Input("tile_size", default=32, min=0, max=256, step=2,
                             tooltip="Tile edge in latent cells (x16 pixels); 0 = no tiling."),
            ],
            outputs=[io.Image.Output(display_name="images")],
        )

    @classmethod
    def execute(cls, video_vae, latent, tile_size):
        av = from_latent(latent, cls.name())
        if 0 < tile_size <= WAN_TILE_OVERLAP:
            raise ValueError(f"{cls.name()}: tile_size {tile_size} is not larger than the "
                             f"{WAN_TILE_OVERLAP}-cell overlap between tiles; use 0 (no tiling) or 16 and more")
        tile = None if tile_size <= 0 else (tile_size, tile_size)
        return io.NodeOutput(_frames_all(video_vae.use(), av, tile=tile))


class MagiHumanAudioDecode(compat.MagiNode):
    @classmethod
    def define_schema(cls):
        return node_schema(
            "MagiHumanAudioDecode",
            description="Decodes the audio latent with the Oobleck VAE. The model's audio is really 51.2 kHz; "
                        "other rates are resampled properly.",
            inputs=[
                MagiAudioVAE.Input("audio_vae"),
                io.Latent.Input("latent", tooltip=f"An AV latent, or an audio latent from '{node_name('MagiHumanSplitAVLatent')}'."),
                io.Combo.Input("sample_rate", options=list(AUDIO_RATES), default="48000",
                               tooltip="Output rate. 48000 suits MP4/AAC; 51200 keeps the raw decoder output."),
            ],
            outputs=[io.Audio.Output(display_name="audio")],
        )

    @classmethod
    def execute(cls, audio_vae, latent, sample_rate):
        where = cls.name()
        vae = audio_vae.use()
        if isinstance(latent, dict) and latent.get("type") == "audio":
            z = latent["samples"]  # [B, 64, N]
            if z.dim() != 3 or z.shape[1] != 64:
                raise ValueError(f"{where}: audio latent must be [B, 64, N], got {tuple(z.shape)}")
        else:
            z = from_latent(latent, where).audio.transpose(1, 2)
        waves = []
        with torch.no_grad():
            for b in range(z.shape[0]):
                compat.check_interrupt()
                waves.append(vae.decode(z[b:b + 1])[0].float().cpu())  # the VAE moves/casts to its weights
        wave = torch.stack(waves)  # [B, 2, S]
        rate = AUDIO_RATES[sample_rate]
        if rate != TRUE_AUDIO_RATE:
            wave = torch.stack([pipeline.resample_audio(w, TRUE_AUDIO_RATE, rate) for w in wave])
        return io.NodeOutput({"waveform": wave.contiguous(), "sample_rate": rate})


class MagiHumanSplitAVLatent(compat.MagiNode):
    @classmethod
    def define_schema(cls):
        return node_schema(
            "MagiHumanSplitAVLatent",
            description="Separates the video latent [B,48,T,h,w] and the audio latent [B,64,N] to route them apart.",
            inputs=[io.Latent.Input("latent")],
            outputs=[io.Latent.Output(display_name="video_latent"), io.Latent.Output(display_name="audio_latent")],
        )

    @classmethod
    def execute(cls, latent):
        return io.NodeOutput(*split_latent(latent, cls.name()))


class MagiHumanJoinAVLatent(compat.MagiNode):
    @classmethod
    def define_schema(cls):
        return node_schema(
            "MagiHumanJoinAVLatent",
            description="Joins a video latent and an audio latent (N audio steps need (N-1)//4+1 latent frames).",
            inputs=[io.Latent.Input("video_latent"), io.Latent.Input("audio_latent")],
            outputs=[io.Latent.Output(display_name="latent")],
        )

    @classmethod
    def execute(cls, video_latent, audio_latent):
        return io.NodeOutput(join_latent(video_latent, audio_latent, cls.name()))


DECODE_NODES = [MagiHumanTurboVAEDecode, MagiHumanVideoVAEDecode, MagiHumanAudioDecode, MagiHumanSplitAVLatent,
                MagiHumanJoinAVLatent]
