"""Decode nodes (video -> IMAGE frames, audio -> AUDIO) and AV latent split/join helpers."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..magihuman import pipeline
from . import compat
from .v3 import MagiNode, io
from .latent_io import TRUE_AUDIO_RATE, audio_latent, from_latent, join_latent, split_latent
from .types import node_name, MagiAudioVAE, MagiTurboVAE, MagiVideoVAE

WAN_TILE_OVERLAP = 8  # WanVAE.decode's default overlap between tiles (latent cells)
AUDIO_RATES = {"51200 (true rate)": TRUE_AUDIO_RATE, "48000": 48000, "44100 (official file rate)": 44100}


def _frames_all(decoder, av, **kw) -> torch.Tensor:
    """Decode every batch sample and stack the frames one clip after another: [B·F, H, W, 3]."""
    clips = []
    for b in range(av.batch):
        compat.check_interrupt()
        clips.append(pipeline.decode_video(decoder, av, batch_index=b, **kw))
    return torch.cat(clips, 0).to(compat.intermediate_device())


class MagiHumanTurboVAEDecode(MagiNode):
    DISPLAY_NAME, SUBCATEGORY = "MagiHuman Turbo VAE Decode", "decode"
    CONNECT = "`images` → Create Video (fps 25) → Save Video."

    @classmethod
    def define_schema(cls):
        return cls.schema(
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
        need = pipeline.memory.video_decode_bytes(turbo_vae.model, av, output_offload=offload_frames)
        return io.NodeOutput(_frames_all(turbo_vae.use(memory_required=need), av, output_offload=offload_frames))


class MagiHumanVideoVAEDecode(MagiNode):
    DISPLAY_NAME, SUBCATEGORY = "MagiHuman Wan2.2 VAE Decode (tiled)", "decode"
    CONNECT = "`images` → Create Video (fps 25) → Save Video."

    @classmethod
    def define_schema(cls):
        return cls.schema(
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
        need = pipeline.memory.video_decode_bytes(video_vae.model, av, tile=tile)
        return io.NodeOutput(_frames_all(video_vae.use(memory_required=need), av, tile=tile))


class MagiHumanAudioDecode(MagiNode):
    DISPLAY_NAME, SUBCATEGORY = "MagiHuman Audio Decode", "decode"
    CONNECT = "`audio` → the `audio` input of Create Video (48000 or 44100 Hz), or Save Audio (any rate, FLAC)."

    @classmethod
    def define_schema(cls):
        return cls.schema(
            description="Decodes the audio latent with the Oobleck VAE. The model's audio is really 51.2 kHz; "
                        "48000 (default) and 44100 are resampled properly. Connect its AUDIO to Create Video "
                        "(then Save Video) or to Save Audio.",
            inputs=[
                MagiAudioVAE.Input("audio_vae"),
                io.Latent.Input("latent", tooltip=f"An AV latent, or an audio latent from '{node_name('MagiHumanSplitAVLatent')}'."),
                io.Combo.Input("sample_rate", options=list(AUDIO_RATES), default="48000",
                               tooltip="Output rate. 48000 for video (Save Video writes AAC, which takes 48000 or "
                                       "44100 Hz); 51200 is the raw decoder output, for Save Audio (FLAC) only: "
                                       "MP4 and MP3 cannot store it, and this node says so before decoding."),
            ],
            outputs=[io.Audio.Output(display_name="audio")],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id] if compat.HAS_COMFY else [],
        )

    @classmethod
    def execute(cls, audio_vae, latent, sample_rate):
        where = cls.name()
        rate = AUDIO_RATES[sample_rate]
        check_rate_fits_consumers(rate, sample_rate, _hidden(cls, "prompt"), _hidden(cls, "unique_id"), where)
        z = audio_latent(latent, where)  # [B, 64, N]
        vae = audio_vae.use(memory_required=pipeline.memory.audio_decode_bytes(audio_vae.model, z.shape[-1]))
        waves = []
        with torch.no_grad():
            for b in range(z.shape[0]):
                compat.check_interrupt()
                waves.append(vae.decode(z[b:b + 1])[0].float().cpu())  # the VAE moves/casts to its weights
        wave = torch.stack(waves)  # [B, 2, S]
        if rate != TRUE_AUDIO_RATE:
            wave = torch.stack([pipeline.resample_audio(w, TRUE_AUDIO_RATE, rate) for w in wave])
        return io.NodeOutput({"waveform": wave.contiguous(), "sample_rate": rate})


# Core nodes that encode AUDIO at its own rate (no resampling): SaveVideo's MP4 path (AAC), Save Audio (MP3).
# Rates their FFmpeg encoders accept (PyAV 18: av.codec.Codec("aac", "w").audio_rates, libmp3lame).
AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
MP3_RATES = (48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000)
PASS_THROUGH = {"CreateVideo"}  # core nodes that hand the AUDIO on unchanged (VIDEO = images + this audio)
RATE_LIMITED = {"SaveVideo": ("an MP4 (Save Video writes AAC audio)", AAC_RATES),
                "SaveAudioMP3": ("an MP3", MP3_RATES)}


def _hidden(cls, name):
    holder = getattr(cls, "hidden", None)
    return getattr(holder, name, None) if holder is not None else None


def check_rate_fits_consumers(rate: int, label: str, prompt, node_id, where: str) -> None:
    """Fail before decoding, naming the node, when this AUDIO (directly or through Create Video) reaches a
    core encoder that cannot store ``rate``: FFmpeg's AAC/MP3 encoders reject 51200 Hz with a bare
    "Invalid argument" deep inside Save Video. ``prompt`` is the queued API prompt (ComfyUI's hidden input)."""
    if not isinstance(prompt, Mapping) or node_id is None:
        return
    frontier, seen = [str(node_id)], set()
    while frontier:
        src = frontier.pop()
        for nid, entry in prompt.items():
            if nid in seen or not isinstance(entry, Mapping):
                continue
            inputs = entry.get("inputs") or {}
            if not any(isinstance(v, (list, tuple)) and len(v) == 2 and str(v[0]) == src for v in inputs.values()):
                continue
            seen.add(nid)
            ctype = entry.get("class_type")
            if ctype in PASS_THROUGH:
                frontier.append(nid)
            elif ctype in RATE_LIMITED and rate not in RATE_LIMITED[ctype][1]:
                what, _ = RATE_LIMITED[ctype]
                title = (entry.get("_meta") or {}).get("title") or ctype
                raise ValueError(f"{where}: sample_rate '{label}' cannot be stored in {what}: '{title}' (node {nid}) "
                                 f"is downstream. Choose sample_rate 48000 here (the same sound, resampled), or save "
                                 f"the 51.2 kHz audio with Save Audio (FLAC).")


class MagiHumanSplitAVLatent(MagiNode):
    DISPLAY_NAME, SUBCATEGORY = "MagiHuman Split AV Latent", "latent"
    CONNECT = ("`video_latent` → other latent nodes or a video decoder; `audio_latent` → Audio Decode. Join them "
               "again before a MagiHuman sampler.")

    @classmethod
    def define_schema(cls):
        return cls.schema(
            description="Separates the video latent [B,48,T,h,w] and the audio latent [B,64,N] to route them apart "
                        "(e.g. decode only the audio, or process the video latent with other latent nodes); "
                        "join them again before a MagiHuman sampler.",
            inputs=[io.Latent.Input("latent")],
            outputs=[io.Latent.Output(display_name="video_latent"), io.Latent.Output(display_name="audio_latent")],
        )

    @classmethod
    def execute(cls, latent):
        return io.NodeOutput(*split_latent(latent, cls.name()))


class MagiHumanJoinAVLatent(MagiNode):
    DISPLAY_NAME, SUBCATEGORY = "MagiHuman Join AV Latent", "latent"
    CONNECT = "In: the two outputs of Split AV Latent. Out: `latent` → any MagiHuman node."

    @classmethod
    def define_schema(cls):
        return cls.schema(
            description="Joins a video latent and an audio latent from the split node back into one AV latent "
                        "(N audio steps need (N-1)//4+1 latent frames).",
            inputs=[io.Latent.Input("video_latent"), io.Latent.Input("audio_latent")],
            outputs=[io.Latent.Output(display_name="latent")],
        )

    @classmethod
    def execute(cls, video_latent, audio_latent):
        return io.NodeOutput(join_latent(video_latent, audio_latent, cls.name()))


DECODE_NODES = [MagiHumanTurboVAEDecode, MagiHumanVideoVAEDecode, MagiHumanAudioDecode, MagiHumanSplitAVLatent,
                MagiHumanJoinAVLatent]
