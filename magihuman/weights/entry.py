"""What a weights source knows of one tensor before reading it, and the reader interface of every format."""

from __future__ import annotations

from dataclasses import dataclass, field
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

    @property
    def quantized(self) -> bool:
        return self.qtype is not None

    @property
    def file_shape(self) -> tuple[int, ...]:
        """The element shape as the file holds it (rows zero-padded to whole blocks where they were)."""
        return self.stored_shape or self.shape

    def renamed(self, key: str) -> "Entry":
        """The same tensor under another model key."""
        return Entry(key, self.name, self.file, self.dtype, self.shape, self.nbytes, self.offset, self.qtype, self.ref,
                     self.stored_shape)


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
