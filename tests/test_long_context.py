"""Chapter 09 (long inputs): strided perplexity, local attention, long-document embeddings.

References, independent of the code under test:
* perplexity computed token by token (one forward pass per token, with the context the definition
  gives it), the zoo's own chunked evaluation (sequential_blocks + estimate_loss), and transformers'
  GPT2LMHeadModel twin of the course GPT;
* masks written as loops over (query, key) pairs; the GPT's outputs when early tokens are changed;
* the encoder run on each chunk alone (no padding), and encoder.encode for a short text.
Models are tiny and random, except the shipped course-gpt and the packaged all-MiniLM-L6-v2 (no download).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import GPT2LMHeadModel

from llm_course.infer.long_context import (
    SlidingWindowGPT,
    local_attention_maps,
    naive_chunk_perplexity,
    sliding_window_mask,
    strided_perplexity,
    strided_windows,
    token_ids,
)
from llm_course.infer.long_documents import (
    document_chunks,
    long_document_embedding,
    manual_defects,
    manual_sliding_window_embeddings,
)
from llm_course.models.gpt import GPT, GPTConfig
from llm_course.models.intro import SentenceEncoder, mean_pool
from llm_course.nn.attention import causal_mask

pytestmark = pytest.mark.usefixtures("one_thread")

V = 61
CONFIG = GPTConfig(vocab_size=V, n_positions=16, n_embd=16, n_layer=2, n_head=2)


@pytest.fixture(scope="module")
def gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(CONFIG).eval()


@pytest.fixture(scope="module")
def gpt1() -> GPT:
    """One layer: its receptive field under local attention is exactly the window."""
    torch.manual_seed(1)
    return GPT(GPTConfig(vocab_size=V, n_positions=24, n_embd=16, n_layer=1, n_head=2)).eval()


@pytest.fixture(scope="module")
def course_gpt():
    from llm_course.zoo.loading import load_pretrained

    return load_pretrained("course-gpt")


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    return SentenceEncoder()


def _ids(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------
# Strided perplexity
# --------------------------------------------------------------------------------------------


def _window_end(t: int, n: int, window: int, stride: int) -> int:
    """Where the window that scores token t ends, from the definition (not from strided_windows)."""
    if t < window:
        return min(window, n)
    return min(window + ((t - window) // stride + 1) * stride, n)


@torch.no_grad()
def _brute_force_loss(model, ids: torch.Tensor, window: int, stride: int) -> tuple[float, int]:
    """Mean loss of every token t >= 1 predicted from ids[begin:t], one forward pass per token."""
    n, nats = ids.numel(), []
    for t in range(1, n):
        begin = max(0, _window_end(t, n, window, stride) - window)
        assert 1 <= t - begin <= window - 1
        logits = model(input_ids=ids[begin:t][None]).logits[0, -1]  # predicts token t
        nats.append(-F.log_softmax(logits.double(), -1)[ids[t]].item())
    return sum(nats) / len(nats), len(nats)


@pytest.mark.parametrize("n, window, stride", [(40, 8, 3), (40, 8, 7), (37, 16, 5), (9, 16, 4), (30, 5, 1)])
def test_strided_perplexity_equals_brute_force_per_token(gpt, n, window, stride):
    ids = _ids(n, seed=n + stride)
    got = strided_perplexity(gpt, ids, window, stride, batch_size=3)
    loss, count = _brute_force_loss(gpt, ids, window, stride)
    assert got["tokens"] == count == n - 1
    assert got["loss"] == pytest.approx(loss, abs=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)
    assert got["windows"] == len(strided_windows(n, window, stride))


def test_strided_perplexity_of_the_transformers_twin_is_the_same(gpt):
    hf = gpt.to_hf().eval()
    assert isinstance(hf, GPT2LMHeadModel)
    ids = _ids(45, seed=3)
    ours, theirs = strided_perplexity(gpt, ids, 12, 4), strided_perplexity(hf, ids[None], 12, 4)
    assert theirs["tokens"] == ours["tokens"] == 44
    assert theirs["loss"] == pytest.approx(ours["loss"], abs=1e-5)
    assert theirs["loss"] == pytest.approx(_brute_force_loss(hf, ids, 12, 4)[0], abs=1e-5)


@settings(max_examples=15, deadline=None)
@given(chunks=st.integers(1, 5), window=st.integers(2, 16), seed=st.integers(0, 100))
def test_stride_window_minus_one_is_the_naive_chunking(gpt, chunks, window, seed):
    # a whole number of chunks: then both evaluations read exactly the same windows
    ids = _ids(chunks * (window - 1) + 1, seed)
    strided = strided_perplexity(gpt, ids, window, window - 1)
    naive = naive_chunk_perplexity(gpt, ids, window)
    assert strided["tokens"] == naive["tokens"] == ids.numel() - 1
    assert strided["windows"] == naive["windows"] == chunks
    assert strided["loss"] == pytest.approx(naive["loss"], abs=1e-5)


def test_naive_chunking_matches_brute_force_with_chunk_context(gpt):
    """The naive method: token t is predicted from the start of its chunk only."""
    ids, window = _ids(33, seed=5), 8
    nats = []
    with torch.no_grad():
        for t in range(1, ids.numel()):
            begin = (t - 1) // (window - 1) * (window - 1)  # chunk k = ids[k*(W-1) : k*(W-1) + W]
            logits = gpt(ids[begin:t][None]).logits[0, -1]
            nats.append(-F.log_softmax(logits.double(), -1)[ids[t]].item())
    assert naive_chunk_perplexity(gpt, ids, window)["loss"] == pytest.approx(np.mean(nats), abs=1e-5)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(2, 300), window=st.integers(2, 64), data=st.data())
def test_strided_windows_score_every_token_once_with_enough_context(n, window, data):
    stride = data.draw(st.integers(1, window - 1))
    plan = strided_windows(n, window, stride)
    targets = [t for _, end, first in plan for t in range(first, end)]
    assert targets == list(range(1, n))  # every token but the first, once, in order
    for begin, end, first in plan:
        assert end - begin == min(window, n)  # all windows full length (one batch, no padding)
        assert begin < first <= end
        assert end - first <= max(stride, window - 1)
        for t in range(first, end):  # context of t: begin..t-1
            assert t - begin <= window - 1
            assert t - begin >= min(t, window - stride)


def test_strided_windows_example_from_the_docstring():
    assert strided_windows(10, 6, 2) == [(0, 6, 1), (2, 8, 6), (4, 10, 8)]
    assert strided_windows(5, 8, 3) == [(0, 5, 1)]  # shorter than the window: one pass


@pytest.mark.parametrize("call, error, message", [
    (lambda m, ids: strided_perplexity(m, ids, 8, 9), ValueError, "stride=9 must be smaller than window=8"),
    (lambda m, ids: strided_perplexity(m, ids, 8, 8), ValueError, "stride=8 must be smaller than window=8"),
    (lambda m, ids: strided_perplexity(m, ids, 17, 4), ValueError, "larger than the model's context"),
    (lambda m, ids: naive_chunk_perplexity(m, ids, 32), ValueError, "larger than the model's context"),
    (lambda m, ids: strided_perplexity(m, ids, 8, 0), ValueError, "stride must be a positive integer"),
    (lambda m, ids: strided_perplexity(m, ids, 1, 1), ValueError, "window must be an integer >= 2"),
    (lambda m, ids: strided_perplexity(m, ids, 8.0, 4), TypeError, "window must be an integer"),
    (lambda m, ids: strided_perplexity(m, ids[:1], 8, 4), ValueError, "at least 2"),
    (lambda m, ids: strided_perplexity(m, "some text", 8, 4), TypeError, "tokenize it first"),
    (lambda m, ids: strided_perplexity(m, torch.tensor([1, 2, V]), 8, 4), ValueError, "outside the model's vocabulary"),
    (lambda m, ids: strided_perplexity(m, ids.view(2, 15), 8, 4), ValueError, "one text"),
])
def test_strided_perplexity_bad_input(gpt, call, error, message):
    with pytest.raises(error, match=message):
        call(gpt, _ids(30))


def test_default_window_is_the_context_and_default_stride_half_of_it(gpt):
    ids = _ids(50)
    assert strided_perplexity(gpt, ids) == strided_perplexity(gpt, ids, CONFIG.n_positions, CONFIG.n_positions // 2)
    gpt.train()
    strided_perplexity(gpt, ids, 8, 4)
    assert gpt.training  # the mode is restored
    gpt.eval()


def test_on_course_gpt_strided_beats_naive_chunking(course_gpt):
    """Done-when: on real text, more context per token gives a lower perplexity (same tokens)."""
    from llm_course.text.corpora import docs_corpus

    model, tok = course_gpt
    ids = token_ids(tok, docs_corpus().val[:8000])
    assert ids.tolist() == tok.encode(docs_corpus().val[:8000])
    naive = naive_chunk_perplexity(model, ids, 128)
    strided = strided_perplexity(model, ids, 128, 32, batch_size=16)
    assert strided["tokens"] == naive["tokens"] == ids.numel() - 1
    # measured: 120.0 vs 123.7 (the bilingual course-gpt; the docs-only one of 2026-11-29: 120.2 vs 125.9)
    assert strided["perplexity"] < 0.98 * naive["perplexity"]


# --------------------------------------------------------------------------------------------
# Local attention
# --------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(q=st.integers(1, 12), extra=st.integers(0, 6), window=st.integers(1, 20))
def test_sliding_window_mask_matches_the_definition(q, extra, window):
    k = q + extra  # with a KV cache the queries are the last q of k positions
    mask = sliding_window_mask(q, window, key_length=k)
    expected = torch.tensor([[(k - q + i) - window < j <= (k - q + i) for j in range(k)] for i in range(q)])
    assert mask.dtype == torch.bool and torch.equal(mask, expected)
    if window >= k:
        assert torch.equal(mask, causal_mask(q, key_length=k))


def test_sliding_window_mask_bad_input():
    with pytest.raises(ValueError, match="window must be a positive integer"):
        sliding_window_mask(4, 0)
    with pytest.raises(ValueError, match="key_length"):
        sliding_window_mask(4, 2, key_length=3)


def test_sliding_window_gpt_with_a_window_as_long_as_the_text_is_the_gpt(gpt):
    ids = _ids(12)[None]
    with torch.no_grad():
        plain = gpt(ids).logits
        full = gpt(ids, labels=ids, output_attentions=True)
        local = SlidingWindowGPT(gpt, 12)(ids, labels=ids, output_attentions=True)
        narrow = SlidingWindowGPT(gpt, 3)(ids)
    torch.testing.assert_close(local.logits, full.logits, atol=1e-6, rtol=0)
    assert local.loss == pytest.approx(float(full.loss), abs=1e-6)
    assert not torch.allclose(narrow.logits, full.logits, atol=1e-3)
    with torch.no_grad():  # the hooks are gone after the call: the GPT is unchanged
        torch.testing.assert_close(gpt(ids).logits, plain, atol=0, rtol=0)


@settings(max_examples=20, deadline=None)
@given(window=st.integers(1, 10), i=st.integers(0, 19), seed=st.integers(0, 50))
def test_one_layer_output_ignores_tokens_older_than_the_window(gpt1, window, i, seed):
    local = SlidingWindowGPT(gpt1, window)
    ids = _ids(20, seed)[None]
    first_seen = max(0, i - window + 1)
    changed = ids.clone()
    changed[0, :first_seen] = (changed[0, :first_seen] + 1) % V  # every token older than the window
    with torch.no_grad():
        out, out_changed = local(ids).logits[0, i], local(changed).logits[0, i]
        torch.testing.assert_close(out_changed, out, atol=1e-5, rtol=0)
        if first_seen > 0:  # the oldest token it does see matters
            seen = ids.clone()
            seen[0, first_seen] = (seen[0, first_seen] + 1) % V
            assert not torch.allclose(local(seen).logits[0, i], out, atol=1e-5)


def test_stacked_layers_see_back_layers_times_window_minus_one(gpt):
    window, i = 3, 15
    reach = CONFIG.n_layer * (window - 1)  # 2 layers: position i depends on i - 4 .. i
    local = SlidingWindowGPT(gpt, window)
    ids = _ids(16, seed=7)[None]
    with torch.no_grad():
        out = local(ids).logits[0, i]
        for j in range(i + 1):
            changed = ids.clone()
            changed[0, j] = (changed[0, j] + 1) % V
            moved = not torch.allclose(local(changed).logits[0, i], out, atol=1e-6)
            assert moved == (j >= i - reach), j


def test_local_attention_weights_are_a_band_and_rows_sum_to_one(gpt):
    ids = _ids(14)[None]
    with torch.no_grad():
        attentions = SlidingWindowGPT(gpt, 4)(ids, output_attentions=True).attentions
    band = sliding_window_mask(14, 4)
    for a in attentions:
        assert a.shape == (1, CONFIG.n_head, 14, 14)
        assert torch.all(a[..., ~band] == 0)
        assert torch.all(a[..., band] > 0)
        torch.testing.assert_close(a.sum(-1), torch.ones(1, CONFIG.n_head, 14))


def test_local_attention_with_a_kv_cache_gives_the_same_logits(gpt):
    local = SlidingWindowGPT(gpt, 5)
    ids = _ids(13, seed=2)[None]
    with torch.no_grad():
        full = local(ids).logits
        out = local(ids[:, :6], use_cache=True)
        steps, past = [out.logits], out.past_key_values
        for t in range(6, 13):  # one token at a time, with the cache
            out = local(ids[:, t : t + 1], past_key_values=past, use_cache=True)
            steps.append(out.logits)
            past = out.past_key_values
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)


def test_local_attention_with_padding(gpt):
    ids = _ids(10)[None].repeat(2, 1)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 7:] = 0  # right padding in row 1
    with torch.no_grad():
        batch = SlidingWindowGPT(gpt, 3)(ids, attention_mask=mask).logits
        alone = SlidingWindowGPT(gpt, 3)(ids[1:, :7]).logits
    torch.testing.assert_close(batch[1, :7], alone[0], atol=1e-5, rtol=0)


def test_local_attention_trains_and_refuses_gradient_checkpointing():
    torch.manual_seed(3)
    model = GPT(CONFIG)
    local = SlidingWindowGPT(model, 3)
    ids = _ids(12)[None]
    local(ids, labels=ids).loss.backward()  # gradients flow through the masked attention
    assert all(p.grad is not None for p in model.parameters())
    if not hasattr(model, "gradient_checkpointing_enable"):
        pytest.skip("this GPT has no gradient checkpointing")
    model.gradient_checkpointing_enable()
    with pytest.raises(ValueError, match="gradient_checkpointing_disable"):
        local(ids, labels=ids)
    with torch.no_grad():  # evaluation does not checkpoint, so it is allowed
        local(ids, labels=ids)


def test_sliding_window_gpt_bad_input(gpt):
    with pytest.raises(TypeError, match="GPT.from_hf"):
        SlidingWindowGPT(gpt.to_hf(), 4)
    with pytest.raises(ValueError, match="window must be a positive integer"):
        SlidingWindowGPT(gpt, 0)


def test_local_attention_maps_and_the_explorer(course_gpt):
    from llm_course.widgets.attention_explorer import AttentionExplorer

    model, tok = course_gpt
    text = "The cat sat on the mat, and then the cat slept on the mat again."
    full, local = local_attention_maps(model, tok, text, window=4)
    n = len(tok.encode(text))
    band = sliding_window_mask(n, 4).numpy()
    assert full.tokens == local.tokens and len(full.tokens) == n
    assert full.attentions["self"].shape == local.attentions["self"].shape == (5, 5, n, n)
    assert np.all(local.weights("self", 2, 1)[~band] == 0)
    assert np.any(full.weights("self", 2, 1)[~band] > 0.01)  # full attention does look further back
    np.testing.assert_allclose(local.attentions["self"].sum(-1), 1, atol=1e-5)
    explorer = AttentionExplorer(models={"full": (model, tok), "window 4": (SlidingWindowGPT(model, 4), tok)},
                                 texts=[text])
    explorer.model_choice.value = "window 4"
    explorer.show(layer=2, head=1)
    np.testing.assert_allclose(explorer.current_weights, local.weights("self", 2, 1), atol=1e-6)


# --------------------------------------------------------------------------------------------
# Long-document embeddings
# --------------------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 200), length=st.integers(1, 40), data=st.data())
def test_document_chunks_cover_every_token(n, length, data):
    stride = data.draw(st.integers(1, length))
    spans = document_chunks(n, length, stride)
    covered = np.zeros(n, dtype=int)
    for start, end in spans:
        assert 0 <= start < end <= n and end - start <= length
        covered[start:end] += 1
    assert covered.min() >= 1 and spans[-1][1] == n
    assert [s for s, _ in spans] == list(range(0, stride * len(spans), stride))
    if stride == length:
        assert covered.max() == 1


def test_document_chunks_bad_stride():
    with pytest.raises(ValueError, match="never be read"):
        document_chunks(100, 10, 11)


def _long_text() -> str:
    """About 300 MiniLM tokens of the course's docs text: several chunks of 64 or 100 tokens."""
    from llm_course.text.corpora import docs_corpus

    return docs_corpus().val[:1300]


def test_short_text_gets_the_encoders_own_embedding(encoder):
    text = "Sliding windows let a model read a long document piece by piece."
    np.testing.assert_allclose(long_document_embedding(encoder, text), encoder.encode([text])[0], atol=1e-6)


@pytest.mark.parametrize("chunk_tokens, stride", [(64, None), (64, 40), (100, 25)])
def test_long_document_embedding_equals_chunks_embedded_one_by_one(encoder, chunk_tokens, stride):
    text = _long_text()
    tok = encoder.tokenizer
    ids = tok(text, add_special_tokens=False, verbose=False)["input_ids"]
    span = chunk_tokens - 2
    step = span if stride is None else stride
    total, count, start = 0.0, 0, 0
    with torch.no_grad():
        while True:  # each chunk alone: no padding at all, so nothing to mask
            chunk = [tok.cls_token_id, *ids[start : start + span], tok.sep_token_id]
            hidden = encoder.model(input_ids=torch.tensor([chunk])).last_hidden_state[0].double()
            total, count = total + hidden.sum(0).numpy(), count + len(chunk)
            if start + span >= len(ids):
                break
            start += step
    expected = total / count
    expected /= np.linalg.norm(expected)
    got = long_document_embedding(encoder, text, chunk_tokens, stride, batch_size=5)
    np.testing.assert_allclose(got, expected, atol=2e-5)
    assert np.linalg.norm(got) == pytest.approx(1, abs=1e-5)


def test_long_document_embedding_bad_input(encoder):
    with pytest.raises(ValueError, match="larger than the encoder's context"):
        long_document_embedding(encoder, "text", chunk_tokens=600)
    with pytest.raises(ValueError, match="never be read"):
        long_document_embedding(encoder, _long_text(), chunk_tokens=64, stride=63)
    with pytest.raises(ValueError, match="no tokens"):
        long_document_embedding(encoder, "")
    with pytest.raises(TypeError, match="SentenceEncoder"):
        long_document_embedding(encoder.model, "text")


def test_manual_embedding_is_the_mean_of_position_zero_over_zero_padded_chunks(encoder):
    """The reproduction does what the manual's code does (checked by rebuilding its chunks here)."""
    text = _long_text()
    tokens = encoder.tokenizer(text)["input_ids"]  # [CLS] ... [SEP] around the whole text
    vectors = []
    with torch.no_grad():
        for i in range(0, len(tokens), 64):
            chunk = tokens[i : i + 128] + [0] * max(0, 128 - len(tokens[i : i + 128]))
            vectors.append(encoder.model(torch.tensor([chunk])).last_hidden_state[0, 0])
    manual = manual_sliding_window_embeddings(encoder.model, encoder.tokenizer, text, 128, 64)
    torch.testing.assert_close(manual[0], torch.stack(vectors).mean(0), atol=1e-5, rtol=0)


def test_manual_defects_are_measurable(encoder):
    text = _long_text()
    defects = manual_defects(encoder, text, window_size=128, stride=64)
    assert defects["padding_unmasked_vs_masked"] < 0.95  # attending to padding changes the embedding
    assert defects["cls_vs_mean"] < 0.9  # position 0 is not the mean the model was trained to give
    assert defects["manual_vs_fixed"] < 0.9
    n = len(encoder.tokenizer(text)["input_ids"])
    starts = range(0, n, 64)
    assert defects["chunks"] == len(starts)
    padding = sum(max(0, s + 128 - n) for s in starts)
    assert defects["padding_fraction"] == pytest.approx(padding / (128 * len(starts)))
    assert defects["padding_fraction"] > 0.1  # the last chunks are mostly padding
    assert defects["tokens_counted_twice"] > 0.5  # stride = window / 2: most tokens sit in two chunks
    # the same unmasked-padding effect, measured directly on one short sentence
    batch = encoder.tokenizer(["A short sentence about attention masks."], return_tensors="pt")
    ids, real = batch["input_ids"], batch["attention_mask"]
    padded = torch.cat([ids, torch.zeros(1, 50, dtype=torch.long)], 1)
    real_padded = torch.cat([real, torch.zeros(1, 50, dtype=torch.long)], 1)
    with torch.no_grad():
        masked = mean_pool(encoder.model(padded, attention_mask=real_padded).last_hidden_state, real_padded)
        unmasked = mean_pool(encoder.model(padded).last_hidden_state, real_padded)
        alone = mean_pool(encoder.model(ids).last_hidden_state, real)
    torch.testing.assert_close(masked, alone, atol=1e-5, rtol=0)  # a real mask: padding has no effect
    assert F.cosine_similarity(unmasked, alone).item() < 0.95

