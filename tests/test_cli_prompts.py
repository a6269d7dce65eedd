"""``python -m magihuman prompt ...`` and generate's Enhanced Prompt options, in-process."""

from __future__ import annotations

import io
import json

import pytest

from magihuman import cli, media
from magihuman.prompts import EXAMPLE_PROMPTS, LLM_SYSTEM_PROMPT


def run(capsys, *argv):
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_prompt_build_exact_output(capsys):
    code, out, err = run(capsys, "prompt", "build", "--body", 'A girl in a red scarf waves and says, "こんにちは!"',
                         "--dialogue", "girl in red scarf | Japanese | こんにちは!",
                         "--background-sound", "Distant church bells")
    assert code == 0
    assert out == ('A girl in a red scarf waves and says, "こ ん に ち は!"\n'
                   "\n"
                   "Dialogue:\n"
                   '<girl in red scarf, Japanese>: "こ ん に ち は!"\n'
                   "\n"
                   "Background Sound:\n"
                   "<Distant church bells>\n")
    assert err == "warning: The main body has 14 words; the model was trained on 150-200.\n"


def test_prompt_build_from_fields_without_spacing(capsys):
    code, out, _ = run(capsys, "prompt", "build", "--character", "A clerk at a desk", "--performance",
                       'She says "谢谢"', "--camera", "Static close-up", "--dialogue",
                       "clerk in white blouse | Mandarin | 谢谢", "--no-cjk-spacing")
    assert code == 0
    assert out == ('A clerk at a desk. She says "谢谢" Static close-up.\n\nDialogue:\n'
                   '<clerk in white blouse, Mandarin>: "谢谢"\n\nBackground Sound:\n<No prominent background sound>\n')


@pytest.mark.parametrize("argv, message", [
    (["--body", "A man talks.", "--dialogue", "man | English"], "error: --dialogue #1: expected"),
    (["--dialogue", "a young man | English | hi"], "error: the main body is empty: give --body"),
])
def test_prompt_build_errors(capsys, argv, message):
    code, out, err = run(capsys, "prompt", "build", *argv)
    assert code == 2 and out == "" and err.startswith(message) and err.count("\n") == 1


def test_prompt_check_exit_codes(capsys, tmp_path, monkeypatch):
    good = tmp_path / "good.txt"
    good.write_text(EXAMPLE_PROMPTS["base"], encoding="utf-8")
    assert run(capsys, "prompt", "check", str(good)) == (0, "OK: the prompt follows the Enhanced Prompt format.\n", "")

    monkeypatch.setattr("sys.stdin", io.StringIO("A short line.\n\nBackground Sound:\n<Wind>\n"))
    code, out, _ = run(capsys, "prompt", "check", "-")
    assert code == 1
    assert out == ("1 problem(s) with the Enhanced Prompt format:\n"
                   "- The main body has 3 words; it must have 150-200.\n")

    code, _, err = run(capsys, "prompt", "check", str(tmp_path / "missing.txt"))
    assert code == 2 and "missing.txt" in err


def test_prompt_llm(capsys):
    code, out, _ = run(capsys, "prompt", "llm", "A pilot announces a delay.")
    assert code == 0
    assert out == (f"=== system ===\n{LLM_SYSTEM_PROMPT}\n=== user ===\n"
                   "User idea:\nA pilot announces a delay.\n\nWrite the prompt now.\n")
    code, out, _ = run(capsys, "prompt", "llm", "Er lacht.", "--first-frame", "A man on a bench.", "--json")
    assert code == 0
    assert json.loads(out) == [
        {"role": "system", "content": LLM_SYSTEM_PROMPT},
        {"role": "user", "content": "User idea:\nEr lacht.\n\nFirst frame:\nA man on a bench.\n\nWrite the prompt now."},
    ]
    assert run(capsys, "prompt", "llm", "  ")[0] == 2


def _spy_encode_prompt(monkeypatch, *, stop: bool = False):
    calls = []
    real = cli.P.encode_prompt

    def spy(text_encoder, prompt, negative_prompt=None, **kw):
        calls.append((prompt, kw))
        if stop:
            raise ValueError("spy: stopping after the text encoder call")
        return real(text_encoder, prompt, negative_prompt, **kw)

    monkeypatch.setattr(cli.P, "encode_prompt", spy)
    return calls


def test_generate_with_dialogue_builds_the_prompt(tiny_dir, tmp_path, capsys, monkeypatch):
    calls = _spy_encode_prompt(monkeypatch)
    out = tmp_path / "d.mp4"
    code, _, err = run(capsys, "generate", "--preset", "tiny", "--models", str(tiny_dir), "--seconds", "1",
                       "--output", str(out), "--quiet", "--prompt", 'An old man nods and says, "你好。"',
                       "--dialogue", "old man in grey coat | Mandarin | 你好。", "--background-sound", "Birdsong")
    assert code == 0, err
    assert media.read_mp4_info(out)["audio_codec"] == "aac"
    expected = ('An old man nods and says, "你 好。"\n\nDialogue:\n<old man in grey coat, Mandarin>: "你 好。"\n\n'
                "Background Sound:\n<Birdsong>")
    assert calls == [(expected, {"cjk_spacing": True})]
    assert "warning: The main body has 8 words" in err


def test_generate_plain_prompt_and_no_cjk_spacing(tiny_dir, tmp_path, capsys, monkeypatch):
    calls = _spy_encode_prompt(monkeypatch, stop=True)
    base = ["generate", "--preset", "tiny", "--models", str(tiny_dir), "--output", str(tmp_path / "o.mp4"), "--quiet",
            "--prompt", "他说你好。"]
    assert run(capsys, *base, "--no-cjk-spacing")[0] == 2
    assert run(capsys, *base)[0] == 2
    assert calls == [("他说你好。", {"cjk_spacing": False}), ("他说你好。", {"cjk_spacing": True})]
