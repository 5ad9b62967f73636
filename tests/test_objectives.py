"""Chapter 04: pretraining objectives (causal LM data, MLM masking, metrics) and the manual's defects."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_course.models.gpt import GPT, GPTConfig
from llm_course.nn.objectives import (
    IGNORE_INDEX,
    bits_per_char,
    causal_lm_batch,
    concatenate_documents,
    count_targets,
    manual_causal_lm_labels,
    manual_mask_tokens,
    mask_tokens,
    pack_documents,
    perplexity,
    random_blocks,
    sequential_blocks,
)
from llm_course.text.tokenizer import ByteLevelBPETokenizer

V = 270  # a byte-level BPE needs >= 256 + 4 special tokens
SPECIALS = ["[PAD]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..3 in our tokenizer (special tokens come first)
PAD, CLS, SEP, MASK = 0, 1, 2, 3


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=V, n_positions=32, n_embd=32, n_layer=2, n_head=4)).eval()


# --------------------------------------------------------------------------------------------
# Causal LM data
# --------------------------------------------------------------------------------------------


def test_pack_documents_concatenates_with_eos_and_drops_remainder():
    docs = [[5, 6, 7], [8], [], [9, 10, 11, 12]]
    stream = concatenate_documents(docs, eos_id=0)
    assert stream.tolist() == [5, 6, 7, 0, 8, 0, 9, 10, 11, 12, 0]  # the empty document is skipped
    blocks = pack_documents(docs, block_size=4, eos_id=0)
    assert blocks.dtype == torch.long and blocks.shape == (2, 4)
    assert blocks.flatten().tolist() == stream[:8].tolist()  # 11 tokens -> 2 full blocks, 3 dropped


@settings(max_examples=40, deadline=None)
@given(
    docs=st.lists(st.lists(st.integers(1, 50), max_size=12), min_size=1, max_size=8),
    block_size=st.integers(2, 9),
)
def test_pack_documents_property(docs, block_size):
    n_tokens = sum(len(d) + 1 for d in docs if d)
    if n_tokens < block_size:
        with pytest.raises(ValueError, match="block_size|no tokens"):
            pack_documents(docs, block_size, eos_id=0)
        return
    blocks = pack_documents(docs, block_size, eos_id=0)
    assert blocks.shape == (n_tokens // block_size, block_size)
    expected = [t for d in docs if d for t in d + [0]]
    assert blocks.flatten().tolist() == expected[: blocks.numel()]
    assert int((blocks == 0).sum()) == expected[: blocks.numel()].count(0)


def test_causal_lm_batch_labels_are_unshifted_and_padding_is_ignored():
    batch = causal_lm_batch([[5, 6, 7, 8], [9, 10]], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7, 8], [9, 10, -100, -100]]
    # the pad id may be a real token (GPT-2 pads with <|endoftext|>): padding is found by the mask
    ids = torch.tensor([[0, 4, 0, 0]])
    out = causal_lm_batch(ids, attention_mask=torch.tensor([[1, 1, 1, 0]]), pad_id=0)
    assert out["labels"].tolist() == [[0, 4, 0, -100]]
    assert causal_lm_batch(ids)["labels"].tolist() == [[0, 4, 0, 0]]  # no mask, no pad id: all real
    assert count_targets(out["labels"]) == 2


def test_padding_is_ignored_in_the_loss(gpt):
    seqs = [[5, 6, 7, 8, 9, 10], [11, 12, 13], [14, 15, 16, 17]]
    batch = causal_lm_batch(seqs, pad_id=0)
    with torch.no_grad():
        padded = gpt(**batch).loss
        singles = [gpt(torch.tensor([s]), labels=torch.tensor([s])).loss for s in seqs]
    # the batch loss is the mean over real next-token targets only: (len - 1) per sequence
    weights = torch.tensor([len(s) - 1 for s in seqs], dtype=torch.float)
    expected = (torch.stack(singles) * weights).sum() / weights.sum()
    torch.testing.assert_close(padded, expected, atol=1e-5, rtol=1e-5)
    assert count_targets(batch["labels"]) == int(weights.sum())
    # the manual leaves padding in the labels: the model is trained to predict [PAD]
    manual = manual_causal_lm_labels(batch["input_ids"])
    assert (manual[1, 2:5] == 0).all()


def test_causal_lm_batch_matches_transformers_collator(hf_tokenizer):
    from transformers import DataCollatorForLanguageModeling

    g = _gen(1)
    seqs = [torch.randint(4, V, (int(n),), generator=g).tolist() for n in torch.randint(2, 12, (16,), generator=g)]
    collator = DataCollatorForLanguageModeling(hf_tokenizer, mlm=False, return_tensors="pt")
    theirs = collator([{"input_ids": s} for s in seqs])
    ours = causal_lm_batch(seqs, pad_id=hf_tokenizer.pad_token_id)
    for key in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(ours[key], theirs[key]), key


def test_random_blocks_are_windows_of_the_stream_and_deterministic():
    tokens = torch.arange(1000) % V
    a = random_blocks(tokens, batch_size=8, block_size=16, generator=_gen(0))
    b = random_blocks(tokens, batch_size=8, block_size=16, generator=_gen(0))
    c = random_blocks(tokens, batch_size=8, block_size=16, generator=_gen(1))
    assert set(a) == {"input_ids", "labels"} and a["input_ids"].shape == (8, 16)
    assert torch.equal(a["input_ids"], b["input_ids"]) and not torch.equal(a["input_ids"], c["input_ids"])
    assert torch.equal(a["labels"], a["input_ids"])  # unshifted: the model shifts
    assert a["labels"].data_ptr() != a["input_ids"].data_ptr()  # a copy, safe to edit
    # a generator advances: two calls in a row give two different batches
    g = _gen(0)
    assert not torch.equal(random_blocks(tokens, 8, 16, g)["input_ids"], random_blocks(tokens, 8, 16, g)["input_ids"])


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 60), block_size=st.integers(2, 60), batch_size=st.integers(1, 6), seed=st.integers(0, 99))
def test_random_blocks_offsets_cover_the_valid_range(n, block_size, batch_size, seed):
    tokens = torch.arange(n) + 1000
    if n < block_size:
        with pytest.raises(ValueError, match="block_size"):
            random_blocks(tokens, batch_size, block_size, _gen(seed))
        return
    x = random_blocks(tokens, batch_size, block_size, _gen(seed))["input_ids"]
    starts = x[:, 0] - 1000
    assert ((starts >= 0) & (starts <= n - block_size)).all()
    assert torch.equal(x, starts[:, None] + 1000 + torch.arange(block_size))  # contiguous windows


def test_random_blocks_reach_both_ends():
    tokens = torch.arange(20)
    x = random_blocks(tokens, batch_size=2000, block_size=5, generator=_gen(0))["input_ids"]
    assert set(x[:, 0].tolist()) == set(range(16))  # every offset 0..N-block_size occurs


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 80), block_size=st.integers(2, 12), batch_size=st.integers(1, 5))
def test_sequential_blocks_predict_every_token_exactly_once(n, block_size, batch_size):
    tokens = torch.arange(n) + 10  # distinct ids, so a target identifies its position
    targets, contexts_ok = [], True
    for batch in sequential_blocks(tokens, batch_size, block_size, pad_id=0):
        assert batch["input_ids"].shape[0] <= batch_size and batch["input_ids"].shape[1] == block_size
        labels = batch["labels"]
        assert torch.equal(labels == IGNORE_INDEX, batch["attention_mask"] == 0)
        for row, lab in zip(batch["input_ids"], labels):
            for t in range(1, lab.numel()):
                if lab[t] != IGNORE_INDEX:
                    targets.append(int(lab[t]))
                    contexts_ok &= int(row[t - 1]) == int(lab[t]) - 1  # the true previous token is read
    assert sorted(targets) == list(range(11, n + 10))  # every token but the first, once
    assert contexts_ok


def _total_nats(model, batches) -> tuple[float, int]:
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            n = count_targets(batch["labels"])
            total += float(model(**batch).loss) * n
            count += n
    return total, count


def test_sequential_blocks_sum_of_losses_is_the_text_loss(gpt):
    tokens = torch.randint(0, V, (25,), generator=_gen(3))
    with torch.no_grad():
        whole = float(gpt(tokens[None], labels=tokens[None]).loss) * 24
    # one window as long as the text: exactly the loss of the whole text
    total, count = _total_nats(gpt, sequential_blocks(tokens, batch_size=3, block_size=25))
    assert count == 24 and total == pytest.approx(whole, rel=1e-5)
    # windows of 6 tokens overlapping by one, batched and padded: the same as each window on its own
    total, count = _total_nats(gpt, sequential_blocks(tokens, batch_size=3, block_size=6))
    windows = [tokens[s : s + 6][None] for s in range(0, 24, 5)]
    expected, n = _total_nats(gpt, [{"input_ids": w, "labels": w} for w in windows])
    assert count == n == 24 and total == pytest.approx(expected, rel=1e-5)
    assert total != pytest.approx(whole, rel=1e-3)  # less context, a different loss


# --------------------------------------------------------------------------------------------
# The manual's causal LM labels: shifted twice -> the model learns token t + 2
# --------------------------------------------------------------------------------------------


def _reference_loss(logits: torch.Tensor, ids: torch.Tensor, k: int) -> torch.Tensor:
    """Mean cross-entropy of logits at t against ids[t + k]."""
    T = ids.shape[1]
    return F.cross_entropy(logits[:, : T - k].reshape(-1, logits.shape[-1]), ids[:, k:].reshape(-1))


@pytest.mark.parametrize("which", ["course", "transformers"])
def test_manual_labels_train_token_t_plus_2(gpt, which):
    model = gpt if which == "course" else gpt.to_hf().eval()
    ids = torch.randint(0, V, (3, 14), generator=_gen(4))
    with torch.no_grad():
        logits = model(ids).logits
        right = model(ids, labels=causal_lm_batch(ids)["labels"]).loss
        manual = model(ids, labels=manual_causal_lm_labels(ids)).loss
    torch.testing.assert_close(right, _reference_loss(logits, ids, 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(manual, _reference_loss(logits, ids, 2), atol=1e-5, rtol=1e-5)
    assert not torch.isclose(manual, _reference_loss(logits, ids, 1), atol=1e-3)


def test_labels_shape_mismatch_is_a_clear_error(gpt):
    ids = torch.randint(0, V, (2, 8))
    with pytest.raises(ValueError, match="labels must have the same shape"):
        gpt(ids, labels=ids[:, 1:])  # the "shift it yourself" mistake, with slicing


# --------------------------------------------------------------------------------------------
# MLM masking
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory):
    """Our byte-level BPE with BERT's special tokens, loaded by transformers (offline, local files)."""
    from transformers import PreTrainedTokenizerFast

    tok = ByteLevelBPETokenizer.train("the cat sat on the mat " * 20, vocab_size=V, special_tokens=SPECIALS)
    assert [tok.special_tokens[s] for s in SPECIALS] == [PAD, CLS, SEP, MASK] and tok.vocab_size == V
    path = tok.save_pretrained(tmp_path_factory.mktemp("tok"))
    hf = PreTrainedTokenizerFast.from_pretrained(
        path, pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]"
    )
    assert len(hf) == V and hf.mask_token_id == MASK and hf.pad_token_id == PAD
    return hf


def _bert_batch(B: int = 2000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """[CLS] words [SEP] [PAD]...: ordinary ids 4..V-1, lengths 4..40, right padding."""
    g = _gen(seed)
    lengths = torch.randint(2, 39, (B,), generator=g)
    T = int(lengths.max()) + 2
    ids = torch.full((B, T), PAD)
    mask = torch.zeros(B, T, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        ids[i, 0], ids[i, n + 1] = CLS, SEP
        ids[i, 1 : n + 1] = torch.randint(4, V, (n,), generator=g)
        mask[i, : n + 2] = 1
    return ids, mask


def _categories(orig: torch.Tensor, masked: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    selected = labels != IGNORE_INDEX
    return {
        "selected": selected,
        "mask": selected & (masked == MASK),
        "random": selected & (masked != MASK) & (masked != orig),
        "unchanged": selected & (masked == orig),
    }


def _within(observed: float, expected: float, n: int, sigmas: float = 5.0) -> bool:
    """|observed - expected| within `sigmas` binomial standard deviations (plus a 1/n slack)."""
    return abs(observed - expected) <= sigmas * math.sqrt(expected * (1 - expected) / n) + 1 / n


def test_mask_tokens_statistics_and_special_tokens_never_selected():
    ids, attn = _bert_batch()
    masked, labels = mask_tokens(ids, MASK, V, [PAD, CLS, SEP], generator=_gen(0), attention_mask=attn)
    cat = _categories(ids, masked, labels)
    ordinary = ids >= 4
    n_ordinary, n_sel = int(ordinary.sum()), int(cat["selected"].sum())
    assert n_ordinary > 15_000
    assert _within(n_sel / n_ordinary, 0.15, n_ordinary)
    assert _within(int(cat["mask"].sum()) / n_sel, 0.8, n_sel)
    assert _within(int(cat["random"].sum()) / n_sel, 0.1 * (1 - 1 / (V - 4)), n_sel)
    assert _within(int(cat["unchanged"].sum()) / n_sel, 0.1 + 0.1 / (V - 4), n_sel)
    # never a special token or padding; labels are the original ids exactly where selected
    assert not cat["selected"][~ordinary].any()
    assert torch.equal(masked[~cat["selected"]], ids[~cat["selected"]])
    assert torch.equal(labels[cat["selected"]], ids[cat["selected"]])
    assert (masked[cat["random"]] >= 4).all()  # random replacements are ordinary tokens


def test_mask_tokens_is_deterministic_and_does_not_modify_input():
    ids, attn = _bert_batch(B=20)
    before = ids.clone()
    a = mask_tokens(ids, MASK, V, [PAD, CLS, SEP], generator=_gen(7), attention_mask=attn)
    b = mask_tokens(ids, MASK, V, [PAD, CLS, SEP], generator=_gen(7), attention_mask=attn)
    c = mask_tokens(ids, MASK, V, [PAD, CLS, SEP], generator=_gen(8), attention_mask=attn)
    assert torch.equal(ids, before)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_padding_is_never_selected_even_if_pad_is_an_ordinary_id():
    # padding recognised through attention_mask, whatever id it holds (here the ordinary id 50)
    ids = torch.full((64, 20), 50)
    attn = torch.zeros(64, 20, dtype=torch.long)
    attn[:, :10] = 1
    _, labels = mask_tokens(ids, MASK, V, [CLS, SEP], mlm_probability=0.9, generator=_gen(0), attention_mask=attn)
    assert (labels[:, 10:] == IGNORE_INDEX).all() and (labels[:, :10] != IGNORE_INDEX).any()


@settings(max_examples=50, deadline=None)
@given(
    B=st.integers(1, 6), T=st.integers(1, 12), p=st.floats(0.01, 0.99),
    mask_p=st.floats(0.0, 1.0), seed=st.integers(0, 1000),
)
def test_mask_tokens_invariants(B, T, p, mask_p, seed):
    g = _gen(seed)
    ids = torch.randint(0, V, (B, T), generator=g)
    rand_p = (1 - mask_p) / 2
    masked, labels = mask_tokens(ids, MASK, V, [PAD, CLS, SEP], p, generator=g,
                                 mask_replace_prob=mask_p, random_replace_prob=rand_p)
    selected = labels != IGNORE_INDEX
    assert masked.shape == labels.shape == ids.shape
    assert not selected[ids < 4].any()
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(masked[~selected], ids[~selected])
    changed = selected & (masked != ids)
    assert ((masked[changed] == MASK) | (masked[changed] >= 4)).all()


def test_mask_tokens_agrees_with_transformers_collator(hf_tokenizer):
    from transformers import DataCollatorForLanguageModeling

    ids, attn = _bert_batch(B=4000, seed=5)
    collator = DataCollatorForLanguageModeling(hf_tokenizer, mlm=True, mlm_probability=0.15, seed=0)
    # the collator pads the unpadded rows itself, back to exactly our batch
    theirs = collator([{"input_ids": row[: int(n)]} for row, n in zip(ids.tolist(), attn.sum(1))])
    assert torch.equal(theirs["attention_mask"], attn)
    ours = mask_tokens(ids, MASK, V, [PAD, CLS, SEP], generator=_gen(0), attention_mask=attn)
    a = _categories(ids, *ours)
    b = _categories(ids, theirs["input_ids"], theirs["labels"])
    # transformers never selects special tokens either (it asks the tokenizer for its special-tokens mask)
    assert not b["selected"][ids < 4].any()
    n = int((ids >= 4).sum())
    sel_a, sel_b = int(a["selected"].sum()), int(b["selected"].sum())
    # two-sample comparison: the difference of two rates has variance 2 p (1 - p) / n
    assert abs(sel_a - sel_b) / n <= 5 * math.sqrt(2 * 0.15 * 0.85 / n)
    for name, p in (("mask", 0.8), ("random", 0.1), ("unchanged", 0.1)):
        fa, fb = int(a[name].sum()) / sel_a, int(b[name].sum()) / sel_b
        assert abs(fa - fb) <= 5 * math.sqrt(p * (1 - p) * (1 / sel_a + 1 / sel_b)) + 0.002, name
    assert theirs["input_ids"].shape == ours[0].shape


def test_manual_mask_tokens_selects_special_tokens_and_padding():
    ids, attn = _bert_batch(B=200)
    masked, labels = manual_mask_tokens(ids, MASK, V, generator=_gen(0))
    selected = labels != IGNORE_INDEX
    for special in (PAD, CLS, SEP):
        assert selected[ids == special].any(), f"the manual never selected token {special}"
    assert (masked[ids == CLS] != CLS).any()  # some [CLS] were replaced: the model is asked to predict it
    # the course's version never does, on the same batch
    _, ours = mask_tokens(ids, MASK, V, [PAD, CLS, SEP], generator=_gen(0), attention_mask=attn)
    assert not (ours != IGNORE_INDEX)[ids < 4].any()
    # and the manual's rates are right: 15% of every token (specials included), 80% of those masked
    n, n_sel = ids.numel(), int(selected.sum())
    assert _within(n_sel / n, 0.15, n)
    assert _within(int((selected & (masked == MASK)).sum()) / n_sel, 0.8, n_sel)


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def test_perplexity_closed_form():
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(V)) == pytest.approx(V)
    # a uniform model (all logits equal) has loss ln V and perplexity V
    loss = F.cross_entropy(torch.zeros(10, V), torch.randint(0, V, (10,), generator=_gen(0)))
    assert perplexity(loss) == pytest.approx(V, rel=1e-5)
    assert perplexity(1e6) == math.inf


@settings(max_examples=50, deadline=None)
@given(a=st.floats(0, 20), b=st.floats(0, 20))
def test_perplexity_of_a_sum_is_the_product(a, b):
    assert perplexity(a + b) == pytest.approx(perplexity(a) * perplexity(b), rel=1e-9)


def test_bits_per_char_closed_form_and_tokenizer_independence():
    assert bits_per_char(10 * math.log(2), 10) == pytest.approx(1.0)
    text = "the cat sat on the mat, the cat sat on the hat. " * 4
    # knowing nothing: uniform over 256 bytes costs 8 bits per ASCII character, per byte token ...
    n_bytes = len(text.encode("utf-8"))
    assert bits_per_char(n_bytes * math.log(256), len(text)) == pytest.approx(8.0)
    # ... and a uniform BPE model pays ln V per token on fewer tokens: bits/char = n_tok log2 V / n_chars
    tok = ByteLevelBPETokenizer.train(text, vocab_size=300)
    n_tok = len(tok.encode(text))
    assert n_tok < n_bytes
    bpc = bits_per_char(torch.tensor(n_tok * math.log(300)), len(text))
    assert bpc == pytest.approx(n_tok * math.log2(300) / len(text))


# --------------------------------------------------------------------------------------------
# Clear errors
# --------------------------------------------------------------------------------------------


def test_errors_are_clear():
    tokens = torch.arange(50)
    for bad in (1, 0, -3):
        with pytest.raises(ValueError, match="block_size"):
            pack_documents([[1, 2, 3]], bad, eos_id=0)
        with pytest.raises(ValueError, match="block_size"):
            random_blocks(tokens, 2, bad)
        with pytest.raises(ValueError, match="block_size"):
            sequential_blocks(tokens, 2, bad)  # raises at the call, before iteration starts
    with pytest.raises(ValueError, match="fewer than one block"):
        pack_documents([[1, 2], [3]], block_size=8, eos_id=0)
    with pytest.raises(ValueError, match="no tokens"):
        pack_documents([[], []], block_size=2, eos_id=0)
    with pytest.raises(TypeError, match="encode it first"):
        pack_documents(["some text"], block_size=2, eos_id=0)
    with pytest.raises(ValueError, match="fewer than block_size"):
        random_blocks(torch.arange(5), 2, 8)
    with pytest.raises(ValueError, match=r"\(num_tokens,\)"):
        random_blocks(torch.zeros(2, 5, dtype=torch.long), 2, 3)
    with pytest.raises(TypeError, match="integer token ids"):
        random_blocks(torch.rand(50), 2, 3)
    with pytest.raises(ValueError, match="pad_id"):
        causal_lm_batch([[1, 2, 3], [4]])
    with pytest.raises(ValueError, match="negative id"):
        causal_lm_batch(torch.tensor([[1, -100]]))
    with pytest.raises(ValueError, match="attention_mask has shape"):
        causal_lm_batch(torch.ones(2, 4, dtype=torch.long), attention_mask=torch.ones(2, 3))

    ids = torch.randint(4, V, (2, 6))
    for p in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="mlm_probability"):
            mask_tokens(ids, MASK, V, [PAD], mlm_probability=p)
    with pytest.raises(ValueError, match=r"mask_token_id must be an integer in \[0, 269\], got 270"):
        mask_tokens(ids, V, V, [PAD])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        mask_tokens(ids + V, MASK, V, [PAD])
    with pytest.raises(ValueError, match="attention_mask has shape"):
        mask_tokens(ids, MASK, V, [PAD], attention_mask=torch.ones(2, 5))
    with pytest.raises(TypeError, match="list of ints"):
        mask_tokens(ids, MASK, V, PAD)
    with pytest.raises(ValueError, match="> 1"):
        mask_tokens(ids, MASK, V, [PAD], mask_replace_prob=0.9, random_replace_prob=0.2)

    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="loss_nats must be a number >= 0, got"):
            perplexity(bad)
    with pytest.raises(TypeError, match="loss_nats must be a number >= 0, got str"):
        perplexity("1.0")
    with pytest.raises(TypeError, match="block_size must be an integer >= 2, got float"):
        random_blocks(tokens, 2, 4.0)
    with pytest.raises(ValueError, match="n_chars"):
        bits_per_char(1.0, 0)
    with pytest.raises(ValueError, match="single number"):
        perplexity(torch.zeros(3))
