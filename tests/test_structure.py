"""The shape of the engine: one-way imports, one weights layer under every model, one mismatch report,
attention chosen per model."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from magihuman.attention import register_attention_backend
from magihuman.models.dit import DiTConfig, MagiHumanDiT
from magihuman.models.text_encoder import T5GemmaEncoder, tiny_hf_config, tiny_state_dict
from magihuman.errors import CheckpointError
from magihuman.weights import check_keys, mismatch_report

ENGINE = Path(__file__).resolve().parents[1] / "magihuman"
# the public API keeps the file entry point T5GemmaEncoder.from_pretrained on the model class: it imports the file
# code when called, and that code is handed the class (it imports no model), so the two never form a circle.
API_FORWARDER = ("magihuman.models.text_encoder", "magihuman.loaders.text_encoder")
FILE_LAYER = ("magihuman.weights", "magihuman.checkpoints", "magihuman.loaders")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ENGINE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported engine module, inside a function) for every import statement of a file."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    in_function = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function |= {id(c) for c in ast.walk(node) if isinstance(c, (ast.Import, ast.ImportFrom))}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            targets = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for t in targets:
            if t.startswith("magihuman"):
                out.append((t, id(node) in in_function))
    return out


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ENGINE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for m, p in modules.items():
        for target, _ in _imports(p):
            while target not in modules and "." in target:  # "pkg.module.name" -> the module that defines it
                target = target.rsplit(".", 1)[0]
            if target in modules and target != m and not m.startswith(target + "."):
                graph[m].add(target)
    return graph


def test_engine_import_graph_has_no_cycle():
    graph = _graph()
    assert len(graph) > 40
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = path[path.index(n):] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_models_import_no_file_code():
    found = []
    for p in (ENGINE / "models").rglob("*.py"):
        for target, inside in _imports(p):
            if target.startswith(FILE_LAYER):
                found.append((_module_name(p), target.rsplit(".", 1)[0] if target.count(".") > 2 else target,
                              inside))
    assert sorted({(m, t) for m, t, _ in found}) == [API_FORWARDER], found
    assert all(inside for *_, inside in found)  # imported when called, never at import time


def test_one_safetensors_reading_path():
    """Every weights file is read by magihuman.weights (its own safetensors reader; torch pickles only through
    weights/torch_files.py): no other module imports the safetensors package or calls torch.load."""
    offenders = []
    for p in ENGINE.rglob("*.py"):
        rel = p.relative_to(ENGINE).as_posix()
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import) and any(a.name.startswith("safetensors") for a in node.names):
                offenders.append((rel, "import safetensors"))
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("safetensors") and not node.level:
                offenders.append((rel, "from safetensors"))
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"
                    and rel != "weights/torch_files.py"):
                offenders.append((rel, "torch.load"))
    assert offenders == []


def test_mismatch_report_wording():
    """The one format every loader refuses a wrong file with (file, missing, unexpected, wrong shapes)."""
    found = {"a.weight": (2, 3), "b.weight": (4,), "extra": (1,)}
    expected = {"a.weight": (2, 4), "b.weight": (4,), "c.bias": (5,)}
    assert mismatch_report("f.safetensors", found, expected, "the X model") == (
        "f.safetensors does not hold the X model:\n"
        "  1 missing key(s): c.bias [5]\n"
        "  1 unexpected key(s): extra [1]\n"
        "  1 key(s) with the wrong shape: a.weight is [2, 3], expected [2, 4]")
    assert mismatch_report("f", expected, expected, "x") is None
    assert mismatch_report("f", {}, {"c.bias": (5,)}, "x", allow_missing=["c.bias"]) is None
    many = {f"k{i}": (1,) for i in range(7)}
    assert "7 unexpected key(s): k0 [1], k1 [1], k2 [1], k3 [1], k4 [1], ... (+2 more)" in mismatch_report(
        "f", many, {}, "x")

    with pytest.raises(CheckpointError, match=r"(?s)does not hold the X model.*\n  use the right file"):
        check_keys("f", found, expected, "the X model", hint="use the right file")


def test_attention_backend_is_per_model():
    """Two DiTs and a text encoder in one process, each with its own kernel: each forward uses its own."""
    calls = {"dit_a": 0, "dit_b": 0, "te": 0}

    def counting(name):
        def fn(q, k, v, mask=None):
            calls[name] += 1
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                                    enable_gqa=q.shape[1] != k.shape[1])
        return fn

    for name in calls:
        register_attention_backend(f"test_{name}", counting(name))
    cfg = DiTConfig.preset("tiny")
    a = MagiHumanDiT(cfg, dtype=torch.float32, compute_dtype=torch.float32)
    b = MagiHumanDiT(cfg, dtype=torch.float32, compute_dtype=torch.float32)
    a.set_attention_backend("test_dit_a")
    b.set_attention_backend("test_dit_b")
    te_cfg = tiny_hf_config()
    te_cfg["encoder"]["query_pre_attn_scalar"] = te_cfg["encoder"]["head_dim"]  # default scale: kernel-eligible
    te = T5GemmaEncoder.from_config(te_cfg)
    te.load_state_dict(tiny_state_dict(te_cfg))
    te.set_attention_backend("test_te")
    video, audio, text = torch.randn(1, 48, 2, 4, 4), torch.randn(1, 5, 64), torch.randn(1, 3, 64)
    with torch.no_grad():
        out_a = a(video, audio, text, [3])
        assert calls == {"dit_a": cfg.num_layers, "dit_b": 0, "te": 0}
        out_b = b(video, audio, text, [3])
        assert calls == {"dit_a": cfg.num_layers, "dit_b": cfg.num_layers, "te": 0}
        te(torch.tensor([[2, 5, 9, 11]]))
    assert calls == {"dit_a": cfg.num_layers, "dit_b": cfg.num_layers, "te": 4}
    assert all(torch.equal(x, y) for x, y in zip(out_a, out_b))  # same math, same weights
    fresh = MagiHumanDiT(cfg, dtype=torch.float32)
    assert fresh.attention_backend == "sdpa"  # nothing leaked from the other models
    with pytest.raises(ValueError, match="unknown attention backend 'nope'"):
        fresh.set_attention_backend("nope")
    assert fresh.attention_backend == "sdpa"
