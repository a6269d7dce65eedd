"""T5Gemma encoder (google/t5gemma-9b-9b-ul2) in plain PyTorch: the MagiHuman text encoder.

A bidirectional Gemma-2 stack: token embedding × sqrt(hidden); per layer pre/post RMSNorm around
self-attention and around a gelu-tanh gated MLP (RMSNorm weights stored zero-centred: ``× (1 + w)``);
GQA with queries scaled by ``query_pre_attn_scalar ** -0.5``; RoPE (rotate-half); layers alternate
between a bidirectional sliding window (key ``j`` visible from query ``i`` iff ``|i - j| < window``)
and full attention; final RMSNorm.

Attention-logit soft-capping is OFF by default: the official code loads the encoder with
transformers 4.56's default attention (SDPA), and its SDPA path silently drops the config's
``attn_logit_softcapping`` (50). The DiT was trained on embeddings computed that way.
``attn_softcap=True`` applies it (what transformers' "eager" attention computes).

Numerics follow transformers: everything in the weight dtype except RMSNorm (fp32 inside) and the
RoPE tables (fp32, then cast); :meth:`T5GemmaEncoder.forward` returns fp32. Bit-identical to
transformers 4.56.0's ``T5GemmaEncoderModel`` (default attention) on the tiny model, fp32 and bf16.

transformers 5.x differs from the official 4.56 in two ways this module does NOT follow: it refuses
SDPA for T5Gemma and defaults to eager attention (so it soft-caps), and it counts the bidirectional
window inclusively (``|i - j| <= window``). The first changes the embeddings (the DiT was trained
without the cap); the second never matters here (prompts are far shorter than the 4096 window).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import attention as shared_attention
from ..attention import repeat_kv_heads, resolve_attention_backend, sdpa_attention
from ..geometry import MAX_TEXT_TOKENS
from ..ops import fetch_weight, layer_class, tag_operations
from ..storage import PLAIN, STORAGES, BlockLinear, CompactEmbedding, StorageLike, compact_layers, parse_storage

log = logging.getLogger(__name__)

TEXT_TARGET_LENGTH = MAX_TEXT_TOKENS  # official t5_gemma_target_length

_GELU_TANH = ("gelu_pytorch_tanh", "gelu_new", "gelu_tanh", "gelu_fast")
_GELU_EXACT = ("gelu",)


@dataclass
class T5GemmaEncoderConfig:
    """The encoder half of a Hugging Face T5Gemma config (field names as in transformers)."""

    vocab_size: int = 256000
    hidden_size: int = 3584
    intermediate_size: int = 14336
    num_hidden_layers: int = 42
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    head_dim: int = 256
    hidden_activation: str = "gelu_pytorch_tanh"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    query_pre_attn_scalar: float = 256
    sliding_window: int | None = 4096
    layer_types: tuple[str, ...] = ()
    attn_logit_softcapping: float | None = 50.0
    attention_bias: bool = False
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        if not self.layer_types:  # transformers' default: sliding, full, sliding, full, ...
            self.layer_types = tuple("sliding_attention" if (i + 1) % 2 else "full_attention"
                                     for i in range(self.num_hidden_layers))
        self.layer_types = tuple(self.layer_types)
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(f"layer_types has {len(self.layer_types)} entries for {self.num_hidden_layers} layers")
        bad = sorted(set(self.layer_types) - {"sliding_attention", "full_attention"})
        if bad:
            raise ValueError(f"unknown layer type(s) {bad}: expected 'sliding_attention' or 'full_attention'")
        if "sliding_attention" in self.layer_types and not self.sliding_window:
            raise ValueError("config has sliding_attention layers but no sliding_window")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"{self.num_attention_heads} attention heads do not split into "
                             f"{self.num_key_value_heads} key/value heads")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for RoPE")
        if self.hidden_activation not in _GELU_TANH + _GELU_EXACT:
            raise ValueError(f"unsupported hidden_activation {self.hidden_activation!r}; T5Gemma uses "
                             f"'gelu_pytorch_tanh'")

    @classmethod
    def from_hf(cls, d: dict) -> "T5GemmaEncoderConfig":
        """From a full T5Gemma config.json dict (its ``encoder`` part) or from that part alone."""
        if not isinstance(d, dict):
            raise TypeError(f"expected a config dict, got {type(d).__name__}")
        enc = d.get("encoder", d)
        if not isinstance(enc, dict) or "hidden_size" not in enc:
            raise ValueError("not a T5Gemma config: no 'encoder' section with 'hidden_size' "
                             "(pass the model folder's config.json contents)")
        rope = enc.get("rope_parameters") or enc.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ValueError(f"rope type {rope_type!r} is not supported (T5Gemma uses the default RoPE)")
        theta = rope.get("rope_theta", enc.get("rope_theta", cls.rope_theta))
        kwargs = {k: enc[k] for k in cls.__dataclass_fields__ if k in enc and enc[k] is not None}
        kwargs["rope_theta"] = float(theta)
        if "attn_logit_softcapping" in enc:  # an explicit null means "no soft-cap"
            kwargs["attn_logit_softcapping"] = enc["attn_logit_softcapping"]
        if "sliding_window" in enc:
            kwargs["sliding_window"] = enc["sliding_window"]
        if "head_dim" not in enc:
            kwargs["head_dim"] = enc["hidden_size"] // enc["num_attention_heads"]
        if "vocab_size" not in enc and "vocab_size" in d:
            kwargs["vocab_size"] = d["vocab_size"]
        return cls(**kwargs)


# ----------------------------------------------------------------------------------------- layers
class RMSNorm(nn.Module):
    """Gemma RMSNorm: fp32 inside, weight stored zero-centred (``x̂ · (1 + w)``), result in x's dtype."""

    def __init__(self, dim: int, eps: float, *, operations=nn, dtype=None, device=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim, dtype=dtype, device=device))
        tag_operations(self, operations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = fetch_weight(self, torch.float32, x.device)
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * (1.0 + w)).to(x.dtype)


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos/sin [L, head_dim] for rotate-half RoPE, computed in fp32 then cast (as transformers)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device)
                                .float() / head_dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]  # [L, head_dim/2]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def attention(q, k, v, mask, scale: float, softcap: float | None = None, backend: str = "sdpa") -> torch.Tensor:
    """q [B, Hq, L, D], k/v [B, Hkv, L, D], mask bool [B, 1, L, L] (True = visible) or None -> [B, Hq, L, D].

    Without ``softcap``: SDPA (what the official run used), or the model's attention ``backend`` when one
    other than "sdpa" was chosen and the scale is the default 1/sqrt(D) (true for the 9B: scalar 256 =
    head_dim). With ``softcap``: explicit scores, ``cap·tanh(s/cap)``, softmax in fp32 (transformers' eager).
    """
    if softcap is None and scale == q.shape[-1] ** -0.5 and backend != "sdpa":
        return shared_attention(q, k, v, mask, backend=backend)  # the model's kernel (same math, default scale)
    if softcap is None:  # native GQA only where a fused kernel takes it (never the O(L^2) math fallback)
        return sdpa_attention(q, k, v, mask, scale=scale)
    k, v = repeat_kv_heads(k, v, q.shape[1])  # [B, Hq, L, D]
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    scores = torch.tanh(scores / softcap) * softcap
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs, v)


class SelfAttention(nn.Module):
    def __init__(self, cfg: T5GemmaEncoderConfig, *, operations=nn, storage=None, device=None):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = (cfg.num_attention_heads, cfg.num_key_value_heads,
                                                            cfg.head_dim)
        self.scale = float(cfg.query_pre_attn_scalar) ** -0.5
        h, bias = cfg.hidden_size, cfg.attention_bias
        lin = dict(bias=bias, storage=storage, device=device)
        self.q_proj = _linear(operations, h, self.num_heads * self.head_dim, **lin)
        self.k_proj = _linear(operations, h, self.num_kv_heads * self.head_dim, **lin)
        self.v_proj = _linear(operations, h, self.num_kv_heads * self.head_dim, **lin)
        self.o_proj = _linear(operations, self.num_heads * self.head_dim, h, **lin)

    def forward(self, x, cos, sin, mask, softcap, backend: str = "sdpa"):
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # [B, Hq, L, D]
        k = self.k_proj(x).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, L, D]
        v = self.v_proj(x).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        out = attention(q, k, v, mask, self.scale, softcap, backend)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))


class GatedMLP(nn.Module):
    def __init__(self, cfg: T5GemmaEncoderConfig, *, operations=nn, storage=None, device=None):
        super().__init__()
        h, i = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = _linear(operations, h, i, bias=False, storage=storage, device=device)
        self.up_proj = _linear(operations, h, i, bias=False, storage=storage, device=device)
        self.down_proj = _linear(operations, i, h, bias=False, storage=storage, device=device)
        self.approximate = "tanh" if cfg.hidden_activation in _GELU_TANH else "none"

    def forward(self, x):
        gate = F.gelu(self.gate_proj(x), approximate=self.approximate)
        return self.down_proj(gate * self.up_proj(x))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: T5GemmaEncoderConfig, layer_type: str, *, operations=nn, storage, dtype=None, device=None):
        super().__init__()
        self.layer_type = layer_type
        norm = dict(operations=operations, dtype=dtype, device=device)
        self.pre_self_attn_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **norm)
        self.self_attn = SelfAttention(cfg, operations=operations, storage=storage, device=device)
        self.post_self_attn_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **norm)
        self.pre_feedforward_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **norm)
        self.mlp = GatedMLP(cfg, operations=operations, storage=storage, device=device)
        self.post_feedforward_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **norm)

    def forward(self, x, cos, sin, mask, softcap, backend: str = "sdpa"):
        attn = self.self_attn(self.pre_self_attn_layernorm(x), cos, sin, mask, softcap, backend)
        x = x + self.post_self_attn_layernorm(attn)
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


def _linear(operations, in_features: int, out_features: int, *, bias: bool, storage, device) -> BlockLinear:
    """A projection: ``operations.BlockLinear`` (any storage: plain, fp8, GGUF)."""
    return layer_class(operations, "BlockLinear", BlockLinear)(in_features, out_features, 1, bias, storage=storage,
                                                               device=device)


class _EncoderStack(nn.Module):
    """Holds the parameters under the checkpoint's names (``embed_tokens``, ``layers.N``, ``norm``)."""

    def __init__(self, cfg: T5GemmaEncoderConfig, *, operations=nn, storage, dtype=None, device=None):
        super().__init__()
        self.embed_tokens = layer_class(operations, "CompactEmbedding", CompactEmbedding)(
            cfg.vocab_size, cfg.hidden_size, storage=storage, device=device, padding_idx=cfg.pad_token_id)
        self.layers = nn.ModuleList(EncoderLayer(cfg, t, operations=operations, storage=storage, dtype=dtype,
                                                 device=device) for t in cfg.layer_types)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, operations=operations, dtype=dtype, device=device)


def sliding_window_mask(length: int, window: int, device=None) -> torch.Tensor:
    """Bool [L, L]: query i sees key j iff |i - j| < window (transformers 4.56's bidirectional window)."""
    idx = torch.arange(length, device=device)
    return (idx[:, None] - idx[None, :]).abs() < window


# ----------------------------------------------------------------------------------------- model
class T5GemmaEncoder(nn.Module):
    """The T5Gemma encoder; ``state_dict()`` keys are ``encoder.*`` as in a T5Gemma checkpoint."""

    def __init__(self, config: T5GemmaEncoderConfig, *, operations=nn, dtype=None, device=None,
                 attn_softcap: bool = False, storage: StorageLike = None):
        super().__init__()
        self.config = config
        self.attn_softcap = attn_softcap
        # dtype (the official API) and storage name the same thing: how the projections and the embedding are kept;
        # norms and activations are in the plain dtype (bf16 under compact storage), fp32 by default
        st = parse_storage(storage if storage is not None else dtype, default=STORAGES["fp32"]).built
        plain = st.dtype if st.kind == PLAIN else torch.bfloat16
        if plain == torch.float16:
            log.warning("T5Gemma in float16: Gemma-2 activations can overflow fp16; the official run used bfloat16")
        self.compute_dtype = plain  # activations in the plain dtype, as transformers runs them
        self.encoder = _EncoderStack(config, operations=operations, storage=st, dtype=plain, device=device)
        for m in self.linear_layers():
            m.compute_dtype = self.compute_dtype
        if str(device) != "meta":
            for _, m in compact_layers(self):
                m.encode_()
        self.tokenizer = None
        self.attention_backend = "sdpa"
        self.compute_device: torch.device | None = None  # where encoding runs (set by loaders and hosts)

    def linear_layers(self) -> list[BlockLinear]:
        """The attention and MLP projections."""
        return [m for layer in self.encoder.layers for m in (layer.self_attn.q_proj, layer.self_attn.k_proj,
                layer.self_attn.v_proj, layer.self_attn.o_proj, layer.mlp.gate_proj, layer.mlp.up_proj,
                layer.mlp.down_proj)]

    @torch.no_grad()
    def set_attention_backend(self, name: str) -> None:
        """The attention kernel of THIS encoder (default "sdpa", the official numerics); see
        :mod:`magihuman.attention`. Used only where it computes the same math (no soft-cap, default scale)."""
        resolve_attention_backend(name)  # validates (and loads an optional kernel) now, not mid-prompt
        self.attention_backend = name

    @classmethod
    def from_config(cls, hf_config_dict: dict, *, operations=nn, dtype=None, device=None,
                    attn_softcap: bool = False, storage: StorageLike = None) -> "T5GemmaEncoder":
        """Build from a Hugging Face T5Gemma config dict (its ``encoder`` part is used)."""
        return cls(T5GemmaEncoderConfig.from_hf(hf_config_dict), operations=operations, dtype=dtype,
                   device=device, attn_softcap=attn_softcap, storage=storage)

    # ------------------------------------------------------------------ forward
    def _masks(self, attention_mask: torch.Tensor, length: int):
        """Per layer type: bool [B, 1, L, L] or None when every key is visible."""
        valid = attention_mask.to(torch.bool)  # [B, L]
        if not bool(valid.any(dim=1).all()):
            bad = [i for i, row in enumerate(valid.any(dim=1).tolist()) if not row]
            raise ValueError(f"attention_mask rows {bad} have no tokens: every sample needs at least one token")
        padded = not bool(valid.all())
        key_mask = valid[:, None, None, :]  # [B, 1, 1, L]
        full = key_mask.expand(-1, 1, length, -1) if padded else None
        window = self.config.sliding_window
        if window is None or window >= length:
            return {"full_attention": full, "sliding_attention": full}
        band = sliding_window_mask(length, window, attention_mask.device)[None, None]  # [1, 1, L, L]
        sliding = band & key_mask  # [B, 1, L, L]
        # A padding query farther than the window from every real token would see nothing (NaN row that
        # then poisons the values); let such rows see all real tokens. Padding rows are not in the result.
        empty = ~sliding.any(dim=-1, keepdim=True)
        return {"full_attention": full, "sliding_attention": sliding | (empty & key_mask)}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [B, L] int, attention_mask [B, L] (1 = token, 0 = padding) -> last_hidden_state [B, L, H] fp32."""
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [B, L], got shape {tuple(input_ids.shape)}")
        b, n = input_ids.shape
        if n == 0:
            raise ValueError("input_ids is empty: tokenize at least one token")
        if attention_mask is None:
            attention_mask = input_ids != self.config.pad_token_id
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape "
                             f"{tuple(input_ids.shape)}")
        if int(input_ids.min()) < 0 or int(input_ids.max()) >= self.config.vocab_size:
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}); got "
                             f"[{int(input_ids.min())}, {int(input_ids.max())}] (tokenizer/model mismatch?)")
        dt = self.compute_dtype
        stack = self.encoder
        x = stack.embed_tokens(input_ids, dt)  # [B, L, H]
        x = x * torch.tensor(self.config.hidden_size ** 0.5, dtype=dt)  # normaliser rounded to dt, as HF
        cos, sin = rope_tables(torch.arange(n, device=x.device), self.config.head_dim, self.config.rope_theta, dt)
        masks = self._masks(attention_mask.to(x.device), n)
        softcap = self.config.attn_logit_softcapping if self.attn_softcap else None
        for layer in stack.layers:
            x = layer(x, cos, sin, masks[layer.layer_type], softcap, self.attention_backend)
        return stack.norm(x).float()

    # ------------------------------------------------------------------ text -> embeddings
    def tokenize(self, prompts: list[str]) -> list[list[int]]:
        if self.tokenizer is None:
            raise RuntimeError("this encoder has no tokenizer: load it with T5GemmaEncoder.from_pretrained(...) "
                               "or set .tokenizer = GemmaTokenizer.from_path(<folder>)")
        if isinstance(prompts, str):
            prompts = [prompts]
        for i, p in enumerate(prompts):
            if not isinstance(p, str) or not p.strip():
                raise ValueError(f"prompt {i} is empty or whitespace-only: write a text prompt "
                                 f"(use a negative prompt text, not an empty string, for unconditional passes)")
        return self.tokenizer(list(prompts))

    @torch.inference_mode()
    def encode(self, prompts: list[str], *, max_length: int = TEXT_TARGET_LENGTH, warn_trim: bool = True):
        """prompts -> (embeds [B, max_length, H] fp32, lens list[int]).

        As the official pipeline: each prompt is encoded alone at its full length, the hidden states are
        cast to fp16 and back to fp32, then zero-padded or trimmed to ``max_length``; ``lens`` holds the
        real length (≤ max_length). Trimming keeps the first ``max_length`` token states of the full run, with a
        warning to shorten the prompt (``warn_trim=False``: a debug line, for texts trimmed on purpose).
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        ids_list = self.tokenize(prompts)
        device = self.compute_device  # a host may keep the weights (the embedding table) elsewhere
        if device is None:
            device = self.encoder.embed_tokens.weight.device
            device = torch.device("cpu") if device.type == "meta" else device
        out = torch.zeros(len(ids_list), max_length, self.config.hidden_size, dtype=torch.float32)
        lens = []
        for i, ids in enumerate(ids_list):
            ids_t = torch.tensor([ids], dtype=torch.long, device=device)
            hidden = self(ids_t, torch.ones_like(ids_t))[0].half().float().cpu()  # [L, H]
            if hidden.shape[0] > max_length and warn_trim:
                log.warning("T5Gemma prompt %d has %d tokens; the DiT takes %d: trimming the last %d token "
                            "embeddings (shorten the prompt to keep all of it)", i, hidden.shape[0], max_length,
                            hidden.shape[0] - max_length)
            elif hidden.shape[0] > max_length:
                log.debug("T5Gemma prompt %d has %d tokens; the DiT takes %d: trimmed to them, as intended", i,
                          hidden.shape[0], max_length)
            n = min(hidden.shape[0], max_length)
            out[i, :n] = hidden[:n]
            lens.append(n)
        return out, lens

    # ------------------------------------------------------------------ files
    @classmethod
    def from_pretrained(cls, folder_or_file: str | os.PathLike, *, storage: StorageLike = None, dtype=None,
                        device="cpu", operations=nn, tokenizer: str | os.PathLike | None = None,
                        attn_softcap: bool = False, gguf: str | None = None,
                        config: str | os.PathLike | None = None) -> "T5GemmaEncoder":
        """Load the encoder (only its tensors) from an HF folder or an encoder-only .safetensors file.

        Folder: config.json + model.safetensors or model.safetensors.index.json shards (+ tokenizer files).
        Keys ``model.encoder.*`` (full T5GemmaForConditionalGeneration save) or ``encoder.*`` are accepted;
        decoder and head tensors are never read. Single file: config JSON in metadata key ``config`` (or a
        config.json beside it, or ``config=`` a config.json or its folder); tokenizer.json/tokenizer.model beside it,
        in the ``config=`` folder, or given as ``tokenizer=``. A ``.gguf`` written by ``python -m magihuman convert``
        carries config and tokenizer; another with Hugging Face names (the published Q6_K one) may also sit in a
        folder with its config.json and tokenizer.json. ``storage``: how the projections
        and the embedding are kept ("file", the default: a GGUF's blocks stay, the rest bf16; "bf16", "fp8",
        "Q8_0", ...); ``dtype=`` / ``gguf=`` are its older spelling. The reading is
        :func:`magihuman.loaders.load_text_encoder` (the models hold no file code; this public entry point
        forwards to it).
        """
        from ..loaders.text_encoder import load_text_encoder  # noqa: PLC0415 - the file code, imported when used

        return load_text_encoder(cls, folder_or_file, storage=storage, dtype=dtype, device=device,
                                 operations=operations, tokenizer=tokenizer, attn_softcap=attn_softcap, gguf=gguf,
                                 config=config)


# ----------------------------------------------------------------------------------------- tiny model
def tiny_hf_config() -> dict:
    """A tiny T5Gemma config.json dict: hidden 64 (the tiny DiT's text_in_channels), 4 layers alternating
    sliding (window 6) / full attention, GQA 4:2, head_dim 24 (heads·head_dim != hidden, as in 9B)."""
    module = {
        "vocab_size": 512,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 24,
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "query_pre_attn_scalar": 32,
        "sliding_window": 6,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": 2,
        "tie_word_embeddings": True,
    }
    return {
        "architectures": ["T5GemmaForConditionalGeneration"],
        "model_type": "t5gemma",
        "encoder": dict(module),
        "decoder": dict(module),
        "is_encoder_decoder": True,
        "dropout_rate": 0.0,
        "attention_dropout": 0.0,
        "classifier_dropout_rate": 0.0,
        "tie_word_embeddings": True,
        "vocab_size": 512,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": 2,
        "torch_dtype": "float32",
    }


def tiny_state_dict(config: dict | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random but well-scaled encoder weights (``encoder.*``) for a (tiny) config."""
    cfg = T5GemmaEncoderConfig.from_hf(config or tiny_hf_config())
    shapes = {k: v.shape for k, v in T5GemmaEncoder(cfg, device="meta").state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key in sorted(shapes):
        shape = shapes[key]
        if key.endswith("embed_tokens.weight"):
            t = torch.randn(shape, generator=g) * (1.0 / math.sqrt(cfg.hidden_size))
        elif "norm" in key:
            t = torch.randn(shape, generator=g) * 0.2
        else:
            t = torch.randn(shape, generator=g) / math.sqrt(shape[-1])
        state[key] = t
    return state
