"""Tests for llm_course.apps.summarization (chapter 08): the docs summarisation task, ROUGE, T5 and TL;DR summaries."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scripted_lm import ScriptedLM  # tests/scripted_lm.py

from llm_course.apps.summarization import (
    MANUAL_PROMPT,
    TLDR_PROMPT,
    SummaryPair,
    _greedy_t5,
    encode_pair,
    lead_baseline,
    rouge_scores,
    summarize,
    summary_pairs,
    tldr_summarize,
)
from llm_course.apps.summarization_tuning import (
    SUMMARIZATION_TASK,
    Seq2SeqCollator,
    new_summarizer,
    summarization_tune,
)
from llm_course.models.gpt import GPT, GPTConfig
from llm_course.models.t5 import T5, T5Config
from llm_course.text.encoding import encode_plain

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pairs():
    return {split: summary_pairs(split) for split in ("train", "test", "all")}


def tiny_t5(vocab_size: int = 4096, seed: int = 0, **kw) -> T5:
    torch.manual_seed(seed)
    config = dict(vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, dropout_rate=0.0,
                  pad_token_id=0, eos_token_id=0, decoder_start_token_id=0)
    config.update(kw)
    return T5(T5Config(**config)).eval()


# ----------------------------------------------------------------------------------------
# ROUGE
# ----------------------------------------------------------------------------------------


def test_rouge_hand_checked_example():
    # reference "the cat sat on the mat", prediction "the cat lay on the mat" (6 words each):
    #   unigrams shared (clipped counts): the x2, cat, on, mat = 5  -> P = R = 5/6, F = 5/6
    #   bigrams: ref {the cat, cat sat, sat on, on the, the mat}, pred {the cat, cat lay, lay on, on the,
    #            the mat}: shared the cat, on the, the mat = 3 of 5 each -> F = 3/5
    #   longest common subsequence: "the cat on the mat" = 5 words -> F = 5/6
    scores = rouge_scores(["the cat lay on the mat"], ["the cat sat on the mat"])
    assert scores == pytest.approx({"rouge1": 5 / 6, "rouge2": 3 / 5, "rougeL": 5 / 6})
    # a short prediction: "the cat" vs the same reference: rouge1 P = 2/2, R = 2/6 -> F = 2PR/(P+R) = 1/2;
    # rouge2 P = 1/1, R = 1/5 -> F = 1/3; LCS "the cat" = 2 -> like rouge1. The result is the mean of the pairs.
    both = rouge_scores(["the cat lay on the mat", "The CAT."], ["the cat sat on the mat"] * 2)
    assert both == pytest.approx({"rouge1": (5 / 6 + 1 / 2) / 2, "rouge2": (3 / 5 + 1 / 3) / 2,
                                  "rougeL": (5 / 6 + 1 / 2) / 2})
    assert rouge_scores(["x"], ["x"], rouge_types=["rouge1"]) == {"rouge1": 1.0}


def test_rouge_cyrillic_needs_the_unicode_tokenizer():
    ref, pred = "Кот сидел на ковре.", "Кот лежал на ковре."
    with pytest.warns(UserWarning, match="tokenizer='unicode'"):
        default = rouge_scores([pred, ref], [ref, ref])
    assert default == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}  # no [a-z0-9] tokens: even ref vs ref is 0
    # unicode: кот сидел на ковре / кот лежал на ковре: 3 of 4 words, 1 of 3 bigrams, LCS "кот на ковре" = 3
    unicode = rouge_scores([pred, ref], [ref, ref], tokenizer="unicode")
    assert unicode == pytest.approx({"rouge1": (3 / 4 + 1) / 2, "rouge2": (1 / 3 + 1) / 2, "rougeL": (3 / 4 + 1) / 2})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # English text: no warning
        rouge_scores(["the cat"], ["the cat sat"])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(alphabet="abc xy09,.-", max_size=30), min_size=2, max_size=2))
def test_unicode_tokenizer_agrees_with_default_on_ascii(texts):
    pred, ref = texts
    assert rouge_scores([pred], [ref], tokenizer="unicode") == pytest.approx(rouge_scores([pred], [ref]))


def test_rouge_errors():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        rouge_scores(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no predictions"):
        rouge_scores([], [])
    with pytest.raises(TypeError, match="predictions must be a list"):
        rouge_scores("the cat", "the cat")
    with pytest.raises(TypeError, match=r"references\[1\] is a NoneType"):
        rouge_scores(["a", "b"], ["a", None])
    with pytest.raises(ValueError, match="tokenizer must be"):
        rouge_scores(["a"], ["a"], tokenizer="nltk")
    with pytest.raises(ValueError, match="rouge_types"):
        rouge_scores(["a"], ["a"], rouge_types=["bleu"])
    with pytest.raises(ValueError, match="stemmer"):
        rouge_scores(["a"], ["a"], tokenizer="unicode", use_stemmer=True)


# ----------------------------------------------------------------------------------------
# The task and the lead baseline
# ----------------------------------------------------------------------------------------


def test_pairs_split_is_disjoint_deterministic_and_about_one_in_ten(pairs):
    train, test, every = pairs["train"], pairs["test"], pairs["all"]
    assert summary_pairs("test") == test  # deterministic
    assert not {p.name for p in train} & {p.name for p in test}
    assert not {p.target for p in train} & {p.target for p in test}  # repeated summaries are dropped
    assert sorted(train + test, key=lambda p: p.name) == sorted(every, key=lambda p: p.name)
    assert 0.07 < len(test) / len(every) < 0.13
    assert len(every) > 2000


def test_pairs_targets_are_not_in_their_sources(pairs):
    for p in pairs["all"]:
        assert isinstance(p, SummaryPair)
        title, body = p.source.split("\n", 1)
        assert p.target not in p.source
        assert 20 <= len(p.target) <= 200 and "\n" not in p.target
        assert 80 <= len(body) <= 600 and "\n" not in body and body == body.strip()
    json_dumps = next(p for p in pairs["all"] if p.name == "json.dumps")
    assert json_dumps.source.startswith("json.dumps\n")
    assert json_dumps.target == "Serialize ``obj`` to a JSON formatted ``str``."


def test_pairs_cut_sources_at_word_boundaries():
    short = summary_pairs("test", max_source_chars=100)
    full = {p.name: p for p in summary_pairs("test")}
    for p in short:
        body, full_body = p.source.split("\n", 1)[1], full[p.name].source.split("\n", 1)[1]
        assert len(body) <= 100 and full_body.startswith(body)
        assert len(body) == len(full_body) or full_body[len(body)] == " "
    with pytest.raises(ValueError, match="max_source_chars"):
        summary_pairs("train", max_source_chars=10)
    with pytest.raises(ValueError, match="split"):
        summary_pairs("validation")


def test_lead_baseline():
    source = "json.dumps\nThe first sentence, e.g. this one. The second sentence.\nNot read."
    assert lead_baseline(source) == "The first sentence, e.g. this one."
    assert lead_baseline("No title line here. Second.") == "No title line here."
    with pytest.raises(ValueError, match="empty"):
        lead_baseline("  ")
    with pytest.raises(ValueError, match="no body"):
        lead_baseline("A title\n   ")


def test_lead_baseline_is_the_first_sentence_of_the_rest(pairs):
    # the source body is the entry's body without its first sentence, so the lead is its second sentence
    p = next(p for p in pairs["all"] if p.name == "json.dumps")
    assert lead_baseline(p.source) == p.source.split("\n", 1)[1].split(". ")[0] + "."


# ----------------------------------------------------------------------------------------
# Encoding and training
# ----------------------------------------------------------------------------------------


def test_encode_pair_and_collator(tok):
    eos = tok.token_to_id("<|endoftext|>")
    enc = encode_pair(tok, ("a source <|endoftext|> text", "The summary."))
    assert enc["input_ids"] == encode_plain(tok, "a source <|endoftext|> text") + [eos]  # typed special = text
    assert enc["labels"] == encode_plain(tok, "The summary.") + [eos]
    cut = encode_pair(tok, SummaryPair("x", "one two three four five six", "t."), max_source_tokens=3)
    assert cut["input_ids"] == encode_plain(tok, "one two three four five six")[:2] + [eos]
    batch = Seq2SeqCollator(eos)([enc, cut])
    assert batch["input_ids"].shape == (2, len(enc["input_ids"]))
    assert batch["input_ids"][1].tolist() == cut["input_ids"] + [eos] * (len(enc["input_ids"]) - 3)
    assert batch["attention_mask"].sum(1).tolist() == [len(enc["input_ids"]), 3]
    assert batch["labels"][1].tolist() == cut["labels"] + [-100] * (len(enc["labels"]) - len(cut["labels"]))
    with pytest.raises(ValueError, match="empty"):
        encode_pair(tok, ("source", " "))
    with pytest.raises(ValueError, match="empty list"):
        Seq2SeqCollator(eos)([])


def test_training_lowers_the_loss(tok):
    data = [SummaryPair(f"f{i}", f"module.f{i}\nIt computes the {w} of its argument. Some more words.",
                        f"Return the {w}.") for i, w in enumerate(["sum", "mean", "square", "length"])]
    model = new_summarizer(tok, d_model=32, num_layers=1, num_heads=2, d_ff=64, dropout_rate=0.0)
    result = summarization_tune(model, tok, data, steps=40, batch_size=4, lr=1e-2, eval_pairs=data[:2], progress=False)
    assert len(result.losses) == 40 and not model.training
    assert result.losses[0] > 7.5  # about ln(4096) = 8.3 at the start
    assert result.losses[-1] < 0.5 * result.losses[0]
    assert result.evals[-1]["loss"] < 0.5 * result.losses[0]


# ----------------------------------------------------------------------------------------
# The model: tokens, embeddings, round trip through transformers
# ----------------------------------------------------------------------------------------


def test_new_summarizer_special_ids_embeddings_and_round_trip(tok, shipped):
    gpt = shipped[0]
    model = new_summarizer(tok, embeddings_from=gpt)
    c = model.config
    assert c.vocab_size == 4096 and c.pad_token_id == c.eos_token_id == c.decoder_start_token_id == 0
    wte = gpt.wte.weight.float()
    torch.testing.assert_close(model.shared.weight, wte / wte.std())
    again = T5.from_hf(model.to_hf()).eval()
    ids = torch.tensor([[5, 6, 7, 0]])
    model.eval()
    torch.testing.assert_close(again(ids, decoder_input_ids=ids).logits, model(ids, decoder_input_ids=ids).logits)
    with pytest.raises(ValueError, match="embedding"):
        new_summarizer(tok, d_model=64, embeddings_from=gpt)
    with pytest.raises(ValueError, match="divisible"):
        new_summarizer(tok, d_model=30, num_heads=4)


# ----------------------------------------------------------------------------------------
# summarize: greedy decoding with the cache == transformers' generate == no-cache loop
# ----------------------------------------------------------------------------------------


def greedy_without_cache(model: T5, input_ids, attention_mask, max_new_tokens: int) -> list[list[int]]:
    """The slow reference: re-run the whole model on the whole decoder prefix every step; stop at eos."""
    rows = []
    for ids, mask in zip(input_ids, attention_mask):
        dec = [model.config.decoder_start_token_id]
        for _ in range(max_new_tokens):
            logits = model(ids[None], mask[None], decoder_input_ids=torch.tensor([dec])).logits
            dec.append(int(logits[0, -1].argmax()))
            if dec[-1] == model.config.eos_token_id:
                break
        rows.append(dec[1:])
    return rows


def strip_padding(row: list[int], eos: int) -> list[int]:
    return row[: row.index(eos) + 1] if eos in row else row


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_t5_equals_transformers_generate_and_no_cache_loop(seed):
    model = tiny_t5(vocab_size=12, seed=seed)  # a small vocabulary: eos (0) comes up in some rows, not others
    hf = model.to_hf().eval()
    gen = torch.Generator().manual_seed(seed)
    lengths = [7, 3, 5, 1]
    right = torch.zeros(4, 7, dtype=torch.long)
    for i, n in enumerate(lengths):
        right[i, :n] = torch.randint(1, 12, (n,), generator=gen)
    mask = (torch.arange(7)[None] < torch.tensor(lengths)[:, None]).long()
    left = torch.stack([r.roll(7 - n) for r, n in zip(right, lengths)])
    left_mask = torch.stack([m.roll(7 - n) for m, n in zip(mask, lengths)])
    ours = _greedy_t5(model, right, mask, max_new_tokens=10)
    reference = greedy_without_cache(model, right, mask, 10)
    assert [strip_padding(r, 0) for r in ours.tolist()] == reference
    for ids, m in ((right, mask), (left, left_mask)):
        out = hf.generate(input_ids=ids, attention_mask=m, max_new_tokens=10, num_beams=1, do_sample=False,
                          eos_token_id=0, pad_token_id=0, decoder_start_token_id=0)
        assert out[:, 0].tolist() == [0] * 4  # the decoder start
        assert out[:, 1:].tolist() == ours.tolist()


def test_greedy_reference_sees_both_stopped_and_unstopped_rows():
    # the equality test above is only worth something if some rows stop early (eos) and others do not
    stopped = []
    for seed in (0, 1, 2):
        model = tiny_t5(vocab_size=12, seed=seed)
        ids = torch.randint(1, 12, (4, 5), generator=torch.Generator().manual_seed(seed))
        stopped += [0 in row for row in _greedy_t5(model, ids, torch.ones_like(ids), 10).tolist()]
    assert any(stopped) and not all(stopped)


def test_summarize_course_t5_equals_its_transformers_twin(tok):
    model = tiny_t5()
    texts = ["json.dumps\nSerialize an object to a string.", "short", "Привет, мир! " * 5]
    ours = summarize(model, tok, texts, max_new_tokens=8)
    assert ours == summarize(model.to_hf(), tok, texts, max_new_tokens=8)
    assert isinstance(ours, list) and len(ours) == 3
    assert summarize(model, tok, texts[0], max_new_tokens=8) == ours[0]  # one string in, one out
    assert summarize(model, tok, texts, max_new_tokens=8, batch_size=1) == ours  # padding changes nothing
    # the summary is the decoding of the generated ids, from the no-cache reference
    enc = [encode_pair(tok, (t, "x")) for t in texts]
    batch = Seq2SeqCollator(0)(enc)
    ref_ids = greedy_without_cache(model, batch["input_ids"], batch["attention_mask"], 8)
    assert ours == [tok.decode([i for i in r if i != 0]).strip() for r in ref_ids]


def test_summarize_truncates_long_sources(tok):
    model = tiny_t5()
    long_text = "word " * 400
    ids = encode_plain(tok, long_text)
    assert len(ids) > 300
    # only the first max_source_tokens - 1 tokens are read: what follows them changes nothing
    a = summarize(model, tok, long_text, max_source_tokens=16)
    b = summarize(model, tok, tok.decode(ids[:15]) + " completely different ending", max_source_tokens=16)
    assert a == b


def test_summarize_bad_input(tok, shipped):
    model = tiny_t5()
    with pytest.raises(ValueError, match=r"texts\[1\] is empty"):
        summarize(model, tok, ["fine", "  \n"])
    with pytest.raises(ValueError, match="empty"):
        summarize(model, tok, "")
    with pytest.raises(ValueError, match="texts is empty"):
        summarize(model, tok, [])
    with pytest.raises(TypeError, match=r"texts\[0\] must be a string"):
        summarize(model, tok, [3])
    with pytest.raises(ValueError, match="max_new_tokens"):
        summarize(model, tok, ["text"], max_new_tokens=0)
    with pytest.raises(TypeError, match="tldr_summarize"):
        summarize(shipped[0], tok, ["text"])


# ----------------------------------------------------------------------------------------
# tldr_summarize: a causal LM continues the prompt; the summary comes from the generated ids
# ----------------------------------------------------------------------------------------


def collapsing_tokenizer(tok):
    """The course tokenizer, but decode() tidies white space (as some tokenizers' clean-up does), so
    decode(encode(prompt)) != prompt and slicing the decoded text at len(prompt) goes wrong."""

    class Collapsing(type(tok)):
        def decode(self, ids):
            return " ".join(super().decode(ids).split(" ")).replace("  ", " ")

    copy = Collapsing.__new__(Collapsing)
    copy.__dict__.update(tok.__dict__)
    return copy


def test_tldr_takes_the_generated_ids_up_to_eos_and_the_first_line(tok):
    eos = tok.token_to_id("<|endoftext|>")
    answer = " It returns the  sum.\nSecond line"
    script = encode_plain(tok, answer) + [eos] + encode_plain(tok, " never shown")
    model = ScriptedLM(script, n_positions=384)
    text = "def f(x):  return sum(x)"
    assert tldr_summarize(model, tok, text) == "It returns the  sum."
    assert model.steps == len(encode_plain(tok, answer)) + 1  # stopped at the end-of-text id
    prompt = model.prompts[0][0].tolist()
    assert prompt == encode_plain(tok, text) + encode_plain(tok, "\n\nTL;DR:")
    assert tok.decode(prompt) == TLDR_PROMPT.format(text=text)


def test_tldr_does_not_slice_the_decoded_prompt(tok):
    eos = tok.token_to_id("<|endoftext|>")
    script = encode_plain(tok, " Adds  two numbers.") + [eos]
    collapsing = collapsing_tokenizer(tok)
    text = "def add(a,  b):    return a + b"  # double spaces: the tokenizer's decode() changes them
    ours = tldr_summarize(ScriptedLM(script, n_positions=384), collapsing, text, prompt=MANUAL_PROMPT)
    assert ours == "Adds two numbers."  # = decode(the generated ids), tidied by this tokenizer
    prompt = MANUAL_PROMPT.format(text=text)
    full = collapsing.decode(encode_plain(tok, prompt) + script[:-1])
    assert full[len(prompt):].strip() != ours  # the manual's decode(outputs[0])[len(prompt):] cuts elsewhere


def test_tldr_cuts_long_texts_at_their_end_keeping_the_cue(tok):
    eos = tok.token_to_id("<|endoftext|>")
    model = ScriptedLM([eos], n_positions=64)
    text = "The lead sentence matters. " + "filler words " * 100
    assert tldr_summarize(model, tok, [text], max_new_tokens=10) == [""]
    prompt = model.prompts[0][0].tolist()
    tail = encode_plain(tok, "\n\nTL;DR:")
    assert len(prompt) == 64 - 10 and prompt[-len(tail):] == tail
    assert prompt[: -len(tail)] == encode_plain(tok, text)[: 64 - 10 - len(tail)]
    with pytest.raises(ValueError, match="no room"):
        tldr_summarize(model, tok, [text], max_new_tokens=60)


def test_tldr_batch_equals_one_by_one(tok):
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=4096, n_positions=64, n_embd=32, n_layer=2, n_head=2)).eval()
    texts = ["A short one.", "A somewhat longer text that needs left padding in a batch.", "Кот сидел на ковре."]
    batched = tldr_summarize(gpt, tok, texts, max_new_tokens=6)
    assert batched == [tldr_summarize(gpt, tok, t, max_new_tokens=6) for t in texts]
    assert all(isinstance(s, str) and "\n" not in s for s in batched)


def test_tldr_bad_input(tok):
    model = ScriptedLM([0], n_positions=384)
    with pytest.raises(ValueError, match=r"texts\[0\] is empty"):
        tldr_summarize(model, tok, [""])
    with pytest.raises(ValueError, match="exactly once"):
        tldr_summarize(model, tok, ["text"], prompt="Summarize: ")
    with pytest.raises(ValueError, match="max_new_tokens"):
        tldr_summarize(model, tok, ["text"], max_new_tokens=0)
    with pytest.raises(ValueError, match="texts is empty"):
        tldr_summarize(model, tok, [])


# --------------------------------------------------------------------------------------------
# The zoo recipe (course-t5-sum)
# --------------------------------------------------------------------------------------------


def test_train_checkpoint_makes_a_summarizer_that_reloads_and_rescores(tmp_path):
    import json

    from llm_course.zoo import build, loading

    out = build.train_checkpoint("course-t5-sum", tmp_path / "t5", task=SUMMARIZATION_TASK, progress=False, steps=2,
                                 batch_size=4, eval_examples=8, threads=None, d_model=32, num_layers=1, d_ff=64,
                                 num_heads=2, init_embeddings=False)
    recipe = json.loads((out / "recipe.json").read_text(encoding="utf-8"))
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert recipe["hf_class"] == "T5ForConditionalGeneration" and recipe["steps"] == 2
    assert set(metrics["rouge_test"]["model"]) == {"rouge1", "rouge2", "rougeL"}
    model, tok = loading.load_pretrained(out)
    assert isinstance(model, T5)
    assert build.evaluate_checkpoint(out, task=SUMMARIZATION_TASK)["abs_diff"] < 1e-4
    sample = metrics["samples"][0]
    assert summarize(model, tok, [sample["source"]]) == [sample["summary"]]
    with pytest.raises(ValueError, match="unknown summarization recipe options"):
        build.train_checkpoint("course-t5-sum", tmp_path / "never", task=SUMMARIZATION_TASK, progress=False, steps=1,
                               d_modle=32)


def test_shipped_summarizer_reproduces_its_metrics():
    import json

    from llm_course.core import paths
    from llm_course.zoo import build, loading

    folder = paths.CHECKPOINTS_DIR / "course-t5-sum"
    if not (folder / "config.json").is_file():
        pytest.skip("course-t5-sum is not shipped: llm-course zoo train course-t5-sum --out " + str(folder))
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    assert build.evaluate_checkpoint("course-t5-sum", task=SUMMARIZATION_TASK)["abs_diff"] < 1e-4
    test = summary_pairs("test")
    lead = rouge_scores([lead_baseline(p.source) for p in test], [p.target for p in test])
    assert abs(100 * lead["rougeL"] - metrics["rouge_test"]["lead_baseline"]["rougeL"]) < 0.01
    model, tok = loading.load_pretrained("course-t5-sum")
    for sample in metrics["samples"]:
        assert summarize(model, tok, [sample["source"]]) == [sample["summary"]]
    assert metrics["held_out"]["loss"] < 5.5  # an untrained model of this vocabulary scores ~8.3 (ln 4096)
