"""One checkpoint, whatever its files: a :class:`WeightSource` maps model keys to tensors on disk.

Formats: safetensors (one file, ``.zst`` streams, an index + shards, a folder; the Hugging Face names and the
diffusers ones, ``diffusion_pytorch_model.safetensors[.index.json]``), torch pickles read with
``torch.load(weights_only=True)`` (memory-mapped), and GGUF (:mod:`.gguf_file`). Opening reads headers
only; :meth:`WeightSource.stream` then visits tensors in file order, one reader per file, so a 60 GB
folder is copied tensor by tensor into its destination and never held twice. Entries derived from several
tensors (:func:`~.entry.concat_rows`, :func:`~.entry.row_scaled`) are read part by part by the same readers.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional

import torch

from ..errors import CheckpointError
from . import safetensors_io as sio
from .entry import Entry, OnBytes, Reader
from .fp8 import split_fp8_scales
from .gguf_file import GGUF_SUFFIX, open_gguf
from .keymap import KeyMap
from .report import listing
from .torch_files import is_pickle, load_torch_weights

log = logging.getLogger(__name__)

__all__ = ["Entry", "WeightSource", "open_source", "INDEX_NAME", "SINGLE_NAME", "INDEX_NAMES", "SAFETENSORS_SUFFIXES"]

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
# Hugging Face (transformers) names, then the diffusers ones (FastVideo's MagiHuman-Diffusers transformer/ folders).
INDEX_NAMES = (INDEX_NAME, "diffusion_pytorch_model.safetensors.index.json")
SINGLE_NAMES = (SINGLE_NAME, "diffusion_pytorch_model.safetensors")
# Elements of a derived int8 x scale tensor decoded at a time (bounds its float temporaries: 16 MiB in float32).
_ROW_SCALE_CHUNK = 4 << 20
SAFETENSORS_SUFFIXES = (".safetensors", ".safetensors.zst", ".sft")


class _SafetensorsReader(Reader):
    def __init__(self, header: sio.SafetensorsHeader, chunk_bytes: Optional[int]):
        self.reader = sio.TensorReader(header, chunk_bytes=chunk_bytes)

    def close(self) -> None:
        self.reader.close()

    def read_into(self, entry, dest, on_bytes=None, *, scale=None):
        return self.reader.read_into(entry.ref, dest, on_bytes, scale=scale)


class _SourceReader(Reader):
    """The reader of one file of a source that also fills derived entries: parts' rows into their row ranges (each
    part with its own fp8 scale, if it has one), int8 data times its per-row scale. Parts in other files of the source
    are read with their own readers, opened on demand."""

    def __init__(self, src: "WeightSource", file: Path, chunk_bytes: Optional[int]):
        self.src, self.chunk_bytes = src, chunk_bytes
        self._open: dict[Path, Reader] = {file: src._readers[file](chunk_bytes)}

    def _base(self, file: Path) -> Reader:
        if file not in self._open:
            self._open[file] = self.src._readers[file](self.chunk_bytes)
        return self._open[file]

    def close(self) -> None:
        for r in self._open.values():
            r.close()
        self._open.clear()

    def read_into(self, entry: Entry, dest: torch.Tensor, on_bytes: OnBytes = None, *,
                  scale: Optional[float] = None) -> torch.Tensor:
        if entry.how == "rows":
            starts, row = [], 0
            for p in entry.parts:
                starts.append(row)
                row += p.shape[0]
            order = sorted(range(len(entry.parts)),
                           key=lambda i: (self.src.files.index(entry.parts[i].file), entry.parts[i].offset))
            for i in order:  # file order (forward-only .zst streams), each into its rows of the destination
                p = entry.parts[i]
                s = self.src.scale_value(p.key) if p.key in self.src.scale_of else scale
                self.read_into(p, dest.narrow(0, starts[i], p.shape[0]), on_bytes, scale=s)
            return dest
        if entry.how == "row_scale":
            return self._row_scaled(entry, dest, on_bytes, scale)
        return self._base(entry.file).read_into(entry, dest, on_bytes, scale=scale)

    def _row_scaled(self, entry: Entry, dest: torch.Tensor, on_bytes: OnBytes, scale: Optional[float]) -> torch.Tensor:
        """``data [rows, cols] int8 * scale [rows, 1]``, rounded once to the scale's dtype (the weight quanto itself
        computes with), written in row chunks so only one chunk is ever float32."""
        data_e, scale_e = entry.parts
        data = self.read_into(data_e, torch.empty(data_e.shape, dtype=torch.int8), on_bytes)
        s = self.read_into(scale_e, torch.empty(scale_e.shape, dtype=scale_e.dtype), on_bytes).reshape(-1, 1)
        rows, cols = data.shape
        step = max(1, _ROW_SCALE_CHUNK // max(cols, 1))
        # int8 x a 16-bit float is exact in float32, so one rounding to the scale's dtype: straight into a destination
        # of that dtype, else through a float32 chunk
        direct = scale is None and dest.dtype == entry.dtype and dest.device == data.device
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            sr = s if s.shape[0] == 1 else s[r0:r1]
            if direct:
                torch.mul(data[r0:r1], sr, out=dest[r0:r1])
                continue
            w = data[r0:r1].to(torch.float32).mul_(sr.to(torch.float32)).to(entry.dtype)
            if scale is not None:
                w = w.to(torch.float32).mul_(scale)
            dest[r0:r1].copy_(w)
        return dest


@dataclass
class WeightSource:
    """The files of one checkpoint and, per model key, where its tensor lives (headers only)."""

    path: Path                                   # what was opened (file or folder)
    files: list[Path]
    format: str                                  # "safetensors" | "torch" | "gguf"
    entries: dict[str, Entry]                    # model key -> entry
    metadata: dict[str, str] = field(default_factory=dict)
    index_path: Optional[Path] = None
    prefix: str = ""                             # wrapper / subtree prefix the key map stripped
    ignored: list[str] = field(default_factory=list)  # file names deliberately not loaded
    notes: list[str] = field(default_factory=list)    # what the key map and the format passes did
    # fp8 checkpoints: model key -> entry of its per-tensor dequantisation scale (see .fp8)
    scale_of: dict[str, Entry] = field(default_factory=dict)
    quantization: Optional[str] = None
    layout: Optional[str] = None                 # a model's third-party layout mapped onto its keys (see .layouts)
    _readers: dict[Path, Callable[[Optional[int]], Reader]] = field(default_factory=dict, repr=False)

    # ---------------------------------------------------------------- description
    def describe(self) -> str:
        if self.index_path is not None:
            return f"{self.index_path} ({len(self.files)} shard(s))"
        return str(self.files[0]) if len(self.files) == 1 else f"{self.path} ({len(self.files)} files)"

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: e.shape for k, e in self.entries.items()}

    @property
    def total_bytes(self) -> int:
        return sum(e.nbytes for e in self.entries.values())

    # ---------------------------------------------------------------- reading
    def reader(self, file: Path, chunk_bytes: Optional[int] = None) -> Reader:
        """A reader of ``file`` (and of the parts of derived entries listed under it)."""
        return _SourceReader(self, file, chunk_bytes)

    def stream(self, keys: Iterable[str], handler: Callable[[Entry, Reader], None], *,
               chunk_bytes: Optional[int] = None) -> None:
        """Call ``handler(entry, reader)`` for each key, file by file in on-disk order (``.zst`` streams and
        network disks read forward only)."""
        by_file: dict[Path, list[Entry]] = {}
        for k in keys:
            e = self.entries[k]
            by_file.setdefault(e.file, []).append(e)
        for f in self.files:
            if f not in by_file:
                continue
            with self.reader(f, chunk_bytes) as reader:
                for e in sorted(by_file[f], key=lambda e: e.offset):
                    handler(e, reader)

    def _read_entry(self, e: Entry, reader: Reader, dtype: Optional[torch.dtype], device) -> torch.Tensor:
        """One whole tensor: float tensors converted to ``dtype`` (None: as stored), fp8 with scales and GGUF
        blocks decoded (to ``dtype``, at least 16-bit float)."""
        scale = self.scale_of.get(e.key)
        compact = scale is not None or e.quantized  # decoded to float while reading
        want = dtype if (dtype is not None and (e.dtype.is_floating_point or compact)) else e.dtype
        if compact and not (want.is_floating_point and want.itemsize >= 2):
            want = torch.float32
        return reader.read_into(e, torch.empty(e.shape, dtype=want, device=device),
                                scale=None if scale is None else self.scale_value(e.key))

    def read(self, keys: Optional[Iterable[str]] = None, *, dtype: Optional[torch.dtype] = None,
             device="cpu") -> dict[str, torch.Tensor]:
        """Whole tensors as a state dict (small models and tools; float tensors converted to ``dtype``; fp8 with
        scales and GGUF blocks decoded)."""
        out: dict[str, torch.Tensor] = {}

        def take(e: Entry, reader: Reader) -> None:
            out[e.key] = self._read_entry(e, reader, dtype, device)

        self.stream(list(self.entries if keys is None else keys), take)
        return out

    @contextlib.contextmanager
    def reading(self, device="cpu"):
        """``read_one(key, dtype=None)`` for writers that pull tensors one at a time (converters, extract-lora):
        as :meth:`read` converts them, with one open reader per file until the block ends (a file is opened
        once, not once per tensor). Pull a file's tensors in on-disk order for ``.zst`` shards."""
        readers: dict[Path, Reader] = {}

        def read_one(key: str, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
            e = self.entries[key]
            if e.file not in readers:
                readers[e.file] = self.reader(e.file)
            return self._read_entry(e, readers[e.file], dtype, device)

        try:
            yield read_one
        finally:
            for r in readers.values():
                r.close()

    def scale_value(self, key: str) -> float:
        values = getattr(self, "_scale_values", None)
        if values is None:
            values = self._scale_values = self._load_scales()
        return values[key]

    def _load_scales(self) -> dict[str, float]:
        values: dict[str, float] = {}

        def take(e: Entry, reader: Reader) -> None:
            if e.nbytes // max(e.dtype.itemsize, 1) != 1:
                raise CheckpointError(f"{e.file}: scale {e.name!r} has shape {list(e.shape)}; only per-tensor "
                                      "(one value) fp8 scales are supported")
            values[e.key] = float(reader.read_into(e, torch.empty(1, dtype=torch.float32)).item())

        scales = {f"{k}\0scale": e for k, e in self.scale_of.items()}
        by_key = {f"{k}\0scale": k for k in self.scale_of}
        tmp = WeightSource(self.path, self.files, self.format,
                           {sk: e.renamed(sk) for sk, e in scales.items()}, _readers=self._readers)
        tmp.stream(list(tmp.entries), take)
        return {by_key[sk]: v for sk, v in values.items()}


# -------------------------------------------------------------------- finding the files


def _resolve_shard(folder: Path, name: str, index_path: Path) -> Path:
    plain, zst = folder / name, folder / (name + ".zst")
    if plain.is_file():  # prefer the seekable copy when both exist (same content)
        return plain
    if zst.is_file():
        return zst
    raise CheckpointError(f"shard {name!r} listed in {index_path} is missing: neither {plain} nor {zst} exists; "
                          "download the complete folder")


def _is_weights_file(p: Path) -> bool:
    n = p.name.lower()
    return n.endswith(SAFETENSORS_SUFFIXES) or n.endswith(GGUF_SUFFIX) or is_pickle(n)


def _folder_files(path: Path, what: str, many: bool) -> list[Path]:
    for name in SINGLE_NAMES:
        for n in (name, name + ".zst"):
            if (path / n).is_file():
                return [path / n]
    files = sorted(p for p in path.iterdir() if p.is_file() and _is_weights_file(p))
    safetensors = [p for p in files if p.name.lower().endswith(SAFETENSORS_SUFFIXES)]
    if many and len(safetensors) > 1:
        return safetensors
    if len(safetensors) == 1:
        return safetensors
    if len(files) == 1:
        return files
    found = ", ".join(p.name for p in files) or "no weights files"
    raise CheckpointError(f"{path} has no {INDEX_NAME} and no single {SINGLE_NAME} (found: {found}); pass the "
                          f"folder of one checkpoint or the weights file of {what} itself")


def index_in(folder: Path) -> Optional[Path]:
    """The safetensors index of a folder (either name of :data:`INDEX_NAMES`), or None."""
    return next((folder / n for n in INDEX_NAMES if (folder / n).is_file()), None)


def _index(index_path: Path) -> tuple[dict[str, Path], list[Path]]:
    path = index_path.parent
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        assert isinstance(weight_map, dict)
    except Exception as e:
        raise CheckpointError(f"{index_path} is not a valid safetensors index (needs a 'weight_map' object): {e}") \
            from e
    shard_paths: dict[str, Path] = {}
    name_file: dict[str, Path] = {}
    for name, shard in weight_map.items():
        if shard not in shard_paths:
            shard_paths[shard] = _resolve_shard(path, shard, index_path)
        name_file[name] = shard_paths[shard]
    return name_file, list(dict.fromkeys(shard_paths.values()))


def _locate(path: Path, what: str, many: bool) -> tuple[Path, list[Path], Optional[Path]]:
    """(path to report, files, index path) of a file, a folder, an index file or one listed shard."""
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; give the checkpoint folder of {what} (with {INDEX_NAME} "
                              f"and shards, or one {SINGLE_NAME}) or its weights file")
    if path.is_file() and path.name in INDEX_NAMES:
        path = path.parent
    elif path.is_file() and index_in(path.parent) is not None:
        # One shard of an indexed folder: load the whole folder (a shard alone is not a model).
        index = index_in(path.parent)
        try:
            listed = set(json.loads(index.read_text()).get("weight_map", {}).values())
        except (ValueError, AttributeError):
            listed = set()
        if path.name in listed or path.name.removesuffix(".zst") in listed:
            log.info("%s is a shard listed in %s: loading the whole folder", path.name, index.name)
            path = path.parent
    if path.is_dir():
        index = index_in(path)
        if index is not None:
            return path, [], index
        return path, _folder_files(path, what, many), None
    if not _is_weights_file(path):
        raise CheckpointError(f"{path} is not a weights file (.safetensors, .safetensors.zst, .gguf, or a torch "
                              f"{'/'.join(s[1:] for s in ('.ckpt', '.pth', '.pt'))} pickle); {what} is expected")
    return path, [path], None


# -------------------------------------------------------------------- opening


def _safetensors_entries(files: list[Path], name_file: Optional[dict[str, Path]], index_path: Optional[Path]
                         ) -> tuple[dict[str, tuple[Path, sio.TensorInfo]], dict[str, str], dict]:
    headers = {f: sio.read_header(f) for f in files}
    metadata: dict[str, str] = {}
    for h in headers.values():
        for k, v in h.metadata.items():
            metadata.setdefault(k, v)
    found: dict[str, tuple[Path, sio.TensorInfo]] = {}
    if name_file is None:
        for f, h in headers.items():
            for name, info in h.tensors.items():
                found[name] = (f, info)
    else:
        for f, h in headers.items():
            listed = [n for n, nf in name_file.items() if nf == f]
            absent = [n for n in listed if n not in h.tensors]
            if absent:
                raise CheckpointError(f"{index_path} says {len(absent)} tensor(s) are in {f.name} but that shard does "
                                      f"not contain them (first: {absent[:3]}); the folder is inconsistent")
            extra = set(h.tensors) - set(listed)
            if extra:
                log.warning("%s: %d tensor(s) not listed in the index are ignored (first: %s)",
                            f, len(extra), sorted(extra)[:3])
            for n in listed:
                found[n] = (f, h.tensors[n])
    return found, metadata, headers


def _torch_state(path: Path, what: str, hint: str, containers: tuple[str, ...]) -> dict[str, torch.Tensor]:
    obj = load_torch_weights(path, what=what, hint=hint)
    if isinstance(obj, Mapping):
        for c in containers:
            if isinstance(obj.get(c), Mapping):
                obj = obj[c]
                break
    if not isinstance(obj, Mapping) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        keys = list(obj)[:5] if isinstance(obj, Mapping) else "-"
        held = f" (or a checkpoint holding one under {', '.join(map(repr, containers))})" if containers else ""
        raise CheckpointError(f"{path}: expected a state dict of tensors{held}; found {type(obj).__name__} with keys "
                              f"{keys}")
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def open_source(path: str | Path, *, what: str, keymap: KeyMap = KeyMap(), many_files: bool = False,
                containers: tuple[str, ...] = ("state_dict",), pickle_hint: str = "") -> WeightSource:
    """Open a checkpoint's files and map their names to model keys (headers only; nothing loaded).

    ``what`` names the expected model in messages. ``many_files``: a folder without an index may hold
    several safetensors shards (HF folders); otherwise it must hold one weights file. ``containers``: keys
    under which a torch pickle keeps its state dict (``ema_state_dict``, ``state_dict``). fp8 scale tensors
    are split off into :attr:`WeightSource.scale_of` (see :mod:`.fp8`).
    """
    where, files, index_path = _locate(Path(path).expanduser(), what, many_files)
    name_file = None
    if index_path is not None:
        name_file, files = _index(index_path)
    readers: dict[Path, Callable[[Optional[int]], Reader]] = {}
    metadata: dict[str, str] = {}
    raw: dict[str, Entry] = {}  # file name -> entry (key filled in below)
    fmt = "safetensors"
    if files[0].name.lower().endswith(GGUF_SUFFIX):
        fmt = "gguf"
        raw, metadata, readers = open_gguf(files[0])
    elif is_pickle(files[0]):
        fmt = "torch"
        state = _torch_state(files[0], what, pickle_hint, containers)
        raw = {n: Entry(n, n, files[0], t.dtype, tuple(t.shape), t.numel() * t.element_size(), i, None, t)
               for i, (n, t) in enumerate(state.items())}
        readers[files[0]] = lambda chunk, state=state: Reader(state)
    else:
        found, metadata, headers = _safetensors_entries(files, name_file, index_path)
        raw = {n: Entry(n, n, f, info.dtype, info.shape, info.nbytes, info.begin, None, info)
               for n, (f, info) in found.items()}
        for f, h in headers.items():
            readers[f] = lambda chunk, h=h: _SafetensorsReader(h, chunk)
    mapped = keymap.apply(raw)
    if mapped.duplicates:
        key, a, b = mapped.duplicates[0]
        raise CheckpointError(f"{where}: tensor {key!r} appears twice in the file (as {a!r} and {b!r}); the file "
                              "mixes two layouts")
    entries = {}
    for key, name in mapped.names.items():
        e = raw[name]
        entries[key] = e.renamed(key)
    src = WeightSource(where, files, fmt, entries, metadata, index_path, mapped.prefix, list(mapped.ignored),
                       list(mapped.notes), _readers=readers)
    split_fp8_scales(src)
    return src


def no_model_keys(src: WeightSource, what: str, expected_like: str, hint: str = "") -> CheckpointError:
    """The error for a file in which the key map found nothing of the model."""
    names = [n for n in src.ignored][:5]
    return CheckpointError(f"{src.describe()} holds no {what} tensors (expected keys like {expected_like}; its "
                           f"{len(src.ignored)} tensors start with: {listing(names)}): it is another model's file"
                           + (f". {hint}" if hint else ""))
