"""Multi-GPU nodes: run a MagiHuman DiT (or SR DiT) sequence-parallel over several GPUs from the graph."""

from __future__ import annotations

from ..magihuman.parallel import check_world_size
from . import compat
from .v3 import MagiNode, io
from .types import MagiDiT, MagiSRDiT, node_name

MAX_GPUS = 8


class _MultiGPU(MagiNode):
    """The two Multi-GPU nodes: one code path, one model type each (siblings: ComfyUI caches schema facts per
    registered class)."""

    MODEL: object
    INPUT_NAME: str
    LOADER: str

    @classmethod
    def define_schema(cls):
        return cls.schema(
            description="Runs this DiT on several GPUs: its token sequence is split between them (Ulysses sequence "
                        "parallelism, as the official code does). One worker process per extra GPU loads its own "
                        "copy of the same DiT file with the same options on first use and stays alive across prompts; "
                        "the samplers drive the group. Every GPU must hold a whole DiT (fp8 or GGUF weights help). "
                        "A failing, dead or silent worker stops the run with an error naming it (the next run starts "
                        "new workers). Without CUDA the workers run on the CPU (tests).",
            inputs=[
                cls.MODEL.Input(cls.INPUT_NAME, tooltip=f"From {node_name(cls.LOADER)} (LoRA loaders may come before "
                                                        "or after: the workers apply the same LoRA files)."),
                io.Int.Input("gpus", default=2, min=2, max=MAX_GPUS,
                             tooltip="GPUs in the group, this one included. Must divide the 40 attention heads and "
                                     "suit the 8 key/value heads: 2, 4 or 8 for the released models."),
                io.Int.Input("timeout_seconds", default=600, min=10, max=86400,
                             tooltip="Longest wait for any worker, loading included (the first run loads the DiT "
                                     "in every worker; compile makes the first step slow too)."),
            ],
            outputs=[cls.MODEL.Output(display_name=cls.INPUT_NAME)],
        )

    @classmethod
    def execute(cls, **inputs):
        handle, gpus, timeout = inputs[cls.INPUT_NAME], int(inputs["gpus"]), int(inputs["timeout_seconds"])
        config = handle.model.config
        try:
            check_world_size(config.num_heads_q, config.num_heads_kv, gpus)
        except ValueError as e:
            raise ValueError(f"{cls.name()}: {e}") from None
        return io.NodeOutput(compat.multi_gpu_handle(handle, gpus, timeout, where=cls.name()))


class MagiHumanMultiGPU(_MultiGPU):
    DISPLAY_NAME, SUBCATEGORY = "MagiHuman Multi-GPU", "loaders"
    MODEL, INPUT_NAME, LOADER = MagiDiT, "model", "MagiHumanDiTLoader"


class MagiHumanSRMultiGPU(_MultiGPU):
    DISPLAY_NAME, SUBCATEGORY = "MagiHuman SR Multi-GPU", "loaders"
    MODEL, INPUT_NAME, LOADER = MagiSRDiT, "sr_model", "MagiHumanSRDiTLoader"


MULTIGPU_NODES = [MagiHumanMultiGPU, MagiHumanSRMultiGPU]
