"""Chapter 02: the manual's models FAIL the causality and padding tests; the course's pass.

These tests assert the defects on purpose (ERRATA.md, section 2): if one of them starts failing, the
reproduction in llm_course/manual_ch02.py no longer matches the manual.
"""

from __future__ import annotations

import pytest
import torch

from llm_course.models.bert import BERT, BERTConfig
from llm_course.models.gpt import GPT, GPTConfig
from llm_course.models.manual_ch02 import (
    ManualBERTModel,
    ManualCustomGPT,
    ManualMultiHeadAttention,
    future_token_influence,
    padding_influence,
)

V = 50
LEAK = 1e-3  # a real leak changes outputs by far more than float rounding (~1e-6)


@pytest.fixture(scope="module")
def manual_gpt() -> ManualCustomGPT:
    torch.manual_seed(0)
    return ManualCustomGPT(V, d_model=32, n_heads=4, n_layers=2).eval()


@pytest.fixture(scope="module")
def manual_bert() -> ManualBERTModel:
    torch.manual_seed(0)
    return ManualBERTModel(V, d_model=32, n_heads=4, n_layers=2).eval()


def _ids(B=2, T=10, seed=0):
    return torch.randint(1, V, (B, T), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- GPT


@pytest.mark.parametrize("t", [0, 4, 8])
def test_manual_gpt_leaks_the_future(manual_gpt, t):
    """Cross-attention on memory=x sees every position: outputs up to t depend on tokens after t."""
    assert future_token_influence(manual_gpt, _ids(), t, V) > LEAK


@pytest.mark.parametrize("t", [0, 4, 8])
def test_course_gpt_does_not(t):
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=V, n_positions=16, n_embd=32, n_layer=2, n_head=4)).eval()
    assert future_token_influence(lambda x: gpt(x).logits, _ids(), t, V) < 1e-5


def test_future_token_influence_checks_t(manual_gpt):
    # _ids() has 10 tokens: t = 8 is the last position with a token after it
    with pytest.raises(ValueError, match=r"t must be an integer in \[0, 8\], got 9: some tokens must come after"):
        future_token_influence(manual_gpt, _ids(), 9, V)
    with pytest.raises(TypeError, match="t must be an integer"):
        future_token_influence(manual_gpt, _ids(), 4.0, V)


def test_the_leak_is_the_cross_attention(manual_gpt):
    """Give the cross-attention a causal memory_mask too and the leak disappears: that is the bug."""

    def masked_forward(input_ids):
        T = input_ids.size(1)
        x = manual_gpt.token_embedding(input_ids) + manual_gpt.position_embedding(torch.arange(T)[None])
        mask = manual_gpt.generate_causal_mask(T)
        for layer in manual_gpt.layers:
            x = layer(x, x, tgt_mask=mask, memory_mask=mask)
        return manual_gpt.lm_head(x)

    assert future_token_influence(masked_forward, _ids(), 4, V) < 1e-5


def test_manual_gpt_other_defects(manual_gpt):
    # post-LN (GPT-2 is pre-LN) and an untied LM head
    assert all(layer.norm_first is False for layer in manual_gpt.layers)
    assert manual_gpt.lm_head.weight is not manual_gpt.token_embedding.weight
    # the mask is always built on the CPU, whatever device the model is on
    assert manual_gpt.generate_causal_mask(4).device.type == "cpu"
    # past 1024 positions: an opaque IndexError from inside nn.Embedding ...
    with pytest.raises(IndexError):
        manual_gpt(torch.zeros(1, 1025, dtype=torch.long))
    # ... where the course's GPT says what is wrong and how to fix it
    gpt = GPT(GPTConfig(vocab_size=V, n_positions=16, n_embd=8, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match="n_positions=16"):
        gpt(torch.zeros(1, 17, dtype=torch.long))


# ----------------------------------------------------------------------------- BERT


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_manual_bert_rejects_its_own_attention_mask(manual_bert, mode):
    """A (B, 1, 1, T) float mask passed as src_key_padding_mask: PyTorch refuses it."""
    ids = _ids(T=6)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6])
    getattr(manual_bert, mode)()
    try:
        with pytest.raises((AssertionError, RuntimeError), match="mask"):
            manual_bert(ids, attention_mask=mask)
    finally:
        manual_bert.eval()


def test_manual_bert_without_mask_attends_to_padding(manual_bert):
    """The only way to run it is without a mask, and then padding changes the real tokens."""
    assert padding_influence(lambda x, m: manual_bert(x)[0], _ids(T=6), n_pad=4) > LEAK


def test_course_bert_padding_is_invisible():
    torch.manual_seed(0)
    bert = BERT(BERTConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=16)).eval()
    assert padding_influence(lambda x, m: bert(x, attention_mask=m).last_hidden_state, _ids(T=6), n_pad=4) < 1e-5


def test_a_correct_boolean_mask_fixes_the_manual_layers(manual_bert):
    """Same layers, with what src_key_padding_mask wants: (B, T) bool, True = padding."""

    def fixed_forward(input_ids, attention_mask):
        T = input_ids.size(1)
        x = manual_bert.token_embedding(input_ids) + manual_bert.position_embedding(torch.arange(T)[None])
        for layer in manual_bert.encoder_layers:
            x = layer(x, src_key_padding_mask=attention_mask == 0)
        return x

    # nn.TransformerEncoderLayer's eval fast path returns zeros at padded positions; only real ones count
    assert padding_influence(fixed_forward, _ids(T=6), n_pad=4) < 1e-5


# ----------------------------------------------------------------------------- section 3's attention


def test_manual_attention_with_section_2_mask_is_anti_causal():
    """Section 2's causal mask (True = forbidden) fed to section 3's attention (mask == 0 -> -1e9):
    every query sees only the keys *after* it, and the last one, seeing nothing, attends uniformly."""
    torch.manual_seed(0)
    attn = ManualMultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 5, 16)
    mask = ManualCustomGPT(V, d_model=16, n_heads=4, n_layers=1).generate_causal_mask(5)
    _, w = attn(x, x, x, mask=mask)
    assert torch.all(w[..., :-1, :].tril() == 0)  # query i < 4: nothing on keys 0..i (itself and the past)
    assert torch.all(w[..., 0, 1:] > 0)  # query 0 attends only to the future
    torch.testing.assert_close(w[..., -1, :], torch.full_like(w[..., -1, :], 0.2))  # uniform, not none
    _, w_ok = attn(x, x, x, mask=~mask)  # the convention it expects: True / 1 = may attend
    assert torch.all(w_ok.triu(1) == 0)
    torch.testing.assert_close(w_ok.sum(-1), torch.ones(2, 4, 5))


def test_manual_attention_overflows_in_fp16_and_course_attention_does_not():
    from llm_course.nn.attention import MultiHeadAttention, causal_mask

    torch.manual_seed(0)
    x = torch.randn(1, 5, 16, dtype=torch.float16)
    with pytest.raises(RuntimeError, match="overflow"):
        ManualMultiHeadAttention(16, 4).half()(x, x, x, mask=causal_mask(5))
    out = MultiHeadAttention(16, 4).half()(x, attn_mask=causal_mask(5), need_weights=True)
    assert torch.isfinite(out.output).all() and torch.all(out.weights.float().triu(1) == 0)
