"""Every workflow in a real ComfyUI 0.8.0, in its bundled frontend (1.35.9) and in the newest one (1.58.1).

One server per frontend (tiny models, CPU, a 1600x900 window). The template browser must list exactly the
templates, each with its thumbnail; every UI workflow (templates as the browser opens them, tiny ones as a file is
opened) is loaded in headless Chromium: no alert, toast, dialog or issue notice may appear ("Missing Inputs", "N
issues found" in 1.5x), it must open at a zoom where the frontend draws the nodes (>= 0.6, read from the live
canvas) with every node of the top graph and of the opened subgraph on screen, readable and free of overlaps, and
the prompt the frontend makes must equal the API twin; the tiny workflows then run to an MP4 (once, with the
bundled frontend: the run is that same prompt). The pack must have put the example image and speech clip into
ComfyUI's input folder. Screenshots and a JSON report per frontend go to $MAGIHUMAN_SCREENSHOTS (default: a pytest
temp dir). The newest frontend is the comfyui-frontend-package build .ci/run downloads
(tests/comfyui_harness.py: newest_frontend). Skips, saying why, without a harness ComfyUI (or without its
headless-frontend setup for the frontend part, or without the newest frontend build for its half)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.comfyui_harness import (NEWEST_FRONTEND_VERSION, comfyui_server, frontend_available, newest_frontend,
                                   requires_comfyui)

pytestmark = requires_comfyui

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = sorted((ROOT / "example_workflows").glob("*.json"))
TINY = sorted((ROOT / "workflows" / "tiny").glob("*.json"))
UI = TEMPLATES + TINY
API_DIR = ROOT / "workflows" / "api"
EXAMPLE_INPUTS = ROOT / "example_inputs"
GROUP_ORDER = ["Models", "Prompt", "Sampling", "Super-resolution", "Decode"]
VIEWPORT = (1600, 900)    # the window the templates' views are made for (workflows/build_workflows.py VIEW)
READABLE_SCALE = 0.6      # below ~0.57 the frontend draws nodes as blank boxes (LiteGraph.Canvas.MinFontSizeForLOD 8)
FRONTENDS = ["bundled", NEWEST_FRONTEND_VERSION]
# The template names the LoRA templates give (a LoRA of the artist's, and the one their note says how to make):
# "installed" like the models, so the frontend has no missing model to report
LORA_FILES = ("your_magihuman_lora.safetensors", "magihuman_distill_from_base_r64.safetensors")

# Loads each workflow the way the frontend does (the template browser for one of them), and reports what is on
# screen: toasts, dialogs, window alerts, console errors, node/group rectangles, the view, the prompt.
FRONTEND_JS = r"""
const { chromium } = require('playwright-core');
const fs = require('fs');
const path = require('path');
const [jobFile, outFile] = process.argv.slice(2);
const job = JSON.parse(fs.readFileSync(jobFile, 'utf8'));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function seen(page) {
  // 1.3x: PrimeVue toasts and dialogs; 1.5x: notices in [role=status] / [role=alert] ("Media input missing",
  // "N issues found", "View details") and [role=dialog] dialogs
  return page.evaluate(() => {
    const vis = (e) => !!(e.offsetWidth || e.offsetHeight || e.getClientRects().length);
    const text = (e) => (e.innerText || '').replace(/\s+/g, ' ').trim().slice(0, 300);
    const all = (sel) => [...new Set(document.querySelectorAll(sel))].filter(vis).map(text).filter((t) => t);
    return { toasts: all('.p-toast-message, [role=status], [role=alert]'),
             dialogs: all('.p-dialog, [role=dialog]') };
  });
}
async function layout(page) {
  return page.evaluate(() => {
    const c = window.app.canvas, g = c.graph, th = window.LiteGraph.NODE_TITLE_HEIGHT;
    return {
      nodes: g.nodes.map((n) => ({ id: n.id, type: n.type, title: n.title,
        rect: [n.pos[0], n.pos[1] - th, n.size[0], n.size[1] + th] })),
      groups: (g.groups || g._groups || []).map((x) => ({ title: x.title, rect: [x.pos[0], x.pos[1], x.size[0], x.size[1]] })),
      ds: { scale: c.ds.scale, offset: [c.ds.offset[0], c.ds.offset[1]] },
      canvas: [c.canvas.clientWidth, c.canvas.clientHeight] };
  });
}
const thumbs = (page) => page.evaluate(() => [...new Set(document.querySelectorAll('.p-dialog img, [role=dialog] img'))]
  .map((i) => ({ alt: i.alt, loaded: i.complete && i.naturalWidth > 0, w: i.naturalWidth, h: i.naturalHeight })));
// the browser's grid draws only the rows in view (two rows of four in a 1600x900 window): scroll it down to see
// every card, then back to the top
const scrollGrid = (page, to) => page.evaluate((to) => {
  const grid = [...document.querySelectorAll('.p-dialog *, [role=dialog] *')].find((e) =>
    e.scrollHeight > e.clientHeight + 4 && /auto|scroll/.test(getComputedStyle(e).overflowY));
  if (!grid) return false;
  const before = grid.scrollTop;
  grid.scrollTop = to === 'top' ? 0 : before + grid.clientHeight * 0.8;
  return grid.scrollTop !== before;
}, to);
async function allThumbs(page) {
  const found = new Map();
  for (let i = 0; i < 30; i++) {
    await page.waitForFunction(() => [...document.querySelectorAll('.p-dialog img, [role=dialog] img')]
      .every((im) => im.complete), null, { timeout: 15000 }).catch(() => {});
    for (const t of await thumbs(page)) found.set(t.alt, t);
    if (!(await scrollGrid(page, 'down'))) break;
    await sleep(400);
  }
  await scrollGrid(page, 'top');
  await sleep(400);
  return [...found.values()];
}
(async () => {
  const t0 = Date.now();
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
           '--disable-background-networking', '--disable-component-update', '--disable-sync'] });
  const out = { workflows: {}, console: [], templateFiles: [], seconds: {} };
  try {
    const page = await browser.newPage({ viewport: { width: job.viewport[0], height: job.viewport[1] } });
    const alerts = [];
    page.on('dialog', async (d) => { alerts.push(`${d.type()}: ${d.message()}`); await d.dismiss(); });
    page.on('console', (m) => { if (m.type() === 'error') out.console.push(m.text().slice(0, 300)); });
    page.on('pageerror', (e) => out.console.push(`pageerror: ${String(e)}`.slice(0, 300)));
    page.on('response', (r) => {
      if (r.status() >= 400) out.console.push(`http ${r.status()}: ${r.url()}`);
      if (r.url().includes('/workflow_templates/')) out.templateFiles.push({ url: r.url(), status: r.status() });
    });
    await page.goto(job.url);
    await page.waitForFunction(() => window.app && window.app.graph && window.LiteGraph &&
      Object.keys(window.LiteGraph.registered_node_types).length > 10, null, { timeout: 120000 });
    out.version = await page.evaluate(() => window.__COMFYUI_FRONTEND_VERSION__ || null);
    // a fresh user: the frontend opens the template browser by itself; wait for our thumbnails in it (the ones in
    // view: two rows of four; allThumbs scrolls to the others)
    await page.waitForFunction((n) => {
      const imgs = [...document.querySelectorAll('.p-dialog img, [role=dialog] img')];
      return imgs.length >= Math.min(n, 8) && imgs.every((i) => i.complete);
    }, job.templates, { timeout: 60000 }).catch(() => {});
    await sleep(500);
    await page.screenshot({ path: path.join(job.shots, '00_template_browser.png') });
    out.browser = await seen(page);
    out.templateList = await page.evaluate(async () => (await fetch('/api/workflow_templates')).json());
    out.thumbnails = await allThumbs(page);
    out.seconds.startup = (Date.now() - t0) / 1000;
    alerts.length = 0;
    await page.getByText(job.openFromBrowser, { exact: true }).first().click();  // open one from the browser
    await page.waitForFunction(() => window.app.graph.nodes.length > 0, null, { timeout: 30000 });
    await sleep(job.settle);
    out.fromBrowser = Object.assign(await seen(page), { alerts: [...alerts], root: await layout(page) });
    await page.screenshot({ path: path.join(job.shots, '01_opened_from_browser.png') });
    const t1 = Date.now();
    for (const wf of job.workflows) {
      const data = JSON.parse(fs.readFileSync(wf.file, 'utf8'));
      alerts.length = 0;
      const n0 = out.console.length;
      const r = {};
      try {  // the template browser opens a template with openSource "template"; a workflow file without
        await page.evaluate(async ([d, name, template]) => {
          await window.app.loadGraphData(d, true, true, name, template ? { openSource: 'template' } : {});
        }, [data, wf.name, wf.template]);
      } catch (e) { r.loadError = String(e); }
      await sleep(job.settle);
      Object.assign(r, await seen(page));
      r.alerts = [...alerts];
      r.root = await layout(page);
      await page.screenshot({ path: path.join(job.shots, `${wf.name}.png`) });
      try { r.prompt = await page.evaluate(async () => (await window.app.graphToPrompt()).output); }
      catch (e) { r.promptError = String(e); }
      const opened = await page.evaluate(() => {  // what the icon at the top right of the node does
        const n = window.app.graph.nodes.find((x) => x.isSubgraphNode && x.isSubgraphNode());
        if (!n) return false;
        window.app.canvas.openSubgraph(n.subgraph, n);
        return true;
      });
      if (opened) {
        await sleep(600);
        r.inside = Object.assign(await layout(page), await seen(page));
        await page.screenshot({ path: path.join(job.shots, `${wf.name}__subgraph.png`) });
        await page.evaluate(() => window.app.canvas.setGraph(window.app.graph));
      }
      r.console = out.console.slice(n0);
      out.workflows[wf.name] = r;
    }
    out.seconds.workflows = (Date.now() - t1) / 1000;
    // last (its side panel stays open): the node help of Text Encode, from the info button of the selection
    // toolbox, in the template opened from the browser
    const first = job.workflows.find((w) => w.name === job.openFromBrowser);
    await page.evaluate(async ([d, name]) => { await window.app.loadGraphData(d, true, true, name); },
      [JSON.parse(fs.readFileSync(first.file, 'utf8')), first.name]);
    await sleep(800);
    await page.evaluate(() => {
      const n = window.app.graph.nodes.find((x) => x.isSubgraphNode && x.isSubgraphNode());
      window.app.canvas.openSubgraph(n.subgraph, n);
    });
    await sleep(800);
    const title = await page.evaluate((type) => {
      const c = window.app.canvas, n = c.graph.nodes.find((x) => x.type === type);
      const s = c.ds.scale, o = c.ds.offset, r = c.canvas.getBoundingClientRect();
      return [r.left + (n.pos[0] + o[0] + n.size[0] / 2) * s, r.top + (n.pos[1] + o[1] - 15) * s];
    }, job.helpNode);
    await page.mouse.click(title[0], title[1]);  // the middle of the title bar: selects the node
    await sleep(800);
    const info = page.locator('[data-testid="info-button"]');
    out.help = { infoButton: await info.count() };
    if (out.help.infoButton) {
      await info.first().click();
      await sleep(2500);
      out.help.text = await page.evaluate(() => document.body.innerText);
    }
    await page.screenshot({ path: path.join(job.shots, '02_node_help.png') });
  } finally {
    await browser.close();
  }
  out.seconds.total = (Date.now() - t0) / 1000;
  fs.writeFileSync(outFile, JSON.stringify(out, null, 1));
})().catch((e) => { console.error(String((e && e.stack) || e)); process.exit(1); });
"""


@pytest.fixture(scope="module", params=FRONTENDS)
def fe(request) -> dict:
    """The frontend under test: {"name", "root"} (root None: the bundled one)."""
    if request.param == "bundled":
        return {"name": "bundled", "root": None}
    root, why = newest_frontend()
    if root is None:
        pytest.skip(why)
    return {"name": request.param, "root": root}


@pytest.fixture(scope="module")
def shots(fe, tmp_path_factory) -> Path:
    base = os.environ.get("MAGIHUMAN_SCREENSHOTS")
    folder = Path(base) / fe["name"] if base else tmp_path_factory.mktemp(f"screenshots-{fe['name']}")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def server(fe, tmp_path_factory):
    from magihuman.tiny import write_tiny_models

    models = tmp_path_factory.mktemp("models")
    write_tiny_models(models)
    # the single-file models the templates name are "installed" (empty files), so the frontend's missing-model
    # notices stay closed as they do for an artist who has the models: the Wan2.2 VAE a template offers for
    # download (properties.models) and the LoRAs of the LoRA templates
    (models / "vae" / "wan2.2_vae.safetensors").write_bytes(b"")
    for name in LORA_FILES:
        (models / "loras" / name).write_bytes(b"")
    # no input files copied: the pack puts the example image and speech clip into input/ itself
    with comfyui_server(models, server_args=["--front-end-root", str(fe["root"])] if fe["root"] else []) as srv:
        yield srv


@pytest.fixture(scope="module")
def frontend_run(server, shots):
    """The frontend report, or None when no headless frontend is set up."""
    if not frontend_available()[0]:
        return None
    job = {"shots": str(shots), "viewport": list(VIEWPORT), "openFromBrowser": "magihuman_t2v_distill_256p",
           "helpNode": "MagiHumanTextEncode", "templates": len(TEMPLATES), "settle": 1000,
           "workflows": [{"name": p.stem, "file": str(p), "template": p in TEMPLATES} for p in UI]}
    out = server.frontend(FRONTEND_JS, job)
    (shots / "frontend_report.json").write_text(json.dumps(out, indent=1))
    return out


@pytest.fixture(scope="module")
def frontend(frontend_run):
    if frontend_run is None:
        pytest.skip(frontend_available()[1])
    return frontend_run


def test_the_newest_frontend_is_the_one_served(fe, frontend):
    if fe["root"] is None:  # what ComfyUI 0.8.0 pins
        assert frontend["version"] and frontend["version"].startswith("1.35."), frontend["version"]
    else:
        assert frontend["version"] == fe["name"], frontend["version"]


def test_the_pack_put_the_example_inputs_into_the_input_folder(server):
    """Load Image / Load Audio / Load Video of the TI2V / A2V / Extend workflows name them; ComfyUI lists them (no
    "Missing Inputs")."""
    image, audio, clip = "magihuman_example_portrait.png", "magihuman_example_speech.wav", "magihuman_example_clip.mp4"
    for name in (image, audio, clip):
        assert (server.base / "input" / name).read_bytes() == (EXAMPLE_INPUTS / name).read_bytes(), name
    for node, widget, name in (("LoadImage", "image", image), ("LoadAudio", "audio", audio),
                               ("LoadVideo", "file", clip)):
        spec = server.request(f"/object_info/{node}")[1][node]["input"]["required"][widget]
        options = spec[1]["options"] if spec[0] == "COMBO" else spec[0]  # V3 nodes: ["COMBO", {"options": [...]}]
        assert name in options, (node, options)
    assert "copied the template example inputs" in server.log()


def test_template_browser_lists_only_the_templates_with_thumbnails(server, frontend):
    code, listing = server.request("/api/workflow_templates")
    assert code == 200 and list(listing) == ["ComfyUI-MagiHuman"], listing  # no API twins, no tiny graphs
    assert sorted(listing["ComfyUI-MagiHuman"]) == sorted(p.stem for p in TEMPLATES)
    for p in TEMPLATES:
        status, ctype, body = server.get_bytes(f"/api/workflow_templates/ComfyUI-MagiHuman/{p.stem}.jpg")
        assert status == 200 and ctype == "image/jpeg" and body[:3] == b"\xff\xd8\xff", p.stem
    shown = {t["alt"]: t for t in frontend["thumbnails"]}
    assert set(shown) == {p.stem for p in TEMPLATES} and all(t["loaded"] for t in shown.values()), shown
    assert [t for t in frontend["browser"]["toasts"] if "issue" in t.lower() or "missing" in t.lower()] == []


def test_opening_a_template_from_the_browser_shows_no_alert_at_a_readable_zoom(frontend):
    fb = frontend["fromBrowser"]
    assert fb["toasts"] == [] and fb["dialogs"] == [] and fb["alerts"] == [], fb
    assert {n["type"] for n in fb["root"]["nodes"]} >= {"SaveVideo", "MarkdownNote"}
    view = fb["root"]
    assert view["ds"]["scale"] >= READABLE_SCALE, f"opens at {view['ds']['scale']:.2f} zoom (nodes not drawn)"
    assert [n["title"] for n in view["nodes"] if not _on_screen(view, n["rect"])] == []


def test_node_help_panel_shows_the_pack_docs(frontend):
    """The info button of a selected node opens the help panel with web/docs/<NodeId>.md."""
    doc = (ROOT / "web" / "docs" / "MagiHumanTextEncode.md").read_text()
    help_ = frontend["help"]
    assert help_["infoButton"] == 1, help_
    connect = doc.split("## Connect", 1)[1].strip().splitlines()[0].replace("`", "")
    assert "Connect" in help_["text"] and connect in help_["text"], "the help panel does not show web/docs"


# what the newest frontend's page logs on its own, with or without a workflow: the server has no core templates
# package, no jobs API, no network (console errors, not about the workflow)
BENIGN_CONSOLE = ("cleanup event listeners", "Error loading core workflow templates", "Jobs API",
                  "net::ERR_NAME_NOT_RESOLVED")


@pytest.mark.parametrize("path", UI, ids=lambda p: p.stem)
def test_loads_in_the_frontend_with_no_alert(frontend, path):
    """No alert, toast, dialog or notice ("Missing Inputs", "N issues found"), inside the subgraph neither; no
    console error, no failed request (the example image and speech clip the workflow names are there)."""
    r = frontend["workflows"][path.stem]
    assert not r.get("loadError") and not r.get("promptError"), r
    assert r["alerts"] == [] and r["toasts"] == [] and r["dialogs"] == [], {k: r[k] for k in ("alerts", "toasts", "dialogs")}
    assert r["inside"]["toasts"] == [] and r["inside"]["dialogs"] == []
    errors = [c for c in r["console"] if not any(b in c for b in BENIGN_CONSOLE)]
    failed = [c for c in errors if c.startswith("http ") or "Failed to load resource" in c]
    assert errors == [], errors if not failed else (errors, [c for c in frontend["console"] if c.startswith("http ")])


@pytest.fixture(scope="module")
def object_info(server):
    return server.request("/object_info", timeout=120)[1]


@pytest.mark.parametrize("path", UI, ids=lambda p: p.stem)
def test_frontend_prompt_is_the_api_twin(object_info, frontend, path):
    """Same nodes, ids and values on every input the backend declares (the frontend also sends UI-only
    widgets such as Load Audio's "audioUI", which the backend ignores)."""
    twin = json.loads((API_DIR / f"{path.stem}_api.json").read_text())
    made = frontend["workflows"][path.stem]["prompt"]
    info = object_info
    assert set(made) == set(twin)
    for nid, entry in twin.items():
        assert made[nid]["class_type"] == entry["class_type"]
        declared = {k for group in info[entry["class_type"]]["input"].values() for k in group}
        assert {k: v for k, v in made[nid]["inputs"].items() if k in declared} == entry["inputs"], nid


def _overlap(a, b, slack=2.0) -> bool:
    return (a[0] + slack < b[0] + b[2] and b[0] + slack < a[0] + a[2] and a[1] + slack < b[1] + b[3]
            and b[1] + slack < a[1] + a[3])


def _on_screen(view: dict, rect) -> bool:
    s, (ox, oy), (w, h) = view["ds"]["scale"], view["ds"]["offset"], view["canvas"]
    x0, y0 = (rect[0] + ox) * s, (rect[1] + oy) * s
    return x0 >= 0 and y0 >= 0 and x0 + rect[2] * s <= w and y0 + rect[3] * s <= h


@pytest.mark.parametrize("path", UI, ids=lambda p: p.stem)
def test_layout_as_the_frontend_draws_it(frontend, path):
    """At the zoom the frontend opens the workflow at (the live canvas's ds.scale), the nodes are drawn (>= 0.6),
    all on screen, none overlapping; inside the subgraph too, its groups left to right."""
    r = frontend["workflows"][path.stem]
    for where in ("root", "inside"):
        view = r[where]
        assert view["canvas"] == list(VIEWPORT), view["canvas"]
        zoom = view["ds"]["scale"]
        assert zoom >= READABLE_SCALE, f"{where}: opens at {zoom:.2f} zoom (nodes not drawn)"
        rects = [n["rect"] for n in view["nodes"]]
        bad = [(a["title"], b["title"]) for i, a in enumerate(view["nodes"]) for b in view["nodes"][i + 1:]
               if _overlap(a["rect"], b["rect"])]
        assert bad == [], f"{where}: overlapping nodes {bad}"
        off = [n["title"] for n, rect in zip(view["nodes"], rects) if not _on_screen(view, rect)]
        assert off == [], f"{where}: off screen on load: {off}"
    inside = r["inside"]
    titles = [g["title"] for g in sorted(inside["groups"], key=lambda g: g["rect"][0])]
    assert titles == [t for t in GROUP_ORDER if t in titles] and {"Models", "Prompt", "Sampling", "Decode"} <= set(titles)
    groups = sorted(inside["groups"], key=lambda g: g["rect"][0])
    assert all(a["rect"][0] + a["rect"][2] <= b["rect"][0] for a, b in zip(groups, groups[1:])), "groups overlap"
    for n in inside["nodes"]:
        x, y, w, h = n["rect"]
        homes = [g["title"] for g in groups if g["rect"][0] <= x and x + w <= g["rect"][0] + g["rect"][2]
                 and g["rect"][1] <= y and y + h <= g["rect"][1] + g["rect"][3]]
        assert len(homes) == 1, f"{n['title']} is not inside exactly one group: {homes}"


def test_zoom_report(fe, frontend, shots):
    """Writes the zoom every workflow opened at (top graph / subgraph) to zoom.txt beside the screenshots."""
    lines = [f"{name}: {r['root']['ds']['scale']:.3f} / {r['inside']['ds']['scale']:.3f}"
             for name, r in frontend["workflows"].items()]
    lines.append(f"opened from the browser: {frontend['fromBrowser']['root']['ds']['scale']:.3f}")
    lines.append(f"seconds: {frontend['seconds']}")
    (shots / "zoom.txt").write_text(f"frontend {frontend['version']} ({fe['name']}), {VIEWPORT[0]}x{VIEWPORT[1]}\n"
                                    + "\n".join(lines) + "\n")
    assert min(r["root"]["ds"]["scale"] for r in frontend["workflows"].values()) >= READABLE_SCALE


@pytest.mark.parametrize("path", TINY, ids=lambda p: p.stem)
def test_tiny_workflow_runs_in_the_real_server(fe, server, frontend_run, path, shots):
    """Queues the prompt the real frontend made of the UI workflow (what the Run button sends; it equals the API
    twin, see above), or the API twin when no headless frontend is set up; Load Image / Load Audio / Load Video read
    the example files the pack put into input/. The long-video ones: a whole speech, a clip extended."""
    import math
    import wave

    from magihuman import media
    from tests.test_workflows import expected_frames

    if fe["root"] is not None:
        pytest.skip("run once, with the bundled frontend: the newest one makes the same prompt (checked above)")
    ui = json.loads(path.read_text())
    if frontend_run is not None:
        prompt = frontend_run["workflows"][path.stem]["prompt"]
    else:
        prompt = json.loads((API_DIR / f"{path.stem}_api.json").read_text())
    run = server.queue(prompt, workflow=ui, timeout=600)
    assert run["status"] == "success", run["error"]
    mp4 = [f for f in run["outputs"] if str(f).endswith(".mp4")]
    assert len(mp4) == 1
    info = media.read_mp4_info(mp4[0])
    assert info["video_codec"] == "h264" and info["audio_codec"] == "aac"
    with wave.open(str(EXAMPLE_INPUTS / "magihuman_example_speech.wav")) as w:
        speech_seconds = w.getnframes() / w.getframerate()
    clip_frames = media.read_mp4_info(EXAMPLE_INPUTS / "magihuman_example_clip.mp4")["frames"]
    assert info["frames"] == expected_frames(prompt, speech_seconds, clip_frames)
    if {e["class_type"] for e in prompt.values()} & {"MagiHumanLongVideo", "MagiHumanExtend"}:
        assert math.isclose(info["audio_duration"], info["frames"] / 25, abs_tol=0.05)
    with (shots / "run_times.txt").open("a") as f:
        f.write(f"{path.stem}: {run['seconds']} s\n")


def test_node_help_is_served_for_every_node(fe, server, object_info):
    if fe["root"] is not None:
        pytest.skip("served by the server, not the frontend: checked once, with the bundled frontend")
    info = object_info
    mine = [k for k, v in info.items() if v.get("python_module") == "custom_nodes.ComfyUI-MagiHuman"]
    assert mine
    for node_id in mine:
        status, ctype, body = server.get_bytes(f"/extensions/ComfyUI-MagiHuman/docs/{node_id}.md")
        assert status == 200 and "text/html" not in ctype and body.startswith(b"# "), node_id
        assert info[node_id]["description"], f"{node_id} has no description"
