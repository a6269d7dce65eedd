"""Real ComfyUI server: DiT files in other tools' layouts (ComfyUI-native, Wan2GP, Wan2GP quanto int8) through the
pack's DiT loader, and a Wan2GP-schema LoRA with a DoRA module through its LoRA loader (ComfyUI's ModelPatcher), give
the frames the engine computes for the same graph; the layouts holding the official weights give the official
model's frames."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from tests.comfyui_harness import explain, requires_comfyui, run_workflow

from magihuman.checkpoints import open_checkpoint  # noqa: E402
from magihuman.models.dit_config import DiTConfig  # noqa: E402
from magihuman.weights.safetensors_io import write_file  # noqa: E402
from tests.layout_fixtures import quanto_int8, to_comfy_native, to_wan2gp  # noqa: E402

CFG = DiTConfig.preset("tiny")
DITS = {  # save prefix: (file in diffusion_models, LoRA or None)
    "official": ("magihuman_tiny_distill/", None),
    "comfy": ("magihuman_tiny_distill_comfy.safetensors", None),
    "wan2gp": ("magi_human_tiny_distill_wan2gp.safetensors", None),
    "quanto": ("magi_human_tiny_distill_quanto_bf16_int8.safetensors", None),
    "wan2gp_lora": ("magi_human_tiny_distill_wan2gp.safetensors", "wan2gp_dora.safetensors"),
}
FRAMES = 13  # 0.5 s


def _prompt() -> dict:
    p = {
        "te": {"class_type": "MagiHumanTextEncoderLoader", "inputs": {"text_encoder": "t5gemma_tiny/",
                                                                     "weight_dtype": "fp32"}},
        "enc": {"class_type": "MagiHumanTextEncode", "inputs": {"text_encoder": ["te", 0], "prompt": "A man smiles.",
                                                                "negative_prompt": "x", "encode_negative": False}},
        "lat": {"class_type": "MagiHumanEmptyAVLatent", "inputs": {"width": 64, "height": 64, "seconds": 0.5,
                                                                   "batch_size": 1}},
        "vae": {"class_type": "MagiHumanTurboVAELoader", "inputs": {"vae_name": "turbo_vae_tiny/",
                                                                    "weight_dtype": "fp32"}},
    }
    for name, (dit, lora) in DITS.items():
        p[f"{name}_dit"] = {"class_type": "MagiHumanDiTLoader", "inputs": {
            "model_name": dit, "weight_dtype": "fp32", "attention": "sdpa", "compile": False, "compute_dtype": "fp32"}}
        model = [f"{name}_dit", 0]
        if lora:
            p[f"{name}_lora"] = {"class_type": "MagiHumanLoraLoader", "inputs": {"model": model, "lora_name": lora,
                                                                               "strength": 0.8}}
            model = [f"{name}_lora", 0]
        p[f"{name}_s"] = {"class_type": "MagiHumanDistilledSampler", "inputs": {
            "model": model, "positive": ["enc", 0], "latent": ["lat", 0], "seed": 5, "steps": 2, "shift": 5.0}}
        p[f"{name}_d"] = {"class_type": "MagiHumanTurboVAEDecode", "inputs": {"turbo_vae": ["vae", 0],
                                                                             "latent": [f"{name}_s", 0],
                                                                             "offload_frames": False}}
        p[f"{name}_save"] = {"class_type": "SaveImage", "inputs": {"images": [f"{name}_d", 0],
                                                                  "filename_prefix": name}}
    return p


def wan2gp_dora_lora(official: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Wan2GP's schema (split q/k/v/g per modality, a stacked three-expert lora_B, per-modality linears) plus a DoRA
    module (the v rows of a one-expert layer) whose delta is large against its weight, so ||W + dW|| (the engine's
    and DoRA's norm) and ||W|| (ComfyUI's own output-axis formula) give visibly different frames."""
    from tests.test_lora_schemas import KV, OFF, wan2gp_lora

    t = dict(wan2gp_lora().tensors)
    g = torch.Generator().manual_seed(9)
    base = "block.layers.1.attention.linear_v"
    t[f"{base}.lora_A.weight"] = torch.randn(4, CFG.hidden_size, generator=g) * 0.2
    t[f"{base}.lora_B.weight"] = torch.randn(KV, 4, generator=g) * 0.2
    rows = official["block.layers.1.attention.linear_qkv.weight"][OFF["v"]:OFF["v"] + KV]
    t[f"{base}.dora_scale"] = rows.norm(dim=1, keepdim=True) * 1.3
    return t


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_dir):
    root = tmp_path_factory.mktemp("layouts") / "models"
    shutil.copytree(tiny_dir, root)
    sd = open_checkpoint(root / "diffusion_models" / "magihuman_tiny_distill").read()
    dm = root / "diffusion_models"
    write_file(dm / DITS["comfy"][0], to_comfy_native(sd, CFG))
    write_file(dm / DITS["wan2gp"][0], to_wan2gp(sd, CFG))
    q, meta = quanto_int8(to_wan2gp(sd, CFG, torch.bfloat16))
    write_file(dm / DITS["quanto"][0], q, meta)
    write_file(root / "loras" / DITS["wan2gp_lora"][1], wan2gp_dora_lora(sd))
    return root


def _engine_frames(node_pack, models) -> dict[str, np.ndarray]:
    env = node_pack(models)
    try:
        outputs, frames = {}, {}
        for nid, node in _prompt().items():
            if node["class_type"] == "SaveImage":
                frames[nid[: -len("_save")]] = np.clip(255.0 * outputs[node["inputs"]["images"][0]][0].numpy(), 0,
                                                        255).astype(np.uint8)
                continue
            kw = {k: (outputs[v[0]][v[1]] if isinstance(v, list) else v) for k, v in node["inputs"].items()}
            outputs[nid] = env.run(node["class_type"], **kw)
        return frames
    finally:
        env.close()


@requires_comfyui
def test_real_server_loads_other_layouts_and_a_wan2gp_dora_lora(models, node_pack, tmp_path):
    wf = tmp_path / "layouts_api.json"
    wf.write_text(json.dumps(_prompt()))
    result = run_workflow(wf, models, timeout=600)
    assert result["returncode"] == 0 and result["workflow"] == "success", explain(result)
    server = {}
    for name in DITS:
        pngs = sorted(p for p in result["outputs"] if p.split("/")[-1].startswith(f"{name}_0"))
        assert len(pngs) == FRAMES, (name, explain(result))
        server[name] = np.stack([np.array(Image.open(p)) for p in pngs])
    ours = _engine_frames(node_pack, models)
    for name in DITS:
        diff = np.abs(ours[name].astype(int) - server[name].astype(int))
        # the server runs torch 2.14 (the tests 2.13): a PNG level of rounding at most
        assert diff.max() <= 1 and diff.mean() < 0.02, (name, diff.max(), diff.mean())
    for name in ("comfy", "wan2gp"):  # the official weights in another layout: the official frames, exactly
        assert np.array_equal(server[name], server["official"]), name
    assert np.abs(server["quanto"].astype(int) - server["official"].astype(int)).mean() > 0  # int8 rounding shows
    assert np.abs(server["wan2gp_lora"].astype(int) - server["wan2gp"].astype(int)).mean() > 0.1  # the LoRA acts
    assert "layout: ComfyUI-native, fp32" in result["log"] and "layout: Wan2GP, optimum-quanto int8 -> bf16" \
        in result["log"], explain(result)
