"""The widgets speak the notebook's language (issue 19): attention (03), sampling (07), the chat box (08).

Each widget is built after ``set_language("ru")`` and after ``set_language("en")``: in Russian its labels,
buttons, placeholders, captions and messages are Russian (Cyrillic); in English they are exactly the
English text they always were. Every message these modules pass to ``tr``/``N_`` has a Russian translation
in the package's catalogue, with the same ``{fields}``. Tiny random models, no downloads.
"""

from __future__ import annotations

import re
import string

import polib
import pytest
import torch
from scripted_lm import ScriptedLM  # tests/scripted_lm.py

from llm_course.apps.chat import ChatBot, chat_widget
from llm_course.core import i18n
from llm_course.core.i18n import set_language
from llm_course.messages import package_messages
from llm_course.models.gpt import GPT, GPTConfig
from llm_course.models.t5 import T5, T5Config
from llm_course.text.encoding import encode_plain
from llm_course.text.tokenizer import ByteLevelBPETokenizer
from llm_course.widgets.attention_explorer import AttentionExplorer
from llm_course.widgets.sampling_explorer import SamplingExplorer

pytestmark = pytest.mark.usefixtures("one_thread")

CORPUS = "the cat sat on the mat. the dog sat on the log. a cat and a dog met on the mat. кошка сидит на ковре. " * 4
TEXT = "the cat sat on the mat"
CONTEXT = 16
DPI = 20  # the pictures are not looked at here
CYRILLIC = re.compile("[а-яё]", re.IGNORECASE)
MODULES = ("llm_course/widgets/attention_explorer.py", "llm_course/widgets/sampling_explorer.py",
           "llm_course/widgets/base.py", "llm_course/apps/chat.py")
# messages whose Russian is the English term itself (the course writes "top-k", "top-p" in Russian too)
SAME_IN_RUSSIAN = {"top k": "top-k", "top p": "top-p"}


@pytest.fixture(autouse=True)
def english_afterwards():
    yield
    set_language("en")


@pytest.fixture(scope="module")
def tok() -> ByteLevelBPETokenizer:
    return ByteLevelBPETokenizer.train([CORPUS], vocab_size=280, special_tokens=("<|endoftext|>",))


@pytest.fixture(scope="module")
def gpt(tok) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=len(tok), n_positions=CONTEXT, n_embd=16, n_layer=1, n_head=2)).eval()


@pytest.fixture(scope="module")
def t5(tok) -> T5:
    torch.manual_seed(0)
    return T5(T5Config(vocab_size=len(tok), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1,
                       num_heads=2)).eval()


def cyrillic(text: str) -> bool:
    return bool(CYRILLIC.search(text))


def plain(html_text: str) -> str:
    """The text of an HTML snippet, without its tags."""
    return re.sub(r"<[^>]*>", "", html_text)


def option_labels(control) -> list[str]:
    return [label for label, _ in control.options]


# --------------------------------------------------------------------------------------------------
# The attention explorer (chapter 03)
# --------------------------------------------------------------------------------------------------

ATTENTION_EN = {"model_choice": "model", "text_choice": "example", "text": "text", "decoder_text": "decoder text",
                "kind": "attention", "view": "view", "layer": "layer", "head": "head", "query": "query token"}


def attention_labels(ex: AttentionExplorer) -> dict[str, object]:
    labels: dict[str, object] = {name: getattr(ex, name).description for name in ATTENTION_EN}
    labels["placeholder"] = ex.decoder_text.placeholder
    labels["views"] = option_labels(ex.view)
    labels["kinds"] = option_labels(ex.kind)
    return labels


def test_attention_explorer_in_russian_and_back_in_english(gpt, t5, tok):
    models = {"GPT": (gpt, tok), "T5": (t5, tok)}
    set_language("ru")
    ru = AttentionExplorer(models=models, texts=[TEXT], dpi=DPI)
    labels = attention_labels(ru)
    for name in ATTENTION_EN:
        assert cyrillic(labels[name]), (name, labels[name])
    assert cyrillic(labels["placeholder"])
    assert labels["views"] == ["одна голова", "все головы", "один токен"]
    assert labels["kinds"] == ["самовнимание"]
    caption = plain(ru.message.value)
    assert "Строки" in caption and "Каузальное" in caption and "слой 0" in caption, caption
    ru.show(model="T5", kind="cross")  # the kinds of an encoder-decoder, with the language of the build
    assert len(ru.kind.options) == 3 and all(cyrillic(label) for label in option_labels(ru.kind))
    assert "перекрёстное" in plain(ru.message.value)
    ru.show(model="GPT", text="the cat " * CONTEXT)  # an error from below the widget: its frame is Russian
    assert ru.error and ru.png == b"" and plain(ru.message.value).startswith("Не удаётся показать внимание:")

    set_language("en")
    en = AttentionExplorer(models=models, texts=[TEXT], dpi=DPI)
    labels = attention_labels(en)
    assert {name: labels[name] for name in ATTENTION_EN} == ATTENTION_EN
    assert labels["placeholder"] == "(empty: the text itself)"
    assert labels["views"] == ["one head", "all heads", "one token"] and labels["kinds"] == ["self-attention"]
    caption = plain(en.message.value)
    assert "layer 0 (0..0) · head 0 (0..1)" in caption and "query × " in caption and not cyrillic(caption)
    assert "Rows are queries" in caption and "Causal: every weight above the diagonal is 0" in caption
    en.show(model="T5", kind="cross")
    assert option_labels(en.kind) == ["encoder self-attention", "decoder self-attention",
                                      "cross-attention (decoder → encoder)"]
    en.show(model="GPT", text="the cat " * CONTEXT)
    assert plain(en.message.value).startswith("Cannot show attention: the text is")
    # a widget keeps the language it was built in; the one built in Russian still is
    assert cyrillic(ru.view.description) and not cyrillic(en.view.description)


# --------------------------------------------------------------------------------------------------
# The sampling explorer (chapter 07)
# --------------------------------------------------------------------------------------------------

SAMPLING_EN = {"prompt": "prompt", "temperature": "temperature", "top_k": "top k", "top_p": "top p",
               "repetition_penalty": "repetition penalty", "seed": "seed", "max_new_tokens": "max new tokens",
               "step_button": "step one token", "generate_button": "generate", "reset_button": "reset"}
TOOLTIPS_EN = {"step_button": "sample one token from the distribution shown and append it",
               "generate_button": "sample max_new_tokens tokens with these settings",
               "reset_button": "back to the prompt before the steps"}


def test_sampling_explorer_in_russian_and_back_in_english(gpt, tok):
    set_language("ru")
    ru = SamplingExplorer(gpt, tok, TEXT, dpi=DPI, max_new_tokens=CONTEXT)
    for name, english in SAMPLING_EN.items():
        label = getattr(ru, name).description
        assert label == SAME_IN_RUSSIAN[english] if english in SAME_IN_RUSSIAN else cyrillic(label), (name, label)
    for name in TOOLTIPS_EN:
        assert cyrillic(getattr(ru, name).tooltip)
    caption = plain(ru.message.value)
    assert caption.startswith("до фильтров") and "бит" in caption and "Строки" in caption, caption
    ru.step()
    ru.generate()  # asks for more tokens than fit the context window
    assert cyrillic(ru.notice) and "зелёный" in plain(ru.text_html.value)
    assert "жёлтый" in plain(ru.text_html.value) and "температура" in plain(ru.text_html.value)
    ru.show(prompt="")
    assert ru.error == "промпт пуст: введите текст, который модель продолжит"
    assert plain(ru.message.value).startswith("Не удаётся показать распределение следующего токена:")

    set_language("en")
    en = SamplingExplorer(gpt, tok, TEXT, dpi=DPI, max_new_tokens=CONTEXT)
    assert {name: getattr(en, name).description for name in SAMPLING_EN} == SAMPLING_EN
    assert {name: getattr(en, name).tooltip for name in TOOLTIPS_EN} == TOOLTIPS_EN
    caption = plain(en.message.value)
    assert caption.startswith("before (the model): H = ") and " bits over " in caption and not cyrillic(caption)
    assert "Rows: the distribution after each stage" in caption
    en.step()
    en.generate()
    assert en.notice.startswith("Only ") and "(asked for 16)" in en.notice
    view = plain(en.text_html.value)
    assert "green: 1 stepped token(s)" in view and "yellow: generated with temperature 1, top-k off" in view
    en.show(prompt="")
    assert en.error == "the prompt is empty: type some text for the model to continue"
    assert plain(en.message.value).startswith("Cannot show the next-token distribution: the prompt is empty")


# --------------------------------------------------------------------------------------------------
# The chat box (chapter 08)
# --------------------------------------------------------------------------------------------------


def chat_box(tok):
    script = encode_plain(tok, " the cat") + [tok.token_to_id("<|endoftext|>")]
    return chat_widget(ChatBot(ScriptedLM(script, len(tok)), tok, max_new_tokens=4))


def test_chat_box_in_russian_and_back_in_english(tok):
    set_language("ru")
    ru = chat_box(tok)
    assert (ru.text.placeholder, ru.send_button.description, ru.reset_button.description) == (
        "Сообщение…", "Отправить", "Сбросить")
    assert ru._send("привет") == "the cat"
    assert "Вы: привет" in plain(ru.conversation.value) and "Бот: the cat" in plain(ru.conversation.value)
    assert ru._send("  ") is None and cyrillic(plain(ru.status.value))

    set_language("en")
    en = chat_box(tok)
    assert (en.text.placeholder, en.send_button.description, en.reset_button.description) == (
        "Message…", "Send", "Reset")
    assert en._send("hello") == "the cat"
    assert "You: hello" in plain(en.conversation.value) and "Bot: the cat" in plain(en.conversation.value)
    assert en._send("  ") is None and plain(en.status.value) == "the message is empty: type something to say"
    with pytest.raises(ValueError, match="the message is empty"):  # raised for programmers: English
        set_language("ru")
        en.bot.reply(" ")


# --------------------------------------------------------------------------------------------------
# The catalogue
# --------------------------------------------------------------------------------------------------


def _fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


def test_every_widget_message_has_a_russian_translation():
    ours = {text for text, where in package_messages().items() if where.split(":")[0] in MODULES}
    assert len(ours) >= 40  # the widgets' labels and messages are all marked
    po = {e.msgid: e for e in polib.pofile(str(i18n.catalogue_path("ru"))) if not e.obsolete}
    missing = sorted(text for text in ours if text not in po or not po[text].msgstr or "fuzzy" in po[text].flags)
    assert not missing, f"widget messages without Russian: {missing}"
    for text in ours:
        russian = po[text].msgstr
        assert _fields(russian) == _fields(text), (text, russian)
        assert russian == SAME_IN_RUSSIAN[text] if text in SAME_IN_RUSSIAN else cyrillic(russian), (text, russian)
