"""T5Gemma encoder files (google/t5gemma-9b-9b-ul2 folder, an encoder-only ``.safetensors`` or ``.gguf``) -> model.

Only the encoder tensors are read: ``model.encoder.*`` (a full T5GemmaForConditionalGeneration save) and
``encoder.*`` both map to the model's ``encoder.*`` keys; decoder and head tensors are set aside unread. A GGUF
with these Hugging Face names and no config inside (the published ``t5gemma-9b-9b-ul2-Q6_K.gguf``) takes its
config.json and tokenizer from beside it, from the folder it sits in with them, or from a folder given as
``config=``. optimum-quanto int8 projections (Wan2GP's ``*_quanto_bf16_int8.safetensors``) are dequantised while
loading (:func:`magihuman.weights.layouts.merge_quanto`).
The public entry point is ``T5GemmaEncoder.from_pretrained``; it hands its class to
:func:`load_text_encoder`, so this module needs no import of the model (the models know no files and this
file code knows no model class: no cycle between the two layers).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..errors import CheckpointError
from ..quant.gguf import GGMLType
from ..storage import Storage, StorageLike, requested_storage
from ..tokenizer import GemmaTokenizer, read_tokenizer_config
from ..weights import (INDEX_NAME, KeyMap, WeightSource, check_keys, check_materialized, expected_shapes, load_into,
                       open_source)
from ..weights.compact import compact_handler, main_storage, storage_counts
from ..weights.gguf_file import ARCH_KEY, GGUF_SUFFIX, GGUFSpec, gguf_storage, write_gguf
from ..weights.layouts import merge_quanto, refuse_unscaled_int8
from ..weights.safetensors_io import TensorSpec, write_file
from ..weights.source import no_model_keys

__all__ = ["TEXT_ENCODER_KEYMAP", "encoder_state_dict", "load_text_encoder", "open_text_encoder",
           "save_encoder_file", "text_encoder_file_storage"]

log = logging.getLogger(__name__)

TEXT_ENCODER_KEYMAP = KeyMap(rename=(("model.encoder.", "encoder."),), keep=("encoder.",))
WHAT = "a T5Gemma encoder"
CONFIG_METADATA_KEY = "config"
GGUF_ARCH = "t5gemma_encoder"
# GGUF key/values: the HF config (JSON), and the tokenizer, so that one .gguf file is the whole encoder.
GGUF_CONFIG, GGUF_TOKENIZER, GGUF_TOKENIZER_CONFIG = ("magihuman.hf_config", "magihuman.tokenizer_json",
                                                      "magihuman.tokenizer_config")


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
    raise CheckpointError(f"no tokenizer.json or tokenizer.model beside {file}; pass tokenizer=<path to the "
                          "T5Gemma tokenizer.json or its folder>")


def _config_file(config: str | os.PathLike) -> Path:
    """``config=``: a config.json, or a folder holding one."""
    p = Path(config).expanduser()
    f = p / "config.json" if p.is_dir() else p
    if not f.is_file():
        raise CheckpointError(f"config={str(config)!r}: no T5Gemma config.json there (give the config.json of "
                              "google/t5gemma-9b-9b-ul2 or the folder holding it)")
    return f


def _folder_gguf(path: Path) -> Optional[Path]:
    """The one .gguf of a folder that has config.json but no safetensors (a GGUF put beside its config)."""
    if (path / INDEX_NAME).is_file() or any(path.glob("*.safetensors*")):
        return None
    found = sorted(path.glob("*" + GGUF_SUFFIX))
    if len(found) > 1:
        raise CheckpointError(f"{path} holds {len(found)} .gguf files ({', '.join(f.name for f in found)}); keep one "
                              "encoder per folder, or pick the file itself")
    return found[0] if found else None


def _weights_and_config(path: Path, config: str | os.PathLike | None) -> tuple[Path, str | os.PathLike | None]:
    """(weights to open, ``config=`` to use): a folder with config.json and one .gguf (no safetensors) is that .gguf,
    configured by the folder unless ``config`` names another; anything else as given."""
    if path.is_dir() and (path / "config.json").is_file() and (gguf := _folder_gguf(path)) is not None:
        return gguf, config or path
    return path, config


def open_text_encoder(path: str | os.PathLike, config: str | os.PathLike | None = None) -> tuple[WeightSource, dict]:
    """(source of the encoder tensors, HF config dict) of a T5Gemma folder or encoder file; ``config``: a config.json
    (or its folder) for a file that carries none."""
    path, config = _weights_and_config(Path(path), config)
    hf_config = None
    if path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise CheckpointError(f"{path} has no config.json: not a Hugging Face T5Gemma folder")
        if not (path / INDEX_NAME).is_file() and not any(path.glob("*.safetensors*")):
            raise CheckpointError(f"{path} has neither model.safetensors.index.json nor *.safetensors (or one .gguf) "
                                  "files")
        hf_config = json.loads(cfg_file.read_text(encoding="utf-8"))
        src = open_source(path, what=WHAT, keymap=TEXT_ENCODER_KEYMAP, many_files=True)
    elif path.is_file():
        if not path.name.endswith((".safetensors", ".safetensors.zst", GGUF_SUFFIX)):
            raise CheckpointError(f"{path}: expected a .safetensors or .gguf file (or the google/t5gemma-9b-9b-ul2 "
                                  "folder)")
        src = open_source(path, what=WHAT, keymap=TEXT_ENCODER_KEYMAP)
        arch = src.metadata.get(ARCH_KEY) if src.format == "gguf" else None
        if arch is not None and arch != GGUF_ARCH and not src.entries:
            raise CheckpointError(f"{path} is a GGUF of architecture {arch!r}, not a T5Gemma encoder ({GGUF_ARCH!r}); "
                                  f"its tensors start with {src.ignored[:3]}. Pick the google/t5gemma-9b-9b-ul2 folder "
                                  "or an encoder file written by `python -m magihuman convert`")
        key = next((k for k in (CONFIG_METADATA_KEY, GGUF_CONFIG) if k in src.metadata), None)
        if config is not None:
            hf_config = json.loads(_config_file(config).read_text(encoding="utf-8"))
        elif key is not None:
            hf_config = json.loads(src.metadata[key])
        elif (path.parent / "config.json").is_file():
            hf_config = json.loads((path.parent / "config.json").read_text(encoding="utf-8"))
        if src.entries and hf_config is None:
            raise CheckpointError(f"{path} carries no T5Gemma config (metadata key 'config' or {GGUF_CONFIG}) and "
                                  "there is no config.json beside it: put the config.json and tokenizer.json of "
                                  "google/t5gemma-9b-9b-ul2 next to it (in ComfyUI: the file and those two in one "
                                  "folder of models/text_encoders), pass config=<that folder>, or write a file that "
                                  "carries them with `python -m magihuman convert`")
    else:
        raise CheckpointError(f"T5Gemma path {path} does not exist (give the google/t5gemma-9b-9b-ul2 folder or an "
                              "encoder .safetensors file)")
    merge_quanto(src)  # Wan2GP's quanto int8 encoder: each int8 projection with its per-row scale, read as one
    try:
        refuse_unscaled_int8(src)
    except CheckpointError as e:
        raise CheckpointError(f"{e} Use the google/t5gemma-9b-9b-ul2 folder, an encoder file written by `python -m "
                              "magihuman convert`, the published GGUF or Wan2GP's quanto int8 encoder") from None
    if not src.entries:
        raise no_model_keys(src, "T5Gemma encoder", "'encoder.*' / 'model.encoder.*'", "Pick the "
                            "google/t5gemma-9b-9b-ul2 folder or an encoder-only T5Gemma .safetensors")
    return src, hf_config


def _tokenizer_for(path: Path, src: WeightSource, tokenizer, config=None) -> GemmaTokenizer:
    """``tokenizer=`` if given, else the one embedded in a GGUF written by this project, else the files beside,
    else those of the ``config=`` folder."""
    if tokenizer is None and GGUF_TOKENIZER in src.metadata:
        tokenizer_config = json.loads(src.metadata.get(GGUF_TOKENIZER_CONFIG) or "{}")
        return GemmaTokenizer.from_json(src.metadata[GGUF_TOKENIZER], tokenizer_config, source=f"{path} (embedded)")
    if tokenizer is None and not path.is_dir() and config is not None:
        folder = _config_file(config).parent
        if not any((path.parent / n).is_file() for n in ("tokenizer.json", "tokenizer.model")) and \
                any((folder / n).is_file() for n in ("tokenizer.json", "tokenizer.model")):
            tokenizer = folder
    return GemmaTokenizer.from_path(tokenizer or (path if path.is_dir() else _tokenizer_beside(path)))


def text_encoder_file_storage(path: str | os.PathLike, config: str | os.PathLike | None = None) -> Storage:
    """The storage holding most bytes of an encoder file's matrices (its projections and token embedding)."""
    src, _ = open_text_encoder(Path(path), config)
    return main_storage(src, [k for k, e in src.entries.items() if len(e.shape) == 2])


def load_text_encoder(cls, path: str | os.PathLike, *, storage: StorageLike = None, dtype=None, device="cpu",
                      operations=nn, tokenizer: Optional[str | os.PathLike] = None, attn_softcap: bool = False,
                      gguf: Optional[str] = None, config: Optional[str | os.PathLike] = None):
    """Build the encoder class ``cls`` (``T5GemmaEncoder``) on ``meta``, check keys and shapes from the
    headers, stream the tensors in on ``device`` and attach the tokenizer (``tokenizer=``, the one a GGUF file
    carries, or the files beside the weights, or those of ``config=``). ``config``: a config.json (or its folder) for
    a file that carries none. ``storage`` (see :func:`magihuman.storage.requested_storage`): the projections and the
    token embedding in it, the norms in its plain dtype (bf16 under compact storage)."""
    want = requested_storage(storage, dtype=dtype, gguf=gguf)
    path, config = _weights_and_config(Path(path), config)  # a .gguf in a folder with its config and tokenizer
    src, hf_config = open_text_encoder(path, config)
    model = cls.from_config(hf_config, operations=operations, storage=want.built, device="meta",
                            attn_softcap=attn_softcap)
    check_keys(src.describe(), src.shapes, expected_shapes(model), "the T5Gemma encoder its config.json describes")
    device = torch.device(device)
    counts: Counter = Counter()
    load_into(model, src, device=device, handler=compact_handler(src, want, device, counts))
    check_materialized(model, src.describe())
    model.tokenizer = _tokenizer_for(path, src, tokenizer, config)
    model.compute_device = device
    log.info("Loaded T5Gemma encoder from %s: %s%s", src.describe(), storage_counts(counts),
             f" (config from {_config_file(config)})" if config is not None else "")
    return model.eval()


def save_encoder_file(src: str | os.PathLike, dst: str | os.PathLike, *, dtype=torch.bfloat16,
                      quant: Optional[str] = None) -> Path:
    """One-time conversion: HF T5Gemma folder (or an encoder file) -> one encoder-only file, streamed tensor by
    tensor. ``.safetensors``: tensors in ``dtype``, the config in metadata. ``.gguf``: the matrices (projections and
    token embedding: every 2-D tensor of the encoder) in ``quant`` (default Q8_0), norms F32,
    ``general.architecture = "t5gemma_encoder"``, the HF config and the tokenizer (tokenizer.json +
    tokenizer_config) embedded, so the one file is the whole encoder."""
    src_path = Path(src)
    source, config = open_text_encoder(src_path)
    dst = Path(dst)

    with source.reading() as read_one:  # one open reader per shard while the file is written
        def produce(key: str, dt: torch.dtype):
            return lambda: read_one(key, dt)

        if dst.name.endswith(GGUF_SUFFIX):
            st = gguf_storage(quant or "Q8_0", "projections")
            compact = {k for k, e in source.entries.items() if len(e.shape) == 2}
            folder = src_path if src_path.is_dir() else src_path.parent
            meta = {GGUF_CONFIG: json.dumps(config)}
            if (folder / "tokenizer.json").is_file():
                meta[GGUF_TOKENIZER] = (folder / "tokenizer.json").read_text(encoding="utf-8")
                meta[GGUF_TOKENIZER_CONFIG] = json.dumps(read_tokenizer_config(folder))
            f32 = int(GGMLType.F32)
            specs = [GGUFSpec(k, e.shape, int(st.ggml) if k in compact else f32, produce(k, torch.float32))
                     for k, e in source.entries.items()]
            write_gguf(dst, specs, arch=GGUF_ARCH, metadata=meta)
            return dst
        if quant is not None:
            raise CheckpointError(f"quant={quant!r} needs a .gguf output, got {dst}")
        specs = []
        for key, e in source.entries.items():
            dt = dtype if (e.dtype.is_floating_point or e.quantized) else e.dtype
            specs.append(TensorSpec(key, dt, e.shape, produce(key, dt)))
        write_file(dst, specs, {CONFIG_METADATA_KEY: json.dumps(config), "format": "pt"})
        return dst
