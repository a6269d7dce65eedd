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


def _gpu_smoke():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_smoke", ROOT / "benchmarks" / "gpu_smoke.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_comfyui_check_takes_the_harness_it_is_given(tmp_path, monkeypatch):
    """The workflow runner comes from --harness or $MAGIHUMAN_HARNESS, never from a path outside the checkout;
    without one the check is skipped saying how to give it."""
    smoke = _gpu_smoke()
    monkeypatch.delenv("MAGIHUMAN_HARNESS", raising=False)
    with pytest.raises(smoke.Skip, match=r"give --harness .*run_workflow.py.* \(or set MAGIHUMAN_HARNESS\)"):
        smoke.harness_runner(None)
    runner = tmp_path / "run_workflow.py"
    runner.write_text("")
    assert smoke.harness_runner(str(runner)) == runner
    monkeypatch.setenv("MAGIHUMAN_HARNESS", str(runner))
    assert smoke.harness_runner(None) == runner
    with pytest.raises(smoke.Skip, match="is not a file"):
        smoke.harness_runner(str(tmp_path / "missing.py"))
    assert '"shared"' not in (ROOT / "benchmarks" / "gpu_smoke.py").read_text()


def test_versions_reports_bf16_as_the_engine_decides_it(monkeypatch):
    """bf16_native is magihuman.device.cuda_bf16_native's answer (on ROCm: torch's bf16 support, not the
    capability number), so the report says what the engine will pick."""
    import json

    smoke = _gpu_smoke()
    monkeypatch.setattr(torch.version, "hip", "6.0")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "a ROCm GPU")
    info = json.loads(smoke.versions(torch.device("cuda", 0)))
    assert info["bf16_native"] is True and info["gpu"] == "a ROCm GPU"
