"""Turbo VAE decoder files: the official ``checkpoint-340000.ckpt`` (a torch pickle holding ``ema_state_dict``,
read with ``weights_only=True``) with its TurboV3 JSON, or a converted ``.safetensors`` (config embedded)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from torch import nn

from ..models.turbo_vae import CONFIG_METADATA_KEY, TurboVAEConfig, TurboVAEDecoder, TurboVAEError
from ..weights import KeyMap, WeightSource, check_keys, check_materialized, expected_shapes, load_into, open_source
from ..weights.safetensors_io import write_file

__all__ = ["TURBO_KEYMAP", "load_turbo_vae", "open_turbo_vae", "convert_turbo_checkpoint"]

PathLike = Union[str, os.PathLike]
# Official checkpoints: "module.decoder.*" under ema_state_dict (encoder keys possibly beside, ignored); a bare
# decoder state dict (no "decoder." prefix) is accepted as the official loader does.
TURBO_KEYMAP = KeyMap(rename=(("module.", ""),), keep=("decoder.",), bare_prefix="decoder.")
WHAT = "the Turbo VAE decoder"
_PICKLE_HINT = ("Use a .safetensors copy of the Turbo decoder instead: obtain one from a trusted source, or, on a "
                "machine where you trust the file, save its 'ema_state_dict' decoder tensors with safetensors.")


def _json_beside(path: Path) -> Optional[Path]:
    """The config JSON next to a checkpoint: the only one, or the only ``turbo*`` one among several."""
    jsons = sorted(p for p in path.parent.iterdir() if p.is_file() and p.suffix == ".json")
    if len(jsons) > 1:
        jsons = [p for p in jsons if p.name.lower().startswith("turbo")] or jsons
    if len(jsons) > 1:
        raise TurboVAEError(f"{path.parent}: several JSON files {[p.name for p in jsons]}; pass the config path")
    return jsons[0] if jsons else None


def _read_config(config: Union[None, PathLike, Mapping[str, Any]]) -> Optional[dict]:
    if config is None or isinstance(config, Mapping):
        return dict(config) if config is not None else None
    path = Path(config)
    try:
        with open(path, "r", encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise TurboVAEError(f"{path}: Turbo VAE config JSON not found") from None
    except json.JSONDecodeError as err:
        raise TurboVAEError(f"{path}: not valid JSON ({err})") from None


def open_turbo_vae(ckpt_path: PathLike, config: Union[None, PathLike, Mapping[str, Any]] = None
                   ) -> tuple[WeightSource, Optional[dict]]:
    """(source of the ``decoder.*`` tensors, config dict or None). The config is ``config`` if given, else the
    one embedded in a converted ``.safetensors``, else the JSON beside the checkpoint."""
    path = Path(ckpt_path)
    if not path.exists():
        raise TurboVAEError(f"{path}: Turbo VAE checkpoint not found")
    src = open_source(path, what=WHAT, keymap=TURBO_KEYMAP, containers=("ema_state_dict", "state_dict"),
                      pickle_hint=_PICKLE_HINT)
    if any(k.startswith(("decoder.upsamples.", "decoder.middle.", "decoder.head.")) for k in src.entries):
        raise TurboVAEError(f"{src.describe()}: this is the Wan2.2 VAE (keys like 'decoder.upsamples.*'), not the "
                            "Turbo decoder; load it with 'MagiHuman Wan2.2 VAE Loader' (load_wan_vae) and pick the "
                            "turbo_vae folder (TurboV3 JSON + checkpoint-340000.ckpt) here")
    if not src.entries or (src.entries and all(k.startswith("decoder.encoder.") for k in src.entries)):
        raise TurboVAEError(f"{src.describe()}: no Turbo decoder weights found (no 'decoder.*' keys; first names: "
                            f"{(src.ignored or [e.name for e in src.entries.values()])[:5]})")
    cfg = _read_config(config)
    if cfg is None and CONFIG_METADATA_KEY in src.metadata:
        cfg = json.loads(src.metadata[CONFIG_METADATA_KEY])
    if cfg is None:
        cfg = _read_config(_json_beside(src.files[0]))
    return src, cfg


def load_turbo_vae(config: Union[None, PathLike, Mapping[str, Any]], ckpt_path: PathLike, *,
                   dtype: torch.dtype = torch.bfloat16, device: Union[str, torch.device] = "cpu",
                   operations=nn) -> TurboVAEDecoder:
    """Build and strictly load the Turbo decoder.

    ``config``: the JSON path or dict; None to use the config embedded in a converted ``.safetensors``
    or the JSON beside the checkpoint. ``ckpt_path``: the official ``.ckpt`` (read with
    ``weights_only=True``), a converted ``.safetensors``, or a folder holding one of them.
    """
    src, cfg = open_turbo_vae(ckpt_path, config)
    if cfg is None:
        raise TurboVAEError(f"{src.describe()}: no Turbo VAE config given and none embedded or beside the file; "
                            "pass the TurboV3-Wan22-TinyShallow_7_7.json path")
    model = TurboVAEDecoder.from_config(cfg, operations=operations, dtype=dtype, device="meta")
    check_keys(src.describe(), src.shapes, expected_shapes(model), "the Turbo VAE decoder its JSON config describes",
               hint="Check that the JSON config belongs to this checkpoint.")
    load_into(model, src, device=device)
    check_materialized(model, src.describe())
    return model.eval().requires_grad_(False)


def convert_turbo_checkpoint(ckpt_path: PathLike, out_path: PathLike, *,
                             config: Union[None, PathLike, Mapping[str, Any]] = None) -> Path:
    """One-time conversion of the official pickle to ``.safetensors``: decoder keys only (``decoder.``
    prefix kept, dtype unchanged), the JSON config embedded in the metadata when known."""
    src, cfg = open_turbo_vae(ckpt_path, config)
    metadata = {"format": "pt", "source": src.files[0].name}
    if cfg is not None:
        TurboVAEConfig.from_dict(cfg, where=f"config for {src.describe()}")
        metadata[CONFIG_METADATA_KEY] = json.dumps(cfg)
    out = Path(out_path)
    write_file(out, src.read(), metadata)
    return out
