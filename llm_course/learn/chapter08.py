"""Chapter 08's questions and exercises: chat history by tokens, label scoring, ROUGE-1. Chapter 08.

The reference solutions below are the short teaching versions of the library's code; the tests check
each one against the library (``apps.chat.build_prompt_ids``, ``infer.generation.sequence_logprob`` /
``apps.classification.label_scores``, the ``rouge-score`` package behind ``apps.summarization.rouge_scores``),
so an exercise can never teach something the package does differently. ``quiz()`` is the end-of-lesson quiz
of ``notebooks/08_applications.ipynb``; ``EXERCISES`` the checkers of ``exercises/08_applications.ipynb``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from functools import cache

import numpy as np

from llm_course.learn.checker import Case, ExerciseSet, FunctionExercise, ValueExercise
from llm_course.learn.quiz import Choice, MultipleChoice, Numeric, Quiz

__all__ = ["fit_history", "label_score", "rouge1", "few_shot_examples", "prompt_tokens", "random_chat", "quiz",
           "EXERCISES"]

Message = dict[str, str]


# ---------------------------------------------------------------------------------------------------
# Reference solutions (checked against the library by tests/test_learn_chapter08.py)
# ---------------------------------------------------------------------------------------------------


def fit_history(messages: list[Message], max_tokens: int,
                count_tokens: Callable[[list[Message]], int]) -> list[Message]:
    """The system messages plus the newest whole exchanges whose prompt fits ``max_tokens``. Chapter 08.

    An exchange is a user message and the replies after it (a reply before any user message, a greeting,
    is an exchange of its own); ``count_tokens(kept)`` is the length of the prompt made of ``kept``.
    """
    system = [m for m in messages if m["role"] == "system"]  # always kept (they come first)
    exchanges: list[list[Message]] = []
    for m in messages[len(system):]:
        if m["role"] == "user" or not exchanges:
            exchanges.append([m])  # a user message opens an exchange
        else:
            exchanges[-1].append(m)  # a reply belongs to the user message before it
    for first in range(len(exchanges)):  # drop the oldest whole exchange until the prompt fits
        kept = system + [m for exchange in exchanges[first:] for m in exchange]
        if count_tokens(kept) <= max_tokens:
            return kept
    raise ValueError(f"the system prompt and the newest message alone are longer than {max_tokens} tokens")


def label_score(logits: np.ndarray, ids: np.ndarray, prompt_length: int, reduction: str = "sum") -> float:
    """log P(label | prompt) in nats: ``ids`` is the prompt then the label, ``logits`` (T, V) the model's. Chapter 08.

    Row t of ``logits`` scores the token at position t + 1, so the label's tokens ``ids[prompt_length:]``
    are predicted by the rows ``prompt_length - 1 .. T - 2``. ``reduction``: "sum" or "mean" over them.
    """
    shifted = logits - logits.max(axis=-1, keepdims=True)  # log-softmax, safe from exp overflow
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))  # (T, V)
    rows = log_probs[prompt_length - 1:-1]  # (L, V): the rows that predict the label's L tokens
    token_log_probs = rows[np.arange(len(rows)), ids[prompt_length:]]  # (L,)
    return float(token_log_probs.sum() if reduction == "sum" else token_log_probs.mean())


def rouge1(prediction: str, reference: str) -> tuple[float, float, float]:
    """ROUGE-1 (precision, recall, F1) of a summary against its reference, as ``rouge-score``. Chapter 08.

    Tokens: lowercased ``[a-z0-9]+`` runs (the package's default tokenizer). A word matches at most as
    often as it occurs in the other text (clipped counts); a text with no tokens scores 0.
    """
    pred = re.findall(r"[a-z0-9]+", prediction.lower())
    ref = re.findall(r"[a-z0-9]+", reference.lower())
    overlap = sum((Counter(pred) & Counter(ref)).values())  # &: the smaller count of each shared word
    precision = overlap / max(len(pred), 1)  # shared / predicted words
    recall = overlap / max(len(ref), 1)  # shared / reference words
    f1 = 2 * precision * recall / (precision + recall) if overlap else 0.0
    return precision, recall, f1


def few_shot_examples(train: list, labels: list[str], k: int) -> list[tuple[str, str]]:
    """``k`` solved examples per label for a few-shot prompt, as the lesson builds one (k = 1). Chapter 08.

    The first ``k`` distinct first lines of the training dialogs of each label (two dialogs may open
    alike), taken round-robin: the first example of every label, then the second of every label, and so on
    (``train``: ``LabeledText`` items).
    """
    by_label = {label: list(dict.fromkeys(x.text.split("\n")[0] for x in train if x.label == label))
                for label in labels}
    return [(by_label[label][i], label) for i in range(k) for label in labels]


# ---------------------------------------------------------------------------------------------------
# Inputs for the checkers: edge cases first, then random ones
# ---------------------------------------------------------------------------------------------------


@cache
def _course_tokenizer():
    """course-gpt's tokenizer (shipped in the package; loading it takes a fraction of a second)."""
    from llm_course.text.tokenizer import ByteLevelBPETokenizer
    from llm_course.zoo.loading import checkpoint_dir

    return ByteLevelBPETokenizer.from_pretrained(checkpoint_dir("course-gpt"))


def prompt_tokens(messages: list[Message]) -> int:
    """The length in course-gpt tokens of the chat bot's prompt made of ``messages``. Chapter 08."""
    from llm_course.apps.chat import render_chat
    from llm_course.text.encoding import encode_plain

    return len(encode_plain(_course_tokenizer(), render_chat(messages)))


_PHRASES = ["Hi!", "Hello! How are you?", "What is AI?", "Tell me a joke.", "Do you like movies?",
            "I am fine, thank you.", "Привет! Как дела?", "Хорошо, спасибо!", "Why?", "Yes.",
            "Artificial intelligence is the study of programs that learn from data and act on it.",
            "My favourite book is a long novel about a whale, a ship and a captain who cannot let go.",
            "Расскажи мне что-нибудь интересное о космосе, пожалуйста."]


def _message(role: str, rng: np.random.Generator) -> Message:
    words = " ".join(str(p) for p in rng.choice(_PHRASES, size=int(rng.integers(1, 4))))
    return {"role": role, "content": words}


def random_chat(rng: np.random.Generator, exchanges: int = 4) -> list[Message]:
    """A random chat that ends with a user message: maybe a system prompt, maybe a greeting first. Chapter 08.

    ``exchanges`` user messages; each but the last is followed by zero to two replies.
    """
    chat = [_message("system", rng)] if rng.random() < 0.7 else []
    if rng.random() < 0.2:
        chat.append(_message("assistant", rng))  # the bot speaks first
    for i in range(exchanges):
        chat.append(_message("user", rng))
        if i < exchanges - 1:
            chat += [_message("assistant", rng) for _ in range(int(rng.choice([0, 1, 1, 1, 2])))]
    return chat


def _msg(role: str, content: str) -> Message:
    return {"role": role, "content": content}


def _history_cases(rng: np.random.Generator):
    n = prompt_tokens
    system = _msg("system", "You are a friendly assistant.")
    short = [system] + [_msg("user" if i % 2 == 0 else "assistant", f"Message {i}.") for i in range(7)]
    yield Case((short, n(short) + 20, n), "everything fits: nothing is dropped (not the manual's 'last 5 "
                                        "messages', ERRATA 8.1: seven short ones fit)")
    yield Case((short, n(short), n), "the budget is exactly the whole prompt's length: it fits (<=, not <)")
    yield Case((short, n(short) - 1, n), "one token too long: the oldest exchange (a user message and its "
                                         "reply) goes whole, the system prompt stays")
    yield Case((short, n([system, short[-1]]), n), "room for only the system prompt and the newest message")
    long = [system] + [_msg("user" if i % 2 == 0 else "assistant", "A long message about the weather. " * 12)
                       for i in range(6)] + [_msg("user", "And now?")]
    yield Case((long, n([system] + long[-3:]), n), "long messages: the last 5 would overflow the budget")
    no_system = short[1:]
    yield Case((no_system, n(no_system[2:]), n), "no system prompt")
    greeting = [_msg("assistant", "Hello! I am the course's bot."), _msg("user", "Hi!"),
                _msg("assistant", "How can I help?"), _msg("user", "Tell me a joke.")]
    yield Case((greeting, n(greeting) - 1, n), "the chat opens with the bot's greeting: an exchange of its own")
    two_replies = [system, _msg("user", "Hi!"), _msg("assistant", "Hello!"),
                   _msg("assistant", "I can tell jokes, too."), _msg("user", "Tell me one.")]
    yield Case((two_replies, n([system] + two_replies[2:]), n), "an exchange with two replies: the user message "
               "goes with both, never leaving a reply without its question")
    two_systems = [system, _msg("system", "Answer in one sentence.")] + short[1:]
    yield Case((two_systems, n(two_systems[:2] + short[-3:]), n), "two system messages: both are kept")
    for _ in range(25):
        chat = random_chat(rng, int(rng.integers(1, 7)))
        system_part = [m for m in chat if m["role"] == "system"]
        low, high = n(system_part + chat[-1:]), n(chat)
        yield Case((chat, int(rng.integers(low, high + 3)), n))


def _label_cases(rng: np.random.Generator):
    uniform = np.zeros((5, 8))
    yield Case((uniform, np.array([1, 2, 3, 4, 5]), 3, "sum"), "uniform logits: each token has probability "
                                                                "1/8, two label tokens: 2 log(1/8)")
    logits = rng.normal(0, 2, size=(6, 10))
    yield Case((logits, np.array([3, 1, 4, 1, 5, 9]), 5, "sum"), "a one-token label: only the last row's "
                                                                  "prediction counts")
    yield Case((logits, np.array([3, 1, 4, 1, 5, 9]), 1, "sum"), "a one-token prompt: row 0 predicts the "
                                                                  "label's first token")
    yield Case((logits, np.array([2, 7, 1, 8, 2, 8]), 3, "mean"), "the mean over a three-token label")
    yield Case((logits * 400, np.array([0, 1, 2, 3, 4, 5]), 2, "sum"), "large logits: subtract the row's max "
                                                                        "before exp (log-softmax), or exp overflows")
    for _ in range(25):
        t, v = int(rng.integers(2, 12)), int(rng.integers(2, 40))
        yield Case((rng.normal(0, 3, size=(t, v)), rng.integers(0, v, size=t), int(rng.integers(1, t)),
                    str(rng.choice(["sum", "mean"]))))


_WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "returns", "value", "list", "of", "new", "file"]


def _random_text(rng: np.random.Generator) -> str:
    words = [str(w) for w in rng.choice(_WORDS, size=int(rng.integers(1, 12)))]
    return " ".join(w.capitalize() if rng.random() < 0.2 else w for w in words) + str(rng.choice(["", ".", "!"]))


def _rouge_cases(rng: np.random.Generator):
    yield Case(("the the the cat", "the cat sat on the mat"), "a repeated word matches at most as often as "
                                                             "it occurs in the reference (clipped counts)")
    yield Case(("Return a new list.", "Return a new list."), "identical texts: 1, 1, 1")
    yield Case(("a dog", "the cat"), "no shared word: 0, 0, 0")
    yield Case(("The CAT, sat!", "the cat sat"), "case and punctuation do not count: lowercased [a-z0-9] runs")
    yield Case(("", "the cat sat"), "an empty prediction: no tokens, all three are 0")
    yield Case(("Кошка сидит на ковре", "Кошка сидит на ковре"), "Cyrillic: the default tokens are [a-z0-9] "
                                                                 "only, so there are none and ROUGE is 0")
    yield Case(("read_file(path) returns 3 lines", "read the file, return lines"), "'_' and '(' split words; "
                                                                                   "digits are tokens")
    yield Case(("the cat sat on the mat today with a dog", "the cat sat"), "a long prediction: high recall, "
                                                                            "low precision")
    for _ in range(25):
        yield Case((_random_text(rng), _random_text(rng)))


# ---------------------------------------------------------------------------------------------------
# Values of the predict exercises (computed, not typed)
# ---------------------------------------------------------------------------------------------------

TEXT_SCORES = [-4.0, -7.0, -6.0]  # label scores after the text (calibrated_label)
PRIOR_SCORES = [-2.0, -8.0, -5.0]  # label scores after "N/A": the model's prior for each label


def _calibrated_label() -> int:
    calibrated = [s - p for s, p in zip(TEXT_SCORES, PRIOR_SCORES)]
    return int(np.argmax(calibrated))


EXERCISES = ExerciseSet([
    FunctionExercise(
        "fit_history", fit_history, _history_cases,
        task="implement: keep the system messages and the newest whole exchanges whose prompt fits max_tokens",
        hint="keep the system messages; group the rest into exchanges (a user message and the replies after "
             "it); drop the oldest whole exchange while count_tokens(system + the rest) > max_tokens. Not a "
             "fixed number of messages (the manual's 'last 5', ERRATA 8.1), never the system prompt, never half "
             "an exchange"),
    FunctionExercise(
        "label_score", label_score, _label_cases, rtol=1e-6, atol=1e-9,
        task="implement: log P(label | prompt) from the model's logits, summed or averaged over the label's tokens",
        hint="log-softmax each row (subtract the row's max, then the log of the sum of exp); row t predicts the "
             "token at t + 1, so the label tokens ids[prompt_length:] are read from rows prompt_length - 1 to "
             "T - 2; then sum, or mean"),
    FunctionExercise(
        "rouge1", rouge1, _rouge_cases, rtol=1e-9,
        task="implement: ROUGE-1 precision, recall and F1 of a prediction against a reference",
        hint="tokens are re.findall(r'[a-z0-9]+', text.lower()); the overlap counts each word min(times in the "
             "prediction, times in the reference) (Counter(a) & Counter(b)); precision = overlap / predicted "
             "tokens, recall = overlap / reference tokens, each 0 when its text has no tokens"),
    ValueExercise(
        "three_token_label", kind="predict", expected=3 * float(np.log(0.5)), rtol=0.001,
        task="predict, then run: the score (reduction='sum') of a 3-token label whose every token has probability 0.5",
        hint="the score is the sum of the log-probabilities (natural log) of the label's tokens",
        why="log(0.5) three times: 3 × (-0.693) = -2.079 nats, the log of the label's probability 1/8.",
        mistakes={float(np.log(0.5)): "that is the mean over the tokens (reduction='mean'); the sum adds all three",
                  -3.0: "that is in bits (log2); the scores are natural logs (nats)",
                  0.125: "that is the label's probability; the score is its log",
                  1.5: "that adds the probabilities; the score adds their logs"}),
    ValueExercise(
        "rouge1_f1", kind="predict", expected=rouge1("the the the cat", "The cat sat on the mat.")[2], rtol=0.01,
        task="predict, then run: ROUGE-1 F1 of 'the the the cat' against the reference 'The cat sat on the mat.'",
        hint="count the tokens of each side, then the overlap with clipped counts ('the' matches at most twice)",
        why="Overlap 3 (two of the three 'the' and 'cat'): precision 3/4, recall 3/6, F1 = 2·0.75·0.5/1.25 = 0.6.",
        mistakes={0.8: "that counts every 'the' of the prediction as a match (4 of 4); a word matches at most as "
                       "often as it occurs in the reference",
                  4 / 7: "that counts distinct words only (2 of 2 and 2 of 5); ROUGE counts every occurrence",
                  0.4: "'The' and 'the' are the same token: ROUGE lowercases first"}),
    ValueExercise(
        "calibrated_label", kind="predict", expected=_calibrated_label(), rtol=0,
        task="predict: the index (0, 1 or 2) of the label a calibrated classifier picks, from the scores given",
        hint="subtract each label's score after 'N/A' (the prior) from its score after the text, then argmax",
        why="Calibrated scores -2, +1, -1: label 1 is the one the text made much more likely than usual.",
        mistakes={0: "that is the uncalibrated argmax: label 0 scores highest after any text (its prior is -2)"}),
    ValueExercise(
        "few_shot_accuracy", kind="experiment", low=0.28, high=0.41,
        task="experiment: course-gpt's calibrated accuracy on the 16 test dialogs with two examples per label "
             "in the prompt",
        hint="classify_by_likelihood(model, tok, texts, labels, few_shot=few_shot_examples(train, labels, 2), "
             "calibrate='N/A'), then the share of predictions equal to the true labels",
        why="In-context examples do not help a 2.3 M-parameter model: it stays near its zero-shot accuracy "
            "(few-shot learning in the prompt is an ability of large models).",
        mistakes={0.25: "that is the accuracy with no examples in the prompt (4 of 16, calibrated or not): pass "
                        "few_shot=few_shot_examples(train, labels, 2) and calibrate='N/A'"}),
])


def quiz() -> Quiz:
    """The end-of-lesson questions of chapter 08 (answers checked against the library by the tests)."""
    return Quiz([
        MultipleChoice("The manual's chat bot keeps 'the last 5 messages' of the history. What goes wrong?", (
            Choice("nothing: five messages always fit a model's context window", False,
                   "five long messages can be longer than the window; the prompt then overflows it"),
            Choice("five long messages can overflow the window, and five short ones drop history that would fit",
                   True, "the window is measured in tokens, so the history must be cut by tokens: ChatBot keeps "
                         "the newest exchanges whose prompt fits context - max_new_tokens"),
            Choice("it forgets the system prompt after five messages", False,
                   "the manual's bot has no system prompt at all; its problem is counting messages, not tokens"),
        )),
        MultipleChoice("The chat no longer fits the prompt budget. What does the course's ChatBot drop first?", (
            Choice("the system prompt, since it is the oldest message", False,
                   "the system prompt is always kept: it says how the bot should behave"),
            Choice("the oldest single message, even a reply whose question is then gone", False,
                   "a reply without its question is a broken turn; the bot drops whole exchanges"),
            Choice("the oldest whole exchange: a user message with the replies after it", True,
                   "it drops the oldest exchanges, whole, until the prompt fits; the system prompt and the "
                   "newest message always stay"),
        )),
        Numeric("course-gpt-chat reads 384 tokens. How many tokens may the prompt of "
                "ChatBot(chat_model, chat_tok, max_new_tokens=40) have?", 344,
                "384 - 40 = 344: the rest of the window is kept free for the reply.", rtol=0,
                mistakes={384: "that is the whole window; the reply's 40 tokens must fit in it too",
                          424: "the reply's tokens come out of the window, not on top of it"}),
        Numeric("ROUGE-1 precision of the summary 'the value the value the value' against the reference "
                "'Return the value of x.'?", rouge1("the value the value the value", "Return the value of x.")[0],
                "2 of the 6 predicted words match: 'the' and 'value' once each (clipped to their count in the "
                "reference), so 1/3.", rtol=0.01,
                mistakes={1.0: "every predicted word is in the reference, but each matches at most as often as it "
                               "occurs there (once)",
                          0.4: "that is the recall (2 of the 5 reference words)"}),
        MultipleChoice("Label scoring with calibrate='N/A' subtracts each label's score after the text 'N/A'. Why?", (
            Choice("a small model prefers some label words whatever the text; the score after a content-free "
                   "text measures that preference", True,
                   "uncalibrated, course-gpt picks the same topic for every test dialog; calibrated, it spreads its "
                   "answers over several topics (knowing little about them, it still gets only 4 of 16 right)"),
            Choice("'N/A' is a fifth label for texts that fit no topic", False,
                   "the labels are only the given ones: 'N/A' is scored once, to measure the prior of each label"),
            Choice("it makes every label the same number of tokens long", False,
                   "lengths do not change; reduction='mean' is what evens out long labels"),
        )),
    ])
