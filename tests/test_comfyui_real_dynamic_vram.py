"""ComfyUI's dynamic VRAM mode (comfy-aimdo, on by default on NVIDIA with torch >= 2.8 in current ComfyUI) builds a
``comfy.ops`` Linear / Embedding without a weight until ComfyUI's own state-dict loader fills it, unless the layer
class brings its own loader. The pack streams files into meta-built layers, so its operations must be built eagerly.

The harness ComfyUI (0.8.0) predates that mode: a probe pack loaded beside this one switches it on the way current
ComfyUI does it (``disable_weight_init.Linear.__init__`` / ``Embedding.__init__`` leave the weight out unless the
class overrides ``_load_from_state_dict``), checks that core layers are now built without weights, and counts what
the pack builds. The tiny T2V workflow must run, with none of the pack's layers built lazily."""

from __future__ import annotations

import re
from pathlib import Path

from tests.comfyui_harness import explain, requires_comfyui, run_workflow_with_packs

pytestmark = requires_comfyui

ROOT = Path(__file__).resolve().parents[1]

PROBE = '''
import logging
import torch
import comfy.ops as ops

D = ops.disable_weight_init


def lazy_unless_own_loader(cls):
    """Current ComfyUI's construction in dynamic VRAM mode: no weight (filled by its state-dict loader later)
    unless the class overrides _load_from_state_dict ("don't trust subclasses that BYO state dict loader")."""
    eager = cls.__init__

    def __init__(self, *args, **kwargs):
        if type(self)._load_from_state_dict is not cls._load_from_state_dict:
            logging.warning("DYNAMIC_VRAM eager %s", type(self).__qualname__)
            return eager(self, *args, **kwargs)
        torch.nn.Module.__init__(self)
        self.weight = None
        self.bias = None
        logging.warning("DYNAMIC_VRAM lazy %s", type(self).__qualname__)

    cls.__init__ = __init__


lazy_unless_own_loader(D.Linear)
lazy_unless_own_loader(D.Embedding)
probe = ops.manual_cast.Linear(4, 4)  # what a core layer now is: no weight
logging.warning("DYNAMIC_VRAM probe weight=%s", probe.weight)
NODE_CLASS_MAPPINGS = {}
'''


def test_the_pack_loads_and_runs_with_dynamic_vram_layers(tmp_path, tiny_dir):
    probe = tmp_path / "aaa_dynamic_vram_probe"  # sorted first: it switches the mode before any model is built
    probe.mkdir()
    (probe / "__init__.py").write_text(PROBE)
    wf = ROOT / "workflows" / "api" / "magihuman_tiny_t2v_api.json"
    r = run_workflow_with_packs(wf, tiny_dir, extra_packs=[probe], inputs=[ROOT / "example_inputs"])
    assert not r["extra_packs"][probe.name]["import_failed"], explain(r)
    log = r["log"]
    assert "DYNAMIC_VRAM probe weight=None" in log, explain(r)  # the mode is on: core layers are lazy
    built = re.findall(r"DYNAMIC_VRAM (eager|lazy) (\S+)", log)
    assert ("eager", "MagiOps.Linear") in built, built  # the pack's layers were built, eagerly
    assert [b for b in built if b[0] == "lazy"] == [("lazy", "manual_cast.Linear")], built  # the probe's own only
    assert r["returncode"] == 0 and r.get("workflow") == "success", explain(r)
