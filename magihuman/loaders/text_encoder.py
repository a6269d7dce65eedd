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

from ..errors import CheckpointError
from ..ops import set_fp8_weight, set_gguf_weight
from ..quant import gguf as gguf_types
from ..quant.fp8 import FP8_DTYPE, quantize_fp8
from ..tokenizer import GemmaTokenizer, read_tokenizer_config
from ..weights import INDEX_NAME, KeyMap, WeightSource, check_keys, check_materialized, expected_shapes, load_into, open_source
from ..weights.entry import Entry, OnBytes, Reader
from ..weights.gguf_file import ARCH_KEY, GGUF_SUFFIX, GGUFSpec, write_gguf
from ..weights.safetensors_io import TensorSpec, write_file
from ..weights.source import no_model_keys
from ..weights.stream import Slot

__all__ = ["TEXT_ENCODER_KEYMAP", "encoder_state_dict", "load_text_encoder", "open_text_encoder",
           "save_encoder_file"]

TEXT_ENCODER_KEYMAP = KeyMap(rename=(("model.encoder.", "encoder."),), keep=("encoder.",))
WHAT = "a T5Gemma encoder"
CONFIG_METADATA_KEY = "config"
GGUF_ARCH = "t5gemma_encoder"
# GGUF key/values: the HF config (JSON), and the tokenizer, so that one .gguf file is the whole encoder.
GGUF_CONFIG, GGUF_TOKENIZER, GGUF_TOKENIZER_CONFIG = ("magihuman.hf_config", "magihuman.tokenizer_json",
                                                     "magihuman.tokenizer_config")
GGUF_QUANTS = ("Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0", "BF16", "F16")
_PROJECTIONS = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight", "gate_proj.weight",
                "up_proj.weight", "down_proj.weight")


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
        if not path.name.endswith((".safetensors", ".safetensors.zst", GGUF_SUFFIX)):
            raise ValueError(f"{path}: expected a .safetensors or .gguf file (or the google/t5gemma-9b-9b-ul2 folder)")
        src = open_source(path, what=WHAT, keymap=TEXT_ENCODER_KEYMAP)
        arch = src.metadata.get(ARCH_KEY) if src.format == "gguf" else None
        if arch is not None and arch != GGUF_ARCH and not src.entries:
            raise ValueError(f"{path} is a GGUF of architecture {arch!r}, not a T5Gemma encoder ({GGUF_ARCH!r}); its "
                             f"tensors start with {src.ignored[:3]}. Pick the google/t5gemma-9b-9b-ul2 folder or an "
                             "encoder file written by `python -m magihuman convert`")
        key = next((k for k in (CONFIG_METADATA_KEY, GGUF_CONFIG) if k in src.metadata), None)
        config = None
        if key is not None:
            config = json.loads(src.metadata[key])
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


def _tokenizer_for(path: Path, src: WeightSource, tokenizer) -> GemmaTokenizer:
    """``tokenizer=`` if given, else the one embedded in a GGUF written by this project, else the files beside."""
    if tokenizer is None and GGUF_TOKENIZER in src.metadata:
        config = json.loads(src.metadata.get(GGUF_TOKENIZER_CONFIG) or "{}")
        return GemmaTokenizer.from_json(src.metadata[GGUF_TOKENIZER], config, source=f"{path} (embedded)")
    return GemmaTokenizer.from_path(tokenizer or (path if path.is_dir() else _tokenizer_beside(path)))


def _is_projection(key: str) -> bool:
    return key.endswith(_PROJECTIONS)


def load_text_encoder(cls, path: str | os.PathLike, *, dtype=torch.bfloat16, device="cpu", operations=nn,
                      tokenizer: Optional[str | os.PathLike] = None, attn_softcap: bool = False, gguf: str = "keep"):
    """Build the encoder class ``cls`` (``T5GemmaEncoder``) on ``meta``, check keys and shapes from the
    headers, stream the tensors in (``dtype`` on ``device``) and attach the tokenizer (``tokenizer=``, the one
    a GGUF file carries, or the files beside the weights).

    ``dtype=torch.float8_e4m3fn``: the projections are stored as e4m3 with a per-tensor scale (computed in
    bf16), embedding and norms in bf16. GGUF files: quantised projections and embedding stay quantised and are
    dequantised on the compute device per use (``gguf="keep"``), or turned into ``dtype`` (``"dequantize"``).
    """
    if gguf not in ("keep", "dequantize"):
        raise ValueError(f"gguf must be 'keep' or 'dequantize', got {gguf!r}")
    path = Path(path)
    src, config = open_text_encoder(path)
    fp8 = dtype == FP8_DTYPE
    build_dtype = torch.bfloat16 if fp8 else dtype
    model = cls.from_config(config, operations=operations, dtype=build_dtype, device="meta",
                            attn_softcap=attn_softcap)
    check_keys(src.describe(), src.shapes, expected_shapes(model), "the T5Gemma encoder its config.json describes",
               error=ValueError)
    device = torch.device(device)

    def keep_compact(e: Entry, reader: Reader, slot: Slot, count: OnBytes) -> bool:
        mod, attr, _ = slot
        if e.quantized and gguf == "keep" and not fp8 and attr == "weight" and (
                _is_projection(e.key) or e.key.endswith("embed_tokens.weight")):
            raw = torch.empty(gguf_types.byte_shape(e.shape, e.qtype), dtype=torch.uint8, device=device)
            set_gguf_weight(mod, reader.read_into(e, raw, count), e.qtype, e.shape)
            return True
        if fp8 and _is_projection(e.key):
            w = reader.read_into(e, torch.empty(e.shape, dtype=torch.float32), count)
            try:
                set_fp8_weight(mod, *(t.to(device) for t in quantize_fp8(w)))
            except ValueError as err:
                raise CheckpointError(f"{e.file}: tensor {e.name!r}: {err}") from err
            return True
        return False

    load_into(model, src, device=device, handler=keep_compact)
    check_materialized(model, src.describe())
    model.tokenizer = _tokenizer_for(path, src, tokenizer)
    return model.eval()


def gguf_tensor_type(key: str, shape: tuple[int, ...], quant: str) -> gguf_types.GGMLType:
    """Projections and the token embedding in ``quant`` (rows of whole blocks; else BF16); norms F32."""
    compact = _is_projection(key) or key.endswith("embed_tokens.weight")
    return gguf_types.storage_type(shape, quant) if compact else gguf_types.GGMLType.F32


def save_encoder_file(src: str | os.PathLike, dst: str | os.PathLike, *, dtype=torch.bfloat16,
                      quant: Optional[str] = None) -> Path:
    """One-time conversion: HF T5Gemma folder (or an encoder file) -> one encoder-only file, streamed tensor by
    tensor. ``.safetensors``: tensors in ``dtype``, the config in metadata. ``.gguf``: projections and embedding
    in ``quant`` (default Q8_0), norms F32, ``general.architecture = "t5gemma_encoder"``, the HF config and the
    tokenizer (tokenizer.json + tokenizer_config) embedded, so the one file is the whole encoder."""
    src_path = Path(src)
    source, config = open_text_encoder(src_path)
    dst = Path(dst)

    with source.reading() as read_one:  # one open reader per shard while the file is written
        def produce(key: str, dt: torch.dtype):
            return lambda: read_one(key, dt)

        if dst.name.endswith(GGUF_SUFFIX):
            quant = (quant or "Q8_0").upper()
            if quant not in GGUF_QUANTS:
                raise ValueError(f"unknown GGUF quantisation {quant!r}; choose one of {', '.join(GGUF_QUANTS)}")
            folder = src_path if src_path.is_dir() else src_path.parent
            meta = {GGUF_CONFIG: json.dumps(config)}
            if (folder / "tokenizer.json").is_file():
                meta[GGUF_TOKENIZER] = (folder / "tokenizer.json").read_text(encoding="utf-8")
                meta[GGUF_TOKENIZER_CONFIG] = json.dumps(read_tokenizer_config(folder))
            specs = [GGUFSpec(k, e.shape, int(gguf_tensor_type(k, e.shape, quant)), produce(k, torch.float32))
                     for k, e in source.entries.items()]
            write_gguf(dst, specs, arch=GGUF_ARCH, metadata=meta)
            return dst
        if quant is not None:
            raise ValueError(f"quant={quant!r} needs a .gguf output, got {dst}")
        specs = []
        for key, e in source.entries.items():
            dt = dtype if (e.dtype.is_floating_point or e.quantized) else e.dtype
            specs.append(TensorSpec(key, dt, e.shape, produce(key, dt)))
        write_file(dst, specs, {CONFIG_METADATA_KEY: json.dumps(config), "format": "pt"})
        return dst
