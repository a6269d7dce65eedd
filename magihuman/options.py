"""How a loaded DiT runs, as one value: compute dtype, attention kernel, local-attention plan, fp8 compute, regional
compile, block offload and LoRAs. The CLI, the ComfyUI nodes and the multi-GPU workers build a :class:`RunOptions`,
:meth:`RunOptions.apply` sets it on a model in one place, and :meth:`RunOptions.of` reads it back (what a worker
needs to build the same model). The allowed values come from the registries of each setting (:data:`CHOICES`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Optional, Sequence

import torch

from .attention import attention_backend_names
from .compile import compile_dit_blocks, is_compiled
from .device import COMPUTE_DTYPE_NAMES
from .lora import apply_lora
from .models.dit import LOCAL_ATTENTION_MODES
from .offload import enable_block_offload
from .quant.fp8 import FP8_COMPUTE_MODES

__all__ = ["RunOptions", "choices"]


def choices() -> dict[str, list[str]]:
    """The allowed values of each setting, for the CLI's and the nodes' lists."""
    return {"compute_dtype": ["auto", *COMPUTE_DTYPE_NAMES], "attention": attention_backend_names(),
            "fp8_compute": [FP8_COMPUTE_MODES[0], "auto", *FP8_COMPUTE_MODES[1:]],
            "local_attention": list(LOCAL_ATTENTION_MODES)}


@dataclass(frozen=True)
class RunOptions:
    """How a DiT runs (see the module docstring). ``compute_dtype`` and ``fp8_compute`` may be "auto" (resolved
    for the compute device by :meth:`apply`); ``blocks_on_device``: block offload, N layers kept on the device (None:
    all, or the host manages it); ``loras``: (file, strength) applied by the engine (a host may apply its own)."""

    compute_dtype: str = "auto"
    attention: str = "sdpa"
    local_attention: str = "window"
    local_block_frames: int = 1
    fp8_compute: str = "off"
    compile: bool = False
    blocks_on_device: Optional[int] = None
    loras: tuple[tuple[str, float], ...] = field(default=())

    def __post_init__(self) -> None:
        allowed = choices()
        for name in ("compute_dtype", "fp8_compute", "local_attention"):
            if getattr(self, name) not in allowed[name]:
                raise ValueError(f"{name} must be one of {', '.join(allowed[name])}, got {getattr(self, name)!r}")
        if self.blocks_on_device is not None and int(self.blocks_on_device) < 0:
            raise ValueError(f"blocks_on_device must be >= 0 (0 streams every layer), got {self.blocks_on_device}")
        object.__setattr__(self, "loras", tuple((str(p), float(s)) for p, s in self.loras))

    def apply(self, model, device) -> "RunOptions":
        """Set these options on ``model`` for running on ``device`` (LoRAs first: a LoRA may change the variant,
        offload and compile last: they wrap the layers as they then are). Returns the options as resolved
        ("auto" replaced by what was chosen)."""
        device = torch.device(device)
        for path, strength in self.loras:
            apply_lora(model, path, strength)
        model.compute_device = device
        model.set_compute_dtype(self.compute_dtype, device=device)
        model.set_attention_backend(self.attention)
        fp8 = model.set_fp8_compute(self.fp8_compute, device=device)
        model.set_local_attention(self.local_attention, self.local_block_frames)
        if self.blocks_on_device is not None:  # more layers than the model has: every layer stays
            enable_block_offload(model, device, min(int(self.blocks_on_device), len(model.block.layers)))
        if self.compile:
            compile_dit_blocks(model)
        return replace(self, compute_dtype=_dtype_name(model.compute_dtype), fp8_compute=fp8)

    @classmethod
    def of(cls, model, loras: Sequence[tuple[str, float]] = ()) -> "RunOptions":
        """The options ``model`` runs with now (``loras``: the LoRA files to name; the engine's own applied ones when
        not given)."""
        offload = getattr(model, "_magi_block_offload", None)
        if not loras:
            loras = tuple((str(h.file.path), h.strength) for h in getattr(model, "loras", ()))
        attention = model.attention_backend if isinstance(model.attention_backend, str) else "sdpa"
        return cls(compute_dtype=_dtype_name(model.compute_dtype), attention=attention,
                   local_attention=model.local_attention_mode, local_block_frames=int(model.local_block_frames),
                   fp8_compute=model.fp8_compute, compile=any(is_compiled(layer) for layer in model.block.layers),
                   blocks_on_device=None if offload is None else len(offload.resident), loras=tuple(loras))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunOptions":
        return cls(**{**d, "loras": tuple(tuple(x) for x in d.get("loras", ()))})


_COMPUTE_DTYPE_NAME = {dt: n for n, dt in COMPUTE_DTYPE_NAMES.items()}  # torch.bfloat16 -> "bf16", ...


def _dtype_name(dtype: torch.dtype) -> str:
    """The name of a compute dtype (a model's ``compute_dtype``)."""
    try:
        return _COMPUTE_DTYPE_NAME[dtype]
    except KeyError:
        raise ValueError(f"compute dtype {dtype} is not one of {', '.join(COMPUTE_DTYPE_NAMES)}") from None
