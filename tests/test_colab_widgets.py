"""The widgets under ipywidgets 7.7, the version Colab ships. Classroom readiness.

The project allows ``ipywidgets>=7.7,<9`` so that the Colab install cell leaves Colab's own
ipywidgets alone. The rest of the suite runs ipywidgets 8; this test installs ipywidgets 7.7.1
(from the package registry, into a scratch folder, nothing else changed) and drives the three
widgets through their controls in a separate Python process that imports it first: the attention
explorer (03), the sampling explorer (07) and the chat box (08).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

COLAB_IPYWIDGETS = "7.7.1"

SCRIPT = textwrap.dedent("""
    import json
    import ipywidgets
    from llm_course.apps.chat import ChatBot, chat_widget
    from llm_course.widgets.attention_explorer import AttentionExplorer
    from llm_course.widgets.sampling_explorer import SamplingExplorer
    from llm_course.zoo.loading import load_pretrained

    model, tok = load_pretrained("course-gpt")
    out = {"ipywidgets": ipywidgets.__version__}

    explorer = AttentionExplorer(model.eval(), tok)
    before = explorer.png
    explorer.layer.value = 1                      # what moving the slider does
    out["attention_redrawn"] = explorer.png != before and explorer.error is None
    before = explorer.png
    explorer.view.value = "token"
    explorer.query.value = explorer.query.options[3][1]
    out["attention_token_view"] = explorer.png != before and explorer.error is None

    sampler = SamplingExplorer(model, tok, "If the file does not exist,", temperature=0.8, seed=0)
    before, text = sampler.png, sampler.text
    sampler.temperature.value = 1.3
    out["sampling_redrawn"] = sampler.png != before
    sampler.step_button.click()                   # what pressing "step one token" does
    out["sampling_stepped"] = sampler.text != text and sampler.text.startswith(text)

    box = chat_widget(ChatBot(model, tok, max_new_tokens=8))
    box.text.value = "Привет! Как дела?"
    box.send_button.click()
    out["chat_answered"] = "Привет! Как дела?" in box.conversation.value and box.text.value == ""
    out["chat_history"] = len(box.bot.history)
    print("RESULT " + json.dumps(out))
""")


@pytest.fixture(scope="module")
def colab_ipywidgets(tmp_path_factory):
    target = tmp_path_factory.mktemp("ipywidgets-colab")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check",
           "--target", str(target), f"ipywidgets=={COLAB_IPYWIDGETS}", "ipython_genutils"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        pytest.skip(f"could not install ipywidgets {COLAB_IPYWIDGETS} from the package registry: {r.stderr[-500:]}")
    return target


def test_widgets_work_with_colabs_ipywidgets(colab_ipywidgets):
    env = {"PYTHONPATH": str(colab_ipywidgets), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600,
                       env={**os.environ, **env})
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert r.returncode == 0 and lines, f"the widgets failed under ipywidgets {COLAB_IPYWIDGETS}:\n{r.stderr[-3000:]}"
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["ipywidgets"] == COLAB_IPYWIDGETS  # really the old version, not the environment's 8.x
    assert out == {"ipywidgets": COLAB_IPYWIDGETS, "attention_redrawn": True, "attention_token_view": True,
                   "sampling_redrawn": True, "sampling_stepped": True, "chat_answered": True, "chat_history": 2}
