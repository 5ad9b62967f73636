"""Chapter 02: the course's BERT against transformers' BertForMaskedLM, and the padding property."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import BertConfig, BertForMaskedLM, BertForPreTraining

from llm_course.models.bert import BERT, BERTConfig, MaskedLMOutput
from llm_course.models.manual_ch02 import padding_influence

V, TOL = 97, 1e-5
CONFIG = BERTConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=64, max_position_embeddings=20)


@pytest.fixture(scope="module")
def model() -> BERT:
    torch.manual_seed(0)
    return BERT(CONFIG).eval()


@pytest.fixture(scope="module")
def hf(model) -> BertForMaskedLM:
    hf = model.to_hf().eval()
    if hasattr(hf, "set_attn_implementation"):
        hf.set_attn_implementation("eager")
    else:  # transformers 4.50 (the floor) reads the choice from the config at every forward
        hf.config._attn_implementation = "eager"
    return hf


def _batch(B=3, T=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (B, T), generator=g)
    token_type_ids = (torch.arange(T) >= T // 2).long().expand(B, T)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, T - 3:] = 0
    mask[2, 4:] = 0
    ids = ids.masked_fill(mask == 0, CONFIG.pad_token_id)
    return ids, token_type_ids, mask


def _mlm_labels(ids, mask, seed=0):
    g = torch.Generator().manual_seed(seed)
    chosen = (torch.rand(ids.shape, generator=g) < 0.3) & mask.bool()
    return ids.masked_fill(~chosen, -100)


def test_to_hf_same_logits_loss_and_attentions(model, hf):
    ids, tt, mask = _batch()
    labels = _mlm_labels(ids, mask)
    with torch.no_grad():
        ours = model(ids, attention_mask=mask, token_type_ids=tt, labels=labels, output_attentions=True)
        theirs = hf(ids, attention_mask=mask, token_type_ids=tt, labels=labels, output_attentions=True)
    torch.testing.assert_close(ours.logits, theirs.logits, atol=TOL, rtol=TOL)
    torch.testing.assert_close(ours.loss, theirs.loss, atol=TOL, rtol=TOL)
    for a, b in zip(ours.attentions, theirs.attentions, strict=True):
        torch.testing.assert_close(a, b, atol=TOL, rtol=TOL)
    assert hf.cls.predictions.decoder.weight is hf.bert.embeddings.word_embeddings.weight


def test_to_hf_matches_sdpa_implementation_too(model):
    hf = model.to_hf().eval()
    ids, tt, mask = _batch(seed=1)
    with torch.no_grad():
        torch.testing.assert_close(model(ids, attention_mask=mask, token_type_ids=tt).logits,
                                   hf(ids, attention_mask=mask, token_type_ids=tt).logits, atol=TOL, rtol=TOL)


def test_from_hf_random_bert_same_logits():
    torch.manual_seed(1)
    hf = BertForMaskedLM(BertConfig(vocab_size=V, hidden_size=24, num_hidden_layers=3, num_attention_heads=3,
                                    intermediate_size=40, max_position_embeddings=16)).eval()
    ours = BERT.from_hf(hf).eval()
    ids, tt, mask = _batch(seed=2)
    with torch.no_grad():
        a = ours(ids, attention_mask=mask, token_type_ids=tt)
        b = hf(ids, attention_mask=mask, token_type_ids=tt)
    torch.testing.assert_close(a.logits, b.logits, atol=TOL, rtol=TOL)
    # our model has a pooler that BertForMaskedLM lacks: one (C, C) Linear more
    pooler = 24 * 24 + 24
    assert ours.num_parameters() == hf.num_parameters() + pooler
    assert ours.num_parameters(exclude_embeddings=True) == hf.num_parameters(exclude_embeddings=True) + pooler


def test_from_hf_bert_for_pretraining_copies_the_pooler():
    torch.manual_seed(2)
    hf = BertForPreTraining(BertConfig(vocab_size=V, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32, max_position_embeddings=16)).eval()
    ours = BERT.from_hf(hf).eval()
    ids, tt, mask = _batch(seed=3)
    with torch.no_grad():
        a = ours(ids, attention_mask=mask, token_type_ids=tt)
        b = hf.bert(ids, attention_mask=mask, token_type_ids=tt)
        logits = hf(ids, attention_mask=mask, token_type_ids=tt).prediction_logits
    torch.testing.assert_close(a.pooler_output, b.pooler_output, atol=TOL, rtol=TOL)
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state, atol=TOL, rtol=TOL)
    torch.testing.assert_close(a.logits, logits, atol=TOL, rtol=TOL)


def test_from_hf_rejects_other_models():
    with pytest.raises(TypeError, match="BertForMaskedLM"):
        BERT.from_hf(torch.nn.Linear(2, 2))


@settings(max_examples=15, deadline=None)
@given(n_pad=st.integers(1, 8), seed=st.integers(0, 10_000))
def test_padding_does_not_change_real_tokens(model, n_pad, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (2, 20 - n_pad), generator=g)

    def hidden(x, mask):
        return model(x, attention_mask=mask).last_hidden_state

    assert padding_influence(hidden, ids, n_pad, CONFIG.pad_token_id) < TOL


def test_without_mask_padding_does_change_real_tokens(model):
    """The property test can fail: ignore the mask and the padding leaks in."""
    ids = torch.randint(1, V, (2, 8))
    assert padding_influence(lambda x, m: model(x).last_hidden_state, ids, 4) > 1e-3


def test_padded_keys_get_zero_attention(model):
    ids, tt, mask = _batch()
    out = model(ids, attention_mask=mask, output_attentions=True)
    for w in out.attentions:
        assert w.shape == (3, 4, 10, 10)
        pad_keys = (mask == 0)[:, None, None, :].expand_as(w)
        assert torch.all(w[pad_keys] == 0)
        torch.testing.assert_close(w.sum(-1), torch.ones(3, 4, 10))


def test_output_contract(model):
    ids, _, _ = _batch(B=3, T=6)
    out = model(ids)
    assert isinstance(out, MaskedLMOutput)
    assert out.logits.shape == (3, 6, V) and out.last_hidden_state.shape == (3, 6, 32)
    assert out.pooler_output.shape == (3, 32) and out.loss is None and out.attentions is None
    assert model.config is CONFIG


def test_errors(model):
    with pytest.raises(ValueError, match=r"21 tokens.*max_position_embeddings=20"):
        model(torch.ones(1, 21, dtype=torch.long))
    with pytest.raises(ValueError, match="token_type_ids contains token id 2"):
        model(torch.ones(1, 4, dtype=torch.long), token_type_ids=torch.tensor([[0, 1, 2, 0]]))
    with pytest.raises(ValueError, match=r"attention_mask has shape \(1, 4, 1\)"):
        model(torch.ones(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 4, 1))
    with pytest.raises(ValueError, match="only 0"):  # the manual's additive mask is refused
        model(torch.ones(1, 2, dtype=torch.long), attention_mask=torch.tensor([[0.0, -10000.0]]))
    with pytest.raises(ValueError, match=r"hidden_size \(30\).*num_attention_heads \(4\)"):
        BERTConfig(hidden_size=30, num_attention_heads=4)


def test_save_load_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path)
    loaded = BERT.from_pretrained(tmp_path).eval()
    assert loaded.mlm_head.decoder.weight is loaded.word_embeddings.weight
    ids, tt, mask = _batch()
    with torch.no_grad():
        a, b = model(ids, mask, tt), loaded(ids, mask, tt)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.pooler_output, b.pooler_output)
    from llm_course.models.gpt import GPT

    with pytest.raises(ValueError, match="'bert' model"):
        GPT.from_pretrained(tmp_path)
