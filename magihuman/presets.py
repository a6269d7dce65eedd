"""Generation presets mirroring the official example configs (example/*/config.json + run scripts),
and where each preset's model files live.

Two folder layouts are understood for a models folder:
- ComfyUI (``ComfyUI/models``): ``diffusion_models/``, ``text_encoders/``, ``vae/`` with the names in
  :data:`COMFY_FILES`;
- official (the ``checkpoints`` folder of the daVinci-MagiHuman release): ``distill/``, ``base/``,
  ``540p_sr/``, ``1080p_sr/``, ``t5gemma-9b-9b-ul2/``, ``Wan2.2-TI2V-5B/``, ``stable-audio-open-1.0/``,
  ``turbo_vae/``.
The ``tiny`` presets use random tiny checkpoints written on first use (see :mod:`magihuman.tiny`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .pipeline import PipelineError

__all__ = ["Preset", "PRESETS", "ROLES", "COMFY_FILES", "OFFICIAL_FILES", "MissingModelFiles", "get_preset",
           "required_roles", "resolve_model_files", "describe_files"]

# role -> what it is (for messages)
ROLES = {
    "distill": "distilled DiT (8 steps, no CFG)",
    "base": "base DiT (32 UniPC steps, CFG)",
    "sr_540p": "540p super-resolution DiT",
    "sr_1080p": "1080p super-resolution DiT",
    "text_encoder": "T5Gemma-9B text encoder (google/t5gemma-9b-9b-ul2)",
    "turbo_vae": "Turbo VAE video decoder (TurboV3-Wan22-TinyShallow_7_7 config + checkpoint)",
    "video_vae": "Wan2.2 VAE (image encode for TI2V, full-quality decode)",
    "audio_vae": "Stable Audio Open 1.0 VAE (Oobleck)",
}

# ComfyUI layout: candidate paths relative to the models folder, first match wins.
COMFY_FILES: dict[str, tuple[str, ...]] = {
    "distill": ("diffusion_models/magihuman_distill", "diffusion_models/magihuman_distill.safetensors",
                "diffusion_models/magihuman_distill_bf16.safetensors",
                "diffusion_models/magihuman_distill_fp8.safetensors"),
    "base": ("diffusion_models/magihuman_base", "diffusion_models/magihuman_base.safetensors",
             "diffusion_models/magihuman_base_bf16.safetensors", "diffusion_models/magihuman_base_fp8.safetensors"),
    "sr_540p": ("diffusion_models/magihuman_540p_sr", "diffusion_models/magihuman_540p_sr.safetensors",
                "diffusion_models/magihuman_540p_sr_bf16.safetensors",
                "diffusion_models/magihuman_540p_sr_fp8.safetensors"),
    "sr_1080p": ("diffusion_models/magihuman_1080p_sr", "diffusion_models/magihuman_1080p_sr.safetensors",
                 "diffusion_models/magihuman_1080p_sr_bf16.safetensors",
                 "diffusion_models/magihuman_1080p_sr_fp8.safetensors"),
    "text_encoder": ("text_encoders/t5gemma-9b-9b-ul2", "text_encoders/t5gemma_9b_encoder.safetensors"),
    "turbo_vae": ("vae/turbo_vae",),
    "video_vae": ("vae/wan2.2_vae.safetensors", "vae/Wan2.2_VAE.pth"),
    "audio_vae": ("vae/stable-audio-open-1.0", "vae/stable_audio_open_vae.safetensors"),
}

# Official release layout (checkpoints folder).
OFFICIAL_FILES: dict[str, tuple[str, ...]] = {
    "distill": ("distill",),
    "base": ("base",),
    "sr_540p": ("540p_sr",),
    "sr_1080p": ("1080p_sr",),
    "text_encoder": ("t5gemma-9b-9b-ul2",),
    "turbo_vae": ("turbo_vae",),
    "video_vae": ("Wan2.2-TI2V-5B/Wan2.2_VAE.pth",),
    "audio_vae": ("stable-audio-open-1.0",),
}


@dataclass(frozen=True)
class Preset:
    """One generation recipe: which DiT(s), sampler, steps, guidance, sizes, decoder."""

    name: str
    description: str
    dit: str                       # role of the base-stage DiT: "distill" | "base"
    sampler: str                   # "distilled" | "unipc"
    steps: int
    cfg: bool
    width: int
    height: int
    seconds: float = 4
    sr: Optional[str] = None       # role of the SR DiT: "sr_540p" | "sr_1080p"
    sr_width: Optional[int] = None
    sr_height: Optional[int] = None
    sr_steps: int = 5
    sr_cfg: bool = False
    decoder: str = "turbo"         # "turbo" | "wan"
    dtype: str = "bf16"            # DiT block linears
    tiny: bool = False
    extra: dict = field(default_factory=dict)


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("distill_256p", "official distill example: 8 distilled steps, no CFG, 448x256",
           dit="distill", sampler="distilled", steps=8, cfg=False, width=448, height=256),
    Preset("base_256p", "official base example: 32 UniPC steps, CFG video 5/2 (t>500 / after), audio 5, 448x256",
           dit="base", sampler="unipc", steps=32, cfg=True, width=448, height=256),
    Preset("sr_540p", "official sr_540p example: base 448x256 (32 steps, CFG) + 540p SR to 896x512 (5 steps)",
           dit="base", sampler="unipc", steps=32, cfg=True, width=448, height=256,
           sr="sr_540p", sr_width=896, sr_height=512),
    Preset("sr_1080p", "official sr_1080p example: base 448x256 + 1080p SR to 1920x1088 (5 steps, local attention)",
           dit="base", sampler="unipc", steps=32, cfg=True, width=448, height=256,
           sr="sr_1080p", sr_width=1920, sr_height=1088),
    Preset("distill_540p", "distilled base (8 steps) + 540p SR to 896x512",
           dit="distill", sampler="distilled", steps=8, cfg=False, width=448, height=256,
           sr="sr_540p", sr_width=896, sr_height=512),
    Preset("tiny", "tiny random models (CPU smoke test): distilled 8 steps at 128x64, Turbo decoder",
           dit="distill", sampler="distilled", steps=8, cfg=False, width=128, height=64, seconds=2,
           dtype="fp32", tiny=True),
    Preset("tiny_sr", "tiny random models: base 4 UniPC steps with CFG at 64x64 + 540p-style SR to 128x128",
           dit="base", sampler="unipc", steps=4, cfg=True, width=64, height=64, seconds=2,
           sr="sr_540p", sr_width=128, sr_height=128, sr_steps=2, dtype="fp32", tiny=True),
)}


class MissingModelFiles(PipelineError):
    """Some model files of a preset are not where they should be; the message lists them."""


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise PipelineError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None


def required_roles(preset: Preset, *, image: bool = False, decoder: Optional[str] = None) -> list[str]:
    """Model roles a run needs: DiT(s), text encoder, video decoder, audio VAE (+ Wan VAE for TI2V)."""
    decoder = decoder or preset.decoder
    roles = [preset.dit] + ([preset.sr] if preset.sr else []) + ["text_encoder"]
    roles.append("turbo_vae" if decoder == "turbo" else "video_vae")
    if image and "video_vae" not in roles:
        roles.append("video_vae")
    roles.append("audio_vae")
    return roles


def _candidates(role: str, models_dir: Path, tiny: bool) -> list[Path]:
    if tiny:
        from .tiny import TINY_FILES

        return [models_dir / TINY_FILES[role]]
    return [models_dir / p for p in COMFY_FILES[role]] + [models_dir / p for p in OFFICIAL_FILES[role]]


def _exists(path: Path) -> bool:
    if path.is_dir():
        return any(path.iterdir())
    return path.is_file() or Path(str(path) + ".zst").is_file()


def resolve_model_files(preset: Preset, models_dir: str | os.PathLike, roles: list[str]) -> dict[str, Path]:
    """role -> path for each needed role, searching the ComfyUI then the official layout.

    Raises :class:`MissingModelFiles` listing every missing role with the places searched.
    """
    models_dir = Path(models_dir).expanduser()
    if not models_dir.is_dir():
        raise MissingModelFiles(f"models folder {models_dir} does not exist (give --models: a ComfyUI models folder "
                                "or the official checkpoints folder)")
    found, missing = {}, []
    for role in roles:
        cands = _candidates(role, models_dir, preset.tiny)
        hit = next((c for c in cands if _exists(c)), None)
        if hit is None:
            missing.append(role)
        else:
            found[role] = hit if hit.exists() else Path(str(hit) + ".zst")
    if missing:
        lines = [f"preset '{preset.name}' is missing {len(missing)} model file(s) in {models_dir}:"]
        for role in missing:
            if preset.tiny:
                lines.append(f"  - {ROLES[role]}: {_candidates(role, models_dir, True)[0]} (run "
                             f"`python -m magihuman tiny-models {models_dir}`)")
                continue
            comfy, official = COMFY_FILES[role], OFFICIAL_FILES[role]
            also = f"; also accepted: {', '.join(comfy[1:])}" if len(comfy) > 1 else ""
            lines.append(f"  - {ROLES[role]}: put it at {comfy[0]} (ComfyUI layout{also}) or {official[0]} "
                         "(official checkpoints layout)")
        raise MissingModelFiles("\n".join(lines))
    return found


def describe_files() -> str:
    """A table of the model files: role, ComfyUI location, official release location."""
    rows = [("role", "ComfyUI models folder", "official checkpoints folder")]
    for role in ROLES:
        rows.append((role, COMFY_FILES[role][0], OFFICIAL_FILES[role][0]))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)
