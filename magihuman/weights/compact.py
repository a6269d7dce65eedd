"""Filling the layers that own a stored weight (:mod:`magihuman.storage.layers`) from a file, in a requested storage.

A weight already in the storage it is to be kept in (GGUF blocks of the same type and padding, e4m3 bytes with
their scale) is copied as it is; anything else is read as floats and encoded (quantised) tensor by tensor, so the
file and the model are never both whole in memory. Shared by every loader of models with such layers.
"""

from __future__ import annotations

from collections import Counter
from typing import Optional

import torch

from ..errors import CheckpointError
from ..quant.fp8 import FP8_DTYPE
from ..storage import FP8, GGUF, PLAIN, Storage, parse_storage, storage_of_dtype, storage_of_ggml
from ..storage.layers import _StoredWeight
from .entry import Entry, OnBytes, Reader
from .source import WeightSource

__all__ = ["stored_storage", "main_storage", "fill_stored", "compact_handler", "storage_counts"]


def stored_storage(e: Entry) -> Storage:
    """The storage a file holds a tensor in (GGUF blocks, fp8, or a plain dtype)."""
    if e.quantized:
        return storage_of_ggml(e.qtype)
    found = storage_of_dtype(e.dtype)
    if found is None:  # e5m2 and other dtypes no weight is kept in: read as floats
        return parse_storage("fp32")
    return found


def main_storage(src: WeightSource, keys) -> Storage:
    """The storage holding most bytes among ``keys`` of ``src`` (fp32 when there are none)."""
    by: dict[Storage, int] = {}
    for k in keys:
        e = src.entries[k]
        st = stored_storage(e)
        by[st] = by.get(st, 0) + e.nbytes
    return max(by, key=by.get) if by else parse_storage("fp32")


def fill_stored(layer: _StoredWeight, e: Entry, reader: Reader, src: WeightSource, want: Storage,
                device: torch.device, on_bytes: OnBytes = None) -> tuple[Storage, bool]:
    """Read ``e`` into ``layer`` kept in ``want`` (resolved against what the file holds, see
    :meth:`Storage.resolve`). Returns the storage kept and whether the file's bytes were kept as they are."""
    scale = src.scale_value(e.key) if e.key in src.scale_of else None
    have = stored_storage(e)  # e5m2 (with its scale): fp32, read as floats
    keep = want.resolve(have)
    as_is = keep == have and keep.kind != PLAIN
    if as_is and keep.kind == GGUF:
        padded = keep.padded(layer.rows, layer.cols)[1]
        as_is = e.file_shape[-1] == padded and e.file_shape[0] == layer.experts * layer.rows
    if as_is and keep.kind == GGUF:
        raw = torch.empty(keep.data_shape(layer.rows, layer.cols, layer.experts), dtype=torch.uint8, device=device)
        layer.set_stored(reader.read_into(e, raw, on_bytes), None, keep)
        return keep, True
    if as_is and keep.kind == FP8:  # the e4m3 bytes and the file's scale (1 without one), padded for fp8 matmuls
        w8 = reader.read_into(e, torch.empty(e.shape, dtype=FP8_DTYPE), on_bytes)
        data = keep._pad(w8.view(torch.uint8), layer.rows, layer.cols, layer.experts).view(FP8_DTYPE)
        layer.set_stored(data.to(device), torch.tensor(1.0 if scale is None else scale), keep)
        return keep, True
    # readers decode GGUF blocks and apply fp8 scales in float32 chunk by chunk, rounding once to the destination
    read_dtype = keep.dtype if keep.kind == PLAIN else torch.float32
    w = reader.read_into(e, torch.empty(e.shape, dtype=read_dtype, device=device if keep.kind == PLAIN else "cpu"),
                         on_bytes, scale=scale)
    try:
        data, s = keep.encode(w, layer.experts)
    except ValueError as err:
        raise CheckpointError(f"{e.file}: tensor {e.name!r}: {err} (load it as bf16 to inspect it, or download the "
                              "file again)") from err
    layer.set_stored(data.to(device), s, keep)
    return keep, False


def compact_handler(src: WeightSource, want: Storage, device: torch.device, counts: Optional[Counter] = None):
    """A :func:`~.stream.load_into` handler that fills every stored-weight layer's ``weight`` in ``want`` (and
    counts ``(storage name, kept as stored)`` in ``counts``); other tensors take the default path."""

    def handle(e: Entry, reader: Reader, slot, on_bytes: OnBytes) -> bool:
        mod, attr, _ = slot
        if attr != "weight" or not isinstance(mod, _StoredWeight):
            return False
        kept, as_is = fill_stored(mod, e, reader, src, want, device, on_bytes)
        if counts is not None:
            counts[(kept.name, as_is)] += 1
        return True

    return handle


def storage_counts(counts: Counter) -> str:
    """``"320 Q4_K (as stored), 4 bf16"``: what a load kept, for its log line."""
    return ", ".join(f"{n} {name}" + (" (as stored)" if as_is else "") for (name, as_is), n in sorted(counts.items()))
