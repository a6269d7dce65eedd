"""T5Gemma encoder files (google/t5gemma-9b-9b-ul2 folder, or an encoder-only ``.safetensors``) -> model.

Only the encoder tensors are read: ``model.encoder.*`` (a full T5GemmaForConditionalGeneration save) and
``encoder.*`` both map to the model's ``encoder.*`` keys; decoder and head tensors are set aside unread.
The public entry point is ``T5GemmaEncoder.from_pretrained`` (SPEC §8); it hands its class to
:func:`load_text_encoder`, so this module needs no import of the model (the models know no files and this
file code knows no model class: no cycle between the two layers).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..tokenizer import GemmaTokenizer
from ..weights import INDEX_NAME, KeyMap, WeightSource, check_keys, check_materialized, expected_shapes, load_into, open_source
from ..weights.safetensors_io import TensorSpec, write_file
from ..weights.source import no_model_keys

__all__ = ["TEXT_ENCODER_KEYMAP", "encoder_state_dict", "load_text_encoder", "open_text_encoder",
           "save_encoder_file"]

TEXT_ENCODER_KEYMAP = KeyMap(rename=(("model.encoder.", "encoder."),), keep=("encoder.",))
WHAT = "a T5Gemma encoder"
CONFIG_METADATA_KEY = "config"


def encoder_state_dict(checkpoint: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder part of a T5Gemma state dict (``model.encoder.*`` or ``encoder.*``) keyed ``encoder.*``, by
    :data:`TEXT_ENCODER_KEYMAP`; decoder and head tensors are dropped. For ``load_state_dict(strict=True)``."""
    return {key: checkpoint[name] for key, name in TEXT_ENCODER_KEYMAP.apply(checkpoint).names.items()}


def _tokenizer_beside(file: Path) -> Path:
    for name in ("tokenizer.json", "tokenizer.model"):
        if (file.parent / name).is_file():
            return file.parent
    stem_json = file.with_suffix(".tokenizer.json")
    if stem_json.is_file():
        return stem_json
    raise FileNotFoundError(f"no tokenizer.json or tokenizer.model beside {file}; pass tokenizer=<path to the "
                            f"T5Gemma tokenizer.json or its folder>")


def open_text_encoder(path: str | os.PathLike) -> tuple[WeightSource, dict]:
    """(source of the encoder tensors, HF config dict) of a T5Gemma folder or encoder file."""
    path = Path(path)
    if path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face T5Gemma folder")
        if not (path / INDEX_NAME).is_file() and not any(path.glob("*.safetensors*")):
            raise FileNotFoundError(f"{path} has neither model.safetensors.index.json nor *.safetensors files")
        config = json.loads(cfg_file.read_text(encoding="utf-8"))
        src = open_source(path, what=WHAT, keymap=TEXT_ENCODER_KEYMAP, many_files=True)
    elif path.is_file():
        if not path.name.endswith((".safetensors", ".safetensors.zst")):
            raise ValueError(f"{path}: expected a .safetensors file (or the google/t5gemma-9b-9b-ul2 folder)")
        src = open_source(path, what=WHAT, keymap=TEXT_ENCODER_KEYMAP)
        config = None
        if CONFIG_METADATA_KEY in src.metadata:
            config = json.loads(src.metadata[CONFIG_METADATA_KEY])
        elif (path.parent / "config.json").is_file():
            config = json.loads((path.parent / "config.json").read_text(encoding="utf-8"))
        if src.entries and config is None:
            raise ValueError(f"{path} carries no T5Gemma config (metadata key 'config') and there is no config.json "
                             "beside it; write one with save_encoder_file() or put the model's config.json next to it")
    else:
        raise FileNotFoundError(f"T5Gemma path {path} does not exist (give the google/t5gemma-9b-9b-ul2 folder or an "
                                "encoder .safetensors file)")
    if not src.entries:
        raise no_model_keys(src, "T5Gemma encoder", "'encoder.*' / 'model.encoder.*'", "Pick the "
                            "google/t5gemma-9b-9b-ul2 folder or an encoder-only T5Gemma .safetensors", ValueError)
    return src, config


def load_text_encoder(cls, path: str | os.PathLike, *, dtype=torch.bfloat16, device="cpu", operations=nn,
                      tokenizer: Optional[str | os.PathLike] = None, attn_softcap: bool = False):
    """Build the encoder class ``cls`` (``T5GemmaEncoder``) on ``meta``, check keys and shapes from the
    headers, stream the tensors in (``dtype`` on ``device``) and attach the tokenizer (beside the weights, or
    ``tokenizer=``)."""
    path = Path(path)
    src, config = open_text_encoder(path)
    tok_path = tokenizer or (path if path.is_dir() else _tokenizer_beside(path))
    model = cls.from_config(config, operations=operations, dtype=dtype, device="meta", attn_softcap=attn_softcap)
    check_keys(src.describe(), src.shapes, expected_shapes(model), "the T5Gemma encoder its config.json describes",
               error=ValueError)
    load_into(model, src, device=device)
    check_materialized(model, src.describe())
    model.tokenizer = GemmaTokenizer.from_path(tok_path)
    return model.eval()


def save_encoder_file(src: str | os.PathLike, dst: str | os.PathLike, *, dtype=torch.bfloat16) -> Path:
    """One-time conversion: HF T5Gemma folder -> a single encoder-only .safetensors (config in metadata),
    streamed tensor by tensor."""
    source, config = open_text_encoder(src)
    specs = []
    for key, e in source.entries.items():
        dt = dtype if e.dtype.is_floating_point else e.dtype
        specs.append(TensorSpec(key, dt, e.shape, lambda k=key, dt=dt: source.read([k], dtype=dt)[k]))
    dst = Path(dst)
    write_file(dst, specs, {CONFIG_METADATA_KEY: json.dumps(config), "format": "pt"})
    return dst
