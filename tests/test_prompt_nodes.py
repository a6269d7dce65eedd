"""The prompt nodes (nodes/prompt.py) and Text Encode's cjk_spacing switch, run as ComfyUI would (no models)."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest
import torch

from magihuman.prompts import EXAMPLE_PROMPTS, LLM_SYSTEM_PROMPT


@pytest.fixture(scope="module")
def env(pack):
    compat = importlib.import_module(f"{pack.__name__}.nodes.compat")
    mod = importlib.import_module(f"{pack.__name__}.nodes")
    nodes = {c.define_schema().node_id: c for c in mod.NODE_CLASSES}
    return compat, nodes


def run(env, node_id, **inputs):
    compat, nodes = env
    return importlib.import_module(compat.__name__.rsplit('.', 1)[0] + '.v3').run_node(nodes[node_id], **inputs)


BODY_ZH = 'A man in a blue shirt smiles and says, "你好，朋友。" His voice is warm. The camera is static.'


def test_builder_exact_output_and_warnings(env):
    out = run(env, "MagiHumanEnhancedPrompt", main_body=BODY_ZH,
              dialogue="man in blue shirt | Mandarin | 你好，朋友。", background_sound="Soft rain on a window")
    prompt, warnings = out.args
    assert prompt == ('A man in a blue shirt smiles and says, "你 好，朋 友。" His voice is warm. The camera is static.\n'
                      '\n'
                      'Dialogue:\n'
                      '<man in blue shirt, Mandarin>: "你 好，朋 友。"\n'
                      '\n'
                      'Background Sound:\n'
                      '<Soft rain on a window>')
    assert warnings == "- The main body has 21 words; the model was trained on 150-200."
    assert out.ui.value == prompt + "\n\nWarnings:\n" + warnings


def test_builder_from_fields_warns_about_unquoted_line_and_speaker(env):
    prompt, warnings = run(env, "MagiHumanEnhancedPrompt", main_body="", character="An old fisherman on a pier",
                           appearance="grey beard and a yellow raincoat", performance="He squints at the sea",
                           camera="Static medium shot, overcast light", dialogue="fisherman | English | Storm's coming.",
                           background_sound="").args
    assert prompt == ("An old fisherman on a pier. Grey beard and a yellow raincoat. He squints at the sea. "
                      "Static medium shot, overcast light.\n"
                      "\n"
                      "Dialogue:\n"
                      '<fisherman, English>: "Storm\'s coming."\n'
                      "\n"
                      "Background Sound:\n"
                      "<No prominent background sound>")
    assert warnings == (
        "- The main body has 22 words; the model was trained on 150-200.\n"
        '- Dialogue line 1 ("Storm\'s coming.") is not quoted in the main body; every line should appear word for '
        "word in both places.\n"
        '- Dialogue line 1: the speaker description "fisherman" has 1 word(s); aim for about five (e.g. "young man '
        'in yellow polo"), unless it is a celebrity\'s name.')


def test_builder_example_has_no_warnings_and_switch_off_keeps_cjk(env):
    compat, nodes = env
    body = EXAMPLE_PROMPTS["ti2v"].split("\n\n")[0]
    prompt, warnings = run(env, "MagiHumanEnhancedPrompt", main_body=body,
                           dialogue="Middle-aged man in navy sweater | Mandarin | 今天我们聊聊怎么泡一杯好茶。",
                           background_sound="<Soft ticking of a wall clock>").args
    assert prompt == EXAMPLE_PROMPTS["ti2v"] and warnings == ""
    # optional inputs left out (as an API prompt may): execute gets only the required ones
    prompt, _ = nodes["MagiHumanEnhancedPrompt"].execute(main_body="他说你好。", dialogue="", background_sound="",
                                                         cjk_spacing=False).args
    assert prompt == "他说你好。\n\nBackground Sound:\n<No prominent background sound>"


def test_builder_errors_name_the_node(env):
    with pytest.raises(ValueError, match="^MagiHuman Enhanced Prompt: nothing to build"):
        run(env, "MagiHumanEnhancedPrompt")
    with pytest.raises(ValueError, match="MagiHuman Enhanced Prompt: dialogue line 2: expected"):
        run(env, "MagiHumanEnhancedPrompt", main_body="A woman talks.", dialogue="a | English | hi\nno pipes here")
    with pytest.raises(ValueError, match="'main_body' must be text"):
        run(env, "MagiHumanEnhancedPrompt", main_body=["not", "text"])


def test_llm_request_outputs(env):
    system, user, combined = run(env, "MagiHumanLLMPromptRequest", request="  A baker greets a customer.  ").args
    assert system == LLM_SYSTEM_PROMPT
    assert user == "User idea:\nA baker greets a customer.\n\nWrite the prompt now."
    assert combined == system + "\n" + user
    _, user, _ = run(env, "MagiHumanLLMPromptRequest", request="She laughs.",
                     first_frame="A woman in a green coat on a tram.").args
    assert user == "User idea:\nShe laughs.\n\nFirst frame:\nA woman in a green coat on a tram.\n\nWrite the prompt now."
    with pytest.raises(ValueError, match="MagiHuman LLM Prompt Request: the request is empty"):
        run(env, "MagiHumanLLMPromptRequest", request=" ")


def test_check_report_passthrough_and_strict(env):
    good = EXAMPLE_PROMPTS["t2v"]
    out = run(env, "MagiHumanCheckEnhancedPrompt", text=good)
    assert out.args == (good, "OK: the prompt follows the Enhanced Prompt format.")
    assert run(env, "MagiHumanCheckEnhancedPrompt", text=good, strict=True).args[0] == good

    bad = 'He says "你好".\n\nDialogue:\n<Man, Mandarin>: "再见"\n\nBackground Sound:\nrain'
    text, report = run(env, "MagiHumanCheckEnhancedPrompt", text=bad).args
    assert text == bad
    problems = [
        "The main body has 4 words; it must have 150-200.",
        'Line 4: the dialogue text "再见" is not quoted in the main body (each line must appear in both places, '
        "word for word).",
        "Line 7: the background sound must be one description in angle brackets, e.g. <Soft rain against a window> "
        'or <No prominent background sound> (found "rain").',
        "CJK characters are not separated by single spaces in 2 place(s), e.g. '\"你好\".' -> '\"你 好\".', "
        "'\"再见\"' -> '\"再 见\"'.",
    ]
    assert report == "4 problem(s) with the Enhanced Prompt format:\n" + "\n".join(f"- {p}" for p in problems)
    with pytest.raises(ValueError) as e:
        run(env, "MagiHumanCheckEnhancedPrompt", text=bad, strict=True)
    assert str(e.value) == ("MagiHuman Check Enhanced Prompt: the prompt does not follow the Enhanced Prompt format "
                            "(4 problem(s)):\n" + "\n".join(f"- {p}" for p in problems))


def test_schemas(env):
    _, nodes = env
    for nid in ("MagiHumanEnhancedPrompt", "MagiHumanLLMPromptRequest", "MagiHumanCheckEnhancedPrompt"):
        s = nodes[nid].define_schema()
        assert s.category == "MagiHuman/prompt" and s.description
        assert all(o.io_type == "STRING" and o.tooltip for o in s.outputs)
        assert all(i.tooltip for i in s.inputs)
    ids = [i.id for i in nodes["MagiHumanEnhancedPrompt"].define_schema().inputs]
    assert ids == ["main_body", "dialogue", "background_sound", "cjk_spacing", "character", "appearance",
                   "performance", "camera"]
    (cjk,) = [i for i in nodes["MagiHumanTextEncode"].define_schema().inputs if i.id == "cjk_spacing"]
    assert cjk.default is True and cjk.optional and cjk.tooltip


class _FakeEncoder:
    """Records the texts it is asked to encode (T5Gemma stand-in, with the shape facts the node's memory request
    reads)."""

    config = SimpleNamespace(hidden_size=4, head_dim=2, intermediate_size=8, num_attention_heads=2,
                             num_key_value_heads=1)
    compute_dtype = torch.float32

    def __init__(self):
        self.texts = []

    def linear_layers(self):
        return []

    def encode(self, texts, max_length, warn_trim=True):
        self.texts += texts
        return torch.zeros(1, max_length, 4), torch.tensor([3])


class _Handle:
    def __init__(self, model):
        self.model = model

    def use(self, memory_required=0):
        return self.model


@pytest.mark.parametrize("inputs, expected", [
    ({}, "他 说 你 好。"),                           # left out (older API prompt): on
    ({"cjk_spacing": True}, "他 说 你 好。"),
    ({"cjk_spacing": False}, "他说你好。"),
])
def test_text_encode_cjk_spacing_switch(env, inputs, expected):
    enc = _FakeEncoder()
    compat, nodes = env
    pos, _ = nodes["MagiHumanTextEncode"].execute(text_encoder=_Handle(enc), prompt="他说你好。", negative_prompt="",
                                                  encode_negative=False, **inputs).args
    assert enc.texts == [expected] and pos[0][1]["magihuman_prompt"] == expected
