"""The course's widgets in a real browser: JupyterLab, headless Chromium, Playwright.

Classroom readiness. The unit tests (test_widgets.py, test_sampling_explorer.py, test_chat.py)
drive the widgets from Python; this file checks what a student actually sees. It starts
JupyterLab on a free localhost port with a random token, opens a course notebook in the
system's Chromium (Debian's ``chromium`` package; Playwright drives it, no browser download),
runs every cell, then moves a slider / picks a dropdown entry / presses a button and asserts
that the rendered picture changes: new pixels, not only a new kernel-side value.

Screenshots go to ``build/screenshots/`` (open them to see what the test saw).

Without Chromium or Playwright the tests are skipped with a message saying what to install;
``.ci/run`` installs both and sets ``LLM_COURSE_BROWSER_TESTS=require``, which turns the skip
into a failure so that CI can never pass without having run them.

Traps this file avoids, each seen here:
- JupyterLab's news pop-up and kernel-selection dialog: disabled by user-settings overrides;
- cells outside the viewport not being rendered: windowing is turned off;
- ``page.evaluate`` has no timeout: every wait in this file is ``wait_for_function`` or a
  locator call with an explicit ``timeout``, and ``evaluate`` only runs JavaScript that
  returns at once.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "build" / "screenshots"
REQUIRED = os.environ.get("LLM_COURSE_BROWSER_TESTS", "").lower() == "require"
CHROMIUM = (os.environ.get("LLM_COURSE_CHROMIUM") or shutil.which("chromium")
            or shutil.which("chromium-browser") or shutil.which("google-chrome"))

# Milliseconds. Running a whole notebook is the long wait; everything else is short.
NOTEBOOK_TIMEOUT_MS = int(os.environ.get("LLM_COURSE_BROWSER_NOTEBOOK_TIMEOUT_S", "600")) * 1000
RENDER_TIMEOUT_MS = 60_000
UI_TIMEOUT_MS = 30_000

# JupyterLab user settings, one file per plugin (what the Settings Editor would write).
LAB_SETTINGS = {
    # No "Would you like to receive official Jupyter news?" toast, no update check.
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    # Start the notebook's kernel without the kernel-selection dialog; render every cell
    # (the default windowing skips cells outside the viewport).
    "@jupyterlab/notebook-extension/tracker": {"autoStartDefaultKernel": True, "windowingMode": "none"},
    # The copy under test is never saved.
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/extensionmanager-extension/plugin": {"enabled": False},
}

CHROMIUM_ARGS = [
    # Root in a container needs --no-sandbox; the rest keep Chromium off the (closed) network.
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]


def _unavailable(reason: str) -> None:
    message = (f"browser test not run: {reason}. Install Chromium (Debian: apt-get install chromium) and "
               "Playwright (pip install playwright; no `playwright install` needed, the system Chromium is used), "
               "or point LLM_COURSE_CHROMIUM at a Chromium/Chrome executable.")
    if REQUIRED:
        pytest.fail(message + " (LLM_COURSE_BROWSER_TESTS=require)")
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A JupyterLab server in a scratch folder, with the course's notebooks copied in."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.port = _free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir.parent / "jupyterlab.log"
        settings = workdir.parent / "lab-settings"
        for plugin, values in LAB_SETTINGS.items():
            path = settings / f"{plugin}.jupyterlab-settings"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values), encoding="utf-8")
        env = dict(os.environ,
                   JUPYTERLAB_SETTINGS_DIR=str(settings),
                   JUPYTERLAB_WORKSPACES_DIR=str(workdir.parent / "lab-workspaces"),
                   JUPYTER_RUNTIME_DIR=str(workdir.parent / "jupyter-runtime"),
                   MPLBACKEND="module://matplotlib_inline.backend_inline",
                   HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={self.port}", "--ip=127.0.0.1",
               f"--ServerApp.token={self.token}", f"--ServerApp.root_dir={workdir}",
               "--ServerApp.port_retries=0", "--LabApp.expose_app_in_browser=True",
               "--LabApp.news_url=", "--ServerApp.disable_check_xsrf=False"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self._wait_ready(timeout=90)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"JupyterLab did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def shutdown_kernels(self) -> None:
        """Stop every kernel the server runs (a closed browser tab leaves its kernel running)."""
        with urllib.request.urlopen(f"{self.url}/api/kernels?token={self.token}", timeout=10) as r:
            kernels = json.loads(r.read())
        for k in kernels:
            req = urllib.request.Request(f"{self.url}/api/kernels/{k['id']}?token={self.token}", method="DELETE")
            urllib.request.urlopen(req, timeout=30).close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if CHROMIUM is None:
        _unavailable("no Chromium executable found (looked for chromium, chromium-browser, google-chrome)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _unavailable("the Python package playwright is not installed")
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        _unavailable("JupyterLab is not installed (pip install 'llm-course[lab]')")
    work = tmp_path_factory.mktemp("lab") / "notebooks"
    work.mkdir()
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        shutil.copy(nb, work / nb.name)
    server = Lab(work)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser(lab):
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, timeout=60_000)
    except Exception as exc:  # a broken Chromium install: say so, with Playwright's reason
        pw.stop()
        raise RuntimeError(f"Chromium at {CHROMIUM} did not start under Playwright: {exc}") from exc
    yield b
    b.close()
    pw.stop()


class Notebook:
    """One open notebook in a browser page, run top to bottom through JupyterLab's own command."""

    def __init__(self, browser, lab: Lab, name: str):
        self.name = name
        self.stem = Path(name).stem
        self.lab = lab
        self.context = browser.new_context(viewport={"width": 1400, "height": 1800})
        self.page = self.context.new_page()
        self.page.set_default_timeout(UI_TIMEOUT_MS)
        self.console: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.console.append(m.text))
        self.page.on("pageerror", lambda e: self.console.append(str(e)))
        self.page.goto(f"{lab.url}/lab/tree/{name}?token={lab.token}&reset", timeout=RENDER_TIMEOUT_MS)
        self.page.wait_for_function(
            """(name) => {
                const app = window.jupyterapp;
                const w = app && app.shell.currentWidget;
                return !!(w && w.context && w.context.path.endsWith(name) && w.content && w.content.widgets.length
                          && w.sessionContext.session && w.sessionContext.session.kernel
                          && w.sessionContext.session.kernel.status === 'idle');
            }""", arg=name, timeout=RENDER_TIMEOUT_MS, polling=500)
        self.shot("opened")

    def shot(self, label: str, locator=None) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{self.stem}-{label}.png"
        (locator or self.page).screenshot(path=str(path), timeout=UI_TIMEOUT_MS)
        return path

    def run_all(self) -> None:
        """Run every cell; wait until all have run, failing at once on an error output."""
        # execute() returns a promise that settles when the cells finish: not awaited here.
        self.page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); return true; }")
        state_js = """() => {
            const nb = window.jupyterapp.shell.currentWidget.content;
            const cells = nb.widgets.filter(c => c.model.type === 'code');
            for (const c of cells) {
                const outs = c.model.outputs.toJSON();
                const err = outs.find(o => o.output_type === 'error');
                if (err) return {error: err.ename + ': ' + err.evalue, source: c.model.sharedModel.getSource()};
            }
            const pending = cells.filter(c => c.model.executionCount === null
                                              || c.promptNode && c.promptNode.textContent.includes('*')).length;
            const status = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status;
            return {pending, status};
        }"""
        try:
            self.page.wait_for_function(
                f"() => {{ const s = ({state_js})(); return s.error || (s.pending === 0 && s.status === 'idle'); }}",
                timeout=NOTEBOOK_TIMEOUT_MS, polling=1000)
        except Exception as exc:
            self.shot("timeout")
            state = self.page.evaluate(state_js)
            raise AssertionError(f"{self.name} did not finish in {NOTEBOOK_TIMEOUT_MS // 1000} s: {state}\n"
                                 f"JupyterLab log:\n{self.lab.log_tail()}") from exc
        state = self.page.evaluate(state_js)
        if "error" in state:
            self.shot("error")
            raise AssertionError(f"{self.name}: a cell failed in the browser: {state['error']}\n"
                                 f"---\n{state['source']}")

    def cell_index(self, needle: str) -> int:
        """Index (among all cells) of the first cell whose source contains ``needle``."""
        idx = self.page.evaluate(
            """(needle) => window.jupyterapp.shell.currentWidget.content.widgets
                   .findIndex(c => c.model.sharedModel.getSource().includes(needle))""", needle)
        assert idx >= 0, f"{self.name}: no cell contains {needle!r}"
        return idx

    def widget(self, needle: str):
        """The rendered ipywidgets view in the output of the cell containing ``needle``."""
        cell = self.page.locator(".jp-Notebook .jp-Cell").nth(self.cell_index(needle))
        view = cell.locator(".jp-OutputArea-output .widget-vbox").first
        try:
            view.wait_for(state="visible", timeout=RENDER_TIMEOUT_MS)
        except Exception as exc:
            self.shot("no-widget")
            text = cell.locator(".jp-OutputArea").inner_text(timeout=UI_TIMEOUT_MS)
            raise AssertionError(f"{self.name}: the widget did not render; the output reads {text[:300]!r}; "
                                 f"browser errors: {self.console[-5:]}") from exc
        view.scroll_into_view_if_needed(timeout=UI_TIMEOUT_MS)
        text = view.inner_text(timeout=UI_TIMEOUT_MS)
        assert "Loading widget" not in text and "model_id" not in text, (
            f"{self.name}: widget not rendered: {text[:300]}")
        return view

    def close(self) -> None:
        self.context.close()
        self.lab.shutdown_kernels()  # the next notebook gets the machine's memory to itself


def _image(view, index: int = 0):
    """The ``ipywidgets.Image`` of a view, once it holds a decoded picture."""
    img = view.locator("img").nth(index)
    img.wait_for(state="visible", timeout=RENDER_TIMEOUT_MS)
    img.page.wait_for_function("(el) => el.complete && el.naturalWidth > 100 && el.naturalHeight > 100",
                               arg=img.element_handle(timeout=UI_TIMEOUT_MS), timeout=RENDER_TIMEOUT_MS)
    return img


def _wait_changed(page, locator, attribute_js: str, old: str) -> str:
    """Wait until ``attribute_js`` (a function of the element) differs from ``old``; return it."""
    handle = locator.element_handle(timeout=UI_TIMEOUT_MS)
    page.wait_for_function(f"([el, old]) => {{ const v = ({attribute_js})(el); return v && v !== old; }}",
                           arg=[handle, old], timeout=RENDER_TIMEOUT_MS, polling=200)
    return locator.evaluate(attribute_js)


IMG_SRC = "(el) => el.complete && el.naturalWidth > 0 ? el.src : ''"


def _slider(view, label: str):
    """The ipywidgets slider whose description is ``label``."""
    return view.locator(".widget-slider").filter(has=view.page.locator(".widget-label", has_text=label)).first


def _move_slider(slider, presses: int, key: str = "ArrowRight") -> None:
    """Move a slider as a keyboard user would (the handle takes arrow keys)."""
    handle = slider.locator(".noUi-handle, .ui-slider-handle").first
    handle.focus(timeout=UI_TIMEOUT_MS)
    for _ in range(presses):
        handle.press(key, timeout=UI_TIMEOUT_MS)


def _readout(slider) -> str:
    return slider.locator(".widget-readout").inner_text(timeout=UI_TIMEOUT_MS).strip()


def _slide_redraws(nb: Notebook, view, img, label: str, presses: int) -> str:
    """Move the slider ``label`` by ``presses`` arrow keys (right from 0, else left); assert that its
    readout moved and the picture's pixels changed. Returns the new picture's ``src``."""
    before_src, before_px = img.evaluate(IMG_SRC), img.screenshot(timeout=UI_TIMEOUT_MS)
    slider = _slider(view, label)
    start = _readout(slider)
    _move_slider(slider, presses, "ArrowRight" if float(start) == 0 else "ArrowLeft")
    src = _wait_changed(nb.page, img, IMG_SRC, before_src)
    assert _readout(slider) != start, f"the {label} slider did not move"
    assert img.screenshot(timeout=UI_TIMEOUT_MS) != before_px, f"the picture looks the same after moving {label}"
    nb.shot(f"explorer-{label}-moved", view)
    return src


@pytest.fixture
def notebook(browser, lab):
    opened = []

    def open_(name: str) -> Notebook:
        nb = Notebook(browser, lab, name)
        opened.append(nb)
        return nb

    yield open_
    for nb in opened:
        nb.close()


def _run_to_widget(notebook, name: str, needle: str, picture: bool = True):
    """Open notebook ``name``, run it all, and return it with the widget of the cell containing ``needle``
    (and that widget's rendered picture, if ``picture``)."""
    nb = notebook(name)
    nb.run_all()
    view = nb.widget(needle)
    nb.shot("explorer" if picture else "widget", view)
    return nb, view, (_image(view) if picture else None)


def test_attention_explorer_reacts_to_its_controls(notebook):
    """Chapter 03: the layer slider and the query-token dropdown redraw the heatmap."""
    nb, view, img = _run_to_widget(notebook, "03_attention.ipynb", "AttentionExplorer(model")
    src = _slide_redraws(nb, view, img, "layer", 1)

    # The "one query token" view, then another query token from the dropdown: new bars.
    view.locator(".widget-toggle-button", has_text="one token").first.click(timeout=UI_TIMEOUT_MS)
    src = _wait_changed(nb.page, img, IMG_SRC, src)
    query = view.locator(".widget-dropdown").filter(has=nb.page.locator(".widget-label", has_text="query token"))
    select = query.locator("select").first
    options = select.locator("option").all_inner_texts()
    assert len(options) > 3, f"query-token dropdown has {options}"
    before_px = img.screenshot(timeout=UI_TIMEOUT_MS)
    select.select_option(index=len(options) // 2, timeout=UI_TIMEOUT_MS)
    _wait_changed(nb.page, img, IMG_SRC, src)
    nb.shot("explorer-query-token", view)
    assert img.screenshot(timeout=UI_TIMEOUT_MS) != before_px, "the query-token view did not change"
    assert not [e for e in nb.console if "widget" in e.lower()], nb.console


def test_sampling_explorer_reacts_to_its_controls(notebook):
    """Chapter 07: the temperature slider redraws the probability bars; "step" adds a token."""
    nb, view, img = _run_to_widget(notebook, "07_inference.ipynb", "SamplingExplorer(model")
    src = _slide_redraws(nb, view, img, "temperature", 5)

    text = view.locator(".widget-html").first
    old_text = text.inner_text(timeout=UI_TIMEOUT_MS)
    view.locator("button", has_text="step one token").click(timeout=UI_TIMEOUT_MS)
    _wait_changed(nb.page, text, "(el) => el.innerText", old_text)
    _wait_changed(nb.page, img, IMG_SRC, src)
    nb.shot("explorer-stepped", view)


def test_chat_box_answers_in_the_browser(notebook):
    """Chapter 08: typing a Russian message and pressing Send shows it and a reply."""
    nb, view, _ = _run_to_widget(notebook, "08_applications.ipynb", "chat_widget(ChatBot(", picture=False)
    box = view.locator("input[type=text], .widget-text input").first
    box.fill("Привет! Как дела?", timeout=UI_TIMEOUT_MS)
    conversation = view.locator(".widget-html").first
    old = conversation.inner_text(timeout=UI_TIMEOUT_MS)
    view.locator("button", has_text="Send").click(timeout=UI_TIMEOUT_MS)
    new = _wait_changed(nb.page, conversation, "(el) => el.innerText", old)
    nb.shot("chat", view)
    assert "Привет! Как дела?" in new, new
    reply = new.split("Привет! Как дела?", 1)[1]
    assert re.search(r"Bot:\s*\S", reply), f"no reply after the message: {new!r}"
    assert box.input_value(timeout=UI_TIMEOUT_MS) == "", "the text box is not cleared after Send"
