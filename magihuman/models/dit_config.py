"""DiT hyper-parameters, named as in the official ``ModelConfig`` (inference/common/config.py)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


def sr_1080p_local_attn_layers(num_layers: int) -> list[int]:
    """1080p SR model: every layer is local except 3, 7, 11, ..., 31 (official SR2_1080 arch override)."""
    return [i for i in range(num_layers) if i >= 32 or i % 4 != 3]


SR_1080P_LOCAL_ATTN_LAYERS: tuple[int, ...] = tuple(sr_1080p_local_attn_layers(40))


def swiglu_intermediate_size(hidden_size: int) -> int:
    """Inner width of a swiglu7 MLP (official TransFormerLayer rule)."""
    return int(hidden_size * 4 * 2 / 3) // 4 * 4


@dataclass
class DiTConfig:
    num_layers: int = 40
    hidden_size: int = 5120
    head_dim: int = 128
    num_query_groups: int = 8
    video_in_channels: int = 48 * 4
    audio_in_channels: int = 64
    text_in_channels: int = 3584
    mm_layers: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 36, 37, 38, 39])
    gelu7_layers: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    post_norm_layers: list[int] = field(default_factory=list)
    local_attn_layers: list[int] = field(default_factory=list)
    enable_attn_gating: bool = True

    # ---- derived sizes (official post_override_config / TransFormerLayer) ----
    @property
    def num_heads_q(self) -> int:
        return self.hidden_size // self.head_dim

    @property
    def num_heads_kv(self) -> int:
        return self.num_query_groups

    @property
    def swiglu_intermediate_size(self) -> int:
        return swiglu_intermediate_size(self.hidden_size)

    @property
    def gelu_intermediate_size(self) -> int:
        return self.hidden_size * 4

    @property
    def qkv_out_features(self) -> int:
        """Per-expert output width of the fused ``linear_qkv``: q | k | v | gate."""
        gate = self.num_heads_q if self.enable_attn_gating else 0
        return (self.num_heads_q + 2 * self.num_heads_kv) * self.head_dim + gate

    def __post_init__(self) -> None:
        self.mm_layers = sorted(int(i) for i in self.mm_layers)
        self.gelu7_layers = sorted(int(i) for i in self.gelu7_layers)
        self.post_norm_layers = sorted(int(i) for i in self.post_norm_layers)
        self.local_attn_layers = sorted(int(i) for i in self.local_attn_layers)
        if self.hidden_size % self.head_dim:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of head_dim {self.head_dim}")
        if self.head_dim % 8:
            raise ValueError(f"head_dim {self.head_dim} must be a multiple of 8 (RoPE uses head_dim//8 bands)")
        if self.num_heads_q % self.num_query_groups:
            raise ValueError(f"{self.num_heads_q} query heads do not split into {self.num_query_groups} groups")
        for name in ("mm_layers", "gelu7_layers", "post_norm_layers", "local_attn_layers"):
            bad = [i for i in getattr(self, name) if not 0 <= i < self.num_layers]
            if bad:
                raise ValueError(f"{name} has layer indices outside 0..{self.num_layers - 1}: {bad}")

    @classmethod
    def from_dict(cls, d: dict) -> "DiTConfig":
        """Build from an official arch-config dict; official-only fields (num_heads_q, params_dtype,
        tread_config, activation_type, checkpoint_qk_layernorm_rope, ...) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def preset(cls, name: str) -> "DiTConfig":
        """``distill`` | ``base`` | ``sr_540p`` | ``sr_1080p`` | ``tiny`` | ``tiny_sr_1080p``."""
        if name in ("distill", "base", "sr_540p"):
            return cls()
        if name == "sr_1080p":
            return cls(local_attn_layers=list(SR_1080P_LOCAL_ATTN_LAYERS))
        if name in ("tiny", "tiny_sr_1080p"):
            return cls(
                num_layers=4,
                hidden_size=128,
                head_dim=32,
                num_query_groups=2,
                text_in_channels=64,
                mm_layers=[0, 3],
                gelu7_layers=[0],
                local_attn_layers=sr_1080p_local_attn_layers(4) if name == "tiny_sr_1080p" else [],
            )
        raise ValueError(
            f"unknown DiT preset {name!r}; choose one of distill, base, sr_540p, sr_1080p, tiny, tiny_sr_1080p"
        )
