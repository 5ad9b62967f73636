"""Chapter 04's learning material: references against the library, checkers, quiz, key lines on the page. Issue 18."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llm_course.learn import chapter04 as ch04
from llm_course.learn.checker import Case, agree
from llm_course.learn.feedback import FAILED, NOT_ATTEMPTED
from llm_course.models.gpt import GPT, GPTConfig, causal_lm_loss
from llm_course.nn.objectives import (
    IGNORE_INDEX,
    causal_lm_batch,
    count_targets,
    manual_causal_lm_labels,
    manual_mask_tokens,
    mask_tokens,
)
from llm_course.train.loop import TrainConfig, lr_at
from llm_course.train.masked_lm import masking_stats

ROOT = Path(__file__).resolve().parent.parent
SENTENCE = "several words of explanation here"


# ---------------------------------------------------------------------------------------------------
# The references are the library's behaviour
# ---------------------------------------------------------------------------------------------------


def _library_loss(logits, ids, mask):
    return causal_lm_loss(logits, causal_lm_batch(ids, attention_mask=mask)["labels"])


def test_loss_reference_is_the_course_gpts_loss():
    assert agree(ch04.causal_lm_loss, _library_loss, ch04.loss_cases(np.random.default_rng(1)), rtol=1e-6) == 25


def test_loss_reference_is_transformers_gpt2_loss():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=40, n_positions=16, n_embd=32, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0)).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for lengths in ([12, 12], [12, 5, 2], [3, 12]):
            ids = torch.randint(40, (len(lengths), 12), generator=g)
            mask = (torch.arange(12)[None, :] < torch.tensor(lengths)[:, None]).long()
            hf_loss = hf(ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
            ours = ch04.causal_lm_loss(hf(ids, attention_mask=mask).logits, ids, mask)
            assert ours.item() == pytest.approx(hf_loss.item(), rel=1e-5)


def _library_mask(ids, attn, specials, mask_id, vocab, seed):
    generator = torch.Generator().manual_seed(seed)
    return mask_tokens(ids, mask_id, vocab, specials, generator=generator, attention_mask=attn)


def test_mask_reference_is_the_librarys_masking_exactly():
    cases = list(ch04.mask_cases(np.random.default_rng(3)))
    assert agree(ch04.mask_tokens, _library_mask, cases, rtol=0, atol=0) == len(cases) >= 10
    ids, attn = cases[4].args[:2]  # a large batch: the recipe's statistics
    stats = masking_stats(ids, *ch04.mask_tokens(*cases[4].args), ch04.MASK_SPECIALS, ch04.MASK_ID, attn)
    assert abs(stats["selected"] - 0.15) < 0.01 and stats["specials_selected"] == stats["padding_selected"] == 0
    assert abs(stats["to_mask"] - 0.8) < 0.03 and abs(stats["to_random"] - 0.1) < 0.03


def test_lr_schedule_reference_is_lr_at():
    def library(step, warmup, max_steps, lr, min_lr):
        return lr_at(step, TrainConfig(max_steps=max_steps, warmup_steps=warmup, lr=lr, min_lr=min_lr))

    assert agree(ch04.lr_schedule, library, ch04.lr_cases(np.random.default_rng(2)), rtol=1e-12, atol=1e-15) > 30


def _step_without_zero_grad(model, batch, optimizer, lr, max_norm):
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = model(**batch).loss
    loss.backward()  # wrong: the gradients of every earlier step are still in p.grad
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    return loss.item(), 0.0


def _step_clipping_after_the_update(model, batch, optimizer, lr, max_norm):
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()  # wrong: the update used the unclipped gradients
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.zero_grad(set_to_none=True)
    return loss.item(), float(norm)


def test_training_step_is_the_loops_step_and_the_check_can_fail():
    def run(step_fn):
        return lambda seed, steps, lr, clip: ch04.tiny_run(step_fn, seed, steps, lr, clip)

    cases = [Case((0, 1, 1e-2, 1.0), "one step"), Case((1, 4, 1e-2, 0.01), "always clipped"), (2, 3, 3e-2, None)]
    assert agree(run(ch04.training_step), run(None), cases, rtol=1e-6, atol=1e-9) == 3
    for wrong in (_step_without_zero_grad, _step_clipping_after_the_update):
        with pytest.raises(AssertionError, match="differs from the library"):
            agree(run(wrong), run(None), cases, rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------------------------------------------
# Each checker accepts the reference, reports a stub, rejects typical wrong answers
# ---------------------------------------------------------------------------------------------------


def _stub(*args):
    """Not written yet."""
    raise NotImplementedError()


@pytest.mark.parametrize("name", ["causal_lm_loss", "mask_tokens", "lr_schedule"])
def test_each_chapter04_checker_accepts_the_reference_and_reports_a_stub(name):
    assert ch04.EXERCISES.check(name, ch04.EXERCISES[name].reference).passed
    assert ch04.EXERCISES.check(name, _stub).status == NOT_ATTEMPTED


def test_loss_checker_accepts_a_python_float_and_any_correct_masking():
    as_float = lambda logits, ids, mask: float(ch04.causal_lm_loss(logits, ids, mask))  # noqa: E731
    assert ch04.EXERCISES.check("causal_lm_loss", as_float).passed

    def other_draws(input_ids, attention_mask, special_ids, mask_id, vocab_size, seed):
        return ch04.mask_tokens(input_ids, attention_mask, special_ids, mask_id, vocab_size, seed + 1000)

    assert ch04.EXERCISES.check("mask_tokens", other_draws).passed  # different random choices, same rules


def _manual_double_shift(logits, ids, mask):
    labels = manual_causal_lm_labels(ids)  # the manual: shifted by hand, padding left in ...
    return causal_lm_loss(logits, labels)  # ... and shifted again by the model's loss


def _padding_as_target(logits, ids, mask):
    V = logits.size(-1)
    return F.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))


def _not_shifted(logits, ids, mask):
    labels = ids.masked_fill(mask == 0, -100)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)


def _summed(logits, ids, mask):
    labels = ids.masked_fill(mask == 0, -100)
    V = logits.size(-1)
    return F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100,
                           reduction="sum")


def _manual_masking(input_ids, attention_mask, special_ids, mask_id, vocab_size, seed):
    return manual_mask_tokens(input_ids, mask_id, vocab_size, generator=torch.Generator().manual_seed(seed))


def _all_to_mask(input_ids, attention_mask, special_ids, mask_id, vocab_size, seed):
    masked, labels = ch04.mask_tokens(input_ids, attention_mask, special_ids, mask_id, vocab_size, seed)
    return masked.masked_fill(labels != IGNORE_INDEX, mask_id), labels  # no random, no unchanged tokens


def _padding_selected(input_ids, attention_mask, special_ids, mask_id, vocab_size, seed):
    no_padding = torch.ones_like(attention_mask)  # ignores the attention mask: padding known by id only misses
    return ch04.mask_tokens(input_ids, no_padding, special_ids, mask_id, vocab_size, seed)


def _labels_from_masked(input_ids, attention_mask, special_ids, mask_id, vocab_size, seed):
    masked, labels = ch04.mask_tokens(input_ids, attention_mask, special_ids, mask_id, vocab_size, seed)
    return masked, masked.masked_fill(labels == IGNORE_INDEX, IGNORE_INDEX)  # labels after the replacement


def _selects_a_third(input_ids, attention_mask, special_ids, mask_id, vocab_size, seed):
    g = torch.Generator().manual_seed(seed)
    special = torch.isin(input_ids, torch.tensor(sorted({*special_ids, mask_id})))
    selected = ~special & (attention_mask != 0) & (torch.rand(input_ids.shape, generator=g) < 1 / 3)
    return input_ids.masked_fill(selected, mask_id), input_ids.masked_fill(~selected, IGNORE_INDEX)


def _cosine_to_zero(step, warmup_steps, max_steps, lr, min_lr):
    return ch04.lr_schedule(step, warmup_steps, max_steps, lr, 0.0)


def _cosine_from_step_0(step, warmup_steps, max_steps, lr, min_lr):
    if step < warmup_steps:
        return lr * step / warmup_steps
    progress = min(1.0, step / max_steps)  # wrong: the decay does not start at the end of the warmup
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (lr - min_lr)


def _warmup_off_by_one(step, warmup_steps, max_steps, lr, min_lr):
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    return ch04.lr_schedule(step, warmup_steps, max_steps, lr, min_lr)


@pytest.mark.parametrize("name, wrong, words", [
    ("causal_lm_loss", _manual_double_shift, ["shifted twice", "ERRATA 4", "t + 2"]),
    ("causal_lm_loss", _padding_as_target, ["padding was scored", "-100"]),
    ("causal_lm_loss", _not_shifted, ["not shifted"]),
    ("causal_lm_loss", _summed, ["differs", "expected"]),
    ("mask_tokens", _manual_masking, ["special token", "ERRATA 4"]),
    ("mask_tokens", _all_to_mask, ["became [MASK]", "80 / 10 / 10"]),
    ("mask_tokens", _padding_selected, ["padding position"]),
    ("mask_tokens", _labels_from_masked, ["ORIGINAL"]),
    ("mask_tokens", _selects_a_third, ["expected about 15%"]),
    ("lr_schedule", _cosine_to_zero, ["halfway through the decay"]),
    ("lr_schedule", _cosine_from_step_0, ["differs"]),
    ("lr_schedule", _warmup_off_by_one, ["step 0 of the warmup"]),
    ("initial_loss", 12.0, ["in bits"]),
    ("initial_loss", 4096, ["perplexity"]),
    ("masked_fraction", 0.15, ["only 80%"]),
    ("loss_targets", 25, ["never a target"]),
    ("loss_targets", 36, ["padding"]),
    ("high_lr_loss", 5.1, ["outside the range"]),  # the 1e-4 run
    ("high_lr_loss", 3.81, ["outside the range"]),  # 1e-3: not the setting asked for
])
def test_each_chapter04_checker_rejects_a_typical_wrong_answer(name, wrong, words):
    result = ch04.EXERCISES.check(name, wrong, explanation=SENTENCE)
    assert result.status == FAILED
    for w in words:
        assert w in result.message, result.message


# ---------------------------------------------------------------------------------------------------
# Predictions, experiment and quiz: what the library measures
# ---------------------------------------------------------------------------------------------------


def _untrained_loss(vocab_size: int) -> float:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=vocab_size, n_positions=64, n_embd=64, n_layer=2, n_head=2))
    ids = torch.randint(vocab_size, (4, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(ids, labels=ids).loss.item()


def _solutions_cells(*grade_ids: str) -> str:
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(ROOT / "exercises" / "04_pretraining_solutions.ipynb", as_version=4)
    by_id = {c.metadata.get("nbgrader", {}).get("grade_id"): c.source for c in nb.cells}
    return "\n".join(by_id[g] for g in grade_ids)


def test_chapter04_predictions_are_what_the_library_measures():
    assert ch04.EXERCISES.check("initial_loss", _untrained_loss(4096)).passed
    ids = torch.randint(4, 1000, (2000, 64), generator=torch.Generator().manual_seed(0))
    masked, _ = mask_tokens(ids, 3, 1000, [0, 1, 2], generator=torch.Generator().manual_seed(0))
    assert ch04.EXERCISES.check("masked_fraction", (masked == 3).float().mean()).passed
    batch = causal_lm_batch([list(range(1, 6)), list(range(1, 9)), list(range(1, 13))], pad_id=0)
    assert ch04.EXERCISES.check("loss_targets", count_targets(batch["labels"])).passed


def test_chapter04_experiment_range_holds_what_the_solutions_notebook_measures():
    namespace: dict = {}
    exec(_solutions_cells("setup_given", "high_lr_loss_given"), namespace)  # also runs the 1e-4 baseline
    high = namespace["run_tiny_gpt"](3e-3)
    assert ch04.EXERCISES.check("high_lr_loss", high, explanation=SENTENCE).passed
    assert not ch04.EXERCISES.check("high_lr_loss", namespace["low_lr_loss"], explanation=SENTENCE).passed


def test_chapter04_quiz_answers_are_what_the_library_computes():
    quiz = ch04.quiz()
    assert 3 <= len(quiz) <= 5
    assert quiz.answer(2, _untrained_loss(2048)).passed and not quiz.answer(2, math.log2(2048)).passed
    batch = causal_lm_batch([[5, 6, 7, 8], list(range(10, 20))], pad_id=0)
    assert quiz.answer(3, count_targets(batch["labels"])).passed and not quiz.answer(3, 14).passed
    ids = torch.randint(4, 1000, (1000, 1000), generator=torch.Generator().manual_seed(0))
    masked, labels = mask_tokens(ids, 3, 1000, [0, 1, 2], generator=torch.Generator().manual_seed(0))
    random_share = ((labels != IGNORE_INDEX) & (masked != 3) & (masked != ids)).float().mean()
    assert quiz.answer(4, float(random_share)).passed and not quiz.answer(4, 0.1).passed
    # question 1, option a (the manual's labels) scores position t against token t + 2
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    logits = torch.randn(1, 5, 8)
    two_ahead = F.cross_entropy(logits[0, :3], ids[0, 2:])
    assert causal_lm_loss(logits, manual_causal_lm_labels(ids)).item() == pytest.approx(two_ahead.item(), rel=1e-6)
    for number, right in [(1, "b"), (5, "b")]:
        q = quiz.questions[number - 1]
        assert [quiz.answer(number, k).passed for k in q.letters] == [k == right for k in q.letters]


# ---------------------------------------------------------------------------------------------------
# The lesson: key lines on the page, each followed by its check
# ---------------------------------------------------------------------------------------------------


def test_chapter04_key_lines_are_on_the_page_and_checked():
    nbformat = pytest.importorskip("nbformat")
    from llm_course.chapters import find_chapter

    nb = nbformat.read(find_chapter("04").notebook(), as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    for name, check in [("training_step", "agree(ours, library, step_cases"),
                        ("warmup_cosine", "agree(warmup_cosine, library_lr"),
                        ("next_token_loss", "agree(next_token_loss, library"),
                        ("mask_for_mlm", "agree(mask_for_mlm, library")]:
        i = next(i for i, s in enumerate(code) if f"def {name}(" in s)
        assert len(code[i].splitlines()) <= 30, f"the key-lines cell of {name} should be short enough to read"
        assert check in code[i + 1], f"the cell after {name}'s must check it against the library"
    assert "agree(ours, hf_loss" in code[next(i for i, s in enumerate(code) if "def next_token_loss(" in s) + 1]
    assert "chapter04.quiz()" in code[-1] and 'not quiz.answer(1, "a")' in code[-1]
