"""Device-aware choices: which compute dtype runs the DiT block linears fastest on a device.

The official numerics are bf16 matmuls. On CUDA bf16 is used when the GPU supports it (else fp16).
On a CPU the answer depends on the chip: with bf16 matmul units (AVX512-BF16 / AMX) bf16 GEMMs are
about twice as fast as fp32, without them several times slower, so the CPU choice is measured
(:func:`gemm_rates`, once per device and size, cached for the process).
"""

from __future__ import annotations

import time
from typing import Iterable, Optional, Union

import torch
import torch.nn.functional as F

from .storage import parse_storage

DeviceLike = Union[str, torch.device, None]

# The dtypes block linears compute in (other spellings, e.g. "bfloat16", are the storage registry's aliases).
COMPUTE_DTYPE_NAMES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# fp32 must beat bf16 by this factor on a CPU before the official bf16 numerics are given up
CPU_FP32_MARGIN = 1.10

_RATE_CACHE: dict[tuple[str, torch.dtype, int], float] = {}
_PICK_CACHE: dict[str, torch.dtype] = {}


def as_device(device: DeviceLike) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and torch.cuda.is_available():
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(device: torch.device, dtype: torch.dtype, size: int, repeats: int) -> float:
    """Best ``F.linear([size, size] x [size, size]^T)`` rate in GFLOP/s (0.0 when the dtype fails)."""
    try:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
        w = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
        F.linear(x, w)  # warm-up (kernel selection, packing)
        _sync(device)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            F.linear(x, w)
            _sync(device)
            best = min(best, time.perf_counter() - t0)
    except (RuntimeError, TypeError):  # dtype not implemented on this device
        return 0.0
    return 2.0 * size ** 3 / max(best, 1e-9) / 1e9


# the two compute dtypes a CPU chooses between (bf16 matmul units or not)
CPU_CANDIDATES = (COMPUTE_DTYPE_NAMES["bf16"], COMPUTE_DTYPE_NAMES["fp32"])


def gemm_rates(device: DeviceLike = "cpu", dtypes: Iterable[torch.dtype] = CPU_CANDIDATES,
               size: int = 1024, repeats: int = 3, refresh: bool = False) -> dict[torch.dtype, float]:
    """Measured ``F.linear`` GFLOP/s per dtype on ``device`` (square ``size`` GEMM, best of
    ``repeats``); cached per (device, dtype, size) unless ``refresh``. 0.0 = unsupported."""
    dev = as_device(device)
    out = {}
    for dt in dtypes:
        key = (str(dev), dt, int(size))
        if refresh or key not in _RATE_CACHE:
            _RATE_CACHE[key] = _measure(dev, dt, int(size), repeats)
        out[dt] = _RATE_CACHE[key]
    return out


def cuda_bf16_native(device: torch.device) -> bool:
    """bf16 runs in hardware on this CUDA device: ``torch.cuda.is_bf16_supported(including_emulation=False)``
    asked of ``device`` itself (that call looks at the current device only)."""
    if torch.version.hip:
        return bool(torch.cuda.is_bf16_supported())
    return torch.cuda.get_device_capability(device)[0] >= 8


def pick_compute_dtype(device: DeviceLike = None, *, rates: Optional[dict[torch.dtype, float]] = None) -> torch.dtype:
    """Fastest compute dtype that keeps bf16-level accuracy on ``device``.

    CUDA: bf16 when the GPU computes it natively (sm80+, ROCm), else fp16: torch reports bf16 as
    "supported" on a 2080 Ti / T4 / V100 by emulating it, several times slower than fp16 there.
    CPU: bf16 unless fp32 GEMMs measure faster by
    :data:`CPU_FP32_MARGIN` (CPUs without bf16 units). Other devices: bf16. ``rates`` overrides the
    measurement (for tests and callers that measured already).
    """
    dev = as_device(device)
    if dev.type == "cuda":
        return torch.bfloat16 if cuda_bf16_native(dev) else torch.float16
    if dev.type != "cpu":
        return torch.bfloat16
    if rates is not None:
        return _faster_on_cpu(rates)
    if str(dev) not in _PICK_CACHE:
        _PICK_CACHE[str(dev)] = _faster_on_cpu(gemm_rates(dev, CPU_CANDIDATES))
    return _PICK_CACHE[str(dev)]


def _faster_on_cpu(rates: dict[torch.dtype, float]) -> torch.dtype:
    bf16, fp32 = rates.get(torch.bfloat16, 0.0), rates.get(torch.float32, 0.0)
    return torch.float32 if fp32 > CPU_FP32_MARGIN * bf16 else torch.bfloat16


def resolve_compute_dtype(choice: Union[str, torch.dtype], device: DeviceLike = None) -> torch.dtype:
    """``"auto"`` -> :func:`pick_compute_dtype`; ``"bf16"``/``"fp16"``/``"fp32"`` (or a dtype) as given."""
    if isinstance(choice, torch.dtype):
        return choice
    if str(choice).strip().lower() == "auto":
        return pick_compute_dtype(device)
    try:
        dtype = parse_storage(choice).dtype
    except ValueError:
        dtype = None
    if dtype not in COMPUTE_DTYPE_NAMES.values():
        raise ValueError(f"unknown compute dtype {choice!r}; use 'auto', {', '.join(map(repr, COMPUTE_DTYPE_NAMES))}")
    return dtype
