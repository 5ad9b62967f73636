"""Tests for llm_course.text: the docs corpus, chatterbot dialogs, token costs and synthetic tasks.

The standard-library corpus is built once per session (a few seconds); cache tests reuse
those documents through a counting stand-in, so they check the cache logic without
rebuilding.
"""

from __future__ import annotations

import inspect
import itertools
import json
import re
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_course.core import deps
from llm_course.core.deps import MissingDependencyError
from llm_course.text import corpora, encoding, tasks
from llm_course.text import dialogs as dialogs_module
from llm_course.text.corpora import (
    Document,
    TextCorpus,
    docs_corpus,
    docs_documents,
    first_sentence,
    train_val_split,
)
from llm_course.text.dialogs import (
    Dialog,
    dialog_categories,
    dialog_languages,
    dialogs_text,
    load_dialogs,
)
from llm_course.text.tasks import TASKS, Example, check, make_task

CYRILLIC = re.compile(r"[А-Яа-яЁё]")
SKIPPED = {"test", "tests", "idlelib", "lib2to3", "site-packages", "__pycache__", "ensurepip", "turtledemo"}


# ----------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def built() -> tuple[list[Document], set[str]]:
    """Build the documents once, recording which modules the build imported."""
    before = set(sys.modules)
    docs = corpora._build_documents()
    imported = set(sys.modules) - before
    if corpora._DOCUMENTS is None:  # let docs_documents() reuse this build
        corpora._DOCUMENTS = list(docs)
    return docs, imported


@pytest.fixture(scope="session")
def documents(built) -> list[Document]:
    return built[0]


@pytest.fixture(scope="session")
def corpus(documents) -> TextCorpus:
    return docs_corpus(cache=False)


@pytest.fixture
def counted_build(documents, tmp_path, monkeypatch):
    """An empty cache folder, and docs_documents() replaced by a stand-in that counts calls."""
    monkeypatch.setenv("LLM_COURSE_CACHE", str(tmp_path))
    calls = []

    def fake_docs_documents() -> list[Document]:
        calls.append(1)
        return list(documents)

    monkeypatch.setattr(corpora, "docs_documents", fake_docs_documents)
    return calls


def _starts(documents: list[Document]) -> list[int]:
    """Independent reference: where each document starts in "\\n\\n".join(texts)."""
    lengths = [len(d.text) + 2 for d in documents]
    return [0] + list(itertools.accumulate(lengths))[:-1]


# ----------------------------------------------------------------------------------------
# 1. the docs corpus
# ----------------------------------------------------------------------------------------


def test_corpus_size_and_text(corpus, documents):
    assert 1_500_000 <= len(corpus.text) <= 3_000_000
    assert corpus.train + corpus.val == corpus.text
    assert corpus.text == "\n\n".join(d.text for d in documents)
    # roughly the requested 10%: at most 10%, and not much less (documents are small)
    share = len(corpus.val) / len(corpus.text)
    assert 0.09 < share <= 0.10


def test_split_is_at_a_document_boundary(corpus, documents):
    cut = len(corpus.train)
    starts = _starts(documents)
    assert cut in starts, "validation must begin exactly where a document begins"
    k = starts.index(cut)
    assert corpus.train.endswith("\n\n")
    assert corpus.val.startswith(documents[k].text)
    # it is the *first* boundary at or after the 90% point
    assert cut - 2 >= 0.9 * len(corpus.text)
    assert starts[k - 1] - 2 < 0.9 * len(corpus.text)
    # no document straddles the cut
    for start, doc in zip(starts, documents):
        assert start + len(doc.text) <= cut or start >= cut


def test_split_is_deterministic_and_follows_val_fraction(corpus, documents):
    assert docs_corpus(cache=False) == corpus
    starts = _starts(documents)
    bigger = docs_corpus(val_fraction=0.25, cache=False)
    assert bigger.text == corpus.text
    assert len(bigger.train) in starts
    assert 0.24 < len(bigger.val) / len(bigger.text) <= 0.25
    none = docs_corpus(val_fraction=0.0, cache=False)
    assert none.val == "" and none.train == corpus.text


@pytest.mark.parametrize("bad, error", [(1.0, ValueError), (-0.1, ValueError), ("0.1", TypeError), (True, TypeError)])
def test_bad_val_fraction(bad, error):
    with pytest.raises(error, match="val_fraction"):
        docs_corpus(val_fraction=bad, cache=False)


@settings(max_examples=200, deadline=None)
@given(
    texts=st.lists(
        st.text(alphabet="ab\n ", min_size=1, max_size=30).map(str.strip).filter(bool), min_size=1, max_size=30
    ),
    val_fraction=st.floats(min_value=0.0, max_value=0.95),
)
def test_split_point_property(texts, val_fraction):
    """On any document list: the split is a document start, the first at/after the cut."""
    text, starts = corpora._join_documents(texts)
    assert text == "\n\n".join(texts)
    assert starts == [0] + list(itertools.accumulate(len(t) + 2 for t in texts))[:-1]
    split = corpora._split_point(text, starts, val_fraction)
    if val_fraction == 0 or len(texts) == 1:
        assert split == len(text)
        return
    assert split in starts[1:]
    cut = (1 - val_fraction) * len(text)
    later = [s for s in starts[1:] if s - 2 >= cut]
    assert split == (later[0] if later else starts[-1])


def test_corpus_repr_shows_sizes_not_text(corpus):
    r = repr(corpus)
    assert f"{len(corpus.train):,}" in r and f"{len(corpus.val):,}" in r
    assert len(r) < 300


def test_building_imports_nothing(built):
    _, imported = built
    # Only the data module of help()'s topics may be imported; never the parsed modules.
    assert imported <= {"pydoc_data", "pydoc_data.topics"}, sorted(imported)
    for name in ("antigravity", "this", "tkinter", "turtle", "idlelib"):
        assert name not in sys.modules


def test_documents_match_python_own_docstrings(documents):
    """Our ast + cleandoc reading equals inspect.getdoc on modules the test imports itself."""
    import json as json_module
    import textwrap

    by_name = {d.name: d for d in documents}
    for name, obj, kind in [
        ("json", json_module, "module"),
        ("json.dumps", json_module.dumps, "function"),
        ("json.decoder.JSONDecoder", json_module.JSONDecoder, "class"),
        ("json.decoder.JSONDecoder.decode", json_module.JSONDecoder.decode, "function"),
        ("textwrap.TextWrapper", textwrap.TextWrapper, "class"),
    ]:
        doc = by_name[name]
        assert doc.kind == kind
        assert doc.text == inspect.getdoc(obj)
    assert by_name["json.dumps"].path == "json/__init__.py"


def test_document_selection_and_order(documents):
    from pydoc_data.topics import topics

    topic_docs = [d for d in documents if d.kind == "topic"]
    assert [d.name for d in topic_docs] == sorted(topics)
    assert documents[: len(topic_docs)] == topic_docs  # topics first
    assert topic_docs[0].title == 'The "assert" statement'
    code_docs = documents[len(topic_docs) :]
    assert {d.kind for d in code_docs} == {"module", "class", "function"}
    assert all(len(d.text) > 80 for d in code_docs)
    # cleaned: no surrounding blank space, tabs expanded, and the common indentation of the
    # body lines removed (cleandoc is not idempotent, so compare structure, not a re-clean)
    assert all(d.text == d.text.strip() and "\t" not in d.text for d in code_docs)
    def body_indented(text: str) -> bool:
        body = [line for line in text.split("\n")[1:] if line]
        return bool(body) and all(line.startswith(" ") for line in body)

    indented_bodies = [d for d in code_docs if body_indented(d.text)]
    assert len(indented_bodies) < 0.02 * len(code_docs)
    paths = [d.path for d in code_docs]
    assert paths == sorted(paths)  # sorted paths, source order inside a file
    assert not any(set(Path(p).parts[:-1]) & SKIPPED for p in paths)
    assert len(set(paths)) > 250  # the whole library, not a handful of files
    # methods nested in functions get Python's "<locals>" qualified names
    assert all(".<locals>." not in d.name or d.kind in ("function", "class") for d in code_docs)


def test_source_order_within_a_file(documents):
    """Docs of one file follow the source: line numbers from inspect increase (pre-order)."""
    import functools
    import json.decoder

    docs = [d for d in documents if d.path == "json/decoder.py"]
    assert {d.kind for d in docs} == {"class", "function"}  # its module docstring is short
    lines = []
    for d in docs:
        obj = functools.reduce(getattr, d.name.split(".")[2:], json.decoder)
        lines.append(inspect.getsourcelines(obj)[1])
    assert len(lines) >= 4 and lines == sorted(lines)


def test_docs_documents_returns_a_fresh_list(documents):
    a = docs_documents()
    a.clear()
    assert docs_documents() == documents


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Return the sum. More detail here.", "Return the sum."),
        ("Return the sum\nof two numbers", "Return the sum of two numbers"),
        ("Compare e.g. two values. Then stop.", "Compare e.g. two values."),
        ("Is it? Yes.\n\nSecond paragraph.", "Is it?"),
        ("Version 3.11 added it. 2 more.", "Version 3.11 added it."),
    ],
)
def test_first_sentence(text, expected):
    assert first_sentence(text) == expected


def test_document_summary_skips_the_topic_heading(documents):
    assert documents[0].summary.startswith("Assert statements are a convenient way")
    assert "****" not in documents[0].body


# cache


def test_cache_is_written_and_used(counted_build, tmp_path, documents):
    first = docs_corpus()
    assert len(counted_build) == 1
    texts = list(tmp_path.glob("*.txt"))
    assert len(texts) == 1 and sys.version.split()[0] in texts[0].name
    assert texts[0].read_text(encoding="utf-8") == first.text  # a plain UTF-8 text file
    assert not list(tmp_path.glob("*.tmp"))  # written atomically, nothing left behind
    second = docs_corpus()
    assert len(counted_build) == 1, "the second call must read the cache, not rebuild"
    assert second == first
    assert docs_corpus(val_fraction=0.3) == docs_corpus(val_fraction=0.3, cache=False)


def _truncate(path: Path) -> None:
    path.write_text(path.read_text(encoding="utf-8")[:1000], encoding="utf-8")


def _edit_one_char(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    path.write_text("X" + text[1:], encoding="utf-8")


def _move_a_start(path: Path) -> None:
    index = json.loads(path.read_text(encoding="utf-8"))
    index["starts"][5] += 1
    path.write_text(json.dumps(index), encoding="utf-8")


@pytest.mark.parametrize(
    "suffix, damage",
    [
        (".txt", lambda p: p.write_text("", encoding="utf-8")),
        (".txt", _truncate),
        (".txt", _edit_one_char),
        (".txt", lambda p: p.write_bytes(b"\xff\xfe not utf-8")),
        (".txt", lambda p: p.unlink()),
        (".json", lambda p: p.write_text("{not json", encoding="utf-8")),
        (".json", lambda p: p.write_text("", encoding="utf-8")),
        (".json", _move_a_start),
    ],
)
def test_damaged_cache_is_rebuilt(counted_build, tmp_path, suffix, damage):
    good = docs_corpus()
    (path,) = tmp_path.glob(f"*{suffix}")
    damage(path)
    again = docs_corpus()
    assert len(counted_build) == 2, "a damaged cache must be rebuilt, not trusted"
    assert again == good
    (text_path,) = tmp_path.glob("*.txt")
    assert text_path.read_text(encoding="utf-8") == good.text  # and repaired on disk
    docs_corpus()
    assert len(counted_build) == 2


def test_unwritable_cache_warns_and_still_works(counted_build, tmp_path, monkeypatch, corpus):
    not_a_folder = tmp_path / "a_file"
    not_a_folder.write_text("x")
    monkeypatch.setenv("LLM_COURSE_CACHE", str(not_a_folder))
    with pytest.warns(UserWarning, match="LLM_COURSE_CACHE"):
        assert docs_corpus() == corpus


def test_cache_false_writes_nothing(counted_build, tmp_path):
    docs_corpus(cache=False)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------
# 2. dialogs
# ----------------------------------------------------------------------------------------


def _reference_dialogs(language: str) -> tuple[int, int]:
    """Independent counts of non-empty conversations in the package's YAML files: all, distinct."""
    import chatterbot_corpus

    folder = Path(chatterbot_corpus.__file__).parent / "data" / language
    count, distinct = 0, set()
    for path in folder.glob("*.yml"):
        for conv in yaml.safe_load(path.read_text(encoding="utf-8"))["conversations"]:
            turns = conv if isinstance(conv, list) else [conv]
            turns = tuple(str(t).strip() for t in turns if t is not None and str(t).strip())
            if turns:
                count += 1
                distinct.add((path.stem, turns))
    return count, len(distinct)


def test_languages_and_categories():
    languages = dialog_languages()
    assert {"english", "russian"} <= set(languages) and languages == sorted(languages)
    assert dialog_categories("russian") == ["conversations", "food", "money"]
    assert {"ai", "food", "greetings", "money"} <= set(dialog_categories("english"))


@pytest.mark.parametrize("language", ["english", "russian"])
def test_dialogs_load(language):
    dialogs = load_dialogs(language)
    count, distinct = _reference_dialogs(language)
    assert len(dialogs) == distinct and len(set(dialogs)) == len(dialogs)
    assert len(load_dialogs(language, unique=False)) == count
    if language == "english":  # tech_support repeats 10 dialogs 1,050 times
        assert count - distinct > 1000
    assert all(isinstance(d, Dialog) and d.language == language for d in dialogs)
    assert all(d.turns and all(isinstance(t, str) and t == t.strip() and t for t in d.turns) for d in dialogs)
    assert {d.category for d in dialogs} == set(dialog_categories(language))
    two_plus = [d for d in dialogs if len(d.turns) >= 2]
    assert len(two_plus) > 0.9 * len(dialogs)
    assert two_plus[0].pairs()[0] == two_plus[0].turns[:2]


def test_russian_dialogs_are_cyrillic():
    dialogs = load_dialogs("russian", ["food", "money"])
    assert {d.category for d in dialogs} == {"food", "money"}
    cyrillic = sum(bool(CYRILLIC.search(t)) for d in dialogs for t in d.turns)
    total = sum(len(d.turns) for d in dialogs)
    assert cyrillic > 0.9 * total
    assert load_dialogs("Russian", "food") == load_dialogs("russian", ["food"])


def test_unknown_language_and_category():
    with pytest.raises(ValueError, match="klingon.*english.*russian"):
        load_dialogs("klingon")
    with pytest.raises(ValueError, match="'sports'.*conversations, food, money"):
        load_dialogs("russian", ["food", "sports"])
    with pytest.raises(ValueError, match="available"):
        dialog_categories("elvish")
    with pytest.raises(TypeError, match="language"):
        load_dialogs(None)


def test_missing_package_error(monkeypatch):
    # None in sys.modules makes "import chatterbot_corpus" fail, as if it were not installed.
    monkeypatch.setitem(sys.modules, "chatterbot_corpus", None)
    for call in (lambda: load_dialogs("english"), dialog_languages, lambda: dialogs_text("russian")):
        with pytest.raises(MissingDependencyError) as info:
            call()
        assert str(info.value) == "chatterbot-corpus is not installed: pip install chatterbot-corpus"
        assert isinstance(info.value, ImportError)


def test_require_does_not_mislabel_a_broken_package(tmp_path, monkeypatch):
    (tmp_path / "brokenpkg_llmc.py").write_text("import no_such_module_llmc\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as info:
        deps.require("brokenpkg_llmc", "brokenpkg")
    assert not isinstance(info.value, MissingDependencyError)
    assert info.value.name == "no_such_module_llmc"
    with pytest.raises(MissingDependencyError, match="pip install some-pkg"):
        deps.require("no_such_module_llmc", "some-pkg")


def test_odd_yaml_values_become_text(tmp_path, monkeypatch):
    folder = tmp_path / "testlang"
    folder.mkdir()
    (folder / "misc.yml").write_text(
        "categories:\n- misc\nconversations:\n"
        "- - 42\n  - yes\n  - 3.5\n"  # YAML numbers and bools
        "- - '  padded  '\n  -\n  - last\n"  # an empty turn in the middle is dropped
        "- []\n"  # empty dialog: dropped
        "- -\n"  # only a null turn: dropped
        "- a bare string\n",  # a malformed entry: one turn
        encoding="utf-8",
    )
    monkeypatch.setattr(dialogs_module, "_dialog_data_dir", lambda: tmp_path)
    assert dialog_languages() == ["testlang"]
    dialogs = load_dialogs("testlang")
    assert [d.turns for d in dialogs] == [("42", "True", "3.5"), ("padded", "last"), ("a bare string",)]
    assert dialogs_text("testlang") == "42\nTrue\n3.5\n\npadded\nlast\n\na bare string"


def test_yaml_is_loaded_safely(tmp_path, monkeypatch):
    """A Python-object tag must not be executed (it would be with yaml.Loader/UnsafeLoader)."""
    folder = tmp_path / "evil"
    folder.mkdir()
    marker = tmp_path / "pwned"
    (folder / "x.yml").write_text(
        f"conversations:\n- - !!python/object/apply:os.system ['touch {marker}']\n  - hi\n",
        encoding="utf-8",
    )
    monkeypatch.setattr(dialogs_module, "_dialog_data_dir", lambda: tmp_path)
    with pytest.raises(ValueError, match="not plain YAML"):
        load_dialogs("evil")
    assert not marker.exists()


@pytest.mark.parametrize("language", ["english", "russian"])
def test_dialogs_text(language):
    dialogs = load_dialogs(language)
    text = dialogs_text(language)
    blocks = text.split("\n\n")
    assert len(blocks) == len(dialogs), "a blank line separates dialogs and nothing else"
    for block, dialog in zip(blocks, dialogs):
        assert block.replace("\n", "") == "".join(dialog.turns).replace("\n", "")
    if language == "russian":  # no multi-line turns: exactly one line per turn
        assert blocks == ["\n".join(d.turns) for d in dialogs]
        assert CYRILLIC.search(text)


def test_topic_dataset():
    data_ = tasks.topic_dataset()
    counts = {label: sum(d.label == label for d in data_) for label in tasks.TOPIC_CATEGORIES}
    assert counts == {"sports": 15, "politics": 15, "technology": 15, "culture": 15}
    assert [d.label for d in data_] == sorted(d.label for d in data_)
    for label, categories in tasks.TOPIC_CATEGORIES.items():
        source = {"\n".join(d.turns) for d in load_dialogs("english", categories)}
        texts = [d.text for d in data_ if d.label == label]
        assert len(set(texts)) == len(texts) and set(texts) <= source
    assert tasks.topic_dataset() == data_
    assert tasks.topic_dataset(seed=1) != data_  # culture and technology have more to draw from
    everything = tasks.topic_dataset(per_label=None)
    assert sum(d.label == "politics" for d in everything) == 15
    assert sum(d.label == "technology" for d in everything) == 20  # 10 computers + 10 tech_support
    with pytest.raises(ValueError, match="per_label"):
        tasks.topic_dataset(per_label=0)


# ----------------------------------------------------------------------------------------
# 3. synthetic tasks
# ----------------------------------------------------------------------------------------

ARITHMETIC = re.compile(r"^\d+(?:[-+*]\d+)+=$")


def _reference_answer(ex: Example) -> str:
    """The answer computed here, independently of llm_course.text.tasks."""
    instruction, _, payload = ex.prompt.partition(": ")
    if ex.task == "copy":
        return payload
    if ex.task == "reverse":
        return payload[::-1]
    if ex.task == "sort":
        return "".join(sorted(payload))
    if ex.task == "addition":
        a, b = ex.prompt[:-1].split("+")
        return str(int(a) + int(b))
    if ex.task == "arithmetic":
        assert ARITHMETIC.match(ex.prompt), ex.prompt
        return str(eval(ex.prompt[:-1]))  # safe: the regex allows digits and + - * only
    if ex.task == "uppercase":
        return payload.upper()
    if ex.task == "lowercase":
        return payload.lower()
    if ex.task == "count_words":
        return str(len(payload.split()))
    raise AssertionError(ex.task)


@pytest.mark.parametrize("name", list(TASKS))
def test_task_answers_are_right(name):
    examples = make_task(name, 300, seed=1)
    assert len(examples) == 300
    assert all(ex.task == name for ex in examples)
    for ex in examples:
        assert ex.answer == _reference_answer(ex), ex
        assert check(ex, ex.answer) and check(ex, f"  {ex.answer}\n")
        assert not check(ex, ex.answer + "0")
    assert len({ex.prompt for ex in examples}) > 30  # real variety, not one example repeated


@pytest.mark.parametrize("name", list(TASKS))
def test_task_determinism(name):
    assert make_task(name, 50, seed=7) == make_task(name, 50, seed=7)
    assert make_task(name, 50, seed=7) != make_task(name, 50, seed=8)
    assert make_task(name, 20, seed=7) == make_task(name, 50, seed=7)[:20]  # n only truncates


def test_tasks_have_their_own_streams():
    copies = [ex.prompt.split(": ")[1] for ex in make_task("copy", 20)]
    reverses = [ex.prompt.split(": ")[1] for ex in make_task("reverse", 20)]
    assert copies != reverses


def test_task_case_inputs_need_changing():
    upper = make_task("uppercase", 100)
    assert sum(ex.prompt.split(": ")[1] != ex.answer for ex in upper) > 90


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(["copy", "reverse", "sort"]),
    low=st.integers(1, 12),
    extra=st.integers(0, 12),
    alphabet=st.sampled_from(["letters", "digits", "alnum"]),
    seed=st.integers(0, 10**6),
)
def test_sequence_options(name, low, extra, alphabet, seed):
    allowed = {"letters": str.islower, "digits": str.isdigit, "alnum": lambda c: c.islower() or c.isdigit()}[alphabet]
    for ex in make_task(name, 20, seed=seed, min_len=low, max_len=low + extra, alphabet=alphabet):
        payload = ex.prompt.split(": ")[1]
        assert low <= len(payload) <= low + extra
        assert all(allowed(c) for c in payload)
        assert ex.answer == _reference_answer(ex)


@settings(max_examples=40, deadline=None)
@given(low=st.integers(1, 6), extra=st.integers(0, 6), n_terms=st.integers(2, 5), seed=st.integers(0, 10**6))
def test_arithmetic_options(low, extra, n_terms, seed):
    for ex in make_task("arithmetic", 20, seed=seed, min_digits=low, max_digits=low + extra, n_terms=n_terms):
        numbers = re.findall(r"\d+", ex.prompt)
        assert len(numbers) == n_terms
        assert all(low <= len(x) <= low + extra and (len(x) == 1 or x[0] != "0") for x in numbers)
        assert ex.answer == _reference_answer(ex)
    for ex in make_task("addition", 20, seed=seed, min_digits=low, max_digits=low + extra):
        assert all(low <= len(x) <= low + extra for x in ex.prompt[:-1].split("+"))
    only_plus = make_task("arithmetic", 20, seed=seed, ops="+", n_terms=n_terms)
    assert all("-" not in ex.prompt and "*" not in ex.prompt for ex in only_plus)


def test_word_options():
    for ex in make_task("count_words", 100, min_words=3, max_words=4):
        assert ex.answer in {"3", "4"}


def test_task_errors():
    with pytest.raises(ValueError, match="unknown task 'nope'.*copy.*count_words"):
        make_task("nope", 5)
    with pytest.raises(ValueError, match="n must be a non-negative integer, got -1"):
        make_task("copy", -1)
    with pytest.raises(TypeError, match="n must be a non-negative integer, got"):
        make_task("copy", 2.5)
    assert make_task("copy", 0) == []
    with pytest.raises(TypeError, match="no option digits.*min_len=3"):
        make_task("copy", 5, digits=3)
    # option values are checked even when no example would be generated
    with pytest.raises(ValueError, match="max_len must be an integer >= 5, got 2"):
        make_task("copy", 0, min_len=5, max_len=2)
    with pytest.raises(ValueError, match="alphabet"):
        make_task("sort", 1, alphabet="greek")
    with pytest.raises(ValueError, match="ops"):
        make_task("arithmetic", 1, ops="/")
    with pytest.raises(ValueError, match="n_terms"):
        make_task("arithmetic", 1, n_terms=1)
    with pytest.raises(ValueError, match="min_digits"):
        make_task("addition", 1, min_digits=0)
    with pytest.raises(TypeError, match="prediction"):
        check(make_task("copy", 1)[0], None)


def test_registry_covers_the_required_tasks():
    required = {"copy", "reverse", "sort", "addition", "arithmetic", "uppercase", "lowercase", "count_words"}
    assert required <= set(TASKS)
    for name, factory in TASKS.items():
        assert "Chapter 01" in (factory.__doc__ or ""), name


# train_val_split


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 200), val_fraction=st.floats(0.0, 0.99), seed=st.integers(0, 1000))
def test_train_val_split(n, val_fraction, seed):
    items = list(range(n))
    train, val = train_val_split(items, val_fraction, seed)
    assert len(val) == round(n * val_fraction)
    assert sorted(train + val) == items  # a partition
    assert train == sorted(train) and val == sorted(val)  # original order kept
    assert train_val_split(items, val_fraction, seed) == (train, val)


def test_train_val_split_seeds_and_errors():
    items = [f"x{i}" for i in range(100)]
    assert train_val_split(items, 0.2, seed=0) != train_val_split(items, 0.2, seed=1)
    assert train_val_split(items, 0.0) == (items, [])
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(items, 1.5)
    with pytest.raises(ValueError, match="seed"):
        train_val_split(items, 0.1, seed=-1)


def test_public_api_has_chapter_docstrings():
    for module, name in [(m, n) for m in (corpora, tasks, deps) for n in m.__all__]:
        obj = getattr(module, name)
        if callable(obj) or inspect.isclass(obj):
            assert "Chapter" in (obj.__doc__ or ""), name


# ----------------------------------------------------------------------------------------
# the cost of a script in tokens (chapter 01's multilinguality, the figure notebooks 04 and 08 state)
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bytes_only():
    """A byte-level tokenizer with no merges: every UTF-8 byte is one token."""
    from llm_course.text.tokenizer import ByteLevelBPETokenizer

    return ByteLevelBPETokenizer.train("x", vocab_size=257)


class _OneTokenPerWord:
    """A transformers-like stand-in: encode(text, add_special_tokens=...) gives one id per word."""

    def encode(self, text, add_special_tokens=True):
        return list(range(len(text.split()) + (2 if add_special_tokens else 0)))


def test_cyrillic_token_cost_by_hand(bytes_only):
    # "да нет": 2 + 2 bytes, a space, 3 x 2 bytes = 11 tokens for 5 letters; the comma, "!", digits,
    # Latin letters and line breaks are not Cyrillic and are left out (words rejoined with one space).
    assert encoding.cyrillic_token_cost(bytes_only, "да, нет!") == pytest.approx(11 / 5)
    assert encoding.cyrillic_token_cost(bytes_only, "Ёж 42 ok\nёлка.") == pytest.approx((4 + 1 + 8) / 6)
    # whole words: one token per word (special tokens not added), so 1 / mean word length
    assert encoding.cyrillic_token_cost(_OneTokenPerWord(), "Привет, мир!") == pytest.approx(2 / 9)
    assert encoding.latin_token_cost(bytes_only, "Hello, world 42 привет") == pytest.approx(11 / 10)
    assert encoding.latin_token_cost(_OneTokenPerWord(), "Hello, world!") == pytest.approx(2 / 10)


def test_cyrillic_token_cost_of_the_shipped_tokenizer_matches_the_rust_tokenizer(bytes_only):
    """course-gpt's tokenizer, measured on the Russian dialogs, through the course's encoder and through
    the same tokenizer.json in Hugging Face's Rust ``tokenizers``: the same figure, between whole words
    and one token per byte."""
    from tokenizers import Tokenizer

    from llm_course.text.tokenizer import ByteLevelBPETokenizer
    from llm_course.zoo.loading import checkpoint_dir

    folder = checkpoint_dir("course-gpt")
    ours = encoding.cyrillic_token_cost(ByteLevelBPETokenizer.from_pretrained(folder))
    rust = encoding.cyrillic_token_cost(Tokenizer.from_file(str(folder / "tokenizer.json")))
    assert ours == rust
    assert encoding.cyrillic_token_cost(bytes_only) == pytest.approx(2.0, abs=0.2)  # 2 bytes a letter, + spaces
    assert 0.3 < ours < 1.5  # it learned some Cyrillic merges, far from whole words
    english = encoding.latin_token_cost(ByteLevelBPETokenizer.from_pretrained(folder))
    # bilingual (English docs + Russian manual pages): a Cyrillic letter costs about 1.2 Latin ones
    # (the docs-only tokenizer of 2026-11-29: 1.14 vs 0.38, three times)
    assert english < ours < 1.5 * english


@pytest.mark.parametrize("tokenizer, text, error, match", [
    (object(), "привет", TypeError, "must have an encode"),
    ("_bytes", b"\xd0\xb4\xd0\xb0", TypeError, "text must be a string, got bytes"),
    ("_bytes", "hello, world 42", ValueError, "no Cyrillic letters"),
])
def test_cyrillic_token_cost_bad_input(bytes_only, tokenizer, text, error, match):
    with pytest.raises(error, match=match):
        encoding.cyrillic_token_cost(bytes_only if tokenizer == "_bytes" else tokenizer, text)
