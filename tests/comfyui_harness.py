"""Run workflows through a real ComfyUI server (the shared comfyui-harness), for the real-server tests.

The tests that use it skip, saying why, when no harness ComfyUI is set up (``.ci/run`` sets one up:
``../shared/tools/comfyui-harness/setup.sh``). Each call starts a fresh server (~8 s) with only this
pack in ``custom_nodes/`` and the given models folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HARNESS = Path(os.environ.get("MAGIHUMAN_HARNESS",
                              ROOT.parent / "shared" / "tools" / "comfyui-harness" / "run_workflow.py"))
COMFYUI_DIR = Path(os.environ.get("COMFYUI_DIR", "/tmp/comfyui-real"))
PYTHON = COMFYUI_DIR / "venv" / "bin" / "python"
PACK_NAME = "ComfyUI-MagiHuman"


def available() -> tuple[bool, str]:
    if not HARNESS.is_file():
        return False, f"no ComfyUI harness at {HARNESS} (set MAGIHUMAN_HARNESS)"
    if not PYTHON.is_file() or not (COMFYUI_DIR / "ComfyUI" / "main.py").is_file():
        return False, f"no harness ComfyUI in {COMFYUI_DIR} (run ../shared/tools/comfyui-harness/setup.sh)"
    return True, ""


def frontend_available() -> tuple[bool, str]:
    ok, why = available()
    if not ok:
        return ok, why
    if not (COMFYUI_DIR / "frontend-check").exists():
        return False, "no headless-frontend setup (COMFYUI_FRONTEND_CHECK=1 setup.sh)"
    return True, ""


requires_comfyui = pytest.mark.skipif(not available()[0], reason=available()[1])
requires_frontend = pytest.mark.skipif(not frontend_available()[0], reason=frontend_available()[1])


def run_workflow(workflow: Path | str | None, models: Path | str | None = None, *, inputs=(), frontend: bool = False,
                 timeout: float = 600, extra=(), pack: Path = ROOT) -> dict:
    """Run ``workflow`` (UI or API JSON; None: only load the pack) in a fresh real server.

    Returns the harness's JSON report plus ``"returncode"``, ``"stdout"`` (its printed lines) and ``"log"``
    (the server log)."""
    with tempfile.TemporaryDirectory(prefix="magihuman-harness-") as tmp:
        report = Path(tmp) / "report.json"
        cmd = [str(PYTHON), str(HARNESS), str(pack), "--name", PACK_NAME, "--json", str(report),
               "--timeout", str(timeout)]
        if workflow is not None:
            cmd += ["-w", str(workflow)]
        if models is not None:
            cmd += ["--models", str(models)]
        for item in inputs:
            cmd += ["--input", str(item)]
        if frontend:
            cmd.append("--frontend-check")
        cmd += list(extra)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 400)
        data = json.loads(report.read_text()) if report.is_file() else {}
    data.update(returncode=proc.returncode, stdout=proc.stdout + proc.stderr)
    log = next((line.split(":", 1)[1].strip() for line in proc.stdout.splitlines()
                if line.startswith("server log:")), None)
    data["log"] = Path(log).read_text(errors="replace") if log and Path(log).is_file() else ""
    return data


def explain(result: dict) -> str:
    """What to print when a real-server run did not go as expected."""
    return result["stdout"][-4000:] + "\n--- server log tail ---\n" + result.get("log", "")[-4000:]
