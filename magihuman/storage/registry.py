"""Weight storage formats, spelled in one place.

A :class:`Storage` is how a weight matrix is kept in memory (and in a file): ``plain`` (a torch float dtype),
``fp8`` (float8_e4m3fn with one fp32 scale per tensor) or ``gguf`` (GGML blocks). It knows its bytes for a
shape (padding included), how to encode a float weight and how to decode the stored data on the compute device.
The loaders, the estimator and planner, the CLI, the ComfyUI nodes and the multi-GPU workers all read
:data:`STORAGES`; user strings ("bf16", "fp8", "q4_k", "file") are parsed by :func:`parse_storage`.

Padding: ``torch._scaled_mm`` takes fp8 matrices whose two dims are multiples of 16, and a GGUF row is a whole
number of blocks. Weights whose widths are not (the release's swiglu ``down_proj`` rows are 13652 wide, its fused
``linear_qkv`` has 7208 rows per expert) are stored zero-padded: each expert's rows to ``row_multiple``, the row
length to ``col_multiple``. The zeros change no product; decoding slices them off.

A new format: its kernels in :mod:`magihuman.quant` and one entry here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Union

import torch

from ..quant import gguf as ggml
from ..quant.fp8 import FP8_DTYPE, FP8_MM_MULTIPLE, quantize_fp8

__all__ = ["Storage", "STORAGES", "FILE", "PLAIN", "FP8", "GGUF", "KEEP_FILE", "parse_storage", "requested_storage", "storage_of_dtype",
           "storage_of_ggml", "load_choices", "convert_choices", "frontend_settings", "StorageLike"]

PLAIN, FP8, GGUF, KEEP_FILE = "plain", "fp8", "gguf", "file"


@dataclass(frozen=True)
class Storage:
    """One way of keeping a weight. ``rel_error``: relative L2 output error of the DiT with weights in this
    storage against bf16 weights, measured by ``benchmarks/bench_quant_quality.py`` (None: not measured); the
    planner ranks formats by it."""

    name: str
    kind: str                                  # plain | fp8 | gguf | file
    dtype: Optional[torch.dtype] = None        # plain: the element dtype; fp8: float8_e4m3fn
    ggml: Optional[ggml.GGMLType] = None       # gguf: the block type; plain: how a GGUF file holds it
    aliases: tuple[str, ...] = ()
    rel_error: Optional[float] = None
    default: Optional["Storage"] = None        # kind "file": the storage of tensors the file holds plainly
    keeps: tuple[str, ...] = (FP8, GGUF)       # kind "file": the compact kinds kept as the file holds them

    def __repr__(self) -> str:
        return f"Storage({self.name})" if self.kind != KEEP_FILE else f"Storage(file, else {self.default.name})"

    # ------------------------------------------------------------ what it is
    @property
    def compact(self) -> bool:
        """Stored in another form than the compute dtype (decoded at every use)."""
        return self.kind in (FP8, GGUF)

    @property
    def block(self) -> int:
        return ggml.BLOCK_SIZES[self.ggml][0] if self.kind == GGUF else 1

    @property
    def bits(self) -> float:
        """Bits per weight (an fp8 tensor's one scale not counted)."""
        if self.kind == GGUF:
            block, size = ggml.BLOCK_SIZES[self.ggml]
            return 8.0 * size / block
        return 8.0 * self.dtype.itemsize

    @property
    def decodes_on_device(self) -> bool:
        """Whether it can stay in memory and be decoded per use by torch (GGUF types without a torch kernel are
        decoded once, while loading)."""
        return self.kind != GGUF or self.ggml in ggml.TORCH_DEQUANT_TYPES

    @property
    def encodable(self) -> bool:
        """Whether a float weight can be encoded to it (loading into it, writing files of it)."""
        return self.kind in (PLAIN, FP8) or self.ggml in ggml.ENCODE_TYPES

    @property
    def row_multiple(self) -> int:
        return FP8_MM_MULTIPLE if self.kind == FP8 else 1

    @property
    def col_multiple(self) -> int:
        return FP8_MM_MULTIPLE if self.kind == FP8 else self.block

    # ------------------------------------------------------------ shapes and bytes
    def padded(self, rows: int, cols: int) -> tuple[int, int]:
        """(rows, cols) of one expert as stored."""
        rm, cm = self.row_multiple, self.col_multiple
        return -(-int(rows) // rm) * rm, -(-int(cols) // cm) * cm

    def data_shape(self, rows: int, cols: int, experts: int = 1) -> tuple[int, int]:
        """Shape of the stored tensor of an ``[experts * rows, cols]`` weight (GGUF: bytes per padded row)."""
        r, c = self.padded(rows, cols)
        if self.kind == GGUF:
            return experts * r, c // self.block * ggml.BLOCK_SIZES[self.ggml][1]
        return experts * r, c

    def data_dtype(self) -> torch.dtype:
        return torch.uint8 if self.kind == GGUF else self.dtype

    def nbytes(self, rows: int, cols: int, experts: int = 1) -> int:
        """Bytes of an ``[experts * rows, cols]`` weight in this storage (padding and an fp8 scale included)."""
        n = math.prod(self.data_shape(rows, cols, experts))
        if self.kind == GGUF:
            return n
        return n * self.dtype.itemsize + (4 if self.kind == FP8 else 0)

    # ------------------------------------------------------------ encoding and decoding
    def encode(self, w: torch.Tensor, experts: int = 1) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``w [experts * rows, cols]`` (any float dtype) -> ``(data, scale)`` in this storage, on ``w``'s device:
        plain: ``w`` cast; fp8: e4m3 with one per-tensor scale (amax / 448); gguf: the blocks. Padding is zeros."""
        if not self.encodable:
            raise ValueError(f"cannot encode weights to {self.name} (no encoder for it; it can only be read)")
        if self.kind == PLAIN:
            return w.to(self.dtype), None
        rows, cols = w.shape[0] // experts, w.shape[1]
        w = self._pad(w, rows, cols, experts)
        if self.kind == FP8:
            return quantize_fp8(w)
        return ggml.encode(w, self.ggml), None

    def _pad(self, w: torch.Tensor, rows: int, cols: int, experts: int) -> torch.Tensor:
        r, c = self.padded(rows, cols)
        if (r, c) == (rows, cols):
            return w
        out = w.new_zeros(experts, r, c)
        out[:, :rows, :cols] = w.reshape(experts, rows, cols)
        return out.reshape(experts * r, c)

    def decode_padded(self, data: torch.Tensor, scale: Optional[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        """The stored tensor decoded to ``dtype`` as stored (padded), on its device."""
        if self.kind == PLAIN:
            return data if data.dtype == dtype else data.to(dtype)
        if self.kind == FP8:
            w = data.to(dtype)  # e4m3 -> dtype is exact; a new tensor
            return w.mul_(scale.to(dtype)) if scale is not None else w
        rows, nbytes = data.shape
        block, size = ggml.BLOCK_SIZES[self.ggml]
        return ggml.dequantize(data, self.ggml, (rows, nbytes // size * block), dtype=dtype)

    def decode(self, data: torch.Tensor, scale: Optional[torch.Tensor], rows: int, cols: int, experts: int,
               dtype: torch.dtype) -> torch.Tensor:
        """The ``[experts * rows, cols]`` weight in ``dtype`` on ``data``'s device (a view when only the row
        length was padded; a copy when experts' rows were)."""
        w = self.decode_padded(data, scale, dtype)
        r, c = w.shape[0] // experts, w.shape[1]
        if r == rows:
            return w if c == cols else w[:, :cols]
        return w.reshape(experts, r, c)[:, :rows, :cols].reshape(experts * rows, cols)

    def check_loadable(self) -> "Storage":
        """This storage, if a loader can keep weights in it (``file`` always); else a clear error."""
        if self.kind == KEEP_FILE or (self.decodes_on_device and self.encodable):
            return self
        why = "no torch kernel decodes it" if not self.decodes_on_device else "no encoder writes it"
        raise ValueError(f"{self.name} cannot be kept in memory: {why}; load a file of that type with 'file' (it is "
                         f"decoded once, while loading) or choose one of {', '.join(load_choices())}")

    # ------------------------------------------------------------ the "file" policy
    @property
    def built(self) -> "Storage":
        """The storage a layer is built in before a file fills it: this one, or for ``file`` its plain default."""
        return self.default if self.kind == KEEP_FILE else self

    def resolve(self, stored: "Storage") -> "Storage":
        """The storage a weight held in ``stored`` in a file is kept in: this one, or for ``file``, the file's own
        when it is compact and decodes on the device, else :attr:`default`."""
        if self.kind != KEEP_FILE:
            return self
        return stored if stored.kind in self.keeps and stored.decodes_on_device else self.default

    @property
    def spec(self) -> str:
        """A string :func:`parse_storage` turns back into this storage (``"file:fp16"``: file with another default;
        ``"file:bf16/gguf"``: keeping GGUF blocks only)."""
        if self.kind != KEEP_FILE or (self.default == FILE.default and self.keeps == FILE.keeps):
            return self.name
        return f"{self.name}:{self.default.name}" + ("" if self.keeps == FILE.keeps else "/" + "+".join(self.keeps))

    def keeping(self, default: "Storage", keeps: Optional[tuple[str, ...]] = None) -> "Storage":
        """``file`` with another storage for the plainly held tensors (and, ``keeps``, other compact kinds kept)."""
        if self.kind != KEEP_FILE:
            raise ValueError(f"{self.name} is not the 'file' storage")
        return replace(self, default=default, keeps=self.keeps if keeps is None else tuple(keeps))


def _gguf(t: ggml.GGMLType, rel_error: Optional[float] = None) -> Storage:
    return Storage(t.name, GGUF, ggml=t, rel_error=rel_error)


# The registry. rel_error: benchmarks/bench_quant_quality.py (hidden 1280, 8 layers, swiglu 3412 wide: every block
# linear in the format, padded where needed), relative L2 output error against bf16 weights.
_ENTRIES = (
    Storage("bf16", PLAIN, torch.bfloat16, ggml.GGMLType.BF16, ("bfloat16",), 0.0),
    Storage("fp16", PLAIN, torch.float16, ggml.GGMLType.F16, ("float16", "f16", "half")),
    Storage("fp32", PLAIN, torch.float32, ggml.GGMLType.F32, ("float32", "f32", "float")),
    Storage("fp8", FP8, FP8_DTYPE, None, ("float8_e4m3fn", "e4m3"), 0.078),
    _gguf(ggml.GGMLType.Q8_0, 0.016),
    _gguf(ggml.GGMLType.Q5_1, 0.111),
    _gguf(ggml.GGMLType.Q5_0, 0.124),
    _gguf(ggml.GGMLType.Q4_K, 0.240),
    _gguf(ggml.GGMLType.Q4_1, 0.227),
    _gguf(ggml.GGMLType.Q4_0, 0.250),
)
STORAGES: dict[str, Storage] = {s.name: s for s in _ENTRIES}
# Every other GGML block type a file may hold (read, decoded by its torch kernel or, once, by gguf's numpy code).
STORAGES.update({t.name: _gguf(t) for t, info in ggml.TYPES.items() if info.block > 1 and t.name not in STORAGES})
# "file": keep what the file holds (GGUF blocks, fp8 + scale); plainly held tensors in bf16 (the official layout).
FILE = Storage("file", KEEP_FILE, aliases=("gguf (file)", "keep"), default=STORAGES["bf16"])

_BY_NAME = {n.lower(): s for s in (*STORAGES.values(), FILE) for n in (s.name, *s.aliases)}

StorageLike = Union[Storage, str, torch.dtype, None]


def parse_storage(value: StorageLike, *, default: Optional[Storage] = None, what: str = "weight storage") -> Storage:
    """A :class:`Storage` from a name or alias (any case: ``"bf16"``, ``"bfloat16"``, ``"fp8"``, ``"q4_k"``,
    ``"file"``), a torch dtype, or a Storage; None gives ``default`` (``file`` when none)."""
    if value is None:
        return default or FILE
    if isinstance(value, Storage):
        return value
    if isinstance(value, torch.dtype):
        found = storage_of_dtype(value)
        if found is not None:
            return found
    elif isinstance(value, str) and value.strip().lower() in _BY_NAME:
        return _BY_NAME[value.strip().lower()]
    elif isinstance(value, str) and value.strip().lower().startswith(FILE.name + ":"):  # Storage.spec of "file"
        plain_name, _, keeps = value.strip().lower().split(":", 1)[1].partition("/")
        plain = _BY_NAME.get(plain_name)
        kinds = tuple(keeps.split("+")) if keeps else FILE.keeps
        if plain is not None and plain.kind == PLAIN and set(kinds) <= {FP8, GGUF}:
            return FILE.keeping(plain, kinds)
    names = [f"{n} ({STORAGES[n].dtype})".replace("torch.", "") if n in STORAGES and STORAGES[n].kind == FP8 else n
             for n in load_choices()]
    raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(names)}")


def requested_storage(storage: StorageLike = None, *, dtype=None, gguf: Optional[str] = None) -> Storage:
    """The storage a loader keeps a model's stored weights in, from ``storage`` or the loaders' older keyword
    arguments: ``dtype`` a plain dtype or fp8 (GGUF blocks kept, everything else in ``dtype``, as those loaders
    always did), ``gguf="keep"`` / ``"dequantize"`` whether a GGUF file's blocks stay (nothing given: ``file``)."""
    if storage is not None:
        if dtype is not None or gguf is not None:
            raise ValueError("give storage= alone (dtype= and gguf= are its older spelling)")
        return parse_storage(storage).check_loadable()
    if gguf not in (None, "keep", "dequantize"):
        raise ValueError(f"gguf must be 'keep' or 'dequantize', got {gguf!r}")
    if dtype is None:
        return FILE if gguf != "dequantize" else STORAGES["bf16"]
    st = parse_storage(dtype)
    return st if (st.kind in (FP8, KEEP_FILE) or gguf == "dequantize") else FILE.keeping(st, keeps=(GGUF,))


def storage_of_dtype(dtype: torch.dtype) -> Optional[Storage]:
    """The plain or fp8 storage of a torch dtype (None for dtypes no weight is kept in)."""
    return next((s for s in STORAGES.values() if s.kind in (PLAIN, FP8) and s.dtype == dtype), None)


def storage_of_ggml(qtype: Union[int, ggml.GGMLType]) -> Storage:
    """The storage of a GGML tensor type (F32 / F16 / BF16 are the plain ones)."""
    qt = ggml.GGMLType(int(qtype))
    found = next((s for s in STORAGES.values() if s.ggml == qt), None)
    if found is None:
        raise ValueError(f"GGML type {qt.name} holds no weights (integer type)")
    return found


def load_choices() -> list[str]:
    """What a loader can keep a model's weights in: ``file`` then every encodable storage, best first."""
    return [FILE.name] + [s.name for s in STORAGES.values() if s.encodable and s.decodes_on_device]


def convert_choices() -> list[str]:
    """What a GGUF writer can write block linears as."""
    return [s.name for s in STORAGES.values() if s.ggml is not None and s.encodable]


def frontend_settings() -> dict:
    """What the pack's frontend extension needs of the registry (``web/storage.json``): the storage that keeps what a
    file holds (set when a .gguf is picked) and the older names of storages that saved workflows may hold."""
    return {"keep_file": FILE.name, "older_names": {alias: FILE.name for alias in FILE.aliases if " " in alias},
            "compact_suffixes": [".gguf"]}
