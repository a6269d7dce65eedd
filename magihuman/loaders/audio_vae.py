"""Stable Audio Open audio VAE files: the stable-audio-open-1.0 folder (``model.safetensors`` + ``model_config.json``;
only the ``pretransform.model.*`` tensors of the ~5 GB file are read) or a VAE-only safetensors (``encoder.*`` /
``decoder.*``, config in metadata ``model_config`` or the release default). Safetensors only: pickled
checkpoints are never opened. Convolutions come in the released weight-norm form and are folded on load."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..models.audio_vae import (_WN_FORMS, PRETRANSFORM_PREFIX, AudioVAELoadError, OobleckVAE, fold_weight_norm,
                                release_model_config)
from ..weights import KeyMap, check_keys, expected_shapes, install, open_source, state_slots

__all__ = ["AUDIO_VAE_KEYMAP", "load_audio_vae"]

AUDIO_VAE_KEYMAP = KeyMap(subtree=(PRETRANSFORM_PREFIX,), keep=("encoder.", "decoder."))
WHAT = "the Stable Audio (Oobleck) VAE"
_FILE_SUFFIXES = (".safetensors", ".sft", ".safetensors.zst")


def _resolve(path: Path) -> tuple[Path, dict | None]:
    """(weights file or folder, config dict or None) for a folder, a model.safetensors or a VAE-only file."""
    if path.is_dir():
        cfg_path = path / "model_config.json"
    elif path.is_file():
        if not path.name.endswith(_FILE_SUFFIXES):
            raise AudioVAELoadError(f"{path}: the audio VAE is read from safetensors only (stable-audio-open-1.0 "
                                    "model.safetensors or a VAE-only .safetensors); pickled checkpoints "
                                    "(.ckpt/.pt/.pth) are never opened. Pick the stable-audio-open-1.0 folder")
        cfg_path = path.parent / "model_config.json"
    else:
        raise AudioVAELoadError(f"{path}: no such file or folder (give the stable-audio-open-1.0 folder or its "
                                "model.safetensors)")
    config = None
    if cfg_path.is_file():
        try:
            config = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise AudioVAELoadError(f"{cfg_path}: cannot read model_config.json: {e}") from e
    return path, config


def _folded_shapes(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The shapes a state dict has after :func:`fold_weight_norm` (checked before anything is read)."""
    out = dict(shapes)
    for g_suffix, v_suffix in _WN_FORMS:
        for key in [k for k in out if k.endswith("." + g_suffix)]:
            base = key[: -len(g_suffix)]
            if base + v_suffix in out:
                out.pop(key)
                out[base + "weight"] = out.pop(base + v_suffix)
    return out


def load_audio_vae(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32, device="cpu",
                   operations=torch.nn) -> OobleckVAE:
    """Load the Oobleck VAE; keys and shapes checked from the header, then the VAE tensors read, weight norm
    folded, and installed in ``dtype`` on ``device``."""
    path, config = _resolve(Path(path))
    src = open_source(path, what=WHAT, keymap=AUDIO_VAE_KEYMAP)
    if not src.entries:
        names = src.ignored[:5]
        raise AudioVAELoadError(f"{src.describe()}: not a Stable Audio VAE file: no 'pretransform.model.*' or "
                                f"'encoder.*'/'decoder.*' tensors ({len(src.ignored)} tensors, e.g. {names})")
    if config is None and "model_config" in src.metadata:
        try:
            config = json.loads(src.metadata["model_config"])
        except json.JSONDecodeError as e:
            raise AudioVAELoadError(f"{src.describe()}: metadata 'model_config' is not valid JSON: {e}") from e
    if config is None:
        config = release_model_config()
    try:
        model = OobleckVAE.from_config(config, operations=operations, dtype=dtype, device="meta")
    except (KeyError, TypeError) as e:
        raise AudioVAELoadError(f"{src.describe()}: model config is incomplete ({e!r})") from e
    check_keys(src.describe(), _folded_shapes(src.shapes), expected_shapes(model), f"{WHAT} of its model_config",
               hint="Is model_config.json the one for this file?")
    state = fold_weight_norm(src.read(dtype=torch.float32))  # small (~150 MB in fp32): folded in fp32
    for key, (mod, attr, is_param) in state_slots(model).items():
        install(mod, attr, is_param, state[key].to(device=device, dtype=dtype or torch.float32))
    return model.eval().requires_grad_(False)
