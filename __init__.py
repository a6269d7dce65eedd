"""ComfyUI-MagiHuman: daVinci-MagiHuman (15B audio+video DiT) as ComfyUI nodes.

Importing this package never imports ComfyUI; the node classes are built only when ComfyUI
calls ``comfy_entrypoint``.
"""

# ComfyUI serves this folder at /extensions/<pack folder>/: web/docs/<NodeId>.md is the help the frontend shows
# for each node, and every .js in it is loaded as a frontend extension: only web/js/magihuman_gguf.js (picking a
# .gguf model on a DiT / SR DiT / text encoder loader sets its weight_dtype to "file").
WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes import MagiHumanExtension

    return MagiHumanExtension()
