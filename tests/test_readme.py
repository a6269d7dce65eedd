"""README.md stays true to the code: every Python import in its code blocks resolves, and every
``python -m magihuman`` command in them names a real subcommand with options that subcommand has."""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest

from magihuman import cli

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", README, flags=re.S)


def _imports() -> list[tuple[str, str]]:
    out = []
    for lang, body in BLOCKS:
        if lang != "python":
            continue
        for line in body.splitlines():
            m = re.match(r"\s*(?:#\s*)?from\s+([\w.]+)\s+import\s+(.+)", line)
            if m:
                out += [(m.group(1), name.strip()) for name in m.group(2).split(",")]
    return out


def _commands() -> list[list[str]]:
    out = []
    for lang, body in BLOCKS:
        if lang not in ("bash", "sh", ""):
            continue
        text = body.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split("  #")[0].strip()
            m = re.search(r"-m magihuman (.*)", line)
            if m and not line.startswith("#"):
                out.append(shlex.split(m.group(1).replace("[", " ").replace("]", " ")))
    return out


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_readme_has_code_to_check():
    assert len(_imports()) >= 5 and len(_commands()) >= 8


@pytest.mark.parametrize("module,name", _imports(), ids=lambda v: str(v))
def test_python_imports_in_the_readme_resolve(module, name):
    mod = importlib.import_module(module)
    assert hasattr(mod, name) or importlib.util.find_spec(f"{module}.{name}") is not None, f"{module}.{name}"


def test_cli_commands_in_the_readme_exist():
    subs = _subparsers()
    problems = []
    for argv in _commands():
        sub = argv[0]
        if sub not in subs:
            problems.append(f"unknown subcommand {sub!r} in {' '.join(argv)}")
            continue
        # options of this subcommand and of its nested subcommands (prompt build / check / llm)
        known = set()
        stack = [subs[sub]]
        while stack:
            p = stack.pop()
            for a in p._actions:
                known.update(a.option_strings)
                if isinstance(a, argparse._SubParsersAction):
                    stack += list(a.choices.values())
        for tok in argv[1:]:
            flag = tok.split("=")[0]
            if flag.startswith("--") and flag not in known:
                problems.append(f"{sub}: no option {flag}")
    assert not problems, "\n".join(problems)
