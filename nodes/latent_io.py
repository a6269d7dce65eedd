"""ComfyUI LATENT / CONDITIONING <-> engine containers.

A MagiHuman LATENT is a ComfyUI latent dict (any ``collections.abc.Mapping`` is read) holding the video
latent [B, 48, T, h, w] and the audio latent [B, N, 64] (one step per video frame) of the same clips:

- inside ComfyUI, ``samples`` is a NestedTensor([video, audio]), the container core ComfyUI uses for its own
  audio+video latent (LTX-AV): core VAE Decode takes the video member, and core latent nodes index every
  member alike, so Latent From Batch, Repeat Latent Batch, Latent Batch and Save / Load Latent keep each
  clip's video and audio together (the class :func:`av_samples_class` adds what ComfyUI 0.8.0's NestedTensor
  lacks for those nodes);
- outside ComfyUI (engine, scripts, tests) ``samples`` is the video tensor and ``magihuman_audio`` the audio
  tensor (plain tensors);
- a latent written by core Save Latent and read back by Load Latent is one packed tensor [B, 1, L] (a small
  header, then video and audio; :func:`pack_av`).

Every form is read by every node. ``magihuman`` carries what else the stages need (TI2V image latent and
source image, A2V flag, stage "base"/"sr", whether it was denoised, size info).
The split node turns it into a video LATENT and an audio LATENT (``samples`` [B, 64, N], ``type``
"audio", like other audio latents in ComfyUI); the join node reverses that.

CONDITIONING follows ComfyUI's ``[[embeds, {...}]]`` form: ``embeds`` [1, 640, C] T5Gemma features
(zero-padded) with ``magihuman_len`` = the real token count.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..magihuman.geometry import AUDIO_LATENT_CHANNELS, AUDIO_SAMPLE_RATE, VIDEO_LATENT_CHANNELS
from ..magihuman.pipeline import AVLatent, TextConditioning
from . import compat
from .types import node_name

JOIN, SPLIT, EMPTY, TEXT = "MagiHumanJoinAVLatent", "MagiHumanSplitAVLatent", "MagiHumanEmptyAVLatent", "MagiHumanTextEncode"

AUDIO_KEY = "magihuman_audio"
META_KEY = "magihuman"
TRUE_AUDIO_RATE = AUDIO_SAMPLE_RATE


class LatentTypeError(ValueError):
    """A LATENT or CONDITIONING that MagiHuman nodes cannot use; the message says where it should come from."""


# --------------------------------------------------------------------------------------------
# Flags that travel with the tensors (meta dict, AV samples object, packed header)
# --------------------------------------------------------------------------------------------
_DENOISED, _AUDIO_FIXED, _SR = 1, 2, 4


def _flags(stage: str, denoised: bool, audio_fixed: bool) -> int:
    return (_DENOISED if denoised else 0) | (_AUDIO_FIXED if audio_fixed else 0) | (_SR if stage == "sr" else 0)


def _unflag(flags: int) -> dict:
    return {"stage": "sr" if flags & _SR else "base", "denoised": bool(flags & _DENOISED),
            "audio_fixed": bool(flags & _AUDIO_FIXED)}


# --------------------------------------------------------------------------------------------
# Packed form: what core Save Latent writes (one tensor), Load Latent reads back
# --------------------------------------------------------------------------------------------
PACK_MAGIC = (7734.0, -4471.0)  # two values no latent row starts with: a packed MagiHuman latent
PACK_VERSION = 1.0
PACK_HEADER = 8                 # magic, magic, version, T, h, w, N, flags


def pack_av(video: torch.Tensor, audio: torch.Tensor, flags: int = 0) -> torch.Tensor:
    """Video [B, 48, T, h, w] + audio [B, N, 64] -> one fp32 tensor [B, 1, 8 + 48·T·h·w + 64·N]; each row starts
    with its own header (so core batch nodes can slice or concatenate the packed form too)."""
    b, _, t, h, w = video.shape
    header = torch.tensor([*PACK_MAGIC, PACK_VERSION, t, h, w, audio.shape[1], int(flags)], dtype=torch.float32,
                          device=video.device).expand(b, -1)
    rows = torch.cat([header, video.reshape(b, -1).float(), audio.reshape(b, -1).float().to(video.device)], dim=1)
    return rows.unsqueeze(1).contiguous()


def unpack_av(packed) -> tuple[torch.Tensor, torch.Tensor, int] | None:
    """(video, audio, flags) of a :func:`pack_av` tensor; None for any other tensor."""
    if not isinstance(packed, torch.Tensor) or packed.dim() != 3 or packed.shape[1] != 1 \
            or packed.shape[2] <= PACK_HEADER or packed.shape[0] < 1:
        return None
    head = packed[0, 0, :PACK_HEADER].float().tolist()
    if (head[0], head[1]) != PACK_MAGIC:
        return None
    if head[2] != PACK_VERSION:
        raise LatentTypeError(f"this saved MagiHuman latent has format version {head[2]:g}; this version of the "
                              f"nodes reads version {PACK_VERSION:g}")
    t, h, w, n, flags = (int(x) for x in head[3:])
    nv, na = VIDEO_LATENT_CHANNELS * t * h * w, AUDIO_LATENT_CHANNELS * n
    shape_head = packed[:, 0, :PACK_HEADER - 1]  # the flags may differ between rows joined by Latent Batch
    if packed.shape[2] != PACK_HEADER + nv + na or not torch.equal(shape_head, shape_head[:1].expand_as(shape_head)):
        raise LatentTypeError("this saved MagiHuman latent is damaged (its length or its rows' headers do not "
                              "match); save it again")
    body = packed[:, 0, PACK_HEADER:]
    b = packed.shape[0]
    video = body[:, :nv].reshape(b, VIDEO_LATENT_CHANNELS, t, h, w).contiguous()
    audio = body[:, nv:].reshape(b, n, AUDIO_LATENT_CHANNELS).contiguous()
    return video, audio, flags


# --------------------------------------------------------------------------------------------
# The samples object inside ComfyUI: a comfy NestedTensor that core latent nodes can index
# --------------------------------------------------------------------------------------------
def _unsupported_hint() -> str:
    return ("core nodes that work on it: Latent From Batch, Repeat Latent Batch, Latent Batch, Save Latent / Load "
            "Latent, Latent Add / Subtract / Multiply, VAE Decode (video only); use "
            f"'{node_name(SPLIT)}' to work on the video or the audio latent alone")


def _unsupported(what: str) -> TypeError:
    return TypeError(f"MagiHuman audio+video latent: {what} is not supported on the joint latent ({_unsupported_hint()})")


def _parts(x) -> list | None:
    """Members of a nested latent (comfy NestedTensor, ours, or torch.nested), else None."""
    if getattr(x, "is_nested", False) is True and hasattr(x, "unbind"):
        return list(x.unbind())
    return None


class _AVSamplesOps:
    """What core latent nodes call on ``samples`` beyond ComfyUI 0.8.0's NestedTensor (clone, repeat,
    narrow, torch.cat, contiguous), applied to every member along the batch dimension, the one dimension
    the video latent and the audio latent share. Anything that would touch another dimension (cropping,
    upscaling, cutting frames) raises a TypeError saying what to do instead, rather than slicing video and
    audio differently. ``flags`` (stage, denoised, A2V) ride along so a saved latent keeps them."""

    def __init__(self, tensors, flags: int = 0):
        super().__init__(tensors)
        self.flags = int(flags)

    def _copy(self):  # the base class's arithmetic, indexing and .to() build results through this
        return type(self)(self.tensors, self.flags)

    def _each(self, fn):
        return type(self)([fn(t) for t in self.tensors], self.flags)

    def __getitem__(self, index):
        rest = index[1:] if isinstance(index, tuple) else ()
        if any(not (r is Ellipsis or (isinstance(r, slice) and r == slice(None))) for r in rest):
            raise _unsupported("indexing beyond the batch dimension (cropping, compositing)")
        return self._each(lambda t: t[index])

    def __setitem__(self, index, value):
        raise _unsupported("writing into it (replacing frames or regions)")

    def __len__(self):
        return int(self.tensors[0].shape[0])

    def __getattr__(self, name):  # only reached for what neither class defines
        if not name.startswith("_") and hasattr(torch.Tensor, name):  # a tensor method a core node called
            raise AttributeError(_unsupported(f".{name}()").args[0])  # AttributeError: hasattr() stays False
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __repr__(self):
        return f"MagiHumanAVSamples(video={tuple(self.tensors[0].shape)}, audio={tuple(self.tensors[1].shape)})"

    def clone(self, *args, **kwargs):
        return self._each(lambda t: t.clone(*args, **kwargs))

    def detach(self):
        return self._each(lambda t: t.detach())

    def cpu(self):
        return self._each(lambda t: t.cpu())

    def repeat(self, *sizes):
        """RepeatLatentBatch calls ``s.repeat((amount,) + (1,) * (s.ndim - 1))``: repeat every member's batch."""
        if len(sizes) == 1 and isinstance(sizes[0], (tuple, list, torch.Size)):
            sizes = tuple(sizes[0])
        if not sizes or any(int(s) != 1 for s in sizes[1:]):
            raise _unsupported(f"repeat{tuple(sizes)} (only the batch can be repeated)")
        n = int(sizes[0])
        return self._each(lambda t: t.repeat((n,) + (1,) * (t.dim() - 1)))

    def narrow(self, dim, start, length):
        if dim != 0:
            raise _unsupported(f"narrow along dimension {dim} (only the batch can be cut)")
        return self._each(lambda t: t.narrow(0, start, length))

    def contiguous(self):
        """Core Save Latent calls this just before writing ONE tensor to the .latent file: the packed form
        (:func:`pack_av`), which Load Latent gives back and every MagiHuman node unpacks."""
        video, audio = self.tensors[:2]
        return pack_av(video, audio, self.flags)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.cat, torch.concat, torch.concatenate):
            items = kwargs.get("tensors", args[0] if args else ())
            dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
            return cls._cat(list(items), dim)
        if func is torch.narrow:
            return args[0].narrow(*args[1:], **kwargs)
        if func is torch.clone:
            return args[0].clone(**kwargs)
        raise _unsupported(f"torch.{getattr(func, '__name__', func)}")

    @classmethod
    def _cat(cls, items, dim):
        """LatentBatch: ``torch.cat((s1, s2), dim=0)`` -> one batch, video with video, audio with audio."""
        if dim not in (0, -5):
            raise _unsupported(f"torch.cat along dimension {dim} (only batches can be joined)")
        parts = [_parts(x) for x in items]
        if any(p is None or len(p) != 2 for p in parts):
            raise TypeError("MagiHuman audio+video latent: cannot batch it with a latent of another kind; both "
                            "inputs must be MagiHuman latents")
        for p in parts[1:]:
            if p[0].shape[1:] != parts[0][0].shape[1:] or p[1].shape[1:] != parts[0][1].shape[1:]:
                raise TypeError(f"MagiHuman audio+video latent: only latents of the same size and length can be "
                                f"batched; got video {tuple(parts[0][0].shape)} + {tuple(p[0].shape)}, audio "
                                f"{tuple(parts[0][1].shape)} + {tuple(p[1].shape)}")
        flags = next((x.flags for x in items if isinstance(x, _AVSamplesOps)), 0)
        return cls([torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])], flags)


_AV_SAMPLES: dict[type, type] = {}


def av_samples_class(base=None):
    """The AV samples class: ``base`` (default: ComfyUI's NestedTensor) plus :class:`_AVSamplesOps`; None when
    there is no base (outside ComfyUI the plain-tensor form is used)."""
    base = compat.ComfyNestedTensor if base is None else base
    if base is None:
        return None
    if base not in _AV_SAMPLES:
        _AV_SAMPLES[base] = type("MagiHumanAVSamples", (_AVSamplesOps, base), {"__module__": __name__})
    return _AV_SAMPLES[base]


# --------------------------------------------------------------------------------------------
# LATENT dict <-> AVLatent
# --------------------------------------------------------------------------------------------
def to_latent(av: AVLatent, *, nested_base=None) -> dict:
    """The LATENT of ``av``: NestedTensor samples inside ComfyUI (or with ``nested_base``), plain tensors outside."""
    meta = {"image_latent": av.image_latent, "image": av.image, "audio_fixed": av.audio_fixed,
            "stage": av.stage, "denoised": av.denoised, "info": dict(av.info)}
    cls = av_samples_class(nested_base)
    if cls is None:
        return {"samples": av.video, AUDIO_KEY: av.audio, META_KEY: meta}
    return {"samples": cls([av.video, av.audio], _flags(av.stage, av.denoised, av.audio_fixed)), META_KEY: meta}


def _describe(x) -> str:
    parts = _parts(x)
    if parts is not None:
        return "nested [" + ", ".join(str(tuple(p.shape)) for p in parts) + "]"
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


def _is_video(v) -> bool:
    return isinstance(v, torch.Tensor) and v.dim() == 5 and v.shape[1] == VIDEO_LATENT_CHANNELS


def _is_audio(a) -> bool:
    return isinstance(a, torch.Tensor) and a.dim() == 3 and a.shape[2] == AUDIO_LATENT_CHANNELS


def _video_audio(latent: Mapping, where: str) -> tuple[torch.Tensor, torch.Tensor, int | None]:
    """(video, audio, flags or None) of any of the three forms; a clear error for other latents."""
    samples = latent["samples"]
    parts = _parts(samples)
    foreign = (f"{where}: this LATENT ({_describe(samples)}) is not a MagiHuman audio+video latent (video [B, "
               f"{VIDEO_LATENT_CHANNELS}, T, h, w] + audio [B, N, {AUDIO_LATENT_CHANNELS}]; another model's latent?); "
               f"start from '{node_name(EMPTY)}'")
    if parts is not None:
        if len(parts) != 2 or not _is_video(parts[0]) or not _is_audio(parts[1]):
            raise LatentTypeError(foreign)
        return parts[0], parts[1], getattr(samples, "flags", None)
    packed = unpack_av(samples)
    if packed is not None:
        return packed
    if not _is_video(samples):
        raise LatentTypeError(foreign)
    if AUDIO_KEY not in latent:
        raise LatentTypeError(f"{where}: this LATENT has only a video latent, no MagiHuman audio latent (was it split, "
                              f"or made by another model's nodes?); use '{node_name(EMPTY)}' or '{node_name(JOIN)}'")
    return samples, latent[AUDIO_KEY], None


def from_latent(latent, where: str) -> AVLatent:
    if not isinstance(latent, Mapping) or "samples" not in latent:
        raise LatentTypeError(f"{where}: expected a LATENT, got {type(latent).__name__}")
    if latent.get("type") == "audio":
        raise LatentTypeError(f"{where}: got an audio-only LATENT; join it with its video latent using "
                              f"'{node_name(JOIN)}'")
    video, audio, flags = _video_audio(latent, where)
    meta = latent.get(META_KEY)
    meta = dict(meta) if isinstance(meta, Mapping) else ({} if flags is None else _unflag(flags))
    image_latent = meta.get("image_latent")
    if isinstance(image_latent, torch.Tensor) and image_latent.shape[0] != video.shape[0]:
        # one TI2V image per latent (encode_image repeats it per clip): follows batch slicing / repeating
        image_latent = image_latent[:1].expand(video.shape[0], *image_latent.shape[1:]).contiguous()
    av = AVLatent(video=video, audio=audio, image_latent=image_latent,
                  image=meta.get("image"), audio_fixed=bool(meta.get("audio_fixed", False)),
                  stage=meta.get("stage", "base"), denoised=bool(meta.get("denoised", False)),
                  info=dict(meta.get("info") or {}))
    av.validate(where)
    return av


def split_latent(latent, where: str) -> tuple[dict, dict]:
    av = from_latent(latent, where)
    meta = {"image_latent": av.image_latent, "image": av.image, "audio_fixed": av.audio_fixed,
            "stage": av.stage, "denoised": av.denoised, "info": dict(av.info)}
    video = {"samples": av.video, META_KEY: meta}
    audio = {"samples": av.audio.transpose(1, 2).contiguous(), "type": "audio", "sample_rate": TRUE_AUDIO_RATE,
             META_KEY: {"audio_fixed": av.audio_fixed}}
    return video, audio


def join_latent(video, audio, where: str) -> dict:
    v = video.get("samples") if isinstance(video, Mapping) else None
    a = audio.get("samples") if isinstance(audio, Mapping) else None
    if not _is_video(v):
        raise LatentTypeError(f"{where}: video_latent must be [B, {VIDEO_LATENT_CHANNELS}, T, h, w] (from '{node_name(SPLIT)}'), "
                              f"got {_describe(v)}")
    if not isinstance(a, torch.Tensor) or a.dim() != 3 or a.shape[1] != AUDIO_LATENT_CHANNELS:
        raise LatentTypeError(f"{where}: audio_latent must be a MagiHuman audio latent "
                              f"[B, {AUDIO_LATENT_CHANNELS}, N] (from '{node_name(SPLIT)}'), got {_describe(a)}")
    meta = dict(video.get(META_KEY) or {})
    meta["audio_fixed"] = bool((audio.get(META_KEY) or {}).get("audio_fixed", False))
    plain = {"samples": v, AUDIO_KEY: a.transpose(1, 2).contiguous(), META_KEY: meta}
    av = from_latent(plain, where)  # validates lengths: N steps need (N-1)//4+1 video frames
    return to_latent(av) if av_samples_class() is not None else plain


def audio_latent(latent, where: str) -> torch.Tensor:
    """The audio latent [B, 64, N] of an AV LATENT or of an audio LATENT from the split node."""
    if isinstance(latent, Mapping) and latent.get("type") == "audio":
        z = latent.get("samples")
        if not isinstance(z, torch.Tensor) or z.dim() != 3 or z.shape[1] != AUDIO_LATENT_CHANNELS:
            raise LatentTypeError(f"{where}: audio latent must be [B, {AUDIO_LATENT_CHANNELS}, N], got {_describe(z)}")
        return z
    return from_latent(latent, where).audio.transpose(1, 2)


def to_conditioning(embeds: torch.Tensor, length: int, text: str) -> list:
    return [[embeds, {"magihuman_len": int(length), "magihuman_prompt": text}]]


def text_conditioning(positive, negative=None, *, where: str) -> TextConditioning:
    def unpack(cond, name):
        if not isinstance(cond, (list, tuple)) or not cond or not isinstance(cond[0], (list, tuple)):
            raise LatentTypeError(f"{where}: {name} is not a CONDITIONING")
        embeds, extra = cond[0][0], cond[0][1] if len(cond[0]) > 1 else {}
        if "magihuman_len" not in extra:
            raise LatentTypeError(f"{where}: {name} was not made by '{node_name(TEXT)}' (T5Gemma); other text "
                                  "encoders' conditioning does not fit this model")
        if int(extra["magihuman_len"]) <= 0:
            raise LatentTypeError(f"{where}: the {name} prompt was not encoded (empty); enable the negative prompt in "
                                  f"'{node_name(TEXT)}' or use a sampler without CFG")
        return embeds.float(), [int(extra["magihuman_len"])], extra.get("magihuman_prompt", "")

    e, lens, text = unpack(positive, "positive")
    cond = TextConditioning(embeds=e, lens=lens, prompt=text)
    if negative is not None:
        ne, nlens, ntext = unpack(negative, "negative")
        cond.negative_embeds, cond.negative_lens, cond.negative_prompt = ne, nlens, ntext
    return cond
