"""Torch pickles (``.ckpt`` / ``.pt`` / ``.pth`` / ``.bin``), read only through ``torch.load(weights_only=True)``.

The weights-only unpickler builds tensors and plain containers and nothing else, so a file whose
unpickling would run code is refused before anything runs. Files are memory-mapped when their format
allows (zip-based torch files), so a large checkpoint is not copied into RAM.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError

__all__ = ["PICKLE_SUFFIXES", "is_pickle", "load_torch_weights"]

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def is_pickle(path: str | Path) -> bool:
    return str(path).lower().endswith(PICKLE_SUFFIXES)


def _unpickler_reason(err: Exception) -> str:
    """The informative part of a torch.load error, without torch's advice to load unsafely or to allowlist
    the rejected global."""
    marker, noise = "WeightsUnpickler error:", ("Weights only load failed", "Check the documentation")
    parts = []
    for part in str(err).split("\n\n"):
        if marker in part:
            part = part.split(marker, 1)[1]
        elif part.strip().startswith(noise):
            continue
        parts.append(part.split("Please use `torch.serialization")[0])
    return " ".join(" ".join(parts).split()) or type(err).__name__


def load_torch_weights(path: str | Path, *, what: str, hint: str = "") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU (memory-mapped when possible); never anything weaker.

    A pickle the weights-only unpickler rejects raises :class:`CheckpointError` saying it was refused (and why); any
    other parse failure raises it saying the file cannot be read as ``what``. ``hint``: what to use instead.
    """
    path = Path(path)
    for mmap in (True, False):
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as err:
            raise CheckpointError(f"{path}: refused to load this pickle for safety: torch.load(weights_only=True) "
                                  f"rejected it ({_unpickler_reason(err)}). Only plain tensors and containers are "
                                  f"read; pickled code is never executed (the file may also be damaged). "
                                  f"{hint}".rstrip()) from None
        except Exception as err:  # noqa: BLE001 - any parse failure of a foreign file
            if mmap and isinstance(err, RuntimeError) and "mmap" in str(err):
                continue  # legacy (non-zip) torch files cannot be memory-mapped
            raise CheckpointError(f"{path}: cannot read this file as a torch checkpoint ({type(err).__name__}: "
                                  f"{_unpickler_reason(err)}); is it complete and really {what}?") from None
    raise AssertionError("unreachable")
