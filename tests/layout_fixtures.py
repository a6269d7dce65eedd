"""Tiny DiT and LoRA files in other tools' layouts, written from the tiny official model by an independent
re-implementation of each tool's conversion (as their code describes it), for the layout tests.

- ComfyUI-native: each of the four block linears as ``<lin>.experts.{0,1,2}.weight`` (multi-modal layers) or
  ``<lin>.linear.weight``, with the ``model.diffusion_model.`` prefix of a ComfyUI checkpoint save;
- Wan2GP: ``linear_qkv`` split into ``linear_q/k/v/g`` (per modality in multi-modal layers, modality-major), the
  other expert linears of multi-modal layers suffixed ``_video`` / ``_audio`` / ``_text``; every float cast to
  ``dtype`` as its converter does;
- optimum-quanto int8 on top of the Wan2GP names: ``<m>.weight._data`` int8, ``<m>.weight._scale`` ``[out, 1]``,
  ``<m>.input_scale`` / ``<m>.output_scale`` scalars, quanto's metadata.
"""

from __future__ import annotations

import base64
import json

import torch

from magihuman.models.dit_config import DiTConfig

MODALITIES = ("video", "audio", "text")
LINEARS = ("attention.linear_qkv", "attention.linear_proj", "mlp.up_gate_proj", "mlp.down_proj")


def qkv_sizes(cfg: DiTConfig) -> list[tuple[str, int]]:
    """The rows of one expert's linear_qkv: q, k, v and (with gating) g."""
    hq, hkv, d = cfg.num_heads_q, cfg.num_heads_kv, cfg.head_dim
    return [("q", hq * d), ("k", hkv * d), ("v", hkv * d)] + ([("g", hq)] if cfg.enable_attn_gating else [])


def _split_layer_key(key: str):
    """(layer, linear name) of an official block-linear weight key, else None."""
    parts = key.split(".")
    if len(parts) == 6 and parts[:2] == ["block", "layers"] and ".".join(parts[3:5]) in LINEARS \
            and parts[5] == "weight":
        return int(parts[2]), ".".join(parts[3:5])
    return None


def to_comfy_native(sd: dict[str, torch.Tensor], cfg: DiTConfig, prefix: str = "model.diffusion_model.") -> dict:
    out = {}
    for k, v in sd.items():
        hit = _split_layer_key(k)
        if hit is None:
            out[prefix + k] = v
            continue
        layer, lin = hit
        base = f"{prefix}block.layers.{layer}.{lin}"
        if layer in cfg.mm_layers:
            for e, chunk in enumerate(v.chunk(3, dim=0)):
                out[f"{base}.experts.{e}.weight"] = chunk.contiguous()
        else:
            out[f"{base}.linear.weight"] = v
    return out


def to_wan2gp(sd: dict[str, torch.Tensor], cfg: DiTConfig, dtype=None) -> dict:
    out = {}
    for k, v in sd.items():
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        hit = _split_layer_key(k)
        if hit is None:
            out[k] = v
            continue
        layer, lin = hit
        mm = layer in cfg.mm_layers
        pre = f"block.layers.{layer}."
        if lin == "attention.linear_qkv":
            off = 0
            for m in (MODALITIES if mm else (None,)):
                for part, size in qkv_sizes(cfg):
                    name = f"attention.linear_{part}" + (f"_{m}" if m else "")
                    out[f"{pre}{name}.weight"] = v.narrow(0, off, size).contiguous()
                    off += size
            assert off == v.shape[0]
        elif mm:
            for m, chunk in zip(MODALITIES, v.chunk(3, dim=0)):
                out[f"{pre}{lin}_{m}.weight"] = chunk.contiguous()
        else:
            out[k] = v
    return out


def quanto_int8(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every block linear of a (Wan2GP-named) state dict quantised as optimum-quanto qint8 does it: per output row,
    ``scale = amax|W| / 127`` in the weight's dtype, ``data = round(W / scale)`` clamped to int8; with the metadata
    mmgp writes."""
    out, qmap = {}, {}
    for k, v in sd.items():
        if k.startswith("block.layers.") and k.endswith(".weight") and v.dim() == 2:
            module = k[: -len(".weight")]
            scale = (v.abs().amax(dim=1, keepdim=True).float() / 127).to(v.dtype)
            data = torch.clamp(torch.round(v.float() / scale.float()), -128, 127).to(torch.int8)
            out[f"{module}.weight._data"] = data
            out[f"{module}.weight._scale"] = scale
            out[f"{module}.input_scale"] = torch.ones((), dtype=v.dtype)
            out[f"{module}.output_scale"] = torch.ones((), dtype=v.dtype)
            qmap[module] = {"weights": "qint8", "activations": "none"}
        else:
            out[k] = v
    meta = {"quantization_format": "quanto",
            "quantization_map_base64": base64.b64encode(json.dumps(qmap).encode()).decode()}
    return out, meta


def quanto_dequantized(q: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights quanto computes with: ``_scale * _data`` in the scale's dtype (Wan2GP names, plain tensors)."""
    out = {}
    for k, v in q.items():
        if k.endswith(".weight._data"):
            scale = q[k[: -len("._data")] + "._scale"]
            out[k[: -len("._data")]] = (v.float() * scale.float()).to(scale.dtype)
        elif not k.endswith(("._scale", ".input_scale", ".output_scale")):
            out[k] = v
    return out


def fuse_wan2gp(sd: dict[str, torch.Tensor], cfg: DiTConfig) -> dict[str, torch.Tensor]:
    """Wan2GP names back to the official fused tensors (the expected result of loading such a file)."""
    out = dict(sd)
    for layer in range(cfg.num_layers):
        pre = f"block.layers.{layer}."
        mm = layer in cfg.mm_layers
        mods = MODALITIES if mm else (None,)
        parts = [out.pop(f"{pre}attention.linear_{p}" + (f"_{m}" if m else "") + ".weight")
                 for m in mods for p, _ in qkv_sizes(cfg)]
        out[f"{pre}attention.linear_qkv.weight"] = torch.cat(parts)
        if mm:
            for lin in LINEARS[1:]:
                out[f"{pre}{lin}.weight"] = torch.cat([out.pop(f"{pre}{lin}_{m}.weight") for m in MODALITIES])
    return out
