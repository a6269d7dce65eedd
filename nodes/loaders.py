"""Loader nodes: read ComfyUI's model folders, build engine models on ComfyUI's ops and devices."""

from __future__ import annotations

import os

from ..magihuman.checkpoints import load_dit
from ..magihuman.options import RunOptions
from ..magihuman.options import choices as run_choices
from ..magihuman.storage import PLAIN, STORAGES, load_choices, parse_storage
from ..magihuman.loaders import load_audio_vae, load_turbo_vae, load_wan_vae
from ..magihuman.models.text_encoder import T5GemmaEncoder
from ..magihuman.presets import comfy_name
from . import compat
from .v3 import MagiNode, io
from .types import node_name, MagiAudioVAE, MagiDiT, MagiSRDiT, MagiTextEncoder, MagiTurboVAE, MagiVideoVAE

DIT_FOLDERS = ("diffusion_models",)
TEXT_FOLDERS = ("text_encoders",)
VAE_FOLDERS = ("vae",)
AUDIO_VAE_FOLDERS = ("vae", "checkpoints")
# weight_dtype of the plain models (VAEs) and of the DiT / T5Gemma loaders (every storage of the registry:
# "file" keeps what the file holds, the others store every block linear / projection that way)
PLAIN_DTYPES = ["auto"] + [s.name for s in STORAGES.values() if s.kind == PLAIN]
STORAGE_DTYPES = ["auto"] + load_choices()


def check_storage_choice(weight_dtype) -> bool | str:
    """ComfyUI's combo check of a storage ``weight_dtype``, which also lets through the other names of those
    storages (e.g. "gguf (file)", which API workflows saved before its rename hold; the frontend renames it in saved
    UI workflows, the loader reads both)."""
    try:
        known = weight_dtype in STORAGE_DTYPES or parse_storage(weight_dtype).spec in STORAGE_DTYPES
    except ValueError:
        known = False
    return True if known else f"weight_dtype must be one of {', '.join(STORAGE_DTYPES)}, got {weight_dtype!r}"


def _model_input(input_id: str, kinds: tuple[str, ...], role: str, tooltip: str,
                 extensions: tuple[str, ...] = compat.MODEL_EXTENSIONS):
    """A model list of ComfyUI folders; the default is the name the README and workflows use when present."""
    options = compat.list_models(kinds, extensions=extensions)
    default = comfy_name(role)
    return io.Combo.Input(input_id, options=options, default=default if default in options else None,
                          tooltip=tooltip)


def _weight_dtype_input(default: str = "auto", tooltip: str = "auto = bf16 where supported.", options=PLAIN_DTYPES):
    return io.Combo.Input("weight_dtype", options=options, default=default, tooltip=tooltip)


def _handle(kind: str, path: str, load, weight_dtype: str, **info) -> compat.ModelHandle:
    """Build an engine model on ComfyUI's offload device with ComfyUI's ops, wrapped for model management."""
    load_device, offload_device = compat.devices(kind)
    model = load(path, dtype=compat.pick_weight_dtype(weight_dtype, load_device), device=offload_device,
                 operations=compat.operations())
    return compat.ModelHandle(model, kind, path=path, **info)


class _DiTLoader(MagiNode):
    """The DiT and SR DiT loaders: one schema and one code path, two output types (never registered itself:
    ComfyUI caches schema facts per class, so the two nodes are siblings, not parent and child)."""

    OUTPUT: object
    WANT_SR: bool
    DESCRIPTION: str
    ROLE: str
    OUTPUT_NAME: str

    @classmethod
    def define_schema(cls):
        return cls.schema(
            description=cls.DESCRIPTION,
            inputs=[
                _model_input("model_name", DIT_FOLDERS, cls.ROLE,
                             "A MagiHuman DiT from models/diffusion_models (or models/unet): an official folder "
                             "(model.safetensors.index.json + shards, also .zst), a single .safetensors file, or a "
                             ".gguf written by `python -m magihuman convert` (picking a .gguf sets weight_dtype to "
                             "'file'). Files of other tools load too: ComfyUI's MagiHuman port, Wan2GP (bf16 "
                             "and quanto int8), FastVideo's diffusers transformer/ folder (the layout is read from "
                             "the tensor names)."),
                _weight_dtype_input(options=STORAGE_DTYPES, tooltip=(
                    "How the block linears are kept. auto = what the file holds (a .gguf keeps its quantised blocks, "
                    "an fp8 file its fp8; decoded per layer on the GPU) and plain files in bf16 where supported (fp32 "
                    "files, distill and SR, are converted while streaming). file = the same with bf16. bf16/fp16/fp32 "
                    "decode everything. fp8 = float8_e4m3fn with a per-tensor scale (half the memory of bf16). "
                    "Q8_0 ... Q4_0 quantise every block linear while loading (Q8_0 ~15 GiB, Q4_K ~8 GiB for the 15B "
                    "DiT; a .gguf of that type loads as it is).")),
                io.Combo.Input("attention", options=run_choices()["attention"], default="sdpa",
                               tooltip="Attention kernel of this DiT: sdpa (PyTorch), comfy (ComfyUI's choice, e.g. "
                                       "with --use-sage-attention), flash (FlashAttention 3/2), sage (CUDA, if "
                                       "installed) or math (the reference)."),
                io.Boolean.Input("compile", default=False,
                                 tooltip="torch.compile each transformer layer (one graph per layer kind, reused). "
                                         "Slow first run, faster afterwards."),
                io.Combo.Input("compute_dtype", options=run_choices()["compute_dtype"], default="auto",
                               tooltip="Matmul dtype. auto = bf16 (official numerics) on GPUs with bf16 (else fp16); "
                                       "on CPUs the faster of bf16/fp32, measured once."),
                io.Combo.Input("fp8_compute", options=run_choices()["fp8_compute"], default="off", optional=True,
                               tooltip="With weight_dtype fp8: multiply in fp8 (torch._scaled_mm) instead of "
                                       "dequantising; activations scaled per tensor or per token. auto = token on "
                                       "GPUs with fp8 units (Ada, Hopper and newer), off elsewhere. Faster there, "
                                       "slightly less accurate."),
            ],
            outputs=[cls.OUTPUT.Output(display_name=cls.OUTPUT_NAME)],
        )

    @classmethod
    def validate_inputs(cls, weight_dtype):
        return check_storage_choice(weight_dtype)

    @classmethod
    def execute(cls, model_name, weight_dtype, attention, compile, compute_dtype, fp8_compute="off"):
        # fp8_compute is optional: API prompts written before it existed still validate (then: off)
        path = compat.resolve_model(DIT_FOLDERS, model_name)
        load_device, offload_device = compat.devices("diffusion")
        storage = compat.pick_storage(weight_dtype, load_device)
        model = load_dit(path, storage=storage, device=offload_device, operations=compat.operations())
        is_sr = model.variant.startswith("sr_")
        if is_sr != cls.WANT_SR:
            if is_sr:
                raise ValueError(f"{model_name} is a super-resolution DiT ({model.variant}); load it with "
                                 f"'{node_name('MagiHumanSRDiTLoader')}' and use it in '{node_name('MagiHumanLatentSR')}'")
            raise ValueError(f"{model_name} is a {model.variant} DiT, not a super-resolution model; load it with "
                             f"'{node_name('MagiHumanDiTLoader')}'")
        RunOptions(compute_dtype=compute_dtype, attention=attention, fp8_compute=fp8_compute,
                   compile=compile).apply(model, load_device)  # ComfyUI manages offload and LoRAs itself
        return io.NodeOutput(compat.ModelHandle(model, "diffusion", variant=model.variant, path=path))


class MagiHumanDiTLoader(_DiTLoader):
    DISPLAY_NAME, SUBCATEGORY = "MagiHuman DiT Loader", "loaders"
    CONNECT = "`model` → MagiHuman Distilled Sampler (distill model) or Base Sampler (base model)."
    OUTPUT, WANT_SR = MagiDiT, False
    DESCRIPTION = "Loads the base or distilled MagiHuman joint audio+video denoiser (variant inferred from the files)."
    ROLE, OUTPUT_NAME = "distill", "model"


class MagiHumanSRDiTLoader(_DiTLoader):
    DISPLAY_NAME, SUBCATEGORY = "MagiHuman SR DiT Loader", "loaders"
    CONNECT = "`sr_model` → MagiHuman Latent Super-Resolution."
    OUTPUT, WANT_SR = MagiSRDiT, True
    DESCRIPTION = "Loads a MagiHuman super-resolution DiT (540p or 1080p; 1080p uses local attention)."
    ROLE, OUTPUT_NAME = "sr_540p", "sr_model"


class MagiHumanTextEncoderLoader(MagiNode):
    DISPLAY_NAME, SUBCATEGORY = "MagiHuman T5Gemma Loader", "loaders"
    CONNECT = "`text_encoder` → MagiHuman Text Encode."

    @classmethod
    def define_schema(cls):
        return cls.schema(
            description="Loads the T5Gemma-9B encoder (only the encoder tensors are read) with its tokenizer.",
            inputs=[
                _model_input("text_encoder", TEXT_FOLDERS, "text_encoder",
                             "models/text_encoders: the google/t5gemma-9b-9b-ul2 folder, an encoder-only .safetensors "
                             "with tokenizer.json beside it, or a .gguf written by `python -m magihuman convert` "
                             "(config and tokenizer inside); another .gguf with Hugging Face names (the published "
                             "t5gemma-9b-9b-ul2-Q6_K.gguf) in a folder with config.json and tokenizer.json."),
                _weight_dtype_input(options=STORAGE_DTYPES, tooltip=(
                    "auto = what the file holds (a .gguf keeps its quantised blocks), plain files in bf16 (official) "
                    "where supported. fp8 = projections and embedding as float8_e4m3fn + per-tensor scale (~8.6 GiB "
                    "instead of 17.2 GiB for the 9B encoder); Q8_0 (9.2 GiB) ... Q4_0 quantise while loading.")),
            ],
            outputs=[MagiTextEncoder.Output(display_name="text_encoder")],
        )

    @classmethod
    def validate_inputs(cls, weight_dtype):
        return check_storage_choice(weight_dtype)

    @classmethod
    def execute(cls, text_encoder, weight_dtype):
        path = compat.resolve_model(TEXT_FOLDERS, text_encoder)
        load_device, offload_device = compat.devices("text_encoder")
        storage = compat.pick_storage(weight_dtype, load_device)
        model = T5GemmaEncoder.from_pretrained(path, storage=storage, device=offload_device,
                                               operations=compat.operations())
        return io.NodeOutput(compat.ModelHandle(model, "text_encoder", path=path))


class MagiHumanTurboVAELoader(MagiNode):
    DISPLAY_NAME, SUBCATEGORY = "MagiHuman Turbo VAE Loader", "loaders"
    CONNECT = "`turbo_vae` → MagiHuman Turbo VAE Decode."

    @classmethod
    def define_schema(cls):
        return cls.schema(
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


class MagiHumanVideoVAELoader(MagiNode):
    DISPLAY_NAME, SUBCATEGORY = "MagiHuman Wan2.2 VAE Loader", "loaders"
    CONNECT = ("`video_vae` → MagiHuman Image To Video (TI2V), Wan2.2 VAE Decode, or the `video_vae` input of Latent "
               "Super-Resolution (TI2V + SR).")

    @classmethod
    def define_schema(cls):
        return cls.schema(
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


class MagiHumanAudioVAELoader(MagiNode):
    DISPLAY_NAME, SUBCATEGORY = "MagiHuman Audio VAE Loader", "loaders"
    CONNECT = "`audio_vae` → MagiHuman Audio Decode and MagiHuman Reference Audio (A2V)."

    @classmethod
    def define_schema(cls):
        return cls.schema(
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
