"""Chapter 08's learning material: the references agree with the library, each checker rejects a typical wrong
answer (the manual's "last 5 messages" among them), the experiment's range and the quiz's answers are what the
library computes, and the lesson's key lines are on the page and checked. Issue 18."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from llm_course.apps.chat import ChatBot, build_prompt_ids, render_chat
from llm_course.apps.classification import build_prompt, classify_by_likelihood, label_scores, split_topics
from llm_course.infer.generation import sequence_logprob
from llm_course.learn import chapter08 as ch08
from llm_course.learn.feedback import FAILED, NOT_ATTEMPTED
from llm_course.models.modeling import context_length
from llm_course.text.encoding import encode_plain
from llm_course.zoo.loading import load_pretrained

SENTENCE = "several words of explanation here"


@pytest.fixture(scope="module")
def gpt():
    return load_pretrained("course-gpt")


@pytest.fixture(scope="module")
def topics():
    train, test = split_topics()
    labels = sorted({x.label for x in train})
    return train, test, labels


@pytest.fixture(scope="module")
def accuracies(gpt, topics):
    """course-gpt's accuracy on the 16 test dialogs: uncalibrated, calibrated, and with two examples per label."""
    model, tok = gpt
    train, test, labels = topics
    texts, truth = [x.text for x in test], [x.label for x in test]
    accuracy = lambda pred: float(np.mean([p == t for p, t in zip(pred, truth)]))  # noqa: E731
    runs = {"zero-shot": classify_by_likelihood(model, tok, texts, labels),
            "zero-shot, calibrated": classify_by_likelihood(model, tok, texts, labels, calibrate="N/A"),
            "2-shot, calibrated": classify_by_likelihood(model, tok, texts, labels, calibrate="N/A",
                                                         few_shot=ch08.few_shot_examples(train, labels, 2))}
    return {name: accuracy(pred) for name, pred in runs.items()}, runs


# ---------------------------------------------------------------------------------------------------
# The references are the library's
# ---------------------------------------------------------------------------------------------------


def test_fit_history_keeps_what_the_chat_bot_keeps():
    tok = ch08._course_tokenizer()
    cases = [c.args for c in ch08.EXERCISES["fit_history"].all_cases()]
    rng = np.random.default_rng(1)
    for _ in range(60):
        chat = ch08.random_chat(rng, int(rng.integers(1, 9)))
        cases.append((chat, int(rng.integers(ch08.prompt_tokens(chat[-1:]), ch08.prompt_tokens(chat) + 5)),
                      ch08.prompt_tokens))
    checked = 0
    for messages, budget, count in cases:
        try:
            ids, kept = build_prompt_ids(tok, messages, budget)
        except ValueError:  # the system prompt and the newest message alone do not fit: both refuse
            with pytest.raises(ValueError, match="longer than"):
                ch08.fit_history(messages, budget, count)
            continue
        assert ch08.fit_history(messages, budget, count) == kept
        assert len(ids) == count(kept) <= budget and ids == encode_plain(tok, render_chat(kept))
        checked += 1
    assert checked >= 80


def test_label_score_is_the_librarys_label_likelihood(gpt, topics):
    model, tok = gpt
    _, test, labels = topics
    for text, labs in [(test[0].text, labels), (test[5].text, ["science fiction", "sports"]),
                       ("Новый смартфон с революционной камерой", ["технологии", "спорт"])]:
        prompt = build_prompt(text).rstrip()  # the library moves the prompt's final space into the label
        prompt_ids = encode_plain(tok, prompt)
        for reduction in ("sum", "mean"):
            ours = []
            for label in labs:
                ids = prompt_ids + encode_plain(tok, " " + label)
                with torch.no_grad():
                    logits = model(input_ids=torch.tensor([ids])).logits[0].double().numpy()  # (T, V)
                ours.append(ch08.label_score(logits, np.array(ids), len(prompt_ids), reduction))
                if reduction == "sum":
                    assert ours[-1] == pytest.approx(sequence_logprob(model, torch.tensor(ids), len(prompt_ids)),
                                                     rel=1e-5, abs=1e-5)
            library = label_scores(model, tok, text, labs, reduction=reduction)
            assert ours == pytest.approx(library, rel=1e-5, abs=1e-5)


def test_rouge1_is_the_rouge_score_package():
    from rouge_score import rouge_scorer

    from llm_course.apps.summarization import rouge_scores

    scorer = rouge_scorer.RougeScorer(["rouge1"])
    pairs = [c.args for c in ch08.EXERCISES["rouge1"].all_cases()]
    for prediction, reference in pairs:
        assert ch08.rouge1(prediction, reference) == pytest.approx(tuple(scorer.score(reference, prediction)["rouge1"]),
                                                                   rel=1e-12)
    predictions, references = zip(*pairs)
    mean_f1 = np.mean([ch08.rouge1(p, r)[2] for p, r in pairs])
    with pytest.warns(UserWarning, match="no \\[a-z0-9\\] tokens"):  # the Cyrillic edge case
        assert rouge_scores(list(predictions), list(references), ["rouge1"])["rouge1"] == pytest.approx(mean_f1)


def test_few_shot_examples_extend_the_lessons_one_shot_prompt(topics):
    train, _, labels = topics
    lesson = [(next(x.text for x in train if x.label == label).split("\n")[0], label) for label in labels]
    assert ch08.few_shot_examples(train, labels, 1) == lesson
    two = ch08.few_shot_examples(train, labels, 2)
    assert two[:4] == lesson and [lab for _, lab in two] == labels * 2 and len(set(two)) == 8


# ---------------------------------------------------------------------------------------------------
# Each checker accepts the reference and rejects a typical wrong answer
# ---------------------------------------------------------------------------------------------------


def _stub(*args):
    """Not written yet."""
    raise NotImplementedError()


def _manual_last_five(messages, max_tokens, count_tokens):
    system = [m for m in messages if m["role"] == "system"]
    return system + [m for m in messages if m["role"] != "system"][-5:]  # the manual's "last 5 messages"


def _drops_the_system_prompt(messages, max_tokens, count_tokens):
    kept = list(messages)
    while count_tokens(kept) > max_tokens:
        kept = kept[1:]  # the oldest message first, whatever it is
        while kept and kept[0]["role"] == "assistant":
            kept = kept[1:]
    return kept


def _cuts_mid_turn(messages, max_tokens, count_tokens):
    system = [m for m in messages if m["role"] == "system"]
    turns = [m for m in messages if m["role"] != "system"]
    while count_tokens(system + turns) > max_tokens:
        turns = turns[1:]  # one message at a time: may leave a reply without its question
    return system + turns


def _strictly_below_the_budget(messages, max_tokens, count_tokens):
    return ch08.fit_history(messages, max_tokens - 1, count_tokens)  # `< max_tokens` instead of `<=`


def _sums_message_lengths(messages, max_tokens, count_tokens):
    system = [m for m in messages if m["role"] == "system"]
    turns = [m for m in messages if m["role"] != "system"]
    while sum(count_tokens([m]) for m in system + turns) > max_tokens and len(turns) > 1:
        turns = turns[1:]
    return system + turns


def _log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _reads_the_tokens_own_row(logits, ids, prompt_length, reduction="sum"):
    rows = _log_softmax(logits)[prompt_length:]  # off by one: row t predicts token t + 1, not token t
    picked = rows[np.arange(len(rows)), ids[prompt_length:]]
    return float(picked.sum() if reduction == "sum" else picked.mean())


def _raw_logits(logits, ids, prompt_length, reduction="sum"):
    rows = logits[prompt_length - 1:-1]  # no log-softmax: logits are not log-probabilities
    picked = rows[np.arange(len(rows)), ids[prompt_length:]]
    return float(picked.sum() if reduction == "sum" else picked.mean())


def _scores_the_prompt_too(logits, ids, prompt_length, reduction="sum"):
    rows = _log_softmax(logits)[:-1]  # every token after the first, the prompt's included
    picked = rows[np.arange(len(rows)), ids[1:]]
    return float(picked.sum() if reduction == "sum" else picked.mean())


def _exp_overflows(logits, ids, prompt_length, reduction="sum"):
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        probs = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)  # no max subtracted
        rows = np.log(probs)[prompt_length - 1:-1]
    picked = rows[np.arange(len(rows)), ids[prompt_length:]]
    return float(picked.sum() if reduction == "sum" else picked.mean())


def _tokens(text):
    return re.findall(r"[a-z0-9]+", text.lower())


def _prf(overlap, n_pred, n_ref):
    p, r = overlap / max(n_pred, 1), overlap / max(n_ref, 1)
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def _unclipped(prediction, reference):
    pred, ref = _tokens(prediction), _tokens(reference)
    return _prf(sum(w in ref for w in pred), len(pred), len(ref))  # every repeat of a shared word counts


def _distinct_words(prediction, reference):
    pred, ref = set(_tokens(prediction)), set(_tokens(reference))
    return _prf(len(pred & ref), len(pred), len(ref))


def _swaps_precision_and_recall(prediction, reference):
    p, r, f = ch08.rouge1(prediction, reference)
    return r, p, f


def _splits_on_spaces(prediction, reference):
    from collections import Counter

    pred, ref = prediction.split(), reference.split()  # "The" != "the", "cat." != "cat"
    return _prf(sum((Counter(pred) & Counter(ref)).values()), len(pred), len(ref))


@pytest.mark.parametrize("name, wrong, words", [
    ("fit_history", _manual_last_five, ["ERRATA 8.1", "everything fits", "expected 8 items, got 6"]),
    ("fit_history", _drops_the_system_prompt, ["the system prompt stays", "'system'"]),
    ("fit_history", _cuts_mid_turn, ["goes whole", "expected 6 items, got 7"]),
    ("fit_history", _strictly_below_the_budget, ["exactly the whole prompt's length"]),
    ("fit_history", _sums_message_lengths, ["differs"]),
    ("label_score", _reads_the_tokens_own_row, ["differs", "one-token label"]),  # uniform rows hide it
    ("label_score", _raw_logits, ["uniform logits", "expected -4.15888, got 0"]),
    ("label_score", _scores_the_prompt_too, ["uniform logits", "got -8.31777"]),
    ("label_score", _exp_overflows, ["large logits", "got -inf"]),
    ("label_score", lambda logits, ids, prompt_length, reduction="sum": _reads_the_tokens_own_row(
        logits, ids, prompt_length, "mean"), ["differs"]),
    ("rouge1", _unclipped, ["clipped counts", "expected 0.75 at [0], got 1"]),
    ("rouge1", _distinct_words, ["clipped counts", "expected 0.75 at [0], got 1"]),
    ("rouge1", _swaps_precision_and_recall, ["clipped counts", "expected 0.75 at [0], got 0.5"]),
    ("rouge1", _splits_on_spaces, ["case and punctuation"]),
    ("three_token_label", float(np.log(0.5)), ["reduction='mean'"]),
    ("three_token_label", -3.0, ["bits"]),
    ("three_token_label", 0.125, ["probability"]),
    ("rouge1_f1", _unclipped("the the the cat", "The cat sat on the mat.")[2], ["at most as often"]),
    ("rouge1_f1", _distinct_words("the the the cat", "The cat sat on the mat.")[2], ["distinct words"]),
    ("rouge1_f1", _splits_on_spaces("the the the cat", "The cat sat on the mat.")[2], ["lowercases"]),
    ("calibrated_label", 0, ["uncalibrated argmax"]),
    ("few_shot_accuracy", 0.25, ["calibrate='N/A'"]),
    ("few_shot_accuracy", 0.25, ["no examples in the prompt"]),
    ("few_shot_accuracy", 0.9, ["outside the range"]),
])
def test_each_chapter08_checker_rejects_a_typical_wrong_answer(name, wrong, words):
    result = ch08.EXERCISES.check(name, wrong, explanation=SENTENCE)
    assert result.status == FAILED
    for w in words:
        assert w in result.message, result.message


@pytest.mark.parametrize("name", ["fit_history", "label_score", "rouge1"])
def test_each_chapter08_checker_accepts_the_reference_and_reports_a_stub(name):
    assert ch08.EXERCISES.check(name, ch08.EXERCISES[name].reference).passed
    assert ch08.EXERCISES.check(name, _stub).status == NOT_ATTEMPTED


# ---------------------------------------------------------------------------------------------------
# Predictions, the experiment and the quiz: what the library computes
# ---------------------------------------------------------------------------------------------------


def test_chapter08_predictions_are_what_the_library_computes(monkeypatch):
    from rouge_score import rouge_scorer

    import llm_course.apps.classification as classification

    ex = ch08.EXERCISES
    logits = torch.zeros(4, 2)  # two tokens, equally likely: every label token has probability 0.5
    ids = torch.tensor([0, 1, 0, 1])
    three = float(torch.log_softmax(logits, -1)[:-1].gather(1, ids[1:, None]).sum())
    assert ex.check("three_token_label", three).passed
    assert ex.check("three_token_label", ch08.label_score(logits.numpy(), ids.numpy(), 1)).passed
    f1 = rouge_scorer.RougeScorer(["rouge1"]).score("The cat sat on the mat.", "the the the cat")["rouge1"].fmeasure
    assert ex.check("rouge1_f1", f1).passed

    def scores(model, tokenizer, text, labels, *args):  # the scores the exercise gives, in place of a model's
        return list(ch08.PRIOR_SCORES if text == "N/A" else ch08.TEXT_SCORES)

    monkeypatch.setattr(classification, "label_scores", scores)
    labels = ["a", "b", "c"]
    picked = classification.classify_by_likelihood(None, None, ["some text"], labels, calibrate="N/A")[0]
    assert ex.check("calibrated_label", labels.index(picked)).passed
    uncalibrated = classification.classify_by_likelihood(None, None, ["some text"], labels)[0]
    assert "uncalibrated" in str(ex.check("calibrated_label", labels.index(uncalibrated)))


def test_chapter08_experiment_range_holds_what_the_library_measures(accuracies):
    acc, runs = accuracies
    ex = ch08.EXERCISES
    assert ex.check("few_shot_accuracy", acc["2-shot, calibrated"], explanation=SENTENCE).passed
    # the mistake it names (no examples in the prompt: 4 of 16, calibrated or not) is what the library measures
    assert acc["zero-shot"] == 0.25 and len(set(runs["zero-shot"])) == 1
    assert acc["zero-shot, calibrated"] == 0.25 and len(set(runs["zero-shot, calibrated"])) > 1


def test_chapter08_quiz_answers_are_what_the_library_computes(accuracies):
    from rouge_score import rouge_scorer

    quiz = ch08.quiz()
    assert 3 <= len(quiz) <= 5
    chat_model, chat_tok = load_pretrained("course-gpt-chat")
    assert context_length(chat_model) == 384
    assert quiz.answer(3, ChatBot(chat_model, chat_tok, max_new_tokens=40).prompt_budget).passed
    assert not quiz.answer(3, context_length(chat_model)).passed
    score = rouge_scorer.RougeScorer(["rouge1"]).score("Return the value of x.", "the value the value the value")
    assert quiz.answer(4, score["rouge1"].precision).passed and not quiz.answer(4, score["rouge1"].recall).passed

    # 1: five long messages overflow the budget; with short ones, more than five fit
    tok = ch08._course_tokenizer()
    long = [{"role": "user" if i % 2 == 0 else "assistant", "content": "A long message. " * 30} for i in range(5)]
    assert len(encode_plain(tok, render_chat(long))) > 344
    short = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"Message {i}."} for i in range(11)]
    assert len(build_prompt_ids(tok, short, 344)[1]) == 11
    # 2: the system prompt stays, whole exchanges go
    chat = [{"role": "system", "content": "Be brief."}] + short
    _, kept = build_prompt_ids(tok, chat, ch08.prompt_tokens(chat) - 1)
    assert kept[0] == chat[0] and kept[1]["role"] == "user" and kept[1:] == chat[3:]
    # 5: uncalibrated, one label for every text; calibrated, several labels, yet still 4 of 16 right
    acc, runs = accuracies
    assert len(set(runs["zero-shot"])) == 1 < len(set(runs["zero-shot, calibrated"]))
    assert acc["zero-shot, calibrated"] == acc["zero-shot"] == 0.25
    for number, right in [(1, "b"), (2, "c"), (5, "a")]:
        q = quiz.questions[number - 1]
        assert [quiz.answer(number, k).passed for k in q.letters] == [k == right for k in q.letters]


# ---------------------------------------------------------------------------------------------------
# The lesson
# ---------------------------------------------------------------------------------------------------


def test_chapter08_key_lines_are_on_the_page_and_checked():
    import nbformat

    from llm_course.chapters import find_chapter

    nb = nbformat.read(find_chapter("08").notebook(), as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    checks = {"fit_history": "agree(", "label_scores_by_hand": "agree(", "rouge1_by_hand": "agree("}
    for name, call in checks.items():
        where = next(i for i, s in enumerate(code) if f"def {name}(" in s)
        assert len(code[where].splitlines()) <= 30, f"the key-lines cell of {name} should be short enough to read"
        check = code[where + 1]  # the check is the very next cell
        assert call in check and name in check, f"the cell after {name} must check it with agree"
        assert len(check.splitlines()) <= 30
    assert "classify_by_hand(" in code[next(i for i, s in enumerate(code) if "def label_scores_by_hand(" in s) + 1]
