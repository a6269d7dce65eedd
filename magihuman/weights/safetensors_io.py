"""A small streaming reader/writer for the safetensors format (plain files and ``.zst`` streams).

Why our own: the released DiT folders are fp32 (~61 GB) and must become a bf16 model without ever
holding the fp32 copy. This reader parses the header itself (8-byte little-endian length, JSON,
byte offsets relative to the data section) and copies one tensor at a time, in fixed-size chunks,
straight into a destination tensor (converting dtype on the fly). ``.zst`` shards are decompressed as
a stream, tensors in offset order, never materialising the whole shard.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from ..errors import CheckpointError

# Bytes per chunk when copying a tensor; the only scratch memory the reader allocates.
CHUNK_BYTES = 64 << 20
# Refuse absurd headers before allocating for them (the format's own limit is 100 MB).
MAX_HEADER_BYTES = 100 << 20

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}


class SafetensorsError(CheckpointError):
    """A file is not valid safetensors (truncated, corrupt header, offsets outside the file, ...)."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # byte offset inside the data section
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class SafetensorsHeader:
    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)
    data_start: int = 0  # absolute offset of the data section in the (decompressed) stream
    compressed: bool = False

    @property
    def data_bytes(self) -> int:
        return max((t.end for t in self.tensors.values()), default=0)


def is_zst(path: str | os.PathLike) -> bool:
    return str(path).endswith(".zst")


def _zstandard():
    try:
        import zstandard
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise SafetensorsError(
            "reading/writing '.zst' shards needs the 'zstandard' package: pip install zstandard "
            "(or decompress the shards first with `zstd -d <shard>.zst`)"
        ) from e
    return zstandard


def _open_stream(path: Path):
    """A forward-only binary stream over the (decompressed) file content."""
    fh = open(path, "rb")
    if not is_zst(path):
        return fh
    return _zstandard().ZstdDecompressor().stream_reader(fh, read_size=1 << 20, closefd=True)


def _readinto_exact(stream, view: memoryview, path: Path, what: str) -> None:
    """Fill ``view`` completely from ``stream`` (streams may return short reads)."""
    got = 0
    n = len(view)
    while got < n:
        try:
            k = stream.readinto(view[got:])
        except Exception as e:  # zstandard raises ZstdError on a corrupt/truncated frame
            raise SafetensorsError(f"{path}: could not read {what}: {e}") from e
        if not k:
            raise SafetensorsError(
                f"{path}: file ends early while reading {what} (needed {n} bytes, got {got}); "
                "the file is truncated or corrupt: download it again"
            )
        got += k


def _parse_header(path: Path, stream, file_size: int | None) -> SafetensorsHeader:
    raw = bytearray(8)
    _readinto_exact(stream, memoryview(raw), path, "the 8-byte header length")
    (header_len,) = struct.unpack("<Q", bytes(raw))
    if header_len > MAX_HEADER_BYTES or (file_size is not None and 8 + header_len > file_size):
        size_txt = f"the file has {file_size} bytes" if file_size is not None else "the limit is 100 MB"
        raise SafetensorsError(
            f"{path}: header length {header_len} is beyond the end of the file ({size_txt}); "
            "the file is truncated or not a safetensors file"
        )
    buf = bytearray(header_len)
    _readinto_exact(stream, memoryview(buf), path, "the JSON header")
    try:
        header = json.loads(bytes(buf).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"{path}: the JSON header is corrupt ({e}); not a valid safetensors file") from e
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: the header is not a JSON object; not a valid safetensors file")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise SafetensorsError(f"{path}: __metadata__ is not a JSON object")
    data_start = 8 + header_len
    data_size = None if file_size is None else file_size - data_start
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        try:
            dtype_name, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            shape = tuple(int(s) for s in shape)
            begin, end = int(begin), int(end)
        except (KeyError, TypeError, ValueError) as e:
            raise SafetensorsError(f"{path}: header entry for {name!r} is malformed: {entry!r}") from e
        if dtype_name not in DTYPES:
            raise SafetensorsError(f"{path}: tensor {name!r} has unsupported dtype {dtype_name!r}")
        dtype = DTYPES[dtype_name]
        info = TensorInfo(name, dtype, shape, begin, end)
        itemsize = dtype.itemsize
        if begin < 0 or end < begin or info.nbytes != info.numel * itemsize:
            raise SafetensorsError(
                f"{path}: tensor {name!r} has data_offsets [{begin}, {end}] that do not match its shape "
                f"{list(shape)} and dtype {dtype_name} ({info.numel * itemsize} bytes); the header is corrupt"
            )
        if data_size is not None and end > data_size:
            raise SafetensorsError(
                f"{path}: tensor {name!r} ends at byte {data_start + end} but the file has only {file_size} "
                "bytes; the file is truncated: download it again"
            )
        tensors[name] = info
    return SafetensorsHeader(path, tensors, {str(k): str(v) for k, v in metadata.items()}, data_start, is_zst(path))


def read_header(path: str | os.PathLike) -> SafetensorsHeader:
    """Parse and validate the header of a ``.safetensors`` (or ``.safetensors.zst``) file."""
    path = Path(path)
    if not path.is_file():
        raise SafetensorsError(f"{path}: no such file")
    file_size = None if is_zst(path) else path.stat().st_size
    with _open_stream(path) as stream:
        return _parse_header(path, stream, file_size)


class TensorReader:
    """Reads tensors of one file into destination tensors, one chunk at a time.

    Forward reads are cheapest (a ``.zst`` stream cannot seek: going backwards restarts it), so
    callers visit tensors in file-offset order. The only scratch memory is one chunk buffer.
    """

    def __init__(self, header: SafetensorsHeader, *, chunk_bytes: int | None = None):
        self.header = header
        self.chunk = int(chunk_bytes or CHUNK_BYTES)
        self._stream = None
        self._pos = 0  # absolute position in the (decompressed) stream
        self._scratch: torch.Tensor | None = None

    def __enter__(self) -> "TensorReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def _buffer(self, nbytes: int) -> torch.Tensor:
        if self._scratch is None or self._scratch.numel() < nbytes:
            self._scratch = torch.empty(max(nbytes, self.chunk), dtype=torch.uint8)
        return self._scratch[:nbytes]

    def _seek(self, target: int) -> None:
        if self._stream is None or (self.header.compressed and target < self._pos):
            self.close()
            self._stream = _open_stream(self.header.path)
            self._pos = 0
        if target == self._pos:
            return
        if not self.header.compressed:
            self._stream.seek(target)
            self._pos = target
            return
        while self._pos < target:  # forward-only stream: read and discard
            n = min(self.chunk, target - self._pos)
            _readinto_exact(self._stream, memoryview(self._buffer(n).numpy()), self.header.path, "skipped bytes")
            self._pos += n

    def read_into(self, info: TensorInfo, dest: torch.Tensor, on_bytes: Callable[[int], None] | None = None,
                  *, scale: float | None = None) -> torch.Tensor:
        """Fill ``dest`` (contiguous, ``info.numel`` elements, any dtype/device) with tensor ``info``.

        ``scale``: dequantise while copying, ``dest = float32(stored) * scale`` (per-tensor fp8 scales).
        """
        if dest.numel() != info.numel or not dest.is_contiguous():
            raise ValueError(f"destination for {info.name!r} must be contiguous with {info.numel} elements")
        self._seek(self.header.data_start + info.begin)
        path = self.header.path
        flat = dest.view(-1)
        if info.nbytes and scale is None and dest.dtype == info.dtype and dest.device.type == "cpu":
            # Same dtype on the CPU: read straight into the destination, chunk by chunk.
            raw = memoryview(flat.view(torch.uint8).numpy())
            for a in range(0, info.nbytes, self.chunk):
                b = min(a + self.chunk, info.nbytes)
                _readinto_exact(self._stream, raw[a:b], path, f"tensor {info.name!r}")
                if on_bytes:
                    on_bytes(b - a)
        elif info.nbytes:
            itemsize = info.nbytes // info.numel
            # elements per chunk; a dequantised chunk also needs an fp32 copy of that size
            per = max(self.chunk // (itemsize if scale is None else max(itemsize, 4)), 1)
            for e0 in range(0, info.numel, per):
                e1 = min(e0 + per, info.numel)
                part = self._buffer((e1 - e0) * itemsize)
                _readinto_exact(self._stream, memoryview(part.numpy()), path, f"tensor {info.name!r}")
                values = part.view(info.dtype)
                if scale is not None:
                    values = values.to(torch.float32).mul_(scale)
                flat[e0:e1].copy_(values)  # converts dtype / moves device
                if on_bytes:
                    on_bytes(part.numel())
        self._pos = self.header.data_start + info.end
        return dest


def stream_into(
    header: SafetensorsHeader,
    make_dest: Callable[[TensorInfo], torch.Tensor | None],
    names: Iterable[str] | None = None,
    *,
    on_bytes: Callable[[int], None] | None = None,
    chunk_bytes: int | None = None,
) -> None:
    """Copy tensors (all, or ``names``) into tensors returned by ``make_dest(info)``, in file order.

    ``make_dest`` may return None to skip a tensor. Only one chunk of scratch memory is used.
    """
    wanted = list(header.tensors) if names is None else list(names)
    missing = [n for n in wanted if n not in header.tensors]
    if missing:
        raise SafetensorsError(f"{header.path}: tensors not in this file: {missing[:5]}")
    with TensorReader(header, chunk_bytes=chunk_bytes) as reader:
        for info in sorted((header.tensors[n] for n in wanted), key=lambda t: t.begin):
            dest = make_dest(info)
            if dest is not None:
                reader.read_into(info, dest, on_bytes)


def load_file(path: str | os.PathLike, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Read whole tensors into fresh CPU tensors (small files, tests, tools)."""
    header = read_header(path)
    out: dict[str, torch.Tensor] = {}

    def make(info: TensorInfo) -> torch.Tensor:
        out[info.name] = torch.empty(info.shape, dtype=info.dtype)
        return out[info.name]

    stream_into(header, make, names)
    return out


# ---------------------------------------------------------------- writing


@dataclass(frozen=True)
class TensorSpec:
    """One tensor to write: its name, dtype, shape and a function producing it when its turn comes."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    produce: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _header_bytes(specs: Sequence[TensorSpec], metadata: dict[str, str] | None) -> bytes:
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for s in specs:
        if s.dtype not in DTYPE_NAMES:
            raise ValueError(f"cannot write dtype {s.dtype} for {s.name!r}")
        header[s.name] = {"dtype": DTYPE_NAMES[s.dtype], "shape": list(s.shape),
                          "data_offsets": [offset, offset + s.nbytes]}
        offset += s.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # keep the data section 8-byte aligned, as safetensors does
    return struct.pack("<Q", len(raw)) + raw


def write_file(
    path: str | os.PathLike,
    tensors: dict[str, torch.Tensor] | Sequence[TensorSpec],
    metadata: dict[str, str] | None = None,
    *,
    on_bytes: Callable[[int], None] | None = None,
) -> int:
    """Write a safetensors file (``.zst`` suffix: zstd-compressed), producing tensors one at a time.

    Returns the number of data bytes written. Only one produced tensor is alive at a time.
    """
    path = Path(path)
    if isinstance(tensors, dict):
        specs = [TensorSpec(k, v.dtype, tuple(v.shape), (lambda v=v: v)) for k, v in tensors.items()]
    else:
        specs = list(tensors)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError("duplicate tensor names")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as fh:
        if is_zst(path):
            sink = _zstandard().ZstdCompressor(level=3).stream_writer(fh, closefd=False)
        else:
            sink = fh
        sink.write(_header_bytes(specs, metadata))
        total = 0
        for s in specs:
            t = s.produce()
            if t.dtype != s.dtype or tuple(t.shape) != s.shape:
                raise ValueError(f"{s.name!r}: produced {t.dtype} {tuple(t.shape)}, header says {s.dtype} {s.shape}")
            t = t.detach().to("cpu").contiguous().reshape(-1)
            if t.numel():
                sink.write(memoryview(t.view(torch.uint8).numpy()))
            total += s.nbytes
            if on_bytes:
                on_bytes(s.nbytes)
            del t
        if sink is not fh:
            sink.close()  # ends the zstd frame; closefd=False leaves fh to the with-block
    os.replace(tmp, path)
    return total


__all__ = [
    "CHUNK_BYTES",
    "DTYPES",
    "SafetensorsError",
    "SafetensorsHeader",
    "TensorInfo",
    "TensorReader",
    "TensorSpec",
    "is_zst",
    "load_file",
    "read_header",
    "stream_into",
    "write_file",
]
