"""GGUF files (llama.cpp's container, used by ComfyUI-GGUF for diffusion models): read and write.

Reading goes through the ``gguf`` package's memory-mapped ``GGUFReader`` (an optional dependency, imported
when a ``.gguf`` is opened): headers give every tensor's name, GGML type and shape; a tensor's bytes are
copied into its destination only when it is read, either as the raw quantised blocks (kept quantised in
the model) or dequantised by :mod:`magihuman.quant.gguf` on the way. Writing uses ``GGUFWriter`` in its
streaming order (all tensor infos, header, key/values, then one tensor at a time), so a converter never
holds more than one tensor.

Metadata written by this project: ``general.architecture`` (``magihuman`` for the DiT, ``t5gemma_encoder``
for the text encoder) and string values under ``magihuman.*`` (variant, config JSON); a reader gets all
scalar/string fields as strings in ``WeightSource.metadata``.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import torch

from ..errors import CheckpointError
from ..quant import gguf as q
from ..storage import PLAIN, STORAGES, Storage, StorageLike, convert_choices, parse_storage
from .entry import Entry, OnBytes, Reader

__all__ = ["GGUF_SUFFIX", "ARCH_KEY", "PLAIN_TYPES", "open_gguf", "GGUFSpec", "gguf_storage", "write_gguf",
           "gguf_package"]

GGUF_SUFFIX = ".gguf"
ARCH_KEY = "general.architecture"
# GGML types read as plain tensors (everything else stays as raw blocks until dequantised).
PLAIN_TYPES = {s.ggml: s.dtype for s in STORAGES.values() if s.kind == PLAIN}
# Tensors whose rows were zero-padded to whole blocks: JSON {tensor name: logical shape}.
PADDED_KEY = "magihuman.padded"


def gguf_package():
    """The ``gguf`` package, or a clear error saying how to get it."""
    try:
        import gguf  # noqa: PLC0415 - optional dependency, needed only for .gguf files
    except ImportError as e:
        raise CheckpointError("reading or writing .gguf files needs the 'gguf' package: pip install gguf "
                              "(a dependency of this project: `pip install -e .` installs it)") from e
    return gguf


def _field_value(field) -> Optional[str]:
    """A GGUF key/value field as a string (scalars and strings; arrays are skipped)."""
    gguf = gguf_package()
    if not field.types or field.types[0] == gguf.GGUFValueType.ARRAY:
        return None
    part = field.parts[field.data[0]]
    if field.types[0] == gguf.GGUFValueType.STRING:
        return bytes(part).decode("utf-8", errors="replace")
    return str(part.tolist()[0])


class _GGUFReader(Reader):
    """Copies tensors out of the memory map: raw blocks into ``uint8`` destinations, values otherwise."""

    def __init__(self, path: Path):
        self.path = path

    def read_into(self, entry: Entry, dest: torch.Tensor, on_bytes: OnBytes = None, *,
                  scale: Optional[float] = None) -> torch.Tensor:
        data = entry.ref  # numpy view of the tensor's bytes / values in the memory map
        try:
            src = torch.from_numpy(np.ascontiguousarray(data))
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"{self.path}: tensor {entry.name!r} cannot be read ({e}); the file is truncated or "
                                  "corrupt: download it again") from e
        if entry.qtype is not None and dest.dtype != torch.uint8:  # decoded straight to the destination's dtype
            src = q.dequantize(src, entry.qtype, entry.file_shape,
                               dtype=torch.float32 if scale is not None else dest.dtype)
        elif entry.dtype == torch.bfloat16:
            src = src.view(torch.bfloat16)  # numpy has no bf16: the reader hands its bytes
        if dest.dtype != torch.uint8 and entry.stored_shape is not None:  # padded rows: the logical columns
            src = src.reshape(entry.stored_shape)[..., :entry.shape[-1]]
        if scale is not None:
            src = src.to(torch.float32) * scale
        dest.copy_(src.reshape(dest.shape))
        if on_bytes:
            on_bytes(entry.nbytes)
        return dest


def open_gguf(path: Path) -> tuple[dict[str, Entry], dict[str, str], dict[Path, Callable]]:
    """(name -> entry, metadata, file -> reader factory) of one ``.gguf`` file; headers only."""
    gguf = gguf_package()
    try:
        reader = gguf.GGUFReader(str(path), mode="c")  # copy-on-write map: writable views, file untouched
    except Exception as e:  # noqa: BLE001 - the package raises ValueError / IndexError / OSError on bad files
        reason = str(e) or type(e).__name__
        if "magic" in reason.lower():
            raise CheckpointError(f"{path} is not a GGUF file (no GGUF magic at the start); check the file") from None
        if isinstance(e, ValueError) and "is not a valid GGMLQuantizationType" in reason:
            raise CheckpointError(f"{path}: a tensor has an unknown GGML quantisation type ({reason}); this file "
                                  "needs a newer reader or is corrupt") from None
        raise CheckpointError(f"{path}: cannot read this GGUF file ({type(e).__name__}: {reason}); it is truncated or "
                              "corrupt: download it again") from None
    metadata = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        value = _field_value(field)
        if value is not None:
            metadata[key] = value
    padded = _padded_shapes(path, metadata.pop(PADDED_KEY, None))
    size = os.path.getsize(path)
    entries: dict[str, Entry] = {}
    for t in reader.tensors:
        qtype = q.GGMLType(int(t.tensor_type))
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        if t.data_offset + t.n_bytes > size or t.data.nbytes != t.n_bytes:
            raise CheckpointError(f"{path}: tensor {t.name!r} ends at byte {t.data_offset + t.n_bytes} but the file "
                                  f"has {size} bytes; the file is truncated: download it again")
        logical, stored = shape, None
        if t.name in padded:
            logical, stored = padded[t.name], shape
            if logical[:-1] != shape[:-1] or not 0 < logical[-1] <= shape[-1]:
                raise CheckpointError(f"{path}: {PADDED_KEY} gives tensor {t.name!r} the shape {list(logical)}, which "
                                      f"does not fit its stored shape {list(shape)}; the file is corrupt")
        plain = qtype in PLAIN_TYPES
        entries[t.name] = Entry(t.name, t.name, path, PLAIN_TYPES[qtype] if plain else torch.uint8, logical,
                                int(t.n_bytes), int(t.data_offset), None if plain else int(qtype), t.data, stored)
    return entries, metadata, {path: lambda chunk: _GGUFReader(path)}


def _padded_shapes(path: Path, raw: Optional[str]) -> dict[str, tuple[int, ...]]:
    if not raw:
        return {}
    try:
        return {str(k): tuple(int(d) for d in v) for k, v in json.loads(raw).items()}
    except (ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path}: metadata {PADDED_KEY} is not a JSON object of shapes ({e}); the file is "
                              "corrupt") from None


# ------------------------------------------------------------------ writing


@dataclass(frozen=True)
class GGUFSpec:
    """One tensor to write: name, element shape, GGML type and a function producing the float tensor. It is encoded
    to ``qtype`` here (:func:`magihuman.quant.gguf.encode`); rows that are not whole blocks are zero-padded to whole
    blocks and the logical shape recorded under :data:`PADDED_KEY`."""

    name: str
    shape: tuple[int, ...]
    qtype: int
    produce: Callable[[], torch.Tensor]

    @property
    def stored_shape(self) -> tuple[int, ...]:
        if not self.shape:
            return self.shape
        return (*self.shape[:-1], q.padded_width(self.shape[-1], self.qtype))

    @property
    def nbytes(self) -> int:
        block, size = q.BLOCK_SIZES[q.GGMLType(self.qtype)]
        n = int(np.prod(self.stored_shape)) if self.shape else 1
        return n // block * size


def gguf_storage(quant: StorageLike, what: str) -> Storage:
    """The storage :func:`write_gguf` writes ``what`` (e.g. "block linears") in, from ``"Q8_0"``, ``"q4_k"``,
    ``"bf16"``, ...; a storage it cannot write is a clear error."""
    st = parse_storage(quant, what="GGUF quantisation")
    if st.name not in convert_choices():
        raise CheckpointError(f"cannot write GGUF {what} as {st.name}; choose one of {', '.join(convert_choices())}")
    return st


def write_gguf(path: str | Path, specs: Iterable[GGUFSpec], *, arch: str, metadata: dict[str, str],
               on_bytes: OnBytes = None) -> int:
    """Write a GGUF file, one tensor in memory at a time; returns the data bytes written. ``metadata``:
    string key/values (``arch`` goes to ``general.architecture``)."""
    gguf = gguf_package()
    specs = list(specs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        writer = gguf.GGUFWriter(str(tmp), arch)
    total = 0
    padded = {s.name: list(s.shape) for s in specs if s.stored_shape != s.shape}
    try:
        for key, value in {**metadata, **({PADDED_KEY: json.dumps(padded)} if padded else {})}.items():
            writer.add_string(key, str(value))
        for s in specs:
            qt = q.GGMLType(s.qtype)
            if qt not in q.ENCODE_TYPES:
                raise ValueError(f"{s.name}: cannot write GGML type {qt.name}; choose one of "
                                 f"{sorted(t.name for t in q.ENCODE_TYPES)}")
            writer.add_tensor_info(s.name, q.byte_shape(s.stored_shape, qt), np.dtype(np.uint8), s.nbytes,
                                   raw_dtype=gguf.GGMLQuantizationType(int(qt)))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for s in specs:
            t = s.produce()
            if tuple(t.shape) != tuple(s.shape):
                raise ValueError(f"{s.name!r}: produced shape {tuple(t.shape)}, expected {s.shape}")
            t = t.detach().to("cpu")
            if s.stored_shape != s.shape:  # zero columns up to whole blocks
                t = torch.nn.functional.pad(t.float(), (0, s.stored_shape[-1] - s.shape[-1]))
            raw = q.encode(t, s.qtype)
            writer.write_tensor_data(raw.numpy())
            total += s.nbytes
            if on_bytes:
                on_bytes(s.nbytes)
            del t, raw
    except BaseException:  # nothing half-written is left behind (the file keeps its old contents, if any)
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    writer.close()
    os.replace(tmp, path)
    return total
