"""Pretraining objectives: causal language modelling and masked language modelling. Chapter 04.

Two ways to turn raw text into a training signal without any human labels:

**Causal LM (GPT)** — predict every token from the tokens before it.

    documents -> token ids -> one long stream  doc1 <eos> doc2 <eos> doc3 <eos> ...
              -> fixed-length blocks (pack_documents) or random windows (random_blocks)
              -> batch = {input_ids, labels = input_ids}        labels are NOT shifted here:
                 the model shifts them once (logits at t are scored against labels[t + 1])

**Masked LM (BERT)** — hide 15% of the tokens and predict them from both sides (mask_tokens):
of the selected tokens 80% become [MASK], 10% a random token, 10% stay as they are (so the model
cannot learn "only [MASK] positions matter"); labels hold the original token at selected positions and
-100 (ignored by the loss) elsewhere. Special tokens ([CLS], [SEP], [PAD], ...) and padding are never
selected: there is nothing to learn from predicting them.

Where the manual goes wrong (ERRATA section 4), reproduced here so the notebook and the tests can show it:

``manual_causal_lm_labels``
    shifts the labels by hand (``labels[:, :-1] = input_ids[:, 1:]``) and passes them to a Hugging Face
    model, which shifts them again: position t is trained to predict token t + 2. It also leaves padding
    in the labels (not -100), so the model is trained to predict padding.
``manual_mask_tokens``
    selects positions with no regard for special tokens or padding, so [CLS], [SEP] and [PAD] are masked
    and predicted too.

Metrics: ``perplexity`` (exp of the mean loss in nats) and ``bits_per_char`` (total nats over the number
of characters, in bits), which compares models whose tokenizers cut the same text into different numbers
of tokens.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence

import torch

from llm_course.core.checks import check_float, check_index, check_int, check_positive_int, check_probability

__all__ = [
    "IGNORE_INDEX",
    "concatenate_documents",
    "pack_documents",
    "causal_lm_batch",
    "random_blocks",
    "sequential_blocks",
    "count_targets",
    "mask_tokens",
    "manual_causal_lm_labels",
    "manual_mask_tokens",
    "perplexity",
    "bits_per_char",
]

IGNORE_INDEX = -100  # label value that PyTorch's cross_entropy (and transformers) leave out of the loss


# --------------------------------------------------------------------------------------------
# Input checks (clear messages instead of errors from deep inside torch)
# --------------------------------------------------------------------------------------------


_BLOCK_SIZE_HINT = "a block needs at least 2 tokens, one to read and one to predict"


def _check_ids_tensor(name: str, ids: object, ndim: int) -> torch.Tensor:
    """An integer tensor with ``ndim`` dimensions and no negative ids (lists are converted)."""
    if not isinstance(ids, torch.Tensor):
        try:
            ids = torch.as_tensor(ids)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(ids).__name__} ({e})") from None
        if ids.numel() == 0:
            ids = ids.long()  # torch.as_tensor([]) is float32; an empty list is an empty list of ids
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids (torch.long), got dtype {ids.dtype}")
    if ids.ndim != ndim:
        shape = "(num_tokens,) (one long stream)" if ndim == 1 else "(batch, seq_len)"
        raise ValueError(f"{name} must have shape {shape}, got {tuple(ids.shape)}")
    if ids.numel() and int(ids.min()) < 0:
        raise ValueError(
            f"{name} contains the negative id {int(ids.min())}: pass token ids, not labels (-100 marks "
            "ignored labels and is not a token)"
        )
    return ids.long()


def _check_same_shape(name: str, tensor: torch.Tensor | None, input_ids: torch.Tensor) -> None:
    if tensor is None:
        return
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.shape != input_ids.shape:
        raise ValueError(
            f"{name} has shape {tuple(tensor.shape)} but input_ids has {tuple(input_ids.shape)}: they must match "
            "(one entry per token)"
        )


def _rand(shape: torch.Size, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) numbers drawn on the generator's device, then moved to ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def _randint(high: int, shape: torch.Size, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.randint(high, shape, generator=generator, device=gen_device).to(device)


# --------------------------------------------------------------------------------------------
# Causal language modelling: documents -> one stream -> blocks
# --------------------------------------------------------------------------------------------


def concatenate_documents(docs_ids: Iterable[Sequence[int]], eos_id: int) -> torch.Tensor:
    """One long 1-D stream ``doc1 <eos> doc2 <eos> ...``. Chapter 04 (pretraining).

    The end-of-text token after every document tells the model where one text stops and an unrelated one
    begins (GPT-2 uses ``<|endoftext|>``), and teaches it to predict the end of a text. Empty documents
    are skipped. Returns a LongTensor of shape (num_tokens,).
    """
    check_int("eos_id", eos_id, minimum=0, hint="a token id")
    if isinstance(docs_ids, (str, bytes)) or isinstance(docs_ids, torch.Tensor) and docs_ids.ndim < 2:
        raise TypeError("docs_ids must be an iterable of documents, each a list of token ids (e.g. tok.encode(text))")
    pieces: list[torch.Tensor] = []
    eos = torch.tensor([eos_id], dtype=torch.long)
    for i, doc in enumerate(docs_ids):
        if isinstance(doc, str):
            raise TypeError(f"document {i} is a string: encode it first (tokenizer.encode(text)) and pass the ids")
        ids = _check_ids_tensor(f"document {i}", list(doc) if not isinstance(doc, torch.Tensor) else doc, ndim=1)
        if ids.numel():
            pieces += [ids, eos]
    if not pieces:
        raise ValueError("docs_ids holds no tokens: pass at least one non-empty document")
    return torch.cat(pieces)


def pack_documents(docs_ids: Iterable[Sequence[int]], block_size: int, eos_id: int) -> torch.Tensor:
    """Concatenate documents with ``eos_id`` after each and cut the stream into blocks. Chapter 04.

    Returns a LongTensor (N, block_size) with N = num_tokens // block_size. **The remainder (fewer than
    block_size tokens at the end) is dropped**, as in Hugging Face's ``run_clm`` example: every block is
    full, so no padding and no attention mask are needed, and at most block_size - 1 tokens are lost.
    A block may start in the middle of a document and span several documents; the ``eos`` token between
    them marks the boundary. Train with ``causal_lm_batch(blocks)`` (labels = input_ids).
    """
    block_size = check_int("block_size", block_size, minimum=2, hint=_BLOCK_SIZE_HINT)
    stream = concatenate_documents(docs_ids, eos_id)
    n_blocks = stream.numel() // block_size
    if n_blocks == 0:
        raise ValueError(
            f"the documents hold only {stream.numel()} tokens (separators included), fewer than one block of "
            f"block_size={block_size}: use a smaller block_size or more text"
        )
    return stream[: n_blocks * block_size].view(n_blocks, block_size).clone()


def causal_lm_batch(
    input_ids: torch.Tensor | Sequence[Sequence[int]],
    attention_mask: torch.Tensor | None = None,
    pad_id: int | None = None,
) -> dict[str, torch.Tensor]:
    """A causal-LM batch: ``{input_ids, attention_mask, labels}``. Chapter 04 (pretraining).

    ``labels`` are the input ids, **not shifted** (the model shifts them once: the logits at position t
    are scored against ``labels[t + 1]``), with -100 wherever ``attention_mask`` is 0 so that padding is
    never a target.

    input_ids: a (B, T) tensor, or a list of token-id lists of different lengths, which are padded on the
    right with ``pad_id`` (required then). Any id works as ``pad_id``, even ``<|endoftext|>`` (GPT-2 has no
    pad token): padding is recognised by the attention mask, never by its id.
    attention_mask: (B, T), 1 = real token, 0 = padding. If omitted for a tensor, it is
    ``input_ids != pad_id`` when ``pad_id`` is given (careful: that also hides real tokens equal to pad_id,
    such as an eos used as padding) and all ones otherwise.
    """
    check_int("pad_id", pad_id, minimum=0, hint="a token id", allow_none=True)
    if not isinstance(input_ids, torch.Tensor):
        seqs = list(input_ids)
        if not seqs or any(isinstance(s, (int, str)) for s in seqs):
            raise TypeError("input_ids must be a (batch, seq_len) tensor or a non-empty list of token-id lists")
        if attention_mask is not None:
            raise ValueError("attention_mask is built from the lengths when input_ids is a list; do not pass one")
        lengths = [len(s) for s in seqs]
        if min(lengths) == 0:
            raise ValueError(f"sequence {lengths.index(0)} of input_ids is empty")
        if pad_id is None and len(set(lengths)) > 1:
            raise ValueError(
                f"the sequences have different lengths ({min(lengths)}..{max(lengths)}): pass pad_id to pad them "
                "(any id, e.g. the eos id: padding gets attention_mask 0 and label -100)"
            )
        T = max(lengths)
        ids = torch.full((len(seqs), T), pad_id if pad_id is not None else 0, dtype=torch.long)
        attention_mask = torch.zeros(len(seqs), T, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = _check_ids_tensor(f"input_ids[{i}]", list(s), ndim=1)
            attention_mask[i, : len(s)] = 1
        input_ids = ids
    else:
        input_ids = _check_ids_tensor("input_ids", input_ids, ndim=2)
        _check_same_shape("attention_mask", attention_mask, input_ids)
        if attention_mask is None:
            attention_mask = (input_ids != pad_id) if pad_id is not None else torch.ones_like(input_ids)
        attention_mask = attention_mask.long()
    labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def random_blocks(
    tokens: torch.Tensor,
    batch_size: int,
    block_size: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """A training batch of random windows from one long token stream (nanoGPT's ``get_batch``). Chapter 04.

    Picks ``batch_size`` start offsets uniformly in [0, len(tokens) - block_size] and returns
    ``{input_ids, labels}``, both (batch_size, block_size), with ``labels`` a copy of ``input_ids`` (the
    model shifts once, so each window gives block_size - 1 next-token targets). The same ``generator``
    state gives the same batch; pass a seeded ``torch.Generator`` for reproducible training.
    ``tokens``: 1-D ids, e.g. ``concatenate_documents(...)``. ``device``: where to put the batch.
    """
    tokens = _check_ids_tensor("tokens", tokens, ndim=1)
    batch_size = check_positive_int("batch_size", batch_size)
    block_size = check_int("block_size", block_size, minimum=2, hint=_BLOCK_SIZE_HINT)
    if tokens.numel() < block_size:
        raise ValueError(
            f"tokens holds only {tokens.numel()} tokens, fewer than block_size={block_size}: "
            "use a smaller block_size or more text"
        )
    # offsets: (B,), each in [0, N - block_size]; idx: (B, block_size) = offset + 0..block_size-1
    offsets = _randint(tokens.numel() - block_size + 1, torch.Size([batch_size]), generator, tokens.device)
    idx = offsets[:, None] + torch.arange(block_size, device=tokens.device)[None, :]
    input_ids = tokens[idx]
    if device is not None:
        input_ids = input_ids.to(device)
    return {"input_ids": input_ids, "labels": input_ids.clone()}


def sequential_blocks(
    tokens: torch.Tensor,
    batch_size: int,
    block_size: int,
    pad_id: int = 0,
    device: torch.device | str | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Evaluation batches that predict every token of the stream exactly once. Chapter 04 (pretraining).

    With labels = input_ids the first token of a window is never a target (nothing precedes it), so
    consecutive windows overlap by one token: window k is ``tokens[k*(block_size-1) : k*(block_size-1) +
    block_size]``. Every token but the very first is then a target exactly once, and the summed loss
    over all batches is the loss of the whole text (each token seen with up to block_size - 1 tokens of
    context). The last window may be shorter: it is padded on the right with ``pad_id``, with
    attention_mask 0 and label -100. Returns an iterator of ``{input_ids, attention_mask, labels}``, each
    (<= batch_size, block_size) on ``device``; the last batch may have fewer rows. Bad arguments raise
    here, not when iteration starts.
    """
    tokens = _check_ids_tensor("tokens", tokens, ndim=1)
    batch_size = check_positive_int("batch_size", batch_size)
    block_size = check_int("block_size", block_size, minimum=2, hint=_BLOCK_SIZE_HINT)
    check_int("pad_id", pad_id, minimum=0, hint="a token id")
    n = tokens.numel()
    if n < 2:
        raise ValueError(f"tokens holds {n} token(s): evaluation needs at least 2 (one to read, one to predict)")
    stride = block_size - 1
    n_windows = math.ceil((n - 1) / stride)
    # Pad the stream so that the last window is full length, then cut all windows at once with unfold
    # (a view: window k = padded[k*stride : k*stride + block_size]).
    length = n_windows * stride + 1
    padded = torch.full((length,), pad_id, dtype=torch.long, device=tokens.device)
    padded[:n] = tokens
    real = torch.arange(length, device=tokens.device) < n
    windows = padded.unfold(0, block_size, stride)  # (n_windows, block_size)
    masks = real.unfold(0, block_size, stride)
    return _batches(windows, masks, batch_size, device)


def _batches(
    windows: torch.Tensor, masks: torch.Tensor, batch_size: int, device: torch.device | str | None
) -> Iterator[dict[str, torch.Tensor]]:
    for b in range(0, windows.shape[0], batch_size):
        batch = causal_lm_batch(windows[b : b + batch_size].clone(), attention_mask=masks[b : b + batch_size])
        yield {k: v.to(device) for k, v in batch.items()} if device is not None else batch


def count_targets(labels: torch.Tensor) -> int:
    """How many next-token predictions a causal-LM batch scores (labels[:, 1:] != -100). Chapter 04.

    The model's loss is the mean over these; ``loss * count_targets(labels)`` is the batch's total in nats,
    which is what adds up across batches of different sizes (for ``perplexity`` / ``bits_per_char``).
    """
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a (batch, seq_len) tensor, got {type(labels).__name__}")
    if labels.ndim != 2:
        raise ValueError(f"labels must have shape (batch, seq_len), got {tuple(labels.shape)}")
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


# --------------------------------------------------------------------------------------------
# Masked language modelling
# --------------------------------------------------------------------------------------------


def mask_tokens(
    input_ids: torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
    special_token_ids: Iterable[int],
    mlm_probability: float = 0.15,
    generator: torch.Generator | None = None,
    attention_mask: torch.Tensor | None = None,
    *,
    mask_replace_prob: float = 0.8,
    random_replace_prob: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: returns ``(masked_input_ids, labels)``. Chapter 04 (pretraining).

    1. Each token that is neither special (``special_token_ids``, plus ``mask_token_id``) nor padding
       (``attention_mask == 0``) is selected with probability ``mlm_probability`` (15%).
    2. A selected token becomes [MASK] with probability ``mask_replace_prob`` (80%), a random ordinary
       token with probability ``random_replace_prob`` (10%), and stays unchanged otherwise (10%).
       (Random tokens are drawn uniformly from the non-special ids; transformers draws from the whole
       vocabulary, which can put a [CLS] in mid-sentence.)
    3. ``labels`` hold the original id at selected positions and -100 everywhere else, so the loss is
       computed only where the model had to guess.

    The same seeded ``generator`` gives the same masks. ``input_ids`` is not modified. (B, T) in, the
    same shapes out.
    """
    input_ids = _check_ids_tensor("input_ids", input_ids, ndim=2)
    vocab_size = check_int("vocab_size", vocab_size, minimum=2)
    mask_token_id = check_index("mask_token_id", mask_token_id, vocab_size, hint="a token id in the vocabulary")
    if isinstance(special_token_ids, (int, str)):
        raise TypeError("special_token_ids must be a list of ints, e.g. [pad_id, cls_id, sep_id, mask_id]")
    specials = {mask_token_id}  # [MASK] itself is never selected
    for i in special_token_ids:
        token_id = int(i) if isinstance(i, torch.Tensor) else i
        specials.add(check_index("special token id", token_id, vocab_size, hint="a token id in the vocabulary"))
    mlm_probability = check_probability("mlm_probability", mlm_probability, low_open=True, high_open=True)
    mask_replace_prob = check_probability("mask_replace_prob", mask_replace_prob)
    random_replace_prob = check_probability("random_replace_prob", random_replace_prob)
    if mask_replace_prob + random_replace_prob > 1:
        raise ValueError(
            f"mask_replace_prob + random_replace_prob = {mask_replace_prob + random_replace_prob} > 1: they are "
            "fractions of the selected tokens (the rest stays unchanged)"
        )
    if input_ids.numel() and int(input_ids.max()) >= vocab_size:
        raise ValueError(f"input_ids contains id {int(input_ids.max())}, outside the vocabulary [0, {vocab_size})")
    _check_same_shape("attention_mask", attention_mask, input_ids)
    device = input_ids.device
    special_ids = torch.tensor(sorted(specials), dtype=torch.long, device=device)
    is_ordinary = torch.ones(vocab_size, dtype=torch.bool, device=device)
    is_ordinary[special_ids] = False
    ordinary_ids = is_ordinary.nonzero().squeeze(1)  # the ids a random replacement may take
    if ordinary_ids.numel() == 0:
        raise ValueError("every id of the vocabulary is special: there is no ordinary token to mask")

    # 1. which positions may be selected, and which are
    candidates = ~torch.isin(input_ids, special_ids)
    if attention_mask is not None:
        candidates &= attention_mask.to(device) != 0
    selected = candidates & (_rand(input_ids.shape, generator, device) < mlm_probability)

    # 2. one uniform number per position decides [MASK] / random / unchanged
    u = _rand(input_ids.shape, generator, device)
    to_mask = selected & (u < mask_replace_prob)
    to_random = selected & (u >= mask_replace_prob) & (u < mask_replace_prob + random_replace_prob)
    random_ids = ordinary_ids[_randint(ordinary_ids.numel(), input_ids.shape, generator, device)]

    masked = input_ids.clone()
    masked[to_mask] = mask_token_id
    masked[to_random] = random_ids[to_random]
    labels = input_ids.masked_fill(~selected, IGNORE_INDEX)  # 3. predict only the selected tokens
    return masked, labels


# --------------------------------------------------------------------------------------------
# The manual's versions (ERRATA section 4), for demonstration only
# --------------------------------------------------------------------------------------------


def manual_causal_lm_labels(input_ids: torch.Tensor) -> torch.Tensor:
    """BROKEN (for demonstration): the manual's causal-LM labels, shifted by hand. Chapter 04.

    ``labels[:, :-1] = input_ids[:, 1:]; labels[:, -1] = -100``. A Hugging Face model (and the course's
    GPT) shifts the labels *again*, so the logits at position t are scored against ``input_ids[t + 2]``:
    the model learns to skip a token. Padding is left in the labels (not -100). The fix:
    ``causal_lm_batch`` (labels = input_ids, padding -100, shifted once by the model).
    """
    input_ids = _check_ids_tensor("input_ids", input_ids, ndim=2)
    labels = input_ids.clone()
    labels[:, :-1] = input_ids[:, 1:]
    labels[:, -1] = IGNORE_INDEX
    return labels


def manual_mask_tokens(
    input_ids: torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
    mlm_probability: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BROKEN (for demonstration): the manual's MLM masking. Chapter 04 (pretraining).

    The same three steps as the manual's ``mlm_pretraining`` (Bernoulli selection, 80% [MASK], half of
    the rest random), but every position can be selected, [CLS], [SEP] and [PAD] included, and no
    attention mask is produced, so padding is attended to and predicted. (The manual also overwrites the
    tokenizer's ``input_ids`` in place; this copy does not.) The fix: ``mask_tokens``.
    """
    input_ids = _check_ids_tensor("input_ids", input_ids, ndim=2).clone()
    labels = input_ids.clone()
    device = input_ids.device
    probability_matrix = torch.full(labels.shape, float(mlm_probability))
    masked_indices = torch.bernoulli(probability_matrix, generator=generator).bool().to(device)
    labels[~masked_indices] = IGNORE_INDEX
    indices_replaced = torch.bernoulli(torch.full(labels.shape, 0.8), generator=generator).bool().to(device)
    indices_replaced &= masked_indices
    input_ids[indices_replaced] = mask_token_id
    indices_random = torch.bernoulli(torch.full(labels.shape, 0.5), generator=generator).bool().to(device)
    indices_random &= masked_indices & ~indices_replaced
    random_words = torch.randint(vocab_size, labels.shape, dtype=torch.long, generator=generator).to(device)
    input_ids[indices_random] = random_words[indices_random]
    return input_ids, labels


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def _as_float(name: str, value: float | torch.Tensor) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a single number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    return check_float(name, value, low=0.0, finite=False, hint="a cross-entropy in nats is never negative")


def perplexity(loss_nats: float | torch.Tensor) -> float:
    """``exp(mean cross-entropy in nats)``. Chapter 04 (pretraining).

    The "effective number of equally likely choices" per token: a model that spreads its probability
    uniformly over V tokens has loss ln V and perplexity V. It depends on the tokenizer (a token is not a
    fixed amount of text), so compare perplexities only between models with the same tokenizer.
    """
    loss = _as_float("loss_nats", loss_nats)
    return math.exp(loss) if loss < 709.0 else math.inf  # exp overflows a float past ~709.78


def bits_per_char(total_nats: float | torch.Tensor, n_chars: int) -> float:
    """Total loss of a text converted to bits per character: ``total_nats / (n_chars * ln 2)``. Chapter 04.

    ``total_nats`` is the summed (not averaged) cross-entropy over all predicted tokens of the text, e.g.
    the sum of ``loss * count_targets(labels)`` over the batches. Dividing by characters instead of tokens
    makes models with different tokenizers comparable: a byte-level model predicts many cheap tokens, a
    BPE model fewer expensive ones, but both pay for the same characters. (8 bits per ASCII character is
    the cost of knowing nothing about 256 byte values.)
    """
    total = _as_float("total_nats", total_nats)
    n_chars = check_positive_int("n_chars", n_chars)
    return total / (n_chars * math.log(2))
