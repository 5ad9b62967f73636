"""Chapter 05's learning material: references agree with the library, checkers reject typical wrong answers. Issue 18.

The references of ``llm_course.learn.chapter05`` are checked against ``encode_instruction``, ``format_chat``
and ``exact_match``'s scoring; the predict exercises and the quiz's numbers against what transformers'
``TrainingArguments``, ``Trainer`` and its scheduler really do; the experiment ranges against a run of the
library; and the lesson's key lines are on its page, each followed by its ``agree`` check.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from llm_course.learn import chapter05 as ch05
from llm_course.learn.feedback import FAILED, NOT_ATTEMPTED
from llm_course.text.encoding import encode_plain
from llm_course.text.tasks import Example, check
from llm_course.train.instruct import encode_instruction, eos_token_id
from llm_course.train.instructions import QUICK_TASKS, format_chat, make_instructions, prompt_text

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models run fastest on one thread
SENTENCE = "several words of explanation here"


@functools.cache
def _course_tokenizer():
    from llm_course.zoo.loading import load_pretrained

    return load_pretrained("course-gpt")[1]


# ---------------------------------------------------------------------------------------------------
# The references are the library's code, written short
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("template", ["alpaca", "chat"])
def test_mask_prompt_labels_is_encode_instruction(template):
    tok = _course_tokenizer()
    eos = eos_token_id(tok)
    examples = make_instructions(64, seed=3, split="train") + make_instructions(16, seed=3, split="test")
    for ex in examples:
        ours = ch05.mask_prompt_labels(encode_plain(tok, prompt_text(ex, template)), encode_plain(tok, ex.output), eos)
        library = encode_instruction(tok, ex, 384, template)
        assert ours == {k: library[k] for k in ("input_ids", "labels")}, ex
        assert library["attention_mask"] == [1] * len(ours["input_ids"])


def test_format_chat_reference_is_the_librarys():
    for case in ch05.EXERCISES["format_chat"].all_cases():
        assert ch05.format_chat(*case.args) == format_chat(*case.args), case


def test_exact_match_score_scores_like_exact_match():
    for case in ch05.EXERCISES["exact_match_score"].all_cases():
        predictions, answers = case.args
        hits = [check(Example(prompt="", answer=a, task="t"), p) for p, a in zip(predictions, answers)]
        assert ch05.exact_match_score(predictions, answers) == pytest.approx(np.mean(hits), abs=1e-12), case


def test_exact_match_score_on_a_models_answers():
    """The library's exact_match on a model that writes a fixed script, and the reference on its predictions."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from scripted_lm import ScriptedLM

    tok = _course_tokenizer()
    examples = make_instructions(6, seed=0, split="test", tasks=("count_words",))
    script = encode_plain(tok, examples[0].output) + [eos_token_id(tok)]
    from llm_course.train.instruct import exact_match

    result = exact_match(ScriptedLM(script), tok, examples, max_new_tokens=8, batch_size=1)
    ours = ch05.exact_match_score(result["predictions"], [ex.output for ex in examples])
    assert ours == pytest.approx(result["accuracy"]) and 0 < ours


# ---------------------------------------------------------------------------------------------------
# Each checker accepts the reference, reports a stub, and rejects a typical wrong answer
# ---------------------------------------------------------------------------------------------------


def _stub(*args):
    """Not written yet."""
    raise NotImplementedError()


@pytest.mark.parametrize("name", ["mask_prompt_labels", "format_chat", "exact_match_score"])
def test_each_chapter05_checker_accepts_the_reference_and_reports_a_stub(name):
    assert ch05.EXERCISES.check(name, ch05.EXERCISES[name].reference).passed
    assert ch05.EXERCISES.check(name, _stub).status == NOT_ATTEMPTED


def _manual_no_eos(prompt_ids, response_ids, eos_id):
    ids = prompt_ids + response_ids  # the manual: the whole text, nothing appended, every token learned
    return {"input_ids": ids, "labels": list(ids)}


def _learns_the_prompt(prompt_ids, response_ids, eos_id):
    ids = prompt_ids + response_ids + [eos_id]
    return {"input_ids": ids, "labels": list(ids)}


def _masks_the_answer(prompt_ids, response_ids, eos_id):
    ids = prompt_ids + response_ids + [eos_id]
    return {"input_ids": ids, "labels": prompt_ids + [-100] * (len(response_ids) + 1)}


def _shifts_labels(prompt_ids, response_ids, eos_id):
    ids = prompt_ids + response_ids + [eos_id]
    labels = [-100] * len(prompt_ids) + response_ids + [eos_id]
    return {"input_ids": ids, "labels": labels[1:] + [-100]}


def _masks_eos(prompt_ids, response_ids, eos_id):
    ids = prompt_ids + response_ids + [eos_id]
    return {"input_ids": ids, "labels": [-100] * len(prompt_ids) + response_ids + [-100]}


def _appends_in_place(prompt_ids, response_ids, eos_id):
    response_ids.append(eos_id)
    return {"input_ids": prompt_ids + response_ids, "labels": [-100] * len(prompt_ids) + response_ids}


def _chat_no_blank_line(messages, add_generation_prompt=True):
    names = {"system": "System", "user": "User", "assistant": "Assistant"}
    text = "".join(f"### {names[m['role']]}:\n{m['content']}\n" for m in messages)
    return text + ("### Assistant:\n" if add_generation_prompt else "")


def _chat_always_prompts(messages, add_generation_prompt=True):
    names = {"system": "System", "user": "User", "assistant": "Assistant"}
    return "".join(f"### {names[m['role']]}:\n{m['content']}\n\n" for m in messages) + "### Assistant:\n"


def _chat_lower_case_roles(messages, add_generation_prompt=True):
    text = "".join(f"### {m['role']}:\n{m['content']}\n\n" for m in messages)
    return text + ("### assistant:\n" if add_generation_prompt else "")


@pytest.mark.parametrize("name, wrong, words", [
    ("mask_prompt_labels", _manual_no_eos, ["no end-of-text id", "never learns to stop", "ERRATA 5.2"]),
    ("mask_prompt_labels", _learns_the_prompt, ["labels equal input_ids", "covers the prompt", "ERRATA 5.2"]),
    ("mask_prompt_labels", _masks_the_answer, ["masked instead of the prompt"]),
    ("mask_prompt_labels", _shifts_labels, ["shifted one place", "shifts them itself"]),
    ("mask_prompt_labels", _masks_eos, ["its label is -100", "does not learn to stop"]),
    ("mask_prompt_labels", _appends_in_place, ["changed its input `response_ids` in place"]),
    ("format_chat", _chat_no_blank_line, ["differ from character", "one user message"]),
    ("format_chat", _chat_always_prompts, ["no generation prompt", "expected ...", "got ..."]),
    ("format_chat", _chat_lower_case_roles, ["'### user:"]),
    ("exact_match_score", lambda ps, as_: float(np.mean([p == a for p, a in zip(ps, as_)])),
     ["white space around an answer", "expected 1, got 0"]),
    ("exact_match_score", lambda ps, as_: float(np.mean([a.strip() in p for p, a in zip(ps, as_)])),
     ["did not stop", "expected 0, got 1"]),
    ("exact_match_score", lambda ps, as_: float(np.mean([p.strip().lower() == a.strip().lower()
                                                         for p, a in zip(ps, as_)])), ["case counts"]),
    ("tokens_per_step", 8 * 64, ["one micro-batch"]),
    ("tokens_per_step", 16, ["number of blocks"]),
    ("peak_lr", 1e-3, ["only after warmup_steps=100"]),
    ("peak_lr", 6e-4, ["off by one"]),
    ("learned_share", 1.0, ["the manual's construction"]),
    ("learned_share", 0.0430, ["end-of-text"]),  # the response alone, its end-of-text not counted
    ("tuned_eval_loss", 8.5, ["outside the range"]),  # about the untuned model's response loss
])
def test_each_chapter05_checker_rejects_a_typical_wrong_answer(name, wrong, words):
    result = ch05.EXERCISES.check(name, wrong, explanation=SENTENCE)
    assert result.status == FAILED
    for w in words:
        assert w in result.message, result.message


# ---------------------------------------------------------------------------------------------------
# Predictions, experiments and the quiz: what the library (and transformers) really does
# ---------------------------------------------------------------------------------------------------


def test_tokens_per_step_is_what_the_lessons_training_arguments_give(tmp_path):
    from llm_course.train.finetuning import training_arguments

    args = training_arguments(tmp_path, max_steps=60, batch_size=8, gradient_accumulation_steps=2, eval_steps=10)
    measured = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size * 64
    assert ch05.EXERCISES.check("tokens_per_step", measured).passed


def test_peak_lr_is_what_trainers_scheduler_gives(tmp_path):
    """Trainer's own optimizer and scheduler (create_optimizer_and_scheduler), stepped 60 times."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer

    from llm_course.train.finetuning import ExampleDataset, training_arguments

    args = training_arguments(tmp_path, max_steps=60, lr=1e-3, eval_steps=10, warmup_steps=100)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=1, vocab_size=16, n_positions=8))
    data = ExampleDataset([{"input_ids": [1, 2, 3]}])
    trainer = Trainer(model=model, args=args, train_dataset=data, eval_dataset=data)
    trainer.create_optimizer_and_scheduler(num_training_steps=60)
    lrs = []
    for _ in range(60):
        lrs.append(trainer.lr_scheduler.get_last_lr()[0])  # the learning rate of this update
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    assert lrs[0] == 0 and torch.tensor(lrs).argmax() == 59
    assert ch05.EXERCISES.check("peak_lr", max(lrs)).passed


def test_chapter05_experiment_ranges_hold_what_the_library_measures():
    from llm_course.train.instruct import instruction_tune
    from llm_course.zoo.loading import load_pretrained

    tok = _course_tokenizer()
    encoded = [encode_instruction(tok, ex, 384) for ex in make_instructions(2000, seed=0, split="train",
                                                                            tasks=QUICK_TASKS)]
    labels = [label for ex in encoded for label in ex["labels"]]
    share = sum(label != -100 for label in labels) / len(labels)
    assert ch05.EXERCISES.check("learned_share", share, explanation=SENTENCE).passed
    without_eos = (sum(label != -100 for label in labels) - len(encoded)) / len(labels)
    assert "end-of-text" in str(ch05.EXERCISES.check("learned_share", without_eos, explanation=SENTENCE))

    model, tok = load_pretrained("course-gpt")
    train_set = make_instructions(16 * 8, seed=0, split="train", tasks=QUICK_TASKS)
    test_set = make_instructions(32, seed=0, split="test", tasks=QUICK_TASKS)
    result = instruction_tune(model, tok, train_set, steps=16, batch_size=8, lr=6e-3, eval_examples=test_set,
                              progress=False)
    tuned = result.evals[-1]["loss"]
    assert ch05.EXERCISES.check("tuned_eval_loss", tuned, explanation=SENTENCE).passed
    untuned, tok = load_pretrained("course-gpt")
    held_out = [encode_instruction(tok, ex, 384) for ex in test_set]
    from llm_course.nn.evaluation import estimate_loss
    from llm_course.train.instruct import InstructionCollator

    before = estimate_loss(untuned, [InstructionCollator(eos_token_id(tok))(held_out)])["loss"]
    assert not ch05.EXERCISES.check("tuned_eval_loss", before, explanation=SENTENCE).passed  # the range excludes it


def _trainer_max_steps(tmp_path, n_examples: int) -> int:
    """How many optimizer steps Trainer plans for the manual's settings (read at on_train_begin, then stopped)."""
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

    from llm_course.train.finetuning import ExampleDataset

    class Planned(Exception):
        pass

    class ReadMaxSteps(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            raise Planned(state.max_steps)

    args = TrainingArguments(str(tmp_path), num_train_epochs=3, per_device_train_batch_size=4,
                             gradient_accumulation_steps=4, report_to="none", use_cpu=True, save_strategy="no")
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=1, vocab_size=16, n_positions=8))
    data = ExampleDataset([{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}] * n_examples)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[ReadMaxSteps()])
    with pytest.raises(Planned) as planned:
        trainer.train()
    return planned.value.args[0]


def test_chapter05_quiz_answers_are_what_the_library_computes(tmp_path):
    from llm_course.train.finetuning import training_arguments

    quiz = ch05.quiz()
    assert 3 <= len(quiz) <= 5
    args = training_arguments(tmp_path, max_steps=10, batch_size=4, gradient_accumulation_steps=4, eval_steps=10)
    assert quiz.answer(3, args.per_device_train_batch_size * args.gradient_accumulation_steps * 2).passed
    assert not quiz.answer(3, args.per_device_train_batch_size * args.gradient_accumulation_steps).passed
    assert quiz.answer(4, _trainer_max_steps(tmp_path, 160)).passed
    assert "micro-batches" in str(quiz.answer(4, 120))
    for number, right in [(1, "b"), (2, "a"), (5, "c")]:
        q = quiz.questions[number - 1]
        assert [quiz.answer(number, k).passed for k in q.letters] == [k == right for k in q.letters]
    # question 5's options, scored by the library's check
    options = ["cat cat cat cat", "Cat", " cat\n"]
    assert [check(Example(prompt="", answer="cat", task="t"), p) for p in options] == [False, False, True]


# ---------------------------------------------------------------------------------------------------
# The lesson: the key lines are on the page, short, and checked by the very next cell
# ---------------------------------------------------------------------------------------------------


def test_chapter05_key_lines_are_on_the_page_and_checked():
    nbformat = pytest.importorskip("nbformat")
    from llm_course.chapters import find_chapter

    nb = nbformat.read(find_chapter("05").notebook(), as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    checks = {"encode_example": "encode_instruction(", "our_training_arguments": "training_arguments(",
              "chrf_by_hand": "chrf, cases"}
    for name, library in checks.items():
        where = next(i for i, s in enumerate(code) if f"def {name}(" in s)
        assert len(code[where].splitlines()) <= 30, "a key-lines cell should be short enough to read"
        after = code[where + 1]
        assert "agree(" in after and name in after and library in after, f"{name} is not checked by the next cell"
    key = code[next(i for i, s in enumerate(code) if "def encode_example(" in s)]
    assert "-100" in key and "<|endoftext|>" in key  # the prompt masked, the end-of-text appended
    call = code[next(i for i, s in enumerate(code) if "def our_training_arguments(" in s)]
    assert "TrainingArguments(" in call and "eval_strategy=" in call and "gradient_accumulation_steps=" in call
