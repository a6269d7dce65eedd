"""fp8 (e4m3) storage of the DiT block linears: per-tensor scale, kept fp8 bytes, CLI and node options."""

from __future__ import annotations

import safetensors.torch
import torch
import pytest

from magihuman import checkpoints as ck
from magihuman import cli, media
from magihuman.checkpoints import load_dit, write_tiny_dit
from magihuman.models.dit import MagiHumanDiT
from magihuman.models.dit_config import DiTConfig
from magihuman.weights.safetensors_io import load_file

FP8 = torch.float8_e4m3fn


def _block_linears(m):
    for layer in m.block.layers:
        yield from ((n, getattr(layer.attention if n.startswith("linear") else layer.mlp, n))
                    for n in ("linear_qkv", "linear_proj", "up_gate_proj", "down_proj"))


def _load(path, dtype):
    return load_dit(path, dtype=dtype, show_progress=False)


def _unpadded(mod) -> torch.Tensor:
    """The e4m3 weight of a block linear without the zero rows / columns fp8 matmuls need (multiples of 16)."""
    per = mod.weight.shape[0] // mod.experts
    return mod.weight.reshape(mod.experts, per, -1)[:, :mod.rows, :mod.cols].reshape(mod.experts * mod.rows, mod.cols)


def _inputs(cfg, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, cfg.video_in_channels // 4, 3, 4, 6, generator=g),
            torch.randn(1, 7, cfg.audio_in_channels, generator=g), torch.randn(1, 5, cfg.text_in_channels, generator=g))


@pytest.fixture(scope="module")
def fp32_file(tmp_path_factory):
    return write_tiny_dit(tmp_path_factory.mktemp("fp8") / "distill.safetensors", layout="file")


def test_fp32_source_quantised_per_tensor(fp32_file):
    ref = load_file(fp32_file)
    m = _load(fp32_file, FP8)
    sd = m.state_dict()
    assert set(sd) == set(ref)  # the scales are not state-dict keys (strict official loading still works)
    n, b8, b32 = 0, 0, 0
    for k, t in sd.items():
        if ck.is_block_linear(k):
            mod = m.get_submodule(k[: -len(".weight")])
            assert t.dtype == FP8 and mod.weight_scale.dtype == torch.float32 and mod.weight_scale.dim() == 0
            w = ref[k].float()
            scale = w.abs().amax() / 448  # independent recipe: amax / e4m3 max
            assert torch.equal(mod.weight_scale, scale)
            t = _unpadded(mod)
            assert torch.equal(t, (w / scale).clamp(-448, 448).to(FP8))
            padding = mod.weight.float().sum() - t.float().sum()
            assert padding == 0 and all(d % 16 == 0 for d in mod.weight.shape)  # zero tiles for fp8 matmuls
            deq = t.float() * mod.weight_scale
            assert (deq - w).abs().max() <= w.abs().max() / 16 + 1e-12  # e4m3: 3 mantissa bits
            n, b8, b32 = n + 1, b8 + t.numel() * t.element_size(), b32 + w.numel() * 4
        else:
            assert t.dtype == ref[k].dtype == torch.float32 and torch.equal(t, ref[k]), k
    assert n == 4 * m.config.num_layers and b8 * 4 == b32  # block linears: a quarter of fp32 (without padding)
    assert m.load_info["dtype"] == "fp8" and m.load_info["kept"] == f"{n} fp8"  # quantised while loading
    # the normal model carries no scale
    assert _load(fp32_file, torch.bfloat16).block.layers[0].mlp.down_proj.weight_scale is None


@pytest.mark.parametrize("compute", [torch.float32, torch.bfloat16])
def test_fp8_forward_close_to_fp32(fp32_file, compute):
    m32, m8 = _load(fp32_file, torch.float32), _load(fp32_file, FP8)
    m32.set_compute_dtype(compute)
    m8.set_compute_dtype(compute)
    v, a, t = _inputs(m32.config)
    with torch.no_grad():
        r, o = m32(v, a, t, [5]), m8(v, a, t, [5])
        # the same model with the fp8 weights dequantised by hand: the scale is applied exactly once
        for (_, mod32), (_, mod8) in zip(_block_linears(m32), _block_linears(m8)):
            mod32.weight.copy_(_unpadded(mod8).float() * mod8.weight_scale)
        d = m32(v, a, t, [5])
    for ref, out, deq in zip(r, o, d):
        assert out.shape == ref.shape and torch.isfinite(out).all()
        rel = float((out.double() - ref.double()).abs().max() / ref.double().abs().max())
        assert 1e-4 < rel < 5e-2, rel  # really quantised, and close
        tol = 1e-5 if compute == torch.float32 else 2e-2
        assert float((out.double() - deq.double()).abs().max() / deq.double().abs().max()) < tol


def _fp8_source(tmp_path, ref):
    out = {}
    for k, v in ref.items():
        if ck.is_block_linear(k):
            s = (v.float().abs().amax() / 448.0) * 1.5  # a scale the loader could not guess: must be kept
            out[k], out[k + ".__fp8_scale"] = (v.float() / s).clamp(-448, 448).to(FP8), s.float()
        else:
            out[k] = v.to(torch.bfloat16)
    folder = tmp_path / "distill_fp8"
    folder.mkdir()
    safetensors.torch.save_file(out, folder / "model.safetensors")
    return folder, out


def test_fp8_source_keeps_bytes_and_scale(tmp_path, fp32_file):
    ref = load_file(fp32_file)
    folder, stored = _fp8_source(tmp_path, ref)
    m = _load(folder, FP8)
    for k, t in m.state_dict().items():
        if ck.is_block_linear(k):
            mod = m.get_submodule(k[: -len(".weight")])
            assert t.dtype == FP8 and torch.equal(_unpadded(mod).view(torch.uint8), stored[k].view(torch.uint8)), k
            assert torch.equal(mod.weight_scale, stored[k + ".__fp8_scale"])
        else:
            assert t.dtype == torch.float32 and torch.equal(t, stored[k].float()), k
    assert m.load_info["kept"] == f"{4 * m.config.num_layers} fp8 (as stored)"
    assert _load(folder, None).load_info["kept"] == m.load_info["kept"]  # "file", the default, keeps fp8 files too
    # same numbers as dequantising the file to fp32 on load
    mf = _load(folder, torch.float32)
    for cd in (torch.float32, torch.bfloat16):
        m.set_compute_dtype(cd)
        mf.set_compute_dtype(cd)
        v, a, t = _inputs(m.config)
        with torch.no_grad():
            for x, y in zip(m(v, a, t, [5]), mf(v, a, t, [5])):
                tol = 1e-5 if cd == torch.float32 else 2e-2
                assert float((x - y).abs().max() / y.abs().max()) < tol


def test_meta_and_direct_fp8_construction():
    cfg = DiTConfig.preset("tiny")
    meta = MagiHumanDiT(cfg, dtype=FP8, device="meta")  # a loader's placeholder: the logical shape, filled in fp8
    qkv = meta.block.layers[0].attention.linear_qkv
    assert qkv.weight.is_meta and tuple(qkv.weight.shape) == (3 * cfg.qkv_out_features, cfg.hidden_size)
    assert meta.adapter.video_embedder.weight.dtype == torch.float32
    m = MagiHumanDiT(cfg, dtype=FP8, compute_dtype=torch.float32)  # random init, then quantised
    ref = MagiHumanDiT(cfg, dtype=torch.float32, compute_dtype=torch.float32)
    for (_, a), (_, b) in zip(_block_linears(m), _block_linears(ref)):
        assert a.weight.dtype == FP8 and torch.equal(a.weight_scale, b.weight.abs().amax() / 448)
    v, a, t = _inputs(cfg)
    with torch.no_grad():
        for x, y in zip(m(v, a, t, [5]), ref(v, a, t, [5])):
            assert torch.isfinite(x).all() and float((x - y).abs().max() / y.abs().max()) < 5e-2


def test_e5m2_dtype_refused(fp32_file):
    with pytest.raises(ValueError, match=r"unknown weight storage torch.float8_e5m2; choose one of .* fp8 "):
        _load(fp32_file, torch.float8_e5m2)


def test_cli_dtype_fp8_runs_tiny_preset(tiny_dir, tmp_path, capsys, monkeypatch):
    seen = []
    real = cli.load_dit

    def spy(*args, **kw):
        m = real(*args, **kw)
        seen.append((kw.get("storage").name, m.block.layers[0].mlp.down_proj.weight.dtype,
                     m.block.layers[0].mlp.down_proj.weight_scale))
        return m

    monkeypatch.setattr(cli, "load_dit", spy)
    out = tmp_path / "fp8.mp4"
    code = cli.main(["generate", "--preset", "tiny", "--prompt", "A man smiles.", "--seconds", "0.5", "--dtype",
                     "fp8", "--models", str(tiny_dir), "--output", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert seen and all(d == "fp8" and wd == FP8 and s is not None for d, wd, s in seen)
    info = media.read_mp4_info(out)
    assert info["frames"] > 0 and info["video_codec"] == "h264"


def test_node_loader_fp8_runs_distilled_graph(node_pack, tiny_dir):
    env = node_pack(tiny_dir)
    try:
        compat = env.compat
        assert compat.pick_storage("fp8", torch.device("cpu")).dtype == FP8
        inputs = {i.id: i for i in env.nodes["MagiHumanDiTLoader"].define_schema().inputs}
        assert "fp8" in inputs["weight_dtype"].options and inputs["weight_dtype"].default == "auto"
        te_inputs = {i.id: i for i in env.nodes["MagiHumanTextEncoderLoader"].define_schema().inputs}
        assert "fp8" in te_inputs["weight_dtype"].options  # the DiT and the text encoder have compact storage
        vae_inputs = {i.id: i for i in env.nodes["MagiHumanTurboVAELoader"].define_schema().inputs}
        assert "fp8" not in vae_inputs["weight_dtype"].options  # the VAEs do not
        with pytest.raises(ValueError, match=r"weight_dtype must be one of \['auto', 'bf16', 'fp16', 'fp32'\], got 'fp8'"):
            env.run("MagiHumanTurboVAELoader", vae_name="turbo_vae_tiny/", weight_dtype="fp8")
        (h8,) = env.run("MagiHumanDiTLoader", model_name="magihuman_tiny_distill/", weight_dtype="fp8",
                        compute_dtype="fp32")
        (h32,) = env.run("MagiHumanDiTLoader", model_name="magihuman_tiny_distill/", weight_dtype="fp32",
                         compute_dtype="fp32")
        assert h8.model.block.layers[0].attention.linear_qkv.weight.dtype == FP8
        (te,) = env.run("MagiHumanTextEncoderLoader", text_encoder="t5gemma_tiny/", weight_dtype="fp32")
        pos, _neg = env.run("MagiHumanTextEncode", text_encoder=te, prompt="A man smiles and says hello.",
                            negative_prompt="", encode_negative=False)
        (latent,) = env.run("MagiHumanEmptyAVLatent", width=64, height=64, seconds=0.5, batch_size=1)
        (d8,) = env.run("MagiHumanDistilledSampler", model=h8, positive=pos, latent=latent, seed=3, steps=2)
        (d32,) = env.run("MagiHumanDistilledSampler", model=h32, positive=pos, latent=latent, seed=3, steps=2)
        for key in ("samples", "magihuman_audio"):
            assert torch.isfinite(d8[key]).all() and d8[key].shape == d32[key].shape
            rel = float((d8[key] - d32[key]).abs().max() / d32[key].abs().max())
            assert rel < 5e-2, (key, rel)
    finally:
        env.close()


def test_fp8_load_refuses_non_finite_weights(tmp_path):
    from safetensors.torch import load_file, save_file

    from magihuman.checkpoints import CheckpointError, load_dit, write_tiny_dit

    src = write_tiny_dit(tmp_path / "magihuman_distill.safetensors", layout="file")
    sd = load_file(str(src))
    key = "block.layers.1.mlp.down_proj.weight"
    sd[key][0, 0] = float("inf")
    bad = tmp_path / "bad_distill.safetensors"
    save_file(sd, str(bad))
    with pytest.raises(CheckpointError, match=r"down_proj.*inf/nan"):
        load_dit(bad, dtype=torch.float8_e4m3fn, show_progress=False)
