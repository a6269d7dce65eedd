"""What a weights source knows of one tensor before reading it, and the reader interface of every format.

An entry is either one tensor of a file or one *derived* from several (``parts``): the row-concatenation of
tensors a third-party layout keeps apart (``how="rows"``: per-expert or q/k/v/g pieces of one fused weight), or
int8 data times a per-row scale (``how="row_scale"``: optimum-quanto's int8 weights). A derived entry has the
model key, logical shape and dtype of the tensor it makes; :class:`~.source.WeightSource` readers fill it part by
part, so loaders, converters and estimators see the official tensor and never the pieces.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch

__all__ = ["Entry", "OnBytes", "Reader"]

OnBytes = Optional[Callable[[int], None]]


@dataclass(frozen=True)
class Entry:
    """One tensor of a source under its model key (from the headers; no data read)."""

    key: str                      # model key (after the key map)
    name: str                     # name inside its file
    file: Path
    dtype: torch.dtype            # stored dtype (uint8 for GGUF-quantised data)
    shape: tuple[int, ...]        # logical (element) shape
    nbytes: int
    offset: int = 0               # byte position in its file, for file-order visits
    qtype: Optional[int] = None   # GGUF quantisation type; None for plain tensors
    ref: Any = field(default=None, compare=False, repr=False)  # the format reader's own handle
    stored_shape: Optional[tuple[int, ...]] = None  # element shape in the file when rows are padded (GGUF)
    parts: tuple["Entry", ...] = ()  # a derived tensor: the entries it is made of (see ``how``)
    how: str = ""                    # "rows": parts' rows concatenated in order; "row_scale": (int8 data, scale)

    @property
    def quantized(self) -> bool:
        return self.qtype is not None

    @property
    def file_shape(self) -> tuple[int, ...]:
        """The element shape as the file holds it (rows zero-padded to whole blocks where they were)."""
        return self.stored_shape or self.shape

    def renamed(self, key: str) -> "Entry":
        """The same tensor under another model key."""
        return replace(self, key=key)

    @property
    def derived(self) -> bool:
        return bool(self.parts)

    @property
    def leaves(self) -> tuple["Entry", ...]:
        """The file tensors this entry reads (itself, or its parts' leaves)."""
        return (self,) if not self.parts else tuple(e for p in self.parts for e in p.leaves)


class Reader:
    """Copies the tensors of one file into destinations; the base reads from in-memory (mmap'd) tensors."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]):
        self.tensors = tensors

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        pass

    def read_into(self, entry: Entry, dest: torch.Tensor, on_bytes: OnBytes = None, *,
                  scale: Optional[float] = None) -> torch.Tensor:
        t = self.tensors[entry.name]
        if scale is not None:
            t = t.to(torch.float32) * scale
        dest.copy_(t.reshape(dest.shape))
        if on_bytes:
            on_bytes(entry.nbytes)
        return dest

    def read(self, entry: Entry) -> torch.Tensor:
        """The stored tensor as it is on disk (a fresh CPU tensor)."""
        return self.read_into(entry, torch.empty(entry.file_shape if not entry.quantized else (entry.nbytes,),
                                                 dtype=entry.dtype))


def concat_rows(key: str, parts: tuple[Entry, ...], *, scaled: bool = False) -> Entry:
    """The entry whose rows are ``parts``' rows in order (``scaled``: some parts carry fp8 scales, so the whole
    is decoded to float32 while reading). Raises ValueError when the parts' trailing dims differ."""
    if not parts:
        raise ValueError(f"{key}: no parts to concatenate")
    tail = {p.shape[1:] for p in parts}
    if len(tail) != 1 or not parts[0].shape:
        raise ValueError(f"{key}: its parts cannot be stacked row-wise: "
                         + ", ".join(f"{p.name} {list(p.shape)}" for p in parts))
    rows = sum(p.shape[0] for p in parts)
    shape = (rows, *parts[0].shape[1:])
    dtypes, qtypes = {p.dtype for p in parts}, {p.qtype for p in parts}
    file_tails = {p.file_shape[1:] for p in parts}
    plain = len(dtypes) == 1 and len(qtypes) == 1 and not scaled and len(file_tails) == 1
    dtype, qtype, stored = (parts[0].dtype, parts[0].qtype, None) if plain else (torch.float32, None, None)
    if plain and qtype is not None and parts[0].stored_shape is not None:
        stored = (sum(p.file_shape[0] for p in parts), *parts[0].file_shape[1:])
    first = parts[0].file
    name = parts[0].name if len(parts) == 1 else f"{parts[0].name} .. {parts[-1].name} ({len(parts)} tensors)"
    return Entry(key, name, first, dtype, shape, sum(p.nbytes for p in parts),
                 min(p.offset for p in parts if p.file == first), qtype, None, stored, tuple(parts), "rows")


def row_scaled(key: str, data: Entry, scale: Entry) -> Entry:
    """int8 ``data [rows, cols]`` times ``scale`` (``[rows, 1]`` per row, or one value), read as the scale's dtype:
    optimum-quanto's ``<m>.weight._data`` / ``<m>.weight._scale``. Raises ValueError on other shapes."""
    if data.dtype != torch.int8 or len(data.shape) != 2:
        raise ValueError(f"{data.name} is {str(data.dtype).replace('torch.', '')} {list(data.shape)}; quanto int8 "
                         "weights are int8 matrices")
    if not scale.dtype.is_floating_point or tuple(scale.shape) not in ((data.shape[0], 1), (data.shape[0],), (), (1,)):
        raise ValueError(f"{scale.name} is {str(scale.dtype).replace('torch.', '')} {list(scale.shape)}; the scale of "
                         f"{data.name} {list(data.shape)} must be a float [{data.shape[0]}, 1] (one per row) or one "
                         "value")
    return Entry(key, data.name, data.file, scale.dtype, data.shape, data.nbytes + scale.nbytes, data.offset,
                 parts=(data, scale), how="row_scale")
