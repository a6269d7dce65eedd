"""ComfyUI-MagiHuman: daVinci-MagiHuman (15B audio+video DiT) as ComfyUI nodes.

Importing this package never imports ComfyUI; the node classes are built only when ComfyUI
calls ``comfy_entrypoint``.
"""


async def comfy_entrypoint():
    from .nodes import MagiHumanExtension

    return MagiHumanExtension()
