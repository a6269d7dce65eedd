"""GGUF models in a real ComfyUI 0.8.0 with its real frontend (1.35.9).

A .gguf DiT in models/unet (where ComfyUI-GGUF users keep them) is listed by the DiT loaders and runs a tiny
workflow. web/js/magihuman_gguf.js (reading web/storage.json, written from the storage registry): picking a .gguf
model from a loader's list in the canvas (a click on the widget, a click on the menu entry) sets weight_dtype to
"file", picking another file sets it back to "auto"; loading a saved workflow keeps its values, but an older
workflow's "gguf (file)" becomes "file"; no console errors. Skips, saying why, without a harness
ComfyUI (or without its headless-frontend setup for the frontend part)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.comfyui_harness import comfyui_server, frontend_available, requires_comfyui

pytestmark = requires_comfyui

ROOT = Path(__file__).resolve().parents[1]
UNET_GGUF = "magihuman_tiny_distill_unet_Q8_0.gguf"  # in models/unet
DIT_GGUF = "magihuman_tiny_distill_Q8_0.gguf"  # in models/diffusion_models
TE_GGUF = "t5gemma_tiny_Q8_0.gguf"
GGUF_FILE = "file"
OLDER_NAME = "gguf (file)"  # what workflows saved by earlier versions hold
# per loader, what the artist picks in turn (widget, value) and the weight_dtype it must then show: a .gguf file ->
# "file", another file -> back to "auto", but a dtype the artist chose stays
PICKS = {
    "MagiHumanDiTLoader": [("model_name", UNET_GGUF, GGUF_FILE), ("model_name", "magihuman_tiny_distill/", "auto"),
                           ("weight_dtype", "fp32", "fp32"), ("model_name", "magihuman_tiny_base.safetensors", "fp32"),
                           ("model_name", DIT_GGUF, GGUF_FILE), ("model_name", "magihuman_tiny_base.safetensors", "auto")],
    "MagiHumanSRDiTLoader": [("model_name", DIT_GGUF, GGUF_FILE), ("model_name", "magihuman_tiny_540p_sr/", "auto")],
    "MagiHumanTextEncoderLoader": [("text_encoder", TE_GGUF, GGUF_FILE), ("text_encoder", "t5gemma_tiny/", "auto")],
}

# Drives the real frontend as an artist does: adds the loaders, clicks their model widget and the entry of the menu
# that opens; then loads a saved workflow. Reports the widget values after each step and every console error.
FRONTEND_JS = r"""
const { chromium } = require('playwright-core');
const fs = require('fs');
const path = require('path');
const [jobFile, outFile] = process.argv.slice(2);
const job = JSON.parse(fs.readFileSync(jobFile, 'utf8'));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const values = (page, id) => page.evaluate((id) => {
  const n = window.app.graph.getNodeById(id);
  return Object.fromEntries(n.widgets.map((w) => [w.name, w.value]));
}, id);

async function pick(page, id, name, value) {  // a click on the combo widget, then on the menu entry
  const at = await page.evaluate(([id, name]) => {
    const c = window.app.canvas, n = window.app.graph.getNodeById(id), w = n.widgets.find((x) => x.name === name);
    const r = c.canvas.getBoundingClientRect(), s = c.ds.scale, o = c.ds.offset;
    const h = w.computedHeight || window.LiteGraph.NODE_WIDGET_HEIGHT;
    return [r.left + (n.pos[0] + n.size[0] / 2 + o[0]) * s, r.top + (n.pos[1] + w.y + h / 2 + o[1]) * s];
  }, [id, name]);
  await page.mouse.click(at[0], at[1]);
  await page.locator('.litecontextmenu').getByText(value, { exact: true }).first().click({ timeout: 10000 });
  await sleep(300);
}

(async () => {
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
           '--disable-background-networking', '--disable-component-update', '--disable-sync'] });
  const out = { console: [], httpErrors: [], scripts: [], picks: {}, loaded: {} };
  try {
    const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
    page.on('console', (m) => { if (m.type() === 'error') out.console.push(m.text().slice(0, 500)); });
    page.on('pageerror', (e) => out.console.push(`pageerror: ${String(e)}`.slice(0, 500)));
    page.on('response', (r) => {
      if (r.status() >= 400) out.httpErrors.push(`http ${r.status()}: ${r.url()}`);
      if (r.url().includes('/extensions/ComfyUI-MagiHuman/')) out.scripts.push({ url: r.url(), status: r.status() });
    });
    page.on('requestfailed', (r) => out.httpErrors.push(`failed: ${r.url()}`));
    // not a first visit: the frontend does not open its template browser over the canvas
    await fetch(job.url + '/api/settings/Comfy.TutorialCompleted', { method: 'POST', body: 'true' });
    await page.goto(job.url);
    await page.waitForFunction(() => window.app && window.app.graph && window.LiteGraph &&
      Object.keys(window.LiteGraph.registered_node_types).length > 10, null, { timeout: 120000 });
    await sleep(2000);
    out.extension = await page.evaluate(() => window.app.extensions.some((e) => e.name === 'MagiHuman.StorageWeightDtype'));
    const ids = await page.evaluate((types) => {
      window.app.graph.clear();
      const c = window.app.canvas;
      c.ds.scale = 1; c.ds.offset = [0, 0];
      return types.map((t, i) => {
        const n = window.LiteGraph.createNode(t);
        n.pos = [200 + 450 * i, 200];  // clear of the side bar and the top menu
        window.app.graph.add(n);
        return n.id;
      });
    }, job.types);
    await page.evaluate(() => window.app.canvas.setDirty(true, true));
    await sleep(800);
    for (const [i, type] of job.types.entries()) {
      const steps = [{ values: await values(page, ids[i]) }];
      for (const [name, value] of job.picks[type]) {
        await pick(page, ids[i], name, value);
        steps.push({ widget: name, picked: value, values: await values(page, ids[i]) });
      }
      out.picks[type] = steps;
    }
    await page.evaluate(() => window.app.canvas.setDirty(true, true));  // redraw (no mouse move since the menu)
    await sleep(300);
    await page.screenshot({ path: path.join(job.shots, 'gguf_widget_picks.png') });
    // a saved workflow: a .gguf with fp32 (dequantise, on purpose) stays as saved; an older workflow's "gguf (file)"
    // becomes "file"
    const saved = await page.evaluate(([a, b, gguf]) => {
      const set = (id, model, dtype) => {
        const n = window.app.graph.getNodeById(id);
        n.widgets.find((w) => w.name === 'model_name').value = model;
        n.widgets.find((w) => w.name === 'weight_dtype').value = dtype;
      };
      set(a[0], a[1], 'fp32');
      set(b[0], b[1], gguf);
      return window.app.graph.serialize();
    }, [[ids[0], job.ggufName], [ids[1], 'magihuman_tiny_540p_sr/'], job.ggufFile]);
    await page.evaluate(async (d) => { await window.app.loadGraphData(d, true, true, 'saved_gguf'); }, saved);
    await sleep(1000);
    out.loaded = { dit: await values(page, ids[0]), sr: await values(page, ids[1]) };
    await page.screenshot({ path: path.join(job.shots, 'gguf_widget_saved_workflow.png') });
    await pick(page, ids[1], 'model_name', 'magihuman_tiny_1080p_sr/');  // the loaded nodes follow picks too
    out.afterLoadPick = await values(page, ids[1]);
  } finally {
    await browser.close();
  }
  fs.writeFileSync(outFile, JSON.stringify(out, null, 1));
})().catch((e) => { console.error(String((e && e.stack) || e)); process.exit(1); });
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    from magihuman.tiny import tiny_gguf_files, write_tiny_gguf

    folder = tmp_path_factory.mktemp("models")
    write_tiny_gguf(folder, quants=("Q8_0",))
    (folder / "unet").mkdir()
    shutil.copy2(folder / tiny_gguf_files("Q8_0")["distill"], folder / "unet" / UNET_GGUF)
    return folder


@pytest.fixture(scope="module")
def server(models):
    with comfyui_server(models) as srv:
        yield srv


def _options(info: dict, node_id: str, input_id: str) -> list:
    spec = info[node_id]["input"]["required"][input_id]
    return spec[0] if isinstance(spec[0], list) else spec[1]["options"]


def test_gguf_in_models_unet_is_listed_and_runs(server):
    """ComfyUI reads models/unet for diffusion_models: the loaders list the file and a tiny workflow runs on it."""
    code, info = server.request("/object_info", timeout=120)
    assert code == 200
    for node_id in ("MagiHumanDiTLoader", "MagiHumanSRDiTLoader"):
        assert UNET_GGUF in _options(info, node_id, "model_name"), node_id
    assert GGUF_FILE in _options(info, "MagiHumanDiTLoader", "weight_dtype")
    prompt = json.loads((ROOT / "workflows" / "api" / "magihuman_tiny_t2v_api.json").read_text())
    dit = next(e for e in prompt.values() if e["class_type"] == "MagiHumanDiTLoader")
    dit["inputs"].update(model_name=UNET_GGUF, weight_dtype=GGUF_FILE)
    run = server.queue(prompt, timeout=600)
    assert run["status"] == "success", run["error"]
    assert any(str(f).endswith(".mp4") for f in run["outputs"])


def test_api_prompts_with_the_older_name_still_validate(server):
    """An API prompt saved before the rename holds "gguf (file)" (no frontend renames it): ComfyUI's validation
    takes it through the loader's validate_inputs, the loader keeps the file's blocks; an unknown value is refused
    naming what is allowed."""
    prompt = json.loads((ROOT / "workflows" / "api" / "magihuman_tiny_t2v_api.json").read_text())
    dit = next(e for e in prompt.values() if e["class_type"] == "MagiHumanDiTLoader")
    dit["inputs"].update(model_name=UNET_GGUF, weight_dtype=OLDER_NAME)
    run = server.queue(prompt, timeout=600)
    assert run["status"] == "success", run["error"]
    dit["inputs"]["weight_dtype"] = "q3_k"
    run = server.queue(prompt, timeout=120)
    assert run["status"] == "invalid" and "weight_dtype must be one of auto, file, bf16," in run["error"] and "got 'q3_k'" in run["error"], run


@pytest.fixture(scope="module")
def frontend(server, tmp_path_factory):
    if not frontend_available()[0]:
        pytest.skip(frontend_available()[1])
    shots = Path(os.environ.get("MAGIHUMAN_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    job = {"shots": str(shots), "types": list(PICKS), "picks": PICKS, "ggufName": UNET_GGUF, "ggufFile": OLDER_NAME}
    out = server.frontend(FRONTEND_JS, job)
    (shots / "gguf_widget_report.json").write_text(json.dumps(out, indent=1))
    return out


def test_the_extension_is_served_and_registered(frontend):
    assert frontend["extension"] is True
    served = [x["status"] for x in frontend["scripts"] if x["url"].endswith("/js/magihuman_gguf.js")]
    assert served and set(served) == {200}, frontend["scripts"]
    settings = [x["status"] for x in frontend["scripts"] if x["url"].endswith("/storage.json")]
    assert settings and set(settings) == {200}, frontend["scripts"]


@pytest.mark.parametrize("node_type", list(PICKS))
def test_picking_a_gguf_sets_weight_dtype_and_another_file_resets_it(frontend, node_type):
    steps = frontend["picks"][node_type]
    assert steps[0]["values"]["weight_dtype"] == "auto"  # a new node: the schema default
    assert len(steps) == len(PICKS[node_type]) + 1
    for step, (widget, value, want) in zip(steps[1:], PICKS[node_type]):
        assert step["values"][widget] == value, step  # the click picked it
        assert step["values"]["weight_dtype"] == want, step


def test_loading_a_saved_workflow_keeps_its_values_and_renames_older_ones(frontend):
    assert frontend["loaded"]["dit"]["model_name"] == UNET_GGUF
    assert frontend["loaded"]["dit"]["weight_dtype"] == "fp32"
    assert frontend["loaded"]["sr"]["model_name"] == "magihuman_tiny_540p_sr/"
    assert frontend["loaded"]["sr"]["weight_dtype"] == GGUF_FILE  # saved as "gguf (file)"
    assert frontend["afterLoadPick"]["weight_dtype"] == "auto"  # then a pick on a loaded node: reset as usual


def test_no_console_errors(frontend):
    """Nothing fails but what a server without internet access or user files always shows (update check, user.css,
    saved-workflow listing: 'Failed to load resource'), and none of those is the pack's."""
    assert not [e for e in frontend["httpErrors"] if "MagiHuman" in e], frontend["httpErrors"]
    errors = [c for c in frontend["console"] if not c.startswith("Failed to load resource")]
    assert errors == [], errors
