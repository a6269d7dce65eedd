"""Token sequence of the MagiHuman DiT: patchify, coordinates, layout and attention masks.

Per sample the sequence is ``[video tokens | audio tokens | text tokens]`` (official order). In a
batch every sample has the same video and audio token counts; text is padded to the longest real
text length, so the three modality segments sit at the same offsets in every row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .geometry import PATCH_SIZE  # (t, h, w), official DataProxyConfig t_patch_size / patch_size

VIDEO, AUDIO, TEXT = 0, 1, 2
TEXT_OFFSET_V1 = 0  # official DataProxyConfig.text_offset


# ---------------------------------------------------------------- patchify

def _check_patchable(shape_thw: Sequence[int], patch: Sequence[int]) -> None:
    bad = [(n, s, p) for n, s, p in zip("THW", shape_thw, patch) if s % p]
    if bad:
        raise ValueError(
            "video latent " + ", ".join(f"{n}={s}" for n, s, _ in bad)
            + f" not divisible by the DiT patch {tuple(patch)}; snap the latent size to a multiple of the patch")


def video_to_tokens(video: torch.Tensor, patch: Sequence[int] = PATCH_SIZE) -> torch.Tensor:
    """``[B, C, T, H, W] -> [B, (T/pt)(H/ph)(W/pw), C*pt*ph*pw]``; channel order (C, pt, ph, pw)
    (C outermost, like ``nn.Unfold``), tokens in (t, h, w) row-major order."""
    b, c, t, h, w = video.shape
    pt, ph, pw = patch
    _check_patchable((t, h, w), patch)
    x = video.reshape(b, c, t // pt, pt, h // ph, ph, w // pw, pw)
    x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)  # [B, t, h, w, C, pt, ph, pw]
    return x.reshape(b, (t // pt) * (h // ph) * (w // pw), c * pt * ph * pw)


def tokens_to_video(tokens: torch.Tensor, grid_thw: Sequence[int], patch: Sequence[int] = PATCH_SIZE) -> torch.Tensor:
    """``[B, t*h*w, pt*ph*pw*C] -> [B, C, t*pt, h*ph, w*pw]``; channel order (pt, ph, pw, C)
    (C innermost): the official output order, which differs from the input order."""
    b, n, d = tokens.shape
    gt, gh, gw = grid_thw
    pt, ph, pw = patch
    if n != gt * gh * gw or d % (pt * ph * pw):
        raise ValueError(f"{n} tokens of {d} channels do not fit grid {tuple(grid_thw)} with patch {tuple(patch)}")
    c = d // (pt * ph * pw)
    x = tokens.reshape(b, gt, gh, gw, pt, ph, pw, c)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # [B, C, t, pt, h, ph, w, pw]
    return x.reshape(b, c, gt * pt, gh * ph, gw * pw)


# ---------------------------------------------------------------- coordinates

def grid_coords(shape: Sequence[int], ref: Sequence[int], offset_t: float = 0.0) -> torch.Tensor:
    """``[prod(shape), 9]`` fp32 rows ``(t, h, w, T, H, W, refT, refH, refW)`` over a (t, h, w) grid."""
    t, h, w = (torch.arange(int(n), dtype=torch.float32) for n in shape)
    grid = torch.stack(torch.meshgrid(t + offset_t, h, w, indexing="ij"), dim=-1).reshape(-1, 3)
    meta = torch.tensor([*shape, *ref], dtype=torch.float32).expand(grid.shape[0], 6)
    return torch.cat([grid, meta], dim=-1)


def video_coords(grid_thw: Sequence[int]) -> torch.Tensor:
    """Video tokens: sizes = refs = the token grid (official spatial_rope_interpolation "extra")."""
    return grid_coords(grid_thw, grid_thw)


def audio_coords(num_audio: int, latent_frames: int, style: str) -> torch.Tensor:
    """Audio tokens t = 0..N-1, size (N,1,1); ref T (v1) or (N-1)//4+1 (v2)."""
    if style == "v1":
        ref_t = latent_frames
    elif style == "v2":
        ref_t = (num_audio - 1) // 4 + 1  # official "magic_audio_ref_t" (t_patch_size 1)
    else:
        raise ValueError(f"unknown coords style {style!r}; use 'v2' (base/distill) or 'v1' (SR models)")
    return grid_coords((num_audio, 1, 1), (ref_t, 1, 1))


def text_coords(num_text: int, style: str) -> torch.Tensor:
    """Text tokens. v2: t = -l..-1, ref 1 (scale 0: no rotation unless l == 1).
    v1: t = 0..l-1, ref 2 (scale 1/(l-1); for l == 1 see :func:`magihuman.rope.axis_scales`)."""
    if style == "v1":
        return grid_coords((num_text, 1, 1), (2, 1, 1), offset_t=TEXT_OFFSET_V1)
    if style == "v2":
        return grid_coords((num_text, 1, 1), (1, 1, 1), offset_t=-num_text)
    raise ValueError(f"unknown coords style {style!r}; use 'v2' (base/distill) or 'v1' (SR models)")


# A padded text row: one position at 0 with size = ref = 1 -> angle 0 (identity rotation).
PAD_COORD = (0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)


# ---------------------------------------------------------------- layout

@dataclass(frozen=True)
class SequenceLayout:
    """Where each modality sits in the padded batch sequence ``[B, L, ...]``."""

    grid_thw: tuple[int, int, int]  # video token grid
    num_audio: int
    text_lens: tuple[int, ...]  # real text length per sample

    @property
    def num_video(self) -> int:
        t, h, w = self.grid_thw
        return t * h * w

    @property
    def max_text(self) -> int:
        return max(self.text_lens)

    @property
    def length(self) -> int:
        return self.num_video + self.num_audio + self.max_text

    @property
    def segments(self) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """(start, end) of the video, audio and text segments (order VIDEO, AUDIO, TEXT)."""
        nv, na = self.num_video, self.num_audio
        return (0, nv), (nv, nv + na), (nv + na, nv + na + self.max_text)

    @property
    def has_padding(self) -> bool:
        return min(self.text_lens) != self.max_text

    def modality_ids(self) -> torch.Tensor:
        """``[L]`` int64 modality per position (padded text rows count as TEXT)."""
        return torch.repeat_interleave(torch.tensor([VIDEO, AUDIO, TEXT]),
                                       torch.tensor([self.num_video, self.num_audio, self.max_text]))

    def text_valid(self, device=None) -> torch.Tensor:
        """``[B, max_text]`` bool: True for real text rows."""
        lens = torch.tensor(self.text_lens, device=device)
        return torch.arange(self.max_text, device=device)[None, :] < lens[:, None]

    def key_valid(self, device=None) -> torch.Tensor:
        """``[B, L]`` bool: True where a position is a real token (may be attended to)."""
        head = torch.ones(len(self.text_lens), self.num_video + self.num_audio, dtype=torch.bool, device=device)
        return torch.cat([head, self.text_valid(device)], dim=1)

    def coords(self, style: str) -> torch.Tensor:
        """``[B, L, 9]`` fp32 coordinates of every position (padded text rows get :data:`PAD_COORD`)."""
        shared = torch.cat([video_coords(self.grid_thw), audio_coords(self.num_audio, self.grid_thw[0], style)])
        rows = []
        for n in self.text_lens:
            pad = torch.tensor(PAD_COORD).expand(self.max_text - n, 9)
            rows.append(torch.cat([shared, text_coords(n, style), pad]))
        return torch.stack(rows)


def local_attention_allowed(layout: SequenceLayout, frame_receptive_field: int, device=None) -> Optional[torch.Tensor]:
    """``[L, L]`` bool block mask of the local-attention layers, or None when it allows everything.

    A video query of latent frame i sees video keys of frames [i - frf, i + frf] and every audio and
    text key; audio and text queries see everything (official ``calc_local_qk_range``).
    """
    if frame_receptive_field < 0:
        return None
    t, h, w = layout.grid_thw
    if t - 1 <= frame_receptive_field:
        return None
    pos = torch.arange(layout.length, device=device)
    is_video = pos < layout.num_video
    frame = torch.div(pos, h * w, rounding_mode="floor")
    far = (frame[:, None] - frame[None, :]).abs() > frame_receptive_field
    return ~(is_video[:, None] & is_video[None, :] & far)


def attention_mask(layout: SequenceLayout, local_allowed: Optional[torch.Tensor], device=None) -> Optional[torch.Tensor]:
    """Combine text-padding key masking with an optional local block mask into a boolean mask
    broadcastable to ``[B, H, L, L]`` (None when nothing is masked)."""
    keys = layout.key_valid(device)[:, None, None, :] if layout.has_padding else None  # [B, 1, 1, L]
    if local_allowed is None:
        return keys
    local = local_allowed.to(device)[None, None]  # [1, 1, L, L]
    return local if keys is None else local & keys
