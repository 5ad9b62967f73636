"""Pretraining on a laptop: a tiny GPT and a tiny BERT on the docs corpus in minutes. Chapter 04.

The pieces (objectives in ``llm_course.nn.objectives``, the loop in ``llm_course.training``) put together
into a recipe that the notebook and ``benchmarks/bench_pretraining.py`` share::

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

Also here: sampling from a GPT with its KV cache (``generate``, ``SampleLogger`` shows samples while it
trains), next-token vs skip-a-token accuracy (``offset_accuracy``: what the manual's double-shifted
labels teach, ERRATA section 4), and the data side of BERT's masked-LM objective (``bert_inputs``,
``mlm_batch``, ``masking_stats``).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from llm_course.core.runtime import get_device
from llm_course.models.gpt import GPT, GPTConfig
from llm_course.nn.objectives import (
    IGNORE_INDEX,
    mask_tokens,
    random_blocks,
    sequential_blocks,
)
from llm_course.text.corpora import TextCorpus, docs_corpus
from llm_course.text.tokenizer import ByteLevelBPETokenizer
from llm_course.train.loop import (
    TrainConfig,
    TrainResult,
    configure_optimizer,
    estimate_loss,
    train,
)

__all__ = [
    "EOT",
    "BERT_SPECIALS",
    "PretrainRecipe",
    "quick_gpt_recipe",
    "TokenizedCorpus",
    "prepare_docs_tokens",
    "steps_for_budget",
    "fastest_threads",
    "TimeBudget",
    "validation_bpc",
    "PretrainRun",
    "pretrain_gpt",
    "generate",
    "complete",
    "SampleLogger",
    "offset_accuracy",
    "bert_inputs",
    "mlm_batch",
    "masking_stats",
    "fill_mask",
    "mlm_accuracy",
]

EOT = "<|endoftext|>"  # GPT-2's end-of-text token
BERT_SPECIALS = ("[PAD]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..3 in a tokenizer trained with them


# --------------------------------------------------------------------------------------------
# The recipe
# --------------------------------------------------------------------------------------------


@dataclass
class PretrainRecipe:
    """Everything that decides how good a pretraining run gets in its time. Chapter 04 (pretraining).

    Tokenizer: ``vocab_size`` BPE tokens learned from the training text. Model: a GPT with ``n_layer``
    blocks of width ``n_embd``, ``n_head`` heads, contexts of ``block_size`` tokens. Optimisation:
    ``batch_size`` windows per step, peak ``lr`` after ``warmup_fraction`` of the steps, cosine decay to
    ``min_lr``. Length: ``max_steps`` updates, or (None) as many as fit in ``time_budget_s`` seconds of
    this machine (measured by ``steps_for_budget``); either way training stops once the budget is spent
    (``TimeBudget``). ``eval_every`` steps: a held-out estimate on ``eval_batches`` random validation
    windows. ``threads``: torch CPU threads (None: the faster of 1 and all cores, ``fastest_threads``).
    ``precision``: "fp32", "bf16", "fp16" (CUDA) or "auto" (bf16/fp16 on a GPU, fp32 on a CPU), the
    ``TrainConfig`` field of the same name (chapter 09 explains mixed precision).
    """

    vocab_size: int = 4096
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64
    dropout: float = 0.0
    batch_size: int = 16
    lr: float = 6e-3
    min_lr: float = 1e-4
    warmup_fraction: float = 0.05
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    time_budget_s: float = 150.0
    max_steps: int | None = None
    eval_every: int = 50
    eval_batches: int = 4
    threads: int | None = None
    seed: int = 0
    precision: str = "fp32"

    def __post_init__(self) -> None:
        positive = ("vocab_size", "n_layer", "n_head", "n_embd", "batch_size", "eval_every", "eval_batches")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"PretrainRecipe.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.block_size, int) or self.block_size < 2:
            raise ValueError(f"PretrainRecipe.block_size must be an integer >= 2, got {self.block_size!r}")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            raise ValueError(f"PretrainRecipe.max_steps must be a positive integer or None, got {self.max_steps!r}")
        if not self.time_budget_s > 0:
            raise ValueError(f"PretrainRecipe.time_budget_s must be > 0 seconds, got {self.time_budget_s!r}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"PretrainRecipe.warmup_fraction must be in [0, 1), got {self.warmup_fraction!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"PretrainRecipe.threads must be a positive integer or None, got {self.threads!r}")
        self.gpt_config(self.vocab_size)  # checks n_embd % n_head, dropout
        TrainConfig(lr=self.lr, min_lr=self.min_lr, weight_decay=self.weight_decay,
                    precision=self.precision)  # checks lr, min_lr, precision

    def gpt_config(self, vocab_size: int) -> GPTConfig:
        """The model: a ``GPTConfig`` whose context is ``block_size`` tokens."""
        return GPTConfig(vocab_size=vocab_size, n_positions=self.block_size, n_embd=self.n_embd,
                         n_layer=self.n_layer, n_head=self.n_head, dropout=self.dropout)

    def train_config(self, max_steps: int, **overrides: Any) -> TrainConfig:
        """The optimisation: a ``TrainConfig`` for ``max_steps`` updates (``overrides`` win)."""
        settings: dict[str, Any] = dict(
            max_steps=max_steps, lr=self.lr, min_lr=self.min_lr, warmup_steps=int(self.warmup_fraction * max_steps),
            weight_decay=self.weight_decay, grad_clip=self.grad_clip,
            eval_interval=self.eval_every, eval_steps=self.eval_batches, seed=self.seed, precision=self.precision,
        )
        settings.update(overrides)
        return TrainConfig(**settings)


def quick_gpt_recipe(**changes: Any) -> PretrainRecipe:
    """The course's quick GPT recipe (notebook 04 and ``benchmarks/bench_pretraining.py``). Chapter 04.

    4096 BPE tokens; 4 layers, 4 heads, width 128, 64-token contexts (1.3 M parameters, 40% of them the
    token embedding); 16 windows per step; AdamW at 6e-3 after 5% warmup, cosine decay to 1e-4; 150
    seconds of training, the number of steps fitted to the machine. On two quiet AMD EPYC cores a step
    takes about 0.15 s: about 1,000 steps (two passes over the docs corpus' 480 k training tokens),
    which reach about 2.27 bits per character on the validation text. ``changes`` override fields,
    e.g. ``quick_gpt_recipe(time_budget_s=60)``.
    """
    return PretrainRecipe(**changes)


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
    if not candidates or any(not isinstance(n, int) or n < 1 for n in candidates):
        raise ValueError(f"candidates must be positive thread counts, got {candidates!r}")
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
        eval_share = recipe.eval_batches / (3 * recipe.eval_every)
        steps = steps_for_budget(model, probe, recipe.time_budget_s, eval_fraction=eval_share / (1 + eval_share))
    cfg = recipe.train_config(steps, device=device, chars_per_token=data.chars_per_token,
                              log_interval=max(1, recipe.eval_every // 5), progress=progress, live_plot=live_plot)
    budget = TimeBudget(recipe.time_budget_s * 1.15)
    budget.start()
    result = train(model, get_batch, cfg, evaluate=evaluate, callbacks=[*callbacks, budget], generator=generator)
    seconds = budget.elapsed
    tokens = len(result.history) * B * T
    return PretrainRun(model, result, validation_bpc(model, data), seconds, tokens / seconds, steps)


# --------------------------------------------------------------------------------------------
# Watching what the model learned: samples and next-token accuracy
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def generate(
    model: GPT,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sample ``max_new_tokens`` tokens after ``input_ids`` (B, T) with the KV cache. Chapter 04.

    Each step feeds only the newest token and reuses the keys and values of the earlier ones
    (``past_key_values``). ``temperature`` 0 means greedy (argmax); ``top_k`` keeps the k most likely
    tokens. When the context would outgrow the model's ``n_positions`` it is cut to the last
    ``n_positions`` tokens and recomputed. Returns (B, T + max_new_tokens). Chapter 07 covers decoding
    strategies in depth.
    """
    if not isinstance(model, GPT):
        raise TypeError(f"generate needs a llm_course GPT, got {type(model).__name__}")
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise ValueError("input_ids must be a (batch, seq_len) tensor with at least one token, e.g. "
                         "torch.tensor([tokenizer.encode(prompt)])")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
    was_training = model.training
    model.eval()
    limit = model.config.n_positions
    ids = input_ids.to(next(model.parameters()).device)
    past, new = None, ids[:, -limit:]
    for _ in range(max_new_tokens):
        if past is not None and past[0][0].shape[2] + new.shape[1] > limit:  # context full: recompute
            past, new = None, ids[:, -limit:]
        out = model(new, past_key_values=past, use_cache=True)
        past, logits = out.past_key_values, out.logits[:, -1, :]  # (B, V): the next token's scores
        if temperature == 0:
            next_id = logits.argmax(dim=-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = F.softmax(logits, dim=-1)
            next_id = torch.multinomial(probs.cpu(), 1, generator=generator).to(ids.device)
        ids = torch.cat([ids, next_id], dim=1)
        new = next_id
    model.train(was_training)
    return ids


def complete(model: GPT, tokenizer: ByteLevelBPETokenizer, prompt: str, max_new_tokens: int = 30,
             temperature: float = 0.0, top_k: int | None = None, seed: int = 0) -> str:
    """The text ``model`` writes after ``prompt`` (the continuation only). Chapter 04 (pretraining).

    ``temperature`` 0: greedy; otherwise sampling with a generator seeded by ``seed``, so the same
    call gives the same text. The continuation is decoded from the new token ids only (never by cutting
    the decoded string at ``len(prompt)``: a token can straddle the boundary).
    """
    ids = torch.tensor([tokenizer.encode(prompt, allowed_special="none")])
    out = generate(model, ids, max_new_tokens, temperature=temperature, top_k=top_k,
                   generator=torch.Generator().manual_seed(seed))
    return tokenizer.decode(out[0, ids.shape[1]:].tolist())


class SampleLogger:
    """A ``train`` callback that prints what ``model`` writes after ``prompt`` as it learns. Chapter 04.

    Samples at step 1 and every ``every`` steps; ``samples`` keeps the ``(step, text)`` pairs. Every
    sample is drawn with the same seed, so two samples differ only because the model changed.
    """

    def __init__(self, model: GPT, tokenizer: ByteLevelBPETokenizer, prompt: str, every: int = 100,
                 max_new_tokens: int = 40, temperature: float = 0.8, top_k: int | None = 50, seed: int = 0) -> None:
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer (steps), got {every!r}")
        if not prompt:
            raise ValueError("prompt must be a non-empty string: the model needs at least one token to continue")
        self.model, self.tokenizer, self.prompt, self.every = model, tokenizer, prompt, every
        self.max_new_tokens, self.temperature, self.top_k, self.seed = max_new_tokens, temperature, top_k, seed
        self.samples: list[tuple[int, str]] = []

    def sample(self) -> str:
        """The text the model writes after the prompt now."""
        ids = torch.tensor([self.tokenizer.encode(self.prompt)])
        out = generate(self.model, ids, self.max_new_tokens, self.temperature, self.top_k,
                       generator=torch.Generator().manual_seed(self.seed))
        return self.tokenizer.decode(out[0, ids.shape[1]:].tolist())

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
    if any(not isinstance(k, int) or not 1 <= k < T for k in offsets):
        raise ValueError(f"offsets must be integers in [1, {T}) (the context length), got {list(offsets)}")
    n = min(max_windows, tokens.numel() // T)
    if n < 1:
        raise ValueError(f"tokens holds {tokens.numel()} tokens, fewer than one window of {T}")
    was_training = model.training
    model.eval()
    windows = tokens[: n * T].view(n, T).to(next(model.parameters()).device)  # (n, T)
    guess = model(windows).logits.argmax(dim=-1)  # (n, T): the top guess made at each position
    model.train(was_training)
    return {k: float((guess[:, :-k] == windows[:, k:]).float().mean()) for k in offsets}


# --------------------------------------------------------------------------------------------
# Masked language modelling (BERT): data and the masking statistics
# --------------------------------------------------------------------------------------------


def _special_id(tokenizer: ByteLevelBPETokenizer, token: str) -> int:
    if token not in tokenizer.special_tokens:
        raise ValueError(f"the tokenizer has no {token} token; train it with special_tokens={list(BERT_SPECIALS)}")
    return tokenizer.special_tokens[token]


def bert_inputs(
    tokenizer: ByteLevelBPETokenizer, texts: Sequence[str], max_length: int = 64
) -> dict[str, torch.Tensor]:
    """``[CLS] text [SEP] [PAD] ...`` for every text: ``{input_ids, attention_mask}``, (N, L). Chapter 04.

    Texts longer than ``max_length - 2`` tokens are cut; rows are padded on the right to the longest
    one (L <= max_length) with attention_mask 0. The tokenizer needs BERT's special tokens
    (``BERT_SPECIALS``).
    """
    cls_id, sep_id, pad_id = (_special_id(tokenizer, t) for t in ("[CLS]", "[SEP]", "[PAD]"))
    if isinstance(texts, str) or not texts:
        raise TypeError("texts must be a non-empty list of strings")
    if not isinstance(max_length, int) or max_length < 3:
        raise ValueError(f"max_length must be an integer >= 3 ([CLS], a token, [SEP]), got {max_length!r}")
    rows = [[cls_id, *tokenizer.encode(t, allowed_special="none")[: max_length - 2], sep_id] for t in texts]
    L = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), L), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = torch.tensor(r)
        attention_mask[i, : len(r)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def mlm_batch(inputs: dict[str, torch.Tensor], tokenizer: ByteLevelBPETokenizer, batch_size: int,
              generator: torch.Generator, mlm_probability: float = 0.15) -> dict[str, torch.Tensor]:
    """A random masked-LM batch from ``bert_inputs``' rows: ``{input_ids, attention_mask, labels}``. Chapter 04.

    Picks ``batch_size`` rows, cuts the padding columns no row in the batch needs, and masks them with
    ``mask_tokens`` (15% of the real, non-special tokens; 80% [MASK] / 10% random / 10% unchanged).
    """
    rows = torch.randint(inputs["input_ids"].shape[0], (batch_size,), generator=generator)
    attention_mask = inputs["attention_mask"][rows]
    L = int(attention_mask.sum(dim=1).max())
    input_ids, attention_mask = inputs["input_ids"][rows, :L], attention_mask[:, :L]
    specials = [tokenizer.special_tokens[t] for t in BERT_SPECIALS if t in tokenizer.special_tokens]
    masked, labels = mask_tokens(input_ids, _special_id(tokenizer, "[MASK]"), tokenizer.vocab_size, specials,
                                 mlm_probability=mlm_probability, generator=generator, attention_mask=attention_mask)
    return {"input_ids": masked, "attention_mask": attention_mask, "labels": labels}


def masking_stats(input_ids: torch.Tensor, masked_ids: torch.Tensor, labels: torch.Tensor,
                  special_ids: Sequence[int], mask_token_id: int,
                  attention_mask: torch.Tensor | None = None) -> dict[str, float]:
    """What a masking function did, as fractions (for the 15% / 80-10-10 check). Chapter 04.

    ``selected``: share of ordinary (real, non-special) tokens that got a label; ``specials_selected``:
    share of special tokens ([CLS], [SEP], [PAD], ...) that got one (should be 0); ``padding_selected``:
    share of padding positions (attention_mask 0) that got one (should be 0). Of the selected tokens:
    ``to_mask`` became [MASK], ``to_random`` became another token, ``unchanged`` kept their id (a random
    replacement that drew the original id counts here: 1 in the vocabulary size).
    """
    selected = labels != IGNORE_INDEX
    special = torch.isin(input_ids, torch.tensor(list(special_ids), dtype=input_ids.dtype))
    real = attention_mask.bool() if attention_mask is not None else torch.ones_like(selected)
    ordinary = real & ~special
    n_sel = max(int(selected.sum()), 1)

    def share(part: torch.Tensor, whole: torch.Tensor) -> float:
        return float((part & whole).sum()) / max(int(whole.sum()), 1)

    stats = {
        "selected": share(selected, ordinary),
        "specials_selected": share(selected, special & real),
        "to_mask": float((selected & (masked_ids == mask_token_id)).sum()) / n_sel,
        "to_random": float((selected & (masked_ids != mask_token_id) & (masked_ids != input_ids)).sum()) / n_sel,
        "unchanged": float((selected & (masked_ids == input_ids)).sum()) / n_sel,
    }
    if attention_mask is not None:
        stats["padding_selected"] = share(selected, ~real)
    return stats


@torch.no_grad()
def fill_mask(model: nn.Module, tokenizer: ByteLevelBPETokenizer, text: str, word: str,
              k: int = 5) -> list[tuple[str, float]]:
    """Hide ``word`` in ``text`` behind [MASK] and return the model's top ``k`` guesses. Chapter 04.

    ``word`` must be one token of ``text`` as the tokenizer cuts it (with its leading space, e.g.
    ``" the"``); its first occurrence is masked. Returns ``[(token text, probability), ...]``.
    """
    batch = bert_inputs(tokenizer, [text], max_length=10_000)
    ids = batch["input_ids"]
    target = tokenizer.encode(word, allowed_special="none")
    if len(target) != 1:
        raise ValueError(f"{word!r} is {len(target)} tokens for this tokenizer; pick a word that is one token "
                         f"(its pieces: {[tokenizer.decode([i]) for i in target]})")
    where = (ids[0] == target[0]).nonzero()
    if where.numel() == 0:
        raise ValueError(f"{word!r} is not a token of {text!r} (mind the leading space: ' the', not 'the')")
    position = int(where[0])
    ids[0, position] = _special_id(tokenizer, "[MASK]")
    was_training = model.training
    model.eval()
    logits = model(ids, attention_mask=batch["attention_mask"]).logits[0, position]  # (V,)
    model.train(was_training)
    probs = F.softmax(logits.float(), dim=-1)
    top = torch.topk(probs, k)
    return [(tokenizer.decode([int(i)]), float(p)) for p, i in zip(top.values, top.indices)]


def mlm_accuracy(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """How often a masked LM's top guess is the hidden token, on one masked ``batch``. Chapter 04.

    ``batch``: ``input_ids``, ``attention_mask`` and ``labels`` (-100 where nothing is hidden), e.g. from
    ``mlm_batch``. Returns ``accuracy``, the ``baseline`` of always guessing the most frequent hidden
    token, and ``hidden`` (how many positions were scored).
    """
    labels = batch["labels"]
    hidden = labels != -100
    if not bool(hidden.any()):
        raise ValueError("the batch hides no tokens (all labels are -100); mask some with mask_tokens/mlm_batch")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
    model.train(was_training)
    guess = logits.argmax(-1).cpu()
    return {
        "accuracy": (guess[hidden] == labels[hidden]).float().mean().item(),
        "baseline": torch.bincount(labels[hidden]).max().item() / int(hidden.sum()),
        "hidden": int(hidden.sum()),
    }
