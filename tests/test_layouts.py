"""DiT files in other tools' layouts (ComfyUI-native, Wan2GP bf16 and quanto int8, FastVideo's diffusers folders, fp8
and GGUF repacks) load equal to the official layout, convert to it, are priced as stored; mixed layouts, missing
experts, quanto data without scales and undocumented int8 .pt files are clear errors naming the file."""

from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path

import pytest
import safetensors.torch
import torch

from magihuman import checkpoints as ck
from magihuman.checkpoints import CheckpointError, convert_dit, inspect_dit, load_dit, write_tiny_dit
from magihuman.models.dit_config import DiTConfig
from magihuman.storage import FILE, STORAGES, BlockLinear
from magihuman.weights.safetensors_io import write_file
from tests.layout_fixtures import fuse_wan2gp, quanto_dequantized, quanto_int8, to_comfy_native, to_wan2gp

CFG = DiTConfig.preset("tiny")  # mm layers 0 and 3, gelu7 layer 0, gating: qkv per expert q 128 | k 64 | v 64 | g 4


def load(path, **kw):
    return load_dit(path, show_progress=False, **kw)


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """(file, its tensors read by the safetensors library, the fp32 model's state dict) of a tiny fp32 DiT."""
    path = write_tiny_dit(tmp_path_factory.mktemp("official") / "magihuman_distill.safetensors", layout="file", seed=4)
    sd = safetensors.torch.load_file(path)
    return path, sd, load(path, storage="fp32").state_dict()


def _equal(got: dict, want: dict) -> list[str]:
    """Keys whose tensors differ (values and dtype as the model holds them)."""
    assert set(got) == set(want), set(got) ^ set(want)
    return [k for k in want if not torch.equal(got[k], want[k].to(got[k].dtype))]


def _shuffled(d: dict, seed: int = 0) -> dict:
    """The same tensors in another file order (pieces of a fused weight are not adjacent or in row order)."""
    items = list(d.items())
    random.Random(seed).shuffle(items)
    return dict(items)


def test_declared_block_linears_are_the_models():
    """The one declared list of a layer's block linears (layouts, read by the loaders, converters and LoRA key map)
    names exactly the model's stored-weight layers, in each layer."""
    from magihuman.models.dit import weight_table
    from magihuman.weights.layouts import EXPERT_LINEARS

    table = weight_table(CFG)
    stored = {k for k, spec in table.items() if spec.stored is not None}
    assert stored == {f"block.layers.{i}.{lin}.weight" for i in range(CFG.num_layers) for lin in EXPERT_LINEARS}
    assert {k for k in table if ck.is_block_linear(k)} == stored


# ------------------------------------------------------------------ each layout loads equal to the official one


@pytest.mark.parametrize("prefix", ["model.diffusion_model.", "diffusion_model.", ""])
def test_comfy_native_loads_bit_equal_in_fp32(official, tmp_path, prefix, caplog):
    path, sd, want = official
    f = tmp_path / "magihuman_distill_comfy.safetensors"
    write_file(f, _shuffled(to_comfy_native(sd, CFG, prefix)))
    with caplog.at_level(logging.INFO, logger="magihuman.checkpoints"):
        m = load(f, storage="fp32")
    assert not _equal(m.state_dict(), want)
    assert m.load_info["layout"] == "ComfyUI-native"
    assert f"{f}: layout: ComfyUI-native, fp32" in caplog.text
    assert caplog.text.count("layout: ") == 1  # said once, on the load line
    assert inspect_dit(f)["config"] == inspect_dit(path)["config"]


def test_comfy_native_without_rope_bands(official, tmp_path):
    """The later ComfyUI port has no bands buffer, so its saves lack adapter.rope.bands: the formula fills it."""
    _, sd, want = official
    f = tmp_path / "comfy_no_bands.safetensors"
    write_file(f, {k: v for k, v in to_comfy_native(sd, CFG).items() if not k.endswith("adapter.rope.bands")})
    m = load(f, storage="fp32")
    assert not _equal(m.state_dict(), want)
    assert any("adapter.rope.bands absent" in n for n in m.load_info["notes"])


@pytest.mark.parametrize("suffix", [".safetensors", ".safetensors.zst", ".pt"])
def test_wan2gp_loads_bit_equal_in_fp32(official, tmp_path, suffix):
    """fp32 (the converter's --dtype keep); .zst streams read forward only; torch pickles with weights_only."""
    _, sd, want = official
    f = tmp_path / f"magi_human_distill{suffix}"
    tensors = _shuffled(to_wan2gp(sd, CFG), seed=1)
    if suffix == ".pt":
        torch.save(tensors, f)
    else:
        write_file(f, tensors)
    m = load(f, storage="fp32", chunk_bytes=4096)
    assert not _equal(m.state_dict(), want)
    assert m.load_info["layout"] == "Wan2GP"


def test_wan2gp_bf16_equals_the_official_names_in_bf16(official, tmp_path):
    """Wan2GP's default converter casts every tensor to bf16 (norms, embedders and RoPE bands too); the same bf16
    tensors under official names (musubi-tuner's base checkpoint) load to the same model, bit for bit."""
    _, sd, _ = official
    bf16 = {k: v.to(torch.bfloat16) for k, v in sd.items()}
    write_file(tmp_path / "official_bf16.safetensors", bf16)
    write_file(tmp_path / "magi_human_distill_bf16.safetensors", to_wan2gp(sd, CFG, torch.bfloat16))
    for storage in ("bf16", "fp32"):
        a = load(tmp_path / "official_bf16.safetensors", storage=storage)
        b = load(tmp_path / "magi_human_distill_bf16.safetensors", storage=storage)
        assert not _equal(b.state_dict(), a.state_dict())
        assert b.load_info["source_dtype"] == "bf16" and b.variant == "distill"


@pytest.fixture(scope="module")
def quanto(official, tmp_path_factory):
    """A Wan2GP quanto int8 file (bf16 + int8 block linears, per-row scales) and the fused weights quanto computes
    with (``scale * data`` in bf16)."""
    _, sd, _ = official
    q, meta = quanto_int8(to_wan2gp(sd, CFG, torch.bfloat16))
    f = tmp_path_factory.mktemp("quanto") / "magi_human_distill_quanto_bf16_int8.safetensors"
    write_file(f, _shuffled(q, seed=2), meta)
    return f, q, fuse_wan2gp(quanto_dequantized(q), CFG)


@pytest.mark.parametrize("storage", ["file", "bf16", "fp32"])
def test_quanto_int8_is_dequantised_exactly_as_quanto_does(quanto, storage):
    f, _, want = quanto
    m = load(f, storage=storage)
    assert not _equal(m.state_dict(), want)  # bf16 products, widened unchanged in fp32
    assert m.load_info["layout"] == "Wan2GP" and m.variant == "distill"
    assert m.load_info["quantization"].startswith("optimum-quanto int8 (56 weights")
    assert m.load_info["source_dtype"] == "bf16"


def test_quanto_int8_into_compact_storage(quanto):
    """Q8_0 / fp8 storage: the dequantised bf16 weight, encoded (the one rounding on top of quanto's)."""
    f, _, want = quanto
    m = load(f, storage="Q8_0")
    lin = m.block.layers[0].attention.linear_qkv
    assert isinstance(lin, BlockLinear) and lin.storage.name == "Q8_0"
    w = want["block.layers.0.attention.linear_qkv.weight"].float()
    assert torch.allclose(lin.decoded_weight(torch.float32), w, atol=w.abs().max().item() / 100)


def test_ggml_row_blocks_of_split_experts_are_kept_as_stored(official, tmp_path):
    """A GGUF whose experts are separate tensors (a ComfyUI-native file run through a GGUF converter): each expert's
    rows are whole Q8_0 blocks, so the fused weight is its pieces' bytes, kept quantised, equal to the fused GGUF."""
    pytest.importorskip("gguf")
    from magihuman.weights.gguf_file import GGUFSpec, write_gguf
    from magihuman.quant.gguf import GGMLType

    path, sd, _ = official
    comfy = to_comfy_native(sd, CFG, "")
    specs = [GGUFSpec(k, tuple(v.shape), int(GGMLType.Q8_0 if v.dim() == 2 and k.startswith("block.") else
                                             GGMLType.F32), (lambda v=v: v)) for k, v in comfy.items()]
    write_gguf(tmp_path / "comfy_split.gguf", specs, arch="magihuman", metadata={})
    fused = convert_dit(path, tmp_path / "fused.gguf", quant="Q8_0", show_progress=False)
    a, b = load(fused), load(tmp_path / "comfy_split.gguf")
    assert b.load_info["kept"] == "16 Q8_0 (as stored)"
    for (ka, la), (kb, lb) in zip(a.named_modules(), b.named_modules()):
        if isinstance(la, BlockLinear):
            assert torch.equal(la.weight, lb.weight), ka
    assert ck.file_storage(ck.open_checkpoint(tmp_path / "comfy_split.gguf")).name == "Q8_0"


def test_comfy_native_scaled_fp8_each_expert_with_its_scale(official, tmp_path):
    """ComfyUI's scaled-fp8 saves of the per-expert layout: every expert has its own scale_weight."""
    _, sd, _ = official
    comfy = to_comfy_native(sd, CFG, "")
    out, deq = {"scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn)}, {}
    for k, v in comfy.items():
        if k.startswith("block.") and v.dim() == 2:
            s = v.abs().amax() / 448
            q = (v / s).to(torch.float8_e4m3fn)
            out[k], out[k[: -len(".weight")] + ".scale_weight"] = q, s.reshape(())
            deq[k] = q.float() * s
        else:
            out[k] = deq[k] = v
    write_file(tmp_path / "comfy_fp8.safetensors", {"model.diffusion_model." + k if k != "scaled_fp8" else k: v
                                                    for k, v in out.items()})
    m = load(tmp_path / "comfy_fp8.safetensors", storage="fp32")
    want = {}
    for k in ck.official_key_shapes(CFG):
        if k in deq:
            want[k] = deq[k]
        else:
            base = k[: -len(".weight")]
            pieces = [deq[f"{base}.experts.{e}.weight"] for e in range(3)] if f"{base}.experts.0.weight" in deq \
                else [deq[f"{base}.linear.weight"]]
            want[k] = torch.cat(pieces)
    assert not _equal(m.state_dict(), want)
    assert m.load_info["layout"] == "ComfyUI-native" and "scaled_fp8" in m.load_info["quantization"]
    # multi-modal layers (0, 3): three experts, three scales: "file" decodes them to its plain dtype, fp8
    # re-quantises the fused tensor; single-expert layers (1, 2): one tensor with its scale, kept fp8 as stored
    kept = load(tmp_path / "comfy_fp8.safetensors")
    assert kept.load_info["kept"] == "8 bf16, 8 fp8 (as stored)"
    assert load(tmp_path / "comfy_fp8.safetensors", storage="fp8").load_info["kept"] == "8 fp8, 8 fp8 (as stored)"
    for i in (1, 2):
        for lin in ("attention.linear_qkv", "attention.linear_proj", "mlp.up_gate_proj", "mlp.down_proj"):
            layer, key = kept.get_submodule(f"block.layers.{i}.{lin}"), f"block.layers.{i}.{lin}.linear"
            assert layer.storage.name == "fp8" and layer.weight_scale.item() == out[key + ".scale_weight"].item()
            assert torch.equal(layer.decoded_weight(torch.float32), deq[key + ".weight"]), key
    assert kept.block.layers[0].attention.linear_qkv.storage.name == "bf16"
    bf16 = load(tmp_path / "comfy_fp8.safetensors", storage="bf16").state_dict()  # scaled in fp32, rounded once
    assert not _equal(bf16, {k: v.to(bf16[k].dtype) for k, v in m.state_dict().items()})


def test_fastvideo_diffusers_folders(official, tmp_path):
    """FastVideo's MagiHuman-Diffusers: official names, diffusers shard names and index, a transformer/ folder under
    the variant's pipeline folder (an SR pipeline has sr_transformer/ too: the user picks one)."""
    _, sd, want = official
    root = tmp_path / "MagiHuman-Diffusers" / "distill"
    tdir = root / "transformer"
    tdir.mkdir(parents=True)
    keys = list(sd)
    shards = {f"diffusion_pytorch_model-0000{i + 1}-of-00002.safetensors": keys[i::2] for i in range(2)}
    for name, ks in shards.items():
        write_file(tdir / name, {k: sd[k] for k in ks})
    weight_map = {k: name for name, ks in shards.items() for k in ks}
    (tdir / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (tdir / "config.json").write_text(json.dumps({"_class_name": "MagiHumanDiT", "num_layers": 4}))
    (root / "model_index.json").write_text(json.dumps({"_class_name": "MagiHumanPipeline"}))
    for given in (root, tdir, tdir / "diffusion_pytorch_model-00001-of-00002.safetensors"):
        m = load(given, storage="fp32")
        assert not _equal(m.state_dict(), want)
        assert m.load_info["layout"] == "official" and m.variant == "distill"
        assert "the name 'distill'" in m.load_info["reason"]
    sr = tmp_path / "MagiHuman-Diffusers" / "sr_540p"
    (sr / "sr_transformer").mkdir(parents=True)
    for name in shards:
        (sr / "sr_transformer" / name).write_bytes((tdir / name).read_bytes())
    (sr / "sr_transformer" / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": weight_map}))
    (sr / "transformer").mkdir()
    (sr / "model_index.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"a diffusers pipeline with two DiTs: give .*transformer \(the "
                                              r"base-stage DiT\) or .*sr_transformer"):
        load(sr)
    assert load(sr / "sr_transformer").variant == "sr_540p"


# ------------------------------------------------------------------ convert


@pytest.mark.parametrize("layout", ["comfy", "wan2gp", "quanto"])
def test_convert_each_layout_to_official_safetensors_and_gguf(official, quanto, tmp_path, layout):
    pytest.importorskip("gguf")
    path, sd, _ = official
    if layout == "quanto":
        src, reference = quanto[0], None
    else:
        src = tmp_path / f"{layout}.safetensors"
        write_file(src, to_comfy_native(sd, CFG) if layout == "comfy" else to_wan2gp(sd, CFG))
        reference = path
    out = convert_dit(src, tmp_path / "official.safetensors", dtype=torch.float32, show_progress=False)
    got = safetensors.torch.load_file(out)
    want = ({k: v.float() for k, v in quanto[2].items()} if reference is None else sd)
    assert not _equal(got, want)
    assert set(got) == set(ck.official_key_shapes(CFG))
    g = convert_dit(src, tmp_path / "official.gguf", quant="Q8_0", show_progress=False)
    ref_g = convert_dit(out, tmp_path / "from_official.gguf", quant="Q8_0", show_progress=False)
    a, b = load(g, storage="fp32").state_dict(), load(ref_g, storage="fp32").state_dict()
    assert not _equal(a, b)


# ------------------------------------------------------------------ pricing


def test_cli_prices_each_layout_as_the_loader_keeps_it(official, quanto, tmp_path):
    from magihuman.cli import _file_format

    _, sd, _ = official
    write_file(tmp_path / "wan_bf16.safetensors", to_wan2gp(sd, CFG, torch.bfloat16))
    write_file(tmp_path / "comfy.safetensors", to_comfy_native(sd, CFG))
    assert _file_format(quanto[0], FILE) == "bf16"  # dequantised while loading: bf16 in memory
    assert _file_format(tmp_path / "wan_bf16.safetensors", FILE) == "bf16"
    assert _file_format(tmp_path / "comfy.safetensors", FILE) == "bf16"  # fp32 file, "file": plain tensors in bf16
    assert _file_format(quanto[0], FILE.keeping(STORAGES["fp16"])) == "fp16"
    src = ck.open_checkpoint(quanto[0])
    used = sum(v.numel() * v.element_size() for k, v in quanto[1].items() if not k.endswith("put_scale"))
    assert src.total_bytes == used  # every weight byte of the file once (int8 data and scales), not the unused scalars
    assert len(src.ignored) == 2 * 56
    assert ck.layout_summary(src) == "Wan2GP, optimum-quanto int8 -> bf16"


# ------------------------------------------------------------------ bad input


def test_two_layouts_in_one_file(official, tmp_path):
    _, sd, _ = official
    mixed = dict(to_comfy_native(sd, CFG, ""))
    mixed["block.layers.1.attention.linear_qkv.weight"] = sd["block.layers.1.attention.linear_qkv.weight"]
    del mixed["block.layers.1.attention.linear_qkv.linear.weight"]
    f = tmp_path / "mixed.safetensors"
    write_file(f, mixed)
    with pytest.raises(CheckpointError, match=rf"^{f} mixes two DiT layouts: official \(e\.g\. 'block\.layers\.1\."
                                              r"attention\.linear_qkv\.weight'\), ComfyUI-native"):
        load(f)
    wan = to_wan2gp(sd, CFG)
    wan["block.layers.0.attention.linear_proj.weight"] = sd["block.layers.0.attention.linear_proj.weight"]
    write_file(f, wan)
    with pytest.raises(CheckpointError, match=r"layer 0 holds attention\.linear_proj both per expert \('block\.layers\."
                                              r"0\.attention\.linear_proj_video\.weight'\) and as one"):
        load(f)


def test_missing_experts(official, tmp_path):
    _, sd, _ = official
    comfy = to_comfy_native(sd, CFG)
    del comfy["model.diffusion_model.block.layers.3.mlp.up_gate_proj.experts.2.weight"]
    f = tmp_path / "no_text_expert.safetensors"
    write_file(f, comfy)
    with pytest.raises(CheckpointError, match=rf"^{f}: ComfyUI-native layout, layer 3: mlp\.up_gate_proj is incomplete "
                                              r"\(expert\(s\) text\): missing block\.layers\.3\.mlp\.up_gate_proj\."
                                              r"experts\.2\.weight"):
        load(f)
    wan = to_wan2gp(sd, CFG)
    del wan["block.layers.0.attention.linear_v_audio.weight"], wan["block.layers.2.attention.linear_g.weight"]
    write_file(f, wan)
    with pytest.raises(CheckpointError, match=r"Wan2GP layout, layer 0: attention\.linear_qkv is incomplete "
                                              r"\(expert\(s\) audio\): missing block\.layers\.0\.attention\."
                                              r"linear_v_audio\.weight"):
        load(f)


def test_quanto_without_scales(quanto, tmp_path):
    f, q, _ = quanto
    broken = {k: v for k, v in q.items() if k != "block.layers.2.mlp.down_proj.weight._scale"}
    bad = tmp_path / "quanto_no_scale.safetensors"
    write_file(bad, broken)
    with pytest.raises(CheckpointError, match=rf"^{bad}: 1 quanto weight\(s\) have int8 data but no scale \(first: "
                                              r"block\.layers\.2\.mlp\.down_proj\.weight\._scale missing\)"):
        load(bad)
    no_scales = {k: v for k, v in q.items() if not k.endswith("._scale")}
    write_file(bad, no_scales)
    with pytest.raises(CheckpointError, match=r"56 quanto weight\(s\) have int8 data but no scale"):
        load(bad)
    int4 = dict(q)
    int4["block.layers.0.attention.linear_q_video.weight._shift"] = torch.zeros(1)
    write_file(bad, int4)
    with pytest.raises(CheckpointError, match=r"quanto type with zero points or groups \(int4/int2\)"):
        load(bad)


class _Packed:  # a custom class in a pickle: weights_only refuses it before anything runs
    def __init__(self):
        self.qweight = torch.zeros(2, 2, dtype=torch.int8)


def test_undocumented_int8_pt_files_say_what_they_are(official, tmp_path):
    """RunningHub's INT8 .pt layout is not published: whatever it holds, the message says what the file is."""
    _, sd, _ = official
    named = {}
    for k, v in sd.items():  # official names, int8 block linears with per-row scales under a name of its own
        if ck.is_block_linear(k):
            s = v.abs().amax(dim=1) / 127
            named[k], named[k[: -len(".weight")] + ".weight_scale"] = (v / s[:, None]).round().to(torch.int8), s
        else:
            named[k] = v.to(torch.bfloat16)
    f = tmp_path / "base_int8.pt"
    torch.save(named, f)
    with pytest.raises(CheckpointError) as e:
        load(f)
    msg = str(e.value)
    assert msg.startswith(f"{f}: 16 tensor(s) are int8 with no scale layout this loader knows (first: block.layers.0.")
    assert "a torch pickle holding 59 tensors (bfloat16: 27, int8: 16, float32: 16)" in msg and "RunningHub" in msg
    other = {f"diffusion_model.blocks.{i}.qkv.qweight": torch.zeros(4, 4, dtype=torch.int8) for i in range(3)}
    torch.save(other, f)
    with pytest.raises(CheckpointError, match=r"The file is a torch pickle holding 3 tensors \(int8: 3\) named like "
                                              r"diffusion_model\.blocks\.0\.qkv\.qweight.*RunningHub"):
        load(f)
    torch.save({"model": _Packed()}, f)
    with pytest.raises(CheckpointError, match=r"refused to load this pickle for safety.*RunningHub"):
        load(f)


def _int8(v: torch.Tensor) -> torch.Tensor:
    """A weight's values rounded to int8 with its scale dropped (what an undocumented int8 repack keeps)."""
    return (v / (v.abs().amax(dim=1, keepdim=True) / 127)).round().to(torch.int8)


@pytest.mark.parametrize("names", ["official", "comfy"])
def test_int8_without_scales_is_refused_in_every_layout(official, tmp_path, names):
    """Raw int8 block linears are refused whatever the names: split per expert (ComfyUI-native) they are no derived
    tensor that slips past the check, and one int8 expert among bf16 ones is not concatenated to float32."""
    _, sd, _ = official
    int8 = {k: _int8(v) if ck.is_block_linear(k) else v for k, v in sd.items()}
    if names == "comfy":
        int8 = to_comfy_native(int8, CFG, "")
    f = tmp_path / f"{names}_int8.safetensors"
    write_file(f, int8)
    n = 16 if names == "official" else 2 * 4 * 3 + 2 * 4  # mm layers 0 and 3: three experts; 1 and 2: one piece
    first = "block.layers.0.attention.linear_qkv" + (".experts.0" if names == "comfy" else "") + ".weight"
    with pytest.raises(CheckpointError) as e:
        load(f)
    msg = str(e.value)
    assert msg.startswith(f"{f}: {n} tensor(s) are int8 with no scale layout this loader knows (first: {first}, ")
    assert f"a safetensors file holding {len(int8)} tensors (" in msg and "RunningHub" in msg
    with pytest.raises(CheckpointError, match=r"are int8 with no scale layout this loader knows"):
        ck.open_checkpoint(f)  # inspect, convert and the estimators refuse it too
    mixed = to_comfy_native(sd, CFG, "")
    bad = "block.layers.3.mlp.down_proj.experts.1.weight"
    mixed[bad] = _int8(mixed[bad])
    write_file(f, mixed)
    with pytest.raises(CheckpointError, match=rf"^{f}: 1 tensor\(s\) are int8 with no scale layout this loader "
                                              rf"knows \(first: {re.escape(bad)}\)"):
        load(f)


# ------------------------------------------------------------------ quanto rows in chunks


def test_quanto_rows_are_dequantised_in_chunks(quanto, monkeypatch):
    """The float32 temporary of the int8 x scale product is bounded by a row chunk (benchmarks/bench_layouts.py
    measures time and memory); chunk boundaries change no value."""
    from magihuman.weights import source

    f, _, want = quanto
    monkeypatch.setattr(source, "_ROW_SCALE_CHUNK", 1000)  # < 8 rows of 128 columns per chunk
    assert not _equal(load(f, storage="fp32").state_dict(), want)


# ------------------------------------------------------------------ the published T5Gemma GGUF's layout


def _t5_config() -> dict:
    """A small T5Gemma config whose every projection row is whole Q6_K blocks (256 columns)."""
    from magihuman.models.text_encoder import tiny_hf_config

    cfg = tiny_hf_config()
    module = dict(cfg["encoder"], hidden_size=256, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=128, query_pre_attn_scalar=128,
                  layer_types=["sliding_attention", "full_attention"])
    return dict(cfg, encoder=module, decoder=dict(module))


def _write_hf_named_gguf(path: Path, config: dict, prefix: str, qtype: str) -> dict[str, torch.Tensor]:
    """A GGUF the way the published t5gemma-9b-9b-ul2-Q6_K.gguf is made (gguf-py, Hugging Face tensor names, no config
    or tokenizer inside, embedding and norms F32, a decoder tensor to ignore); returns the encoder weights the file
    holds, decoded by gguf's own numpy code (the independent reference)."""
    import numpy as np
    gguf = pytest.importorskip("gguf")

    from magihuman.models.text_encoder import T5GemmaEncoder, T5GemmaEncoderConfig

    shapes = {k: tuple(v.shape) for k, v in
              T5GemmaEncoder(T5GemmaEncoderConfig.from_hf(config), device="meta").state_dict().items()}
    g = np.random.default_rng(5)
    w = gguf.GGUFWriter(str(path), "t5gemma")
    want = {}
    qt = gguf.GGMLQuantizationType[qtype]
    block, size = gguf.GGML_QUANT_SIZES[qt]
    for key, shape in shapes.items():
        if len(shape) == 2 and "embed_tokens" not in key:
            if qt == gguf.GGMLQuantizationType.Q6_K:  # no Q6_K quantiser in gguf-py: valid random blocks
                raw = g.integers(0, 256, size=(shape[0], shape[1] // block * size), dtype=np.uint8)
                d = raw.reshape(shape[0], -1, size)
                d[..., -2:] = np.frombuffer(np.float16(2.0 ** -12).tobytes(), np.uint8)  # finite block scales
            else:
                raw = gguf.quants.quantize(g.standard_normal(shape).astype(np.float32) * 0.05, qt)
            w.add_tensor(prefix + key, raw, raw_dtype=qt)
            want[key] = torch.from_numpy(gguf.quants.dequantize(raw, qt).copy())
        else:
            t = (g.standard_normal(shape) * 0.05).astype(np.float32)
            w.add_tensor(prefix + key, t)
            want[key] = torch.from_numpy(t)
    w.add_tensor(prefix.replace("encoder", "decoder") + "decoder.norm.weight" if prefix else "decoder.norm.weight",
                 np.ones(256, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return want


def _encoder_weights(model) -> dict[str, torch.Tensor]:
    out = {}
    for name, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            key = f"{name}.{pname}" if name else pname
            out[key] = mod.decoded_weight(torch.float32) if hasattr(mod, "decoded_weight") and pname == "weight" \
                else p.detach().float()
    return out


@pytest.mark.parametrize("prefix, qtype", [("", "Q6_K"), ("model.", "Q8_0")])
def test_t5gemma_gguf_with_hugging_face_names(tmp_path, prefix, qtype):
    """The published encoder GGUF: HF names (``encoder.*``, ``model.`` optional), Q6_K projections, no config inside.
    Beside its config.json and tokenizer (a folder of models/text_encoders), or with config= naming that folder;
    weights equal gguf's own dequantisation, kept as stored with storage "file"."""
    from magihuman.models.text_encoder import T5GemmaEncoder
    from magihuman.tokenizer import write_tiny_tokenizer

    config = _t5_config()
    folder = tmp_path / "t5gemma-9b-9b-ul2"
    folder.mkdir()
    want = _write_hf_named_gguf(folder / f"t5gemma-9b-9b-ul2-{qtype}.gguf", config, prefix, qtype)
    (folder / "config.json").write_text(json.dumps(config))
    write_tiny_tokenizer(folder)
    for given in (folder, folder / f"t5gemma-9b-9b-ul2-{qtype}.gguf"):
        m = T5GemmaEncoder.from_pretrained(given, storage="fp32")
        got = _encoder_weights(m)
        assert set(got) == set(want) and not [k for k in want if not torch.equal(got[k], want[k])]
        assert m.tokenizer is not None
    kept = T5GemmaEncoder.from_pretrained(folder, storage="file")
    lin = kept.encoder.layers[0].self_attn.q_proj
    assert lin.storage.name == qtype and torch.equal(lin.decoded_weight(torch.float32),
                                                     want["encoder.layers.0.self_attn.q_proj.weight"])
    alone = tmp_path / "alone"
    alone.mkdir()
    (folder / f"t5gemma-9b-9b-ul2-{qtype}.gguf").rename(alone / "te.gguf")
    with pytest.raises(CheckpointError, match=r"te\.gguf carries no T5Gemma config .* put the config\.json and "
                                              r"tokenizer\.json of google/t5gemma-9b-9b-ul2 next to it"):
        T5GemmaEncoder.from_pretrained(alone / "te.gguf")
    given = T5GemmaEncoder.from_pretrained(alone / "te.gguf", storage="fp32", config=folder)  # config + tokenizer
    assert not [k for k, v in _encoder_weights(given).items() if not torch.equal(v, want[k])]
    assert given.tokenizer.encode("a man smiles") == m.tokenizer.encode("a man smiles")
    with pytest.raises(CheckpointError, match=r"config='nowhere': no T5Gemma config\.json there"):
        T5GemmaEncoder.from_pretrained(alone / "te.gguf", config="nowhere")


def test_wan2gp_quanto_text_encoder(tmp_path):
    """Wan2GP's t5gemma ..._quanto_bf16_int8.safetensors: 'encoder.*' names, the layers' projections quanto int8 with
    per-row scales, the embedding and norms bf16; config.json and tokenizer beside it."""
    from magihuman.models.text_encoder import T5GemmaEncoder, tiny_hf_config, tiny_state_dict
    from magihuman.tokenizer import write_tiny_tokenizer

    sd = {k: v.to(torch.bfloat16) for k, v in tiny_state_dict(seed=3).items()}
    q, meta = quanto_int8({k.replace("encoder.layers.", "block.layers."): v for k, v in sd.items()})
    q = {k.replace("block.layers.", "encoder.layers."): v for k, v in q.items()}  # quantise the layers' matrices
    write_file(tmp_path / "t5gemma-9b-9b-ul2_quanto_bf16_int8.safetensors", q, meta)
    (tmp_path / "config.json").write_text(json.dumps(tiny_hf_config()))
    write_tiny_tokenizer(tmp_path)
    m = T5GemmaEncoder.from_pretrained(tmp_path / "t5gemma-9b-9b-ul2_quanto_bf16_int8.safetensors", storage="fp32")
    want = quanto_dequantized(q)
    got = _encoder_weights(m)
    assert set(got) == set(want) and not [k for k in want if not torch.equal(got[k], want[k].float())]
    assert sum(k.endswith("._data") for k in q) == 7 * 4  # q/k/v/o, gate/up/down in each of the 4 layers


def test_cli_convert_takes_other_layouts_and_dit_pickles(official, tmp_path, capsys):
    from magihuman import cli

    _, sd, want = official
    torch.save(to_wan2gp(sd, CFG), tmp_path / "magi_human_distill.pt")
    out = tmp_path / "official.safetensors"
    assert cli.main(["convert", str(tmp_path / "magi_human_distill.pt"), str(out), "--dtype", "fp32"]) == 0
    assert not _equal(load(out, storage="fp32").state_dict(), want)
    int8 = {k: (v * 100).to(torch.int8) if ck.is_block_linear(k) else v for k, v in sd.items()}
    torch.save(int8, tmp_path / "base_int8.pt")
    assert cli.main(["convert", str(tmp_path / "base_int8.pt"), str(tmp_path / "x.safetensors")]) != 0
    assert "int8 with no scale layout this loader knows" in capsys.readouterr().err


def test_t5gemma_int8_without_scales_is_refused(tmp_path):
    """int8 projections without a scale scheme the loader knows are no weights: refused like the DiT's, naming the
    file and the keys (their values read as floats would be an encoder that encodes noise)."""
    from magihuman.models.text_encoder import T5GemmaEncoder, tiny_hf_config, tiny_state_dict
    from magihuman.tokenizer import write_tiny_tokenizer

    sd = {k: _int8(v) if k.startswith("encoder.layers.") and v.dim() == 2 else v.to(torch.bfloat16)
          for k, v in tiny_state_dict(seed=3).items()}
    f = tmp_path / "t5gemma_int8.safetensors"
    write_file(f, sd)
    (tmp_path / "config.json").write_text(json.dumps(tiny_hf_config()))
    write_tiny_tokenizer(tmp_path)
    with pytest.raises(CheckpointError) as e:
        T5GemmaEncoder.from_pretrained(f)
    assert str(e.value).startswith(f"{f}: 28 tensor(s) are int8 with no scale layout this loader knows (first: "
                                   "encoder.layers.0.")
