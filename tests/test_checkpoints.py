"""Streamed DiT checkpoint loading: layouts, dtype conversion, inference of config/variant, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import safetensors.torch
import torch

from magihuman import checkpoints as ck
from magihuman.weights import safetensors_io as sio
from magihuman.checkpoints import CheckpointError, load_dit, official_key_shapes, write_tiny_dit
from magihuman.models.dit import MagiHumanDiT
from magihuman.models.dit_config import DiTConfig

TINY = DiTConfig.preset("tiny")


def reference_tensors(target: Path) -> dict[str, torch.Tensor]:
    """Read what was written with the official safetensors library (independent of our reader)."""
    if target.is_file():
        files = [target]
    else:
        files = sorted(f for f in target.iterdir() if f.name.endswith((".safetensors", ".safetensors.zst")))
    out = {}
    for f in files:
        if f.name.endswith(".zst"):
            import zstandard

            raw = zstandard.ZstdDecompressor().decompressobj().decompress(f.read_bytes())
            out.update(safetensors.torch.load(raw))
        else:
            out.update(safetensors.torch.load_file(f))
    return out


def load(path, **kw):
    return load_dit(path, show_progress=False, **kw)


# ------------------------------------------------------------------ key table


def test_key_table_matches_model_state_dict():
    configs = [
        TINY,
        DiTConfig(),  # the 15B release, on meta
        DiTConfig(num_layers=5, hidden_size=96, head_dim=16, num_query_groups=3, text_in_channels=40,
                  mm_layers=[0, 4], gelu7_layers=[0, 1], post_norm_layers=[2, 4]),
    ]
    for cfg in configs:
        model = MagiHumanDiT(cfg, device="meta")
        got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert got == official_key_shapes(cfg)


def test_key_table_release_shapes():
    s = official_key_shapes(DiTConfig())
    qkv = (40 + 2 * 8) * 128 + 40  # q | k | v | per-head gates
    assert s["block.layers.0.attention.linear_qkv.weight"] == (3 * qkv, 5120)  # mm layer: 3 experts
    assert s["block.layers.10.attention.linear_qkv.weight"] == (qkv, 5120)
    assert s["block.layers.0.mlp.up_gate_proj.weight"] == (3 * 4 * 5120, 5120)  # gelu7
    assert s["block.layers.0.mlp.down_proj.weight"] == (3 * 5120, 4 * 5120)
    assert s["block.layers.10.mlp.up_gate_proj.weight"] == (2 * 13652, 5120)  # swiglu7
    assert s["block.layers.10.mlp.down_proj.weight"] == (5120, 13652)
    assert s["block.layers.39.attention.q_norm.weight"] == (3 * 128,)
    assert s["block.layers.20.attention.k_norm.weight"] == (128,)
    assert s["adapter.rope.bands"] == (16,)
    assert s["adapter.text_embedder.weight"] == (5120, 3584) and s["adapter.text_embedder.bias"] == (5120,)
    assert s["final_linear_video.weight"] == (192, 5120) and s["final_linear_audio.weight"] == (64, 5120)
    assert not any("post_norm" in k for k in s)
    params = sum(math.prod(v) for v in s.values())
    assert 15.0e9 < params < 15.6e9  # "15B"


def test_infer_config_from_shapes_roundtrips():
    for cfg in (TINY, DiTConfig(),
                DiTConfig(num_layers=5, hidden_size=96, head_dim=16, num_query_groups=3, text_in_channels=40,
                          mm_layers=[0, 4], gelu7_layers=[0, 1], post_norm_layers=[2], enable_attn_gating=False)):
        got = ck.infer_config(official_key_shapes(cfg))
        assert got.to_dict() == {**cfg.to_dict(), "local_attn_layers": []}


def test_sr_1080p_rule():
    assert ck.sr_1080p_local_attn_layers(40) == list(ck.DiTConfig.preset("sr_1080p").local_attn_layers)
    assert ck.sr_1080p_local_attn_layers(8) == [0, 1, 2, 4, 5, 6]


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("layout,zst,shards", [("folder", False, 3), ("folder", True, 2), ("file", False, 1),
                                               ("file", True, 1)])
def test_round_trip_layouts_fp32_to_bf16(tmp_path, layout, zst, shards):
    target = write_tiny_dit(tmp_path / ("ckpt.safetensors" if layout == "file" else "ckpt"), layout=layout,
                            zst=zst, shards=shards)
    if layout == "folder":
        index = json.loads((target / "model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) == shards
        suffix = ".zst" if zst else ""
        assert all((target / (s + suffix)).is_file() for s in index["weight_map"].values())
    ref = reference_tensors(target)
    assert set(ref) == set(official_key_shapes(TINY)) and all(t.dtype == torch.float32 for t in ref.values())
    model = load(target, dtype=torch.bfloat16)
    sd = model.state_dict()
    assert set(sd) == set(ref)
    for k, t in sd.items():
        want_dtype = torch.bfloat16 if ck.is_block_linear(k) else torch.float32
        assert t.dtype == want_dtype, k
        assert torch.equal(t, ref[k].to(want_dtype)), k  # fp32 -> bf16 is exactly .to(bf16)
    assert model.load_info["source_dtype"] == "fp32" and model.load_info["dtype"] == "bf16"


def test_fp32_model_is_bit_exact_and_bf16_source(tmp_path):
    p32 = write_tiny_dit(tmp_path / "a.safetensors", layout="file")
    ref = reference_tensors(p32)
    sd = load(p32, dtype=torch.float32).state_dict()
    assert all(torch.equal(sd[k], ref[k]) for k in ref)
    p16 = write_tiny_dit(tmp_path / "b", dtype=torch.bfloat16, metadata=False)
    ref16 = reference_tensors(p16)
    assert ref16["block.layers.1.mlp.down_proj.weight"].dtype == torch.bfloat16
    assert ref16["final_norm_video.weight"].dtype == torch.float32
    m = load(p16, dtype=torch.float32)
    assert all(torch.equal(m.state_dict()[k], ref16[k].float()) for k in ref16)
    assert m.load_info["source_dtype"] == "bf16"


def test_fp16_on_disk(tmp_path):
    p = write_tiny_dit(tmp_path / "x.safetensors", layout="file", dtype=torch.float16)
    ref = reference_tensors(p)
    sd = load(p).state_dict()
    k = "block.layers.2.attention.linear_qkv.weight"
    assert ref[k].dtype == torch.float16 and torch.equal(sd[k], ref[k].to(torch.bfloat16))


def test_loaded_model_equals_load_state_dict(tmp_path):
    p = write_tiny_dit(tmp_path / "distill", shards=2, seed=3)
    loaded = load(p, dtype=torch.bfloat16)
    ref = MagiHumanDiT(TINY, dtype=torch.bfloat16)
    ref.load_state_dict(reference_tensors(p), strict=True)
    torch.manual_seed(0)
    v, a, t = torch.randn(1, 48, 2, 4, 4), torch.randn(1, 5, 64), torch.randn(1, 3, 64)
    with torch.no_grad():
        out1 = loaded(v, a, t, [3])
        out2 = ref(v, a, t, [3])
    assert all(torch.equal(x, y) for x, y in zip(out1, out2))
    assert not any(p.requires_grad for p in loaded.parameters())


def test_write_tiny_dit_values(tmp_path):
    a = reference_tensors(write_tiny_dit(tmp_path / "a", seed=1))
    b = reference_tensors(write_tiny_dit(tmp_path / "b", seed=1, shards=4, layout="folder"))
    c = reference_tensors(write_tiny_dit(tmp_path / "c", seed=2))
    assert all(torch.equal(a[k], b[k]) for k in a)  # deterministic, independent of sharding
    w = a["block.layers.1.mlp.up_gate_proj.weight"]
    assert not torch.equal(w, c["block.layers.1.mlp.up_gate_proj.weight"])
    assert abs(w.std().item() - 0.02) < 0.001 and abs(w.mean().item()) < 0.001
    assert torch.count_nonzero(a["block.layers.0.attention.pre_norm.weight"]) == 0
    assert torch.count_nonzero(a["adapter.video_embedder.bias"]) == 0
    bands = a["adapter.rope.bands"]
    assert torch.allclose(bands, torch.tensor([10000.0 ** (-i / 4) for i in range(4)]))


# ------------------------------------------------------------------ inference of variant and config


@pytest.mark.parametrize("name,variant", [("distill", "distill"), ("base", "base"), ("540p_sr", "sr_540p"),
                                          ("1080p_sr", "sr_1080p"), ("sr_1080p", "sr_1080p"),
                                          ("MagiHuman-1080p", "sr_1080p"), ("magihuman_distilled", "distill")])
def test_variant_from_folder_name(tmp_path, name, variant):
    p = write_tiny_dit(tmp_path / name, metadata=False)
    m = load(p)
    assert m.variant == variant == m.load_info["variant"]
    assert name in m.load_info["reason"]
    assert m.load_info["coords"] == ("v1" if variant.startswith("sr_") else "v2")
    want_local = [0, 1, 2] if variant == "sr_1080p" else []  # all but 3, 7, ... scaled to 4 layers
    assert m.config.local_attn_layers == want_local
    assert m.config.to_dict() == {**TINY.to_dict(), "local_attn_layers": want_local}


def test_variant_from_file_name_and_metadata(tmp_path):
    p = write_tiny_dit(tmp_path / "models" / "magihuman_540p_sr_bf16.safetensors", layout="file", metadata=False)
    assert load(p).variant == "sr_540p"
    # metadata beats a misleading name
    custom = DiTConfig.preset("tiny_sr_1080p")
    custom.local_attn_layers = [1, 2]  # differs from the rule ([0, 1, 2] for 4 layers)
    p = write_tiny_dit(tmp_path / "base", variant="sr_1080p", config=custom)
    m = load(p)
    assert m.variant == "sr_1080p" and "metadata" in m.load_info["reason"]
    assert m.config.local_attn_layers == [1, 2]  # the config stored in the metadata wins over the rule
    assert sio.read_header(next(p.glob("*.safetensors"))).metadata["magihuman_variant"] == "sr_1080p"


def test_variant_from_dtype_and_override(tmp_path):
    m = load(write_tiny_dit(tmp_path / "w1", dtype=torch.bfloat16, metadata=False))
    assert m.variant == "base" and "bfloat16" in m.load_info["reason"]
    m = load(write_tiny_dit(tmp_path / "w2", metadata=False))
    assert m.variant == "distill" and "float32" in m.load_info["reason"]
    m = load(tmp_path / "w2", variant="1080p_sr")
    assert m.variant == "sr_1080p" and m.config.local_attn_layers == [0, 1, 2]
    with pytest.raises(CheckpointError, match="unknown variant 'turbo'"):
        load(tmp_path / "w2", variant="turbo")


def test_config_override_checked_against_weights(tmp_path):
    p = write_tiny_dit(tmp_path / "w", metadata=False)
    cfg = DiTConfig.preset("tiny_sr_1080p")
    cfg.local_attn_layers = [1, 2]
    assert load(p, config=cfg).config.local_attn_layers == [1, 2]
    bad = DiTConfig.preset("tiny")
    bad.gelu7_layers = [0, 1]
    with pytest.raises(CheckpointError, match=r"gelu7_layers \(\[0, 1\] vs \[0\]"):
        load(p, config=bad)


def test_inferred_config_of_unusual_architecture(tmp_path):
    cfg = DiTConfig(num_layers=3, hidden_size=64, head_dim=16, num_query_groups=1, text_in_channels=24,
                    mm_layers=[1], gelu7_layers=[2], post_norm_layers=[0])
    m = load(write_tiny_dit(tmp_path / "odd", config=cfg, metadata=False))
    assert m.config.to_dict() == cfg.to_dict()


def test_missing_rope_bands_filled_from_formula(tmp_path):
    shapes = official_key_shapes(TINY)
    tensors = {k: ck._tiny_tensor(k, s, torch.float32, 0, TINY.head_dim) for k, s in shapes.items() if k != ck.ROPE_KEY}
    f = tmp_path / "distill.safetensors"
    safetensors.torch.save_file(tensors, f)
    m = load(f)
    want = 1.0 / 10000.0 ** (torch.arange(4, dtype=torch.float32) / 4)
    assert torch.allclose(m.adapter.rope.bands, want) and m.adapter.rope.bands.dtype == torch.float32
    assert any("adapter.rope.bands" in n for n in m.load_info["notes"])


def test_wrapper_prefix_stripped(tmp_path):
    ref = reference_tensors(write_tiny_dit(tmp_path / "a.safetensors", layout="file"))
    f = tmp_path / "comfy_distill.safetensors"
    safetensors.torch.save_file({"model.diffusion_model." + k: v for k, v in ref.items()}, f)
    sd = load(f, dtype=torch.float32).state_dict()
    assert all(torch.equal(sd[k], ref[k]) for k in ref)


# ------------------------------------------------------------------ errors


def test_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load(tmp_path / "nope")


def test_truncated_file(tmp_path):
    f = write_tiny_dit(tmp_path / "t.safetensors", layout="file")
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match=r"t\.safetensors.*truncated") as e:
        load(f)
    assert "ends at byte" in str(e.value)
    f.write_bytes(data[:100])  # header cut: its length points beyond the file
    with pytest.raises(CheckpointError, match=r"header length \d+ is beyond the end of the file \(the file has 100"):
        load(f)
    f.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointError, match="JSON header is corrupt"):
        load(f)


def test_truncated_zst_shard(tmp_path):
    p = write_tiny_dit(tmp_path / "z", zst=True, shards=2)
    shard = sorted(p.glob("*.zst"))[1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=shard.name):
        load(p)


def test_offsets_beyond_file(tmp_path):
    f = tmp_path / "bad.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    f.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
    with pytest.raises(sio.SafetensorsError, match=r"bad\.safetensors.*'w' ends at byte"):
        sio.read_header(f)
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}).encode()
    f.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 16)
    with pytest.raises(sio.SafetensorsError, match="do not match its shape"):
        sio.read_header(f)


def test_missing_shard_named(tmp_path):
    p = write_tiny_dit(tmp_path / "distill", shards=3)
    (p / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError) as e:
        load(p)
    msg = str(e.value)
    assert "model-00002-of-00003.safetensors" in msg and "model.safetensors.index.json" in msg and "missing" in msg


def test_wrong_model_keys(tmp_path):
    f = tmp_path / "wan2.2_ti2v_5B.safetensors"
    safetensors.torch.save_file({
        "patch_embedding.weight": torch.zeros(8, 4), "blocks.0.self_attn.q.weight": torch.zeros(8, 8),
        "blocks.0.self_attn.k.weight": torch.zeros(8, 8), "head.head.weight": torch.zeros(4, 8)}, f)
    with pytest.raises(CheckpointError) as e:
        load(f)
    msg = str(e.value)
    assert str(f) in msg and "daVinci-MagiHuman DiT" in msg
    assert "4 unexpected key(s)" in msg and "blocks.0.self_attn.q.weight" in msg
    n_expected = len(official_key_shapes(DiTConfig())) - 1  # rope bands may be absent
    assert f"{n_expected} missing key(s)" in msg and "adapter.video_embedder.weight" in msg


def test_strict_key_check(tmp_path):
    ref = reference_tensors(write_tiny_dit(tmp_path / "a.safetensors", layout="file"))
    extra = dict(ref, **{"block.layers.1.attention.bias_extra": torch.zeros(3)})
    f = tmp_path / "extra.safetensors"
    safetensors.torch.save_file(extra, f)
    with pytest.raises(CheckpointError, match=r"1 unexpected key\(s\): block\.layers\.1\.attention\.bias_extra \[3\]"):
        load(f)
    missing = {k: v for k, v in ref.items() if k != "block.layers.2.attention.k_norm.weight"}
    safetensors.torch.save_file(missing, f)
    with pytest.raises(CheckpointError,
                       match=r"1 missing key\(s\): block\.layers\.2\.attention\.k_norm\.weight \[32\]"):
        load(f)
    wrong = dict(ref, **{"final_linear_audio.weight": torch.zeros(32, 128)})
    safetensors.torch.save_file(wrong, f)
    with pytest.raises(CheckpointError, match=r"final_linear_audio\.weight is \[32, 128\], expected \[64, 128\]"):
        load(f)


# ------------------------------------------------------------------ streaming behaviour


def test_streams_in_chunks_never_whole_files(tmp_path, monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("whole-file load called")

    monkeypatch.setattr(safetensors.torch, "load_file", forbidden)
    monkeypatch.setattr(safetensors.torch, "load", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    reads = []
    real = sio._readinto_exact

    def spy(stream, view, path, what):
        reads.append((len(view), what))
        return real(stream, view, path, what)

    monkeypatch.setattr(sio, "_readinto_exact", spy)
    for zst in (False, True):
        reads.clear()
        p = write_tiny_dit(tmp_path / f"s{zst}", zst=zst, shards=2)
        src = ck.open_checkpoint(p)
        reads.clear()
        done = []
        m = load_dit(p, chunk_bytes=4096, progress=lambda d, t: done.append((d, t)), show_progress=False)
        tensor_reads = [n for n, what in reads if what.startswith("tensor")]
        assert max(tensor_reads) <= 4096  # never more than one chunk of a tensor at once
        assert sum(tensor_reads) == src.total_bytes == m.load_info["bytes_read"]  # every byte read once
        assert done[-1] == (src.total_bytes, src.total_bytes)
        assert all(a[0] < b[0] for a, b in zip(done, done[1:]))


# ------------------------------------------------------------------ the reader itself and conversion


def test_reader_compat_with_safetensors_library(tmp_path):
    t = {"a": torch.randn(3, 5), "b": torch.randn(7).to(torch.bfloat16), "c": torch.arange(10),
         "d": torch.randn(4, 4).to(torch.float8_e4m3fn), "e": torch.zeros(0, 3), "f": torch.tensor(2.5)}
    safetensors.torch.save_file(t, tmp_path / "lib.safetensors", metadata={"k": "v"})
    got = sio.load_file(tmp_path / "lib.safetensors")
    assert set(got) == set(t) and all(torch.equal(got[k].float(), t[k].float()) for k in t)
    assert sio.read_header(tmp_path / "lib.safetensors").metadata == {"k": "v"}
    sio.write_file(tmp_path / "ours.safetensors", t, {"m": "1"})
    back = safetensors.torch.load_file(tmp_path / "ours.safetensors")
    assert all(back[k].dtype == t[k].dtype and torch.equal(back[k].float(), t[k].float()) for k in t)


def test_convert_dit_to_single_bf16_file(tmp_path):
    src = write_tiny_dit(tmp_path / "1080p_sr", zst=True, shards=3, metadata=False)
    dst = ck.convert_dit(src, tmp_path / "out" / "magihuman.safetensors", show_progress=False)
    ref = reference_tensors(src)
    out = safetensors.torch.load_file(dst)
    assert set(out) == set(ref)
    for k, v in out.items():
        assert v.dtype == (torch.bfloat16 if ck.is_block_linear(k) else torch.float32)
        assert torch.equal(v, ref[k].to(v.dtype))
    meta = sio.read_header(dst).metadata
    assert meta["magihuman_variant"] == "sr_1080p"
    assert json.loads(meta["magihuman_config"])["local_attn_layers"] == [0, 1, 2]
    m = load(dst)  # the variant survives the rename through metadata
    assert m.variant == "sr_1080p" and m.load_info["source_dtype"] == "bf16"


# ------------------------------------------------------------------ fp8 key maps


def _quantise(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor absmax fp8 e4m3 (the published MagiHuman FP8 recipe): w ~ q.float() * scale."""
    scale = (w.float().abs().amax() / 448.0).clamp(min=1e-12)
    return (w.float() / scale).clamp(-448, 448).to(torch.float8_e4m3fn), scale.float()


@pytest.mark.parametrize("style", ["fp8_scale", "comfy_scaled_fp8"])
def test_fp8_checkpoints_dequantised_while_streaming(tmp_path, style):
    ref = reference_tensors(write_tiny_dit(tmp_path / "src.safetensors", layout="file"))
    out, want = {}, {}
    for k, v in ref.items():
        if ck.is_block_linear(k):
            q, s = _quantise(v)
            if style == "fp8_scale":
                out[k], out[k + ".__fp8_scale"] = q, s
            else:
                out[k], out[k[: -len(".weight")] + ".scale_weight"] = q, s
                out[k[: -len(".weight")] + ".scale_input"] = torch.tensor(1.0)
            want[k] = q.to(torch.float32) * s
        else:
            out[k] = v.to(torch.bfloat16)  # the recipe keeps the rest in bf16
            want[k] = out[k].float()
    if style == "comfy_scaled_fp8":
        out = {"model.diffusion_model." + k: v for k, v in out.items()}
        out["scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    folder = tmp_path / "distill_fp8"
    folder.mkdir()
    safetensors.torch.save_file(out, folder / "model.safetensors")
    m = load(folder, dtype=torch.bfloat16)
    sd = m.state_dict()
    assert set(sd) == set(ref)
    for k, t in sd.items():
        assert torch.equal(t, want[k].to(t.dtype)), k
    assert m.variant == "distill" and m.load_info["source_dtype"] == "fp8"
    assert "fp8" in m.load_info["quantization"]
    kind = "__fp8_scale" if style == "fp8_scale" else "scaled_fp8"
    assert m.load_info["quantization"] == f"fp8 per-tensor scales ({kind})"
    ignored = ck.open_checkpoint(folder).ignored  # ComfyUI's marker and activation scales are skipped, not loaded
    n_linears = sum(ck.is_block_linear(k) for k in ref)
    assert len(ignored) == (0 if style == "fp8_scale" else n_linears + 1)
    err = (sd["block.layers.1.mlp.up_gate_proj.weight"].float() - ref["block.layers.1.mlp.up_gate_proj.weight"])
    assert err.abs().max() < 0.1 * ref["block.layers.1.mlp.up_gate_proj.weight"].abs().max()  # sane dequantisation
    converted = safetensors.torch.load_file(ck.convert_dit(folder, tmp_path / "bf16.safetensors", show_progress=False))
    assert set(converted) == set(ref)
    assert all(torch.equal(converted[k], want[k].to(converted[k].dtype)) for k in ref)


def test_fp8_scale_without_weight_is_an_error(tmp_path):
    ref = reference_tensors(write_tiny_dit(tmp_path / "src.safetensors", layout="file"))
    f = tmp_path / "bad.safetensors"
    safetensors.torch.save_file(dict(ref, **{"block.layers.9.mlp.down_proj.weight.__fp8_scale": torch.tensor(1.0)}), f)
    with pytest.raises(CheckpointError, match=r"scale 'block\.layers\.9\.mlp\.down_proj\.weight\.__fp8_scale' has no "
                                              r"weight"):
        load(f)


def test_index_or_shard_path_loads_the_folder(tmp_path):
    p = write_tiny_dit(tmp_path / "base", shards=2, zst=True, dtype=torch.bfloat16, metadata=False)
    ref = reference_tensors(p)
    for target in (p / "model.safetensors.index.json", p / "model-00002-of-00002.safetensors.zst"):
        m = load(target, dtype=torch.float32)
        assert m.variant == "base" and all(torch.equal(m.state_dict()[k], ref[k].float()) for k in ref)


def test_inspect_reads_headers_only(tmp_path, monkeypatch):
    p = write_tiny_dit(tmp_path / "540p_sr", zst=True, metadata=False)
    monkeypatch.setattr(sio.TensorReader, "read_into", lambda *a, **k: pytest.fail("tensor data read"))
    info = ck.inspect_dit(p)
    assert info["variant"] == "sr_540p" and info["coords"] == "v1" and info["source_dtype"] == "fp32"
    assert info["config"] == {**TINY.to_dict(), "local_attn_layers": []}
    assert info["bytes"] == sum(math.prod(s) * 4 for s in official_key_shapes(TINY).values())


def test_folder_errors_name_the_problem(tmp_path):
    two = tmp_path / "two"
    write_tiny_dit(two / "a.safetensors", layout="file")
    write_tiny_dit(two / "b.safetensors", layout="file")
    with pytest.raises(CheckpointError, match=r"no model\.safetensors\.index\.json and no single model\.safetensors "
                                              r"\(found: a\.safetensors, b\.safetensors\)"):
        ck.open_checkpoint(two)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=r"found: no weights files"):
        ck.open_checkpoint(empty)
    bad = write_tiny_dit(tmp_path / "bad_index")
    (bad / "model.safetensors.index.json").write_text('{"metadata": {}}')
    with pytest.raises(CheckpointError, match=r"index\.json is not a valid safetensors index \(needs a 'weight_map'"):
        ck.open_checkpoint(bad)
    one = tmp_path / "one"  # a folder with a single differently named file loads that file
    f = write_tiny_dit(one / "magihuman_distill.safetensors", layout="file")
    assert ck.open_checkpoint(one).files == [f]
