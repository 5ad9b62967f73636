"""Fixtures shared by the library tests."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for the cores).
    Use it in a test file with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shipped():
    """The shipped course-gpt as ``(GPT, ByteLevelBPETokenizer)`` (chapter 04's zoo), loaded once per file."""
    from llm_course.zoo import load_pretrained

    return load_pretrained("course-gpt")


@pytest.fixture(scope="module")
def tok(shipped):
    """course-gpt's tokenizer."""
    return shipped[1]
