"""Wan2.2 video VAE (TI2V-5B): causal 3D convolutional autoencoder, 48 latent channels, stride 4x16x16.

Used for the TI2V reference image (encode one frame -> one latent frame) and as the full-quality video
decoder. Numerics follow the official ``inference/model/vae2_2`` module: the same layer graph, the same
parameter names (``encoder.*``, ``decoder.*``, ``conv1.*``, ``conv2.*``), and the same causal chunked
schedule (encode: first frame alone, then chunks of 4 frames; decode: one latent frame per chunk) with
per-layer frame caches of the last ``CACHE_T`` frames. Decode can additionally run in overlapping spatial
tiles (each tile decoded causally over the whole clip, tiles blended linearly) to bound memory at 1080p.

Layers are built from an injected ``operations`` namespace (``Conv2d``/``Conv3d``) like ComfyUI's
``comfy.ops``; the norms' ``gamma`` is cast to the activation at use, so host-side casting works.
"""

from __future__ import annotations

import logging
import math
from typing import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CheckpointError
from .latent_stats import latent_mean_std

log = logging.getLogger(__name__)

# Frames of input history kept per causal conv between chunks (kernel 3 in time -> 2 frames).
CACHE_T = 2
PATCH = 2  # pixel-space patchify (2x2 -> 12 channels) before the encoder, undone after the decoder

RELEASE_WAN_VAE_CONFIG: dict = {
    "dim": 160,
    "dec_dim": 256,
    "z_dim": 48,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "temperal_downsample": [False, True, True],
}

# Same graph and strides as the release (z_dim 48, 16x spatial, 4x temporal), 10-16x narrower.
TINY_WAN_VAE_CONFIG: dict = {**RELEASE_WAN_VAE_CONFIG, "dim": 16, "dec_dim": 16}

_CONFIG_KEYS = tuple(RELEASE_WAN_VAE_CONFIG)
# Official WanVAE_ constructor arguments we accept but that have one supported value.
_FIXED_KEYS = {"attn_scales": [], "dropout": 0.0}


# a Wan2.2 VAE checkpoint cannot be used (unsafe pickle, wrong keys or shapes, unknown layout): the engine's one error family for weights files and their configs.
WanVAELoadError = CheckpointError


# ----------------------------------------------------------------------------- causal building blocks


class _FrameCache:
    """Per-layer frame history of one chunked pass; layers visit it in the same order every chunk."""

    def __init__(self) -> None:
        self.states: list = []
        self.pos = 0

    def start_chunk(self) -> None:
        self.pos = 0

    def get(self):
        if self.pos == len(self.states):
            self.states.append(None)
        return self.states[self.pos]

    def put(self, value) -> None:
        self.states[self.pos] = value
        self.pos += 1


_REPLICATE_FIRST = "first-chunk"  # marker: the temporal upsampler has seen only the first chunk


def _causal_conv3d(ops, cin: int, cout: int, kernel, *, stride=1, pad_hw: int = 0, pad_t: int = 0,
                   dtype=None, device=None) -> nn.Module:
    """A Conv3d whose time axis is padded on the past side only (2*pad_t frames) at call time."""
    conv = ops.Conv3d(cin, cout, kernel, stride=stride, padding=0, dtype=dtype, device=device)
    conv.causal_padding = (pad_hw, pad_hw, pad_hw, pad_hw, 2 * pad_t, 0)  # F.pad order: W, H, T
    return conv


def _run_causal(conv: nn.Module, x: torch.Tensor, cache: _FrameCache | None) -> torch.Tensor:
    """Apply a causal conv; with a cache, the previous chunk's last frames replace the zero padding."""
    pad = list(conv.causal_padding)
    if cache is not None and pad[4] > 0:
        prev = cache.get()
        keep = x[:, :, -CACHE_T:]
        if keep.shape[2] < CACHE_T and prev is not None:
            keep = torch.cat([prev[:, :, -1:].to(keep), keep], dim=2)
        if prev is not None:
            x = torch.cat([prev.to(x), x], dim=2)
            pad[4] -= prev.shape[2]
        cache.put(keep.clone())
    if any(pad):
        x = F.pad(x, pad)
    return conv(x)


class RMSNorm(nn.Module):
    """L2-normalise over channels, times sqrt(C) and a learned per-channel ``gamma`` (no bias)."""

    def __init__(self, dim: int, *, images: bool, dtype=None, device=None) -> None:
        super().__init__()
        shape = (dim, 1, 1) if images else (dim, 1, 1, 1)
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(shape, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma.to(x)


class Upsample2x(nn.Module):
    """Nearest-exact 2x spatial upsampling on [N, C, H, W], computed in fp32 (bf16-safe); also the Turbo
    decoder's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x.float(), scale_factor=2.0, mode="nearest-exact").to(x.dtype)


def _per_frame(fn, x: torch.Tensor) -> torch.Tensor:
    """Run a 2D module on every frame of [B, C, T, H, W]."""
    b, _, t = x.shape[:3]
    y = fn(x.transpose(1, 2).flatten(0, 1))  # [B*T, C, H, W]
    return y.unflatten(0, (b, t)).transpose(1, 2)


class ResidualBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, *, ops, dtype=None, device=None) -> None:
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        self.residual = nn.Sequential(
            RMSNorm(in_dim, images=False, **kw),
            nn.SiLU(),
            _causal_conv3d(ops, in_dim, out_dim, 3, pad_hw=1, pad_t=1, **kw),
            RMSNorm(out_dim, images=False, **kw),
            nn.SiLU(),
            nn.Identity(),  # dropout slot of the original (inference: identity)
            _causal_conv3d(ops, out_dim, out_dim, 3, pad_hw=1, pad_t=1, **kw),
        )
        self.shortcut = _causal_conv3d(ops, in_dim, out_dim, 1, **kw) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: _FrameCache | None = None) -> torch.Tensor:
        h = self.shortcut(x)
        for layer in self.residual:
            x = _run_causal(layer, x, cache) if hasattr(layer, "causal_padding") else layer(x)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H*W positions of each frame (no attention across time)."""

    def __init__(self, dim: int, *, ops, dtype=None, device=None) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, images=True, dtype=dtype, device=device)
        self.to_qkv = ops.Conv2d(dim, dim * 3, 1, dtype=dtype, device=device)
        self.proj = ops.Conv2d(dim, dim, 1, dtype=dtype, device=device)

    def _frame(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, H, W]
        n, c, h, w = x.shape
        qkv = self.to_qkv(self.norm(x)).flatten(2).transpose(1, 2)  # [N, HW, 3C]
        q, k, v = qkv.unsqueeze(1).chunk(3, dim=-1)  # [N, 1, HW, C] each
        y = F.scaled_dot_product_attention(q, k, v).squeeze(1)  # [N, HW, C]
        return self.proj(y.transpose(1, 2).reshape(n, c, h, w))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + _per_frame(self._frame, x)


class Resample(nn.Module):
    """2x spatial up/down-sampling, optionally with 2x temporal up/down-sampling (causal, cached)."""

    MODES = ("upsample2d", "upsample3d", "downsample2d", "downsample3d")

    def __init__(self, dim: int, mode: str, *, ops, dtype=None, device=None) -> None:
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"Resample mode {mode!r} not in {self.MODES}")
        self.mode = mode
        kw = dict(dtype=dtype, device=device)
        if mode.startswith("upsample"):
            self.resample = nn.Sequential(Upsample2x(), ops.Conv2d(dim, dim, 3, padding=1, **kw))
        else:
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), ops.Conv2d(dim, dim, 3, stride=2, **kw))
        if mode == "upsample3d":
            # One conv gives two output frames per input frame (channel halves), interleaved in time.
            self.time_conv = _causal_conv3d(ops, dim, dim * 2, (3, 1, 1), pad_t=1, **kw)
        elif mode == "downsample3d":
            self.time_conv = _causal_conv3d(ops, dim, dim, (3, 1, 1), stride=(2, 1, 1), **kw)

    def _time_upsample(self, x: torch.Tensor, cache: _FrameCache) -> torch.Tensor:
        prev = cache.get()
        if prev is None:  # very first chunk: one frame in, one frame out
            cache.put(_REPLICATE_FIRST)
            return x
        keep = x[:, :, -CACHE_T:]
        if keep.shape[2] < CACHE_T:
            pad = torch.zeros_like(keep) if isinstance(prev, str) else prev[:, :, -1:].to(keep)
            keep = torch.cat([pad, keep], dim=2)
        if isinstance(prev, str):  # second chunk: the time history starts from zeros, not from frame 0
            y = _run_causal(self.time_conv, x, None)
        else:
            y = self.time_conv(F.pad(torch.cat([prev.to(x), x], dim=2), (0, 0, 0, 0, CACHE_T - prev.shape[2], 0)))
        cache.put(keep.clone())
        b, c2, t, h, w = y.shape
        y = y.view(b, 2, c2 // 2, t, h, w).permute(0, 2, 3, 1, 4, 5)  # [B, C, T, 2, H, W]
        return y.reshape(b, c2 // 2, 2 * t, h, w)

    def _time_downsample(self, x: torch.Tensor, cache: _FrameCache) -> torch.Tensor:
        prev = cache.get()
        if prev is None:  # first chunk (one frame) passes through unchanged
            cache.put(x.clone())
            return x
        keep = x[:, :, -1:].clone()
        y = self.time_conv(torch.cat([prev[:, :, -1:].to(x), x], dim=2))  # stride 2, no padding
        cache.put(keep)
        return y

    def forward(self, x: torch.Tensor, cache: _FrameCache | None = None) -> torch.Tensor:
        if self.mode == "upsample3d" and cache is not None:
            x = self._time_upsample(x, cache)
        x = _per_frame(self.resample, x)
        if self.mode == "downsample3d" and cache is not None:
            x = self._time_downsample(x, cache)
        return x


class AvgDown3D(nn.Module):
    """Parameter-free shortcut: space/time-to-channel fold, then mean over channel groups."""

    def __init__(self, in_ch: int, out_ch: int, factor_t: int, factor_s: int) -> None:
        super().__init__()
        self.out_ch, self.ft, self.fs = out_ch, factor_t, factor_s
        fold = factor_t * factor_s * factor_s
        if (in_ch * fold) % out_ch:
            raise ValueError(f"AvgDown3D: {in_ch}*{fold} channels do not split into {out_ch} groups")
        self.group = in_ch * fold // out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, 0, 0, 0, (-x.shape[2]) % self.ft, 0))  # zero frames in front to a multiple of ft
        b, c, t, h, w = x.shape
        ft, fs = self.ft, self.fs
        x = x.view(b, c, t // ft, ft, h // fs, fs, w // fs, fs).permute(0, 1, 3, 5, 7, 2, 4, 6)
        x = x.reshape(b, self.out_ch, self.group, t // ft, h // fs, w // fs)
        return x.mean(dim=2)


class DupUp3D(nn.Module):
    """Parameter-free shortcut: repeat channels, unfold them into space/time (inverse of AvgDown3D)."""

    def __init__(self, in_ch: int, out_ch: int, factor_t: int, factor_s: int) -> None:
        super().__init__()
        self.out_ch, self.ft, self.fs = out_ch, factor_t, factor_s
        fold = factor_t * factor_s * factor_s
        if (out_ch * fold) % in_ch:
            raise ValueError(f"DupUp3D: {out_ch}*{fold} channels are not a multiple of {in_ch}")
        self.repeats = out_ch * fold // in_ch

    def forward(self, x: torch.Tensor, first_chunk: bool = False) -> torch.Tensor:
        b, _, t, h, w = x.shape
        ft, fs = self.ft, self.fs
        x = x.repeat_interleave(self.repeats, dim=1).view(b, self.out_ch, ft, fs, fs, t, h, w)
        x = x.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, self.out_ch, t * ft, h * fs, w * fs)
        return x[:, :, ft - 1:] if first_chunk else x


class DownBlock(nn.Module):
    def __init__(self, in_dim, out_dim, *, num_res_blocks, temporal, spatial, ops, dtype=None, device=None):
        super().__init__()
        kw = dict(ops=ops, dtype=dtype, device=device)
        self.avg_shortcut = AvgDown3D(in_dim, out_dim, 2 if temporal else 1, 2 if spatial else 1)
        blocks: list[nn.Module] = []
        for _ in range(num_res_blocks):
            blocks.append(ResidualBlock(in_dim, out_dim, **kw))
            in_dim = out_dim
        if spatial:
            blocks.append(Resample(out_dim, "downsample3d" if temporal else "downsample2d", **kw))
        self.downsamples = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, cache: _FrameCache | None) -> torch.Tensor:
        y = x
        for m in self.downsamples:
            y = m(y, cache)
        return y + self.avg_shortcut(x)


class UpBlock(nn.Module):
    def __init__(self, in_dim, out_dim, *, num_res_blocks, temporal, spatial, ops, dtype=None, device=None):
        super().__init__()
        kw = dict(ops=ops, dtype=dtype, device=device)
        self.avg_shortcut = DupUp3D(in_dim, out_dim, 2 if temporal else 1, 2) if spatial else None
        blocks: list[nn.Module] = []
        for _ in range(num_res_blocks):
            blocks.append(ResidualBlock(in_dim, out_dim, **kw))
            in_dim = out_dim
        if spatial:
            blocks.append(Resample(out_dim, "upsample3d" if temporal else "upsample2d", **kw))
        self.upsamples = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, cache: _FrameCache | None, first_chunk: bool) -> torch.Tensor:
        y = x
        for m in self.upsamples:
            y = m(y, cache)
        if self.avg_shortcut is not None:
            y = y + self.avg_shortcut(x, first_chunk)
        return y


def _head(dim: int, out: int, *, ops, dtype, device) -> nn.Sequential:
    return nn.Sequential(RMSNorm(dim, images=False, dtype=dtype, device=device), nn.SiLU(),
                         _causal_conv3d(ops, dim, out, 3, pad_hw=1, pad_t=1, dtype=dtype, device=device))


def _middle(dim: int, *, ops, dtype, device) -> nn.Sequential:
    kw = dict(ops=ops, dtype=dtype, device=device)
    return nn.Sequential(ResidualBlock(dim, dim, **kw), AttentionBlock(dim, **kw), ResidualBlock(dim, dim, **kw))


def _run_sequence(seq: nn.Sequential, x: torch.Tensor, cache: _FrameCache | None) -> torch.Tensor:
    for layer in seq:
        if hasattr(layer, "causal_padding"):
            x = _run_causal(layer, x, cache)
        elif isinstance(layer, ResidualBlock):
            x = layer(x, cache)
        else:
            x = layer(x)
    return x


class Encoder3d(nn.Module):
    def __init__(self, dim, out_ch, dim_mult, num_res_blocks, temperal_downsample, *, ops, dtype=None, device=None):
        super().__init__()
        kw = dict(ops=ops, dtype=dtype, device=device)
        dims = [dim * m for m in [1, *dim_mult]]
        self.conv1 = _causal_conv3d(ops, 3 * PATCH * PATCH, dims[0], 3, pad_hw=1, pad_t=1, dtype=dtype, device=device)
        last = len(dim_mult) - 1
        self.downsamples = nn.Sequential(*[
            DownBlock(dims[i], dims[i + 1], num_res_blocks=num_res_blocks,
                      temporal=bool(temperal_downsample[i]) if i < len(temperal_downsample) else False,
                      spatial=i != last, **kw)
            for i in range(len(dim_mult))
        ])
        self.middle = _middle(dims[-1], **kw)
        self.head = _head(dims[-1], out_ch, **kw)

    def forward(self, x: torch.Tensor, cache: _FrameCache | None) -> torch.Tensor:
        x = _run_causal(self.conv1, x, cache)
        for block in self.downsamples:
            x = block(x, cache)
        x = _run_sequence(self.middle, x, cache)
        return _run_sequence(self.head, x, cache)


class Decoder3d(nn.Module):
    def __init__(self, dim, z_dim, dim_mult, num_res_blocks, temperal_upsample, *, ops, dtype=None, device=None):
        super().__init__()
        kw = dict(ops=ops, dtype=dtype, device=device)
        dims = [dim * m for m in [dim_mult[-1], *dim_mult[::-1]]]
        self.conv1 = _causal_conv3d(ops, z_dim, dims[0], 3, pad_hw=1, pad_t=1, dtype=dtype, device=device)
        self.middle = _middle(dims[0], **kw)
        last = len(dim_mult) - 1
        self.upsamples = nn.Sequential(*[
            UpBlock(dims[i], dims[i + 1], num_res_blocks=num_res_blocks + 1,
                    temporal=bool(temperal_upsample[i]) if i < len(temperal_upsample) else False,
                    spatial=i != last, **kw)
            for i in range(len(dim_mult))
        ])
        self.head = _head(dims[-1], 3 * PATCH * PATCH, **kw)

    def forward(self, x: torch.Tensor, cache: _FrameCache | None, first_chunk: bool) -> torch.Tensor:
        x = _run_causal(self.conv1, x, cache)
        x = _run_sequence(self.middle, x, cache)
        for block in self.upsamples:
            x = block(x, cache, first_chunk)
        return _run_sequence(self.head, x, cache)


def patchify(x: torch.Tensor) -> torch.Tensor:
    """[B, C, F, 2H, 2W] -> [B, 4C, F, H, W]; channel index c*4 + 2*(w offset) + (h offset)."""
    b, c, f, h, w = x.shape
    x = x.view(b, c, f, h // PATCH, PATCH, w // PATCH, PATCH).permute(0, 1, 6, 4, 2, 3, 5)
    return x.reshape(b, c * PATCH * PATCH, f, h // PATCH, w // PATCH)


def unpatchify(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`patchify`."""
    b, c4, f, h, w = x.shape
    c = c4 // (PATCH * PATCH)
    x = x.view(b, c, PATCH, PATCH, f, h, w).permute(0, 1, 4, 5, 3, 6, 2)  # [B, C, F, H, hq, W, wr]
    return x.reshape(b, c, f, h * PATCH, w * PATCH)


# ----------------------------------------------------------------------------- the model


def _tile_plan(size: int, tile: int, overlap: int) -> list[tuple[int, int, int]]:
    """Tiles of length ``tile`` covering ``size``, neighbours sharing at least ``overlap``.

    Returns (start, shared with the previous tile, shared with the next tile) per tile.
    """
    if tile >= size:
        return [(0, 0, 0)]
    starts = list(range(0, size - tile, tile - overlap)) + [size - tile]
    return [(s0,
             starts[i - 1] + tile - s0 if i > 0 else 0,
             s0 + tile - starts[i + 1] if i + 1 < len(starts) else 0)
            for i, s0 in enumerate(starts)]


def _blend_ramp(length: int, ramp_lo: int, ramp_hi: int) -> torch.Tensor:
    """1D blend weights: 1 inside, linear ramps over the samples shared with a neighbouring tile.

    Two neighbours sharing n samples get ramps (q+1)/(n+1) and (n-q)/(n+1): they sum to exactly 1.
    """
    p = torch.arange(length, dtype=torch.float32)
    w = torch.ones(length)
    if ramp_lo > 0:
        w = torch.minimum(w, (p + 1) / (ramp_lo + 1))
    if ramp_hi > 0:
        w = torch.minimum(w, (length - p) / (ramp_hi + 1))
    return w


class WanVAE(nn.Module):
    """The Wan2.2 VAE. ``state_dict()`` keys are the official ``WanVAE_`` keys."""

    def __init__(self, dim: int = 160, dec_dim: int = 256, z_dim: int = 48, dim_mult: Sequence[int] = (1, 2, 4, 4),
                 num_res_blocks: int = 2, temperal_downsample: Sequence[bool] = (False, True, True), *,
                 operations=torch.nn, dtype=None, device=None) -> None:
        super().__init__()
        dim_mult = [int(m) for m in dim_mult]
        temperal_downsample = [bool(t) for t in temperal_downsample]
        self.config = {"dim": int(dim), "dec_dim": int(dec_dim), "z_dim": int(z_dim), "dim_mult": dim_mult,
                       "num_res_blocks": int(num_res_blocks), "temperal_downsample": temperal_downsample}
        self.z_dim = int(z_dim)
        self.compute_dtype = dtype or torch.get_default_dtype()
        ops = operations
        kw = dict(ops=ops, dtype=dtype, device=device)
        self.encoder = Encoder3d(dim, z_dim * 2, dim_mult, num_res_blocks, temperal_downsample, **kw)
        self.conv1 = _causal_conv3d(ops, z_dim * 2, z_dim * 2, 1, dtype=dtype, device=device)
        self.conv2 = _causal_conv3d(ops, z_dim, z_dim, 1, dtype=dtype, device=device)
        self.decoder = Decoder3d(dec_dim, z_dim, dim_mult, num_res_blocks, temperal_downsample[::-1], **kw)
        self.spatial_stride = PATCH * 2 ** (len(dim_mult) - 1)
        self.temporal_stride = 2 ** sum(temperal_downsample[: len(dim_mult) - 1])

    @classmethod
    def from_config(cls, config: Mapping, *, operations=torch.nn, dtype=None, device=None) -> "WanVAE":
        """Build from a dict with keys dim, dec_dim, z_dim, dim_mult, num_res_blocks, temperal_downsample."""
        cfg = dict(RELEASE_WAN_VAE_CONFIG)
        unknown = [k for k in config if k not in _CONFIG_KEYS and k not in _FIXED_KEYS]
        if unknown:
            raise ValueError(f"WanVAE config: unknown keys {unknown}; expected {list(_CONFIG_KEYS)}")
        if list(config.get("attn_scales", [])):
            raise ValueError(f"WanVAE config: attn_scales={config['attn_scales']!r} is not supported (only [])")
        if float(config.get("dropout", 0.0)) != 0.0:
            raise ValueError(f"WanVAE config: dropout={config['dropout']!r} is not supported at inference (only 0)")
        cfg.update({k: config[k] for k in _CONFIG_KEYS if k in config})
        return cls(**cfg, operations=operations, dtype=dtype, device=device)

    # -- encode ---------------------------------------------------------------------------------

    def _check_video(self, video: torch.Tensor) -> torch.Tensor:
        if video.dim() != 5 or video.shape[1] != 3:
            raise ValueError(f"WanVAE.encode expects video [B, 3, F, H, W] in [-1, 1], got {tuple(video.shape)}")
        h, w = video.shape[-2:]
        s = self.spatial_stride
        if h % s or w % s or h == 0 or w == 0:
            raise ValueError(f"WanVAE.encode: height and width must be positive multiples of {s}, got {h}x{w}; "
                             f"resize or crop the frames first")
        f = video.shape[2]
        if f < 1:
            raise ValueError("WanVAE.encode: the video has no frames")
        used = (f - 1) // self.temporal_stride * self.temporal_stride + 1
        if used != f:
            log.warning("WanVAE.encode: %d frames is not 4k+1; the last %d frame(s) are dropped (as the official "
                        "encoder does)", f, f - used)
        return video[:, :, :used]

    @torch.no_grad()
    def encode_mu(self, video: torch.Tensor) -> torch.Tensor:
        """Un-normalised posterior mean [B, z_dim, T, H/16, W/16] (fp32), T = (F-1)//4 + 1."""
        x = patchify(self._check_video(video).to(self.compute_dtype))
        cache = _FrameCache()
        step = self.temporal_stride
        outs = []
        for start in [0, *range(1, x.shape[2], step)]:
            cache.start_chunk()
            stop = 1 if start == 0 else start + step
            outs.append(self.encoder(x[:, :, start:stop], cache))
        h = self.conv1(torch.cat(outs, dim=2))
        return h[:, : self.z_dim].float()

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """video [B, 3, F, H, W] in [-1, 1] -> normalised latent ``(mu - mean) / std`` [B, 48, T, H/16, W/16]."""
        mu = self.encode_mu(video)
        mean, std = self._stats(mu.device)
        return (mu - mean) * (1.0 / std)

    # -- decode ---------------------------------------------------------------------------------

    def _stats(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.z_dim != 48:
            raise ValueError(f"the Wan2.2 latent statistics have 48 channels; this model has z_dim={self.z_dim}")
        return latent_mean_std(device=device)

    def _decode_chunked(self, z: torch.Tensor) -> torch.Tensor:
        """Un-normalised latent [B, z, T, h, w] -> raw decoder output [B, 3, 4(T-1)+1, 16h, 16w] (no clamp)."""
        x = self.conv2(z.to(self.compute_dtype))
        cache = _FrameCache()
        outs = []
        for i in range(x.shape[2]):
            cache.start_chunk()
            outs.append(self.decoder(x[:, :, i:i + 1], cache, first_chunk=i == 0))
        return unpatchify(torch.cat(outs, dim=2))

    @torch.no_grad()
    def decode(self, latent: torch.Tensor, tile: int | tuple[int, int] | None = None,
               overlap: int | tuple[int, int] = 8) -> torch.Tensor:
        """Normalised latent [B, 48, T, h, w] -> video [B, 3, 4(T-1)+1, 16h, 16w] in [-1, 1] (fp32).

        ``tile=(th, tw)`` (latent units) decodes overlapping spatial tiles, each over the whole clip with
        its own causal frame cache, and blends them with linear ramps over the ``overlap`` (latent units).
        """
        if latent.dim() != 5 or latent.shape[1] != self.z_dim:
            raise ValueError(f"WanVAE.decode expects a latent [B, {self.z_dim}, T, h, w], got {tuple(latent.shape)}")
        if latent.shape[2] < 1:
            raise ValueError("WanVAE.decode: the latent has no frames")
        mean, std = self._stats(latent.device)
        z = latent.float() * std + mean
        if tile is None:
            return self._decode_chunked(z).float().clamp_(-1, 1)
        return self._decode_tiled(z, tile, overlap).clamp_(-1, 1)

    def _decode_tiled(self, z: torch.Tensor, tile, overlap) -> torch.Tensor:
        th, tw = (tile, tile) if isinstance(tile, int) else (int(tile[0]), int(tile[1]))
        oh, ow = (overlap, overlap) if isinstance(overlap, int) else (int(overlap[0]), int(overlap[1]))
        if th < 1 or tw < 1:
            raise ValueError(f"WanVAE.decode: tile must be positive (latent units), got {tile}")
        b, _, t, h, w = z.shape
        th, tw = min(th, h), min(tw, w)
        if oh < 0 or ow < 0 or (th < h and oh >= th) or (tw < w and ow >= tw):
            raise ValueError(f"WanVAE.decode: overlap {overlap} must be >= 0 and smaller than the tile {tile}")
        s = self.spatial_stride
        frames = (t - 1) * self.temporal_stride + 1
        out = torch.zeros(b, 3, frames, h * s, w * s, dtype=torch.float32, device=z.device)
        weight = torch.zeros(h * s, w * s, dtype=torch.float32, device=z.device)
        for y0, y_lo, y_hi in _tile_plan(h, th, oh):
            wy = _blend_ramp(th * s, y_lo * s, y_hi * s)
            for x0, x_lo, x_hi in _tile_plan(w, tw, ow):
                wx = _blend_ramp(tw * s, x_lo * s, x_hi * s)
                piece = self._decode_chunked(z[:, :, :, y0:y0 + th, x0:x0 + tw]).float()  # [B, 3, F, th*s, tw*s]
                wt = (wy[:, None] * wx[None, :]).to(out.device)
                region = (slice(y0 * s, (y0 + th) * s), slice(x0 * s, (x0 + tw) * s))
                out[(..., *region)] += piece * wt
                weight[region] += wt
                del piece
        return out.div_(weight)


def init_random_wan_vae(model: WanVAE, seed: int = 0) -> WanVAE:
    """Deterministic, well-scaled random weights (fan-in normal convs, gammas near 1, small biases)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                v = 1.0 + 0.1 * torch.randn(p.shape, generator=g)
            elif name.endswith("bias"):
                v = 0.02 * torch.randn(p.shape, generator=g)
            else:
                fan_in = math.prod(p.shape[1:])
                gain = 0.35 if name.endswith(("proj.weight", "decoder.head.2.weight")) else 1.0
                v = torch.randn(p.shape, generator=g) * (gain / math.sqrt(fan_in))
            p.copy_(v.to(p))
    return model


__all__ = [
    "CACHE_T", "RELEASE_WAN_VAE_CONFIG", "TINY_WAN_VAE_CONFIG", "WanVAE", "WanVAELoadError", "init_random_wan_vae",
    "patchify", "unpatchify",
]
