"""The DiT's third-party key layouts, declared, and how a file in one of them becomes the official fused layout.

The official checkpoint fuses each block linear of a layer: in a multi-modal layer the three experts' rows are
stacked (video, audio, text), and ``attention.linear_qkv`` holds each expert's ``[q | k | v | g]`` rows. Other tools
keep those pieces apart:

- **ComfyUI-native** (the ``comfy/ldm/magi`` port): ``<linear>.experts.{0,1,2}.weight`` in multi-modal layers and
  ``<linear>.linear.weight`` elsewhere, for ``linear_qkv``, ``linear_proj``, ``up_gate_proj`` and ``down_proj``;
- **Wan2GP** (``models/magi_human``): ``attention.linear_qkv`` split into ``linear_q`` / ``linear_k`` /
  ``linear_v`` / ``linear_g`` in every layer, and every expert linear of a multi-modal layer suffixed
  ``_video`` / ``_audio`` / ``_text`` (norms stay fused in both);
- **optimum-quanto int8** (Wan2GP's ``*_quanto_bf16_int8.safetensors``): a quantised linear ``m`` is
  ``m.weight._data`` (int8 ``[out, in]``) and ``m.weight._scale`` (``[out, 1]``), plus unused ``m.input_scale`` /
  ``m.output_scale``; combined with any of the name layouts.

A :class:`Layout` lists, per official linear, the modules whose rows make it (:class:`Split`, :class:`Piece`).
:func:`map_layout` detects the layout from the keys (never the file name), refuses files that mix two or lack a
piece, and replaces the pieces by one derived entry per official tensor (:func:`~.entry.concat_rows`; a lone piece
is renamed, so an fp8 one keeps its dtype and scale), so loaders, converters and estimators see official keys and
shapes. The LoRA key map reads the same declarations.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Optional

import torch

from ..errors import CheckpointError
from .entry import Entry, concat_rows, row_scaled
from .report import listing

log = logging.getLogger(__name__)

__all__ = ["MODALITIES", "EXPERT_LINEARS", "QKV_PARTS", "LAYER_RE", "Piece", "Split", "Layout", "OFFICIAL",
           "COMFY_NATIVE", "WAN2GP", "LAYOUTS", "QUANTO", "detect_layout", "map_layout", "merge_quanto", "piece_rows",
           "refuse_unscaled_int8"]

MODALITIES = ("video", "audio", "text")  # expert order in fused tensors
# The block linears of a layer, as magihuman.models.dit names them (the one list: loaders and LoRA read it).
EXPERT_LINEARS = ("attention.linear_qkv", "attention.linear_proj", "mlp.up_gate_proj", "mlp.down_proj")
QKV_PARTS = ("q", "k", "v", "g")  # the rows of one expert's linear_qkv, in order
QUANTO = "optimum-quanto int8"
LAYER_RE = re.compile(r"^block\.layers\.(\d+)\.")  # a layer's key; group 1: its index


@dataclass(frozen=True)
class Piece:
    """One module of a layout that holds some rows of an official fused linear."""

    module: str                # its name inside a layer, e.g. "attention.linear_q_video"
    expert: Optional[int]      # whose rows: 0 video, 1 audio, 2 text; None in a layer with one expert
    part: str = ""             # which rows of the expert: "q" | "k" | "v" | "g" of linear_qkv; "" all


@dataclass(frozen=True)
class Split:
    """An official linear (``target``) and the pieces a layout keeps it in, in row order."""

    target: str                        # e.g. "attention.linear_qkv"
    multi: tuple[Piece, ...]           # in a multi-modal layer
    single: tuple[Piece, ...]          # in the other layers
    optional: tuple[str, ...] = ()     # parts that may be absent altogether (no attention gating: no "g" rows)


@dataclass(frozen=True)
class Layout:
    name: str
    splits: tuple[Split, ...] = ()
    marker: Optional[str] = None       # a regex some key of this layout matches and no other layout's keys do

    def matches(self, key: str) -> bool:
        return self.marker is not None and re.search(self.marker, key) is not None


def _comfy_native() -> Layout:
    splits = tuple(Split(lin, tuple(Piece(f"{lin}.experts.{e}", e) for e in range(3)), (Piece(f"{lin}.linear", None),))
                   for lin in EXPERT_LINEARS)
    return Layout("ComfyUI-native", splits,
                  r"^block\.layers\.\d+\.(attention\.linear_(qkv|proj)|mlp\.(up_gate|down)_proj)\.(experts\.\d+|linear)"
                  r"\.weight$")


def _wan2gp() -> Layout:
    qkv = Split("attention.linear_qkv",
                tuple(Piece(f"attention.linear_{p}_{m}", e, p) for e, m in enumerate(MODALITIES) for p in QKV_PARTS),
                tuple(Piece(f"attention.linear_{p}", None, p) for p in QKV_PARTS), optional=("g",))
    rest = tuple(Split(lin, tuple(Piece(f"{lin}_{m}", e) for e, m in enumerate(MODALITIES)), (Piece(lin, None),))
                 for lin in EXPERT_LINEARS[1:])
    return Layout("Wan2GP", (qkv, *rest),
                  r"^block\.layers\.\d+\.(attention\.linear_[qkvg](_(video|audio|text))?|"
                  r"(attention\.linear_proj|mlp\.up_gate_proj|mlp\.down_proj)_(video|audio|text))\.weight$")


OFFICIAL = Layout("official", (), r"^block\.layers\.\d+\.attention\.linear_qkv\.weight$")
COMFY_NATIVE = _comfy_native()
WAN2GP = _wan2gp()
LAYOUTS = (OFFICIAL, COMFY_NATIVE, WAN2GP)


def piece_rows(piece: Piece, per_expert: int, qkv_parts: dict[str, tuple[int, int]]) -> tuple[int, int]:
    """(offset, length) of ``piece``'s rows in its official tensor: ``per_expert`` rows per expert, ``qkv_parts``:
    part -> (offset, length) inside one expert's ``linear_qkv`` rows."""
    start = 0 if piece.expert is None else piece.expert * per_expert
    if not piece.part:
        return start, per_expert
    offset, length = qkv_parts[piece.part]
    return start + offset, length


# ------------------------------------------------------------------ quanto


def merge_quanto(src) -> None:
    """Replace each quanto int8 weight's ``._data`` / ``._scale`` pair in ``src.entries`` by one derived entry under
    ``<m>.weight`` (read as ``data * scale``, see :func:`~.entry.row_scaled`); its activation scales are set aside.
    Refuses data without its scale (and the reverse), and quanto types other than int8, naming the file and key."""
    keys = set(src.entries)
    data = sorted(k for k in keys if k.endswith(".weight._data"))
    scales = {k for k in keys if k.endswith(".weight._scale")}
    if not data and not scales:
        return
    where = src.describe()
    other = sorted(k for k in keys if re.search(r"\.weight\._(shift|zeropoint|group_size)$", k))
    if other:
        raise CheckpointError(f"{where}: {other[0]!r} belongs to a quanto type with zero points or groups (int4/int2); "
                              "only quanto int8 weights (._data int8 + ._scale per row) can be read: use the bf16 or "
                              "int8 file")
    lone = sorted(k[: -len("._data")] + "._scale" for k in data if k[: -len("._data")] + "._scale" not in keys)
    if lone:
        raise CheckpointError(f"{where}: {len(lone)} quanto weight(s) have int8 data but no scale (first: "
                              f"{listing(lone, None, 3)} missing); without its per-row scales an int8 weight cannot "
                              "be dequantised. The file is incomplete: download it again")
    orphans = sorted(k for k in scales if k[: -len("._scale")] + "._data" not in keys)
    if orphans:
        raise CheckpointError(f"{where}: quanto scale(s) without data: {listing(orphans, None, 3)}; the file is "
                              "incomplete")
    for k in data:
        weight = k[: -len("._data")]
        module = weight[: -len(".weight")]
        try:
            e = row_scaled(weight, src.entries[k], src.entries[weight + "._scale"])
        except ValueError as err:
            raise CheckpointError(f"{where}: {err}") from None
        if weight in src.entries:
            raise CheckpointError(f"{where}: {weight!r} is both a plain tensor and quanto int8 data ({k!r}); the file "
                                  "mixes two conversions")
        del src.entries[k], src.entries[weight + "._scale"]
        src.entries[weight] = e
        for extra in (module + ".input_scale", module + ".output_scale"):
            if extra in src.entries:
                src.ignored.append(src.entries.pop(extra).name)
    src.quantization = f"{QUANTO} ({len(data)} weights, per-row scales; dequantised while loading)"


# ------------------------------------------------------------------ detection and mapping


def detect_layout(src, layouts: tuple[Layout, ...] = LAYOUTS) -> Optional[Layout]:
    """The layout whose marker keys ``src`` holds (None: none of them); two layouts in one file are refused."""
    found: dict[str, str] = {}
    for k in src.entries:
        for lay in layouts:
            if lay.name not in found and lay.matches(k):
                found[lay.name] = k
    if len(found) > 1:
        pairs = ", ".join(f"{lay.name} (e.g. {found[lay.name]!r})" for lay in layouts if lay.name in found)
        raise CheckpointError(f"{src.describe()} mixes two DiT layouts: {pairs}; a checkpoint must be in one layout. "
                              "Re-export it from one tool, or convert each part separately")
    return next((lay for lay in layouts if lay.name in found), None)


def map_layout(src, layout: Layout) -> None:
    """Rewrite ``src.entries`` (model keys of ``layout``) to official keys: the pieces of each fused linear become one
    entry reading their rows in order (one piece: that entry renamed, with its fp8 scale). Refuses a fused linear with
    some pieces missing, or kept both fused and split."""
    entries = src.entries
    merged: dict[str, Entry] = {}   # first piece's key -> the fused entry
    consumed: set[str] = set()
    layers = sorted({int(m.group(1)) for k in entries if (m := LAYER_RE.match(k))})
    where = src.describe()
    for i in layers:
        pre = f"block.layers.{i}."
        for split in layout.splits:
            target = f"{pre}{split.target}.weight"
            have = {name: [p for p in pieces if f"{pre}{p.module}.weight" in entries]
                    for name, pieces in (("multi", split.multi), ("single", split.single))}
            if have["multi"] and have["single"]:
                a, b = (f"{pre}{have[n][0].module}.weight" for n in ("multi", "single"))
                raise CheckpointError(f"{where}: layer {i} holds {split.target} both per expert ({a!r}) and as one "
                                      f"({b!r}); the file mixes two layouts")
            kind = "multi" if have["multi"] else "single" if have["single"] else None
            if kind is None:
                continue
            pieces = split.multi if kind == "multi" else split.single
            present_parts = {p.part for p in have[kind]}
            wanted = [p for p in pieces if p.part not in split.optional or p.part in present_parts]
            missing = [f"{pre}{p.module}.weight" for p in wanted if f"{pre}{p.module}.weight" not in entries]
            if missing:
                experts = sorted({MODALITIES[p.expert] for p in wanted if p.expert is not None
                                  and f"{pre}{p.module}.weight" in missing})
                what = f" (expert(s) {', '.join(experts)})" if experts else ""
                raise CheckpointError(f"{where}: {layout.name} layout, layer {i}: {split.target} is incomplete{what}: "
                                      f"missing {listing(missing, None, 4)}; the file lacks pieces of a fused weight "
                                      "(a partial download or export)")
            if len(wanted) == 1 and wanted[0].module == split.target:
                continue  # kept under its official name
            if target in entries:
                raise CheckpointError(f"{where}: layer {i} holds {target!r} and its pieces "
                                      f"({pre}{wanted[0].module}.weight, ...); the file mixes two layouts")
            names = [f"{pre}{p.module}.weight" for p in wanted]
            consumed.update(names)
            if len(names) == 1:  # one piece: the official tensor itself, renamed (fp8 keeps its dtype and scale)
                merged[names[0]] = entries[names[0]].renamed(target)
                if names[0] in src.scale_of:
                    src.scale_of[target] = src.scale_of.pop(names[0])
                continue
            parts = tuple(entries[n] for n in names)
            scaled = any(leaf.key in src.scale_of for p in parts for leaf in p.leaves)
            try:
                merged[names[0]] = concat_rows(target, parts, scaled=scaled)
            except ValueError as err:
                raise CheckpointError(f"{where}: {err}") from None
    out: dict[str, Entry] = {}
    for k, e in entries.items():  # each fused tensor where its first piece was
        if k in merged:
            out[merged[k].key] = merged[k]
        elif k not in consumed:
            out[k] = e
    src.entries = out
    src.layout = layout.name


def refuse_unscaled_int8(src) -> None:
    """Refuse plain int8 / uint8 tensors (not GGUF blocks, not quanto data merged with its scale): values a loader
    cannot dequantise, as the file's scale layout is not one it knows. Run after :func:`merge_quanto` and before
    :func:`map_layout`, so every piece of a fused weight is checked as the file holds it."""
    raw = [k for k, e in src.entries.items() if e.dtype in (torch.int8, torch.uint8) and not e.quantized]
    if raw:
        raise CheckpointError(f"{src.describe()}: {len(raw)} tensor(s) are int8 with no scale layout this loader "
                              f"knows (first: {listing(raw, None, 3)}); int8 values without their scales are not "
                              "weights.")
