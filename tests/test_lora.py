"""LoRA: every file format and fused-layout target gives exactly the merged-weights model (fp32), on plain,
fp8 and GGUF storage; strength 0 and removal leave the exact weights; bad files are clear errors; the nodes."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from magihuman.errors import CheckpointError
from magihuman.storage import BlockLinear

import magihuman
from magihuman.checkpoints import convert_dit, load_dit, write_tiny_dit
from magihuman.lora import LoraError, apply_lora, remove_lora
from magihuman.models.dit import DiTConfig, MagiHumanDiT
from magihuman.weights.safetensors_io import write_file

CFG = DiTConfig.preset("tiny")  # hidden 128, head_dim 32: 4 query heads, 2 kv heads, gating; mm layers 0 and 3
H, D, HQ, HKV = CFG.hidden_size, CFG.head_dim, CFG.num_heads_q, CFG.num_heads_kv
QKV = CFG.qkv_out_features  # per expert: q 128 | k 64 | v 64 | gate 4
R = 3


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _pair(out_f, in_f, seed, rank=R):
    return torch.randn(out_f, rank, generator=_g(seed)) * 0.05, torch.randn(rank, in_f, generator=_g(seed + 1)) * 0.05


def _inputs():
    g = _g(7)
    return torch.randn(2, 48, 2, 4, 4, generator=g), torch.randn(2, 5, 64, generator=g), \
        torch.randn(2, 4, 64, generator=g), [4, 2]


def _run(model):
    model.set_compute_dtype(torch.float32)
    with torch.no_grad():
        return model(*_inputs())


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def hand_made_lora(strength_alpha=6.0):
    """(file tensors in several formats, the merged deltas computed independently: param -> [(rows, delta)])."""
    t, deltas = {}, {}

    def add(param, rows, up, down, alpha):
        scale = 1.0 if alpha is None else alpha / down.shape[0]
        deltas.setdefault(param, []).append((rows, scale, up @ down))

    # PEFT with alpha, ComfyUI prefix: a whole shared linear
    up, down = _pair(H, H, 1)
    t["diffusion_model.block.layers.1.attention.linear_proj.lora_A.weight"] = down
    t["diffusion_model.block.layers.1.attention.linear_proj.lora_B.weight"] = up
    t["diffusion_model.block.layers.1.attention.linear_proj.alpha"] = torch.tensor(strength_alpha)
    add("block.layers.1.attention.linear_proj.weight", [(0, H)], up, down, strength_alpha)
    # kohya underscore names with alpha: a swiglu up_gate_proj
    inner2 = 2 * CFG.swiglu_intermediate_size
    up, down = _pair(inner2, H, 3)
    t["lora_unet_block_layers_2_mlp_up_gate_proj.lora_down.weight"] = down
    t["lora_unet_block_layers_2_mlp_up_gate_proj.lora_up.weight"] = up
    t["lora_unet_block_layers_2_mlp_up_gate_proj.alpha"] = torch.tensor(2.0)
    add("block.layers.2.mlp.up_gate_proj.weight", [(0, inner2)], up, down, 2.0)
    # a LoRA trained on a separate k projection (no alpha): the k rows of the fused linear_qkv
    up, down = _pair(HKV * D, H, 5)
    t["block.layers.2.attention.linear_k.lora_A.weight"] = down
    t["block.layers.2.attention.linear_k.lora_B.weight"] = up
    add("block.layers.2.attention.linear_qkv.weight", [(HQ * D, HKV * D)], up, down, None)
    # one expert (audio) of a multi-modal fused qkv
    up, down = _pair(QKV, H, 9)
    t["diffusion_model.block.layers.0.attention.linear_qkv.audio.lora_down.weight"] = down
    t["diffusion_model.block.layers.0.attention.linear_qkv.audio.lora_up.weight"] = up
    add("block.layers.0.attention.linear_qkv.weight", [(QKV, QKV)], up, down, None)
    # the gate rows of the text expert (split + modality)
    up, down = _pair(HQ, H, 21)
    t["block.layers.3.attention.linear_gate.text.lora_A.weight"] = down
    t["block.layers.3.attention.linear_gate.text.lora_B.weight"] = up
    add("block.layers.3.attention.linear_qkv.weight", [(2 * QKV + (HQ + 2 * HKV) * D, HQ)], up, down, None)
    # one expert's width on an expert module: every expert takes it
    inner = CFG.swiglu_intermediate_size
    up, down = _pair(H, inner, 11)
    t["block.layers.3.mlp.down_proj.lora_A.weight"] = down
    t["block.layers.3.mlp.down_proj.lora_B.weight"] = up
    add("block.layers.3.mlp.down_proj.weight", [(0, H), (H, H), (2 * H, H)], up, down, None)
    # full-weight diffs on small tensors
    for key, shape, seed in (("final_norm_video", (H,), 13), ("block.layers.0.mlp.pre_norm", (3 * H,), 14)):
        d = torch.randn(shape, generator=_g(seed)) * 0.01
        t[f"diffusion_model.{key}.diff"] = d
        deltas.setdefault(f"{key}.weight", []).append(([(0, shape[0])], 1.0, d))
    b = torch.randn(H, generator=_g(15)) * 0.01
    t["adapter.video_embedder.diff_b"] = b
    deltas.setdefault("adapter.video_embedder.bias", []).append(([(0, H)], 1.0, b))
    return t, deltas


def merged_model(base: MagiHumanDiT, deltas, strength: float) -> MagiHumanDiT:
    sd = {k: v.clone() for k, v in base.state_dict().items()}
    for param, items in deltas.items():
        for rows, scale, product in items:  # ComfyUI's LoRA formula: weight += (strength * alpha / rank) * up @ down
            for offset, length in rows:
                sd[param][offset:offset + length] += (strength * scale) * product
    m = MagiHumanDiT(CFG, dtype=torch.float32)
    m.load_state_dict(sd, strict=True)
    return m


@pytest.fixture
def base():
    m = MagiHumanDiT(CFG, dtype=torch.float32)
    m.init_random_(3, std=0.05)
    return m


@pytest.fixture
def lora_file(tmp_path):
    tensors, deltas = hand_made_lora()
    path = tmp_path / "hand_made.safetensors"
    write_file(path, tensors)
    return path, deltas


@pytest.mark.parametrize("strength", [1.0, 0.6, -1.5])
def test_every_format_and_target_equals_the_merged_model(base, lora_file, strength):
    path, deltas = lora_file
    expected = _run(merged_model(base, deltas, strength))
    handle = magihuman.apply_lora(base, path, strength)  # the package-level entry point (public API)
    assert handle.file.matched == 9  # 6 LoRA modules + 3 diff tensors
    assert _same(_run(base), expected)


def test_strength_zero_and_removal_are_exact(base, lora_file):
    path, _ = lora_file
    before = {k: v.clone() for k, v in base.state_dict().items()}
    ref = _run(base)
    h0 = apply_lora(base, path, 0.0)
    assert _same(_run(base), ref)
    remove_lora(base, h0)
    h1 = apply_lora(base, path, 1.0)
    h2 = apply_lora(base, path, 0.5)  # stacking
    assert not _same(_run(base), ref)
    remove_lora(base, h2)
    remove_lora(base, h1)
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())
    assert all(not getattr(m, "weight_patches", None) for m in base.modules())
    assert _same(_run(base), ref)


@pytest.mark.parametrize("storage", ["fp8", "Q8_0", "Q4_0"])
def test_compact_storage_takes_the_lora_after_decoding(tmp_path, lora_file, storage):
    """dequantize -> patch -> use, per layer: equals the model whose plain fp32 weights are the decoded ones,
    merged with the deltas."""
    path, deltas = lora_file
    folder = write_tiny_dit(tmp_path / "magihuman_distill", seed=2)
    if storage == "fp8":
        compact = load_dit(folder, dtype=torch.float8_e4m3fn, show_progress=False)
    else:
        compact = load_dit(convert_dit(folder, tmp_path / f"d_{storage}.gguf", quant=storage, show_progress=False),
                           show_progress=False)
    decoded = MagiHumanDiT(CFG, dtype=torch.float32)  # plain weights = exactly what the weight path decodes
    sd = {}
    for name, mod in compact.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            key = f"{name}.{pname}" if name else pname
            if pname == "weight" and isinstance(mod, BlockLinear):
                sd[key] = mod.decoded_weight(torch.float32)
            else:
                sd[key] = p.detach().float()
    sd["adapter.rope.bands"] = compact.adapter.rope.bands
    decoded.load_state_dict(sd, strict=True)
    expected = _run(merged_model(decoded, deltas, 0.8))
    apply_lora(compact, path, 0.8)
    assert compact.block.layers[1].attention.linear_proj.weight.dtype in (torch.float8_e4m3fn, torch.uint8)
    assert _same(_run(compact), expected)


def test_foreign_and_broken_loras_are_clear_errors(base, tmp_path, caplog):
    sdxl = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(320, 4),
            "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha": torch.tensor(4.0)}
    wan = {"diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(4, 64),
           "diffusion_model.blocks.0.self_attn.q.lora_B.weight": torch.zeros(64, 4)}
    for name, tensors in (("sdxl", sdxl), ("wan", wan)):
        write_file(tmp_path / f"{name}.safetensors", tensors)
        with pytest.raises(LoraError, match=r"(?s)match no part of this MagiHuman DiT \(0 matched\).*another model"):
            apply_lora(base, tmp_path / f"{name}.safetensors")
    good, _ = hand_made_lora()
    mixed = dict(good, **wan)
    write_file(tmp_path / "mixed.safetensors", mixed)
    with pytest.raises(LoraError, match=r"1 LoRA key\(s\) match no part .*\(9 matched\): blocks\.0\.self_attn\.q"):
        apply_lora(base, tmp_path / "mixed.safetensors")
    bad_rank = dict(good)
    bad_rank["block.layers.2.attention.linear_k.lora_B.weight"] = torch.zeros(HKV * D, R + 1)
    write_file(tmp_path / "rank.safetensors", bad_rank)
    with pytest.raises(LoraError, match=r"linear_k.*rank mismatch"):
        apply_lora(base, tmp_path / "rank.safetensors")
    nan = dict(good)
    nan["diffusion_model.final_norm_video.diff"] = torch.full((H,), math.nan)
    write_file(tmp_path / "nan.safetensors", nan)
    with pytest.raises(LoraError, match=r"final_norm_video\.diff.*NaN/Inf"):
        apply_lora(base, tmp_path / "nan.safetensors")
    other_size = {"block.layers.1.attention.linear_proj.lora_A.weight": torch.zeros(R, 2 * H),
                  "block.layers.1.attention.linear_proj.lora_B.weight": torch.zeros(H, R)}
    write_file(tmp_path / "size.safetensors", other_size)
    with pytest.raises(LoraError, match=r"another model size"):
        apply_lora(base, tmp_path / "size.safetensors")
    data = (tmp_path / "rank.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors.*truncated"):
        apply_lora(base, tmp_path / "cut.safetensors")
    assert all(not getattr(m, "weight_patches", None) for m in base.modules())  # nothing applied half-way
    # an SR LoRA (by its metadata) on a base model: applied, with a warning
    write_file(tmp_path / "sr.safetensors", good, {"magihuman_lora_base": "sr_540p",
                                                   "magihuman_lora_target": "sr_540p_tuned"})
    base.variant = "base"
    with caplog.at_level(logging.WARNING):
        apply_lora(base, tmp_path / "sr.safetensors")
    assert "extracted against the sr_540p DiT" in caplog.text and "applied to a base DiT" in caplog.text


class _Pickled:  # a custom class in a pickle: torch.load(weights_only=True) refuses it before anything runs
    pass


def test_unreadable_lora_files_are_lora_errors(base, tmp_path):
    """A LoRA file that cannot be opened (missing, not a weights file, a corrupt header, a pickle weights_only
    refuses, a truncated file) is a LoraError naming the file, as every other bad LoRA is."""
    good, _ = hand_made_lora()
    write_file(tmp_path / "good.safetensors", good)
    data = (tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "header.safetensors").write_bytes(data[:8] + b"{not json" + data[17:])
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.txt").write_text("not weights")
    torch.save({"lora": _Pickled()}, tmp_path / "code.pt")
    for name, says in (("missing.safetensors", "does not exist"), ("notes.txt", "is not a weights file"),
                       ("header.safetensors", "header"), ("cut.safetensors", "truncated"),
                       ("code.pt", "refused to load this pickle for safety")):
        with pytest.raises(LoraError, match=rf"^{tmp_path / name}\b.*{says}"):
            apply_lora(base, tmp_path / name)
    assert all(not getattr(m, "weight_patches", None) for m in base.modules())


def test_lora_loader_nodes_chain_and_leave_the_input_alone(node_pack, tiny_dir, tmp_path):
    loras = tmp_path / "models"
    import shutil

    shutil.copytree(tiny_dir, loras)
    tensors, deltas = hand_made_lora()
    (loras / "loras").mkdir(exist_ok=True)
    write_file(loras / "loras" / "hand_made.safetensors", tensors)
    env = node_pack(loras)
    try:
        (dit,) = env.run("MagiHumanDiTLoader", model_name="magihuman_tiny_distill/", weight_dtype="fp32",
                         compute_dtype="fp32")
        ref = _run(dit.use())
        before = {k: v.clone() for k, v in dit.model.state_dict().items()}
        (one,) = env.run("MagiHumanLoraLoader", model=dit, lora_name="hand_made.safetensors", strength=1.0)
        (two,) = env.run("MagiHumanLoraLoader", model=one, lora_name="hand_made.safetensors", strength=-0.5)
        (zero,) = env.run("MagiHumanLoraLoader", model=dit, lora_name="hand_made.safetensors", strength=0.0)
        assert zero is dit and len(two.loras) == 2 and len(one.loras) == 1 and not dit.loras
        out_two = _run(two.use())
        base_copy = MagiHumanDiT(CFG, dtype=torch.float32)
        base_copy.load_state_dict(before, strict=True)
        assert _same(out_two, _run(merged_model(merged_model(base_copy, deltas, 1.0), deltas, -0.5)))
        assert _same(_run(dit.use()), ref)  # the input handle still means the model without LoRA
        with pytest.raises(ValueError, match="lora_name must be one of"):
            env.run("MagiHumanLoraLoader", model=dit, lora_name="missing.safetensors")
        (sr,) = env.run("MagiHumanSRDiTLoader", model_name="magihuman_tiny_540p_sr/", weight_dtype="fp32")
        (sr_l,) = env.run("MagiHumanSRLoraLoader", sr_model=sr, lora_name="hand_made.safetensors", strength=1.0)
        assert len(sr_l.loras) == 1
    finally:
        env.close()


def test_tiny_lora_file_targets_every_layer_and_equals_its_merge(tmp_path):
    """The tiny LoRA written with the tiny models (tiny LoRA workflow): PEFT with alpha, q rows of the fused qkv
    of every expert + the whole down_proj of every layer; the patched model equals a hand merge of the file."""
    from magihuman.tiny import write_tiny_lora
    from safetensors.torch import load_file

    path = write_tiny_lora(tmp_path / "tiny_lora.safetensors")
    t = load_file(str(path))
    m = MagiHumanDiT(CFG, dtype=torch.float32)
    m.init_random_(5, std=0.05)
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    per = QKV
    for i in range(CFG.num_layers):
        experts = 3 if i in CFG.mm_layers else 1
        pre = f"diffusion_model.block.layers.{i}."
        q = t[pre + "attention.linear_q.lora_B.weight"] @ t[pre + "attention.linear_q.lora_A.weight"]
        assert q.shape == (HQ * D, H) and float(t[pre + "attention.linear_q.alpha"]) == 4.0
        for e in range(experts):  # a LoRA for linear_q of a multi-expert layer moves every expert's q rows
            sd[f"block.layers.{i}.attention.linear_qkv.weight"][e * per:e * per + HQ * D] += q
        down = t[pre + "mlp.down_proj.lora_B.weight"] @ t[pre + "mlp.down_proj.lora_A.weight"]
        sd[f"block.layers.{i}.mlp.down_proj.weight"] += down
    merged = MagiHumanDiT(CFG, dtype=torch.float32)
    merged.load_state_dict(sd, strict=True)
    expected = _run(merged)
    plain = _run(m)
    handle = apply_lora(m, path, 1.0)
    assert handle.file.matched == 2 * CFG.num_layers
    out = _run(m)
    for a, b, p in zip(out, expected, plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        assert (a - p).abs().max() > 1e-3  # visibly changes the output at strength 1


def test_distill_lora_on_base_samples_as_the_distilled_model(tmp_path, caplog):
    """The tiny 'distilled via LoRA' files (extract-lora from the tiny base to the tiny distill): base + LoRA is
    closer to the distilled model than the base is, samples as 'distill' (auto sampler, no base warning) and
    goes back to 'base' when removed; strength 0 or a LoRA made from another variant leaves the variant alone."""
    from magihuman import pipeline as P
    from magihuman.lora import variant_with_loras
    from magihuman.presets import TINY_FILES
    from magihuman.tiny import TINY_DISTILL_LORA, write_tiny_models

    write_tiny_models(tmp_path)
    base = load_dit(tmp_path / TINY_FILES["base"], dtype=torch.float32, show_progress=False)
    distill = load_dit(tmp_path / TINY_FILES["distill"], dtype=torch.float32, show_progress=False)
    assert (base.variant, distill.variant) == ("base", "distill")
    target, plain = _run(distill), _run(base)
    h = apply_lora(base, tmp_path / TINY_DISTILL_LORA)
    assert h.file.metadata["magihuman_lora_base"] == "base" and h.file.metadata["magihuman_lora_target"] == "distill"
    got = _run(base)
    for g, p, t in zip(got, plain, target):
        assert float((g - t).norm()) < 0.8 * float((p - t).norm())  # rank 16 of 128: most of the way
    assert P.effective_variant(base) == "distill"
    lat = P.empty_latents(64, 64, 0.2)
    cond = P.TextConditioning(torch.randn(1, 4, CFG.text_in_channels), [4])
    with caplog.at_level(logging.WARNING, logger="magihuman.pipeline"):
        P.denoise(base, lat, cond, sampler="auto", steps=1, seed=0)  # auto -> distilled, no "meant for" warning
    assert not [r for r in caplog.records if "meant for" in r.getMessage()]
    remove_lora(base, h)
    assert P.effective_variant(base) == "base"
    f = h.file
    assert variant_with_loras("base", [(f, 0.0)]) == "base" and variant_with_loras("sr_540p", [(f, 1.0)]) == "sr_540p"
    assert variant_with_loras("base", [(f, 0.5)]) == "distill"


def test_loras_come_off_in_reverse_order(base, lora_file, tmp_path):
    """Removing a LoRA under a later one would restore small tensors from before the later one: refused; in
    reverse order (or all at once) the weights come back bit for bit."""
    path, _ = lora_file
    before = {k: v.clone() for k, v in base.state_dict().items()}
    h1 = apply_lora(base, path, 1.0)
    h2 = apply_lora(base, path, 0.5)
    with pytest.raises(LoraError, match="reverse order"):
        remove_lora(base, h1)
    remove_lora(base, h2)
    remove_lora(base, h1)
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
