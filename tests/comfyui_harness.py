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
HARNESS_REL = Path("shared") / "tools" / "comfyui-harness" / "run_workflow.py"


def default_harness(root: Path = ROOT) -> Path:
    """The harness beside the checkout (CI: a clean checkout with ../shared beside it) or, for a git worktree kept
    in a subfolder (<dir>/wt/<name>), beside the nearest parent folder that has it; else where CI puts it."""
    for folder in root.parents:
        if (folder / HARNESS_REL).is_file():
            return folder / HARNESS_REL
    return root.parent / HARNESS_REL


HARNESS = Path(os.environ.get("MAGIHUMAN_HARNESS") or default_harness())
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


# The newest ComfyUI frontend the workflows are checked in besides the one ComfyUI 0.8.0 bundles (1.35.9): the
# ``static`` folder of the comfyui-frontend-package wheel, served with ``main.py --front-end-root``. .ci/run
# downloads it and sets $MAGIHUMAN_NEWEST_FRONTEND; without that variable the default cache path is used.
NEWEST_FRONTEND_VERSION = "1.58.1"
NEWEST_FRONTEND_CACHE = Path(os.environ.get("CI_CACHE", "/tmp/magihuman-ci-cache")) / \
    f"comfyui-frontend-package-{NEWEST_FRONTEND_VERSION}" / "static"


def newest_frontend() -> tuple[Path | None, str]:
    """(static folder of comfyui-frontend-package NEWEST_FRONTEND_VERSION, "") or (None, why it is missing). A
    $MAGIHUMAN_NEWEST_FRONTEND that does not hold a frontend build raises: CI asked for it."""
    env = os.environ.get("MAGIHUMAN_NEWEST_FRONTEND")
    root = Path(env) if env else NEWEST_FRONTEND_CACHE
    if (root / "index.html").is_file():
        return root, ""
    if env:
        raise FileNotFoundError(f"$MAGIHUMAN_NEWEST_FRONTEND={env} holds no frontend build (no index.html): "
                                "point it at comfyui_frontend_package/static unpacked from the wheel")
    return None, (f"no comfyui-frontend-package {NEWEST_FRONTEND_VERSION} at {root} (.ci/run downloads it; or "
                  f"pip download --no-deps comfyui-frontend-package=={NEWEST_FRONTEND_VERSION}, unzip, and set "
                  "$MAGIHUMAN_NEWEST_FRONTEND to its comfyui_frontend_package/static)")


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


def run_workflow_with_packs(workflow: Path | str | None, models: Path | str | None = None, *, extra_packs=(),
                            inputs=(), timeout: float = 600, extra=(), pack: Path = ROOT) -> dict:
    """:func:`run_workflow` with other node packs loaded beside this one (e.g. ComfyUI-VideoHelperSuite).

    The harness puts only this pack into ``custom_nodes/``; here the run dir is made first (under
    ``$COMFYUI_DIR/runs``, kept like the harness's own) with a symlink per extra pack in
    ``base/custom_nodes/`` and handed over with ``--run-dir``, so the harness adds this pack next to them.
    The result also has ``"extra_packs"``: ``{folder name: {"import_failed": bool, "error": text}}`` read from
    the server log (the harness reports only on this pack)."""
    runs = COMFYUI_DIR / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="magihuman-packs-", dir=runs))
    nodes_dir = run_dir / "base" / "custom_nodes"
    nodes_dir.mkdir(parents=True)
    names = []
    for p in extra_packs:
        p = Path(p).resolve()
        if not p.exists():
            raise FileNotFoundError(f"extra pack {p} does not exist")
        (nodes_dir / p.name).symlink_to(p, target_is_directory=p.is_dir())
        names.append(p.name)
    data = run_workflow(workflow, models, inputs=inputs, timeout=timeout, pack=pack,
                        extra=[*extra, "--run-dir", str(run_dir)])
    data.setdefault("run_dir", str(run_dir))
    data["extra_packs"] = {n: extra_pack_import(data.get("log", ""), str(nodes_dir / n)) for n in names}
    return data


def extra_pack_import(log: str, path: str) -> dict:
    """Import status of the custom node folder ``path`` from ComfyUI's startup log: the
    ``<seconds> seconds (IMPORT FAILED): <path>`` summary line and the ``Cannot import <path>`` traceback."""
    lines = log.splitlines()
    seen = [line for line in lines if line.rstrip().endswith(": " + path) and " seconds" in line]
    failed = not seen or any("IMPORT FAILED" in line for line in seen)
    err = []
    for i, line in enumerate(lines):
        if line.startswith("Cannot import " + path):
            j = i
            while j > max(0, i - 200) and not lines[j].startswith("Traceback (most recent call last)"):
                j -= 1
            err.append("\n".join(lines[j:i + 1]))
    return {"import_failed": failed, "loaded": bool(seen), "error": "\n".join(err)}


# ------------------------------------------------------------------------------------------------------------
# One real server for many prompts and frontend loads (a test module starts one; each start costs ~8 s)
# ------------------------------------------------------------------------------------------------------------
def _harness():
    """The harness's run_workflow.py as a module (its Server class: start, wait, stop by pid)."""
    import importlib.util
    import sys

    name = "comfyui_harness_run_workflow"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HARNESS)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        sys.modules[name] = mod
    return sys.modules[name]


class RealServer:
    """A running harness ComfyUI with this pack (see :func:`comfyui_server`)."""

    def __init__(self, srv, run_dir: Path) -> None:
        self._srv = srv
        self.url = srv.url
        self.run_dir = run_dir
        self.base = run_dir / "base"

    def request(self, path: str, data=None, timeout: float = 60):
        """(HTTP status, JSON body) of a GET (``data`` None) or JSON POST."""
        return self._srv.request(path, data, timeout=timeout)

    def get_bytes(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) of a GET, for files the server serves."""
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(self.url + path, timeout=60) as r:
                return r.status, r.headers.get("Content-Type", ""), r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Content-Type", ""), e.read()

    def log(self) -> str:
        return self._srv.read_log()

    def add_input(self, path: Path | str) -> None:
        """Copy a file into the server's input/ folder (Load Image / Load Audio / Load Latent read it)."""
        import shutil

        shutil.copy2(str(path), str(self.base / "input"))

    def queue(self, prompt: dict, *, workflow: dict | None = None, timeout: float = 600) -> dict:
        """Queue an API prompt and wait for it. Returns ``status`` (success / error / invalid / timeout /
        server_died), ``seconds``, ``error`` (the execution error or the validation errors, as text),
        ``outputs`` (files the output nodes wrote) and ``entry`` (the /history entry or the rejection)."""
        import time

        t0 = time.time()
        status, entry = _harness().run_prompt(self._srv, prompt, workflow, timeout)
        out = {"status": status, "seconds": round(time.time() - t0, 1), "entry": entry, "error": "", "outputs": []}
        if status == "invalid":
            err = entry.get("error") or {}
            lines = [f"{err.get('message', err)} {err.get('details', '')}".strip()]
            for nid, ne in (entry.get("node_errors") or {}).items():
                lines += [f"node {nid} ({ne.get('class_type')}): {e.get('message')}: {e.get('details')}"
                          for e in ne.get("errors", [])]
            out["error"] = "\n".join(lines)
        for kind, msg in ((entry or {}).get("status") or {}).get("messages", []) if status != "invalid" else []:
            if kind in ("execution_error", "execution_interrupted"):
                out["error"] = (f"node {msg.get('node_id')} ({msg.get('node_type')}): {msg.get('exception_type', '')}: "
                                f"{msg.get('exception_message', '')}")
        for node_out in ((entry or {}).get("outputs") or {}).values() if status != "invalid" else []:
            for items in node_out.values():
                for it in items if isinstance(items, list) else [items]:
                    if isinstance(it, dict) and "filename" in it:
                        out["outputs"].append(self.base / (it.get("type") or "output") / (it.get("subfolder") or "")
                                              / it["filename"])
        return out

    def frontend(self, script: str, job: dict, *, timeout: float = 900) -> dict:
        """Run a Node.js ``script`` (playwright-core, Debian chromium) against this server: it gets the path of a
        JSON job (``job`` plus ``url``) and of the JSON file it must write; returns that JSON."""
        with tempfile.TemporaryDirectory(prefix="magihuman-frontend-") as tmp:
            js, job_file, out_file = Path(tmp) / "check.js", Path(tmp) / "job.json", Path(tmp) / "out.json"
            js.write_text(script)
            job_file.write_text(json.dumps(dict(job, url=self.url)))
            env = dict(os.environ, NODE_PATH=str(COMFYUI_DIR / "frontend-check" / "node_modules"))
            proc = subprocess.run(["node", str(js), str(job_file), str(out_file)], env=env, capture_output=True,
                                  text=True, timeout=timeout)
            if proc.returncode or not out_file.is_file():
                raise RuntimeError(f"frontend script failed (rc {proc.returncode}): {(proc.stderr or proc.stdout)[-3000:]}")
            return json.loads(out_file.read_text())


def comfyui_server(models: Path | str | None = None, *, inputs=(), pack: Path = ROOT, startup_timeout: float = 300,
                   server_args=()):
    """Context manager: start one real ComfyUI (the harness's server: ``--cpu``, a fresh base directory under
    ``$COMFYUI_DIR/runs`` with only this pack in ``custom_nodes/``, ``models`` as its models folder, ``inputs``
    copied into ``input/``, ``server_args`` added to ``main.py``, e.g. ``--front-end-root DIR``), yield a
    :class:`RealServer`, stop it (by its pid) at the end. Fails with the log tail when the server does not
    start or the pack does not import."""
    import contextlib
    import shutil

    @contextlib.contextmanager
    def run():
        rw = _harness()
        runs = COMFYUI_DIR / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        run_dir = Path(tempfile.mkdtemp(prefix="magihuman-server-", dir=runs))
        base = run_dir / "base"
        for d in ("custom_nodes", "input", "output", "temp", "user"):
            (base / d).mkdir(parents=True, exist_ok=True)
        (base / "custom_nodes" / PACK_NAME).symlink_to(Path(pack).resolve(), target_is_directory=True)
        if models is not None:
            (base / "models").symlink_to(Path(models).resolve(), target_is_directory=True)
        for item in inputs:
            shutil.copy2(str(item), str(base / "input"))
        srv = rw.Server(str(PYTHON), str(base), rw.free_port(), list(server_args))
        srv.start()
        try:
            if not srv.wait_ready(startup_timeout):
                raise RuntimeError("ComfyUI did not start; log tail:\n" + srv.read_log()[-4000:])
            failed, _secs, err, _builtin = rw.import_report(srv.read_log(), str(base / "custom_nodes" / PACK_NAME))
            if failed:
                raise RuntimeError(f"the pack failed to import:\n{err or srv.read_log()[-4000:]}")
            yield RealServer(srv, run_dir)
        finally:
            srv.stop()

    return run()
