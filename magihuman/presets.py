"""Generation presets mirroring the official example configs (example/*/config.json + run scripts), and THE
table of model files: where each model goes in a ComfyUI models folder, where it sits in the official release,
where it comes from, and the tiny preset's stand-in. README, workflows, node defaults and the CLI all read
:data:`MODEL_FILES`.

Two folder layouts are understood for a models folder:
- ComfyUI (``ComfyUI/models``): ``diffusion_models/distill/``, ``text_encoders/t5gemma-9b-9b-ul2/``, ... (the
  README's table); older or converted names listed in ``ModelFile.also`` are accepted too;
- official (the ``checkpoints`` folder of the daVinci-MagiHuman release): ``distill/``, ``base/``, ``540p_sr/``,
  ``1080p_sr/``, ``t5gemma-9b-9b-ul2/``, ``Wan2.2-TI2V-5B/``, ``stable-audio-open-1.0/``, ``turbo_vae/``.
The ``tiny`` presets use random tiny checkpoints written on first use (see :mod:`magihuman.tiny`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .errors import PipelineError

__all__ = ["ModelFile", "MODEL_FILES", "Preset", "PRESETS", "ROLES", "TINY_FILES", "MissingModelFiles",
           "get_preset", "required_roles", "resolve_model_files", "found_model_files", "describe_files", "comfy_name",
           "model_files_markdown"]


@dataclass(frozen=True)
class ModelFile:
    """One model role and where its files live. Names ending in ``/`` are folders."""

    role: str
    what: str
    folder: str                    # ComfyUI models sub-folder
    name: str                      # the name inside it (README, workflows, node defaults)
    official: str                  # path in the official release checkpoints folder
    source: str                    # where to download it
    tiny: str                      # the tiny preset's stand-in inside the same folder
    also: tuple[str, ...] = ()     # other accepted names in the same folder (older names, single-file repacks; * globs)
    release_storage: str = ""      # how the released files hold the weights (what loading converts from)
    download: str = ""             # what to download from ``url`` (the templates' model notes)
    url: str = ""                  # the page (or, for a single file, the file itself) to download from

    @property
    def comfy_path(self) -> str:
        """``folder/name`` without the trailing slash (relative to a ComfyUI models folder)."""
        return f"{self.folder}/{self.name.rstrip('/')}"

    @property
    def tiny_path(self) -> str:
        return f"{self.folder}/{self.tiny.rstrip('/')}"


HF = "https://huggingface.co"


def _dit(role: str, what: str, release: str, tiny: str, release_storage: str) -> ModelFile:
    stem = f"magihuman_{release}"
    return ModelFile(role, what, "diffusion_models", f"{release}/", release,
                     f"GAIR/daVinci-MagiHuman `{release}/`", tiny,
                     also=(f"{stem}/", f"{stem}*.safetensors", f"{stem}*.gguf"), release_storage=release_storage,
                     download=f"the folder `{release}/`", url=f"{HF}/GAIR/daVinci-MagiHuman/tree/main/{release}")


MODEL_FILES: dict[str, ModelFile] = {m.role: m for m in (
    _dit("distill", "distilled DiT (8 steps, no CFG)", "distill", "magihuman_tiny_distill/", "fp32"),
    _dit("base", "base DiT (32 UniPC steps, CFG)", "base", "magihuman_tiny_base.safetensors", "bf16"),
    _dit("sr_540p", "540p super-resolution DiT", "540p_sr", "magihuman_tiny_540p_sr/", "fp32"),
    _dit("sr_1080p", "1080p super-resolution DiT", "1080p_sr", "magihuman_tiny_1080p_sr/", "fp32"),
    ModelFile("text_encoder", "T5Gemma-9B text encoder (google/t5gemma-9b-9b-ul2)", "text_encoders",
              "t5gemma-9b-9b-ul2/", "t5gemma-9b-9b-ul2", "google/t5gemma-9b-9b-ul2", "t5gemma_tiny/",
              also=("t5gemma*.safetensors", "t5gemma*.gguf"), release_storage="bf16",
              download="the whole repository (weights + tokenizer)", url=f"{HF}/google/t5gemma-9b-9b-ul2"),
    ModelFile("turbo_vae", "Turbo VAE video decoder (TurboV3-Wan22-TinyShallow_7_7 config + checkpoint)", "vae",
              "turbo_vae/", "turbo_vae", "GAIR/daVinci-MagiHuman `turbo_vae/`", "turbo_vae_tiny/",
              download="the folder `turbo_vae/`", url=f"{HF}/GAIR/daVinci-MagiHuman/tree/main/turbo_vae"),
    ModelFile("video_vae", "Wan2.2 VAE (image encode for TI2V, full-quality decode)", "vae",
              "wan2.2_vae.safetensors", "Wan2.2-TI2V-5B/Wan2.2_VAE.pth",
              "Comfy-Org/Wan_2.2_ComfyUI_Repackaged `split_files/vae/wan2.2_vae.safetensors` (or Wan-AI/Wan2.2-TI2V-5B "
              "`Wan2.2_VAE.pth`)", "wan2.2_vae_tiny.safetensors", also=("Wan2.2_VAE.pth",),
              download="the file `wan2.2_vae.safetensors` (in split_files/vae)",
              url=f"{HF}/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files/vae/wan2.2_vae.safetensors"),
    ModelFile("audio_vae", "Stable Audio Open 1.0 VAE (Oobleck)", "vae", "stable-audio-open-1.0/",
              "stable-audio-open-1.0", "stabilityai/stable-audio-open-1.0", "stable_audio_open_tiny/",
              also=("stable_audio_open_vae.safetensors",),
              download="`model_config.json` + the `*.safetensors` (gated: accept the license first)",
              url=f"{HF}/stabilityai/stable-audio-open-1.0"),
)}

ROLES = {role: m.what for role, m in MODEL_FILES.items()}
# role -> path of the tiny stand-in inside a models folder (ComfyUI layout)
TINY_FILES: dict[str, str] = {role: m.tiny_path for role, m in MODEL_FILES.items()}


def comfy_name(role: str, tiny: bool = False) -> str:
    """The loader-list entry of a role (relative to its ComfyUI folder; folders end in ``/``)."""
    m = MODEL_FILES[role]
    return m.tiny if tiny else m.name


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
    m = MODEL_FILES[role]
    if tiny:
        return [models_dir / m.tiny_path]
    also = []
    for name in m.also:
        if "*" in name:
            folder = models_dir / m.folder
            also += sorted(folder.glob(name)) if folder.is_dir() else []
        else:
            also.append(models_dir / m.folder / name.rstrip("/"))
    return [models_dir / m.comfy_path] + also + [models_dir / m.official]


def _exists(path: Path) -> bool:
    if path.is_dir():
        return any(path.iterdir())
    return path.is_file() or Path(str(path) + ".zst").is_file()


def found_model_files(preset: Preset, models_dir: str | os.PathLike, role: str) -> list[Path]:
    """Every place in ``models_dir`` that holds ``role``, in the order :func:`resolve_model_files` tries them (it
    takes the first): e.g. ``diffusion_models/distill/`` and a ``magihuman_distill_Q8_0.gguf`` beside it."""
    out = []
    for c in _candidates(role, Path(models_dir).expanduser(), preset.tiny):
        if _exists(c):
            p = c if c.exists() else Path(str(c) + ".zst")
            if p not in out:
                out.append(p)
    return out


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
        hits = found_model_files(preset, models_dir, role)
        if hits:
            found[role] = hits[0]
        else:
            missing.append(role)
    if missing:
        lines = [f"preset '{preset.name}' is missing {len(missing)} model file(s) in {models_dir}:"]
        for role in missing:
            m = MODEL_FILES[role]
            if preset.tiny:
                lines.append(f"  - {m.what}: {models_dir / m.tiny_path} (run "
                             f"`python -m magihuman tiny-models {models_dir}`)")
                continue
            also = f"; also accepted: {', '.join(m.also)}" if m.also else ""
            lines.append(f"  - {m.what}: put it at {m.folder}/{m.name} (ComfyUI layout{also}) or {m.official} "
                         f"(official checkpoints layout); from {m.source}")
        raise MissingModelFiles("\n".join(lines))
    return found


def model_files_markdown() -> str:
    """The README's model table (one row per role), generated from :data:`MODEL_FILES`."""
    rows = ["| model | ComfyUI location | where it comes from |", "|---|---|---|"]
    for m in MODEL_FILES.values():
        also = f" (also accepted: {', '.join(f'`{a}`' for a in m.also)})" if m.also else ""
        rows.append(f"| {m.what} | `models/{m.folder}/{m.name}`{also} | {m.source} |")
    return "\n".join(rows)


def describe_files() -> str:
    """A table of the model files: role, ComfyUI location, official release location."""
    rows = [("role", "ComfyUI models folder", "official checkpoints folder")]
    for role, m in MODEL_FILES.items():
        rows.append((role, f"{m.folder}/{m.name}", m.official))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)
