import pytest
import torch

from magihuman.packing import (
    PAD_COORD, SequenceLayout, attention_mask, audio_coords, local_attention_allowed, text_coords,
    tokens_to_video, video_coords, video_to_tokens,
)


def test_video_to_tokens_channel_order_c_ph_pw_like_unfold():
    g = torch.Generator().manual_seed(0)
    video = torch.randn(2, 3, 2, 4, 6, generator=g)  # [B, C, T, H, W]
    tok = video_to_tokens(video)
    assert tok.shape == (2, 2 * 2 * 3, 12)
    for b in range(2):
        for t in range(2):
            for hp in range(2):
                for wp in range(3):
                    n = (t * 2 + hp) * 3 + wp
                    for c in range(3):
                        for ph in range(2):
                            for pw in range(2):
                                assert tok[b, n, c * 4 + ph * 2 + pw] == video[b, c, t, 2 * hp + ph, 2 * wp + pw]
    # nn.Unfold over each frame gives the same (C, kh, kw) column order
    unf = torch.nn.functional.unfold(video[:, :, 1], kernel_size=2, stride=2).transpose(1, 2)
    assert torch.equal(unf, tok[:, 6:])


def test_tokens_to_video_channel_order_ph_pw_c():
    g = torch.Generator().manual_seed(1)
    tok = torch.randn(1, 2 * 2 * 3, 4 * 5, generator=g)  # C = 5
    video = tokens_to_video(tok, (2, 2, 3))
    assert video.shape == (1, 5, 2, 4, 6)
    for t in range(2):
        for hp in range(2):
            for wp in range(3):
                n = (t * 2 + hp) * 3 + wp
                for c in range(5):
                    for ph in range(2):
                        for pw in range(2):
                            assert video[0, c, t, 2 * hp + ph, 2 * wp + pw] == tok[0, n, (ph * 2 + pw) * 5 + c]


def test_patchify_rejects_odd_sizes():
    with pytest.raises(ValueError, match="H=5.*multiple of the patch"):
        video_to_tokens(torch.zeros(1, 2, 1, 5, 4))


def test_video_coordinates_table():
    got = video_coords((2, 2, 2))
    rows = [[t, h, w, 2, 2, 2, 2, 2, 2] for t in range(2) for h in range(2) for w in range(2)]
    assert torch.equal(got, torch.tensor(rows, dtype=torch.float32))


def test_audio_coordinates_v1_v2_general_n():
    # N = 6 is not 4(T-1)+1 for any T; v2 ref = (6-1)//4+1 = 2, v1 ref = T
    assert torch.equal(audio_coords(6, 3, "v2"), torch.tensor([[t, 0, 0, 6, 1, 1, 2, 1, 1] for t in range(6)], dtype=torch.float32))
    assert torch.equal(audio_coords(6, 3, "v1"), torch.tensor([[t, 0, 0, 6, 1, 1, 3, 1, 1] for t in range(6)], dtype=torch.float32))
    assert torch.equal(audio_coords(13, 4, "v2")[:, 6], torch.full((13,), 4.0))  # N = 4(T-1)+1: refs coincide
    assert torch.equal(audio_coords(1, 1, "v2"), torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1]], dtype=torch.float32))


def test_text_coordinates_v1_v2_including_single_token():
    assert torch.equal(text_coords(3, "v2"), torch.tensor([[t, 0, 0, 3, 1, 1, 1, 1, 1] for t in (-3, -2, -1)], dtype=torch.float32))
    assert torch.equal(text_coords(1, "v2"), torch.tensor([[-1, 0, 0, 1, 1, 1, 1, 1, 1]], dtype=torch.float32))
    assert torch.equal(text_coords(2, "v1"), torch.tensor([[t, 0, 0, 2, 1, 1, 2, 1, 1] for t in (0, 1)], dtype=torch.float32))
    assert torch.equal(text_coords(1, "v1"), torch.tensor([[0, 0, 0, 1, 1, 1, 2, 1, 1]], dtype=torch.float32))
    with pytest.raises(ValueError, match="coords style"):
        text_coords(2, "v3")


def test_layout_segments_and_padded_coords():
    lay = SequenceLayout((1, 1, 2), 3, (3, 1))
    assert lay.segments == ((0, 2), (2, 5), (5, 8)) and lay.length == 8 and lay.has_padding
    c = lay.coords("v2")
    assert c.shape == (2, 8, 9)
    assert torch.equal(c[0, 5:], text_coords(3, "v2"))
    assert torch.equal(c[1, 5], text_coords(1, "v2")[0])
    assert torch.equal(c[1, 6:], torch.tensor([PAD_COORD] * 2))
    assert torch.equal(c[0, :5], c[1, :5])
    assert lay.key_valid().tolist() == [[True] * 8, [True] * 6 + [False] * 2]
    assert lay.modality_ids().tolist() == [0, 0, 1, 1, 1, 2, 2, 2]


def test_local_mask_matches_loops():
    grid, na, lt, frf = (5, 1, 2), 3, 2, 1  # 2 tokens per latent frame
    lay = SequenceLayout(grid, na, (lt,))
    nv, n = 10, 15
    got = local_attention_allowed(lay, frf)
    assert got.shape == (n, n)
    for q in range(n):
        for k in range(n):
            if q < nv and k < nv:
                fq, fk = q // 2, k // 2
                expect = fk in range(fq - frf, fq + frf + 1)
            else:
                expect = True
            assert bool(got[q, k]) == expect, (q, k)
    assert local_attention_allowed(lay, -1) is None
    assert local_attention_allowed(lay, 4) is None  # window covers all 5 frames


def test_attention_mask_combines_padding_and_local():
    lay = SequenceLayout((3, 1, 1), 1, (2, 1))
    assert attention_mask(SequenceLayout((3, 1, 1), 1, (2, 2)), None) is None
    pad = attention_mask(lay, None)
    assert pad.shape == (2, 1, 1, 6) and pad[1, 0, 0].tolist() == [True] * 5 + [False]
    local = local_attention_allowed(lay, 0)
    both = attention_mask(lay, local)
    assert both.shape == (2, 1, 6, 6)
    assert torch.equal(both[0, 0], local)
    assert torch.equal(both[1, 0], local & torch.tensor([True] * 5 + [False]))
