"""llm_course.learn: show_source, questions with feedback, exercise checkers, chapter 01's content. Issue 18."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from llm_course.learn import chapter01 as ch01
from llm_course.learn.checker import Case, ExerciseSet, FunctionExercise, ValueExercise, call_with_time_limit, is_stub
from llm_course.learn.feedback import FAILED, NOT_ATTEMPTED, PASSED, difference
from llm_course.learn.quiz import Choice, MultipleChoice, Numeric, Quiz
from llm_course.learn.source import show_source, source_of
from llm_course.models.intro import BigramLM, gpt_param_breakdown
from llm_course.text.tokenizer import ByteLevelBPETokenizer, bpe_merge_steps, bytes_to_unicode, pretokenize

# ---------------------------------------------------------------------------------------------------
# show_source
# ---------------------------------------------------------------------------------------------------


def test_source_of_is_the_packages_own_text():
    import inspect

    code = source_of(bpe_merge_steps)
    assert code.code == inspect.getsource(bpe_merge_steps).rstrip("\n")
    assert code.where.startswith("llm_course/text/tokenizer.py, lines ")
    first = int(code.where.split("lines ")[1].split("-")[0])
    assert inspect.getsourcelines(bpe_merge_steps)[1] == first
    html = code._repr_html_()
    assert "<span" in html and "bpe_merge_steps" in html  # highlighted by Pygments
    assert str(code).startswith("# llm_course/text/tokenizer.py") and "def bpe_merge_steps" in str(code)
    assert "def next_token_probs" in source_of(BigramLM.next_token_probs).code  # a method
    assert source_of(BigramLM).code.startswith("class BigramLM")


def test_show_source_prints_without_a_front_end(capsys):
    show_source(BigramLM.next_token_probs)
    out = capsys.readouterr().out
    assert out.startswith("# llm_course/models/intro.py") and "row / row.sum()" in out


@pytest.mark.parametrize("bad, error", [(3, TypeError), ("bpe_merge_steps", TypeError), (BigramLM(4), TypeError),
                                        (len, ValueError)])
def test_show_source_bad_input(bad, error):
    with pytest.raises(error, match="show_source|no Python source"):
        source_of(bad)


# ---------------------------------------------------------------------------------------------------
# Questions
# ---------------------------------------------------------------------------------------------------


def _quiz() -> Quiz:
    return Quiz([MultipleChoice("Pick b", (Choice("a", False, "a is wrong because"), Choice("b", True, "b is it"))),
                 Numeric("How much?", 4096, "exactly 4096", mistakes={12.0: "bits, not perplexity"})])


def test_quiz_feedback_as_a_plain_call():
    quiz = _quiz()
    assert str(quiz.answer(1, "b")) == "✓ Right: b is it" and quiz.answer(1, " B) ").passed
    assert str(quiz.answer(1, "a")) == "✗ Not quite: a is wrong because" and not quiz.answer(1, "a")
    assert quiz.answer(2, 4096).passed and quiz.answer(2, "4,096").passed and quiz.answer(2, 4100).passed  # 1 %
    assert str(quiz.answer(2, 12)) == "✗ Not quite: bits, not perplexity"
    assert "too low" in str(quiz.answer(2, 100)) and "too high" in str(quiz.answer(2, 10_000))
    assert "1. Pick b" in str(quiz) and "b) b" in str(quiz)


@pytest.mark.parametrize("number, response, error, match", [
    (3, "a", ValueError, "questions 1 to 2"), (0, "a", ValueError, "questions 1 to 2"),
    (1.0, "a", TypeError, "number"), (1, "c", ValueError, "not one of the options"),
    (1, 1, TypeError, "letter"), (2, "many", ValueError, "not a number"), (2, True, TypeError, "answer"),
    (2, float("nan"), ValueError, "answer")])
def test_quiz_bad_input(number, response, error, match):
    with pytest.raises(error, match=match):
        _quiz().answer(number, response)


def test_question_definitions_are_checked():
    with pytest.raises(ValueError, match="exactly one choice"):
        MultipleChoice("?", (Choice("a", True, ""), Choice("b", True, "")))
    with pytest.raises(ValueError, match="at least one question"):
        Quiz([])
    with pytest.raises(TypeError, match="MultipleChoice or Numeric"):
        Quiz(["what?"])


def test_quiz_widget_gives_feedback_on_check():
    quiz = _quiz()
    quiz.widget()
    (choice, button, out), (number, button2, out2) = quiz.controls
    choice.value = "a"
    button.click()
    assert "a is wrong because" in out.value and "#b00" in out.value
    choice.value = "b"
    button.click()
    assert "b is it" in out.value and "#080" in out.value
    number.value = "four thousand"
    button2.click()
    assert "not a number" in out2.value  # bad input in the widget: the message, not an exception
    number.value = "4096"
    button2.click()
    assert "exactly 4096" in out2.value


COLAB_SCRIPT = textwrap.dedent("""
    import json, ipywidgets
    from llm_course.learn.chapter01 import quiz
    q = quiz()
    q.widget()
    (choice, button, out) = q.controls[0]
    choice.value = "b"; button.click()
    right = out.value
    (number, button2, out2) = q.controls[1]
    number.value = "8.318"; button2.click()
    print("RESULT " + json.dumps({"ipywidgets": ipywidgets.__version__, "right": right, "mistake": out2.value}))
""")


def test_quiz_widget_works_with_colabs_ipywidgets(tmp_path):
    target = tmp_path / "ipywidgets-colab"
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check",
           "--target", str(target), "ipywidgets==7.7.1", "ipython_genutils"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        pytest.skip(f"could not install ipywidgets 7.7.1 from the package registry: {r.stderr[-500:]}")
    r = subprocess.run([sys.executable, "-c", COLAB_SCRIPT], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(target)})
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert r.returncode == 0 and lines, r.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["ipywidgets"] == "7.7.1"
    assert "✓ Right" in out["right"] and "the loss" in out["mistake"]


# ---------------------------------------------------------------------------------------------------
# The checker: a student's code never crashes or hangs it
# ---------------------------------------------------------------------------------------------------


def _double(xs):
    return [2 * x for x in xs]


DOUBLE = FunctionExercise("double", _double, lambda rng: [Case(([],), "empty"), ([1, 2],), ([3.5],)], hint="2x")


def _stub(xs):
    """Double each item."""
    raise NotImplementedError()


def _ellipsis(xs):
    ...


def _mutates(xs):
    xs.append(0)
    return [2 * x for x in xs[:-1]]


def _raises(xs):
    return [2 * xs[5]]


def _forgets_return(xs):
    [2 * x for x in xs]  # noqa: B018


def _loops(xs):
    while True:
        pass


def _swallows_everything(xs):
    while True:
        try:
            time.sleep(0.01)
        except Exception:  # a student's catch-all must not defeat the time limit
            pass


def _wrong_type(xs):
    return {"doubled": [2 * x for x in xs]}


def _exits(xs):
    raise SystemExit(1)


@pytest.mark.parametrize("answer, status, words", [
    (_double, PASSED, ["correct on all 3 inputs", "1 edge case"]),
    (_stub, NOT_ATTEMPTED, ["not attempted yet", "ex.hint('double')"]),
    (_ellipsis, NOT_ATTEMPTED, ["not attempted yet"]),
    (_mutates, FAILED, ["changed its input `xs` in place", "(empty)"]),
    (_raises, FAILED, ["raised IndexError", "xs=[]", "line", "return [2 * xs[5]]"]),
    (_forgets_return, FAILED, ["returned None", "missing `return`"]),
    (_wrong_type, FAILED, ["expected a list (or tuple), got a dict"]),
    (_exits, FAILED, ["raised SystemExit"]),
    (lambda xs: [3 * x for x in xs], FAILED, ["xs=[1, 2]", "expected 2 at [0], got 3", "expected: [2, 4]"]),
    ([2, 4], FAILED, ["expected your function itself"]),
])
def test_checker_messages(answer, status, words):
    result = DOUBLE.check(answer)
    assert result.status == status
    for w in words:
        assert w in result.message, result.message


@pytest.mark.parametrize("answer", [_loops, _swallows_everything])
def test_time_limit_stops_a_hang(answer):
    exercise = FunctionExercise("double", _double, lambda rng: [([1],)], hint="", time_limit=0.3)
    t0 = time.perf_counter()
    result = exercise.check(answer)
    assert time.perf_counter() - t0 < 3
    assert result.status == FAILED and "did not finish within 0.3 s" in result.message


@pytest.mark.parametrize("answer", [_loops, _swallows_everything])
def test_time_limit_outside_the_main_thread(answer):
    """Without signals (another thread, or Windows) the student's code runs in a daemon thread, and a hang
    is stopped there: no thread is left spinning (one left behind took a core and the GIL from every later
    test and notebook of a CI run, which then ran past CI's time limit)."""
    before = set(threading.enumerate())
    box = []
    worker = threading.Thread(target=lambda: box.append(call_with_time_limit(answer, ([1],), 0.3)))
    t0 = time.perf_counter()
    worker.start()
    worker.join(5)
    assert box and box[0].kind == "timeout" and time.perf_counter() - t0 < 3
    deadline = time.perf_counter() + 5
    while (left := [t for t in threading.enumerate() if t not in before and t.is_alive()]) and \
            time.perf_counter() < deadline:
        time.sleep(0.05)
    assert not left, f"the timed-out student code is still running in {left}"
    assert call_with_time_limit(_double, ([1],), 1).value == [2]  # and the main thread's alarm is off again


def test_is_stub():
    assert is_stub(_stub) and is_stub(_ellipsis) and not is_stub(_double) and not is_stub(len)


def test_difference_on_arrays_and_tensors():
    import torch

    assert difference(np.zeros((2, 3)), np.zeros((3, 2))) == "expected shape (2, 3), got shape (3, 2)"
    assert "expected a NumPy array" in difference(np.zeros(2), [0.0, 0.0])
    assert "the first at index (1,)" in difference(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.5]))
    assert difference(torch.ones(2), torch.ones(2) + 1e-9) is None
    assert difference({"a": 1}, {"a": 1, "b": 2}) == "unexpected key 'b' (1 extra keys in all)"
    assert difference(0.1 + 0.2, 0.3) is None and difference(1, 2) == "expected 1, got 2"


def test_value_exercise():
    ex = ExerciseSet([ValueExercise("ppl", hint="exp", expected=512, rtol=0.001, mistakes={6.238: "the loss"}),
                      ValueExercise("measure", hint="run it", low=1, high=2, kind="experiment")])
    assert ex.check("ppl", ...).status == NOT_ATTEMPTED
    assert ex.check("ppl", np.float64(512.0)).passed and ex.check("ppl", 512).passed
    assert "the loss" in str(ex.check("ppl", 6.238)) and "too high" in str(ex.check("ppl", 600))
    assert "expected a number" in str(ex.check("ppl", "512"))
    assert "explain it" in str(ex.check("measure", 1.5))  # an experiment wants its sentence too
    assert ex.check("measure", 1.5, explanation="it is between one and two").passed
    assert "outside the range" in str(ex.check("measure", 3, explanation="it is between one and two"))
    assert "hint: exp" in str(ex.check("ppl", 600, hint=True)) and ex.hint("ppl") == "hint for ppl: exp"
    with pytest.raises(ValueError, match="no exercise named 'nope'"):
        ex.check("nope", 1)
    with pytest.raises(TypeError, match="hint"):
        ex.check("ppl", 512, hint="yes")


# ---------------------------------------------------------------------------------------------------
# Chapter 01: the references agree with the library, each checker rejects a typical wrong answer
# ---------------------------------------------------------------------------------------------------

TEXTS = ["low lower lowest newer newest wider widest low low new new", "aaaa aaa aa a", "",
         "Привет! Как дела? 🐍🚀 tab\there", "the the the then them"]


def _byte_words(text: str) -> list[list[str]]:
    b2u = bytes_to_unicode()
    return [[b2u[b] for b in w.encode("utf-8")] for w in pretokenize(text)]


@pytest.mark.parametrize("text", TEXTS + ["".join(np.random.default_rng(s).choice(list("ab c"), 60)) for s in range(5)])
def test_merge_pair_replays_the_librarys_bpe_training(text):
    words = _byte_words(text)
    for step in bpe_merge_steps(text, 12):
        words = [ch01.merge_pair(w, step["pair"]) for w in words]
        assert [t for w in words for t in w] == step["tokens"]


def test_apply_merges_encodes_like_the_librarys_tokenizer():
    corpus = "the quick brown fox jumps over the lazy dog; the dog sleeps, the fox runs " * 20
    tok = ByteLevelBPETokenizer.train([corpus], vocab_size=300)
    for word in ["the", " fox", " foxes", " doggy", " quickly", "xyz"]:
        ours = ch01.apply_merges(_byte_words(word)[0], tok.merges)
        assert ours == tok.convert_ids_to_tokens(tok.encode(word)), word


def test_bigram_references_match_bigram_lm():
    rng = np.random.default_rng(0)
    for v, n, alpha in [(5, 200, 0.1), (3, 2, 1.0), (50, 1000, 0.01)]:
        ids = rng.integers(0, v, size=n)
        lm = BigramLM(v, alpha=alpha).fit(ids)
        assert np.array_equal(ch01.bigram_counts(ids, v), lm.counts)
        probs = ch01.bigram_probs(ch01.bigram_counts(ids, v), alpha)
        assert np.allclose(probs, np.stack([lm.next_token_probs(t) for t in range(v)]), rtol=1e-12)
        assert ch01.perplexity(probs, ids) == pytest.approx(lm.perplexity(ids), rel=1e-12)


def _counts_with_fancy_indexing(ids, vocab_size):
    counts = np.zeros((vocab_size, vocab_size))
    counts[ids[:-1], ids[1:]] += 1  # the typical wrong answer: a repeated pair counted once
    return counts


def _merges_in_one_pass(word, merges):
    text = "".join(word)  # the typical wrong answer: merge on the joined string, losing token boundaries
    for a, b in merges:
        text = text.replace(a + b, "\0" + a + b + "\0")
    return [t for t in text.split("\0") if t]


def _merges_overlapping(word, merges):
    for a, b in merges:
        out, i = [], 0
        while i < len(word):
            if i + 1 < len(word) and (word[i], word[i + 1]) == (a, b):
                out.append(a + b)
            else:
                out.append(word[i])
            i += 1  # wrong: does not skip the second token of the pair
        word = out
    return word


@pytest.mark.parametrize("name, wrong, words", [
    ("apply_merges", _merges_in_one_pass, ["differs"]),
    ("apply_merges", _merges_overlapping, ["differs"]),
    ("bigram_counts", _counts_with_fancy_indexing, ["the same pair three times", "expected 3.0, got 1.0"]),
    ("perplexity", lambda probs, ids: float(np.exp(-np.log(probs[ids[:-1], ids[1:]]).sum())), ["differs"]),
    ("perplexity", lambda probs, ids: float(-np.log(probs[ids[:-1], ids[1:]]).mean()), ["differs"]),  # the loss
    ("bigram_params", 2048, ["one row"]),
    ("uniform_perplexity", float(np.log(512)), ["the loss in nats"]),
    ("small_data_perplexity", 16.45, ["outside the range"]),  # the 200,000-character figure
    ("bpe_tokens_per_byte", 1.0, ["outside the range"]),  # no merges at all
])
def test_each_chapter01_checker_rejects_a_typical_wrong_answer(name, wrong, words):
    result = ch01.EXERCISES.check(name, wrong, explanation="a sentence of several words")
    assert result.status == FAILED
    for w in words:
        assert w in result.message, result.message


@pytest.mark.parametrize("name", ["apply_merges", "bigram_counts", "perplexity"])
def test_each_chapter01_checker_accepts_the_reference_and_reports_a_stub(name):
    assert ch01.EXERCISES.check(name, ch01.EXERCISES[name].reference).passed
    assert ch01.EXERCISES.check(name, _stub).status == NOT_ATTEMPTED


def test_chapter01_experiment_ranges_hold_what_the_library_measures():
    from llm_course.text.corpora import docs_corpus

    corpus = docs_corpus()
    byte_ids = lambda s: np.frombuffer(s.encode("utf-8"), dtype=np.uint8).astype(np.int64)  # noqa: E731
    small = BigramLM(256, alpha=0.1).fit(byte_ids(corpus.train[:2000])).perplexity(byte_ids(corpus.val[:50_000]))
    text = corpus.train[:20_000]
    per_byte = bpe_merge_steps(text, 200)[-1]["num_tokens"] / len(text.encode("utf-8"))
    sentence = "several words of explanation here"
    assert ch01.EXERCISES.check("small_data_perplexity", small, explanation=sentence).passed
    assert ch01.EXERCISES.check("bpe_tokens_per_byte", per_byte, explanation=sentence).passed
    assert ch01.EXERCISES.check("bigram_params", BigramLM(2048).num_parameters).passed
    uniform = BigramLM(512, alpha=1e12).fit(np.arange(10)).perplexity(np.arange(100) % 512)
    assert ch01.EXERCISES.check("uniform_perplexity", uniform).passed


def test_chapter01_quiz_answers_are_what_the_library_computes():
    quiz = ch01.quiz()
    assert 3 <= len(quiz) <= 5
    uniform = BigramLM(4096, alpha=1e12).perplexity(np.arange(200) % 4096)
    assert quiz.answer(2, uniform).passed and not quiz.answer(2, np.log(4096)).passed
    assert quiz.answer(3, BigramLM(2048).num_parameters).passed
    parts = gpt_param_breakdown(1, 768, 1, 1)
    block = parts["attention (all blocks)"] + parts["MLP (all blocks)"] + parts["LayerNorms"] - 2 * 768  # no final LN
    assert quiz.answer(4, block).passed
    for number, right in [(1, "b"), (5, "c")]:
        q = quiz.questions[number - 1]
        assert [quiz.answer(number, k).passed for k in q.letters] == [k == right for k in q.letters]


def test_agree_checks_a_teaching_version_against_the_library():
    from llm_course.learn.checker import agree

    cases = [Case(([],), "empty"), ([1, 2],)]
    assert agree(lambda xs: [x + x for x in xs], _double, cases) == 2
    with pytest.raises(AssertionError, match=r"differs from the library\n  on input xs=\[1, 2\]"):
        agree(lambda xs: [3 * x for x in xs], _double, cases)
    with pytest.raises(AssertionError, match="changed its input"):
        agree(_mutates, _double, cases)
    with pytest.raises(ValueError, match="at least one input"):
        agree(_double, _double, [])
