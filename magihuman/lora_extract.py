"""Extract a LoRA that turns one DiT checkpoint into another (e.g. the distilled or SR model as a LoRA on base).

Both checkpoints are read tensor by tensor (never both models whole): for each block linear the difference
``target - base`` is factored by a truncated SVD (per modality expert in the multi-modal layers, so each
expert keeps its own low-rank delta); every other tensor that differs (norms, biases, the adapter embedders,
the output heads) is kept exactly as a full ``diff``. The output is a LoRA file in ComfyUI key style
(``diffusion_model.<module>.lora_up.weight`` / ``lora_down.weight`` / ``alpha`` = rank, ``.diff``, ``.diff_b``)
that :mod:`magihuman.lora` and the LoRA Loader nodes read, with metadata naming both variants, the rank rule
and the energy each layer keeps.

Rank rule: ``rank=R`` (randomised SVD, ``torch.svd_lowrank``: fast enough for 5120-wide matrices on a CPU) or
``energy=E`` (the smallest rank keeping a fraction E of each difference's squared Frobenius norm; full SVD).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from .checkpoints import ARCH_FIELDS, ROPE_KEY, _open_checked, is_block_linear, official_key_shapes
from .errors import CheckpointError
from .lora import META_BASE, META_TARGET, MODALITIES
from .weights.entry import Reader
from .weights.safetensors_io import write_file

log = logging.getLogger(__name__)

__all__ = ["ExtractReport", "extract_lora", "low_rank", "lora_file_bytes"]

OVERSAMPLE = 8  # extra columns of the randomised SVD (accuracy of the leading singular vectors)


@dataclass
class ExtractReport:
    path: Path
    base_variant: str
    target_variant: str
    rank_rule: str
    layers: dict[str, dict] = field(default_factory=dict)   # module -> rank, energy kept, norms
    diffs: list[str] = field(default_factory=list)          # tensors stored as full diffs
    identical: int = 0                                      # tensors equal in both checkpoints

    @property
    def energy(self) -> float:
        """Squared Frobenius norm kept, over all factored differences."""
        total = sum(v["norm2"] for v in self.layers.values())
        kept = sum(v["norm2"] * v["energy"] for v in self.layers.values())
        return kept / total if total else 1.0

    def format(self) -> str:
        rows = [f"LoRA {self.path.name}: {self.base_variant} -> {self.target_variant}, {self.rank_rule}; "
                f"{len(self.layers)} low-rank deltas, {len(self.diffs)} full diffs, {self.identical} identical "
                f"tensors; energy kept {self.energy:.4f}"]
        for name, v in self.layers.items():
            rows.append(f"  {name:<48} rank {v['rank']:>4}  energy {v['energy']:.4f}")
        return "\n".join(rows)


def lora_file_bytes(config, rank: int, dtype_bytes: int = 2) -> dict[str, int]:
    """Tensor bytes of the LoRA :func:`extract_lora` writes at ``rank`` for a DiT of ``config`` when every tensor
    differs (headers excluded): ``lowrank`` (up + down per block linear and expert, ``dtype_bytes`` each, fp32
    alphas), ``diffs`` (every other tensor as a full fp32 diff), ``total``. E.g. the release DiT at rank 64:
    0.49 GiB of factors + 82 MiB of diffs."""
    lowrank = diffs = 0
    for key, shape in official_key_shapes(config).items():
        if key == ROPE_KEY:
            continue
        if not is_block_linear(key):
            n = 1
            for d in shape:
                n *= d
            diffs += 4 * n
            continue
        experts = len(MODALITIES) if int(key.split(".")[2]) in config.mm_layers else 1
        rows, cols = shape[0] // experts, shape[1]
        r = max(1, min(int(rank), rows, cols))
        lowrank += experts * (r * (rows + cols) * dtype_bytes + 4)
    return {"lowrank": lowrank, "diffs": diffs, "total": lowrank + diffs}


def low_rank(delta: torch.Tensor, *, rank: Optional[int] = None, energy: Optional[float] = None,
             max_rank: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(up [out, r], down [r, in], kept energy)`` with ``up @ down ~= delta`` (fp32)."""
    d = delta.float()
    norm2 = float(d.pow(2).sum())
    full = min(d.shape)
    if rank is not None:
        r = max(1, min(int(rank), full))
        if r + OVERSAMPLE < full:
            u, s, v = torch.svd_lowrank(d, q=r + OVERSAMPLE, niter=4)
        else:
            u, s, vh = torch.linalg.svd(d, full_matrices=False)
            v = vh.T
    else:
        u, s, vh = torch.linalg.svd(d, full_matrices=False)
        v = vh.T
        cum = torch.cumsum(s.pow(2), 0) / max(norm2, 1e-30)
        r = int(torch.searchsorted(cum, torch.tensor(float(energy))).item()) + 1
        r = max(1, min(r, full, max_rank or full))
    u, s, v = u[:, :r], s[:r], v[:, :r]
    root = s.sqrt()
    kept = float(s.pow(2).sum()) / norm2 if norm2 else 1.0
    return (u * root).contiguous(), (root[:, None] * v.T).contiguous(), min(kept, 1.0)


def extract_lora(base: str | Path, target: str | Path, out: str | Path, *, rank: Optional[int] = None,
                 energy: Optional[float] = None, max_rank: Optional[int] = None, dtype: torch.dtype = torch.bfloat16,
                 device: str | torch.device = "cpu", show_progress: bool = True) -> ExtractReport:
    """Write the LoRA that makes ``base`` into ``target`` (DiT checkpoints of one architecture) to ``out``."""
    if (rank is None) == (energy is None):
        raise ValueError("give exactly one of rank= (e.g. 64) or energy= (e.g. 0.99)")
    if rank is not None and int(rank) < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    if energy is not None and not 0.0 < float(energy) <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    out = Path(out)
    if not out.name.endswith(".safetensors"):
        raise ValueError(f"the LoRA is written as .safetensors; got {out}")
    src_b, var_b, _, cfg_b, _ = _open_checked(base, None)
    src_t, var_t, _, cfg_t, _ = _open_checked(target, None)
    # the local attention plan is not in the weights, but a LoRA cannot change it: the 1080p SR model is no LoRA
    diff_fields = [f for f in ARCH_FIELDS + ("local_attn_layers",) if getattr(cfg_b, f) != getattr(cfg_t, f)]
    if diff_fields:
        raise CheckpointError(f"{src_t.describe()} ({var_t}) is not the same architecture as {src_b.describe()} "
                              f"({var_b}) (differs in {', '.join(diff_fields)}); a LoRA needs two checkpoints of one "
                              "layout")
    rule = f"rank {rank}" if rank is not None else f"energy {energy}" + (f" (max rank {max_rank})" if max_rank else "")
    report = ExtractReport(out, var_b, var_t, rule)
    device = torch.device(device)
    tensors: dict[str, torch.Tensor] = {}
    keys = [k for k in src_t.entries if k != ROPE_KEY]
    bar = tqdm(total=len(keys), desc="Extracting LoRA", disable=not show_progress, leave=False)

    def handle(e, reader: Reader) -> None:
        key = e.key
        t = reader.read_into(e, torch.empty(e.shape, dtype=torch.float32),
                             scale=src_t.scale_value(key) if key in src_t.scale_of else None).to(device)
        b = read_base(key, torch.float32).to(device)
        delta = t - b
        bar.update(1)
        if not delta.any():
            report.identical += 1
            return
        module, _, attr = key.rpartition(".")
        if not is_block_linear(key):
            tensors[f"diffusion_model.{module}.{'diff' if attr == 'weight' else 'diff_b'}"] = delta.cpu()
            report.diffs.append(key)
            return
        layer = int(key.split(".")[2])
        parts = [(module, delta)]
        if layer in cfg_b.mm_layers:
            parts = [(f"{module}.{m}", d) for m, d in zip(MODALITIES, delta.chunk(len(MODALITIES), dim=0))]
        for name, d in parts:
            if not d.any():
                report.identical += 1
                continue
            up, down, kept = low_rank(d, rank=rank, energy=energy, max_rank=max_rank)
            r = up.shape[1]
            tensors[f"diffusion_model.{name}.lora_up.weight"] = up.to(dtype).cpu()
            tensors[f"diffusion_model.{name}.lora_down.weight"] = down.to(dtype).cpu()
            tensors[f"diffusion_model.{name}.alpha"] = torch.tensor(float(r))
            report.layers[name] = {"rank": r, "energy": kept, "norm2": float(d.pow(2).sum())}

    try:
        with src_b.reading() as read_base:  # the base's tensors as the target's stream reaches them
            src_t.stream(keys, handle)
    finally:
        bar.close()
    if not tensors:
        raise CheckpointError(f"{src_b.describe()} and {src_t.describe()} hold the same weights: there is no LoRA to "
                              "extract")
    per_layer = {k: {"rank": v["rank"], "energy": round(v["energy"], 6)} for k, v in report.layers.items()}
    metadata = {META_BASE: var_b, META_TARGET: var_t, "magihuman_lora_rule": rule,
                "magihuman_lora_energy": f"{report.energy:.6f}", "magihuman_lora_layers": json.dumps(per_layer)}
    write_file(out, tensors, metadata)
    log.info("%s", report.format())
    return report
