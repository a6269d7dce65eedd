"""Tiny random MagiHuman checkpoints in the real on-disk formats, in ComfyUI's models-folder layout.

They make the whole pipeline runnable on a CPU in seconds (tests, CI, the README's main job, the tiny
ComfyUI workflow). Values are random: the output is noise, but every file goes through the same
loaders, key maps and formats as the released weights. Nothing is downloaded.

:data:`TINY_FILES` is THE table of names (nodes and workflows use it).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch

log = logging.getLogger(__name__)

__all__ = ["TINY_FILES", "TINY_VERSION", "write_tiny_models", "default_cache_dir", "ensure_tiny_models",
           "describe_tiny_files"]

TINY_VERSION = "1"
STAMP_NAME = ".magihuman_tiny"

# role -> path inside the models folder (ComfyUI layout)
TINY_FILES: dict[str, str] = {
    "distill": "diffusion_models/magihuman_tiny_distill",             # official folder: index + 2 fp32 shards
    "base": "diffusion_models/magihuman_tiny_base.safetensors",       # single file, bf16 block linears
    "sr_540p": "diffusion_models/magihuman_tiny_540p_sr",             # official folder, fp32
    "sr_1080p": "diffusion_models/magihuman_tiny_1080p_sr",           # official folder, fp32, local attention
    "text_encoder": "text_encoders/t5gemma_tiny",                     # HF folder: config, weights, tokenizer
    "turbo_vae": "vae/turbo_vae_tiny",                                # JSON config + .ckpt (ema_state_dict)
    "video_vae": "vae/wan2.2_vae_tiny.safetensors",                   # ComfyUI wan2.2_vae layout
    "audio_vae": "vae/stable_audio_open_tiny",                        # model.safetensors + model_config.json
}


def default_cache_dir() -> Path:
    """``$MAGIHUMAN_CACHE/tiny`` if set, else ``~/.cache/magihuman/tiny``."""
    root = os.environ.get("MAGIHUMAN_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "magihuman"
    return base / "tiny"


def _stamp() -> dict:
    return {"version": TINY_VERSION, "files": TINY_FILES}


def _is_complete(models_dir: Path) -> bool:
    stamp = models_dir / STAMP_NAME
    if not stamp.is_file():
        return False
    try:
        data = json.loads(stamp.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return data == _stamp() and all((models_dir / p).exists() for p in TINY_FILES.values())


def _write_one(role: str, target: Path, seed: int) -> None:
    from .checkpoints import write_tiny_dit
    from .models.audio_vae import write_tiny_audio_vae
    from .models.dit_config import DiTConfig
    from .models.text_encoder import write_tiny_t5gemma
    from .models.turbo_vae import write_tiny_turbo_vae
    from .models.video_vae import write_tiny_wan_vae

    if role == "distill":
        write_tiny_dit(target, config=DiTConfig.preset("tiny"), variant="distill", layout="folder",
                       dtype=torch.float32, shards=2, seed=seed)
    elif role == "base":
        write_tiny_dit(target, config=DiTConfig.preset("tiny"), variant="base", layout="file",
                       dtype=torch.bfloat16, seed=seed + 1)
    elif role == "sr_540p":
        write_tiny_dit(target, config=DiTConfig.preset("tiny"), variant="sr_540p", layout="folder",
                       dtype=torch.float32, shards=2, seed=seed + 2)
    elif role == "sr_1080p":
        write_tiny_dit(target, config=DiTConfig.preset("tiny_sr_1080p"), variant="sr_1080p", layout="folder",
                       dtype=torch.float32, shards=2, seed=seed + 3)
    elif role == "text_encoder":
        write_tiny_t5gemma(target, seed=seed)
    elif role == "turbo_vae":
        write_tiny_turbo_vae(target, seed=seed)
    elif role == "video_vae":
        write_tiny_wan_vae(target, seed=seed, fmt="safetensors")
    elif role == "audio_vae":
        write_tiny_audio_vae(target, seed=seed)
    else:
        raise ValueError(f"unknown tiny model role {role!r}")


def write_tiny_models(models_dir: str | os.PathLike, *, seed: int = 0, force: bool = False) -> dict[str, Path]:
    """Write every tiny checkpoint under ``models_dir`` (ComfyUI layout, names in :data:`TINY_FILES`).

    Idempotent: a complete folder with the current version stamp is left as it is. Returns role -> path.
    The generators touch torch's global RNG, so its state is saved and restored around them.
    """
    models_dir = Path(models_dir).expanduser()
    paths = {role: models_dir / rel for role, rel in TINY_FILES.items()}
    if not force and _is_complete(models_dir):
        return paths
    models_dir.mkdir(parents=True, exist_ok=True)
    (models_dir / STAMP_NAME).unlink(missing_ok=True)
    rng = torch.random.get_rng_state()
    try:
        for role, target in paths.items():
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            target.parent.mkdir(parents=True, exist_ok=True)
            _write_one(role, target, seed)
    finally:
        torch.random.set_rng_state(rng)
    (models_dir / STAMP_NAME).write_text(json.dumps(_stamp(), indent=2), encoding="utf-8")
    log.info("MagiHuman: wrote tiny models to %s", models_dir)
    return paths


def ensure_tiny_models(models_dir: str | os.PathLike | None = None) -> Path:
    """The tiny models folder (default: :func:`default_cache_dir`), written on first use."""
    folder = Path(models_dir).expanduser() if models_dir is not None else default_cache_dir()
    write_tiny_models(folder)
    return folder


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def describe_tiny_files(models_dir: str | os.PathLike) -> str:
    """Table: role, path (relative to models_dir), size on disk."""
    models_dir = Path(models_dir)
    rows = [("role", "path", "size")]
    for role, rel in TINY_FILES.items():
        rows.append((role, rel, f"{_size(models_dir / rel) / 1e6:.2f} MB"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)
