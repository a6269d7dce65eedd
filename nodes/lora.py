"""LoRA loader nodes: a LoRA file from ComfyUI's loras folder on a MagiHuman DiT (or SR DiT), chainable."""

from __future__ import annotations

import math

from ..magihuman.lora import load_lora
from . import compat
from .v3 import MagiNode, io
from .types import MagiDiT, MagiSRDiT

LORA_FOLDERS = ("loras",)


class _LoraLoader(MagiNode):
    """The two LoRA loaders: one code path, one model type each (siblings: ComfyUI caches schema facts per
    registered class)."""

    MODEL: object
    INPUT_NAME: str

    @classmethod
    def define_schema(cls):
        return cls.schema(
            description="Applies a LoRA to the MagiHuman DiT through ComfyUI's weight patches (merged on load, or "
                        "per layer for lowvram, fp8 and GGUF weights; the input model is unchanged). Chain several. "
                        "Keys are the official module names (PEFT lora_A/lora_B, kohya lora_down/lora_up/alpha, "
                        "'diffusion_model.' / 'transformer.' prefixes, diff tensors, DoRA dora_scale; q/k/v and "
                        "per-modality parts of the fused layers are understood), or those of musubi-tuner, Wan2GP "
                        "and ComfyUI's own MagiHuman port.",
            inputs=[
                cls.MODEL.Input(cls.INPUT_NAME),
                io.Combo.Input("lora_name", options=compat.list_models(LORA_FOLDERS, folders=False,
                                                                       extensions=compat.PLAIN_EXTENSIONS),
                               tooltip="A LoRA file in models/loras (.safetensors)."),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.05,
                               tooltip="Scales the LoRA's delta (1 = as trained, 0 = no change)."),
            ],
            outputs=[cls.MODEL.Output(display_name=cls.INPUT_NAME)],
        )

    @classmethod
    def execute(cls, **inputs):
        handle, lora_name, strength = inputs[cls.INPUT_NAME], inputs["lora_name"], inputs["strength"]
        if not math.isfinite(strength):
            raise ValueError(f"{cls.name()}: strength must be a finite number, got {strength!r}")
        path = compat.resolve_model(LORA_FOLDERS, lora_name)
        lora = load_lora(path, handle.model)  # mapped and checked against this model's layout now
        if strength == 0:
            return io.NodeOutput(handle)
        return io.NodeOutput(handle.with_lora(lora, strength))


class MagiHumanLoraLoader(_LoraLoader):
    DISPLAY_NAME, SUBCATEGORY = "MagiHuman LoRA Loader", "loaders"
    MODEL, INPUT_NAME = MagiDiT, "model"


class MagiHumanSRLoraLoader(_LoraLoader):
    DISPLAY_NAME, SUBCATEGORY = "MagiHuman SR LoRA Loader", "loaders"
    MODEL, INPUT_NAME = MagiSRDiT, "sr_model"


LORA_NODES = [MagiHumanLoraLoader, MagiHumanSRLoraLoader]
