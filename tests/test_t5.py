"""Chapter 02: the course's T5 against transformers' T5ForConditionalGeneration, and its properties."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from transformers import T5Config as HFT5Config
from transformers import T5ForConditionalGeneration
from transformers.models.t5.modeling_t5 import T5Attention, T5LayerNorm

from llm_course.models.manual_ch02 import future_token_influence, padding_influence
from llm_course.models.t5 import (
    T5,
    RMSNorm,
    Seq2SeqLMOutput,
    T5Config,
    relative_position_bucket,
)

V, TOL = 89, 1e-5


def _config(**kw) -> T5Config:
    base = dict(vocab_size=V, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3, num_heads=3,
                relative_attention_num_buckets=8, relative_attention_max_distance=16)
    return T5Config(**{**base, **kw})


@pytest.fixture(scope="module", params=["relu", "gated-gelu"])
def model(request) -> T5:
    torch.manual_seed(0)
    return T5(_config(feed_forward_proj=request.param)).eval()


@pytest.fixture(scope="module")
def hf(model) -> T5ForConditionalGeneration:
    hf = model.to_hf().eval()
    if hasattr(hf, "set_attn_implementation"):
        hf.set_attn_implementation("eager")
    else:  # transformers 4.50 (the floor) reads the choice from the config at every forward
        hf.config._attn_implementation = "eager"
    return hf


def _batch(seed=0, B=3, S=11, T=7):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(2, V, (B, S), generator=g)
    src_mask = torch.ones(B, S, dtype=torch.long)
    src_mask[1, S - 4:] = 0  # right padding
    src_mask[2, :3] = 0  # left padding (T5 has no absolute positions, so both work)
    labels = torch.randint(2, V, (B, T), generator=g)
    labels[0, T - 2:] = -100
    return src, src_mask, labels


def test_to_hf_same_logits_loss_and_attentions(model, hf):
    src, src_mask, labels = _batch()
    with torch.no_grad():
        ours = model(src, attention_mask=src_mask, labels=labels, output_attentions=True)
        theirs = hf(input_ids=src, attention_mask=src_mask, labels=labels, output_attentions=True)
    torch.testing.assert_close(ours.logits, theirs.logits, atol=TOL, rtol=TOL)
    torch.testing.assert_close(ours.loss, theirs.loss, atol=TOL, rtol=TOL)
    real = src_mask.bool()
    torch.testing.assert_close(ours.encoder_last_hidden_state[real], theirs.encoder_last_hidden_state[real],
                               atol=TOL, rtol=TOL)
    for name in ("encoder_attentions", "decoder_attentions", "cross_attentions"):
        a, b = getattr(ours, name), getattr(theirs, name)
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert x.shape == y.shape
            if name == "encoder_attentions":  # compare real query rows only
                x, y = x.transpose(1, 2)[real], y.transpose(1, 2)[real]
            torch.testing.assert_close(x, y, atol=TOL, rtol=TOL)


def test_decoder_attention_mask_matches(model, hf):
    src, src_mask, labels = _batch(seed=1)
    dec = model.shift_right(labels)
    dec_mask = torch.ones_like(dec)
    dec_mask[0, -2:] = 0
    with torch.no_grad():
        a = model(src, attention_mask=src_mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask).logits
        b = hf(input_ids=src, attention_mask=src_mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask).logits
    torch.testing.assert_close(a, b, atol=TOL, rtol=TOL)


def test_to_hf_matches_sdpa_implementation_too(model):
    hf = model.to_hf().eval()
    src, src_mask, labels = _batch(seed=2)
    with torch.no_grad():
        torch.testing.assert_close(model(src, attention_mask=src_mask, labels=labels).logits,
                                   hf(input_ids=src, attention_mask=src_mask, labels=labels).logits,
                                   atol=TOL, rtol=TOL)


@pytest.mark.parametrize("ff", ["relu", "gated-gelu"])
def test_from_hf_random_t5_same_logits(ff):
    torch.manual_seed(1)
    hf = T5ForConditionalGeneration(HFT5Config(
        vocab_size=V, d_model=24, d_kv=6, d_ff=40, num_layers=3, num_decoder_layers=2, num_heads=2,
        relative_attention_num_buckets=16, relative_attention_max_distance=32, feed_forward_proj=ff,
        decoder_start_token_id=0)).eval()
    ours = T5.from_hf(hf).eval()
    src, src_mask, labels = _batch(seed=3)
    with torch.no_grad():
        a = ours(src, attention_mask=src_mask, labels=labels)
        b = hf(input_ids=src, attention_mask=src_mask, labels=labels)
    torch.testing.assert_close(a.logits, b.logits, atol=TOL, rtol=TOL)
    torch.testing.assert_close(a.loss, b.loss, atol=TOL, rtol=TOL)
    assert ours.num_parameters() == hf.num_parameters()
    assert ours.num_parameters(exclude_embeddings=True) == hf.num_parameters(exclude_embeddings=True)


def test_lm_head_scaling_and_unscaled_attention(model):
    """T5 scales the decoder output by d_model**-0.5 and does not scale q.k by 1/sqrt(d_kv)."""
    src, src_mask, labels = _batch(seed=4)
    assert all(m.scale == 1.0 for m in model.modules() if hasattr(m, "qkv_proj") or hasattr(m, "kv_proj"))
    unscaled = T5(_config(feed_forward_proj=model.config.feed_forward_proj, scale_decoder_outputs=False)).eval()
    unscaled.load_state_dict(model.state_dict())
    with torch.no_grad():
        a = model(src, attention_mask=src_mask, labels=labels).logits
        b = unscaled(src, attention_mask=src_mask, labels=labels).logits
    torch.testing.assert_close(a, b * 32**-0.5, atol=TOL, rtol=TOL)


@settings(max_examples=6, deadline=None)
@given(t=st.integers(0, 5), seed=st.integers(0, 10_000))
def test_decoder_is_causal(model, t, seed):
    src, src_mask, labels = _batch(seed=seed)
    dec = model.shift_right(labels.clamp(min=0))
    with torch.no_grad():
        enc = model.encode(src, src_mask)

    def logits(d):
        return model(attention_mask=src_mask, encoder_outputs=enc, decoder_input_ids=d).logits

    assert future_token_influence(logits, dec, t, V, seed) < TOL


def test_decoder_causality_test_can_fail(model):
    """Swap the causal decoder's bias table for the encoder's: the test above must notice the leak."""
    src, src_mask, labels = _batch()
    dec = model.shift_right(labels.clamp(min=0))
    with torch.no_grad():
        enc = model.encode(src, src_mask)
        # an attention without the causal mask: run the decoder's blocks like the encoder's
        leaky = T5(model.config).eval()
        leaky.load_state_dict(model.state_dict())
        leaky.decoder.is_decoder = False
    assert future_token_influence(
        lambda d: leaky(attention_mask=src_mask, encoder_outputs=enc, decoder_input_ids=d).logits, dec, 2, V) > 1e-3


@settings(max_examples=5, deadline=None)
@given(n_pad=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_source_padding_does_not_change_the_output(model, n_pad, seed):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(2, V, (2, 6), generator=g)
    dec = torch.randint(2, V, (2, 4), generator=g)

    def decoder_logits(x, mask):  # (B, T, V) for the fixed target; the source gets padded
        return model(x, attention_mask=mask, decoder_input_ids=dec).logits

    def encoder_states(x, mask):
        return model.encode(x, mask).last_hidden_state

    assert padding_influence(decoder_logits, src, n_pad, model.config.pad_token_id) < TOL
    assert padding_influence(encoder_states, src, n_pad, model.config.pad_token_id) < TOL


@settings(max_examples=3, deadline=None)
@given(prefix=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_kv_cache_incremental_decoding_equals_full_forward(model, prefix, seed):
    src, src_mask, labels = _batch(seed=seed)
    dec = model.shift_right(labels.clamp(min=0))
    with torch.no_grad():
        full = model(src, attention_mask=src_mask, decoder_input_ids=dec).logits
        enc = model.encode(src, src_mask)
        out = model(attention_mask=src_mask, encoder_outputs=enc, decoder_input_ids=dec[:, :prefix], use_cache=True)
        logits, cache = [out.logits], out.past_key_values
        for t in range(prefix, dec.shape[1]):
            out = model(attention_mask=src_mask, encoder_outputs=enc, decoder_input_ids=dec[:, t:t + 1],
                        past_key_values=cache, use_cache=True)
            logits.append(out.logits)
            cache = out.past_key_values
    torch.testing.assert_close(torch.cat(logits, dim=1), full, atol=TOL, rtol=TOL)
    assert len(cache) == 3 and len(cache[0]) == 4  # per layer: self k, v and cross k, v
    assert cache[0][0].shape == (3, 3, 7, 8) and cache[0][2].shape == (3, 3, 11, 8)


@settings(max_examples=30, deadline=None)
@given(
    rel=st.lists(st.integers(-300, 300), min_size=1, max_size=20), bidirectional=st.booleans(),
    num_buckets=st.sampled_from([8, 16, 32]), max_distance=st.sampled_from([16, 64, 128]),
)
def test_relative_position_bucket_matches_transformers(rel, bidirectional, num_buckets, max_distance):
    assume(max_distance > num_buckets // 2)  # otherwise there is no room for log buckets (tested below)
    r = torch.tensor(rel)
    ours = relative_position_bucket(r, bidirectional, num_buckets, max_distance)
    theirs = T5Attention._relative_position_bucket(r, bidirectional, num_buckets, max_distance)
    assert torch.equal(ours, theirs)
    assert ours.min() >= 0 and ours.max() < num_buckets


def test_relative_position_bucket_closed_form():
    # bidirectional, 8 buckets: 4 per direction, distances 0 and 1 exact, then log-spaced
    r = torch.tensor([0, -1, 1, -1000, 1000])
    assert relative_position_bucket(r, True, 8, 16).tolist() == [0, 1, 5, 3, 7]
    # causal: future positions (r > 0) all fall in bucket 0, like the present
    assert relative_position_bucket(torch.tensor([3, 0, -1]), False, 8, 16).tolist() == [0, 0, 1]


def test_relative_position_bucket_rejects_max_distance_inside_exact_range():
    with pytest.raises(ValueError, match="max_distance"):
        relative_position_bucket(torch.tensor([-16]), False, 32, 16)
    with pytest.raises(ValueError, match=r"relative_attention_max_distance \(16\)"):
        _config(relative_attention_num_buckets=32, relative_attention_max_distance=16)


def test_rmsnorm_matches_closed_form_and_transformers():
    x = torch.randn(2, 5, 16)
    norm = RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    ref = T5LayerNorm(16, eps=1e-6)
    ref.weight.data.copy_(norm.weight.data)
    expected = norm.weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(norm(x), expected)
    torch.testing.assert_close(norm(x), ref(x))


def test_output_contract(model):
    src, src_mask, labels = _batch()
    out = model(src, attention_mask=src_mask, labels=labels)
    assert isinstance(out, Seq2SeqLMOutput) and out.logits.shape == (3, 7, V)
    assert out.encoder_attentions is None and out.decoder_attentions is None and out.cross_attentions is None
    assert out.past_key_values is None
    out = model(src, attention_mask=src_mask, labels=labels, output_attentions=True)
    assert len(out.encoder_attentions) == 2 and out.encoder_attentions[0].shape == (3, 3, 11, 11)
    assert len(out.decoder_attentions) == 3 and out.decoder_attentions[0].shape == (3, 3, 7, 7)
    assert len(out.cross_attentions) == 3 and out.cross_attentions[0].shape == (3, 3, 7, 11)
    assert torch.all(out.decoder_attentions[0].triu(diagonal=1) == 0)
    assert torch.all(out.cross_attentions[0][1, :, :, -4:] == 0)  # padded source tokens are ignored


def test_errors(model):
    src, src_mask, labels = _batch()
    with pytest.raises(ValueError, match="decoder_input_ids, or labels"):
        model(src)
    with pytest.raises(ValueError, match="input_ids .* or encoder_outputs"):
        model(decoder_input_ids=labels.clamp(min=0))
    with pytest.raises(ValueError, match=r"attention_mask has shape \(3, 10\)"):
        model(src, attention_mask=src_mask[:, 1:], labels=labels)
    with pytest.raises(ValueError, match="decoder_input_ids contains token id"):
        model(src, decoder_input_ids=labels)  # -100 is a label, not a token
    with pytest.raises(ValueError, match="feed_forward_proj"):
        _config(feed_forward_proj="swiglu")
    with pytest.raises(TypeError, match="T5.from_hf"):
        T5(HFT5Config())


def test_save_load_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path)
    loaded = T5.from_pretrained(tmp_path).eval()
    assert loaded.config == model.config and loaded.lm_head.weight is loaded.shared.weight
    src, src_mask, labels = _batch()
    with torch.no_grad():
        assert torch.equal(loaded(src, src_mask, labels=labels).logits, model(src, src_mask, labels=labels).logits)


def test_is_encoder_decoder_tells_t5s_from_gpts(model, hf):
    """models.modeling.is_encoder_decoder: how summarization, translation and the attention data pick a decoder."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from llm_course.models.gpt import GPT, GPTConfig
    from llm_course.models.modeling import is_encoder_decoder

    gpt = GPT(GPTConfig(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    hf_gpt = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    assert is_encoder_decoder(model) and is_encoder_decoder(hf)
    assert not any(is_encoder_decoder(m) for m in (gpt, hf_gpt, torch.nn.Linear(2, 2)))
