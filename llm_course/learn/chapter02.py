"""Chapter 02's questions and exercises: the pre-LN block, BERT's embeddings, T5's position buckets. Chapter 02.

The reference solutions below are the short teaching versions of what the library's models compute; the
tests check each one against the library (``GPTBlock.forward``, ``BERT``'s input layer) and against
``transformers`` (``BertEmbeddings``, ``T5Attention._relative_position_bucket``), so an exercise can never
teach something the package does differently. T5's bucket function is the library's own
``relative_position_bucket``. ``quiz()`` is the end-of-lesson quiz of ``notebooks/02_architectures.ipynb``;
``EXERCISES`` the checkers of ``exercises/02_architectures.ipynb``.

A check passes the same inputs to the student's function and to the reference. For a block those inputs
are its four sublayers as functions (:class:`Sublayer`, from :func:`gpt_block_parts`), so that the
student writes only the wiring; :func:`library_gpt_block` runs the whole library block they come from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from llm_course.learn.checker import Case, ExerciseSet, FunctionExercise, ValueExercise
from llm_course.learn.quiz import Choice, MultipleChoice, Numeric, Quiz
from llm_course.models.bert import BERT, BERTConfig
from llm_course.models.gpt import GPTBlock, GPTConfig
from llm_course.models.intro import gpt_param_count
from llm_course.models.t5 import relative_position_bucket

__all__ = ["pre_ln_block", "bert_embeddings", "Sublayer", "gpt_block_parts", "library_gpt_block", "bert_weights",
           "library_bert_embeddings", "gpt_block_cases", "bert_embedding_cases", "bucket_cases", "quiz",
           "EXERCISES"]


# ---------------------------------------------------------------------------------------------------
# Reference solutions (checked against the library by tests/test_learn_chapter02.py)
# ---------------------------------------------------------------------------------------------------


def pre_ln_block(x: torch.Tensor, attn: Callable, mlp: Callable, ln_1: Callable, ln_2: Callable) -> torch.Tensor:
    """One GPT-2 (pre-LayerNorm) block on the residual stream x (B, T, C). Chapter 02.

    Each branch reads a normalised copy of the stream and adds its output back; the stream itself is never
    normalised (post-LN, ``ln(x + attn(x))``, is BERT's and the manual's ``nn.TransformerDecoderLayer``'s).
    """
    x = x + attn(ln_1(x))  # (B, T, C): causal self-attention, residual connection
    x = x + mlp(ln_2(x))  # (B, T, C): position-wise MLP, residual connection
    return x


def bert_embeddings(input_ids: torch.Tensor, token_type_ids: torch.Tensor | None,
                    weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """BERT's input layer: token + position + segment vectors, summed, then LayerNorm (eps 1e-12). Chapter 02.

    ``weights``: "word" (V, C), "position" (P, C), "segment" (S, C), "ln_weight" and "ln_bias" (C,).
    ``token_type_ids=None`` means one text: every token is segment 0 (as in BERT and transformers).
    """
    if token_type_ids is None:
        token_type_ids = torch.zeros_like(input_ids)
    T = input_ids.shape[1]
    x = weights["word"][input_ids] + weights["position"][:T] + weights["segment"][token_type_ids]  # (B, T, C)
    return F.layer_norm(x, x.shape[-1:], weights["ln_weight"], weights["ln_bias"], eps=1e-12)


# ---------------------------------------------------------------------------------------------------
# The library's side of the checks
# ---------------------------------------------------------------------------------------------------


class Sublayer:
    """One sublayer of a library block as a plain function (B, T, C) -> (B, T, C): ``ln_1(x)``. Chapter 02.

    A check copies its inputs to see whether the student's function changes them; a sublayer holds
    fixed weights, so it is passed as it is (``copy.deepcopy`` returns it) and shown by its name.
    """

    def __init__(self, name: str, fn: Callable[[torch.Tensor], torch.Tensor], block: GPTBlock) -> None:
        self.name, self.fn, self.block = name, fn, block

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def __deepcopy__(self, memo: dict) -> Sublayer:
        return self

    def __repr__(self) -> str:
        return f"<{self.name} of a GPTBlock, n_embd={self.block.ln_1.normalized_shape[0]}>"


def gpt_block_parts(block: GPTBlock) -> tuple[Sublayer, Sublayer, Sublayer, Sublayer]:
    """A library ``GPTBlock``'s ``attn`` (causal), ``mlp``, ``ln_1`` and ``ln_2`` as functions. Chapter 02."""
    return (Sublayer("attn", lambda h: block.attn(h, is_causal=True).output, block),
            Sublayer("mlp", block.mlp, block), Sublayer("ln_1", block.ln_1, block), Sublayer("ln_2", block.ln_2, block))


def library_gpt_block(x: torch.Tensor, attn: Sublayer, mlp: Sublayer, ln_1: Sublayer, ln_2: Sublayer) -> torch.Tensor:
    """What the library's ``GPTBlock.forward`` returns for the block these four sublayers come from. Chapter 02."""
    if not all(isinstance(s, Sublayer) and s.block is attn.block for s in (attn, mlp, ln_1, ln_2)):
        raise ValueError("attn, mlp, ln_1 and ln_2 must come from one block: gpt_block_parts(block)")
    out, _, _ = attn.block(x, None, None, False, False)  # no padding mask, no cache, no weights
    return out


def bert_weights(bert: BERT) -> dict[str, torch.Tensor]:
    """The tensors of a library ``BERT``'s input layer, named as :func:`bert_embeddings` wants them. Chapter 02."""
    return {"word": bert.word_embeddings.weight.detach(), "position": bert.position_embeddings.weight.detach(),
            "segment": bert.token_type_embeddings.weight.detach(), "ln_weight": bert.embeddings_ln.weight.detach(),
            "ln_bias": bert.embeddings_ln.bias.detach()}


def library_bert_embeddings(input_ids: torch.Tensor, token_type_ids: torch.Tensor | None,
                            weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """What a library ``BERT`` holding these weights feeds its first layer (``embeddings_ln``'s output). Chapter 02."""
    (V, C), P, S = weights["word"].shape, len(weights["position"]), len(weights["segment"])
    bert = BERT(BERTConfig(vocab_size=V, hidden_size=C, num_hidden_layers=1, num_attention_heads=1,
                           intermediate_size=1, max_position_embeddings=P, type_vocab_size=S)).eval()
    seen = []
    hook = bert.embeddings_ln.register_forward_hook(lambda module, args, out: seen.append(out))
    with torch.no_grad():
        for ours, name in [(bert.word_embeddings, "word"), (bert.position_embeddings, "position"),
                           (bert.token_type_embeddings, "segment")]:
            ours.weight.copy_(weights[name])
        bert.embeddings_ln.weight.copy_(weights["ln_weight"])
        bert.embeddings_ln.bias.copy_(weights["ln_bias"])
        try:
            bert(input_ids, token_type_ids=token_type_ids)
        finally:
            hook.remove()
    return seen[0]


# ---------------------------------------------------------------------------------------------------
# Inputs for the checkers: edge cases first, then random ones
# ---------------------------------------------------------------------------------------------------


def _torch_generator(rng: np.random.Generator) -> torch.Generator:
    return torch.Generator().manual_seed(int(rng.integers(2**31)))


def _random_block(n_embd: int, n_head: int, g: torch.Generator, branches: bool = True) -> GPTBlock:
    """A GPTBlock with random weights, LayerNorms included (so that ln_1 and ln_2 differ); eval mode."""
    block = GPTBlock(GPTConfig(vocab_size=1, n_positions=1, n_embd=n_embd, n_layer=1, n_head=n_head)).eval()
    with torch.no_grad():
        for name, p in block.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.startswith("ln_"):
                p.copy_(1 + 0.3 * noise if name.endswith("weight") else 0.3 * noise)
            else:
                p.copy_(noise / p.shape[-1] ** 0.5 if p.ndim == 2 else 0.1 * noise)
            if not branches and name.startswith(("attn.out_proj", "mlp.down_proj")):
                p.zero_()
        block.requires_grad_(False)
    return block


def gpt_block_cases(rng: np.random.Generator) -> Iterator[Case]:
    """Inputs ``(x, attn, mlp, ln_1, ln_2)`` for the block checks: edge cases first, then random. Chapter 02."""
    g = _torch_generator(rng)
    block = _random_block(16, 4, g)
    yield Case((10 * torch.randn(2, 5, 16, generator=g) + 3, *gpt_block_parts(block)),
               "a stream far from normalised (scale 10, shifted by 3): pre-LN adds each branch to it as it is; "
               "post-LN (ln(x + attn(x)), the manual's nn.TransformerDecoderLayer) would normalise it")
    yield Case((torch.randn(1, 1, 16, generator=g), *gpt_block_parts(block)), "one token: attention sees only itself")
    yield Case((torch.randn(2, 4, 16, generator=g), *gpt_block_parts(_random_block(16, 4, g, branches=False))),
               "both branches switched off (zero output layers): the block must return x unchanged")
    yield Case((torch.zeros(1, 3, 8), *gpt_block_parts(_random_block(8, 2, g))),
               "an all-zero stream: each LayerNorm returns its bias")
    for _ in range(20):
        n_head = int(rng.choice([1, 2, 4]))
        n_embd = n_head * int(rng.choice([2, 4, 8]))
        x = float(rng.choice([0.5, 1.0, 4.0])) * torch.randn(int(rng.integers(1, 4)), int(rng.integers(1, 9)), n_embd,
                                                             generator=g)
        yield Case((x, *gpt_block_parts(_random_block(n_embd, n_head, g))))


def _random_weights(g: torch.Generator, V: int, C: int, P: int, S: int) -> dict[str, torch.Tensor]:
    return {"word": torch.randn(V, C, generator=g), "position": torch.randn(P, C, generator=g),
            "segment": torch.randn(S, C, generator=g), "ln_weight": 1 + 0.3 * torch.randn(C, generator=g),
            "ln_bias": 0.3 * torch.randn(C, generator=g)}


def bert_embedding_cases(rng: np.random.Generator) -> Iterator[Case]:
    """Inputs ``(input_ids, token_type_ids, weights)`` for the BERT-embedding checks. Chapter 02."""
    g = _torch_generator(rng)
    w = _random_weights(g, 20, 8, 10, 2)
    ids = torch.randint(0, 20, (2, 6), generator=g)
    yield Case((ids, torch.zeros_like(ids), w), "one text (segment 0 everywhere): the sum must then be LayerNormed, "
                                                "which the manual's BERTModel forgets")
    yield Case((ids, None, w), "token_type_ids omitted: segment 0 for every token, as BERT does (the manual's "
                               "BERTModel then adds no segment vector at all)")
    yield Case((torch.tensor([[5, 7, 9, 2, 3, 4]]), torch.tensor([[0, 0, 0, 1, 1, 1]]), w),
               "a pair of texts: segment 0, then segment 1")
    yield Case((torch.tensor([[3]]), torch.tensor([[1]]), w), "one token: position 0 only")
    yield Case((torch.randint(0, 20, (1, 10), generator=g), torch.ones(1, 10, dtype=torch.long), w),
               "as long as the position table (T = P = 10): every position row is used")
    for _ in range(20):
        V, C = int(rng.integers(2, 50)), int(rng.choice([4, 8, 16]))
        P, S = int(rng.integers(1, 16)), int(rng.integers(1, 4))
        B, T = int(rng.integers(1, 4)), int(rng.integers(1, P + 1))
        ids = torch.randint(0, V, (B, T), generator=g)
        segments = None if rng.random() < 0.2 else torch.randint(0, S, (B, T), generator=g)
        yield Case((ids, segments, _random_weights(g, V, C, P, S)))


def bucket_cases(rng: np.random.Generator) -> Iterator[Case]:
    """Inputs ``(relative_position, bidirectional, num_buckets, max_distance)`` for T5's buckets. Chapter 02."""
    small = torch.tensor([0, -1, 1, -7, 7, -8, 8, -9, 9])
    yield Case((small, True, 32, 128), "the encoder up close: distances 0-7 in each direction get a bucket each; "
                                       "keys after the query use the upper half (16-31)")
    yield Case((torch.tensor([3, 1, 0, -1, -15, -16]), False, 32, 128),
               "the causal decoder: a key after the query (a future one) counts as distance 0; 0-15 are exact")
    yield Case((torch.tensor([-128, 128, -200, 200, -1000, 1000]), True, 32, 128),
               "at and beyond max_distance: the last bucket of each direction")
    yield Case((torch.tensor([-16, -32, -64, -127, 16, 32, 64, 127]), True, 32, 128),
               "log-spaced buckets between 8 and max_distance (16 and 64 sit on bucket edges)")
    yield Case((torch.arange(40)[None, :] - torch.arange(40)[:, None], False, 32, 128),
               "a whole (query, key) matrix of a 40-token decoder: key position - query position")
    yield Case((torch.tensor([-5, -3, 0, 2, 5, 40]), True, 8, 16), "8 buckets, max_distance 16: 2 exact per direction")
    for _ in range(25):
        bidirectional = bool(rng.random() < 0.5)
        num_buckets = int(rng.choice([8, 16, 32, 64]))
        exact = (num_buckets // 2 if bidirectional else num_buckets) // 2
        max_distance = int(rng.choice([d for d in (16, 32, 64, 128, 256) if d > exact]))
        yield Case((torch.from_numpy(rng.integers(-300, 301, size=int(rng.integers(1, 30)))), bidirectional,
                    num_buckets, max_distance))


# ---------------------------------------------------------------------------------------------------
# Numbers the exercises and the quiz ask for (the tests recompute each one with the library)
# ---------------------------------------------------------------------------------------------------

LESSON_GPT = dict(n_layer=2, n_embd=64, vocab_size=1000, n_positions=128)  # the lesson's GPT
BERT_BASE_EMBEDDINGS = 30522 * 768 + 512 * 768 + 2 * 768 + 2 * 768  # token, position, segment tables, LayerNorm


def _non_embedding(n_embd: int, n_layer: int = 2) -> int:
    return gpt_param_count(n_layer, n_embd, 1, 1) - n_embd - n_embd  # minus the (1 x d) token and position tables


EXERCISES = ExerciseSet([
    FunctionExercise(
        "pre_ln_block", pre_ln_block, gpt_block_cases, rtol=1e-5, atol=1e-5,
        task="implement: one GPT-2 block's forward pass, given its four sublayers attn, mlp, ln_1, ln_2",
        hint="pre-LN: x = x + attn(ln_1(x)), then x = x + mlp(ln_2(x)); each branch reads a normalised copy, the "
             "stream x is never normalised itself. ln_1(x + attn(x)) is post-LN (BERT, and the manual's "
             "nn.TransformerDecoderLayer), which GPT-2 is not"),
    FunctionExercise(
        "bert_embeddings", bert_embeddings, bert_embedding_cases, rtol=1e-5, atol=1e-5,
        task="implement: BERT's input layer, token + position + segment vectors summed, then LayerNorm",
        hint="look up weights['word'][input_ids], weights['position'][:T] and weights['segment'][token_type_ids] "
             "(zeros when token_type_ids is None), add them, then F.layer_norm(x, x.shape[-1:], weights['ln_weight'], "
             "weights['ln_bias'], eps=1e-12); the manual's BERTModel skips the LayerNorm and the segment-0 vector"),
    FunctionExercise(
        "t5_bucket", relative_position_bucket, bucket_cases, rtol=0, atol=0,
        task="implement: T5's relative-position bucket, bidirectional (encoder) and causal (decoder)",
        hint="bidirectional: halve num_buckets, add num_buckets (the halved one) where relative_position > 0 and use "
             "its abs; causal: distance = max(-relative_position, 0). Below max_exact = num_buckets // 2 the bucket is "
             "the distance; above, max_exact + int(log(d / max_exact) / log(max_distance / max_exact) * (num_buckets "
             "- max_exact)), capped at num_buckets - 1"),
    ValueExercise(
        "gpt_params", kind="predict", expected=gpt_param_count(**LESSON_GPT), rtol=0,
        task="predict, then measure: how many parameters has the lesson's GPT (V=1000, 128 positions, d=64, 2 blocks)?",
        hint="V·d + P·d for the two embedding tables, 12d² + 13d per block, 2d for the final LayerNorm; the "
             "output layer is the token embedding (tied)",
        why="V·d + P·d + L(12d² + 13d) + 2d = 64,000 + 8,192 + 99,968 + 128: the tied output layer adds nothing.",
        mistakes={gpt_param_count(**LESSON_GPT, tied=False): "that counts an untied output layer (V·d more); GPT's "
                                                              "lm_head is the token embedding itself",
                  _non_embedding(64): "that leaves out the two embedding tables (V·d + P·d)",
                  2 * 12 * 64 ** 2: "that is 12d² per block only: add the biases and LayerNorms (13d per block), the "
                                    "final LayerNorm and the embeddings"}),
    ValueExercise(
        "bert_embedding_params", kind="predict", expected=BERT_BASE_EMBEDDINGS, rtol=0,
        task="predict, then measure: how many parameters has BERT-base's input layer (V=30522, 512 positions, "
             "2 segments, C=768, its LayerNorm included)?",
        hint="three tables of C columns (V, 512 and 2 rows) and a LayerNorm with a weight and a bias of C each",
        why="(30522 + 512 + 2) · 768 for the tables plus 2 · 768 for the LayerNorm: 23,837,184, a fifth of BERT-base.",
        mistakes={BERT_BASE_EMBEDDINGS - 2 * 768: "1,536 short: that leaves out the LayerNorm (weight and bias) or the "
                                                  "2-row segment table; BERT has both",
                  30522 * 768: "that is the token table only: add the position and segment tables and the LayerNorm",
                  BERT_BASE_EMBEDDINGS - 512 * 768: "that leaves out the 512 learned position vectors"}),
    ValueExercise(
        "width_param_ratio", kind="experiment", low=3.9, high=4.0, rtol=0.01,
        task="experiment: how many times more non-embedding parameters has the lesson's GPT at width 128 than at 64?",
        hint="GPT(GPTConfig(vocab_size=1000, n_positions=128, n_embd=d, n_layer=2, n_head=4)).num_parameters("
             "exclude_embeddings=True) for d = 128 and d = 64, then divide",
        why="A block's weight matrices are d × d or d × 4d, so doubling the width multiplies them by 4 (12d²); only "
            "the 13d of biases and LayerNorms grow by 2.",
        mistakes={2.0: "that is how the embedding tables, biases and LayerNorms grow (linearly in d); the weight "
                       "matrices grow as d²",
                  gpt_param_count(2, 128, 1000, 128) / gpt_param_count(2, 64, 1000, 128):
                      "that ratio counts the embedding tables, which grow only linearly: exclude_embeddings=True"}),
    ValueExercise(
        "stream_scale", kind="experiment", low=8.5, high=11.5, rtol=0.1,
        task="experiment: the std of a pre-LN GPT block's output over a post-LN BERT layer's, for an input of std 10",
        hint="x = 10 * torch.randn(2, 8, 64); run it through a GPT block (pre-LN) and a BERT layer (post-LN) of width "
             "64, both in eval mode, and divide the two outputs' standard deviations (GPT's by BERT's)",
        why="Post-LN renormalises the stream after every block (std 1); pre-LN adds small branch outputs to the stream "
            "and leaves its scale alone (std 10), which is why GPT-2 needs a final LayerNorm.",
        mistakes={1.0: "both outputs have the same scale: did you run the same kind of block twice?",
                  0.1: "that is BERT's over GPT's: the task asks for GPT's std divided by BERT's"}),
])


def quiz() -> Quiz:
    """The end-of-lesson questions of chapter 02 (answers checked against the library by the tests)."""
    return Quiz([
        MultipleChoice("The manual's GPT stacks nn.TransformerDecoderLayer called as layer(x, x, tgt_mask=causal). "
                       "Why can a position see the tokens after it?", (
            Choice("its causal mask has the wrong convention, so the self-attention looks ahead", False,
                   "the mask is right for PyTorch (True above the diagonal = forbidden): the self-attention is causal"),
            Choice("the layer's cross-attention attends to memory=x with no mask", True,
                   "a decoder layer has a second attention over memory; with memory=x and no memory_mask every "
                   "position reads the whole sequence, future included"),
            Choice("the learned position embeddings carry the next token", False,
                   "a position vector depends only on the position, never on the tokens"),
        )),
        Numeric("How many parameters has BERT-base's input layer (30,522 tokens, 512 positions, 2 segments, "
                "width 768, with its LayerNorm)?", BERT_BASE_EMBEDDINGS,
                "(30522 + 512 + 2) · 768 + 2 · 768 = 23,837,184: three tables and a LayerNorm's weight and bias.",
                rtol=0.0001, mistakes={BERT_BASE_EMBEDDINGS - 2 * 768: "1,536 short: the LayerNorm's weight and bias "
                                                                       "(or the segment table) are missing",
                                       30522 * 768: "that is the token table alone"}),
        Numeric("In T5's encoder (32 buckets, max_distance 128), which bucket holds a key 20 positions AFTER the "
                "query?",
                26, "16 (keys after the query use the upper half) + 8 (the exact distances 0-7) + "
                    "int(log(20/8) / log(128/8) · 8) = 2: bucket 26.",
                rtol=0, mistakes={10: "that is the bucket of a key 20 positions before the query; keys after it use "
                                      "the upper half, 16-31",
                                  20: "only distances 0-7 get a bucket each; from 8 on they share log-spaced buckets",
                                  36: "there are only 32 buckets (0-31): distances from 8 on share log-spaced ones"}),
        MultipleChoice("A GPT-2 block computes x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)). If both branches output "
                       "zeros (e.g. zero output layers), what does the block return?", (
            Choice("x itself, unchanged", True,
                   "pre-LN never normalises the stream, only copies of it; that is also why GPT-2 ends with a final "
                   "LayerNorm (ln_f)"),
            Choice("ln_2(ln_1(x)), the normalised stream", False,
                   "that is a post-LN block (BERT's): it normalises after each residual sum"),
            Choice("zeros", False, "the residual connection adds the branch to x; x itself is kept"),
        )),
        MultipleChoice("You run the course's BERT (or transformers') without token_type_ids. What segment vector "
                       "is added to each token?", (
            Choice("none: segment embeddings are only for pairs of texts", False,
                   "that is what the manual's BERTModel does; BERT adds segment 0's vector to every token"),
            Choice("row 0 of the segment table (segment A), to every token", True,
                   "token_type_ids default to zeros, so the input matches what BERT saw in pretraining for text A"),
            Choice("row 1 of the segment table", False, "segment 1 marks the second text (B) of a pair"),
        )),
    ])
