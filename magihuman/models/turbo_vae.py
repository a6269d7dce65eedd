"""Turbo VAE decoder (TurboVAED, "TurboV3-Wan22-TinyShallow"): the fast Wan2.2-latent video decoder.

A convolutional decoder distilled from the Wan2.2 VAE: 48-channel latents, 4x time / 16x space. It is
not causal; the official pipeline decodes in a sliding window of latent chunks with one latent frame
of context on each side and trims the overlapping pixel frames, which bounds memory for long clips.
Parameter names equal the official ``decoder.*`` keys so the released checkpoint loads strictly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from ..ops import tag_operations
from .latent_stats import WAN22_LATENT_MEAN, latent_mean_std
from .video_vae import Upsample2x

__all__ = [
    "TurboVAEConfig",
    "TurboVAEDecoder",
    "TurboVAEError",
    "TINY_TURBO_CONFIG",
    "RELEASE_TURBO_CONFIG",
    "CONFIG_METADATA_KEY",
    "Chunk",
    "plan_chunks",
    "unpatchify",
]

# safetensors metadata key holding the official JSON config (written by convert_turbo_checkpoint).
CONFIG_METADATA_KEY = "turbo_vae_config"


# a Turbo VAE config or checkpoint cannot be used (message names the file and the fix): the engine's one error family for weights files and their configs.
TurboVAEError = CheckpointError


# ----------------------------------------------------------------------------- config

# Keys that define the architecture; the official constructor has defaults for them, but those
# defaults (128 latent channels, patch 4) cannot build a Wan2.2-latent decoder, so a JSON must say.
_REQUIRED_KEYS = (
    "latent_channels",
    "decoder_block_out_channels",
    "decoder_layers_per_block",
    "decoder_spatio_temporal_scaling",
    "patch_size",
)


@dataclass(frozen=True)
class TurboVAEConfig:
    """The decoder-relevant fields of the official TurboVAED config (official names and defaults).

    All lists are in *encoder* order, as in the JSON; the decoder walks them reversed.
    """

    latent_channels: int
    decoder_block_out_channels: tuple[int, ...]
    decoder_layers_per_block: tuple[int, ...]
    decoder_spatio_temporal_scaling: tuple[bool, ...]
    patch_size: int
    out_channels: int = 3
    patch_size_t: int = 1
    resnet_norm_eps: float = 1e-6
    decoder_causal: bool = False
    decoder_is_dw_conv: Optional[tuple[bool, ...]] = None  # official default: all False (len(blocks) + 1)
    decoder_dw_kernel_size: int = 3
    decoder_spatio_only: Optional[tuple[bool, ...]] = None  # official default: all False (len(blocks))
    first_chunk_size: int = 3
    step_size: int = 5
    spatial_compression_ratio: int = 16
    temporal_compression_ratio: int = 4
    use_unpatchify: bool = False

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "Turbo VAE config") -> "TurboVAEConfig":
        """Read an official JSON dict; keys the decoder does not use (encoder, training) are ignored."""
        if not isinstance(d, Mapping):
            raise TurboVAEError(f"{where}: expected a JSON object (dict), got {type(d).__name__}")
        missing = [k for k in _REQUIRED_KEYS if k not in d]
        if missing:
            raise TurboVAEError(
                f"{where}: missing required key(s) {missing}. Use the released "
                "TurboV3-Wan22-TinyShallow_7_7.json (or a dict with the same keys).")
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for k in ("decoder_block_out_channels", "decoder_layers_per_block"):
            kw[k] = tuple(int(v) for v in kw[k])
        for k in ("decoder_spatio_temporal_scaling", "decoder_is_dw_conv", "decoder_spatio_only"):
            if kw.get(k) is not None:
                kw[k] = tuple(bool(v) for v in kw[k])
        n = len(kw["decoder_block_out_channels"])
        kw.setdefault("decoder_is_dw_conv", None)
        kw.setdefault("decoder_spatio_only", None)
        if kw["decoder_is_dw_conv"] is None:
            kw["decoder_is_dw_conv"] = (False,) * (n + 1)
        if kw["decoder_spatio_only"] is None:
            kw["decoder_spatio_only"] = (False,) * n
        cfg = cls(**kw)
        cfg.validate(where)
        return cfg

    def validate(self, where: str = "Turbo VAE config") -> None:
        n = len(self.decoder_block_out_channels)
        lengths = {
            "decoder_layers_per_block": (len(self.decoder_layers_per_block), n + 1),
            "decoder_spatio_temporal_scaling": (len(self.decoder_spatio_temporal_scaling), n),
            "decoder_spatio_only": (len(self.decoder_spatio_only), n),
            "decoder_is_dw_conv": (len(self.decoder_is_dw_conv), n + 1),
        }
        for key, (got, want) in lengths.items():
            if got != want:
                raise TurboVAEError(f"{where}: {key} has {got} entries, expected {want} "
                                    f"(decoder_block_out_channels has {n})")
        if self.patch_size != 2:
            raise TurboVAEError(f"{where}: patch_size={self.patch_size}; the official decoder requires 2")
        if self.decoder_causal:
            raise TurboVAEError(f"{where}: decoder_causal=true is not supported by the official decoder")
        t_up, s_up = self.upsampling_factors()
        if t_up != self.temporal_compression_ratio:
            raise TurboVAEError(f"{where}: the decoder upsamples time x{t_up} but temporal_compression_ratio="
                                f"{self.temporal_compression_ratio}")
        if s_up != self.spatial_compression_ratio:
            raise TurboVAEError(f"{where}: the decoder upsamples space x{s_up} but spatial_compression_ratio="
                                f"{self.spatial_compression_ratio}")
        if self.first_chunk_size < 1 or self.step_size < 1:
            raise TurboVAEError(f"{where}: first_chunk_size and step_size must be >= 1")
        if self.decoder_dw_kernel_size % 2 != 1 and any(self.decoder_is_dw_conv):
            raise TurboVAEError(f"{where}: decoder_dw_kernel_size must be odd")

    def upsampling_factors(self) -> tuple[int, int]:
        """(time, space) upsampling of the decoder built from this config."""
        t = s = 1
        for scale, only in zip(self.decoder_spatio_temporal_scaling, self.decoder_spatio_only):
            if scale:
                s *= 2
                t *= 1 if only else 2
        return t, s * self.patch_size

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


# The released config (TurboV3-Wan22-TinyShallow_7_7.json) as published in public ports of the model;
# used for shapes/benchmarks only: loaders always read the user's JSON.
RELEASE_TURBO_CONFIG: dict = {
    "latent_channels": 48,
    "in_channels": 3,
    "out_channels": 3,
    "decoder_block_out_channels": [64, 128, 256, 512],
    "decoder_layers_per_block": [2, 2, 2, 3, 3],
    "decoder_spatio_temporal_scaling": [False, True, True, True],
    "decoder_spatio_only": [False, True, False, False],
    "decoder_is_dw_conv": [False, False, False, False, False],
    "decoder_dw_kernel_size": 5,
    "decoder_causal": False,
    "patch_size": 2,
    "patch_size_t": 1,
    "resnet_norm_eps": 1e-6,
    "scaling_factor": 1.0,
    "spatial_compression_ratio": 16,
    "temporal_compression_ratio": 4,
    "first_chunk_size": 7,
    "step_size": 7,
    "use_unpatchify": True,
}

# Same topology as the release (two x2 time + one x2-space-only upsampler, unpatchify x2: 4x / 16x),
# tiny widths. first_chunk 3 / step 2 so short test clips already take every chunking branch.
TINY_TURBO_CONFIG: dict = {
    **RELEASE_TURBO_CONFIG,
    "decoder_block_out_channels": [8, 8, 16, 16],
    "decoder_layers_per_block": [1, 1, 1, 1, 1],
    "decoder_is_dw_conv": [False, False, True, False, False],
    "decoder_dw_kernel_size": 3,
    "first_chunk_size": 3,
    "step_size": 2,
}


# ----------------------------------------------------------------------------- layers

def rms_norm_channels(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Parameter-free RMS norm over dim 1, statistics in fp32, result in the input dtype."""
    var = x.float().pow(2).mean(1, keepdim=True)
    return (x.float() * torch.rsqrt(var + eps)).to(x.dtype)


def unpatchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C*p*p, T, H, W] -> [B, C, T, H*p, W*p]; channel c*p*p + j*p + i goes to row offset i, column j."""
    if p == 1:
        return x
    b, cpp, t, h, w = x.shape
    x = x.reshape(b, cpp // (p * p), p, p, t, h, w)  # [B, C, j, i, T, H, W]
    return x.permute(0, 1, 4, 5, 3, 6, 2).reshape(b, cpp // (p * p), t, h * p, w * p)


def _pad_time_replicate(x: torch.Tensor, pad: int) -> torch.Tensor:
    if pad == 0:
        return x
    return torch.cat([x[:, :, :1].expand(-1, -1, pad, -1, -1), x, x[:, :, -1:].expand(-1, -1, pad, -1, -1)], 2)


class TurboConv3d(nn.Module):
    """Conv3d: edge frames replicated (k_t-1)/2 on both sides in time, zeros in space (official "CausalConv3d")."""

    def __init__(self, in_channels, out_channels, kernel_size=3, *, operations=nn, dtype=None, device=None):
        super().__init__()
        k = tuple(kernel_size) if isinstance(kernel_size, (tuple, list)) else (kernel_size,) * 3
        self.time_pad = (k[0] - 1) // 2
        self.conv = tag_operations(operations.Conv3d(in_channels, out_channels, k, padding=(0, k[1] // 2, k[2] // 2),
                                                     dtype=dtype, device=device), operations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(_pad_time_replicate(x, self.time_pad))


class TurboDepthwiseConv3d(nn.Module):
    """Depthwise k^3 conv (same time padding rule) followed by a pointwise 1x1x1 channel mix."""

    def __init__(self, in_channels, out_channels, kernel_size=3, *, operations=nn, dtype=None, device=None):
        super().__init__()
        k = kernel_size
        self.time_pad = (k - 1) // 2
        self.depthwise_conv = tag_operations(operations.Conv3d(
            in_channels, in_channels, k, padding=(0, k // 2, k // 2), groups=in_channels, dtype=dtype, device=device),
            operations)
        self.pointwise_conv = tag_operations(operations.Conv3d(in_channels, out_channels, 1, dtype=dtype,
                                                               device=device), operations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(_pad_time_replicate(x, self.time_pad)))


class TurboResnetBlock(nn.Module):
    """norm -> act -> conv -> norm -> SiLU -> conv, plus a (norm -> 1x1 conv) shortcut when widths differ.

    The first activation is ReLU in blocks that follow an upsampler (official ``is_upsampler_modified``).
    """

    def __init__(self, in_channels, out_channels, *, eps=1e-6, relu_first=False, dw_conv=False, dw_kernel_size=3,
                 operations=nn, dtype=None, device=None):
        super().__init__()
        kw = dict(operations=operations, dtype=dtype, device=device)
        conv, k = (TurboDepthwiseConv3d, dw_kernel_size) if dw_conv else (TurboConv3d, 3)
        self.relu_first = relu_first
        self.shortcut_eps = eps
        self.conv1 = conv(in_channels, out_channels, k, **kw)
        self.conv2 = conv(out_channels, out_channels, k, **kw)
        self.conv_shortcut = conv(in_channels, out_channels, 1, **kw) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = rms_norm_channels(x, 1e-8)
        h = F.relu(h) if self.relu_first else F.silu(h)
        h = self.conv1(h)
        h = F.silu(rms_norm_channels(h, 1e-8))
        h = self.conv2(h)
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(rms_norm_channels(x, self.shortcut_eps))
        return h + x


class TurboUpsampler(nn.Module):
    """x2 space (per frame: nearest + 3x3 conv); in "3d" mode first x2 time through a (3,1,1) conv that
    emits two frames per input frame. The first chunk of a clip drops its first produced frame."""

    def __init__(self, dim, temporal: bool, *, operations=nn, dtype=None, device=None):
        super().__init__()
        self.temporal = temporal
        self.resample = nn.Sequential(Upsample2x(), tag_operations(
            operations.Conv2d(dim, dim, 3, padding=1, dtype=dtype, device=device), operations))
        if temporal:
            self.time_conv = TurboConv3d(dim, dim * 2, (3, 1, 1), operations=operations, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor, is_first_chunk: bool) -> torch.Tensor:
        b, c, t, h, w = x.shape
        if self.temporal:
            x = self.time_conv(x)  # [B, 2C, T, H, W], channel = phase * C + c
            x = x.reshape(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)
            if is_first_chunk:
                x = x[:, :, 1:]
            t = x.shape[2]
        x = x.transpose(1, 2).reshape(b * t, c, h, w)
        x = self.resample(x)
        return x.reshape(b, t, c, 2 * h, 2 * w).transpose(1, 2)


class TurboMidBlock(nn.Module):
    def __init__(self, dim, num_layers, *, eps, dw_conv, dw_kernel_size, **kw):
        super().__init__()
        self.resnets = nn.ModuleList(TurboResnetBlock(dim, dim, eps=eps, dw_conv=dw_conv, dw_kernel_size=dw_kernel_size,
                                                      **kw) for _ in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for r in self.resnets:
            x = r(x)
        return x


class TurboUpBlock(nn.Module):
    """[width change resnet] -> [upsampler] -> resnets."""

    def __init__(self, in_dim, out_dim, num_layers, *, upsample: bool, spatial_only: bool, eps, dw_conv,
                 dw_kernel_size, **kw):
        super().__init__()
        rk = dict(eps=eps, dw_conv=dw_conv, dw_kernel_size=dw_kernel_size, **kw)
        self.conv_in = TurboResnetBlock(in_dim, out_dim, **rk) if in_dim != out_dim else None
        self.upsamplers = nn.ModuleList([TurboUpsampler(out_dim, not spatial_only, **kw)]) if upsample else None
        self.resnets = nn.ModuleList(TurboResnetBlock(out_dim, out_dim, relu_first=upsample, **rk)
                                     for _ in range(num_layers))

    def forward(self, x: torch.Tensor, is_first_chunk: bool) -> torch.Tensor:
        if self.conv_in is not None:
            x = self.conv_in(x)
        if self.upsamplers is not None:
            for up in self.upsamplers:
                x = up(x, is_first_chunk)
        for r in self.resnets:
            x = r(x)
        return x


class _ConvPixelShuffle(nn.Module):
    """3x3 conv then pixel shuffle x2 (per frame): the official non-unpatchify output stage."""

    def __init__(self, dim, *, operations=nn, dtype=None, device=None):
        super().__init__()
        self.conv = tag_operations(operations.Conv2d(dim, dim, 3, padding=1, dtype=dtype, device=device), operations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.conv(x), 2)


class TurboDecoder3d(nn.Module):
    """Latent [B, Cz, T, h, w] -> video [B, 3, T', 16h, 16w]; T' = 4T-3 for a first chunk, else 4T."""

    def __init__(self, cfg: TurboVAEConfig, *, operations=nn, dtype=None, device=None):
        super().__init__()
        kw = dict(operations=operations, dtype=dtype, device=device)
        widths = tuple(reversed(cfg.decoder_block_out_channels))
        layers = tuple(reversed(cfg.decoder_layers_per_block))
        scaling = tuple(reversed(cfg.decoder_spatio_temporal_scaling))
        dw = tuple(reversed(cfg.decoder_is_dw_conv))
        spatial_only = tuple(reversed(cfg.decoder_spatio_only))
        blk = dict(eps=cfg.resnet_norm_eps, dw_kernel_size=cfg.decoder_dw_kernel_size)
        self.patch_size = cfg.patch_size
        self.use_unpatchify = cfg.use_unpatchify

        dim = widths[0]
        self.conv_in = TurboConv3d(cfg.latent_channels, dim, 3, **kw)
        self.mid_block = TurboMidBlock(dim, layers[0], dw_conv=dw[0], **blk, **kw)
        self.up_blocks = nn.ModuleList()
        for i, width in enumerate(widths):
            self.up_blocks.append(TurboUpBlock(dim, width, layers[i + 1], upsample=scaling[i],
                                               spatial_only=spatial_only[i], dw_conv=dw[i + 1], **blk, **kw))
            dim = width
        out_ch = cfg.out_channels
        if self.use_unpatchify:
            out_ch *= cfg.patch_size ** 2
        else:
            self.upsampler2d_1 = _ConvPixelShuffle(dim, **kw)
            dim //= 4
        self.conv_out = TurboConv3d(dim, out_ch, 3, **kw)

    def forward(self, x: torch.Tensor, is_first_chunk: bool) -> torch.Tensor:
        x = self.mid_block(self.conv_in(x))
        for block in self.up_blocks:
            x = block(x, is_first_chunk)
        if not self.use_unpatchify:
            x = F.silu(rms_norm_channels(x, 1e-8))
            # frame by frame, as official (bitwise the same results, less scratch memory)
            x = torch.stack([self.upsampler2d_1(x[:, :, i]) for i in range(x.shape[2])], dim=2)
        x = self.conv_out(F.silu(rms_norm_channels(x, 1e-8)))
        if self.use_unpatchify:
            x = unpatchify(x, self.patch_size)
        return x


# ----------------------------------------------------------------------------- sliding window

@dataclass(frozen=True)
class Chunk:
    """Decode latent frames [left, right) and keep pixel frames [keep_from, keep_to) of the result."""

    left: int
    right: int
    is_first: bool
    keep_from: int
    keep_to: int


def plan_chunks(num_frames: int, first_chunk_size: int, step_size: int, temporal_ratio: int = 4
                ) -> tuple[int, list[Chunk]]:
    """The official window over ``num_frames`` latent frames: (number of padding frames, chunks).

    The clip is padded with copies of its last frame to ``first_chunk_size + n * step_size`` frames.
    Each chunk carries one latent frame of context per inner side; the ``temporal_ratio`` pixel frames
    that context produces are cut away again.
    """
    if num_frames < 1:
        raise ValueError(f"need at least one latent frame, got {num_frames}")
    if num_frames < first_chunk_size:
        pad = first_chunk_size - num_frames
    else:
        pad = (-(num_frames - first_chunk_size)) % step_size
    n = num_frames + pad
    ov = temporal_ratio
    if n == first_chunk_size:
        return pad, [Chunk(0, n, True, 0, temporal_ratio * n - (temporal_ratio - 1))]
    first_len = temporal_ratio * (first_chunk_size + 1) - (temporal_ratio - 1)
    chunks = [Chunk(0, first_chunk_size + 1, True, 0, first_len - ov)]
    for start in range(first_chunk_size, n, step_size):
        last = start + step_size == n
        right = n if last else start + step_size + 1
        length = temporal_ratio * (right - (start - 1))
        chunks.append(Chunk(start - 1, right, False, ov, length if last else length - ov))
    return pad, chunks


# ----------------------------------------------------------------------------- the model

class TurboVAEDecoder(nn.Module):
    """The official TurboVAED decoder half with its sliding-window ``decode``.

    ``state_dict()`` keys are the official ``decoder.*`` names (the Wan2.2 latent statistics are constants).
    """

    def __init__(self, config: TurboVAEConfig, *, operations=nn, dtype=None, device=None,
                 source_config: Optional[Mapping[str, Any]] = None):
        super().__init__()
        if config.latent_channels != len(WAN22_LATENT_MEAN):
            raise TurboVAEError(f"latent_channels={config.latent_channels}: the Turbo decoder de-normalises with the "
                                f"{len(WAN22_LATENT_MEAN)} Wan2.2 latent statistics, so it must be 48")
        self.config = config
        self.source_config = dict(source_config) if source_config is not None else config.to_dict()
        self.decoder = TurboDecoder3d(config, operations=operations, dtype=dtype, device=device)
        # None: compute in the dtype of the weights (bf16 for the official model; fp32 is fine on CPU).
        self.compute_dtype: Optional[torch.dtype] = dtype

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, operations=nn, dtype=None, device=None) -> "TurboVAEDecoder":
        """Build from the official JSON dict (``TurboV3-Wan22-TinyShallow_7_7.json``)."""
        return cls(TurboVAEConfig.from_dict(config), operations=operations, dtype=dtype, device=device,
                   source_config=config)

    @property
    def first_chunk_size(self) -> int:
        return self.config.first_chunk_size

    @property
    def step_size(self) -> int:
        return self.config.step_size

    def _compute_dtype(self) -> torch.dtype:
        if self.compute_dtype is not None:
            return self.compute_dtype
        w = self.decoder.conv_in.conv.weight
        return w.dtype if w.dtype.is_floating_point and w.element_size() >= 2 else torch.bfloat16

    def denormalize(self, latent: torch.Tensor) -> torch.Tensor:
        """Undo the Wan2.2 latent normalisation (``z * std + mean``, in fp32 as official)."""
        mean, std = latent_mean_std(device=latent.device)  # [1, 48, 1, 1, 1] fp32
        # The official code divides by 1/std; identical to z*std up to one rounding, kept for parity.
        return latent.float() / (1.0 / std) + mean

    @torch.no_grad()
    def decode(self, latent: torch.Tensor, *, output_offload: bool = False,
               device: Optional[Union[str, torch.device]] = None) -> torch.Tensor:
        """Normalised latent [B, 48, T, h, w] -> video [B, 3, 4(T-1)+1, 16h, 16w] in about [-1, 1].

        Decodes chunk by chunk (official window). ``output_offload`` moves each finished chunk to the
        CPU. Computes on ``device`` (default: where the weights are) in the module's dtype; the
        result has that dtype.
        """
        if latent.dim() != 5 or latent.shape[1] != self.config.latent_channels:
            raise ValueError(f"expected a latent [B, {self.config.latent_channels}, T, h, w], "
                             f"got shape {tuple(latent.shape)}")
        if device is None:
            device = self.decoder.conv_in.conv.weight.device
            if device.type == "meta":
                device = latent.device
        dtype = self._compute_dtype()
        ratio = self.config.temporal_compression_ratio
        # The official caller casts the latent to the model dtype before de-normalising.
        z = self.denormalize(latent.to(device=device, dtype=dtype)).to(dtype)
        pad, chunks = plan_chunks(z.shape[2], self.config.first_chunk_size, self.config.step_size, ratio)
        if pad:
            z = torch.cat([z, z[:, :, -1:].expand(-1, -1, pad, -1, -1)], dim=2)
        pieces = []
        for ch in chunks:
            out = self.decoder(z[:, :, ch.left:ch.right], is_first_chunk=ch.is_first)
            out = out[:, :, ch.keep_from:ch.keep_to]
            pieces.append(out.cpu() if output_offload else out)
            del out
        video = torch.cat(pieces, dim=2) if len(pieces) > 1 else pieces[0]
        del pieces
        if pad:
            video = video[:, :, : video.shape[2] - pad * ratio]
        return video

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.decode(latent)
