"""Enhanced Prompt helpers (magihuman/prompts.py): CJK spacing, dialogue parsing, builder, checker."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from magihuman.prompts import (
    BODY_MAX_WORDS,
    BODY_MIN_WORDS,
    EXAMPLE_PROMPTS,
    LLM_SYSTEM_PROMPT,
    DialogueLine,
    build_enhanced_prompt,
    check_enhanced_prompt,
    count_words,
    describe_problems,
    llm_messages,
    parse_dialogue,
    space_cjk,
)

# ------------------------------------------------------------------------------------------------
# space_cjk
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    # Chinese: every Han character its own unit; punctuation (，。！？) gets no space.
    ("你好", "你 好"),
    ("你好，世界！", "你 好，世 界！"),
    ("他说：“我们走吧。”", "他 说：“我 们 走 吧。”"),
    ("𠀀𠀁丂", "𠀀 𠀁 丂"),                       # Extension B + basic block
    ("人々〇", "人 々 〇"),                         # iteration mark, ideographic zero
    ("ㄅㄆㄇ", "ㄅ ㄆ ㄇ"),                        # bopomofo
    # Japanese: kanji, hiragana, katakana, prolonged sound mark, 「」 and ・ untouched.
    ("東京タワーへ行きました。", "東 京 タ ワ ー へ 行 き ま し た。"),
    ("「こんにちは」と言った", "「こ ん に ち は」と 言 っ た"),
    ("コーヒー・ミルク", "コ ー ヒ ー・ミ ル ク"),
    ("ｶﾞｷｰ", "ｶﾞ ｷ ｰ"),                            # halfwidth: voiced mark stays attached
    ("か\u3099き", "か\u3099 き"),                 # combining voiced mark stays attached
    # Korean: syllables, compatibility jamo, conjoining jamo kept together as syllables.
    ("안녕하세요, 반갑습니다.", "안 녕 하 세 요, 반 갑 습 니 다."),
    ("ㅋㅋㅋ", "ㅋ ㅋ ㅋ"),
    ("\u1100\u1161\u11a8\u1100\u1161", "\u1100\u1161\u11a8 \u1100\u1161"),
    # Mixed with Latin words and digits: CJK characters are split off, Latin words/numbers stay whole.
    ("我在Berlin说Guten Tag!", "我 在 Berlin 说 Guten Tag!"),
    ("Das heißt 你好 auf Chinesisch.", "Das heißt 你 好 auf Chinesisch."),
    ("我用iPhone拍的", "我 用 iPhone 拍 的"),
    ("2024年3月15日", "2024 年 3 月 15 日"),
    ("第１名", "第 １ 名"),                          # fullwidth digit counts as a digit
    ("OK입니다", "OK 입 니 다"),
    ("Schöne Grüße aus 東京", "Schöne Grüße aus 東 京"),
    # Emoji and symbols: no space added.
    ("好😀好", "好😀好"),
    ("你好👍🏽!", "你 好👍🏽!"),
    ("价格：100%好", "价 格：100%好"),
    # Existing whitespace kept as is, never doubled.
    ("你 好", "你 好"),
    ("你  好", "你  好"),
    ("你\n好\t吗", "你\n好\t吗"),
    (" 나 비 번 알 아 .", " 나 비 번 알 아 ."),
    ("", ""),
])
def test_space_cjk_exact(text, expected):
    assert space_cjk(text) == expected
    assert space_cjk(expected) == expected


@pytest.mark.parametrize("text", [
    "Hello, world!",
    "Guten Morgen, mein Schatz — der Kaffee ist fertig. Straße, Grüße, Äpfel.",
    "Version 3.14, 100% sure; e-mail: a@b.c; emoji 😀👍🏽 and symbols ★→",
    "Привет, мир. Γειά σου. مرحبا",
    "  leading and trailing  \n\n  whitespace  ",
])
def test_space_cjk_leaves_non_cjk_text_unchanged(text):
    assert space_cjk(text) == text


_MIXED = st.text(
    alphabet=st.sampled_from(list("你好世界東京タワーこんにちはｶﾞｷ안녕ㅋ\u1100\u1161\u11a8\u3099"
                                  "abcÄß019１ ，。！、「」・.,!?\n\t😀👍\u200d\ufe0f")),
    max_size=40)


@settings(max_examples=300, deadline=None)
@given(_MIXED)
def test_space_cjk_idempotent_and_only_adds_single_spaces(text):
    once = space_cjk(text)
    assert space_cjk(once) == once
    assert once.replace(" ", "") == text.replace(" ", "")        # only spaces are added
    assert once.count("  ") == text.count("  ")                  # never creates a double space


def test_count_words():
    assert count_words('He says, "你 好，世 界。" — quietly.') == 7
    assert count_words("") == 0


# ------------------------------------------------------------------------------------------------
# parse_dialogue
# ------------------------------------------------------------------------------------------------

def test_parse_dialogue_both_forms():
    text = """
    # comment lines and blank lines are skipped
    Dialogue:
    young man in yellow polo | Mandarin | 你好，我是小明。
    Woman in dark coat|Korean|"나비번알아"
    <Man in green shirt, German>: "Guten Morgen, mein  Schatz."
    <Old sailor, grey beard, English>: “Aye | aye.”
    Narrator | English | a | b
    """
    assert parse_dialogue(text) == [
        DialogueLine("young man in yellow polo", "Mandarin", "你好，我是小明。"),
        DialogueLine("Woman in dark coat", "Korean", "나비번알아"),
        DialogueLine("Man in green shirt", "German", "Guten Morgen, mein Schatz."),
        DialogueLine("Old sailor, grey beard", "English", "Aye | aye."),
        DialogueLine("Narrator", "English", "a | b"),
    ]
    assert parse_dialogue("") == []


@pytest.mark.parametrize("text, message", [
    ("a | English | hi\njust some words", r"^dialogue line 2: expected .*'just some words'"),
    ("man | hi", r"^dialogue line 1: expected "),
    ("\n\n<man without language>: \"hi\"", r"^dialogue line 3: expected "),
    ("man | English | hi\n | English | hi", r"^dialogue line 2: the speaker description is empty$"),
    ("man |  | hi", r"^dialogue line 1: the language is empty$"),
    ("man | English | \"\"", r"^dialogue line 1: the spoken text is empty$"),
    ("<man, English>: ", r"^dialogue line 1: the spoken text is empty$"),
])
def test_parse_dialogue_errors_name_the_line(text, message):
    with pytest.raises(ValueError, match=message):
        parse_dialogue(text)


# ------------------------------------------------------------------------------------------------
# build_enhanced_prompt
# ------------------------------------------------------------------------------------------------

GERMAN_BODY = (
    "A middle-aged woman with short grey hair and round glasses, wearing a navy cardigan over a white "
    "blouse, sits at a wooden kitchen table in a warm, softly lit room. Her overall disposition is calm "
    "and affectionate. Her torso and position remain fixed throughout. She first lowers her gaze to a "
    "ceramic mug in front of her, the corners of her lips lifting slightly into a gentle smile while the "
    "skin around her eyes creases. She then raises her eyes toward the camera, her inner brows lifting a "
    "little as she inhales softly through her nose. Her jaw opens in small, even movements and her lips "
    "round and widen clearly with each syllable as she says, \"Guten Morgen, mein Schatz, der Kaffee ist "
    "fertig.\" She speaks in a warm, unhurried, mid-pitched voice at a quiet conversational volume. After "
    "the line she closes her lips, holds the smile, and tilts her head a few degrees to the left. The "
    "camera holds a static eye-level medium close-up. Soft window light falls from the left, the depth of "
    "field is shallow with sharp focus on her face, and she is centered in the frame against a still, "
    "blurred background."
)
GERMAN_PROMPT = (
    GERMAN_BODY + "\n\n"
    "Dialogue:\n"
    "<Woman in navy cardigan, German>: \"Guten Morgen, mein Schatz, der Kaffee ist fertig.\"\n\n"
    "Background Sound:\n"
    "<A kettle softly simmering on a stove>"
)
MANDARIN_BODY = GERMAN_BODY.replace("Guten Morgen, mein Schatz, der Kaffee ist fertig.",
                                    "早 上 好，咖 啡 好 了。")
MANDARIN_PROMPT = (
    MANDARIN_BODY + "\n\n"
    "Dialogue:\n"
    "<Woman in navy cardigan, Mandarin>: \"早 上 好，咖 啡 好 了。\"\n\n"
    "Background Sound:\n"
    "<No prominent background sound>"
)


def test_build_main_body_german_no_warnings():
    # Newlines in the body are folded into the single paragraph; <> around the sound are optional.
    body = GERMAN_BODY.replace(" Her overall", "\nHer overall")
    prompt, warnings = build_enhanced_prompt(
        body, dialogue="Woman in navy cardigan | German | Guten Morgen, mein Schatz, der Kaffee ist fertig.",
        background_sound="<A kettle softly simmering on a stove>")
    assert prompt == GERMAN_PROMPT
    assert warnings == []
    assert check_enhanced_prompt(prompt) == []


def test_build_mandarin_dialogue_is_spaced_everywhere():
    unspaced_body = MANDARIN_BODY.replace("早 上 好，咖 啡 好 了。", "早上好，咖啡好了。")
    prompt, warnings = build_enhanced_prompt(
        unspaced_body, dialogue=[DialogueLine("Woman in navy cardigan", "Mandarin", "早上好，咖啡好了。")])
    assert prompt == MANDARIN_PROMPT
    assert warnings == []
    assert check_enhanced_prompt(prompt) == []
    # Without spacing the text is kept as written.
    raw, _ = build_enhanced_prompt(
        unspaced_body, dialogue=[DialogueLine("Woman in navy cardigan", "Mandarin", "早上好，咖啡好了。")],
        cjk_spacing=False)
    assert raw == MANDARIN_PROMPT.replace("早 上 好，咖 啡 好 了。", "早上好，咖啡好了。")


def test_build_from_fields_with_warnings():
    prompt, warnings = build_enhanced_prompt(
        character="A young woman sits on a park bench at dusk",
        appearance="She has long black hair and wears a red wool coat",
        performance='Her lip corners lift as she says, "你好，我叫小林。" in a bright, quick voice',
        camera="Static eye-level close-up, soft warm light, shallow depth of field.",
        dialogue="Young woman in red coat | Mandarin | 你好，我叫小林。\nGirl | Japanese | ありがとう",
        background_sound="none",
    )
    assert prompt == (
        "A young woman sits on a park bench at dusk. She has long black hair and wears a red wool coat. "
        "Her lip corners lift as she says, \"你 好，我 叫 小 林。\" in a bright, quick voice. "
        "Static eye-level close-up, soft warm light, shallow depth of field.\n\n"
        "Dialogue:\n"
        "<Young woman in red coat, Mandarin>: \"你 好，我 叫 小 林。\"\n"
        "<Girl, Japanese>: \"あ り が と う\"\n\n"
        "Background Sound:\n"
        "<No prominent background sound>"
    )
    assert warnings == [
        "The main body has 49 words; the model was trained on 150-200.",
        'Dialogue line 2 ("ありがとう") is not quoted in the main body; every line should appear word '
        "for word in both places.",
        'Dialogue line 2: the speaker description "Girl" has 1 word(s); aim for about five '
        '(e.g. "young man in yellow polo"), unless it is a celebrity\'s name.',
    ]


def test_build_without_dialogue_and_ignored_fields():
    prompt, warnings = build_enhanced_prompt("A man sits still.", camera="close-up", background_sound="Rain")
    assert prompt == "A man sits still.\n\nBackground Sound:\n<Rain>"
    assert warnings == [
        "main_body was given, so the character/appearance/performance/camera fields were ignored.",
        "The main body has 4 words; the model was trained on 150-200.",
    ]


def test_build_errors():
    with pytest.raises(ValueError, match="nothing to build"):
        build_enhanced_prompt()
    with pytest.raises(ValueError, match="nothing to build"):
        build_enhanced_prompt("   \n ", character=" ")
    with pytest.raises(ValueError, match="the main body is empty"):
        build_enhanced_prompt(dialogue="man | English | hi")
    with pytest.raises(ValueError, match="dialogue line 1: expected"):
        build_enhanced_prompt("A man.", dialogue="hi there")
    with pytest.raises(ValueError, match="dialogue line 2: the language must be a plain name"):
        build_enhanced_prompt("A man.", dialogue=[DialogueLine("a b c", "English", "hi"),
                                                  DialogueLine("a b c", "English, US", "hi")])


# ------------------------------------------------------------------------------------------------
# check_enhanced_prompt
# ------------------------------------------------------------------------------------------------

def test_check_accepts_correct_prompts():
    assert check_enhanced_prompt(GERMAN_PROMPT) == []
    assert check_enhanced_prompt(MANDARIN_PROMPT) == []
    assert check_enhanced_prompt(MANDARIN_PROMPT + "\n") == []
    no_dialogue = GERMAN_BODY.replace('"Guten Morgen, mein Schatz, der Kaffee ist fertig."', "good morning.")
    assert check_enhanced_prompt(no_dialogue + "\n\nBackground Sound:\n<Rain on the window>") == []


def test_check_empty():
    assert check_enhanced_prompt("") == ["The prompt is empty."]
    assert check_enhanced_prompt(" \n\n ") == ["The prompt is empty."]


def test_check_missing_background():
    text = GERMAN_PROMPT.split("\n\nBackground Sound:")[0]
    assert check_enhanced_prompt(text) == [
        'Missing the "Background Sound:" paragraph; it is always the last one '
        "(use <No prominent background sound> when there is none)."]


def test_check_misspelled_headers():
    text = GERMAN_PROMPT.replace("Dialogue:\n", "**Dialogue**:\n").replace("Background Sound:", "Background sound:")
    assert check_enhanced_prompt(text) == [
        'Line 3: the header must be exactly "Dialogue:" on its own line (found "**Dialogue**:").',
        'Line 6: the header must be exactly "Background Sound:" on its own line (found "Background sound:").',
    ]


def test_check_header_with_content_on_same_line():
    text = GERMAN_PROMPT.replace("Background Sound:\n<", "Background Sound: <")
    assert check_enhanced_prompt(text) == [
        'Line 6: the header must be exactly "Background Sound:" on its own line '
        '(found "Background Sound: <A kettle softly simmering on a stove>").']


def test_check_order_and_duplicates():
    body, dialogue, background = GERMAN_PROMPT.split("\n\n")
    assert check_enhanced_prompt("\n\n".join([body, background, dialogue])) == [
        'The "Dialogue:" paragraph must come before the "Background Sound:" paragraph.']
    assert check_enhanced_prompt("\n\n".join([body, dialogue, dialogue, background])) == [
        '"Dialogue:" appears 2 times; it must appear once.']


def test_check_missing_blank_line_and_split_body():
    text = GERMAN_PROMPT.replace("\n\nDialogue:", "\nDialogue:")
    assert check_enhanced_prompt(text) == ['Line 2: leave an empty line before "Dialogue:".']
    text = GERMAN_PROMPT.replace(" Her overall disposition", "\n\nHer overall disposition")
    assert check_enhanced_prompt(text) == ["The main body must be one paragraph (found 2)."]


def test_check_body_missing():
    text = GERMAN_PROMPT[GERMAN_PROMPT.index("Dialogue:"):]
    assert check_enhanced_prompt(text) == [
        "The main body (first paragraph, before the headers) is missing.",
        'Line 2: the dialogue text "Guten Morgen, mein Schatz, der Kaffee ist fertig." is not quoted in the '
        "main body (each line must appear in both places, word for word).",
    ]


@pytest.mark.parametrize("n, problems", [
    (149, ["The main body has 149 words; it must have 150-200."]),
    (150, []),
    (200, []),
    (201, ["The main body has 201 words; it must have 150-200."]),
])
def test_check_word_count(n, problems):
    text = " ".join(["word"] * n) + ".\n\nBackground Sound:\n<No prominent background sound>"
    assert check_enhanced_prompt(text) == problems


def test_check_word_count_counts_each_cjk_character():
    body = " ".join(["word"] * 145) + ' "你好，世界" — "OK吧"'   # 145 + 4 + OK + 吧 = 151
    assert check_enhanced_prompt(body + "\n\nDialogue:\n<a b c, Mandarin>: \"你 好，世 界\"\n"
                                 "<a b c, Mandarin>: \"OK 吧\"\n\nBackground Sound:\n<Rain>") == [
        "CJK characters are not separated by single spaces in 3 place(s), e.g. "
        "'\"你好，世界\"' -> '\"你 好，世 界\"', '\"OK吧\"' -> '\"OK 吧\"'."]


def test_check_malformed_dialogue_lines():
    text = GERMAN_PROMPT.replace(
        '<Woman in navy cardigan, German>: "Guten Morgen, mein Schatz, der Kaffee ist fertig."',
        '<Woman in navy cardigan, German>: "Guten Morgen, mein Schatz, der Kaffee ist fertig."\n'
        'Woman in navy cardigan, German: "Hallo"\n'
        '<Woman in navy cardigan>: "Hallo"\n'
        '<Woman in navy cardigan, German>: Hallo\n'
        '<Woman, German>: ""')
    assert check_enhanced_prompt(text) == [
        'Line 5: malformed dialogue line "Woman in navy cardigan, German: "Hallo"" '
        '(expected <description, language>: "spoken text").',
        'Line 6: malformed dialogue line "<Woman in navy cardigan>: "Hallo"" '
        '(expected <description, language>: "spoken text").',
        'Line 7: malformed dialogue line "<Woman in navy cardigan, German>: Hallo" '
        '(expected <description, language>: "spoken text").',
        'Line 8: malformed dialogue line "<Woman, German>: """ '
        '(expected <description, language>: "spoken text").',
    ]
    empty = GERMAN_PROMPT.replace(
        '\n<Woman in navy cardigan, German>: "Guten Morgen, mein Schatz, der Kaffee ist fertig."', "")
    assert check_enhanced_prompt(empty) == ['The "Dialogue:" paragraph has no lines.']


def test_check_dialogue_not_in_body():
    text = GERMAN_PROMPT.replace('German>: "Guten Morgen', 'German>: "Gute Nacht')
    assert check_enhanced_prompt(text) == [
        'Line 4: the dialogue text "Gute Nacht, mein Schatz, der Kaffee ist fertig." is not quoted in the '
        "main body (each line must appear in both places, word for word)."]


def test_check_quoted_speech_without_dialogue_paragraph():
    body, _, background = GERMAN_PROMPT.split("\n\n")
    assert check_enhanced_prompt(body + "\n\n" + background) == [
        'The main body quotes speech but there is no "Dialogue:" paragraph.']


@pytest.mark.parametrize("line, found", [
    ("A kettle softly simmering on a stove", "A kettle softly simmering on a stove"),
    ("<>", "<>"),
    ("<a> <b>", "<a> <b>"),
])
def test_check_background_line_form(line, found):
    text = GERMAN_PROMPT.replace("<A kettle softly simmering on a stove>", line)
    assert check_enhanced_prompt(text) == [
        "Line 7: the background sound must be one description in angle brackets, e.g. "
        f'<Soft rain against a window> or <No prominent background sound> (found "{found}").']


def test_check_background_empty_or_multiline():
    text = GERMAN_PROMPT.replace("\n<A kettle softly simmering on a stove>", "")
    assert check_enhanced_prompt(text) == [
        'The "Background Sound:" paragraph is empty (use <No prominent background sound> when there is none).']
    text = GERMAN_PROMPT + "\n<Birds>"
    assert check_enhanced_prompt(text) == [
        'The "Background Sound:" paragraph must be a single <...> line (found 2 lines).']


def test_check_cjk_spacing():
    text = MANDARIN_PROMPT.replace("早 上 好，咖 啡 好 了。", "早上好，咖啡好了。")
    assert check_enhanced_prompt(text) == [
        "CJK characters are not separated by single spaces in 10 place(s), e.g. "
        "'\"早上好，咖啡好了。\"' -> '\"早 上 好，咖 啡 好 了。\"', "
        "'\"早上好，咖啡好了。\"' -> '\"早 上 好，咖 啡 好 了。\"'."]
    one = MANDARIN_PROMPT.replace("<No prominent background sound>", "<雨声>")
    assert check_enhanced_prompt(one) == [
        "CJK characters are not separated by single spaces in 1 place(s), e.g. '<雨声>' -> '<雨 声>'."]
    many = "Background Sound:\n<雨声 风声 鸟叫 车声 人声 海浪 雷声>"
    text = MANDARIN_PROMPT.replace("Background Sound:\n<No prominent background sound>", many)
    assert check_enhanced_prompt(text) == [
        "CJK characters are not separated by single spaces in 7 place(s), e.g. '<雨声' -> '<雨 声', "
        "'风声' -> '风 声', '鸟叫' -> '鸟 叫' and 4 more."]


# ------------------------------------------------------------------------------------------------
# LLM prompt
# ------------------------------------------------------------------------------------------------

def test_llm_messages():
    system, user = llm_messages("  A grandmother says good night to her grandson in Korean.  ")
    assert system is LLM_SYSTEM_PROMPT
    assert user == ("User idea:\nA grandmother says good night to her grandson in Korean.\n\n"
                    "Write the prompt now.")
    _, user = llm_messages("A chef explains a dish.", first_frame="A man in a green shirt behind a counter.")
    assert user == ("User idea:\nA chef explains a dish.\n\nFirst frame:\nA man in a green shirt behind a "
                    "counter.\n\nWrite the prompt now.")
    with pytest.raises(ValueError):
        llm_messages("  ")


def test_system_prompt_states_the_format():
    for needed in ("Dialogue:", "Background Sound:", "<No prominent background sound>", "150 to 200 words",
                   "你 好", "static", "tone", "pace", "pitch", "volume"):
        assert needed in LLM_SYSTEM_PROMPT


# ------------------------------------------------------------------------------------------------
# Examples and the checker's report
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["t2v", "ti2v", "a2v", "base", "sr"])
def test_every_example_prompt_follows_the_format(kind):
    text = EXAMPLE_PROMPTS[kind]
    assert check_enhanced_prompt(text) == []
    body, dialogue, background = text.split("\n\n")
    assert BODY_MIN_WORDS <= count_words(body) <= BODY_MAX_WORDS
    assert dialogue.startswith("Dialogue:\n<") and background.startswith("Background Sound:\n<")
    assert space_cjk(text) == text
    # the builder, given the example's own parts back, returns it unchanged and without warnings
    assert build_enhanced_prompt(body, dialogue=dialogue, background_sound=background.split("\n", 1)[1]) == (text, [])


def test_examples_cover_the_workflows_and_a_cjk_line():
    assert sorted(EXAMPLE_PROMPTS) == ["a2v", "base", "sr", "t2v", "ti2v"]
    assert '<Middle-aged man in navy sweater, Mandarin>: "今 天 我 们 聊 聊 怎 么 泡 一 杯 好 茶。"' in EXAMPLE_PROMPTS["ti2v"]
    assert ", Japanese>: \"い ら っ し ゃ い ま せ。" in EXAMPLE_PROMPTS["sr"]


def test_describe_problems():
    assert describe_problems([]) == "OK: the prompt follows the Enhanced Prompt format."
    assert describe_problems(["First.", "Second."]) == (
        "2 problem(s) with the Enhanced Prompt format:\n- First.\n- Second.")


def test_readme_example_follows_the_format():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Prompts\n", 1)[1].split("\n## ", 1)[0]
    example = section.split("```text\n", 1)[1].split("\n```", 1)[0]
    assert check_enhanced_prompt(example) == []
    assert "Dialogue:\n<" in example and not any(example == e for e in EXAMPLE_PROMPTS.values())
