"""LoRA files of other tools on the official fused model: musubi-tuner's MagiHuman LoRAs (one LoRA shared by the three
experts), Wan2GP's split schema (q/k/v/g and per-modality names; a lora_up holding three experts' rows), ComfyUI-native
names, FastVideo's diffusers-style names, and DoRA magnitudes; each equals the weights merged by hand."""

from __future__ import annotations

import pytest
import torch

from magihuman.checkpoints import load_dit, write_tiny_dit
from magihuman.lora import LoraError, apply_lora, load_lora, remove_lora
from magihuman.models.dit import DiTConfig
from magihuman.storage import BlockLinear
from magihuman.weights.safetensors_io import write_file

CFG = DiTConfig.preset("tiny")  # hidden 128; mm layers 0 and 3; qkv per expert: q 128 | k 64 | v 64 | g 4
H, QKV, R = CFG.hidden_size, CFG.qkv_out_features, 4
Q, KV, G = CFG.num_heads_q * CFG.head_dim, CFG.num_heads_kv * CFG.head_dim, CFG.num_heads_q
OFF = {"q": 0, "k": Q, "v": Q + KV, "g": Q + 2 * KV}
SIZE = {"q": Q, "k": KV, "v": KV, "g": G}
MODS = ("video", "audio", "text")
SWIGLU = CFG.swiglu_intermediate_size  # 340: up_gate 680 rows, down_proj 340 columns in swiglu layers


def _pair(out_f, in_f, seed, rank=R, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return ((torch.randn(out_f, rank, generator=g) * 0.05).to(dtype),
            (torch.randn(rank, in_f, generator=g) * 0.05).to(dtype))


@pytest.fixture(scope="module")
def dit_file(tmp_path_factory):
    return write_tiny_dit(tmp_path_factory.mktemp("dit") / "magihuman_distill.safetensors", layout="file", seed=6)


def _model(path):
    return load_dit(path, storage="fp32", show_progress=False)


def effective(model) -> dict[str, torch.Tensor]:
    """Every parameter as the model computes with it (block linears decoded with their LoRA patches added)."""
    out = {}
    for name, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            key = f"{name}.{pname}" if name else pname
            out[key] = mod.decoded_weight(torch.float32) if isinstance(mod, BlockLinear) and pname == "weight" \
                else p.detach().float().clone()
    return out


class Hand:
    """The LoRA file being written and the deltas merged by hand: param -> [(row offset, alpha / rank, up @ down)]."""

    def __init__(self):
        self.tensors: dict[str, torch.Tensor] = {}
        self.deltas: dict[str, list[tuple[int, float, torch.Tensor]]] = {}

    def lora(self, names: tuple[str, str, str], up, down, alpha, targets):
        """``names``: (down key, up key, alpha key or None); ``targets``: [(param, row offset, up rows slice)]."""
        self.tensors[names[0]], self.tensors[names[1]] = down, up
        if names[2] is not None:
            self.tensors[names[2]] = torch.tensor(alpha, dtype=up.dtype)
        scale = 1.0 if names[2] is None else float(torch.tensor(alpha, dtype=up.dtype)) / down.shape[0]
        for param, offset, rows in targets:
            self.deltas.setdefault(param, []).append((offset, scale, up[rows].float() @ down.float()))

    def merged(self, base: dict[str, torch.Tensor], strength: float) -> dict[str, torch.Tensor]:
        out = {k: v.clone() for k, v in base.items()}
        for param, items in self.deltas.items():
            for offset, scale, product in items:  # weight += (strength * alpha / rank) * up @ down
                out[param][offset:offset + product.shape[0]] += (strength * scale) * product
        return out


def _qkv(layer):
    return f"block.layers.{layer}.attention.linear_qkv.weight"


def musubi_lora() -> Hand:
    """musubi-tuner magi-human: kohya names of the official modules; in multi-modal layers lora_up has ONE expert's
    rows and the LoRA applies to all three experts; saved in bf16, alpha too."""
    h, bf = Hand(), torch.bfloat16
    for layer, mod, out_f, in_f, seed in ((0, "attention_linear_qkv", QKV, H, 1), (3, "mlp_down_proj", H, SWIGLU, 2),
                                          (1, "attention_linear_qkv", QKV, H, 3),
                                          (2, "mlp_up_gate_proj", 2 * SWIGLU, H, 4)):
        up, down = _pair(out_f, in_f, seed, dtype=bf)
        name = f"lora_unet_block_layers_{layer}_{mod}"
        param = f"block.layers.{layer}.{mod.replace('_', '.', 1)}.weight"
        experts = 3 if layer in CFG.mm_layers else 1
        h.lora((f"{name}.lora_down.weight", f"{name}.lora_up.weight", f"{name}.alpha"), up, down, 8.0,
               [(param, e * out_f, slice(None)) for e in range(experts)])
    up, down = _pair(H, CFG.text_in_channels, 5, dtype=bf)
    h.lora(("lora_unet_adapter_text_embedder.lora_down.weight", "lora_unet_adapter_text_embedder.lora_up.weight",
            "lora_unet_adapter_text_embedder.alpha"), up, down, 4.0, [("adapter.text_embedder.weight", 0, slice(None))])
    return h


def wan2gp_lora() -> Hand:
    """Wan2GP's schema: split q/k/v/g with _video/_audio/_text in multi-modal layers, per-modality expert linears, plain
    split names elsewhere; and an official-named LoRA whose lora_B stacks the three experts' rows (what Wan2GP's
    preprocessing splits)."""
    h = Hand()
    for i, (layer, name, part, mod) in enumerate(((0, "linear_q_video", "q", 0), (0, "linear_g_text", "g", 2),
                                                  (3, "linear_v_audio", "v", 1), (1, "linear_k", "k", None),
                                                  (2, "linear_g", "g", None))):
        up, down = _pair(SIZE[part], H, 10 + i)
        base = f"block.layers.{layer}.attention.{name}"
        offset = (mod or 0) * QKV + OFF[part]
        h.lora((f"{base}.lora_A.weight", f"{base}.lora_B.weight", f"{base}.alpha"), up, down, 2.0,
               [(_qkv(layer), offset, slice(None))])
    for i, (layer, lin, m, out_f, in_f) in enumerate(((0, "attention.linear_proj", 1, H, H),
                                                      (3, "mlp.up_gate_proj", 2, 2 * SWIGLU, H),
                                                      (0, "mlp.down_proj", 0, H, 4 * H))):
        up, down = _pair(out_f, in_f, 20 + i)
        base = f"block.layers.{layer}.{lin}_{MODS[m]}"
        h.lora((f"{base}.lora_A.weight", f"{base}.lora_B.weight", None), up, down, None,
               [(f"block.layers.{layer}.{lin}.weight", m * out_f, slice(None))])
    up, down = _pair(3 * QKV, H, 30)  # three experts' rows stacked, one shared lora_A
    h.lora(("block.layers.3.attention.linear_qkv.lora_A.weight", "block.layers.3.attention.linear_qkv.lora_B.weight",
            "block.layers.3.attention.linear_qkv.alpha"), up, down, 3.0, [(_qkv(3), 0, slice(None))])
    return h


def comfy_native_lora() -> Hand:
    """ComfyUI-native module names with its prefixes: per-expert linears and the '.linear' of one-expert layers."""
    h = Hand()
    up, down = _pair(QKV, H, 40)
    base = "diffusion_model.block.layers.0.attention.linear_qkv.experts.1"
    h.lora((f"{base}.lora_A.weight", f"{base}.lora_B.weight", None), up, down, None, [(_qkv(0), QKV, slice(None))])
    up, down = _pair(H, SWIGLU, 41)
    base = "diffusion_model.block.layers.1.mlp.down_proj.linear"
    h.lora((f"{base}.lora_A.weight", f"{base}.lora_B.weight", f"{base}.alpha"), up, down, 2.0,
           [("block.layers.1.mlp.down_proj.weight", 0, slice(None))])
    up, down = _pair(2 * SWIGLU, H, 42)
    base = "lora_unet_block_layers_3_mlp_up_gate_proj_experts_2"
    h.lora((f"{base}.lora_down.weight", f"{base}.lora_up.weight", None), up, down, None,
           [("block.layers.3.mlp.up_gate_proj.weight", 2 * 2 * SWIGLU, slice(None))])
    return h


def diffusers_lora() -> Hand:
    """FastVideo's MagiHuman-Diffusers keeps the official module names; diffusers saves LoRAs under 'transformer.'."""
    h = Hand()
    up, down = _pair(3 * H, H, 50)
    base = "transformer.block.layers.0.attention.linear_proj"
    h.lora((f"{base}.lora_A.weight", f"{base}.lora_B.weight", None), up, down, None,
           [("block.layers.0.attention.linear_proj.weight", 0, slice(None))])
    up, down = _pair(QKV, H, 51)
    base = "transformer.block.layers.2.attention.linear_qkv"
    h.lora((f"{base}.lora_A.weight", f"{base}.lora_B.weight", None), up, down, None, [(_qkv(2), 0, slice(None))])
    return h


SCHEMAS = {"musubi": musubi_lora, "wan2gp": wan2gp_lora, "comfy_native": comfy_native_lora,
           "diffusers": diffusers_lora}


@pytest.mark.parametrize("schema", list(SCHEMAS))
@pytest.mark.parametrize("strength", [1.0, -0.7])
def test_each_schema_equals_the_hand_merged_weights(dit_file, tmp_path, schema, strength):
    hand = SCHEMAS[schema]()
    f = tmp_path / f"{schema}.safetensors"
    write_file(f, hand.tensors)
    model = _model(dit_file)
    before = effective(model)
    want = hand.merged(before, strength)
    handle = apply_lora(model, f, strength)
    got = effective(model)
    differ = [k for k in want if not torch.equal(got[k], want[k])]
    assert not differ, differ
    assert handle.file.matched == len({k.rsplit(".", 2)[0] for k in hand.tensors if "lora_" in k})
    remove_lora(model)
    assert all(torch.equal(v, before[k]) for k, v in effective(model).items())


def test_musubi_lora_is_shared_by_the_experts(dit_file, tmp_path):
    """One lora_up of one expert's rows on a multi-modal linear: the three experts take the same delta."""
    hand = musubi_lora()
    write_file(tmp_path / "m.safetensors", hand.tensors)
    model = _model(dit_file)
    apply_lora(model, tmp_path / "m.safetensors")
    (patch,) = model.block.layers[0].attention.linear_qkv.weight_patches
    d = patch(torch.zeros(3 * QKV, H))  # the delta alone
    assert torch.equal(d[:QKV], d[QKV:2 * QKV]) and torch.equal(d[:QKV], d[2 * QKV:]) and d.abs().max() > 0


# ------------------------------------------------------------------ DoRA


def _dora_by_hand(w0, d, m, strength, axis):
    """DoRA as its paper states it: m * (W + dW) / ||W + dW||, the norm over ``axis``; strength blends the result."""
    calc = w0 + d
    new = m * calc / (calc.norm(dim=axis, keepdim=True) + torch.finfo(torch.float32).eps)
    return w0 + strength * (new - w0)


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_dora_magnitudes_per_row_and_per_column(dit_file, tmp_path, strength):
    """Wan2GP-style DoRA on a split module ([rows, 1]) and on a stacked fused LoRA ([3 * rows, 1]); LyCORIS-style
    per-column magnitudes ([1, in]) on a one-expert linear: each against the formula computed by hand, and the
    magnitudes are the new norms at strength 1."""
    g = torch.Generator().manual_seed(3)
    model = _model(dit_file)
    w = effective(model)
    t, cases = {}, []
    # 1. a split module of a multi-modal layer: the v rows of the audio expert
    up, down = _pair(KV, H, 60)
    base, rows = "block.layers.0.attention.linear_v_audio", (QKV + OFF["v"], KV)
    m = w[_qkv(0)][rows[0]:rows[0] + KV].norm(dim=1, keepdim=True) * (1 + 0.1 * torch.rand(KV, 1, generator=g))
    t.update({f"{base}.lora_A.weight": down, f"{base}.lora_B.weight": up, f"{base}.alpha": torch.tensor(2.0),
              f"{base}.dora_scale": m})
    cases.append((_qkv(0), rows, (2.0 / R) * (up @ down), m, 1))
    # 2. an official-named LoRA with the three experts' rows stacked and one magnitude per fused row
    up, down = _pair(3 * QKV, H, 61)
    m = w[_qkv(3)].norm(dim=1, keepdim=True) * 1.05
    t.update({"diffusion_model.block.layers.3.attention.linear_qkv.lora_A.weight": down,
              "diffusion_model.block.layers.3.attention.linear_qkv.lora_B.weight": up,
              "diffusion_model.block.layers.3.attention.linear_qkv.dora_scale": m.reshape(-1)})  # [rows] accepted
    cases.append((_qkv(3), (0, 3 * QKV), up @ down, m, 1))
    # 3. per input column on a one-expert layer's down_proj (kohya names)
    up, down = _pair(H, SWIGLU, 62)
    p = "block.layers.2.mlp.down_proj.weight"
    m = w[p].norm(dim=0, keepdim=True) * 0.9
    t.update({"lora_unet_block_layers_2_mlp_down_proj.lora_down.weight": down,
              "lora_unet_block_layers_2_mlp_down_proj.lora_up.weight": up,
              "lora_unet_block_layers_2_mlp_down_proj.dora_scale": m})
    cases.append((p, (0, H), up @ down, m, 0))
    write_file(tmp_path / "dora.safetensors", t)
    apply_lora(model, tmp_path / "dora.safetensors", strength)
    got = effective(model)
    for param, (r0, n), d, m, axis in cases:
        want = _dora_by_hand(w[param][r0:r0 + n], d, m, strength, axis)
        assert torch.allclose(got[param][r0:r0 + n], want, rtol=1e-6, atol=1e-7), param
        if strength == 1.0:
            norms = got[param][r0:r0 + n].norm(dim=axis, keepdim=True)
            assert torch.allclose(norms, m, rtol=1e-5), param
        untouched = torch.cat([w[param][:r0], w[param][r0 + n:]])
        assert torch.equal(torch.cat([got[param][:r0], got[param][r0 + n:]]), untouched)


def test_dora_errors(dit_file, tmp_path):
    model = _model(dit_file)
    up, down = _pair(KV, H, 70)
    base = "block.layers.1.attention.linear_k"
    write_file(tmp_path / "bad.safetensors", {f"{base}.lora_A.weight": down, f"{base}.lora_B.weight": up,
                                              f"{base}.dora_scale": torch.ones(KV, 2)})
    with pytest.raises(LoraError, match=rf"{tmp_path / 'bad.safetensors'}: DoRA magnitude "
                                        r"'block\.layers\.1\.attention\.linear_k\.dora_scale' is \[64, 2\]; for "
                                        r"'block\.layers\.1\.attention\.linear_k' \(block\.layers\.1\.attention\."
                                        r"linear_qkv\.weight, 64 rows x 128 columns per row range\) it must be \[64, 1\]"):
        load_lora(tmp_path / "bad.safetensors", model)
    write_file(tmp_path / "lone.safetensors", {f"{base}.dora_scale": torch.ones(KV, 1)})
    with pytest.raises(LoraError, match=r"is a DoRA magnitude without its LoRA pair"):
        load_lora(tmp_path / "lone.safetensors", model)


def test_loha_and_lokr_are_refused_naming_their_keys(dit_file, tmp_path):
    model = _model(dit_file)
    t = {"lora_unet_block_layers_0_attention_linear_qkv.hada_w1_a": torch.zeros(QKV, 2),
         "lora_unet_block_layers_0_attention_linear_qkv.hada_w1_b": torch.zeros(2, H),
         "lora_unet_block_layers_0_attention_linear_qkv.alpha": torch.tensor(1.0),
         "lora_unet_block_layers_1_mlp_down_proj.lokr_w1": torch.zeros(4, 4)}
    write_file(tmp_path / "loha.safetensors", t)
    with pytest.raises(LoraError, match=r"4 LoRA key\(s\) match no part of this MagiHuman DiT \(0 matched\): "
                                        r".*lora_unet_block_layers_0_attention_linear_qkv\.hada_w1_a"):
        load_lora(tmp_path / "loha.safetensors", model)
