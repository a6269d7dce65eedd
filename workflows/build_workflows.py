"""Writes the shareable workflows (UI format + API-format twin) from the graph specs below.

    python workflows/build_workflows.py          # rewrites workflows/*.json

Widget values are laid out from the nodes' own schemas (this pack's nodes, plus ``CORE_NODES``: the
ComfyUI core nodes the workflows use), so the JSONs always match the code. tests/test_workflows.py
checks the result and runs the tiny ones.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PACK_NAME = "comfyui_magihuman"

# ComfyUI core nodes used by the workflows: inputs in schema order as (name, type, kind, default),
# kind "socket" | "widget" | "optional_socket"; outputs as (name, type).
CORE_NODES: dict[str, dict] = {
    "LoadImage": {"inputs": [("image", "COMBO", "upload_widget", "example.png")],
                  "outputs": [("IMAGE", "IMAGE"), ("MASK", "MASK")]},
    "LoadAudio": {"inputs": [("audio", "COMBO", "upload_widget", "speech.wav")], "outputs": [("AUDIO", "AUDIO")]},
    "CreateVideo": {"inputs": [("images", "IMAGE", "socket", None), ("fps", "FLOAT", "widget", 30.0),
                               ("audio", "AUDIO", "optional_socket", None)],
                    "outputs": [("VIDEO", "VIDEO")]},
    "SaveVideo": {"inputs": [("video", "VIDEO", "socket", None), ("filename_prefix", "STRING", "widget", "video/ComfyUI"),
                             ("format", "COMBO", "widget", "auto"), ("codec", "COMBO", "widget", "auto")],
                  "outputs": []},
    "MarkdownNote": {"inputs": [("text", "STRING", "widget", "")], "outputs": []},
}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}

WAN_VAE_URL = ("https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files/vae/"
               "wan2.2_vae.safetensors")

REAL_MODELS_NOTE = """## Model files (ComfyUI/models/...)
| what | where | from |
|---|---|---|
| DiT (distill / base / 540p_sr / 1080p_sr) | `diffusion_models/<name>/` — the whole official folder (index + shards, `.zst` ok) or a single converted `.safetensors` | GAIR/daVinci-MagiHuman |
| T5Gemma encoder | `text_encoders/t5gemma-9b-9b-ul2/` (HF folder with tokenizer) | google/t5gemma-9b-9b-ul2 |
| Turbo VAE | `vae/turbo_vae/` (TurboV3-Wan22-TinyShallow_7_7.json + checkpoint-340000.ckpt) | GAIR/daVinci-MagiHuman `turbo_vae/` |
| Wan2.2 VAE | `vae/wan2.2_vae.safetensors` (or the official Wan2.2_VAE.pth) | Wan-AI/Wan2.2-TI2V-5B (ComfyUI repack) |
| Audio VAE | `vae/stable-audio-open-1.0/` (model.safetensors + model_config.json) | stabilityai/stable-audio-open-1.0 |
Folders cannot be offered as one-click downloads; only the Wan2.2 VAE is listed for the model downloader.
"""


def import_pack():
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(PACK_NAME, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = mod
    spec.loader.exec_module(mod)
    return mod


def node_specs() -> dict[str, dict]:
    """Every node type the workflows may use -> {inputs: [(name, type, kind, default)], outputs: [(name, type)]}."""
    pack = import_pack()
    nodes = importlib.import_module(f"{pack.__name__}.nodes")
    specs = dict(CORE_NODES)
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
        specs[s.node_id] = {"inputs": ins, "outputs": outs, "options": {i.id: i.options for i in s.inputs
                                                                         if i.io_type == "COMBO"}}
    return specs


# ------------------------------------------------------------------------------------------ graphs
def _loaders(tiny: bool, *, sr: str | None = None, wan: bool = False, base: bool = False, distill: bool = True):
    if tiny:  # loader list entries of magihuman.tiny.TINY_FILES: relative to the type folder, folders end in "/"
        files = importlib.import_module(f"{import_pack().__name__}.magihuman.tiny").TINY_FILES
        names = {role: rel.split("/", 1)[1] + ("" if rel.endswith(".safetensors") else "/")
                 for role, rel in files.items()}
    else:
        names = {"distill": "distill/", "base": "base/", "sr_540p": "540p_sr/", "sr_1080p": "1080p_sr/",
                 "text_encoder": "t5gemma-9b-9b-ul2/", "turbo_vae": "turbo_vae/", "video_vae": "wan2.2_vae.safetensors",
                 "audio_vae": "stable-audio-open-1.0/"}
    dt = "fp32" if tiny else "auto"
    g = []
    if distill:
        g.append(("dit", "MagiHumanDiTLoader", {"model_name": names["distill"], "weight_dtype": dt}, {}))
    if base:
        g.append(("dit", "MagiHumanDiTLoader", {"model_name": names["base"], "weight_dtype": dt}, {}))
    if sr:
        g.append(("sr_dit", "MagiHumanSRDiTLoader", {"model_name": names[sr], "weight_dtype": dt}, {}))
    g += [("te", "MagiHumanTextEncoderLoader", {"text_encoder": names["text_encoder"], "weight_dtype": dt}, {}),
          ("turbo", "MagiHumanTurboVAELoader", {"vae_name": names["turbo_vae"], "weight_dtype": dt}, {}),
          ("audio_vae", "MagiHumanAudioVAELoader", {"vae_name": names["audio_vae"], "weight_dtype": "fp32"}, {})]
    if wan:
        g.append(("wan", "MagiHumanVideoVAELoader", {"vae_name": names["video_vae"], "weight_dtype": dt}, {}))
    return g


def _outputs(prefix: str, latent_src: str):
    return [
        ("decode", "MagiHumanTurboVAEDecode", {}, {"turbo_vae": ("turbo", 0), "latent": (latent_src, 0)}),
        ("adecode", "MagiHumanAudioDecode", {"sample_rate": "48000"}, {"audio_vae": ("audio_vae", 0),
                                                                       "latent": (latent_src, 0)}),
        ("video", "CreateVideo", {"fps": 25.0}, {"images": ("decode", 0), "audio": ("adecode", 0)}),
        ("save", "SaveVideo", {"filename_prefix": f"magihuman/{prefix}", "format": "mp4", "codec": "h264"},
         {"video": ("video", 0)}),
    ]


PROMPT = ("A young woman with short black hair sits by a sunlit window in a cozy cafe, looks into the camera, smiles "
          "warmly and says: \"Good morning! Today I want to tell you about my favourite place in the city.\" Her "
          "voice is clear and cheerful; soft cafe ambience in the background.")


def t2v_distill(tiny=False, *, width=448, height=256, seconds=4.0, seed=42):
    enc = {"prompt": PROMPT if not tiny else "A man smiles and says hello.", "encode_negative": False}
    g = _loaders(tiny) + [
        ("enc", "MagiHumanTextEncode", enc, {"text_encoder": ("te", 0)}),
        ("latent", "MagiHumanEmptyAVLatent", {"width": width, "height": height, "seconds": seconds}, {}),
        ("sample", "MagiHumanDistilledSampler", {"seed": seed, "steps": 8},
         {"model": ("dit", 0), "positive": ("enc", 0), "latent": ("latent", 0)}),
    ]
    return g + _outputs("t2v_distill" if not tiny else "tiny_t2v", "sample")


def ti2v_distill():
    g = _loaders(False, wan=True) + [
        ("enc", "MagiHumanTextEncode", {"prompt": PROMPT, "encode_negative": False}, {"text_encoder": ("te", 0)}),
        ("img", "LoadImage", {"image": "example.png"}, {}),
        ("latent", "MagiHumanEmptyAVLatent", {"width": 448, "height": 256, "seconds": 4.0}, {}),
        ("i2v", "MagiHumanImageToVideo", {}, {"latent": ("latent", 0), "video_vae": ("wan", 0), "image": ("img", 0)}),
        ("sample", "MagiHumanDistilledSampler", {"seed": 42, "steps": 8},
         {"model": ("dit", 0), "positive": ("enc", 0), "latent": ("i2v", 0)}),
    ]
    return g + _outputs("ti2v_distill", "sample")


def a2v_distill():
    g = _loaders(False) + [
        ("enc", "MagiHumanTextEncode", {"prompt": PROMPT, "encode_negative": False}, {"text_encoder": ("te", 0)}),
        ("aud", "LoadAudio", {"audio": "speech.wav"}, {}),
        ("latent", "MagiHumanEmptyAVLatent", {"width": 448, "height": 256, "seconds": 4.0}, {}),
        ("a2v", "MagiHumanReferenceAudio", {"trim_to_latent": True},
         {"latent": ("latent", 0), "audio_vae": ("audio_vae", 0), "audio": ("aud", 0)}),
        ("sample", "MagiHumanDistilledSampler", {"seed": 42, "steps": 8},
         {"model": ("dit", 0), "positive": ("enc", 0), "latent": ("a2v", 0)}),
    ]
    return g + _outputs("a2v_distill", "sample")


def t2v_base_cfg(tiny=False, *, sr=None, width=448, height=256, seconds=4.0, steps=32, sr_steps=5):
    g = _loaders(tiny, base=True, distill=False, sr=sr) + [
        ("enc", "MagiHumanTextEncode", {"prompt": PROMPT if not tiny else "A man smiles and says hello.",
                                        "encode_negative": True}, {"text_encoder": ("te", 0)}),
        ("latent", "MagiHumanEmptyAVLatent", {"width": width, "height": height, "seconds": seconds}, {}),
        ("sample", "MagiHumanBaseSampler", {"seed": 42, "steps": steps},
         {"model": ("dit", 0), "positive": ("enc", 0), "negative": ("enc", 1), "latent": ("latent", 0)}),
    ]
    last = "sample"
    if sr:
        res = "540p (896x512)" if sr == "sr_540p" else "1080p (1920x1088)"
        w = {"resolution": res, "seed": 7, "steps": sr_steps}
        if tiny:
            w.update(resolution="custom", width=width * 2, height=height * 2)
        g.append(("sr", "MagiHumanLatentSR", w, {"sr_model": ("sr_dit", 0), "positive": ("enc", 0),
                                                  "latent": ("sample", 0)}))
        last = "sr"
    name = {None: "t2v_base_cfg", "sr_540p": "sr_540p", "sr_1080p": "sr_1080p"}[sr]
    return g + _outputs(("tiny_" if tiny else "") + name, last)


WORKFLOWS = {
    "magihuman_t2v_distill_256p": (t2v_distill, {}, "Text to video+audio with the distilled model: 8 steps, no CFG, "
                                   "448x256, 4 s (official distill example)."),
    "magihuman_ti2v_distill_256p": (ti2v_distill, {}, "Text+image to video+audio: the image is the first frame "
                                    "(put example.png in ComfyUI/input)."),
    "magihuman_a2v_distill_256p": (a2v_distill, {}, "Audio-driven video: the reference speech sets the audio track "
                                   "and the length (put speech.wav in ComfyUI/input)."),
    "magihuman_t2v_base_cfg_256p": (t2v_base_cfg, {}, "Base model, 32 UniPC steps with CFG (video 5 -> 2 below "
                                    "t=500, audio 5), 448x256, 4 s."),
    "magihuman_sr_540p": (t2v_base_cfg, {"sr": "sr_540p"}, "Base 448x256 then latent super-resolution to 896x512 "
                          "(540p SR model, 5 steps, audio kept in the loop)."),
    "magihuman_sr_1080p": (t2v_base_cfg, {"sr": "sr_1080p"}, "Base 448x256 then latent super-resolution to "
                           "1920x1088 (1080p SR model with local attention, 5 steps)."),
    "magihuman_tiny_t2v": (t2v_distill, {"tiny": True, "width": 64, "height": 64, "seconds": 2.0},
                           "Tiny random models (python -m magihuman tiny-models DIR): checks the graph runs on CPU "
                           "in seconds. The output is noise-like, by design."),
    "magihuman_tiny_sr": (t2v_base_cfg, {"tiny": True, "sr": "sr_540p", "width": 64, "height": 64, "seconds": 1.0,
                                         "steps": 4, "sr_steps": 2},
                          "Tiny random models: base with CFG + latent SR (64x64 -> 128x128) on CPU in seconds."),
}


# ------------------------------------------------------------------------------------------ writers
def build(graph, specs, *, title: str, description: str, tiny: bool) -> tuple[dict, dict]:
    keys = [k for k, *_ in graph]
    ids = {k: i + 1 for i, k in enumerate(keys)}
    links, ui_nodes, api = [], [], {}
    out_links: dict[tuple[str, int], list[int]] = {}
    for key, ntype, widgets, inputs in graph:
        for name, (src, slot) in inputs.items():
            spec = specs[ntype]
            in_type = next(t for n, t, *_ in spec["inputs"] if n == name)
            links.append([len(links) + 1, ids[src], slot, ids[key], None, in_type, name])
            out_links.setdefault((src, slot), []).append(len(links))
    columns = {}
    for order, (key, ntype, widgets, inputs) in enumerate(graph):
        spec = specs[ntype]
        unknown = set(widgets) - {n for n, *_ in spec["inputs"]}
        if unknown:
            raise ValueError(f"{key} ({ntype}): unknown widgets {sorted(unknown)}")
        ui_inputs, values, api_inputs = [], [], {}
        for name, typ, kind, default in spec["inputs"]:
            if kind in ("socket", "optional_socket"):
                link = next((l for l in links if l[3] == ids[key] and l[6] == name), None)
                if link is not None:
                    link[4] = len(ui_inputs)
                    api_inputs[name] = [str(link[1]), link[2]]
                elif kind == "socket":
                    raise ValueError(f"{key} ({ntype}): required input {name!r} is not connected")
                ui_inputs.append({"name": name, "type": typ, "link": link[0] if link else None})
                continue
            value = widgets.get(name, default)
            values.append(value)
            api_inputs[name] = value
            if kind == "seed_widget":
                values.append("fixed")
            if kind == "upload_widget":
                values.append("image" if ntype == "LoadImage" else None)
        outputs = [{"name": n, "type": t, "links": out_links.get((key, i), []), "slot_index": i}
                   for i, (n, t) in enumerate(spec["outputs"])]
        depth = 0 if not inputs else 1 + max(columns[src][0] for src, _ in inputs.values())
        row = sum(1 for d, _ in columns.values() if d == depth)
        columns[key] = (depth, row)
        props = {"Node name for S&R": ntype}
        if ntype == "MagiHumanVideoVAELoader" and not tiny:
            props["models"] = [{"name": "wan2.2_vae.safetensors", "url": WAN_VAE_URL, "directory": "vae"}]
        ui_nodes.append({"id": ids[key], "type": ntype, "pos": [40 + 380 * depth, 40 + 220 * row],
                         "size": [340, 160], "flags": {}, "order": order, "mode": 0, "inputs": ui_inputs,
                         "outputs": outputs, "properties": props, "widgets_values": values})
        api[str(ids[key])] = {"class_type": ntype, "inputs": api_inputs, "_meta": {"title": key}}
    note_id = len(graph) + 1
    note = f"# {title}\n{description}\n\n" + ("Run `python -m magihuman tiny-models DIR` and start ComfyUI with DIR "
                                               "as its models folder (or copy DIR/* into ComfyUI/models)."
                                               if tiny else REAL_MODELS_NOTE)
    ui_nodes.append({"id": note_id, "type": "MarkdownNote", "pos": [40, -260], "size": [760, 240], "flags": {},
                     "order": len(graph), "mode": 0, "inputs": [], "outputs": [],
                     "properties": {}, "widgets_values": [note]})
    ui = {"id": f"magihuman-{title}", "revision": 0, "last_node_id": note_id, "last_link_id": len(links),
          "nodes": ui_nodes, "links": [l[:6] for l in links], "groups": [], "config": {},
          "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4}
    return ui, api


def write_all(out_dir: Path = HERE) -> list[Path]:
    specs = node_specs()
    written = []
    for name, (fn, kwargs, description) in WORKFLOWS.items():
        ui, api = build(fn(**kwargs), specs, title=name, description=description, tiny=kwargs.get("tiny", False))
        for suffix, data in (("", ui), ("_api", api)):
            p = out_dir / f"{name}{suffix}.json"
            p.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
            written.append(p)
    return written


if __name__ == "__main__":
    for p in write_all():
        print(p.relative_to(ROOT))
