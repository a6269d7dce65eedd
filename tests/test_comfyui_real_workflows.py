"""Every workflow in a real ComfyUI 0.8.0 with its real frontend (1.35.9), as an artist meets it.

One server for the module (tiny models, CPU). The template browser must list exactly the templates, each with
its thumbnail; every UI workflow (templates and tiny ones) is loaded in headless Chromium: no alert, toast or
dialog may appear, the top graph and the opened subgraph must be on screen, readable and free of overlaps, and
the prompt the frontend makes must equal the API twin; the tiny workflows then run to an MP4. Screenshots and
a JSON report go to $MAGIHUMAN_SCREENSHOTS (default: a pytest temp dir). $MAGIHUMAN_FRONTEND_ROOT runs the
same checks with another frontend build (the ``static`` folder of a comfyui-frontend-package wheel). Skips,
saying why, without a harness ComfyUI (or without its headless-frontend setup for the frontend part)."""

from __future__ import annotations

import json
import os
import struct
import wave
from pathlib import Path

import pytest

from tests.comfyui_harness import comfyui_server, frontend_available, requires_comfyui

pytestmark = requires_comfyui

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = sorted((ROOT / "example_workflows").glob("*.json"))
TINY = sorted((ROOT / "workflows" / "tiny").glob("*.json"))
UI = TEMPLATES + TINY
API_DIR = ROOT / "workflows" / "api"
GROUP_ORDER = ["Models", "Prompt", "Sampling", "Super-resolution", "Decode"]
VIEWPORT = (1920, 1080)   # a common desktop window
READABLE_SCALE = 0.58     # below 8/14 the frontend draws nodes without text (LiteGraph.Canvas.MinFontSizeForLOD 8)

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
  return page.evaluate(() => {
    const vis = (e) => !!(e.offsetWidth || e.offsetHeight || e.getClientRects().length);
    const text = (e) => (e.innerText || '').replace(/\s+/g, ' ').trim().slice(0, 300);
    return { toasts: [...document.querySelectorAll('.p-toast-message')].filter(vis).map(text),
             dialogs: [...document.querySelectorAll('.p-dialog')].filter(vis).map(text) };
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
(async () => {
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
           '--disable-background-networking', '--disable-component-update', '--disable-sync'] });
  const out = { workflows: {}, console: [], templateFiles: [] };
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
    // a fresh user: the frontend opens the template browser by itself; wait for our thumbnails in it
    await page.waitForFunction((n) => {
      const imgs = [...document.querySelectorAll('.p-dialog img')];
      return imgs.length >= n && imgs.every((i) => i.complete);
    }, job.templates, { timeout: 60000 }).catch(() => {});
    await sleep(1000);
    await page.screenshot({ path: path.join(job.shots, '00_template_browser.png') });
    out.browser = await seen(page);
    out.templateList = await page.evaluate(async () => (await fetch('/api/workflow_templates')).json());
    out.thumbnails = await page.evaluate(() => [...document.querySelectorAll('.p-dialog img')]
      .map((i) => ({ alt: i.alt, loaded: i.complete && i.naturalWidth > 0, w: i.naturalWidth, h: i.naturalHeight })));
    alerts.length = 0;
    await page.getByText(job.openFromBrowser, { exact: true }).first().click();  // open one from the browser
    await sleep(3000);
    out.fromBrowser = Object.assign(await seen(page), { alerts: [...alerts], root: await layout(page) });
    await page.screenshot({ path: path.join(job.shots, '01_opened_from_browser.png') });
    for (const wf of job.workflows) {
      const data = JSON.parse(fs.readFileSync(wf.file, 'utf8'));
      alerts.length = 0;
      const n0 = out.console.length;
      const r = {};
      try {
        await page.evaluate(async ([d, name]) => { await window.app.loadGraphData(d, true, true, name); }, [data, wf.name]);
      } catch (e) { r.loadError = String(e); }
      await sleep(1200);
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
        await sleep(1000);
        r.inside = Object.assign(await layout(page), await seen(page));
        await page.screenshot({ path: path.join(job.shots, `${wf.name}__subgraph.png`) });
        await page.evaluate(() => window.app.canvas.setGraph(window.app.graph));
      }
      r.console = out.console.slice(n0);
      out.workflows[wf.name] = r;
    }
    // last (its side panel stays open): the node help of Text Encode, from the info button of the selection
    // toolbox, in the template opened from the browser
    const first = job.workflows.find((w) => w.name === job.openFromBrowser);
    await page.evaluate(async ([d, name]) => { await window.app.loadGraphData(d, true, true, name); },
      [JSON.parse(fs.readFileSync(first.file, 'utf8')), first.name]);
    await sleep(1000);
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
  fs.writeFileSync(outFile, JSON.stringify(out, null, 1));
})().catch((e) => { console.error(String((e && e.stack) || e)); process.exit(1); });
"""


def _write_inputs(folder: Path) -> list[Path]:
    """example.png (the TI2V first frame) and speech.wav (the A2V reference) that the workflows name."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    png = folder / "example.png"
    Image.new("RGB", (96, 64), (180, 120, 90)).save(png)
    wav = folder / "speech.wav"
    rate, n = 16000, 40000  # 2.5 s
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"".join(struct.pack("<h", int(8000 * ((i * 7919) % 200 - 100) / 100)) for i in range(n)))
    return [png, wav]


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("MAGIHUMAN_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from magihuman.tiny import write_tiny_models

    models = tmp_path_factory.mktemp("models")
    write_tiny_models(models)
    # the one single-file model a template offers for download (properties.models) is "installed", so the
    # frontend's missing-model dialog stays closed as it does for an artist who has the models
    (models / "vae" / "wan2.2_vae.safetensors").write_bytes(b"")
    other = os.environ.get("MAGIHUMAN_FRONTEND_ROOT")
    with comfyui_server(models, inputs=_write_inputs(tmp_path_factory.mktemp("inputs")),
                        server_args=["--front-end-root", other] if other else []) as srv:
        yield srv


@pytest.fixture(scope="module")
def frontend_run(server, shots):
    """The frontend report, or None when no headless frontend is set up."""
    if not frontend_available()[0]:
        return None
    job = {"shots": str(shots), "viewport": list(VIEWPORT), "openFromBrowser": "magihuman_t2v_distill_256p",
           "helpNode": "MagiHumanTextEncode", "templates": len(TEMPLATES),
           "workflows": [{"name": p.stem, "file": str(p)} for p in UI]}
    out = server.frontend(FRONTEND_JS, job)
    (shots / "frontend_report.json").write_text(json.dumps(out, indent=1))
    return out


@pytest.fixture(scope="module")
def frontend(frontend_run):
    if frontend_run is None:
        pytest.skip(frontend_available()[1])
    return frontend_run


def test_template_browser_lists_only_the_templates_with_thumbnails(server, frontend):
    code, listing = server.request("/api/workflow_templates")
    assert code == 200 and list(listing) == ["ComfyUI-MagiHuman"], listing  # no API twins, no tiny graphs
    assert sorted(listing["ComfyUI-MagiHuman"]) == sorted(p.stem for p in TEMPLATES)
    for p in TEMPLATES:
        status, ctype, body = server.get_bytes(f"/api/workflow_templates/ComfyUI-MagiHuman/{p.stem}.jpg")
        assert status == 200 and ctype == "image/jpeg" and body[:3] == b"\xff\xd8\xff", p.stem
    shown = {t["alt"]: t for t in frontend["thumbnails"]}
    assert set(shown) == {p.stem for p in TEMPLATES} and all(t["loaded"] for t in shown.values()), shown
    assert frontend["browser"]["toasts"] == []


def test_opening_a_template_from_the_browser_shows_no_alert(frontend):
    fb = frontend["fromBrowser"]
    assert fb["toasts"] == [] and fb["dialogs"] == [] and fb["alerts"] == [], fb
    assert {n["type"] for n in fb["root"]["nodes"]} >= {"SaveVideo", "MarkdownNote"}


def test_node_help_panel_shows_the_pack_docs(frontend):
    """The info button of a selected node opens the help panel with web/docs/<NodeId>.md."""
    doc = (ROOT / "web" / "docs" / "MagiHumanTextEncode.md").read_text()
    help_ = frontend["help"]
    assert help_["infoButton"] == 1, help_
    connect = doc.split("## Connect", 1)[1].strip().splitlines()[0].replace("`", "")
    assert "Connect" in help_["text"] and connect in help_["text"], "the help panel does not show web/docs"


@pytest.mark.parametrize("path", UI, ids=lambda p: p.stem)
def test_loads_in_the_frontend_with_no_alert(frontend, path):
    r = frontend["workflows"][path.stem]
    assert not r.get("loadError") and not r.get("promptError"), r
    assert r["alerts"] == [] and r["toasts"] == [] and r["dialogs"] == [], {k: r[k] for k in ("alerts", "toasts", "dialogs")}
    assert r["inside"]["toasts"] == [] and r["inside"]["dialogs"] == []
    errors = [c for c in r["console"] if "api/view" not in c and "404 (Not Found)" not in c
              and "cleanup event listeners" not in c]
    assert errors == [], errors  # (a missing example.png / speech.wav preview is the artist's file to pick)


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
    r = frontend["workflows"][path.stem]
    for where in ("root", "inside"):
        view = r[where]
        assert view["ds"]["scale"] >= READABLE_SCALE, f"{where}: opens at {view['ds']['scale']:.2f} zoom (unreadable)"
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


@pytest.mark.parametrize("path", TINY, ids=lambda p: p.stem)
def test_tiny_workflow_runs_in_the_real_server(server, frontend_run, path, shots):
    """Queues the prompt the real frontend made of the UI workflow (what the Run button sends; it equals the API
    twin, see above), or the API twin when no headless frontend is set up."""
    from magihuman import media

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
    seconds = next(e for e in prompt.values() if e["class_type"] == "MagiHumanEmptyAVLatent")["inputs"]["seconds"]
    assert info["frames"] == 4 * ((round(seconds * 25)) // 4) + 1
    with (shots / "run_times.txt").open("a") as f:
        f.write(f"{path.stem}: {run['seconds']} s\n")


def test_node_help_is_served_for_every_node(server, object_info):
    info = object_info
    mine = [k for k, v in info.items() if v.get("python_module") == "custom_nodes.ComfyUI-MagiHuman"]
    assert mine
    for node_id in mine:
        status, ctype, body = server.get_bytes(f"/extensions/ComfyUI-MagiHuman/docs/{node_id}.md")
        assert status == 200 and "text/html" not in ctype and body.startswith(b"# "), node_id
        assert info[node_id]["description"], f"{node_id} has no description"
