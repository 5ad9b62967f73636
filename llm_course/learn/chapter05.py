"""Chapter 05's questions and exercises: prompt-masked labels, chat prompts, exact match, Trainer steps. Chapter 05.

The reference solutions below are the short teaching versions of the library's code; the tests check
each one against the library (``encode_instruction``, ``format_chat``, ``exact_match``'s scoring, the
``TrainingArguments`` that ``training_arguments`` builds and the scheduler ``Trainer`` makes), so an
exercise can never teach something the package does differently. ``quiz()`` is the end-of-lesson quiz of
``notebooks/05_finetuning.ipynb``; ``EXERCISES`` the checkers of ``exercises/05_finetuning.ipynb``.

The manual's instruction tuning (ERRATA 5.2) trains on the whole text and appends no end-of-text token;
the ``mask_prompt_labels`` checker recognises that construction, and the other typical mistakes, and says
what each one does to training.
"""

from __future__ import annotations

import numpy as np

from llm_course.learn.checker import Case, ExerciseSet, FunctionExercise, ValueExercise
from llm_course.learn.feedback import difference
from llm_course.learn.quiz import Choice, MultipleChoice, Numeric, Quiz

__all__ = ["IGNORE_INDEX", "mask_prompt_labels", "format_chat", "exact_match_score", "quiz", "EXERCISES"]

IGNORE_INDEX = -100  # the label PyTorch's cross-entropy (and every transformers model) leaves out of the loss


# ---------------------------------------------------------------------------------------------------
# Reference solutions (checked against the library by tests/test_learn_chapter05.py)
# ---------------------------------------------------------------------------------------------------


def mask_prompt_labels(prompt_ids: list[int], response_ids: list[int], eos_id: int) -> dict[str, list[int]]:
    """One instruction example: learn the response and the end-of-text token, never the prompt. Chapter 05.

    ``input_ids`` = prompt + response + end-of-text; ``labels`` = -100 on the prompt (no loss: the model
    is always given it), the tokens themselves on the response and the end-of-text (the model shifts them).
    """
    response = response_ids + [eos_id]  # the answer, then the token that says "stop"
    return {"input_ids": prompt_ids + response, "labels": [IGNORE_INDEX] * len(prompt_ids) + response}


ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}


def format_chat(messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """A conversation as plain text: ``### User:\\n<content>\\n\\n`` per message. Chapter 05."""
    text = "".join(f"### {ROLES[m['role']]}:\n{m['content']}\n\n" for m in messages)
    return text + ("### Assistant:\n" if add_generation_prompt else "")  # where the model takes over


def exact_match_score(predictions: list[str], answers: list[str]) -> float:
    """The share of predictions equal to their answer, surrounding white space aside. Chapter 05."""
    hits = [p.strip() == a.strip() for p, a in zip(predictions, answers)]
    return sum(hits) / len(hits)


# ---------------------------------------------------------------------------------------------------
# Inputs for the checkers: edge cases first, then random ones
# ---------------------------------------------------------------------------------------------------


def _ids(rng: np.random.Generator, low: int, high: int) -> list[int]:
    return [int(i) for i in rng.integers(1, 4096, size=int(rng.integers(low, high + 1)))]


def _mask_cases(rng: np.random.Generator):
    yield Case(([5, 6, 7], [8], 0), "a one-token answer; the end-of-text id is 0")
    yield Case(([11], [12, 13, 14], 50256), "a one-token prompt, GPT-2's end-of-text id 50256")
    yield Case(([9, 9, 9, 9], [9, 9], 1), "prompt and answer made of the same token")
    yield Case((_ids(rng, 40, 60), [3, 4], 2), "a long prompt, a short answer: the usual shape")
    for _ in range(25):
        yield Case((_ids(rng, 1, 30), _ids(rng, 1, 10), int(rng.integers(0, 4096))))


def _mask_compare(expected: dict, actual: object, args: tuple) -> str | None:
    """Name the typical wrong constructions (the manual's among them) before the generic difference."""
    prompt, response, eos = args
    if isinstance(actual, dict) and set(actual) >= {"input_ids", "labels"}:
        ids, labels = list(actual["input_ids"]), list(actual["labels"])
        if ids == prompt + response:
            return ("input_ids has no end-of-text id after the response: without it the model never sees where "
                    "an answer ends and never learns to stop (the manual's construction, ERRATA 5.2)")
        if ids == expected["input_ids"] and labels == ids:
            return ("labels equal input_ids: the loss also covers the prompt, which the model is always given "
                    "(the manual's construction, ERRATA 5.2); put -100 on the prompt's positions")
        if ids == expected["input_ids"] and labels == prompt + [IGNORE_INDEX] * (len(response) + 1):
            return "the answer is masked instead of the prompt: -100 goes on the prompt, the response is learned"
        if ids == expected["input_ids"] and labels[:-1] == expected["labels"][1:]:
            return ("labels are shifted one place left: the model shifts them itself (chapter 04), so shifting "
                    "here makes it predict the token after next")
        if ids == expected["input_ids"] and labels == [IGNORE_INDEX] * len(prompt) + response + [IGNORE_INDEX]:
            return ("the end-of-text id is in input_ids but its label is -100: it is never learned, so the model "
                    "still does not learn to stop")
    return difference(expected, actual)


def _chat_messages(rng: np.random.Generator) -> list[dict[str, str]]:
    words = ["hello", "how", "are", "you", "fine", "Привет", "как дела", "42", "?", "yes\nno"]
    roles = (["system"] if rng.random() < 0.3 else []) + ["user", "assistant"] * int(rng.integers(1, 4))
    roles = roles[: int(rng.integers(1, len(roles) + 1))] or ["user"]
    return [{"role": r, "content": " ".join(rng.choice(words, size=int(rng.integers(0, 4))))} for r in roles]


def _chat_cases(rng: np.random.Generator):
    user = {"role": "user", "content": "Переведи текст с английского на русский: Hello, how are you?"}
    reply = {"role": "assistant", "content": "Привет, как дела?"}
    yield Case(([user], True), "one user message: the prompt ends with the assistant's marker")
    yield Case(([user, reply], False), "a whole exchange for training: no generation prompt")
    yield Case(([{"role": "system", "content": "Answer briefly."}, user], True), "a system message first")
    yield Case(([{"role": "user", "content": ""}], True), "an empty message still gets its marker and blank line")
    yield Case(([{"role": "user", "content": "line one\nline two"}, reply, user], True), "a multi-line message, "
               "then a second turn")
    for _ in range(20):
        yield Case((_chat_messages(rng), bool(rng.random() < 0.5)))


def _text_compare(expected: str, actual: object, args: tuple) -> str | None:
    """Where two texts first differ, shown with repr (a missing "\\n" is visible)."""
    if not isinstance(actual, str) or actual == expected:
        return difference(expected, actual)
    i = next((k for k, (a, b) in enumerate(zip(expected, actual)) if a != b), min(len(expected), len(actual)))
    return (f"the texts differ from character {i} on: expected ...{expected[max(0, i - 12):i + 16]!r}, "
            f"got ...{actual[max(0, i - 12):i + 16]!r}")


def _score_cases(rng: np.random.Generator):
    yield Case((["4\n", " cat "], ["4", "cat"]), "white space around an answer does not count")
    yield Case((["3 3 3 3 3 3"], ["3"]), "the model did not stop: the answer is in there, but it is not exact")
    yield Case((["Кошка", "кошка"], ["кошка", "кошка"]), "case counts: 'Кошка' is not 'кошка'")
    yield Case((["one", "two", "three"], ["1", "2", "3"]), "nothing right: 0.0")
    yield Case((["dog"], ["dog"]), "one example, right: 1.0")
    words = ["cat", "dog", "кошка", "собака", "1", "2", "3", "10"]
    for _ in range(20):
        n = int(rng.integers(1, 12))
        answers = [str(w) for w in rng.choice(words, size=n)]
        predictions = [a if rng.random() < 0.5 else str(rng.choice(words)) for a in answers]
        predictions = [p + str(rng.choice(["", " ", "\n", " " + p])) for p in predictions]
        yield Case((predictions, answers))


EXERCISES = ExerciseSet([
    FunctionExercise(
        "mask_prompt_labels", mask_prompt_labels, _mask_cases, compare=_mask_compare,
        task="implement: input_ids and labels of one instruction example: the prompt masked with -100, the "
             "response followed by the end-of-text id and learned",
        hint="input_ids = prompt_ids + response_ids + [eos_id]; labels = [-100] * len(prompt_ids) + response_ids + "
             "[eos_id] (the model shifts labels itself: do not shift them). Build new lists: do not append to the "
             "arguments"),
    FunctionExercise(
        "format_chat", format_chat, _chat_cases, compare=_text_compare,
        task="implement: a conversation as text, '### User:\\n<content>\\n\\n' per message (System, User, "
             "Assistant), plus '### Assistant:\\n' when add_generation_prompt",
        hint="map the roles to 'System', 'User', 'Assistant'; each message is f'### {name}:\\n{content}\\n\\n' (a "
             "blank line after every message, the last one too); then add '### Assistant:\\n' only if "
             "add_generation_prompt"),
    FunctionExercise(
        "exact_match_score", exact_match_score, _score_cases, rtol=1e-12,
        task="implement: the share of predictions exactly equal to their answer, ignoring surrounding white space",
        hint="compare p.strip() == a.strip() for each pair and take the mean; not `a in p` (a model that "
             "repeats the answer without stopping would count as right) and not p.lower() (case matters)"),
    ValueExercise(
        "tokens_per_step", kind="predict", expected=8 * 2 * 64, rtol=0,
        task="predict, then measure: how many tokens does one optimizer step of the lesson's Trainer learn from "
             "(per_device_train_batch_size=8, gradient_accumulation_steps=2, blocks of 64 tokens, one device)?",
        hint="one step adds up the gradients of gradient_accumulation_steps batches, each of "
             "per_device_train_batch_size blocks, each of 64 tokens",
        why="8 blocks x 2 accumulated batches x 64 tokens = 1,024 tokens per update: the update of a batch of 16 "
            "blocks with the activation memory of a batch of 8.",
        mistakes={8 * 64: "that is one micro-batch; the step adds up the gradients of 2 of them "
                          "(gradient_accumulation_steps=2)",
                  16: "that is the number of blocks per step; each block is 64 tokens",
                  2 * 64: "a micro-batch holds 8 blocks, not 1"}),
    ValueExercise(
        "peak_lr", kind="predict", expected=1e-3 * 59 / 100, rtol=0.005,
        task="predict, then measure: the highest learning rate a 60-step run uses with learning_rate=1e-3 and the "
             "manual's warmup_steps=100 (transformers' default linear schedule)",
        hint="during warmup the learning rate at update s (counted from 0) is learning_rate * s / warmup_steps; the "
             "60 updates are s = 0 ... 59",
        why="The run ends during warmup: its last update uses 59/100 of the learning rate, so the manual's 100 "
            "warmup steps would never reach the learning rate it asks for in a short run.",
        mistakes={1e-3: "1e-3 is reached only after warmup_steps=100 updates; a 60-step run ends before that",
                  1e-3 * 60 / 100: "off by one: the first update uses s = 0 (learning rate 0), so the last, "
                                   "the 60th, uses 59/100"}),
    ValueExercise(
        "learned_share", kind="experiment", low=0.060, high=0.067,
        task="experiment: the share of tokens that carry a loss (labels != -100) in 2,000 encoded training "
             "instructions of the lesson's tasks",
        hint="encode make_instructions(2000, seed=0, split='train', tasks=QUICK_TASKS) with encode_instruction(tok, "
             "ex, 384); count the labels that are not -100, divide by the number of all labels",
        why="Only about 6% of the tokens are the answer and its end-of-text; the manual's loss would be 94% about "
            "predicting prompts the model is always given.",
        mistakes={1.0: "that is the manual's construction: every token learned, the prompt too (ERRATA 5.2); count "
                       "only the labels that are not -100",
                  0.0430: "the end-of-text token after each response is learned too (its label is not -100): "
                          "count it",
                  0.0439: "the end-of-text token after each response is learned too (its label is not -100): "
                          "count it"}),
    ValueExercise(
        "tuned_eval_loss", kind="experiment", low=1.5, high=5.0,
        task="experiment: the held-out loss on the responses after 16 steps of instruction tuning (batch 8, "
             "lr 6e-3) of the shipped course-gpt",
        hint="instruction_tune(model, tok, train_set, steps=16, batch_size=8, lr=6e-3, eval_examples=test_set, "
             "progress=False).evals[-1]['loss'], with the training and test sets of the cell",
        why="The untuned model's response loss is far higher: a few steps already teach the format, the short "
            "answers and the end-of-text token, the easy part of instruction tuning."),
])


def quiz() -> Quiz:
    """The end-of-lesson questions of chapter 05 (answers checked against the library by the tests)."""
    return Quiz([
        MultipleChoice("Why do the prompt's tokens get the label -100 in instruction tuning?", (
            Choice("-100 is the id of the padding token", False,
                   "it is not a token id at all: it is the label cross-entropy ignores (ignore_index=-100)"),
            Choice("so that the loss is computed only on the response (and its end-of-text token)", True,
                   "the model is always given the prompt; learning to predict it wastes capacity and makes the "
                   "loss mostly about prompts (about 93% of the tokens in the lesson's data)"),
            Choice("so that the model cannot attend to the prompt", False,
                   "labels do not change attention: the response still attends to every prompt token; -100 only "
                   "removes those positions from the loss"),
        )),
        MultipleChoice("The manual appends no end-of-text token to its instruction examples. What does the tuned "
                       "model do?", (
            Choice("it answers, then keeps writing until max_new_tokens", True,
                   "it never saw where an answer ends, so it never learns to stop (ERRATA 5.2); exact match "
                   "counts such answers as wrong"),
            Choice("it cannot answer at all", False,
                   "it still learns the answers; what it does not learn is to stop after one"),
            Choice("nothing changes: generate stops at the end of the answer anyway", False,
                   "generate stops only at the end-of-text id or max_new_tokens: without the id it runs on"),
        )),
        Numeric("The manual's TrainingArguments (per_device_train_batch_size=4, gradient_accumulation_steps=4) on "
                "2 GPUs: how many sequences does one optimizer step learn from?", 4 * 4 * 2,
                "4 per device x 4 accumulated micro-batches x 2 devices = 32.",
                rtol=0, mistakes={16: "that is one device; each of the 2 GPUs adds its own 16",
                                  8: "the 4 accumulated micro-batches are added up before the step too",
                                  4: "that is one micro-batch on one device"}),
        Numeric("The manual's TrainingArguments (num_train_epochs=3, per_device_train_batch_size=4, "
                "gradient_accumulation_steps=4) on 160 examples, one device: how many optimizer steps does "
                "Trainer make?", 30,
                "160 / 4 = 40 micro-batches per epoch, / 4 accumulated = 10 steps per epoch, x 3 epochs = 30.",
                rtol=0, mistakes={120: "that counts micro-batches; an optimizer step comes every 4 of them",
                                  40: "that is one epoch's micro-batches; an epoch is 10 steps, and there are 3",
                                  10: "that is one epoch; num_train_epochs=3"}),
        MultipleChoice("The expected answer is 'cat'. Which prediction does exact match count as right?", (
            Choice("'cat cat cat cat'", False, "the answer is in there, but the model did not stop: not exact"),
            Choice("'Cat'", False, "case counts: 'Cat' is not 'cat'"),
            Choice("' cat\\n'", True, "only surrounding white space is ignored (the tasks' check strips it)"),
        )),
    ])
