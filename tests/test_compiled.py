"""Chapter 07: torch.compile of a fixed-shape decode step; the same ids as eager, a clear message without a compiler."""

from __future__ import annotations

import platform

import pytest
import torch

from llm_course.infer import compiled
from llm_course.infer.compiled import StaticGenerator, StaticStep, compile_status, generate_static, maybe_compile
from llm_course.infer.generation import generate
from llm_course.models.gpt import GPT, GPTConfig

CONFIG = GPTConfig(vocab_size=97, n_positions=48, n_embd=32, n_layer=2, n_head=4)


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(CONFIG).eval()


def _prompt(B: int, T: int, seed: int) -> torch.Tensor:
    return torch.randint(0, CONFIG.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


def test_static_step_eager_matches_the_full_forward(model):
    """Each fixed-shape step's logits equal the model's full forward at that position."""
    ids = _prompt(2, 10, seed=1)
    step = StaticStep(model, batch_size=2, max_length=16)
    with torch.no_grad():
        out = model(ids[:, :6], use_cache=True)
        step.fill(out.past_key_values, 6)
        logits = [step(ids[:, t:t + 1], torch.tensor([t])) for t in range(6, 10)]
        ref = model(ids).logits[:, 6:10]
    torch.testing.assert_close(torch.stack(logits, dim=1), ref, atol=1e-5, rtol=0)


def test_eager_static_generation_gives_generate_ids(model):
    prompt = _prompt(2, 5, seed=2)
    assert torch.equal(generate_static(model, prompt, 30, compile=False), generate(model, prompt, max_new_tokens=30))


@pytest.mark.skipif(not compile_status()[0], reason="torch.compile cannot run here (see compile_status)")
def test_compiled_generation_gives_eager_ids(model):
    """The compiled step (TorchInductor, C++ on the CPU) decodes the same ids as eager PyTorch."""
    prompt = _prompt(1, 4, seed=3)
    gen = StaticGenerator(model, batch_size=1, max_length=30)
    assert gen.compiled
    assert torch.equal(gen.generate(prompt, 24), generate(model, prompt, max_new_tokens=24))
    first = gen.compile_seconds  # the first step's time: the compilation is in it
    other = _prompt(1, 6, seed=5)  # another prompt and length: the step's shapes are the same, so it is reused
    assert torch.equal(gen.generate(other, 20), generate(model, other, max_new_tokens=20))
    assert gen.compile_seconds == first > 0
    with pytest.raises(ValueError, match="does not fit this generator"):
        gen.generate(_prompt(2, 4, seed=0), 3)


def test_missing_compiler_gives_a_clear_message_and_eager_ids(model, monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(compiled.shutil, "which", lambda name: None)  # as if no compiler were installed
    ready, why = compile_status()
    if platform.system() == "Windows":
        assert not ready and "cl.exe" in why
    else:
        assert not ready and "no C++ compiler" in why and "g++" in why and "apt-get install g++" in why
    with pytest.warns(UserWarning, match="using eager PyTorch: no C\\+\\+ compiler"):
        fn, reason = maybe_compile(torch.sin)
    assert fn is torch.sin and reason == why
    prompt = _prompt(1, 3, seed=4)
    with pytest.warns(UserWarning, match="torch.compile cannot run here"):
        ids = generate_static(model, prompt, 12, compile=True)
    assert torch.equal(ids, generate(model, prompt, max_new_tokens=12))


def test_old_torch_and_windows_messages(monkeypatch):
    monkeypatch.setattr(compiled.torch, "__version__", "1.13.1")
    assert compile_status() == (False, "torch 1.13.1 has no torch.compile (added in 2.0): pip install -U torch")
    monkeypatch.setattr(compiled.torch, "__version__", "2.4.0")
    monkeypatch.setattr(compiled.platform, "system", lambda: "Windows")
    ready, why = compile_status()
    assert not ready and "Windows" in why and "2.6" in why


def test_bad_input(model):
    with pytest.raises(TypeError, match="LongTensor"):
        generate_static(model, torch.zeros(1, 3), 2)
    with pytest.raises(ValueError, match="n_positions=48"):
        generate_static(model, _prompt(1, 40, seed=0), 9)
    with pytest.raises(TypeError, match="standard GPTBlocks"):
        StaticStep(torch.nn.Linear(2, 2), 1, 4)
    with pytest.raises(TypeError, match="nn.Module to compile"):
        maybe_compile(3)
