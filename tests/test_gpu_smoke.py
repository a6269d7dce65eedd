"""benchmarks/gpu_smoke.py runs on a machine without CUDA: what can run on the CPU passes, every other check is
named as skipped with its reason, and the exit code is 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine the smoke test is the real thing")
def test_gpu_smoke_runs_on_the_cpu_naming_what_it_skips():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_smoke.py"), "--skip-comfyui"],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    status = {line.split()[1].rstrip(":"): line.split()[0] for line in lines if line[:4] in ("OK  ", "SKIP", "FAIL")}
    assert status == {"versions": "OK", "fp8_linear_and_share": "OK", "attention_kernels": "OK",
                      "tiny_dit_storages": "SKIP", "copies_and_syncs": "SKIP", "block_offload": "OK",
                      "recompiles": "SKIP", "comfyui_partial_load": "SKIP"}, r.stdout
    assert all(": " in line and len(line.split(": ", 1)[1]) > 5 for line in lines if line.startswith("SKIP"))
    assert "16/16 block-linear products in fp8" in r.stdout  # every kind of the hidden-1280 DiT
    assert lines[-1].startswith("4 passed, 4 skipped, 0 failed")
