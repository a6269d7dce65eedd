import math

import pytest
import torch

from magihuman.packing import audio_coords, text_coords, video_coords
from magihuman.rope import apply_rope, default_rope_bands, fourier_angles, fourier_embedding, rope_cos_sin


def _bands(n):
    return [1.0 / 10000 ** (i / n) for i in range(n)]


def test_default_bands_official_formula():
    b = default_rope_bands(128)
    assert b.dtype == torch.float32 and b.shape == (16,)
    torch.testing.assert_close(b.double(), torch.tensor(_bands(16), dtype=torch.float64), rtol=1e-6, atol=0)
    assert default_rope_bands(32).shape == (4,)


def test_angles_hand_computed_for_a_few_tokens():
    bands = default_rope_bands(32)  # 4 bands
    bl = _bands(4)
    # video grid (T=2, H=3, W=4): token (t=1, h=2, w=0) -> index 1*12 + 2*4 + 0 = 20;
    # h centred by 1, w by 1.5, t not; scale 1.
    ang = fourier_angles(video_coords((2, 3, 4))[20], bands)
    expect = [[1 * x for x in bl], [1 * x for x in bl], [-1.5 * x for x in bl]]
    torch.testing.assert_close(ang.double(), torch.tensor(expect, dtype=torch.float64), rtol=1e-6, atol=1e-7)
    # audio v2, N = 9: ref (8//4+1) = 3 -> scale (3-1)/(9-1) = 0.25; token t = 5
    ang = fourier_angles(audio_coords(9, 3, "v2")[5], bands)
    torch.testing.assert_close(ang[0].double(), torch.tensor([1.25 * x for x in bl], dtype=torch.float64))
    assert ang[1:].abs().max() == 0
    # audio v1, N = 9, T = 3: scale (3-1)/(9-1) = 0.25 as well; N = 7: (3-1)/6
    ang = fourier_angles(audio_coords(7, 3, "v1")[3], bands)
    torch.testing.assert_close(ang[0].double(), torch.tensor([3 * (2 / 6) * x for x in bl], dtype=torch.float64))
    # text v2: l = 3 -> scale 0 -> no rotation; l = 1 -> t = -1 with scale 1
    assert fourier_angles(text_coords(3, "v2"), bands).abs().max() == 0
    torch.testing.assert_close(fourier_angles(text_coords(1, "v2"), bands)[0, 0].double(),
                               torch.tensor([-x for x in bl], dtype=torch.float64))
    # text v1: l = 3 -> t = 0, 1, 2 with scale 1/(3-1); l = 1 -> finite, angle 0 (official: inf scale)
    ang = fourier_angles(text_coords(3, "v1"), bands)
    torch.testing.assert_close(ang[2, 0].double(), torch.tensor(bl, dtype=torch.float64))
    ang1 = fourier_angles(text_coords(1, "v1"), bands)
    assert torch.isfinite(ang1).all() and ang1.abs().max() == 0
    assert torch.isfinite(fourier_angles(audio_coords(1, 5, "v1"), bands)).all()


def test_embedding_layout_sin_then_cos_over_t_h_w():
    bands = default_rope_bands(16)  # 2 bands
    c = video_coords((3, 2, 2))[7:8]
    ang = fourier_angles(c, bands)[0]  # [3, 2]
    emb = fourier_embedding(c, bands)[0]
    expect = torch.cat([ang[0].sin(), ang[1].sin(), ang[2].sin(), ang[0].cos(), ang[1].cos(), ang[2].cos()])
    assert emb.shape == (12,)
    torch.testing.assert_close(emb, expect)


def test_apply_rope_rotates_pairs_i_and_i_plus_half_of_first_three_quarters():
    head_dim = 16  # 2 bands -> angles for 6 pairs -> rotary width 12, 4 channels pass through
    bands = default_rope_bands(head_dim)
    coords = torch.cat([video_coords((2, 2, 3)), text_coords(1, "v2")])  # [13, 9]
    cos, sin = rope_cos_sin(coords, bands)  # [13, 12]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(13, 3, head_dim, generator=g)  # [L, heads, D]
    out = apply_rope(x, cos[:, None], sin[:, None])
    ang = fourier_angles(coords, bands).flatten(1)  # [13, 6]: t bands, h bands, w bands
    expect = x.clone()
    for n in range(13):
        for i in range(6):
            a = float(ang[n, i])
            x1, x2 = x[n, :, i], x[n, :, i + 6]
            expect[n, :, i] = x1 * math.cos(a) - x2 * math.sin(a)
            expect[n, :, i + 6] = x2 * math.cos(a) + x1 * math.sin(a)
    torch.testing.assert_close(out, expect, atol=1e-6, rtol=1e-5)
    assert torch.equal(out[..., 12:], x[..., 12:])
    with pytest.raises(ValueError, match="exceeds head_dim"):
        apply_rope(x[..., :8], cos[:, None], sin[:, None])
