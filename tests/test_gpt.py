"""Chapter 02: the course's GPT against transformers' GPT2LMHeadModel, and its properties."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import GPT2Config, GPT2LMHeadModel

from llm_course.models.gpt import GPT, CausalLMOutput, GPTConfig
from llm_course.models.manual_ch02 import future_token_influence

V, TOL = 101, 1e-5
CONFIG = GPTConfig(vocab_size=V, n_positions=24, n_embd=32, n_layer=2, n_head=4)


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(CONFIG).eval()


@pytest.fixture(scope="module")
def hf(model) -> GPT2LMHeadModel:
    hf = model.to_hf().eval()
    if hasattr(hf, "set_attn_implementation"):
        hf.set_attn_implementation("eager")  # so that it returns attention weights
    else:  # transformers 4.50 (the floor) reads the choice from the config at every forward
        hf.config._attn_implementation = "eager"
    return hf


def _batch(B=3, T=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    if B > 1:
        mask[1, T - 4:] = 0  # right padding
    if B > 2:
        mask[2, :3] = 0  # left padding
    return ids, mask


def test_to_hf_same_logits_loss_and_attentions(model, hf):
    ids, mask = _batch()
    with torch.no_grad():
        ours = model(ids, attention_mask=mask, output_attentions=True)
        theirs = hf(ids, attention_mask=mask, output_attentions=True)
    # Padded query rows are not compared: a left-padding query may attend to nothing, so its output is
    # a convention (zeros here, a uniform average in transformers' eager attention).
    real = mask.bool()
    torch.testing.assert_close(ours.logits[real], theirs.logits[real], atol=TOL, rtol=TOL)
    assert len(ours.attentions) == CONFIG.n_layer
    for a, b in zip(ours.attentions, theirs.attentions):
        assert a.shape == (3, CONFIG.n_head, 12, 12)
        torch.testing.assert_close(a.permute(0, 2, 1, 3)[real], b.permute(0, 2, 1, 3)[real], atol=TOL, rtol=TOL)


def test_loss_equals_transformers_loss(model, hf):
    ids, mask = _batch(seed=7)
    mask[2] = 1  # right padding only, as for training; padding labels are -100
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        ours = model(ids, attention_mask=mask, labels=labels)
        theirs = hf(ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(ours.loss, theirs.loss, atol=TOL, rtol=TOL)


def test_to_hf_matches_sdpa_implementation_too(model):
    hf = model.to_hf().eval()  # transformers' default attention kernel
    ids, mask = _batch(seed=1)
    mask[2] = 1
    with torch.no_grad():
        torch.testing.assert_close(model(ids, attention_mask=mask).logits[mask.bool()],
                                   hf(ids, attention_mask=mask).logits[mask.bool()], atol=TOL, rtol=TOL)


def test_from_hf_random_gpt2_same_logits():
    torch.manual_seed(1)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=20, n_embd=24, n_layer=3, n_head=3,
                                    bos_token_id=None, eos_token_id=None)).eval()
    ours = GPT.from_hf(hf).eval()
    assert ours.lm_head.weight is ours.wte.weight
    ids, mask = _batch(T=9, seed=2)
    with torch.no_grad():
        a, b = ours(ids, attention_mask=mask, labels=ids), hf(ids, attention_mask=mask, labels=ids)
    torch.testing.assert_close(a.logits[mask.bool()], b.logits[mask.bool()], atol=TOL, rtol=TOL)
    # Conv1D stores (in, out): our Linear must hold the transpose
    torch.testing.assert_close(ours.h[0].attn.qkv_proj.weight, hf.transformer.h[0].attn.c_attn.weight.t())
    assert ours.num_parameters() == hf.num_parameters()
    assert ours.num_parameters(exclude_embeddings=True) == hf.num_parameters(exclude_embeddings=True)


def test_from_hf_rejects_other_models_and_configs():
    with pytest.raises(TypeError, match="GPT2LMHeadModel"):
        GPT.from_hf(torch.nn.Linear(2, 2))
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=8, n_embd=8, n_layer=1, n_head=2, n_inner=10,
                                    bos_token_id=None, eos_token_id=None))
    with pytest.raises(ValueError, match="n_inner"):
        GPT.from_hf(hf)


def test_loss_shifts_labels_once(model):
    ids, _ = _batch(B=2, T=10, seed=3)
    with torch.no_grad():
        out = model(ids, labels=ids)
    once = F.cross_entropy(out.logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))
    twice = F.cross_entropy(out.logits[:, :-2].reshape(-1, V), ids[:, 2:].reshape(-1))  # the manual's bug
    torch.testing.assert_close(out.loss, once)
    assert (out.loss - twice).abs() > 1e-4


def test_loss_ignores_minus_100(model):
    ids, _ = _batch(B=1, T=10, seed=4)
    labels = ids.clone()
    labels[0, 6:] = -100
    with torch.no_grad():
        out = model(ids, labels=labels)
        short = model(ids[:, :6], labels=ids[:, :6])
    torch.testing.assert_close(out.loss, short.loss, atol=TOL, rtol=TOL)  # only targets 1..5 count in both


@settings(max_examples=20, deadline=None)
@given(t=st.integers(0, 10), seed=st.integers(0, 10_000))
def test_causality_future_tokens_do_not_change_the_past(model, t, seed):
    ids, _ = _batch(B=2, T=12, seed=seed)
    assert future_token_influence(lambda x: model(x).logits, ids, t, V, seed) < TOL


def test_causality_with_padding_mask(model):
    ids, mask = _batch(T=12, seed=5)
    influence = future_token_influence(lambda x: model(x, attention_mask=mask).logits, ids, 6, V)
    assert influence < TOL


@settings(max_examples=5, deadline=None)
@given(prefix=st.integers(1, 11), seed=st.integers(0, 10_000))
def test_kv_cache_incremental_decoding_equals_full_forward(model, prefix, seed):
    ids, mask = _batch(T=12, seed=seed)
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        out = model(ids[:, :prefix], attention_mask=mask[:, :prefix], use_cache=True)
        logits, cache = [out.logits], out.past_key_values
        for t in range(prefix, 12):
            out = model(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], past_key_values=cache, use_cache=True)
            logits.append(out.logits)
            cache = out.past_key_values
    real = mask.bool()
    torch.testing.assert_close(torch.cat(logits, dim=1)[real], full[real], atol=TOL, rtol=TOL)
    assert len(cache) == CONFIG.n_layer and cache[0][0].shape == (3, CONFIG.n_head, 12, CONFIG.n_embd // CONFIG.n_head)


def test_kv_cache_matches_transformers_cache(model, hf):
    ids, _ = _batch(B=1, T=8, seed=6)
    with torch.no_grad():
        ours = model(ids[:, :5], use_cache=True)
        ours = model(ids[:, 5:], past_key_values=ours.past_key_values)
        theirs = hf(ids[:, :5], use_cache=True)
        # transformers 5 renamed the output and argument past_key_values -> cache
        name = "cache" if "cache" in theirs else "past_key_values"
        theirs = hf(ids[:, 5:], **{name: theirs[name]})
    torch.testing.assert_close(ours.logits, theirs.logits, atol=TOL, rtol=TOL)


def test_output_contract(model):
    ids, _ = _batch(B=2, T=5)
    out = model(ids)
    assert isinstance(out, CausalLMOutput) and out.logits.shape == (2, 5, V)
    assert out.loss is None and out.past_key_values is None and out.attentions is None
    out = model(ids, output_attentions=True)
    assert isinstance(out.attentions, tuple) and len(out.attentions) == CONFIG.n_layer
    for w in out.attentions:
        assert w.shape == (2, CONFIG.n_head, 5, 5)
        torch.testing.assert_close(w.sum(-1), torch.ones(2, CONFIG.n_head, 5))
        assert torch.all(w.triu(diagonal=1) == 0)  # causal: nothing above the diagonal
    assert model.config is CONFIG


def test_too_long_sequence_says_lengths_and_fix(model):
    with pytest.raises(ValueError, match=r"25 tokens.*n_positions=24.*truncate"):
        model(torch.zeros(1, 25, dtype=torch.long))
    with torch.no_grad():
        cache = model(torch.zeros(1, 20, dtype=torch.long), use_cache=True).past_key_values
    with pytest.raises(ValueError, match=r"25 tokens \(20 cached \+ 5 new\)"):
        model(torch.zeros(1, 5, dtype=torch.long), past_key_values=cache)


@pytest.mark.parametrize("bad, exc, match", [
    (torch.tensor([[1, 2, V]]), ValueError, f"token id {V}"),
    (torch.tensor([[1, -100]]), ValueError, "-100"),
    (torch.tensor([[1.0, 2.0]]), TypeError, "integer token ids"),
    (torch.tensor([1, 2, 3]), ValueError, r"input_ids\[None\]"),
    ([[1, 2]], TypeError, "torch.Tensor"),
])
def test_bad_input_ids(model, bad, exc, match):
    with pytest.raises(exc, match=match):
        model(bad)


def test_bad_attention_mask_and_labels(model):
    ids = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 3\) but should be \(2, 4\)"):
        model(ids, attention_mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="unshifted"):
        model(ids, labels=ids[:, 1:])


def test_config_errors():
    with pytest.raises(ValueError, match=r"n_embd \(30\).*n_head \(4\)"):
        GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="vocab_size"):
        GPTConfig(vocab_size=0)
    with pytest.raises(TypeError, match="GPTConfig"):
        GPT(GPT2Config())


def test_save_load_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path / "gpt")
    assert json.loads((tmp_path / "gpt" / "config.json").read_text())["model_type"] == "gpt"
    loaded = GPT.from_pretrained(tmp_path / "gpt")
    assert not loaded.training  # eval mode, as transformers' from_pretrained
    assert loaded.config == model.config
    assert loaded.lm_head.weight is loaded.wte.weight  # still tied after loading
    ids, mask = _batch()
    with torch.no_grad():
        assert torch.equal(loaded(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits)


def test_load_errors(model, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        GPT.from_pretrained(tmp_path / "nothing")
    d = model.save_pretrained(tmp_path / "m")
    (d / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a valid safetensors"):
        GPT.from_pretrained(d)
    (d / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        GPT.from_pretrained(d)
    d = model.save_pretrained(tmp_path / "m2")
    (d / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        GPT.from_pretrained(d)
    (d / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="'bert' model"):
        GPT.from_pretrained(d)
    (d / "config.json").write_text(json.dumps({"model_type": "gpt", "n_layr": 2}))
    with pytest.raises(ValueError, match="unknown fields"):
        GPT.from_pretrained(d)
    small = GPT(GPTConfig(vocab_size=V, n_positions=24, n_embd=16, n_layer=2, n_head=4))
    (d / "config.json").write_text(json.dumps({"model_type": "gpt", **small.config.__dict__}))
    with pytest.raises(ValueError, match="wrong shape"):
        GPT.from_pretrained(d)


def test_training_step_reduces_loss():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=V, n_positions=16, n_embd=32, n_layer=1, n_head=2, dropout=0.1))
    ids = torch.randint(0, V, (4, 16))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss = model(ids, labels=ids).loss
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first - 1.0
    assert model.lm_head.weight is model.wte.weight


def test_left_padding_with_position_ids_matches_unpadded(model, hf):
    """Left-padded generation-style batch: positions restart at 0 on the first real token."""
    ids = torch.randint(0, V, (1, 6), generator=torch.Generator().manual_seed(8))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        alone = model(ids).logits
        ours = model(padded, attention_mask=mask, position_ids=position_ids).logits[:, 3:]
        theirs = hf(padded, attention_mask=mask, position_ids=position_ids).logits[:, 3:]
    torch.testing.assert_close(ours, alone, atol=TOL, rtol=TOL)
    torch.testing.assert_close(ours, theirs, atol=TOL, rtol=TOL)
    with pytest.raises(ValueError, match="position_ids must have shape"):
        model(ids, position_ids=position_ids)
