"""ComfyUI LATENT / CONDITIONING <-> engine containers.

A MagiHuman LATENT is a normal ComfyUI latent dict whose ``samples`` is the video latent
[B, 48, T, h, w] (so latent previews and generic latent nodes see a video latent), plus:
- ``magihuman_audio``: the audio latent [B, N, 64] (one step per video frame);
- ``magihuman``: what else the stages carry (TI2V image latent and source image, A2V flag, stage
  "base"/"sr", whether it was denoised, size info).
The split node turns it into a video LATENT and an audio LATENT (``samples`` [B, 64, N], ``type``
"audio", like other audio latents in ComfyUI); the join node reverses that.

CONDITIONING follows ComfyUI's ``[[embeds, {...}]]`` form: ``embeds`` [1, 640, C] T5Gemma features
(zero-padded) with ``magihuman_len`` = the real token count.
"""

from __future__ import annotations

import torch

from ..magihuman.geometry import AUDIO_LATENT_CHANNELS, AUDIO_SAMPLE_RATE, VIDEO_LATENT_CHANNELS
from ..magihuman.pipeline import AVLatent, TextConditioning
from .types import node_name

JOIN, SPLIT, EMPTY, TEXT = (node_name(n) for n in ("MagiHumanJoinAVLatent", "MagiHumanSplitAVLatent",
                                                    "MagiHumanEmptyAVLatent", "MagiHumanTextEncode"))

AUDIO_KEY = "magihuman_audio"
META_KEY = "magihuman"
TRUE_AUDIO_RATE = AUDIO_SAMPLE_RATE


class LatentTypeError(ValueError):
    """A LATENT or CONDITIONING that MagiHuman nodes cannot use; the message says where it should come from."""


def to_latent(av: AVLatent) -> dict:
    meta = {"image_latent": av.image_latent, "image": av.image, "audio_fixed": av.audio_fixed,
            "stage": av.stage, "denoised": av.denoised, "info": dict(av.info)}
    return {"samples": av.video, AUDIO_KEY: av.audio, META_KEY: meta}


def from_latent(latent: dict, where: str) -> AVLatent:
    if not isinstance(latent, dict) or "samples" not in latent:
        raise LatentTypeError(f"{where}: expected a LATENT, got {type(latent).__name__}")
    if latent.get("type") == "audio":
        raise LatentTypeError(f"{where}: got an audio-only LATENT; join it with its video latent using "
                              f"'{JOIN}'")
    video = latent["samples"]
    if not isinstance(video, torch.Tensor) or video.dim() != 5 or video.shape[1] != VIDEO_LATENT_CHANNELS:
        shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
        raise LatentTypeError(f"{where}: this LATENT ({shape}) is not a MagiHuman audio+video latent "
                              f"([B, {VIDEO_LATENT_CHANNELS}, T, h, w]); start from '{EMPTY}'")
    if AUDIO_KEY not in latent:
        raise LatentTypeError(f"{where}: this LATENT has no MagiHuman audio latent (was it split, or made by another "
                              f"model's nodes?); use '{EMPTY}' or '{JOIN}'")
    meta = latent.get(META_KEY) or {}
    av = AVLatent(video=video, audio=latent[AUDIO_KEY], image_latent=meta.get("image_latent"),
                  image=meta.get("image"), audio_fixed=bool(meta.get("audio_fixed", False)),
                  stage=meta.get("stage", "base"), denoised=bool(meta.get("denoised", False)),
                  info=dict(meta.get("info") or {}))
    av.validate(where)
    return av


def split_latent(latent: dict, where: str) -> tuple[dict, dict]:
    av = from_latent(latent, where)
    meta = to_latent(av)[META_KEY]
    video = {"samples": av.video, META_KEY: meta}
    audio = {"samples": av.audio.transpose(1, 2).contiguous(), "type": "audio", "sample_rate": TRUE_AUDIO_RATE,
             META_KEY: {"audio_fixed": av.audio_fixed}}
    return video, audio


def join_latent(video: dict, audio: dict, where: str) -> dict:
    v = video.get("samples") if isinstance(video, dict) else None
    a = audio.get("samples") if isinstance(audio, dict) else None
    if not isinstance(v, torch.Tensor) or v.dim() != 5 or v.shape[1] != VIDEO_LATENT_CHANNELS:
        raise LatentTypeError(f"{where}: video_latent must be [B, {VIDEO_LATENT_CHANNELS}, T, h, w]")
    if not isinstance(a, torch.Tensor) or a.dim() != 3 or a.shape[1] != AUDIO_LATENT_CHANNELS:
        raise LatentTypeError(f"{where}: audio_latent must be a MagiHuman audio latent "
                              f"[B, {AUDIO_LATENT_CHANNELS}, N] (from '{SPLIT}')")
    meta = dict(video.get(META_KEY) or {})
    meta["audio_fixed"] = bool((audio.get(META_KEY) or {}).get("audio_fixed", False))
    out = {"samples": v, AUDIO_KEY: a.transpose(1, 2).contiguous(), META_KEY: meta}
    from_latent(out, where)  # validates lengths: N steps need (N-1)//4+1 video frames
    return out


def to_conditioning(embeds: torch.Tensor, length: int, text: str) -> list:
    return [[embeds, {"magihuman_len": int(length), "magihuman_prompt": text}]]


def text_conditioning(positive, negative=None, *, where: str) -> TextConditioning:
    def unpack(cond, name):
        if not isinstance(cond, (list, tuple)) or not cond or not isinstance(cond[0], (list, tuple)):
            raise LatentTypeError(f"{where}: {name} is not a CONDITIONING")
        embeds, extra = cond[0][0], cond[0][1] if len(cond[0]) > 1 else {}
        if "magihuman_len" not in extra:
            raise LatentTypeError(f"{where}: {name} was not made by '{TEXT}' (T5Gemma); other text "
                                  "encoders' conditioning does not fit this model")
        if int(extra["magihuman_len"]) <= 0:
            raise LatentTypeError(f"{where}: the {name} prompt was not encoded (empty); enable the negative prompt in "
                                  f"'{TEXT}' or use a sampler without CFG")
        return embeds.float(), [int(extra["magihuman_len"])], extra.get("magihuman_prompt", "")

    e, lens, text = unpack(positive, "positive")
    cond = TextConditioning(embeds=e, lens=lens, prompt=text)
    if negative is not None:
        ne, nlens, ntext = unpack(negative, "negative")
        cond.negative_embeds, cond.negative_lens, cond.negative_prompt = ne, nlens, ntext
    return cond
