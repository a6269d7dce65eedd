"""The layers that own a stored weight: :class:`BlockLinear` (a linear, optionally one weight slice per modality
expert) and :class:`CompactEmbedding`. Each keeps its :class:`~.registry.Storage`, the stored data (and an fp8
scale), and the patches added after decoding; a host (ComfyUI) subclasses them to fetch through its own
offloading cast (:meth:`BlockLinear.fetch` / :meth:`BlockLinear.release` / :meth:`BlockLinear.host_patches`).

A weight's way to a matmul: fetch the stored data onto the compute device -> decode it (plain: a cast; fp8: times
the scale; GGUF: the blocks) -> add the host's and the engine's patches (LoRA deltas) -> multiply. fp8 weights
without patches may skip the decoding and multiply in fp8 (``fp8_compute``).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..quant.fp8 import fp8_linear, fp8_mm_supported, note_refusal
from .registry import FP8, PLAIN, STORAGES, Storage, StorageLike, parse_storage, storage_of_dtype

__all__ = ["BlockLinear", "CompactEmbedding", "Fetched", "Patch", "Segments", "WeightSpec", "compact_layers", "weight_table"]

# A weight patch: f(weight) -> weight with the patch added (weight already decoded to the compute dtype).
Patch = Callable[[torch.Tensor], torch.Tensor]
Segments = Sequence[tuple[int, int]]  # (start, end) token ranges of the modality experts along dim 1


class Fetched(NamedTuple):
    """What :meth:`BlockLinear.fetch` hands back: the stored data on the compute device (a host may already have
    decoded plain data to the compute dtype), the fp8 scale, the bias, and a token for :meth:`BlockLinear.release`."""

    data: torch.Tensor
    scale: Optional[torch.Tensor]
    bias: Optional[torch.Tensor]
    token: object = None


def _resolve(storage: StorageLike, dtype) -> Storage:
    return parse_storage(storage if storage is not None else dtype, default=STORAGES["bf16"]).built


class _StoredWeight(nn.Module):
    """Shared by the two layers: the stored weight of logical shape ``[experts * rows, cols]``."""

    rows: int
    cols: int
    experts: int
    storage: Storage

    def _init_weight(self, storage: Storage, device) -> None:
        self.weight_patches: list[Patch] = []  # the engine's (magihuman.apply_lora), added after decoding
        self.register_buffer("weight_scale", None, persistent=False)
        meta = torch.empty(0, device=device).is_meta  # also under a `with torch.device("meta")` block
        plain = storage.kind == PLAIN
        # A compact weight is built as a float placeholder of the logical shape: the loaders fill it with stored
        # data (set_stored), a randomly initialised model encodes it afterwards (encode_).
        build = storage.dtype if plain else (torch.bfloat16 if meta else torch.float32)
        self.weight = nn.Parameter(torch.empty(self.experts * self.rows, self.cols, dtype=build,
                                               device=device), requires_grad=False)
        if not meta:
            with torch.no_grad():
                self.reset_parameters()
        self.storage = storage if plain else storage_of_dtype(build)
        self._encode_to = None if plain else storage

    def reset_parameters(self) -> None:
        """torch's own initialisation of the layer kind (a model built off the meta device without weights)."""

    @property
    def logical_shape(self) -> tuple[int, int]:
        return self.experts * self.rows, self.cols

    # ------------------------------------------------------------ storing
    def set_stored(self, data: torch.Tensor, scale: Optional[torch.Tensor], storage: Storage) -> None:
        """Keep ``data`` (already encoded in ``storage``, padded as :meth:`Storage.data_shape` says) as the weight."""
        expected = storage.data_shape(self.rows, self.cols, self.experts)
        if tuple(data.shape) != tuple(expected) or data.dtype != storage.data_dtype():
            raise ValueError(f"{storage.name} data for a {list(self.logical_shape)} weight must be "
                             f"{storage.data_dtype()} {list(expected)}, got {data.dtype} {list(data.shape)}")
        if storage.kind == FP8 and scale is None:
            raise ValueError("fp8 data needs its per-tensor scale")
        self._parameters["weight"] = nn.Parameter(data, requires_grad=False)
        self._buffers["weight_scale"] = (None if scale is None else
                                         torch.as_tensor(scale, dtype=torch.float32).reshape(()).to(data.device))
        self.storage = storage
        self._encode_to = None

    @torch.no_grad()
    def store_weight(self, w: torch.Tensor, storage: StorageLike = None) -> None:
        """Encode the float weight ``w`` (logical shape) into ``storage`` (default: this layer's) and keep it."""
        st = _resolve(storage, None) if storage is not None else (self._encode_to or self.storage)
        if tuple(w.shape) != self.logical_shape:
            raise ValueError(f"weight of shape {list(w.shape)} for a {list(self.logical_shape)} layer")
        data, scale = st.encode(w, self.experts)
        self.set_stored(data, scale, st)

    @torch.no_grad()
    def encode_(self, storage: StorageLike = None) -> None:
        """Re-store the current (plain) weight in ``storage`` (default: the one this layer was built for)."""
        target = _resolve(storage, None) if storage is not None else self._encode_to
        if target is None or target == self.storage:
            self._encode_to = None
            return
        if self.storage.kind != PLAIN:
            raise ValueError(f"cannot re-store {self.storage.name} data as {target.name}; load the file again")
        self.store_weight(self.weight.detach(), target)

    # ------------------------------------------------------------ host hooks
    def fetch(self, device: torch.device, dtype: Optional[torch.dtype]) -> Fetched:
        """The stored data (and scale, bias) on ``device``; ``dtype`` is the compute dtype, which a host may cast
        plain data to. Hosts override this (and :meth:`release`) to fetch through their offloading cast."""
        non_blocking = device.type == "cuda"
        data = self.weight if self.weight.device == device else self.weight.to(device, non_blocking=non_blocking)
        scale = self.weight_scale
        if scale is not None and scale.device != device:
            scale = scale.to(device, non_blocking=non_blocking)
        bias = getattr(self, "bias", None)
        if bias is not None and (bias.device != device or bias.dtype != dtype):
            bias = bias.to(device=device, dtype=dtype, non_blocking=non_blocking)
        return Fetched(data, scale, bias)

    def release(self, token: object) -> None:
        """Called after the last use of what :meth:`fetch` returned (a host returns its buffers)."""

    def host_patches(self) -> Sequence[Patch]:
        """Patches the host adds after decoding (ComfyUI: its LoRA patches of compact weights)."""
        return ()

    # ------------------------------------------------------------ using
    def patches(self) -> list[Patch]:
        return list(self.host_patches()) + list(self.weight_patches)

    def has_patches(self) -> bool:
        return bool(self.weight_patches) or bool(self.host_patches())

    def decoded_weight(self, dtype: torch.dtype, device=None) -> torch.Tensor:
        """The logical weight in ``dtype`` on ``device`` (default: where it is stored), patches added."""
        w, _, token = self._weight_and_bias(dtype, torch.device(device) if device is not None else self.weight.device)
        self.release(token)
        return w

    def _weight_and_bias(self, dtype: torch.dtype, device: torch.device):
        got = self.fetch(device, dtype)
        w = self.storage.decode(got.data, got.scale, self.rows, self.cols, self.experts, dtype)
        for patch in self.patches():
            w = patch(w)
        return w, got.bias, got.token


class BlockLinear(_StoredWeight):
    """``y = x W^T (+ b)`` with ``W [experts * out_features, in_features]`` in any :class:`Storage`, computed in
    :attr:`compute_dtype` (input cast to it, result in it). With experts, each modality segment of ``x [B, L, in]``
    (``segments`` along dim 1) is multiplied by its own slice of the fused weight. ``fp8_compute`` ("tensor" /
    "token"): fp8 weights without patches multiply in fp8 (``torch._scaled_mm``) on devices that can."""

    def __init__(self, in_features: int, out_features: int, experts: int = 1, bias: bool = False, *,
                 storage: StorageLike = None, dtype: Optional[torch.dtype] = None, device=None):
        super().__init__()
        self.in_features, self.out_features, self.experts = int(in_features), int(out_features), int(experts)
        self.rows, self.cols = self.out_features, self.in_features
        st = _resolve(storage, dtype)
        self._init_weight(st, device)
        if bias and experts != 1:
            raise ValueError("a bias is supported on single-expert linears only")
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=self.weight.dtype if st.kind == PLAIN
                                             else torch.float32, device=device), requires_grad=False) if bias else None
        self.compute_dtype = torch.bfloat16
        self.fp8_compute = "off"

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)  # nn.Linear's

    def extra_repr(self) -> str:
        experts = f", experts={self.experts}" if self.experts > 1 else ""
        return f"{self.in_features} -> {self.out_features}{experts}, {self.storage.name}"

    def forward(self, x: torch.Tensor, segments: Optional[Segments] = None) -> torch.Tensor:
        cd = self.compute_dtype
        if self.fp8_compute != "off" and self.storage.kind == FP8 and not self.has_patches() \
                and fp8_mm_supported(x.device, self.fp8_compute, cd):
            out = self._fp8_forward(x, segments, cd)
            if out is not None:
                return out
        w, bias, token = self._weight_and_bias(cd, x.device)
        x = x.to(cd)
        if self.experts == 1:
            out = F.linear(x, w, bias)
        else:
            out = torch.cat([F.linear(x[:, a:b], wi) for (a, b), wi in zip(segments, w.chunk(self.experts))], dim=1)
        self.release(token)
        return out

    def _fp8_forward(self, x: torch.Tensor, segments: Optional[Segments], cd: torch.dtype) -> Optional[torch.Tensor]:
        got = self.fetch(x.device, None)
        n = self.rows
        parts = []
        per = got.data.shape[0] // self.experts  # padded rows of one expert
        spans = [(0, x.shape[1])] if self.experts == 1 else segments
        for e, (a, b) in enumerate(spans):
            xs = x if self.experts == 1 else x[:, a:b]
            if xs.numel() == 0:  # an empty segment (a sequence-parallel shard)
                parts.append(xs.new_zeros(*xs.shape[:-1], n, dtype=cd))
                continue
            try:
                y = fp8_linear(xs, got.data[e * per:(e + 1) * per], got.scale, cd, self.fp8_compute)
            except (RuntimeError, NotImplementedError) as err:  # a kernel that refuses: dequantise from now on
                note_refusal(x.device, self.fp8_compute, cd, str(err).strip().splitlines()[0])
                y = None
            if y is None:
                self.release(got.token)
                return None
            parts.append(y[..., :n])
        out = parts[0] if self.experts == 1 else torch.cat(parts, dim=1)
        if got.bias is not None:
            out = out + got.bias.to(cd)
        self.release(got.token)
        return out


class CompactEmbedding(_StoredWeight):
    """An embedding table ``[num_embeddings, embedding_dim]`` in any :class:`Storage`; a lookup decodes only the
    rows it needs (a GGUF row is a whole number of blocks; fp8 rows take the per-tensor scale)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, *, storage: StorageLike = None,
                 dtype: Optional[torch.dtype] = None, device=None, padding_idx: Optional[int] = None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.experts = int(num_embeddings), int(embedding_dim), 1
        self.padding_idx = padding_idx
        self.rows, self.cols = self.num_embeddings, self.embedding_dim
        self._init_weight(_resolve(storage, dtype), device)
        self.bias = None  # hosts (ComfyUI's model patcher) look for a weight and a bias on every cast layer

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight)  # nn.Embedding's
        if self.padding_idx is not None:
            self.weight[self.padding_idx].zero_()

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {self.storage.name}"

    def forward(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Rows ``ids`` in ``dtype`` on ``ids``' device."""
        if self.has_patches():
            return F.embedding(ids, self.decoded_weight(dtype, ids.device))
        flat = ids.reshape(-1)
        picked = self.weight[flat.to(self.weight.device)].to(ids.device)  # only the looked-up rows travel
        scale = self.weight_scale.to(ids.device) if self.weight_scale is not None else None
        rows = self.storage.decode(picked, scale, flat.numel(), self.cols, 1, dtype)
        return rows.reshape(*ids.shape, self.cols)


def compact_layers(model: nn.Module) -> list[tuple[str, _StoredWeight]]:
    """The layers of ``model`` that own a stored weight, with their names."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _StoredWeight)]


class WeightSpec(NamedTuple):
    """One state-dict entry of a model: its logical shape and, for a stored-weight layer's ``weight``, the layer's
    geometry (rows per expert, columns, experts) that storages price and pad."""

    shape: tuple[int, ...]
    stored: Optional[tuple[int, int, int]] = None  # (rows, cols, experts) of a BlockLinear / CompactEmbedding weight

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def weight_table(model: nn.Module) -> dict[str, WeightSpec]:
    """Every persistent state-dict key of ``model`` (built on the meta device, so no memory) with its logical shape;
    the weights of stored-weight layers carry their geometry. The one source of the tensors' shapes for the
    estimator, the planner, LoRA targets and the converters."""
    layers = {id(m): m for _, m in compact_layers(model)}
    out: dict[str, WeightSpec] = {}
    for mname, mod in model.named_modules():
        pre = f"{mname}." if mname else ""
        for n, p in mod._parameters.items():
            if p is None:
                continue
            if n == "weight" and id(mod) in layers:
                out[pre + n] = WeightSpec(mod.logical_shape, (mod.rows, mod.cols, mod.experts))
            else:
                out[pre + n] = WeightSpec(tuple(p.shape))
        for n, b in mod._buffers.items():
            if b is not None and n not in mod._non_persistent_buffers_set:
                out[pre + n] = WeightSpec(tuple(b.shape))
    return out
