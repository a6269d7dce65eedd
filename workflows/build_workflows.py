"""Writes everything derived from the node schemas: templates, tiny workflows, API twins, thumbnails, node help.

    python workflows/build_workflows.py

- ``example_workflows/<name>.json`` + ``<name>.jpg``: the templates ComfyUI's template browser lists (every
  JSON in that folder, the JPG beside it as the thumbnail). Template style of core ComfyUI: UUID ids, a top
  graph with only what an artist touches (Load Image / Load Audio, the MagiHuman subgraph node with the
  prompt, size, length, seed, steps and model names, Save Video, a note), and one subgraph per mode whose
  groups (Models, Prompt, Sampling, Super-resolution, Decode) run left to right.
- ``workflows/tiny/<name>.json``: the same graphs on the tiny random models (CPU checks; not templates).
- ``workflows/api/<name>_api.json``: the API-format twin of every workflow (``POST /prompt``); node ids are the
  ones the frontend gives a subgraph's nodes (``"<subgraph node id>:<inner node id>"``), so the twin is exactly
  the prompt the frontend queues.
- ``web/docs/<NodeId>.md``: the help the frontend shows for each node.
- ``web/storage.json``: what the frontend extension (``web/js/magihuman_gguf.js``) reads of the storage registry.
- ``example_inputs/``: the portrait, the voice-like clip and the MP4 of the portrait speaking it that the TI2V / A2V /
  Extend workflows' Load Image / Load Audio / Load Video open on (drawn and synthesised here; the pack copies them
  into ComfyUI's input folder, nodes/example_inputs.py).

Each workflow opens at a zoom where the frontend draws its nodes: see VIEW / saved_view (1.3x frontends show the
saved view) and the compact top graph (1.5x fits a template to it).

Widget values are laid out from the nodes' own schemas (this pack's nodes, plus ``CORE_NODES``: the ComfyUI
core nodes the workflows use), so the files always match the code. tests/test_templates.py and
tests/test_workflows.py check the result; tests/test_comfyui_real_workflows.py loads every workflow in the
frontend ComfyUI 0.8 bundles and in the newest one and runs the tiny ones in a real ComfyUI.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import random
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PACK_NAME = "comfyui_magihuman"
TEMPLATE_DIR = ROOT / "example_workflows"   # ComfyUI serves <pack>/example_workflows/*.json as templates
TINY_DIR = HERE / "tiny"
API_DIR = HERE / "api"
DOCS_DIR = ROOT / "web" / "docs"            # /extensions/<pack>/docs/<NodeId>.md (WEB_DIRECTORY = "./web")
FRONTEND_VERSION = "1.35.9"                 # what ComfyUI 0.8.0 pins; the templates follow its schema
UUID_NAMESPACE = uuid.UUID("6f1f3c2e-6a43-4a55-9c1d-7d0f8a1e5b21")  # ids are uuid5(name): files are reproducible

# ComfyUI core nodes used by the workflows: inputs in schema order as (name, type, kind, default),
# kind "socket" | "widget" | "optional_socket" | "upload_widget"; outputs as (name, type).
CORE_NODES: dict[str, dict] = {
    "LoadImage": {"inputs": [("image", "COMBO", "upload_widget", None)],   # None: the pack's example file
                  "outputs": [("IMAGE", "IMAGE"), ("MASK", "MASK")], "title": "Load Image"},
    "LoadAudio": {"inputs": [("audio", "COMBO", "upload_widget", None)], "outputs": [("AUDIO", "AUDIO")],
                  "title": "Load Audio"},
    "LoadVideo": {"inputs": [("file", "COMBO", "upload_widget", None)], "outputs": [("VIDEO", "VIDEO")],
                  "title": "Load Video"},
    "GetVideoComponents": {"inputs": [("video", "VIDEO", "socket", None)],
                           "outputs": [("images", "IMAGE"), ("audio", "AUDIO"), ("fps", "FLOAT")],
                           "title": "Get Video Components"},
    "CreateVideo": {"inputs": [("images", "IMAGE", "socket", None), ("fps", "FLOAT", "widget", 30.0),
                               ("audio", "AUDIO", "optional_socket", None)],
                    "outputs": [("VIDEO", "VIDEO")], "title": "Create Video"},
    "SaveVideo": {"inputs": [("video", "VIDEO", "socket", None), ("filename_prefix", "STRING", "widget", "video/ComfyUI"),
                             ("format", "COMBO", "widget", "auto"), ("codec", "COMBO", "widget", "auto")],
                  "outputs": [], "title": "Save Video"},
    "MarkdownNote": {"inputs": [("text", "STRING", "widget", "")], "outputs": []},
}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
GROUP_ORDER = ("Models", "Prompt", "Sampling", "Super-resolution", "Decode")
GROUP_COLOR = "#3f789e"

# The example prompts, in the format the model was trained on (main body with the spoken line quoted,
# Dialogue, Background Sound). magihuman.prompts.EXAMPLE_PROMPTS is used when it exists; this is the fallback.
WORKFLOW_PROMPTS_FALLBACK = {
    "t2v": ("A young woman with short black hair and a cream sweater sits by a sunlit cafe window, facing the "
            "camera. She smiles warmly and says, \"Good morning! Let me show you my favourite corner of the city.\" "
            "Her voice is bright and clear, at a relaxed pace. The camera is static at eye level in a medium "
            "close-up; soft daylight, shallow depth of field, the cafe behind her blurred and still.\n\n"
            "Dialogue:\n<Young woman in cream sweater, English>: \"Good morning! Let me show you my favourite "
            "corner of the city.\"\n\nBackground Sound:\n<Low murmur of cafe conversation>"),
}
TINY_PROMPT = "A man smiles and says hello."



def import_pack():
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(PACK_NAME, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = mod
    spec.loader.exec_module(mod)
    return mod


def engine(module: str):
    return importlib.import_module(f"{import_pack().__name__}.magihuman.{module}")


def example_inputs():
    """nodes/example_inputs.py: the example image, speech and video clip (names, folder) the pack copies into
    input/."""
    return importlib.import_module(f"{import_pack().__name__}.nodes.example_inputs")


def example_prompt(kind: str) -> str:
    prompts = getattr(engine("prompts"), "EXAMPLE_PROMPTS", None) or {}
    return prompts.get(kind) or prompts.get("t2v") or WORKFLOW_PROMPTS_FALLBACK["t2v"]


def node_specs() -> dict[str, dict]:
    """Every node type the workflows may use -> {inputs: [(name, type, kind, default)], outputs: [(name, type)],
    options, multiline, title, schema}."""
    pack = import_pack()
    nodes = importlib.import_module(f"{pack.__name__}.nodes")
    specs = {k: dict(v, options={}, multiline=set()) for k, v in CORE_NODES.items()}
    examples = example_inputs()  # Load Image / Load Audio open on the files the pack puts into input/
    for loader, name in (("LoadImage", examples.EXAMPLE_IMAGE), ("LoadAudio", examples.EXAMPLE_AUDIO),
                         ("LoadVideo", examples.EXAMPLE_CLIP)):
        specs[loader]["inputs"] = [(i, t, k, name if k == "upload_widget" else d)
                                   for i, t, k, d in CORE_NODES[loader]["inputs"]]
    for cls in nodes.NODE_CLASSES:
        s = cls.define_schema()
        ins = []
        for i in s.inputs:
            if i.io_type in WIDGET_TYPES:
                kind = "seed_widget" if getattr(i, "control_after_generate", None) else "widget"
            else:
                kind = "optional_socket" if i.optional else "socket"
            ins.append((i.id, i.io_type, kind, i.default))
        outs = [(o.display_name or o.io_type, o.io_type) for o in s.outputs]
        specs[s.node_id] = {"inputs": ins, "outputs": outs, "title": s.display_name, "schema": s, "connect": cls.CONNECT,
                            "options": {i.id: i.options for i in s.inputs if i.io_type == "COMBO"},
                            "multiline": {i.id for i in s.inputs if getattr(i, "multiline", False)}}
    return specs


# ------------------------------------------------------------------------------------------ graph specs
@dataclass
class Node:
    """One node of a mode's subgraph: widget values, links from other nodes (input -> (key, output slot)),
    its group and column inside the group."""

    key: str
    type: str
    widgets: dict = field(default_factory=dict)
    links: dict = field(default_factory=dict)
    group: str = "Sampling"
    col: int = 0


@dataclass
class Exposed:
    """A subgraph input: ``targets`` are (node key, input name) inside; widget-typed ones get their value here."""

    name: str
    type: str
    targets: list
    label: str | None = None
    value: object = None


@dataclass
class Mode:
    name: str                  # file stem
    title: str                 # subgraph name (shown on the node)
    summary: str               # one line for the note and the thumbnail
    kind: str                  # example prompt kind
    nodes: list
    exposed: list
    output: tuple              # (node key, slot) of the VIDEO
    top_inputs: list           # [(exposed name, core loader type)]
    tiny: bool
    preset: str                # magihuman.presets name (memory/speed numbers)
    card: tuple                # thumbnail lines (headline, detail)
    dit_role: str = "distill"  # the model file the DiT loader names (magihuman.presets.MODEL_FILES role)


def model_names(tiny: bool) -> dict[str, str]:
    presets = engine("presets")
    return {role: presets.comfy_name(role, tiny) for role in presets.MODEL_FILES}


DISTILL_LORA_NAME = "magihuman_distill_from_base_r64.safetensors"  # what the note's extract-lora command writes


def lora_name(tiny: bool, mode: str = "lora") -> str:
    """The LoRA a LoRA workflow names: the tiny ones written with the tiny models, else the file the note says
    how to make (distill_lora) or a placeholder it explains (there is no published MagiHuman LoRA to link)."""
    tiny_mod = engine("tiny")
    if mode == "distill_lora":
        return Path(tiny_mod.TINY_DISTILL_LORA).name if tiny else DISTILL_LORA_NAME
    return Path(tiny_mod.TINY_LORA).name if tiny else "your_magihuman_lora.safetensors"


# role (magihuman.presets.MODEL_FILES) -> (subgraph input, node key, loader type, widget naming the file, label)
LOADERS = {
    "distill": ("dit_model", "dit", "MagiHumanDiTLoader", "model_name", "distilled DiT"),
    "base": ("dit_model", "dit", "MagiHumanDiTLoader", "model_name", "base DiT"),
    "sr_540p": ("sr_model", "sr_dit", "MagiHumanSRDiTLoader", "model_name", "540p SR DiT"),
    "sr_1080p": ("sr_model", "sr_dit", "MagiHumanSRDiTLoader", "model_name", "1080p SR DiT"),
    "text_encoder": ("text_encoder", "te", "MagiHumanTextEncoderLoader", "text_encoder", "text encoder"),
    "turbo_vae": ("turbo_vae", "turbo", "MagiHumanTurboVAELoader", "vae_name", "turbo VAE"),
    "audio_vae": ("audio_vae", "audio_vae", "MagiHumanAudioVAELoader", "vae_name", "audio VAE"),
    "video_vae": ("video_vae", "wan", "MagiHumanVideoVAELoader", "vae_name", "Wan2.2 VAE"),
}


def model_loaders(roles: list, tiny: bool) -> tuple[list, list]:
    """(loader Nodes of these model roles, in that order; the subgraph inputs naming their files, in LOADERS order).
    The file names live in the inputs only: build() copies them into the loaders' widgets."""
    names = model_names(tiny)
    nodes = [Node(LOADERS[r][1], LOADERS[r][2], {"weight_dtype": "fp32" if tiny or r == "audio_vae" else "auto"},
                  group="Models") for r in roles]
    exposed = [Exposed(name, "COMBO", [(key, widget)], label=label, value=names[r])
               for r, (name, key, _, widget, label) in LOADERS.items() if r in roles]
    return nodes, exposed


def make_mode(mode: str, tiny: bool, *, kind: str, nodes: list, exposed: list, top: list,
              dit_role: str = "distill") -> Mode:
    """A built subgraph as a Mode: its file name, title, summary, preset and card come from MODES."""
    info = MODES[mode]
    name = f"magihuman_tiny_{TINY_STEMS[mode]}" if tiny else f"magihuman_{info['stem']}"
    return Mode(name=name, title=("MagiHuman tiny " if tiny else "MagiHuman ") + info["title"],
                summary=info["summary"], kind=kind, nodes=nodes, exposed=exposed, output=("video", 0), top_inputs=top,
                tiny=tiny, preset=info["preset"], card=info["card"], dit_role=dit_role)


def build_mode(mode: str, tiny: bool = False) -> Mode:
    """The subgraph of one mode: t2v / ti2v / a2v (distilled), base (CFG), sr_540p / sr_1080p (base + SR); the
    long-video modes (LONG_MODES) are built by :func:`build_long_mode`."""
    if mode in LONG_MODES:
        return build_long_mode(mode, tiny)
    preset = engine("presets").PRESETS[MODES[mode]["preset"]]
    distill = preset.sampler == "distilled"  # also distill_lora: the base DiT made distilled by a LoRA
    sr = preset.sr
    w, h, secs = (64, 64, 2.0 if distill else 1.0) if tiny else (preset.width, preset.height, float(preset.seconds))
    steps = (2 if sr else 4) if tiny and not distill else preset.steps
    kind = {"t2v": "t2v", "lora": "t2v", "distill_lora": "t2v", "ti2v": "ti2v", "a2v": "a2v", "base": "base"}.get(
        mode, "sr")
    prompt = TINY_PROMPT if tiny else example_prompt(kind)
    dit_role = "distill" if distill and mode != "distill_lora" else "base"  # distill_lora: base + a LoRA
    nodes, models = model_loaders([dit_role, *([sr] if sr else []), "text_encoder", "turbo_vae", "audio_vae",
                                   *(["video_vae"] if mode == "ti2v" else [])], tiny)
    if mode in ("lora", "distill_lora"):  # patches the DiT the sampler gets (ComfyUI's ModelPatcher; files untouched)
        nodes.insert(1, Node("lora", "MagiHumanLoraLoader", {}, {"model": ("dit", 0)}, group="Models"))
    nodes += [
        Node("enc", "MagiHumanTextEncode", {"encode_negative": not distill}, {"text_encoder": ("te", 0)},
             group="Prompt"),
        Node("latent", "MagiHumanEmptyAVLatent", group="Sampling"),
    ]
    last = "latent"
    if mode == "ti2v":
        nodes.append(Node("i2v", "MagiHumanImageToVideo", {}, {"latent": ("latent", 0), "video_vae": ("wan", 0)},
                          group="Sampling"))
        last = "i2v"
    if mode == "a2v":
        nodes.append(Node("a2v", "MagiHumanReferenceAudio", {},
                          {"latent": ("latent", 0), "audio_vae": ("audio_vae", 0)}, group="Sampling"))
        last = "a2v"
    if distill:
        nodes.append(Node("sample", "MagiHumanDistilledSampler", {},
                          {"model": ("lora" if mode in ("lora", "distill_lora") else "dit", 0), "positive": ("enc", 0),
                           "latent": (last, 0)}, group="Sampling"))
    else:
        nodes.append(Node("sample", "MagiHumanBaseSampler", {},
                          {"model": ("dit", 0), "positive": ("enc", 0), "negative": ("enc", 1), "latent": (last, 0)},
                          group="Sampling"))
    out = "sample"
    if sr:
        res = {"sr_540p": "540p (896x512)", "sr_1080p": "1080p (1920x1088)"}[sr]
        sw = {"resolution": res, "seed": 7, "steps": 2 if tiny else preset.sr_steps}
        if tiny:
            sw.update(resolution="custom", width=w * 2, height=h * 2)
        nodes.append(Node("sr", "MagiHumanLatentSR", sw, {"sr_model": ("sr_dit", 0), "positive": ("enc", 0),
                                                          "latent": ("sample", 0)}, group="Super-resolution"))
        out = "sr"
    nodes += [
        Node("decode", "MagiHumanTurboVAEDecode", {}, {"turbo_vae": ("turbo", 0), "latent": (out, 0)}, group="Decode"),
        Node("adecode", "MagiHumanAudioDecode", {}, {"audio_vae": ("audio_vae", 0), "latent": (out, 0)},
             group="Decode"),
        Node("video", "CreateVideo", {"fps": float(engine("geometry").FPS)},
             {"images": ("decode", 0), "audio": ("adecode", 0)}, group="Decode"),
    ]
    exposed = []
    top = []
    if mode == "ti2v":
        exposed.append(Exposed("image", "IMAGE", [("i2v", "image")]))
        top.append(("image", "LoadImage"))
    if mode == "a2v":
        exposed.append(Exposed("audio", "AUDIO", [("a2v", "audio")]))
        top.append(("audio", "LoadAudio"))
    exposed += [Exposed("prompt", "STRING", [("enc", "prompt")], value=prompt)]
    if not distill:
        exposed.append(Exposed("negative_prompt", "STRING", [("enc", "negative_prompt")], label="negative prompt",
                               value=None))  # None: the schema default (the official negative prompt)
    exposed += [
        Exposed("width", "INT", [("latent", "width")], value=w),
        Exposed("height", "INT", [("latent", "height")], value=h),
        Exposed("seconds", "FLOAT", [("latent", "seconds")], value=secs),
        Exposed("seed", "INT", [("sample", "seed")], value=42),
        Exposed("steps", "INT", [("sample", "steps")], value=steps),
        models[0],  # the DiT
    ]
    if mode == "lora":
        exposed += [Exposed("lora_name", "COMBO", [("lora", "lora_name")], label="LoRA", value=lora_name(tiny, mode)),
                    Exposed("lora_strength", "FLOAT", [("lora", "strength")], label="LoRA strength", value=1.0)]
    if mode == "distill_lora":
        exposed.append(Exposed("lora_name", "COMBO", [("lora", "lora_name")], label="distill LoRA",
                               value=lora_name(tiny, mode)))
    exposed += models[1:]  # SR DiT, text encoder, VAEs
    return make_mode(mode, tiny, kind=kind, nodes=nodes, exposed=exposed, top=top, dit_role=dit_role)


# A long clip is made window by window inside one node (MagiHuman Long Video / Extend decode it themselves):
# a2v_long: Load Audio -> Long Video over the whole speech; extend: Load Video -> Get Video Components -> Extend.
LONG_MODES = ("a2v_long", "extend")
MODES = {
    "t2v": {"stem": "t2v_distill_256p", "title": "T2V 256p", "preset": "distill_256p",
            "summary": "Text to video+audio with the distilled model: 8 steps, no CFG, 448x256, 4 s.",
            "card": ("Text to video + speech", "distilled model, 8 steps, 448x256")},
    "ti2v": {"stem": "ti2v_distill_256p", "title": "TI2V 256p", "preset": "distill_256p",
             "summary": "Text + first-frame image to video+audio with the distilled model (8 steps, 448x256, 4 s).",
             "card": ("Image + text to video + speech", "distilled model, 8 steps, first frame kept")},
    "a2v": {"stem": "a2v_distill_256p", "title": "A2V 256p", "preset": "distill_256p",
            "summary": "Speech-driven video: your audio is kept as the sound track and sets the length "
                       "(distilled model, 8 steps, 448x256).",
            "card": ("Speech to talking video", "distilled model, your audio kept")},
    "lora": {"stem": "t2v_distill_256p_lora", "title": "T2V 256p + LoRA", "preset": "distill_256p",
             "summary": "Text to video+audio with the distilled model and a LoRA (strength adjustable): 8 steps, "
                        "448x256, 4 s.",
             "card": ("Text to video + speech, with a LoRA", "distilled model, 8 steps, LoRA strength")},
    "distill_lora": {"stem": "t2v_distill_via_lora_256p", "title": "T2V 256p (base + distill LoRA)",
                     "preset": "distill_256p",
                     "summary": "Text to video+audio with the base DiT made distilled by a LoRA (from extract-lora): "
                                "8 steps, no CFG, 448x256, 4 s. One base file plus small LoRAs instead of one "
                                "full checkpoint per model.",
                     "card": ("Text to video + speech", "base DiT + distill LoRA, 8 steps")},
    "base": {"stem": "t2v_base_cfg_256p", "title": "T2V 256p (base, CFG)", "preset": "base_256p",
             "summary": "Text to video+audio with the base model: 32 UniPC steps with CFG (video 5 -> 2 below "
                        "t=500, audio 5), 448x256, 4 s.",
             "card": ("Text to video + speech", "base model, 32 steps, CFG")},
    "sr_540p": {"stem": "sr_540p", "title": "T2V 540p (base + SR)", "preset": "sr_540p",
                "summary": "Base 448x256 (32 steps, CFG), then latent super-resolution to 896x512 (540p SR model, "
                           "5 steps, audio kept in the loop).",
                "card": ("Text to video + speech, 540p", "base 448x256, then SR to 896x512")},
    "sr_1080p": {"stem": "sr_1080p", "title": "T2V 1080p (base + SR)", "preset": "sr_1080p",
                 "summary": "Base 448x256 (32 steps, CFG), then latent super-resolution to 1920x1088 (1080p SR "
                            "model with local attention, 5 steps).",
                 "card": ("Text to video + speech, 1080p", "base 448x256, then SR to 1920x1088")},
    "a2v_long": {"stem": "a2v_long_speech_256p", "title": "A2V long speech 256p", "preset": "distill_256p",
                 "summary": "A talking video from a whole speech of any length (made for about 30 s), in windows of "
                            "4 s: your audio is the sound track, unchanged, with no seams (distilled model, 8 steps a "
                            "window, 448x256).",
                 "card": ("Talking video from a long speech", "A2V in windows of 4 s, e.g. 30 s")},
    "extend": {"stem": "extend_clip_256p", "title": "Extend a clip 256p", "preset": "distill_256p",
               "summary": "Continues a video clip: its last frame starts the new part and its sound is kept; out comes "
                          "the clip followed by `seconds` more, in windows of 4 s (distilled model, 8 steps a window, "
                          "448x256).",
               "card": ("Extend a clip", "its last frame continues, its sound kept")},
}
TEMPLATE_MODES = ["t2v", "ti2v", "a2v", "lora", "distill_lora", "base", "sr_540p", "sr_1080p", *LONG_MODES]
TINY_MODES = ["t2v", "ti2v", "a2v", "lora", "distill_lora", "sr_540p", *LONG_MODES]
TINY_STEMS = {"t2v": "t2v", "ti2v": "ti2v", "a2v": "a2v", "lora": "t2v_lora", "distill_lora": "t2v_distill_via_lora",
              "sr_540p": "sr", "a2v_long": "a2v_long", "extend": "extend"}
LONG_SPEECH_SECONDS = 30.0  # the speech the A2V long template is made for (its note's window count, work, time)


def long_window_seconds() -> float:
    """The window length of the long-video templates: MagiHuman Long Video's default (the official examples' clip
    length)."""
    schema = importlib.import_module(f"{import_pack().__name__}.nodes.long_video").MagiHumanLongVideo.define_schema()
    return next(i.default for i in schema.inputs if i.id == "window_seconds")


def build_long_mode(mode: str, tiny: bool = False) -> Mode:
    """The subgraph of a long-video mode: the loaders (with the Wan2.2 VAE, which re-encodes each window's first
    frame), Text Encode, the windowed node (key "sample": the seed the top graph controls) and Create Video."""
    preset = engine("presets").PRESETS[MODES[mode]["preset"]]
    extend = mode == "extend"
    w, h = (64, 64) if tiny else (preset.width, preset.height)
    window = 1.0 if tiny else long_window_seconds()
    secs = window if extend else 0.0  # A2V: 0 = the whole speech
    steps = 2 if tiny else preset.steps
    prompt = TINY_PROMPT if tiny else example_prompt("ti2v" if extend else "a2v")  # extend: the portrait's man
    nodes, models = model_loaders(["distill", "text_encoder", "turbo_vae", "video_vae", "audio_vae"], tiny)
    nodes.append(Node("enc", "MagiHumanTextEncode", {"encode_negative": False}, {"text_encoder": ("te", 0)},
                      group="Prompt"))
    # text_encoder also goes to the windowed node: its 'prompts' (one per window) then work without rewiring
    links = {"model": ("dit", 0), "video_vae": ("wan", 0), "audio_vae": ("audio_vae", 0), "turbo_vae": ("turbo", 0),
             "positive": ("enc", 0), "text_encoder": ("te", 0)}
    if extend:
        nodes.append(Node("clip", "GetVideoComponents", group="Sampling"))
        links.update(images=("clip", 0), clip_audio=("clip", 1))
    nodes += [
        Node("sample", "MagiHumanExtend" if extend else "MagiHumanLongVideo", {}, links, group="Sampling",
             col=1 if extend else 0),
        Node("video", "CreateVideo", {"fps": float(engine("geometry").FPS)},
             {"images": ("sample", 0), "audio": ("sample", 1)}, group="Decode"),
    ]
    if extend:
        exposed, top = [Exposed("video", "VIDEO", [("clip", "video")])], [("video", "LoadVideo")]
    else:
        exposed, top = [Exposed("audio", "AUDIO", [("sample", "speech")])], [("audio", "LoadAudio")]
    exposed += [
        Exposed("prompt", "STRING", [("enc", "prompt")], value=prompt),
        Exposed("width", "INT", [("sample", "width")], value=w),
        Exposed("height", "INT", [("sample", "height")], value=h),
        Exposed("seconds", "FLOAT", [("sample", "seconds")], label="seconds to add" if extend else None, value=secs),
        Exposed("window_seconds", "FLOAT", [("sample", "window_seconds")], label="window seconds", value=window),
        Exposed("seed", "INT", [("sample", "seed")], value=42),
        Exposed("steps", "INT", [("sample", "steps")], value=steps),
        *models,
    ]
    if extend:  # None: the schema default (the clip followed by the new part)
        exposed.append(Exposed("output", "COMBO", [("sample", "output")], value=None))
    return make_mode(mode, tiny, kind=mode, nodes=nodes, exposed=exposed, top=top)


# ------------------------------------------------------------------------------------------ layout
NODE_WIDTH = {"MagiHumanTextEncode": 380, "MagiHumanLatentSR": 300}
DEFAULT_NODE_WIDTH = 280
ROW, WIDGET, TITLE, MULTILINE = 22, 26, 30, 150
GAP, PAD, GROUP_TITLE, GROUP_GAP = 40, 20, 44, 30
IN_NODE_X, IN_NODE_W, OUT_NODE_GAP, OUT_NODE_W = -170, 130, 40, 100   # the subgraph's input/output nodes
# the top graph: one row of note, loaders, the MagiHuman node and Save Video
TOP_NOTE_W, TOP_LOADER_W, TOP_SUB_W, TOP_SAVE_W, TOP_GAP, TOP_MULTILINE = 440, 300, 360, 360, 40, 110
TOP_LOADER_H = {"LoadImage": 330, "LoadAudio": 180, "LoadVideo": 330}
TOP_SAVE_H = 420

# The view a workflow opens at. ComfyUI 1.3x shows the saved view (extra.ds: screen = (graph + offset) * scale)
# and keeps it when the subgraph is opened; 1.5x does so for workflow files, while a template from its browser is
# always fitted to the top graph (fitView: 0.75 x the scale at which the nodes' bounds fill the canvas). Both are
# made for a VIEW-sized canvas: the saved view holds the top graph and the subgraph inside the part the menus leave
# free (VIEW_INSETS: left, top, right, bottom), and the top graph is small enough that the fitted zoom is readable
# (below ~0.57 the frontend draws nodes as blank boxes; tests/test_templates.py checks it).
VIEW = (1600, 900)
VIEW_INSETS = (60, 90, 20, 20)


def node_size(spec: dict, node_type: str, n_sockets: int) -> list:
    """[w, h] of the node body (the title bar sits above pos), a little above what the frontend computes."""
    widgets = [i for i in spec["inputs"] if i[2].endswith("widget")]
    extra = sum(1 for i in widgets if i[2] in ("seed_widget", "upload_widget"))
    multi = sum(1 for i in widgets if i[0] in spec["multiline"])
    rows = max(n_sockets, len(spec["outputs"]))
    h = rows * ROW + (len(widgets) + extra) * WIDGET + multi * MULTILINE + 16
    return [NODE_WIDTH.get(node_type, DEFAULT_NODE_WIDTH), h]


def layout(nodes: list, specs: dict) -> tuple[dict, list]:
    """Positions (node key -> (pos, size)) and groups [(title, [x, y, w, h])]: groups left to right in
    GROUP_ORDER, each group's columns left to right, nodes stacked in a column below the group title;
    nothing overlaps (a node's title bar is TITLE above its pos)."""
    placed, groups = {}, []
    x = 0
    for gname in GROUP_ORDER:
        members = [n for n in nodes if n.group == gname]
        if not members:
            continue
        gx, col_x, bottom = x, x + PAD, 0
        for col in sorted({n.col for n in members}):
            y = GROUP_TITLE + PAD + TITLE
            width = 0
            for n in (m for m in members if m.col == col):
                sockets = sum(1 for i in specs[n.type]["inputs"] if i[2] in ("socket", "optional_socket"))
                size = node_size(specs[n.type], n.type, sockets)
                placed[n.key] = ([col_x, y], size)
                y += size[1] + GAP + TITLE
                width = max(width, size[0])
            bottom = max(bottom, y - GAP - TITLE)
            col_x += width + GAP
        gw = col_x - GAP + PAD - gx
        groups.append((gname, [gx, 0, gw, bottom + PAD]))
        x = gx + gw + GROUP_GAP
    return placed, groups


def node_rects(nodes: list) -> list:
    """[x, y, w, h] of nodes as the canvas draws them: the title bar sits above pos."""
    return [[n["pos"][0], n["pos"][1] - TITLE, n["size"][0], n["size"][1] + TITLE] for n in nodes]


def bounds(rects: list) -> list:
    x0, y0 = min(r[0] for r in rects), min(r[1] for r in rects)
    return [x0, y0, max(r[0] + r[2] for r in rects) - x0, max(r[1] + r[3] for r in rects) - y0]


def saved_view(top_nodes: list, subgraph: dict, view: tuple = VIEW) -> dict:
    """extra.ds: the largest zoom (at most 1) at which the top graph and the subgraph (nodes, groups, input and
    output nodes) both fit the free part of the canvas, centred there."""
    rects = node_rects(top_nodes) + node_rects(subgraph["nodes"]) + [g["bounding"] for g in subgraph["groups"]]
    rects += [subgraph["inputNode"]["bounding"], subgraph["outputNode"]["bounding"]]
    x0, y0, w, h = bounds(rects)
    left, top, right, bottom = VIEW_INSETS
    free_w, free_h = view[0] - left - right, view[1] - top - bottom
    scale = round(min(1.0, free_w / w, free_h / h), 4)
    return {"scale": scale, "offset": [round((left + free_w / 2) / scale - (x0 + w / 2), 1),
                                                 round((top + free_h / 2) / scale - (y0 + h / 2), 1)]}


# ------------------------------------------------------------------------------------------ writers
def uid(*parts) -> str:
    return str(uuid.uuid5(UUID_NAMESPACE, "/".join(str(p) for p in parts)))


def widget_values(spec: dict, widgets: dict, node_type: str) -> tuple[list, dict]:
    """(UI widgets_values, API inputs) of a node's widgets, in schema order."""
    values, api = [], {}
    for name, typ, kind, default in spec["inputs"]:
        if not kind.endswith("widget"):
            continue
        value = widgets.get(name, default)
        values.append(value)
        api[name] = value
        if kind == "seed_widget":
            values.append("fixed")
        if kind == "upload_widget":
            values.append("image" if node_type in ("LoadImage", "LoadVideo") else None)  # the upload button
            if node_type == "LoadAudio":
                values.append(None)
    return values, api


def build(mode: Mode, specs: dict) -> tuple[dict, dict]:
    """UI workflow (top graph + one subgraph definition) and its API twin."""
    for e in mode.exposed:  # the interior widget shows the subgraph input's value; None: the schema default
        if e.type not in WIDGET_TYPES:
            continue
        for key, inp in e.targets:
            node = next(n for n in mode.nodes if n.key == key)
            if e.value is None:
                e.value = {name: d for name, _, _, d in specs[node.type]["inputs"]}.get(inp)
            node.widgets[inp] = e.value
    for n in mode.nodes:
        unknown = set(n.widgets) - {i[0] for i in specs[n.type]["inputs"]}
        if unknown:
            raise ValueError(f"{n.key} ({n.type}): unknown widgets {sorted(unknown)}")

    # ---- ids: top graph 1..9, inside 10.. (unique in the file); links likewise
    top_ids = {"note": 1, "sub": 2, "save": 3}
    for i, (name, _) in enumerate(mode.top_inputs):
        top_ids[name] = 4 + i
    inner_ids = {n.key: 10 + i for i, n in enumerate(mode.nodes)}
    sub_id = uid(mode.name, "subgraph")

    # ---- inner links (objects) and subgraph inputs
    inner_links, link_id = [], 100
    in_links: dict[tuple[str, str], int] = {}      # (node key, input) -> link id
    out_links: dict[tuple[str, int], list] = {}    # (node key, slot) -> link ids
    for n in mode.nodes:
        for inp, (src, slot) in n.links.items():
            link_id += 1
            typ = next(t for name, t, *_ in specs[n.type]["inputs"] if name == inp)
            inner_links.append({"id": link_id, "origin_id": inner_ids[src], "origin_slot": slot,
                                "target_id": inner_ids[n.key], "target_slot": None, "type": typ, "_input": inp})
            in_links[(n.key, inp)] = link_id
            out_links.setdefault((src, slot), []).append(link_id)
    sg_inputs = []
    for idx, e in enumerate(mode.exposed):
        ids = []
        for key, inp in e.targets:
            link_id += 1
            inner_links.append({"id": link_id, "origin_id": -10, "origin_slot": idx, "target_id": inner_ids[key],
                                "target_slot": None, "type": e.type, "_input": inp})
            in_links[(key, inp)] = link_id
            ids.append(link_id)
        sg_inputs.append({"id": uid(mode.name, "in", e.name), "name": e.name, "type": e.type, "linkIds": ids,
                          **({"label": e.label} if e.label else {}), "localized_name": e.name})
    link_id += 1
    out_key, out_slot = mode.output
    inner_links.append({"id": link_id, "origin_id": inner_ids[out_key], "origin_slot": out_slot, "target_id": -20,
                        "target_slot": 0, "type": "VIDEO"})
    out_links.setdefault(mode.output, []).append(link_id)
    sg_outputs = [{"id": uid(mode.name, "out", "VIDEO"), "name": "VIDEO", "type": "VIDEO", "linkIds": [link_id],
                   "localized_name": "VIDEO"}]

    # ---- inner nodes
    placed, groups = layout(mode.nodes, specs)
    inner_nodes, api = [], {}
    for order, n in enumerate(mode.nodes):
        spec = specs[n.type]
        ui_inputs, api_inputs = [], {}
        for name, typ, kind, _ in spec["inputs"]:
            lid = in_links.get((n.key, name))
            is_widget = kind.endswith("widget")
            if lid is None:
                if kind == "socket":
                    raise ValueError(f"{mode.name}: {n.key} ({n.type}) input {name!r} is not connected")
                if is_widget or kind == "optional_socket":
                    continue
            entry = {"localized_name": name, "name": name, "type": typ, "link": lid}
            if is_widget:
                entry["widget"] = {"name": name}
            link = next(link for link in inner_links if link["id"] == lid)
            link["target_slot"] = len(ui_inputs)
            ui_inputs.append(entry)
        values, api_widgets = widget_values(spec, n.widgets, n.type)
        api_inputs.update(api_widgets)
        for (key, inp), lid in in_links.items():
            if key != n.key:
                continue
            link = next(link for link in inner_links if link["id"] == lid)
            if link["origin_id"] == -10:
                e = mode.exposed[link["origin_slot"]]
                if e.type in WIDGET_TYPES:
                    api_inputs[inp] = e.value
                else:  # IMAGE / AUDIO from the top graph's loader
                    api_inputs[inp] = [str(top_ids[e.name]), 0]
            else:
                api_inputs[inp] = [f"{top_ids['sub']}:{link['origin_id']}", link["origin_slot"]]
        outputs = [{"localized_name": oname, "name": oname, "type": otype,
                    "links": out_links.get((n.key, slot), [])}
                   for slot, (oname, otype) in enumerate(spec["outputs"])]
        pos, size = placed[n.key]
        props = {"Node name for S&R": n.type}
        models = model_downloads(n, mode.tiny)
        if models:
            props["models"] = models
        inner_nodes.append({"id": inner_ids[n.key], "type": n.type, "pos": pos, "size": size, "flags": {},
                            "order": order, "mode": 0, "inputs": ui_inputs, "outputs": outputs,
                            "properties": props, "widgets_values": values})
        api[f"{top_ids['sub']}:{inner_ids[n.key]}"] = {"class_type": n.type, "inputs": api_inputs,
                                                        "_meta": {"title": spec.get("title") or n.type}}
    for link in inner_links:
        link.pop("_input", None)
    right = max(g[1][0] + g[1][2] for g in groups)
    sub_groups = [{"id": i + 1, "title": t, "bounding": b, "color": GROUP_COLOR, "font_size": 24, "flags": {}}
                  for i, (t, b) in enumerate(groups)]
    n_in = len(sg_inputs)
    subgraph = {
        "id": sub_id, "version": 1,
        "state": {"lastGroupId": len(sub_groups), "lastNodeId": max(inner_ids.values()), "lastLinkId": link_id,
                  "lastRerouteId": 0},
        "revision": 0, "config": {}, "name": mode.title,
        "inputNode": {"id": -10, "bounding": [IN_NODE_X, GROUP_TITLE, IN_NODE_W, 40 + 20 * n_in]},
        "outputNode": {"id": -20, "bounding": [right + OUT_NODE_GAP, GROUP_TITLE, OUT_NODE_W, 60]},
        "inputs": sg_inputs, "outputs": sg_outputs, "widgets": [],
        "nodes": inner_nodes, "groups": sub_groups, "links": inner_links,
        "extra": {"workflowRendererVersion": "LG"},
    }

    # ---- top graph: [Load Image / Load Audio] -> MagiHuman subgraph -> Save Video, and the note
    top_links, top_nodes = [], []
    tl = 0
    sub_inputs, proxy, sub_values = [], [], []
    loader_links = {}
    for name, loader in mode.top_inputs:
        tl += 1
        loader_links[name] = tl
    for e in mode.exposed:
        if e.type in WIDGET_TYPES:
            sub_inputs.append({**({"label": e.label} if e.label else {}), "localized_name": e.name, "name": e.name,
                               "type": e.type, "widget": {"name": e.name}, "link": None})
            proxy.append(["-1", e.name])
            sub_values.append(e.value)
        else:
            sub_inputs.append({"localized_name": e.name, "name": e.name, "type": e.type, "link": loader_links[e.name]})
    proxy.append([str(inner_ids["sample"]), "control_after_generate"])
    sub_values.append("fixed")
    tl += 1
    video_link = tl
    # one compact row, centred over the subgraph's width (ComfyUI 1.5x opens a template fitted to the top graph,
    # so its size sets the zoom there): note | loaders | MagiHuman | Save Video, all the MagiHuman node's height
    sub_h = TITLE + len(sub_inputs) * ROW + sum(WIDGET + (TOP_MULTILINE if e.type == "STRING" else 0)
                                                 for e in mode.exposed if e.type in WIDGET_TYPES) + WIDGET + 20
    widths = [TOP_NOTE_W] + [TOP_LOADER_W] * len(mode.top_inputs) + [TOP_SUB_W, TOP_SAVE_W]
    row_w = sum(widths) + TOP_GAP * (len(widths) - 1)
    x = round((IN_NODE_X + right + OUT_NODE_GAP + OUT_NODE_W) / 2 - row_w / 2)
    top_nodes.append({"id": top_ids["note"], "type": "MarkdownNote", "pos": [x, TITLE], "size": [TOP_NOTE_W, sub_h],
                      "flags": {}, "order": 0, "mode": 0, "inputs": [], "outputs": [],
                      "title": "Read me: models, prompts, speed", "properties": {},
                      "widgets_values": [note_text(mode)], "color": "#222", "bgcolor": "#000"})
    x += TOP_NOTE_W + TOP_GAP
    for i, (name, loader) in enumerate(mode.top_inputs):
        spec = specs[loader]
        values, api_widgets = widget_values(spec, {}, loader)
        outputs = [{"localized_name": o, "name": o, "type": t, "links": [loader_links[name]] if s == 0 else None}
                   for s, (o, t) in enumerate(spec["outputs"])]
        top_nodes.append({"id": top_ids[name], "type": loader, "pos": [x, TITLE],
                          "size": [TOP_LOADER_W, TOP_LOADER_H[loader]],
                          "flags": {}, "order": 1 + i, "mode": 0, "inputs": [], "outputs": outputs,
                          "properties": {"Node name for S&R": loader}, "widgets_values": values})
        top_links.append([loader_links[name], top_ids[name], 0, top_ids["sub"], mode.exposed.index(
            next(e for e in mode.exposed if e.name == name)), spec["outputs"][0][1]])
        api[str(top_ids[name])] = {"class_type": loader, "inputs": api_widgets, "_meta": {"title": spec["title"]}}
        x += TOP_LOADER_W + TOP_GAP
    top_nodes.append({"id": top_ids["sub"], "type": sub_id, "pos": [x, TITLE], "size": [TOP_SUB_W, sub_h],
                      "flags": {}, "order": len(mode.top_inputs) + 1, "mode": 0, "title": mode.title,
                      "inputs": sub_inputs,
                      "outputs": [{"localized_name": "VIDEO", "name": "VIDEO", "type": "VIDEO", "links": [video_link]}],
                      "properties": {"proxyWidgets": proxy}, "widgets_values": sub_values})
    x += TOP_SUB_W + TOP_GAP
    save_widgets = {"filename_prefix": f"magihuman/{mode.name.removeprefix('magihuman_')}", "format": "mp4",
                    "codec": "h264"}
    values, api_widgets = widget_values(specs["SaveVideo"], save_widgets, "SaveVideo")
    top_nodes.append({"id": top_ids["save"], "type": "SaveVideo", "pos": [x, TITLE], "size": [TOP_SAVE_W, TOP_SAVE_H],
                      "flags": {},
                      "order": len(mode.top_inputs) + 2, "mode": 0,
                      "inputs": [{"localized_name": "video", "name": "video", "type": "VIDEO", "link": video_link}],
                      "outputs": [], "properties": {"Node name for S&R": "SaveVideo"}, "widgets_values": values})
    top_links.append([video_link, top_ids["sub"], 0, top_ids["save"], 0, "VIDEO"])
    api[str(top_ids["save"])] = {"class_type": "SaveVideo",
                                 "inputs": {"video": [f"{top_ids['sub']}:{inner_ids[out_key]}", out_slot], **api_widgets},
                                 "_meta": {"title": "Save Video"}}
    ui = {"id": uid(mode.name, "workflow"), "revision": 0, "last_node_id": max(inner_ids.values()),
          "last_link_id": link_id, "nodes": top_nodes, "links": top_links, "groups": [],
          "definitions": {"subgraphs": [subgraph]}, "config": {},
          "extra": {"ds": saved_view(top_nodes, subgraph), "frontendVersion": FRONTEND_VERSION,
                    "workflowRendererVersion": "LG"}, "version": 0.4}
    return ui, dict(sorted(api.items(), key=lambda kv: [int(p) for p in kv[0].split(":")]))


# ------------------------------------------------------------------------------------------ model notes
def model_downloads(n: Node, tiny: bool) -> list:
    """properties.models of a loader whose model is ONE file (the frontend offers it for download)."""
    if tiny or n.type != "MagiHumanVideoVAELoader":
        return []
    return [{"name": n.widgets["vae_name"], "url": engine("presets").MODEL_FILES["video_vae"].url, "directory": "vae"}]


def roles_of(mode: Mode) -> list[str]:
    types = {n.type: n for n in mode.nodes}
    roles = [mode.dit_role]
    if "MagiHumanSRDiTLoader" in types:
        roles.append("sr_540p" if "540" in mode.preset else "sr_1080p")
    roles += ["text_encoder", "turbo_vae", "audio_vae"]
    if "MagiHumanVideoVAELoader" in types:
        roles.append("video_vae")
    return roles


H100_FLOPS = 475e12  # FLOP/s the official H100 timings imply (benchmarks/bench_estimate_vs_official.py)


def memory_lines(mode: Mode) -> list[str]:
    est = engine("estimate")
    plan = est.estimate(mode.preset)
    gib = 2 ** 30
    peak = plan.peak_device_bytes / gib
    dit = plan.stages[0].weight_bytes / gib
    fp8 = est.estimate(mode.preset, weight_dtype="fp8") if _has_fp8(est) else None
    h100 = plan.total_flops / H100_FLOPS
    lines = [f"- Peak GPU memory ~{peak:.0f} GiB with bf16 weights (the DiT alone is {dit:.1f} GiB; ComfyUI loads "
             "one model at a time and offloads the rest).",
             f"- Work: {plan.total_flops / 1e15:.1f} PFLOP for a {plan.seconds:g} s clip: about {h100:.0f} s of DiT "
             "time on an H100 (the official timings); expect 3-6x that on a 4090-class GPU, more when the DiT "
             "streams from RAM."]
    if fp8 is not None:
        lines.append(f"- 24 GB GPUs: set `weight_dtype` to fp8 in the DiT loader (DiT {fp8.stages[0].weight_bytes / gib:.1f} "
                     "GiB); smaller GPUs still work, ComfyUI streams the weights (slower).")
    lines.append("- The T5Gemma encoder (17 GiB in bf16) runs once per prompt, before the DiT; on CPU-only "
                 "machines everything works but takes minutes per step (48 GB+ RAM).")
    return lines


def long_video_work(mode: Mode) -> tuple:
    """(seconds, window plan, total FLOPs) of the clip a long-video template's note prices (A2V long: a
    LONG_SPEECH_SECONDS speech; Extend: five windows more): the windows of magihuman.pipeline.plan_long_video, each
    priced as one clip of its length."""
    extend = mode.kind == "extend"
    window = long_window_seconds()
    seconds = 5 * window if extend else LONG_SPEECH_SECONDS
    est = engine("estimate")
    plan = engine("pipeline").plan_long_video(seconds, window, continued=extend)
    return seconds, plan, sum(est.estimate(mode.preset, seconds=w.seconds).total_flops for w in plan.windows)


def long_memory_lines(mode: Mode, work: tuple | None) -> list[str]:
    """The memory section's lines on windows (long-video modes: ``work`` from :func:`long_video_work`)."""
    if work is None:
        return []
    seconds, plan, flops = work
    what = f"{seconds:g} s more" if mode.kind == "extend" else f"a {seconds:g} s speech"
    preset = engine("presets").PRESETS[mode.preset]
    w, h = preset.width, preset.height  # the template's output size
    frame_mb = w * h * 3 * 4 / 1e6  # ComfyUI's IMAGE: float32 RGB
    frames_gb = plan.total_frames * frame_mb / 1e3
    return [f"- Windows: GPU memory stays at one {long_window_seconds():g} s window's (the numbers above) however long "
            f"the clip; work and time grow with the windows: {what} is {plan.describe()}, {flops / 1e15:.1f} PFLOP, "
            f"about {flops / H100_FLOPS:.0f} s of DiT time on an H100. ComfyUI holds the output frames in RAM "
            f"(float32, {frame_mb:.1f} MB a frame at {w}x{h}: {frames_gb:.1f} GB for {seconds:g} s)."]


def long_video_note(mode: Mode, work: tuple | None) -> str:
    """The note's paragraph on a long-video graph (``work`` from :func:`long_video_work`; empty for the other
    modes)."""
    if work is None:
        return ""
    examples = example_inputs()
    pipeline, fps = engine("pipeline"), engine("geometry").FPS
    windows = ("- **Windows:** the node makes the clip window by window (`window seconds`, "
               f"{pipeline.MIN_WINDOW_SECONDS:g}-{pipeline.MAX_WINDOW_SECONDS:g} s; 4-5 s as the "
               "official examples): each window starts from the previous one's last frame, re-encoded by the Wan2.2 "
               "VAE as its first frame, with seed + k. One prompt serves every window; for a prompt per window (each "
               "quoting the words spoken in it) write them into the node's `prompts` inside the subgraph, separated "
               "by lines holding only `---` (the last one carries on). `overlap_frames` (inside) makes frames twice "
               "and cross-fades them at each seam.")
    if mode.kind == "a2v_long":
        _, plan, _ = work
        example = pipeline.plan_long_video(EXAMPLE_AUDIO_SECONDS, long_window_seconds())
        head = ("\n- **A long speech (this graph):** Load Audio gives the speech: **pick or upload a long speech "
                "recording** and put its words in quotes in the prompt. The template is made for about "
                f"{LONG_SPEECH_SECONDS:g} s of speech: {plan.describe()}. `seconds` 0 = the whole speech; a shorter "
                "value trims it, a longer one follows the audio. The audio is the sound track, unchanged: each "
                "window's sound is its slice of the speech, so there are no seams in it. It opens on "
                f"`{examples.EXAMPLE_AUDIO}`, which this pack puts into ComfyUI/input: only {EXAMPLE_AUDIO_SECONDS:g} "
                f"s of a synthetic voice-like sound without words ({len(example.windows)} windows), so the graph runs "
                "but the lips cannot match the quoted line.")
    else:
        head = (f"\n- **The clip to extend (this graph):** Load Video gives it ({fps} frames a second; Get Video "
                "Components inside the subgraph splits it into frames and sound). Its last frame starts the first "
                "new window and its sound is kept; `seconds to add` is the length of the new part and `output` "
                "gives the clip followed by the new part, or the new part alone. A clip of another size is "
                "centre-cropped and resized to width x height, as a TI2V image is. Describe what happens next in "
                f"the prompt, with the same person and scene. It opens on `{examples.EXAMPLE_CLIP}`, which this pack "
                f"puts into ComfyUI/input: {EXAMPLE_CLIP_FRAMES / fps:g} s of the drawn portrait of the "
                "TI2V template speaking a synthetic voice-like sound; pick or upload your own clip in Load Video "
                "(e.g. a MagiHuman result, to keep going).")
    return head + "\n" + windows


def _has_fp8(est) -> bool:
    try:
        est.estimate("distill_256p", weight_dtype="fp8")
        return True
    except Exception:  # noqa: BLE001 - older estimate() without fp8
        return False


def note_text(mode: Mode) -> str:
    presets = engine("presets")
    fps = engine("geometry").FPS
    if mode.tiny:
        inputs = "".join(f" {loader.replace('Load', 'Load ')} opens on the example file this pack puts into "
                         "ComfyUI/input." for _, loader in mode.top_inputs)
        return (f"# {mode.title}\n{mode.summary}\n\nTiny random models for checking the graph on a CPU in seconds: "
                "`python -m magihuman tiny-models DIR`, then start ComfyUI with DIR as its models folder. The output "
                "is noise-like by design." + inputs)
    rows = []
    for role in roles_of(mode):
        m = presets.MODEL_FILES[role]
        rows.append(f"| {m.what} | `models/{m.folder}/{m.name}` | [{m.source.split(' ')[0]}]({m.url}): {m.download} |")
    examples = example_inputs()
    a2v = ("\n- **Audio-driven (this graph):** Load Audio gives the speech; put its exact words in quotes in the "
           "prompt. The audio is kept unchanged and sets the length (`seconds` trims it). It opens on "
           f"`{examples.EXAMPLE_AUDIO}`, which this pack puts into ComfyUI/input: a synthetic voice-like sound "
           "without words, so the graph runs but the lips cannot match the quoted line. For a real clip pick or "
           "upload a speech recording in Load Audio.") if mode.kind == "a2v" else ""
    ti2v = ("\n- **First frame (this graph):** Load Image gives the first frame (centre-cropped to the size); "
            "describe the same person and scene in the prompt. It opens on "
            f"`{examples.EXAMPLE_IMAGE}`, a drawn portrait of the man in the example prompt that this pack puts "
            "into ComfyUI/input; pick or upload your own photo in Load Image.") if mode.kind == "ti2v" else ""
    lora = ("\n- **LoRA (this graph):** put the file in `models/loras/` and pick it in `LoRA`; `LoRA strength` "
            "scales it (0 = off, negative inverts). PEFT, kohya and ComfyUI-style MagiHuman LoRAs load, also on "
            "fp8 or GGUF weights; `python -m magihuman extract-lora` makes one from two checkpoints. Chain "
            "more MagiHuman LoRA Loader nodes inside the subgraph to stack LoRAs.") if mode.name.endswith("_lora") \
        else ""
    if "via_lora" in mode.name:
        lora = ("\n- **Distilled via a LoRA (this graph):** the base DiT plus a LoRA that turns it into the distilled "
                "model, run with the distilled 8-step sampler. Make the LoRA once from the two official folders: "
                "`python -m magihuman extract-lora models/diffusion_models/base models/diffusion_models/distill "
                f"models/loras/{DISTILL_LORA_NAME} --rank 64` (about 0.6 GB at rank 64, against 61 GB for the fp32 "
                "distill folder; run with `--verbose` to see how much of each layer's difference the rank keeps). "
                "VRAM is that of the base DiT.")
    work = long_video_work(mode) if mode.kind in LONG_MODES else None  # priced once for the note and memory lines
    cfg = ("\n- `negative prompt` is the official one (video + audio faults); CFG uses it." if mode.kind in
           ("base", "sr") else "\n- The distilled model needs no negative prompt (no CFG).")
    return "\n".join([
        f"# {mode.title}",
        mode.summary,
        "",
        "**On load** you see this note, the MagiHuman node with the prompt, size, length (seconds), seed, "
        "steps and model names, and Save Video. Click the icon at the top right of the MagiHuman node to "
        "open its subgraph: Models → Prompt → Sampling → " + ("Super-resolution → " if "sr" in mode.kind else "")
        + "Decode, left to right.",
        "",
        "## Models (put them in ComfyUI/models)",
        "| model | where | download |",
        "|---|---|---|",
        *rows,
        "",
        "Folder models: download the whole folder and keep its name (the loaders list folders ending in `/`). "
        "Stable Audio Open is gated on Hugging Face: accept its license, then download `model_config.json` and "
        "the `*.safetensors` into `models/vae/stable-audio-open-1.0/`. Press **R** (refresh) after copying files.",
        "",
        "## Prompts (the format the model was trained on)",
        "- One paragraph of 150-200 words: who is speaking, how they look, where they are; then, in time order, "
        "their face and small head movements, each spoken line **word for word in double quotes** with how it "
        "is said (tone, pace, pitch, volume); then a static camera, lighting and focus.",
        "- Then `Dialogue:` with one line per utterance: `<five-word voice/speaker description, Language>: "
        "\"the line\"`, and `Background Sound:` with `<the main background sound>` (or `<No prominent background "
        "sound>`). The example prompt shows the layout; the MagiHuman Enhanced Prompt node builds and checks it.",
        "- Chinese/Japanese/Korean text is spaced character by character automatically (cjk_spacing)." + a2v + ti2v
        + lora + long_video_note(mode, work) + cfg,
        "",
        "## Memory and speed (estimates)",
        *memory_lines(mode),
        *long_memory_lines(mode, work),
        "",
        f"Sizes snap to multiples of 32; {fps} fps; the clip has {fps}·seconds+1 frames.",
    ])


# ------------------------------------------------------------------------------------------ thumbnails
THUMB_SIZE = (512, 384)


def write_thumbnail(mode: Mode, path: Path) -> None:
    """A title card (no fake result frame): mode, inputs, model, size. 512x384 JPEG."""
    from PIL import Image, ImageDraw, ImageFont

    w, h = THUMB_SIZE
    img = Image.new("RGB", (w, h))
    px = img.load()
    top, bottom = (28, 38, 62), (74, 34, 82)
    for y in range(h):
        t = y / (h - 1)
        row = tuple(int(a + (b - a) * t) for a, b in zip(top, bottom))
        for x in range(w):
            px[x, y] = row
    d = ImageDraw.Draw(img)
    font = lambda size: ImageFont.load_default(size=size)  # noqa: E731 - Pillow's built-in scalable font
    d.text((32, 28), "MagiHuman", font=font(30), fill=(255, 196, 92))
    d.text((32, 66), "daVinci-MagiHuman: audio + video", font=font(18), fill=(200, 205, 220))
    headline, detail = mode.card
    y = 150
    for line in _wrap(headline, 22):
        d.text((32, y), line, font=font(36), fill=(255, 255, 255))
        y += 44
    d.text((32, y + 8), detail, font=font(20), fill=(215, 220, 235))
    # a small waveform + film strip motif
    mid = h - 60
    for i in range(48):
        amp = 6 + (17 * i * i + 11 * i) % 22
        d.line([(32 + i * 9, mid - amp), (32 + i * 9, mid + amp)], fill=(255, 196, 92), width=4)
    d.rectangle([w - 150, 28, w - 32, 112], outline=(200, 205, 220), width=3)
    for i in range(5):
        d.rectangle([w - 144 + i * 23, 34, w - 132 + i * 23, 42], fill=(200, 205, 220))
        d.rectangle([w - 144 + i * 23, 98, w - 132 + i * 23, 106], fill=(200, 205, 220))
    img.save(path, "JPEG", quality=88, optimize=True)


def _wrap(text: str, width: int) -> list[str]:
    lines, cur = [], ""
    for word in text.split():
        if cur and len(cur) + 1 + len(word) > width:
            lines.append(cur)
            cur = word
        else:
            cur = f"{cur} {word}".strip()
    return lines + [cur] if cur else lines


# ------------------------------------------------------------------------------------------ example inputs
EXAMPLE_IMAGE_SIZE = (448, 256)
_PORTRAIT_SCALE = 2  # drawn at twice the size, then downsampled (smooth edges)


def write_example_image(path: Path) -> None:
    """A drawn portrait for TI2V: the man of the example prompt (grey stubble, salt-and-pepper hair, navy crew
    neck) in a study with bookshelves, warm light from the left. 448x256 (the template size), PNG."""
    from PIL import Image, ImageDraw

    img = _portrait_canvas()
    k = _PORTRAIT_SCALE
    s = lambda *v: [round(x * k) for x in v]  # noqa: E731 - coordinates given at the final size
    ImageDraw.Draw(img).arc(s(206, 128, 242, 148), 20, 160, fill=(150, 84, 76), width=3 * k)  # closed-mouth smile
    Image.fromarray(_lit_portrait(img)).save(path, "PNG", optimize=True)


def _portrait_canvas():
    """The portrait at twice its size, everything but the mouth (a PIL image)."""
    from PIL import Image, ImageDraw

    k = _PORTRAIT_SCALE
    w, h = EXAMPLE_IMAGE_SIZE[0] * k, EXAMPLE_IMAGE_SIZE[1] * k
    rng = random.Random(20240607)
    s = lambda *v: [round(x * k) for x in v]  # noqa: E731 - coordinates given at the final size
    img = Image.new("RGB", (w, h), (92, 70, 52))
    d = ImageDraw.Draw(img)
    # wall and two bookshelves
    d.rectangle(s(0, 0, 448, 256), fill=(104, 82, 62))
    for x0 in (8, 300):
        d.rectangle(s(x0, 6, x0 + 140, 236), fill=(58, 38, 24))
        for y0 in (14, 72, 130, 188):
            x = x0 + 6
            while x < x0 + 132:
                bw = rng.randint(5, 11)
                bh = rng.randint(34, 48)
                col = rng.choice([(120, 40, 36), (40, 70, 96), (70, 96, 60), (150, 120, 70), (90, 60, 100),
                                  (170, 150, 120), (60, 60, 64), (130, 80, 40)])
                d.rectangle(s(x, y0 + 52 - bh, min(x + bw, x0 + 134), y0 + 52), fill=col)
                x += bw + 1
            d.rectangle(s(x0, y0 + 52, x0 + 140, y0 + 57), fill=(74, 50, 32))
    # sweater (navy crew neck) and neck
    d.rounded_rectangle(s(130, 182, 318, 300), radius=40 * k, fill=(30, 40, 70))
    d.rectangle(s(206, 150, 242, 190), fill=(196, 148, 118))
    d.ellipse(s(198, 174, 250, 196), fill=(44, 56, 92))
    d.ellipse(s(204, 170, 244, 188), fill=(196, 148, 118))
    # head: ears, face, hair
    d.ellipse(s(178, 96, 196, 128), fill=(200, 150, 120))
    d.ellipse(s(252, 96, 270, 128), fill=(186, 138, 110))
    d.ellipse(s(186, 52, 262, 168), fill=(214, 166, 134))
    d.chord(s(184, 44, 264, 118), 180, 360, fill=(128, 126, 122))
    d.rectangle(s(186, 78, 194, 100), fill=(128, 126, 122))
    d.rectangle(s(254, 78, 262, 100), fill=(128, 126, 122))
    for _ in range(260):  # salt and pepper
        x, y = rng.uniform(188, 260), rng.uniform(50, 82)
        c = rng.choice([(200, 200, 196), (70, 68, 66), (160, 158, 154)])
        d.ellipse(s(x, y, x + 1.6, y + 1.6), fill=c)
    for _ in range(300):  # grey stubble on the jaw and upper lip
        a = rng.uniform(0.15, math.pi - 0.15)
        r = rng.uniform(0.62, 0.98)
        x, y = 224 + 36 * r * math.cos(a), 112 + 54 * r * math.sin(a)
        if y > 118:
            d.ellipse(s(x, y, x + 1.2, y + 1.2), fill=(158, 144, 136))
    # brows, eyes, nose (the mouth is drawn by the caller)
    d.line(s(200, 94, 218, 91), fill=(110, 106, 100), width=3 * k)
    d.line(s(230, 91, 248, 94), fill=(110, 106, 100), width=3 * k)
    for cx in (209, 239):
        d.ellipse(s(cx - 7, 100, cx + 7, 108), fill=(240, 236, 228))
        d.ellipse(s(cx - 3, 100, cx + 3, 108), fill=(70, 50, 36))
    d.line(s(224, 106, 220, 128, 227, 130), fill=(170, 120, 96), width=2 * k)
    # desk in front
    d.rectangle(s(0, 236, 448, 256), fill=(96, 62, 36))
    d.line(s(0, 236, 448, 236), fill=(130, 90, 56), width=2 * k)
    return img


def _lit_portrait(img):
    """The drawn portrait downsampled to EXAMPLE_IMAGE_SIZE with warm lamplight from the left and a dim fill on the
    right: uint8 [256, 448, 3]."""
    import numpy as np
    from PIL import Image

    img = img.resize(EXAMPLE_IMAGE_SIZE, Image.LANCZOS)
    arr = np.asarray(img).astype(np.float32)
    x = np.linspace(0, 1, arr.shape[1])[None, :, None]
    light = 1.18 - 0.38 * x
    warm = np.array([1.0, 0.94, 0.82])[None, None, :]
    return np.clip(arr * light * (warm + (1 - warm) * x), 0, 255).round().astype(np.uint8)


EXAMPLE_AUDIO_RATE = 16000
EXAMPLE_AUDIO_SECONDS = 4.4
_TEMPO = 0.9  # syllable length factor: about 4.7 syllables a second

# vowel formants (Hz), after the classic Peterson & Barney averages
_VOWELS = {"a": (850, 1220, 2810), "e": (610, 1900, 2850), "i": (310, 2790, 3310), "o": (590, 920, 2710),
           "u": (370, 950, 2670), "@": (560, 1480, 2680), "E": (600, 2330, 2990), "A": (860, 2050, 2850)}
# two phrases with the rhythm of "Welcome back, everyone. Tonight we answer the question you sent in most."
# (syllable vowel, seconds, stress 0-1, consonant noise before it: None | "s" | "t" | "k" | "sh")
_SYLLABLES = [
    [("E", .17, .8, None), ("@", .15, .3, "k"), ("A", .24, 1., "k"), ("E", .18, .9, None), ("i", .12, .3, None),
     ("@", .14, .3, None), ("a", .26, .6, None)],
    [("@", .12, .3, "t"), ("a", .26, 1., "t"), ("i", .12, .3, None), ("A", .22, .8, None), ("@", .14, .3, "s"),
     ("@", .10, .2, None), ("E", .2, .7, "k"), ("@", .12, .3, "sh"), ("u", .12, .3, None), ("E", .2, .7, "s"),
     ("i", .12, .3, None), ("o", .3, .8, "s")],
]


def _speech_seconds() -> float:
    cons = {"s": .07, "sh": .07, "t": .03, "k": .03}
    return 0.2 + sum(sum(d * _TEMPO + .015 + cons.get(c, 0) for _, d, _, c in ph) for ph in _SYLLABLES) + 0.3


def example_speech(rate: int = EXAMPLE_AUDIO_RATE):
    """A synthetic voice-like clip (no words): a glottal source with a falling pitch through gliding vowel
    formants, syllable envelopes, consonant noise and a pause between two phrases. float32 mono in [-0.5, 0.5]."""
    import numpy as np

    n = int(EXAMPLE_AUDIO_SECONDS * rate)
    assert _speech_seconds() < EXAMPLE_AUDIO_SECONDS
    t = np.arange(n) / rate
    rng = np.random.default_rng(7)
    f_tracks = np.zeros((3, n))
    env = np.zeros(n)
    f0 = np.full(n, 185.0)
    noise = np.zeros(n)
    pos = 0.2
    for p, phrase in enumerate(_SYLLABLES):
        start = pos
        for vowel, dur, stress, cons in phrase:
            dur *= _TEMPO
            if cons:
                cd = .07 if cons in ("s", "sh") else .03
                a, b = int(pos * rate), int((pos + cd) * rate)
                band = {"s": (4200, 7000), "sh": (2200, 4500), "t": (2500, 6000), "k": (1200, 3500)}[cons]
                seg = rng.standard_normal(b - a)
                spec = np.fft.rfft(seg)
                fr = np.fft.rfftfreq(b - a, 1 / rate)
                spec[(fr < band[0]) | (fr > band[1])] = 0
                seg = np.fft.irfft(spec, b - a) * np.hanning(b - a) * (0.5 if cons in ("s", "sh") else 0.8)
                noise[a:b] += seg
                pos += cd
            a, b = int(pos * rate), int((pos + dur) * rate)
            f_tracks[:, a:b] = np.array(_VOWELS[vowel], dtype=float)[:, None]
            ramp = np.minimum(1, np.minimum(np.arange(b - a), np.arange(b - a)[::-1]) / (0.035 * rate))
            env[a:b] = np.maximum(env[a:b], (0.55 + 0.45 * stress) * np.sin(ramp * np.pi / 2) ** 2)
            f0[a:b] = 185 * (1 + 0.12 * stress)
            pos += dur + 0.015
        end = pos
        a, b = int(start * rate), int(end * rate)
        f0[a:b] *= np.linspace(1.08, 0.84, b - a)  # declination over the phrase
        pos += 0.3  # the pause between the phrases
    # smooth the tracks (formant glides, pitch changes) with a 40 ms moving average
    m = int(0.04 * rate)
    ker = np.ones(m) / m
    f_tracks = np.stack([np.convolve(np.pad(f, (m, m), mode="edge"), ker, "same")[m:-m] for f in f_tracks])
    f0 = np.convolve(np.pad(f0, (m, m), mode="edge"), ker, "same")[m:-m]
    f0 *= 1 + 0.01 * np.sin(2 * np.pi * 5.5 * t)  # a little vibrato
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voice = np.zeros(n)
    bw = np.array([90.0, 110.0, 170.0])[:, None]
    for h in range(1, int(rate / 2 / 160)):
        fh = h * f0
        gain = sum(1 / (1 + ((fh - f_tracks[j]) / bw[j]) ** 2) * (1.0, 0.6, 0.3)[j] for j in range(3))
        voice += np.where(fh < rate / 2 - 200, gain / h ** 0.6, 0) * np.sin(h * phase)
    out = voice * env + noise
    out += 0.003 * rng.standard_normal(n)  # room noise
    return (0.5 * out / np.abs(out).max()).astype(np.float32)


def write_example_audio(path: Path) -> None:
    """:func:`example_speech` as a 16-bit mono WAV."""
    import wave

    import numpy as np

    pcm = np.round(example_speech() * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(EXAMPLE_AUDIO_RATE)
        w.writeframes(pcm.tobytes())


EXAMPLE_CLIP_FRAMES = 49  # 1.96 s at 25 fps, a latent-aligned count (4j + 1) as the model makes them


def _clip_hop() -> int:
    """Example speech samples per clip frame (640 at 25 fps)."""
    return EXAMPLE_AUDIO_RATE // engine("geometry").FPS


def example_clip_mouth() -> "np.ndarray":
    """How open the mouth is in each frame of the example clip (0 closed .. 1 wide): the loudness of the example
    speech over that frame, fast to open and slower to close, as a mouth follows syllables."""
    import numpy as np

    hop = _clip_hop()
    speech = example_speech()[: EXAMPLE_CLIP_FRAMES * hop].astype(np.float64)
    rms = np.sqrt((speech.reshape(EXAMPLE_CLIP_FRAMES, hop) ** 2).mean(1))
    target = np.clip((rms / rms.max() - 0.1) / 0.85, 0, 1)
    out, level = np.zeros(EXAMPLE_CLIP_FRAMES), 0.0
    for i, t in enumerate(target):
        level = t if t > level else 0.55 * level + 0.45 * t
        out[i] = level
    return out


def example_clip_frames() -> "np.ndarray":
    """The example clip to extend: the drawn portrait (write_example_image) speaking the first phrase of the
    example speech, the mouth opening with its loudness, one blink. uint8 [49, 256, 448, 3]."""
    import numpy as np
    from PIL import ImageDraw

    k = _PORTRAIT_SCALE
    s = lambda *v: [round(x * k) for x in v]  # noqa: E731 - coordinates given at the final size
    base = _portrait_canvas()
    frames = []
    for i, o in enumerate(example_clip_mouth()):
        img = base.copy()
        d = ImageDraw.Draw(img)
        if o < 0.12:  # closed: the portrait's smile
            d.arc(s(206, 128, 242, 148), 20, 160, fill=(150, 84, 76), width=3 * k)
        else:  # open: dark mouth, upper teeth when wide, the lower lip
            half = 10 - 2.5 * o
            bottom = 143 + 9 * o
            d.ellipse(s(224 - half, 140, 224 + half, bottom), fill=(78, 30, 32), outline=(150, 84, 76), width=k)
            if o > 0.45:
                d.chord(s(224 - half + 2, 140.5, 224 + half - 2, 146), 180, 360, fill=(232, 226, 214))
        if i in (33, 34):  # a blink: lids over the eyes
            for cx in (209, 239):
                d.ellipse(s(cx - 8, 99, cx + 8, 109), fill=(206, 158, 126))
                d.line(s(cx - 7, 105, cx + 7, 105), fill=(110, 80, 66), width=k)
        frames.append(_lit_portrait(img))
    return np.stack(frames)


def write_example_clip(path: Path) -> None:
    """:func:`example_clip_frames` with the matching 1.96 s of the example speech: H.264 + AAC (mono 16 kHz) MP4 at
    25 fps, the clip the Extend templates open on."""
    speech = example_speech()[: EXAMPLE_CLIP_FRAMES * _clip_hop()]
    engine("media").write_mp4(path, example_clip_frames(), fps=engine("geometry").FPS, audio=speech[None],
                    sample_rate=EXAMPLE_AUDIO_RATE, crf=23, preset="slow", audio_bitrate=48_000)


# ------------------------------------------------------------------------------------------ node help
GENERATED_MARK = "<!-- written by workflows/build_workflows.py from the node schema; a page without this line is kept -->"
LATENT_NOTE = ("The MagiHuman LATENT holds the video and the audio latent of each clip together (like core "
               "ComfyUI's LTX-AV latent). Core Latent From Batch, Repeat Latent Batch, Latent Batch and Save / Load "
               "Latent keep them together; nodes that crop, upscale or cut frames stop with a message: split the "
               "latent first.")


def type_labels() -> dict[str, str]:
    """custom socket type -> what it is (the pack's ``nodes.types``)."""
    return importlib.import_module(f"{import_pack().__name__}.nodes.types").TYPE_LABELS


def made_by(specs: dict) -> dict[str, str]:
    """custom socket type -> display name of the pack's node that outputs it (a loader)."""
    out = {}
    for spec in specs.values():
        for o in getattr(spec.get("schema"), "outputs", ()):
            if o.io_type in type_labels():
                out.setdefault(o.io_type, spec["title"])
    return out


def _type_name(t: str) -> str:
    return type_labels().get(t, t)


def node_doc(spec: dict, makers: dict[str, str]) -> str:
    """The help panel's markdown (a narrow side panel: lists, no wide tables); ``makers``: :func:`made_by`."""
    s = spec["schema"]
    lines = [f"# {s.display_name}", "", s.description or "", "", "## Inputs", ""]
    for i in s.inputs:
        default = getattr(i, "default", None)
        if i.io_type == "STRING" and isinstance(default, str) and len(default) > 40:
            default = default[:37] + "..."
        facts = [_type_name(i.io_type)] + (["optional"] if getattr(i, "optional", False) else [])
        if default not in (None, ""):
            facts.append(f"default `{default}`")
        tip = (i.tooltip or (f"from {makers[i.io_type]}" if i.io_type in makers else "")).replace("\n", " ")
        lines.append(f"- **`{i.id}`** ({', '.join(facts)})" + (f": {tip}" if tip else ""))
    lines += ["", "## Outputs", ""]
    for o in s.outputs:
        lines.append(f"- **`{o.display_name or o.io_type}`** ({_type_name(o.io_type)})"
                     + (f": {o.tooltip}" if getattr(o, "tooltip", None) else ""))
    if spec["connect"]:
        lines += ["", "## Connect", "", spec["connect"]]
    if any(o.io_type == "LATENT" for o in s.outputs) or any(i.io_type == "LATENT" for i in s.inputs):
        lines += ["", "## The AV latent", "", LATENT_NOTE]
    lines += ["", "Templates: Workflow → Browse Templates → Extensions → ComfyUI-MagiHuman.", "", GENERATED_MARK]
    return "\n".join(lines).rstrip() + "\n"


def handwritten_docs() -> set[str]:
    """Node ids whose web/docs page was written by hand (no GENERATED_MARK): the builder leaves those alone."""
    return {p.stem for p in DOCS_DIR.glob("*.md") if GENERATED_MARK not in p.read_text()}


# ------------------------------------------------------------------------------------------ all files
def all_modes() -> list[Mode]:
    return [build_mode(m) for m in TEMPLATE_MODES] + [build_mode(m, tiny=True) for m in TINY_MODES]


def write_all(root: Path = ROOT, *, thumbnails: bool = True, media: bool = True) -> list[Path]:
    """Writes every generated file under ``root`` (the repository, or a temp dir for the up-to-date test);
    ``thumbnails`` / ``media``: also the template thumbnails / the example image, speech and video clip."""
    specs = node_specs()
    written = []
    if media:
        examples = example_inputs()
        folder = root / examples.EXAMPLE_INPUTS_DIR.relative_to(ROOT)
        folder.mkdir(parents=True, exist_ok=True)
        write_example_image(folder / examples.EXAMPLE_IMAGE)
        write_example_audio(folder / examples.EXAMPLE_AUDIO)
        write_example_clip(folder / examples.EXAMPLE_CLIP)
        written += [folder / examples.EXAMPLE_IMAGE, folder / examples.EXAMPLE_AUDIO, folder / examples.EXAMPLE_CLIP]

    def put(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)

    for mode in all_modes():
        ui, api = build(mode, specs)
        folder = (root / TINY_DIR.relative_to(ROOT)) if mode.tiny else (root / TEMPLATE_DIR.relative_to(ROOT))
        put(folder / f"{mode.name}.json", json.dumps(ui, indent=1, ensure_ascii=False) + "\n")
        put(root / API_DIR.relative_to(ROOT) / f"{mode.name}_api.json", json.dumps(api, indent=1, ensure_ascii=False)
            + "\n")
        if thumbnails and not mode.tiny:
            thumb = folder / f"{mode.name}.jpg"
            write_thumbnail(mode, thumb)
            written.append(thumb)
    storage = importlib.import_module(f"{import_pack().__name__}.magihuman.storage.registry")
    put(root / "web" / "storage.json", json.dumps(storage.frontend_settings(), indent=2) + "\n")
    keep = handwritten_docs()
    makers = made_by(specs)
    for node_id, spec in specs.items():
        if "schema" in spec and node_id not in keep:  # the pack's nodes (not the core ones)
            put(root / DOCS_DIR.relative_to(ROOT) / f"{node_id}.md", node_doc(spec, makers))
    return written


if __name__ == "__main__":
    for p in write_all():
        print(p.relative_to(ROOT))
