"""Fixtures shared by the library tests."""

import time

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def no_processes_left_behind(request):
    """Every test file must stop the processes it starts: servers (JupyterLab), Ray, torchrun and its
    ranks, browsers. After the file's last test, a process started during the file that is still running
    30 s later is killed, and the file fails with its name and command line, so no test can depend on
    (or be slowed down by) what an earlier file left running."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a test dependency
        yield
        return
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}

    def left() -> list:
        alive = []
        for proc in me.children(recursive=True):
            try:
                if proc.pid not in before and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
            except psutil.Error:
                pass
        return alive

    yield
    deadline = time.monotonic() + 30
    while left() and time.monotonic() < deadline:
        time.sleep(0.5)
    stray = left()
    if stray:
        described = []
        for proc in stray:
            try:
                described.append(f"pid {proc.pid}: {' '.join(proc.cmdline())[:200]}")
                proc.kill()
            except psutil.Error:
                pass
        pytest.fail(f"{request.node.name} left {len(stray)} process(es) running (now killed):\n"
                    + "\n".join(described), pytrace=False)


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
    from llm_course.zoo.loading import load_pretrained

    return load_pretrained("course-gpt")


@pytest.fixture(scope="module")
def tok(shipped):
    """course-gpt's tokenizer."""
    return shipped[1]
