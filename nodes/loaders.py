"""Loader nodes: read ComfyUI's model folders, build engine models on ComfyUI's ops and devices."""

from __future__ import annotations

import os

import torch

from ..magihuman.checkpoints import load_dit
from ..magihuman.compile import compile_dit_blocks
from ..magihuman.device import resolve_compute_dtype
from ..magihuman.loaders import load_audio_vae, load_turbo_vae, load_wan_vae
from ..magihuman.models.text_encoder import T5GemmaEncoder
from ..magihuman.presets import comfy_name
from . import compat
from .compat import io
from .types import node_name, node_schema, MagiAudioVAE, MagiDiT, MagiSRDiT, MagiTextEncoder, MagiTurboVAE, MagiVideoVAE

DIT_FOLDERS = ("diffusion_models",)
TEXT_FOLDERS = ("text_encoders",)
VAE_FOLDERS = ("vae",)
AUDIO_VAE_FOLDERS = ("vae", "checkpoints")
DTYPES = ["auto", "bf16", "fp16", "fp32"]
COMPUTE = DTYPES
GGUF_FILE = "gguf (file)"  # keep a .gguf file's quantised blocks (what "auto" does for .gguf files too)
# fp8 = e4m3 + per-tensor scale storage of the DiT's block linears / the text encoder's projections
COMPACT_DTYPES = DTYPES + ["fp8", GGUF_FILE]


def choose_compute_dtype(choice: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 (official numerics) on GPUs with bf16, fp16 on older GPUs; on CPUs whichever of
    bf16/fp32 measures faster (see magihuman.device.pick_compute_dtype)."""
    if choice == "auto":
        return resolve_compute_dtype("auto", device)
    return compat.pick_weight_dtype(choice, device)


def _model_input(input_id: str, kinds: tuple[str, ...], role: str, tooltip: str,
                 extensions: tuple[str, ...] = compat.MODEL_EXTENSIONS):
    """A model list of ComfyUI folders; the default is the name the README and workflows use when present."""
    options = compat.list_models(kinds, extensions=extensions)
    default = comfy_name(role)
    return io.Combo.Input(input_id, options=options, default=default if default in options else None,
                          tooltip=tooltip)


def _weight_dtype_input(default: str = "auto", tooltip: str = "auto = bf16 where supported.", options=DTYPES):
    return io.Combo.Input("weight_dtype", options=options, default=default, tooltip=tooltip)


def _handle(kind: str, path: str, load, weight_dtype: str, **info) -> compat.ModelHandle:
    """Build an engine model on ComfyUI's offload device with ComfyUI's ops, wrapped for model management."""
    load_device, offload_device = compat.devices(kind)
    model = load(path, dtype=compat.pick_weight_dtype(weight_dtype, load_device), device=offload_device,
                 operations=compat.operations())
    return compat.ModelHandle(model, kind, path=path, **info)


def _storage(weight_dtype: str, path: str, where: str, load_device) -> tuple[torch.dtype, str]:
    """(dtype, gguf mode) of a compact-capable loader: a .gguf file keeps its blocks with "auto" / "gguf (file)";
    a dtype dequantises it while loading."""
    is_gguf = path.lower().endswith(".gguf")
    if weight_dtype == GGUF_FILE:
        if not is_gguf:
            raise ValueError(f"{where}: weight_dtype '{GGUF_FILE}' keeps a GGUF file's quantisation, but "
                             f"{os.path.basename(path)} is not a .gguf file; pick a .gguf file or another dtype")
        return compat.pick_weight_dtype("auto", load_device), "keep"
    return compat.pick_weight_dtype(weight_dtype, load_device), "keep" if weight_dtype == "auto" else "dequantize"


class _DiTLoader(compat.MagiNode):
    """The DiT and SR DiT loaders: one schema and one code path, two output types (never registered itself:
    ComfyUI caches schema facts per class, so the two nodes are siblings, not parent and child)."""

    NODE_ID: str
    OUTPUT: object
    WANT_SR: bool
    DESCRIPTION: str
    ROLE: str
    OUTPUT_NAME: str

    @classmethod
    def define_schema(cls):
        return node_schema(
            cls.NODE_ID,
            description=cls.DESCRIPTION,
            inputs=[
                _model_input("model_name", DIT_FOLDERS, cls.ROLE,
                             "A MagiHuman DiT from models/diffusion_models (or models/unet): an official folder "
                             "(model.safetensors.index.json + shards, also .zst), a single .safetensors file, or a "
                             ".gguf written by `python -m magihuman convert` (picking a .gguf sets weight_dtype to "
                             "'gguf (file)')."),
                _weight_dtype_input(options=COMPACT_DTYPES, tooltip=(
                    "Storage of the block linears. auto = bf16 (the official layout) where supported, and a .gguf "
                    "file keeps its quantised blocks (= 'gguf (file)'; dequantised per layer on the GPU). fp32 "
                    "files (distill, SR) are converted while streaming. fp8 = float8_e4m3fn with a per-tensor scale "
                    "(half the memory of bf16; fp8 files keep their bytes). bf16/fp16/fp32 dequantise a GGUF.")),
                io.Combo.Input("attention", options=compat.attention_choices(), default="sdpa",
                               tooltip="Attention kernel of this DiT: sdpa (PyTorch), comfy (ComfyUI's choice, e.g. "
                                       "with --use-sage-attention), flash (FlashAttention 3/2) or sage (CUDA, if "
                                       "installed)."),
                io.Boolean.Input("compile", default=False,
                                 tooltip="torch.compile each transformer layer (one graph per layer kind, reused). "
                                         "Slow first run, faster afterwards."),
                io.Combo.Input("compute_dtype", options=COMPUTE, default="auto",
                               tooltip="Matmul dtype. auto = bf16 (official numerics) on GPUs with bf16 (else fp16); "
                                       "on CPUs the faster of bf16/fp32, measured once."),
                io.Combo.Input("fp8_compute", options=["off", "auto", "tensor", "token"], default="off", optional=True,
                               tooltip="With weight_dtype fp8: multiply in fp8 (torch._scaled_mm) instead of "
                                       "dequantising; activations scaled per tensor or per token. auto = token on "
                                       "GPUs with fp8 units (Ada, Hopper and newer), off elsewhere. Faster there, "
                                       "slightly less accurate."),
            ],
            outputs=[cls.OUTPUT.Output(display_name=cls.OUTPUT_NAME)],
        )

    @classmethod
    def execute(cls, model_name, weight_dtype, attention, compile, compute_dtype, fp8_compute="off"):
        # fp8_compute is optional: API prompts written before it existed still validate (then: off)
        path = compat.resolve_model(DIT_FOLDERS, model_name)
        load_device, offload_device = compat.devices("diffusion")
        dtype, gguf = _storage(weight_dtype, path, cls.name(), load_device)
        model = load_dit(path, dtype=dtype, device=offload_device, operations=compat.operations(), gguf=gguf)
        is_sr = model.variant.startswith("sr_")
        if is_sr != cls.WANT_SR:
            if is_sr:
                raise ValueError(f"{model_name} is a super-resolution DiT ({model.variant}); load it with "
                                 f"'{node_name('MagiHumanSRDiTLoader')}' and use it in '{node_name('MagiHumanLatentSR')}'")
            raise ValueError(f"{model_name} is a {model.variant} DiT, not a super-resolution model; load it with "
                             f"'{node_name('MagiHumanDiTLoader')}'")
        model.set_compute_dtype(choose_compute_dtype(compute_dtype, load_device))
        model.set_fp8_compute(fp8_compute, device=load_device)
        compat.select_attention(model, attention)
        if compile:
            compile_dit_blocks(model)
        return io.NodeOutput(compat.ModelHandle(model, "diffusion", variant=model.variant, path=path))


class MagiHumanDiTLoader(_DiTLoader):
    NODE_ID, OUTPUT, WANT_SR = "MagiHumanDiTLoader", MagiDiT, False
    DESCRIPTION = "Loads the base or distilled MagiHuman joint audio+video denoiser (variant inferred from the files)."
    ROLE, OUTPUT_NAME = "distill", "model"


class MagiHumanSRDiTLoader(_DiTLoader):
    NODE_ID, OUTPUT, WANT_SR = "MagiHumanSRDiTLoader", MagiSRDiT, True
    DESCRIPTION = "Loads a MagiHuman super-resolution DiT (540p or 1080p; 1080p uses local attention)."
    ROLE, OUTPUT_NAME = "sr_540p", "sr_model"


class MagiHumanTextEncoderLoader(compat.MagiNode):
    @classmethod
    def define_schema(cls):
        return node_schema(
            "MagiHumanTextEncoderLoader",
            description="Loads the T5Gemma-9B encoder (only the encoder tensors are read) with its tokenizer.",
            inputs=[
                _model_input("text_encoder", TEXT_FOLDERS, "text_encoder",
                             "models/text_encoders: the google/t5gemma-9b-9b-ul2 folder, an encoder-only .safetensors "
                             "with tokenizer.json beside it, or a .gguf written by `python -m magihuman convert` "
                             "(config and tokenizer inside)."),
                _weight_dtype_input(options=COMPACT_DTYPES, tooltip=(
                    "auto = bf16 (official) where supported; a .gguf keeps its quantised blocks. fp8 = projections "
                    "as float8_e4m3fn + per-tensor scale (~9.7 GB instead of 17 GB for the 9B encoder).")),
            ],
            outputs=[MagiTextEncoder.Output(display_name="text_encoder")],
        )

    @classmethod
    def execute(cls, text_encoder, weight_dtype):
        path = compat.resolve_model(TEXT_FOLDERS, text_encoder)
        load_device, offload_device = compat.devices("text_encoder")
        dtype, gguf = _storage(weight_dtype, path, cls.name(), load_device)
        model = T5GemmaEncoder.from_pretrained(path, dtype=dtype, device=offload_device, operations=compat.operations(),
                                               gguf=gguf)
        return io.NodeOutput(compat.ModelHandle(model, "text_encoder", path=path))


class MagiHumanTurboVAELoader(compat.MagiNode):
    @classmethod
    def define_schema(cls):
        return node_schema(
            "MagiHumanTurboVAELoader",
            description="Loads the fast Turbo video decoder: its folder (TurboV3 JSON + checkpoint .ckpt, read "
                        "with weights_only) or a converted .safetensors.",
            inputs=[
                _model_input("vae_name", VAE_FOLDERS, "turbo_vae",
                             "models/vae: the turbo_vae folder (JSON + checkpoint-340000.ckpt) or a converted turbo "
                             ".safetensors.", compat.PLAIN_EXTENSIONS),
                _weight_dtype_input(),
            ],
            outputs=[MagiTurboVAE.Output(display_name="turbo_vae")],
        )

    @classmethod
    def execute(cls, vae_name, weight_dtype):
        path = compat.resolve_model(VAE_FOLDERS, vae_name)
        return io.NodeOutput(_handle("vae", path, lambda p, **kw: load_turbo_vae(None, p, **kw), weight_dtype))


class MagiHumanVideoVAELoader(compat.MagiNode):
    @classmethod
    def define_schema(cls):
        return node_schema(
            "MagiHumanVideoVAELoader",
            description="Loads the Wan2.2 (TI2V-5B) video VAE: image encoding for TI2V and the full-quality decoder.",
            inputs=[
                _model_input("vae_name", VAE_FOLDERS, "video_vae",
                             "models/vae: wan2.2_vae.safetensors (ComfyUI) or the official Wan2.2_VAE.pth.",
                             compat.PLAIN_EXTENSIONS),
                _weight_dtype_input(),
            ],
            outputs=[MagiVideoVAE.Output(display_name="video_vae")],
        )

    @classmethod
    def execute(cls, vae_name, weight_dtype):
        path = compat.resolve_model(VAE_FOLDERS, vae_name)
        if os.path.isdir(path):
            raise ValueError(f"{cls.name()}: {vae_name} is a folder (a Turbo VAE or audio VAE?); the Wan2.2 VAE is "
                             "one file: pick wan2.2_vae.safetensors or Wan2.2_VAE.pth")
        return io.NodeOutput(_handle("vae", path, load_wan_vae, weight_dtype))


class MagiHumanAudioVAELoader(compat.MagiNode):
    @classmethod
    def define_schema(cls):
        return node_schema(
            "MagiHumanAudioVAELoader",
            description="Loads the Stable Audio Open 1.0 (Oobleck) audio VAE; only its VAE tensors are read.",
            inputs=[
                _model_input("vae_name", AUDIO_VAE_FOLDERS, "audio_vae",
                             "The stable-audio-open-1.0 folder (model.safetensors + model_config.json) or a "
                             "VAE-only .safetensors, in models/vae or models/checkpoints.", compat.PLAIN_EXTENSIONS),
                _weight_dtype_input("fp32", "The audio VAE is small; fp32 is the official precision."),
            ],
            outputs=[MagiAudioVAE.Output(display_name="audio_vae")],
        )

    @classmethod
    def execute(cls, vae_name, weight_dtype):
        path = compat.resolve_model(AUDIO_VAE_FOLDERS, vae_name)
        dtype = "fp32" if weight_dtype == "auto" else weight_dtype  # auto: the official fp32, not bf16
        return io.NodeOutput(_handle("vae", path, load_audio_vae, dtype))


LOADER_NODES = [MagiHumanDiTLoader, MagiHumanSRDiTLoader, MagiHumanTextEncoderLoader, MagiHumanTurboVAELoader,
                MagiHumanVideoVAELoader, MagiHumanAudioVAELoader]
