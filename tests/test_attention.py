"""Chapter 03: attention. Written-out attention vs PyTorch's kernels, masks, multi-head attention."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_course.nn.attention import (
    FeedForward,
    MultiHeadAttention,
    causal_mask,
    combine_masks,
    fast_scaled_dot_product_attention,
    merge_heads,
    padding_mask,
    scaled_dot_product_attention,
    split_heads,
    to_additive_mask,
)

ATOL = 1e-5


def _qkv(B, H, Tq, Tk, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, Tq, D, generator=g), torch.randn(B, H, Tk, D, generator=g),
            torch.randn(B, H, Tk, D, generator=g))


def _random_attention_mask(B, T, g):
    """(B, T) 0/1 with at least one real token per row (right or left padding at random)."""
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    m = (torch.arange(T)[None, :] < lengths[:, None]).long()
    return m if torch.rand(1, generator=g).item() < 0.5 else m.flip(1)


# ----------------------------------------------------------------------------- masks


def test_causal_mask_is_lower_triangle():
    assert causal_mask(3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert causal_mask(3).dtype == torch.bool


def test_causal_mask_with_cache_aligns_queries_to_the_end():
    # 2 new queries at positions 2 and 3 of 4: query 0 sees keys 0..2, query 1 sees keys 0..3
    assert causal_mask(2, key_length=4).tolist() == [[True, True, True, False], [True, True, True, True]]
    assert causal_mask(1, key_length=5).all()


def test_causal_mask_errors():
    with pytest.raises(ValueError, match="key_length"):
        causal_mask(4, key_length=2)
    with pytest.raises(ValueError, match="query_length must be a positive integer, got 0"):
        causal_mask(0)
    with pytest.raises(TypeError, match="key_length must be a positive integer, got bool"):
        causal_mask(1, key_length=True)


def test_padding_mask_shape_and_values():
    am = torch.tensor([[1, 1, 0], [1, 1, 1]])
    m = padding_mask(am)
    assert m.shape == (2, 1, 1, 3) and m.dtype == torch.bool
    assert m[:, 0, 0].tolist() == [[True, True, False], [True, True, True]]


@pytest.mark.parametrize("bad, match", [
    (torch.ones(2, 1, 1, 3), "shape"),
    (torch.tensor([[0.0, -10000.0]]), "only 0"),
    (torch.tensor([[5, 7, 9]]), "only 0"),
])
def test_padding_mask_rejects_wrong_masks(bad, match):
    with pytest.raises(ValueError, match=match):
        padding_mask(bad)


def test_combine_masks_bool_and_float():
    causal = causal_mask(3)
    pad = padding_mask(torch.tensor([[1, 1, 0]]))
    both = combine_masks(causal, None, pad)
    assert both.shape == (1, 1, 3, 3) and both.dtype == torch.bool
    assert both[0, 0].tolist() == [[True, False, False], [True, True, False], [True, True, False]]
    bias = torch.full((1, 2, 3, 3), 0.5)
    added = combine_masks(bias, causal)
    assert added.dtype == torch.float32 and added.shape == (1, 2, 3, 3)
    assert torch.isneginf(added[0, 0, 0, 1]) and added[0, 1, 2, 0] == 0.5
    assert combine_masks(None, None) is None


def test_to_additive_mask():
    m = to_additive_mask(torch.tensor([True, False]))
    assert m[0] == 0 and torch.isneginf(m[1])
    with pytest.raises(TypeError, match="padding_mask"):
        to_additive_mask(torch.tensor([1, 0]))


# ----------------------------------------------------------------------------- attention


@settings(max_examples=40, deadline=None)
@given(
    B=st.integers(1, 3), H=st.integers(1, 3), Tq=st.integers(1, 9), extra=st.integers(0, 4), D=st.integers(1, 8),
    mask_kind=st.sampled_from(["none", "causal", "padding", "float", "causal+padding", "float+padding"]),
    scale=st.sampled_from([None, 1.0, 0.3]), seed=st.integers(0, 10_000),
)
def test_written_out_equals_sdpa_with_masks(B, H, Tq, extra, D, mask_kind, scale, seed):
    causal = "causal" in mask_kind
    Tk = Tq if causal else Tq + extra
    q, k, v = _qkv(B, H, Tq, Tk, D, seed)
    g = torch.Generator().manual_seed(seed + 1)
    mask = None
    if "padding" in mask_kind:
        mask = padding_mask(_random_attention_mask(B, Tk, g))
    if "float" in mask_kind:
        mask = combine_masks(torch.randn(1, H, Tq, Tk, generator=g), mask)
    out, weights = scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale)
    fast, none = fast_scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale)
    assert none is None
    torch.testing.assert_close(out, fast, atol=ATOL, rtol=1e-5)
    # and against PyTorch directly (it refuses mask + is_causal together, so combine them for it)
    ref_mask = combine_masks(mask, causal_mask(Tq, key_length=Tk)) if causal else mask
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=ref_mask, scale=scale)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=1e-5)
    # weights: rows are distributions (or all zero when nothing is visible); forbidden keys get 0
    sums = weights.sum(-1)
    assert torch.all(((sums - 1).abs() < 1e-5) | (sums == 0))
    if ref_mask is not None:
        forbidden = ~ref_mask if ref_mask.dtype == torch.bool else torch.isneginf(ref_mask)
        assert torch.all(weights.masked_select(forbidden.expand_as(weights)) == 0)


def test_closed_form_uniform_and_one_hot():
    v = torch.arange(12.0).view(1, 1, 4, 3)
    k = torch.randn(1, 1, 4, 3)
    # a zero query scores every key 0: uniform weights, output = mean of the values it may see
    out, w = scaled_dot_product_attention(torch.zeros(1, 1, 1, 3), k, v)
    torch.testing.assert_close(w, torch.full((1, 1, 1, 4), 0.25))
    torch.testing.assert_close(out, v.mean(dim=2, keepdim=True))
    mask = torch.tensor([True, True, False, False])
    out, w = scaled_dot_product_attention(torch.zeros(1, 1, 1, 3), k, v, attn_mask=mask)
    torch.testing.assert_close(out, v[:, :, :2].mean(dim=2, keepdim=True))
    # a query aligned with one key and scaled up: (almost) all weight on that key
    k = torch.eye(4, 3).view(1, 1, 4, 3)
    out, w = scaled_dot_product_attention(100 * k[:, :, 1:2], k, v)
    assert w[0, 0, 0, 1] > 0.999
    torch.testing.assert_close(out[0, 0, 0], v[0, 0, 1], atol=1e-2, rtol=0)


def test_default_scale_is_one_over_sqrt_d():
    q, k, v = _qkv(1, 1, 2, 3, 16)
    _, w = scaled_dot_product_attention(q, k, v)
    expected = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(16), dim=-1)
    torch.testing.assert_close(w, expected)


def test_fully_masked_query_gives_zeros_not_nan():
    q, k, v = _qkv(1, 1, 3, 3, 4)
    # left padding: query 0 is padding and under the causal mask it may see nothing
    mask = combine_masks(causal_mask(3), padding_mask(torch.tensor([[0, 1, 1]])))
    out, w = scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert not torch.isnan(out).any()
    assert torch.all(w[0, 0, 0] == 0) and torch.all(out[0, 0, 0] == 0)
    fast, _ = fast_scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, fast)


def _sdpa_torch_2_4(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None):
    """torch 2.4's math SDPA (before pytorch/pytorch#133882): plain softmax, NaN for all -inf rows."""
    scores = q @ k.transpose(-2, -1) * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)
    if is_causal:
        scores = scores.masked_fill(~causal_mask(q.shape[2], key_length=k.shape[2]), float("-inf"))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    return torch.softmax(scores, -1) @ v


@pytest.mark.parametrize("additive", [False, True])
def test_fully_masked_query_gives_zeros_on_torch_2_4_too(monkeypatch, additive):
    """pyproject allows torch>=2.4, whose kernel returns NaN for a query that sees no key; the course's
    fast path must return zeros (and finite gradients) whatever the kernel does with such rows."""
    q, k, v = (t.requires_grad_() for t in _qkv(2, 2, 4, 4, 8))
    mask = combine_masks(causal_mask(4), padding_mask(torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])))
    if additive:
        mask = to_additive_mask(mask)
    assert torch.isnan(_sdpa_torch_2_4(q, k, v, attn_mask=mask)).any()  # the old kernel's behaviour
    expected, _ = scaled_dot_product_attention(q, k, v, attn_mask=mask)
    monkeypatch.setattr(F, "scaled_dot_product_attention", _sdpa_torch_2_4)
    out, _ = fast_scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, expected)
    assert torch.all(out[0, :, :2] == 0) and not torch.isnan(out).any()
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_dropout_drops_weights_in_written_out_attention():
    torch.manual_seed(0)
    q, k, v = _qkv(2, 2, 16, 16, 4)
    _, w = scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    zero_fraction = (w == 0).float().mean().item()
    assert 0.4 < zero_fraction < 0.6


def test_attention_errors_are_clear():
    q, k, v = _qkv(2, 2, 4, 4, 8)
    with pytest.raises(ValueError, match=r"does not broadcast to \(B, H, Tq, Tk\) = \(2, 2, 4, 4\)"):
        scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(7, 1, 1, 4\)"):
        fast_scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(7, 1, 1, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="padding_mask"):
        scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="batch, heads, seq_len, head_dim"):
        scaled_dot_product_attention(q[0], k[0], v[0])
    q2, k2, v2 = _qkv(2, 2, 1, 4, 8)
    with pytest.raises(ValueError, match="causal_mask"):
        scaled_dot_product_attention(q2, k2, v2, is_causal=True)
    with pytest.raises(ValueError, match="does not match q"):
        scaled_dot_product_attention(q, k[..., :4], v)


# ----------------------------------------------------------------------------- heads


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 3), T=st.integers(1, 6), H=st.integers(1, 4), D=st.integers(1, 5))
def test_split_merge_heads_round_trip(B, T, H, D):
    x = torch.randn(B, T, H * D)
    heads = split_heads(x, H)
    assert heads.shape == (B, H, T, D)
    for h in range(H):  # head h owns channels h*D .. (h+1)*D-1
        torch.testing.assert_close(heads[:, h], x[..., h * D:(h + 1) * D])
    torch.testing.assert_close(merge_heads(heads), x)


def test_n_embd_not_divisible_by_n_head_says_both_numbers():
    with pytest.raises(ValueError, match=r"n_embd \(10\).*n_head \(3\)"):
        MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match="not divisible"):
        split_heads(torch.randn(1, 2, 10), 3)


def _torch_mha(ours: MultiHeadAttention) -> nn.MultiheadAttention:
    """nn.MultiheadAttention with our weights (its in_proj stacks q, k, v like our qkv_proj)."""
    ref = nn.MultiheadAttention(ours.n_embd, ours.n_head, batch_first=True)
    with torch.no_grad():
        w = ours.qkv_proj if not ours.cross_attention else None
        if w is not None:
            ref.in_proj_weight.copy_(w.weight)
            ref.in_proj_bias.copy_(w.bias)
        else:
            ref.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.kv_proj.weight]))
            ref.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.kv_proj.bias]))
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(ours.out_proj.bias)
    return ref.eval()


@pytest.mark.parametrize("need_weights", [False, True])
def test_self_attention_matches_torch_multihead_attention(need_weights):
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4).eval()
    ref = _torch_mha(mha)
    x = torch.randn(3, 7, 16)
    am = torch.ones(3, 7, dtype=torch.long)
    am[1, 5:] = 0
    am[2, 2:] = 0
    a = mha(x, attn_mask=padding_mask(am), is_causal=True, need_weights=need_weights)
    b, w = ref(x, x, x, key_padding_mask=am == 0, attn_mask=~causal_mask(7), average_attn_weights=False)
    torch.testing.assert_close(a.output, b, atol=ATOL, rtol=1e-5)
    if need_weights:
        torch.testing.assert_close(a.weights, w, atol=ATOL, rtol=1e-5)
    else:
        assert a.weights is None


def test_cross_attention_matches_torch_multihead_attention():
    torch.manual_seed(1)
    mha = MultiHeadAttention(12, 3, cross_attention=True).eval()
    ref = _torch_mha(mha)
    x, enc = torch.randn(2, 4, 12), torch.randn(2, 6, 12)
    am = torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6])
    a = mha(x, context=enc, attn_mask=padding_mask(am), need_weights=True)
    b, w = ref(x, enc, enc, key_padding_mask=am == 0, average_attn_weights=False)
    torch.testing.assert_close(a.output, b, atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(a.weights, w, atol=ATOL, rtol=1e-5)
    assert a.weights.shape == (2, 3, 4, 6)


def test_mha_errors():
    with pytest.raises(ValueError, match="cross_attention=True"):
        MultiHeadAttention(8, 2)(torch.randn(1, 3, 8), context=torch.randn(1, 3, 8))
    with pytest.raises(ValueError, match="context"):
        MultiHeadAttention(8, 2, cross_attention=True)(torch.randn(1, 3, 8))
    with pytest.raises(ValueError, match=r"\(batch, seq_len, 8\)"):
        MultiHeadAttention(8, 2)(torch.randn(1, 3, 9))


@settings(max_examples=15, deadline=None)
@given(T=st.integers(2, 10), prefix=st.integers(1, 9), seed=st.integers(0, 1000))
def test_kv_cache_incremental_equals_full(T, prefix, seed):
    prefix = min(prefix, T - 1)
    torch.manual_seed(seed)
    mha = MultiHeadAttention(8, 2).eval()
    x = torch.randn(2, T, 8)
    full = mha(x, is_causal=True).output
    first = mha(x[:, :prefix], is_causal=True, use_cache=True)
    outs, cache = [first.output], first.present_key_value
    for t in range(prefix, T):  # one new token at a time
        step = mha(x[:, t:t + 1], is_causal=True, past_key_value=cache, use_cache=True, need_weights=True)
        assert step.weights.shape == (2, 2, 1, t + 1)
        outs.append(step.output)
        cache = step.present_key_value
    assert cache[0].shape == (2, 2, T, 4)
    torch.testing.assert_close(torch.cat(outs, dim=1), full, atol=ATOL, rtol=1e-5)


def test_head_dim_can_differ_from_n_embd_over_n_head():
    mha = MultiHeadAttention(10, 3, head_dim=4, bias=False)
    assert mha.qkv_proj.weight.shape == (36, 10) and mha.out_proj.weight.shape == (10, 12)
    assert mha(torch.randn(2, 5, 10)).output.shape == (2, 5, 10)


# ----------------------------------------------------------------------------- feed-forward


def test_feed_forward_formulas():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8)
    ff = FeedForward(8, 32, activation="gelu_tanh")
    h = ff.up_proj(x)
    expected = ff.down_proj(0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3))))
    torch.testing.assert_close(ff(x), expected, atol=1e-6, rtol=1e-5)
    gated = FeedForward(8, 16, activation="relu", bias=False, gated=True)
    torch.testing.assert_close(gated(x), gated.down_proj(torch.relu(gated.gate_proj(x)) * gated.up_proj(x)))
    assert gated.up_proj.bias is None
    # position-wise: each token is processed independently of the others
    torch.testing.assert_close(ff(x)[:, 1], ff(x[:, 1:2])[:, 0])


def test_feed_forward_unknown_activation():
    with pytest.raises(ValueError, match=r"activation must be one of .*'gelu'.*, got 'swish2'"):
        FeedForward(8, activation="swish2")
