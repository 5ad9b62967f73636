"""Tests for the bilingual data layer: Russian manual pages (roff to text), English->Russian pairs from
gettext catalogues, and the bilingual corpus (llm_course.text.manpages, .translations, .bilingual).

The manual pages come from Debian's ``manpages-ru`` (CI installs it, .ci/run); tests that read them are
skipped with the install command where the folder is missing. Catalogue tests build their own small
``.po`` file; the real-catalogue test reads Debian's ``/usr/share/locale/ru/LC_MESSAGES`` where present.
"""

from __future__ import annotations

import gzip
import re
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_course.text.manpages import (
    MANPAGES_DIR,
    ManPage,
    is_held_out,
    manpage_documents,
    manpages_corpus,
    roff_to_text,
)
from llm_course.text.translations import (
    DROP_REASONS,
    catalogue_files,
    placeholders,
    translation_pairs,
)

# Without manpages-ru, /usr/share/man/ru may still hold the ~65 pages of man-db, passwd and vim: too few.
HAVE_MANPAGES = MANPAGES_DIR.is_dir() and len(list(MANPAGES_DIR.glob("man*/*"))) > 150
SKIP_REASON = f"Debian's Russian manual pages are not in {MANPAGES_DIR}: sudo apt-get install manpages-ru"
needs_manpages = pytest.mark.skipif(not HAVE_MANPAGES, reason=SKIP_REASON)
DEBIAN_CATALOGUES = Path("/usr/share/locale/ru/LC_MESSAGES")

# ------------------------------------------------------------------------------------------------
# roff -> text
# ------------------------------------------------------------------------------------------------

PAGE = r"""'\" t
.\" A comment line: dropped.
.TH TEST 1 "2024" "" "Test pages"
.ie \n(.g .ds Aq \(aq
.el       .ds Aq '
.de q
\\$3\*(lq\\$1\*(rq\\$2
..
.SH ИМЯ
test \- пример \fBстраницы\fP \" an inline comment
.SH
ОПИСАНИЕ
Программа \fBtest\fR читает \fIфайл\fP и
выводит \(lqего\(rq \(em \s-1целиком\s+1\&.
Символ \e и кавычка \*(Aq, буква \[u0435] и
.BR ls (1),
.IR файл .conf
.B жирный текст
.PP
.TP
\fB\-a\fP, \fB\-\-all\fP
показать всё.
.IP \(bu 2
первый пункт
.if t \{\
.B не показывается
.\}
.if n \{\
показывается
.\}
.if !'po4a'hide' .B скрытое
.TS
tab(;);
l l.
a;b
.TE
.nf
код   строка 1
  строка 2
.fi
См.
.UR https://example.org
сайт
.UE .
Слово\c
продолжение и перенос \
строки.
.q цитата
"""

EXPECTED = """ИМЯ

test - пример страницы

ОПИСАНИЕ

Программа test читает файл и выводит “его” — целиком. Символ \\ и кавычка ', буква е и ls(1), файл.conf \
жирный текст

-a, --all
показать всё.

• первый пункт показывается скрытое

код   строка 1
  строка 2

См. сайт <https://example.org>. Словопродолжение и перенос строки. цитата"""


def test_roff_to_text_on_every_construct():
    # comments, .TH, .de and .TS dropped; .SH with and without arguments; fonts, sizes, dashes, quotes,
    # \e, strings set by .ie/.el, \[u0435]; .BR/.IR joined without a blank; .TP tag on its own line;
    # .IP bullet; .if t false, .if n true, string comparison; .nf kept as is; links; \c and "\<newline>".
    assert roff_to_text(PAGE) == EXPECTED


def test_roff_to_text_docstring_example_and_bad_input():
    assert roff_to_text(".TH LS 1\n.SH ИМЯ\nls \\- выводит \\fBсодержимое\\fP каталога") == (
        "ИМЯ\n\nls - выводит содержимое каталога"
    )
    assert roff_to_text('.IR "два слова" ", " """кавычки""" \\fBжирный\\ шрифт\\fP') == \
        'два слова, "кавычки"жирный шрифт'
    assert roff_to_text("") == ""
    with pytest.raises(TypeError, match="roff text"):
        roff_to_text(b".SH NAME")


words = st.text(alphabet="абвгдежзиклмнопрстуфхцчшщыэюяABCxyz0123456789,;:!?()-", min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(words, min_size=1, max_size=6), min_size=1, max_size=6))
def test_plain_lines_are_filled_into_one_paragraph(lines):
    # Text without markup: every line's words, in order, joined by single blanks (roff's fill mode).
    source = "\n".join(" ".join(line) for line in lines)
    assert roff_to_text(source) == " ".join(w for line in lines for w in line)


# ------------------------------------------------------------------------------------------------
# The installed manual pages
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pages() -> dict[str, ManPage]:
    if not HAVE_MANPAGES:
        pytest.skip(SKIP_REASON)
    return {p.key: p for p in manpage_documents()}


def _source(page: ManPage) -> str:
    return gzip.decompress((MANPAGES_DIR / page.path).read_bytes()).decode("utf-8")


def test_no_roff_markup_is_left(pages):
    assert len(pages) > 150
    for page in pages.values():
        source = _source(page)
        # An escape may survive only where the page prints one literally ("\ef" in the source prints "\f").
        for escape in ("f", "(", "*", "s"):
            left = page.text.count("\\" + escape)
            assert left <= source.count("\\e" + escape), f"{page.key} keeps {left} '\\{escape}' escapes"
        # A line may start with "." only where the page prints one (\&.bss, \&.SH in an example of roff):
        # its first word must come from the page's text lines, not from its requests.
        printed = roff_to_text("\n".join(line for line in source.split("\n") if line[:1] not in ".'"))
        for line in page.text.split("\n"):
            if line.startswith("."):
                assert line.split()[0] in printed, f"{page.key}: a request left in the text: {line!r}"


@needs_manpages
def test_a_known_sentence_comes_out_whole(pages):
    # zdump.8 (manpages-ru): the sentence spans two source lines with \fB and \fI inside.
    if "zdump.8" not in pages:
        pytest.skip("zdump.8 is not among the installed pages (manpages-ru 4.18 has it)")
    assert ("Программа zdump выводит текущее время для каждого часового пояса, указанного в командной "
            "строке.") in pages["zdump.8"].text.split("\n")
    assert pages["zdump.8"].text.startswith("ИМЯ\n\nzdump - информация о часовом поясе\n\n")


def test_pages_are_russian_and_unique(pages):
    keys = [p.path for p in pages.values()]
    assert len(keys) == len(set(keys))
    for page in pages.values():
        assert re.search("[а-яё]", page.text), page.key
        # untranslated English lines are dropped: no long line without a Cyrillic letter
        for line in page.text.split("\n"):
            assert re.search("[\u0400-\u04ff]", line) or len(re.findall("[A-Za-z]{2,}", line)) < 5, line


def test_manpages_corpus_split_is_by_page_and_by_hash(pages):
    corpus = manpages_corpus()
    held = [p for k, p in pages.items() if is_held_out(k)]
    kept = [p for k, p in pages.items() if not is_held_out(k)]
    assert 0.04 < len(held) / len(pages) < 0.2
    assert corpus.val == "\n\n".join(p.text for p in held)
    assert corpus.train == "\n\n".join(p.text for p in kept) + "\n\n"
    assert manpages_corpus() == corpus  # the same split every time
    assert len(corpus.val) > 50_000 and len(corpus.train) > 500_000


def test_is_held_out_is_a_fixed_fraction_of_keys():
    keys = [f"page{i}.{i % 8}" for i in range(20_000)]
    share = sum(map(is_held_out, keys)) / len(keys)
    assert abs(share - 0.1) < 0.01
    # a larger fraction holds out a superset; 0 holds out nothing
    assert all(is_held_out(k, 0.3) for k in keys[:2000] if is_held_out(k, 0.1))
    assert not any(is_held_out(k, 0.0) for k in keys[:2000])
    with pytest.raises(TypeError, match="key must be a string"):
        is_held_out(3)
    with pytest.raises(ValueError, match="val_fraction"):
        is_held_out("ls.1", 1.5)


def test_missing_folder_says_what_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install manpages-ru"):
        manpage_documents(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="manpages-ru"):
        manpages_corpus(folder=tmp_path)


def test_pages_from_a_folder_of_my_own(tmp_path):
    (tmp_path / "man1").mkdir()
    body = ".TH X 1\n.SH ИМЯ\nx \\- " + "очень полезная программа, " * 10 + "\n"
    (tmp_path / "man1" / "x.1.gz").write_bytes(gzip.compress(body.encode()))
    (tmp_path / "man1" / "y.1.gz").symlink_to("x.1.gz")  # a second name of the same page: read once
    (tmp_path / "man1" / "z.1").write_text(".so man1/x.1\n")  # a stub: too short, left out
    docs = manpage_documents(tmp_path)
    assert [(p.key, p.path) for p in docs] == [("x.1", "man1/x.1.gz")]
    assert docs[0].text.startswith("ИМЯ\n\nx - очень полезная программа,")


# ------------------------------------------------------------------------------------------------
# Translation pairs
# ------------------------------------------------------------------------------------------------

PO = r'''msgid ""
msgstr ""
"Content-Type: text/plain; charset=UTF-8\n"
"Plural-Forms: nplurals=3; plural=(n%10==1 && n%100!=11 ? 0 : n%10>=2 && n%10<=4 && (n%100<10 || n%100>=20) ? 1 : 2);\n"

msgid "Save"
msgstr "Сохранить"

msgid "Open"
msgstr ""

#, fuzzy
msgid "Close"
msgstr "Закрыть"

msgid "Line one\n"
"line two"
msgstr "Строка один\n"
"строка два"

msgid "URL"
msgstr "URL"

msgid "Delete %(name)s"
msgstr "Удалить"

msgid "{name} has {count} files, 100%% done"
msgstr "У {name} файлов: {count}, готово на 100%%"

msgid "%d file"
msgid_plural "%d files"
msgstr[0] "%d файл"
msgstr[1] "%d файла"
msgstr[2] "%d файлов"

msgctxt "menu"
msgid "Save"
msgstr "Записать"

msgid "Copy %s to %s"
msgstr "Скопировать %s в %s"

#~ msgid "Old"
#~ msgstr "Старый"
'''

KEPT = [
    ("Save", "Сохранить"),
    ("{name} has {count} files, 100%% done", "У {name} файлов: {count}, готово на 100%%"),
    ("%d file", "%d файл"),  # a plural: msgid with msgstr[0]
    ("Copy %s to %s", "Скопировать %s в %s"),
]


def _write_po(folder: Path) -> Path:
    path = folder / "locale" / "ru" / "LC_MESSAGES" / "app.po"
    path.parent.mkdir(parents=True)
    path.write_text(PO, encoding="utf-8")
    return path


def test_placeholders():
    assert placeholders("%s of %(n)d {x}, {0:.2f} and {}: 100%% {{literal}} %1$s %5.2f") == Counter(
        {"%s": 1, "%(n)d": 1, "{x}": 1, "{0:.2f}": 1, "{}": 1, "%1$s": 1, "%5.2f": 1}
    )
    assert placeholders("%s %s") == Counter({"%s": 2})
    assert placeholders("нет заполнителей") == Counter()
    with pytest.raises(TypeError, match="message must be a str"):
        placeholders(None)


def test_every_drop_rule(tmp_path):
    result = translation_pairs(_write_po(tmp_path), val_fraction=0.0)
    assert [(p.source, p.target) for p in result.pairs] == KEPT
    assert result.val == []
    assert result.dropped == {"obsolete": 1, "fuzzy": 1, "untranslated": 1, "multiline": 1, "not_russian": 1,
                              "placeholders": 1, "duplicate": 1}
    assert set(result.dropped) == set(DROP_REASONS)
    assert all(p.origin.endswith("app.po") for p in result.pairs)


def test_split_is_by_a_hash_of_the_english(tmp_path):
    path = _write_po(tmp_path)
    result = translation_pairs(path, val_fraction=0.5)
    assert [p.source for p in result.val] == [s for s, _ in KEPT if is_held_out(s, 0.5)]
    assert [p.source for p in result.train] == [s for s, _ in KEPT if not is_held_out(s, 0.5)]
    assert 0 < len(result.val) < len(KEPT)  # this fixture holds out some, not all (a check on the test)


def test_mo_reads_like_po_and_po_wins_in_a_folder(tmp_path):
    import polib

    po_path = _write_po(tmp_path)
    mo_path = po_path.with_suffix(".mo")
    polib.pofile(str(po_path)).save_as_mofile(str(mo_path))  # fuzzy and obsolete entries are not compiled
    from_mo = translation_pairs(mo_path, val_fraction=0.0)
    assert sorted((p.source, p.target) for p in from_mo.pairs) == sorted(KEPT)  # a .mo is sorted by msgid
    assert catalogue_files(tmp_path) == [po_path]
    other = tmp_path / "locale" / "de" / "LC_MESSAGES"
    other.mkdir(parents=True)
    (other / "app.po").write_text(PO, encoding="utf-8")
    assert catalogue_files(tmp_path) == [po_path]  # German catalogues are not Russian ones
    assert catalogue_files(tmp_path, language="de") == [other / "app.po"]


def test_bad_catalogue_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="no catalogue"):
        translation_pairs(tmp_path / "missing")
    with pytest.raises(ValueError, match="val_fraction"):
        translation_pairs(_write_po(tmp_path), val_fraction=1.0)
    bad = tmp_path / "bad.po"
    bad.write_text("garbage line\n", encoding="utf-8")
    with pytest.raises(ValueError, match="polib"):
        translation_pairs(bad)
    bad.with_suffix(".mo").write_bytes(b"not a compiled catalogue")
    with pytest.raises(ValueError, match="polib"):
        translation_pairs(bad.with_suffix(".mo"))


@pytest.mark.skipif(not DEBIAN_CATALOGUES.is_dir(), reason=f"no Debian catalogues in {DEBIAN_CATALOGUES} (a "
                    "'slim' image excludes /usr/share/locale; a full Debian/Ubuntu image has coreutils' ones)")
def test_real_catalogues():
    result = translation_pairs(DEBIAN_CATALOGUES)
    pairs = result.pairs
    assert len(pairs) > 100, result
    assert len({p.source for p in pairs}) == len(pairs)
    for p in pairs:
        assert "\n" not in p.source + p.target
        assert re.search("[\u0400-\u04ff]", p.target)
        assert placeholders(p.source) == placeholders(p.target)
    assert 0.05 < len(result.val) / len(pairs) < 0.15


# ------------------------------------------------------------------------------------------------
# The bilingual corpus
# ------------------------------------------------------------------------------------------------


@needs_manpages
def test_bilingual_corpus_parts():
    from llm_course.text.bilingual import bilingual_corpus
    from llm_course.text.corpora import docs_corpus
    from llm_course.text.dialogs import dialogs_text

    corpus = bilingual_corpus()
    docs, man = docs_corpus(), manpages_corpus()
    english, russian = corpus.languages["english"], corpus.languages["russian"]
    assert english.val == docs.val and russian.val == man.val  # dialogs are never held out here
    assert english.train.startswith(docs.train.rstrip("\n")) and english.train.endswith(dialogs_text("english"))
    assert russian.train.startswith(man.train.rstrip("\n")) and russian.train.endswith(dialogs_text("russian"))
    assert corpus.train == english.train + "\n\n" + russian.train
    assert corpus.val == docs.val + "\n\n" + man.val
    sizes = corpus.sizes()
    assert sizes["russian"]["train"] > 100 * len(dialogs_text("russian"))  # far more Russian than today
    assert sizes["english"] == {"train": len(english.train), "val": len(docs.val)}
    plain = bilingual_corpus(dialogs=False)
    assert plain.languages["russian"].train == man.train and plain.languages["english"].train == docs.train
    with pytest.raises(ValueError, match="val_fraction"):
        bilingual_corpus(val_fraction=1.5)
    with pytest.raises(TypeError, match="dialogs"):
        bilingual_corpus(dialogs="yes")


@needs_manpages
def test_russian_prose_teaches_the_tokenizer_cyrillic():
    # The measured fix of chapter 01's lesson, small: the same number of training characters, half of
    # them Russian man pages, gives a tokenizer that pays far fewer tokens per Cyrillic letter.
    from llm_course.text.corpora import docs_corpus
    from llm_course.text.encoding import cyrillic_token_cost
    from llm_course.text.tokenizer import ByteLevelBPETokenizer

    docs, man = docs_corpus(), manpages_corpus()
    english_only = ByteLevelBPETokenizer.train([docs.train[:200_000]], vocab_size=512)
    bilingual = ByteLevelBPETokenizer.train([docs.train[:100_000] + "\n\n" + man.train[:100_000]], vocab_size=512)
    before, after = cyrillic_token_cost(english_only, man.val), cyrillic_token_cost(bilingual, man.val)
    assert before > 1.9  # no Cyrillic merges: two bytes, two tokens per letter
    assert after < 0.75 * before
