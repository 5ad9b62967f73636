"""Tests for the sampling explorer (chapter 07): ``llm_course.viz.distributions`` and the widget.

References, independent of the code under test: the model's logits computed by calling it directly;
closed forms (softmax(logits / T), torch.topk, the smallest nucleus from sorted probabilities, entropy
sums); transformers' ``RepetitionPenaltyLogitsProcessor``; ``llm_course.infer.generation.generate`` for what
sampling must produce; and a transformers ``GPT2LMHeadModel`` with the same weights. Models are tiny
and random, built offline. The widget is driven by setting control values and clicking its buttons, as
a browser would, and checked from Python.
"""

from __future__ import annotations

import html
import io
import math

import matplotlib.colors
import matplotlib.image
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from llm_course.infer.generation import generate
from llm_course.infer.logits_processors import GenerationConfig, next_token_distributions, top_p_filter
from llm_course.models.gpt import GPT, GPTConfig
from llm_course.text.tokenizer import ByteLevelBPETokenizer
from llm_course.viz.distributions import STAGES, distributions_figure, entropy
from llm_course.viz.figures import figure_to_png
from llm_course.widgets.sampling_explorer import SamplingExplorer

CORPUS = ("the cat sat on the mat. the dog sat on the log. a cat and a dog met on the mat. "
          "the quick brown fox jumps over the lazy dog. кошка сидит на ковре. ") * 6
PROMPT = "the cat sat on the"
CONTEXT = 32  # the models' context window: long prompts are cheap to build
DPI = 30  # small pictures: the tests check state and that the picture changes, not its looks


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok() -> ByteLevelBPETokenizer:
    return ByteLevelBPETokenizer.train([CORPUS], vocab_size=300, special_tokens=("<|endoftext|>",))


@pytest.fixture(scope="module")
def gpt(tok) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=len(tok), n_positions=CONTEXT, n_embd=32, n_layer=2, n_head=2, dropout=0.1))
    with torch.no_grad():  # peakier next-token distributions than the tiny init gives
        model.wte.weight.mul_(6)
    return model.train()  # left in train mode (dropout on): the explorer must switch it off


@pytest.fixture(scope="module")
def eos(tok) -> int:
    return tok.special_tokens["<|endoftext|>"]


def make(gpt, tok, prompt: str = PROMPT, **kwargs) -> SamplingExplorer:
    return SamplingExplorer(gpt, tok, prompt, dpi=DPI, **kwargs)


def logits_of(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    """The next-token logits (V,), computed by calling the model directly in eval mode."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(torch.tensor([ids])).logits[0, -1].float()
    model.train(was_training)
    return out


def kept_set(probs: torch.Tensor) -> set[int]:
    return set(torch.nonzero(probs > 0).flatten().tolist())


def png_shape(png: bytes) -> tuple[int, ...]:
    return matplotlib.image.imread(io.BytesIO(png), format="png").shape


# --------------------------------------------------------------------------------------
# entropy and the figure
# --------------------------------------------------------------------------------------


def test_entropy_closed_forms():
    assert entropy(torch.ones(8) / 8) == pytest.approx(3.0)
    assert entropy([0.5, 0.25, 0.25]) == pytest.approx(1.5)
    assert entropy(torch.tensor([0.0, 1.0, 0.0])) == 0.0  # zeros count 0, a sure token is 0 bits
    assert entropy(np.array([0.5, 0.5])) == pytest.approx(1.0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.0, 10.0), min_size=1, max_size=30).filter(lambda w: sum(w) > 1e-3))
def test_entropy_is_between_zero_and_log2_of_the_support(weights):
    p = torch.tensor(weights, dtype=torch.float64)
    p = p / p.sum()
    h = entropy(p)
    assert -1e-9 <= h <= math.log2(int((p > 0).sum())) + 1e-9
    assert h == pytest.approx(float(-sum(x * math.log2(x) for x in p.tolist() if x > 0)), abs=1e-9)


def test_figure_draws_every_stage_on_the_same_tokens():
    logits = torch.tensor([3.0, 2.5, 2.0, 1.0, 0.5, 0.0, -1.0, -2.0])
    config = GenerationConfig(do_sample=True, temperature=0.8, top_k=5, top_p=0.8, repetition_penalty=1.5)
    d = next_token_distributions(logits, torch.tensor([1]), config)
    order = [0, 2, 1, 3, 4, 5, 6]  # what the explorer would pass: ranked after the penalty (token 1 seen)
    labels = [f"t{i}" for i in order]
    fig = distributions_figure(d, order, labels, config, title="a $5 token")
    ax = fig.axes[0]
    rows = {c.get_label(): c for c in ax.collections if c.get_label() in STAGES}
    assert len(fig.axes) == 1 and list(rows) == list(STAGES)
    final_kept = [float(d["top-p"][i]) > 0 for i in order]
    heights = {}
    for stage, bars in rows.items():
        boxes = [path.vertices for path in bars.get_paths()]
        centres = [float(v[:, 0].min() + v[:, 0].max()) / 2 for v in boxes]
        assert centres == pytest.approx(list(range(len(order))))  # token i at x = i
        heights[stage] = np.array([v[:, 1].max() - v[:, 1].min() for v in boxes])
        # blue: survives every filter; grey: removed by one
        blue = [tuple(c[:3]) == matplotlib.colors.to_rgb("tab:blue") for c in bars.get_facecolors()]
        assert blue == final_kept
    # one probability scale for every row: heights are proportional to the probabilities
    drawn = np.concatenate([heights[s] for s in STAGES])
    probs = np.concatenate([d[s][order].numpy() for s in STAGES])
    np.testing.assert_allclose(drawn / drawn.max(), probs / probs.max(), rtol=1e-5, atol=1e-7)
    assert [t.get_text() for t in ax.texts if t.get_gid() == "token label"] == labels
    titles = [t.get_text() for t in ax.texts if " bits" in t.get_text()]
    assert [t.split(".")[0] for t in titles] == ["1", "2", "3", "4", "5"]
    assert f"H = {entropy(d['model']):.2f} bits, 8 tokens" in titles[0]
    assert f"{int((d['top-p'] > 0).sum())} tokens" in titles[4] and "p = 0.8" in titles[4]
    # the nucleus boundary: a dotted line just after the last kept token
    n_kept = sum(final_kept)
    assert any(list(line.get_xdata()) == [n_kept - 0.5] * 2 for line in ax.lines)
    assert figure_to_png(fig, dpi=DPI, tight=False)[:4] == b"\x89PNG"  # the title's '$' is not a formula
    with pytest.raises(ValueError, match="one label per token"):
        distributions_figure(d, order, labels[:-1], config)
    with pytest.raises(ValueError, match="lacks the stages"):
        distributions_figure({"model": d["model"]}, order, labels, config)


# --------------------------------------------------------------------------------------
# The explorer's distributions
# --------------------------------------------------------------------------------------


def test_starts_with_the_models_distribution(gpt, tok):
    ex = make(gpt, tok)
    ids = tok.encode(PROMPT, allowed_special="none")
    assert ex.input_ids == ids and ex.error is None and ex.text == PROMPT
    logits = logits_of(gpt, ids)
    expected = next_token_distributions(logits, torch.tensor(ids), GenerationConfig(do_sample=True))
    assert list(ex.distributions) == list(STAGES)
    for stage in STAGES:
        torch.testing.assert_close(ex.distributions[stage], expected[stage], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ex.distributions["model"], F.softmax(logits, -1), atol=1e-6, rtol=1e-5)
    assert gpt.training  # its mode is restored
    p = F.softmax(logits.double(), -1)
    h = float(-(p * p.log2()).sum())
    assert ex.entropy_bits == pytest.approx((h, h), abs=1e-5)  # every filter off: before == after
    assert len(ex.kept_tokens) == len(tok)
    assert ex.png[:8] == b"\x89PNG\r\n\x1a\n" and len(png_shape(ex.png)) == 3
    assert "before" in ex.message.value and "after" in ex.message.value
    assert ex.shown_token_ids == torch.argsort(logits, descending=True)[:20].tolist()
    assert len(ex.shown_labels) == 20


@pytest.mark.parametrize("settings_", [
    dict(temperature=0.7),
    dict(temperature=1.6, top_k=12),
    dict(top_p=0.6, repetition_penalty=1.7),
    dict(temperature=0.35, top_k=40, top_p=0.9, repetition_penalty=1.25),
])
def test_distributions_equal_next_token_distributions_of_the_models_logits(gpt, tok, settings_):
    ex = make(gpt, tok).show(**settings_)
    ids = ex.input_ids
    expected = next_token_distributions(logits_of(gpt, ids), torch.tensor(ids),
                                        GenerationConfig(do_sample=True, **settings_))
    for stage in STAGES:
        torch.testing.assert_close(ex.distributions[stage], expected[stage], atol=1e-6, rtol=1e-5)
    assert set(ex.kept_tokens) == kept_set(expected["top-p"])
    final = ex.distributions["top-p"]
    assert [float(final[i]) for i in ex.kept_tokens] == sorted((float(final[i]) for i in ex.kept_tokens),
                                                               reverse=True)  # most likely first
    assert ex.entropy_bits == pytest.approx((entropy(expected["model"]), entropy(expected["top-p"])), abs=1e-5)


def test_lower_temperature_lowers_the_entropy_and_changes_the_picture(gpt, tok):
    ex = make(gpt, tok)
    logits = logits_of(gpt, ex.input_ids)
    pngs, after = set(), []
    for t in (2.0, 1.0, 0.5, 0.2):
        ex.temperature.value = t  # as a browser would
        pngs.add(ex.png)
        after.append(ex.entropy_bits[1])
        torch.testing.assert_close(ex.distributions["temperature"], F.softmax(logits / t, -1), atol=1e-6, rtol=1e-5)
        assert ex.entropy_bits[0] == pytest.approx(entropy(F.softmax(logits, -1)), abs=1e-5)  # before: unchanged
    assert after == sorted(after, reverse=True) and len(set(after)) == 4  # strictly lower
    assert len(pngs) == 4


def test_top_k_keeps_exactly_k(gpt, tok):
    ex = make(gpt, tok, temperature=1.3)
    logits = logits_of(gpt, ex.input_ids)
    assert torch.unique(logits).numel() == logits.numel()  # no ties: top-k keeps exactly k
    pngs = {ex.png}
    for k in (1, 3, 10, 40):
        ex.top_k.value = k
        pngs.add(ex.png)
        assert len(ex.kept_tokens) == k
        assert set(ex.kept_tokens) == set(torch.topk(logits, k).indices.tolist())
        assert f"<b>{k}</b> candidate" in ex.message.value
    assert ex.entropy_bits[1] < entropy(F.softmax(logits / 1.3, -1))
    assert len(pngs) == 5
    ex.top_k.value = 0  # off
    assert len(ex.kept_tokens) == len(tok)


def smallest_nucleus(probs: torch.Tensor, p: float) -> set[int]:
    """The fewest most-likely tokens whose probabilities add up to at least p (closed form)."""
    sorted_p, order = torch.sort(probs.double(), descending=True)
    m = int(torch.searchsorted(torch.cumsum(sorted_p, 0), torch.tensor([p], dtype=torch.float64))[0]) + 1
    return set(order[:m].tolist())


def test_top_p_keeps_the_smallest_nucleus(gpt, tok):
    ex = make(gpt, tok, temperature=1.8)
    logits = logits_of(gpt, ex.input_ids)
    probs = F.softmax(logits / 1.8, -1)
    cumulative = torch.cumsum(torch.sort(probs.double(), descending=True).values, 0)
    pngs, sizes = {ex.png}, []
    for p in (0.1, 0.3, 0.5, 0.75, 0.95):
        assert (cumulative - p).abs().min() > 1e-5  # not on a float boundary: the closed form is exact
        ex.top_p.value = p
        pngs.add(ex.png)
        kept = set(ex.kept_tokens)
        assert kept == smallest_nucleus(probs, p)
        assert kept == kept_set(top_p_filter((logits / 1.8)[None], p)[0].exp())
        mass = float(probs[list(kept)].sum())
        smallest = min(float(probs[i]) for i in kept)
        assert mass >= p and mass - smallest < p  # reaches p, and one token fewer would not
        sizes.append(len(kept))
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    assert len(pngs) == 6


def test_repetition_penalty_matches_transformers_and_reorders_the_bars(gpt, tok):
    ex = make(gpt, tok)
    ids = ex.input_ids
    logits = logits_of(gpt, ids)
    before = ex.png
    ex.repetition_penalty.value = 1.9
    assert ex.png != before
    expected = F.softmax(RepetitionPenaltyLogitsProcessor(1.9)(torch.tensor([ids]), logits[None].clone())[0], -1)
    torch.testing.assert_close(ex.distributions["repetition penalty"], expected, atol=1e-6, rtol=1e-5)
    seen = sorted(set(ids))
    unseen = [i for i in range(len(tok)) if i not in seen]
    ratio = ex.distributions["repetition penalty"] / ex.distributions["model"]
    assert bool((ratio[seen] < ratio[unseen].min()).all())  # every seen token lost ground
    assert ex.shown_token_ids == torch.argsort(expected, descending=True)[:20].tolist()  # the filters' ranking


# --------------------------------------------------------------------------------------
# Caching, buttons
# --------------------------------------------------------------------------------------


def test_only_a_new_text_runs_the_model(gpt, tok):
    calls = []
    hook = gpt.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        ex = make(gpt, tok)
        assert len(calls) == 1
        pngs = {ex.png}
        ex.temperature.value = 0.6
        ex.top_k.value = 7
        ex.top_p.value = 0.8
        ex.repetition_penalty.value = 1.4
        ex.seed.value = 5
        ex.max_new_tokens.value = 9
        ex.show(temperature=1.2, top_k=3)
        pngs.add(ex.png)
        assert len(calls) == 1 and len(pngs) == 2  # the picture changed, the model did not run
        ex.prompt.value = "a dog"  # typed
        assert len(calls) == 2
        ex.prompt.value = PROMPT  # seen before: cached
        assert len(calls) == 2
        ex.step()  # a new text
        assert len(calls) == 3
        ex.reset()  # back to a known text
        assert len(calls) == 3
    finally:
        hook.remove()


def test_step_appends_one_sampled_token_like_generate(gpt, tok, eos):
    ex = make(gpt, tok, temperature=1.4, top_k=6, seed=7)
    start = ex.input_ids
    candidates = set(ex.kept_tokens)
    ex.step_button.click()
    after = ex.input_ids
    assert len(after) == len(start) + 1 and after[:-1] == start
    assert after[-1] in candidates  # drawn from the distribution that was shown
    assert ex.prompt.value == tok.decode(after) and ex.text == tok.decode(after)
    stepped = tok.decode(after[len(start):])
    assert f"title='stepped tokens'>{html.escape(stepped)}</span>" in ex.text_html.value
    for _ in range(4):
        ex.step()
    first_run = ex.input_ids
    # k steps with fixed settings draw exactly what generate() samples with the same seed
    expected = generate(gpt, torch.tensor([start]), max_new_tokens=5, do_sample=True, temperature=1.4, top_k=6,
                        seed=7, eos_token_id=eos)[0].tolist()
    assert first_run == expected
    ex.reset_button.click()
    assert ex.input_ids == start and ex.prompt.value == PROMPT and "stepped" not in ex.text_html.value
    for _ in range(5):
        ex.step()
    assert ex.input_ids == first_run  # same seed, same tokens
    ex.reset()
    ex.seed.value = 8
    for _ in range(5):
        ex.step()
    assert ex.input_ids != first_run  # another seed, other tokens
    ex.show(prompt=PROMPT, top_k=1)
    assert ex.step() == ex.input_ids[-1] == int(torch.argmax(logits_of(gpt, start)))  # top-k=1 is greedy


def test_a_typed_prompt_after_steps_is_the_new_prompt(gpt, tok):
    ex = make(gpt, tok, seed=1)
    ex.step()
    ex.prompt.value = ex.prompt.value + " and"  # a student edits the text
    assert ex.input_ids == tok.encode(ex.prompt.value, allowed_special="none")
    assert "stepped" not in ex.text_html.value
    ex.reset()
    assert ex.prompt.value.endswith(" and")  # reset goes back to the last typed prompt


def test_generate_button_equals_generation_generate(gpt, tok, eos):
    ex = make(gpt, tok).show(temperature=0.9, top_k=20, top_p=0.9, repetition_penalty=1.2, seed=3,
                             max_new_tokens=10)
    ids = ex.input_ids
    ex.generate_button.click()
    out = generate(gpt, torch.tensor([ids]), max_new_tokens=10, do_sample=True, temperature=0.9, top_k=20,
                   top_p=0.9, repetition_penalty=1.2, seed=3, eos_token_id=eos)[0].tolist()
    expected = tok.decode(out[len(ids):])
    assert ex.continuation == expected and expected
    assert ex.input_ids == ids and ex.prompt.value == PROMPT  # the prompt is not changed
    assert html.escape(expected) in ex.text_html.value and "temperature 0.9" in ex.text_html.value
    assert ex.generate() == expected  # same seed, same text
    ex.seed.value = 4
    assert ex.generate() != expected
    ex.prompt.value = "a dog"
    assert ex.continuation == ""  # a new prompt forgets the old continuation


def test_generate_stops_at_the_context_window(gpt, tok):
    ex = make(gpt, tok, max_new_tokens=50)
    ids = ex.input_ids
    room = CONTEXT - len(ids)
    out = generate(gpt, torch.tensor([ids]), max_new_tokens=room, do_sample=True, seed=0)[0].tolist()
    assert len(out) == CONTEXT  # (no end-of-text token in this one)
    assert ex.generate() == tok.decode(out[len(ids):])  # only the tokens that fit
    assert f"Only {room} new tokens fit the context window of {CONTEXT}" in ex.notice
    assert "context window" in ex.text_html.value


def test_a_full_context_window_and_bad_prompts_are_shown_not_raised(gpt, tok):
    ex = make(gpt, tok)
    # exactly CONTEXT tokens: the next token can still be predicted, but nothing can be appended
    ids = tok.encode("the cat sat on the mat. " * 10)[:CONTEXT]
    full = tok.decode(ids)
    assert tok.encode(full) == ids  # cut at a word boundary: the text re-encodes to the same ids
    ex.prompt.value = full
    assert ex.error is None and len(ex.input_ids) == CONTEXT
    assert ex.step() is None and "context window is full" in ex.notice and len(ex.input_ids) == CONTEXT
    assert ex.generate() == "" and "is full" in ex.notice

    ex.prompt.value = full + " the cat sat"  # typed by a student: no exception, a message
    assert "context window of 32 tokens" in ex.error
    assert "Cannot show the next-token distribution" in ex.message.value
    assert ex.png == b"" and ex.distributions is None and ex.kept_tokens is None and ex.entropy_bits is None
    assert ex.step() is None and ex.generate() == ""
    ex.temperature.value = 0.5  # other controls still work
    ex.show(prompt="")  # via show(): shown, not raised
    assert "empty" in ex.error and ex.png == b""
    ex.prompt.value = PROMPT  # back to normal
    assert ex.error is None and ex.png and ex.distributions["temperature"] is not None


def test_show_rejects_invalid_values_and_changes_nothing(gpt, tok):
    ex = make(gpt, tok).show(temperature=0.8, top_k=5)
    png, state = ex.png, (ex.temperature.value, ex.top_k.value, ex.top_p.value, ex.prompt.value)
    for bad, match in [
        (dict(temperature=0), r"temperature must be a number in \[0\.05, 2\], got 0\.0"),
        (dict(temperature=-1.0), "greedy decoding"),
        (dict(temperature=2.5), r"in \[0\.05, 2\], got 2\.5"),
        (dict(top_k=-1), r"top_k must be an integer in \[0, 100\], got -1: 0 turns top-k off"),
        (dict(top_k=101), r"\[0, 100\]"),
        (dict(top_p=0.0), r"top_p must be a number in \[0\.05, 1\], got 0\.0"),
        (dict(top_p=1.5), r"top_p .* got 1\.5"),
        (dict(repetition_penalty=0.5), r"\[1, 2\], got 0\.5: 1 = no penalty"),
        (dict(seed=-3), "seed"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(prompt="new text", temperature=5.0), "temperature"),  # the prompt is not applied either
    ]:
        with pytest.raises(ValueError, match=match):
            ex.show(**bad)
    with pytest.raises(TypeError, match="top_k must be an integer"):
        ex.show(top_k=2.5)
    with pytest.raises(TypeError, match="prompt must be a str"):
        ex.show(prompt=3)
    assert ex.png == png
    assert (ex.temperature.value, ex.top_k.value, ex.top_p.value, ex.prompt.value) == state


def test_show_equals_setting_the_controls_one_by_one_and_draws_once(gpt, tok, monkeypatch):
    import llm_course.widgets.sampling_explorer as module

    drawn = []
    monkeypatch.setattr(module, "figure_to_png", lambda fig, **kw: drawn.append(1) or figure_to_png(fig, **kw))
    a = make(gpt, tok)
    assert len(drawn) == 1
    a.show(prompt="a dog sat", temperature=0.6, top_k=15, top_p=0.85, repetition_penalty=1.3, seed=2)
    assert len(drawn) == 2  # one picture for five changes
    b = make(gpt, tok)
    b.prompt.value = "a dog sat"
    b.temperature.value, b.top_k.value, b.top_p.value, b.repetition_penalty.value = 0.6, 15, 0.85, 1.3
    assert a.png == b.png and a.kept_tokens == b.kept_tokens and a.message.value == b.message.value


def test_constructor_errors(gpt, tok):
    with pytest.raises(TypeError, match="nn.Module"):
        SamplingExplorer("gpt2", tok)
    with pytest.raises(TypeError, match="tokenizer"):
        SamplingExplorer(gpt, None)
    with pytest.raises(ValueError, match="temperature"):
        SamplingExplorer(gpt, tok, temperature=0.0)
    with pytest.raises(ValueError, match="top_n"):
        SamplingExplorer(gpt, tok, top_n=0)
    with pytest.raises(TypeError, match="eos_token_id"):
        SamplingExplorer(gpt, tok, eos_token_id="<|endoftext|>")


def test_the_prompt_is_plain_text_and_the_page_is_escaped(gpt, tok, eos):
    prompt = "<b>cat</b> & <|endoftext|>"
    ex = make(gpt, tok, prompt)
    assert eos not in ex.input_ids  # typing the special token's text does not make the control token
    assert ex.input_ids == tok.encode(prompt, allowed_special="none")
    assert "&lt;b&gt;cat&lt;/b&gt; &amp; &lt;|endoftext|&gt;" in ex.text_html.value
    assert "<b>cat</b>" not in ex.text_html.value


def test_only_core_widgets_that_ipywidgets_7_and_8_both_have(gpt, tok):
    ex = make(gpt, tok)
    core = {"VBox", "HBox", "Textarea", "FloatSlider", "IntSlider", "BoundedIntText", "Button", "HTML", "Image"}

    def walk(w):
        yield w
        for child in getattr(w, "children", ()):
            yield from walk(child)

    found = list(walk(ex))
    assert {type(w).__name__ for w in found[1:]} <= core
    assert {w._model_module for w in found} <= {"@jupyter-widgets/controls", "@jupyter-widgets/base"}


# --------------------------------------------------------------------------------------
# transformers models
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_tok(tok) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tok.to_hf_tokenizer())


def test_a_random_transformers_model(tok, hf_tok):
    torch.manual_seed(1)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=CONTEXT, n_embd=32, n_layer=2, n_head=2,
                                       bos_token_id=None, eos_token_id=None))
    ex = SamplingExplorer(model, hf_tok, PROMPT, temperature=0.7, top_p=0.9, seed=2, max_new_tokens=6, dpi=DPI)
    ids = ex.input_ids
    assert ids == tok.encode(PROMPT, allowed_special="none")
    expected = next_token_distributions(logits_of(model, ids), torch.tensor(ids),
                                        GenerationConfig(do_sample=True, temperature=0.7, top_p=0.9))
    for stage in STAGES:
        torch.testing.assert_close(ex.distributions[stage], expected[stage], atol=1e-6, rtol=1e-5)
    out = generate(model, torch.tensor([ids]), max_new_tokens=6, do_sample=True, temperature=0.7, top_p=0.9,
                   seed=2)[0].tolist()
    assert ex.eos_token_id is None  # this tokenizer names no end-of-text token
    assert ex.generate() == hf_tok.decode(out[len(ids):])
    ex.step()
    assert ex.input_ids == out[: len(ids) + 1]  # the first step draws generate's first token
    ex.prompt.value = "<|endoftext|>"
    assert tok.special_tokens["<|endoftext|>"] not in ex.input_ids  # plain text here too


def test_the_course_model_and_its_transformers_twin_show_the_same(gpt, tok, hf_tok):
    hf = gpt.to_hf()
    settings_ = dict(temperature=0.8, top_k=30, top_p=0.95, repetition_penalty=1.3)
    ours, theirs = make(gpt, tok, **settings_), SamplingExplorer(hf, hf_tok, PROMPT, dpi=DPI, **settings_)
    for stage in STAGES:
        torch.testing.assert_close(ours.distributions[stage], theirs.distributions[stage], atol=1e-5, rtol=1e-4)
    assert ours.kept_tokens == theirs.kept_tokens and ours.shown_labels == theirs.shown_labels
