"""Finding, checking and streaming DiT checkpoints into a model, tensor by tensor.

The released folders (``distill/``, ``540p_sr/``, ``1080p_sr/``) are fp32 on disk (~61 GB) and the
model runs with bf16 block linears (~31 GB). :func:`load_dit` builds the model on the meta device,
then allocates each parameter in its final dtype and fills it from the file in small chunks, so the
host never holds the fp32 state dict and the model together (peak RAM ~ model size + 64 MB).

Accepted layouts (official fused key names, SPEC §3):
  * a folder with ``model.safetensors.index.json`` + shards, each shard either ``<shard>`` or
    ``<shard>.zst`` (zstd stream, as the official loader accepts);
  * a folder with one ``model.safetensors`` (or one ``*.safetensors[.zst]``);
  * a single ``.safetensors`` / ``.safetensors.zst`` file.
Keys may carry one wrapper prefix (``model.diffusion_model.``, ``diffusion_model.``, ``model.``,
``module.``), stripped when every key has it.
"""

from __future__ import annotations

import json
import logging
import math
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch

from .models.dit_config import DiTConfig, sr_1080p_local_attn_layers, swiglu_intermediate_size
from .rope import default_rope_bands
from .safetensors_io import (
    SafetensorsError,
    SafetensorsHeader,
    TensorInfo,
    TensorReader,
    TensorSpec,
    read_header,
    write_file,
)

log = logging.getLogger(__name__)

VARIANTS = ("distill", "base", "sr_540p", "sr_1080p")
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
META_VARIANT = "magihuman_variant"
META_CONFIG = "magihuman_config"
ROPE_KEY = "adapter.rope.bands"
KEY_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model.", "module.")
# Architecture fields that shapes determine (local_attn_layers does not show in the weights).
ARCH_FIELDS = ("num_layers", "hidden_size", "head_dim", "num_query_groups", "video_in_channels",
               "audio_in_channels", "text_in_channels", "mm_layers", "gelu7_layers", "post_norm_layers",
               "enable_attn_gating")


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupt, or holds a different model than expected."""


# ------------------------------------------------------------------ the official key table


def official_key_shapes(config: DiTConfig) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of the official fused layout with its shape, in module order."""
    c = config
    h, hd = c.hidden_size, c.head_dim
    out: dict[str, tuple[int, ...]] = {}
    for name, cin in (("video", c.video_in_channels), ("text", c.text_in_channels), ("audio", c.audio_in_channels)):
        out[f"adapter.{name}_embedder.weight"] = (h, cin)
        out[f"adapter.{name}_embedder.bias"] = (h,)
    out[ROPE_KEY] = (hd // 8,)
    for i in range(c.num_layers):
        e = 3 if i in c.mm_layers else 1
        p = f"block.layers.{i}."
        inner = c.gelu_intermediate_size if i in c.gelu7_layers else c.swiglu_intermediate_size
        up = inner if i in c.gelu7_layers else 2 * inner
        out[p + "attention.pre_norm.weight"] = (e * h,)
        out[p + "attention.linear_qkv.weight"] = (e * c.qkv_out_features, h)
        out[p + "attention.linear_proj.weight"] = (e * h, c.num_heads_q * hd)
        out[p + "attention.q_norm.weight"] = (e * hd,)
        out[p + "attention.k_norm.weight"] = (e * hd,)
        out[p + "mlp.pre_norm.weight"] = (e * h,)
        out[p + "mlp.up_gate_proj.weight"] = (e * up, h)
        out[p + "mlp.down_proj.weight"] = (e * h, inner)
        if i in c.post_norm_layers:
            out[p + "attn_post_norm.weight"] = (e * h,)
            out[p + "mlp_post_norm.weight"] = (e * h,)
    out["final_norm_video.weight"] = (h,)
    out["final_norm_audio.weight"] = (h,)
    out["final_linear_video.weight"] = (c.video_in_channels, h)
    out["final_linear_audio.weight"] = (c.audio_in_channels, h)
    return out


def is_block_linear(key: str) -> bool:
    """Keys the model stores in the requested dtype (the rest stays fp32)."""
    return key.startswith("block.") and key.endswith(("linear_qkv.weight", "linear_proj.weight",
                                                       "up_gate_proj.weight", "down_proj.weight"))


# ------------------------------------------------------------------ finding the files


@dataclass
class CheckpointSource:
    """The files of one checkpoint and where each (de-prefixed) key lives; headers only, no data."""

    path: Path
    files: list[Path]
    headers: dict[Path, SafetensorsHeader]
    key_file: dict[str, Path]  # model key -> file
    key_name: dict[str, str]  # model key -> name inside the file
    index_path: Optional[Path] = None
    prefix: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    # fp8 checkpoints: model key -> (file, name inside the file) of its per-tensor dequantisation scale
    scale_of: dict[str, tuple[Path, str]] = field(default_factory=dict)
    quantization: Optional[str] = None
    ignored: list[str] = field(default_factory=list)  # file names deliberately skipped (fp8 markers, ...)

    def load_scales(self) -> dict[str, float]:
        """Read the (tiny) per-tensor scales: ``weight = float32(stored) * scale``."""
        out: dict[str, float] = {}
        by_file: dict[Path, list[tuple[str, str]]] = {}
        for k, (f, name) in self.scale_of.items():
            by_file.setdefault(f, []).append((k, name))
        for f, items in by_file.items():
            header = self.headers[f]
            with TensorReader(header) as reader:
                for k, name in sorted(items, key=lambda kn: header.tensors[kn[1]].begin):
                    info = header.tensors[name]
                    if info.numel != 1:
                        raise CheckpointError(f"{f}: scale {name!r} has shape {list(info.shape)}; only per-tensor "
                                              "(one value) fp8 scales are supported")
                    try:
                        value = reader.read_into(info, torch.empty(1, dtype=torch.float32))
                    except SafetensorsError as e:
                        raise CheckpointError(str(e)) from e
                    out[k] = float(value.item())
        return out

    def info(self, key: str) -> TensorInfo:
        return self.headers[self.key_file[key]].tensors[self.key_name[key]]

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: self.info(k).shape for k in self.key_file}

    @property
    def total_bytes(self) -> int:
        return sum(self.info(k).nbytes for k in self.key_file)

    def describe(self) -> str:
        if self.index_path is not None:
            return f"{self.index_path} ({len(self.files)} shard(s))"
        return str(self.files[0])

    def source_dtype(self) -> torch.dtype:
        """The dtype holding most bytes of the block linears (what the release was saved in)."""
        by: dict[torch.dtype, int] = {}
        for k in self.key_file:
            if is_block_linear(k):
                i = self.info(k)
                by[i.dtype] = by.get(i.dtype, 0) + i.nbytes
        if not by:
            by = {self.info(k).dtype: 1 for k in self.key_file}
        return max(by, key=by.get)


def _header(path: Path) -> SafetensorsHeader:
    try:
        return read_header(path)
    except SafetensorsError as e:
        raise CheckpointError(str(e)) from e


def _resolve_shard(folder: Path, name: str, index_path: Path) -> Path:
    plain, zst = folder / name, folder / (name + ".zst")
    if plain.is_file():  # prefer the seekable copy when both exist (same content)
        return plain
    if zst.is_file():
        return zst
    raise CheckpointError(
        f"shard {name!r} listed in {index_path} is missing: neither {plain} nor {zst} exists; "
        "download the complete folder"
    )


def open_checkpoint(path: str | Path) -> CheckpointSource:
    """Locate the files of a checkpoint and read their headers (validated; no tensor data read)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"DiT checkpoint {path} does not exist; pass a checkpoint folder "
                              f"(with {INDEX_NAME} or {SINGLE_NAME}) or a .safetensors file")
    if path.is_file() and path.name == INDEX_NAME:
        path = path.parent
    elif path.is_file() and (path.parent / INDEX_NAME).is_file():
        # One shard of an indexed folder: load the whole folder (a shard alone is not a model).
        try:
            listed = set(json.loads((path.parent / INDEX_NAME).read_text()).get("weight_map", {}).values())
        except (ValueError, AttributeError):
            listed = set()
        if path.name in listed or path.name.removesuffix(".zst") in listed:
            log.info("%s is a shard listed in %s: loading the whole folder", path.name, INDEX_NAME)
            path = path.parent
    index_path = path / INDEX_NAME if path.is_dir() and (path / INDEX_NAME).is_file() else None
    key_file: dict[str, Path] = {}
    if index_path is not None:
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
            assert isinstance(weight_map, dict)
        except Exception as e:
            raise CheckpointError(f"{index_path} is not a valid safetensors index (needs a 'weight_map' "
                                  f"object): {e}") from e
        shard_paths: dict[str, Path] = {}
        for key, shard in weight_map.items():
            if shard not in shard_paths:
                shard_paths[shard] = _resolve_shard(path, shard, index_path)
            key_file[key] = shard_paths[shard]
        files = list(dict.fromkeys(shard_paths.values()))
    elif path.is_dir():
        candidates = [path / SINGLE_NAME, path / (SINGLE_NAME + ".zst")]
        files = [p for p in candidates if p.is_file()][:1]
        if not files:
            files = sorted(p for p in path.iterdir() if p.name.endswith((".safetensors", ".safetensors.zst")))
            if len(files) != 1:
                found = ", ".join(p.name for p in files) or "no .safetensors files"
                raise CheckpointError(
                    f"{path} has no {INDEX_NAME} and no single {SINGLE_NAME} (found: {found}); "
                    "pass the folder of one checkpoint or the .safetensors file itself")
    elif path.name.endswith((".safetensors", ".safetensors.zst", ".sft")):
        files = [path]
    else:
        raise CheckpointError(f"{path} is not a .safetensors file; DiT checkpoints are safetensors "
                              "(an official folder with an index and shards, or one .safetensors file)")

    headers = {f: _header(f) for f in files}
    if index_path is None:
        key_file = {k: files[0] for k in headers[files[0]].tensors}
    else:
        for f, h in headers.items():
            listed = [k for k, kf in key_file.items() if kf == f]
            absent = [k for k in listed if k not in h.tensors]
            if absent:
                raise CheckpointError(f"{index_path} says {len(absent)} tensor(s) are in {f.name} but that shard does "
                                      f"not contain them (first: {absent[:3]}); the folder is inconsistent")
            extra = set(h.tensors) - set(listed)
            if extra:
                log.warning("%s: %d tensor(s) not listed in the index are ignored (first: %s)",
                            f, len(extra), sorted(extra)[:3])
    metadata: dict[str, str] = {}
    for h in headers.values():
        for k, v in h.metadata.items():
            metadata.setdefault(k, v)

    prefix = ""
    keys = list(key_file)
    named = [k for k in keys if k != COMFY_FP8_MARKER]  # the marker sits outside any prefix
    if named and not any(k.startswith(("adapter.", "block.")) for k in named):
        for p in KEY_PREFIXES:
            if all(k.startswith(p) for k in named):
                prefix = p
                break

    def strip(k: str) -> str:
        return k[len(prefix):] if prefix and k.startswith(prefix) else k

    key_name = {strip(k): k for k in keys}
    key_file = {strip(k): f for k, f in key_file.items()}
    src = CheckpointSource(path, files, headers, key_file, key_name, index_path, prefix, metadata)
    _split_fp8_scales(src)
    return src


FP8_SCALE_SUFFIX = ".__fp8_scale"  # <key>.__fp8_scale: fp32 scalar, weight = fp8 * scale (per-tensor absmax)
COMFY_FP8_MARKER = "scaled_fp8"  # ComfyUI "scaled fp8": marker key + <module>.scale_weight (+ .scale_input)


def _split_fp8_scales(src: CheckpointSource) -> None:
    """Key map for fp8 checkpoints: move scale tensors out of the model keys (dequantised on load).

    Two published layouts: ``<name>.weight.__fp8_scale`` (the daVinci-MagiHuman FP8 conversion) and
    ComfyUI's ``scaled_fp8`` (a ``scaled_fp8`` marker key, ``<module>.scale_weight`` per fp8 weight,
    optional activation ``<module>.scale_input``, which is unused for dequantised weights).
    """
    keys = set(src.key_file)
    comfy = COMFY_FP8_MARKER in keys
    drop = []

    def take(scale_key: str, weight_key: str) -> None:
        if weight_key not in keys:
            raise CheckpointError(f"{src.describe()}: scale {src.key_name[scale_key]!r} has no weight "
                                  f"{weight_key!r} to apply to")
        src.scale_of[weight_key] = (src.key_file[scale_key], src.key_name[scale_key])

    for k in sorted(keys):
        if k.endswith(FP8_SCALE_SUFFIX):
            take(k, k[: -len(FP8_SCALE_SUFFIX)])
        elif comfy and k.endswith(".scale_weight"):
            take(k, k[: -len(".scale_weight")] + ".weight")
        elif comfy and (k.endswith(".scale_input") or k == COMFY_FP8_MARKER):
            src.ignored.append(src.key_name[k])
        else:
            continue
        drop.append(k)
    for k in drop:
        del src.key_file[k]
        del src.key_name[k]
    kinds = [name for name, used in (("__fp8_scale", any(k.endswith(FP8_SCALE_SUFFIX) for k in drop)),
                                     ("scaled_fp8", comfy)) if used]
    if kinds:
        src.quantization = "fp8 per-tensor scales (" + ", ".join(kinds) + ")"
    fp8 = [k for k in src.key_file if src.info(k).dtype in (torch.float8_e4m3fn, torch.float8_e5m2)]
    unscaled = [k for k in fp8 if k not in src.scale_of]
    if unscaled and src.scale_of:
        raise CheckpointError(
            f"{src.describe()}: {len(unscaled)} fp8 weight(s) have no scale while {len(src.scale_of)} do (first "
            f"without: {_listing(sorted(unscaled), None, 3)}); dequantising them would give wrong weights. The file "
            f"is incomplete or mixes two conversions: download the fp8 checkpoint again (every fp8 weight needs "
            f"'<key>{FP8_SCALE_SUFFIX}' or a ComfyUI '.scale_weight') or use the bf16/fp32 release")
    if unscaled:
        log.warning("%s: %d fp8 weight(s) carry no scales; using the stored values as they are (a plain fp8 cast). "
                    "If the output is noise, the file needs its '%s' scales", src.describe(), len(unscaled),
                    FP8_SCALE_SUFFIX)


# ------------------------------------------------------------------ key checks and inference


def _listing(keys: list[str], shapes: dict | None = None, limit: int = 5) -> str:
    items = [f"{k} {list(shapes[k])}" if shapes else k for k in keys[:limit]]
    more = f", ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(items) + more


def key_mismatch_message(where: str, found: dict[str, tuple], expected: dict[str, tuple], what: str,
                         allow_missing: Iterable[str] = ()) -> Optional[str]:
    """A readable report of missing / unexpected / wrong-shape keys, or None when they match."""
    allow = set(allow_missing)
    missing = [k for k in expected if k not in found and k not in allow]
    unexpected = [k for k in found if k not in expected]
    wrong = [k for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    if not (missing or unexpected or wrong):
        return None
    lines = [f"{where} does not hold {what}:"]
    if missing:
        lines.append(f"  {len(missing)} missing key(s): {_listing(missing, expected)}")
    if unexpected:
        lines.append(f"  {len(unexpected)} unexpected key(s): {_listing(unexpected, found)}")
    if wrong:
        lines.append(f"  {len(wrong)} key(s) with the wrong shape: " + ", ".join(
            f"{k} is {list(found[k])}, expected {list(expected[k])}" for k in wrong[:5])
            + (f", ... (+{len(wrong) - 5} more)" if len(wrong) > 5 else ""))
    return "\n".join(lines)


_LAYER_RE = re.compile(r"^block\.layers\.(\d+)\.")


def infer_config(shapes: dict[str, tuple[int, ...]], where: str = "checkpoint") -> DiTConfig:
    """Architecture from the tensor shapes of an official fused-layout state dict.

    hidden/in-channels from the adapter embedders; layers from ``block.layers.{i}``; experts (mm
    layers) from ``pre_norm`` = 3*hidden; head_dim from ``q_norm``; query groups (and gating) from
    the per-expert ``linear_qkv`` width; gelu7 vs swiglu7 from the ``up_gate_proj`` width; post-norm
    layers from ``attn_post_norm``. ``local_attn_layers`` does not show in weights and is left empty.
    """
    def wrong_model(detail: str) -> CheckpointError:
        msg = key_mismatch_message(where, shapes, official_key_shapes(DiTConfig()),
                                   "a daVinci-MagiHuman DiT (official fused layout)", allow_missing=[ROPE_KEY])
        return CheckpointError(f"{msg or where}\n  ({detail}; expected keys like 'adapter.video_embedder.weight', "
                               "'block.layers.0.attention.linear_qkv.weight'. Is this another model's file?)")

    try:
        h, vin = shapes["adapter.video_embedder.weight"]
        _, ain = shapes["adapter.audio_embedder.weight"]
        _, tin = shapes["adapter.text_embedder.weight"]
    except (KeyError, ValueError):
        raise wrong_model("the adapter embedders are missing") from None
    layer_ids = sorted({int(m.group(1)) for k in shapes if (m := _LAYER_RE.match(k))})
    if not layer_ids:
        raise wrong_model("no 'block.layers.{i}' keys")
    n = layer_ids[-1] + 1
    if layer_ids != list(range(n)):
        gaps = sorted(set(range(n)) - set(layer_ids))
        raise CheckpointError(f"{where}: transformer layers {gaps[:5]} are missing (found up to layer {n - 1}); "
                              "the checkpoint is incomplete")
    mm, gelu, post = [], [], []
    head_dims, qkv_widths = set(), set()
    swiglu_inner = swiglu_intermediate_size(h)
    for i in range(n):
        p = f"block.layers.{i}."
        try:
            (pre,) = shapes[p + "attention.pre_norm.weight"]
            (qn,) = shapes[p + "attention.q_norm.weight"]
            qkv = shapes[p + "attention.linear_qkv.weight"][0]
            up = shapes[p + "mlp.up_gate_proj.weight"][0]
        except (KeyError, ValueError):
            raise wrong_model(f"layer {i} lacks attention/mlp weights") from None
        if pre not in (h, 3 * h):
            raise wrong_model(f"layer {i} pre_norm has {pre} channels, expected {h} or {3 * h}")
        e = pre // h
        if e == 3:
            mm.append(i)
        head_dims.add(qn // e)
        qkv_widths.add(qkv // e)
        if up // e == 4 * h:
            gelu.append(i)
        elif up // e != 2 * swiglu_inner:
            raise wrong_model(f"layer {i} up_gate_proj has {up // e} outputs per expert, expected "
                              f"{4 * h} (gelu7) or {2 * swiglu_inner} (swiglu7)")
        if p + "attn_post_norm.weight" in shapes:
            post.append(i)
    if len(head_dims) != 1 or len(qkv_widths) != 1:
        raise CheckpointError(f"{where}: layers disagree on head_dim {sorted(head_dims)} / qkv width "
                              f"{sorted(qkv_widths)}; the checkpoint is corrupt")
    (hd,), (w,) = head_dims, qkv_widths
    if hd <= 0 or h % hd:
        raise wrong_model(f"q_norm width {hd} does not divide hidden size {h}")
    hq = h // hd
    rest = w - hq * hd  # 2*kv_heads*head_dim (+ hq gates)
    if rest > hq and (rest - hq) % (2 * hd) == 0:
        gating, kv = True, (rest - hq) // (2 * hd)
    elif rest > 0 and rest % (2 * hd) == 0:
        gating, kv = False, rest // (2 * hd)
    else:
        raise wrong_model(f"linear_qkv width {w} fits no (query + 2*kv heads)*{hd} (+ {hq} gates) split")
    try:
        return DiTConfig(num_layers=n, hidden_size=h, head_dim=hd, num_query_groups=kv, video_in_channels=vin,
                         audio_in_channels=ain, text_in_channels=tin, mm_layers=mm, gelu7_layers=gelu,
                         post_norm_layers=post, enable_attn_gating=gating)
    except ValueError as e:
        raise CheckpointError(f"{where}: inferred an invalid DiT config: {e}") from e


def normalize_variant(name: str) -> Optional[str]:
    """Map a folder/file/user name to a variant: '1080p_sr', 'sr_1080p', '1080p' -> 'sr_1080p', ..."""
    s = str(name).lower()
    if re.search(r"(?<!\d)1080p?(?!\d)", s):
        return "sr_1080p"
    if re.search(r"(?<!\d)540p?(?!\d)", s):
        return "sr_540p"
    tokens = [t for t in re.split(r"[^a-z0-9]+", s) if t]
    if any(t.startswith("distil") for t in tokens):
        return "distill"
    if "base" in tokens:
        return "base"
    return None


def _name_candidates(src: CheckpointSource) -> list[str]:
    names = []
    if src.path.is_dir():
        names.append(src.path.name)
        if src.index_path is None:
            names.append(src.files[0].name)
    else:
        names += [src.path.name, src.path.parent.name]
    return [n for n in names if n]


def infer_variant(src: CheckpointSource, override: Optional[str] = None) -> tuple[str, str]:
    """(variant, reason): caller's override, then file metadata, then file/folder name, then dtype."""
    if override is not None:
        v = override if override in VARIANTS else normalize_variant(override)
        if v is None:
            raise CheckpointError(f"unknown variant {override!r}; choose one of {', '.join(VARIANTS)}")
        return v, f"given by the caller (variant={override!r})"
    meta = src.metadata.get(META_VARIANT)
    if meta:
        v = meta if meta in VARIANTS else normalize_variant(meta)
        if v is not None:
            return v, f"safetensors metadata {META_VARIANT}={meta!r}"
        log.warning("%s: ignoring unknown %s=%r", src.describe(), META_VARIANT, meta)
    for name in _name_candidates(src):
        v = normalize_variant(name)
        if v is not None:
            return v, f"the name {name!r}"
    dt = src.source_dtype()
    if dt in (torch.bfloat16, torch.float16):
        return "base", (f"weights are {_dtype_name(dt)} on disk and the name says nothing; the base "
                        "release is the bf16 one (pass variant= to override)")
    return "distill", (f"weights are {_dtype_name(dt)} on disk and the name says nothing; distill and "
                       "the SR models are the fp32 releases, distill assumed (pass variant='sr_540p'/'sr_1080p' "
                       "or name the folder 540p_sr/1080p_sr for an SR model)")


def _metadata_config(src: CheckpointSource) -> Optional[DiTConfig]:
    raw = src.metadata.get(META_CONFIG)
    if not raw:
        return None
    try:
        return DiTConfig.from_dict(json.loads(raw))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{src.describe()}: metadata {META_CONFIG} is not a valid DiT config: {e}") from e


def resolve_config(src: CheckpointSource, variant: str, config: Optional[DiTConfig] = None) -> tuple[DiTConfig, str]:
    """The config to build: inferred from shapes, checked against a given/metadata config; local
    attention layers from the metadata config, or the official 1080p SR rule for ``sr_1080p``."""
    inferred = infer_config(src.shapes, src.describe())
    for given, origin in ((config, "the config passed in"), (_metadata_config(src), f"metadata {META_CONFIG}")):
        if given is None:
            continue
        diff = [f for f in ARCH_FIELDS if getattr(given, f) != getattr(inferred, f)]
        if diff:
            raise CheckpointError(f"{src.describe()}: {origin} disagrees with the weights on "
                                  + ", ".join(f"{f} ({getattr(given, f)} vs {getattr(inferred, f)} in the file)"
                                              for f in diff))
        if origin == "the config passed in":
            return given, "local_attn_layers from the config passed in"
        if given.local_attn_layers:
            inferred.local_attn_layers = list(given.local_attn_layers)
            return inferred, f"local_attn_layers from metadata {META_CONFIG}"
    if variant == "sr_1080p":
        inferred.local_attn_layers = sr_1080p_local_attn_layers(inferred.num_layers)
        return inferred, "local_attn_layers by the official 1080p SR rule (all but 3, 7, ..., 31)"
    return inferred, "no local attention"


def _open_checked(path: str | Path, variant: Optional[str], config: Optional[DiTConfig] = None):
    """Open a checkpoint, settle its variant and config, and check every key and shape against them.

    Returns ``(source, variant, variant_reason, config, config_reason)``."""
    src = open_checkpoint(path)
    v, reason = infer_variant(src, variant)
    cfg, config_reason = resolve_config(src, v, config)
    msg = key_mismatch_message(src.describe(), src.shapes, official_key_shapes(cfg),
                               f"a daVinci-MagiHuman DiT of the config in use ({cfg.num_layers} layers, hidden "
                               f"{cfg.hidden_size})", allow_missing=[ROPE_KEY])
    if msg:
        raise CheckpointError(msg)
    return src, v, reason, cfg, config_reason


def _coords(variant: str) -> str:
    return "v1" if variant.startswith("sr_") else "v2"


def inspect_dit(path: str | Path, *, variant: Optional[str] = None) -> dict:
    """What :func:`load_dit` would build, from the headers alone (no tensor data is read)."""
    src, v, reason, cfg, config_reason = _open_checked(path, variant)
    return {"variant": v, "reason": reason, "config_reason": config_reason, "source": src.describe(),
            "source_dtype": _dtype_name(src.source_dtype()), "quantization": src.quantization,
            "coords": _coords(v), "config": cfg.to_dict(), "bytes": src.total_bytes,
            "files": [str(f) for f in src.files]}


# ------------------------------------------------------------------ loading


def _state_slots(model: torch.nn.Module) -> dict[str, tuple[torch.nn.Module, str, bool]]:
    """state-dict key -> (owning module, attribute, is_parameter), persistent entries only."""
    slots = {}
    for mname, mod in model.named_modules():
        pre = f"{mname}." if mname else ""
        for n, p in mod._parameters.items():
            if p is not None:
                slots[pre + n] = (mod, n, True)
        for n, b in mod._buffers.items():
            if b is not None and n not in mod._non_persistent_buffers_set:
                slots[pre + n] = (mod, n, False)
    return slots


def _install(mod: torch.nn.Module, attr: str, is_param: bool, tensor: torch.Tensor) -> None:
    if is_param:
        mod._parameters[attr] = torch.nn.Parameter(tensor, requires_grad=False)
    else:
        mod._buffers[attr] = tensor


def _progress_bar(total: int, show: bool, desc: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=not show, leave=False)


def _dtype_name(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


def _read_fp8(reader: TensorReader, info, scale: Optional[float], device: torch.device,
              on_bytes: Callable[[int], None]) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """One block weight as ``(float8_e4m3fn tensor, fp32 scale, kept_as_stored)``.

    e4m3 on disk: the bytes and the file's per-tensor scale (1 when it has none) are kept as they are.
    Anything else (bf16/fp16/fp32, e5m2): read in its own dtype, then quantised per tensor with
    :func:`magihuman.models.dit.quantize_fp8` (``scale = amax / 448``).
    """
    from .models.dit import FP8_DTYPE, quantize_fp8

    if info.dtype == FP8_DTYPE:
        w8 = reader.read_into(info, torch.empty(info.shape, dtype=FP8_DTYPE), on_bytes)
        return w8.to(device), torch.tensor(1.0 if scale is None else scale, dtype=torch.float32, device=device), True
    raw = reader.read_into(info, torch.empty(info.shape, dtype=info.dtype), on_bytes)
    if scale is not None:  # e5m2 with a scale: the stored values times the scale are the weights
        raw = raw.to(torch.float32).mul_(scale)
    try:
        w8, s = quantize_fp8(raw)
    except ValueError as e:
        raise CheckpointError(f"{reader.header.path}: tensor {info.name!r}: {e} (load it with dtype=torch.bfloat16 "
                              "to inspect it, or download the file again)") from e
    return w8.to(device), s.to(device), False


def load_dit(
    path: str | Path,
    *,
    dtype: Optional[torch.dtype] = torch.bfloat16,
    device: str | torch.device = "cpu",
    operations=torch.nn,
    variant: Optional[str] = None,
    config: Optional[DiTConfig] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    show_progress: bool = True,
    chunk_bytes: Optional[int] = None,
):
    """Build a :class:`MagiHumanDiT` from a checkpoint, streaming and converting tensor by tensor.

    ``dtype`` applies to the block linears (None = bf16, the official layout); norms, adapter,
    final heads and RoPE bands stay fp32 as the model defines them. ``torch.float8_e4m3fn`` keeps
    each block linear in fp8 with a per-tensor fp32 scale (``module.weight_scale``, non-persistent):
    e4m3 files keep their bytes and scales, other files are quantised per tensor (amax / 448); fp8
    files loaded with any other dtype are dequantised while streaming. The variant (distill / base /
    sr_540p / sr_1080p) and config are inferred (override with ``variant=`` / ``config=``); the
    returned model carries ``model.variant`` and ``model.load_info`` saying what was inferred and why.
    ``progress(done_bytes, total_bytes)`` is called as data arrives. A file without
    ``adapter.rope.bands`` gets the formula value ``1 / 10000**(i / (head_dim//8))``.
    """
    from .models.dit import FP8_DTYPE, MagiHumanDiT, set_fp8_weight  # local: file tools work without the model

    src, variant, variant_reason, cfg, config_reason = _open_checked(path, variant, config)
    where = src.describe()
    block_dtype = dtype or torch.bfloat16
    if block_dtype == torch.float8_e5m2:
        raise CheckpointError(f"dtype {block_dtype}: fp8 storage is float8_e4m3fn (pass torch.float8_e4m3fn or bf16)")
    fp8 = block_dtype == FP8_DTYPE
    kept = quantised = 0
    model = MagiHumanDiT(cfg, operations=operations, dtype=dtype, device="meta")
    slots = _state_slots(model)  # the same keys and shapes as official_key_shapes(cfg)
    scales = src.load_scales()
    device = torch.device(device)
    total = src.total_bytes
    done = 0
    bar = _progress_bar(total, show_progress, "Loading DiT")

    def on_bytes(n: int) -> None:
        nonlocal done
        done += n
        if bar is not None:
            bar.update(n)
        if progress is not None:
            progress(done, total)

    try:
        for f in src.files:
            header = src.headers[f]
            keys = sorted((k for k, kf in src.key_file.items() if kf == f), key=lambda k: src.info(k).begin)
            with TensorReader(header, chunk_bytes=chunk_bytes) as reader:
                for k in keys:
                    mod, attr, is_param = slots[k]
                    meta = getattr(mod, attr)
                    try:
                        if fp8 and meta.dtype == FP8_DTYPE:  # a block linear kept in fp8 with its scale
                            w8, scale, as_is = _read_fp8(reader, src.info(k), scales.get(k), device, on_bytes)
                            set_fp8_weight(mod, w8, scale)
                            kept, quantised = kept + as_is, quantised + (not as_is)
                            continue
                        dest = torch.empty(meta.shape, dtype=meta.dtype, device=device)
                        reader.read_into(src.info(k), dest, on_bytes, scale=scales.get(k))
                    except SafetensorsError as e:
                        raise CheckpointError(str(e)) from e
                    _install(mod, attr, is_param, dest)
    finally:
        if bar is not None:
            bar.close()

    notes = []
    if fp8:
        if kept:
            notes.append(f"{kept} block weight(s) kept as stored (float8_e4m3fn) with their per-tensor scale")
        if quantised:
            notes.append(f"{quantised} block weight(s) quantised to float8_e4m3fn (per-tensor scale amax/448) "
                         "while loading")
    elif src.quantization:
        notes.append(f"{src.quantization}: {len(scales)} weight(s) dequantised to "
                     f"{_dtype_name(block_dtype)} while loading")
    if ROPE_KEY not in src.key_file:
        model.reset_rope_bands_(device)
        notes.append(f"{ROPE_KEY} absent from the file: filled with 1/10000**(i/{cfg.head_dim // 8})")
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"{where}: the model still has uninitialised tensors after loading: {left[:5]}")
    model.eval()

    source_dtype = src.source_dtype()
    model.variant = variant
    model.load_info = {
        "variant": variant,
        "reason": variant_reason,
        "config_reason": config_reason,
        "source": where,
        "source_dtype": _dtype_name(source_dtype),
        "dtype": _dtype_name(block_dtype),
        "coords": _coords(variant),
        "quantization": src.quantization,
        "config": cfg.to_dict(),
        "bytes_read": done,
        "notes": notes,
    }
    log.info("Loaded MagiHuman DiT from %s: variant %s (%s); %s on disk -> %s block linears; %d layers, "
             "hidden %d; %s%s", where, variant, variant_reason, _dtype_name(source_dtype),
             _dtype_name(block_dtype), cfg.num_layers, cfg.hidden_size, config_reason,
             ("; " + "; ".join(notes)) if notes else "")
    return model


# ------------------------------------------------------------------ writing


def _tiny_tensor(key: str, shape: tuple[int, ...], dtype: torch.dtype, seed: int, head_dim: int) -> torch.Tensor:
    """Deterministic per-key values: linears N(0, 0.02), biases and norms 0, RoPE bands by formula."""
    if key == ROPE_KEY:
        return default_rope_bands(head_dim).to(dtype)
    if key.endswith(".bias") or len(shape) == 1:
        return torch.zeros(shape, dtype=dtype)
    gen = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(key.encode())) % (2**63))
    return (torch.randn(shape, generator=gen, dtype=torch.float32) * 0.02).to(dtype)


def _file_metadata(variant: str, config: Optional[DiTConfig]) -> dict[str, str]:
    meta = {"format": "pt", META_VARIANT: variant}
    if config is not None:
        meta[META_CONFIG] = json.dumps(config.to_dict())
    return meta


def write_tiny_dit(
    path: str | Path,
    *,
    config: Optional[DiTConfig] = None,
    variant: str = "distill",
    layout: str = "folder",
    dtype: torch.dtype = torch.float32,
    zst: bool = False,
    shards: int = 2,
    seed: int = 0,
    metadata: bool = True,
) -> Path:
    """Write random DiT weights in the official on-disk format; returns what to pass to load_dit.

    ``layout="folder"``: ``path/model.safetensors.index.json`` + ``model-0000i-of-0000n.safetensors``
    (``.zst`` appended when ``zst``, as the official loader accepts). ``layout="file"``: one file at
    ``path`` (+ ``.zst``). Block linears are written in ``dtype``; with a 16-bit ``dtype`` the rest
    stays fp32 (the model's own mixed layout). ``metadata=False`` omits the ``magihuman_*`` keys,
    like the official release. Values are deterministic per key and seed.
    """
    config = config or DiTConfig.preset("tiny")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    shapes = official_key_shapes(config)
    low = dtype in (torch.bfloat16, torch.float16)

    def spec(key: str) -> TensorSpec:
        dt = dtype if (is_block_linear(key) or not low) else torch.float32
        return TensorSpec(key, dt, shapes[key], lambda: _tiny_tensor(key, shapes[key], dt, seed, config.head_dim))

    specs = [spec(k) for k in shapes]
    meta = _file_metadata(variant, config) if metadata else {"format": "pt"}
    path = Path(path)
    suffix = ".zst" if zst else ""
    if layout == "file":
        target = path if (not zst or path.name.endswith(".zst")) else path.with_name(path.name + ".zst")
        write_file(target, specs, meta)
        return target
    if layout != "folder":
        raise ValueError(f"layout must be 'folder' or 'file', got {layout!r}")
    path.mkdir(parents=True, exist_ok=True)
    n = max(1, min(int(shards), len(specs)))
    per = math.ceil(len(specs) / n)
    weight_map: dict[str, str] = {}
    total = 0
    for s in range(n):
        group = specs[s * per:(s + 1) * per]
        if not group:
            continue
        name = f"model-{s + 1:05d}-of-{n:05d}.safetensors"
        total += write_file(path / (name + suffix), group, meta)
        weight_map.update({g.name: name for g in group})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / INDEX_NAME).write_text(json.dumps(index, indent=2))
    return path


def convert_dit(src_path: str | Path, dst: str | Path, *, dtype: torch.dtype = torch.bfloat16,
                variant: Optional[str] = None, show_progress: bool = True) -> Path:
    """Re-save a DiT checkpoint as ONE ``.safetensors`` file, block linears in ``dtype`` (rest fp32),
    with ``magihuman_variant`` / ``magihuman_config`` metadata. Streams: one tensor in memory at a time."""
    src, v, reason, cfg, _ = _open_checked(src_path, variant)
    dst = Path(dst)
    if not dst.name.endswith(".safetensors"):
        raise CheckpointError(f"convert_dit writes a .safetensors file; got {dst}")
    order = sorted(src.key_file, key=lambda k: (src.files.index(src.key_file[k]), src.info(k).begin))
    readers: dict[Path, TensorReader] = {}
    scales = src.load_scales()

    def produce(key: str, dt: torch.dtype):
        def run() -> torch.Tensor:
            f = src.key_file[key]
            reader = readers.get(f)
            if reader is None:
                for r in readers.values():  # files are visited one after another
                    r.close()
                reader = readers[f] = TensorReader(src.headers[f])
            info = src.info(key)
            return reader.read_into(info, torch.empty(info.shape, dtype=dt), scale=scales.get(key))
        return run

    specs = []
    for k in order:
        dt = dtype if is_block_linear(k) else torch.float32
        specs.append(TensorSpec(k, dt, src.info(k).shape, produce(k, dt)))
    if ROPE_KEY not in src.key_file:
        specs.insert(0, TensorSpec(ROPE_KEY, torch.float32, (cfg.head_dim // 8,),
                                   lambda: default_rope_bands(cfg.head_dim)))
    bar = _progress_bar(sum(s.nbytes for s in specs), show_progress, "Converting DiT")
    try:
        write_file(dst, specs, _file_metadata(v, cfg), on_bytes=bar.update if bar is not None else None)
    finally:
        for r in readers.values():
            r.close()
        if bar is not None:
            bar.close()
    log.info("Converted %s -> %s (%s, variant %s: %s)", src.describe(), dst, _dtype_name(dtype), v, reason)
    return dst


__all__ = [
    "CheckpointError",
    "CheckpointSource",
    "VARIANTS",
    "convert_dit",
    "infer_config",
    "infer_variant",
    "inspect_dit",
    "is_block_linear",
    "load_dit",
    "normalize_variant",
    "official_key_shapes",
    "open_checkpoint",
    "resolve_config",
    "sr_1080p_local_attn_layers",
    "write_tiny_dit",
]
