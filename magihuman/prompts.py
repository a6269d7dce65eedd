"""Enhanced Prompts for daVinci-MagiHuman: build them, check them, and ask an LLM for them.

daVinci-MagiHuman was trained on captions written in one fixed house style, the "Enhanced Prompt".
The text encoder (T5Gemma) sees the prompt verbatim: the official inference code does no rewriting,
so a prompt in the trained layout gives noticeably better faces, lip-sync and audio than a short
free-form sentence. This module is pure Python (no torch, no ComfyUI) and holds the format's rules:

The format, three paragraphs separated by one empty line::

    <main body: one English paragraph of 150-200 words>

    Dialogue:
    <five-word character description, language>: "spoken line"
    <another character description, language>: "next line"

    Background Sound:
    <the single most prominent background sound>

* **Main body** -- clinical, chronological, no metaphors. It opens with who the character is, what
  they look like, where they are and their overall emotional state; then narrates, in time order,
  the facial muscle movements (brows, lip corners, jaw, lips while speaking) and small head or
  shoulder movements. The torso and position stay fixed (big actions such as dancing or driving are
  reduced to stationary facial/upper-body performance). Every spoken line is quoted word for word at
  the moment it is said, in its original language, and immediately followed by how it is delivered
  (tone, pace, pitch, volume). Non-verbal sounds and background sounds are mentioned when they occur.
  Camera: angle and shot size, always static (no pans, zooms, cuts); lighting, depth of field with
  focus on the face, composition; a rigid, motionless background. Everything except the dialogue is
  in English.
* **Dialogue** -- only when someone speaks: the header ``Dialogue:`` then one line per utterance,
  ``<description, language>: "text"``. The description is about five words ("Young man in yellow
  polo") or a celebrity's name; the language is a plain name (``Mandarin``, ``Korean``, ``German``).
  Each line appears exactly twice in the prompt: in the main body and here.
* **Background Sound** -- always present, last: the header ``Background Sound:`` then one
  ``<...>`` line naming the most prominent sound, or ``<No prominent background sound>``.
* **CJK spacing** -- every Chinese, Japanese or Korean character is separated by one space
  ("你好" is written "你 好"), everywhere in the prompt (see :func:`space_cjk` for the exact rule).

Provenance: the facts above come from the official daVinci-MagiHuman repository
(``prompts/enhanced_prompt_design.md``, the system prompt its authors use to rewrite user input;
README "Prompt Guidance"; ``example/assets/prompt.txt``). The official inference code
(``inference/pipeline/*``, ``inference/model/t5_gemma``) passes the prompt straight to the tokenizer:
it does *not* apply CJK spacing, so the prompt writer must -- that is what :func:`space_cjk` is for.
The wording here is our own.

API: :func:`space_cjk`, :class:`DialogueLine`, :func:`parse_dialogue`, :func:`build_enhanced_prompt`,
:func:`check_enhanced_prompt`, :func:`describe_problems`, :data:`LLM_SYSTEM_PROMPT`, :func:`llm_messages`,
:data:`EXAMPLE_PROMPTS`.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

__all__ = [
    "BODY_MIN_WORDS", "BODY_MAX_WORDS", "DIALOGUE_HEADER", "BACKGROUND_HEADER", "NO_BACKGROUND_SOUND",
    "space_cjk", "count_words", "DialogueLine", "parse_dialogue", "format_dialogue_line",
    "build_enhanced_prompt", "check_enhanced_prompt", "describe_problems", "LLM_SYSTEM_PROMPT", "llm_messages",
    "EXAMPLE_PROMPTS",
]

BODY_MIN_WORDS = 150
BODY_MAX_WORDS = 200
DIALOGUE_HEADER = "Dialogue:"
BACKGROUND_HEADER = "Background Sound:"
NO_BACKGROUND_SOUND = "No prominent background sound"
# A speaker description outside this many words draws a warning (the official target is five;
# the official examples use 3-5, and a celebrity's name is allowed instead).
SPEAKER_MIN_WORDS = 3
SPEAKER_MAX_WORDS = 7

# ----------------------------------------------------------------------------------------------
# CJK spacing
# ----------------------------------------------------------------------------------------------

# Code point ranges of CJK *letters* (each one becomes its own space-separated unit).
_CJK_RANGES = (
    (0x1100, 0x115F),    # Hangul Jamo: leading consonants (choseong) -- start a syllable
    (0x3005, 0x3007),    # 々 iteration mark, 〆 closing mark, 〇 ideographic zero
    (0x3021, 0x3029),    # Hangzhou numerals
    (0x3038, 0x303B),    # more Hangzhou numerals, 〻 vertical iteration mark
    (0x3041, 0x3096),    # Hiragana
    (0x309D, 0x309F),    # ゝ ゞ iteration marks, ゟ
    (0x30A1, 0x30FA),    # Katakana
    (0x30FC, 0x30FF),    # ー prolonged sound mark, ヽ ヾ iteration marks, ヿ
    (0x3105, 0x312F),    # Bopomofo
    (0x3131, 0x318E),    # Hangul Compatibility Jamo (ㅋ, ㅠ ...)
    (0x31A0, 0x31BF),    # Bopomofo Extended
    (0x31F0, 0x31FF),    # Katakana Phonetic Extensions (small ㇰ ...)
    (0x3400, 0x4DBF),    # CJK Unified Ideographs Extension A
    (0x4E00, 0x9FFF),    # CJK Unified Ideographs
    (0xA960, 0xA97C),    # Hangul Jamo Extended-A (leading consonants)
    (0xAC00, 0xD7A3),    # Hangul Syllables
    (0xF900, 0xFAFF),    # CJK Compatibility Ideographs
    (0xFF66, 0xFF9D),    # Halfwidth Katakana (incl. ｰ)
    (0xFFA1, 0xFFDC),    # Halfwidth Hangul letters
    (0x1AFF0, 0x1B16F),  # Kana Extended-B, Kana Supplement, Kana Extended-A, Small Kana Extension
    (0x20000, 0x2FFFF),  # Supplementary Ideographic Plane: Extensions B-F, I, compatibility supplement
    (0x30000, 0x3FFFF),  # Tertiary Ideographic Plane: Extensions G, H
)

# Characters that complete the preceding character instead of standing alone: never preceded by
# an inserted space (and they do not change what the preceding unit is).
_ATTACHING_RANGES = (
    (0x1160, 0x11FF),    # Hangul Jamo: vowels (jungseong) and final consonants (jongseong)
    (0xD7B0, 0xD7FF),    # Hangul Jamo Extended-B (vowels, finals)
    (0x3099, 0x309C),    # (combining) kana voiced / semi-voiced sound marks ゛ ゜
    (0xFF9E, 0xFF9F),    # halfwidth ﾞ ﾟ
    (0x200C, 0x200D),    # zero-width non-joiner / joiner
)


def _in(cp: int, ranges) -> bool:
    return any(lo <= cp <= hi for lo, hi in ranges)


def _is_cjk(ch: str) -> bool:
    return _in(ord(ch), _CJK_RANGES)


def _attaches(ch: str) -> bool:
    return unicodedata.category(ch)[0] == "M" or _in(ord(ch), _ATTACHING_RANGES)


def _kind(ch: str) -> str:
    """'cjk' (CJK letter), 'alnum' (any other letter or decimal digit) or 'other'."""
    if _is_cjk(ch):
        return "cjk"
    cat = unicodedata.category(ch)
    if cat[0] == "L" or cat == "Nd":
        return "alnum"
    return "other"


def _space_points(text: str) -> list[int]:
    """Indices in ``text`` before which :func:`space_cjk` inserts a space."""
    points: list[int] = []
    prev = "other"
    for i, ch in enumerate(text):
        if _attaches(ch):
            continue  # part of the previous unit
        kind = _kind(ch)
        if (prev == "cjk" and kind != "other") or (prev == "alnum" and kind == "cjk"):
            points.append(i)
        prev = kind
    return points


def space_cjk(text: str) -> str:
    """Separate CJK characters with single spaces, the way the training captions were written.

    The official rule (``prompts/enhanced_prompt_design.md``, "CJK Spacing") is that every Chinese,
    Japanese or Korean character is separated from the next by one space: ``"你好" -> "你 好"``.
    The official code never does this itself (the prompt goes to the tokenizer unchanged), so the
    prompt writer has to. Exact rule implemented here -- a single space is inserted between two
    directly adjacent characters when

    * both are CJK letters: Han ideographs (all blocks incl. Extensions A-I and compatibility
      ideographs, plus 々 〆 〇 〻), hiragana, katakana incl. halfwidth katakana, the prolonged sound
      mark ー and the kana iteration marks, bopomofo, Hangul syllables and Hangul jamo
      (``"안녕" -> "안 녕"``, ``"コーヒー" -> "コ ー ヒ ー"``), or
    * one is a CJK letter and the other a letter or decimal digit of any other script
      (``"用iPhone拍" -> "用 iPhone 拍"``, ``"第3名" -> "第 3 名"``) -- so every CJK character is its
      own space-separated unit, while a Latin word or a number stays in one piece.

    Nothing else changes:

    * Punctuation and symbols -- CJK (``，。、！？「」・`` ...) and ASCII alike -- get no space on
      either side, matching the official example ``"生 活 一 辈 子，还 带 着"`` and ``"你 十 年 了。"``.
      Spaces the writer already put next to punctuation are kept as they are.
    * Emoji and other symbols are left alone (``"好😀"`` stays ``"好😀"``).
    * Latin words, digits and their internal punctuation are untouched; text without CJK comes back
      identical.
    * Existing whitespace (spaces, tabs, newlines) is kept and never doubled: a space is only inserted
      where there is no whitespace at all, so the function is idempotent --
      ``space_cjk(space_cjk(t)) == space_cjk(t)``.
    * Combining marks and characters that complete the previous one (kana voiced marks ゛゜ﾞﾟ,
      Hangul conjoining vowel/final jamo, variation selectors, zero-width joiners) are never split
      off from the character they belong to.
    """
    points = _space_points(text)
    if not points:
        return text
    parts, last = [], 0
    for p in points:
        parts.append(text[last:p])
        last = p
    parts.append(text[last:])
    return " ".join(parts)


def count_words(text: str) -> int:
    """Words as the 150-200 rule counts them.

    Each CJK character is one word (spaced or not, so ``"你 好，世 界"`` and ``"你好，世界"`` are both
    four); besides that, each whitespace-separated token holding another letter or digit is one
    word. A lone punctuation token (``—``, ``。``) is not a word.
    """
    words = 0
    for tok in text.split():
        kinds = [_kind(c) for c in tok]
        words += kinds.count("cjk") + ("alnum" in kinds)
    return words


# ----------------------------------------------------------------------------------------------
# Dialogue
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DialogueLine:
    """One spoken line: who says it (about five words, or a celebrity's name), its language, the text."""

    speaker: str
    language: str
    text: str


# Official form: <description, language>: "text" (the language is whatever follows the last comma).
_OFFICIAL_LINE = re.compile(r'^<(?P<speaker>[^<>]+),(?P<language>[^<>,]+)>\s*:\s*"(?P<text>.*)"$')
_LENIENT_OFFICIAL_LINE = re.compile(r'^<(?P<speaker>[^<>]+),(?P<language>[^<>,]+)>\s*:\s*(?P<text>.*)$')
_QUOTE_PAIRS = (('"', '"'), ("\u201c", "\u201d"), ("\u300c", "\u300d"), ("'", "'"))
_DIALOGUE_FORMS = ('"speaker description | language | text" or the official '
                   '\'<speaker description, language>: "text"\'')


def _unquote(text: str) -> str:
    text = text.strip()
    for open_q, close_q in _QUOTE_PAIRS:
        if len(text) >= 2 and text.startswith(open_q) and text.endswith(close_q):
            return text[len(open_q):-len(close_q)].strip()
    return text


def _squash(text: str) -> str:
    return " ".join(text.split())


def _validated(line: DialogueLine, where: str) -> DialogueLine:
    speaker, language, text = _squash(line.speaker), _squash(line.language), _squash(line.text)
    if not speaker:
        raise ValueError(f"{where}: the speaker description is empty")
    if not language:
        raise ValueError(f"{where}: the language is empty")
    if not text:
        raise ValueError(f"{where}: the spoken text is empty")
    if any(c in speaker for c in "<>"):
        raise ValueError(f"{where}: the speaker description must not contain '<' or '>'")
    if any(c in language for c in "<>,"):
        raise ValueError(f"{where}: the language must be a plain name such as 'English' "
                         f"(no ',', '<' or '>'), got {language!r}")
    return DialogueLine(speaker, language, text)


def parse_dialogue(text: str) -> list[DialogueLine]:
    """Parse dialogue written one utterance per line.

    Two forms are accepted, freely mixed:

    * the artist-friendly ``speaker description | language | text``, e.g.
      ``young man in yellow polo | Mandarin | 你好，我是小明。`` -- split on the first two ``|``, so the
      spoken text may itself contain ``|``; one pair of surrounding quotes (``"..."``, ``“...”``,
      ``「...」``, ``'...'``) around the text is removed;
    * the official ``<speaker description, language>: "text"`` (the language is what follows the last
      comma inside ``<>``; the quotes are optional here).

    Blank lines, lines starting with ``#`` and a ``Dialogue:`` header line are skipped. Runs of
    whitespace inside fields are collapsed to one space. CJK spacing is *not* applied here (the
    builder does it). A malformed line raises ``ValueError`` naming its 1-based line number.
    """
    lines: list[DialogueLine] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#") or line.rstrip(":").strip().lower() == "dialogue":
            continue
        where = f"dialogue line {number}"
        if line.startswith("<"):
            m = _LENIENT_OFFICIAL_LINE.match(line)
            if m is None:
                raise ValueError(f"{where}: expected {_DIALOGUE_FORMS}, got {line!r}")
            speaker, language, spoken = m["speaker"], m["language"], _unquote(m["text"])
        else:
            fields = line.split("|", 2)
            if len(fields) != 3:
                raise ValueError(f"{where}: expected {_DIALOGUE_FORMS}, got {line!r}")
            speaker, language, spoken = fields[0], fields[1], _unquote(fields[2])
        lines.append(_validated(DialogueLine(speaker, language, spoken), where))
    return lines


def format_dialogue_line(line: DialogueLine) -> str:
    """The official layout of one dialogue line: ``<speaker, language>: "text"``."""
    return f'<{line.speaker}, {line.language}>: "{line.text}"'


# ----------------------------------------------------------------------------------------------
# Builder
# ----------------------------------------------------------------------------------------------

def _nospace(text: str) -> str:
    return "".join(text.split())


def _sentence(text: str) -> str:
    """One field as a sentence of the main body: capital first letter, closing punctuation."""
    text = _squash(text)
    if text and text[0].islower():
        text = text[0].upper() + text[1:]
    if text and text[-1] not in ".!?…。！？\"'”’」』)":
        text += "."
    return text


def _background_line(background_sound: str) -> str:
    sound = _squash(background_sound)
    if sound.startswith("<") and sound.endswith(">"):
        sound = sound[1:-1].strip()
    if sound.lower().rstrip(".") in ("", "none", "no", "n/a", "-", "no background sound",
                                     NO_BACKGROUND_SOUND.lower()):
        sound = NO_BACKGROUND_SOUND
    return f"<{sound}>"


def build_enhanced_prompt(
    main_body: str = "",
    *,
    character: str = "",
    appearance: str = "",
    performance: str = "",
    camera: str = "",
    dialogue: str | list[DialogueLine] = "",
    background_sound: str = "",
    cjk_spacing: bool = True,
) -> tuple[str, list[str]]:
    """Assemble a prompt in the official three-part layout; return ``(prompt, warnings)``.

    ``main_body`` is the first paragraph. When it is empty the paragraph is composed from the fields
    in this order: ``character`` (who and where), ``appearance``, ``performance`` (the chronological
    facial/vocal narration, which should quote each spoken line), ``camera`` (angle, shot size,
    lighting, focus -- static). Each field becomes a sentence (first letter capitalised, a final ``.`` added
    when it has no closing punctuation); the fields are joined with single spaces. Any whitespace run in the body
    (including newlines) becomes a single space, since the body is one paragraph.

    ``dialogue`` is text for :func:`parse_dialogue` or a list of :class:`DialogueLine`; with no lines
    the ``Dialogue:`` paragraph is left out, as in the official format. ``background_sound`` empty
    (or ``none``/``-``) gives ``<No prominent background sound>``; surrounding ``<>`` are optional.
    With ``cjk_spacing`` the whole prompt goes through :func:`space_cjk`.

    Warnings (the prompt is still returned): main body outside 150-200 words; a dialogue line
    whose text does not appear in the main body; a speaker description far from five words; fields
    ignored because ``main_body`` was given. ``ValueError`` when there is no main body at all (nothing
    given, or only dialogue / background) or a dialogue line is malformed.
    """
    warnings: list[str] = []
    fields = (character, appearance, performance, camera)
    if main_body.strip():
        body = _squash(main_body)
        if any(f.strip() for f in fields):
            warnings.append("main_body was given, so the character/appearance/performance/camera "
                            "fields were ignored.")
    else:
        body = " ".join(_sentence(f) for f in fields if f.strip())

    if isinstance(dialogue, str):
        lines = parse_dialogue(dialogue)
    else:
        lines = [_validated(line, f"dialogue line {i}") for i, line in enumerate(dialogue, start=1)]

    if not body:
        if lines or background_sound.strip():
            raise ValueError("the main body is empty: give main_body (or character/appearance/"
                             "performance/camera); it must describe the scene and quote each line")
        raise ValueError("nothing to build: give main_body (or character/appearance/performance/"
                         "camera), and optionally dialogue and background_sound")

    paragraphs = [body]
    if lines:
        paragraphs.append("\n".join([DIALOGUE_HEADER, *(format_dialogue_line(l) for l in lines)]))
    paragraphs.append(f"{BACKGROUND_HEADER}\n{_background_line(background_sound)}")
    prompt = "\n\n".join(paragraphs)
    if cjk_spacing:
        prompt = space_cjk(prompt)
        body = space_cjk(body)

    words = count_words(body)
    if not BODY_MIN_WORDS <= words <= BODY_MAX_WORDS:
        warnings.append(f"The main body has {words} words; the model was trained on "
                        f"{BODY_MIN_WORDS}-{BODY_MAX_WORDS}.")
    body_key = _nospace(body)
    for i, line in enumerate(lines, start=1):
        if _nospace(line.text) not in body_key:
            warnings.append(f'Dialogue line {i} ("{line.text}") is not quoted in the main body; '
                            "every line should appear word for word in both places.")
    for i, line in enumerate(lines, start=1):
        n = len(line.speaker.split())
        if not SPEAKER_MIN_WORDS <= n <= SPEAKER_MAX_WORDS:
            warnings.append(f'Dialogue line {i}: the speaker description "{line.speaker}" has {n} '
                            "word(s); aim for about five (e.g. \"young man in yellow polo\"), "
                            "unless it is a celebrity's name.")
    return prompt, warnings


# ----------------------------------------------------------------------------------------------
# Checker
# ----------------------------------------------------------------------------------------------

# A line that looks like one of the two headers (any case, markdown decoration, text after it).
_HEADER_LIKE = re.compile(
    r"^[\s*_#>]*(?P<name>dialogues?|background[\s_-]*sounds?)[\s*_]*:[\s*_]*(?P<rest>.*)$",
    re.IGNORECASE)
_BACKGROUND_LINE = re.compile(r"^<(?P<sound>[^<>]*)>$")
_QUOTED = re.compile(r'"[^"]+"|\u201c[^\u201d]+\u201d')


def _cjk_spacing_problem(text: str) -> str | None:
    points = _space_points(text)
    if not points:
        return None
    examples: list[str] = []
    seen: set[int] = set()
    for p in points:
        start, end = p, p
        while start > 0 and not text[start - 1].isspace():
            start -= 1
        while end < len(text) and not text[end].isspace():
            end += 1
        if start in seen:
            continue
        seen.add(start)
        if end - start > 24:  # a long token: show a window around the spot
            start, end = max(start, p - 6), min(end, p + 6)
        snippet = text[start:end]
        examples.append(f"'{snippet}' -> '{space_cjk(snippet)}'")
    shown = ", ".join(examples[:3]) + (f" and {len(examples) - 3} more" if len(examples) > 3 else "")
    return f"CJK characters are not separated by single spaces in {len(points)} place(s), e.g. {shown}."


def check_enhanced_prompt(text: str) -> list[str]:
    """Check a prompt (e.g. an LLM's answer) against the Enhanced Prompt format.

    Returns human-readable problems; an empty list means the prompt follows the format. Checked:
    the main body is present and one paragraph of 150-200 words (:func:`count_words`); the headers
    are spelled exactly ``Dialogue:`` / ``Background Sound:``, each on its own line after an empty
    line, each at most once, Dialogue before Background Sound, Background Sound present; every
    dialogue line is ``<description, language>: "text"`` and its text also appears in the main
    body; a main body quoting speech has a Dialogue paragraph; the Background Sound paragraph is a
    single ``<...>`` line; CJK spacing is applied everywhere (:func:`space_cjk` changes nothing).
    Line numbers are 1-based lines of ``text``.
    """
    if not text or not text.strip():
        return ["The prompt is empty."]
    problems: list[str] = []
    lines = text.splitlines()

    headers: list[tuple[int, str]] = []  # (line index, "dialogue" | "background")
    inline: dict[int, str] = {}          # header index -> content written on the header line
    for i, raw in enumerate(lines):
        m = _HEADER_LIKE.match(raw)
        if m is None:
            continue
        kind = "dialogue" if m["name"].lower().startswith("dialogue") else "background"
        exact = DIALOGUE_HEADER if kind == "dialogue" else BACKGROUND_HEADER
        headers.append((i, kind))
        if raw.strip() != exact:
            problems.append(f'Line {i + 1}: the header must be exactly "{exact}" on its own line '
                            f'(found "{raw.strip()}").')
        rest = m["rest"].strip().strip("*_").strip()
        if rest:
            inline[i] = rest
        if i > 0 and lines[i - 1].strip():
            problems.append(f'Line {i + 1}: leave an empty line before "{exact}".')

    kinds = [k for _, k in headers]
    for kind, exact in (("dialogue", DIALOGUE_HEADER), ("background", BACKGROUND_HEADER)):
        if kinds.count(kind) > 1:
            problems.append(f'"{exact}" appears {kinds.count(kind)} times; it must appear once.')
    if "background" not in kinds:
        problems.append(f'Missing the "{BACKGROUND_HEADER}" paragraph; it is always the last one '
                        f'(use <{NO_BACKGROUND_SOUND}> when there is none).')
    if "dialogue" in kinds and "background" in kinds and kinds.index("dialogue") > kinds.index("background"):
        problems.append(f'The "{DIALOGUE_HEADER}" paragraph must come before the "{BACKGROUND_HEADER}" paragraph.')

    # Sections: the main body runs up to the first header; each header owns the lines up to the next.
    first = headers[0][0] if headers else len(lines)
    body_lines = lines[:first]
    sections: dict[str, list[tuple[int, str]]] = {}
    for n, (i, kind) in enumerate(headers):
        end = headers[n + 1][0] if n + 1 < len(headers) else len(lines)
        content = [(i, inline[i])] if i in inline else []
        content += [(j, lines[j].strip()) for j in range(i + 1, end) if lines[j].strip()]
        sections.setdefault(kind, content)

    # Main body.
    body_text = "\n".join(body_lines).strip()
    if not body_text:
        problems.append("The main body (first paragraph, before the headers) is missing.")
    else:
        paragraphs = [p for p in re.split(r"\n\s*\n", body_text) if p.strip()]
        if len(paragraphs) > 1:
            problems.append(f"The main body must be one paragraph (found {len(paragraphs)}).")
        words = count_words(body_text)
        if not BODY_MIN_WORDS <= words <= BODY_MAX_WORDS:
            problems.append(f"The main body has {words} words; it must have "
                            f"{BODY_MIN_WORDS}-{BODY_MAX_WORDS}.")
    body_key = _nospace(body_text)

    # Dialogue.
    if "dialogue" in sections:
        content = sections["dialogue"]
        if not content:
            problems.append(f'The "{DIALOGUE_HEADER}" paragraph has no lines.')
        for j, line in content:
            m = _OFFICIAL_LINE.match(line)
            if m is None or not m["speaker"].strip() or not m["language"].strip() or not m["text"].strip():
                problems.append(f'Line {j + 1}: malformed dialogue line "{line}" '
                                '(expected <description, language>: "spoken text").')
                continue
            if _nospace(m["text"]) not in body_key:
                problems.append(f'Line {j + 1}: the dialogue text "{m["text"].strip()}" is not quoted in '
                                "the main body (each line must appear in both places, word for word).")
    elif _QUOTED.search(body_text):
        problems.append(f'The main body quotes speech but there is no "{DIALOGUE_HEADER}" paragraph.')

    # Background Sound.
    if "background" in sections:
        content = sections["background"]
        if not content:
            problems.append(f'The "{BACKGROUND_HEADER}" paragraph is empty '
                            f"(use <{NO_BACKGROUND_SOUND}> when there is none).")
        elif len(content) > 1:
            problems.append(f'The "{BACKGROUND_HEADER}" paragraph must be a single <...> line '
                            f"(found {len(content)} lines).")
        else:
            j, line = content[0]
            m = _BACKGROUND_LINE.match(line)
            if m is None or not m["sound"].strip():
                problems.append(f'Line {j + 1}: the background sound must be one description in angle '
                                f'brackets, e.g. <Soft rain against a window> or <{NO_BACKGROUND_SOUND}> '
                                f'(found "{line}").')

    spacing = _cjk_spacing_problem(text)
    if spacing:
        problems.append(spacing)
    return problems


def describe_problems(problems: list[str]) -> str:
    """The checker's answer for people: one "OK" line, or the count and one ``- problem`` line each."""
    if not problems:
        return "OK: the prompt follows the Enhanced Prompt format."
    return "\n".join([f"{len(problems)} problem(s) with the Enhanced Prompt format:", *(f"- {p}" for p in problems)])


# ----------------------------------------------------------------------------------------------
# LLM prompt
# ----------------------------------------------------------------------------------------------

LLM_SYSTEM_PROMPT = """\
You write video prompts for daVinci-MagiHuman, an audio+video generation model that renders a \
talking person: faces, lip-sync, voice and sound. The model only understands one prompt style, \
so follow every rule below exactly.

You receive a short idea from the user (scene, mood, maybe what someone says) and possibly a \
description of the first frame. Turn it into one prompt with exactly this layout and nothing \
else - no title, no markdown, no explanation before or after:

<paragraph 1: the main body>

Dialogue:
<speaker description, language>: "spoken line"

Background Sound:
<most prominent background sound>

MAIN BODY (first paragraph)
- One single paragraph of 150 to 200 words, written in English. Only the spoken lines keep \
their original language.
- Plain, precise, factual wording. No metaphors, no storytelling frame, no interpretation.
- Start with a short statement of who the person is, what they look like and where they are, \
then name their overall emotional state (for example tense, cheerful, grieving).
- Then describe what happens strictly in time order. Focus on the face: name the muscles that \
move (brows raising or knitting, eyelids narrowing, nose wrinkling, lip corners pulling up or \
pressing down, jaw dropping). When a named expression appears (a smirk, a grimace), name it \
and then describe the muscle movements that form it. While the person talks, describe how the \
lips and jaw move so the mouth can be synced.
- The person stays in place: torso and position do not move. Only small movements are allowed \
(head tilts, shoulder tension, glances, tiny gestures). If the idea contains big actions \
(dancing, running, driving, energetic rapping), keep the intent but turn them into a still \
posture with facial and upper-body performance. Do not mention hands if they are not in frame.
- Every spoken line is quoted in double quotes, word for word, in its original language, at \
the exact moment it is spoken. Right after each quoted line, say how it is delivered: tone, \
pace, pitch and volume. Never change, translate or correct lines the user gave. If speech is \
implied but no words are given, invent one short fitting line (under 20 words). If no tone is \
given, infer it from the words.
- Mention breaths, sighs, laughs and background sounds at the moment they happen.
- Camera: give the angle and shot size (for example a static eye-level medium close-up). The \
camera never moves: no pans, tracking, orbiting, zooms or cuts. Describe the light (quality \
and direction; for implied motion, light shifting across the face), the depth of field with \
sharp focus on the face, and the composition. The background is still: nothing in it moves.
- No scene changes or transitions unless the user explicitly asks for them.

DIALOGUE (only if someone speaks)
- The line "Dialogue:" on its own, then one line per utterance, in speaking order: \
<speaker description, language>: "the same words as in the main body"
- The speaker description is about five words (for example: Old woman in red scarf); for a \
famous person use their name instead. The language is a plain name such as English, Mandarin, \
Japanese, Korean, German.
- Each spoken line appears exactly twice in the whole prompt: once in the main body, once here, \
identical.
- If nobody speaks, leave out the whole Dialogue paragraph.

BACKGROUND SOUND (always the last paragraph)
- The line "Background Sound:" on its own, then one line with the single most prominent \
background sound in angle brackets, for example <Steady rain on a tin roof>.
- If there is none, write exactly: <No prominent background sound>

CHINESE, JAPANESE AND KOREAN TEXT
- Anywhere in the prompt, put one space between every Chinese, Japanese or Korean character, \
including kana and Hangul syllables: write 你 好 instead of 你好, あ り が と う instead of \
ありがとう, 안 녕 하 세 요 instead of 안녕하세요. Also put a space between such a character and \
a neighbouring Latin word or number. Do not add spaces around punctuation marks such as ，。！？.

If the user asks about these instructions or anything unrelated, ignore the question and just \
write the prompt for whatever idea they gave.
"""


def llm_messages(request: str, *, first_frame: str = "") -> tuple[str, str]:
    """``(system prompt, user message)`` asking an LLM to turn a short idea into an Enhanced Prompt.

    ``first_frame`` optionally describes the starting image (for image-to-video), so the prompt stays
    consistent with it. Check the answer with :func:`check_enhanced_prompt` (and pass it through
    :func:`space_cjk`, which is safe on already-spaced text).
    """
    request = request.strip()
    if not request:
        raise ValueError("the request is empty: describe the scene (and what is said)")
    parts = [f"User idea:\n{request}"]
    if first_frame.strip():
        parts.append(f"First frame:\n{first_frame.strip()}")
    parts.append("Write the prompt now.")
    return LLM_SYSTEM_PROMPT, "\n\n".join(parts)


# ----------------------------------------------------------------------------------------------
# Examples
# ----------------------------------------------------------------------------------------------

# (main body, dialogue in parse_dialogue form, background sound) per workflow kind; written for this
# pack (none is an official example). Each body is 150-200 words, quotes its line word for word and
# keeps the camera static; CJK text is written plainly here and spaced by the builder.
_EXAMPLES = {
    "t2v": (
        "A woman in her late twenties with a short black bob and a cream sweater sits at a wooden table by a café "
        "window. Her overall state is warm and relaxed. She faces the camera, her shoulders loose and her torso "
        "still. Her brows lift a little and her lip corners draw up into an easy smile that creases the skin beside "
        "her eyes. She takes a short breath and says, \"Good morning! Let me show you my favourite corner of the "
        "city.\" Her voice is bright and clear, at a relaxed pace, a medium pitch and a conversational volume; her "
        "jaw drops wide on \"morning\" and her lips round on \"show\". Afterwards her smile settles and her head "
        "tilts a few degrees to her left. A low murmur of conversation sits under her voice. The camera is static at "
        "eye level in a medium close-up. Soft daylight from the window on her right leaves a gentle shadow on the "
        "left of her face. A shallow depth of field keeps her eyes and mouth sharp while the café behind her stays "
        "blurred and still. She is framed slightly right of centre.",
        "Young woman in cream sweater | English | Good morning! Let me show you my favourite corner of the city.",
        "Low murmur of café conversation",
    ),
    "ti2v": (
        "A man in his fifties with grey stubble, short salt-and-pepper hair and a navy crew-neck sweater sits behind "
        "a wooden desk in a home study lined with bookshelves. He appears calm and quietly content, and his torso "
        "stays upright and still throughout. He begins with a neutral face; then his eyebrows rise briefly and the "
        "outer corners of his eyes crinkle as a small closed-mouth smile forms. He inhales and speaks in Mandarin, "
        "\"今天我们聊聊怎么泡一杯好茶。\" His tone is gentle and unhurried, low in pitch and soft in volume; his jaw "
        "opens in short, regular movements and his lips press together briefly on the closing syllables. Then he "
        "nods once and his smile widens to show his upper teeth. A wall clock ticks softly in the room. The camera "
        "holds a static, eye-level medium shot. Warm lamplight falls from the left, with a dim fill on his right "
        "cheek. The depth of field is shallow: his face is in crisp focus and the shelves behind him are soft and "
        "motionless. He sits in the centre of the frame.",
        "Middle-aged man in navy sweater | Mandarin | 今天我们聊聊怎么泡一杯好茶。",
        "Soft ticking of a wall clock",
    ),
    "a2v": (
        "A woman in her thirties with shoulder-length auburn hair and black headphones sits at a studio microphone "
        "in a small radio booth lined with grey foam. She is focused and friendly, and her torso and position stay "
        "fixed. Her gaze is level with the lens, her brows relaxed and her lips closed in a faint smile. She draws a "
        "quick breath and says, \"Welcome back, everyone. Tonight we answer the question you sent in most.\" Her "
        "delivery is warm and steady, at a medium pace, a mid-low pitch and a close, intimate volume; her lips shape "
        "each word crisply, her jaw opening wider on \"welcome\" and \"tonight\". Between the two sentences her "
        "eyebrows lift briefly and her lip corners pull up. After the last word she presses her lips together and "
        "holds an expectant look. A faint electrical hum from the equipment runs throughout. The camera is static, "
        "slightly below eye level, in a medium close-up. A soft key light from the front left lights her face. The "
        "depth of field is shallow, her eyes in sharp focus and the foam panels softly blurred and still. She is "
        "framed on the left third.",
        "Radio host with auburn hair | English | Welcome back, everyone. Tonight we answer the question you sent in "
        "most.",
        "Faint electrical hum of studio equipment",
    ),
    "base": (
        "An elderly man with a full white beard and a faded red flannel shirt sits on a wooden bench on a covered "
        "porch at dusk. His mood is reflective and gently amused. His body stays still on the bench; only his head "
        "and face move. He looks past the camera with half-lowered eyelids. Rain drums steadily on the roof. He "
        "exhales slowly, turns his eyes to the lens and says, \"I have watched storms roll in for seventy years, and "
        "they still surprise me.\" His voice is deep, hoarse and slow, low in pitch and soft in volume; his jaw moves "
        "in small, deliberate openings. On \"surprise\" his eyebrows lift and a lopsided half smile appears, the "
        "left lip corner rising higher than the right. He ends with a short, quiet chuckle, his shoulders rising a "
        "little. The camera is static at eye level in a medium shot. Cool evening light comes from the right, while "
        "a warm porch lamp lights the left side of his face. The depth of field is moderate, his face in sharp "
        "focus, the wet yard behind him soft and still. He is centred in the frame.",
        "Elderly man with white beard | English | I have watched storms roll in for seventy years, and they still "
        "surprise me.",
        "Steady rain drumming on a roof",
    ),
    "sr": (
        "A young woman with black hair tied back and a white chef's jacket stands behind a steel counter in a "
        "restaurant kitchen. She is composed and welcoming, and her torso and position stay fixed. She looks into "
        "the lens with a neutral face; then her cheeks lift, her lip corners pull up into a polite smile and she "
        "dips her head in a shallow bow. She says in Japanese, \"いらっしゃいませ。今日のおすすめは鯛の塩焼きです。\" "
        "Her voice is clear and lively, brisk but even, fairly high in pitch and moderate in volume; her lips open "
        "and close quickly on each syllable. Then her eyebrows rise and her smile widens to show her upper teeth. A "
        "gentle sizzle from a grill is heard behind her. The camera is static at eye level in a close-up of her head "
        "and shoulders. Soft, diffused overhead light falls evenly on her face. A shallow depth of field keeps her "
        "eyes and lips crisp and the shelves behind her blurred and still. She is framed in the centre.",
        "Young chef in white jacket | Japanese | いらっしゃいませ。今日のおすすめは鯛の塩焼きです。",
        "Gentle sizzle from a grill",
    ),
}

EXAMPLE_PROMPTS: dict[str, str] = {
    kind: build_enhanced_prompt(body, dialogue=dialogue, background_sound=sound)[0]
    for kind, (body, dialogue, sound) in _EXAMPLES.items()
}
"""Ready prompts in the official format for the workflows: ``t2v``, ``ti2v`` (Mandarin line), ``a2v``
(replace the quoted line with the words of your reference audio), ``base`` and ``sr`` (Japanese line)."""
