"""Every shipped workflow: node types exist, links type-check, widget values fit the schemas, the API twin
matches, the files are what the builder writes; the tiny ones run through the nodes' execute methods."""

import importlib.util
import json
from pathlib import Path

import pytest

from magihuman import media

ROOT = Path(__file__).resolve().parents[1]
WF_DIR = ROOT / "workflows"
UI_FILES = sorted(p for p in WF_DIR.glob("magihuman_*.json") if not p.name.endswith("_api.json"))


@pytest.fixture(scope="module")
def builder(pack):
    spec = importlib.util.spec_from_file_location("build_workflows", WF_DIR / "build_workflows.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def specs(builder):
    return builder.node_specs()


def test_every_mode_is_shipped():
    names = {p.stem for p in UI_FILES}
    for want in ("magihuman_t2v_distill_256p", "magihuman_ti2v_distill_256p", "magihuman_a2v_distill_256p",
                 "magihuman_t2v_base_cfg_256p", "magihuman_sr_540p", "magihuman_sr_1080p", "magihuman_tiny_t2v",
                 "magihuman_tiny_sr"):
        assert want in names
        assert (WF_DIR / f"{want}_api.json").exists()


def test_files_are_up_to_date(builder, tmp_path):
    for p in builder.write_all(tmp_path):
        assert p.read_text() == (WF_DIR / p.name).read_text(), f"{p.name} is stale: run workflows/build_workflows.py"


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_ui_workflow_is_consistent(path, specs):
    wf = json.loads(path.read_text())
    nodes = {n["id"]: n for n in wf["nodes"]}
    for n in nodes.values():
        assert n["type"] in specs, f"unknown node type {n['type']}"
    for link_id, src, src_slot, dst, dst_slot, typ in wf["links"]:
        out = specs[nodes[src]["type"]]["outputs"][src_slot]
        inp = nodes[dst]["inputs"][dst_slot]
        assert out[1] == typ == inp["type"], f"link {link_id}: {out[1]} -> {inp['type']} ({typ})"
        assert inp["link"] == link_id and link_id in nodes[src]["outputs"][src_slot]["links"]
    for n in nodes.values():
        spec = specs[n["type"]]
        widgets = [(name, t, kind) for name, t, kind, _ in spec["inputs"] if kind.endswith("widget")]
        vals = list(n["widgets_values"])
        for name, t, kind in widgets:
            v = vals.pop(0)
            if t == "INT":
                assert isinstance(v, int) and not isinstance(v, bool), (n["type"], name, v)
            elif t == "FLOAT":
                assert isinstance(v, (int, float)) and not isinstance(v, bool), (n["type"], name, v)
            elif t == "BOOLEAN":
                assert isinstance(v, bool), (n["type"], name, v)
            elif t == "STRING":
                assert isinstance(v, str)
            elif t == "COMBO":
                opts = spec.get("options", {}).get(name)
                is_file_list = name in ("model_name", "text_encoder", "vae_name", "image", "audio")
                if opts and not is_file_list:
                    assert v in opts, f"{n['type']}.{name}: {v!r} not in {opts}"
            if kind == "seed_widget":
                assert vals.pop(0) in ("fixed", "increment", "decrement", "randomize")
            if kind == "upload_widget":
                vals.pop(0)
        assert vals == [], f"{n['type']}: extra widget values {vals}"
        required = [name for name, _, kind, _ in spec["inputs"] if kind == "socket"]
        linked = {i["name"] for i in n.get("inputs", []) if i["link"] is not None}
        assert set(required) <= linked, f"{n['type']}: unconnected {set(required) - linked}"


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_api_twin_matches(path, specs):
    ui = json.loads(path.read_text())
    api = json.loads(path.with_name(path.stem + "_api.json").read_text())
    real = [n for n in ui["nodes"] if n["type"] != "MarkdownNote"]
    assert {str(n["id"]) for n in real} == set(api)
    for n in real:
        entry = api[str(n["id"])]
        assert entry["class_type"] == n["type"]
        for inp in n["inputs"]:
            if inp["link"] is not None:
                link = next(l for l in ui["links"] if l[0] == inp["link"])
                assert entry["inputs"][inp["name"]] == [str(link[1]), link[2]]


def _run_api(prompt: dict, nodes: dict, out_dir: Path) -> list[Path]:
    """Execute an API prompt in dependency order: pack nodes via execute(); the two core video nodes by
    equivalent plain calls (CreateVideo bundles, SaveVideo writes H.264 + AAC)."""
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
            if ct == "CreateVideo":
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


@pytest.mark.parametrize("name", ["magihuman_tiny_t2v", "magihuman_tiny_sr"])
def test_tiny_workflow_runs(name, node_pack, tmp_path, tiny_dir):
    env = node_pack(tiny_dir)
    try:
        prompt = json.loads((WF_DIR / f"{name}_api.json").read_text())
        out = _run_api(prompt, env.nodes, tmp_path)
    finally:
        env.close()
    assert len(out) == 1
    info = media.read_mp4_info(out[0])
    assert info["video_codec"] == "h264" and info["audio_codec"] == "aac"
    latent = next(e for e in prompt.values() if e["class_type"] == "MagiHumanEmptyAVLatent")["inputs"]
    latent_frames = (round(latent["seconds"] * 25) // 4) + 1
    assert info["frames"] == 4 * (latent_frames - 1) + 1
