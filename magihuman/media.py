"""Media I/O around the model: reference image and audio in, MP4 out.

- Images: :func:`load_image` (any PIL-readable file or array -> float RGB in [0, 1]) and
  :func:`prepare_image` (official centre crop + Lanczos resize + [-1, 1], ready for the Wan2.2 VAE).
- Audio: :func:`load_audio` (soundfile, PyAV fallback), :func:`resample` (band-limited Kaiser-windowed
  sinc, any rational ratio), :func:`prepare_reference_audio` (mono at 51 200 Hz, 2 channels) and
  :func:`encode_reference_audio` (29 s windows, 50 % overlap, official latent cross-fade).
- Video: :func:`write_mp4` / :class:`MP4Writer` (H.264 yuv420p + AAC via PyAV; the writer takes frames as they
  are made), :func:`iter_video_frames` and :func:`read_mp4_info`.

Differences from the official pipeline, all deliberate and small:
- The official code decodes audio with ffmpeg (``whisper.load_audio``: mono downmix, s16 samples,
  ffmpeg's resampler) and resamples the VAE output with an FFT resampler. We mix channels by their
  mean, keep float samples and use our own Kaiser-windowed sinc resampler (measured: flat within
  0.001 dB up to 0.90 x the lower Nyquist, -6 dB at 0.95 x, >= 108 dB rejection from the Nyquist
  on; in-band sine error ~1e-5). For stereo sources ffmpeg's downmix is the same mean; for more
  channels ffmpeg uses its own downmix matrix (centre/LFE weights), we use the plain mean.
- Transparent images: the official loader (``PIL.Image.convert("RGB")``) drops alpha; so does
  :func:`load_image` by default (``alpha="drop"``), or composite on white/black on request.
- 16-bit images are scaled by 65535 (PIL's ``convert("RGB")`` would clip them to 255).
"""

from __future__ import annotations

import functools
import math
import os
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Sequence

import av
import numpy as np
import soundfile as sf
import torch
from PIL import Image, ImageOps

from .geometry import AUDIO_HOP, AUDIO_SAMPLE_RATE

__all__ = [
    "REFERENCE_SAMPLE_RATE",
    "AUDIO_WINDOW_SECONDS",
    "AAC_SAMPLE_RATES",
    "MediaError",
    "load_image",
    "crop_box",
    "prepare_image",
    "load_audio",
    "resample",
    "prepare_reference_audio",
    "merge_overlapping_latents",
    "encode_reference_audio",
    "encode_audio_file",
    "write_audio",
    "MP4Writer",
    "write_mp4",
    "iter_video_frames",
    "read_mp4_info",
]

REFERENCE_SAMPLE_RATE = AUDIO_SAMPLE_RATE  # true rate of the Oobleck VAE as MagiHuman uses it
AUDIO_WINDOW_SECONDS = 29
AUDIO_WINDOW_OVERLAP = 0.5
# The sampling-frequency table of AAC (ISO 14496-3); FFmpeg's encoder accepts only these.
AAC_SAMPLE_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)


class MediaError(ValueError):
    """An input file or array cannot be used (unreadable, empty, wrong shape); the message says why."""


# ============================================================================ images


def _pil_to_float(img, alpha: str) -> np.ndarray:
    """A PIL image -> float32 [H, W, 3] in [0, 1]."""
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode == "PA":
        img = img.convert("RGBA")
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(img.convert("I"), dtype=np.float64) / 65535.0
    elif mode == "I":  # 32-bit integer: PIL opens 16-bit grayscale PNG/TIFF this way in some versions
        raw = np.asarray(img, dtype=np.float64)
        arr = raw / (65535.0 if raw.max(initial=0) > 255 else 255.0)
    elif mode == "F":
        arr = np.asarray(img, dtype=np.float64)
    elif mode in ("1", "L"):
        arr = np.asarray(img.convert("L"), dtype=np.float64) / 255.0
    elif mode in ("LA", "La"):  # gray + alpha: _to_rgb spreads the gray
        arr = np.asarray(img.convert("LA"), dtype=np.float64) / 255.0
    elif mode in ("RGBA", "RGBa"):
        arr = np.asarray(img.convert("RGBA"), dtype=np.float64) / 255.0
    else:  # RGB, CMYK, YCbCr, LAB, HSV, ...
        arr = np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0
    return _to_rgb(arr, alpha)


def _as_numpy(x: Any) -> np.ndarray:
    """A numpy view of an array or tensor (tensors: detached, on the CPU, half floats widened)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = (x.float() if x.dtype.is_floating_point and x.dtype.itemsize == 2 else x).numpy()
    return np.asarray(x)


def _to_rgb(arr: np.ndarray, alpha: str) -> np.ndarray:
    if arr.ndim == 2:
        arr = arr[..., None]
    c = arr.shape[-1]
    if c == 1:
        arr = arr.repeat(3, -1)
    elif c == 2:  # gray + alpha
        arr = np.concatenate([arr[..., :1].repeat(3, -1), arr[..., 1:]], -1)
    elif c not in (3, 4):
        raise MediaError(f"an image needs 1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA) channels; got {c}")
    if arr.shape[-1] == 4:
        rgb, a = arr[..., :3], arr[..., 3:]
        if alpha == "drop":
            arr = rgb
        elif alpha in ("white", "black"):
            bg = 1.0 if alpha == "white" else 0.0
            arr = rgb * a + bg * (1.0 - a)
        else:
            raise MediaError(f"alpha must be 'drop', 'white' or 'black'; got {alpha!r}")
    return np.clip(arr, 0.0, 1.0).astype(np.float32)


def load_image(image: Any, *, alpha: str = "drop") -> np.ndarray:
    """An image file, PIL image, numpy array or torch tensor -> float32 ``[H, W, 3]`` in [0, 1].

    Grayscale is replicated to RGB, palettes are expanded, 16-bit data is divided by 65535 and EXIF
    orientation is applied (as the official loader does). Transparency: ``alpha="drop"`` keeps the
    colour under the alpha channel, like the official ``convert("RGB")``; ``"white"``/``"black"``
    composite onto that background instead. Arrays: uint8 / uint16 / bool / float in [0, 1], shape
    ``[H, W]``, ``[H, W, C]`` or ``[1, H, W, C]``.
    """
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise MediaError(f"{path}: no such image file")
        try:
            with Image.open(path) as img:
                img = ImageOps.exif_transpose(img)
                img.load()
        except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
            raise MediaError(f"{path}: cannot read this image ({type(e).__name__}: {e}); use a PNG, JPEG or WebP file") from e
        out = _pil_to_float(img, alpha)
    elif isinstance(image, Image.Image):
        out = _pil_to_float(image, alpha)
    else:
        arr = _as_numpy(image)
        if arr.ndim == 4:
            if arr.shape[0] != 1:
                raise MediaError(f"got a batch of {arr.shape[0]} images where one is expected; pick one, "
                                 "e.g. images[0:1] for the first")
            arr = arr[0]
        if arr.ndim not in (2, 3):
            raise MediaError(f"an image array must be [H, W], [H, W, C] or [1, H, W, C]; got shape {arr.shape}")
        if arr.dtype == np.uint8:
            arr = arr.astype(np.float64) / 255.0
        elif arr.dtype == np.uint16:
            arr = arr.astype(np.float64) / 65535.0
        elif arr.dtype == np.bool_:
            arr = arr.astype(np.float64)
        elif np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(np.float64)
            if not np.isfinite(arr).all():
                raise MediaError("the image contains NaN or infinite values")
        else:
            raise MediaError(f"unsupported image array dtype {arr.dtype} (use uint8, uint16 or float in [0, 1])")
        out = _to_rgb(arr, alpha)
    if out.shape[0] < 1 or out.shape[1] < 1:
        raise MediaError(f"the image is empty ({out.shape[1]}x{out.shape[0]} pixels)")
    return out


def crop_box(width: int, height: int, target_width: int, target_height: int) -> tuple[int, int, int, int]:
    """Integer ``(left, top, right, bottom)`` of the official centre crop to the target aspect.

    Same arithmetic as the official ``resizecrop`` (int() truncation of the kept size, float box
    rounded by PIL with Python's round-half-even), except that a kept size of 0 (a 1-pixel-thin
    image) becomes 1, where the official code would fail.
    """
    w, h, tw, th = int(width), int(height), int(target_width), int(target_height)
    if w == tw and h == th:
        return 0, 0, w, h
    if h / w > th / tw:
        new_w = w
        new_h = max(int(new_w * th / tw), 1)
    else:
        new_h = h
        new_w = max(int(new_h * tw / th), 1)
    box = ((w - new_w) / 2, (h - new_h) / 2, (w + new_w) / 2, (h + new_h) / 2)
    left, top, right, bottom = (int(round(v)) for v in box)
    if right <= left:  # only reachable through the 1-pixel clamp
        right = left + 1
    if bottom <= top:
        bottom = top + 1
    return left, top, right, bottom


def prepare_image(image: Any, width: int, height: int, *, alpha: str = "drop") -> torch.Tensor:
    """Reference image -> ``[1, 3, 1, height, width]`` float32 in [-1, 1] for the video VAE.

    Centre crop to the target aspect (:func:`crop_box`), Lanczos resize with PIL (the official
    diffusers ``VideoProcessor.preprocess`` default), then ``2x - 1``. Images that are exactly 8-bit
    go through PIL's 8-bit path, so the result equals the official one bit for bit; deeper images
    are resized per channel in float. Width and height are used as given (the pipeline has already
    snapped them to multiples of 32, where the official multiple-of-16 snap is a no-op).
    """
    width, height = int(width), int(height)
    if width < 1 or height < 1:
        raise MediaError(f"target size must be positive; got {width}x{height}")
    arr = load_image(image, alpha=alpha)  # [H, W, 3] float32 in [0, 1]
    h, w = arr.shape[:2]
    left, top, right, bottom = crop_box(w, h, width, height)
    arr = arr[top:bottom, left:right]
    q = np.round(arr.astype(np.float64) * 255.0)
    if np.abs(q - arr * 255.0).max(initial=0.0) < 1e-3:  # 8-bit content: PIL's uint8 path, as official
        pil = Image.fromarray(q.astype(np.uint8))
        out = np.asarray(pil.resize((width, height), resample=Image.Resampling.LANCZOS), dtype=np.float32) / 255.0
    else:
        chans = [Image.fromarray(np.ascontiguousarray(arr[..., c], dtype=np.float32))
                 .resize((width, height), resample=Image.Resampling.LANCZOS) for c in range(3)]
        out = np.clip(np.stack([np.asarray(ch, dtype=np.float32) for ch in chans], -1), 0.0, 1.0)
    t = torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1)  # [3, H, W]
    return (t * 2.0 - 1.0)[None, :, None]  # [1, 3, 1, H, W]


# ============================================================================ audio


def _as_2d_float(waveform: Any, what: str = "waveform") -> torch.Tensor:
    if isinstance(waveform, np.ndarray):
        waveform = torch.from_numpy(np.ascontiguousarray(waveform))
    if not isinstance(waveform, torch.Tensor):
        raise MediaError(f"{what} must be a torch tensor or numpy array; got {type(waveform).__name__}")
    x = waveform.detach()
    if x.dim() == 1:
        x = x[None]
    if x.dim() != 2:
        raise MediaError(f"{what} must be [channels, samples] (or [samples]); got shape {tuple(waveform.shape)}")
    if not x.is_floating_point():
        raise MediaError(f"{what} must be float samples in [-1, 1]; got dtype {x.dtype}")
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    return x


def load_audio(path: str | os.PathLike) -> tuple[torch.Tensor, int]:
    """Read an audio file -> ``(waveform float32 [channels, samples], sample_rate)``.

    soundfile (WAV, FLAC, OGG, MP3 with recent libsndfile) first, then PyAV for anything FFmpeg reads
    (MP3, M4A/AAC, the audio track of a video, ...). Any rate, any channel count.
    """
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: no such audio file")
    errors = []
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # [S, C]
        wave = torch.from_numpy(np.ascontiguousarray(data.T))
    except Exception as e:  # soundfile raises LibsndfileError/RuntimeError/TypeError on unknown formats
        errors.append(f"soundfile: {e}")
        try:
            wave, sr = _load_audio_av(path)
        except MediaError:
            raise
        except Exception as e2:
            errors.append(f"PyAV: {type(e2).__name__}: {e2}")
            raise MediaError(f"{path}: cannot read this audio file ({'; '.join(errors)}); use WAV, FLAC, MP3 or M4A") from e2
    if wave.shape[0] < 1 or wave.shape[1] < 1:
        raise MediaError(f"{path}: the audio is empty (0 samples); give a file with sound in it")
    if not torch.isfinite(wave).all():
        raise MediaError(f"{path}: the audio contains NaN or infinite samples")
    return wave, int(sr)


def _load_audio_av(path: Path) -> tuple[torch.Tensor, int]:
    with av.open(str(path)) as container:
        streams = container.streams.audio
        if not streams:
            raise MediaError(f"{path}: the file has no audio stream")
        stream = streams[0]
        sr = stream.codec_context.sample_rate
        resampler = None
        chunks: list[np.ndarray] = []
        for frame in container.decode(stream):
            if resampler is None:
                sr = frame.sample_rate
                resampler = av.AudioResampler(format="fltp", layout=frame.layout, rate=frame.sample_rate)
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(len(out.layout.channels), -1))
        if resampler is not None:
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(len(out.layout.channels), -1))
    if not chunks:
        raise MediaError(f"{path}: the audio is empty (no decodable samples)")
    return torch.from_numpy(np.concatenate(chunks, axis=1).astype(np.float32)), int(sr)


# Resampler design: windowed sinc, cutoff at rolloff x the lower Nyquist, Kaiser window.
RESAMPLE_WIDTH = 64  # zero crossings of the sinc on each side
RESAMPLE_ROLLOFF = 0.95
RESAMPLE_BETA = 10.6  # Kaiser beta for ~100 dB stop band with this width
_TABLE_LIMIT = 1 << 24  # kernel table entries; beyond that kernels are computed per chunk
_CHUNK_ELEMS = 1 << 22  # gathered samples per chunk
_DENSE_LIMIT = 1 << 22  # entries of the dense polyphase matrix


def _sinc_kernels(frac: torch.Tensor, offsets: torch.Tensor, fc: float, half: float, beta: float) -> torch.Tensor:
    """Kernel rows for output positions ``frac`` (fraction of an input sample, float64 [M]).

    Row m weights input samples at ``offsets - frac[m]`` from the output position:
    ``2 fc sinc(2 fc tau) * kaiser(tau / half)``, zero beyond ``half``, normalised to unit sum.
    """
    tau = offsets[None, :] - frac[:, None]  # [M, L] in input samples
    r = (tau / half).clamp(-1.0, 1.0)
    window = torch.special.i0(beta * torch.sqrt(1.0 - r * r)) / torch.special.i0(torch.tensor(beta, dtype=tau.dtype))
    k = 2.0 * fc * torch.sinc(2.0 * fc * tau) * window
    k = torch.where(tau.abs() <= half, k, torch.zeros_like(k))
    return k / k.sum(dim=1, keepdim=True)


def resample(waveform: Any, orig_sr: int, new_sr: int, *, width: int = RESAMPLE_WIDTH,
             rolloff: float = RESAMPLE_ROLLOFF, beta: float = RESAMPLE_BETA, method: str = "auto"):
    """Band-limited resampling along the last axis, any integer rates (exact rational ratio).

    Output sample m sits at input time ``m * orig_sr / new_sr``; the output has
    ``ceil(samples * new_sr / orig_sr)`` samples; the signal is taken as zero outside the input.
    Accepts ``[samples]`` or ``[channels, samples]`` (torch or numpy) and returns the same kind.
    ``method``: "dense" (one matmul; for ratios of small integers such as 441:512) or "gather"
    (any ratio); "auto" picks. Both compute the same filter.
    """
    if method not in ("auto", "dense", "gather"):
        raise MediaError(f"method must be 'auto', 'dense' or 'gather'; got {method!r}")
    orig_sr, new_sr = int(orig_sr), int(new_sr)
    if orig_sr <= 0 or new_sr <= 0:
        raise MediaError(f"sample rates must be positive; got {orig_sr} -> {new_sr}")
    was_numpy = isinstance(waveform, np.ndarray)
    x = _as_2d_float(waveform)
    squeeze = (waveform.ndim if was_numpy else waveform.dim()) == 1
    if orig_sr == new_sr:
        y = x.clone()
    elif x.shape[-1] == 0:  # nothing to filter: an empty signal stays empty
        y = x.new_zeros(x.shape[0], 0)
    else:
        g = math.gcd(orig_sr, new_sr)
        up, down = new_sr // g, orig_sr // g  # output m <-> input position m * down / up
        n_in = x.shape[-1]
        n_out = -(-n_in * up // down)
        fc = 0.5 * min(1.0, up / down) * rolloff  # cutoff, cycles per input sample
        half = width / (2.0 * fc)  # kernel half-width in input samples
        k0 = math.ceil(half)
        offsets = torch.arange(-k0, k0 + 1, dtype=torch.float64)
        taps = offsets.numel()
        span = (up - 1) * down // up + taps  # input samples touched by one group of `up` outputs
        if method == "auto":
            method = "dense" if span * up <= _DENSE_LIMIT and span <= 8 * taps else "gather"
        if method == "dense":
            y = _resample_dense(x, up, down, n_out, offsets, fc, half, beta, span)
        else:
            y = _resample_gather(x, up, down, n_out, offsets, fc, half, beta)
    if squeeze:
        y = y[0]
    return y.numpy() if was_numpy else y


@functools.lru_cache(maxsize=4)
def _dense_polyphase(up, down, k0, fc, half, beta, span) -> torch.Tensor:
    offsets = torch.arange(-k0, k0 + 1, dtype=torch.float64)
    taps = offsets.numel()
    table = _sinc_kernels(torch.arange(up, dtype=torch.float64) / up, offsets, fc, half, beta)  # [up, taps]
    dense = torch.zeros(span, up, dtype=torch.float64)
    for p in range(up):  # output p of a group sits at input position p*down/up
        b, frac = divmod(p * down, up)
        dense[b : b + taps, p] = table[frac]
    return dense


def _resample_dense(x, up, down, n_out, offsets, fc, half, beta, span) -> torch.Tensor:
    """Polyphase as one matmul: output group q (outputs q*up .. q*up+up-1) reads input samples
    ``q*down - k0 + [0, span)``; output p's kernel (for the fraction ``p*down mod up``) sits at row
    offset ``p*down // up`` of column p in a dense ``[span, up]`` matrix."""
    k0 = -int(offsets[0])
    dense = _dense_polyphase(up, down, k0, fc, half, beta, span)
    groups = -(-n_out // up)
    need = (groups - 1) * down + span
    xp = torch.nn.functional.pad(x, (k0, max(0, need - k0 - x.shape[-1])))
    frames = xp.unfold(-1, span, down)[:, :groups]  # [C, groups, span]
    return (frames @ dense.to(x.dtype)).reshape(x.shape[0], -1)[:, :n_out]


def _resample_gather(x, up, down, n_out, offsets, fc, half, beta) -> torch.Tensor:
    """Chunks of outputs, each gathering its own ``taps`` input samples (any ratio, no waste)."""
    k0, taps = -int(offsets[0]), offsets.numel()
    xp = torch.nn.functional.pad(x, (k0, k0 + 1))
    table = None
    if up * taps <= _TABLE_LIMIT:
        table = _sinc_kernels(torch.arange(up, dtype=torch.float64) / up, offsets, fc, half, beta).to(x.dtype)
    tap_idx = torch.arange(taps)
    y = torch.empty(x.shape[0], n_out, dtype=x.dtype)
    step = max(1, _CHUNK_ELEMS // (taps * x.shape[0]))
    for m0 in range(0, n_out, step):
        m = torch.arange(m0, min(m0 + step, n_out), dtype=torch.int64)
        pos = m * down
        base, phase = pos // up, pos % up  # floor of the input position and its fraction (x up)
        if table is not None:
            kern = table[phase]
        else:
            kern = _sinc_kernels(phase.double() / up, offsets, fc, half, beta).to(x.dtype)
        frames = xp[:, base[:, None] + tap_idx[None, :]]  # [C, M, taps]; xp index = input index + k0
        y[:, m0 : m0 + m.numel()] = torch.einsum("cmt,mt->cm", frames, kern)
    return y


def prepare_reference_audio(waveform: Any, sample_rate: int, *, seconds: float | None = None) -> torch.Tensor:
    """Any waveform ``[C, S]`` -> ``[2, S']`` float32: mono mix (channel mean) at 51 200 Hz, the
    same track on both channels, trimmed to the first ``seconds`` (as the official loader)."""
    x = _as_2d_float(waveform, "reference audio")
    if x.shape[-1] == 0 or x.shape[0] == 0:
        raise MediaError("the reference audio is empty (0 samples); connect an audio clip of at least 0.04 s")
    if not torch.isfinite(x).all():
        raise MediaError("the reference audio contains NaN or infinite samples; re-export or re-load the audio file")
    if int(sample_rate) <= 0:
        raise MediaError(f"the reference audio sample rate must be positive, got {sample_rate}; pass the rate the "
                         "waveform was recorded at")
    mono = x.mean(dim=0, keepdim=True)
    mono = resample(mono, int(sample_rate), REFERENCE_SAMPLE_RATE).float()
    if seconds is not None:
        if not seconds > 0:
            raise MediaError(f"seconds must be positive; got {seconds}")
        if math.isfinite(seconds):  # math.inf: the whole clip
            mono = mono[:, : min(int(seconds * REFERENCE_SAMPLE_RATE), mono.shape[-1])]
    return mono.expand(2, -1).contiguous()


def reference_audio_steps(samples: int, sample_rate: int, seconds: float | None = None) -> int:
    """Audio latent steps (= video frames of the clip) that :func:`prepare_reference_audio` then
    :func:`encode_reference_audio` give for ``samples`` at ``sample_rate``, without running them: the resampled
    length ``ceil(samples·51200/rate)``, trimmed to ``seconds``; one step per whole 2048 samples up to one 29 s
    window (the encoder's strided convolutions drop a partial hop), ``ceil`` beyond (the windows' trim)."""
    n = int(samples) if int(sample_rate) == REFERENCE_SAMPLE_RATE else \
        -(-int(samples) * REFERENCE_SAMPLE_RATE // int(sample_rate))
    if seconds is not None and math.isfinite(seconds):
        n = min(int(seconds * REFERENCE_SAMPLE_RATE), n)
    return n // AUDIO_HOP if n <= int(AUDIO_WINDOW_SECONDS * REFERENCE_SAMPLE_RATE) else -(-n // AUDIO_HOP)


def merge_overlapping_latents(chunks: Sequence[torch.Tensor], overlap_ratio: float = AUDIO_WINDOW_OVERLAP) -> torch.Tensor:
    """Join window latents ``[B, C, N]`` (time last) with the official linear cross-fade.

    Window k starts at ``k * (N - O)``, ``O = int(N * overlap_ratio)``; over its first O steps the
    running result is weighted ``(O - i) / O`` and the new window ``i / O``; the rest is copied.
    """
    if not chunks:
        raise ValueError("no latent windows to merge")
    if len(chunks) == 1:
        return chunks[0]
    first = chunks[0]
    b, c, n = first.shape
    overlap = int(n * overlap_ratio)
    step = n - overlap
    out = torch.zeros(b, c, (len(chunks) - 1) * step + n, dtype=first.dtype, device=first.device)
    out[..., :n] = first
    i = torch.arange(overlap, dtype=torch.float64)
    w_prev = ((overlap - i) / overlap).to(first.dtype).to(first.device) if overlap else None
    w_curr = (i / overlap).to(first.dtype).to(first.device) if overlap else None
    for k, cur in enumerate(chunks[1:], start=1):
        start = k * step
        out[..., start + overlap : start + n] = cur[..., overlap:]
        if overlap:
            out[..., start : start + overlap] = w_prev * out[..., start : start + overlap] + w_curr * cur[..., :overlap]
    return out


def _encoder(vae: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    enc = getattr(vae, "encode", None)
    if callable(enc):
        return enc
    if callable(vae):
        return vae
    raise TypeError("vae must have an encode(waveform [1, 2, S]) method or be callable")


@torch.no_grad()
def encode_reference_audio(vae: Any, waveform: torch.Tensor, *, window_seconds: float = AUDIO_WINDOW_SECONDS,
                           overlap_ratio: float = AUDIO_WINDOW_OVERLAP,
                           sample_rate: int = REFERENCE_SAMPLE_RATE) -> torch.Tensor:
    """``[2, S]`` at 51 200 Hz (from :func:`prepare_reference_audio`) -> latent ``[1, 64, N]`` fp32.

    Up to 29 s: one pass. Longer: 29 s windows every 14.5 s, the last one zero-padded to full length,
    joined by :func:`merge_overlapping_latents` and trimmed to ``ceil(S * latent_rate)``, where the
    latent rate is measured on a window (as the official code does; N = 725 per 29 s window).
    Note: the 14.5 s hop is 362.5 latent steps but the official merge advances 363, so later windows
    sit up to half a step (10 ms) late per window; we keep that to stay faithful.
    """
    encode = _encoder(vae)
    x = waveform[0] if waveform.dim() == 3 and waveform.shape[0] == 1 else waveform
    if x.dim() != 2:
        raise MediaError(f"reference audio must be [2, samples]; got {tuple(waveform.shape)}")
    total = x.shape[-1]
    if total == 0:
        raise MediaError("the reference audio is empty (0 samples)")
    window = int(window_seconds * sample_rate)
    step = int(window * (1 - overlap_ratio))
    if total <= window:
        return encode(x[None]).float()
    chunks = []
    latent_per_sample = None
    for start in range(0, total, step):
        end = min(start + window, total)
        chunk = x[:, start:end]
        if chunk.shape[-1] < window:
            chunk = torch.nn.functional.pad(chunk, (0, window - chunk.shape[-1]))
        z = encode(chunk[None]).float()  # [1, 64, n]
        if latent_per_sample is None:
            latent_per_sample = z.shape[-1] / window
        chunks.append(z)
        if end >= total:
            break
    merged = merge_overlapping_latents(chunks, overlap_ratio)
    return merged[..., : math.ceil(total * latent_per_sample)]


def encode_audio_file(vae: Any, path: str | os.PathLike, *, seconds: float | None = None) -> torch.Tensor:
    """Reference audio file -> latent ``[1, 64, N]``: :func:`load_audio`, :func:`prepare_reference_audio`
    (mono, 51 200 Hz, first ``seconds``), :func:`encode_reference_audio` (the official A2V path)."""
    wave, sr = load_audio(path)
    return encode_reference_audio(vae, prepare_reference_audio(wave, sr, seconds=seconds))


def write_audio(path: str | os.PathLike, waveform: Any, sample_rate: int) -> Path:
    """Write ``[C, S]`` float audio with soundfile (format from the suffix: .wav, .flac, .ogg)."""
    x = _as_2d_float(waveform).float()
    sf.write(str(path), x.clamp(-1, 1).T.numpy(), int(sample_rate))
    return Path(path)


# ============================================================================ video


def _frames_uint8(frames: Any) -> np.ndarray:
    arr = _as_numpy(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise MediaError(f"frames must be [F, H, W, 3] (RGB); got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise MediaError("no frames to write")
    if arr.dtype == np.uint8:
        return arr
    if not np.issubdtype(arr.dtype, np.floating):
        raise MediaError(f"frames must be uint8 or float in [0, 1]; got dtype {arr.dtype}")
    return (np.clip(np.nan_to_num(arr.astype(np.float32)), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _video_encoder() -> str:
    for name in ("libx264", "libopenh264", "h264"):
        if name in av.codecs_available:
            try:
                av.codec.Codec(name, "w")
                return name
            except Exception:
                continue
    raise MediaError("this PyAV/FFmpeg build has no H.264 encoder (libx264 or libopenh264); install the "
                     "official PyAV wheel: pip install av")


def _prepare_mp4_audio(audio: Any, sample_rate: int | None) -> tuple[np.ndarray | None, int | None]:
    """``[C, S]`` float audio -> (clamped numpy array at an AAC rate, that rate); (None, None) for no audio."""
    if audio is None:
        return None, None
    if sample_rate is None:
        raise MediaError("audio needs its sample_rate")
    wave = _as_2d_float(audio, "audio").float()
    if wave.shape[0] not in (1, 2):
        raise MediaError(f"audio must have 1 or 2 channels; got {wave.shape[0]} (mix it down first)")
    if wave.shape[-1] == 0:
        return None, None
    sample_rate = int(sample_rate)
    if sample_rate not in AAC_SAMPLE_RATES:
        wave = resample(wave, sample_rate, 48000)
        sample_rate = 48000
    return wave.clamp(-1.0, 1.0).numpy(), sample_rate


class MP4Writer:
    """An MP4 written as frames arrive (H.264 yuv420p, ``crf``), the audio (AAC) added by :meth:`close`.

    Only the frames of one :meth:`add_frames` call are held, so a long clip made piece by piece never sits in
    memory whole. The size is fixed by the first frames; later ones must match. yuv420p needs even sizes: an odd
    width or height is padded by repeating the last column/row (nothing is cut off). An MP4 declares its streams
    before the first packet, so a sound track is announced here: ``sample_rate`` (the rate the audio will come
    at; AAC takes its standard rates only, others are resampled to 48 kHz) and ``channels`` (1 or 2). A writer
    left by an exception inside ``with`` (or by :meth:`abort`) removes its file.
    """

    def __init__(self, path: str | os.PathLike, fps: float = 25, *, sample_rate: int | None = None, channels: int = 2,
                 crf: int = 18, preset: str = "medium", audio_bitrate: int = 192_000) -> None:
        self.path = Path(path)
        self.rate = Fraction(fps).limit_denominator(1001)
        if self.rate <= 0:
            raise MediaError(f"fps must be positive; got {fps}")
        if channels not in (1, 2):
            raise MediaError(f"audio must have 1 or 2 channels; got {channels} (mix it down first)")
        if sample_rate is not None and int(sample_rate) <= 0:
            raise MediaError(f"the audio sample rate must be positive; got {sample_rate}")
        self.sample_rate = None if sample_rate is None else int(sample_rate)
        self.channels, self.audio_bitrate = channels, int(audio_bitrate)
        self.crf, self.preset = int(crf), preset
        self.frames = 0
        self.size: tuple[int, int] | None = None  # (width, height) of the frames given
        self._container = self._vstream = self._astream = None

    def _open(self, width: int, height: int) -> None:
        codec = _video_encoder()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self.path), mode="w", format="mp4")
        self._vstream = self._container.add_stream(codec, rate=self.rate)
        self._vstream.width, self._vstream.height = width + width % 2, height + height % 2
        self._vstream.pix_fmt = "yuv420p"
        if codec == "libx264":
            self._vstream.options = {"crf": str(self.crf), "preset": self.preset}
        if self.sample_rate is not None:
            rate = self.sample_rate if self.sample_rate in AAC_SAMPLE_RATES else 48000
            self._astream = self._container.add_stream("aac", rate=rate,
                                                       layout="stereo" if self.channels == 2 else "mono")
            self._astream.bit_rate = self.audio_bitrate
        self.size = (width, height)

    def add_frames(self, frames: Any) -> None:
        """Encode ``[F, H, W, 3]`` frames (uint8, or float in [0, 1])."""
        rgb = _frames_uint8(frames)
        f, h, w, _ = rgb.shape
        if self._container is None:
            if self.frames:
                raise MediaError(f"{self.path}: this video is already closed")
            self._open(w, h)
        elif (w, h) != self.size:
            raise MediaError(f"frames of {w}x{h} do not fit this video of {self.size[0]}x{self.size[1]}")
        if h % 2 or w % 2:
            rgb = np.pad(rgb, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        for i in range(f):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[i]), format="rgb24")
            frame.pts = self.frames + i
            for packet in self._vstream.encode(frame):
                self._container.mux(packet)
        self.frames += f

    def close(self, audio: Any = None) -> Path:
        """Finish the video and add ``audio`` (``[C, S]`` float in [-1, 1] at the ``sample_rate`` given to the
        writer; C = its ``channels``)."""
        if self._container is None:
            raise MediaError("no frames to write")
        if audio is not None and self._astream is None:
            raise MediaError("this MP4 was opened without a sound track: give MP4Writer its sample_rate")
        wave, rate = _prepare_mp4_audio(audio, self.sample_rate) if audio is not None else (None, None)
        if wave is not None and wave.shape[0] != self.channels:
            raise MediaError(f"the audio has {wave.shape[0]} channel(s); this MP4 was opened for {self.channels}")
        container, self._container = self._container, None
        try:
            for packet in self._vstream.encode():
                container.mux(packet)
            if wave is not None:
                layout = "stereo" if wave.shape[0] == 2 else "mono"
                n = 1024  # AAC frame size
                for s0 in range(0, wave.shape[1], n):
                    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[:, s0 : s0 + n]), format="fltp",
                                                       layout=layout)
                    frame.sample_rate, frame.pts = rate, s0
                    for packet in self._astream.encode(frame):
                        container.mux(packet)
                for packet in self._astream.encode():
                    container.mux(packet)
        finally:
            container.close()
        return self.path

    def abort(self) -> None:
        """Stop without finishing: the partial file is removed."""
        if self._container is not None:
            container, self._container = self._container, None
            try:
                container.close()
            except Exception:  # noqa: BLE001 - the file goes anyway
                pass
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> "MP4Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def write_mp4(path: str | os.PathLike, frames: Any, fps: float = 25, audio: Any = None,
              sample_rate: int | None = None, *, crf: int = 18, preset: str = "medium",
              audio_bitrate: int = 192_000) -> Path:
    """Write an MP4: H.264 (yuv420p, ``crf``) video and, if given, AAC audio (:class:`MP4Writer` in one go).

    ``frames``: ``[F, H, W, 3]`` uint8, or float in [0, 1]. yuv420p needs even sizes: an odd width
    or height is padded by repeating the last column/row (nothing is cut off).
    ``audio``: ``[C, S]`` (C = 1 or 2) float in [-1, 1] at ``sample_rate``. AAC only allows its
    standard rates (51 200 Hz is not one): other rates are resampled to 48 kHz with :func:`resample`.
    """
    rgb = _frames_uint8(frames)
    wave, rate = _prepare_mp4_audio(audio, sample_rate)  # bad audio fails before any file is written
    channels = 2 if wave is None else wave.shape[0]
    with MP4Writer(path, fps, sample_rate=rate, channels=channels, crf=crf, preset=preset,
                   audio_bitrate=audio_bitrate) as writer:
        writer.add_frames(rgb)
        return writer.close(None if wave is None else torch.from_numpy(wave))


def iter_video_frames(path: str | os.PathLike):
    """Decoded frames of a video file, one ``[H, W, 3]`` uint8 array at a time (one frame in memory at a time)."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: no such video file")
    try:
        container = av.open(str(path))
    except Exception as e:  # noqa: BLE001 - PyAV raises its own error classes per FFmpeg error
        raise MediaError(f"{path}: cannot read this video ({type(e).__name__}: {e}); use an MP4, MOV, MKV or WebM "
                         "file") from e
    with container:
        if not container.streams.video:
            raise MediaError(f"{path}: the file has no video stream")
        for frame in container.decode(container.streams.video[0]):
            yield frame.to_ndarray(format="rgb24")


def read_mp4_info(path: str | os.PathLike) -> dict:
    """Stream facts of a video file: codecs, size, frame count (decoded), fps, durations, audio rate."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: no such file")
    info: dict[str, Any] = {"video_codec": None, "audio_codec": None}
    with av.open(str(path)) as container:
        info["duration"] = container.duration / av.time_base if container.duration is not None else None
        if container.streams.video:
            vs = container.streams.video[0]
            info.update(video_codec=vs.codec_context.name, width=vs.codec_context.width,
                        height=vs.codec_context.height, pix_fmt=vs.codec_context.pix_fmt,
                        fps=float(vs.average_rate) if vs.average_rate else None)
            count = 0
            for _ in container.decode(vs):
                count += 1
            info["frames"] = count
            info["video_duration"] = float(vs.duration * vs.time_base) if vs.duration is not None else None
        if container.streams.audio:
            aus = container.streams.audio[0]
            info.update(audio_codec=aus.codec_context.name, audio_sample_rate=aus.codec_context.sample_rate,
                        audio_channels=len(aus.codec_context.layout.channels),
                        audio_duration=float(aus.duration * aus.time_base) if aus.duration is not None else None)
    return info
