"""Chapter 06: LoRA and QLoRA written out, checked against peft, closed forms and NF4 bounds."""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import math

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st
from packaging.version import Version
from safetensors.torch import load_file, save_file

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402
from transformers.pytorch_utils import Conv1D  # noqa: E402

import llm_course.train.qlora as qlora_module
from llm_course.core.deps import MissingDependencyError
from llm_course.models.gpt import GPT, GPTConfig
from llm_course.nn.quantization import (
    NF4Linear,
    model_size_bytes,
    quantization_error,
    quantize_nf4,
)
from llm_course.train.finetuning_costs import count_parameters, lora_weight_memory, print_trainable_parameters
from llm_course.train.lora import (
    LoRALinear,
    apply_lora,
    copy_lora_from_peft,
    default_target_modules,
    lora_state_dict,
    merge_lora,
    peft_lora_config,
    remove_lora,
    unmerge_lora,
)
from llm_course.train.qlora import apply_qlora, bitsandbytes_qlora

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    # peft's get_peft_model asks transformers a deprecated question; not ours to fix
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
]

CONFIG = GPTConfig(vocab_size=101, n_positions=32, n_embd=64, n_layer=2, n_head=4)
GPT2_CONFIG = dict(vocab_size=97, n_positions=32, n_embd=48, n_layer=2, n_head=4, bos_token_id=None,
                   eos_token_id=None)


@pytest.fixture
def gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(CONFIG).eval()


@pytest.fixture
def gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(**GPT2_CONFIG)).eval()


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(1))


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def _peft_model(hf_model: nn.Module, target: str, r: int, alpha: float) -> nn.Module:
    """peft LoRA with *random* B (init_lora_weights=False), so the adapter changes the output."""
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=[target],
                             init_lora_weights=False, fan_in_fan_out=True)
    return peft.get_peft_model(hf_model, config).eval()


def _copy_adapters_from_peft(ours: nn.Module, peft_model: nn.Module, rename=lambda name: name) -> int:
    """Copy peft's lora_A / lora_B (adapter "default") into our LoRALinear layers; returns how many."""
    inner = peft_model.base_model.model
    n = 0
    for name, layer in ours.named_modules():
        if isinstance(layer, LoRALinear):
            theirs = inner.get_submodule(rename(name))
            with torch.no_grad():
                layer.lora_A.weight.copy_(theirs.lora_A["default"].weight)
                layer.lora_B.weight.copy_(theirs.lora_B["default"].weight)
            n += 1
    return n


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _train(model: nn.Module, ids: torch.Tensor, steps: int, lr: float = 1e-2) -> list[float]:
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        losses.append(model(ids, labels=ids).loss.item())
    return losses


# --------------------------------------------------------------------------------------------
# Parity with peft
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("r, alpha", [(1, 1.0), (4, 8), (8, 32)])
def test_same_logits_as_peft_on_gpt2(gpt2, ids, r, alpha):
    base = _logits(gpt2, ids)
    theirs = _peft_model(copy.deepcopy(gpt2), "c_attn", r, alpha)
    ours = copy.deepcopy(gpt2)
    names = apply_lora(ours, ["c_attn"], r=r, alpha=alpha)
    assert names == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
    assert _copy_adapters_from_peft(ours, theirs) == 2
    expected, got = _logits(theirs, ids), _logits(ours, ids)
    assert (expected - base).abs().max() > 1e-3  # the adapter does change the output
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    # our adapter file has peft's adapter names, less its "base_model.model." prefix
    peft_keys = peft.get_peft_model_state_dict(theirs)
    assert {k.removeprefix("base_model.model.") for k in peft_keys} == set(lora_state_dict(ours))
    for name in names:  # the update in Conv1D layout, (in, out), as peft computes it
        layer = ours.get_submodule(name)
        torch.testing.assert_close(layer.delta_weight(), theirs.base_model.model.get_submodule(name)
                                   .get_delta_weight("default"), atol=1e-7, rtol=0)
        assert layer.delta_weight().shape == layer.base_layer.weight.shape == (48, 3 * 48)


def test_course_gpt_lora_matches_peft_on_its_gpt2_twin(gpt, ids):
    """qkv_proj (nn.Linear, (out, in)) with peft's A and B == peft on c_attn (Conv1D, (in, out))."""
    hf = gpt.to_hf().eval()
    base_ours, base_theirs = _logits(gpt, ids), _logits(hf, ids)
    theirs = _peft_model(hf, "c_attn", r=4, alpha=8)
    apply_lora(gpt, ["qkv_proj"], r=4, alpha=8)
    rename = lambda name: "transformer." + name.replace("qkv_proj", "c_attn")  # noqa: E731
    assert _copy_adapters_from_peft(gpt, theirs, rename) == CONFIG.n_layer
    ours_lora, theirs_lora = _logits(gpt, ids), _logits(theirs, ids)
    assert (theirs_lora - base_theirs).abs().max() > 1e-3
    # both pairs differ only by how the two implementations round: same bound with and without LoRA
    base_gap = (base_ours - base_theirs).abs().max().item()
    assert base_gap < 1e-5
    torch.testing.assert_close(ours_lora, theirs_lora, atol=1e-5, rtol=0)
    # merging: our (out, in) weight is the transpose of peft's merged Conv1D weight
    merged_theirs = theirs.merge_and_unload()
    remove_lora(gpt, merge=True)
    for i in range(CONFIG.n_layer):
        torch.testing.assert_close(gpt.h[i].attn.qkv_proj.weight.T,
                                   merged_theirs.transformer.h[i].attn.c_attn.weight, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------------------
# Training starts from the base model and moves only the adapters
# --------------------------------------------------------------------------------------------


def test_fresh_lora_is_the_base_model_and_training_moves_only_lora(gpt, ids):
    base = _logits(gpt, ids)
    names = apply_lora(gpt, r=4, alpha=8)
    assert names == [f"h.{i}.attn.qkv_proj" for i in range(CONFIG.n_layer)]
    assert torch.equal(_logits(gpt, ids), base)  # B = 0: exactly the base model
    trainable = [n for n, p in gpt.named_parameters() if p.requires_grad]
    assert trainable == [f"{n}.lora_{m}.weight" for n in names for m in "AB"]
    for name in names:
        a = gpt.get_submodule(name).lora_A.weight
        bound = 1 / math.sqrt(CONFIG.n_embd)  # kaiming_uniform(a=sqrt(5)) on (r, in): U(-1/sqrt(in), 1/sqrt(in))
        assert a.abs().max() <= bound and a.abs().max() > 0.5 * bound
        assert torch.count_nonzero(gpt.get_submodule(name).lora_B.weight) == 0
    before = _snapshot(gpt)

    # first step, closed form: dL/dA = scaling * B^T (dL/dh)^T x = 0 while B = 0; dL/dB is not zero
    gpt.train()
    gpt(ids, labels=ids).loss.backward()
    layer = gpt.get_submodule(names[0])
    assert torch.count_nonzero(layer.lora_A.weight.grad) == 0
    assert layer.lora_B.weight.grad.abs().max() > 0
    assert all(p.grad is None for n, p in gpt.named_parameters() if "lora_" not in n)
    gpt.zero_grad(set_to_none=True)

    losses = _train(gpt, ids, steps=5)
    assert losses[-1] < losses[0]
    after = gpt.state_dict()
    for key, value in before.items():
        changed = not torch.equal(value, after[key])
        assert changed == ("lora_" in key), key  # every LoRA matrix moved, nothing else did
    assert not torch.allclose(_logits(gpt, ids), base, atol=1e-4)


@settings(max_examples=25, deadline=None)
@given(n_in=st.integers(1, 12), n_out=st.integers(1, 12), data=st.data(), conv1d=st.booleans(),
       alpha=st.floats(0.5, 64), seed=st.integers(0, 2**16))
def test_lora_layer_closed_form_and_merge_round_trip(n_in, n_out, data, conv1d, alpha, seed):
    """forward == x W^T + b + (alpha/r) x A^T B^T for Linear and Conv1D; merge/unmerge round-trip."""
    torch.manual_seed(seed)
    r = data.draw(st.integers(1, min(n_in, n_out)))
    base = Conv1D(n_out, n_in) if conv1d else nn.Linear(n_in, n_out)
    nn.init.normal_(base.weight)
    nn.init.normal_(base.bias)
    w = base.weight.detach().clone()
    w_out_in = w.T if conv1d else w  # Conv1D stores (in, out)
    layer = LoRALinear(base, r=r, alpha=alpha)
    nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(3, n_in)
    a, b = layer.lora_A.weight.detach(), layer.lora_B.weight.detach()
    expected = x @ w_out_in.T + base.bias.detach() + (alpha / r) * (x @ a.T @ b.T)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, atol=1e-4, rtol=1e-4)
        layer.merge()
        torch.testing.assert_close(layer(x), expected, atol=1e-4, rtol=1e-4)  # not counted twice
        layer.unmerge()
    torch.testing.assert_close(layer.base_layer.weight, w, atol=1e-5, rtol=1e-5)
    assert not layer.base_layer.weight.requires_grad and layer.lora_A.weight.requires_grad


def test_dropout_acts_on_the_adapter_input_only():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(16, 8), r=4, alpha=4, dropout=0.5)
    x = torch.randn(64, 16)
    with torch.no_grad():
        base = layer.base_layer(x)
        assert torch.equal(layer.train()(x), base)  # B = 0: dropout never touches the frozen path
        nn.init.normal_(layer.lora_B.weight)
        evaluated = layer.eval()(x)
        torch.testing.assert_close(evaluated - base, x @ layer.delta_weight().T, atol=1e-5, rtol=1e-5)
        torch.manual_seed(1)
        trained = layer.train()(x)
        torch.manual_seed(1)
        dropped = nn.functional.dropout(x, 0.5, training=True)  # the same mask: same seed, same call
    torch.testing.assert_close(trained - base, dropped @ layer.delta_weight().T, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(trained, evaluated, atol=1e-3)


@pytest.mark.parametrize("kind", ["gpt", "gpt2"])
def test_merge_unmerge_and_remove(kind, gpt, gpt2, ids):
    model = gpt if kind == "gpt" else gpt2
    original = _snapshot(model)
    base = _logits(model, ids)
    names = apply_lora(model, r=4, alpha=16)
    for name in names:  # a trained adapter: random B
        nn.init.normal_(model.get_submodule(name).lora_B.weight, std=0.05)
    adapted = _logits(model, ids)
    assert (adapted - base).abs().max() > 1e-3
    assert merge_lora(model) == names
    assert all(model.get_submodule(n).merged for n in names)
    torch.testing.assert_close(_logits(model, ids), adapted, atol=1e-5, rtol=0)
    assert merge_lora(model) == []  # already merged: nothing to do
    assert unmerge_lora(model) == names
    for name in names:
        torch.testing.assert_close(model.get_submodule(name).base_layer.weight,
                                   original[name + ".weight"], atol=1e-6, rtol=0)
    torch.testing.assert_close(_logits(model, ids), adapted, atol=1e-6, rtol=0)

    merged = copy.deepcopy(model)
    assert remove_lora(merged, merge=True) == names
    layer_type = nn.Linear if kind == "gpt" else Conv1D
    assert all(type(merged.get_submodule(n)) is layer_type for n in names)
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    assert set(merged.state_dict()) == set(original)  # the plain model's names again
    torch.testing.assert_close(_logits(merged, ids), adapted, atol=1e-5, rtol=0)

    assert remove_lora(model, merge=False) == names
    assert all(type(model.get_submodule(n)) is layer_type for n in names)
    torch.testing.assert_close(_logits(model, ids), base, atol=1e-6, rtol=0)


def test_lora_state_dict_round_trips_through_safetensors(gpt, ids, tmp_path):
    fresh = copy.deepcopy(gpt)
    apply_lora(gpt, r=2, alpha=4)
    _train(gpt, ids, steps=2)
    tensors = lora_state_dict(gpt)
    assert sorted(tensors) == sorted(f"h.{i}.attn.qkv_proj.lora_{m}.weight" for i in range(2) for m in "AB")
    assert tensors["h.0.attn.qkv_proj.lora_A.weight"].shape == (2, 64)
    assert tensors["h.0.attn.qkv_proj.lora_B.weight"].shape == (192, 2)
    save_file(tensors, tmp_path / "adapter.safetensors")
    apply_lora(fresh, r=2, alpha=4)
    missing, unexpected = fresh.load_state_dict(load_file(tmp_path / "adapter.safetensors"), strict=False)
    assert not unexpected and all("lora_" not in k for k in missing)
    assert torch.equal(_logits(fresh, ids), _logits(gpt, ids))


# --------------------------------------------------------------------------------------------
# Counting as peft does
# --------------------------------------------------------------------------------------------


def test_print_trainable_parameters_matches_peft(gpt2, gpt, capsys):
    theirs = peft.get_peft_model(copy.deepcopy(gpt2), peft_lora_config(gpt2, r=8, alpha=16))
    theirs.print_trainable_parameters()
    expected = capsys.readouterr().out
    ours = copy.deepcopy(gpt2)
    apply_lora(ours, r=8, alpha=16)
    print_trainable_parameters(ours)
    assert capsys.readouterr().out == expected
    assert expected.startswith("trainable params: 3,072 || all params: ")  # 2 layers x 8 x (48 + 144)
    assert count_parameters(ours) == theirs.get_nb_trainable_parameters()
    # the course GPT: peft can wrap its nn.Linear layers directly
    theirs = peft.get_peft_model(copy.deepcopy(gpt), peft_lora_config(gpt, r=4, alpha=8))
    theirs.print_trainable_parameters()
    expected = capsys.readouterr().out
    apply_lora(gpt, r=4, alpha=8)
    print_trainable_parameters(gpt)
    assert capsys.readouterr().out == expected
    lora = CONFIG.n_layer * 4 * (64 + 192)
    assert count_parameters(gpt) == (lora, GPT(CONFIG).num_parameters() + lora)  # tied lm_head counted once


def test_default_targets_and_peft_config(gpt, gpt2):
    assert default_target_modules(gpt) == ["qkv_proj"]
    assert default_target_modules(gpt2) == ["c_attn"]
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2))
    assert default_target_modules(llama) == ["q_proj", "v_proj"]  # separate projections: peft's default
    with pytest.raises(ValueError, match="pass target_modules"):
        default_target_modules(nn.Sequential(nn.Linear(2, 2)))
    config = peft_lora_config(gpt2, r=4, alpha=8, dropout=0.1)
    assert set(config.target_modules) == {"c_attn"} and config.fan_in_fan_out and config.task_type == "CAUSAL_LM"
    assert (config.r, config.lora_alpha, config.lora_dropout) == (4, 8, 0.1)
    config = peft_lora_config(gpt, target_modules="qkv_proj")
    assert set(config.target_modules) == {"qkv_proj"} and not config.fan_in_fan_out


# --------------------------------------------------------------------------------------------
# QLoRA from scratch
# --------------------------------------------------------------------------------------------


def test_qlora_quantizes_base_and_trains_only_adapters(gpt, ids):
    float_model = copy.deepcopy(gpt)
    float_logits = _logits(gpt, ids)
    names = apply_qlora(gpt, r=4, alpha=8)
    assert names == [f"h.{i}.attn.qkv_proj" for i in range(CONFIG.n_layer)]
    for name in names:
        layer = gpt.get_submodule(name)
        assert isinstance(layer.base_layer, NF4Linear)
        assert [n for n, _ in layer.named_parameters()] == ["lora_A.weight", "lora_B.weight"]
    # every other Linear is NF4 too; only the tied lm_head stays float (it *is* the embedding)
    linears = [n for n, m in gpt.named_modules() if type(m) is nn.Linear and "lora_" not in n]
    assert linears == ["lm_head"] and gpt.lm_head.weight is gpt.wte.weight
    nf4 = [m for m in gpt.modules() if isinstance(m, NF4Linear)]
    assert len(nf4) == 4 * CONFIG.n_layer
    quantized = sum(model_size_bytes(m) for m in nf4)
    fp32 = sum(4 * (m.in_features * m.out_features + m.out_features) for m in nf4)
    assert quantized <= 0.3 * fp32  # 4.127 bits per weight + float32 biases: 0.14x here

    # B = 0: exactly the NF4 model of chapter 07; its error is that of 4-bit weights
    qlora_logits = _logits(gpt, ids)
    assert torch.equal(qlora_logits, _logits(quantize_nf4(float_model), ids))
    weight_errors = [quantization_error(float_model.get_submodule(n.replace(".base_layer", "")).weight,
                                        m.dequantized_weight())["relative_rmse"]
                     for n, m in gpt.named_modules() if isinstance(m, NF4Linear)]
    assert 0.05 < min(weight_errors) and max(weight_errors) < 0.11  # 4-bit: measured 0.089-0.093
    err = quantization_error(float_logits, qlora_logits)["relative_rmse"]
    assert err < max(weight_errors)  # measured 0.080: the logits are no worse than the weights

    # counted as peft counts bitsandbytes' 4-bit weights: the values they stand for
    lora = CONFIG.n_layer * 4 * (64 + 192)
    assert count_parameters(gpt) == (lora, float_model.num_parameters() + lora)

    losses = _train(gpt, ids, steps=6)
    assert losses[-1] < losses[0] - 0.05
    gpt.train()
    gpt(ids, labels=ids).loss.backward()
    with_grad = sorted(n for n, p in gpt.named_parameters() if p.grad is not None)
    assert with_grad == sorted(f"{n}.lora_{m}.weight" for n in names for m in "AB")
    assert all(b.grad is None for b in gpt.buffers())


def test_qlora_merge_needs_dequantize(gpt, ids):
    apply_qlora(gpt, r=4, alpha=8, double_quant=False)
    for layer in gpt.modules():
        if isinstance(layer, LoRALinear):
            nn.init.normal_(layer.lora_B.weight, std=0.05)
    adapted = _logits(gpt, ids)
    with pytest.raises(ValueError, match="re-quantiz"):
        merge_lora(gpt)
    with pytest.raises(ValueError, match="dequantize=True"):
        remove_lora(gpt, merge=True)
    assert not any(layer.merged for layer in gpt.modules() if isinstance(layer, LoRALinear))
    with pytest.raises(ValueError, match="NF4"):
        gpt.h[0].attn.qkv_proj.merge()
    dropped = copy.deepcopy(gpt)
    remove_lora(dropped, merge=False)
    assert isinstance(dropped.h[0].attn.qkv_proj, NF4Linear)
    remove_lora(gpt, merge=True, dequantize=True)
    assert type(gpt.h[0].attn.qkv_proj) is nn.Linear and isinstance(gpt.h[0].attn.out_proj, NF4Linear)
    torch.testing.assert_close(_logits(gpt, ids), adapted, atol=1e-5, rtol=0)


def test_memory_accounting(gpt):
    full = lora_weight_memory(gpt)  # no LoRA: full fine-tuning, every parameter trainable
    n = gpt.num_parameters()
    assert full == {"base_weights": 4 * n, "lora_weights": 0, "gradients": 4 * n, "adam_state": 8 * n,
                    "total": 16 * n}
    lora_model = copy.deepcopy(gpt)
    apply_lora(lora_model, r=8, alpha=16)
    lora = CONFIG.n_layer * 8 * (64 + 192)
    assert lora_weight_memory(lora_model) == {"base_weights": 4 * n, "lora_weights": 4 * lora,
                                              "gradients": 4 * lora, "adam_state": 8 * lora,
                                              "total": 4 * n + 16 * lora}
    apply_qlora(gpt, r=8, alpha=16)
    q = lora_weight_memory(gpt)
    assert q["lora_weights"] == 4 * lora and q["adam_state"] == 8 * lora
    assert q["base_weights"] == model_size_bytes(gpt) - 4 * lora < 4 * n


# --------------------------------------------------------------------------------------------
# The library path without a GPU
# --------------------------------------------------------------------------------------------


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if anything tries to load a model (and keep the Hub offline)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError("bitsandbytes_qlora tried to load a model before checking its requirements")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


def test_bitsandbytes_qlora_without_cuda_is_a_clear_error(monkeypatch, no_loading):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="needs a CUDA GPU") as info:
        bitsandbytes_qlora("gpt2")
    assert "pip install bitsandbytes" in str(info.value) and "apply_qlora" in str(info.value)


def test_bitsandbytes_qlora_without_bitsandbytes_is_a_clear_error(monkeypatch, no_loading):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(qlora_module, "_bitsandbytes_installed", lambda: False)
    with pytest.raises(MissingDependencyError, match="pip install bitsandbytes") as info:
        bitsandbytes_qlora("gpt2")
    assert any("apply_qlora" in note for note in info.value.__notes__)


def test_bitsandbytes_qlora_recipe_loads_in_4bit_before_preparing(monkeypatch, gpt2):
    """The manual's bug: prepare_model_for_kbit_training on an unquantized model. Check the wiring."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    # only bitsandbytes_qlora's check is told it is installed: peft's own look-up must still see the truth
    monkeypatch.setattr(qlora_module, "_bitsandbytes_installed", lambda: True)
    if Version(transformers.__version__).major < 5 and importlib.util.find_spec("bitsandbytes") is None:
        # transformers 4.x (4.50, the floor) reads bitsandbytes' installed version when BitsAndBytesConfig(
        # load_in_4bit=True) is built (PackageNotFoundError without it); 5.x does not. Answer that one
        # metadata look-up too; peft's find_spec look-up still sees the truth.
        real_version = importlib.metadata.version
        monkeypatch.setattr(importlib.metadata, "version",
                            lambda name: "0.45.0" if name == "bitsandbytes" else real_version(name))

    def from_pretrained(name, **kwargs):
        calls.append(("from_pretrained", name, kwargs))
        return gpt2

    def prepare(model, **kwargs):
        calls.append(("prepare", model))
        return model

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    monkeypatch.setattr(peft, "prepare_model_for_kbit_training", prepare)
    model = bitsandbytes_qlora("some/model", r=4, alpha=8, compute_dtype=torch.float16)
    assert [c[0] for c in calls] == ["from_pretrained", "prepare"] and calls[1][1] is gpt2
    q = calls[0][2]["quantization_config"]
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.float16
    assert isinstance(model, peft.PeftModel)
    assert model.peft_config["default"].target_modules == {"c_attn"}
    assert model.peft_config["default"].lora_dropout == 0.05  # the default here
    # the compute dtype reaches from_pretrained under the name this transformers knows (dtype= from 4.56)
    dtype_kwarg = "dtype" if Version(transformers.__version__).release >= (4, 56) else "torch_dtype"
    assert calls[0][2][dtype_kwarg] == torch.float16
    (other,) = {"dtype", "torch_dtype"} - {dtype_kwarg}
    assert other not in calls[0][2]


# --------------------------------------------------------------------------------------------
# Bad input: a clear error, and the model is left as it was
# --------------------------------------------------------------------------------------------


def _unchanged(model: nn.Module, keys: set[str]) -> bool:
    return (set(model.state_dict()) == keys and all(p.requires_grad for p in model.parameters())
            and not any(isinstance(m, (LoRALinear, NF4Linear)) for m in model.modules()))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(target_modules=["q_proj", "v_proj"]), ValueError, r"'qkv_proj'"),
    (dict(target_modules=["qkv_proj", "nope"]), ValueError, r"\['nope'\] match no module"),
    (dict(target_modules=["attn"]), TypeError, "MultiHeadAttention"),
    (dict(target_modules=["ln_1"]), TypeError, "LayerNorm"),
    (dict(target_modules=["lm_head"]), ValueError, "shares its weight"),
    (dict(target_modules=[]), TypeError, "non-empty list"),
    (dict(target_modules=[3]), TypeError, "non-empty list"),
    (dict(r=0), ValueError, "positive integer"),
    (dict(r=-2), ValueError, "positive integer"),
    (dict(r=2.0), TypeError, "positive integer"),
    (dict(r=True), TypeError, "positive integer"),
    (dict(r=65), ValueError, r"r <= 64"),
    (dict(alpha=0), ValueError, "alpha"),
    (dict(alpha=-1.0), ValueError, "alpha"),
    (dict(alpha=float("nan")), ValueError, "alpha"),
    (dict(dropout=-0.1), ValueError, "dropout"),
    (dict(dropout=1.0), ValueError, "dropout"),
])
@pytest.mark.parametrize("function", [apply_lora, apply_qlora])
def test_bad_input_changes_nothing(gpt, function, kwargs, error, match):
    keys = set(gpt.state_dict())
    with pytest.raises(error, match=match):
        function(gpt, **kwargs)
    assert _unchanged(gpt, keys)


def test_manual_targets_on_gpt2_and_other_errors(gpt, gpt2):
    keys = set(gpt2.state_dict())
    with pytest.raises(ValueError, match=r"use target_modules=\['c_attn'\]") as info:
        apply_lora(gpt2, target_modules=["q_proj", "v_proj"])
    assert "Conv1D" in str(info.value) and "lm_head" not in str(info.value)  # the tied head is not offered
    assert _unchanged(gpt2, keys)
    with pytest.raises(ValueError, match="c_attn"):
        peft_lora_config(gpt2, target_modules=["q_proj", "v_proj"])
    with pytest.raises(TypeError, match="apply_qlora quantizes nn.Linear"):
        apply_qlora(gpt2)  # GPT-2's Conv1D: no NF4 version
    assert _unchanged(gpt2, keys)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        apply_lora("gpt2")
    with pytest.raises(TypeError, match="Conv2d"):
        LoRALinear(nn.Conv2d(2, 2, 1))
    for fn in (merge_lora, unmerge_lora, remove_lora, lora_state_dict):
        with pytest.raises(ValueError, match="call apply_lora"):
            fn(gpt)
    apply_lora(gpt)
    keys = set(gpt.state_dict())
    with pytest.raises(ValueError, match="already has LoRA layers"):
        apply_lora(gpt)
    with pytest.raises(ValueError, match="already has LoRA layers"):
        apply_qlora(gpt)
    assert set(gpt.state_dict()) == keys
    layer = gpt.h[0].attn.qkv_proj
    with pytest.raises(ValueError, match="not merged"):
        layer.unmerge()
    layer.merge()
    with pytest.raises(ValueError, match="already merged"):
        layer.merge()
    with pytest.raises(TypeError, match="compute_dtype"):
        bitsandbytes_qlora("gpt2", compute_dtype="bf16")
    with pytest.raises(ValueError, match="dropout"):
        bitsandbytes_qlora("gpt2", dropout=2)


def test_copy_lora_from_peft_maps_the_course_names_onto_the_gpt2_twin(gpt, ids):
    """The library's copy (used by notebook 06) gives the same logits as peft on the twin."""
    theirs = _peft_model(gpt.to_hf().eval(), "c_attn", r=4, alpha=8)
    other = copy.deepcopy(gpt)
    apply_lora(gpt, ["qkv_proj"], r=4, alpha=8)
    assert copy_lora_from_peft(gpt, theirs) == CONFIG.n_layer
    torch.testing.assert_close(_logits(gpt, ids), _logits(theirs, ids), atol=1e-5, rtol=0)
    apply_lora(other, ["out_proj"], r=4, alpha=8)  # adapted elsewhere than peft's model
    with pytest.raises(ValueError, match="no LoRA adapter"):
        copy_lora_from_peft(other, theirs)
    small = copy.deepcopy(gpt)
    remove_lora(small, merge=False)
    apply_lora(small, ["qkv_proj"], r=2, alpha=8)
    with pytest.raises(ValueError, match="same r"):
        copy_lora_from_peft(small, theirs)
