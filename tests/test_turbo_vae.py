"""Turbo VAE decoder: frame arithmetic, the official sliding window, strict/safe loading, conversion."""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
from pathlib import Path

import pytest
import torch

from magihuman.models.latent_stats import WAN22_LATENT_MEAN, WAN22_LATENT_STD
from magihuman.models.turbo_vae import (
    CONFIG_METADATA_KEY,
    RELEASE_TURBO_CONFIG,
    TINY_TURBO_CONFIG,
    TurboVAEDecoder,
    TurboVAEError,
    plan_chunks,
    unpatchify,
)
from magihuman.loaders.turbo_vae import convert_turbo_checkpoint, load_turbo_vae
from magihuman.tiny import write_tiny_turbo_vae

OFFICIAL_MODULE = Path("/tmp/official/inference/model/turbo_vaed/turbo_vaed_module.py")


def tiny_model(seed: int = 0, **overrides) -> TurboVAEDecoder:
    torch.manual_seed(seed)
    model = TurboVAEDecoder.from_config({**TINY_TURBO_CONFIG, **overrides}, dtype=torch.float32)
    # Default init is near-trivial for some convs; perturb so every layer matters.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def latent(b, t, h=1, w=2, seed=1):
    return torch.randn(b, 48, t, h, w, generator=torch.Generator().manual_seed(seed))


def reference_denormalize(z: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(WAN22_LATENT_MEAN).view(1, 48, 1, 1, 1)
    std = torch.tensor(WAN22_LATENT_STD).view(1, 48, 1, 1, 1)
    return z.float() / (1.0 / std) + mean  # the official expression


def reference_decode(model: TurboVAEDecoder, z: torch.Tensor, first: int, step: int) -> torch.Tensor:
    """Slow, literal re-statement of the official algorithm (pad, window with context, trim, unpad)."""
    x = reference_denormalize(z)
    t = x.shape[2]
    pad = first - t if t < first else (0 if (t - first) % step == 0 else step - (t - first) % step)
    for _ in range(pad):
        x = torch.cat([x, x[:, :, -1:]], dim=2)
    n = x.shape[2]
    outs = []
    if n == first:
        outs.append(model.decoder(x, is_first_chunk=True))
    else:
        outs.append(model.decoder(x[:, :, : first + 1], is_first_chunk=True)[:, :, :-4])
        i = first
        while i < n:
            last = i + step == n
            o = model.decoder(x[:, :, i - 1: (i + step if last else i + step + 1)], is_first_chunk=False)
            outs.append(o[:, :, 4:] if last else o[:, :, 4:-4])
            i += step
    out = torch.cat(outs, dim=2)
    return out[:, :, : out.shape[2] - 4 * pad] if pad else out


# ----------------------------------------------------------------------------- shapes and windows

@pytest.mark.parametrize("t", [1, 2, 3, 4, 5, 6, 8, 13])
def test_frame_count_and_size(t):
    model = tiny_model()
    b = 2 if t == 5 else 1
    video = model.decode(latent(b, t))
    assert video.shape == (b, 3, 4 * (t - 1) + 1, 16, 32)
    assert torch.isfinite(video).all()


@pytest.mark.parametrize("first,step", [(3, 2), (7, 7), (1, 1), (2, 5)])
@pytest.mark.parametrize("t", [1, 2, 5, 8, 13])
def test_sliding_window_matches_literal_official_algorithm(first, step, t):
    model = tiny_model(first_chunk_size=first, step_size=step)
    z = latent(1, t, 1, 2, seed=t)
    got = model.decode(z)
    want = reference_decode(model, z, first, step)
    assert got.shape == (1, 3, 4 * t - 3, 16, 32)
    assert torch.equal(got, want)


def test_plan_chunks_arithmetic():
    for first in range(1, 9):
        for step in range(1, 9):
            for t in range(1, 30):
                pad, chunks = plan_chunks(t, first, step)
                n = t + pad
                assert n >= first and (n - first) % step == 0 and 0 <= pad < max(first, step)
                kept = sum(c.keep_to - c.keep_from for c in chunks)
                assert kept == 4 * n - 3  # 4(T-1)+1 pixel frames of the padded clip, before unpadding
                assert chunks[0].is_first and chunks[0].left == 0 and not any(c.is_first for c in chunks[1:])
                # consecutive windows overlap by exactly two latent frames (one context frame each side)
                for a, b in zip(chunks, chunks[1:]):
                    assert a.right - b.left == 2
                assert chunks[-1].right == n


def test_chunks_are_independent_windows():
    """A latent frame only influences the chunks whose window holds it (bounded-memory decoding)."""
    model = tiny_model(first_chunk_size=3, step_size=2)
    z = latent(1, 9, 2, 2)
    base = model.decode(z)
    z2 = z.clone()
    z2[:, :, 6] += 1.0  # padded length 9 = 3 + 3*2: windows [0,4) [2,6) [4,8) [6,9)
    moved = (model.decode(z2) - base).abs().flatten(3).amax(dim=(0, 1, 3))  # per pixel frame
    # kept pixel frames: chunk0 0..8, chunk1 9..16, chunk2 17..24, chunk3 25..32
    assert torch.all(moved[:17] == 0)
    assert moved[17:25].max() > 0 and moved[25:].max() > 0


def test_chunked_decode_is_not_one_shot_decode():
    """By design (1 frame of context < receptive field) chunking differs from one pass over the clip,
    while a clip that fits into the first chunk is exactly one pass."""
    model = tiny_model(first_chunk_size=3, step_size=2)
    z = latent(1, 5, 2, 2)
    one_shot = model.decoder(reference_denormalize(z), is_first_chunk=True)
    chunked = model.decode(z)
    assert one_shot.shape == chunked.shape
    assert not torch.equal(chunked, one_shot)
    short = latent(1, 3, 2, 2)
    assert torch.equal(model.decode(short), model.decoder(reference_denormalize(short), is_first_chunk=True))


def test_output_offload_same_values():
    model = tiny_model()
    z = latent(1, 6)
    a = model.decode(z)
    b = model.decode(z, output_offload=True)
    assert b.device.type == "cpu" and torch.equal(a, b)


def test_denormalisation_uses_wan22_constants():
    model = tiny_model()
    z = latent(1, 2)
    mean = torch.tensor(WAN22_LATENT_MEAN).view(1, 48, 1, 1, 1)
    std = torch.tensor(WAN22_LATENT_STD).view(1, 48, 1, 1, 1)
    torch.testing.assert_close(model.denormalize(z), z * std + mean, rtol=1e-6, atol=1e-6)
    # decode(z) of a latent that de-normalises to exactly zero == decoding zeros
    x0 = model.decoder(torch.zeros(1, 48, 3, 1, 2), is_first_chunk=True)
    torch.testing.assert_close(model.decode(((0 - mean) / std).expand(1, 48, 3, 1, 2)), x0, rtol=0, atol=1e-5)


def test_unpatchify_layout():
    x = torch.randn(1, 12, 2, 3, 4)
    y = unpatchify(x, 2)
    assert y.shape == (1, 3, 2, 6, 8)
    for c in range(3):
        for i in range(2):
            for j in range(2):
                assert torch.equal(y[0, c, :, i::2, j::2], x[0, c * 4 + j * 2 + i])


def test_bf16_compute():
    model = tiny_model()
    z = latent(1, 4)
    ref = model.decode(z)
    model_bf16 = tiny_model().to(torch.bfloat16)
    model_bf16.compute_dtype = None
    out = model_bf16.decode(z)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max()


# ----------------------------------------------------------------------------- config

def test_release_config_key_names_and_shapes():
    with torch.device("meta"):
        model = TurboVAEDecoder.from_config({**RELEASE_TURBO_CONFIG, "_class_name": "TurboVAED",
                                             "aligned_feature_projection_mode": "conv-2layer"})
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert all(k.startswith("decoder.") for k in shapes)
    assert shapes["decoder.conv_in.conv.weight"] == (512, 48, 3, 3, 3)
    assert shapes["decoder.up_blocks.0.upsamplers.0.time_conv.conv.weight"] == (1024, 512, 3, 1, 1)
    assert shapes["decoder.up_blocks.1.conv_in.conv_shortcut.conv.weight"] == (256, 512, 1, 1, 1)
    assert shapes["decoder.up_blocks.2.upsamplers.0.resample.1.weight"] == (128, 128, 3, 3)
    assert "decoder.up_blocks.2.upsamplers.0.time_conv.conv.weight" not in shapes  # spatial only
    assert not any(k.startswith("decoder.up_blocks.3.upsamplers") for k in shapes)
    assert shapes["decoder.conv_out.conv.weight"] == (12, 64, 3, 3, 3)
    assert len([k for k in shapes if ".resnets." in k and k.endswith("conv1.conv.weight")]) == 3 + 3 + 2 + 2 + 2


def test_config_errors():
    cfg = dict(TINY_TURBO_CONFIG)
    del cfg["decoder_block_out_channels"]
    with pytest.raises(TurboVAEError, match="decoder_block_out_channels"):
        TurboVAEDecoder.from_config(cfg)
    with pytest.raises(TurboVAEError, match="decoder_layers_per_block has 4 entries, expected 5"):
        TurboVAEDecoder.from_config({**TINY_TURBO_CONFIG, "decoder_layers_per_block": [1, 1, 1, 1]})
    with pytest.raises(TurboVAEError, match="temporal_compression_ratio"):
        TurboVAEDecoder.from_config({**TINY_TURBO_CONFIG, "decoder_spatio_only": [False, False, False, False]})


# ----------------------------------------------------------------------------- files

def _save_variant(path: Path, state: dict, how: str) -> None:
    if how == "module":
        ema = {"module." + k: v for k, v in state.items()}
    elif how == "with_encoder":
        ema = {**state, "encoder.conv_in.conv.weight": torch.zeros(4, 3, 3, 3, 3),
               "aligned_projection.0.weight": torch.zeros(2, 2)}
    elif how == "module_with_encoder":
        ema = {**{"module." + k: v for k, v in state.items()}, "module.encoder.down.0.weight": torch.zeros(3)}
    elif how == "bare_decoder":
        ema = {k[len("decoder."):]: v for k, v in state.items()}
    else:
        ema = dict(state)
    torch.save({"ema_state_dict": ema, "global_step": 340000}, path)


@pytest.mark.parametrize("how", ["plain", "module", "with_encoder", "module_with_encoder", "bare_decoder"])
def test_checkpoint_variants_load_strictly(tmp_path, how):
    src = tiny_model(seed=3)
    ckpt = tmp_path / "checkpoint.ckpt"
    _save_variant(ckpt, src.state_dict(), how)
    model = load_turbo_vae(dict(TINY_TURBO_CONFIG), ckpt, dtype=torch.float32)
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    z = latent(1, 4)
    assert torch.equal(model.decode(z), src.decode(z))


def test_wrong_keys_error_names_file_and_keys(tmp_path):
    state = tiny_model().state_dict()
    state.pop("decoder.conv_out.conv.bias")
    state["decoder.extra.weight"] = torch.zeros(1)
    ckpt = tmp_path / "bad.ckpt"
    torch.save({"ema_state_dict": state}, ckpt)
    with pytest.raises(TurboVAEError) as err:
        load_turbo_vae(TINY_TURBO_CONFIG, ckpt, dtype=torch.float32)
    msg = str(err.value)
    assert "bad.ckpt" in msg and "1 missing key(s): decoder.conv_out.conv.bias" in msg
    assert "1 unexpected key(s): decoder.extra.weight" in msg


def test_config_of_other_size_is_a_clear_error(tmp_path):
    json_path, ckpt = write_tiny_turbo_vae(tmp_path)
    with pytest.raises(TurboVAEError, match="wrong shape"):
        load_turbo_vae({**TINY_TURBO_CONFIG, "decoder_block_out_channels": [8, 8, 16, 32]}, ckpt)


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("zipfile", [True, False])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, zipfile):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.ckpt"
    state = {"module." + k: v for k, v in tiny_model().state_dict().items()}
    torch.save({"ema_state_dict": state, "payload": _Evil(str(marker))}, ckpt,
               _use_new_zipfile_serialization=zipfile)
    assert not marker.exists()
    with pytest.raises(TurboVAEError, match="refused to load this pickle for safety") as err:
        load_turbo_vae(TINY_TURBO_CONFIG, ckpt)
    assert "evil.ckpt" in str(err.value) and ".safetensors" in str(err.value)
    assert "GLOBAL posix.system" in str(err.value) or "GLOBAL nt.system" in str(err.value)  # torch's reason
    assert "add_safe_globals" not in str(err.value) and "weights_only` set to `False`" not in str(err.value)
    with pytest.raises(TurboVAEError, match="refused"):
        convert_turbo_checkpoint(ckpt, tmp_path / "out.safetensors")
    assert not marker.exists()


def test_legacy_torch_format_loads(tmp_path):
    src = tiny_model(seed=5)
    ckpt = tmp_path / "legacy.ckpt"
    torch.save({"ema_state_dict": {"module." + k: v for k, v in src.state_dict().items()}}, ckpt,
               _use_new_zipfile_serialization=False)
    model = load_turbo_vae(TINY_TURBO_CONFIG, ckpt, dtype=torch.float32)
    z = latent(1, 2)
    assert torch.equal(model.decode(z), src.decode(z))


def test_tiny_writer_real_formats_and_folder_loading(tmp_path):
    json_path, ckpt = write_tiny_turbo_vae(tmp_path, seed=7)
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(TINY_TURBO_CONFIG))
    raw = torch.load(ckpt, weights_only=True, map_location="cpu")
    assert raw["ema_state_dict"] and all(k.startswith("module.decoder.") for k in raw["ema_state_dict"])
    a = load_turbo_vae(json_path, ckpt, dtype=torch.float32)
    b = load_turbo_vae(None, tmp_path, dtype=torch.float32)  # the loader node's call: folder, no config
    z = latent(1, 5)
    va = a.decode(z)
    assert torch.isfinite(va).all() and va.abs().max() < 100
    assert torch.equal(va, b.decode(z))
    c = load_turbo_vae(json_path, ckpt)  # default bf16
    assert c.decoder.conv_in.conv.weight.dtype == torch.bfloat16 and c.decode(z).dtype == torch.bfloat16


def test_config_json_beside_a_checkpoint_file(tmp_path):
    json_path, ckpt = write_tiny_turbo_vae(tmp_path, seed=3)
    ref = load_turbo_vae(json_path, ckpt, dtype=torch.float32)
    beside = load_turbo_vae(None, ckpt, dtype=torch.float32)  # a file picked in a list, its JSON next to it
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), beside.state_dict().values()))
    (tmp_path / "other.json").write_text("{}")  # several JSONs: the turbo* one is the config
    assert load_turbo_vae(None, ckpt, dtype=torch.float32).config == ref.config
    (tmp_path / "turbo-copy.json").write_text(json_path.read_text())
    with pytest.raises(TurboVAEError, match="several JSON files.*pass the config path"):
        load_turbo_vae(None, ckpt)
    with pytest.raises(TurboVAEError, match="several JSON files"):
        convert_turbo_checkpoint(ckpt, tmp_path / "out" / "turbo.safetensors")
    out = convert_turbo_checkpoint(ckpt, tmp_path / "out" / "turbo.safetensors", config=json_path)
    assert load_turbo_vae(None, out, dtype=torch.float32).config == ref.config


def test_conversion_round_trip(tmp_path):
    src = tiny_model(seed=9)
    ckpt = tmp_path / "turbo" / "checkpoint-340000.ckpt"
    ckpt.parent.mkdir()
    _save_variant(ckpt, src.state_dict(), "module_with_encoder")
    (ckpt.parent / "TurboV3-tiny.json").write_text(json.dumps(TINY_TURBO_CONFIG))
    out = convert_turbo_checkpoint(ckpt, tmp_path / "turbo_vae.safetensors")
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
    assert keys == set(src.state_dict())
    assert json.loads(meta[CONFIG_METADATA_KEY]) == json.loads(json.dumps(TINY_TURBO_CONFIG))
    from_pickle = load_turbo_vae(ckpt.parent / "TurboV3-tiny.json", ckpt, dtype=torch.float32)
    from_st = load_turbo_vae(None, out, dtype=torch.float32)
    z = latent(1, 6)
    assert torch.equal(from_pickle.decode(z), from_st.decode(z))


# ----------------------------------------------------------------------------- official parity

@pytest.mark.skipif(not OFFICIAL_MODULE.exists(), reason="official inference code not extracted at /tmp/official")
@pytest.mark.parametrize("unpatch", [True, False])
def test_parity_with_official_module(unpatch, monkeypatch):
    pytest.importorskip("diffusers")
    monkeypatch.setenv("TORCHDYNAMO_DISABLE", "1")
    spec = importlib.util.spec_from_file_location("_official_turbo_vaed", OFFICIAL_MODULE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    real_tensor = torch.tensor

    def cpu_tensor(*a, **k):  # the official constructor pins its statistics to CUDA
        if k.get("device") == "cuda":
            k["device"] = "cpu"
        return real_tensor(*a, **k)

    cfg = {**TINY_TURBO_CONFIG, "use_unpatchify": unpatch}
    accepted = set(inspect.signature(mod.TurboVAED.__init__).parameters)
    monkeypatch.setattr(torch, "tensor", cpu_tensor)
    official = mod.TurboVAED(**{k: v for k, v in cfg.items() if k in accepted}).eval()
    monkeypatch.setattr(torch, "tensor", real_tensor)
    mine = tiny_model(seed=11, use_unpatchify=unpatch)
    official.load_state_dict(mine.state_dict(), strict=True)
    for t in (1, 4, 6):
        z = latent(1, t, 1, 2, seed=t)
        with torch.no_grad():
            assert torch.equal(official.decode(z), mine.decode(z))


def test_unreadable_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "notes.ckpt"
    bad.write_text("hello")
    with pytest.raises(TurboVAEError, match="notes.ckpt: cannot read this file as a torch checkpoint"):
        load_turbo_vae(TINY_TURBO_CONFIG, bad)
    with pytest.raises(TurboVAEError, match="not found"):
        load_turbo_vae(TINY_TURBO_CONFIG, tmp_path / "missing.ckpt")


def test_layers_come_from_the_operations_namespace(tmp_path):
    made = []

    class Ops:
        class Conv3d(torch.nn.Conv3d):
            def __init__(self, *a, **k):
                super().__init__(*a, **k)
                made.append(self)

        class Conv2d(torch.nn.Conv2d):
            def __init__(self, *a, **k):
                super().__init__(*a, **k)
                made.append(self)

    json_path, ckpt = write_tiny_turbo_vae(tmp_path)
    model = load_turbo_vae(json_path, ckpt, dtype=torch.float32, operations=Ops)
    convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]
    assert convs and all(any(m is c for c in made) for m in convs)
    assert all(getattr(m, "_magi_ops", None) is Ops for m in convs)
    plain = load_turbo_vae(json_path, ckpt, dtype=torch.float32)
    assert torch.equal(model.decode(latent(1, 2)), plain.decode(latent(1, 2)))
