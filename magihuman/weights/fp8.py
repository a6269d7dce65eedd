"""fp8 checkpoints: the scale tensors of the two published per-tensor layouts, set apart from the model keys.

- ``<key>.__fp8_scale``: an fp32 scalar per fp8 weight (the daVinci-MagiHuman FP8 conversion);
- ComfyUI "scaled fp8": a ``scaled_fp8`` marker tensor, ``<module>.scale_weight`` per fp8 weight and an
  optional activation ``<module>.scale_input`` (unused when weights are dequantised or kept with their scale).
The weight is ``float32(stored) * scale`` in both.
"""

from __future__ import annotations

import logging

import torch

from ..errors import CheckpointError
from .report import listing

log = logging.getLogger(__name__)

__all__ = ["FP8_SCALE_SUFFIX", "COMFY_FP8_MARKER", "is_fp8", "split_fp8_scales"]

FP8_SCALE_SUFFIX = ".__fp8_scale"
COMFY_FP8_MARKER = "scaled_fp8"


def is_fp8(dtype: torch.dtype) -> bool:
    """Whether a stored dtype is one of the 8-bit floats (e4m3fn, e5m2)."""
    return dtype.is_floating_point and dtype.itemsize == 1


def split_fp8_scales(src) -> None:
    """Move scale tensors out of ``src.entries`` (a :class:`~.source.WeightSource`) into ``src.scale_of`` (model key
    of the weight -> scale entry); ComfyUI's marker and activation scales go to ``src.ignored``. Refuses a file in
    which some fp8 weights have scales and others do not (dequantising it would give wrong weights)."""
    keys = set(src.entries)
    comfy = COMFY_FP8_MARKER in keys
    drop = []

    def take(scale_key: str, weight_key: str) -> None:
        if weight_key not in keys:
            raise CheckpointError(f"{src.describe()}: scale {src.entries[scale_key].name!r} has no weight "
                                  f"{weight_key!r} to apply to")
        src.scale_of[weight_key] = src.entries[scale_key]

    for k in sorted(keys):
        if k.endswith(FP8_SCALE_SUFFIX):
            take(k, k[: -len(FP8_SCALE_SUFFIX)])
        elif comfy and k.endswith(".scale_weight"):
            take(k, k[: -len(".scale_weight")] + ".weight")
        elif comfy and (k.endswith(".scale_input") or k == COMFY_FP8_MARKER):
            src.ignored.append(src.entries[k].name)
        else:
            continue
        drop.append(k)
    for k in drop:
        del src.entries[k]
    kinds = [name for name, used in (("__fp8_scale", any(k.endswith(FP8_SCALE_SUFFIX) for k in drop)),
                                     ("scaled_fp8", comfy)) if used]
    if kinds:
        src.quantization = "fp8 per-tensor scales (" + ", ".join(kinds) + ")"
    fp8 = [k for k, e in src.entries.items() if is_fp8(e.dtype)]
    unscaled = [k for k in fp8 if k not in src.scale_of]
    if unscaled and src.scale_of:
        raise CheckpointError(
            f"{src.describe()}: {len(unscaled)} fp8 weight(s) have no scale while {len(src.scale_of)} do (first "
            f"without: {listing(sorted(unscaled), None, 3)}); dequantising them would give wrong weights. The file "
            f"is incomplete or mixes two conversions: download the fp8 checkpoint again (every fp8 weight needs "
            f"'<key>{FP8_SCALE_SUFFIX}' or a ComfyUI '.scale_weight') or use the bf16/fp32 release")
    if unscaled:
        log.warning("%s: %d fp8 weight(s) carry no scales; using the stored values as they are (a plain fp8 cast). "
                    "If the output is noise, the file needs its '%s' scales", src.describe(), len(unscaled),
                    FP8_SCALE_SUFFIX)
