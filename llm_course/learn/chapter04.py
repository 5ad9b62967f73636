"""Chapter 04's questions and exercises: causal-LM labels, BERT's masking, one training step. Chapter 04.

The reference solutions below are the short teaching versions of the library's code; the tests check
each one against the library (``models.gpt.causal_lm_loss`` and transformers' ``GPT2LMHeadModel``,
``nn.objectives.mask_tokens``, ``train.loop.lr_at`` and ``train.loop.train``), so an exercise can never
teach something the package does differently. ``tiny_run`` trains a tiny GPT for a few steps, either
with a step function written on the page or with the library's loop, so the lesson can check that the
two agree. ``quiz()`` is the end-of-lesson quiz of ``notebooks/04_pretraining.ipynb``; ``EXERCISES``
the checkers of ``exercises/04_pretraining.ipynb``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from llm_course.learn.checker import Case, ExerciseSet, FunctionExercise, ValueExercise
from llm_course.learn.quiz import Choice, MultipleChoice, Numeric, Quiz
from llm_course.models.gpt import GPT, GPTConfig
from llm_course.train.loop import TrainConfig, configure_optimizer, lr_at, train

__all__ = ["causal_lm_loss", "mask_tokens", "lr_schedule", "training_step", "tiny_run", "loss_cases", "mask_cases",
           "lr_cases", "quiz", "EXERCISES"]

IGNORE = -100  # the label the loss leaves out (PyTorch's and transformers' ignore_index)


# ---------------------------------------------------------------------------------------------------
# Reference solutions (checked against the library by tests/test_learn_chapter04.py)
# ---------------------------------------------------------------------------------------------------


def causal_lm_loss(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy: labels = input_ids, -100 on padding, shifted once. Chapter 04."""
    labels = input_ids.masked_fill(attention_mask == 0, IGNORE)  # (B, T): padding is never a target
    # the logits at position t predict token t + 1: drop the last position's logits and the first label
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                           ignore_index=IGNORE)


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, special_ids: list[int], mask_id: int,
                vocab_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: 15% of the real, ordinary tokens selected, then 80% [MASK] / 10% random / 10% kept. Chapter 04.

    Returns ``(masked_ids, labels)``: labels hold the original id where selected, -100 elsewhere. The
    random numbers are drawn in the library's order (selection, one draw for the 80/10/10 choice, random
    ids), so the same seed gives exactly ``nn.objectives.mask_tokens``'s result.
    """
    g = torch.Generator().manual_seed(seed)
    specials = torch.tensor(sorted({*special_ids, mask_id}))
    candidates = ~torch.isin(input_ids, specials) & (attention_mask != 0)  # real tokens, never [CLS]/[SEP]/[PAD]
    selected = candidates & (torch.rand(input_ids.shape, generator=g) < 0.15)
    u = torch.rand(input_ids.shape, generator=g)  # one number per position picks [MASK] / random / unchanged
    to_mask = selected & (u < 0.8)
    to_random = selected & (u >= 0.8) & (u < 0.9)
    ordinary = torch.ones(vocab_size, dtype=torch.bool)
    ordinary[specials] = False
    ordinary_ids = ordinary.nonzero().squeeze(1)  # a random replacement is an ordinary token
    random_ids = ordinary_ids[torch.randint(len(ordinary_ids), input_ids.shape, generator=g)]
    masked = input_ids.clone()
    masked[to_mask] = mask_id
    masked[to_random] = random_ids[to_random]
    labels = input_ids.masked_fill(~selected, IGNORE)  # the loss only where the model had to guess
    return masked, labels


def lr_schedule(step: int, warmup_steps: int, max_steps: int, lr: float, min_lr: float) -> float:
    """Linear warmup from 0 to ``lr``, then half a cosine down to ``min_lr`` at ``max_steps``. Chapter 04."""
    if step < warmup_steps:
        return lr * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))  # 0 -> 1, then held at 1
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (lr - min_lr)


def training_step(model: torch.nn.Module, batch: dict, optimizer: torch.optim.Optimizer, lr: float,
                  max_norm: float) -> tuple[float, float]:
    """One update: set the learning rate, forward, loss, backward, clip, step, clear. Chapter 04."""
    params = [p for group in optimizer.param_groups for p in group["params"]]  # what the optimizer updates
    for group in optimizer.param_groups:
        group["lr"] = lr  # the schedule's value for this step
    loss = model(**batch).loss  # forward pass and the loss (labels = input_ids, shifted inside)
    loss.backward()  # gradients add up in p.grad
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)  # the global norm, measured before clipping
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)  # or the next step adds its gradients to these
    return loss.item(), float(grad_norm)


# ---------------------------------------------------------------------------------------------------
# A tiny training run: the page's step function or the library's loop, on the same model and batches
# ---------------------------------------------------------------------------------------------------


def tiny_run(step_fn: Callable | None, seed: int, steps: int, lr: float, grad_clip: float | None,
             warmup_steps: int = 2) -> torch.Tensor:
    """Train a tiny GPT for ``steps`` updates; returns every step's loss followed by the final weights. Chapter 04.

    ``step_fn(model, batch, optimizer, lr, max_norm)`` is a step written on the page (``training_step``);
    None runs the library's ``train`` instead. Both start from the same weights (``seed``), see the same
    batches and use the library's optimizer (``configure_optimizer``) and schedule (``lr_at``).
    """
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=2))
    g = torch.Generator().manual_seed(seed + 1)
    batches = [{"input_ids": ids, "labels": ids} for ids in torch.randint(64, (steps, 4, 16), generator=g)]
    cfg = TrainConfig(max_steps=steps, lr=lr, min_lr=lr / 10, warmup_steps=min(warmup_steps, steps),
                      grad_clip=grad_clip, seed=None, device="cpu", progress=False, live_plot=False,
                      log_interval=0)
    if step_fn is None:
        losses = train(model, batches, cfg).losses
    else:
        model.train()
        optimizer = configure_optimizer(model, cfg.weight_decay, cfg.lr, cfg.betas)
        max_norm = grad_clip if grad_clip else math.inf  # None or 0: measure the norm, clip nothing
        losses = [step_fn(model, batches[step - 1], optimizer, lr_at(step, cfg), max_norm)[0]
                  for step in range(1, steps + 1)]
    weights = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    return torch.cat([torch.tensor(losses, dtype=weights.dtype), weights])


# ---------------------------------------------------------------------------------------------------
# Inputs for the checkers: edge cases first, then random ones
# ---------------------------------------------------------------------------------------------------


def _right_padded(rng: np.random.Generator, lengths: list[int], vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(lengths)
    ids = torch.as_tensor(rng.integers(0, vocab, size=(len(lengths), T)), dtype=torch.long)
    mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids, mask


def _logits(rng: np.random.Generator, batch: int, T: int, vocab: int) -> torch.Tensor:
    return torch.as_tensor(rng.normal(0, 2, size=(batch, T, vocab)), dtype=torch.float32)


def loss_cases(rng: np.random.Generator):
    """Inputs for ``causal_lm_loss`` (logits, input_ids, attention_mask): edge cases, then random batches."""
    ids, mask = _right_padded(rng, [6, 6], 7)
    yield Case((_logits(rng, 2, 6, 7), ids, mask), "no padding: every token but the first is a target")
    ids, mask = _right_padded(rng, [6, 3], 7)
    yield Case((_logits(rng, 2, 6, 7), ids, mask), "the second row is padded after 3 tokens")
    ids, mask = _right_padded(rng, [2, 1, 5], 9)
    yield Case((_logits(rng, 3, 5, 9), ids, mask), "a one-token row: it has nothing to predict")
    ids = torch.tensor([[3, 1, 4, 1, 5], [9, 2, 6, 0, 0]])  # padded with id 0, which is also a real token
    yield Case((_logits(rng, 2, 5, 10), ids, torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])),
               "padding id 0 is a real token in the first row: padding is known from the mask, not the id")
    ids, mask = _right_padded(rng, [2], 4)
    yield Case((_logits(rng, 1, 2, 4), ids, mask), "two tokens: exactly one prediction")
    for _ in range(20):
        batch, T, vocab = int(rng.integers(1, 5)), int(rng.integers(2, 12)), int(rng.integers(3, 40))
        lengths = [T] + [int(n) for n in rng.integers(2, T + 1, size=batch - 1)]
        ids, mask = _right_padded(rng, list(rng.permutation(lengths)), vocab)
        yield Case((_logits(rng, batch, T, vocab), ids, mask))


MASK_VOCAB, MASK_SPECIALS, MASK_ID = 500, [0, 1, 2], 3  # [PAD], [CLS], [SEP]; [MASK]


def _sentences(rng: np.random.Generator, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """[CLS] w w ... [SEP] [PAD] [PAD]: rows of ordinary ids framed and padded like BERT's inputs."""
    T = max(lengths) + 2
    ids = torch.zeros(len(lengths), T, dtype=torch.long)  # [PAD] = 0
    for r, n in enumerate(lengths):
        words = torch.as_tensor(rng.integers(4, MASK_VOCAB, size=n), dtype=torch.long)
        ids[r, : n + 2] = torch.cat([torch.tensor([1]), words, torch.tensor([2])])
    return ids, (ids != 0).long()


def mask_cases(rng: np.random.Generator):
    """Inputs for ``mask_tokens``: edge cases, two large batches (the 15% / 80-10-10 statistics), random ones."""
    base = (MASK_SPECIALS, MASK_ID, MASK_VOCAB)
    ids, attn = _sentences(rng, [400, 120, 3])
    yield Case((ids, attn, *base, 0), "long sentences with padding: [CLS], [SEP], [PAD] are never selected")
    ids = torch.tensor([[1, 2, 0, 0], [1, 2, 0, 0]])
    yield Case((ids, (ids != 0).long(), *base, 1), "only special tokens and padding: nothing to select")
    ids = torch.tensor([[1, 3, 3, 5, 2]])
    yield Case((ids, torch.ones_like(ids), *base, 2), "[MASK] in the input is never selected either")
    ids = torch.arange(4, 44)[None, :]
    yield Case((ids, (torch.arange(40) < 10).long()[None, :], *base, 3),
               "padding known only from the attention mask: 30 ordinary ids after a 10-token text")
    for seed in (4, 5):
        ids, attn = _sentences(rng, [int(n) for n in rng.integers(20, 62, size=256)])
        yield Case((ids, attn, *base, seed), f"{int(attn.sum()):,} tokens: the 15% / 80-10-10 statistics")
    for seed in range(6, 16):
        ids, attn = _sentences(rng, [int(n) for n in rng.integers(1, 30, size=int(rng.integers(1, 6)))])
        yield Case((ids, attn, *base, seed))


def lr_cases(rng: np.random.Generator):
    """Inputs for ``lr_schedule`` (step, warmup_steps, max_steps, lr, min_lr): edge cases, then random ones."""
    yield Case((0, 10, 100, 1e-3, 1e-4), "step 0 of the warmup: the learning rate is 0")
    yield Case((5, 10, 100, 1e-3, 1e-4), "halfway through the warmup")
    yield Case((10, 10, 100, 1e-3, 1e-4), "the end of the warmup: exactly lr")
    yield Case((55, 10, 100, 1e-3, 1e-4), "halfway through the decay: (lr + min_lr) / 2")
    yield Case((100, 10, 100, 1e-3, 1e-4), "the last step: exactly min_lr")
    yield Case((150, 10, 100, 1e-3, 1e-4), "past max_steps: it stays at min_lr")
    yield Case((3, 0, 50, 6e-3, 0.0), "no warmup, decaying to 0")
    yield Case((20, 20, 20, 1e-2, 1e-3), "warmup as long as the run: no decay left")
    for _ in range(30):
        max_steps = int(rng.integers(2, 2000))
        warmup = int(rng.integers(0, max_steps + 1))
        lr = float(10 ** rng.uniform(-5, -1))
        yield Case((int(rng.integers(0, max_steps + 10)), warmup, max_steps, lr, lr * float(rng.uniform(0, 0.5))))


# ---------------------------------------------------------------------------------------------------
# Comparisons that name the typical mistake
# ---------------------------------------------------------------------------------------------------


def _number(value) -> float | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.detach().reshape(()))
    if isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool):
        return float(value)
    return None


def _known_loss_mistakes(logits: torch.Tensor, ids: torch.Tensor, attn: torch.Tensor) -> dict[str, float]:
    V = logits.size(-1)
    labels = ids.masked_fill(attn == 0, IGNORE)
    flat = lambda x: x.reshape(-1, V)  # noqa: E731
    twice = labels.clone()
    twice[:, :-1] = ids[:, 1:]  # the manual's hand shift (padding left in), then the loss shifts again
    twice[:, -1] = IGNORE
    mistakes = {
        "the labels were shifted twice (the manual's code, ERRATA 4: labels[:, :-1] = input_ids[:, 1:], then "
        "the shift in the loss): the logits at t were scored against token t + 2":
            F.cross_entropy(flat(logits[:, :-1]), twice[:, 1:].reshape(-1), ignore_index=IGNORE),
        "padding was scored as a target: set the labels to -100 where attention_mask is 0":
            F.cross_entropy(flat(logits[:, :-1]), ids[:, 1:].reshape(-1)),
        "the labels were not shifted: the logits at t were scored against token t itself (trivial to copy)":
            F.cross_entropy(flat(logits), labels.reshape(-1), ignore_index=IGNORE),
    }
    return {k: float(v) for k, v in mistakes.items() if math.isfinite(float(v))}


def _compare_loss(expected, actual, args) -> str | None:
    value = _number(actual)
    if value is None:
        return f"expected one number (a 0-dim tensor or a float), got {type(actual).__name__}"
    want = float(expected)
    if math.isclose(value, want, rel_tol=1e-5, abs_tol=1e-6):
        return None
    for meaning, wrong in _known_loss_mistakes(*args).items():
        if math.isclose(value, wrong, rel_tol=1e-5, abs_tol=1e-6) and not math.isclose(wrong, want, rel_tol=1e-5):
            return f"expected {want:.6g}, got {value:.6g}: {meaning}"
    return f"expected {want:.6g}, got {value:.6g}"


def _compare_masking(expected, actual, args) -> str | None:
    """Any correct masking passes (the draws need not be the reference's): the rules, then the statistics."""
    input_ids, attn, special_ids, mask_id, _vocab, _seed = args
    if not (isinstance(actual, (tuple, list)) and len(actual) == 2
            and all(isinstance(a, torch.Tensor) for a in actual)):
        return "expected a pair of tensors (masked_ids, labels)"
    masked, labels = actual
    for name, t in (("masked_ids", masked), ("labels", labels)):
        if t.shape != input_ids.shape:
            return f"{name} has shape {tuple(t.shape)}, expected {tuple(input_ids.shape)} (one entry per token)"
    selected = labels != IGNORE
    if (labels[selected] != input_ids[selected]).any():
        return "at a selected position the label must be the ORIGINAL token (take the labels from input_ids, " \
               "before replacing anything)"
    special = torch.isin(input_ids, torch.tensor(sorted({*special_ids, mask_id})))
    if (selected & special).any():
        return "a special token ([CLS], [SEP], [PAD] or [MASK]) was selected (the manual's code does this, " \
               "ERRATA 4): only ordinary tokens may be"
    if (selected & (attn == 0)).any():
        return "a padding position (attention_mask 0) was selected: only real tokens may be"
    if (masked[~selected] != input_ids[~selected]).any():
        return "a position that was not selected (label -100) was changed: only selected tokens are replaced"
    candidates = int((~special & (attn != 0)).sum())
    n = int(selected.sum())
    if candidates >= 5000:  # large enough for the statistics to be tight
        share = n / candidates
        if not 0.13 <= share <= 0.17:
            return f"{share:.1%} of the real, ordinary tokens were selected; expected about 15%"
        to_mask = float((masked[selected] == mask_id).float().mean())
        unchanged = float((masked[selected] == input_ids[selected]).float().mean())
        to_random = 1 - to_mask - unchanged
        for what, got, want in (("became [MASK]", to_mask, 0.8), ("became a random token", to_random, 0.1),
                                ("stayed unchanged", unchanged, 0.1)):
            if abs(got - want) > 0.04:
                return f"of the selected tokens {got:.1%} {what}; expected about {want:.0%} (80 / 10 / 10)"
    return None


EXERCISES = ExerciseSet([
    FunctionExercise(
        "causal_lm_loss", causal_lm_loss, loss_cases, compare=_compare_loss,
        task="implement: the mean next-token loss of a batch: labels = input_ids with -100 on padding, shifted "
             "once",
        hint="labels = input_ids.masked_fill(attention_mask == 0, -100); then compare logits[:, :-1] with "
             "labels[:, 1:] in F.cross_entropy(..., ignore_index=-100) (reshape to (N, V) and (N,)). Shift once: "
             "the manual shifts the labels by hand AND lets the loss shift them again (ERRATA 4)"),
    FunctionExercise(
        "mask_tokens", mask_tokens, mask_cases, compare=_compare_masking,
        task="implement: BERT's masking with a seeded generator: 15% of the real, ordinary tokens selected; of "
             "those 80% [MASK], 10% a random ordinary token, 10% unchanged; returns (masked_ids, labels)",
        hint="g = torch.Generator().manual_seed(seed); candidates = not special (specials and mask_id, see "
             "torch.isin) and attention_mask != 0; selected = candidates & (torch.rand(shape, generator=g) < 0.15); "
             "one more u = torch.rand(...) picks [MASK] (u < 0.8) / random (0.8 <= u < 0.9) / unchanged; labels = "
             "input_ids where selected, -100 elsewhere; work on input_ids.clone()"),
    FunctionExercise(
        "lr_schedule", lr_schedule, lr_cases, rtol=1e-9, atol=1e-15,
        task="implement: the learning rate at a step: linear warmup from 0 to lr, then a cosine down to min_lr "
             "at max_steps (and min_lr after it)",
        hint="during warmup (step < warmup_steps) lr * step / warmup_steps; then progress = (step - warmup_steps) "
             "/ (max_steps - warmup_steps), capped at 1 (and no division by 0 when warmup_steps == max_steps); "
             "min_lr + 0.5 * (1 + cos(pi * progress)) * (lr - min_lr)"),
    ValueExercise(
        "initial_loss", kind="predict", expected=math.log(4096), rtol=0.01,
        task="predict, then measure: the loss (nats) of an untrained GPT with a 4,096-token vocabulary",
        hint="small random weights give nearly equal logits: every token gets probability about 1/V",
        why="A fresh model spreads its probability evenly: -ln(1/V) = ln 4096 ≈ 8.32 nats. A first loss far "
            "above ln V means a bad initialisation; training has to bring it down from here.",
        mistakes={math.log2(4096): "12 is the loss in bits (log2); PyTorch's cross-entropy is in nats (ln)",
                  4096.0: "4,096 is the perplexity, exp(loss); the loss is its logarithm",
                  1 / 4096: "that is the probability of each token; the loss is -ln of it"}),
    ValueExercise(
        "masked_fraction", kind="predict", expected=0.12, rtol=0.05,
        task="predict, then measure: the fraction of a text's ordinary tokens that BERT's masking turns into [MASK]",
        hint="15% are selected, and of those 80% become [MASK]",
        why="0.15 × 0.8 = 0.12: 12% of the tokens are [MASK]; another 1.5% are random and 1.5% are predicted "
            "although the model sees them unchanged.",
        mistakes={0.15: "15% are selected (and predicted), but only 80% of those become [MASK]",
                  0.8: "80% is the share of the SELECTED tokens that become [MASK], not of all tokens"}),
    ValueExercise(
        "loss_targets", kind="predict", expected=22, rtol=0,
        task="predict, then measure: how many next-token predictions the loss averages over for three texts of "
             "5, 8 and 12 tokens, padded on the right to 12",
        hint="a text of n tokens gives n - 1 predictions (the first token has nothing before it); padding gives none",
        why="4 + 7 + 11 = 22: each text's first token is never a target and padding is -100.",
        mistakes={25: "the first token of each text is never a target: nothing comes before it",
                  36: "that counts the padding, which has label -100, and the first tokens",
                  33: "that counts the padding: its labels are -100"}),
    ValueExercise(
        "high_lr_loss", kind="experiment", low=3.15, high=3.6,
        task="experiment: a tiny byte-level GPT, 40 steps at learning rate 3e-3 instead of 1e-4: the mean "
             "training loss of its last 10 steps",
        hint="the given run with lr=3e-3 (run_tiny_gpt(3e-3)): the same model, data and seeds, only the "
             "learning rate (and min_lr = lr / 10) change",
        why="In 40 steps the tiny model learns a lot at 3e-3 but hardly moves at 1e-4 (its loss stays near 5, "
            "not far below ln 256 ≈ 5.5): a small model tolerates, and needs, a far higher learning rate than "
            "a large one."),
])


def quiz() -> Quiz:
    """The end-of-lesson questions of chapter 04 (answers checked against the library by the tests)."""
    return Quiz([
        MultipleChoice("You train a Hugging Face causal LM (or the course's GPT) with model(input_ids, labels=...). "
                       "What should labels be?", (
                           Choice("input_ids shifted left by one (labels[:, :-1] = input_ids[:, 1:])", False,
                                  "that is the manual's code (ERRATA 4): the model shifts the labels again, so "
                                  "position t learns token t + 2"),
                           Choice("input_ids, unshifted, with -100 where attention_mask is 0", True,
                                  "the model shifts once inside the loss (logits at t vs labels at t + 1), and "
                                  "-100 keeps padding out of it"),
                           Choice("input_ids, unshifted, padding included", False,
                                  "the shift is right, but then the model is trained to predict padding after "
                                  "every short text"),
                       )),
        Numeric("What loss (nats per token) does an untrained model with a 2,048-token vocabulary start at?",
                math.log(2048), "ln 2048 ≈ 7.62: nearly equal logits give every token probability 1/2048.",
                mistakes={11.0: "11 is log2(2048), the loss in bits; the loss is in nats (ln)",
                          2048.0: "2,048 is the perplexity; the loss is its natural logarithm"}),
        Numeric("Two texts of 4 and 10 tokens are padded on the right to 10. How many next-token predictions "
                "does the loss average over?", 12,
                "3 + 9 = 12: a text of n tokens has n - 1 targets, and padding (label -100) has none.",
                rtol=0, mistakes={14: "the first token of each text is never a target",
                                  18: "that counts the padding, whose labels are -100",
                                  20: "that counts every position, padding and first tokens included"}),
        Numeric("With BERT's recipe (15% selected; 80% [MASK], 10% random, 10% kept), what fraction of the "
                "ordinary tokens gets a random replacement?", 0.015,
                "0.15 × 0.1 = 0.015: 1.5% of the tokens are silently wrong, so the model must check every "
                "token, not only the [MASK] ones.", rtol=0.05,
                mistakes={0.1: "10% is the share of the SELECTED tokens; 15% of the tokens are selected",
                          0.15: "15% are selected; only a tenth of those get a random token"}),
        MultipleChoice("In which order does one training step run?", (
            Choice("forward, loss, backward, optimizer.step(), then clip the gradients", False,
                   "clipping after the update is too late: the step has already used the unclipped gradients"),
            Choice("forward, loss, backward, clip, optimizer.step(), zero_grad()", True,
                   "the gradients exist after backward, are clipped, used by the update and then cleared for "
                   "the next step (the learning rate is set from the schedule before the update)"),
            Choice("forward, loss, backward, zero_grad(), clip, optimizer.step()", False,
                   "zero_grad erases the gradients backward just computed: the update would do nothing (or "
                   "only weight decay)"),
        )),
    ])
