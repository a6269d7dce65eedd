"""Wan2.2 VAE files: the official ``Wan2.2_VAE.pth`` (torch pickle, read with ``weights_only=True``) or ComfyUI's
``wan2.2_vae.safetensors``. Both use the official WanVAE module names (ComfyUI's ``comfy/ldm/wan/vae2_2.py``
mirrors the official tree), so the key map is the identity up to a wrapper prefix (``first_stage_model.``,
``vae.``, ``module.``); a bundle holding other tensors beside a prefixed VAE keeps only the VAE subtree."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch

from ..models.video_vae import RELEASE_WAN_VAE_CONFIG, WanVAE, WanVAELoadError
from ..weights import (KeyMap, MappedKeys, WeightSource, check_keys, check_materialized, expected_shapes, load_into,
                       open_source)
from ..weights.safetensors_io import write_file

log = logging.getLogger(__name__)

__all__ = ["WAN_VAE_KEYMAP", "map_wan_vae_keys", "infer_wan_vae_config", "load_wan_vae",
           "convert_wan_vae_to_safetensors"]

_ANCHOR = "decoder.conv1.weight"
_DIFFUSERS_HINT = ("decoder.conv_in.weight", "decoder.up_blocks.0.resnets.0.norm1.gamma", "post_quant_conv.weight")
WAN_VAE_KEYMAP = KeyMap(anchor=_ANCHOR)
WHAT = "the Wan2.2 VAE"
_USE = ("Use the official Wan2.2_VAE.pth (Wan2.2-TI2V-5B) or ComfyUI's wan2.2_vae.safetensors; the Wan2.1 VAE "
        "(16 channels) is a different model.")


def map_wan_vae_keys(keys: Iterable[str], *, source: str = "checkpoint") -> MappedKeys:
    """File names -> official WanVAE keys (``names``: key -> name; ``prefix`` stripped; ``ignored`` names)."""
    keys = list(keys)
    mapped = WAN_VAE_KEYMAP.apply(keys)
    if not any(k == _ANCHOR for k in mapped.names):
        if any(k.endswith(h) for k in keys for h in _DIFFUSERS_HINT):
            raise WanVAELoadError(
                f"{source}: this is a diffusers AutoencoderKLWan layout (e.g. 'decoder.conv_in.weight'), which this "
                f"loader does not map; use the official Wan2.2_VAE.pth or ComfyUI's wan2.2_vae.safetensors")
        raise WanVAELoadError(
            f"{source}: no Wan2.2 VAE found (no key ending in '{_ANCHOR}'); {len(keys)} keys, first: {keys[:5]}")
    return mapped


def _shape_of(shapes: Mapping[str, Sequence[int]], key: str):
    return tuple(shapes[key]) if key in shapes else None


def infer_wan_vae_config(shapes: Mapping[str, Sequence[int]]) -> dict:
    """Config from tensor shapes (official key names); release values where the weights are silent."""
    cfg = {k: (list(v) if isinstance(v, list) else v) for k, v in RELEASE_WAN_VAE_CONFIG.items()}
    if (s := _shape_of(shapes, "conv2.weight")) is not None:
        cfg["z_dim"] = s[0]
    if (s := _shape_of(shapes, "encoder.conv1.weight")) is not None:
        cfg["dim"] = s[0]
    mults = []
    i = 0
    while (s := _shape_of(shapes, f"encoder.downsamples.{i}.downsamples.0.residual.2.weight")) is not None:
        mults.append(s[0] // cfg["dim"])
        i += 1
    if mults:
        cfg["dim_mult"] = mults
    n = 0
    while f"encoder.downsamples.0.downsamples.{n}.residual.0.gamma" in shapes:
        n += 1
    if n:
        cfg["num_res_blocks"] = n
    elif (m := sum(1 for j in range(64) if f"decoder.upsamples.0.upsamples.{j}.residual.0.gamma" in shapes)):
        cfg["num_res_blocks"] = m - 1
    if (s := _shape_of(shapes, "decoder.head.2.weight")) is not None:
        cfg["dec_dim"] = s[1] // cfg["dim_mult"][0]
    levels = len(cfg["dim_mult"]) - 1
    nrb = cfg["num_res_blocks"]
    if any(f"encoder.downsamples.{i}.downsamples.{nrb}.resample.1.weight" in shapes for i in range(levels)):
        cfg["temperal_downsample"] = [f"encoder.downsamples.{i}.downsamples.{nrb}.time_conv.weight" in shapes
                                      for i in range(levels)]
    return cfg


def _open(path) -> tuple[WeightSource, WanVAE]:
    """The VAE subtree of a file and a meta-built model of the config its shapes give, keys checked."""
    path = Path(path)
    if path.is_dir():
        raise WanVAELoadError(f"{path} is a folder; the Wan2.2 VAE is one file: wan2.2_vae.safetensors (ComfyUI) "
                              "or Wan2.2_VAE.pth (official Wan2.2-TI2V-5B)")
    if not path.is_file():
        raise FileNotFoundError(f"Wan2.2 VAE checkpoint not found: {path}")
    src = open_source(path, what=WHAT, keymap=WAN_VAE_KEYMAP, pickle_hint="Use the official Wan2.2_VAE.pth or "
                      "ComfyUI's wan2.2_vae.safetensors.")
    map_wan_vae_keys([e.name for e in src.entries.values()] + src.ignored, source=str(path))  # layout checks
    model = WanVAE.from_config(infer_wan_vae_config(src.shapes), device="meta")
    check_keys(src.describe(), src.shapes, expected_shapes(model), f"{WHAT} (official WanVAE keys)", hint=_USE)
    return src, model


def load_wan_vae(path, *, dtype: torch.dtype = torch.bfloat16, device="cpu", operations=torch.nn) -> WanVAE:
    """Load ``Wan2.2_VAE.pth`` (official pickle, weights-only) or ``wan2.2_vae.safetensors`` (ComfyUI)."""
    src, meta = _open(path)
    # Built on meta (no random init of ~700M parameters, seconds on a CPU); every tensor is then read.
    model = WanVAE.from_config(meta.config, operations=operations, dtype=dtype, device="meta")
    load_into(model, src, device=device)
    check_materialized(model, src.describe())
    if src.prefix or src.ignored:
        log.info("WanVAE: loaded subtree %r of %s (%d other tensors ignored)", src.prefix, src.describe(),
                 len(src.ignored))
    return model.eval().requires_grad_(False)


def convert_wan_vae_to_safetensors(src, dst) -> Path:
    """One-time conversion of an official ``Wan2.2_VAE.pth`` (read weights-only) to ``.safetensors``.

    Keys are written in the official layout (wrapper prefixes stripped); dtypes are kept.
    """
    source, _ = _open(src)
    dst = Path(dst)
    write_file(dst, source.read(), metadata={"format": "pt", "source": Path(src).name})
    return dst
