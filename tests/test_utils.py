"""Device choice and seeding (chapter 01); giving memory back (chapter 09)."""

import json
import subprocess
import sys

import pytest
import torch

from llm_course.core.runtime import get_device, resident_mb, seed_everything


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


_FRAGMENTED_HEAP = r"""
import json
from llm_course.core.runtime import release_memory, resident_mb
start = resident_mb()
blocks = [bytes(1000) for _ in range(150_000)]   # ~150 MB of small heap allocations (below mmap's threshold)
kept = blocks[::64]                              # one in 64 stays alive: the heap cannot shrink from its top
del blocks
held = resident_mb()                             # freed by Python, still resident in glibc's heap
print(json.dumps({"start": start, "held": held, **release_memory()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's (Linux)")
def test_release_memory_returns_freed_heap_pages_to_the_system():
    """Deleted small objects stay resident until release_memory trims the heap; what is alive stays."""
    out = subprocess.run([sys.executable, "-c", _FRAGMENTED_HEAP], capture_output=True, text=True, check=True)
    m = json.loads(out.stdout.strip().splitlines()[-1])
    assert m["trimmed"] is True
    assert m["held"] - m["start"] > 100, m              # del alone gave nothing back
    assert m["rss_mb_before"] - m["held"] < 10, m       # the figure release_memory starts from is that one
    assert m["freed_mb"] > 80, m                        # the trim gave most of the ~150 MB back
    assert m["rss_mb_after"] - m["start"] < 40, m       # what is left: the 1/64 kept alive (~2.3 MB) and slack


def test_resident_mb_reads_this_process():
    import psutil

    assert resident_mb() == pytest.approx(psutil.Process().memory_info().rss / 2**20, rel=0.2)
