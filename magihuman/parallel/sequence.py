"""Ulysses sequence parallelism for the MagiHuman DiT on ``torch.distributed`` (the official "context parallel").

The packed sequence of one forward, ``[video | audio | text]`` (all modalities, after packing), is cut into N
equal contiguous shards, one per rank of a process group. Every op of a layer except attention works token by
token (norms, linears and their per-modality experts, RoPE, gating, MLP), so each rank runs those on its shard
only. Around attention one ``all_to_all_single`` swaps the token shard for a head shard: q|k|v of the rank's
tokens and every head go out, q|k|v of every token and the rank's N-th of the heads come back; attention then
runs with the forward's GLOBAL plan, unchanged (key-padding lengths, the 1080p model's frame windows); a second
all-to-all brings the output back to the rank's tokens with every head. The final heads run on the shard and
one all-gather gives every rank the whole velocity, so the sampler runs on every rank on identical inputs.

Split: the sequence length L is padded up to ``N·ceil(L/N)`` with text-padding rows (zero input, the identity
RoPE position, never attended to as keys), so every collective has equal sizes: ``all_to_all_single`` without
split lists, one ``all_gather``, identical shapes on every rank (friendlier to compile). It costs at most N-1
dummy rows; the official code splits unevenly instead (the first L mod N ranks take one more token).

Heads: contiguous head groups keep grouped-query attention right (query head h reads key/value head
h·Hkv/Hq). N must divide the query heads, and N must divide the key/value heads or be a multiple of them, in
which case each key/value head is sent ``N/Hkv`` times (every rank then holds one). For the release (40 query,
8 key/value heads): N = 1, 2, 4, 8.

The collectives run in helpers ``torch.compile`` does not trace (graph breaks around them), so regionally
compiled layers (:func:`magihuman.compile.compile_dit_blocks`) keep working; compile the layers before enabling
sequence parallelism (the command line, the worker group and the ComfyUI loaders all do).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch
import torch.distributed as dist

from ..packing import PAD_COORD, SequenceLayout

log = logging.getLogger("magihuman.parallel")

__all__ = ["SequenceParallel", "SequenceShard", "ExchangeStats", "check_world_size", "enable_sequence_parallel",
           "disable_sequence_parallel", "sequence_parallel", "valid_world_sizes"]


def check_world_size(num_heads_q: int, num_heads_kv: int, world_size: int) -> None:
    """Refuse a world size the Ulysses head split cannot serve (ValueError naming the sizes that work)."""
    n = int(world_size)
    if n < 1:
        raise ValueError(f"sequence parallel: the world size must be >= 1, got {world_size}")
    if num_heads_q % n or (num_heads_kv % n and n % num_heads_kv):
        ok = valid_world_sizes(num_heads_q, num_heads_kv)
        raise ValueError(
            f"sequence parallel over {n} ranks is not possible for this DiT: its {num_heads_q} query heads and "
            f"{num_heads_kv} key/value heads are split between the ranks, so the rank count must divide the query "
            f"heads and divide (or be a multiple of) the key/value heads; use {', '.join(map(str, ok))} ranks")


def valid_world_sizes(num_heads_q: int, num_heads_kv: int) -> list[int]:
    return [n for n in range(1, num_heads_q + 1)
            if num_heads_q % n == 0 and (num_heads_kv % n == 0 or n % num_heads_kv == 0)]


@dataclass
class ExchangeStats:
    """What this rank sent through the collectives of the DiT (bytes include the part a rank keeps: an
    all-to-all moves ``(N-1)/N`` of its buffer over the wire).

    Time: NCCL collectives return before they ran, so a host clock around them measures only the launch. On
    CUDA each collective is bracketed by two CUDA events on the current stream instead: pairs already done are
    read as new ones come (``query``, no wait; the list stays short in a server that never asks), the rest (one wait
    for the last one) when :attr:`seconds` is asked for, so timing adds no host stall per exchange."""

    all_to_all_calls: int = 0
    all_to_all_bytes: int = 0
    all_gather_calls: int = 0
    all_gather_bytes: int = 0
    host_seconds: float = 0.0  # CPU collectives (gloo): they are done when the call returns
    pending: list = field(default_factory=list, repr=False)  # CUDA (start, end) event pairs not read yet
    event_seconds: float = 0.0  # CUDA collectives already read from their events

    def read_finished(self) -> None:
        """Add up the event pairs whose collectives are done, without waiting for the others."""
        done = 0
        for start, end in self.pending:
            if not end.query():
                break
            self.event_seconds += start.elapsed_time(end) / 1000.0
            done += 1
        del self.pending[:done]

    @property
    def seconds(self) -> float:
        """Time inside the collectives (includes waiting for slower ranks)."""
        if self.pending:
            self.pending[-1][1].synchronize()  # events complete in stream order: the last one covers the rest
            self.event_seconds += sum(start.elapsed_time(end) for start, end in self.pending) / 1000.0
            self.pending.clear()
        return self.host_seconds + self.event_seconds

    def as_dict(self) -> dict:
        """Counts, bytes and :attr:`seconds` (picklable: no events)."""
        return dict(all_to_all_calls=self.all_to_all_calls, all_to_all_bytes=self.all_to_all_bytes,
                    all_gather_calls=self.all_gather_calls, all_gather_bytes=self.all_gather_bytes,
                    seconds=self.seconds)

    def reset(self) -> None:
        self.all_to_all_calls = self.all_to_all_bytes = self.all_gather_calls = self.all_gather_bytes = 0
        self.host_seconds = self.event_seconds = 0.0
        self.pending.clear()


@dataclass(frozen=True)
class SequenceShard:
    """This rank's part of one forward's padded sequence ``[video | audio | text + padding]``."""

    rank: int
    world_size: int
    length: int  # real tokens per row (video + audio + longest text)
    size: int  # tokens per rank: ceil(length / world_size)
    global_segments: tuple[tuple[int, int], ...]  # video, audio, text (+ the padding rows) in the padded sequence
    segments: tuple[tuple[int, int], ...]  # the same, intersected with this rank's range, in local indices

    @property
    def start(self) -> int:
        return self.rank * self.size

    @property
    def padded(self) -> int:
        return self.world_size * self.size

    @property
    def pad(self) -> int:
        return self.padded - self.length

    @classmethod
    def of(cls, layout: SequenceLayout, rank: int, world_size: int) -> "SequenceShard":
        size = -(-layout.length // world_size)
        (v0, v1), (a0, a1), (t0, _) = layout.segments
        padded = ((v0, v1), (a0, a1), (t0, world_size * size))
        lo, hi = rank * size, (rank + 1) * size
        local = tuple((min(max(a, lo), hi) - lo, min(max(b, lo), hi) - lo) for a, b in padded)
        return cls(rank, world_size, layout.length, size, padded, local)

    def _rows(self, modality: int) -> slice:
        """This rank's rows of one modality, in that modality's own indices."""
        (a, _), (la, lb) = self.global_segments[modality], self.segments[modality]
        return slice(self.start + la - a, self.start + lb - a)

    def local_inputs(self, video_tokens: torch.Tensor, audio: torch.Tensor, text: torch.Tensor,
                     coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The rank's rows of the embedder inputs ``[B, n, C]`` per modality and of the coordinates ``[B, L, 9]``;
        the padding rows are zero text rows at the identity RoPE position."""
        b, pad = text.shape[0], self.pad
        if pad:
            text = torch.cat([text, text.new_zeros(b, pad, text.shape[2])], dim=1)
            coords = torch.cat([coords, torch.tensor(PAD_COORD, dtype=coords.dtype).expand(b, pad, 9)], dim=1)
        return (video_tokens[:, self._rows(0)], audio[:, self._rows(1)], text[:, self._rows(2)],
                coords[:, self.start:self.start + self.size])

    def key_lens(self, layout: SequenceLayout) -> Optional[tuple[int, ...]]:
        """Real keys per row in the padded sequence (None when nothing is padded)."""
        if not (layout.has_padding or self.pad):
            return None
        head = layout.num_video + layout.num_audio
        return tuple(head + n for n in layout.text_lens)


class SequenceParallel:
    """Ulysses sequence parallelism of one DiT over a process group (default: the whole world).

    Set it on a model with :func:`enable_sequence_parallel`; ``MagiHumanDiT.forward`` then takes the sharded path.
    Every rank of the group must call the model with the same inputs at the same time.
    """

    def __init__(self, num_heads_q: int, num_heads_kv: int, group: Optional[dist.ProcessGroup] = None):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("sequence parallel needs an initialised torch.distributed process group "
                               "(torch.distributed.init_process_group, e.g. under torchrun)")
        self.group = group
        self.world_size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        check_world_size(num_heads_q, num_heads_kv, self.world_size)
        self.num_heads_q, self.num_heads_kv = int(num_heads_q), int(num_heads_kv)
        self.kv_repeat = max(1, self.world_size // self.num_heads_kv)  # each kv head sent N/Hkv times when N > Hkv
        self.stats = ExchangeStats()
        # gloo (CPU ranks; CUDA ranks on a torch without NCCL, e.g. Windows) exchanges host memory: CUDA tensors
        # go through it explicitly, and its collectives are done when they return (host clock)
        self.backend = dist.get_backend(group)
        self.lead_rank = 0 if group is None else dist.get_global_rank(group, 0)
        # torch.compile must not trace the collectives (graph breaks around them). Wrapped here, and only once
        # torch._dynamo is loaded (compiling loads it, and layers are compiled before they go sequence-parallel):
        # importing it costs ~1.3 s per rank that an eager run should not pay.
        if "torch._dynamo" in sys.modules:
            for name in ("scatter_heads", "gather_heads", "gather_tokens"):
                setattr(self, name, torch.compiler.disable(getattr(self, name)))

    @classmethod
    def for_config(cls, config, group: Optional[dist.ProcessGroup] = None) -> "SequenceParallel":
        return cls(config.num_heads_q, config.num_heads_kv, group)

    def __repr__(self) -> str:
        return (f"SequenceParallel(rank {self.rank} of {self.world_size}, heads {self.num_heads_q}q/"
                f"{self.num_heads_kv}kv{f', kv x{self.kv_repeat}' if self.kv_repeat > 1 else ''})")

    def shard(self, layout: SequenceLayout) -> SequenceShard:
        return SequenceShard.of(layout, self.rank, self.world_size)

    # ------------------------------------------------------------ collectives (never traced by torch.compile)

    @contextlib.contextmanager
    def _timed(self) -> Iterator[None]:
        """Time one collective: CUDA events around it under NCCL (it returns before it ran; no host wait), the host
        clock otherwise (gloo is done when it returns)."""
        if self.backend == "nccl":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self.stats.read_finished()
            self.stats.pending.append((start, end))
        else:
            t0 = time.perf_counter()
            yield
            self.stats.host_seconds += time.perf_counter() - t0

    def _on_wire(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` where this backend's collectives take it: host memory for gloo, in place for NCCL."""
        return t.cpu() if self.backend == "gloo" and t.device.type != "cpu" else t

    def _all_to_all(self, send: torch.Tensor) -> torch.Tensor:
        with self._timed():
            wire = self._on_wire(send)
            recv = torch.empty_like(wire)
            dist.all_to_all_single(recv, wire, group=self.group)  # dim 0 = the N peers
            recv = recv.to(send.device)
        self.stats.all_to_all_calls += 1
        self.stats.all_to_all_bytes += send.numel() * send.element_size()
        return recv

    @torch.no_grad()
    def broadcast_from_lead(self, t: torch.Tensor) -> torch.Tensor:
        """Rank 0's ``t`` on every rank (same shape and dtype everywhere). Sampler noise goes through it: every
        rank samples, and generators need not agree across GPU models, torch builds or devices."""
        wire = self._on_wire(t.contiguous())
        dist.broadcast(wire, src=self.lead_rank, group=self.group)
        return wire.to(t.device)

    @torch.no_grad()  # inference only: the collectives carry no autograd
    def scatter_heads(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Sequence-sharded to head-sharded, one fused exchange: q ``[B, s, Hq, D]``, k/v ``[B, s, Hkv, D]`` (this
        rank's tokens, every head) -> ``[B, N·s, Hq/N, D]``, ``[B, N·s, max(Hkv, N)/N, D]`` (every token, this
        rank's contiguous head group)."""
        n = self.world_size
        if self.kv_repeat > 1:
            k, v = k.repeat_interleave(self.kv_repeat, dim=2), v.repeat_interleave(self.kv_repeat, dim=2)
        b, s, hq, d = q.shape
        hk = k.shape[2]
        send = torch.cat([q.reshape(b, s, n, hq // n, d), k.reshape(b, s, n, hk // n, d),
                          v.reshape(b, s, n, hk // n, d)], dim=3)  # [B, s, N, (Hq + 2Hkv)/N, D]
        recv = self._all_to_all(send.permute(2, 0, 1, 3, 4).contiguous())  # [N (source = token shard), B, s, h, D]
        full = recv.permute(1, 0, 2, 3, 4).reshape(b, n * s, -1, d)  # [B, N·s, h, D] tokens in global order
        return full.split([hq // n, hk // n, hk // n], dim=2)

    @torch.no_grad()  # inference only: the collectives carry no autograd
    def gather_heads(self, out: torch.Tensor) -> torch.Tensor:
        """Head-sharded to sequence-sharded: ``[B, N·s, Hq/N, D]`` -> ``[B, s, Hq, D]`` (heads in global order)."""
        n = self.world_size
        b, length, h, d = out.shape
        s = length // n
        send = out.reshape(b, n, s, h, d).permute(1, 0, 2, 3, 4).contiguous()  # [N (token shard j -> rank j), ...]
        recv = self._all_to_all(send)  # [N (source = head group), B, s, h, D]
        return recv.permute(1, 2, 0, 3, 4).reshape(b, s, n * h, d)

    @torch.no_grad()  # inference only: the collectives carry no autograd
    def gather_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, s, C]`` on every rank -> ``[B, N·s, C]`` (tokens in global order) on every rank."""
        n = self.world_size
        b, s, c = x.shape
        with self._timed():
            wire = self._on_wire(x.contiguous())
            out = wire.new_empty(n * b, s, c)  # the ranks' tensors concatenated along dim 0
            gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
            gather(out, wire, group=self.group)
            out = out.to(x.device)
        self.stats.all_gather_calls += 1
        self.stats.all_gather_bytes += x.numel() * x.element_size()
        return out.reshape(n, b, s, c).permute(1, 0, 2, 3).reshape(b, n * s, c)

    def gather_outputs(self, shard: SequenceShard, video: torch.Tensor, audio: torch.Tensor):
        """The final heads' rows of this rank (video ``[B, nv_r, Cv]``, audio ``[B, na_r, Ca]``) -> the whole
        video ``[B, Nv, Cv]`` and audio ``[B, Na, Ca]`` on every rank (one all-gather of a packed fp32 buffer)."""
        b, cv, ca = video.shape[0], video.shape[2], audio.shape[2]
        (v0, v1), (a0, a1), _ = shard.segments
        packed = video.new_zeros(b, shard.size, max(cv, ca), dtype=torch.float32)
        packed[:, v0:v1, :cv] = video
        packed[:, a0:a1, :ca] = audio
        full = self.gather_tokens(packed)
        (gv0, gv1), (ga0, ga1), _ = shard.global_segments
        return full[:, gv0:gv1, :cv], full[:, ga0:ga1, :ca]


def enable_sequence_parallel(model, group: Optional[dist.ProcessGroup] = None, *,
                             agree: bool = True) -> Optional[SequenceParallel]:
    """Run ``model`` (a :class:`~magihuman.models.dit.MagiHumanDiT`) sequence-parallel over ``group`` (default: the
    whole world); every rank of the group must hold the same weights. With ``agree`` (a collective: every rank
    calls this together) the ranks settle on one compute dtype and fp8 mode. A group of one rank changes nothing
    (returns None). Raises ValueError when the group size cannot split the model's heads."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size(group) == 1:
        model.sequence_parallel = None
        return None
    sp = SequenceParallel.for_config(model.config, group)
    if model.local_attention_mode != "window":
        raise ValueError("sequence parallel runs the default 'window' attention plan; this DiT is set to "
                         f"{model.local_attention_mode!r} (set_local_attention('window'))")
    if agree:
        _agree_on_numerics(model, group)
    model.sequence_parallel = sp
    return sp


def _agree_on_numerics(model, group: Optional[dist.ProcessGroup]) -> None:
    """One compute dtype and fp8 mode on every rank. "auto" resolves per GPU (bf16 on an RTX 3090, fp16 on a
    2080 Ti; fp8 matmuls on Ada only), but the exchange sends q/k/v in the compute dtype: bf16 bytes read as
    fp16 on a peer would be silent garbage. Mixed ranks take the most constrained choice (fp32 > fp16 > bf16;
    fp8 off if any rank has it off)."""
    mine = (str(model.compute_dtype).removeprefix("torch."), model.fp8_compute)
    every = [None] * dist.get_world_size(group)
    dist.all_gather_object(every, mine, group=group)
    if len(set(every)) == 1:
        return
    dtypes = {getattr(torch, d) for d, _ in every}
    dtype = min(dtypes, key=lambda d: torch.finfo(d).eps)  # the most precise: a rank cannot run a coarser one well
    fp8 = "off" if any(m == "off" for _, m in every) else every[0][1]
    if dist.get_rank(group) == 0:
        log.warning("MagiHuman sequence parallel: the ranks resolved different numerics %s; all of them run %s with "
                    "fp8 compute %s", sorted(set(every)), str(dtype).removeprefix("torch."), fp8)
    model.set_compute_dtype(dtype)  # the model's and every block linear's
    model.set_fp8_compute(fp8)


def disable_sequence_parallel(model) -> None:
    model.sequence_parallel = None


@contextlib.contextmanager
def sequence_parallel(model, sp: Optional[SequenceParallel]) -> Iterator[None]:
    """Run ``model`` sequence-parallel under ``sp`` inside the block only (the same model may serve single-rank
    callers outside it)."""
    before = getattr(model, "sequence_parallel", None)
    model.sequence_parallel = sp
    try:
        yield
    finally:
        model.sequence_parallel = before
