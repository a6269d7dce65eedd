"""Loader nodes: read ComfyUI's model folders, build engine models on ComfyUI's ops and devices."""

from __future__ import annotations

import os

import torch

from ..magihuman.checkpoints import load_dit
from ..magihuman.device import resolve_compute_dtype
from ..magihuman.models.audio_vae import load_audio_vae
from ..magihuman.models.text_encoder import T5GemmaEncoder
from ..magihuman.models.turbo_vae import load_turbo_vae
from ..magihuman.models.video_vae import load_wan_vae
from . import compat
from .compat import io
from .types import CATEGORY, MagiAudioVAE, MagiDiT, MagiSRDiT, MagiTextEncoder, MagiTurboVAE, MagiVideoVAE

DIT_FOLDERS = ("diffusion_models",)
TEXT_FOLDERS = ("text_encoders",)
VAE_FOLDERS = ("vae",)
AUDIO_VAE_FOLDERS = ("vae", "checkpoints")
DTYPES = ["auto", "bf16", "fp16", "fp32"]
COMPUTE = DTYPES
DIT_DTYPES = DTYPES + ["fp8"]  # fp8 (e4m3 + per-tensor scale) is a DiT block-weight storage option only


def compute_dtype(choice: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 (official numerics) on GPUs with bf16, fp16 on older GPUs; on CPUs whichever of
    bf16/fp32 measures faster (see magihuman.device.pick_compute_dtype)."""
    if choice not in COMPUTE:
        raise ValueError(f"compute dtype {choice!r}: choose one of {', '.join(COMPUTE)}")
    if choice == "auto":
        return resolve_compute_dtype("auto", device)
    return compat.pick_weight_dtype(choice, device)


def _handle(kind: str, path: str, load, weight_dtype: str) -> compat.ModelHandle:
    """Build an engine model on ComfyUI's offload device with ComfyUI's ops, wrapped for model management."""
    if weight_dtype not in DTYPES:  # fp8 storage exists for the DiT block linears only
        raise ValueError(f"weight dtype {weight_dtype!r}: choose {', '.join(DTYPES)} (fp8 is a DiT loader option)")
    load_device, offload_device = compat.devices(kind)
    model = load(path, dtype=compat.pick_weight_dtype(weight_dtype, load_device), device=offload_device,
                 operations=compat.operations())
    return compat.ModelHandle(model, kind, path=path)


def _weight_dtype_input(default: str = "auto", tooltip: str = "auto = bf16 where supported."):
    return io.Combo.Input("weight_dtype", options=DTYPES, default=default, tooltip=tooltip)


def _load_dit_handle(model_name: str, weight_dtype: str, compute: str, *, want_sr: bool, attention: str = "sdpa",
                     compile_blocks: bool = False):
    path = compat.resolve_model(DIT_FOLDERS, model_name)
    load_device, offload_device = compat.devices("diffusion")
    model = load_dit(path, dtype=compat.pick_weight_dtype(weight_dtype, load_device), device=offload_device,
                     operations=compat.operations())
    is_sr = model.variant.startswith("sr_")
    if is_sr != want_sr:
        if is_sr:
            raise ValueError(f"{model_name} is a super-resolution DiT ({model.variant}); load it with "
                             "'MagiHuman SR DiT Loader' and use it in 'MagiHuman Latent Super-Resolution'")
        raise ValueError(f"{model_name} is a {model.variant} DiT, not a super-resolution model; load it with "
                         "'MagiHuman DiT Loader'")
    model.set_compute_dtype(compute_dtype(compute, load_device))
    compat.select_attention(attention)
    if compile_blocks:
        from ..magihuman.compile import compile_dit_blocks

        compile_dit_blocks(model)
    return compat.ModelHandle(model, "diffusion", variant=model.variant, path=path)


def _dit_inputs():
    return [
        io.Combo.Input("model_name", options=compat.list_models(DIT_FOLDERS),
                       tooltip="A MagiHuman DiT from models/diffusion_models: an official folder (model.safetensors."
                               "index.json + shards, also .zst) or a single .safetensors file."),
        io.Combo.Input("weight_dtype", options=DIT_DTYPES, default="auto",
                       tooltip="Storage dtype of the block linears. auto = bf16 (the official layout) where supported. "
                               "fp32 files (distill, SR) are converted while streaming. fp8 = float8_e4m3fn with a "
                               "per-tensor scale (half the memory of bf16; fp8 files keep their bytes)."),
        io.Combo.Input("attention", options=compat.attention_choices(), default="sdpa",
                       tooltip="Attention kernel for all MagiHuman DiTs: sdpa (PyTorch), comfy (ComfyUI's choice, e.g. "
                               "with --use-sage-attention), flash (FlashAttention 3/2) or sage (CUDA, if installed)."),
        io.Boolean.Input("compile", default=False,
                         tooltip="torch.compile each transformer layer (one graph per layer kind, reused). Slow first "
                                 "run, faster afterwards."),
        io.Combo.Input("compute_dtype", options=COMPUTE, default="auto",
                       tooltip="Matmul dtype. auto = bf16 (official numerics) on GPUs with bf16 (else fp16); on CPUs the faster of "
                               "bf16/fp32, measured once."),
    ]


class MagiHumanDiTLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MagiHumanDiTLoader",
            display_name="MagiHuman DiT Loader",
            category=f"{CATEGORY}/loaders",
            description="Loads the base or distilled MagiHuman joint audio+video denoiser (variant inferred from the files).",
            inputs=_dit_inputs(),
            outputs=[MagiDiT.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model_name, weight_dtype="auto", attention="sdpa", compile=False, compute_dtype="auto"):
        return io.NodeOutput(_load_dit_handle(model_name, weight_dtype, compute_dtype, want_sr=False,
                                              attention=attention, compile_blocks=compile))


class MagiHumanSRDiTLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MagiHumanSRDiTLoader",
            display_name="MagiHuman SR DiT Loader",
            category=f"{CATEGORY}/loaders",
            description="Loads a MagiHuman super-resolution DiT (540p or 1080p; 1080p uses local attention).",
            inputs=_dit_inputs(),
            outputs=[MagiSRDiT.Output(display_name="sr_model")],
        )

    @classmethod
    def execute(cls, model_name, weight_dtype="auto", attention="sdpa", compile=False, compute_dtype="auto"):
        return io.NodeOutput(_load_dit_handle(model_name, weight_dtype, compute_dtype, want_sr=True,
                                              attention=attention, compile_blocks=compile))


class MagiHumanTextEncoderLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MagiHumanTextEncoderLoader",
            display_name="MagiHuman T5Gemma Loader",
            category=f"{CATEGORY}/loaders",
            description="Loads the T5Gemma-9B encoder (only the encoder tensors are read) with its tokenizer.",
            inputs=[
                io.Combo.Input("text_encoder", options=compat.list_models(TEXT_FOLDERS),
                               tooltip="models/text_encoders: the google/t5gemma-9b-9b-ul2 folder, or an "
                                       "encoder-only .safetensors with tokenizer.json beside it."),
                _weight_dtype_input(tooltip="auto = bf16 (official) where supported."),
            ],
            outputs=[MagiTextEncoder.Output(display_name="text_encoder")],
        )

    @classmethod
    def execute(cls, text_encoder, weight_dtype="auto"):
        path = compat.resolve_model(TEXT_FOLDERS, text_encoder)
        return io.NodeOutput(_handle("text_encoder", path, T5GemmaEncoder.from_pretrained, weight_dtype))


class MagiHumanTurboVAELoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MagiHumanTurboVAELoader",
            display_name="MagiHuman Turbo VAE Loader",
            category=f"{CATEGORY}/loaders",
            description="Loads the fast Turbo video decoder: its folder (TurboV3 JSON + checkpoint .ckpt, read "
                        "with weights_only) or a converted .safetensors.",
            inputs=[
                io.Combo.Input("vae_name", options=compat.list_models(VAE_FOLDERS),
                               tooltip="models/vae: the turbo_vae folder (JSON + checkpoint-340000.ckpt) or a "
                                       "converted turbo .safetensors."),
                _weight_dtype_input(),
            ],
            outputs=[MagiTurboVAE.Output(display_name="turbo_vae")],
        )

    @classmethod
    def execute(cls, vae_name, weight_dtype="auto"):
        path = compat.resolve_model(VAE_FOLDERS, vae_name)
        return io.NodeOutput(_handle("vae", path, lambda p, **kw: load_turbo_vae(None, p, **kw), weight_dtype))


class MagiHumanVideoVAELoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MagiHumanVideoVAELoader",
            display_name="MagiHuman Wan2.2 VAE Loader",
            category=f"{CATEGORY}/loaders",
            description="Loads the Wan2.2 (TI2V-5B) video VAE: image encoding for TI2V and the full-quality decoder.",
            inputs=[
                io.Combo.Input("vae_name", options=compat.list_models(VAE_FOLDERS),
                               tooltip="models/vae: wan2.2_vae.safetensors (ComfyUI) or the official Wan2.2_VAE.pth."),
                _weight_dtype_input(),
            ],
            outputs=[MagiVideoVAE.Output(display_name="video_vae")],
        )

    @classmethod
    def execute(cls, vae_name, weight_dtype="auto"):
        path = compat.resolve_model(VAE_FOLDERS, vae_name)
        if os.path.isdir(path):
            raise ValueError(f"MagiHuman Wan2.2 VAE Loader: {vae_name} is a folder (a Turbo VAE or audio VAE?); the "
                             "Wan2.2 VAE is one file: pick wan2.2_vae.safetensors or Wan2.2_VAE.pth")
        return io.NodeOutput(_handle("vae", path, load_wan_vae, weight_dtype))


class MagiHumanAudioVAELoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MagiHumanAudioVAELoader",
            display_name="MagiHuman Audio VAE Loader",
            category=f"{CATEGORY}/loaders",
            description="Loads the Stable Audio Open 1.0 (Oobleck) audio VAE; only its VAE tensors are read.",
            inputs=[
                io.Combo.Input("vae_name", options=compat.list_models(AUDIO_VAE_FOLDERS),
                               tooltip="The stable-audio-open-1.0 folder (model.safetensors + model_config.json) "
                                       "or a VAE-only .safetensors, in models/vae or models/checkpoints."),
                _weight_dtype_input("fp32", "The audio VAE is small; fp32 is the official precision."),
            ],
            outputs=[MagiAudioVAE.Output(display_name="audio_vae")],
        )

    @classmethod
    def execute(cls, vae_name, weight_dtype="fp32"):
        path = compat.resolve_model(AUDIO_VAE_FOLDERS, vae_name)
        dtype = "fp32" if weight_dtype == "auto" else weight_dtype  # auto: the official fp32, not bf16
        return io.NodeOutput(_handle("vae", path, load_audio_vae, dtype))


LOADER_NODES = [MagiHumanDiTLoader, MagiHumanSRDiTLoader, MagiHumanTextEncoderLoader, MagiHumanTurboVAELoader,
                MagiHumanVideoVAELoader, MagiHumanAudioVAELoader]
