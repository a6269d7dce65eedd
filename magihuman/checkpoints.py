"""Finding, checking and streaming DiT checkpoints into a model, tensor by tensor.

The released folders (``distill/``, ``540p_sr/``, ``1080p_sr/``) are fp32 on disk (~61 GB) and the
model runs with bf16 block linears (~31 GB). :func:`load_dit` builds the model on the meta device,
then allocates each parameter in its final dtype and fills it from the file in small chunks, so the
host never holds the fp32 state dict and the model together (peak RAM ~ model size + 64 MB).

Accepted files:
  * a folder with ``model.safetensors.index.json`` + shards, each shard either ``<shard>`` or
    ``<shard>.zst`` (zstd stream, as the official loader accepts), or a diffusers ``transformer/`` folder
    (``diffusion_pytorch_model.safetensors.index.json``: FastVideo's MagiHuman-Diffusers; its pipeline folder
    with ``model_index.json`` too);
  * a folder with one ``model.safetensors`` (or one ``*.safetensors[.zst]``);
  * a single ``.safetensors`` / ``.safetensors.zst`` / ``.gguf`` file, or a weights-only torch pickle.
Keys may carry one wrapper prefix (``model.diffusion_model.``, ``diffusion_model.``, ``model.``,
``module.``), stripped when every key has it. Key layouts: the official fused names, and those of other tools
(ComfyUI-native per-expert linears, Wan2GP's split q/k/v/g and per-modality linears, optimum-quanto int8 with
per-row scales), detected from the keys and mapped onto the official ones by :mod:`magihuman.weights.layouts`.
"""

from __future__ import annotations

import json
import logging
import math
import re
import zlib
from collections import Counter
from pathlib import Path
from typing import Callable, Optional

import torch
from tqdm.auto import tqdm

from .errors import CheckpointError
from .models.dit import MagiHumanDiT, weight_table
from .models.dit_config import DiTConfig, sr_1080p_local_attn_layers, swiglu_intermediate_size
from .quant import gguf as gguf_types
from .rope import default_rope_bands
from .storage import Storage, StorageLike, requested_storage
from .weights import (INDEX_NAME, KeyMap, WeightSource, check_keys, check_materialized, load_into, mismatch_report,
                      open_source)
from .weights.compact import compact_handler, main_storage, storage_counts
from .weights.fp8 import COMFY_FP8_MARKER
from .weights.gguf_file import ARCH_KEY, GGUF_SUFFIX, GGUFSpec, gguf_storage, write_gguf
from .weights.layouts import (EXPERT_LINEARS, LAYER_RE, QUANTO, detect_layout, map_layout, merge_quanto,
                              refuse_unscaled_int8)
from .weights.source import index_in
from .weights.safetensors_io import TensorSpec, write_file

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
# What a DiT file in a format nobody documents is likely to be (INT8 .pt repacks, e.g. RunningHub's).
FOREIGN_INT8 = ("This looks like an INT8 repack whose layout is not published (e.g. RunningHub's "
                "ComfyUI-RH-daVinci-MagiHuman .pt files): convert it to bf16 with the tools of whoever made it, or use "
                "the official release, a Wan2GP (bf16 or quanto int8) or ComfyUI file, or a GGUF from "
                "`python -m magihuman convert`")
DIFFUSERS_DITS = ("transformer", "sr_transformer")  # the DiT folders of a diffusers pipeline folder
# Architecture fields that shapes determine (local_attn_layers does not show in the weights).
ARCH_FIELDS = ("num_layers", "hidden_size", "head_dim", "num_query_groups", "video_in_channels",
               "audio_in_channels", "text_in_channels", "mm_layers", "gelu7_layers", "post_norm_layers",
               "enable_attn_gating")

# ------------------------------------------------------------------ the official key table


def official_key_shapes(config: DiTConfig) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of the official fused layout with its shape, in module order (from the model built on
    the meta device: :func:`magihuman.models.dit.weight_table`)."""
    return {k: spec.shape for k, spec in weight_table(config).items()}


_BLOCK_LINEAR_WEIGHTS = frozenset(f"{lin}.weight" for lin in EXPERT_LINEARS)  # inside a layer


def is_block_linear(key: str) -> bool:
    """Whether a state-dict key is a block linear's weight (stored in the requested storage; the rest stays fp32)."""
    parts = key.split(".", 3)
    return len(parts) == 4 and parts[:2] == ["block", "layers"] and parts[3] in _BLOCK_LINEAR_WEIGHTS


# ------------------------------------------------------------------ finding the files


def _diffusers_dit(path: Path) -> Path:
    """A diffusers pipeline folder (``model_index.json``) -> its one DiT folder; other paths as they are."""
    if not (path.is_dir() and (path / "model_index.json").is_file() and index_in(path) is None):
        return path
    found = [path / c for c in DIFFUSERS_DITS if (path / c).is_dir()]
    if len(found) == 1:
        log.info("%s is a diffusers pipeline folder: loading its DiT from %s", path, found[0])
        return found[0]
    if len(found) > 1:
        raise CheckpointError(f"{path} is a diffusers pipeline with two DiTs: give {found[0]} (the base-stage DiT) or "
                              f"{found[1]} (the super-resolution DiT)")
    return path


def describe_contents(src: WeightSource) -> str:
    """'a torch pickle holding 120 tensors (int8: 80, bf16: 40) named like a, b, c': what a file is, for errors."""
    kind = {"torch": "torch pickle", "gguf": "GGUF file"}.get(src.format, "safetensors file")
    leaves = [leaf for e in src.entries.values() for leaf in e.leaves]
    by = Counter(_dtype_name(e.dtype) if not e.quantized else gguf_types.GGMLType(e.qtype).name for e in leaves)
    names = [e.name for e in leaves][:3] or src.ignored[:3]
    return (f"a {kind} holding {len(leaves) + len(src.ignored)} tensors ("
            + ", ".join(f"{d}: {n}" for d, n in by.most_common()) + f") named like {', '.join(names)}")


def open_checkpoint(path: str | Path) -> WeightSource:
    """Locate the files of a DiT checkpoint, read their headers and map their layout (no tensor data read).

    Accepts an official folder (index + shards, ``.zst`` shards too), a diffusers ``transformer/`` folder, a folder
    with one weights file, or a single file (``.safetensors``, ``.safetensors.zst``, ``.gguf``, a weights-only torch
    pickle); keys may carry one wrapper prefix (:data:`KEY_PREFIXES`); fp8 scale tensors are set apart; quanto int8
    pairs and third-party layouts become official keys (:mod:`magihuman.weights.layouts`, ``src.layout`` names
    the layout found). A GGUF's ``magihuman.variant`` / ``magihuman.config`` values count as the safetensors
    metadata of the same meaning. Int8 tensors of an unknown scale scheme are refused.
    """
    src = open_source(_diffusers_dit(Path(path).expanduser()), what=WHAT, keymap=DIT_KEYMAP, pickle_hint=FOREIGN_INT8)
    if src.format == "gguf":
        for ours, key in GGUF_META.items():
            if key in src.metadata:
                src.metadata.setdefault(ours, src.metadata[key])
    merge_quanto(src)
    try:
        refuse_unscaled_int8(src)
    except CheckpointError as e:
        raise CheckpointError(f"{e} The file is {describe_contents(src)}. {FOREIGN_INT8}") from None
    layout = detect_layout(src)
    if layout is not None:
        map_layout(src, layout)
    return src


def layout_summary(src: WeightSource) -> str:
    """'ComfyUI-native, bf16' / 'Wan2GP, optimum-quanto int8 -> bf16': the layout and what the block linears hold."""
    held = file_storage(src).name
    if src.quantization and src.quantization.startswith(QUANTO):  # dequantised while loading
        held = f"{QUANTO} -> {held}"
    elif src.quantization:
        held = f"{held}, {src.quantization}"
    return f"{src.layout or 'unknown'}, {held}"


def file_storage(src: WeightSource) -> Storage:
    """The storage holding most bytes of the file's block linears (a GGUF type, fp8, or a plain dtype)."""
    return main_storage(src, [k for k in src.entries if is_block_linear(k)])


# ------------------------------------------------------------------ key checks and inference


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
    layer_ids = sorted({int(m.group(1)) for k in shapes if (m := LAYER_RE.match(k))})
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
        if src.path.name in DIFFUSERS_DITS:  # <variant>/transformer: the pipeline folder names the variant, except
            parent = src.path.parent.name    # that an SR pipeline's transformer/ is its base-stage DiT
            if src.path.name == "sr_transformer" or normalize_variant(parent) not in ("sr_540p", "sr_1080p"):
                names.append(parent)
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
    dt = file_storage(src).dtype  # what the release was saved in: a plain dtype or fp8 (GGUF files returned above)
    if dt.is_floating_point and dt.itemsize == 2:  # 16-bit weights
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
    try:
        cfg, config_reason = resolve_config(src, v, config)
    except CheckpointError as e:
        if src.layout is not None or src.format != "torch":
            raise
        raise CheckpointError(f"{e}\n  The file is {describe_contents(src)}. {FOREIGN_INT8}") from None
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
            "layout": src.layout, "source_dtype": file_storage(src).name, "quantization": src.quantization,
            "coords": _coords(v), "config": cfg.to_dict(), "bytes": src.total_bytes,
            "files": [str(f) for f in src.files]}


# ------------------------------------------------------------------ loading


def progress_bar(total: int, show: bool, desc: str):
    """A byte-counting tqdm bar (hidden when ``show`` is False)."""
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=not show, leave=False)


def _dtype_name(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


def load_dit(
    path: str | Path,
    *,
    storage: StorageLike = None,
    dtype=None,
    device: str | torch.device = "cpu",
    operations=torch.nn,
    variant: Optional[str] = None,
    config: Optional[DiTConfig] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    show_progress: bool = True,
    chunk_bytes: Optional[int] = None,
    gguf: Optional[str] = None,
):
    """Build a :class:`MagiHumanDiT` from a checkpoint, streaming and converting tensor by tensor.

    ``storage`` (a :class:`~magihuman.storage.Storage` or its name): how the block linears are kept.
    ``"file"`` (the default) keeps what the file holds (GGUF blocks, fp8 + scale) and plainly stored tensors in
    bf16; ``"bf16"`` / ``"fp16"`` / ``"fp32"`` decode everything to that dtype; ``"fp8"`` keeps e4m3 + one scale
    per tensor (fp8 files as they are, others quantised amax / 448); a GGUF type (``"Q8_0"``, ``"Q4_K"``, ...)
    quantises every block linear to it while loading (a GGUF file of that type is kept as it is). Norms, adapter,
    final heads and RoPE bands stay fp32 as the model defines them. ``dtype=`` / ``gguf=`` are the older spelling
    (see :func:`magihuman.storage.requested_storage`). The variant and config are inferred (override with
    ``variant=`` / ``config=``); the returned model carries ``model.variant`` and ``model.load_info`` saying what was
    inferred and why, and ``model.compute_device`` = ``device``. ``progress(done_bytes, total_bytes)`` is called as
    data arrives. A file without ``adapter.rope.bands`` gets the formula value ``1 / 10000**(i / (head_dim//8))``.
    """
    want = requested_storage(storage, dtype=dtype, gguf=gguf)
    src, variant, variant_reason, cfg, config_reason = _open_checked(path, variant, config)
    where = src.describe()
    counts: Counter = Counter()
    model = MagiHumanDiT(cfg, operations=operations, storage=want, device="meta")
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

    try:
        load_into(model, src, device=device, handler=compact_handler(src, want, device, counts), on_bytes=on_bytes,
                  chunk_bytes=chunk_bytes)
    finally:
        bar.close()

    notes = []
    if src.quantization and src.scale_of and not any(as_is for (_, as_is) in counts):
        notes.append(f"{src.quantization}: {len(src.scale_of)} weight(s) decoded while loading")
    elif src.quantization and not src.scale_of:
        notes.append(src.quantization)  # quanto int8: always dequantised while loading
    if ROPE_KEY not in src.entries:
        model.reset_rope_bands_(device)
        notes.append(f"{ROPE_KEY} absent from the file: filled with 1/10000**(i/{cfg.head_dim // 8})")
    check_materialized(model, where)
    model.eval()
    model.compute_device = device

    source = file_storage(src)
    kept = storage_counts(counts)
    model.variant = variant
    model.load_info = {
        "variant": variant,
        "reason": variant_reason,
        "layout": src.layout,
        "config_reason": config_reason,
        "source": where,
        "source_dtype": source.name,
        "storage": want.spec,
        "dtype": max(counts, key=counts.get)[0] if counts else want.name,  # what most block linears are kept in
        "kept": kept,
        "coords": _coords(variant),
        "quantization": src.quantization,
        "config": cfg.to_dict(),
        "bytes_read": done,
        "notes": notes,
    }
    log.info("Loaded MagiHuman DiT from %s: layout: %s -> block linears %s; variant %s (%s); %d layers, hidden %d; "
             "%s%s", where, layout_summary(src), kept, variant, variant_reason, cfg.num_layers, cfg.hidden_size,
             config_reason, ("; " + "; ".join(notes)) if notes else "")
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
    low = dtype.is_floating_point and dtype.itemsize == 2  # 16-bit block linears: the rest stays fp32

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
                variant: Optional[str] = None, show_progress: bool = True, quant: StorageLike = None) -> Path:
    """Re-save a DiT checkpoint as ONE file, streamed (one tensor in memory at a time), with the variant and
    config in its metadata:

    - ``.safetensors``: block linears in ``dtype`` (rest fp32);
    - ``.gguf``: every block linear in ``quant`` (default Q8_0; :func:`magihuman.storage.convert_choices`), rows
      that are not whole blocks zero-padded to whole blocks (the swiglu ``down_proj`` of the release is 13652
      wide); norms, biases, embedders, heads and RoPE bands F32 (< 0.5 % of the parameters, fp32 in the model);
      ``general.architecture = "magihuman"``.
    """
    src, v, reason, cfg, _ = _open_checked(src_path, variant)
    dst = Path(dst)
    to_gguf = dst.name.endswith(GGUF_SUFFIX)
    if not (to_gguf or dst.name.endswith(".safetensors")):
        raise CheckpointError(f"convert_dit writes a .safetensors or .gguf file; got {dst}")
    if quant is not None and not to_gguf:
        raise CheckpointError(f"quant={quant!r} needs a .gguf output, got {dst}")
    st = gguf_storage(quant or "Q8_0", "block linears") if to_gguf else None
    order = sorted(src.entries, key=lambda k: (src.files.index(src.entries[k].file), src.entries[k].offset))
    f32 = int(gguf_types.GGMLType.F32)
    rope = lambda: default_rope_bands(cfg.head_dim)  # noqa: E731
    with src.reading() as read_one:  # one open reader per shard, tensors pulled in file order
        def produce(key: str, dt: torch.dtype):
            return lambda: read_one(key, dt)

        if to_gguf:
            specs = [GGUFSpec(k, src.entries[k].shape, int(st.ggml) if is_block_linear(k) else f32,
                              produce(k, torch.float32)) for k in order]
            if ROPE_KEY not in src.entries:
                specs.insert(0, GGUFSpec(ROPE_KEY, (cfg.head_dim // 8,), f32, rope))
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
            bar.close()
    log.info("Converted %s (layout: %s) -> %s (%s, variant %s: %s)", src.describe(), layout_summary(src), dst,
             st.name if st else _dtype_name(dtype), v, reason)
    return dst


__all__ = [
    "CheckpointError",
    "VARIANTS",
    "convert_dit",
    "file_storage",
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
