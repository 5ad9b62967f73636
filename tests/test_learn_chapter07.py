"""Chapter 07's learning material: references equal to the library, checkers that reject typical mistakes. Issue 18."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from llm_course.infer import logits_processors as lp
from llm_course.infer.generation import generate
from llm_course.learn import chapter07 as ch07
from llm_course.learn.feedback import FAILED, NOT_ATTEMPTED
from llm_course.models.gpt import GPT, GPTConfig
from llm_course.nn.quant_formats import int8_dequantize, int8_quantize
from llm_course.nn.quantization import Int8Linear, model_size_bytes

pytestmark = pytest.mark.usefixtures("one_thread")
EX = ch07.EXERCISES
SENTENCE = "a sentence of several words"


def _cases(name):
    return EX[name].all_cases()


def _tiny_gpt(seed: int = 0, n_positions: int = 48) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=97, n_positions=n_positions, n_embd=32, n_layer=2, n_head=2)).eval()
    with torch.no_grad():  # peakier next-token distributions than the tiny init gives: decoding choices matter
        model.wte.weight.mul_(8)
    return model


# ---------------------------------------------------------------------------------------------------
# The references are the library (and transformers), on every checker input
# ---------------------------------------------------------------------------------------------------


def test_filter_references_equal_the_library_and_transformers():
    for case in _cases("top_k_filter"):
        logits, k = case.args
        ours = ch07.top_k_filter(logits, k)
        assert torch.equal(ours, lp.top_k_filter(logits, k)), case
        if k:
            ids = torch.zeros(logits.shape[0], 1, dtype=torch.long)
            assert torch.equal(ours, TopKLogitsWarper(k)(ids, logits.clone())), case
    for case in _cases("top_p_filter"):
        logits, p = case.args
        ours = ch07.top_p_filter(logits, p)
        assert torch.equal(ours, lp.top_p_filter(logits, p)), case
        assert torch.equal(ours, TopPLogitsWarper(p)(torch.zeros(1, 1, dtype=torch.long), logits.clone())), case
    rng = np.random.default_rng(1)
    for t in (0.1, 0.7, 1.0, 1.3, 4.0):
        logits = torch.from_numpy(rng.normal(0, 3, size=(2, 30)).astype(np.float32))
        ours = ch07.apply_temperature(logits, t)
        assert torch.equal(ours, lp.apply_temperature(logits, t))
        assert torch.equal(ours, TemperatureLogitsWarper(t)(torch.zeros(2, 1, dtype=torch.long), logits.clone()))


def test_top_p_edge_cases_closed_form():
    crossing = _cases("top_p_filter")[0].args[0]  # probabilities 0.3, 0.05, 0.5, 0.15
    kept = lambda logits, p: torch.isfinite(ch07.top_p_filter(logits, p)[0]).nonzero()[:, 0].tolist()  # noqa: E731
    assert kept(crossing, 0.7) == [0, 2] and kept(crossing, 0.9) == [0, 2, 3] and kept(crossing, 0.4) == [2]
    assert kept(crossing, 1.0) == [0, 1, 2, 3]


def test_int8_reference_equals_the_library():
    for case in _cases("int8_absmax"):
        (w,) = case.args
        q, scale = ch07.int8_absmax(w)
        q_lib, scale_lib = int8_quantize(w)
        assert torch.equal(q, q_lib) and torch.equal(scale, scale_lib), case
        assert torch.equal(ch07.int8_dequantize(q, scale), int8_dequantize(q_lib, scale_lib))
        assert (ch07.int8_dequantize(q, scale) - w).abs().le(scale[:, None] / 2 + 1e-7).all()  # half a step at most


def _beam_search_with(step, model, prompt, k, n, eos_id):
    """Beam search (early_stopping=True, length_penalty 1) built from one step function, as the lesson's."""
    beams, scores, finished = prompt, torch.zeros(1), []
    for length in range(1, n + 1):
        with torch.no_grad():
            log_probs = model(input_ids=beams).logits[:, -1].float().log_softmax(-1)
        V = log_probs.shape[-1]
        top, index = torch.topk((scores[:, None] + log_probs).reshape(-1), 2 * k)
        texts = torch.cat([beams[index // V], (index % V)[:, None]], dim=1)
        ends = (index % V == eos_id) | (length == n)
        finished += [(top[r].item() / length, texts[r]) for r in range(k) if ends[r]]
        if len(finished) >= k:
            break
        scores, beam, token = step(log_probs, scores, k, eos_id)
        beams = torch.cat([beams[beam], token[:, None]], dim=1)
    ended_by_eos = sum(int(text[-1]) == eos_id for _, text in finished)
    return max(finished, key=lambda f: f[0])[1], ended_by_eos


@pytest.mark.parametrize("k, n, eos_id", [(1, 8, 5), (2, 1, 5), (3, 12, 5), (4, 16, None), (3, 16, None)])
def test_beam_step_reproduces_the_librarys_beam_search(k, n, eos_id):
    """eos_id None: a token the model likes after that prompt, so that some texts end early (the eos rule)."""
    model = _tiny_gpt()
    rng = torch.Generator().manual_seed(k * 100 + n)
    finished_early = 0
    for T in (1, 3, 9):
        prompt = torch.randint(0, 97, (1, T), generator=rng)
        eos = eos_id if eos_id is not None else int(generate(model, prompt, max_new_tokens=4)[0, -1])
        ours, ended_by_eos = _beam_search_with(ch07.beam_step, model, prompt, k, n, eos)
        theirs = generate(model, prompt, max_new_tokens=n, num_beams=k, eos_token_id=eos, early_stopping=True)[0]
        assert torch.equal(ours, theirs), (T, ours, theirs)
        finished_early += ended_by_eos
    if eos_id is None:
        assert finished_early, "some texts must end with eos, so that the eos rule of beam_step is exercised"


# ---------------------------------------------------------------------------------------------------
# Each checker rejects a typical wrong answer, and accepts the reference
# ---------------------------------------------------------------------------------------------------


def _top_k_by_indices(logits, k):
    if not k:
        return logits
    keep = torch.topk(logits, min(k, logits.shape[-1])).indices  # exactly k: a token tied with the k-th goes
    return torch.full_like(logits, float("-inf")).scatter(-1, keep, logits.gather(-1, keep))


def _top_k_without_off_switch(logits, k):
    kth = torch.topk(logits, min(k, logits.shape[-1])).values[:, -1:]  # k = 0: topk of nothing
    return logits.masked_fill(logits < kth, float("-inf"))


def _top_p_cumsum_below_p(logits, p):
    sorted_logits, order = torch.sort(logits, descending=True)
    drop_sorted = sorted_logits.softmax(-1).cumsum(-1) >= p  # drops the token that crosses p (and can drop all)
    return logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))


def _top_p_cumsum_below_p_keeping_one(logits, p):
    sorted_logits, order = torch.sort(logits, descending=True)
    drop_sorted = sorted_logits.softmax(-1).cumsum(-1) >= p
    drop_sorted[:, 0] = False  # keeps one token, still drops the one that crosses p
    return logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))


def _top_p_unsorted(logits, p):
    probs = logits.softmax(-1)
    return logits.masked_fill(probs.cumsum(-1) - probs >= p, float("-inf"))  # forgot to sort


def _beam_ranking_by_token_only(log_probs, scores, k, eos_id):
    V = log_probs.shape[-1]
    top, index = torch.topk(log_probs.reshape(-1), 2 * k)  # forgot the beams' scores
    beams, tokens = index // V, index % V
    going_on = tokens != eos_id
    return (scores[beams] + top)[going_on][:k], beams[going_on][:k], tokens[going_on][:k]


def _beam_keeping_eos(log_probs, scores, k, eos_id):
    V = log_probs.shape[-1]
    top, index = torch.topk((scores[:, None] + log_probs).reshape(-1), k)  # an eos candidate carries on
    return top, index // V, index % V


def _beam_one_per_beam(log_probs, scores, k, eos_id):
    total = scores[:, None] + log_probs
    best, tokens = total.max(-1)  # each beam's best token: the k best may all come from one beam
    order = torch.argsort(best, descending=True)[:k]
    return best[order], order, tokens[order]


def _int8_per_tensor(w):
    scale = w.abs().max() / 127  # one scale for the whole matrix
    scales = torch.full((w.shape[0],), float(scale)) if scale > 0 else torch.ones(w.shape[0])
    return torch.round(w / scales[:, None]).to(torch.int8), scales


def _int8_by_128(w):
    absmax = w.abs().amax(dim=1)
    scale = torch.where(absmax > 0, absmax / 128, torch.ones_like(absmax))
    return torch.round(w / scale[:, None]).clamp(-128, 127).to(torch.int8), scale


def _int8_truncating(w):
    absmax = w.abs().amax(dim=1)
    scale = torch.where(absmax > 0, absmax / 127, torch.ones_like(absmax))
    return (w / scale[:, None]).to(torch.int8), scale  # truncates towards zero instead of rounding


def _int8_zero_row_nan(w):
    scale = w.abs().amax(dim=1) / 127
    return torch.round(w / scale[:, None]).to(torch.int8), scale


@pytest.mark.parametrize("name, wrong, words", [
    ("top_k_filter", _top_k_by_indices, ["a tie with the k-th best"]),
    ("top_k_filter", _top_k_without_off_switch, ["k = 0 turns top-k off", "raised"]),
    ("top_p_filter", _top_p_cumsum_below_p, ["the token that crosses p is kept", "at index (0, 0)", "got -inf"]),
    ("top_p_filter", _top_p_cumsum_below_p_keeping_one, ["the token that crosses p is kept"]),
    ("top_p_filter", _top_p_unsorted, ["differs"]),
    ("beam_step", _beam_ranking_by_token_only, ["rank by score + log-prob"]),
    ("beam_step", _beam_keeping_eos, ["it is finished, not kept"]),
    ("beam_step", _beam_one_per_beam, ["differs"]),
    ("int8_absmax", _int8_per_tensor, ["two rows, two scales"]),
    ("int8_absmax", _int8_by_128, ["differs"]),
    ("int8_absmax", _int8_truncating, ["differs"]),
    ("int8_absmax", _int8_zero_row_nan, ["a row of zeros"]),
    ("positions_without_cache", 50, ["number of forward passes"]),
    ("positions_without_cache", 59, ["WITH the cache"]),
    ("positions_without_cache", 1775, ["off by one"]),
    ("positions_without_cache", 3000, ["grows by one token"]),
    ("int8_layer_bytes", 4 * (768 * 3072 + 3072), ["float32 layer"]),
    ("int8_layer_bytes", 768 * 3072, ["codes only"]),
    ("int8_layer_bytes", 768 * 3072 + 4 * 3072, ["the bias"]),
    ("distinct_at_low_temperature", 0.87, ["outside the range"]),  # temperature 1.0's share
    ("distinct_at_low_temperature", 40 / 47, ["outside the range"]),
])
def test_each_chapter07_checker_rejects_a_typical_wrong_answer(name, wrong, words):
    result = EX.check(name, wrong, explanation=SENTENCE)
    assert result.status == FAILED
    for w in words:
        assert w in result.message, result.message


def test_the_cumsum_below_p_mistake_removes_every_token_when_one_token_exceeds_p():
    logits, p = next(c.args for c in _cases("top_p_filter") if "never removes every token" in c.note)
    assert torch.isinf(_top_p_cumsum_below_p(logits, p)).all()  # nothing left to sample from
    assert torch.isfinite(ch07.top_p_filter(logits, p)).sum() == 1


@pytest.mark.parametrize("name", ["top_k_filter", "top_p_filter", "beam_step", "int8_absmax"])
def test_each_chapter07_checker_accepts_the_reference_and_reports_a_stub(name):
    def stub(*args):
        raise NotImplementedError()

    assert EX.check(name, EX[name].reference).passed
    assert EX.check(name, stub).status == NOT_ATTEMPTED
    cases = EX[name].all_cases()
    assert sum(1 for c in cases if c.note) >= 4 and sum(1 for c in cases if not c.note) >= 15


def test_chapter07_value_exercises_hold_what_the_library_measures(shipped):
    model, tok = shipped
    fed = []
    hook = model.wte.register_forward_hook(lambda module, inputs, output: fed.append(inputs[0].numel()))
    prompt = torch.randint(0, tok.vocab_size, (1, 10), generator=torch.Generator().manual_seed(0))
    try:
        counts = {}
        for use_cache in (False, True):
            fed.clear()
            generate(model, prompt, max_new_tokens=50, use_cache=use_cache)
            counts[use_cache] = (sum(fed), len(fed))
    finally:
        hook.remove()
    assert counts == {False: (ch07.positions_fed(10, 50, False), 50), True: (ch07.positions_fed(10, 50, True), 50)}
    assert EX.check("positions_without_cache", counts[False][0]).passed
    assert EX.check("int8_layer_bytes", model_size_bytes(Int8Linear.from_linear(nn.Linear(768, 3072)))).passed

    ids = torch.tensor([tok.encode("If the file does not exist,")])
    shares = {}
    for t in (0.3, 1.0):
        news = [generate(model, ids, max_new_tokens=40, do_sample=True, temperature=t, seed=s)[0, ids.shape[1]:]
                for s in range(5)]
        shares[t] = float(np.mean([len(set(n.tolist())) / 40 for n in news]))
    assert EX.check("distinct_at_low_temperature", shares[0.3], explanation=SENTENCE).passed
    assert not EX.check("distinct_at_low_temperature", shares[1.0], explanation=SENTENCE).passed
    assert shares[1.0] > shares[0.3] + 0.2


def test_chapter07_quiz_answers_are_what_the_library_computes():
    quiz = ch07.quiz()
    assert 3 <= len(quiz) <= 5
    # 1: top-p 0.9 when the best token alone has probability 0.95 keeps exactly that token
    logits = torch.log(torch.tensor([[0.95, 0.03, 0.02]]))
    assert torch.isfinite(lp.top_p_filter(logits, 0.9)).sum() == 1
    # 2: transformers' max_length counts the prompt
    model = _tiny_gpt(n_positions=128)
    hf = model.to_hf().eval()
    prompt = torch.randint(0, 97, (1, 95), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_length=100, do_sample=False,
                          pad_token_id=0)
    assert quiz.answer(2, out.shape[1] - 95).passed and not quiz.answer(2, 100).passed
    # 3: the cache changes neither the ids nor the number of passes, only the positions each pass reads
    fed = []
    hook = model.wte.register_forward_hook(lambda module, inputs, output: fed.append(inputs[0].numel()))
    runs = {}
    for use_cache in (True, False):
        fed.clear()
        runs[use_cache] = (generate(model, prompt[:, :8], max_new_tokens=12, use_cache=use_cache), len(fed), sum(fed))
    hook.remove()
    assert torch.equal(runs[True][0], runs[False][0]) and runs[True][1] == runs[False][1] == 12
    assert runs[True][2] == 8 + 11 < runs[False][2]
    # 4: the bytes of an int8 4096 x 4096 weight with its per-row scales
    assert quiz.answer(4, model_size_bytes(Int8Linear.from_linear(nn.Linear(4096, 4096, bias=False)))).passed
    assert not quiz.answer(4, 4 * 4096 ** 2).passed
    # 5: softmax of [2, 0] / 0.5
    p = torch.softmax(lp.apply_temperature(torch.tensor([2.0, 0.0]), 0.5), -1)[0].item()
    assert quiz.answer(5, p).passed and not quiz.answer(5, 1 / (1 + math.exp(-2))).passed
    for number, right in [(1, "b"), (3, "c")]:
        q = quiz.questions[number - 1]
        assert [quiz.answer(number, k).passed for k in q.letters] == [k == right for k in q.letters]


# ---------------------------------------------------------------------------------------------------
# The lesson: the key lines on the page, each followed by its check against the library
# ---------------------------------------------------------------------------------------------------


def test_chapter07_key_lines_are_on_the_page_and_checked():
    nbformat = pytest.importorskip("nbformat")
    from llm_course.chapters import find_chapter

    nb = nbformat.read(find_chapter("07").notebook(), as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    checks = {"top_p_filter": "agree(top_p_filter, ", "greedy_with_cache": "agree(greedy_with_cache, ",
              "beam_search_k": "agree(beam_search_k, ", "int8_absmax": "agree(int8_roundtrip, "}
    for name, check in checks.items():
        i = next(i for i, s in enumerate(code) if f"def {name}(" in s)
        assert len(code[i].splitlines()) <= 30, f"the key-lines cell of {name} should be short enough to read"
        assert check in code[i + 1], f"the cell after {name}'s must check it against the library"
    filters = next(s for s in code if "def top_p_filter(" in s)
    assert "def apply_temperature(" in filters and "def top_k_filter(" in filters
    after = code[code.index(filters) + 1]
    for library in ("TopPLogitsWarper", "TopKLogitsWarper", "TemperatureLogitsWarper", "lp.top_p_filter"):
        assert library in after
