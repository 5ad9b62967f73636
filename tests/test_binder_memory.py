"""Binder's 2 GB is the container's: JupyterLab's own server counts too, not only the notebook's kernel.

The root ``conftest.py`` records, for every notebook run, the peak proportional set size (PSS) of the
kernel and all its child processes (``container_pss_mb`` in ``benchmarks/results/notebooks.json``).
This file measures the other part a container's limit sees: a started ``jupyter lab`` server with a
notebook open (its contents loaded, a session and kernel started, the kernel's websocket connected),
the server process alone (its kernel is a child, counted with the notebook). It records the figure
next to the notebooks' (``llm_course.report.save_server_memory``, unless ``LLM_COURSE_NO_RECORD`` is
set), and ``tests/test_packaging.py`` checks every notebook's container figure plus this one against
2 GB.
"""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

psutil = pytest.importorskip("psutil")
pytest.importorskip("jupyterlab")
tornado_websocket = pytest.importorskip("tornado.websocket")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = "09_best_practices.ipynb"  # the heaviest notebook on Binder (Ray Tune's workers)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(base: str, token: str, path: str, method: str = "GET", body: dict | None = None) -> dict | list | None:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{base}{path}", data=data, method=method,
                                 headers={"Authorization": f"token {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        raw = r.read()
    return json.loads(raw) if raw and raw.lstrip()[:1] in (b"{", b"[") else None


def _open_kernel_channels(url: str, token: str) -> None:
    """Connect to a kernel's websocket as an open notebook tab does, and wait for its kernel_info_reply."""
    import asyncio

    from tornado.httpclient import HTTPRequest

    async def talk() -> None:
        conn = await tornado_websocket.websocket_connect(HTTPRequest(url, headers={"Authorization": f"token {token}"}))
        msg_id = secrets.token_hex(8)
        header = {"msg_id": msg_id, "msg_type": "kernel_info_request", "username": "test", "session": msg_id,
                  "version": "5.3", "date": ""}
        await conn.write_message(json.dumps({"header": header, "parent_header": {}, "metadata": {}, "content": {},
                                             "channel": "shell", "buffers": []}))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            reply = await asyncio.wait_for(conn.read_message(), timeout=120)
            if reply is None:
                raise RuntimeError("the kernel's websocket closed before kernel_info_reply")
            if isinstance(reply, str) and json.loads(reply).get("parent_header", {}).get("msg_id") == msg_id:
                break
        await asyncio.sleep(2)  # the server settles (activity tracking, message caches)
        conn.close()

    asyncio.run(talk())


def test_jupyterlab_server_memory_with_a_notebook_open(tmp_path):
    work = tmp_path / "notebooks"
    work.mkdir()
    shutil.copy(ROOT / "notebooks" / NOTEBOOK, work / NOTEBOOK)
    port, token = _free_port(), secrets.token_hex(16)
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
           f"--ServerApp.token={token}", f"--ServerApp.root_dir={work}", "--ServerApp.port_retries=0",
           "--LabApp.news_url="]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(tmp_path / "lab.log", "wb")
    server = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (tmp_path / "lab.log").read_text(errors="replace")[-2000:]
            try:
                _api(base, token, "/api/status")
                break
            except OSError:
                assert time.monotonic() < deadline, "JupyterLab did not answer within 120 s"
                time.sleep(0.5)
        # What opening the notebook in a browser asks of the server: the page, the file, a session (kernel).
        with urllib.request.urlopen(f"{base}/lab/tree/{NOTEBOOK}?token={token}", timeout=60) as r:
            assert r.status == 200 and b"jupyter-config-data" in r.read()
        content = _api(base, token, f"/api/contents/{NOTEBOOK}?content=1")
        assert content["type"] == "notebook" and len(content["content"]["cells"]) > 10
        session = _api(base, token, "/api/sessions", "POST",
                       {"path": NOTEBOOK, "type": "notebook", "name": NOTEBOOK, "kernel": {"name": "python3"}})
        kernel_id = session["kernel"]["id"]
        _open_kernel_channels(f"ws://127.0.0.1:{port}/api/kernels/{kernel_id}/channels", token)

        proc = psutil.Process(server.pid)
        kernels = proc.children(recursive=True)
        assert kernels, "the session started no kernel process"
        pss_mb = proc.memory_full_info().pss / 2**20  # the server alone; its kernel counts with the notebook
        kernel_mb = sum(k.memory_full_info().pss for k in kernels) / 2**20
        _api(base, token, f"/api/sessions/{session['id']}", "DELETE")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()

    # A Python web server with JupyterLab's extensions: tens of MB at least, far below a GB.
    assert 30 < pss_mb < 600, f"JupyterLab's server PSS {pss_mb:.0f} MB is outside any plausible range"
    # An idle kernel (ipykernel, nothing imported) is far smaller than a notebook's peak.
    assert 10 < kernel_mb < 400, kernel_mb
    if not os.environ.get("LLM_COURSE_NO_RECORD"):
        import jupyterlab

        from llm_course.report import save_server_memory

        save_server_memory(pss_mb, jupyterlab=jupyterlab.__version__, notebook_open=NOTEBOOK,
                           idle_kernel_pss_mb=round(kernel_mb, 1),
                           how="jupyter lab server process PSS, one notebook open (contents, session, "
                               "kernel websocket), the kernel excluded")


def test_ray_processes_start_with_two_malloc_arenas(monkeypatch):
    """Chapter 09's search fits Binder partly because Ray's processes inherit MALLOC_ARENA_MAX=2 (measured: the
    search's peak 1.67 -> 1.52 GB) and OMP_NUM_THREADS=1; the notebook's own environment is left as it was."""
    from llm_course.train import hpsearch

    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with hpsearch._lean_ray_processes():
        assert os.environ["MALLOC_ARENA_MAX"] == "2" and os.environ["OMP_NUM_THREADS"] == "1"
    assert "MALLOC_ARENA_MAX" not in os.environ and "OMP_NUM_THREADS" not in os.environ
    with hpsearch._lean_ray_processes(enabled=False):  # a cluster (address=...): its processes are not ours
        assert "MALLOC_ARENA_MAX" not in os.environ
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")  # a user's own setting wins
    with hpsearch._lean_ray_processes():
        assert os.environ["MALLOC_ARENA_MAX"] == "4"
    assert os.environ["MALLOC_ARENA_MAX"] == "4"
