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

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import torch

from ..errors import CheckpointError
from ..quant import gguf as q
from .entry import Entry, OnBytes, Reader

__all__ = ["GGUF_SUFFIX", "ARCH_KEY", "PLAIN_TYPES", "open_gguf", "GGUFSpec", "write_gguf", "gguf_package"]

GGUF_SUFFIX = ".gguf"
ARCH_KEY = "general.architecture"
# GGML types read as plain tensors (everything else stays as raw blocks until dequantised).
PLAIN_TYPES = {q.GGMLType.F32: torch.float32, q.GGMLType.F16: torch.float16, q.GGMLType.BF16: torch.bfloat16}
# Types write_gguf can write: the byte-exact quantisers, plus Q4_K through the simple encoder q.encode_q4_k.
WRITE_TYPES = q.QUANTIZE_TYPES | {q.GGMLType.Q4_K}


ENCODE_CHUNK_BYTES = 16 << 20  # float32 rows quantised at a time: the quantisers' temporaries stay this small


def _encode(t: torch.Tensor, qt: q.GGMLType) -> torch.Tensor:
    """``t`` as GGUF bytes, a chunk of rows at a time (blocks never span rows, so the bytes are those of one
    call; the quantisers hold several float copies of what they are given)."""
    encode = q.encode_q4_k if qt == q.GGMLType.Q4_K else (lambda x: q.quantize(x, qt))
    if t.dim() < 2:
        return encode(t)
    rows = t.reshape(-1, t.shape[-1])
    step = max(1, ENCODE_CHUNK_BYTES // (4 * rows.shape[1]))
    out = torch.empty(q.byte_shape(rows.shape, qt), dtype=torch.uint8)
    for i in range(0, rows.shape[0], step):
        out[i:i + step] = encode(rows[i:i + step])
    return out.reshape(q.byte_shape(t.shape, qt))


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
            src = q.dequantize(src, entry.qtype, entry.shape, dtype=torch.float32 if scale is not None else dest.dtype)
        elif entry.dtype == torch.bfloat16:
            src = src.view(torch.bfloat16)  # numpy has no bf16: the reader hands its bytes
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
    size = os.path.getsize(path)
    entries: dict[str, Entry] = {}
    for t in reader.tensors:
        qtype = q.GGMLType(int(t.tensor_type))
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        if t.data_offset + t.n_bytes > size or t.data.nbytes != t.n_bytes:
            raise CheckpointError(f"{path}: tensor {t.name!r} ends at byte {t.data_offset + t.n_bytes} but the file has "
                                  f"{size} bytes; the file is truncated: download it again")
        if qtype in PLAIN_TYPES:
            entries[t.name] = Entry(t.name, t.name, path, PLAIN_TYPES[qtype], shape, int(t.n_bytes), int(t.data_offset),
                                    None, t.data)
        else:
            entries[t.name] = Entry(t.name, t.name, path, torch.uint8, shape, int(t.n_bytes), int(t.data_offset),
                                    int(qtype), t.data)
    return entries, metadata, {path: lambda chunk: _GGUFReader(path)}


# ------------------------------------------------------------------ writing


@dataclass(frozen=True)
class GGUFSpec:
    """One tensor to write: name, element shape, GGML type and a function producing the float tensor (it is
    quantised to ``qtype`` here, with :func:`magihuman.quant.gguf.quantize`, or
    :func:`magihuman.quant.gguf.encode_q4_k` for Q4_K)."""

    name: str
    shape: tuple[int, ...]
    qtype: int
    produce: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        block, size = q.BLOCK_SIZES[q.GGMLType(self.qtype)]
        n = int(np.prod(self.shape)) if self.shape else 1
        return n // block * size


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
    try:
        for key, value in metadata.items():
            writer.add_string(key, str(value))
        for s in specs:
            qt = q.GGMLType(s.qtype)
            if qt not in WRITE_TYPES:
                raise ValueError(f"{s.name}: cannot write GGML type {qt.name}; choose one of "
                                 f"{sorted(t.name for t in WRITE_TYPES)}")
            writer.add_tensor_info(s.name, q.byte_shape(s.shape, qt), np.dtype(np.uint8), s.nbytes,
                                   raw_dtype=gguf.GGMLQuantizationType(int(qt)))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for s in specs:
            t = s.produce()
            if tuple(t.shape) != tuple(s.shape):
                raise ValueError(f"{s.name!r}: produced shape {tuple(t.shape)}, expected {s.shape}")
            raw = _encode(t.detach().to("cpu"), q.GGMLType(s.qtype))
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
