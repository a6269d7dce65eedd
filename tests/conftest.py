"""Shared test fixtures.

The repository root is itself a Python package (the ComfyUI node pack). ``pack`` imports it under a
fixed name so ``nodes/`` (which imports the engine relatively, as ComfyUI loads it) can be driven
directly without ComfyUI.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

# Tiny tensors gain nothing from more threads and lose a lot when the CPU is shared; one thread also
# keeps results identical run to run. Override with MAGIHUMAN_TEST_THREADS.
torch.set_num_threads(int(os.environ.get("MAGIHUMAN_TEST_THREADS", "1")))

ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "comfyui_magihuman"


def import_pack():
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(PACK_NAME, ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def pack():
    return import_pack()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """The tiny checkpoints (:mod:`magihuman.tiny`, ComfyUI layout), written once per session. Shared:
    never add or break files in it; copy it (``shutil.copytree``) first."""
    from magihuman.tiny import write_tiny_models

    folder = tmp_path_factory.getbasetemp() / "magihuman_tiny"
    write_tiny_models(folder)
    return folder


# Node inputs that load each tiny model (names as the loaders list them from the tiny models folder).
TINY_NODE_LOADS = {
    "dit": ("MagiHumanDiTLoader", dict(model_name="magihuman_tiny_distill/", weight_dtype="fp32")),
    "base": ("MagiHumanDiTLoader", dict(model_name="magihuman_tiny_base.safetensors", weight_dtype="bf16")),
    "sr": ("MagiHumanSRDiTLoader", dict(model_name="magihuman_tiny_540p_sr/", weight_dtype="fp32")),
    "te": ("MagiHumanTextEncoderLoader", dict(text_encoder="t5gemma_tiny/", weight_dtype="fp32")),
    "turbo": ("MagiHumanTurboVAELoader", dict(vae_name="turbo_vae_tiny/", weight_dtype="fp32")),
    "wan": ("MagiHumanVideoVAELoader", dict(vae_name="wan2.2_vae_tiny.safetensors", weight_dtype="fp32")),
    "audio": ("MagiHumanAudioVAELoader", dict(vae_name="stable_audio_open_tiny/", weight_dtype="fp32")),
}


class NodePack:
    """The pack's node classes, reading models from ``models_dir`` (a ComfyUI models folder), no ComfyUI."""

    def __init__(self, pack, models_dir: Path) -> None:
        self.compat = importlib.import_module(f"{pack.__name__}.nodes.compat")
        self.v3 = importlib.import_module(f"{pack.__name__}.nodes.v3")
        self.compat.set_models_dir(str(models_dir))
        mod = importlib.import_module(f"{pack.__name__}.nodes")
        self.nodes = {c.define_schema().node_id: c for c in mod.NODE_CLASSES}

    def run(self, node_id: str, **inputs):
        """Execute a node as ComfyUI would (schema defaults, combo checks); returns its outputs tuple."""
        return self.v3.run_node(self.nodes[node_id], **inputs).args

    def load_tiny(self, *roles: str) -> dict:
        """role -> loaded model handle, for the roles of :data:`TINY_NODE_LOADS` (default: all)."""
        return {r: self.run(TINY_NODE_LOADS[r][0], **TINY_NODE_LOADS[r][1])[0] for r in roles or TINY_NODE_LOADS}

    def close(self) -> None:
        self.compat.set_models_dir(None)


@pytest.fixture(scope="session")
def node_pack(pack):
    """``node_pack(models_dir)`` -> :class:`NodePack`; ``close()`` it when the module is done."""
    return lambda models_dir: NodePack(pack, models_dir)
