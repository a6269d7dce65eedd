"""Communication model of the Ulysses split (:mod:`.sequence`) and the speed-up it should give.

Per DiT forward and per rank, with N ranks, L tokens padded to ``N·s`` (s = ceil(L/N)), B rows, e bytes per
element of the compute dtype, Hq/Hkv heads of width D (``Hk = max(Hkv, N)`` key/value heads once replicated):

- 2 all-to-alls per layer: q|k|v ``B·s·(Hq + 2·Hk)·D·e`` bytes, the attention output ``B·s·Hq·D·e`` bytes (one
  buffer per rank; ``1/N`` of it stays on the rank, ``(N-1)/N`` crosses the link);
- 1 all-gather of the packed fp32 output, ``B·s·max(Cv, Ca)·4`` bytes per rank (``(N-1)×`` that received).

Time per forward: linears work on L/N tokens, attention on Hq/N heads, so compute divides by N (minus the padding
rows); the exchange adds ``wire bytes / link bandwidth + per-collective latency``. Two bounds are reported: no
overlap of communication with compute (what this engine does: the collectives sit between the layer's matmuls)
and full overlap (what a pipelined implementation could approach).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

__all__ = ["exchange_bytes", "Link", "H100_NVLINK", "PCIE4_CONSUMER", "speedup", "per_rank_plan"]


def exchange_bytes(config, length: int, world_size: int, *, batch: int = 1, dtype_bytes: int = 2) -> dict:
    """Bytes one rank puts into the collectives of ONE forward (see the module docstring)."""
    n = int(world_size)
    s = math.ceil(length / n)
    hq, hk, d = config.num_heads_q, max(config.num_heads_kv, n), config.head_dim
    qkv = batch * s * (hq + 2 * hk) * d * dtype_bytes
    out = batch * s * hq * d * dtype_bytes
    gather = batch * s * max(config.video_in_channels, config.audio_in_channels) * 4
    calls = 2 * config.num_layers
    per_forward = config.num_layers * (qkv + out)
    wire = per_forward * (n - 1) // n + gather * (n - 1)  # what crosses the links, sent by one rank
    return dict(world_size=n, length=length, padded_length=n * s, tokens_per_rank=s, qkv_bytes=qkv, out_bytes=out,
                all_to_all_calls=calls, all_to_all_bytes=per_forward, all_gather_calls=1, all_gather_bytes=gather,
                wire_bytes=wire, total_wire_bytes=n * wire)


@dataclass(frozen=True)
class Link:
    """An assumed machine: effective dense bf16 rate per GPU and all-to-all bandwidth per GPU (one direction)."""

    name: str
    flops_per_second: float
    bytes_per_second: float
    latency_seconds: float = 20e-6  # per collective call


# README / benchmarks/bench_estimate_vs_official.py: the official H100 timings imply 475-613 TFLOP/s with this
# engine's FLOP count; NVLink 4 gives 450 GB/s per direction per GPU, all-to-all reaches ~400 GB/s of it.
H100_NVLINK = Link("H100 SXM, NVLink 4", 500e12, 400e9)
# A consumer card over PCIe 4.0 x16 (no NVLink): ~100 TFLOP/s effective bf16, ~20 GB/s all-to-all.
PCIE4_CONSUMER = Link("24 GB consumer GPU, PCIe 4.0 x16", 100e12, 20e9, 50e-6)


def speedup(config, flops: dict, world_size: int, link: Link = H100_NVLINK, *, batch: int = 1,
            dtype_bytes: int = 2, length: Optional[int] = None) -> dict:
    """Expected time of one forward on 1 and on N GPUs. ``flops``: the estimator's
    :func:`magihuman.estimate.dit_forward_flops` of one row (``linear``, ``attention``, ``length``)."""
    n = int(world_size)
    length = flops["length"] if length is None else length
    one = batch * flops["total"] / link.flops_per_second
    if n == 1:
        return dict(world_size=1, t1=one, compute=one, comm=0.0, tn_serial=one, tn_overlap=one, speedup_serial=1.0,
                    speedup_overlap=1.0, wire_bytes=0)
    ex = exchange_bytes(config, length, n, batch=batch, dtype_bytes=dtype_bytes)
    pad = ex["padded_length"] / length  # the padding rows are computed too
    compute = batch * (flops["linear"] * pad + flops["attention"] * pad * pad) / n / link.flops_per_second
    comm = ex["wire_bytes"] / link.bytes_per_second + (ex["all_to_all_calls"] + 1) * link.latency_seconds
    serial, overlap = compute + comm, max(compute, comm)
    return dict(world_size=n, t1=one, compute=compute, comm=comm, tn_serial=serial, tn_overlap=overlap,
                speedup_serial=one / serial, speedup_overlap=one / overlap, wire_bytes=ex["wire_bytes"])


def per_rank_plan(plan, ranks: int):
    """A :class:`magihuman.estimate.Plan` as one rank of an N-rank sequence-parallel run sees it: each DiT stage
    holds 1/N of the activations (weight decoding and latents stay whole); weights and decoding are unchanged."""
    if ranks <= 1:
        return plan
    return dataclasses.replace(plan, stages=tuple(st.per_rank(ranks) for st in plan.stages))
