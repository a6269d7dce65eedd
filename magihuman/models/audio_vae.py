"""Stable Audio Open 1.0 "Oobleck" audio autoencoder (the MagiHuman audio VAE), pure PyTorch.

Stereo waveform <-> 64-channel latent, 2048 samples per latent step. The layer layout, paddings,
dilations and parameter names follow the released ``model.safetensors`` (``pretransform.model.``
subtree), so the released weights load strictly once the prefix is stripped.

Two facts about the release worth knowing:
- Convolutions are stored in the old weight-norm form ``weight_g`` / ``weight_v`` with
  ``W = g * v / ||v||`` (norm over every dim but 0; for the transposed convolutions dim 0 is the
  *input* channel). We fold them into a plain ``weight`` on load (the decomposition is only a
  training device), so every layer is a plain ``operations.Conv1d`` / ``ConvTranspose1d`` that a
  host such as ComfyUI can cast and offload. :func:`to_released_state_dict` writes the released form.
- The model_config says ``sample_rate: 44100``, but MagiHuman feeds and reads this VAE at 51 200 Hz
  (the official pipeline encodes audio resampled to 51 200 Hz and resamples the decoded waveform by
  441/512 before writing it as 44.1 kHz). :attr:`OobleckVAE.sample_rate` is therefore 51 200, the
  true rate of the waveforms going in and out; 25 latent steps per second = one per video frame.

Encoding is deterministic here: :meth:`OobleckVAE.encode` returns the posterior mean. The official
encode draws ``mean + stdev * noise`` (``stdev = softplus(scale) + 1e-4``), which adds a faint hiss
to the reference latent; ``encode(..., sample=True, generator=g)`` reproduces that behaviour.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CheckpointError
from ..geometry import AUDIO_SAMPLE_RATE
from ..ops import tag_operations

__all__ = [
    "OobleckVAE",
    "Snake",
    "fold_weight_norm",
    "to_released_state_dict",
    "release_model_config",
    "tiny_model_config",
    "AudioVAELoadError",
    "PRETRANSFORM_PREFIX",
]

PRETRANSFORM_PREFIX = "pretransform.model."
TRUE_SAMPLE_RATE = AUDIO_SAMPLE_RATE  # what MagiHuman feeds the VAE and what its decoder really produces
RESIDUAL_DILATIONS = (1, 3, 9)

# Weight-norm key suffixes: old torch.nn.utils.weight_norm, and the newer parametrization form.
_WN_FORMS = (("weight_g", "weight_v"), ("parametrizations.weight.original0", "parametrizations.weight.original1"))


# a file or state dict does not fit the Oobleck audio VAE: the engine's one error family for weights files and their configs.
AudioVAELoadError = CheckpointError


# ----------------------------------------------------------------------------- configs


def release_model_config() -> dict:
    """The structure of stable-audio-open-1.0 ``model_config.json`` (VAE part as released)."""
    vae_encoder = {"in_channels": 2, "channels": 128, "c_mults": [1, 2, 4, 8, 16], "strides": [2, 4, 4, 8, 8],
                   "latent_dim": 128, "use_snake": True}
    vae_decoder = {"out_channels": 2, "channels": 128, "c_mults": [1, 2, 4, 8, 16], "strides": [2, 4, 4, 8, 8],
                   "latent_dim": 64, "use_snake": True, "final_tanh": False}
    return {
        "model_type": "diffusion_cond",
        "sample_size": 2097152,
        "sample_rate": 44100,
        "audio_channels": 2,
        "model": {
            "pretransform": {
                "type": "autoencoder",
                "iterate_batch": True,
                "config": {
                    "encoder": {"type": "oobleck", "requires_grad": False, "config": vae_encoder},
                    "decoder": {"type": "oobleck", "config": vae_decoder},
                    "bottleneck": {"type": "vae"},
                    "latent_dim": 64,
                    "downsampling_ratio": 2048,
                    "io_channels": 2,
                },
            },
            "conditioning": {
                "configs": [
                    {"id": "prompt", "type": "t5", "config": {"t5_model_name": "t5-base", "max_length": 128}},
                    {"id": "seconds_start", "type": "number", "config": {"min_val": 0, "max_val": 512}},
                    {"id": "seconds_total", "type": "number", "config": {"min_val": 0, "max_val": 512}},
                ],
                "cond_dim": 768,
            },
            "diffusion": {"type": "dit", "config": {"io_channels": 64, "embed_dim": 1536, "depth": 24, "num_heads": 24}},
            "io_channels": 64,
        },
    }


def tiny_model_config() -> dict:
    """The release config with tiny channel counts (strides still multiply to 2048, latent 64)."""
    cfg = release_model_config()
    vae = cfg["model"]["pretransform"]["config"]
    for part in ("encoder", "decoder"):
        vae[part]["config"]["channels"] = 4
        vae[part]["config"]["c_mults"] = [1, 2, 4, 8, 8]
    return cfg


def _autoencoder_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The autoencoder part of a full model_config.json, or the dict itself if it already is one."""
    if "model" in config and isinstance(config["model"], Mapping):
        model = config["model"]
        if "pretransform" in model:
            return model["pretransform"]["config"]
        if "encoder" in model:  # a standalone autoencoder config {"model_type": "autoencoder", "model": {...}}
            return model
    if "encoder" in config and "decoder" in config:
        return config
    raise AudioVAELoadError(
        "not a Stable Audio model_config: expected model.pretransform.config (full stable-audio-open-1.0 "
        "model_config.json) or an autoencoder dict with 'encoder' and 'decoder'"
    )


# ----------------------------------------------------------------------------- layers


def _weight_norm_fold(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``g * v / ||v||`` with the norm over every dim but 0 (computed in fp32, returned in v's dtype)."""
    v32 = v.float()
    norm = v32.reshape(v32.shape[0], -1).norm(dim=1).reshape((-1,) + (1,) * (v.dim() - 1))
    return (g.float().reshape(norm.shape) * v32 / norm).to(v.dtype)


def fold_weight_norm(state_dict: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """Replace each ``<m>.weight_g`` / ``<m>.weight_v`` pair (or the parametrization form) under
    ``prefix`` by ``<m>.weight``. Other keys pass through; an unpaired half is left as it is."""
    out = dict(state_dict)
    for g_suffix, v_suffix in _WN_FORMS:
        for key in list(out):
            if not (key.startswith(prefix) and key.endswith("." + g_suffix)):
                continue
            base = key[: -len(g_suffix)]
            vkey = base + v_suffix
            if vkey in out:
                out[base + "weight"] = _weight_norm_fold(out.pop(key), out.pop(vkey))
    return out


def to_released_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Folded state dict -> the released weight-norm form (``g = ||W||``, ``v = W``, so g·v/‖v‖ = W)."""
    out: dict[str, torch.Tensor] = {}
    for key, t in state_dict.items():
        if key.endswith(".weight") and t.dim() == 3:
            base = key[: -len("weight")]
            norm = t.float().reshape(t.shape[0], -1).norm(dim=1).reshape(-1, 1, 1)
            out[base + "weight_g"] = norm.to(t.dtype)
            out[base + "weight_v"] = t.clone()
        else:
            out[key] = t
    return out


class Snake(nn.Module):
    """SnakeBeta with log-scale parameters: ``x + sin²(e^alpha · x) / (e^beta + 1e-9)`` per channel.

    Computed in fp32 (the squared sine of a large bf16 argument is meaningless), returned in x's dtype.
    """

    def __init__(self, channels: int, *, dtype=None, device=None):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels, dtype=dtype, device=device))
        self.beta = nn.Parameter(torch.zeros(channels, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, L]
        a = self.alpha.to(device=x.device, dtype=torch.float32).exp()[:, None]
        b = self.beta.to(device=x.device, dtype=torch.float32).exp()[:, None]
        x32 = x.float()
        return (x32 + (1.0 / (b + 1e-9)) * torch.sin(x32 * a).pow(2)).to(x.dtype)  # official operation order


class _Layers(nn.Module):
    """A numbered ``layers`` stack (the released key names are ``...layers.<i>...``)."""

    def __init__(self, *mods: nn.Module):
        super().__init__()
        self.layers = nn.Sequential(*mods)

    def forward(self, x):
        return self.layers(x)


class _ResidualUnit(_Layers):
    def forward(self, x):
        return x + self.layers(x)


class _Builder:
    """Builds layers through the injected ``operations`` namespace, remembering dtype/device."""

    def __init__(self, operations, dtype, device, use_snake: bool):
        self.ops, self.dtype, self.device, self.use_snake = operations, dtype, device, use_snake

    def act(self, channels: int) -> nn.Module:
        if self.use_snake:
            return Snake(channels, dtype=self.dtype, device=self.device)
        return nn.ELU()

    def conv(self, cin, cout, kernel, *, stride=1, dilation=1, padding=0, bias=True) -> nn.Module:
        m = self.ops.Conv1d(cin, cout, kernel, stride=stride, dilation=dilation, padding=padding, bias=bias,
                            dtype=self.dtype, device=self.device)
        return tag_operations(m, self.ops)

    def conv_t(self, cin, cout, kernel, *, stride, padding) -> nn.Module:
        m = self.ops.ConvTranspose1d(cin, cout, kernel, stride=stride, padding=padding,
                                     dtype=self.dtype, device=self.device)
        return tag_operations(m, self.ops)

    def residual(self, channels: int, dilation: int) -> nn.Module:
        return _ResidualUnit(
            self.act(channels),
            self.conv(channels, channels, 7, dilation=dilation, padding=3 * dilation),
            self.act(channels),
            self.conv(channels, channels, 1),
        )


def _oobleck_encoder(b: _Builder, in_channels, channels, latent_dim, c_mults, strides) -> nn.Module:
    mults = [1] + list(c_mults)
    layers: list[nn.Module] = [b.conv(in_channels, mults[0] * channels, 7, padding=3)]
    for i, stride in enumerate(strides):
        cin, cout = mults[i] * channels, mults[i + 1] * channels
        layers.append(_Layers(
            *(b.residual(cin, d) for d in RESIDUAL_DILATIONS),
            b.act(cin),
            b.conv(cin, cout, 2 * stride, stride=stride, padding=math.ceil(stride / 2)),
        ))
    layers += [b.act(mults[-1] * channels), b.conv(mults[-1] * channels, latent_dim, 3, padding=1)]
    return _Layers(*layers)


def _oobleck_decoder(b: _Builder, out_channels, channels, latent_dim, c_mults, strides,
                     use_nearest_upsample: bool, final_tanh: bool) -> nn.Module:
    mults = [1] + list(c_mults)
    layers: list[nn.Module] = [b.conv(latent_dim, mults[-1] * channels, 7, padding=3)]
    for i in range(len(strides), 0, -1):
        cin, cout, stride = mults[i] * channels, mults[i - 1] * channels, strides[i - 1]
        if use_nearest_upsample:
            up: nn.Module = _Layers(nn.Upsample(scale_factor=stride, mode="nearest"),
                                    b.conv(cin, cout, 2 * stride, padding="same", bias=False))
        else:
            up = b.conv_t(cin, cout, 2 * stride, stride=stride, padding=math.ceil(stride / 2))
        layers.append(_Layers(b.act(cin), up, *(b.residual(cout, d) for d in RESIDUAL_DILATIONS)))
    layers += [
        b.act(mults[0] * channels),
        b.conv(mults[0] * channels, out_channels, 7, padding=3, bias=False),
        nn.Tanh() if final_tanh else nn.Identity(),
    ]
    return _Layers(*layers)


# ----------------------------------------------------------------------------- model


class OobleckVAE(nn.Module):
    """Oobleck autoencoder with a VAE bottleneck: ``[B, 2, S]`` at 51.2 kHz <-> ``[B, 64, S/2048]``.

    Parameters are the released ones with weight norm folded (``<conv>.weight``);
    :meth:`load_state_dict` also accepts the released ``weight_g``/``weight_v`` keys.
    """

    #: true rate of the waveforms in and out (see module docstring); config's nominal rate is 44100.
    sample_rate: int = TRUE_SAMPLE_RATE

    def __init__(self, autoencoder_config: Mapping[str, Any], *, nominal_sample_rate: int = 44100,
                 operations=torch.nn, dtype=None, device=None):
        super().__init__()
        cfg = copy.deepcopy(dict(autoencoder_config))
        enc_spec, dec_spec = cfg["encoder"], cfg["decoder"]
        for name, spec in (("encoder", enc_spec), ("decoder", dec_spec)):
            if spec.get("type", "oobleck") != "oobleck":
                raise AudioVAELoadError(f"{name} type {spec.get('type')!r} is not supported (only 'oobleck')")
            if spec.get("config", {}).get("antialias_activation"):
                raise AudioVAELoadError(f"{name}: antialias_activation is not supported")
        bottleneck = (cfg.get("bottleneck") or {}).get("type")
        if bottleneck != "vae":
            raise AudioVAELoadError(f"bottleneck {bottleneck!r} is not supported (only 'vae')")
        enc, dec = dict(enc_spec["config"]), dict(dec_spec["config"])
        self.config = cfg
        self.latent_channels = int(cfg.get("latent_dim", dec["latent_dim"]))
        self.hop_length = int(cfg.get("downsampling_ratio", math.prod(enc["strides"])))
        self.io_channels = int(cfg.get("io_channels", enc.get("in_channels", 2)))
        self.nominal_sample_rate = int(nominal_sample_rate)
        if math.prod(enc["strides"]) != self.hop_length or math.prod(dec["strides"]) != self.hop_length:
            raise AudioVAELoadError(f"strides {enc['strides']} / {dec['strides']} do not multiply to "
                                    f"downsampling_ratio {self.hop_length}")
        if int(enc["latent_dim"]) != 2 * self.latent_channels or int(dec["latent_dim"]) != self.latent_channels:
            raise AudioVAELoadError(f"encoder latent_dim must be 2 x {self.latent_channels} (mean, scale) and "
                                    f"decoder latent_dim {self.latent_channels}; got {enc['latent_dim']}, {dec['latent_dim']}")
        self.soft_clip = bool(dec_spec.get("soft_clip", False))
        self.encoder = _oobleck_encoder(
            _Builder(operations, dtype, device, bool(enc.get("use_snake", False))),
            int(enc.get("in_channels", 2)), int(enc.get("channels", 128)), int(enc["latent_dim"]),
            enc.get("c_mults", [1, 2, 4, 8]), enc.get("strides", [2, 4, 8, 8]),
        )
        self.decoder = _oobleck_decoder(
            _Builder(operations, dtype, device, bool(dec.get("use_snake", False))),
            int(dec.get("out_channels", 2)), int(dec.get("channels", 128)), int(dec["latent_dim"]),
            dec.get("c_mults", [1, 2, 4, 8]), dec.get("strides", [2, 4, 8, 8]),
            bool(dec.get("use_nearest_upsample", False)), bool(dec.get("final_tanh", True)),
        )
        self.register_load_state_dict_pre_hook(_fold_on_load)

    @classmethod
    def from_config(cls, model_config: Mapping[str, Any], *, operations=torch.nn, dtype=None, device=None) -> "OobleckVAE":
        """Build from the full stable-audio ``model_config.json`` dict (or its autoencoder part)."""
        return cls(_autoencoder_config(model_config), nominal_sample_rate=int(model_config.get("sample_rate", 44100)),
                   operations=operations, dtype=dtype, device=device)

    @property
    def latent_rate(self) -> float:
        """Latent steps per second of true-rate audio (25.0: one per video frame)."""
        return self.sample_rate / self.hop_length

    def _param_dtype_device(self):
        p = next(self.encoder.parameters())
        return p.dtype, p.device

    def encode(self, waveform: torch.Tensor, *, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """``[B, 2, S]`` (or ``[2, S]``) -> latent ``[B, 64, N]`` (N = S/2048 when 2048 divides S), fp32.

        Returns the posterior mean; ``sample=True`` draws ``mean + stdev * noise`` like the official code.
        """
        x = waveform[None] if waveform.dim() == 2 else waveform
        if x.dim() != 3 or x.shape[1] != self.io_channels:
            raise ValueError(f"audio VAE encode expects a waveform [B, {self.io_channels}, samples]; got "
                             f"{tuple(waveform.shape)} (duplicate a mono track to {self.io_channels} channels)")
        if x.shape[-1] < self.hop_length:
            raise ValueError(f"audio is {x.shape[-1]} samples long; the VAE needs at least {self.hop_length} "
                             "(one latent step); pad it")
        dtype, device = self._param_dtype_device()
        h = self.encoder(x.to(device=device, dtype=dtype)).float()  # [B, 128, N]
        mean, scale = h.chunk(2, dim=1)
        if not sample:
            return mean
        stdev = F.softplus(scale) + 1e-4
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + stdev * noise

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent ``[B, 64, N]`` (or ``[64, N]``) -> waveform ``[B, 2, 2048 N]`` at 51.2 kHz, fp32."""
        z = latent[None] if latent.dim() == 2 else latent
        if z.dim() != 3 or z.shape[1] != self.latent_channels:
            raise ValueError(f"audio VAE decode expects a latent [B, {self.latent_channels}, N]; got {tuple(latent.shape)}"
                             " (a [B, N, 64] DiT audio latent needs .transpose(1, 2))")
        dtype, device = self._param_dtype_device()
        y = self.decoder(z.to(device=device, dtype=dtype)).float()
        return torch.tanh(y) if self.soft_clip else y


def _fold_on_load(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    """load_state_dict pre-hook: accept the released weight-norm keys by folding them in place."""
    folded = fold_weight_norm({k: v for k, v in state_dict.items() if k.startswith(prefix)}, prefix)
    for k in [k for k in state_dict if k.startswith(prefix)]:
        del state_dict[k]
    state_dict.update(folded)
