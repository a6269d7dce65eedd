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
from pathlib import Path
from typing import Callable, Optional

import torch
from tqdm.auto import tqdm

from .errors import CheckpointError
from .models.dit import MagiHumanDiT
from .ops import set_fp8_weight, set_gguf_weight
from .models.dit_config import DiTConfig, sr_1080p_local_attn_layers, swiglu_intermediate_size
from .quant import gguf as gguf_types
from .quant.fp8 import FP8_DTYPE, quantize_fp8
from .rope import default_rope_bands
from .weights import (INDEX_NAME, KeyMap, WeightSource, check_keys, check_materialized, load_into, mismatch_report,
                      open_source)
from .weights.entry import Entry, OnBytes, Reader
from .weights.fp8 import COMFY_FP8_MARKER
from .weights.gguf_file import ARCH_KEY, GGUF_SUFFIX, GGUFSpec, write_gguf
from .weights.safetensors_io import TensorSpec, write_file
from .weights.stream import Slot

log = logging.getLogger(__name__)

VARIANTS = ("distill", "base", "sr_540p", "sr_1080p")
META_VARIANT = "magihuman_variant"
META_CONFIG = "magihuman_config"
GGUF_ARCH = "magihuman"  # general.architecture of DiT GGUF files
GGUF_META = {META_VARIANT: "magihuman.variant", META_CONFIG: "magihuman.config"}  # GGUF key/values
ROPE_KEY = "adapter.rope.bands"
KEY_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model.", "module.")
# Official fused key names inside a file: one wrapper prefix (ComfyUI / training) stripped when every key has it.
DIT_KEYMAP = KeyMap(wrappers=KEY_PREFIXES, passthrough=(COMFY_FP8_MARKER,))
WHAT = "a daVinci-MagiHuman DiT"
# Architecture fields that shapes determine (local_attn_layers does not show in the weights).
ARCH_FIELDS = ("num_layers", "hidden_size", "head_dim", "num_query_groups", "video_in_channels",
               "audio_in_channels", "text_in_channels", "mm_layers", "gelu7_layers", "post_norm_layers",
               "enable_attn_gating")

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


def open_checkpoint(path: str | Path) -> WeightSource:
    """Locate the files of a DiT checkpoint and read their headers (validated; no tensor data read).

    Accepts an official folder (index + shards, ``.zst`` shards too), a folder with one weights file, or a
    single file (``.safetensors``, ``.safetensors.zst``, ``.gguf``); keys may carry one wrapper prefix
    (:data:`KEY_PREFIXES`); fp8 scale tensors are set apart. A GGUF's ``magihuman.variant`` /
    ``magihuman.config`` values count as the safetensors metadata of the same meaning.
    """
    src = open_source(path, what=WHAT, keymap=DIT_KEYMAP)
    if src.format == "gguf":
        for ours, key in GGUF_META.items():
            if key in src.metadata:
                src.metadata.setdefault(ours, src.metadata[key])
    return src


def block_linear_dtype(src: WeightSource) -> torch.dtype:
    """The stored dtype holding most bytes of the block linears (what the release was saved in)."""
    keys = [k for k in src.entries if is_block_linear(k)]
    return src.dominant_dtype(keys or None)


def storage_name(src: WeightSource) -> str:
    """How the block linears are stored in the file: a dtype name, or ``gguf Q8_0`` (the main GGUF type)."""
    by: dict[str, int] = {}
    for k, e in src.entries.items():
        if is_block_linear(k):
            name = f"gguf {gguf_types.GGMLType(e.qtype).name}" if e.quantized else _dtype_name(e.dtype)
            by[name] = by.get(name, 0) + e.nbytes
    return max(by, key=by.get) if by else _dtype_name(src.dominant_dtype())


def _main_gguf_type(src: WeightSource) -> str:
    """The GGML type holding most bytes of the quantised block linears (a file whose rows are mostly not whole
    blocks, e.g. Q4_K of a small model, keeps most of them BF16, so this is not always :func:`storage_name`)."""
    by: dict[str, int] = {}
    for k, e in src.entries.items():
        if is_block_linear(k) and e.quantized:
            name = gguf_types.GGMLType(e.qtype).name
            by[name] = by.get(name, 0) + e.nbytes
    return max(by, key=by.get)


# ------------------------------------------------------------------ key checks and inference


_LAYER_RE = re.compile(r"^block\.layers\.(\d+)\.")


def infer_config(shapes: dict[str, tuple[int, ...]], where: str = "checkpoint") -> DiTConfig:
    """Architecture from the tensor shapes of an official fused-layout state dict.

    hidden/in-channels from the adapter embedders; layers from ``block.layers.{i}``; experts (mm
    layers) from ``pre_norm`` = 3*hidden; head_dim from ``q_norm``; query groups (and gating) from
    the per-expert ``linear_qkv`` width; gelu7 vs swiglu7 from the ``up_gate_proj`` width; post-norm
    layers from ``attn_post_norm``. ``local_attn_layers`` does not show in weights and is left empty.
    """
    def wrong_model(detail: str) -> CheckpointError:
        msg = mismatch_report(where, shapes, official_key_shapes(DiTConfig()),
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


def _name_candidates(src: WeightSource) -> list[str]:
    names = []
    if src.path.is_dir():
        names.append(src.path.name)
        if src.index_path is None:
            names.append(src.files[0].name)
    else:
        names += [src.path.name, src.path.parent.name]
    return [n for n in names if n]


def infer_variant(src: WeightSource, override: Optional[str] = None) -> tuple[str, str]:
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
            return v, f"{src.format} metadata {META_VARIANT}={meta!r}"
        log.warning("%s: ignoring unknown %s=%r", src.describe(), META_VARIANT, meta)
    for name in _name_candidates(src):
        v = normalize_variant(name)
        if v is not None:
            return v, f"the name {name!r}"
    if src.format == "gguf":  # quantised blocks say nothing about which release they came from
        log.warning("%s: a GGUF without %s metadata whose name says nothing: distill assumed (pass variant= or "
                    "put base / distill / 540p_sr / 1080p_sr in the file name)", src.describe(), META_VARIANT)
        return "distill", ("a GGUF file without variant metadata and a name that says nothing; distill assumed "
                           "(pass variant= or name the file magihuman_base*.gguf etc.)")
    dt = block_linear_dtype(src)
    if dt in (torch.bfloat16, torch.float16):
        return "base", (f"weights are {_dtype_name(dt)} on disk and the name says nothing; the base "
                        "release is the bf16 one (pass variant= to override)")
    return "distill", (f"weights are {_dtype_name(dt)} on disk and the name says nothing; distill and "
                       "the SR models are the fp32 releases, distill assumed (pass variant='sr_540p'/'sr_1080p' "
                       "or name the folder 540p_sr/1080p_sr for an SR model)")


def _metadata_config(src: WeightSource) -> Optional[DiTConfig]:
    raw = src.metadata.get(META_CONFIG)
    if not raw:
        return None
    try:
        return DiTConfig.from_dict(json.loads(raw))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{src.describe()}: metadata {META_CONFIG} is not a valid DiT config: {e}") from e


def resolve_config(src: WeightSource, variant: str, config: Optional[DiTConfig] = None) -> tuple[DiTConfig, str]:
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
    arch = src.metadata.get(ARCH_KEY) if src.format == "gguf" else None
    if arch is not None and arch != GGUF_ARCH:
        try:
            infer_config(src.shapes, src.describe())
        except CheckpointError as e:
            raise CheckpointError(f"{src.describe()} is a GGUF of architecture {arch!r}, not a daVinci-MagiHuman DiT "
                                  f"({GGUF_ARCH!r}); pick the MagiHuman DiT file.\n{e}") from None
        log.warning("%s: GGUF architecture %r (not %r), but its tensors are a MagiHuman DiT's: loading it",
                    src.describe(), arch, GGUF_ARCH)
    v, reason = infer_variant(src, variant)
    cfg, config_reason = resolve_config(src, v, config)
    check_keys(src.describe(), src.shapes, official_key_shapes(cfg),
               f"{WHAT} of the config in use ({cfg.num_layers} layers, hidden {cfg.hidden_size})",
               allow_missing=[ROPE_KEY])
    return src, v, reason, cfg, config_reason


def _coords(variant: str) -> str:
    return "v1" if variant.startswith("sr_") else "v2"


def inspect_dit(path: str | Path, *, variant: Optional[str] = None) -> dict:
    """What :func:`load_dit` would build, from the headers alone (no tensor data is read)."""
    src, v, reason, cfg, config_reason = _open_checked(path, variant)
    return {"variant": v, "reason": reason, "config_reason": config_reason, "source": src.describe(),
            "source_dtype": storage_name(src), "quantization": src.quantization,
            "coords": _coords(v), "config": cfg.to_dict(), "bytes": src.total_bytes,
            "files": [str(f) for f in src.files]}


# ------------------------------------------------------------------ loading


def progress_bar(total: int, show: bool, desc: str):
    """A byte-counting tqdm bar (hidden when ``show`` is False)."""
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=not show, leave=False)


def _dtype_name(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


def _read_fp8(reader: Reader, e: Entry, scale: Optional[float], device: torch.device,
              on_bytes: OnBytes) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """One block weight as ``(float8_e4m3fn tensor, fp32 scale, kept_as_stored)``.

    e4m3 on disk: the bytes and the file's per-tensor scale (1 when it has none) are kept as they are.
    Anything else (bf16/fp16/fp32, e5m2): read in its own dtype, then quantised per tensor with
    :func:`magihuman.quant.fp8.quantize_fp8` (``scale = amax / 448``).
    """
    if e.dtype == FP8_DTYPE:
        w8 = reader.read_into(e, torch.empty(e.shape, dtype=FP8_DTYPE), on_bytes)
        return w8.to(device), torch.tensor(1.0 if scale is None else scale, dtype=torch.float32, device=device), True
    raw = reader.read_into(e, torch.empty(e.shape, dtype=torch.float32 if e.quantized else e.dtype), on_bytes)
    if scale is not None:  # e5m2 with a scale: the stored values times the scale are the weights
        raw = raw.to(torch.float32).mul_(scale)
    try:
        w8, s = quantize_fp8(raw)
    except ValueError as err:
        raise CheckpointError(f"{e.file}: tensor {e.name!r}: {err} (load it with dtype=torch.bfloat16 "
                              "to inspect it, or download the file again)") from err
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
    gguf: str = "keep",
):
    """Build a :class:`MagiHumanDiT` from a checkpoint, streaming and converting tensor by tensor.

    ``dtype`` applies to the block linears (None = bf16, the official layout); norms, adapter,
    final heads and RoPE bands stay fp32 as the model defines them. ``torch.float8_e4m3fn`` keeps
    each block linear in fp8 with a per-tensor fp32 scale (``module.weight_scale``, non-persistent):
    e4m3 files keep their bytes and scales, other files are quantised per tensor (amax / 448); fp8
    files loaded with any other dtype are dequantised while streaming. GGUF-quantised block linears
    (a ``.gguf`` file) stay quantised in memory and are dequantised per layer on the compute device
    (``gguf="keep"``, the default); ``gguf="dequantize"`` turns them into ``dtype`` while loading (and fp8
    re-quantises them). The variant (distill / base /
    sr_540p / sr_1080p) and config are inferred (override with ``variant=`` / ``config=``); the
    returned model carries ``model.variant`` and ``model.load_info`` saying what was inferred and why.
    ``progress(done_bytes, total_bytes)`` is called as data arrives. A file without
    ``adapter.rope.bands`` gets the formula value ``1 / 10000**(i / (head_dim//8))``.
    """
    src, variant, variant_reason, cfg, config_reason = _open_checked(path, variant, config)
    where = src.describe()
    block_dtype = dtype or torch.bfloat16
    if block_dtype == torch.float8_e5m2:
        raise CheckpointError(f"dtype {block_dtype}: fp8 storage is float8_e4m3fn (pass torch.float8_e4m3fn or bf16)")
    fp8 = block_dtype == FP8_DTYPE
    if gguf not in ("keep", "dequantize"):
        raise ValueError(f"gguf must be 'keep' or 'dequantize', got {gguf!r}")
    keep_gguf = gguf == "keep" and not fp8
    counts = {"kept": 0, "quantised": 0, "gguf": 0, "gguf_dequantised": 0}
    model = MagiHumanDiT(cfg, operations=operations, dtype=dtype, device="meta")
    device = torch.device(device)
    total = src.total_bytes
    done = 0
    bar = progress_bar(total, show_progress, "Loading DiT")

    def on_bytes(n: int) -> None:
        nonlocal done
        done += n
        bar.update(n)
        if progress is not None:
            progress(done, total)

    def keep_compact(e: Entry, reader: Reader, slot: Slot, count: OnBytes) -> bool:
        """Block linears keep their GGUF blocks (``gguf="keep"``); those of an fp8 model keep (or get) their fp8
        bytes and per-tensor scale. Everything else takes the default path (dequantised to its dtype)."""
        mod, attr, _ = slot
        if e.quantized and is_block_linear(e.key):
            if keep_gguf:
                raw = torch.empty(gguf_types.byte_shape(e.shape, e.qtype), dtype=torch.uint8, device=device)
                set_gguf_weight(mod, reader.read_into(e, raw, count), e.qtype, e.shape)
                counts["gguf"] += 1
                return True
            counts["gguf_dequantised"] += 1
        if not (fp8 and getattr(mod, attr).dtype == FP8_DTYPE):
            return False
        scale = src.scale_value(e.key) if e.key in src.scale_of else None
        w8, s, as_is = _read_fp8(reader, e, scale, device, count)
        set_fp8_weight(mod, w8, s)
        counts["kept" if as_is else "quantised"] += 1
        return True

    try:
        load_into(model, src, device=device, handler=keep_compact, on_bytes=on_bytes, chunk_bytes=chunk_bytes)
    finally:
        bar.close()

    notes = []
    if fp8:
        if counts["kept"]:
            notes.append(f"{counts['kept']} block weight(s) kept as stored (float8_e4m3fn) with their per-tensor scale")
        if counts["quantised"]:
            notes.append(f"{counts['quantised']} block weight(s) quantised to float8_e4m3fn (per-tensor scale amax/448) "
                         "while loading")
    elif src.quantization:
        notes.append(f"{src.quantization}: {len(src.scale_of)} weight(s) dequantised to "
                     f"{_dtype_name(block_dtype)} while loading")
    if counts["gguf"]:
        notes.append(f"{counts['gguf']} block weight(s) kept GGUF-quantised ({_main_gguf_type(src)}), dequantised per "
                     "layer on the compute device")
    if counts["gguf_dequantised"]:
        notes.append(f"{counts['gguf_dequantised']} GGUF block weight(s) dequantised to "
                     f"{_dtype_name(block_dtype)} while loading")
    if ROPE_KEY not in src.entries:
        model.reset_rope_bands_(device)
        notes.append(f"{ROPE_KEY} absent from the file: filled with 1/10000**(i/{cfg.head_dim // 8})")
    check_materialized(model, where)
    model.eval()

    source = storage_name(src)
    stored = f"gguf ({_main_gguf_type(src)} in the file)" if counts["gguf"] else _dtype_name(block_dtype)
    model.variant = variant
    model.load_info = {
        "variant": variant,
        "reason": variant_reason,
        "config_reason": config_reason,
        "source": where,
        "source_dtype": source,
        "dtype": stored,
        "coords": _coords(variant),
        "quantization": src.quantization,
        "config": cfg.to_dict(),
        "bytes_read": done,
        "notes": notes,
    }
    log.info("Loaded MagiHuman DiT from %s: variant %s (%s); %s on disk -> %s block linears; %d layers, "
             "hidden %d; %s%s", where, variant, variant_reason, source,
             stored, cfg.num_layers, cfg.hidden_size, config_reason,
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


# Q4_K is written by the simple encoder quant.gguf.encode_q4_k (llama.cpp searches better scales); the others
# byte-exactly as the gguf package quantises them.
GGUF_QUANTS = ("Q8_0", "Q5_1", "Q5_0", "Q4_K", "Q4_1", "Q4_0", "BF16", "F16")


def gguf_tensor_type(key: str, shape: tuple[int, ...], quant: str) -> gguf_types.GGMLType:
    """What a DiT tensor is written as in a GGUF file: block linears in ``quant`` when their rows are whole
    blocks (else BF16: e.g. the swiglu ``down_proj`` of the release has 13652-wide rows, not a multiple of 32);
    everything else F32 (norms, biases, the fp32 adapter embedders and output heads, RoPE bands: < 0.5 % of
    the parameters and fp32 in the model itself, so they stay exact)."""
    return gguf_types.storage_type(shape, quant) if is_block_linear(key) else gguf_types.GGMLType.F32


def convert_dit(src_path: str | Path, dst: str | Path, *, dtype: torch.dtype = torch.bfloat16,
                variant: Optional[str] = None, show_progress: bool = True, quant: Optional[str] = None) -> Path:
    """Re-save a DiT checkpoint as ONE file, streamed (one tensor in memory at a time), with the variant and
    config in its metadata:

    - ``.safetensors``: block linears in ``dtype`` (rest fp32);
    - ``.gguf``: block linears quantised to ``quant`` (``Q8_0`` default; see :data:`GGUF_QUANTS` and
      :func:`gguf_tensor_type` for what stays BF16/F32), ``general.architecture = "magihuman"``.
    """
    src, v, reason, cfg, _ = _open_checked(src_path, variant)
    dst = Path(dst)
    to_gguf = dst.name.endswith(GGUF_SUFFIX)
    if not (to_gguf or dst.name.endswith(".safetensors")):
        raise CheckpointError(f"convert_dit writes a .safetensors or .gguf file; got {dst}")
    if quant is not None and not to_gguf:
        raise CheckpointError(f"quant={quant!r} needs a .gguf output, got {dst}")
    quant = (quant or "Q8_0").upper() if to_gguf else None
    if to_gguf and quant not in GGUF_QUANTS:
        raise CheckpointError(f"unknown GGUF quantisation {quant!r}; choose one of {', '.join(GGUF_QUANTS)}")
    order = sorted(src.entries, key=lambda k: (src.files.index(src.entries[k].file), src.entries[k].offset))
    readers: dict[Path, Reader] = {}

    def produce(key: str, dt: torch.dtype):
        def run() -> torch.Tensor:
            e = src.entries[key]
            reader = readers.get(e.file)
            if reader is None:
                for r in readers.values():  # files are visited one after another
                    r.close()
                reader = readers[e.file] = src.reader(e.file)
            scale = src.scale_value(key) if key in src.scale_of else None
            return reader.read_into(e, torch.empty(e.shape, dtype=dt), scale=scale)
        return run

    rope = lambda: default_rope_bands(cfg.head_dim)  # noqa: E731
    if to_gguf:
        specs = [GGUFSpec(k, src.entries[k].shape, int(gguf_tensor_type(k, src.entries[k].shape, quant)),
                          produce(k, torch.float32)) for k in order]
        if ROPE_KEY not in src.entries:
            specs.insert(0, GGUFSpec(ROPE_KEY, (cfg.head_dim // 8,), int(gguf_types.GGMLType.F32), rope))
    else:
        specs = [TensorSpec(k, dtype if is_block_linear(k) else torch.float32, src.entries[k].shape,
                            produce(k, dtype if is_block_linear(k) else torch.float32)) for k in order]
        if ROPE_KEY not in src.entries:
            specs.insert(0, TensorSpec(ROPE_KEY, torch.float32, (cfg.head_dim // 8,), rope))
    bar = progress_bar(sum(s.nbytes for s in specs), show_progress, "Converting DiT")
    try:
        if to_gguf:
            meta = {GGUF_META[k]: value for k, value in _file_metadata(v, cfg).items() if k in GGUF_META}
            write_gguf(dst, specs, arch=GGUF_ARCH, metadata=meta, on_bytes=bar.update)
        else:
            write_file(dst, specs, _file_metadata(v, cfg), on_bytes=bar.update)
    finally:
        for r in readers.values():
            r.close()
        bar.close()
    log.info("Converted %s -> %s (%s, variant %s: %s)", src.describe(), dst, quant or _dtype_name(dtype), v, reason)
    return dst


__all__ = [
    "CheckpointError",
    "VARIANTS",
    "GGUF_QUANTS",
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
