"""LoRA for the MagiHuman DiT: read a LoRA file, map its keys onto the official fused layout, apply it.

Formats (what LoRA trainers and ComfyUI write):
- PEFT / diffusers: ``<module>.lora_A.weight`` [r, in] + ``<module>.lora_B.weight`` [out, r] (+ ``<module>.alpha``);
- kohya: ``<module>.lora_down.weight`` + ``<module>.lora_up.weight`` + ``<module>.alpha``; module names either
  dotted or in kohya's underscore form (``lora_unet_block_layers_0_attention_linear_qkv``);
- full-weight deltas: ``<module>.diff`` (weight) and ``<module>.diff_b`` (bias), for any parameter;
- DoRA: a LoRA pair with ``<module>.dora_scale``, the magnitude per output row (``[out, 1]``) or per input column
  (``[1, in]``): ``W' = m * (W + dW) / ||W + dW||``, the norm over the other axis of the module's weight (its rows of
  a fused tensor), ``dW = alpha / rank * up @ down``; strength ``s`` blends ``W + s * (W' - W)`` as ComfyUI does;
- wrapper prefixes ``diffusion_model.``, ``model.diffusion_model.``, ``transformer.`` (diffusers / FastVideo),
  ``base_model.model.``.
Scale: ``strength * alpha / rank`` (``strength`` alone when the file has no alpha), ComfyUI's convention.

Module names are the official ones (``block.layers.{i}.attention.linear_qkv``, ``...mlp.up_gate_proj``, ...),
those of the DiT layouts of other tools (:mod:`magihuman.weights.layouts`: ComfyUI-native
``<linear>.experts.{0,1,2}`` / ``<linear>.linear``, Wan2GP ``attention.linear_{q,k,v,g}[_video|_audio|_text]`` and
``<linear>_{video,audio,text}``), each the rows of the fused weight it names, and these parts:
- ``<attention>.linear_q`` / ``linear_k`` / ``linear_v`` / ``linear_gate``: the rows of that projection inside
  the fused ``linear_qkv`` ([q | k | v | gate] per expert);
- ``<module>.video`` / ``.audio`` / ``.text`` (also after ``linear_q`` etc.): the rows of that modality's expert
  in a multi-modal layer; a LoRA on an expert module without a modality whose output width is ONE expert's
  applies to every expert (musubi-tuner's MagiHuman LoRAs: one LoRA shared by the three experts).

Engine use: :func:`apply_lora` attaches the deltas to the model; block linears take them on the fly in the one
weight path (:class:`magihuman.storage.BlockLinear`: after decoding plain / fp8 / GGUF storage), the small
tensors (norms, embedders, heads) are patched in place with a backup. :func:`remove_lora` restores the exact
weights. ComfyUI (``nodes/``) turns the same parsed patches into ModelPatcher weight patches.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from .errors import CheckpointError
from .models.dit import MagiHumanDiT
from .storage import BlockLinear, weight_table
from .weights import open_source
from .weights.layouts import EXPERT_LINEARS, LAYOUTS, MODALITIES, QKV_PARTS, piece_rows
from .weights.report import listing

log = logging.getLogger(__name__)

__all__ = ["LoraError", "LoraPatch", "LoraFile", "lora_targets", "read_lora", "parse_lora", "apply_lora",
           "remove_lora", "META_BASE", "META_TARGET", "MODALITIES"]

QKV_LORA_NAMES = ("linear_q", "linear_k", "linear_v", "linear_gate")  # LoRA module names of QKV_PARTS' rows
META_BASE, META_TARGET = "magihuman_lora_base", "magihuman_lora_target"  # variants (written by extract-lora)
WRAPPERS = ("model.diffusion_model.", "diffusion_model.", "base_model.model.", "transformer.", "model.")
PAIRS = ((".lora_A.weight", ".lora_B.weight"), (".lora_down.weight", ".lora_up.weight"))  # (down, up)
SINGLE = (".alpha", ".diff", ".diff_b", ".dora_scale")


class LoraError(CheckpointError):
    """A LoRA file that cannot be applied to this model (the message says which keys and why)."""


@dataclass(frozen=True)
class Target:
    """Where a LoRA module name lands: a parameter of the model and the rows of it (None: all rows)."""

    param: str                                  # state-dict key, e.g. block.layers.0.attention.linear_qkv.weight
    rows: tuple[tuple[int, int], ...] = ()      # (offset, length) row ranges; () = the whole tensor
    shape: tuple[int, ...] = ()                 # the shape a delta for ONE row range must have


@dataclass(eq=False)
class LoraPatch:
    """One delta on one parameter: ``param[rows] += scale * up @ down`` (lora) or ``+= scale * diff``; with
    ``dora_scale`` the rows are replaced by their DoRA weight (:meth:`apply`)."""

    param: str
    rows: tuple[tuple[int, int], ...]
    kind: str                                   # "lora" | "diff"
    up: Optional[torch.Tensor] = None           # [out, r]
    down: Optional[torch.Tensor] = None         # [r, in]
    alpha: Optional[float] = None
    diff: Optional[torch.Tensor] = None
    dora_scale: Optional[torch.Tensor] = None   # DoRA magnitude: [rows, 1] (per output row) or [1, in] (per column)
    source: str = ""                            # the LoRA module name it came from
    _device_factors: dict = field(default_factory=dict, repr=False)  # device -> fp32 factors (see delta)

    @property
    def scale(self) -> float:
        """alpha / rank, or 1 without alpha (ComfyUI's LoRAAdapter convention)."""
        return 1.0 if self.alpha is None or self.kind != "lora" else self.alpha / self.down.shape[0]

    def delta(self, strength: float, dtype: torch.dtype, device) -> torch.Tensor:
        """The delta of one row range, ``(strength * scale) * up @ down`` computed in fp32, then ``dtype``. The
        factors are copied to a device once and kept there (no host copy per forward)."""
        factors = self._on(torch.device(device))
        d = torch.mm(factors[0], factors[1]) if self.kind == "lora" else factors[0]
        return ((strength * self.scale) * d).to(dtype)

    def apply(self, w: torch.Tensor, strength: float, fn=None) -> torch.Tensor:
        """``w`` (one row range of the parameter) with this patch, in place: ``w += delta``, or for DoRA
        ``w = w + strength * (m * (w + dW) / (||w + dW|| + eps) - w)`` computed in fp32 (``eps``: fp32's, as ComfyUI
        adds); ``fn`` maps the fp32 delta first (ComfyUI's weight function)."""
        if self.dora_scale is None:
            d = self.delta(strength, torch.float32 if fn is not None else w.dtype, w.device)
            return w.add_((fn(d) if fn is not None else d).to(w.dtype))
        d = self.delta(1.0, torch.float32, w.device)
        w0 = w.to(torch.float32)
        calc = w0 + (fn(d) if fn is not None else d)
        m = self._on(w.device)[-1]  # fp32 magnitude
        axis = 1 if m.shape[0] == calc.shape[0] and m.shape[-1] == 1 else 0  # [rows, 1]: norm of each row
        norm = calc.norm(dim=axis, keepdim=True) + torch.finfo(torch.float32).eps
        new = calc * (m / norm)
        return w.copy_(new if strength == 1.0 else w0 + strength * (new - w0))

    def _on(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        cached = self._device_factors.get(device)
        if cached is None:
            tensors = (self.up, self.down) if self.kind == "lora" else (self.diff,)
            if self.dora_scale is not None:
                tensors += (self.dora_scale,)
            cached = self._device_factors[device] = tuple(t.to(device=device, dtype=torch.float32) for t in tensors)
        return cached


@dataclass(eq=False)
class LoraFile:
    path: Path
    patches: list[LoraPatch]
    metadata: dict[str, str] = field(default_factory=dict)
    matched: int = 0                            # LoRA modules mapped onto the model


# ------------------------------------------------------------------ the key map


def lora_targets(model: MagiHumanDiT) -> dict[str, Target]:
    """Every module name a LoRA may use for ``model`` -> its :class:`Target` (see the module docstring)."""
    cfg = model.config
    out: dict[str, Target] = {}
    params = dict(model.named_parameters())
    for name, spec in weight_table(model).items():  # logical shapes (compact storage holds other shapes)
        if name not in params:
            continue
        mod_name, _, attr = name.rpartition(".")
        if attr == "weight":
            out[mod_name] = Target(name, (), spec.shape)
        elif attr == "bias":
            out[mod_name + "\0bias"] = Target(name, (), spec.shape)
    hq, hkv, d = cfg.num_heads_q, cfg.num_heads_kv, cfg.head_dim
    # part -> (offset, length) of its rows inside one expert's linear_qkv rows [q | k | v | gate]
    qkv_parts = {"q": (0, hq * d), "k": (hq * d, hkv * d), "v": ((hq + hkv) * d, hkv * d),
                 "g": ((hq + 2 * hkv) * d, hq if cfg.enable_attn_gating else 0)}
    for i in range(cfg.num_layers):
        num = 3 if i in cfg.mm_layers else 1
        for lin in EXPERT_LINEARS:
            full = f"block.layers.{i}.{lin}"
            rows, cols = out[full].shape
            per = rows // num
            if num > 1:
                out[full + "\0each"] = Target(full + ".weight", tuple((e * per, per) for e in range(num)), (per, cols))
                for e, modality in enumerate(MODALITIES):
                    out[f"{full}.{modality}"] = Target(full + ".weight", ((e * per, per),), (per, cols))
        qkv = f"block.layers.{i}.attention.linear_qkv"
        rows, cols = out[qkv].shape
        per = rows // num
        for part, lora_name in zip(QKV_PARTS, QKV_LORA_NAMES):
            offset, length = qkv_parts[part]
            if not length:
                continue
            name = f"block.layers.{i}.attention.{lora_name}"
            out[name] = Target(qkv + ".weight", tuple((e * per + offset, length) for e in range(num)), (length, cols))
            if num > 1:
                for e, modality in enumerate(MODALITIES):
                    out[f"{name}.{modality}"] = Target(qkv + ".weight", ((e * per + offset, length),), (length, cols))
        for layout in LAYOUTS:  # the module names of the DiT layouts of other tools
            for split in layout.splits:
                full = f"block.layers.{i}.{split.target}"
                rows, cols = out[full].shape
                for piece in (split.multi if num > 1 else split.single):
                    offset, length = piece_rows(piece, rows // num, qkv_parts)
                    name = f"block.layers.{i}.{piece.module}"
                    if length and name not in out:
                        out[name] = Target(full + ".weight", ((offset, length),), (length, cols))
    return out


def _kohya_names(targets: dict[str, Target]) -> dict[str, str]:
    return {"lora_unet_" + name.replace(".", "_"): name for name in targets if "\0" not in name}


def _strip_wrapper(keys: list[str]) -> dict[str, str]:
    """file key -> key without one common wrapper prefix (per key: LoRA files mix module families)."""
    out = {}
    for k in keys:
        for p in WRAPPERS:
            if k.startswith(p):
                k2 = k[len(p):]
                break
        else:
            k2 = k
        out[k] = k2
    return out


# ------------------------------------------------------------------ reading and parsing


def read_lora(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of a LoRA file (safetensors, or a weights-only torch pickle) and its metadata."""
    try:
        src = open_source(path, what="a LoRA", many_files=True)
        return src.read(), dict(src.metadata)
    except CheckpointError as e:
        raise LoraError(str(e)) from None


def _check_finite(name: str, t: torch.Tensor, where: str) -> None:
    if t.is_floating_point() and not torch.isfinite(t).all():
        raise LoraError(f"{where}: tensor {name!r} holds NaN/Inf values; the LoRA file is corrupt (re-download or "
                        "re-train it)")


def parse_lora(tensors: dict[str, torch.Tensor], model: MagiHumanDiT,
               where: str = "LoRA") -> tuple[list[LoraPatch], int]:
    """Map a LoRA state dict onto ``model``: (patches, number of LoRA modules matched). Refuses, naming keys,
    anything that does not fit: unknown module names, rank or shape mismatches, NaN/Inf."""
    targets = lora_targets(model)
    kohya = _kohya_names(targets)
    stripped = _strip_wrapper(list(tensors))
    groups: dict[str, dict[str, str]] = {}  # module name -> role -> file key
    unknown = []
    for file_key, key in stripped.items():
        for suffix in [s for pair in PAIRS for s in pair] + list(SINGLE):
            if key.endswith(suffix):
                module = key[: -len(suffix)]
                module = kohya.get(module, module)
                groups.setdefault(module, {})[suffix] = file_key
                break
        else:
            unknown.append(file_key)
    patches: list[LoraPatch] = []
    matched = 0
    unmatched = []
    for module, roles in groups.items():
        pair = next(((d, u) for d, u in PAIRS if d in roles or u in roles), None)
        if pair is None and ".diff" not in roles and ".diff_b" not in roles:
            if ".dora_scale" in roles:
                raise LoraError(f"{where}: {roles['.dora_scale']!r} is a DoRA magnitude without its LoRA pair "
                                f"(lora_A/lora_B or lora_down/lora_up of {module!r}); the LoRA file is incomplete")
            unknown.extend(roles.values())  # an alpha alone
            continue
        if pair is not None:
            down_key, up_key = roles.get(pair[0]), roles.get(pair[1])
            if down_key is None or up_key is None:
                raise LoraError(f"{where}: module {module!r} has {'no up' if up_key is None else 'no down'} matrix "
                                f"(found only {down_key or up_key!r}); the LoRA file is incomplete")
            down, up = tensors[down_key], tensors[up_key]
            if down.dim() != 2 or up.dim() != 2 or down.shape[0] != up.shape[1]:
                raise LoraError(f"{where}: module {module!r}: down {list(down.shape)} and up {list(up.shape)} do not "
                                "form a low-rank pair (rank mismatch between A/down and B/up)")
            _check_finite(down_key, down, where)
            _check_finite(up_key, up, where)
            alpha = None
            if ".alpha" in roles:
                alpha = float(tensors[roles[".alpha"]].float().reshape(-1)[0])
                if not math.isfinite(alpha):
                    raise LoraError(f"{where}: {roles['.alpha']!r} is not a finite number")
            target = targets.get(module)
            each = targets.get(module + "\0each")  # an expert module: one expert's width means every expert
            if each is not None and up.shape[0] == each.shape[0]:
                target = each
            if target is None:
                unmatched.append(module)
                continue
            if len(target.shape) != 2 or (up.shape[0], down.shape[1]) != tuple(target.shape):
                raise LoraError(f"{where}: module {module!r}: the LoRA makes a [{up.shape[0]}, {down.shape[1]}] delta "
                                f"but its target {target.param} takes {list(target.shape)} per row range; the LoRA is "
                                "for another model size or layout")
            dora = _dora_scale(tensors, roles, module, target, where)
            patches.append(LoraPatch(target.param, target.rows, "lora", up=up, down=down, alpha=alpha,
                                     dora_scale=dora, source=module))
            matched += 1
        for suffix, attr in ((".diff", "weight"), (".diff_b", "bias")):
            if suffix not in roles:
                continue
            diff = tensors[roles[suffix]]
            _check_finite(roles[suffix], diff, where)
            target = targets.get(module if attr == "weight" else module + "\0bias")
            if target is None:
                unmatched.append(module + suffix)
                continue
            if tuple(diff.shape) != target.shape:
                raise LoraError(f"{where}: {roles[suffix]!r} is {list(diff.shape)} but {target.param} is "
                                f"{list(target.shape)}; the LoRA is for another model size")
            patches.append(LoraPatch(target.param, (), "diff", diff=diff, source=module + suffix))
            matched += 1
    if unmatched or unknown:
        names = sorted(set(unmatched)) + sorted(unknown)
        raise LoraError(f"{where}: {len(names)} LoRA key(s) match no part of this MagiHuman DiT ({matched} matched): "
                        f"{listing(names, None, 6)}. Is it a LoRA for another model (Wan, LTX, SDXL, ...)? MagiHuman "
                        "LoRAs name the official modules, e.g. 'block.layers.0.attention.linear_qkv.lora_A.weight'")
    if not matched:
        raise LoraError(f"{where}: no LoRA tensors found (expected lora_A/lora_B, lora_down/lora_up or diff tensors)")
    return patches, matched


def _dora_scale(tensors: dict[str, torch.Tensor], roles: dict[str, str], module: str, target: Target,
                where: str) -> Optional[torch.Tensor]:
    """A module's DoRA magnitude as ``[rows, 1]`` (per output row of one row range; ``[rows]`` taken as that) or
    ``[1, in]`` (per input column), or None without one; other shapes are refused."""
    key = roles.get(".dora_scale")
    if key is None:
        return None
    m = tensors[key]
    _check_finite(key, m, where)
    rows, cols = target.shape
    if tuple(m.shape) in ((rows,), (rows, 1)):
        return m.reshape(rows, 1)
    if tuple(m.shape) == (1, cols):
        return m
    raise LoraError(f"{where}: DoRA magnitude {key!r} is {list(m.shape)}; for {module!r} ({target.param}, "
                    f"{rows} rows x {cols} columns per row range) it must be [{rows}, 1] (per output row), [{rows}] "
                    f"or [1, {cols}] (per input column)")


def load_lora(path: str | Path, model: MagiHumanDiT) -> LoraFile:
    """Read and map a LoRA file for ``model``; warns when its metadata says it was made for another variant."""
    path = Path(path)
    tensors, metadata = read_lora(path)
    patches, matched = parse_lora(tensors, model, str(path))
    variant = getattr(model, "variant", None)
    base = metadata.get(META_BASE)
    if variant is not None and base and base != variant:
        log.warning("%s was extracted against the %s DiT (%s -> %s) but is applied to a %s DiT; the result is "
                    "unlikely to be what its maker intended", path, base, base, metadata.get(META_TARGET, "?"),
                    variant)
    return LoraFile(path, patches, metadata, matched)


def variant_with_loras(variant: Optional[str], loras) -> Optional[str]:
    """The variant a DiT of ``variant`` becomes with ``loras`` ((LoraFile, strength) pairs, in order): the target
    variant of the last non-zero LoRA made by extract-lora from this variant (e.g. base + a base -> distill LoRA
    samples as the distilled model); ``variant`` itself otherwise."""
    out = variant
    for lora, strength in loras:
        target, made_from = lora.metadata.get(META_TARGET), lora.metadata.get(META_BASE)
        if target and float(strength) != 0.0 and (made_from is None or made_from == variant):
            out = target
    return out


# ------------------------------------------------------------------ engine application


@dataclass(eq=False)
class LoraHandle:
    """What :func:`apply_lora` attached (for :func:`remove_lora`)."""

    file: LoraFile
    strength: float
    callables: list[tuple[torch.nn.Module, object]] = field(default_factory=list)
    backups: dict[str, torch.Tensor] = field(default_factory=dict)


def _owner(model: torch.nn.Module, param: str) -> tuple[torch.nn.Module, str]:
    mod_name, _, attr = param.rpartition(".")
    return model.get_submodule(mod_name), attr


def _row_patch(patches: list[LoraPatch], strength: float):
    """A weight-path patch: adds every delta of ``patches`` (one parameter) to the decoded weight."""

    def patch(w: torch.Tensor) -> torch.Tensor:
        w = w.clone()
        for p in patches:  # in order: a DoRA patch takes the weight the ones before it made
            for offset, length in p.rows or ((0, w.shape[0]),):
                p.apply(w.narrow(0, offset, length), strength)
        return w

    return patch


def apply_lora(model: MagiHumanDiT, path: str | Path, strength: float = 1.0) -> LoraHandle:
    """Apply the LoRA file ``path`` to ``model`` with ``strength`` (several LoRAs stack; remove with
    :func:`remove_lora`). Block linears take the deltas in the one weight path after decoding (plain, fp8 or
    GGUF storage, unchanged in memory); other tensors are patched in place with a backup of the exact values."""
    if not math.isfinite(float(strength)):
        raise LoraError(f"LoRA strength must be a finite number, got {strength!r}")
    lora = load_lora(path, model) if not isinstance(path, LoraFile) else path
    handle = LoraHandle(lora, float(strength))
    by_param: dict[str, list[LoraPatch]] = {}
    for p in lora.patches:
        by_param.setdefault(p.param, []).append(p)
    with torch.no_grad():
        for param, patches in by_param.items():
            mod, attr = _owner(model, param)
            if attr == "weight" and isinstance(mod, BlockLinear):  # a block linear: through the weight path
                fn = _row_patch(patches, handle.strength)
                mod.weight_patches = list(getattr(mod, "weight_patches", None) or ()) + [fn]
                handle.callables.append((mod, fn))
                continue
            t = getattr(mod, attr)
            handle.backups[param] = t.detach().clone()
            merged = _row_patch(patches, handle.strength)(t.detach().float()).to(t.dtype)
            t.copy_(merged)
    model.loras = list(getattr(model, "loras", [])) + [handle]
    model.lora_variant = variant_with_loras(getattr(model, "variant", None),
                                            [(h.file, h.strength) for h in model.loras])
    log.info("LoRA %s applied at strength %g: %d module(s), %d delta(s)", lora.path, handle.strength, lora.matched,
             len(lora.patches))
    return handle


def remove_lora(model: MagiHumanDiT, handle: Optional[LoraHandle] = None) -> None:
    """Undo :func:`apply_lora` (``handle``, which must be the last one applied; None: every LoRA); weights are
    restored bit for bit."""
    applied = list(getattr(model, "loras", []))
    if handle is not None and handle in applied and handle is not applied[-1]:
        # its backups of the small tensors predate the later LoRAs: restoring them would drop those
        raise LoraError(f"remove the LoRAs applied after {handle.file.path.name} first (or remove_lora(model) to "
                        "remove every LoRA); LoRAs come off in reverse order")
    handles = applied if handle is None else [handle]
    with torch.no_grad():
        for h in reversed(handles):
            for mod, fn in h.callables:
                mod.weight_patches = [f for f in (getattr(mod, "weight_patches", None) or ()) if f is not fn]
            for param, original in h.backups.items():
                mod, attr = _owner(model, param)
                getattr(mod, attr).copy_(original)
    model.loras = [h for h in getattr(model, "loras", []) if h not in handles]
    model.lora_variant = variant_with_loras(getattr(model, "variant", None),
                                            [(h.file, h.strength) for h in model.loras])
