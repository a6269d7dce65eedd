"""daVinci-MagiHuman joint audio-video DiT (15B single-stream "sandwich" transformer), pure PyTorch.

Numerics follow the official inference code: fp32 adapter, norms, RoPE, activations and residual
stream; block linears take their input in ``compute_dtype`` (bf16 officially) and round their
result to it; attention runs on q/k/v in ``compute_dtype``. Parameter names and shapes are the
official fused layout, so an official state dict loads strictly.

Batched layout ``[B, L, hidden]``: per sample ``[video | audio | text padded to max(text_lens)]``.
The modality segments sit at the same offsets in every row, so a per-modality ("expert") linear is
three matmuls on slices of one fused weight. Attention needs no masks by default: padded text keys
are sliced off per sample and local layers attend frame block by frame block to their key window
(``set_local_attention``; the boolean-mask path stays available as ``"mask"``).

Sequence parallel (``model.sequence_parallel``, :mod:`magihuman.parallel.sequence`): ``x`` holds this rank's share of
the tokens; attention swaps it for a share of the heads and back; the final heads' rows are gathered on every rank.

Beyond the official code (which runs one sample at a time and stops on an infinite RoPE scale):
batches with different text lengths, each sample attending only to itself (also with local
attention), and v1 coordinates with a single text or audio token (no rotation, see
``magihuman.rope.axis_scales``). In bf16 compute mode a single sample is bit-identical to the
official module run on CPU with SDPA standing in for flash attention; with local-attention layers
the two agree to bf16 rounding (the official local kernel merges partial softmaxes).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn

from ..attention import (DEFAULT_BACKEND, AttentionFn, LocalWindow, attention, local_window_attention,
                         resolve_attention_backend)
from ..device import COMPUTE_DTYPE_NAMES, resolve_compute_dtype
from ..geometry import PATCH_SIZE
from ..ops import layer_class, tag_operations
from ..packing import SequenceLayout, attention_mask, local_attention_allowed, tokens_to_video, video_to_tokens
from ..parallel.sequence import SequenceParallel
from ..quant.fp8 import FP8_COMPUTE_MODES, fp8_mm_supported
from ..storage import STORAGES, BlockLinear, Storage, StorageLike, WeightSpec, parse_storage
from ..storage import weight_table as _module_weight_table
from ..rope import apply_rope, default_rope_bands, rope_cos_sin
from .dit_config import DiTConfig

__all__ = ["DiTConfig", "MagiHumanDiT", "RMSNorm", "gelu7", "swiglu7", "weight_table"]

NUM_MODALITIES = 3  # VIDEO, AUDIO, TEXT
ACT_ALPHA = 1.702
ACT_LIMIT = 7.0
COMPUTE_DTYPES = tuple(COMPUTE_DTYPE_NAMES.values())
LOCAL_ATTENTION_MODES = ("window", "mask")

Segments = tuple[tuple[int, int], ...]


def gelu7(x: torch.Tensor) -> torch.Tensor:
    """``x * sigmoid(1.702 x)`` with x clamped above at 7 (fp32)."""
    x = x.float().clamp(max=ACT_LIMIT)
    return x * torch.sigmoid(ACT_ALPHA * x)


def swiglu7(x: torch.Tensor) -> torch.Tensor:
    """Interleaved halves: even channels gate g (clamped <= 7), odd channels linear u (clamped to
    +-7); ``g * sigmoid(1.702 g) * (u + 1)`` (fp32)."""
    x = x.float()
    g = x[..., 0::2].clamp(max=ACT_LIMIT)
    u = x[..., 1::2].clamp(min=-ACT_LIMIT, max=ACT_LIMIT)
    return g * torch.sigmoid(ACT_ALPHA * g) * (u + 1)


class RMSNorm(nn.Module):
    """fp32 RMSNorm with zero-centred weight (scale ``w + 1``), one weight slice per modality expert.

    The result is returned in the input dtype (as the official module does).
    """

    def __init__(self, dim: int, num_experts: int = 1, eps: float = 1e-6, device=None):
        super().__init__()
        self.dim, self.num_experts, self.eps = dim, num_experts, eps
        self.weight = nn.Parameter(torch.zeros(dim * num_experts, dtype=torch.float32, device=device))

    def forward(self, x: torch.Tensor, segments: Optional[Segments] = None) -> torch.Tensor:
        t = x.float()
        t = t * torch.rsqrt(torch.mean(t * t, dim=-1, keepdim=True) + self.eps)
        w = self.weight.to(device=x.device, dtype=torch.float32)
        if self.num_experts == 1:
            t = t * (w + 1)
        else:  # segments along dim 1 (tokens) of [B, L, ...]
            t = torch.cat([t[:, a:b] * (wi + 1) for (a, b), wi in zip(segments, w.chunk(self.num_experts))], dim=1)
        return t.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, experts={self.num_experts}, eps={self.eps}"


def _block_linear(operations, in_features: int, out_features: int, experts: int, storage: Storage,
                  device) -> BlockLinear:
    """A block linear from ``operations.BlockLinear`` (a host's subclass, e.g. ComfyUI's offloading cast) or the
    engine's own :class:`~magihuman.storage.BlockLinear`."""
    return layer_class(operations, "BlockLinear", BlockLinear)(in_features, out_features, experts, storage=storage,
                                                               device=device)


def _make_fp32_linear(operations, in_features: int, out_features: int, bias: bool, device) -> nn.Module:
    """Adapter embedders and final heads: fp32 weights, run by their own forward."""
    layer = operations.Linear(in_features, out_features, bias=bias, dtype=torch.float32, device=device)
    return tag_operations(layer, operations)


@dataclass
class _ForwardState:
    """Everything a layer needs that is computed once per forward."""

    segments: Segments
    cos: torch.Tensor  # [B, L, 1, rot]
    sin: torch.Tensor
    compute_dtype: torch.dtype
    attention: AttentionFn  # the model's kernel (MagiHumanDiT.set_attention_backend)
    use_masks: bool  # "mask" mode: dense calls with the boolean masks below (None: nothing masked)
    mask: Optional[torch.Tensor] = None  # global layers: key padding [B, 1, 1, L]
    local_mask: Optional[torch.Tensor] = None  # local layers: [B, 1, L, L]
    local_window: Optional[LocalWindow] = None  # local layers, "window" mode (no L x L mask)
    key_lens: Optional[tuple[int, ...]] = None  # "window" mode with text padding: real tokens per sample
    sequence: Optional[SequenceParallel] = None  # sequence parallel: x holds this rank's tokens (magihuman.parallel)


def self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, st: _ForwardState, local: bool) -> torch.Tensor:
    """``[B, H, L, D]`` attention of one layer under the forward's plan (see :class:`_ForwardState`).

    Without masks, text padding is handled by slicing: it sits at the end of each row, so a sample's
    real keys are a prefix; padded query rows get zeros (they never reach a real token).
    """
    fn = st.attention
    if st.use_masks:
        return attention(q, k, v, st.local_mask if local else st.mask, backend=fn)
    window = st.local_window if local else None

    def run(qs, ks, vs):
        return attention(qs, ks, vs, backend=fn) if window is None else \
            local_window_attention(qs, ks, vs, window, backend=fn)

    if st.key_lens is None:
        return run(q, k, v)
    out = q.new_zeros(q.shape)
    for b, n in enumerate(st.key_lens):
        out[b:b + 1, :, :n] = run(q[b:b + 1, :, :n], k[b:b + 1, :, :n], v[b:b + 1, :, :n])
    return out


class Attention(nn.Module):
    def __init__(self, config: DiTConfig, experts: int, local: bool, operations, storage, device):
        super().__init__()
        h, d = config.hidden_size, config.head_dim
        self.num_heads_q, self.num_heads_kv, self.head_dim = config.num_heads_q, config.num_heads_kv, d
        self.gating = config.enable_attn_gating
        self.local = local
        self.pre_norm = RMSNorm(h, experts, device=device)
        self.linear_qkv = _block_linear(operations, h, config.qkv_out_features, experts, storage, device)
        self.linear_proj = _block_linear(operations, self.num_heads_q * d, h, experts, storage, device)
        self.q_norm = RMSNorm(d, experts, device=device)
        self.k_norm = RMSNorm(d, experts, device=device)

    def forward(self, x: torch.Tensor, st: _ForwardState) -> torch.Tensor:
        b, n, _ = x.shape
        hq, hkv, d, cd = self.num_heads_q, self.num_heads_kv, self.head_dim, st.compute_dtype
        qkv = self.linear_qkv(self.pre_norm(x, st.segments), st.segments).float()
        q, k, v, g = qkv.split([hq * d, hkv * d, hkv * d, hq if self.gating else 0], dim=-1)
        q = self.q_norm(q.reshape(b, n, hq, d), st.segments)  # [B, L, Hq, D] fp32
        k = self.k_norm(k.reshape(b, n, hkv, d), st.segments)
        q = apply_rope(q, st.cos, st.sin).to(cd)
        k = apply_rope(k, st.cos, st.sin).to(cd)
        v = v.reshape(b, n, hkv, d).to(cd)
        if st.sequence is not None:  # this rank's tokens, every head -> every token, this rank's heads
            q, k, v = st.sequence.scatter_heads(q, k, v)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, L, D]
        out = self_attention(q, k, v, st, self.local).transpose(1, 2)  # [B, L, Hq, D]
        if st.sequence is not None:  # back to this rank's tokens, every head
            out = st.sequence.gather_heads(out)
        if self.gating:
            out = out.float() * torch.sigmoid(g).unsqueeze(-1)
        return self.linear_proj(out.reshape(b, n, hq * d), st.segments)


class MLP(nn.Module):
    def __init__(self, config: DiTConfig, experts: int, gelu: bool, operations, storage, device):
        super().__init__()
        h = config.hidden_size
        inner = config.gelu_intermediate_size if gelu else config.swiglu_intermediate_size
        self.activation = gelu7 if gelu else swiglu7
        self.pre_norm = RMSNorm(h, experts, device=device)
        self.up_gate_proj = _block_linear(operations, h, inner if gelu else 2 * inner, experts, storage, device)
        self.down_proj = _block_linear(operations, inner, h, experts, storage, device)

    def forward(self, x: torch.Tensor, st: _ForwardState) -> torch.Tensor:
        up = self.up_gate_proj(self.pre_norm(x, st.segments), st.segments).float()
        return self.down_proj(self.activation(up), st.segments).float()


class TransformerLayer(nn.Module):
    def __init__(self, config: DiTConfig, index: int, operations, storage, device):
        super().__init__()
        experts = NUM_MODALITIES if index in config.mm_layers else 1
        self.attention = Attention(config, experts, index in config.local_attn_layers, operations, storage, device)
        self.mlp = MLP(config, experts, index in config.gelu7_layers, operations, storage, device)
        self.post_norm = index in config.post_norm_layers
        if self.post_norm:
            self.attn_post_norm = RMSNorm(config.hidden_size, experts, device=device)
            self.mlp_post_norm = RMSNorm(config.hidden_size, experts, device=device)

    def forward(self, x: torch.Tensor, st: _ForwardState) -> torch.Tensor:
        attn = self.attention(x, st)  # compute dtype (post-norm keeps it, as officially)
        if self.post_norm:
            attn = self.attn_post_norm(attn, st.segments)
        x = x + attn
        mlp = self.mlp(x, st)  # fp32
        if self.post_norm:
            mlp = self.mlp_post_norm(mlp, st.segments)
        return x + mlp


class TransformerBlock(nn.Module):
    def __init__(self, config: DiTConfig, operations, storage, device):
        super().__init__()
        self.layers = nn.ModuleList(TransformerLayer(config, i, operations, storage, device)
                                    for i in range(config.num_layers))


class FourierRope(nn.Module):
    """Holds the persistent ``bands`` buffer (official key ``adapter.rope.bands``)."""

    def __init__(self, head_dim: int, device=None):
        super().__init__()
        self.register_buffer("bands", default_rope_bands(head_dim).to(device))


class Adapter(nn.Module):
    """fp32 input embedders (with bias) for the three modalities, plus the RoPE bands."""

    def __init__(self, config: DiTConfig, operations, device):
        super().__init__()
        h = config.hidden_size
        self.video_embedder = _make_fp32_linear(operations, config.video_in_channels, h, True, device)
        self.text_embedder = _make_fp32_linear(operations, config.text_in_channels, h, True, device)
        self.audio_embedder = _make_fp32_linear(operations, config.audio_in_channels, h, True, device)
        self.rope = FourierRope(config.head_dim, device=device)


class MagiHumanDiT(nn.Module):
    """The MagiHuman DiT. No timestep input: the model reads the noise level from the latents."""

    def __init__(self, config: DiTConfig, *, operations=nn, dtype: Optional[torch.dtype] = None,
                 device=None, compute_dtype: torch.dtype | str = torch.bfloat16, storage: StorageLike = None):
        super().__init__()
        self.config = config
        # dtype (the official API) and storage name the same thing: how the block linears are kept
        block_storage = parse_storage(storage if storage is not None else dtype, default=STORAGES["bf16"]).built
        self.local_attention_mode, self.local_block_frames = "window", 1
        self.attention_backend = DEFAULT_BACKEND
        self.fp8_compute = "off"
        self.compute_device: Optional[torch.device] = None  # where forwards run (a host may keep weights elsewhere)
        self.sequence_parallel: Optional[SequenceParallel] = None  # magihuman.parallel.enable_sequence_parallel
        self.adapter = Adapter(config, operations, device)
        self.block = TransformerBlock(config, operations, block_storage, device)
        self.set_compute_dtype(compute_dtype)  # after the layers: "auto" looks at the adapter's device
        h = config.hidden_size
        self.final_norm_video = RMSNorm(h, device=device)
        self.final_norm_audio = RMSNorm(h, device=device)
        self.final_linear_video = _make_fp32_linear(operations, h, config.video_in_channels, False, device)
        self.final_linear_audio = _make_fp32_linear(operations, h, config.audio_in_channels, False, device)
        if operations is nn and str(device) != "meta":
            self.init_random_(0)
        if str(device) != "meta":
            self.store_block_linears_()

    # ------------------------------------------------------------ setup helpers

    @staticmethod
    def default_rope_bands(config: DiTConfig) -> torch.Tensor:
        """Value of the ``adapter.rope.bands`` buffer (for files that lack it)."""
        return default_rope_bands(config.head_dim)

    @torch.no_grad()
    def reset_rope_bands_(self, device=None) -> None:
        """Replace ``adapter.rope.bands`` by its default value (also on a meta-built model whose
        checkpoint lacks the buffer); ``device`` defaults to the embedders' device."""
        device = self.adapter.video_embedder.weight.device if device is None else device
        self.adapter.rope.bands = self.default_rope_bands(self.config).to(device)

    def set_compute_dtype(self, dtype, device=None) -> torch.dtype:
        """bf16 = official numerics; fp32 = faster on CPUs without bf16 matmul units; ``"auto"``:
        the fastest accurate dtype for ``device`` (default: where the weights are; pass the compute
        device when a host offloads them), see :func:`magihuman.device.pick_compute_dtype`.
        Names "bf16"/"fp16"/"fp32" work too. Returns the dtype now in use."""
        if isinstance(dtype, str):
            dtype = resolve_compute_dtype(dtype, self._weight_device() if device is None else device)
        if dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES} or 'auto', got {dtype}")
        self.compute_dtype = dtype
        for m in self.block_linears():
            m.compute_dtype = dtype
        return dtype

    def _weight_device(self) -> torch.device:
        if self.compute_device is not None:
            return torch.device(self.compute_device)
        dev = self.adapter.video_embedder.weight.device
        return torch.device("cpu") if dev.type == "meta" else dev

    def block_linears(self) -> list[BlockLinear]:
        """The four block linears of every layer (``linear_qkv``, ``linear_proj``, ``up_gate_proj``, ``down_proj``)."""
        return [m for layer in self.block.layers for m in (layer.attention.linear_qkv, layer.attention.linear_proj,
                                                           layer.mlp.up_gate_proj, layer.mlp.down_proj)]

    def set_attention_backend(self, name: str) -> None:
        """The attention kernel of THIS model ("sdpa" by default; "flash", "sage", "math" or any name given to
        :func:`magihuman.attention.register_attention_backend`). Checked now, so a missing package fails at
        load time, not at the first step."""
        resolve_attention_backend(name)
        self.attention_backend = name

    def set_fp8_compute(self, mode: str = "off", device=None) -> str:
        """fp8 matmuls for fp8-stored block linears (``torch._scaled_mm``): ``"tensor"`` / ``"token"`` scale the
        activations per tensor / per token; ``"auto"`` = "token" where the device has fp8 matmuls (CUDA Ada /
        Hopper and newer; ``device`` defaults to where the weights are), else off. Off by default: it trades
        accuracy (measured: ``tests/test_fp8_compute.py``) for speed on GPUs with fp8 units. Returns the mode."""
        if mode == "auto":
            dev = torch.device(device) if device is not None else self._weight_device()
            mode = "token" if dev.type == "cuda" and fp8_mm_supported(dev, "token", self.compute_dtype) else "off"
        if mode not in FP8_COMPUTE_MODES:
            raise ValueError(f"fp8 compute must be one of {FP8_COMPUTE_MODES} or 'auto', got {mode!r}")
        if mode != "off" and not fp8_mm_supported(device or self._weight_device(), mode, self.compute_dtype):
            raise ValueError(f"fp8 compute: torch._scaled_mm does not run fp8 matmuls on {device or self._weight_device()}"
                             f" with {mode} scaling and {self.compute_dtype} output in this torch build; use 'off'")
        self.fp8_compute = mode
        for m in self.block_linears():
            m.fp8_compute = mode
        return mode

    def set_local_attention(self, mode: str = "window", block_frames: int = 1) -> None:
        """How attention is restricted. ``"window"`` (default, no masks in the common case): local
        layers attend per block of ``block_frames`` video query frames to the gathered key window
        (1 frame per block needs no mask at all), and text padding in a batch is sliced away per
        sample; works on every attention backend. ``"mask"``: the reference path, dense calls with
        boolean masks (for local layers ``L x L``: ~4 GB at 1080p; masked CPU SDPA is also slower)."""
        if mode not in LOCAL_ATTENTION_MODES:
            raise ValueError(f"local attention mode must be one of {LOCAL_ATTENTION_MODES}, got {mode!r}")
        if int(block_frames) < 1:
            raise ValueError(f"block_frames must be >= 1, got {block_frames}")
        self.local_attention_mode, self.local_block_frames = mode, int(block_frames)

    @torch.no_grad()
    def init_random_(self, seed: int = 0, std: float = 0.02) -> "MagiHumanDiT":
        """Deterministic random init for tests/benchmarks: linears N(0, std), biases 0,
        norm weights 0 (scale 1), RoPE bands at their default."""
        gen = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            if name.endswith("bias") or p.dim() == 1:
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * std)
        self.adapter.rope.bands.copy_(self.default_rope_bands(self.config))
        return self

    @torch.no_grad()
    def store_block_linears_(self, storage: StorageLike = None) -> "MagiHumanDiT":
        """Re-store every block linear's (plain) weight in ``storage`` (default: the storage the model was built
        for), encoded from its current values; used after a random init."""
        for m in self.block_linears():
            m.encode_(storage)
        return self

    # ------------------------------------------------------------ forward

    def _validate(self, video_latent, audio_latent, text_embeds, text_lens) -> list[int]:
        c = self.config
        if video_latent.dim() != 5:
            raise ValueError(f"video_latent must be [B, C, T, H, W], got shape {tuple(video_latent.shape)}")
        b, ch = video_latent.shape[:2]
        patch_volume = PATCH_SIZE[0] * PATCH_SIZE[1] * PATCH_SIZE[2]
        if ch * patch_volume != c.video_in_channels:
            raise ValueError(f"video_latent has {ch} channels; this DiT expects {c.video_in_channels // patch_volume}")
        if audio_latent.dim() != 3 or audio_latent.shape[2] != c.audio_in_channels or audio_latent.shape[1] < 1:
            raise ValueError(f"audio_latent must be [B, N>=1, {c.audio_in_channels}], got {tuple(audio_latent.shape)}")
        if text_embeds.dim() != 3 or text_embeds.shape[2] != c.text_in_channels:
            raise ValueError(f"text_embeds must be [B, L, {c.text_in_channels}], got {tuple(text_embeds.shape)}")
        if audio_latent.shape[0] != b or text_embeds.shape[0] != b:
            raise ValueError(f"batch sizes differ: video {b}, audio {audio_latent.shape[0]}, text {text_embeds.shape[0]}")
        lens = [int(n) for n in (text_lens.tolist() if isinstance(text_lens, torch.Tensor) else text_lens)]
        if len(lens) != b:
            raise ValueError(f"text_lens has {len(lens)} entries for a batch of {b}")
        bad = [n for n in lens if not 1 <= n <= text_embeds.shape[1]]
        if bad:
            raise ValueError(f"text_lens {lens} must lie in 1..{text_embeds.shape[1]} (the text_embeds length)")
        return lens

    def forward(self, video_latent: torch.Tensor, audio_latent: torch.Tensor, text_embeds: torch.Tensor,
                text_lens: Sequence[int], *, coords: str = "v2",
                frame_receptive_field: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
        """Velocities for a batch: video ``[B, C, T, H, W]`` and audio ``[B, N, 64]``, both fp32."""
        lens = self._validate(video_latent, audio_latent, text_embeds, text_lens)
        if coords not in ("v1", "v2"):
            raise ValueError(f"coords must be 'v2' (base/distill) or 'v1' (SR models), got {coords!r}")
        if int(frame_receptive_field) < -1:
            raise ValueError(f"frame_receptive_field must be >= 0, or -1 to disable local attention; got {frame_receptive_field}")
        device = video_latent.device
        _, _, t, h, w = video_latent.shape
        grid = (t // PATCH_SIZE[0], h // PATCH_SIZE[1], w // PATCH_SIZE[2])
        layout = SequenceLayout(grid, audio_latent.shape[1], tuple(lens))
        adapter = self.adapter
        sp = self.sequence_parallel
        shard = None if sp is None else sp.shard(layout)  # sequence parallel: this rank's tokens
        if shard is not None and self.local_attention_mode != "window":
            raise ValueError("sequence parallel runs the 'window' attention plan: set_local_attention('window')")

        video_tokens = video_to_tokens(video_latent.float())  # [B, Nv, C*4] channel order (C, ph, pw)
        audio = audio_latent.float()
        text = text_embeds[:, : layout.max_text].float()
        text = torch.where(layout.text_valid(device)[..., None], text, torch.zeros((), device=device))
        positions = layout.coords(coords)  # [B, L, 9]
        if shard is not None:  # every op before attention is per token: embed only this rank's rows
            video_tokens, audio, text, positions = shard.local_inputs(video_tokens, audio, text, positions)
        x = torch.cat([adapter.video_embedder(video_tokens), adapter.audio_embedder(audio),
                       adapter.text_embedder(text)], dim=1)  # [B, L, hidden] fp32 (sequence parallel: L/N rows)

        cos, sin = rope_cos_sin(positions.to(device), adapter.rope.bands.to(device))
        st = _ForwardState(segments=layout.segments if shard is None else shard.segments, cos=cos.unsqueeze(2),
                           sin=sin.unsqueeze(2), compute_dtype=self.compute_dtype,
                           attention=resolve_attention_backend(self.attention_backend),
                           use_masks=self.local_attention_mode == "mask", sequence=sp)
        frf = int(frame_receptive_field)
        local = bool(self.config.local_attn_layers) and frf >= 0
        if st.use_masks:
            st.mask = attention_mask(layout, None, device)
            st.local_mask = attention_mask(layout, local_attention_allowed(layout, frf, device), device) \
                if local else st.mask
        else:
            if local:
                st.local_window = LocalWindow(layout.num_video, grid[1] * grid[2], frf, self.local_block_frames)
            if shard is not None:
                st.key_lens = shard.key_lens(layout)  # global indices: attention sees every token
            elif layout.has_padding:
                head = layout.num_video + layout.num_audio
                st.key_lens = tuple(head + n for n in layout.text_lens)
        for layer in self.block.layers:
            x = layer(x, st)

        (v0, v1), (a0, a1), _ = st.segments
        video = self.final_linear_video(self.final_norm_video(x[:, v0:v1].float()))  # [B, Nv, 4*C] order (ph, pw, C)
        audio = self.final_linear_audio(self.final_norm_audio(x[:, a0:a1].float()))  # [B, N, 64]
        if shard is not None:  # every rank gets the whole velocity
            video, audio = sp.gather_outputs(shard, video, audio)
        return tokens_to_video(video, grid).float(), audio.float()


@functools.lru_cache(maxsize=32)
def _table(config_json: str) -> dict[str, WeightSpec]:
    return _module_weight_table(MagiHumanDiT(DiTConfig.from_dict(json.loads(config_json)), device="meta"))


def weight_table(config: DiTConfig) -> dict[str, WeightSpec]:
    """Every state-dict key of the DiT of ``config`` (the official fused layout, in module order) with its shape;
    block linears with (rows per expert, columns, experts). Built once per config on the meta device."""
    return _table(json.dumps(config.to_dict(), sort_keys=True))
