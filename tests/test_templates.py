"""The template format, checked on the files (the real frontends load them in tests/test_comfyui_real_workflows.py).

Rules from ComfyUI 0.8.0 / frontend 1.35.9 (its zod schema and template browser): the template folder holds
only templates and their thumbnails; UUID workflow and subgraph ids; subgraph definitions of version 1 with a
state block and object links; flags/order/mode/properties on every node; proxyWidgets matching the subgraph
node's widget values; downloadable models only as single files with a known folder. Plus what an artist needs:
the subgraph exposes prompt, size, length, seed, steps and the model names; groups run left to right; the note
says where every model comes from, how to write prompts and what memory to expect; every workflow opens at a zoom
where the frontend draws its nodes; the example image, speech and video clip the TI2V / A2V / Extend workflows open
on are shipped (small, made by the builder) and the pack puts them into ComfyUI's input folder without replacing a
user's file."""

import json
import re
import uuid
from pathlib import Path

import pytest

from magihuman.presets import MODEL_FILES

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_DIR = ROOT / "example_workflows"
TEMPLATES = sorted(TEMPLATE_DIR.glob("*.json"))
UI_FILES = TEMPLATES + sorted((ROOT / "workflows" / "tiny").glob("*.json"))
GROUP_ORDER = ["Models", "Prompt", "Sampling", "Super-resolution", "Decode"]
NODE_KEYS = ("id", "type", "pos", "size", "flags", "order", "mode", "properties")
MODEL_FOLDERS = {"checkpoints", "diffusion_models", "text_encoders", "vae", "loras", "unet", "clip"}
SEMVER = re.compile(r"^\d+\.\d+\.\d+$")


def is_uuid(s) -> bool:
    try:
        return str(uuid.UUID(s)) == s
    except (ValueError, TypeError, AttributeError):
        return False


def load(path):
    ui = json.loads(path.read_text())
    return ui, ui["definitions"]["subgraphs"][0]


def test_template_folder_holds_only_templates_and_thumbnails():
    from PIL import Image

    names = {p.name for p in TEMPLATE_DIR.iterdir()}
    stems = {p.stem for p in TEMPLATES}
    assert names == {f"{s}.json" for s in stems} | {f"{s}.jpg" for s in stems}, names
    assert not any(s.endswith("_api") for s in stems)
    for s in stems:
        with Image.open(TEMPLATE_DIR / f"{s}.jpg") as im:
            assert im.format == "JPEG" and im.size == (512, 384)


def test_web_folder_has_only_the_gguf_extension_javascript():
    js = sorted(p.relative_to(ROOT / "web").as_posix() for p in (ROOT / "web").rglob("*.js"))
    assert js == ["js/magihuman_gguf.js"], "ComfyUI loads every .js under WEB_DIRECTORY as an extension"


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_frontend_schema_rules(path):
    ui, sg = load(path)
    assert is_uuid(ui["id"]) and ui["version"] == 0.4 and ui["revision"] == 0
    assert ui["extra"].get("workflowRendererVersion") in ("LG", "Vue")
    ds = ui["extra"]["ds"]  # the saved view (see test_opens_at_a_zoom_where_the_nodes_are_drawn)
    assert set(ds) == {"scale", "offset"} and len(ds["offset"]) == 2
    assert all(isinstance(link, list) and len(link) == 6 for link in ui["links"])
    all_nodes = ui["nodes"] + sg["nodes"]
    for n in all_nodes:
        assert all(k in n for k in NODE_KEYS) and isinstance(n["flags"], dict) and isinstance(n["properties"], dict), n
        ver = n["properties"].get("ver")
        assert ver is None or SEMVER.match(ver)
    assert ui["last_node_id"] >= max(n["id"] for n in all_nodes)
    assert ui["last_link_id"] >= max([link[0] for link in ui["links"]] + [link["id"] for link in sg["links"]])
    ids = [n["id"] for n in all_nodes]
    assert len(ids) == len(set(ids)), "node ids must be unique in the file"
    # the subgraph definition
    assert is_uuid(sg["id"]) and sg["version"] == 1 and sg["revision"] == 0 and sg["name"].startswith("MagiHuman")
    st = sg["state"]
    assert set(st) == {"lastGroupId", "lastNodeId", "lastLinkId", "lastRerouteId"}
    assert st["lastNodeId"] >= max(n["id"] for n in sg["nodes"]) and st["lastLinkId"] >= max(l["id"] for l in sg["links"])
    assert st["lastGroupId"] >= len(sg["groups"])
    for io_node in (sg["inputNode"], sg["outputNode"]):
        assert len(io_node["bounding"]) == 4
    links = {l["id"]: l for l in sg["links"]}
    assert all(set(l) >= {"id", "origin_id", "origin_slot", "target_id", "target_slot", "type"} for l in links.values())
    for slot, inp in enumerate(sg["inputs"]):
        assert is_uuid(inp["id"]) and inp["linkIds"]
        for lid in inp["linkIds"]:
            assert links[lid]["origin_id"] == -10 and links[lid]["origin_slot"] == slot and links[lid]["type"] == inp["type"]
    for slot, out in enumerate(sg["outputs"]):
        assert is_uuid(out["id"]) and all(links[lid]["target_id"] == -20 and links[lid]["target_slot"] == slot
                                          for lid in out["linkIds"])
    assert all("title" in g and len(g["bounding"]) == 4 for g in sg["groups"])
    # the subgraph node in the top graph
    inst = [n for n in ui["nodes"] if n["type"] == sg["id"]]
    assert len(inst) == 1
    inst = inst[0]
    assert [i["name"] for i in inst["inputs"]] == [i["name"] for i in sg["inputs"]]
    proxy = inst["properties"]["proxyWidgets"]
    assert all(isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in proxy)
    widget_inputs = [i["name"] for i in inst["inputs"] if "widget" in i]
    assert [name for owner, name in proxy if owner == "-1"] == widget_inputs
    assert len(inst["widgets_values"]) == len(proxy)


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_the_subgraph_exposes_what_an_artist_changes(path):
    ui, sg = load(path)
    names = [i["name"] for i in sg["inputs"]]
    for want in ("prompt", "width", "height", "seconds", "seed", "steps", "dit_model", "text_encoder", "turbo_vae",
                 "audio_vae"):
        assert want in names, want
    types = {n["type"] for n in sg["nodes"]}
    if "MagiHumanBaseSampler" in types:
        assert "negative_prompt" in names
    if "MagiHumanSRDiTLoader" in types:
        assert "sr_model" in names
    if "MagiHumanImageToVideo" in types:
        assert "image" in names and "video_vae" in names
    if "MagiHumanReferenceAudio" in types or "MagiHumanLongVideo" in types:
        assert "audio" in names
    if types & {"MagiHumanLongVideo", "MagiHumanExtend"}:  # windows: the Wan2.2 VAE re-encodes each first frame
        assert "window_seconds" in names and "video_vae" in names
    if "MagiHumanExtend" in types:
        assert "video" in names and "GetVideoComponents" in types
    top = {n["type"] for n in ui["nodes"]} - {sg["id"]}
    assert top <= {"LoadImage", "LoadAudio", "LoadVideo", "SaveVideo", "MarkdownNote"} and "SaveVideo" in top


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_groups_run_left_to_right_without_overlaps(path):
    _, sg = load(path)
    groups = sg["groups"]
    assert [g["title"] for g in groups] == [t for t in GROUP_ORDER if t in {g["title"] for g in groups}]
    xs = [g["bounding"] for g in groups]
    assert all(a[0] + a[2] < b[0] for a, b in zip(xs, xs[1:]))
    title = 30  # the node title bar sits above pos
    for n in sg["nodes"]:
        x, y, w, h = n["pos"][0], n["pos"][1] - title, n["size"][0], n["size"][1] + title
        homes = [g["title"] for g in groups if g["bounding"][0] <= x and x + w <= g["bounding"][0] + g["bounding"][2]
                 and g["bounding"][1] + 30 <= y and y + h <= g["bounding"][1] + g["bounding"][3]]
        assert len(homes) == 1, (n["type"], homes)
    rects = [(n["pos"][0], n["pos"][1] - title, n["size"][0], n["size"][1] + title) for n in sg["nodes"]]
    for i, a in enumerate(rects):
        for b in rects[i + 1:]:
            assert not (a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3])


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_downloadable_models_are_single_files(path):
    ui, sg = load(path)
    for n in ui["nodes"] + sg["nodes"]:
        for m in n["properties"].get("models", []):
            assert m["name"] in n["widgets_values"], "the frontend only counts a model that is the widget's value"
            assert m["url"].startswith("https://huggingface.co/") and m["url"].endswith("/" + m["name"])
            assert m["name"].endswith((".safetensors", ".sft")) and m["directory"] in MODEL_FOLDERS
    tiny = "tiny" in path.stem
    loaders = {n["type"]: n for n in sg["nodes"]}
    if "MagiHumanVideoVAELoader" in loaders and not tiny:
        assert loaders["MagiHumanVideoVAELoader"]["properties"]["models"]


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.stem)
def test_the_note_says_where_models_come_from_how_to_prompt_and_what_memory(path):
    ui, sg = load(path)
    note = next(n for n in ui["nodes"] if n["type"] == "MarkdownNote")["widgets_values"][0]
    loaders = [n for n in sg["nodes"] if n["type"].endswith("Loader") and "Lora" not in n["type"]]
    if any("Lora" in n["type"] for n in sg["nodes"]):  # the user's own LoRA: where it goes / how to make it
        assert "models/loras/" in note
        assert ("extract-lora models/diffusion_models/base models/diffusion_models/distill" in note
                if "via_lora" in path.stem else "LoRA strength" in note)
    for n in loaders:
        model = n["widgets_values"][0]
        m = next(m for m in MODEL_FILES.values() if m.name == model)
        assert f"models/{m.folder}/{m.name}" in note, m.name   # the exact folder (or file) to put
        assert "https://huggingface.co/" in note
    for phrase in ("double quotes", "Dialogue:", "Background Sound:", "GiB", "fp8", "open its subgraph"):
        assert phrase in note, phrase


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.stem)
def test_example_prompt_follows_the_trained_format(path):
    from magihuman.prompts import check_enhanced_prompt

    ui, sg = load(path)
    inst = next(n for n in ui["nodes"] if n["type"] == sg["id"])
    prompt = dict(zip([name for _, name in inst["properties"]["proxyWidgets"]], inst["widgets_values"]))["prompt"]
    assert check_enhanced_prompt(prompt) == []


def test_every_node_has_help(pack):
    """web/docs/<NodeId>.md for every node: generated from the schema (description, every input, what to
    connect) unless someone wrote the page by hand (then it is kept, and must still name every input)."""
    import importlib

    nodes = importlib.import_module(f"{pack.__name__}.nodes")
    for cls in nodes.NODE_CLASSES:
        s = cls.define_schema()
        doc = (ROOT / "web" / "docs" / f"{s.node_id}.md").read_text()
        assert doc.startswith(f"# {s.display_name}\n") and s.description
        if "written by workflows/build_workflows.py" in doc:
            assert s.description in doc
        for i in s.inputs:
            assert f"`{i.id}`" in doc, (s.node_id, i.id)


# ------------------------------------------------------------------------------------------ the view on load
VIEW = (1600, 900)           # a 1600x900 canvas (where 1.5x frontends opened four templates at 52-56 %)
FREE = (60, 90, 20, 20)      # left, top, right, bottom: the frontend's side bar, tabs and run bar cover these
READABLE = 0.6               # below ~0.57 (LiteGraph.Canvas.MinFontSizeForLOD) nodes are drawn as blank boxes
TITLE = 30                   # the title bar above a node's pos


def _rects(nodes):
    return [(n["pos"][0], n["pos"][1] - TITLE, n["size"][0], n["size"][1] + TITLE) for n in nodes]


def _box(rects):
    x0, y0 = min(r[0] for r in rects), min(r[1] for r in rects)
    return x0, y0, max(r[0] + r[2] for r in rects), max(r[1] + r[3] for r in rects)


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_opens_at_a_zoom_where_the_nodes_are_drawn(path):
    """1.3x frontends (and 1.5x for a workflow file) show extra.ds and keep it when the subgraph is opened: there
    every node of the top graph and of the subgraph must be inside the free part of a 1600x900 canvas at a zoom
    >= 0.6. 1.5x opens a template from its browser fitted to the top graph (0.75 x the zoom at which the nodes
    fill the canvas): that must be >= 0.7 (nodes drawn, with room for a smaller window)."""
    ui, sg = load(path)
    ds = ui["extra"]["ds"]
    s, (ox, oy) = ds["scale"], ds["offset"]
    assert READABLE <= s <= 1.0, s
    rects = _rects(ui["nodes"]) + _rects(sg["nodes"]) + [tuple(g["bounding"]) for g in sg["groups"]]
    rects += [tuple(sg["inputNode"]["bounding"]), tuple(sg["outputNode"]["bounding"])]
    x0, y0, x1, y1 = _box(rects)
    left, top, right, bottom = FREE
    screen = ((x0 + ox) * s, (y0 + oy) * s, (x1 + ox) * s, (y1 + oy) * s)
    assert screen[0] >= left - 0.5 and screen[1] >= top - 0.5, screen
    assert screen[2] <= VIEW[0] - right + 0.5 and screen[3] <= VIEW[1] - bottom + 0.5, screen
    # and not smaller than it has to be: the view is limited by the width or the height (or zoom 1)
    fill = max((screen[2] - screen[0]) / (VIEW[0] - left - right), (screen[3] - screen[1]) / (VIEW[1] - top - bottom))
    assert s == 1.0 or fill > 0.99, fill
    tx0, ty0, tx1, ty1 = _box(_rects(ui["nodes"]))
    fitted = 0.75 * min(VIEW[0] / (tx1 - tx0), VIEW[1] / (ty1 - ty0))
    assert fitted >= 0.7, f"a 1.5x frontend opens the template at {fitted:.2f}"


# ------------------------------------------------------------------------------------------ example inputs
EXAMPLES = ROOT / "example_inputs"
IMAGE, AUDIO, CLIP = "magihuman_example_portrait.png", "magihuman_example_speech.wav", "magihuman_example_clip.mp4"


def test_example_inputs_are_small_and_what_the_workflows_name():
    import wave

    from PIL import Image

    from magihuman import media

    assert sorted(p.name for p in EXAMPLES.iterdir()) == sorted([IMAGE, AUDIO, CLIP])
    assert (EXAMPLES / IMAGE).stat().st_size < 64_000 and (EXAMPLES / AUDIO).stat().st_size < 160_000
    assert (EXAMPLES / CLIP).stat().st_size < 64_000
    with Image.open(EXAMPLES / IMAGE) as im:
        assert im.format == "PNG" and im.mode == "RGB" and im.size == (448, 256)  # the templates' size
    with wave.open(str(EXAMPLES / AUDIO)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16000)
        clip_seconds = w.getnframes() / w.getframerate()
    info = media.read_mp4_info(EXAMPLES / CLIP)  # 25 fps (what Extend takes), the templates' size, with its sound
    assert (info["video_codec"], info["width"], info["height"], info["fps"], info["frames"]) == ("h264", 448, 256,
                                                                                                25.0, 49)
    assert info["audio_codec"] == "aac" and abs(info["audio_duration"] - 49 / 25) < 0.05
    for path in UI_FILES:
        ui, sg = load(path)
        inner = {n["type"]: n for n in sg["nodes"]}
        loaders = {n["type"]: n["widgets_values"][0] for n in ui["nodes"]
                   if n["type"] in ("LoadImage", "LoadAudio", "LoadVideo")}
        assert loaders == ({"LoadImage": IMAGE} if "MagiHumanImageToVideo" in inner else {}) | (
            {"LoadAudio": AUDIO} if {"MagiHumanReferenceAudio", "MagiHumanLongVideo"} & set(inner) else {}) | (
            {"LoadVideo": CLIP} if "GetVideoComponents" in inner else {}), path.stem
        if loaders.get("LoadAudio"):  # the clip covers the length the workflow asks for (trimmed to it)
            inst = next(n for n in ui["nodes"] if n["type"] == sg["id"])
            values = dict(zip([name for _, name in inst["properties"]["proxyWidgets"]], inst["widgets_values"]))
            assert clip_seconds >= values["seconds"], (path.stem, clip_seconds)
        if loaders and "tiny" not in path.stem:  # the note says what the file is and to pick your own
            note = next(n for n in ui["nodes"] if n["type"] == "MarkdownNote")["widgets_values"][0]
            assert all(name in note for name in loaders.values()) and "pick or upload" in note


def test_example_speech_sounds_like_a_voice():
    """Voiced (a pitch in the human range most of the time it sounds), with pauses: not a tone, not noise."""
    import wave

    import numpy as np

    with wave.open(str(EXAMPLES / AUDIO)) as w:
        x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float64) / 32768
        rate = w.getframerate()
    frame = int(0.04 * rate)
    frames = x[: len(x) // frame * frame].reshape(-1, frame)
    rms = np.sqrt((frames ** 2).mean(1))
    loud = rms > 0.25 * rms.max()
    assert 0.5 < loud.mean() < 0.9, loud.mean()          # sounding most of the time, with gaps
    pitches = []
    for f in frames[loud]:
        ac = np.correlate(f, f, "full")[frame - 1:]
        lo, hi = rate // 400, rate // 80                   # 80-400 Hz
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.3 * ac[0]:
            pitches.append(rate / lag)
    assert len(pitches) > 0.6 * loud.sum(), (len(pitches), loud.sum())
    assert 120 < float(np.median(pitches)) < 260 and np.std(pitches) > 5  # a speaking voice with intonation


def test_the_builder_makes_the_shipped_example_inputs(tmp_path):
    """The shipped files are what workflows/build_workflows.py makes (compared decoded: encoders may differ)."""
    import wave

    import numpy as np
    from PIL import Image

    from tests.test_workflows import load_builder

    builder = load_builder()
    builder.write_example_image(tmp_path / IMAGE)
    builder.write_example_audio(tmp_path / AUDIO)
    a = np.asarray(Image.open(tmp_path / IMAGE), dtype=np.int16)
    b = np.asarray(Image.open(EXAMPLES / IMAGE), dtype=np.int16)
    assert a.shape == b.shape and np.abs(a - b).max() <= 2, "example_inputs/ is stale: run workflows/build_workflows.py"
    read = lambda p: np.frombuffer(wave.open(str(p)).readframes(10 ** 7), "<i2").astype(np.int32)  # noqa: E731
    a, b = read(tmp_path / AUDIO), read(EXAMPLES / AUDIO)
    assert a.shape == b.shape and np.abs(a - b).max() <= 1
    builder.write_example_clip(tmp_path / CLIP)
    a, b = _clip_frames(tmp_path / CLIP).astype(np.int16), _clip_frames(EXAMPLES / CLIP).astype(np.int16)
    assert a.shape == b.shape and np.abs(a - b).mean() < 0.5, "the example clip is stale"


def _clip_frames(path):
    import av
    import numpy as np

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])])


def test_example_clip_is_the_portrait_speaking_the_example_speech():
    """The clip opens on the portrait (mouth closed), the mouth opens with the loudness of its sound, which is the
    start of the example speech; one blink."""
    import wave

    import av
    import numpy as np
    from PIL import Image

    frames = _clip_frames(EXAMPLES / CLIP).astype(np.float64)                    # [49, 256, 448, 3]
    portrait = np.asarray(Image.open(EXAMPLES / IMAGE), dtype=np.float64)
    assert np.abs(frames[0] - portrait).mean() < 4.0                               # frame 0 is the portrait (H.264)
    mouth = frames[:, 138:156, 212:237].mean(axis=(1, 2, 3))                     # darker = more open
    with wave.open(str(EXAMPLES / AUDIO)) as w:
        speech = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float64)
        rate = w.getframerate()
    hop = rate // 25
    loud = np.sqrt((speech[: 49 * hop].reshape(49, hop) ** 2).mean(1))
    assert np.corrcoef(-mouth, loud)[0, 1] > 0.6                                  # lip movement follows the sound
    with av.open(str(EXAMPLES / CLIP)) as c:
        sound = np.concatenate([f.to_ndarray() for f in c.decode(c.streams.audio[0])], axis=1)[0]
        assert c.streams.audio[0].codec_context.sample_rate == rate
    n = min(len(sound) // hop, 49)
    got = np.sqrt((sound[: n * hop].reshape(n, hop) ** 2).mean(1))
    assert n >= 48 and np.corrcoef(got, loud[:n])[0, 1] > 0.95                   # its sound is the example speech
    eyes = frames[:, 100:108, 204:214].mean(axis=(1, 2, 3))                       # the left eye
    assert (np.abs(eyes - eyes[0]) > 10).sum() == 2                                 # lids over it in two frames


def test_the_pack_copies_the_example_inputs_and_never_replaces_a_file(pack, tmp_path, caplog):
    import importlib

    ex = importlib.import_module(f"{pack.__name__}.nodes.example_inputs")
    folder = tmp_path / "input"
    mine = folder / AUDIO
    folder.mkdir()
    mine.write_bytes(b"the user's own clip")
    with caplog.at_level("INFO", logger="magihuman.nodes"):
        assert ex.install_example_inputs(folder) == [IMAGE, CLIP]
    for name in (IMAGE, CLIP):
        assert (folder / name).read_bytes() == (EXAMPLES / name).read_bytes()
    assert mine.read_bytes() == b"the user's own clip"
    assert f"copied the template example inputs {IMAGE}, {CLIP} into {folder}" in caplog.text
    assert ex.install_example_inputs(folder) == []              # nothing missing: nothing copied
    assert ex.install_example_inputs() == []                    # no ComfyUI: no input folder to fill
    blocked = tmp_path / "file_not_folder"
    blocked.write_text("")
    with caplog.at_level("WARNING", logger="magihuman.nodes"):
        assert ex.install_example_inputs(blocked) == []          # cannot copy: a warning, not an error
    assert "could not copy the example input" in caplog.text
