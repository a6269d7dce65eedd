"""VAE and text-encoder loads tell ComfyUI the bytes their call needs beside the weights (``memory_required``), so it
frees a resident DiT before a 1080p decode instead of running out of memory; and those bytes are right.

The node side: ``ModelHandle.use`` is recorded (without ComfyUI the handle has no patcher) and each node must pass
what the engine prices for its inputs. The estimator side: its formulas are checked against an independent
reference, the peak of the live tensors of the real models' code, traced on the meta device (release configs, no
memory or compute needed) or on the CPU (tiny text encoder).
"""

from __future__ import annotations

import importlib
import math
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from magihuman import estimate as E
from magihuman.models.audio_vae import OobleckVAE, release_model_config
from magihuman.models.turbo_vae import RELEASE_TURBO_CONFIG, TurboVAEDecoder
from magihuman.models.video_vae import RELEASE_WAN_VAE_CONFIG, WanVAE
from magihuman.pipeline import memory as M
from magihuman.pipeline import empty_latents


class LiveBytes(TorchDispatchMode):
    """Peak bytes of the tensor storages created inside the block and still alive (freed ones leave the count)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.seen = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        given = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage._cdata
                if key not in self.seen and key not in given:  # views (of weights too) are no new memory
                    self.seen.add(key)
                    n = storage.nbytes()
                    self.live += n
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, key, n)
        return out

    def _free(self, key, n):
        self.live -= n
        self.seen.discard(key)


def traced(fn, *args, **kwargs) -> int:
    with torch.no_grad(), LiveBytes() as mode:
        out = fn(*args, **kwargs)
        del out
    return mode.peak


def _within(estimate: int, reference: int, high: float = 1.35) -> None:
    assert reference <= estimate <= high * reference, (estimate, reference, estimate / reference)


# ------------------------------------------------------------------------------------------- the nodes

@pytest.fixture(scope="module")
def node_env(node_pack, tiny_dir):
    env = node_pack(tiny_dir)
    yield env
    env.close()


def test_vae_and_text_encoder_nodes_reserve_what_the_engine_prices(node_env, pack, monkeypatch):
    compat = node_env.compat
    P = importlib.import_module(f"{pack.__name__}.magihuman.pipeline")
    models = node_env.load_tiny("te", "turbo", "wan", "audio")
    calls = []
    real = compat.ModelHandle.use

    def use(self, memory_required: int = 0):
        calls.append((self, memory_required))
        return real(self, memory_required)

    monkeypatch.setattr(compat.ModelHandle, "use", use)

    def reserved(node_id, **inputs):
        calls.clear()
        out = node_env.run(node_id, **inputs)
        assert len(calls) == 1
        return calls[0], out

    prompt, negative = "Two people talk in a cafe.", "blurry, distorted"
    (handle, need), _ = reserved("MagiHumanTextEncode", text_encoder=models["te"], prompt=prompt,
                                 negative_prompt=negative, encode_negative=True)
    assert handle is models["te"] and need == P.memory.text_encode_bytes(models["te"].model, [prompt, negative]) > 0

    (latent,) = node_env.run("MagiHumanEmptyAVLatent", width=64, height=64, seconds=1.0, batch_size=1)
    t = torch.arange(3 * 16000) / 16000
    audio = {"waveform": torch.sin(2 * math.pi * 220 * t).repeat(1, 2, 1), "sample_rate": 16000}  # 3 s stereo
    (handle, need), (a2v,) = reserved("MagiHumanReferenceAudio", latent=latent, audio_vae=models["audio"],
                                      audio=audio, trim_to_latent=True)
    assert handle is models["audio"] and need == P.memory.reference_audio_encode_bytes(models["audio"].model,
                                                                                      3 * 51200) > 0
    (handle, need), (ti2v,) = reserved("MagiHumanImageToVideo", latent=a2v, video_vae=models["wan"],
                                       image=torch.rand(1, 48, 80, 3))
    assert handle is models["wan"] and need == P.memory.image_encode_bytes(models["wan"].model, 64, 64) > 0
    av = importlib.import_module(f"{pack.__name__}.nodes.latent_io").from_latent(ti2v, "test")

    for offload in (False, True):
        (handle, need), _ = reserved("MagiHumanTurboVAEDecode", turbo_vae=models["turbo"], latent=ti2v,
                                     offload_frames=offload)
        assert handle is models["turbo"]
        assert need == P.memory.video_decode_bytes(models["turbo"].model, av, output_offload=offload) > 0
    for tile in (0, 16):
        (handle, need), _ = reserved("MagiHumanVideoVAEDecode", video_vae=models["wan"], latent=ti2v, tile_size=tile)
        assert handle is models["wan"]
        assert need == P.memory.video_decode_bytes(models["wan"].model, av, tile=(tile, tile) if tile else None) > 0
    (handle, need), _ = reserved("MagiHumanAudioDecode", audio_vae=models["audio"], latent=ti2v, sample_rate="48000")
    steps = ti2v["magihuman_audio"].shape[1]  # the reference audio trimmed to the latent's second
    assert handle is models["audio"] and need == P.memory.audio_decode_bytes(models["audio"].model, steps) > 0


# ------------------------------------------------------------------------------------------- the estimates

def test_turbo_decode_estimate_covers_the_release_decoder():
    """1080p-class shapes on the meta device: the release decoder at 540p for a 5 s clip (32 latent frames)."""
    for dtype in (torch.bfloat16, torch.float32):
        model = TurboVAEDecoder.from_config(RELEASE_TURBO_CONFIG, device="meta", dtype=dtype)
        for t, h, w in ((7, 16, 28), (32, 34, 60)):
            reference = traced(model.decode, torch.empty(1, 48, t, h, w, device="meta"))
            d = E.turbo_decode_bytes(t, h, w, dtype_bytes=dtype.itemsize)
            _within(d["peak"] + d["pieces"], reference, 1.15)
            _within(M.video_decode_bytes(model, _latent(t, h, w)), reference, 1.3)
    assert E.turbo_decode_bytes(32, 68, 120)["peak"] > 25 * 2 ** 30  # 1080p bf16: the old formula said 18.7 GiB


def _latent(t, h, w):
    av = empty_latents(w * 16, h * 16, (4 * (t - 1)) / 25)
    assert av.video.shape[2:] == (t, h, w)
    return av


def test_wan_decode_estimate_covers_the_release_vae_tiled_and_whole():
    for dtype in (torch.bfloat16, torch.float32):
        model = WanVAE.from_config(RELEASE_WAN_VAE_CONFIG, device="meta", dtype=dtype)
        for t, h, w, tile in ((3, 8, 8, None), (5, 16, 16, (12, 12))):
            reference = traced(model.decode, torch.empty(1, 48, t, h, w, device="meta"), tile=tile)
            _within(E.wan_decode_bytes(t, h, w, tile=tile, dtype_bytes=dtype.itemsize)["peak"], reference, 1.1)
        reference = traced(model.encode, torch.empty(1, 3, 1, 256, 448, device="meta"))
        _within(M.image_encode_bytes(model, 448, 256), reference, 1.1)


def test_audio_vae_estimate_covers_the_release_vae():
    for dtype in (torch.float32, torch.bfloat16):
        model = OobleckVAE.from_config(release_model_config(), device="meta", dtype=dtype)
        for steps in (5, 26):
            decode = traced(model.decode, torch.empty(1, 64, steps, device="meta"))
            _within(E.audio_vae_bytes(steps), decode, 1.2)
            _within(M.audio_decode_bytes(model, steps), decode, 1.3)
            encode = traced(model.encode, torch.empty(1, 2, 2048 * steps, device="meta"))
            _within(M.reference_audio_encode_bytes(model, 2048 * steps), encode, 1.3)


def test_text_encode_estimate_covers_the_tiny_encoder(node_env, pack):
    """The tiny T5Gemma really computing (CPU) the forward ``encode`` runs on its device, at the prompt's token
    count (the padded [640, H] result is assembled on the CPU)."""
    te = node_env.load_tiny("te")["te"].model
    prompt = "A woman in a red coat walks through the rain and says: it will stop soon, I promise. " * 4
    ids = torch.tensor([te.tokenize([prompt])[0]])
    P = importlib.import_module(f"{pack.__name__}.magihuman.pipeline")
    reference = traced(te, ids, torch.ones_like(ids))
    need = P.memory.text_encode_bytes(te, [prompt], cjk_spacing=False)
    assert ids.shape[1] > 200
    _within(need, reference, 2.0)
