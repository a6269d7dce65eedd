"""Element-wise Fourier RoPE of the MagiHuman DiT (official ``ElementWiseFourierEmbed``).

Each token has 9 coordinates ``(t, h, w, T, H, W, refT, refH, refW)``. Per axis the position is
scaled by ``(ref - 1) / (size - 1)`` and h, w are centred by ``(size - 1) / 2``; angles are
``position * scale * band`` with ``head_dim // 8`` bands ``1 / 10000^(i / (head_dim // 8))``.
The embedding is ``[sin(t,h,w) | cos(t,h,w)]`` (``3/8 * head_dim`` each); it rotates the first
``3/4 * head_dim`` channels of q and k in the non-interleaved "rotate half" form, the rest pass.
"""

from __future__ import annotations

import torch

ROPE_TEMPERATURE = 10000.0


def default_rope_bands(head_dim: int, device=None) -> torch.Tensor:
    """The persistent ``adapter.rope.bands`` buffer: fp32 ``[head_dim // 8]``."""
    num_bands = head_dim // 8
    exponent = torch.arange(0, num_bands, 1, dtype=torch.int64, device=device).to(torch.float32) / num_bands
    return 1.0 / (ROPE_TEMPERATURE ** exponent)


def axis_scales(coords: torch.Tensor) -> torch.Tensor:
    """``(ref - 1) / (size - 1)`` per axis, ``[..., 3]``.

    Official code fixes the scale to 1 when size and ref are both 1 and asserts on inf otherwise.
    Here every axis of size 1 gets scale 1: such an axis holds a single position, and in every
    layout the engine builds that position is 0 (v1 text with one token, v1 audio with one
    token), so the angle is 0 whatever the scale -- where the official code would stop on
    ``scales has inf``.
    """
    sizes = coords[..., 3:6]
    refs = coords[..., 6:9]
    single = sizes == 1
    return torch.where(single, torch.ones_like(sizes), (refs - 1) / torch.where(single, torch.ones_like(sizes), sizes - 1))


def fourier_angles(coords: torch.Tensor, bands: torch.Tensor) -> torch.Tensor:
    """Angles ``[..., 3, num_bands]`` (fp32) for coordinates ``[..., 9]``."""
    coords = coords.to(torch.float32)
    xyz = coords[..., :3]
    centres = (coords[..., 3:6] - 1) / 2
    centres = torch.cat([torch.zeros_like(centres[..., :1]), centres[..., 1:]], dim=-1)  # time is not centred
    xyz = xyz - centres
    return xyz.unsqueeze(-1) * axis_scales(coords).unsqueeze(-1) * bands.to(torch.float32)


def fourier_embedding(coords: torch.Tensor, bands: torch.Tensor) -> torch.Tensor:
    """``[..., 6 * num_bands]`` = concat(sin over t,h,w ; cos over t,h,w), as the official adapter returns."""
    angles = fourier_angles(coords, bands)
    return torch.cat([angles.sin(), angles.cos()], dim=-2).flatten(-2)


def rope_cos_sin(coords: torch.Tensor, bands: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin ``[..., 6 * num_bands]`` ready for :func:`apply_rope` (each half repeated twice)."""
    emb = fourier_embedding(coords, bands)
    sin, cos = emb.chunk(2, dim=-1)
    return torch.cat([cos, cos], dim=-1), torch.cat([sin, sin], dim=-1)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``cos.shape[-1]`` channels of ``x`` (cos/sin broadcast against ``x``)."""
    rot = cos.shape[-1]
    if rot > x.shape[-1]:
        raise ValueError(f"rotary width {rot} exceeds head_dim {x.shape[-1]}")
    head, tail = x[..., :rot], x[..., rot:]
    return torch.cat([head * cos + rotate_half(head) * sin, tail], dim=-1)
