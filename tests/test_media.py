"""Media I/O: image crop/resize parity with the official preprocessing, audio loading and
resampling, long-audio window cross-fade, MP4 writing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from magihuman.media import (
    MediaError,
    crop_box,
    encode_audio_file,
    encode_reference_audio,
    load_audio,
    load_image,
    merge_overlapping_latents,
    prepare_image,
    prepare_reference_audio,
    read_mp4_info,
    resample,
    write_mp4,
)

# ------------------------------------------------------------------ images


def official_resizecrop_box(w, h, th, tw):
    """The official resizecrop arithmetic, as a float box for PIL's crop (reference)."""
    if w == tw and h == th:
        return None
    if h / w > th / tw:
        new_w = int(w)
        new_h = int(new_w * th / tw)
    else:
        new_h = int(h)
        new_w = int(new_h * tw / th)
    return ((w - new_w) / 2, (h - new_h) / 2, (w + new_w) / 2, (h + new_h) / 2)


def _coord_image(w, h):
    """An RGB image whose pixels encode their own coordinates."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx % 256, yy % 256, (xx // 256) * 16 + yy // 256], -1).astype(np.uint8)


SIZES = [(1000, 563, 448, 256), (563, 1000, 448, 256), (101, 100, 448, 256), (100, 51, 448, 256),
         (640, 480, 896, 512), (333, 777, 256, 448), (448, 256, 448, 256), (449, 257, 448, 256),
         (1920, 1080, 896, 512), (7, 3, 64, 32), (100, 100, 51, 100)]


@pytest.mark.parametrize("w,h,tw,th", SIZES)
def test_crop_matches_official_resizecrop(w, h, tw, th):
    arr = _coord_image(w, h)
    box = official_resizecrop_box(w, h, th, tw)
    pil = Image.fromarray(arr)
    expected = np.asarray(pil if box is None else pil.crop(box))
    left, top, right, bottom = crop_box(w, h, tw, th)
    np.testing.assert_array_equal(arr[top:bottom, left:right], expected)


@pytest.mark.parametrize("w,h,tw,th", [(1000, 563, 448, 256), (333, 777, 64, 96), (640, 480, 96, 64)])
def test_prepare_image_equals_official_pipeline(w, h, tw, th):
    rng = np.random.default_rng(w + h)
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    pil = Image.fromarray(arr)
    box = official_resizecrop_box(w, h, th, tw)
    if box is not None:
        pil = pil.crop(box)
    ref = np.asarray(pil.resize((tw, th), resample=Image.Resampling.LANCZOS)).astype(np.float32) / 255.0
    ref = torch.from_numpy(2.0 * ref - 1.0).permute(2, 0, 1)[None, :, None]
    for source in (arr, arr.astype(np.float32) / 255.0, torch.from_numpy(arr)[None]):
        out = prepare_image(source, tw, th)
        assert out.shape == (1, 3, 1, th, tw) and out.dtype == torch.float32
        assert torch.equal(out, ref)


def test_image_modes(tmp_path):
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 0  # fully transparent red
    rgba[0, 0, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    dropped = load_image(tmp_path / "a.png")
    assert dropped.shape == (4, 6, 3) and np.allclose(dropped[..., 0], 200 / 255) and np.allclose(dropped[..., 1:], 0)
    white = load_image(tmp_path / "a.png", alpha="white")
    assert np.allclose(white[1, 1], [1, 1, 1]) and np.allclose(white[0, 0], [200 / 255, 0, 0])

    gray = np.arange(15, dtype=np.uint8).reshape(3, 5) * 17
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    g = load_image(tmp_path / "g.png")
    assert g.shape == (3, 5, 3) and np.allclose(g, (gray / 255.0)[..., None].repeat(3, -1))

    g16 = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000 + 123)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    out16 = load_image(tmp_path / "g16.png")
    np.testing.assert_allclose(out16[..., 0], g16 / 65535.0, atol=1e-6)
    np.testing.assert_allclose(load_image(g16), out16, atol=1e-6)  # uint16 arrays too

    pal = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), "P")
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    p = load_image(pal)
    assert np.allclose(p[0, 0], [1, 0, 0]) and np.allclose(p[0, 1], [0, 0, 1])

    odd = prepare_image(_coord_image(37, 23), 32, 64)
    assert odd.shape == (1, 3, 1, 64, 32) and odd.min() >= -1 and odd.max() <= 1


def test_gray_alpha_image_and_tensor_inputs(tmp_path):
    la = np.zeros((2, 3, 2), np.uint8)
    la[..., 0] = 51
    la[0, 0, 1] = 255  # one opaque pixel, the rest transparent
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    dropped = load_image(tmp_path / "la.png")
    assert dropped.shape == (2, 3, 3) and np.allclose(dropped, 51 / 255)
    black = load_image(tmp_path / "la.png", alpha="black")
    assert np.allclose(black[0, 0], 51 / 255) and np.allclose(black[1, 2], 0)
    # tensors of any float width give the same image as the numpy array
    arr = np.random.default_rng(0).random((3, 4, 3)).astype(np.float32)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        t = torch.from_numpy(arr).to(dtype)
        np.testing.assert_allclose(load_image(t[None]), t.float().numpy(), atol=0)


def test_one_pixel_image_becomes_a_flat_frame():
    # the official crop would keep 0 rows here and fail; we keep one pixel
    out = prepare_image(np.array([[[0.2, 0.4, 0.6]]]), 64, 32)
    assert out.shape == (1, 3, 1, 32, 64)
    torch.testing.assert_close(out[0, :, 0].mean(dim=(1, 2)), torch.tensor([-0.6, -0.2, 0.2]), atol=1e-6, rtol=0)
    assert out.std(dim=(3, 4)).max() == 0
    assert crop_box(1, 1, 64, 32) == (0, 0, 1, 1)


def test_image_errors(tmp_path):
    with pytest.raises(MediaError, match="batch of 3 images.*images\\[0:1\\]"):
        prepare_image(torch.rand(3, 16, 16, 3), 16, 16)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(MediaError, match="broken.png: cannot read this image"):
        load_image(bad)
    with pytest.raises(MediaError, match="no such image"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(MediaError, match="channels; got 5"):
        load_image(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(MediaError, match="empty"):
        load_image(np.zeros((0, 4, 3), np.uint8))


# ------------------------------------------------------------------ audio


def _sines(freqs, sr, seconds, phase=0.3):
    t = np.arange(int(round(sr * seconds))) / sr
    return np.stack([np.sin(2 * np.pi * f * t + phase * (i + 1)) for i, f in enumerate(freqs)]).astype(np.float32)


@pytest.mark.parametrize("sr,freqs", [(8000, [440.0]), (44100, [1000.0, 15000.0]), (96000, [300.0, 7000.0, 19000.0]),
                                       (22050, [9000.0])])
def test_resample_sines_to_51200(sr, freqs):
    x = _sines(freqs, sr, 0.5)
    y = resample(x, sr, 51200)
    assert isinstance(y, np.ndarray) and y.shape == (len(freqs), math.ceil(x.shape[1] * 51200 / sr))
    ref = _sines(freqs, 51200, y.shape[1] / 51200)
    edge = 2000  # the zero-padded ends ring; compare the interior
    err = np.abs(y[:, edge:-edge] - ref[:, edge:-edge]).max()
    assert err < 1e-4, err  # better than -80 dB in band


@pytest.mark.parametrize("new_sr", [44100, 48000])
def test_resample_from_51200_and_alias_rejection(new_sr):
    x = _sines([1000.0, 18000.0], 51200, 0.5)
    y = resample(torch.from_numpy(x), 51200, new_sr)
    assert isinstance(y, torch.Tensor) and y.shape[-1] == math.ceil(x.shape[1] * new_sr / 51200)
    ref = torch.from_numpy(_sines([1000.0, 18000.0], new_sr, y.shape[-1] / new_sr))
    assert (y[:, 2000:-2000] - ref[:, 2000:-2000]).abs().max() < 1e-4
    # a tone above the output Nyquist must vanish, not fold back
    hi = resample(_sines([25000.0], 51200, 0.5)[0], 51200, new_sr)
    assert np.abs(hi[2000:-2000]).max() < 1e-4


def test_resample_methods_agree(monkeypatch):
    import magihuman.media as media

    x = torch.randn(2, 3000, dtype=torch.float64)
    for sr, new in [(44100, 51200), (51200, 44100), (8000, 51200), (96000, 51200)]:
        dense = resample(x, sr, new, method="dense")
        assert dense.dtype == torch.float64
        torch.testing.assert_close(dense, resample(x, sr, new, method="gather"), rtol=0, atol=1e-12)
    # coprime rates (51200 phases): kernels computed per chunk instead of from a table
    monkeypatch.setattr(media, "_TABLE_LIMIT", 0)
    y = resample(_sines([5000.0], 44101, 0.1), 44101, 51200)
    ref = _sines([5000.0], 51200, y.shape[1] / 51200)
    assert np.abs(y[:, 1500:-1500] - ref[:, 1500:-1500]).max() < 1e-4


def test_resample_identity_and_errors():
    x = torch.randn(2, 100)
    assert torch.equal(resample(x, 16000, 16000), x)
    with pytest.raises(MediaError, match="positive"):
        resample(x, 0, 16000)
    with pytest.raises(MediaError, match=r"\[channels, samples\]"):
        resample(torch.zeros(1, 2, 3), 8000, 16000)


def test_load_audio_formats_and_errors(tmp_path):
    x = _sines([440.0, 660.0], 22050, 0.25)
    sf.write(tmp_path / "a.wav", x.T, 22050)
    wave, sr = load_audio(tmp_path / "a.wav")
    assert sr == 22050 and wave.shape == x.shape and wave.dtype == torch.float32
    assert (wave - torch.from_numpy(x)).abs().max() < 1e-4  # 16-bit PCM

    import av  # an AAC track in an .m4a goes through the PyAV fallback

    with av.open(str(tmp_path / "a.m4a"), "w") as c:
        s = c.add_stream("aac", rate=22050, layout="stereo")
        for s0 in range(0, x.shape[1], 1024):
            fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[:, s0:s0 + 1024]), format="fltp", layout="stereo")
            fr.sample_rate, fr.pts = 22050, s0
            for pkt in s.encode(fr):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    wave, sr = load_audio(tmp_path / "a.m4a")
    assert sr == 22050 and wave.shape[0] == 2 and abs(wave.shape[1] - x.shape[1]) < 2048
    spec = np.abs(np.fft.rfft(wave[0].numpy()))
    assert abs(np.argmax(spec) * 22050 / wave.shape[1] - 440.0) < 10

    (tmp_path / "junk.wav").write_bytes(b"RIFF nonsense" * 10)
    with pytest.raises(MediaError, match="junk.wav: cannot read this audio"):
        load_audio(tmp_path / "junk.wav")
    sf.write(tmp_path / "empty.wav", np.zeros((0, 2), np.float32), 16000)
    with pytest.raises(MediaError, match="empty.wav.*empty"):
        load_audio(tmp_path / "empty.wav")
    with pytest.raises(MediaError, match="no such audio"):
        load_audio(tmp_path / "missing.wav")


def test_prepare_reference_audio_mixes_resamples_trims():
    left = _sines([500.0], 16000, 1.0)[0]
    right = _sines([1500.0], 16000, 1.0)[0]
    stereo = np.stack([left, right])
    out = prepare_reference_audio(stereo, 16000)
    assert out.shape == (2, 51200) and torch.equal(out[0], out[1])
    t = np.arange(51200) / 51200
    ref = 0.5 * (np.sin(2 * np.pi * 500 * t + 0.3) + np.sin(2 * np.pi * 1500 * t + 0.3))
    assert np.abs(out[0].numpy()[3000:-3000] - ref[3000:-3000]).max() < 1e-4
    assert prepare_reference_audio(stereo, 16000, seconds=0.5).shape == (2, 25600)
    assert prepare_reference_audio(stereo, 16000, seconds=3).shape == (2, 51200)  # shorter file: all of it
    assert prepare_reference_audio(torch.from_numpy(left), 16000).shape == (2, 51200)  # mono [S]
    with pytest.raises(MediaError, match="empty"):
        prepare_reference_audio(np.zeros((2, 0), np.float32), 16000)


class PoolEncoder:
    """A fast VAE stand-in: latent step j = mean of samples [2048 j, 2048 (j+1)), channel c scaled by c+1."""

    def __init__(self):
        self.calls = []

    def encode(self, x):
        self.calls.append(tuple(x.shape))
        pooled = x[:, 0].reshape(x.shape[0], -1, 2048).double().mean(-1)  # [B, N]
        return (pooled[:, None, :] * torch.arange(1, 65, dtype=torch.float64)[None, :, None]).float()


def test_long_audio_windows_and_crossfade():
    sr, window = 51200, 29 * 51200
    total = 65 * sr + 777
    signal = np.linspace(-1.0, 1.0, total) ** 3
    wave = torch.from_numpy(np.stack([signal, signal]).astype(np.float32))
    enc = PoolEncoder()
    out = encode_reference_audio(enc, wave)

    # windows every 14.5 s, each exactly 29 s long (the last one zero-padded)
    starts = [0, 742400, 1484800, 2227200]
    assert enc.calls == [(1, 2, window)] * 4
    n, overlap, step = 725, 362, 363
    lat = []
    for s in starts:
        seg = np.zeros(window)
        piece = signal.astype(np.float32)[s:s + window]
        seg[:len(piece)] = piece
        lat.append(seg.reshape(n, 2048).mean(-1))
    # hand cross-fade: every position is covered by at most two windows
    expected = np.zeros(3 * step + n)
    for t in range(len(expected)):
        k = min(t // step, 3)
        i = t - k * step
        if k == 0 or i >= overlap:
            expected[t] = lat[k][i]
        else:
            expected[t] = (overlap - i) / overlap * lat[k - 1][t - (k - 1) * step] + i / overlap * lat[k][i]
    target = math.ceil(total * (n / window))
    assert out.shape == (1, 64, target) and target == 1626
    np.testing.assert_allclose(out[0, 0].numpy(), expected[:target], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[0, 5].numpy(), 6 * expected[:target], rtol=1e-5, atol=1e-5)


def test_short_audio_is_one_pass():
    enc = PoolEncoder()
    wave = torch.randn(2, 51200 * 4)
    out = encode_reference_audio(enc, wave)
    assert enc.calls == [(1, 2, 51200 * 4)] and out.shape == (1, 64, 100)
    out29 = encode_reference_audio(PoolEncoder(), torch.zeros(2, 29 * 51200))
    assert out29.shape == (1, 64, 725)


def test_audio_file_to_latent_with_tiny_vae(tmp_path):
    from magihuman.loaders import load_audio_vae
    from magihuman.tiny import write_tiny_audio_vae

    vae = load_audio_vae(write_tiny_audio_vae(tmp_path / "sao"))
    sf.write(tmp_path / "voice.wav", _sines([220.0, 330.0], 44100, 1.3).T * 0.5, 44100)
    z = encode_audio_file(vae, tmp_path / "voice.wav", seconds=1.0)
    assert z.shape == (1, 64, 25) and z.dtype == torch.float32  # 25 latent steps per second
    wave = prepare_reference_audio(*load_audio(tmp_path / "voice.wav"), seconds=1.0)
    assert torch.equal(z, vae.encode(wave[None]))


def test_merge_matches_official_loop():
    torch.manual_seed(0)
    chunks = [torch.randn(1, 3, 10) for _ in range(3)]
    # the official loop, on [B, T, C] tensors
    feats = [c.permute(0, 2, 1) for c in chunks]
    O, step = 5, 5
    ref = torch.zeros(1, 2 * step + 10, 3)
    ref[:, :10] = feats[0]
    for b, cur in enumerate(feats[1:], start=1):
        s = b * step
        ref[:, s + O:s + 10] = cur[:, O:]
        for i in range(O):
            ref[:, s + i] = (O - i) / O * ref[:, s + i] + i / O * cur[:, i]
    assert torch.equal(merge_overlapping_latents(chunks), ref.permute(0, 2, 1))
    assert merge_overlapping_latents(chunks[:1]) is chunks[0]


# ------------------------------------------------------------------ video


def test_mp4_round_trip(tmp_path):
    frames = np.zeros((26, 48, 64, 3), np.uint8)
    for i in range(26):
        frames[i, ..., 0] = i * 9
        frames[i, :, 32:, 2] = 255
    audio = _sines([440.0, 880.0], 51200, 26 / 25) * 0.5  # 1.04 s at the VAE rate (not an AAC rate)
    path = write_mp4(tmp_path / "clip.mp4", frames, fps=25, audio=audio, sample_rate=51200)
    info = read_mp4_info(path)
    assert info["video_codec"] == "h264" and info["audio_codec"] == "aac"
    assert info["frames"] == 26 and info["fps"] == 25 and (info["width"], info["height"]) == (64, 48)
    assert info["pix_fmt"] == "yuv420p"
    assert info["audio_sample_rate"] == 48000 and info["audio_channels"] == 2
    assert abs(info["video_duration"] - 1.04) < 1e-6
    assert abs(info["audio_duration"] - 1.04) < 0.05
    import av

    with av.open(str(path)) as c:
        first = next(c.decode(video=0)).to_ndarray(format="rgb24").astype(np.float64)
    assert np.abs(first - frames[0]).mean() < 3.0


def test_mp4_odd_size_float_frames_no_audio(tmp_path):
    frames = torch.rand(5, 31, 45, 3)
    info = read_mp4_info(write_mp4(tmp_path / "odd.mp4", frames, fps=25))
    assert (info["width"], info["height"]) == (46, 32) and info["frames"] == 5 and info["audio_codec"] is None
    with pytest.raises(MediaError, match=r"\[F, H, W, 3\]"):
        write_mp4(tmp_path / "bad.mp4", np.zeros((5, 8, 8)), fps=25)
    with pytest.raises(MediaError, match="sample_rate"):
        write_mp4(tmp_path / "bad.mp4", np.zeros((5, 8, 8, 3), np.uint8), audio=np.zeros((2, 100), np.float32))
