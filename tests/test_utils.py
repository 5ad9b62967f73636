"""Device choice and seeding (chapter 01)."""

import pytest
import torch

from llm_course.core.runtime import get_device, seed_everything


def test_auto_device_is_available_and_cpu_works():
    assert get_device("cpu") == torch.device("cpu")
    dev = get_device("auto")
    assert dev.type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        assert dev.type != "cuda"


def test_env_override(monkeypatch):
    monkeypatch.setenv("LLM_COURSE_DEVICE", "cpu")
    assert get_device() == torch.device("cpu")


@pytest.mark.parametrize("bad", ["gpu", "tpu", "cuda0"])
def test_unknown_device_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="unknown device"):
        get_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="machine has CUDA")
def test_missing_cuda_is_an_error_not_a_silent_fallback():
    with pytest.raises(ValueError, match="no CUDA GPU"):
        get_device("cuda")


def _train_a_little(seed):
    seed_everything(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Dropout(0.1),
                                torch.nn.Linear(32, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        x = torch.randn(8, 16)
        loss = torch.nn.functional.cross_entropy(model(x), torch.randint(0, 4, (8,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, [p.detach().clone() for p in model.parameters()]


def test_seed_everything_makes_cpu_runs_bitwise_identical():
    a_losses, a_params = _train_a_little(123)
    b_losses, b_params = _train_a_little(123)
    c_losses, _ = _train_a_little(124)
    assert a_losses == b_losses  # exact equality, not approx
    assert all(torch.equal(x, y) for x, y in zip(a_params, b_params))
    assert a_losses != c_losses


@pytest.mark.parametrize(("bad", "error"), [(-1, ValueError), (1.5, TypeError), ("1", TypeError), (True, TypeError)])
def test_bad_seed(bad, error):
    # a value out of range is a ValueError, a wrong type (a bool included) a TypeError
    with pytest.raises(error, match="seed must be a non-negative integer"):
        seed_everything(bad)
