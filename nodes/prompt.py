"""Prompt nodes: build an Enhanced Prompt, ask any LLM node for one, check an answer (magihuman.prompts).

The ComfyUI 0.8 frontend displays a node's text (``ui.PreviewText``) only on the core "Preview Any" node,
and this pack adds no text display of its own: the built prompt, the warnings and the check report are therefore STRING
outputs to wire into "Preview Any" (the same text is also in the node's ``ui`` entry of the run's history).
"""

from __future__ import annotations

import logging

from ..magihuman import prompts
from .v3 import MagiNode, io, ui
from .types import node_name

log = logging.getLogger("magihuman.nodes")

_SEE_IT = "To read it in the UI, wire it into the core 'Preview Any' node."


def _text(value, name: str, where: str) -> str:
    """A STRING input as text ("" when an optional input is left out)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{where}: '{name}' must be text (STRING), got {type(value).__name__}")
    return value


class MagiHumanEnhancedPrompt(MagiNode):
    DISPLAY_NAME, SUBCATEGORY = "MagiHuman Enhanced Prompt", "prompt"

    @classmethod
    def define_schema(cls):
        return cls.schema(
            description="Builds a prompt in the official Enhanced Prompt layout the model was trained on: the main "
                        "body, a Dialogue paragraph and a Background Sound paragraph, CJK-spaced. Warns (never "
                        "fails) when the main body is outside 150-200 words or a dialogue line is not quoted in "
                        f"it. Connect 'prompt' to '{node_name('MagiHumanTextEncode')}'.",
            inputs=[
                io.String.Input("main_body", multiline=True, default="",
                                placeholder="Who, where, mood; then in time order the face, each spoken line in "
                                            "quotes with its delivery; static camera, light, focus.",
                                tooltip="The first paragraph: one English paragraph of 150-200 words, clinical and "
                                        "chronological. Quote every spoken line word for word where it is said. "
                                        "Leave empty to compose it from character/appearance/performance/camera."),
                io.String.Input("dialogue", multiline=True, default="",
                                placeholder="young woman in red scarf | English | Hello there!",
                                tooltip="One spoken line per row: 'speaker description | language | text' (or the "
                                        "official '<speaker description, language>: \"text\"'). About five words "
                                        "for the speaker; a plain language name (English, Mandarin, Japanese...). "
                                        "Empty: no Dialogue paragraph."),
                io.String.Input("background_sound", default="",
                                tooltip="The single most prominent background sound, e.g. 'Steady rain on a tin "
                                        "roof'. Empty: <No prominent background sound>."),
                io.Boolean.Input("cjk_spacing", default=True,
                                 tooltip="On: one space between Chinese, Japanese and Korean characters everywhere "
                                         "('你好' -> '你 好'), as the model was trained. Off: the text is kept as "
                                         "typed."),
                io.String.Input("character", default="", optional=True,
                                tooltip="Used only when main_body is empty: who the person is, where, and their "
                                        "overall mood (one sentence)."),
                io.String.Input("appearance", default="", optional=True,
                                tooltip="Used only when main_body is empty: hair, face, clothing (one sentence)."),
                io.String.Input("performance", multiline=True, default="", optional=True,
                                tooltip="Used only when main_body is empty: what the face does in time order, each "
                                        "spoken line in quotes followed by its tone, pace, pitch and volume. The "
                                        "torso stays still."),
                io.String.Input("camera", default="", optional=True,
                                tooltip="Used only when main_body is empty: a static camera (angle, shot size), "
                                        "light, depth of field with focus on the face, composition."),
            ],
            outputs=[
                io.String.Output(display_name="prompt",
                                 tooltip=f"The Enhanced Prompt: connect to '{node_name('MagiHumanTextEncode')}'."),
                io.String.Output(display_name="warnings",
                                 tooltip=f"What is off, one '- ' line each; empty when nothing is. {_SEE_IT}"),
            ],
        )

    @classmethod
    def execute(cls, main_body, dialogue, background_sound, cjk_spacing,
                character=None, appearance=None, performance=None, camera=None):
        where = cls.name()
        fields = {name: _text(value, name, where) for name, value in (
            ("main_body", main_body), ("dialogue", dialogue), ("background_sound", background_sound),
            ("character", character), ("appearance", appearance), ("performance", performance),
            ("camera", camera))}
        try:
            prompt, warnings = prompts.build_enhanced_prompt(**fields, cjk_spacing=bool(cjk_spacing))
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        for w in warnings:
            log.warning("%s: %s", where, w)
        report = "\n".join(f"- {w}" for w in warnings)
        shown = prompt + (f"\n\nWarnings:\n{report}" if report else "")
        return io.NodeOutput(prompt, report, ui=ui.PreviewText(shown))


class MagiHumanLLMPromptRequest(MagiNode):
    DISPLAY_NAME, SUBCATEGORY = "MagiHuman LLM Prompt Request", "prompt"

    @classmethod
    def define_schema(cls):
        return cls.schema(
            description="Asks any text-generation node (API nodes such as Google Gemini or OpenAI ChatGPT, local "
                        "LLM packs) to write an Enhanced Prompt: 'system' states the format's rules, 'user' carries "
                        f"your idea. Check the answer with '{node_name('MagiHumanCheckEnhancedPrompt')}'.",
            inputs=[
                io.String.Input("request", multiline=True, default="",
                                placeholder="A chef in a busy kitchen welcomes the guests: \"Dinner is served!\"",
                                tooltip="Your idea in a few words, in any language: who, where, the mood, what is "
                                        "said (the LLM keeps spoken lines exactly as written)."),
                io.String.Input("first_frame", multiline=True, default="", optional=True,
                                tooltip="Image to video: describe the first frame (person, clothes, place) so the "
                                        "prompt matches it. Empty for text to video."),
            ],
            outputs=[
                io.String.Output(display_name="system",
                                 tooltip="The system prompt (the format's rules): the LLM node's system prompt / "
                                         "instructions input."),
                io.String.Output(display_name="user",
                                 tooltip="The user message (your idea): the LLM node's prompt input."),
                io.String.Output(display_name="combined",
                                 tooltip="System prompt and user message in one text, for LLM nodes with a single "
                                         "prompt input."),
            ],
        )

    @classmethod
    def execute(cls, request, first_frame=None):
        where = cls.name()
        request, first_frame = _text(request, "request", where), _text(first_frame, "first_frame", where)
        try:
            system, user = prompts.llm_messages(request, first_frame=first_frame)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        return io.NodeOutput(system, user, f"{system}\n{user}")


class MagiHumanCheckEnhancedPrompt(MagiNode):
    DISPLAY_NAME, SUBCATEGORY = "MagiHuman Check Enhanced Prompt", "prompt"

    @classmethod
    def define_schema(cls):
        return cls.schema(
            description="Checks a prompt (e.g. an LLM's answer) against the Enhanced Prompt format: main body of "
                        "150-200 words, exact 'Dialogue:' / 'Background Sound:' headers, every dialogue line also "
                        "quoted in the body, one <...> background sound, CJK spacing. Passes the text on unchanged "
                        "and says what is off.",
            inputs=[
                io.String.Input("text", multiline=True, default="",
                                tooltip="The prompt to check: connect an LLM node's text output, or paste it."),
                io.Boolean.Input("strict", default=False,
                                 tooltip="Off: always pass the text on and list the problems in 'report'. On: stop "
                                         "the run with an error listing the problems."),
            ],
            outputs=[
                io.String.Output(display_name="text",
                                 tooltip=f"The input text, unchanged: connect to "
                                         f"'{node_name('MagiHumanTextEncode')}' (which adds the CJK spacing itself "
                                         "when its cjk_spacing is on)."),
                io.String.Output(display_name="report",
                                 tooltip=f"'OK: ...' or the list of problems. {_SEE_IT}"),
            ],
        )

    @classmethod
    def execute(cls, text, strict):
        where = cls.name()
        text = _text(text, "text", where)
        problems = prompts.check_enhanced_prompt(text)
        report = prompts.describe_problems(problems)
        if problems and strict:
            raise ValueError(f"{where}: the prompt does not follow the Enhanced Prompt format "
                             f"({len(problems)} problem(s)):\n" + "\n".join(f"- {p}" for p in problems))
        if problems:
            log.warning("%s: %s", where, report)
        return io.NodeOutput(text, report, ui=ui.PreviewText(report))


PROMPT_NODES = [MagiHumanEnhancedPrompt, MagiHumanLLMPromptRequest, MagiHumanCheckEnhancedPrompt]
