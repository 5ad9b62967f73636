"""Chapter 06: bottleneck adapters (Houlsby et al. 2019) on the course GPT, its transformers GPT-2 twin and BERT.

The manual's adapters (ERRATA section 6) are attributes that no forward pass calls: these tests check
that ours are *in* the forward pass (gradients reach them, training moves the logits, the lean decode
loop uses them), that a fresh adapter changes nothing (zero up-projection), and that the course model and
transformers' GPT-2 compute the same adapted function.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from llm_course.infer.generation import generate
from llm_course.infer.static_cache import StaticCacheDecoder
from llm_course.models.bert import BERT, BERTConfig
from llm_course.models.gpt import GPT, GPTConfig
from llm_course.train.adapters import (
    AdaptedLayer,
    BottleneckAdapter,
    adapter_state_dict,
    add_adapters,
    load_adapter_state_dict,
    remove_adapters,
)

pytestmark = pytest.mark.usefixtures("one_thread")

V, TOL = 53, 1e-5
CONFIG = GPTConfig(vocab_size=V, n_positions=32, n_embd=32, n_layer=2, n_head=4)
L, D = CONFIG.n_layer, CONFIG.n_embd


def _gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(CONFIG).eval()


def _ids(B: int = 2, T: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def _trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _adapters(model: nn.Module) -> list[BottleneckAdapter]:
    return [m for m in model.modules() if isinstance(m, BottleneckAdapter)]


def _randomize_up(model: nn.Module, seed: int = 1, scale: float = 0.5) -> None:
    """Give every adapter a non-zero up-projection (as training would), reproducibly."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for a in _adapters(model):
            a.up.weight.copy_(torch.randn(a.up.weight.shape, generator=g) * scale)
            a.up.bias.copy_(torch.randn(a.up.bias.shape, generator=g) * scale)


def _hf_name(name: str) -> str:
    """Course GPT parameter name -> GPT2LMHeadModel name (the layer the adapter follows is renamed)."""
    return ("transformer." + name).replace("attn.out_proj", "attn.c_proj").replace("mlp.down_proj", "mlp.c_proj")


# --------------------------------------------------------------------------------------------
# A new adapter is the identity; where adapters go
# --------------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(dim=st.integers(2, 48), data=st.data())
def test_new_adapter_is_exactly_the_identity(dim, data):
    m = data.draw(st.integers(1, dim - 1))
    x = torch.randn(3, 5, dim)
    adapter = BottleneckAdapter(dim, m)
    assert torch.equal(adapter(x), x)
    assert not adapter.up.weight.any() and not adapter.up.bias.any()
    assert adapter.down.weight.abs().sum() > 0  # only up is zero: down is random, or nothing could ever train


def test_adapter_forward_is_the_bottleneck_formula():
    torch.manual_seed(0)
    adapter = BottleneckAdapter(8, 3, activation="relu")
    nn.init.normal_(adapter.up.weight)
    nn.init.normal_(adapter.up.bias)
    x = torch.randn(4, 8)
    hidden = torch.clamp(x @ adapter.down.weight.T + adapter.down.bias, min=0)  # relu written out
    expected = x + hidden @ adapter.up.weight.T + adapter.up.bias
    torch.testing.assert_close(adapter(x), expected, atol=TOL, rtol=TOL)


def test_adapted_layer_calls_layer_then_adapter():
    layer, adapter = nn.Linear(6, 4), BottleneckAdapter(4, 2)
    nn.init.normal_(adapter.up.weight)
    wrapped = AdaptedLayer(layer, adapter)
    x = torch.randn(3, 6)
    assert wrapped.layer is layer
    torch.testing.assert_close(wrapped(x), adapter(layer(x)))
    with pytest.raises(TypeError, match="BottleneckAdapter"):
        AdaptedLayer(layer, nn.Linear(4, 4))


def test_wrapped_layers_course_and_transformers():
    model = _gpt()
    hf = model.to_hf().eval()
    originals = [model.h[i].attn.out_proj for i in range(L)]
    names = add_adapters(model, bottleneck=4)
    assert names == [f"h.{i}.{p}" for i in range(L) for p in ("attn.out_proj", "mlp.down_proj")]
    for i in range(L):
        assert isinstance(model.h[i].attn.out_proj, AdaptedLayer) and model.h[i].attn.out_proj.layer is originals[i]
        assert isinstance(model.h[i].mlp.down_proj, AdaptedLayer)
        assert not isinstance(model.h[i].attn.qkv_proj, AdaptedLayer)  # only the branch outputs are wrapped
    # the block and its attention / MLP keep their classes: the lean decode loop still accepts the model
    assert StaticCacheDecoder.supports(model)

    hf_names = add_adapters(hf, bottleneck=4)
    assert hf_names == [f"transformer.h.{i}.{p}" for i in range(L) for p in ("attn.c_proj", "mlp.c_proj")]
    assert type(hf.transformer.h[0].mlp.c_proj.layer).__name__ == "Conv1D"

    only_mlp = _gpt()
    assert add_adapters(only_mlp, bottleneck=4, where=("mlp",)) == [f"h.{i}.mlp.down_proj" for i in range(L)]
    assert add_adapters(_gpt(), bottleneck=4, where="attention") == [f"h.{i}.attn.out_proj" for i in range(L)]


# --------------------------------------------------------------------------------------------
# Fresh adapters change nothing
# --------------------------------------------------------------------------------------------


def test_fresh_adapters_give_exactly_the_base_logits():
    model = _gpt()
    hf = model.to_hf().eval()
    ids = _ids()
    with torch.no_grad():
        base, hf_base = model(ids).logits, hf(ids).logits
        add_adapters(model, bottleneck=8)
        add_adapters(hf, bottleneck=8)
        assert torch.equal(model(ids).logits, base)
        assert torch.equal(hf(ids).logits, hf_base)


def test_fresh_adapters_on_course_bert():
    config = BERTConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=20)
    torch.manual_seed(0)
    bert = BERT(config).eval()
    ids = _ids(T=10)
    with torch.no_grad():
        base = bert(ids).logits
        names = add_adapters(bert, bottleneck=8, train_layer_norms=True)
        assert names == [f"layers.{i}.{p}" for i in range(2) for p in ("attn.out_proj", "mlp.down_proj")]
        assert torch.equal(bert(ids).logits, base)
        _randomize_up(bert)
        assert (bert(ids).logits - base).abs().max() > 1e-2  # post-LN blocks use them too


def test_adapters_follow_the_layers_dtype_and_work_on_a_quantized_model():
    from llm_course.nn.quantization import NF4Linear, quantize_nf4

    ids = _ids()
    half = _gpt().to(torch.bfloat16)
    with torch.no_grad():
        base = half(ids).logits
        add_adapters(half, bottleneck=8)
        assert all(p.dtype == torch.bfloat16 for a in _adapters(half) for p in a.parameters())
        assert torch.equal(half(ids).logits, base)

    frozen_4bit = quantize_nf4(_gpt())  # every Linear but the tied lm_head becomes an NF4Linear
    assert isinstance(frozen_4bit.h[0].mlp.down_proj, NF4Linear)
    with torch.no_grad():
        base = frozen_4bit(ids).logits
    add_adapters(frozen_4bit, bottleneck=8)
    assert isinstance(frozen_4bit.h[0].mlp.down_proj.layer, NF4Linear)
    assert all(p.dtype == torch.float32 for a in _adapters(frozen_4bit) for p in a.parameters())
    with torch.no_grad():
        assert torch.equal(frozen_4bit(ids).logits, base)
    assert _trainable(frozen_4bit) == 2 * L * (2 * D * 8 + 8 + D)
    frozen_4bit(ids, labels=ids).loss.backward()
    assert all(a.up.weight.grad.abs().sum() > 0 for a in _adapters(frozen_4bit))


# --------------------------------------------------------------------------------------------
# Parameter counts
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m", [1, 4, 16, D - 1])
def test_trainable_parameters_follow_the_formula(m):
    # each adapter: down (d*m weights + m biases) + up (m*d weights + d biases) = 2*d*m + m + d;
    # two adapters (attention, MLP) in each of the L blocks
    model = _gpt()
    hf = model.to_hf()
    add_adapters(model, bottleneck=m)
    add_adapters(hf, bottleneck=m)
    assert _trainable(model) == _trainable(hf) == 2 * L * (2 * D * m + m + D)
    assert all(p.requires_grad == (".adapter." in n) for n, p in model.named_parameters())

    mlp_only = _gpt()
    add_adapters(mlp_only, bottleneck=m, where=("mlp",))
    assert _trainable(mlp_only) == L * (2 * D * m + m + D)

    with_norms = _gpt()
    add_adapters(with_norms, bottleneck=m, train_layer_norms=True)
    # plus ln_1 and ln_2 in every block and ln_f, each with a weight and a bias of size d
    assert _trainable(with_norms) == 2 * L * (2 * D * m + m + D) + (2 * L + 1) * 2 * D


def test_shipped_course_gpt_trainable_fraction():
    from llm_course.zoo.loading import load_pretrained

    model, _ = load_pretrained("course-gpt")
    c = model.config
    total = sum(p.numel() for p in model.parameters())
    add_adapters(model, bottleneck=16)
    expected = 2 * c.n_layer * (2 * c.n_embd * 16 + 16 + c.n_embd)
    assert _trainable(model) == expected
    assert sum(p.numel() for p in model.parameters()) == total + expected
    assert expected / (total + expected) < 0.05  # a few percent of the model trains


# --------------------------------------------------------------------------------------------
# The adapters are in the forward pass: they get gradients and training changes the model
# --------------------------------------------------------------------------------------------


def test_gradients_reach_every_adapter_and_training_lowers_the_loss():
    model = _gpt()
    # A random GPT's tied embeddings (std 0.02) keep every logit near 0, so no frozen-body fine-tune can move
    # the loss far from log(V); larger embeddings, as a trained model has, leave the adapters room to learn.
    nn.init.normal_(model.wte.weight, std=0.2)
    ids = _ids(B=4, T=16, seed=3)
    with torch.no_grad():
        base = model(ids).logits
    add_adapters(model, bottleneck=8)
    model.train()
    adapters = _adapters(model)
    assert len(adapters) == 2 * L
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)

    first = model(ids, labels=ids).loss
    first.backward()
    for a in adapters:
        assert a.up.weight.grad.abs().sum() > 0 and a.up.bias.grad.abs().sum() > 0
        # dL/d(down output) = up.weight^T @ dL/d(up output) = 0 while up is zero: exactly no gradient yet
        assert not a.down.weight.grad.any() and not a.down.bias.grad.any()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, f"frozen {name} got a gradient"
    optimizer.step()
    optimizer.zero_grad()

    model(ids, labels=ids).loss.backward()  # up has moved: now down learns too
    for a in adapters:
        assert a.down.weight.grad.abs().sum() > 0 and a.up.weight.grad.abs().sum() > 0
    optimizer.step()
    optimizer.zero_grad()
    for _ in range(8):
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    model.eval()
    with torch.no_grad():
        out = model(ids, labels=ids)
    assert out.loss < first.item() - 1.0  # 6.4 -> about 4.3
    assert (out.logits - base).abs().max() > 1e-2
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


# --------------------------------------------------------------------------------------------
# Course GPT and transformers' GPT-2 compute the same adapted function
# --------------------------------------------------------------------------------------------


def test_course_and_transformers_agree_with_nonzero_adapters():
    model = _gpt()
    hf = model.to_hf().eval()
    ids = _ids(B=3, T=14, seed=5)
    with torch.no_grad():
        base = model(ids).logits
    add_adapters(model, bottleneck=8)
    add_adapters(hf, bottleneck=8)
    _randomize_up(model)
    load_adapter_state_dict(hf, {_hf_name(k): v for k, v in adapter_state_dict(model).items()})
    with torch.no_grad():
        ours, theirs = model(ids, labels=ids), hf(input_ids=ids, labels=ids)
    assert (ours.logits - base).abs().max() > 1e-2  # the adapters matter...
    torch.testing.assert_close(ours.logits, theirs.logits, atol=TOL, rtol=TOL)  # ...the same way in both
    torch.testing.assert_close(ours.loss, theirs.loss, atol=TOL, rtol=TOL)


# --------------------------------------------------------------------------------------------
# Generation: the lean decode loop (static_cache.py) uses the adapters
# --------------------------------------------------------------------------------------------


def _greedy_by_hand(model: GPT, ids: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy decoding with the full forward pass over the whole text at every step."""
    with torch.no_grad():
        for _ in range(n):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def test_generate_with_adapters_uses_them_in_the_fast_loop():
    model = _gpt()
    prompt = _ids(B=2, T=5, seed=7)
    base_ids = generate(model, prompt, max_new_tokens=10)
    add_adapters(model, bottleneck=8)
    assert torch.equal(generate(model, prompt, max_new_tokens=10), base_ids)  # fresh adapters: same text

    _randomize_up(model, scale=1.0)
    fast = generate(model, prompt, max_new_tokens=10)
    assert torch.equal(fast, generate(model, prompt, max_new_tokens=10, use_cache=False))
    assert torch.equal(fast, _greedy_by_hand(model, prompt, 10))

    # step by step, the lean decoder's logits are the full forward's (an adapter it skipped would show here)
    with torch.no_grad():
        full = model(fast).logits
    decoder = StaticCacheDecoder(model, batch_size=2, max_length=fast.shape[1])
    torch.testing.assert_close(decoder.prefill(prompt), full[:, 4], atol=TOL, rtol=TOL)
    for t in range(5, fast.shape[1]):
        torch.testing.assert_close(decoder.step(fast[:, t]), full[:, t], atol=TOL, rtol=TOL)
    remove_adapters(model)
    with torch.no_grad():
        assert (model(fast).logits - full).abs().max() > 1e-2  # without them the model is different


# --------------------------------------------------------------------------------------------
# Removing, saving and loading
# --------------------------------------------------------------------------------------------


def test_remove_adapters_restores_the_exact_base_model():
    model = _gpt()
    ids = _ids()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        base = model(ids).logits
    names = add_adapters(model, bottleneck=8, train_layer_norms=False)
    _randomize_up(model)
    with torch.no_grad():
        assert (model(ids).logits - base).abs().max() > 1e-2
    assert remove_adapters(model) == names
    assert not any(isinstance(m, (AdaptedLayer, BottleneckAdapter)) for m in model.modules())
    state = model.state_dict()
    assert state.keys() == base_state.keys() and all(torch.equal(state[k], base_state[k]) for k in state)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, base)
    assert all(p.requires_grad for p in model.parameters())  # trainable again, like a new model
    assert remove_adapters(model) == []  # nothing left to remove
    assert add_adapters(model, bottleneck=4) == names  # and adapters can be added again


def test_adapter_state_dict_round_trip_through_safetensors(tmp_path):
    model = _gpt()
    add_adapters(model, bottleneck=8)
    _randomize_up(model)
    state = adapter_state_dict(model)
    assert len(state) == 2 * L * 4  # down/up weight/bias per adapter
    assert all(".adapter." in k for k in state)
    assert sum(v.numel() for v in state.values()) == _trainable(model)
    save_file(state, str(tmp_path / "adapters.safetensors"))  # as the module docstring shows

    other = _gpt()  # the same base model, new (identity) adapters
    add_adapters(other, bottleneck=8)
    load_adapter_state_dict(other, load_file(str(tmp_path / "adapters.safetensors")))
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(other(ids).logits, model(ids).logits, atol=0, rtol=0)

    with_norms = _gpt()
    add_adapters(with_norms, bottleneck=8, train_layer_norms=True)
    norm_keys = [k for k in adapter_state_dict(with_norms) if ".adapter." not in k]
    assert sorted(norm_keys) == sorted(
        [f"h.{i}.{ln}.{p}" for i in range(L) for ln in ("ln_1", "ln_2") for p in ("weight", "bias")]
        + ["ln_f.weight", "ln_f.bias"]
    )
    with pytest.raises(ValueError, match="missing"):
        load_adapter_state_dict(with_norms, state)  # saved without LayerNorms
    smaller = _gpt()
    add_adapters(smaller, bottleneck=4)
    with pytest.raises(ValueError, match="shape mismatch"):
        load_adapter_state_dict(smaller, state)
    with pytest.raises(ValueError, match="no adapters"):
        adapter_state_dict(_gpt())


# --------------------------------------------------------------------------------------------
# Bad input: clear errors, raised before the model is touched
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"bottleneck": 0}, ValueError, r"bottleneck must be in \[1, 32\)"),
        ({"bottleneck": -3}, ValueError, r"bottleneck must be in \[1, 32\)"),
        ({"bottleneck": D}, ValueError, r"bottleneck must be in \[1, 32\)"),
        ({"bottleneck": 100}, ValueError, r"bottleneck must be in \[1, 32\)"),
        ({"bottleneck": 2.5}, TypeError, "bottleneck must be an integer"),
        ({"bottleneck": True}, TypeError, "bottleneck must be an integer"),
        ({"where": ("attn",)}, ValueError, "unknown place"),
        ({"where": ("mlp", "ffn")}, ValueError, "unknown place"),
        ({"where": ()}, ValueError, "where is empty"),
        ({"where": 3}, TypeError, "where must be a tuple"),
        ({"where": ("mlp", None)}, TypeError, "where must be a tuple"),
        ({"activation": "swish"}, ValueError, "activation must be one of"),
        ({"train_layer_norms": "yes"}, TypeError, "train_layer_norms"),
    ],
)
def test_bad_arguments_raise_before_changing_the_model(kwargs, error, match):
    model = _gpt()
    with pytest.raises(error, match=match):
        add_adapters(model, **kwargs)
    assert not any(isinstance(m, AdaptedLayer) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


def test_unsupported_models_and_adding_twice():
    for bad in (nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 4))):
        with pytest.raises(ValueError, match="supports course GPT.*GPT-2-style"):
            add_adapters(bad)
        assert all(p.requires_grad for p in bad.parameters())
    with pytest.raises(TypeError, match="nn.Module"):
        add_adapters("gpt2")

    model = _gpt()
    add_adapters(model, bottleneck=4)
    before = {n: p.clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="already has adapters.*remove_adapters"):
        add_adapters(model, bottleneck=8)
    assert {n for n, _ in model.named_parameters()} == before.keys()  # no second layer of wrappers
    assert not any(isinstance(m.layer, AdaptedLayer) for m in model.modules() if isinstance(m, AdaptedLayer))

    with pytest.raises(ValueError, match=r"bottleneck must be an integer in \[1, 7\], got 8: narrower than .* dim=8"):
        BottleneckAdapter(8, 8)
    with pytest.raises(TypeError, match="nn.Module"):
        remove_adapters(None)


def test_converting_an_adapted_model_says_to_remove_the_adapters_first():
    model = _gpt()
    add_adapters(model, bottleneck=4)
    with pytest.raises(ValueError, match="remove_adapters"):
        model.to_hf()
    remove_adapters(model)
    model.to_hf()  # the plain layout converts again
