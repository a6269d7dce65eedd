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
