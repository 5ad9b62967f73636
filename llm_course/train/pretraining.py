"""Pretraining on a laptop: a tiny GPT on the docs corpus in minutes, scored in bits per character. Chapter 04.

The pieces (objectives in ``llm_course.nn.objectives``, the loop in ``llm_course.train.loop``) put together
with a recipe (``llm_course.train.recipe``) that the notebook and ``benchmarks/bench_pretraining.py`` share::

    recipe = quick_gpt_recipe()                       # model shape, batch, learning rate, time budget
    data = prepare_docs_tokens(recipe.vocab_size)     # BPE tokenizer trained on the docs corpus; ids
    run = pretrain_gpt(recipe, data)                  # train() under a wall-clock budget
    run.val["bits_per_char"]                          # every validation token scored once

**Quality per wall-clock.** A model is only as good as the compute it got, and on two CPU cores the
compute is minutes. Three choices make those minutes count: a BPE tokenizer (each token carries about
3.4 characters, so every forward pass sees 3.4 times more text than a character-level model's), a
small model taking many small steps at a high learning rate that decays along a cosine fitted to the
budget (``steps_for_budget`` measures how many steps fit before training starts), and fused AdamW.
Two CPU threads on two cores is fastest on a quiet machine; when another process keeps one core busy,
two threads wait on each other and a step can take ten times longer, so the recipe times both first
(``fastest_threads``).
Models with different tokenizers are compared in **bits per character**: the total loss over the whole
validation text divided by its number of characters (``validation_bpc``).

Also here: what the model writes (``complete``, with chapter 07's ``generate``; ``SampleLogger`` shows
samples while it trains) and next-token vs skip-a-token accuracy (``offset_accuracy``: what the manual's double-shifted
labels teach, ERRATA section 4). BERT's masked-LM side is ``llm_course.train.masked_lm``.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from llm_course.core.checks import check_int, check_positive_int, check_str
from llm_course.core.runtime import eval_mode, get_device
from llm_course.infer.generation import generate
from llm_course.models.gpt import GPT
from llm_course.nn.evaluation import estimate_loss
from llm_course.nn.objectives import (
    random_blocks,
    sequential_blocks,
)
from llm_course.text.corpora import TextCorpus, docs_corpus
from llm_course.text.encoding import encode_plain
from llm_course.text.tokenizer import ByteLevelBPETokenizer
from llm_course.train.loop import (
    TrainResult,
    configure_optimizer,
    train,
)
from llm_course.train.recipe import EOT, PretrainRecipe

__all__ = [
    "TokenizedCorpus",
    "prepare_docs_tokens",
    "steps_for_budget",
    "fastest_threads",
    "TimeBudget",
    "validation_bpc",
    "PretrainRun",
    "pretrain_gpt",
    "complete",
    "SampleLogger",
    "offset_accuracy",
]

# --------------------------------------------------------------------------------------------
# Data: the docs corpus as token ids
# --------------------------------------------------------------------------------------------


@dataclass
class TokenizedCorpus:
    """A corpus and its token ids. Chapter 04 (pretraining).

    ``train_ids`` / ``val_ids``: 1-D LongTensors, the training and validation text encoded as one stream
    each; ``val_chars``: characters of the validation text (the denominator of bits per character).
    """

    tokenizer: ByteLevelBPETokenizer
    train_ids: torch.Tensor
    val_ids: torch.Tensor
    train_chars: int
    val_chars: int

    @property
    def chars_per_token(self) -> float:
        """Characters of validation text per token: how much text one prediction covers."""
        return self.val_chars / self.val_ids.numel()

    def __repr__(self) -> str:
        return (f"TokenizedCorpus(vocab_size={self.tokenizer.vocab_size}, train={self.train_ids.numel():,} tokens, "
                f"val={self.val_ids.numel():,} tokens, {self.chars_per_token:.2f} chars/token)")


def prepare_docs_tokens(
    vocab_size: int = 4096,
    corpus: TextCorpus | None = None,
    special_tokens: Sequence[str] = (EOT,),
    tokenizer: ByteLevelBPETokenizer | None = None,
) -> TokenizedCorpus:
    """Train a byte-level BPE tokenizer on the training text and encode both splits. Chapter 04.

    ``corpus``: a ``TextCorpus`` (default: ``docs_corpus()``, documents separated by blank lines). The
    tokenizer learns from the training part only, so the validation text is as new to it as to the model.
    ``tokenizer``: use this one instead of training a new one (``vocab_size`` is then ignored).
    Encoding runs through the tokenizer's Rust twin (``to_hf_tokenizer``, the same ids, about 10x faster
    on two megabytes).
    """
    corpus = docs_corpus() if corpus is None else corpus
    if not isinstance(corpus, TextCorpus):
        raise TypeError(f"corpus must be a llm_course.text.corpora.TextCorpus (e.g. docs_corpus()), "
                        f"got {type(corpus).__name__}")
    if not corpus.train or not corpus.val:
        raise ValueError("the corpus needs both a training and a validation part (docs_corpus(val_fraction=0.1))")
    if tokenizer is None:
        tokenizer = ByteLevelBPETokenizer.train([corpus.train], vocab_size=vocab_size, special_tokens=special_tokens)
    elif not isinstance(tokenizer, ByteLevelBPETokenizer):
        raise TypeError(f"tokenizer must be a ByteLevelBPETokenizer, got {type(tokenizer).__name__}")
    fast = tokenizer.to_hf_tokenizer()

    def encode(text: str) -> torch.Tensor:
        return torch.tensor(fast.encode(text).ids, dtype=torch.long)

    return TokenizedCorpus(tokenizer, encode(corpus.train), encode(corpus.val), len(corpus.train), len(corpus.val))


# --------------------------------------------------------------------------------------------
# Training under a wall-clock budget
# --------------------------------------------------------------------------------------------


def _train_step_seconds(model: nn.Module, batch: dict[str, torch.Tensor], steps: int = 3) -> float:
    """Median seconds of one forward + backward + AdamW step, measured on a copy of ``model``."""
    probe = copy.deepcopy(model).train()
    device = next(probe.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    optimizer = configure_optimizer(probe, weight_decay=0.1, lr=1e-4)
    times = []
    for i in range(steps + 1):  # the first step allocates buffers: not timed
        t0 = time.perf_counter()
        probe(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()  # GPU work is asynchronous: wait for it before reading the clock
        if i:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def steps_for_budget(model: nn.Module, batch: dict[str, torch.Tensor], seconds: float,
                     eval_fraction: float = 0.0) -> int:
    """How many training steps of ``model`` on batches like ``batch`` fit in ``seconds``. Chapter 04.

    Times a few steps on a copy of the model (the model itself is untouched) and leaves
    ``eval_fraction`` of the budget for evaluations. A schedule that decays the learning rate to its
    end at exactly the budget beats one that is cut off midway: that is why this is measured first.
    """
    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds!r}")
    step = _train_step_seconds(model, batch)
    return max(1, int(seconds * (1.0 - eval_fraction) / step))


def fastest_threads(
    model: nn.Module, batch: dict[str, torch.Tensor], candidates: Sequence[int] | None = None
) -> int:
    """Time a training step with each number of CPU threads, keep the fastest and return it. Chapter 04.

    ``candidates`` default to 1 and all cores. On a quiet machine all cores win; when another process
    keeps a core busy, threads that must wait for each other at every operation can make a step ten
    times slower than one thread alone. Sets ``torch.set_num_threads`` for the whole process.
    """
    candidates = list(candidates) if candidates is not None else sorted({1, os.cpu_count() or 1})
    if not candidates:
        raise ValueError("candidates is empty: give the thread counts to try, e.g. [1, 2]")
    for n in candidates:
        check_positive_int("each of candidates", n, hint="a thread count")
    times = {}
    for n in candidates:
        torch.set_num_threads(n)
        times[n] = _train_step_seconds(model, batch)
    best = min(times, key=times.__getitem__)
    torch.set_num_threads(best)
    return best


class TimeBudget:
    """A ``train`` callback that stops the run once ``seconds`` have passed. Chapter 04 (pretraining).

    The clock starts at the first step (or at ``start()``). A safety net for a machine that got slower
    than it was when ``steps_for_budget`` measured it.
    """

    def __init__(self, seconds: float) -> None:
        if not seconds > 0:
            raise ValueError(f"seconds must be > 0, got {seconds!r}")
        self.seconds = float(seconds)
        self.t0: float | None = None

    def start(self) -> None:
        """Start the clock now."""
        self.t0 = time.perf_counter()

    @property
    def elapsed(self) -> float:
        """Seconds since the clock started (0 before)."""
        return 0.0 if self.t0 is None else time.perf_counter() - self.t0

    def __call__(self, record: dict, result: TrainResult) -> bool:
        if self.t0 is None:
            self.start()
        return self.elapsed > self.seconds


@torch.no_grad()
def validation_bpc(model: nn.Module, data: TokenizedCorpus, batch_size: int = 32) -> dict[str, float]:
    """Loss, perplexity and bits per character of ``model`` on the whole validation text. Chapter 04.

    Every validation token is predicted exactly once (``sequential_blocks``: windows of the model's
    context that overlap by one token), and bits per character = total nats / validation characters /
    ln 2, so a character-level model and a BPE model are scored on the same text the same way.
    """
    block_size = getattr(getattr(model, "config", None), "n_positions", None)
    if block_size is None:
        raise TypeError("validation_bpc needs a llm_course GPT (its config.n_positions is the window length)")
    device = next(model.parameters()).device
    batches = list(sequential_blocks(data.val_ids, batch_size, block_size, device=device))
    return estimate_loss(model, batches, n_chars=data.val_chars)


@dataclass
class PretrainRun:
    """What ``pretrain_gpt`` returns. Chapter 04 (pretraining).

    model (in eval mode), result (``TrainResult``: history, evals), val (``validation_bpc``'s dict),
    train_seconds (wall clock of the training loop), tokens_per_sec (training tokens / train_seconds).
    """

    model: GPT
    result: TrainResult
    val: dict[str, float]
    train_seconds: float
    tokens_per_sec: float
    planned_steps: int


def pretrain_gpt(
    recipe: PretrainRecipe,
    data: TokenizedCorpus,
    model: GPT | None = None,
    callbacks: Sequence[Callable] = (),
    labels_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: str = "auto",
    progress: bool = True,
    live_plot: bool = True,
) -> PretrainRun:
    """Train a GPT from scratch on ``data`` with ``recipe``, then score the validation text. Chapter 04.

    The whole of it is the course's loop::

        model = GPT(recipe.gpt_config(vocab_size))
        get_batch = lambda i: random_blocks(train_ids, batch_size, block_size, generator)  # labels = input_ids
        evaluate = lambda i: random_blocks(val_ids, batch_size, block_size, seed i)       # the same each time
        train(model, get_batch, recipe.train_config(steps), evaluate, callbacks + [TimeBudget])

    ``model``: a fresh ``GPT(recipe.gpt_config(vocab_size))`` to train (None: built here, seeded with
    ``recipe.seed``); pass one to give callbacks such as ``SampleLogger`` a handle on it.
    ``recipe.threads`` sets torch's CPU threads for the whole process (``torch.set_num_threads``; None:
    ``fastest_threads`` picks them).
    ``labels_fn(input_ids) -> labels`` replaces the labels (the notebook passes the manual's
    double-shifted ones to show what they teach). ``callbacks`` are ``train``'s (e.g. ``SampleLogger``).
    """
    if not isinstance(recipe, PretrainRecipe):
        raise TypeError(f"recipe must be a PretrainRecipe (e.g. quick_gpt_recipe()), got {type(recipe).__name__}")
    if recipe.kind != "causal-lm":
        raise ValueError(f"pretrain_gpt trains a GPT: recipe.kind must be 'causal-lm', got {recipe.kind!r}")
    if not isinstance(data, TokenizedCorpus):
        raise TypeError(f"data must be a TokenizedCorpus (prepare_docs_tokens(...)), got {type(data).__name__}")
    if model is None:
        torch.manual_seed(recipe.seed)  # the same initial weights for the same recipe
        model = GPT(recipe.gpt_config(data.tokenizer.vocab_size))
    elif not isinstance(model, GPT) or model.config != recipe.gpt_config(data.tokenizer.vocab_size):
        raise ValueError("model must be GPT(recipe.gpt_config(data.tokenizer.vocab_size)) (or None: built here)")
    generator = torch.Generator().manual_seed(recipe.seed)
    B, T = recipe.batch_size, recipe.block_size

    def get_batch(i: int) -> dict[str, torch.Tensor]:
        batch = random_blocks(data.train_ids, B, T, generator)
        if labels_fn is not None:
            batch["labels"] = labels_fn(batch["input_ids"])
        return batch

    def evaluate(i: int) -> dict[str, torch.Tensor]:  # batch i is the same at every evaluation
        return random_blocks(data.val_ids, B, T, torch.Generator().manual_seed(10_000 + i))

    model.to(get_device(device))
    probe = random_blocks(data.train_ids, B, T, torch.Generator().manual_seed(0))
    if recipe.threads is not None:
        torch.set_num_threads(recipe.threads)
    elif get_device(device).type == "cpu":
        fastest_threads(model, probe)
    steps = recipe.max_steps
    if steps is None:
        # one evaluation batch (forward only) costs about a third of a training step
        eval_share = recipe.eval_steps / (3 * recipe.eval_interval)
        steps = steps_for_budget(model, probe, recipe.time_budget_s, eval_fraction=eval_share / (1 + eval_share))
    cfg = recipe.train_config(steps, device=device, chars_per_token=data.chars_per_token,
                              log_interval=max(1, recipe.eval_interval // 5), progress=progress, live_plot=live_plot)
    budget = TimeBudget(recipe.time_budget_s * 1.15 if recipe.time_budget_s is not None else math.inf)
    budget.start()
    result = train(model, get_batch, cfg, evaluate=evaluate, callbacks=[*callbacks, budget], generator=generator)
    seconds = budget.elapsed
    tokens = len(result.history) * B * T
    return PretrainRun(model, result, validation_bpc(model, data), seconds, tokens / seconds, steps)


# --------------------------------------------------------------------------------------------
# Watching what the model learned: samples and next-token accuracy
# --------------------------------------------------------------------------------------------


def complete(model: GPT, tokenizer: ByteLevelBPETokenizer, prompt: str, max_new_tokens: int = 30,
             temperature: float = 0.0, top_k: int | None = None, seed: int = 0) -> str:
    """The text ``model`` writes after ``prompt`` (the continuation only). Chapter 04 (pretraining).

    ``temperature`` 0: greedy; otherwise sampling (``top_k``: only the k most likely tokens) seeded by
    ``seed``, so the same call gives the same text. Decoding is chapter 07's
    ``llm_course.infer.generation.generate`` with the KV cache; past the model's ``n_positions`` it keeps
    reading the last ``n_positions`` tokens (``slide_context=True``). The continuation is decoded from the
    new token ids only (never by cutting the decoded string at ``len(prompt)``: a token can straddle the
    boundary).
    """
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
    sampling = dict(do_sample=True, temperature=temperature, top_k=top_k, seed=seed) if temperature > 0 else {}
    ids = torch.tensor([encode_plain(tokenizer, prompt)], dtype=torch.long)  # (1, T)
    out = generate(model, ids, max_new_tokens=max_new_tokens, slide_context=True, **sampling)
    return tokenizer.decode(out[0, ids.shape[1]:].tolist())


class SampleLogger:
    """A ``train`` callback that prints what ``model`` writes after ``prompt`` as it learns. Chapter 04.

    Samples at step 1 and every ``every`` steps; ``samples`` keeps the ``(step, text)`` pairs. Every
    sample is drawn with the same seed, so two samples differ only because the model changed.
    """

    def __init__(self, model: GPT, tokenizer: ByteLevelBPETokenizer, prompt: str, every: int = 100,
                 max_new_tokens: int = 40, temperature: float = 0.8, top_k: int | None = 50, seed: int = 0) -> None:
        check_positive_int("every", every, hint="a number of steps")
        check_str("prompt", prompt, non_empty=True, hint="the model needs at least one token to continue")
        self.model, self.tokenizer, self.prompt, self.every = model, tokenizer, prompt, every
        self.max_new_tokens, self.temperature, self.top_k, self.seed = max_new_tokens, temperature, top_k, seed
        self.samples: list[tuple[int, str]] = []

    def sample(self) -> str:
        """The text the model writes after the prompt now (``complete`` with the logger's settings)."""
        return complete(self.model, self.tokenizer, self.prompt, self.max_new_tokens, self.temperature, self.top_k,
                        self.seed)

    def __call__(self, record: dict, result: TrainResult) -> None:
        step = record["step"]
        if step == 1 or step % self.every == 0:
            text = self.sample()
            self.samples.append((step, text))
            print(f"step {step:>4}: {self.prompt + text!r}")


@torch.no_grad()
def offset_accuracy(model: GPT, tokens: torch.Tensor, offsets: Sequence[int] = (1, 2, 3),
                    max_windows: int = 64) -> dict[int, float]:
    """How often the model's top guess at position t is the token at t + k, for each k. Chapter 04.

    A model trained with correct causal-LM labels scores best at k = 1 (the next token). The manual's
    labels are shifted twice (ERRATA section 4), and a model trained on them scores best at k = 2: it
    learned to skip a token. ``tokens``: a 1-D stream (e.g. validation ids), cut into up to
    ``max_windows`` windows of the model's context length.
    """
    if not isinstance(model, GPT):
        raise TypeError(f"offset_accuracy needs a llm_course GPT, got {type(model).__name__}")
    T = model.config.n_positions
    for k in offsets:
        check_int("each of offsets", k, 1, T - 1, hint=f"below the context length {T}")
    n = min(max_windows, tokens.numel() // T)
    if n < 1:
        raise ValueError(f"tokens holds {tokens.numel()} tokens, fewer than one window of {T}")
    with eval_mode(model):
        windows = tokens[: n * T].view(n, T).to(next(model.parameters()).device)  # (n, T)
        guess = model(windows).logits.argmax(dim=-1)  # (n, T): the top guess made at each position
    return {k: float((guess[:, :-k] == windows[:, k:]).float().mean()) for k in offsets}
