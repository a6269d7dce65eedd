"""The one attention entry point of the engine, with a small swappable backend registry.

``attention(q, k, v, mask)`` takes q ``[B, Hq, L, D]`` and k, v ``[B, Hkv, L, D]`` (grouped-query:
query head ``h`` reads key/value head ``h // (Hq // Hkv)``), softmax scale ``1/sqrt(D)``, and an
optional boolean ``mask`` broadcastable to ``[B, Hq, L, L]`` where ``True`` means "may attend".
It returns ``[B, Hq, L, D]`` in the dtype of ``q``. Hosts add kernels by name with
:func:`register_attention_backend`; which one runs is a property of each model (``backend=`` here, set
through ``MagiHumanDiT.set_attention_backend`` / ``T5GemmaEncoder.set_attention_backend``): two models in
one process can use different kernels, and no choice leaks from one model to another.

Built in: ``"sdpa"`` (default, torch SDPA; native GQA only where a fused kernel takes it, key/value heads
repeated otherwise, see :func:`flash_serves_gqa`), ``"math"`` (fp32 reference), and two optional CUDA
backends loaded on first selection, never required: ``"flash"`` (``flash_attn_interface``, i.e.
FlashAttention 3, else ``flash_attn`` 2) and ``"sage"`` (``sageattention``). These take no masks;
the DiT's default attention plan never passes one (see ``MagiHumanDiT.set_local_attention``).
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


def _check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"attention expects 4-D [B, H, L, D] tensors, got q{tuple(q.shape)} k{tuple(k.shape)} v{tuple(v.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got k{tuple(k.shape)} v{tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q{tuple(q.shape)} and k{tuple(k.shape)} differ in batch or head_dim")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"{q.shape[1]} query heads are not a multiple of {k.shape[1]} key/value heads")


# Largest head_dim torch's CUDA flash SDPA kernel takes (sdp_utils check_head_dim_size_flash).
FLASH_MAX_HEAD_DIM = 256


def _cuda_flash_enabled() -> bool:
    """torch was built with flash SDPA and it is not switched off. Inside a compiled layer these flag reads
    would break the graph, so there flash is taken as built and on (the shape/dtype/arch checks still hold)."""
    if torch.compiler.is_compiling():
        return True
    return bool(torch.backends.cuda.is_flash_attention_available() and torch.backends.cuda.flash_sdp_enabled())


def _cuda_capability(device: torch.device) -> tuple[int, int]:
    return tuple(torch.cuda.get_device_capability(device))


def _torch_flash_accepts(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """torch's own verdict (eager only): it also knows the architecture range of this torch build."""
    try:
        params = torch.backends.cuda.SDPAParams(q, k, v, None, 0.0, False, True)
    except (TypeError, AttributeError):  # a torch without the enable_gqa field: the rule alone decides
        return True
    return bool(torch.backends.cuda.can_use_flash_attention(params))


def flash_serves_gqa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor]) -> bool:
    """True when torch SDPA runs this grouped-query call (``enable_gqa=True``) in a fused kernel.

    Why: on CUDA only the flash kernel takes ``enable_gqa``; any other case (a mask, fp32, a GPU below
    sm80 such as the 2080 Ti / T4 / V100, head_dim > 256) falls to the math kernel, which holds the
    whole ``[B, Hq, L, L]`` score matrix (~13 GB at 480p / 5 s). CPU: torch's CPU flash kernel takes
    GQA with or without a mask in every float dtype. Conditions follow torch's sdp_utils (flash built and
    enabled, all on CUDA, sm80+, fp16/bf16, no mask, head_dim <= 256, unit last-dim stride).
    """
    if q.device.type == "cpu":
        return True
    if q.device.type != "cuda" or mask is not None or not (q.dtype.is_floating_point and q.dtype.itemsize == 2):
        return False
    d = q.shape[-1]
    if d > FLASH_MAX_HEAD_DIM or d % 8 or any(t.stride(-1) != 1 for t in (q, k, v)):
        return False
    if not _cuda_flash_enabled() or _cuda_capability(q.device) < (8, 0):
        return False
    return torch.compiler.is_compiling() or _torch_flash_accepts(q, k, v)


def repeat_kv_heads(k: torch.Tensor, v: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k, v ``[B, Hkv, L, D] -> [B, heads, L, D]``: query head ``h`` gets kv head ``h // (heads // Hkv)``."""
    b, hkv, n, d = k.shape
    if heads == hkv:
        return k, v
    g = heads // hkv
    k = k.unsqueeze(2).expand(b, hkv, g, n, d).reshape(b, heads, n, d)  # [B, Hkv, g, L, D] -> [B, Hq, L, D]
    v = v.unsqueeze(2).expand(b, hkv, g, n, d).reshape(b, heads, n, d)
    return k, v


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor] = None, *,
                   scale: Optional[float] = None) -> torch.Tensor:
    """torch ``scaled_dot_product_attention``: native GQA where a fused kernel takes it, else key/value heads
    repeated first (a copy of k/v, not an O(L^2) score matrix; see :func:`flash_serves_gqa`)."""
    gqa = q.shape[1] != k.shape[1]
    if gqa and not flash_serves_gqa(q, k, v, mask):
        k, v = repeat_kv_heads(k, v, q.shape[1])
        gqa = False
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Plain softmax attention in fp32 (debugging / numerics reference; memory O(L^2) per head)."""
    rep = q.shape[1] // k.shape[1]
    kf = k.float().repeat_interleave(rep, dim=1)
    vf = v.float().repeat_interleave(rep, dim=1)
    scores = torch.matmul(q.float(), kf.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(scores.softmax(dim=-1), vf).to(q.dtype)


def _no_mask(name: str, mask: Optional[torch.Tensor]) -> None:
    if mask is not None:
        raise ValueError(f"attention backend {name!r} takes no mask; run the DiT in its default 'window' attention "
                         "plan (set_local_attention('window', block_frames=1)) or select the 'sdpa' backend")


def _half_precision(name: str, q: torch.Tensor) -> None:
    if not (q.dtype.is_floating_point and q.dtype.itemsize == 2) or q.device.type != "cuda":  # fp16 / bf16
        raise ValueError(f"attention backend {name!r} needs fp16/bf16 tensors on CUDA, got {q.dtype} on {q.device}; "
                         "use compute dtype bf16 (set_compute_dtype('auto')) or the 'sdpa' backend")


def _import_first(names: tuple[str, ...]):
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def _flash_call(mod, q, k, v):
    """FlashAttention 3 (``flash_attn_interface``) or 2 (``flash_attn``); native GQA."""
    out = mod.flash_attn_func(q, k, v, causal=False)
    return out[0] if isinstance(out, tuple) else out  # some FlashAttention 3 builds also return the log-sum-exp


def _sage_call(mod, q, k, v):
    """SageAttention (quantised QK^T); GQA is supported by the kernel."""
    return mod.sageattn(q, k, v, tensor_layout="NHD", is_causal=False)


# Optional CUDA backends: modules tried in order, what to install, and the call on [B, L, H, D] tensors
# (the kernels' layout; the DiT's q/k/v are views of that layout, so the transposes are free).
_OPTIONAL = {
    "flash": (("flash_attn_interface", "flash_attn"), "the flash-attn package (FlashAttention 2: `pip install "
              "flash-attn`, or FlashAttention 3's flash_attn_interface)", _flash_call),
    "sage": (("sageattention",), "the sageattention package (`pip install sageattention`)", _sage_call),
}


def _load_optional(name: str) -> AttentionFn:
    modules, package, call = _OPTIONAL[name]
    mod = _import_first(modules)
    if mod is None:
        raise ValueError(f"attention backend {name!r} needs {package}; it is not installed")

    def backend(q, k, v, mask=None):
        _no_mask(name, mask)
        _half_precision(name, q)
        return call(mod, q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

    return backend


_BACKENDS: dict[str, AttentionFn] = {"sdpa": sdpa_attention, "math": math_attention}
# Every process knows these (a host registers more, e.g. ComfyUI's "comfy": only that process has them)
ENGINE_BACKENDS = frozenset(_BACKENDS) | frozenset(_OPTIONAL)
DEFAULT_BACKEND = "sdpa"
Backend = Union[str, AttentionFn]


def register_attention_backend(name: str, fn: AttentionFn) -> None:
    """Add (or replace) a backend ``fn(q, k, v, mask) -> out`` with the contract of :func:`attention`."""
    if not callable(fn):
        raise TypeError(f"attention backend {name!r} must be callable, got {type(fn).__name__}")
    _BACKENDS[name] = fn


def resolve_attention_backend(name: Backend) -> AttentionFn:
    """The kernel registered as ``name`` (an optional CUDA kernel is loaded on first use, with a clear error
    when its package or CUDA is missing); a callable is returned as it is."""
    if callable(name):
        return name
    if name not in _BACKENDS and name in _OPTIONAL:
        if not torch.cuda.is_available():
            raise ValueError(f"attention backend {name!r} runs on CUDA only and no CUDA device is available; "
                             "use 'sdpa'")
        _BACKENDS[name] = _load_optional(name)  # raises a clear error when the package is missing
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; registered: {', '.join(sorted(_BACKENDS))}, "
                         f"optional: {', '.join(sorted(_OPTIONAL))} (add one with register_attention_backend)")
    return _BACKENDS[name]


def attention_backend_names() -> list[str]:
    """Every backend name a model may be given: the registered ones (the default first) and the optional CUDA ones,
    whether or not they can run here (lists for the CLI and the nodes; :func:`resolve_attention_backend` says
    why one cannot)."""
    return [DEFAULT_BACKEND] + sorted((set(_BACKENDS) | set(_OPTIONAL)) - {DEFAULT_BACKEND})


def available_attention_backends() -> list[str]:
    """Registered backends plus the optional ones usable here (package importable and CUDA present)."""
    usable = set(_BACKENDS)
    if torch.cuda.is_available():
        usable |= {n for n, (mods, _, _) in _OPTIONAL.items()
                   if any(importlib.util.find_spec(m) is not None for m in mods)}
    return sorted(usable)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor] = None, *,
              backend: Backend = DEFAULT_BACKEND) -> torch.Tensor:
    """Softmax attention ``[B, Hq, Lq, D] x [B, Hkv, Lk, D] -> [B, Hq, Lq, D]`` with the kernel ``backend``."""
    _check_shapes(q, k, v)
    if mask is not None and mask.dtype != torch.bool:
        raise TypeError(f"attention mask must be boolean (True = attend), got {mask.dtype}")
    return resolve_attention_backend(backend)(q, k, v, mask)


# ---------------------------------------------------------------- local (frame-window) attention

@dataclass(frozen=True)
class LocalWindow:
    """The local-attention rule of the 1080p SR layers, over a sequence ``[video | audio | text]``.

    A video query of latent frame i sees the video keys of frames ``[i - frf, i + frf]`` and every
    audio and text key; audio and text queries see everything (official ``calc_local_qk_range``).
    Queries are processed ``block_frames`` latent frames at a time.
    """

    num_video: int  # video tokens at the start of the sequence
    tokens_per_frame: int  # video tokens per latent frame (h * w of the token grid)
    frame_receptive_field: int
    block_frames: int = 1

    def __post_init__(self) -> None:
        if self.tokens_per_frame < 1 or self.num_video % self.tokens_per_frame:
            raise ValueError(f"{self.num_video} video tokens do not split into frames of {self.tokens_per_frame}")
        if self.frame_receptive_field < 0:
            raise ValueError(f"frame_receptive_field must be >= 0, got {self.frame_receptive_field}")
        if self.block_frames < 1:
            raise ValueError(f"block_frames must be >= 1, got {self.block_frames}")

    @property
    def num_frames(self) -> int:
        return self.num_video // self.tokens_per_frame

    @property
    def is_global(self) -> bool:
        """True when the window covers every frame (then it is plain full attention)."""
        return self.num_frames - 1 <= self.frame_receptive_field

    def blocks(self):
        """Yield ``(f0, f1, k0, k1)``: query frames ``[f0, f1)`` and their video key frames ``[k0, k1)``."""
        t, frf = self.num_frames, self.frame_receptive_field
        for f0 in range(0, t, self.block_frames):
            f1 = min(f0 + self.block_frames, t)
            yield f0, f1, max(0, f0 - frf), min(t, f1 + frf)


def _block_mask(window: LocalWindow, f0: int, f1: int, k0: int, k1: int, num_other: int,
                device) -> Optional[torch.Tensor]:
    """``[nq, nk]`` mask of one query block (None when the block needs none, e.g. one frame per block)."""
    frf, hw = window.frame_receptive_field, window.tokens_per_frame
    if max(f1 - 1 - k0, k1 - 1 - f0) <= frf:  # decided on ints: no tensor sync (and no graph break)
        return None
    qf = torch.arange(f0, f1, device=device)
    kf = torch.arange(k0, k1, device=device)
    frames = (qf[:, None] - kf[None, :]).abs() <= frf  # [q frames, k frames]
    video = frames.repeat_interleave(hw, dim=0).repeat_interleave(hw, dim=1)
    return torch.cat([video, video.new_ones(video.shape[0], num_other)], dim=1)


def local_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: LocalWindow,
                           key_valid: Optional[torch.Tensor] = None, *,
                           backend: Backend = DEFAULT_BACKEND) -> torch.Tensor:
    """Frame-window attention without an ``L x L`` mask, through the active backend.

    q ``[B, Hq, L, D]``, k/v ``[B, Hkv, L, D]`` over ``[video | audio | text]``; ``key_valid [B, L]``
    (None: every key is real) masks padded keys. Each block of video query frames attends to the
    gathered keys ``[its video window | all audio and text]`` (a mask only where a block of several
    frames needs one, of block size); audio and text queries attend to all keys. Equal to
    :func:`attention` with the full local mask of :func:`magihuman.packing.local_attention_allowed`.
    """
    backend = resolve_attention_backend(backend)
    _check_shapes(q, k, v)
    b, _, n, _ = q.shape
    nv = window.num_video
    if k.shape[2] != n or nv > n:
        raise ValueError(f"local attention needs q and k over the same sequence of >= {nv} tokens, "
                         f"got q{tuple(q.shape)} k{tuple(k.shape)}")
    pad = None if key_valid is None else key_valid[:, None, None, :]  # [B, 1, 1, L]
    if window.is_global:
        return attention(q, k, v, pad, backend=backend)
    hw = window.tokens_per_frame
    out = q.new_empty(q.shape)
    for f0, f1, k0, k1 in window.blocks():
        if k1 * hw == nv:  # the video window ends where audio/text begin: one contiguous slice
            ks, vs = k[:, :, k0 * hw:], v[:, :, k0 * hw:]
        else:
            ks = torch.cat([k[:, :, k0 * hw:k1 * hw], k[:, :, nv:]], dim=2)
            vs = torch.cat([v[:, :, k0 * hw:k1 * hw], v[:, :, nv:]], dim=2)
        mask = _block_mask(window, f0, f1, k0, k1, n - nv, q.device)
        if mask is not None:
            mask = mask[None, None]
        if pad is not None:
            keys = torch.cat([pad.new_ones(b, 1, 1, (k1 - k0) * hw), pad[..., nv:]], dim=-1)
            mask = keys if mask is None else mask & keys
        out[:, :, f0 * hw:f1 * hw] = attention(q[:, :, f0 * hw:f1 * hw], ks, vs, mask, backend=backend)
    if n > nv:
        out[:, :, nv:] = attention(q[:, :, nv:], k, v, pad, backend=backend)
    return out
