"""Every shipped workflow: node types exist, links type-check, widget values fit the schemas, the API twin is
what an independent flattening of the UI graph (subgraph included) gives, the files are what the builder
writes; the tiny ones run through the nodes' execute methods. (tests/test_templates.py checks the template
format; tests/test_comfyui_real_workflows.py loads and runs them in a real ComfyUI.)"""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from magihuman import media

ROOT = Path(__file__).resolve().parents[1]
WF_DIR = ROOT / "workflows"
TEMPLATE_DIR = ROOT / "example_workflows"
API_DIR = WF_DIR / "api"
UI_FILES = sorted(TEMPLATE_DIR.glob("*.json")) + sorted((WF_DIR / "tiny").glob("*.json"))
TEMPLATES = ("magihuman_t2v_distill_256p", "magihuman_ti2v_distill_256p", "magihuman_a2v_distill_256p",
             "magihuman_t2v_distill_256p_lora", "magihuman_t2v_distill_via_lora_256p", "magihuman_t2v_base_cfg_256p",
             "magihuman_sr_540p", "magihuman_sr_1080p", "magihuman_a2v_long_speech_256p", "magihuman_extend_clip_256p")
TINY = ("magihuman_tiny_t2v", "magihuman_tiny_ti2v", "magihuman_tiny_a2v", "magihuman_tiny_t2v_lora",
        "magihuman_tiny_t2v_distill_via_lora", "magihuman_tiny_sr", "magihuman_tiny_a2v_long", "magihuman_tiny_extend")
FRONTEND_ONLY = {"MarkdownNote", "Note"}


@pytest.fixture(scope="module")
def builder(pack):
    return load_builder()


def load_builder():
    """workflows/build_workflows.py as a module (registered: its dataclasses look their module up)."""
    import sys

    if "build_workflows" not in sys.modules:
        spec = importlib.util.spec_from_file_location("build_workflows", WF_DIR / "build_workflows.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["build_workflows"] = mod
        spec.loader.exec_module(mod)
    return sys.modules["build_workflows"]


@pytest.fixture(scope="module")
def specs(builder):
    return builder.node_specs()


def test_every_mode_is_shipped():
    assert sorted(p.stem for p in TEMPLATE_DIR.glob("*.json")) == sorted(TEMPLATES)
    assert sorted(p.stem for p in (WF_DIR / "tiny").glob("*.json")) == sorted(TINY)
    assert sorted(p.name for p in API_DIR.glob("*.json")) == sorted(f"{n}_api.json" for n in TEMPLATES + TINY)
    assert not list(WF_DIR.glob("*.json")), "workflows/*.json would be listed as templates too"


def test_files_are_up_to_date(builder, tmp_path):
    for p in builder.write_all(tmp_path, thumbnails=False, media=False):  # media: tests/test_templates.py
        rel = p.relative_to(tmp_path)
        assert p.read_text() == (ROOT / rel).read_text(), f"{rel} is stale: run workflows/build_workflows.py"
    docs = {p.name for p in (tmp_path / "web" / "docs").glob("*.md")} | {f"{n}.md" for n in builder.handwritten_docs()}
    assert docs == {p.name for p in (ROOT / "web" / "docs").glob("*.md")}, "web/docs has files the builder no longer writes"


# ------------------------------------------------------------------------------------------ an independent flattening
def widget_map(spec: dict, values: list) -> dict:
    """Widget name -> value from a node's widgets_values (frontend-only entries skipped)."""
    vals, out = list(values), {}
    for name, _, kind, _ in spec["inputs"]:
        if not kind.endswith("widget"):
            continue
        out[name] = vals.pop(0)
        if kind == "seed_widget":
            assert vals.pop(0) in ("fixed", "increment", "decrement", "randomize")
        if kind == "upload_widget":
            vals.pop(0)
            if spec.get("title") == "Load Audio":
                vals.pop(0)
    assert vals == [], f"extra widget values {vals}"
    return out


def flatten(ui: dict, specs: dict) -> dict:
    """The API prompt of a UI workflow whose top graph holds one subgraph node: interior nodes become
    "<subgraph node id>:<inner id>", subgraph inputs take the subgraph node's widget values or its links."""
    subgraphs = {s["id"]: s for s in ui.get("definitions", {}).get("subgraphs", [])}
    root_links = {l[0]: l for l in ui["links"]}
    nodes = {n["id"]: n for n in ui["nodes"]}
    prompt = {}

    def root_source(link_id):
        _, origin, slot, *_ = root_links[link_id]
        if nodes[origin]["type"] in subgraphs:  # an output of the subgraph node -> the inner node behind it
            sg = subgraphs[nodes[origin]["type"]]
            inner = next(l for l in sg["links"] if l["target_id"] == -20 and l["target_slot"] == slot)
            return [f"{origin}:{inner['origin_id']}", inner["origin_slot"]]
        return [str(origin), slot]

    for n in ui["nodes"]:
        if n["type"] in FRONTEND_ONLY:
            continue
        if n["type"] not in subgraphs:
            inputs = widget_map(specs[n["type"]], n.get("widgets_values") or [])
            for inp in n.get("inputs", []):
                if inp.get("link") is not None:
                    inputs[inp["name"]] = root_source(inp["link"])
            prompt[str(n["id"])] = {"class_type": n["type"], "inputs": inputs}
            continue
        sg = subgraphs[n["type"]]
        proxied = [name for owner, name in n["properties"]["proxyWidgets"] if owner == "-1"]
        values = dict(zip(proxied, n["widgets_values"]))
        inner_links = {l["id"]: l for l in sg["links"]}
        for inner in sg["nodes"]:
            if inner["type"] in FRONTEND_ONLY:
                continue
            inputs = widget_map(specs[inner["type"]], inner.get("widgets_values") or [])
            for inp in inner.get("inputs", []):
                link = inner_links.get(inp.get("link"))
                if link is None:
                    continue
                if link["origin_id"] == -10:
                    sg_in = sg["inputs"][link["origin_slot"]]
                    outer = n["inputs"][link["origin_slot"]]
                    assert outer["name"] == sg_in["name"]
                    inputs[inp["name"]] = (root_source(outer["link"]) if outer.get("link") is not None
                                           else values[sg_in["name"]])
                else:
                    inputs[inp["name"]] = [f"{n['id']}:{link['origin_id']}", link["origin_slot"]]
            prompt[f"{n['id']}:{inner['id']}"] = {"class_type": inner["type"], "inputs": inputs}
    return prompt


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_api_twin_is_the_flattened_graph(path, specs):
    ui = json.loads(path.read_text())
    api = json.loads((API_DIR / f"{path.stem}_api.json").read_text())
    flat = flatten(ui, specs)
    assert set(flat) == set(api)
    for nid, entry in api.items():
        assert flat[nid] == {"class_type": entry["class_type"], "inputs": entry["inputs"]}, nid


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_links_and_widgets_fit_the_schemas(path, specs):
    ui = json.loads(path.read_text())
    graphs = [(ui["nodes"], [dict(zip(("id", "origin_id", "origin_slot", "target_id", "target_slot", "type"), l))
                             for l in ui["links"]])]
    graphs += [(sg["nodes"], sg["links"]) for sg in ui["definitions"]["subgraphs"]]
    sub_ids = {sg["id"] for sg in ui["definitions"]["subgraphs"]}
    for nodes, links in graphs:
        by_id = {n["id"]: n for n in nodes}
        for n in nodes:
            assert n["type"] in specs or n["type"] in sub_ids, f"unknown node type {n['type']}"
        for link in links:
            src, dst = by_id.get(link["origin_id"]), by_id.get(link["target_id"])
            if src is not None and src["type"] in specs:
                assert specs[src["type"]]["outputs"][link["origin_slot"]][1] == link["type"], link
                assert link["id"] in src["outputs"][link["origin_slot"]]["links"]
            if dst is not None:
                inp = dst["inputs"][link["target_slot"]]
                assert inp["link"] == link["id"] and inp["type"] == link["type"], (link, inp)
        for n in nodes:
            if n["type"] not in specs or n["type"] in FRONTEND_ONLY:
                continue
            spec = specs[n["type"]]
            values = widget_map(spec, n.get("widgets_values") or [])
            for name, t, kind, _ in spec["inputs"]:
                if kind == "socket":
                    assert any(i["name"] == name and i["link"] is not None for i in n.get("inputs", [])), \
                        f"{n['type']}: {name} is not connected"
                if not kind.endswith("widget"):
                    continue
                v = values[name]
                if t == "INT":
                    assert isinstance(v, int) and not isinstance(v, bool), (n["type"], name, v)
                elif t == "FLOAT":
                    assert isinstance(v, (int, float)) and not isinstance(v, bool), (n["type"], name, v)
                elif t == "BOOLEAN":
                    assert isinstance(v, bool), (n["type"], name, v)
                elif t == "STRING":
                    assert isinstance(v, str)
                elif t == "COMBO":
                    opts = spec["options"].get(name)
                    is_file_list = name in ("model_name", "text_encoder", "vae_name", "image", "audio")
                    if opts and not is_file_list:
                        assert v in opts, f"{n['type']}.{name}: {v!r} not in {opts}"


def test_loader_defaults_come_from_the_model_table(builder):
    from magihuman.presets import comfy_name

    for name in TEMPLATES:
        api = json.loads((API_DIR / f"{name}_api.json").read_text())
        te = next(e for e in api.values() if e["class_type"] == "MagiHumanTextEncoderLoader")
        assert te["inputs"]["text_encoder"] == comfy_name("text_encoder")
    for name in TINY:
        api = json.loads((API_DIR / f"{name}_api.json").read_text())
        te = next(e for e in api.values() if e["class_type"] == "MagiHumanTextEncoderLoader")
        assert te["inputs"]["text_encoder"] == comfy_name("text_encoder", tiny=True)


# ------------------------------------------------------------------------------------------ run the tiny ones
def read_video(path: Path) -> tuple:
    """What core Load Video + Get Video Components give for a file, decoded here with PyAV: (IMAGE [F, H, W, 3]
    float in [0, 1], AUDIO {"waveform": [1, C, N], "sample_rate"}, fps)."""
    import av

    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        fps = float(vs.average_rate)
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(vs)])
    with av.open(str(path)) as c:
        rate = c.streams.audio[0].codec_context.sample_rate
        chunks = [f for f in c.decode(c.streams.audio[0])]
        assert all(f.format.is_planar for f in chunks)  # AAC decodes to float planar: [channels, samples] each
        wave = np.concatenate([f.to_ndarray() for f in chunks], axis=1).astype(np.float32)
    images = torch.from_numpy(frames.astype(np.float32) / 255)
    return images, {"waveform": torch.from_numpy(wave)[None], "sample_rate": rate}, fps


def expected_frames(prompt: dict, speech_seconds: float, clip_frames: int) -> int:
    """Frames the output of a tiny workflow must have, from its own numbers: one clip of ``seconds`` (4·⌊25·s/4⌋ + 1),
    a whole speech rounded up to 4j + 1 frames, or the clip to extend plus the frames added after its last one."""
    nodes = {e["class_type"]: e["inputs"] for e in prompt.values()}
    one_clip = lambda s: 4 * (round(s * 25) // 4) + 1  # noqa: E731
    if "MagiHumanEmptyAVLatent" in nodes:
        return one_clip(nodes["MagiHumanEmptyAVLatent"]["seconds"])
    if "MagiHumanExtend" in nodes:
        return clip_frames + one_clip(nodes["MagiHumanExtend"]["seconds"]) - 1
    assert nodes["MagiHumanLongVideo"]["seconds"] == 0  # the whole speech
    steps = math.ceil(speech_seconds * 25 - 1e-9)
    return 4 * math.ceil((steps - 1) / 4) + 1


def _run_api(prompt: dict, nodes: dict, out_dir: Path, inputs: dict) -> list[Path]:
    """Execute an API prompt in dependency order: pack nodes via execute(); the core nodes by equivalent plain
    calls (Load Image / Load Audio / Load Video read ``inputs``, Get Video Components decodes, Create Video
    bundles, Save Video writes H.264 + AAC)."""
    results, written = {}, []

    def value(v):
        return results[v[0]][v[1]] if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) else v

    pending = dict(prompt)
    while pending:
        for nid, entry in list(pending.items()):
            deps = [v[0] for v in entry["inputs"].values() if isinstance(v, list) and len(v) == 2
                    and isinstance(v[0], str)]
            if any(d not in results for d in deps):
                continue
            kw = {k: value(v) for k, v in entry["inputs"].items()}
            ct = entry["class_type"]
            if ct in ("LoadImage", "LoadAudio", "LoadVideo"):
                results[nid] = inputs[ct]
            elif ct == "GetVideoComponents":
                results[nid] = read_video(kw["video"])
            elif ct == "CreateVideo":
                results[nid] = ({"images": kw["images"], "audio": kw.get("audio"), "fps": kw["fps"]},)
            elif ct == "SaveVideo":
                v = kw["video"]
                path = out_dir / (kw["filename_prefix"].replace("/", "_") + ".mp4")
                a = v["audio"]
                media.write_mp4(path, v["images"].numpy(), fps=v["fps"], audio=a["waveform"][0],
                                sample_rate=a["sample_rate"])
                written.append(path)
                results[nid] = ()
            else:
                results[nid] = tuple(nodes[ct].execute(**kw).args)
            del pending[nid]
    return written


@pytest.mark.parametrize("name", TINY)
def test_tiny_workflow_runs(name, node_pack, tmp_path, tiny_dir):
    """With the example image, speech and video clip the workflows name (read as Load Image / Load Audio / Load
    Video + Get Video Components do). A whole speech comes out as the sound track; an extended clip starts with the
    clip's own frames."""
    import wave

    from PIL import Image

    examples = ROOT / "example_inputs"
    with Image.open(examples / "magihuman_example_portrait.png") as im:
        image = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255)[None]  # [1, H, W, 3]
    with wave.open(str(examples / "magihuman_example_speech.wav")) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
        audio = {"waveform": torch.from_numpy(pcm).reshape(1, 1, -1), "sample_rate": w.getframerate()}
    clip = examples / "magihuman_example_clip.mp4"
    env = node_pack(tiny_dir)
    try:
        prompt = json.loads((API_DIR / f"{name}_api.json").read_text())
        out = _run_api(prompt, env.nodes, tmp_path, {"LoadImage": (image, None), "LoadAudio": (audio,),
                                                     "LoadVideo": (clip,)})
    finally:
        env.close()
    assert len(out) == 1
    info = media.read_mp4_info(out[0])
    assert info["video_codec"] == "h264" and info["audio_codec"] == "aac"
    clip_images, _, _ = read_video(clip)
    frames = expected_frames(prompt, pcm.size / audio["sample_rate"], clip_images.shape[0])
    assert info["frames"] == frames
    kinds = {e["class_type"] for e in prompt.values()}
    if kinds & {"MagiHumanLongVideo", "MagiHumanExtend"}:  # windows: a soundtrack exactly as long as the frames
        assert math.isclose(info["audio_duration"], frames / 25, abs_tol=0.05)
    made, made_audio, _ = read_video(out[0])
    if "MagiHumanLongVideo" in kinds:  # A2V: the sound track is the speech (compared as 40 ms loudness)
        assert _envelope_corr(made_audio, audio, seconds=pcm.size / audio["sample_rate"]) > 0.95
    if "MagiHumanExtend" in kinds:  # "clip + new part": the clip's frames, centre-cropped and resized, come first
        w, h = made.shape[2], made.shape[1]
        for i in (0, clip_images.shape[0] - 1):
            ref = _center_resize(clip_images[i], w, h)
            assert float((made[i] - ref).abs().mean()) < 0.03, i
        assert float((made[-1] - _center_resize(clip_images[-1], w, h)).abs().mean()) > 0.05  # new frames differ


def _center_resize(frame: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """[H, W, 3] in [0, 1] -> centre crop to the aspect of width x height, Lanczos resize (PIL)."""
    from PIL import Image

    h, w = frame.shape[:2]
    side_w, side_h = (round(h * width / height), h) if w * height > h * width else (w, round(w * height / width))
    x0, y0 = (w - side_w) // 2, (h - side_h) // 2
    crop = (frame[y0:y0 + side_h, x0:x0 + side_w].numpy() * 255).round().astype(np.uint8)
    out = Image.fromarray(crop).resize((width, height), Image.LANCZOS)
    return torch.from_numpy(np.asarray(out, dtype=np.float32) / 255)


def _envelope_corr(a: dict, b: dict, seconds: float) -> float:
    """Correlation of the 40 ms RMS loudness of two AUDIO dicts over their first ``seconds`` (mono mix)."""
    def env(x):
        wave = x["waveform"][0].float().mean(0).numpy()
        hop = int(x["sample_rate"] * 0.04)
        n = int(seconds / 0.04)
        return np.sqrt((wave[: n * hop].reshape(n, hop) ** 2).mean(1))

    return float(np.corrcoef(env(a), env(b))[0, 1])
