"""ComfyUI nodes of the pack (V3 API). Thin adapters: ComfyUI types in, engine stage calls, ComfyUI types out."""

from .v3 import ComfyExtension
from .conditioning import CONDITIONING_NODES
from .decode import DECODE_NODES
from .example_inputs import install_example_inputs
from .loaders import LOADER_NODES
from .long_video import LONG_VIDEO_NODES
from .lora import LORA_NODES
from .multigpu import MULTIGPU_NODES
from .prompt import PROMPT_NODES
from .sampling import SAMPLING_NODES

NODE_CLASSES = [*LOADER_NODES, *LORA_NODES, *MULTIGPU_NODES, *CONDITIONING_NODES, *SAMPLING_NODES, *DECODE_NODES,
                *PROMPT_NODES, *LONG_VIDEO_NODES]


class MagiHumanExtension(ComfyExtension):
    async def get_node_list(self):
        # ComfyUI asks once, when it loads the pack (0.8 has no on_load call): the templates' example files go
        # into its input folder now, before the frontend reads the Load Image / Load Audio lists
        install_example_inputs()
        return list(NODE_CLASSES)
