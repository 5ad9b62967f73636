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


@pytest.fixture(scope="module", autouse=True)
def no_busy_threads_left_behind(request):
    """Nor a Python thread that keeps computing: one left spinning (a timed-out endless loop, say) takes a
    core and the GIL from every later test and notebook. A thread started during the file, still alive
    after it and computing during a 0.5 s sample (over 0.02 s of CPU: a spinning thread gets more than
    that even on a machine loaded 6 processes per core) fails the file; idle threads, such as a library's
    sleeping monitor, are allowed."""
    import threading

    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a test dependency
        yield
        return
    before = set(threading.enumerate())
    yield
    new = {t.native_id: t for t in threading.enumerate() if t not in before and t.is_alive() and t.native_id}
    if not new:
        return

    def cpu() -> dict[int, float]:
        return {t.id: t.user_time + t.system_time for t in psutil.Process().threads() if t.id in new}

    start = cpu()
    time.sleep(0.5)
    busy = [new[tid] for tid, spent in cpu().items() if spent - start.get(tid, spent) > 0.02]
    if busy:
        pytest.fail(f"{request.node.name} left {len(busy)} busy thread(s) running: {busy}", pytrace=False)


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
