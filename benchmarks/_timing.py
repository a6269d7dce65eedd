"""Clock reads for the benchmarks that stay right on a GPU.

CUDA (and XPU / MPS) kernels run asynchronously: a clock read right after a call measures its launch, not its
work. Every benchmark reads time through :func:`now`, which first waits for the work queued on the devices this
process uses (nothing to wait for on a CPU-only run, and it never initialises CUDA itself).
"""

from __future__ import annotations

import time

import torch

__all__ = ["now", "synchronize"]


def synchronize() -> None:
    """Wait until the accelerators in use have finished their queued work."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available() and xpu.is_initialized():
        xpu.synchronize()
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        torch.mps.synchronize()


def now() -> float:
    """``time.perf_counter()`` once the devices are idle: differences of two reads time the work in between."""
    synchronize()
    return time.perf_counter()
