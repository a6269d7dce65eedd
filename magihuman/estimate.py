"""FLOP and memory model of a MagiHuman run, computed analytically from :class:`DiTConfig` and the sizes.

``estimate(preset=..., width=..., height=..., seconds=...)`` returns a :class:`Plan` (tokens, FLOPs,
weight and activation memory per stage, decode peak) whose ``format()`` is the table the CLI prints;
``check_fits(plan, device_memory(device))`` raises :class:`MemoryEstimateError` with a smaller request
that would fit when it does not.

Invariants: every count comes from the config and the tensor shapes;
weights are counted for the storage the loaders keep, padding included (:func:`dit_weight_storage`); the device
peak is the largest phase (one model on the device at a time), not a sum. The counting rules, how they compare
with the official H100 timings, and what they were checked against: ``docs/estimate.md``.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence, Union

import torch

from .geometry import (AUDIO_LATENT_CHANNELS, DEFAULT_FRAME_RECEPTIVE_FIELD, MAX_TEXT_TOKENS, MAX_WINDOW_SECONDS,
                       MIN_WINDOW_SECONDS, PATCH_SIZE, SIZE_MULTIPLE, SPATIAL_STRIDE, VIDEO_LATENT_CHANNELS,
                       decoded_frames, frame_counts, snap_size)
from .models.dit import weight_table as dit_weight_table
from .models.dit_config import DiTConfig
from .models.text_encoder import T5GemmaEncoder, T5GemmaEncoderConfig
from .models.turbo_vae import RELEASE_TURBO_CONFIG, TINY_TURBO_CONFIG, TurboVAEDecoder
from .offload import HOST_ALIGNMENT
from .presets import PRESETS
from .quant import gguf as ggml
from .storage import FP8, GGUF, KEEP_FILE, PLAIN, Storage, WeightSpec, parse_storage
from .storage import weight_table as module_weight_table
from .sampling import DEFAULT_NEGATIVE_PROMPT
from .weights.safetensors_io import CHUNK_BYTES

__all__ = [
    "MemoryEstimateError", "StageEstimate", "Plan", "estimate", "check_fits", "device_memory", "available_ram",
    "suggest_smaller", "smaller_requests", "SmallerRequest", "shorter_seconds", "window_seconds_for",
    "token_counts", "dit_param_count", "dit_weight_bytes", "dit_forward_flops", "attention_pairs",
    "forward_activation_bytes", "turbo_decode_bytes", "t5gemma_encoder_param_count", "approx_gemma_tokens",
    "wan_decode_bytes", "wan_encode_bytes", "audio_vae_bytes",
    "DEFAULT_PROMPT_TOKENS", "MAX_TEXT_TOKENS",
    "WeightStorage", "weight_format", "dit_weight_storage", "dequant_working_bytes",
    "dit_load_working_bytes", "offload_weight_bytes", "decode_phase_bytes", "t5gemma_encoder_shapes", "t5gemma_weight_table",
    "text_encoder_storage", "text_encode_activation_bytes",
]

PATCH = PATCH_SIZE[1]
DEFAULT_PROMPT_TOKENS = 100
GIB = 1024 ** 3
ROPE_BANDS = "rope.bands"

# google/t5gemma-9b-9b-ul2 encoder (the Gemma-2 9B shape), from its HF config.
T5GEMMA_9B_ENCODER = dict(hidden_size=3584, intermediate_size=14336, num_hidden_layers=42, num_attention_heads=16,
                          num_key_value_heads=8, head_dim=256, vocab_size=256000)

class MemoryEstimateError(ValueError):
    """The request does not fit the available memory; the message gives the estimate and a smaller request."""


# ============================================================================ tokens

def approx_gemma_tokens(text: str) -> int:
    """Rough Gemma token count: words and punctuation marks, plus <bos>. English prose with Gemma's
    256k vocabulary is close to one token per word; rare words split, which this ignores."""
    return len(re.findall(r"\w+|[^\w\s]", text)) + 1


def _default_negative_tokens() -> int:
    return min(MAX_TEXT_TOKENS, approx_gemma_tokens(DEFAULT_NEGATIVE_PROMPT))


def token_counts(width: int, height: int, seconds: float) -> dict:
    """Token geometry of one sample: snapped size, latent sizes and the video/audio token counts."""
    w, h = snap_size(width, height)
    num_frames, t = frame_counts(seconds)  # the pipeline's own rules, so the plan matches the run
    lat_h, lat_w = h // SPATIAL_STRIDE, w // SPATIAL_STRIDE
    grid = (t, lat_h // PATCH, lat_w // PATCH)
    return dict(width=w, height=h, num_frames=num_frames, latent_frames=t, latent_h=lat_h, latent_w=lat_w,
                grid=grid, video_tokens=grid[0] * grid[1] * grid[2], audio_tokens=num_frames)


# ============================================================================ parameters

def dit_param_count(cfg: DiTConfig) -> dict[str, int]:
    """Exact parameter counts (from the model's own weight table): ``block_linear`` (the block matrices), ``fp32``
    (norms, adapter with bias, output heads), ``total``, ``buffers`` (``adapter.rope.bands``) and
    ``per_token_block_linear`` (weights one token multiplies: a single expert in the mm layers)."""
    return dict(_dit_param_count(json.dumps(cfg.to_dict(), sort_keys=True)))


@functools.lru_cache(maxsize=64)
def _dit_param_count(config_json: str) -> dict[str, int]:
    linear = other = per_token = buffers = 0
    for key, spec in dit_weight_table(DiTConfig.from_dict(json.loads(config_json))).items():
        if spec.stored is not None:
            linear += spec.numel
            per_token += spec.numel // spec.stored[2]
        elif key.endswith(ROPE_BANDS):
            buffers += spec.numel
        else:
            other += spec.numel
    return dict(block_linear=linear, fp32=other, total=linear + other, buffers=buffers,
                per_token_block_linear=per_token)


def dit_weight_bytes(cfg: DiTConfig, weight_dtype=torch.bfloat16) -> int:
    """Bytes of the DiT weights: block linears in ``weight_dtype`` (a storage name, a torch dtype or a
    :class:`~magihuman.storage.Storage`), everything else fp32; fp8 scales included."""
    return dit_weight_storage(cfg, weight_dtype).total


def _dtype_bytes(dtype) -> int:
    if not isinstance(dtype, torch.dtype):
        dtype = parse_storage(dtype).dtype
    return torch.empty((), dtype=dtype).element_size()


# ============================================================================ weight formats

# Bytes per element of a chunk of GGUF blocks being decoded: the float32 kernel result plus its integer/float
# temporaries (Q4_K, the widest kernel here, holds about two float32 copies of the chunk at once).
_DECODE_TEMP_BYTES = 8


def weight_format(fmt) -> str:
    """The registry name of a weight storage (``bf16``, ``fp8``, ``Q8_0``, ...) from a torch dtype, a name or alias
    in any case, or a :class:`~magihuman.storage.Storage`; "file" is not a format (price the file's own)."""
    st = parse_storage(fmt, what="weight_dtype")
    if st.kind == KEEP_FILE:
        raise ValueError("weight_dtype 'file' keeps what a file holds: price the file's own storage "
                         "(magihuman.checkpoints.file_storage)")
    return st.name


@dataclass(frozen=True)
class WeightStorage:
    """Bytes of a model's weights in one storage, counted from its weight table (as the loader stores them)."""

    format: str
    compact: int                # the stored-weight layers' weights (DiT block linears; T5Gemma projections + embedding)
    other: int                  # the rest (DiT: fp32 norms, adapter, heads, RoPE bands; T5Gemma: norms)
    scales: int                 # fp8: one fp32 scale per tensor
    padding_params: int         # zeros added so rows are whole GGUF blocks / fp8 matmul tiles
    layers: tuple[int, ...]     # bytes of each transformer layer (all its tensors)
    largest_compact: int        # elements (as stored, padded) of the largest weight decoded whole per use
    # elements alive while a weight decoded whole is decoded, the most of any: as stored, twice where the experts'
    # rows were padded (Storage.decode slices the logical weight out of the padded one: a copy)
    decoded_elements: int = 0

    @property
    def total(self) -> int:
        return self.compact + self.other + self.scales


def _storage(st: Storage, table: dict[str, WeightSpec], other_bytes: int, decoded_whole) -> WeightStorage:
    """Sum the bytes of ``table`` with every stored-weight layer in ``st`` and the rest at ``other_bytes`` per
    element; ``decoded_whole(key)``: the weight is decoded whole at use (an embedding decodes rows only)."""
    compact = other = scales = padding = largest = decoded = 0
    layers: dict[int, int] = {}
    for key, spec in table.items():
        if spec.stored is None:
            nbytes = other_bytes * spec.numel
            other += nbytes
        else:
            rows, cols, experts = spec.stored
            nbytes = st.nbytes(rows, cols, experts)
            pr, pc = st.padded(rows, cols)
            stored_elems = experts * pr * pc
            padding += stored_elems - spec.numel
            if st.kind == FP8:
                scales += 4
                compact += nbytes - 4
            else:
                compact += nbytes
            if decoded_whole(key):
                largest = max(largest, stored_elems)
                sliced = pr != rows and (experts > 1 or pc != cols)  # not a view of the padded weight
                decoded = max(decoded, stored_elems * (2 if sliced else 1))
        layer = _layer_index(key)
        if layer is not None:
            layers[layer] = layers.get(layer, 0) + nbytes
    return WeightStorage(format=st.name, compact=compact, other=other, scales=scales, padding_params=padding,
                         layers=tuple(layers[i] for i in sorted(layers)), largest_compact=largest,
                         decoded_elements=decoded)


_LAYER_KEY = re.compile(r"^(?:block|encoder)\.layers\.(\d+)\.")


def _layer_index(key: str) -> Optional[int]:
    m = _LAYER_KEY.match(key)
    return int(m.group(1)) if m else None


@functools.lru_cache(maxsize=256)
def _dit_storage(config_json: str, fmt: str) -> WeightStorage:
    return _storage(parse_storage(fmt), dit_weight_table(DiTConfig.from_dict(json.loads(config_json))), 4,
                    lambda key: True)


def dit_weight_storage(cfg: DiTConfig, weight_dtype="bf16") -> WeightStorage:
    """Exact bytes of the DiT weights as the loader keeps them: every block linear in ``weight_dtype`` (padded as
    stored: whole GGUF blocks, fp8 matmul tiles; fp8: e4m3 plus a 4-byte scale per tensor), the rest fp32; per
    layer too (block offload)."""
    return _dit_storage(json.dumps(cfg.to_dict(), sort_keys=True), weight_format(weight_dtype))


def dequant_working_bytes(storage: WeightStorage, compute_dtype=torch.bfloat16, device="cuda") -> int:
    """Peak bytes of decoding one stored weight for a matmul in ``compute_dtype`` on ``device`` (weights are decoded
    one at a time, whole: the DiT's fused experts too). Plain storage in the compute dtype needs none; another plain
    dtype a cast copy. fp8 and GGUF: the weight decoded as stored (fp8: cast, scaled in place), a second copy
    where the experts' rows were padded (:attr:`WeightStorage.decoded_elements`); GGUF also the float32 temporaries
    of one chunk of blocks, whose size depends on the device (:func:`magihuman.quant.gguf.chunk_elements`: 4 Mi
    elements on a CPU, 64 Mi on a GPU). Default device: a GPU's, as the device peak is a GPU figure."""
    cb = _dtype_bytes(compute_dtype)
    st = parse_storage(storage.format)
    n = storage.largest_compact
    if st.kind == PLAIN:
        return 0 if st.dtype == compute_dtype else n * cb
    temps = min(n, ggml.chunk_elements(device)) * _DECODE_TEMP_BYTES if st.kind == GGUF else 0
    return storage.decoded_elements * cb + temps


# Host bytes, per element of a block linear as stored, of encoding it to fp8 or GGUF while loading
# (magihuman.weights.compact.fill_stored): read whole as fp32 (4), zero-padded into a second fp32 copy where its rows
# or columns are padded (4, Storage._pad), then encoded: fp8 into its fp32 quotient (4) before e4m3, GGUF a chunk of
# rows at a time (less). The encoded result is the weight itself, counted with the weights. Charged in full for the
# largest weight: exact for a padded fp8 weight, a bound otherwise.
_ENCODE_SCRATCH_BYTES = 12


def dit_load_working_bytes(cfg: DiTConfig, weight_dtype="bf16", source_dtype=torch.float32) -> int:
    """Host scratch memory, above the weights, of :func:`magihuman.checkpoints.load_dit` building the DiT in
    ``weight_dtype`` from a file whose block linears are ``source_dtype`` (streamed tensor by tensor, so one
    tensor's worth at most). A tensor read as another dtype than the file's passes through the reader's chunk buffer
    (``CHUNK_BYTES``, 64 MiB). Plain storage: read as its dtype, straight into the model when the file's matches.
    Compact storage kept as the file holds it (fp8 bytes; a .gguf of the same type, ``source_dtype`` uint8): no
    scratch; else the largest block linear is read as fp32 and encoded, :data:`_ENCODE_SCRATCH_BYTES` per element."""
    st = parse_storage(weight_format(weight_dtype))
    storage = dit_weight_storage(cfg, st)
    if st.kind != PLAIN and source_dtype == (torch.uint8 if st.kind == GGUF else st.dtype):
        return 0
    read_as = st.dtype if st.kind == PLAIN else torch.float32
    chunk = 0 if source_dtype == read_as else min(CHUNK_BYTES, storage.largest_compact * _dtype_bytes(source_dtype))
    return chunk + (0 if st.kind == PLAIN else storage.largest_compact * _ENCODE_SCRATCH_BYTES)


# Alignment padding of one streamed layer in the pinned host arena (magihuman.offload.HostArena): under
# HOST_ALIGNMENT bytes per tensor, at most 12 tensors per DiT layer (4 block linears and 4 norms; fp8: a scale
# per block linear).
HOST_ARENA_SLACK_PER_LAYER = 12 * HOST_ALIGNMENT


def offload_weight_bytes(storage: WeightStorage, blocks_on_device: Optional[int]) -> dict:
    """Where the weights sit with block offload (:func:`magihuman.offload.enable_block_offload`): the first
    ``blocks_on_device`` layers and everything outside the layers on the device, the other layers in host RAM,
    and at most two streamed layers on the device at once (the one running and the next, prefetched on CUDA).
    ``host`` is the pinned arena: the streamed bytes plus at most :data:`HOST_ARENA_SLACK_PER_LAYER` of
    alignment per layer (one exactly-sized registration, not per-tensor power-of-two pinned blocks).
    ``None``: no offload. Returns ``device``, ``host``, ``in_flight`` and ``streamed_per_forward`` bytes."""
    layers = storage.layers
    n = len(layers)
    if blocks_on_device is None or blocks_on_device >= n:
        return dict(device=storage.total, host=0, in_flight=0, streamed_per_forward=0)
    k = int(blocks_on_device)
    if k < 0:
        raise ValueError(f"blocks_on_device must be >= 0, got {blocks_on_device}")
    outside = storage.total - sum(layers)
    in_flight = max(layers[i] + (layers[i + 1] if i + 1 < n else 0) for i in range(k, n))
    streamed = sum(layers[k:])
    host = streamed + (n - k) * HOST_ARENA_SLACK_PER_LAYER
    return dict(device=outside + sum(layers[:k]) + in_flight, host=host, in_flight=in_flight,
                streamed_per_forward=streamed)


def t5gemma_weight_table(cfg: Optional[dict] = None) -> dict[str, WeightSpec]:
    """Every tensor of a T5Gemma encoder (keys ``encoder.*``, from the model built on the meta device) with its shape;
    the projections and the token embedding with their geometry. Default: the 9B encoder of google/t5gemma-9b-9b-ul2."""
    return _t5gemma_table(json.dumps(dict(T5GEMMA_9B_ENCODER, **(cfg or {})), sort_keys=True))


@functools.lru_cache(maxsize=16)
def _t5gemma_table(cfg_json: str) -> dict[str, WeightSpec]:
    return module_weight_table(T5GemmaEncoder(T5GemmaEncoderConfig.from_hf(json.loads(cfg_json)), device="meta"))


def t5gemma_encoder_shapes(cfg: Optional[dict] = None) -> dict[str, tuple[int, ...]]:
    """Every parameter of a T5Gemma encoder with its shape (see :func:`t5gemma_weight_table`)."""
    return {k: spec.shape for k, spec in t5gemma_weight_table(cfg).items()}


def text_encoder_storage(weight_dtype="bf16", cfg: Optional[dict] = None) -> WeightStorage:
    """Exact bytes of the T5Gemma encoder as its loader keeps it: the projections and the token embedding in
    ``weight_dtype`` (padded as stored), the norms in the plain dtype (bf16 under compact storage). The embedding is
    decoded by rows (only the looked-up tokens), so it never counts as a weight decoded whole."""
    return _text_encoder_storage(weight_format(weight_dtype), json.dumps(cfg or {}, sort_keys=True))


@functools.lru_cache(maxsize=256)
def _text_encoder_storage(fmt: str, cfg_json: str) -> WeightStorage:
    st = parse_storage(fmt)
    other = _dtype_bytes(st.dtype) if st.kind == PLAIN else 2
    return _storage(st, t5gemma_weight_table(json.loads(cfg_json) or None), other,
                    lambda key: not key.endswith("embed_tokens.weight"))


def text_encode_activation_bytes(tokens: int, cfg: Optional[dict] = None, *, compute_dtype=torch.bfloat16,
                                 overhead: float = 1.25) -> int:
    """Estimated peak activation bytes of encoding one prompt of ``tokens`` tokens (each prompt is encoded
    alone, batch 1). Per token, c = compute dtype bytes: the residual and the normed input (2h·c) plus the larger
    of the attention phase (q, k, v and their rotated copies: 2·(Hq + 2·Hkv)·D·c, output Hq·D·c) and the MLP
    phase (gelu(gate), up and their product: 3I·c); fp32 norm temporaries (12h); two boolean [L, L] masks and the
    int64 [L, L] distances the sliding-window mask is built from (16 B per pair, alive while it is built); the
    fp32 output. ``overhead`` as in :func:`forward_activation_bytes`."""
    c = dict(T5GEMMA_9B_ENCODER, **(cfg or {}))
    h, hd, inner = c["hidden_size"], c["head_dim"], c["intermediate_size"]
    hq, hkv = c["num_attention_heads"], c["num_key_value_heads"]
    cb = _dtype_bytes(compute_dtype)
    attn = (2 * (hq + 2 * hkv) * hd + hq * hd) * cb
    mlp = 3 * inner * cb
    per_token = 2 * h * cb + max(attn, mlp) + 12 * h + 4 * h
    return int(overhead * per_token * tokens) + (2 + 16) * tokens * tokens


def t5gemma_encoder_param_count(cfg: Optional[dict] = None) -> int:
    """Parameters of a T5Gemma encoder (every tensor of :func:`t5gemma_weight_table`). Default: the 9B encoder of
    google/t5gemma-9b-9b-ul2."""
    return sum(spec.numel for spec in t5gemma_weight_table(cfg).values())


# ============================================================================ FLOPs

def _frames_visible(t: int, frf: int) -> int:
    """Sum over latent frames i of the number of frames in [i−frf, i+frf] ∩ [0, t−1]."""
    return sum(min(t - 1, i + frf) - max(0, i - frf) + 1 for i in range(t))


def attention_pairs(grid: Sequence[int], num_audio: int, num_text: int, *, local: bool,
                    frame_receptive_field: int = DEFAULT_FRAME_RECEPTIVE_FIELD, block_frames: int = 1) -> int:
    """Number of (query, key) pairs one attention layer computes for one sample. Local layers: the
    allowed pairs when ``block_frames`` is 1; with query blocks of several frames, every pair between a
    block and its whole key window (frames ``[f0 − frf, f1 + frf)``) is computed."""
    t, gh, gw = grid
    per_frame = gh * gw
    nv, rest = t * per_frame, num_audio + num_text
    length = nv + rest
    if not local or frame_receptive_field < 0:
        return length * length
    if block_frames <= 1:
        video_video = per_frame * per_frame * _frames_visible(t, frame_receptive_field)
    else:
        frf = frame_receptive_field
        video_video = sum(per_frame * (min(f0 + block_frames, t) - f0)
                          * per_frame * (min(t, f0 + block_frames + frf) - max(0, f0 - frf))
                          for f0 in range(0, t, block_frames))
    return video_video + nv * rest + rest * length


def dit_forward_flops(cfg: DiTConfig, grid: Sequence[int], num_audio: int, num_text: int, *,
                      frame_receptive_field: int = DEFAULT_FRAME_RECEPTIVE_FIELD, local_attention: str = "exact",
                      block_frames: int = 1) -> dict:
    """FLOPs of one forward of one sample: ``linear`` (adapter, block matmuls, heads), ``attention``, ``total``.
    ``local_attention``: ``"exact"`` counts the allowed pairs of local layers (official FFA kernel, this
    engine's ``"window"`` mode with 1 frame per block), ``"window"`` the pairs of ``block_frames``-frame
    query blocks, ``"mask"`` every pair (a dense-mask kernel computes all L²)."""
    if local_attention not in ("exact", "window", "mask"):
        raise ValueError(f"local_attention must be 'exact', 'window' or 'mask', got {local_attention!r}")
    h, d, hq = cfg.hidden_size, cfg.head_dim, cfg.num_heads_q
    nv = grid[0] * grid[1] * grid[2]
    length = nv + num_audio + num_text
    macs = nv * cfg.video_in_channels * h + num_audio * cfg.audio_in_channels * h + num_text * cfg.text_in_channels * h
    macs += nv * h * cfg.video_in_channels + num_audio * h * cfg.audio_in_channels  # output heads
    attn = 0
    for i in range(cfg.num_layers):
        if i in cfg.gelu7_layers:
            up, inner = cfg.gelu_intermediate_size, cfg.gelu_intermediate_size
        else:
            inner = cfg.swiglu_intermediate_size
            up = 2 * inner
        macs += length * (h * cfg.qkv_out_features + hq * d * h + h * up + inner * h)
        local = i in cfg.local_attn_layers and local_attention != "mask"
        attn += 2 * 2 * hq * d * attention_pairs(grid, num_audio, num_text, local=local,
                                                 frame_receptive_field=frame_receptive_field,
                                                 block_frames=block_frames if local_attention == "window" else 1)
    return dict(linear=2 * macs, attention=attn, total=2 * macs + attn, length=length)


# ============================================================================ memory

def local_attention_bytes(cfg: DiTConfig, grid: Sequence[int], num_other: int, batch: int = 1, *,
                          mode: str = "window", block_frames: int = 1,
                          frame_receptive_field: int = DEFAULT_FRAME_RECEPTIVE_FIELD, padded: bool = False) -> int:
    """Extra bytes the local-attention layers need in this engine (0 without local layers).

    ``"mask"``: one boolean ``[L, L]`` mask (``[B, 1, L, L]`` when text padding is masked too) plus SDPA's
    additive bf16 copy: ``3·L²`` bytes per mask row set. ``"window"``: the gathered key/value window of one
    query block, ``2·B·Hkv·D·2·nk`` bytes (nk = window frames · tokens per frame + audio/text), plus a
    ``3·nq·nk`` block mask when blocks of several frames need one.
    """
    t, gh, gw = grid
    hw = gh * gw
    frf = frame_receptive_field
    if not cfg.local_attn_layers or frf < 0 or t - 1 <= frf:
        return 0
    length = t * hw + num_other
    if mode == "mask":
        return 3 * length * length * (batch if padded else 1)
    if mode != "window":
        raise ValueError(f"local attention mode must be 'window' or 'mask', got {mode!r}")
    b = max(1, int(block_frames))
    nq = min(b, t) * hw
    nk = (min(t, b + 2 * frf)) * hw + num_other
    gather = 2 * batch * cfg.num_heads_kv * cfg.head_dim * 2 * nk
    block_mask = 3 * nq * nk * (batch if padded else 1) if b > 1 else 0
    return gather + block_mask


def forward_activation_bytes(cfg: DiTConfig, length: int, batch: int = 1, *, local_bytes: int = 0,
                             padding_mask: bool = False, overhead: float = 1.25) -> dict:
    """Estimated peak activation bytes of one forward of this engine (weights excluded).

    Per token, with Q = qkv width, I = MLP inner width, h = hidden:
    - residual stream fp32: 4h; inside a layer the layer input and the new residual: 8h
    - attention phase: 8h + 6Q (bf16 result + fp32 copy) + 8(Hq+Hkv)D (normed + rotated q, k fp32)
      + 2(Hq+2Hkv)D (bf16 q, k, v) + 10·Hq·D (bf16 output, fp32 gated, projection input)
    - MLP phase: 8h + up projection in fp32 (swiglu7: 8I for [L, 2I]; gelu7: 4I) + the activation's fp32
      temporaries (swiglu7: g, u, g·σ(g), u+1, result = 20I; gelu7: 12I)
    - ``overhead`` (default 1.25) multiplies the sum: allocator slack. Measured on CPU (MagiHumanDiT with
      hidden 512, 4 layers, 8k and 18k tokens; maxrss growth) the forward peaked 1.1-1.3x the bare sum.
    - memory-efficient attention: no L² matrix; the math kernel holds scores and softmax,
      ``2·4·L²`` bytes per head (``math_attention`` does all heads at once: ×B·Hq)
    - local attention: ``local_bytes`` from :func:`local_attention_bytes` (dense mask or window gather)
    - RoPE tables: cos and sin fp32 [L, 3·D/4]
    """
    h, d, hq, hkv = cfg.hidden_size, cfg.head_dim, cfg.num_heads_q, cfg.num_heads_kv
    q = cfg.qkv_out_features
    attn_tok = 8 * h + 6 * q + 8 * (hq + hkv) * d + 2 * (hq + 2 * hkv) * d + 10 * hq * d
    mlp_tok = 0
    for i in range(cfg.num_layers):
        if i in cfg.gelu7_layers:
            mlp_tok = max(mlp_tok, 8 * h + 16 * cfg.gelu_intermediate_size)
        else:
            mlp_tok = max(mlp_tok, 8 * h + 28 * cfg.swiglu_intermediate_size)
    rope = 2 * 4 * (3 * d // 4) * length * batch
    residual = 4 * h * length * batch
    mask = local_bytes + (3 * length * batch if padding_mask else 0)
    tokens = length * batch
    math_head = 2 * 4 * length * length
    efficient = int(overhead * (max(attn_tok, mlp_tok) * tokens + rope)) + mask
    peak_math = int(overhead * (max(attn_tok * tokens + batch * hq * math_head, mlp_tok * tokens) + rope)) + mask
    return dict(residual=residual, attention_phase=attn_tok * tokens, mlp_phase=mlp_tok * tokens,
                mask=mask, rope=rope, peak_efficient=efficient, math_scores_per_head=math_head, peak_math=peak_math)


def decode_phase_bytes(cfg: DiTConfig, length: int, batch: int = 1, *, dequant: int, local_bytes: int = 0,
                       padding_mask: bool = False, overhead: float = 1.25) -> int:
    """Peak bytes while a stored weight is decoded for its matmul: ``dequant`` (:func:`dequant_working_bytes`) plus
    what is live then. The largest live set is at the MLP's ``down_proj``: the residual and the attention output
    (6h a token), the up projection in fp32 and its activation (swiglu7: 8I + 4I; gelu7: 4I + 4I), with the
    same ``overhead``, RoPE tables and masks as :func:`forward_activation_bytes`. The forward's activation peak
    (inside the MLP activation's temporaries) comes at another moment, so a stage takes the larger of the two
    rather than their sum; ``benchmarks/bench_estimate_memory.py`` measured the sum 20 % above the peak RSS
    of compact formats (mid config, malloc returning freed blocks), the larger of the two within 2 %."""
    if not dequant:
        return 0
    h = cfg.hidden_size
    live = 0
    for i in range(cfg.num_layers):
        if i in cfg.gelu7_layers:
            live = max(live, 6 * h + 8 * cfg.gelu_intermediate_size)
        else:
            live = max(live, 6 * h + 12 * cfg.swiglu_intermediate_size)
    rope = 2 * 4 * (3 * cfg.head_dim // 4) * length * batch
    mask = local_bytes + (3 * length * batch if padding_mask else 0)
    return int(overhead * (live * length * batch + rope)) + mask + dequant


def turbo_decode_bytes(latent_frames: int, latent_h: int, latent_w: int, *, dtype_bytes: int = 2,
                       config: Optional[dict] = None, live_tensors: int = 4) -> dict:
    """Estimated peak bytes of a Turbo VAE sliding-window decode (weights excluded).

    A chunk has at most ``max(first+1, step+2)`` latent frames (one context frame each inner side). The
    decoder widens to its top width at latent size and each up block doubles time and/or space; the
    largest tensor is ``max over stages of channels·t·h·w``. A resnet block holds about ``live_tensors``
    (4) tensors of that size at once, and its norms compute in fp32: with 16-bit weights the block's input
    and output stay in the dtype while the norm holds two fp32 copies, so ``peak ≈ largest · max(4·c, 2·c + 8)``
    (c = ``dtype_bytes``; traced: 11.5 B per element in bf16, 16 in fp32), plus the fp32 chunk output. The
    decoded clip is reported separately: ``video`` [3, F, 16h, 16w] in fp32 and ``pieces``, the finished chunks
    in the dtype while they wait to be concatenated (the chunks, their concatenation and the last chunk's
    uncut output: up to three clips; traced within 0.98-1.09 of the release decoder's live tensors).
    """
    c = dict(RELEASE_TURBO_CONFIG, **(config or {}))
    first, step = int(c["first_chunk_size"]), int(c["step_size"])
    chunk = first if latent_frames <= first else max(first + 1, min(step + 2, latent_frames + 1))
    widths = list(reversed(c["decoder_block_out_channels"]))
    scaling = list(reversed(c["decoder_spatio_temporal_scaling"]))
    spatial_only = list(reversed(c["decoder_spatio_only"]))
    t, hh, ww = chunk, latent_h, latent_w
    largest = widths[0] * t * hh * ww
    prev = widths[0]
    for width, up, s_only in zip(widths, scaling, spatial_only):
        largest = max(largest, width * t * hh * ww, prev * t * hh * ww)
        if up:
            if not s_only:
                largest = max(largest, 2 * width * t * hh * ww)  # time_conv doubles channels first
                t *= 2
            hh, ww = hh * 2, ww * 2
            largest = max(largest, width * t * hh * ww)
        prev = width
    p = int(c["patch_size"])
    out_frames = decoded_frames(chunk)
    chunk_out = 3 * out_frames * hh * p * ww * p * 4
    frames = decoded_frames(latent_frames)
    video = 3 * frames * latent_h * SPATIAL_STRIDE * latent_w * SPATIAL_STRIDE * 4
    per_element = max(live_tensors * dtype_bytes, 2 * dtype_bytes + 8)
    return dict(chunk_latent_frames=chunk, largest_elements=largest,
                peak=per_element * largest + chunk_out, video=video, pieces=3 * video // 4 * dtype_bytes)


# The Wan2.2 VAE decoder keeps, per latent cell of the decoded tile and per unit of its width ``dec_dim``, about
# this many elements alive at its peak (one 4-frame chunk at every resolution: the block activations plus the
# 2-frame causal caches of every 3-D conv, fp32 norm temporaries included): traced on the release and tiny
# configs, 9.9 kB per cell and width unit in bf16, 19.7 kB in fp32 (meta-device trace of the live tensors).
WAN_DECODE_ELEMENTS_PER_CELL = 2500


def wan_decode_bytes(latent_frames: int, latent_h: int, latent_w: int, *, tile=None, dtype_bytes: int = 2,
                     dec_dim: int = 256) -> dict:
    """Estimated peak bytes of a Wan2.2 VAE decode (weights excluded; :meth:`WanVAE.decode`).

    The decoder runs one latent frame at a time over a spatial tile (``tile`` latent cells, None = the whole
    frame), so its working set depends on the tile's area, not on the clip length:
    ``cells · dec_dim · WAN_DECODE_ELEMENTS_PER_CELL · 2 · c``. The decoded clip [3, F, 16h, 16w] adds fp32 buffers
    (tiled: the blended output, its weights and one decoded tile; untiled: the chunks in the dtype and their
    concatenation): ``video`` is the clip in fp32, ``peak`` includes them."""
    th, tw = (latent_h, latent_w) if tile is None else ((tile, tile) if isinstance(tile, int) else tuple(tile))
    cells = min(int(th), latent_h) * min(int(tw), latent_w)
    frames = decoded_frames(latent_frames)
    video = 3 * frames * latent_h * SPATIAL_STRIDE * latent_w * SPATIAL_STRIDE * 4
    work = cells * int(dec_dim) * WAN_DECODE_ELEMENTS_PER_CELL * 2 * dtype_bytes
    clip = video + (video // 4 * 2 * dtype_bytes if tile is None else video * cells // (latent_h * latent_w))
    return dict(work=work, video=video, peak=work + clip)


def wan_encode_bytes(height: int, width: int, *, dtype_bytes: int = 2, dim: int = 160) -> int:
    """Estimated peak bytes of a Wan2.2 VAE encode of one ``height x width`` frame (the TI2V image), weights
    excluded: the encoder's first block runs at the resolution of the patchified frame with ``dim`` channels,
    ``(2.8·dim + 12)·c + 12`` bytes per pixel (traced: 910 B per pixel for the release in bf16, 1808 in fp32, 112
    and 213 for the tiny config)."""
    per_pixel = (2.8 * int(dim) + 12) * dtype_bytes + 12
    return int(per_pixel * int(height) * int(width))


def audio_vae_bytes(latent_steps: int, *, channels: int = 128, strides=(2, 4, 4, 8, 8),
                    c_mults=(1, 2, 4, 8, 16), live_tensors: int = 4) -> int:
    """Estimated peak bytes of an Oobleck (Stable Audio) VAE encode or decode of ``latent_steps`` steps (2048 audio
    samples each), weights excluded. The largest activation is at the audio end (``channels · c_mults[0]`` channels
    over all samples); a residual unit holds about ``live_tensors`` tensors of that size, and its Snake activations
    compute in fp32 whatever the weights' dtype, so 4 bytes per element. Traced (release and tiny, fp32 and bf16):
    decode 4.5 MiB per step for the release, encode 11 % more; the estimate is 1.25x the four tensors."""
    samples = int(latent_steps) * math.prod(strides)
    largest = 0
    length, mults = samples, [1, *c_mults]
    for i, stride in enumerate(strides):
        largest = max(largest, channels * mults[i] * length, channels * mults[i + 1] * (length // stride))
        length //= stride
    return int(live_tensors * largest * 4 * 1.25)


# ============================================================================ plan

@dataclass(frozen=True)
class StageEstimate:
    """One DiT stage (base or SR) of a run."""

    name: str                     # "base" | "sr"
    model: str                    # DiT role: distill | base | sr_540p | sr_1080p | tiny...
    width: int
    height: int
    latent_frames: int
    grid: tuple[int, int, int]    # (T, H/32, W/32) token grid
    video_tokens: int
    audio_tokens: int
    text_tokens: int
    negative_text_tokens: Optional[int]  # None without CFG
    steps: int
    cfg: bool
    cfg_batched: bool
    forwards_per_step: int
    flops_per_forward: int        # conditional pass, one sample
    flops_per_step: int
    flops_total: int
    attention_flops_total: int
    executed_flops_total: int     # what this engine runs with its local-attention mode (window / mask)
    params: int
    weight_bytes: int             # all weights in the storage format (dit_weight_storage(...).total)
    activation_bytes: int         # peak of one model call (memory-efficient attention), weight decoding included
    activation_bytes_math: int    # same with the math attention kernel
    local_attention_bytes: int    # dense mask ("mask") or key-window gather ("window")
    latent_bytes: int
    local_layers: int
    local_attention: str          # "none" | "window" | "mask"
    weight_format: str = "bf16"   # storage of the block linears (weight_format())
    dequant_bytes: int = 0        # decoding one stored weight for its matmul (decode_phase_bytes)
    blocks_on_device: Optional[int] = None  # block offload: layers kept on the device (None: all)
    num_layers: int = 0
    device_weight_bytes: Optional[int] = None  # weights on the device at the peak (None: all of weight_bytes)
    host_weight_bytes: int = 0    # streamed layers held in host RAM
    streamed_bytes_per_step: int = 0  # host -> device copies per sampler step (CFG as two passes: twice)

    @property
    def sequence_length(self) -> int:
        return self.video_tokens + self.audio_tokens + self.text_tokens

    def per_rank(self, ranks: int) -> "StageEstimate":
        """This stage as one rank of an N-rank sequence-parallel run holds it (:mod:`magihuman.parallel`): 1/N of
        the activations and local-attention buffers; weight decoding, weights and latents stay whole."""
        if ranks <= 1:
            return self

        def split(total: int) -> int:
            return (total - self.dequant_bytes) // ranks + self.dequant_bytes

        return replace(self, activation_bytes=split(self.activation_bytes),
                       activation_bytes_math=split(self.activation_bytes_math),
                       local_attention_bytes=self.local_attention_bytes // ranks)

    @property
    def weights_on_device(self) -> int:
        return self.weight_bytes if self.device_weight_bytes is None else self.device_weight_bytes

    @property
    def peak_bytes(self) -> int:
        return self.weights_on_device + self.activation_bytes + self.latent_bytes


@dataclass(frozen=True)
class Plan:
    """Everything :func:`estimate` computed; ``format()`` gives the table the CLI prints."""

    preset: str
    width: int
    height: int
    seconds: float
    num_frames: int
    latent_frames: int
    sr_width: Optional[int]
    sr_height: Optional[int]
    weight_dtype: torch.dtype
    stages: tuple[StageEstimate, ...]
    text_encoder_bytes: int       # T5Gemma encoder weights (text_encoder_format, default bf16); can run on CPU
    decoder_weight_bytes: int     # Turbo VAE decoder weights (estimate from its parameter count)
    decode_bytes: int             # Turbo decode peak (estimate)
    decoded_video_bytes: int      # the decoded clip, fp32
    request: dict = field(default_factory=dict, repr=False, compare=False)
    text_encoder_format: str = "bf16"
    text_encode_bytes: int = 0    # encoding one prompt: activations + weight decoding (weights excluded)
    compute_dtype: torch.dtype = torch.bfloat16

    @property
    def text_encode_peak_bytes(self) -> int:
        """Encoding a prompt where the encoder runs (device or CPU): its weights plus the encode peak."""
        return self.text_encoder_bytes + self.text_encode_bytes

    @property
    def total_flops(self) -> int:
        return sum(s.flops_total for s in self.stages)

    @property
    def decode_peak_bytes(self) -> int:
        return self.decoder_weight_bytes + self.decode_bytes + self.decoded_video_bytes

    @property
    def peak_device_bytes(self) -> int:
        """Largest phase, models swapped between phases (DiT stages, decode); text encoding on CPU."""
        return max([s.peak_bytes for s in self.stages] + [self.decode_peak_bytes])

    @property
    def max_weight_bytes(self) -> int:
        return max([s.weight_bytes for s in self.stages] + [self.text_encoder_bytes, self.decoder_weight_bytes])

    @property
    def video_frames(self) -> int:
        """Frames of the decoded video (the file's): ``4(T - 1) + 1`` (:func:`magihuman.geometry.frame_counts`)."""
        return decoded_frames(self.latent_frames)

    def format(self) -> str:
        rows = [f"MagiHuman plan: {self.preset}, {self.width}x{self.height}, {self.seconds:g} s -> "
                f"{self.video_frames} video frames ({self.latent_frames} latent), {self.num_frames} audio steps, "
                f"DiT weights {weight_format(self.weight_dtype)}"
                + "".join(f" ({s.name} {s.weight_format})" for s in self.stages[1:]
                          if s.weight_format != self.stages[0].weight_format)]
        rows.append(f"{'stage':<6}{'model':<10}{'size':>10}{'tokens v+a+t':>20}{'steps':>6}{'fwd':>4}"
                    f"{'FLOP/fwd':>10}{'FLOP':>10}{'weights':>9}{'activ.':>9}{'peak':>9}")
        for s in self.stages:
            tok = f"{s.video_tokens}+{s.audio_tokens}+{s.text_tokens}"
            rows.append(f"{s.name:<6}{s.model:<10}{f'{s.width}x{s.height}':>10}{tok:>20}{s.steps:>6}"
                        f"{s.forwards_per_step:>4}{_flops(s.flops_per_forward):>10}{_flops(s.flops_total):>10}"
                        f"{_gib(s.weights_on_device):>9}{_gib(s.activation_bytes):>9}{_gib(s.peak_bytes):>9}")
        rows.append(f"decode (Turbo VAE): weights {_gib(self.decoder_weight_bytes)}, "
                    f"chunk peak ~{_gib(self.decode_bytes)}, "
                    f"video {_gib(self.decoded_video_bytes)}")
        if self.text_encoder_bytes:
            rows.append(f"text encoder (T5Gemma 9B, {self.text_encoder_format}): {_gib(self.text_encoder_bytes)} "
                        f"+ {_gib(self.text_encode_bytes)} to encode a prompt (CPU or device)")
        notes = []
        for s in self.stages:
            if s.dequant_bytes:
                notes.append(f"{s.name}: decoding one {s.weight_format} weight to {_dtype_name(self.compute_dtype)} "
                             f"per matmul takes {_gib(s.dequant_bytes)} (counted with what is live meanwhile)")
            if s.blocks_on_device is not None and s.blocks_on_device < s.num_layers:
                notes.append(f"{s.name}: {s.blocks_on_device}/{s.num_layers} layers on the device, "
                             f"{_gib(s.host_weight_bytes)} in host RAM, streamed every forward "
                             f"(weights on the device at the peak {_gib(s.weights_on_device)})")
            if s.local_layers:
                notes.append(f"{s.name}: {s.local_layers} local-attention layers ({s.local_attention} mode, "
                             f"{_gib(s.local_attention_bytes)} extra); runs {_flops(s.executed_flops_total)} "
                             f"for {_flops(s.flops_total)} of allowed pairs")
        rows.extend(notes)
        rows.append(f"total {_flops(self.total_flops)}LOP; peak device memory ~{_gib(self.peak_device_bytes)} "
                    f"(math attention: +{_gib(max(s.activation_bytes_math - s.activation_bytes for s in self.stages))}"
                    ")")
        return "\n".join(rows)

    __str__ = format


def _gib(n: int) -> str:
    return f"{n / GIB:.1f}G" if n >= GIB // 10 else f"{n / 2 ** 20:.0f}M"


def _flops(n: int) -> str:
    for unit, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}F"
    return f"{n:.0f}F"


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def _resolve(preset) -> dict:
    """Stage recipe of a preset name, a ``presets.Preset`` or a :class:`DiTConfig`."""
    if isinstance(preset, DiTConfig):
        return dict(name="custom", dit_config=preset, dit="custom", steps=8, cfg=False, width=448, height=256,
                    seconds=4, sr=None, sr_steps=5, sr_cfg=False, tiny=False, sr_width=None,
                    sr_height=None)
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)} or pass a DiTConfig")
        p = PRESETS[preset]
    else:
        p = preset
    tiny = bool(getattr(p, "tiny", False))
    dit_cfg = DiTConfig.preset("tiny" if tiny else p.dit)
    return dict(name=p.name, dit_config=dit_cfg, dit=p.dit, steps=p.steps, cfg=p.cfg, width=p.width, height=p.height,
                seconds=p.seconds, sr=p.sr, sr_steps=p.sr_steps, sr_cfg=p.sr_cfg, tiny=tiny,
                sr_width=p.sr_width, sr_height=p.sr_height)


def _stage(name: str, model: str, cfg: DiTConfig, geo: dict, *, steps: int, use_cfg: bool, cfg_batched: bool,
           prompt_tokens: int, negative_tokens: int, frf: int, weight_dtype, local_attention: str,
           block_frames: int, compute_dtype=torch.bfloat16, blocks_on_device: Optional[int] = None,
           device_type: str = "cuda") -> StageEstimate:
    grid, na = geo["grid"], geo["audio_tokens"]
    executed_mode = "mask" if local_attention == "mask" else "window"

    def flops(text: int) -> tuple[dict, dict]:
        exact = dit_forward_flops(cfg, grid, na, text, frame_receptive_field=frf)
        run = dit_forward_flops(cfg, grid, na, text, frame_receptive_field=frf, local_attention=executed_mode,
                                block_frames=block_frames)
        return exact, run

    cond, cond_run = flops(prompt_tokens)
    batch, length, padded = 1, cond["length"], False
    if use_cfg and cfg_batched:
        one, one_run = flops(max(prompt_tokens, negative_tokens))
        per_step, attn, executed = 2 * one["total"], 2 * one["attention"], 2 * one_run["total"]
        batch, length, padded = 2, one["length"], prompt_tokens != negative_tokens
    elif use_cfg:
        neg, neg_run = flops(negative_tokens)
        per_step, attn = cond["total"] + neg["total"], cond["attention"] + neg["attention"]
        executed = cond_run["total"] + neg_run["total"]
        length = max(length, neg["length"])
    else:
        per_step, attn, executed = cond["total"], cond["attention"], cond_run["total"]
    local = bool(cfg.local_attn_layers) and frf >= 0 and grid[0] - 1 > frf
    local_b = local_attention_bytes(cfg, grid, length - geo["video_tokens"], batch, mode=executed_mode,
                                    block_frames=block_frames, frame_receptive_field=frf, padded=padded)
    act = forward_activation_bytes(cfg, length, batch, local_bytes=local_b, padding_mask=padded)
    storage = dit_weight_storage(cfg, weight_dtype)
    dequant = dequant_working_bytes(storage, compute_dtype, device_type)
    decoding = decode_phase_bytes(cfg, length, batch, dequant=dequant, local_bytes=local_b, padding_mask=padded)
    if blocks_on_device is not None and not 0 <= int(blocks_on_device):
        raise ValueError(f"blocks_on_device must be >= 0, got {blocks_on_device!r}")
    placed = offload_weight_bytes(storage, blocks_on_device)
    n_resident = None if blocks_on_device is None else min(int(blocks_on_device), cfg.num_layers)
    # latents: video + audio, fp32, ~6 live copies (sample, noise, velocity(s), sampler history)
    lat = 6 * 4 * batch * (VIDEO_LATENT_CHANNELS * geo["latent_frames"] * geo["latent_h"] * geo["latent_w"]
                           + AUDIO_LATENT_CHANNELS * na)
    lat += 4 * MAX_TEXT_TOKENS * cfg.text_in_channels * (2 if use_cfg else 1)  # text embeddings
    params = dit_param_count(cfg)
    return StageEstimate(
        name=name, model=model, width=geo["width"], height=geo["height"], latent_frames=geo["latent_frames"],
        grid=tuple(grid), video_tokens=geo["video_tokens"], audio_tokens=na, text_tokens=prompt_tokens,
        negative_text_tokens=negative_tokens if use_cfg else None, steps=steps, cfg=use_cfg, cfg_batched=cfg_batched,
        forwards_per_step=2 if use_cfg else 1, flops_per_forward=cond["total"], flops_per_step=per_step,
        flops_total=steps * per_step, attention_flops_total=steps * attn, executed_flops_total=steps * executed,
        params=params["total"], weight_bytes=storage.total,
        activation_bytes=max(act["peak_efficient"], decoding), activation_bytes_math=max(act["peak_math"], decoding),
        local_attention_bytes=local_b, latent_bytes=lat, local_layers=len(cfg.local_attn_layers) if local else 0,
        local_attention=executed_mode if local else "none", weight_format=storage.format, dequant_bytes=dequant,
        blocks_on_device=n_resident, num_layers=cfg.num_layers, device_weight_bytes=placed["device"],
        host_weight_bytes=placed["host"],
        streamed_bytes_per_step=placed["streamed_per_forward"] * (2 if use_cfg and not cfg_batched else 1))


def estimate(preset: Union[str, DiTConfig, object] = "distill_256p", width: Optional[int] = None,
             height: Optional[int] = None, seconds: Optional[float] = None, sr_width: Optional[int] = None,
             sr_height: Optional[int] = None, cfg_batched: bool = True, weight_dtype=torch.bfloat16, *,
             prompt_tokens: int = DEFAULT_PROMPT_TOKENS, negative_tokens: Optional[int] = None,
             steps: Optional[int] = None, cfg: Optional[bool] = None, sr_model: Optional[str] = None,
             sr_steps: Optional[int] = None, sr_cfg: Optional[bool] = None,
             frame_receptive_field: int = DEFAULT_FRAME_RECEPTIVE_FIELD, local_attention: str = "window",
             local_block_frames: int = 1, decode_dtype=torch.bfloat16, compute_dtype=torch.bfloat16,
             blocks_on_device: Optional[int] = None, sr_weight_dtype=None, sr_blocks_on_device: Optional[int] = None,
             text_encoder_format="bf16", device_type: str = "cuda") -> Plan:
    """Tokens, FLOPs and memory of a run. ``preset``: a preset name (``distill_256p``, ``base_256p``,
    ``sr_540p``, ``sr_1080p``, ``tiny``, ...), a ``Preset`` or a :class:`DiTConfig` (one stage). Unset sizes,
    seconds, steps and CFG come from the preset; an SR size without an SR preset adds an SR stage with
    ``sr_model`` (default: ``sr_1080p`` above 720 lines, else ``sr_540p``). ``local_attention`` /
    ``local_block_frames``: how the DiT runs its local layers (``MagiHumanDiT.set_local_attention``).

    ``weight_dtype``: storage of the DiT block linears, a torch dtype or a name (bf16/fp16/fp32/fp8 or a GGUF type,
    :func:`weight_format`); ``sr_weight_dtype`` the SR DiT's (default: the same). ``compute_dtype``: the matmul
    dtype (decoding compact weights to it costs working memory). ``blocks_on_device`` / ``sr_blocks_on_device``:
    block offload, N layers kept on the device (None: all). ``text_encoder_format``: the T5Gemma storage.
    ``device_type``: where the models run ("cuda", "mps", "cpu"), which sets the working memory of decoding GGUF
    weights (:func:`dequant_working_bytes`)."""
    if local_attention not in ("window", "mask"):
        raise ValueError(f"local_attention must be 'window' or 'mask', got {local_attention!r}")
    try:
        device_type = torch.device(device_type).type
    except (RuntimeError, TypeError):
        raise ValueError(f"device_type must be a torch device type (cuda, mps, cpu), got {device_type!r}") from None
    r = _resolve(preset)
    width = r["width"] if width is None else width
    height = r["height"] if height is None else height
    seconds = r["seconds"] if seconds is None else seconds
    for name, v in (("prompt_tokens", prompt_tokens), ("negative_tokens", negative_tokens)):
        if v is not None and (isinstance(v, bool) or int(v) != v or not 1 <= v <= MAX_TEXT_TOKENS):
            raise ValueError(f"{name} must be an integer in 1..{MAX_TEXT_TOKENS} (text is trimmed to "
                             f"{MAX_TEXT_TOKENS} tokens), got {v!r}")
    for name, v in (("steps", steps), ("sr_steps", sr_steps)):
        if v is not None and (isinstance(v, bool) or int(v) != v or v < 1):
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    negative_tokens = _default_negative_tokens() if negative_tokens is None else int(negative_tokens)
    prompt_tokens = int(prompt_tokens)
    geo = token_counts(width, height, seconds)
    use_cfg = r["cfg"] if cfg is None else bool(cfg)
    weight_format(weight_dtype)  # a clear error before anything else
    sr_weight_dtype = weight_dtype if sr_weight_dtype is None else sr_weight_dtype
    stages = [_stage("base", r["dit"], r["dit_config"], geo, steps=r["steps"] if steps is None else int(steps),
                     use_cfg=use_cfg, cfg_batched=cfg_batched, prompt_tokens=prompt_tokens,
                     negative_tokens=negative_tokens, frf=frame_receptive_field, weight_dtype=weight_dtype,
                     local_attention=local_attention, block_frames=local_block_frames, compute_dtype=compute_dtype,
                     blocks_on_device=blocks_on_device, device_type=device_type)]
    if sr_width is None and sr_height is None and r["sr"] is not None:
        sr_width, sr_height = r["sr_width"], r["sr_height"]
    if (sr_width is None) != (sr_height is None):
        raise ValueError("give both sr_width and sr_height (or neither)")
    sr_geo = None
    if sr_width is not None:
        sr_geo = token_counts(sr_width, sr_height, seconds)
        role = sr_model or r["sr"] or ("sr_1080p" if sr_geo["height"] > 720 and sr_geo["width"] > 720 else "sr_540p")
        # the tiny presets' SR DiTs are the "tiny" config (540p) and "tiny_sr_1080p" (local attention)
        sr_config = DiTConfig.preset(("tiny_sr_1080p" if role == "sr_1080p" else "tiny") if r["tiny"] else role)
        stages.append(_stage("sr", role, sr_config, sr_geo, steps=r["sr_steps"] if sr_steps is None else int(sr_steps),
                             use_cfg=r["sr_cfg"] if sr_cfg is None else bool(sr_cfg), cfg_batched=cfg_batched,
                             prompt_tokens=prompt_tokens, negative_tokens=negative_tokens,
                             frf=frame_receptive_field, weight_dtype=sr_weight_dtype,
                             local_attention=local_attention, block_frames=local_block_frames,
                             compute_dtype=compute_dtype, blocks_on_device=sr_blocks_on_device,
                             device_type=device_type))
    out = sr_geo or geo
    turbo_cfg = TINY_TURBO_CONFIG if r["tiny"] else RELEASE_TURBO_CONFIG
    dec = turbo_decode_bytes(out["latent_frames"], out["latent_h"], out["latent_w"],
                             dtype_bytes=_dtype_bytes(decode_dtype), config=turbo_cfg)
    te_format = weight_format(text_encoder_format)
    if r["tiny"]:
        text_bytes = text_act = 0
    else:
        te = text_encoder_storage(te_format)
        text_bytes = te.total
        te_tokens = max(prompt_tokens, negative_tokens) if (use_cfg or any(s.cfg for s in stages)) else prompt_tokens
        text_act = text_encode_activation_bytes(te_tokens, compute_dtype=torch.bfloat16) + \
            dequant_working_bytes(te, torch.bfloat16, device_type)  # the encoder computes in bf16 (fp8/GGUF too)
    return Plan(preset=r["name"], width=geo["width"], height=geo["height"], seconds=float(seconds),
                num_frames=geo["num_frames"], latent_frames=geo["latent_frames"],
                sr_width=sr_geo["width"] if sr_geo else None, sr_height=sr_geo["height"] if sr_geo else None,
                weight_dtype=weight_dtype, stages=tuple(stages), text_encoder_bytes=text_bytes,
                decoder_weight_bytes=_turbo_params(r["tiny"]) * _dtype_bytes(decode_dtype),
                decode_bytes=dec["peak"], decoded_video_bytes=dec["video"], text_encoder_format=te_format,
                text_encode_bytes=text_act, compute_dtype=compute_dtype,
                request=dict(preset=preset, width=width, height=height, seconds=seconds, sr_width=sr_width,
                             sr_height=sr_height, cfg_batched=cfg_batched, weight_dtype=weight_dtype,
                             prompt_tokens=prompt_tokens, negative_tokens=negative_tokens, steps=steps, cfg=cfg,
                             sr_model=sr_model, sr_steps=sr_steps, sr_cfg=sr_cfg,
                             frame_receptive_field=frame_receptive_field, local_attention=local_attention,
                             local_block_frames=local_block_frames, decode_dtype=decode_dtype,
                             compute_dtype=compute_dtype, blocks_on_device=blocks_on_device,
                             sr_weight_dtype=sr_weight_dtype, sr_blocks_on_device=sr_blocks_on_device,
                             text_encoder_format=text_encoder_format, device_type=device_type))


@functools.lru_cache(maxsize=None)
def _turbo_params(tiny: bool) -> int:
    """Parameters of the Turbo decoder (release or tiny config), counted on a meta-built module."""
    model = TurboVAEDecoder.from_config(TINY_TURBO_CONFIG if tiny else RELEASE_TURBO_CONFIG, device="meta")
    return sum(p.numel() for p in model.parameters())


# ============================================================================ fitting

MEMINFO = "/proc/meminfo"  # Linux: MemAvailable, what the kernel can give without swapping (page cache counted)


def available_ram() -> int:
    """RAM that can still be allocated, in bytes: psutil's ``available``; without psutil, ``MemAvailable`` of
    /proc/meminfo (Linux); else the free pages (``os.sysconf``; less than is available: caches not counted)."""
    try:
        import psutil  # noqa: PLC0415 - optional
        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open(MEMINFO, encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the value is in kB
    except (OSError, ValueError, IndexError):
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def device_memory(device: Union[str, torch.device, None] = None, *, free: bool = False) -> int:
    """Memory of ``device`` in bytes: CUDA total (or free) from ``torch.cuda.mem_get_info``; CPU the
    available RAM (:func:`available_ram`)."""
    dev = torch.device("cpu" if device is None else device)
    if dev.type == "cuda":
        free_b, total = torch.cuda.mem_get_info(dev)
        return int(free_b if free else total)
    if dev.type == "mps" and hasattr(torch, "mps") and hasattr(torch.mps, "recommended_max_memory"):
        return int(torch.mps.recommended_max_memory())
    if dev.type != "cpu":
        raise ValueError(f"device_memory: unsupported device type {dev.type!r} (cuda, mps or cpu)")
    return available_ram()


def shorter_seconds(seconds: float) -> list[float]:
    """Shorter clip lengths to try, longest first: the whole seconds below ``seconds``, then 0.5 s."""
    s = float(seconds)
    return [x for x in range(math.ceil(s) - 1, 0, -1) if x < s] + ([0.5] if s > 0.5 else [])


def _smaller_requests(plan: Plan, device_memory_bytes: int):
    """Candidate smaller requests in two families, each largest first: (kind, label, request). Sizes keep
    the aspect; only the SR size shrinks unless the base stage itself does not fit."""
    req = dict(plan.request)
    for x in shorter_seconds(plan.seconds):
        yield "seconds", f"seconds={x:g}", dict(req, seconds=x)
    sr = plan.sr_width is not None
    shrink_base = plan.stages[0].peak_bytes > device_memory_bytes
    for k in range(9, 1, -1):
        def scaled(w0, h0):
            return (int(w0 * k / 10) // SIZE_MULTIPLE * SIZE_MULTIPLE,
                    int(h0 * k / 10) // SIZE_MULTIPLE * SIZE_MULTIPLE)
        w, h = scaled(plan.width, plan.height) if shrink_base else (plan.width, plan.height)
        if w < SIZE_MULTIPLE or h < SIZE_MULTIPLE:
            break
        if not sr:
            yield "size", f"size {w}x{h}", dict(req, width=w, height=h)
            continue
        sw, sh = scaled(plan.sr_width, plan.sr_height)
        if sw <= w or sh <= h:
            break
        label = (f"size {w}x{h} -> " if shrink_base else "SR size ") + f"{sw}x{sh}"
        yield "size", label, dict(req, width=w, height=h, sr_width=sw, sr_height=sh)


@dataclass(frozen=True)
class SmallerRequest:
    """A request that fits (:func:`smaller_requests`): what it changes, the request and its device peak."""

    kind: str       # "cfg" (separate CFG passes) | "seconds" (the longest clip) | "size" (the largest size)
    label: str      # the change in words ("seconds=3", "SR size 768x432", ...)
    request: dict   # keyword arguments of estimate()
    peak_bytes: int

    def __str__(self) -> str:
        return f"{self.label} (~{_gib(self.peak_bytes)})"


def smaller_requests(plan: Plan, device_memory_bytes: int) -> list[SmallerRequest]:
    """Requests that fit ``device_memory_bytes``: separate CFG passes, the longest clip and the largest size (same
    aspect), each at most once. Lower-precision weights (``weight_dtype`` fp8) are the caller's choice, not offered
    here."""
    out = []
    if plan.request.get("cfg_batched") and any(st.cfg for st in plan.stages):
        req = dict(plan.request, cfg_batched=False)
        unbatched = estimate(**req)
        if unbatched.peak_device_bytes <= device_memory_bytes:
            out.append(SmallerRequest("cfg", "separate CFG passes, cfg_batched=False", req,
                                      unbatched.peak_device_bytes))
    if plan.peak_device_bytes <= device_memory_bytes:
        return out
    found = set()
    for kind, label, req in _smaller_requests(plan, device_memory_bytes):
        if kind in found:
            continue
        try:
            smaller = estimate(**req)
        except ValueError:
            continue
        if smaller.peak_device_bytes <= device_memory_bytes:
            found.add(kind)
            out.append(SmallerRequest(kind, label, req, smaller.peak_device_bytes))
    return out


def suggest_smaller(plan: Plan, device_memory_bytes: int) -> list[str]:
    """:func:`smaller_requests` in words: ``"seconds=3 (~14.2G)"``."""
    return [str(o) for o in smaller_requests(plan, device_memory_bytes)]


def window_seconds_for(seconds: float) -> Optional[float]:
    """The window length to make a long clip in when a clip of ``seconds`` is the longest that fits: ``seconds``
    within the window limits (at most :data:`MAX_WINDOW_SECONDS`); None when it is shorter than a window may be."""
    return None if seconds < MIN_WINDOW_SECONDS else min(float(seconds), MAX_WINDOW_SECONDS)


def check_fits(plan: Plan, device_memory_bytes: int, *, host_memory_bytes: Optional[int] = None,
               device_type: str = "cuda") -> None:
    """Raise :class:`MemoryEstimateError` when ``plan`` needs more device (or host) memory than given.
    The message gives the estimate, the memory, smaller requests that fit and the offload options; for
    ``device_type="cpu"`` (the device memory is the RAM) the remedies of a CPU run instead of GPU offload."""
    need = plan.peak_device_bytes
    if host_memory_bytes is not None and plan.max_weight_bytes > host_memory_bytes:
        raise MemoryEstimateError(
            f"the largest model needs ~{_gib(plan.max_weight_bytes)} of host RAM to load "
            f"(DiT weights {weight_format(plan.weight_dtype)}), but only {_gib(host_memory_bytes)} is available. "
            "Load the DiT with fp8 weights (half of bf16), close other programs, add swap, or use a machine with "
            "more RAM (the DiT is streamed from disk tensor by tensor, so loading needs no second copy).")
    if need <= device_memory_bytes:
        return
    cpu = device_type == "cpu"
    worst = max(plan.stages, key=lambda s: s.peak_bytes)
    msg = (f"{plan.preset} at {plan.width}x{plan.height}"
           + (f" -> {plan.sr_width}x{plan.sr_height}" if plan.sr_width else "")
           + f", {plan.seconds:g} s needs ~{_gib(need)} of {'RAM (CPU run)' if cpu else 'device memory'} (largest "
           f"phase: {worst.name} DiT weights {_gib(worst.weights_on_device)} + activations "
           f"{_gib(worst.activation_bytes)}; decode {_gib(plan.decode_peak_bytes)}), but only "
           f"{_gib(device_memory_bytes)} is available.")
    options = smaller_requests(plan, device_memory_bytes)
    if options:
        msg += " Requests that fit: " + "; ".join(map(str, options)) + "."
    shorter = next((o.request["seconds"] for o in options if o.kind == "seconds"), None)
    window = None if shorter is None else window_seconds_for(shorter)
    if window is not None:  # long videos are made in windows of a length that fits
        msg += (f" The whole {plan.seconds:g} s fits as windows of {window:g} s (generate --window-seconds "
                f"{window:g}; the MagiHuman Long Video node).")
    if max(s.weights_on_device for s in plan.stages) >= device_memory_bytes:
        msg += f" The DiT weights alone do not fit {'in RAM' if cpu else 'on the device'}."
    if cpu:
        msg += (" Or store the DiT weights compactly (CLI --dtype fp8, half of bf16, or a Q8_0/Q4_K .gguf from "
                "`python -m magihuman convert`), close other programs, or run on a GPU.")
    else:
        msg += (" Or offload: keep the DiT weights in host RAM and stream blocks to the device (ComfyUI lowvram / "
                "block swap), decode with the output on the CPU, run the text encoder on the CPU.")
    raise MemoryEstimateError(msg)
