"""Tiny random MagiHuman checkpoints in the real on-disk formats, in ComfyUI's models-folder layout.

They make the whole pipeline runnable on a CPU in seconds (tests, CI, the README's main job, the tiny
ComfyUI workflow). Values are random: the output is noise, but every file goes through the same
loaders, key maps and formats as the released weights. Nothing is downloaded.

:data:`TINY_FILES` (from :data:`magihuman.presets.MODEL_FILES`, the one table of model names) says where each goes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from .checkpoints import convert_dit, official_key_shapes, write_tiny_dit
from .loaders.text_encoder import save_encoder_file
from .lora import META_BASE
from .lora_extract import extract_lora
from .models.audio_vae import PRETRANSFORM_PREFIX, OobleckVAE, Snake, tiny_model_config, to_released_state_dict
from .models.dit_config import DiTConfig
from .models.text_encoder import tiny_hf_config, tiny_state_dict
from .models.turbo_vae import TINY_TURBO_CONFIG, TurboVAEDecoder
from .models.video_vae import TINY_WAN_VAE_CONFIG, WanVAE, init_random_wan_vae
from .presets import TINY_FILES
from .storage import GGUF, convert_choices, parse_storage
from .tokenizer import write_tiny_tokenizer
from .weights.safetensors_io import write_file

log = logging.getLogger(__name__)
PathLike = str | os.PathLike

__all__ = ["TINY_FILES", "TINY_VERSION", "TinyModelsError", "write_tiny_models", "default_cache_dir",
           "ensure_tiny_models", "tiny_models_ready",
           "describe_tiny_files", "write_tiny_lora", "TINY_LORA", "TINY_DISTILL_LORA", "write_tiny_gguf", "tiny_gguf_files", "write_tiny_t5gemma", "write_tiny_turbo_vae", "write_tiny_wan_vae",
           "write_tiny_audio_vae"]

TINY_VERSION = "1"
STAMP_NAME = ".magihuman_tiny"

def default_cache_dir() -> Path:
    """``$MAGIHUMAN_CACHE/tiny`` if set, else ``~/.cache/magihuman/tiny``."""
    root = os.environ.get("MAGIHUMAN_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "magihuman"
    return base / "tiny"


class TinyModelsError(ValueError):
    """The tiny models would replace files they did not write (they never do), or go into a user's folder."""


def _stamp(complete: bool = True) -> dict:
    """The stamp of a tiny models folder: written first (``complete`` False), completed last; the files it lists
    are the ones the tiny writer may replace."""
    return {"version": TINY_VERSION, "files": TINY_FILES, "complete": complete}


def _read_stamp(models_dir: Path) -> Optional[dict]:
    try:
        data = json.loads((models_dir / STAMP_NAME).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _is_complete(models_dir: Path) -> bool:
    return _read_stamp(models_dir) == _stamp() and all((models_dir / p).exists() for p in TINY_FILES.values())


def tiny_models_ready(models_dir: PathLike) -> bool:
    """True when ``models_dir`` holds a complete set of the current tiny models (nothing to write)."""
    return _is_complete(Path(models_dir).expanduser())


def _own_paths(models_dir: Path) -> set[str]:
    """Paths (relative) the tiny writer put in ``models_dir`` earlier, by its stamp (any version); empty without."""
    stamp = _read_stamp(models_dir)
    files = stamp.get("files") if stamp else None
    return (set(files.values()) | {TINY_LORA, TINY_DISTILL_LORA}) if isinstance(files, dict) else set()


def _refuse_foreign(models_dir: Path) -> None:
    """Never replace a file the tiny writer did not write: existing files at tiny paths must be listed in its stamp."""
    own = _own_paths(models_dir)
    foreign = [rel for rel in [*TINY_FILES.values(), TINY_LORA, TINY_DISTILL_LORA]
               if (models_dir / rel).exists() and rel not in own]
    if foreign:
        raise TinyModelsError(f"{models_dir} already holds {', '.join(foreign)}, which the tiny-model writer did not "
                              f"write (no {STAMP_NAME} stamp lists them); they are left as they are: write the tiny "
                              "models to another folder, or move those away first")


# ------------------------------------------------------------------ one writer per model (the DiT's: checkpoints)


def write_tiny_t5gemma(folder: str | os.PathLike, seed: int = 0, *, shards: int = 1) -> Path:
    """Write a real HF-style T5Gemma folder: config.json, model.safetensors (or an index + ``shards`` files)
    with ``model.encoder.*`` tensors plus a few ``model.decoder.*`` ones, and a tiny Gemma tokenizer."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = tiny_hf_config()
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    tensors = {"model." + k: v for k, v in tiny_state_dict(config, seed).items()}
    g = torch.Generator().manual_seed(seed + 1)
    h = config["decoder"]["hidden_size"]
    tensors["model.decoder.embed_tokens.weight"] = torch.randn(config["vocab_size"], h, generator=g) * 0.1
    tensors["model.decoder.layers.0.self_attn.q_proj.weight"] = torch.randn(96, h, generator=g) * 0.1
    tensors["model.decoder.layers.0.cross_attn.k_proj.weight"] = torch.randn(48, h, generator=g) * 0.1
    tensors["model.decoder.norm.weight"] = torch.zeros(h)
    keys = sorted(tensors)
    if shards <= 1:
        write_file(folder / "model.safetensors", {k: tensors[k] for k in keys}, {"format": "pt"})
    else:
        weight_map = {}
        for s in range(shards):
            name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = {k: tensors[k] for k in keys[s::shards]}
            write_file(folder / name, part, {"format": "pt"})
            weight_map.update({k: name for k in part})
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    write_tiny_tokenizer(folder)
    return folder


def write_tiny_turbo_vae(folder: PathLike, seed: int = 0, *, config: Optional[Mapping[str, Any]] = None
                         ) -> tuple[Path, Path]:
    """Write a randomly initialised tiny Turbo VAE in the released formats: (config JSON, ``.ckpt``).

    The checkpoint is ``{"ema_state_dict": {"module.decoder....": tensor}}`` saved with ``torch.save``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = dict(config if config is not None else TINY_TURBO_CONFIG)
    torch.manual_seed(seed)
    model = TurboVAEDecoder.from_config(cfg, dtype=torch.float32)
    json_path = folder / "TurboV3-tiny.json"
    json_path.write_text(json.dumps(cfg, indent=2))
    ckpt_path = folder / "checkpoint-tiny.ckpt"
    torch.save({"ema_state_dict": {"module." + k: v.clone() for k, v in model.state_dict().items()},
                "step": 0}, ckpt_path)
    return json_path, ckpt_path


def write_tiny_wan_vae(path, seed: int = 0, fmt: str = "safetensors", config: Mapping | None = None) -> Path:
    """Write a tiny random Wan2.2-shaped VAE in a real on-disk format.

    ``fmt="safetensors"``: the ComfyUI ``wan2.2_vae.safetensors`` layout (same key names as the official);
    ``fmt="pth"``: the official ``Wan2.2_VAE.pth`` layout (a plain ``torch.save`` of the state dict).
    """
    if fmt not in ("safetensors", "pth"):
        raise ValueError(f"fmt must be 'safetensors' or 'pth', got {fmt!r}")
    path = Path(path)
    model = init_random_wan_vae(WanVAE.from_config(config or TINY_WAN_VAE_CONFIG, dtype=torch.float32), seed)
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if fmt == "safetensors":
        write_file(path, sd, metadata={"format": "pt"})
    else:
        torch.save(sd, path)
    return path


def write_tiny_audio_vae(folder: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny random Oobleck VAE in the real release format: ``model.safetensors`` with the
    ``pretransform.model.`` prefix, weight-norm keys and a few unrelated DiT/conditioner tensors,
    plus ``model_config.json``. Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = tiny_model_config()
    torch.manual_seed(seed)
    model = OobleckVAE.from_config(cfg)
    with torch.no_grad():  # non-trivial snake parameters, as a trained model has
        for m in model.modules():
            if isinstance(m, Snake):
                m.alpha.uniform_(-0.5, 0.5)
                m.beta.uniform_(-0.5, 0.5)
    tensors = {PRETRANSFORM_PREFIX + k: v.contiguous() for k, v in to_released_state_dict(model.state_dict()).items()}
    gen = torch.Generator().manual_seed(seed + 1)
    tensors["model.model.preprocess_conv.weight"] = torch.randn(64, 64, 1, generator=gen)
    tensors["conditioner.conditioners.seconds_total.embedder.embedding.1.weight"] = torch.randn(8, 9, generator=gen)
    write_file(folder / "model.safetensors", tensors)
    (folder / "model_config.json").write_text(json.dumps(cfg, indent=4), encoding="utf-8")
    return folder


# ------------------------------------------------------------------ the tiny models folder


def _write_one(role: str, target: Path, seed: int) -> None:
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

    Idempotent: a complete folder with the current version stamp is left as it is. Other files in the folder are
    never touched: a file at a tiny path that the stamp does not list is refused (:class:`TinyModelsError`), not
    replaced (an interrupted write leaves an incomplete stamp, so it is finished next time). Returns role -> path.
    The generators touch torch's global RNG, so its state is saved and restored around them.
    """
    models_dir = Path(models_dir).expanduser()
    paths = {role: models_dir / rel for role, rel in TINY_FILES.items()}
    if not force and _is_complete(models_dir):
        _write_tiny_loras(models_dir, paths, seed)
        return paths
    _refuse_foreign(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    (models_dir / STAMP_NAME).write_text(json.dumps(_stamp(complete=False), indent=2), encoding="utf-8")
    rng = torch.random.get_rng_state()
    try:
        for role, target in paths.items():
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            target.parent.mkdir(parents=True, exist_ok=True)
            _write_one(role, target, seed)
        _write_tiny_loras(models_dir, paths, seed, force=True)
    finally:
        torch.random.set_rng_state(rng)
    (models_dir / STAMP_NAME).write_text(json.dumps(_stamp(), indent=2), encoding="utf-8")
    log.info("MagiHuman: wrote tiny models to %s", models_dir)
    return paths


TINY_LORA = "loras/magihuman_tiny_lora.safetensors"  # written with the tiny models (the tiny LoRA workflow uses it)
TINY_DISTILL_LORA = "loras/magihuman_tiny_distill_from_base.safetensors"  # extract-lora: tiny base -> tiny distill
TINY_DISTILL_LORA_RANK = 16


def _write_tiny_loras(models_dir: Path, paths: dict[str, Path], seed: int, force: bool = False) -> None:
    """The tiny LoRAs beside the tiny models: a random style-like one and the distilled model as a LoRA on the
    base (made by the real extract-lora from the two tiny checkpoints, the way a user makes one)."""
    if force or not (models_dir / TINY_LORA).is_file():
        write_tiny_lora(models_dir / TINY_LORA, seed=seed)
    if force or not (models_dir / TINY_DISTILL_LORA).is_file():
        extract_lora(paths["base"], paths["distill"], models_dir / TINY_DISTILL_LORA, rank=TINY_DISTILL_LORA_RANK,
                     dtype=torch.float32, show_progress=False)


def write_tiny_lora(path: PathLike, *, seed: int = 0, rank: int = 4) -> Path:
    """A random rank-``rank`` LoRA for the tiny distilled DiT, in the PEFT format ComfyUI trainers write
    (``diffusion_model.`` prefix, ``lora_A`` / ``lora_B`` / ``alpha``): on every layer the q rows of the fused
    qkv (all experts) and the whole ``down_proj``. Like the tiny models it is random, but it goes through the
    same parser, key map and patching as a real LoRA, and changes the output visibly at strength 1."""
    config = DiTConfig.preset("tiny")
    shapes = official_key_shapes(config)
    g = torch.Generator().manual_seed(1000 + seed)
    tensors: dict[str, torch.Tensor] = {}
    q_rows = config.num_heads_q * config.head_dim
    for i in range(config.num_layers):
        for name, rows in ((f"block.layers.{i}.attention.linear_q", q_rows),
                           (f"block.layers.{i}.mlp.down_proj", None)):
            full = name if rows is None else f"block.layers.{i}.attention.linear_qkv"
            out_rows, cols = shapes[full + ".weight"]
            if rows is not None:
                out_rows = rows
            down = torch.randn(rank, cols, generator=g) / cols ** 0.5
            up = torch.randn(out_rows, rank, generator=g) * 0.1
            tensors[f"diffusion_model.{name}.lora_A.weight"] = down
            tensors[f"diffusion_model.{name}.lora_B.weight"] = up
            tensors[f"diffusion_model.{name}.alpha"] = torch.tensor(float(rank))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, tensors, metadata={META_BASE: "distill"})
    return path


_GGUF_WRITTEN = [n for n in convert_choices() if parse_storage(n).kind == GGUF]
# the most and the least precise GGUF types a converter writes (Q8_0 and Q4_0)
TINY_GGUF_QUANTS = tuple(_GGUF_WRITTEN[i] for i in (0, -1))


def tiny_gguf_files(quant: str) -> dict[str, str]:
    """role -> path (in a models folder) of the tiny GGUF stand-ins written by :func:`write_tiny_gguf`."""
    return {"distill": f"diffusion_models/magihuman_tiny_distill_{quant}.gguf",
            "text_encoder": f"text_encoders/t5gemma_tiny_{quant}.gguf"}


def write_tiny_gguf(models_dir: str | os.PathLike, quants=TINY_GGUF_QUANTS) -> dict[str, Path]:
    """GGUF variants of the tiny distill DiT and text encoder (written from the tiny models with the real
    converters, as ``python -m magihuman convert`` does). Returns name -> path."""
    models_dir = Path(models_dir).expanduser()
    write_tiny_models(models_dir)
    out = {}
    for quant in quants:
        files = tiny_gguf_files(quant)
        dit, te = models_dir / files["distill"], models_dir / files["text_encoder"]
        if not dit.is_file():
            convert_dit(models_dir / TINY_FILES["distill"], dit, quant=quant, show_progress=False)
        if not te.is_file():
            save_encoder_file(models_dir / TINY_FILES["text_encoder"], te, quant=quant)
        out[f"distill_{quant}"], out[f"text_encoder_{quant}"] = dit, te
    return out


def ensure_tiny_models(models_dir: str | os.PathLike | None = None) -> Path:
    """The tiny models folder (default: :func:`default_cache_dir`), written on first use. A given folder that
    holds other files and no tiny models is refused (:class:`TinyModelsError`): random models never go into a
    user's models folder unasked (``python -m magihuman tiny-models DIR`` adds them on purpose)."""
    folder = Path(models_dir).expanduser() if models_dir is not None else default_cache_dir()
    if models_dir is not None and folder.is_dir() and _read_stamp(folder) is None and any(folder.iterdir()):
        raise TinyModelsError(f"{folder} holds other files and no tiny models: the tiny presets write random tiny "
                              "models into their models folder, so they take an empty or new one, or none (the "
                              f"cache, {default_cache_dir()}); to add them to this folder on purpose: "
                              f"python -m magihuman tiny-models {folder}")
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
    for role, rel in (("lora", TINY_LORA), ("distill LoRA", TINY_DISTILL_LORA)):
        if (models_dir / rel).exists():
            rows.append((role, rel, f"{_size(models_dir / rel) / 1e6:.2f} MB"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)
