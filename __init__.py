"""ComfyUI-MagiHuman: daVinci-MagiHuman (15B audio+video DiT) as ComfyUI nodes.

Importing this package never imports ComfyUI; the node classes are built only when ComfyUI
calls ``comfy_entrypoint``.
"""

# ComfyUI serves this folder at /extensions/<pack folder>/: web/docs/<NodeId>.md is the help the frontend shows
# for each node (no JavaScript in it: every .js there would be loaded as a frontend extension).
WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes import MagiHumanExtension

    return MagiHumanExtension()
