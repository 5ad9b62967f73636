"""Chapter 04's recipe pieces (llm_course.train.pretraining): data, budgeted training, bits per character,
sampling, the double-shift experiment's accuracy, and BERT's masking statistics.

References are independent of the code under test: transformers' GPT-2 (greedy generation, losses),
transformers' DataCollatorForLanguageModeling (masking), and closed-form values."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

from llm_course.infer.generation import generate
from llm_course.models.bert import BERT, BERTConfig
from llm_course.models.gpt import GPT, GPTConfig
from llm_course.models.shape import ModelShape
from llm_course.nn.objectives import manual_causal_lm_labels, manual_mask_tokens
from llm_course.text.corpora import TextCorpus
from llm_course.text.tokenizer import ByteLevelBPETokenizer
from llm_course.train.loop import TrainConfig, train
from llm_course.train.masked_lm import bert_inputs, fill_mask, masking_stats, mlm_accuracy, mlm_batch
from llm_course.train.pretraining import (
    SampleLogger,
    TimeBudget,
    TokenizedCorpus,
    complete,
    fastest_threads,
    offset_accuracy,
    prepare_docs_tokens,
    pretrain_gpt,
    steps_for_budget,
    validation_bpc,
)
from llm_course.train.recipe import BERT_SPECIALS, EOT, PretrainRecipe, quick_gpt_recipe

TEXT = ("Return the number of items in the list. The function returns a new list.\n\n"
        "Open the file and return a stream. Raise an error if the file cannot be opened.\n\n") * 40
SMALL = PretrainRecipe(vocab_size=300, n_layer=1, n_head=2, n_embd=32, block_size=16, batch_size=8, lr=1e-2,
                       min_lr=1e-3, max_steps=40, warmup_steps=2, eval_interval=20, eval_steps=2, threads=1)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus() -> TextCorpus:
    return TextCorpus(train=TEXT, val="Return the list of items. Open the stream and return it.\n\n" * 4)


@pytest.fixture(scope="module")
def data(corpus) -> TokenizedCorpus:
    return prepare_docs_tokens(300, corpus)


@pytest.fixture(scope="module")
def bert_tok() -> ByteLevelBPETokenizer:
    return ByteLevelBPETokenizer.train([TEXT], vocab_size=300, special_tokens=BERT_SPECIALS)


def _gpt(vocab_size=300, T=16, seed=0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab_size, n_positions=T, n_embd=32, n_layer=2, n_head=2)).eval()


# ---------------------------------------------------------------- recipe and data


def test_recipe_builds_the_configs_and_rejects_bad_values():
    r = quick_gpt_recipe()
    assert r == PretrainRecipe() and r.time_budget_s > 0 and r.max_steps is None
    g = r.gpt_config(1000)
    shape = (g.vocab_size, g.n_positions, g.n_embd, g.n_layer, g.n_head)
    assert shape == (1000, r.block_size, r.n_embd, r.n_layer, r.n_head)
    t = r.train_config(200, device="cpu")
    assert (t.max_steps, t.lr, t.min_lr, t.warmup_steps, t.device) == (200, r.lr, r.min_lr, r.warmup_steps, "cpu")
    assert (t.eval_interval, t.eval_steps) == (r.eval_interval, r.eval_steps)  # TrainConfig's names, one to one
    assert r.train_config(20).warmup_steps == 20  # a run shorter than the warmup warms up over all of it
    with pytest.raises(ValueError, match="no max_steps"):
        r.train_config()  # a budget recipe: pretrain_gpt fits the steps
    assert isinstance(r, ModelShape) and r.model_config(1000) == g
    assert quick_gpt_recipe(time_budget_s=30).time_budget_s == 30
    for bad, match in [(dict(n_embd=130), "divisible"), (dict(block_size=1), "block_size"),
                       (dict(time_budget_s=0), "time_budget_s"), (dict(max_steps=0), "max_steps"),
                       (dict(min_lr=1.0), "min_lr"), (dict(batch_size=0), "batch_size"),
                       (dict(kind="seq2seq-lm"), "kind"), (dict(max_steps=None, time_budget_s=None), "max_steps or")]:
        with pytest.raises(ValueError, match=match):
            PretrainRecipe(**bad)


def test_prepare_docs_tokens_encodes_both_splits_losslessly(corpus, data):
    tok = data.tokenizer
    assert tok.vocab_size == 300 and EOT in tok.special_tokens
    assert tok.decode(data.train_ids.tolist()) == corpus.train  # the Rust encoding decodes back exactly
    assert tok.decode(data.val_ids.tolist()) == corpus.val
    assert data.val_ids.tolist() == tok.encode(corpus.val)  # and equals the course tokenizer's own encoding
    assert (data.train_chars, data.val_chars) == (len(corpus.train), len(corpus.val))
    assert data.chars_per_token == pytest.approx(len(corpus.val) / len(tok.encode(corpus.val)))
    assert data.chars_per_token > 2  # BPE: several characters per token on repetitive text
    with pytest.raises(TypeError, match="TextCorpus"):
        prepare_docs_tokens(300, "some text")
    with pytest.raises(ValueError, match="validation"):
        prepare_docs_tokens(300, TextCorpus(train=TEXT, val=""))


# ---------------------------------------------------------------- bits per character


def test_validation_bpc_matches_transformers_when_the_text_fits_one_window(corpus):
    val = "Return the list."
    d = prepare_docs_tokens(300, TextCorpus(train=TEXT, val=val))
    n = d.val_ids.numel()
    model = _gpt(T=n + 3)
    hf = model.to_hf().eval()
    with torch.no_grad():
        hf_loss = float(hf(d.val_ids[None], labels=d.val_ids[None]).loss)  # mean over the n - 1 targets
    m = validation_bpc(model, d)
    assert m["tokens"] == n - 1
    assert m["loss"] == pytest.approx(hf_loss, rel=1e-5)
    assert m["bits_per_char"] == pytest.approx(hf_loss * (n - 1) / (len(val) * math.log(2)), rel=1e-5)


def test_validation_bpc_scores_every_token_once_across_windows(data):
    model = _gpt(T=8)
    m = validation_bpc(model, data, batch_size=3)
    assert m["tokens"] == data.val_ids.numel() - 1
    # an untrained model is close to uniform: about ln(V) nats per token
    assert abs(m["loss"] - math.log(300)) < 0.5
    assert m["bits_per_char"] == pytest.approx(m["loss"] * m["tokens"] / (data.val_chars * math.log(2)), rel=1e-6)


# ---------------------------------------------------------------- budgeted training


def test_steps_for_budget_leaves_the_model_untouched(data):
    model = _gpt()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = {"input_ids": data.train_ids[:64].view(4, 16), "labels": data.train_ids[:64].view(4, 16)}
    steps = steps_for_budget(model, batch, seconds=0.5)
    assert isinstance(steps, int) and steps >= 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="seconds"):
        steps_for_budget(model, batch, seconds=0)


def test_time_budget_stops_training(data):
    model = _gpt()
    g = torch.Generator().manual_seed(0)
    from llm_course.nn.objectives import random_blocks

    cfg = TrainConfig(max_steps=100_000, warmup_steps=0, progress=False, live_plot=False, log_interval=0,
                      device="cpu")
    budget = TimeBudget(0.2)
    result = train(model, lambda i: random_blocks(data.train_ids, 2, 16, g), cfg, callbacks=[budget])
    assert result.stopped_early and 1 <= result.step < 100_000
    assert budget.elapsed > 0.2
    with pytest.raises(ValueError):
        TimeBudget(0)


def test_pretrain_gpt_learns_and_reports(data, capsys):
    torch.manual_seed(SMALL.seed)  # as pretrain_gpt seeds the model it builds itself
    model = GPT(SMALL.gpt_config(data.tokenizer.vocab_size))
    sampler = SampleLogger(model, data.tokenizer, "Return the", every=20, max_new_tokens=5)
    run = pretrain_gpt(SMALL, data, model=model, callbacks=[sampler], device="cpu", progress=False, live_plot=False)
    assert run.model is model and run.result.step == run.planned_steps == 40
    assert [s for s, _ in sampler.samples] == [1, 20, 40]
    assert "step   20: 'Return the" in capsys.readouterr().out
    uniform_bpc = math.log2(300) / data.chars_per_token
    assert run.val["bits_per_char"] < 0.5 * uniform_bpc  # it learned the (very repetitive) text
    assert run.val["tokens"] == data.val_ids.numel() - 1
    assert [e["step"] for e in run.result.evals] == [20, 40]
    assert run.tokens_per_sec > 0 and run.train_seconds > 0
    # the same recipe gives the same run (seeded weights and batches)
    again = pretrain_gpt(SMALL, data, device="cpu", progress=False, live_plot=False)
    assert again.result.losses == run.result.losses
    with pytest.raises(ValueError, match="gpt_config"):
        pretrain_gpt(SMALL, data, model=_gpt(T=32), progress=False, live_plot=False)
    with pytest.raises(TypeError, match="PretrainRecipe"):
        pretrain_gpt({"lr": 1e-3}, data)


def test_manual_double_shift_teaches_the_token_after_next():
    """A cyclic stream 0, 1, ..., 12, 0, 1, ...: correct labels learn t -> t+1, the manual's t -> t+2."""
    tok = ByteLevelBPETokenizer.train([TEXT], vocab_size=300)
    stream = torch.arange(13).repeat(200) + 20
    data = TokenizedCorpus(tok, stream, stream[:400], 1, 1)
    recipe = PretrainRecipe(vocab_size=300, n_layer=1, n_head=2, n_embd=32, block_size=16, batch_size=8, lr=1e-2,
                            min_lr=1e-3, max_steps=60, warmup_steps=3, eval_interval=60, eval_steps=1, threads=1)
    right = pretrain_gpt(recipe, data, device="cpu", progress=False, live_plot=False)
    manual = pretrain_gpt(recipe, data, labels_fn=manual_causal_lm_labels, device="cpu", progress=False,
                          live_plot=False)
    acc_right, acc_manual = offset_accuracy(right.model, stream), offset_accuracy(manual.model, stream)
    assert acc_right[1] > 0.95 and acc_right[2] < 0.1
    assert acc_manual[2] > 0.95 and acc_manual[1] < 0.1


def test_offset_accuracy_closed_form():
    """A model that always predicts token 5: accuracy at offset k = share of 5s among tokens k.. of each window."""
    model = _gpt(vocab_size=10, T=4)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.ln_f.bias[:] = 0
        model.ln_f.weight[:] = 0
        model.wte.weight[5, 0] = 1.0  # logits = ln_f(x) @ wte.T; make ln_f output e_0 via its bias
        model.ln_f.bias[0] = 1.0
    tokens = torch.tensor([5, 1, 5, 5, 2, 5, 3, 3])  # windows [5,1,5,5], [2,5,3,3]
    acc = offset_accuracy(model, tokens, offsets=(1, 2, 3))
    assert acc == {1: pytest.approx(3 / 6), 2: pytest.approx(2 / 4), 3: pytest.approx(1 / 2)}
    with pytest.raises(ValueError, match="offsets"):
        offset_accuracy(model, tokens, offsets=(4,))


# ---------------------------------------------------------------- sampling


def test_greedy_generate_matches_transformers_and_a_no_cache_loop():
    model = _gpt(T=12)
    prompt = torch.tensor([[3, 17, 42], [9, 9, 100]])
    ours = generate(model, prompt, max_new_tokens=6)
    hf = model.to_hf().eval()
    theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False,
                         pad_token_id=0)
    assert torch.equal(ours, theirs)
    # past n_positions the context is cut to the last 12 tokens: the same as recomputing each step
    long = generate(model, prompt, max_new_tokens=20, slide_context=True)
    ids = prompt
    with torch.no_grad():
        for _ in range(20):
            ids = torch.cat([ids, model(ids[:, -12:]).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(long, ids)


def test_sampling_is_seeded_and_top_k_1_is_greedy():
    model = _gpt()
    prompt = torch.tensor([[1, 2, 3]])
    a = generate(model, prompt, max_new_tokens=8, do_sample=True, seed=1)
    b = generate(model, prompt, max_new_tokens=8, do_sample=True, seed=1)
    assert torch.equal(a, b) and a.shape == (1, 11) and torch.equal(a[:, :3], prompt)
    assert torch.equal(generate(model, prompt, max_new_tokens=8, do_sample=True, top_k=1),
                       generate(model, prompt, max_new_tokens=8))
    with pytest.raises(ValueError, match="input_ids"):
        generate(model, torch.tensor([[[1, 2]]]), max_new_tokens=3)
    with pytest.raises(ValueError, match="temperature"):
        complete(model, None, "x", 3, temperature=-1)


def test_complete_decodes_only_the_new_tokens(data):
    model = _gpt(vocab_size=data.tokenizer.vocab_size)
    tok = data.tokenizer
    prompt = "Return the"
    ids = torch.tensor([tok.encode(prompt)])
    greedy = generate(model, ids, max_new_tokens=7)
    assert complete(model, tok, prompt, 7) == tok.decode(greedy[0, ids.shape[1]:].tolist())
    sampled = [complete(model, tok, prompt, 7, temperature=1.0, top_k=20, seed=s) for s in (1, 1, 2)]
    assert sampled[0] == sampled[1]  # seeded
    expected = generate(model, ids, max_new_tokens=7, do_sample=True, temperature=1.0, top_k=20, seed=2)
    assert sampled[2] == tok.decode(expected[0, ids.shape[1]:].tolist())
    # special-token text in a prompt stays text: it is never turned into the control token
    assert tok.special_tokens[EOT] not in tok.encode(EOT, allowed_special="none")
    complete(model, tok, EOT, 2)


# ---------------------------------------------------------------- masked LM


def test_mlm_accuracy_counts_top_guesses(bert_tok):
    torch.manual_seed(0)
    model = BERT(BERTConfig(vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=64,
                            pad_token_id=bert_tok.special_tokens["[PAD]"])).eval()
    batch = mlm_batch(bert_inputs(bert_tok, TEXT.split("\n\n")[:30]), bert_tok, 16, torch.Generator().manual_seed(0))
    r = mlm_accuracy(model, batch)
    with torch.no_grad():
        guess = model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits.argmax(-1)
    hidden = batch["labels"] != -100
    assert r["hidden"] == int(hidden.sum()) > 0
    assert r["accuracy"] == pytest.approx((guess[hidden] == batch["labels"][hidden]).float().mean().item())
    counts = torch.bincount(batch["labels"][hidden])
    assert r["baseline"] == pytest.approx(counts.max().item() / hidden.sum().item())
    # a model that always answers the most frequent hidden token scores exactly the baseline
    class Constant(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask=None):
            logits = torch.zeros(*input_ids.shape, 300)
            logits[..., counts.argmax()] = 1.0
            return type("Out", (), {"logits": logits})()
    assert mlm_accuracy(Constant(), batch)["accuracy"] == pytest.approx(r["baseline"])
    with pytest.raises(ValueError, match="hides no tokens"):
        mlm_accuracy(model, {**batch, "labels": torch.full_like(batch["labels"], -100)})


def test_bert_inputs_frames_and_pads(bert_tok):
    cls_id, sep_id, pad_id = (bert_tok.special_tokens[t] for t in ("[CLS]", "[SEP]", "[PAD]"))
    texts = ["Return the list.", "Open the file and return a stream.", "x" * 200]
    b = bert_inputs(bert_tok, texts, max_length=12)
    lengths = b["attention_mask"].sum(1).tolist()
    assert b["input_ids"].shape == (3, 12) and lengths[2] == 12
    for row, n, text in zip(b["input_ids"], lengths, texts):
        assert row[0] == cls_id and row[n - 1] == sep_id and (row[n:] == pad_id).all()
        assert bert_tok.decode(row[1 : n - 1].tolist()) == bert_tok.decode(bert_tok.encode(text)[: 10])
    with pytest.raises(ValueError, match=r"\[CLS\]"):
        bert_inputs(ByteLevelBPETokenizer.train([TEXT], vocab_size=300), texts)


def _big_bert_batch(tok, n=3000):
    words = TEXT.split()
    g = torch.Generator().manual_seed(0)
    texts = [" ".join(words[int(i): int(i) + int(k)]) for i, k in zip(torch.randint(0, 200, (n,), generator=g),
                                                                       torch.randint(1, 12, (n,), generator=g))]
    return bert_inputs(tok, texts, max_length=16)


def test_mask_statistics_ours_transformers_and_the_manual(bert_tok):
    from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerFast

    inputs = _big_bert_batch(bert_tok)
    ids, attn = inputs["input_ids"], inputs["attention_mask"]
    specials = [bert_tok.special_tokens[t] for t in BERT_SPECIALS]
    mask_id = bert_tok.special_tokens["[MASK]"]

    batch = mlm_batch(inputs, bert_tok, batch_size=ids.shape[0], generator=torch.Generator().manual_seed(0))
    # mlm_batch picks rows at random: recover the originals from the labels to measure
    original = torch.where(batch["labels"] != -100, batch["labels"], batch["input_ids"])
    ours = masking_stats(original, batch["input_ids"], batch["labels"], specials, mask_id, batch["attention_mask"])

    hf_tok = PreTrainedTokenizerFast(tokenizer_object=bert_tok.to_hf_tokenizer(), pad_token="[PAD]",
                                     cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    collator = DataCollatorForLanguageModeling(hf_tok, mlm=True, mlm_probability=0.15, seed=0)
    theirs_b = collator([{"input_ids": r[: int(n)].tolist()} for r, n in zip(ids, attn.sum(1))])
    theirs = masking_stats(ids, theirs_b["input_ids"], theirs_b["labels"], specials, mask_id, attn)

    g = torch.Generator().manual_seed(0)
    manual_ids, manual_labels = manual_mask_tokens(ids, mask_id, bert_tok.vocab_size, generator=g)
    manual = masking_stats(ids, manual_ids, manual_labels, specials, mask_id, attn)

    for s in (ours, theirs):
        assert s["selected"] == pytest.approx(0.15, abs=0.01)
        assert s["specials_selected"] == 0 and s["padding_selected"] == 0
        assert s["to_mask"] == pytest.approx(0.8, abs=0.02)
        assert s["to_random"] == pytest.approx(0.1, abs=0.02) and s["unchanged"] == pytest.approx(0.1, abs=0.02)
    assert manual["specials_selected"] == pytest.approx(0.15, abs=0.015)  # the manual's defect
    assert manual["padding_selected"] == pytest.approx(0.15, abs=0.015)


def test_masking_stats_closed_form():
    ids = torch.tensor([[1, 10, 11, 12, 13, 2, 0]])  # [CLS] a b c d [SEP] [PAD]
    attn = torch.tensor([[1, 1, 1, 1, 1, 1, 0]])
    masked = torch.tensor([[3, 3, 50, 12, 13, 2, 3]])  # [CLS]->[MASK], a->[MASK], b->random, c kept
    labels = torch.tensor([[1, 10, 11, 12, -100, -100, 0]])
    s = masking_stats(ids, masked, labels, special_ids=[0, 1, 2, 3], mask_token_id=3, attention_mask=attn)
    assert s["selected"] == pytest.approx(3 / 4)
    assert s["specials_selected"] == pytest.approx(1 / 2)  # [CLS] of {[CLS], [SEP]}
    assert s["padding_selected"] == 1.0
    assert (s["to_mask"], s["to_random"], s["unchanged"]) == (pytest.approx(3 / 5), pytest.approx(1 / 5),
                                                               pytest.approx(1 / 5))


def test_fill_mask_returns_the_models_top_guesses(bert_tok):
    torch.manual_seed(0)
    model = BERT(BERTConfig(vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=64,
                            pad_token_id=bert_tok.special_tokens["[PAD]"])).eval()
    text = "Return the number of items."
    guesses = fill_mask(model, bert_tok, text, " the", k=4)
    ids = bert_inputs(bert_tok, [text])["input_ids"]
    pos = ids[0].tolist().index(bert_tok.encode(" the")[0])
    ids[0, pos] = bert_tok.special_tokens["[MASK]"]
    with torch.no_grad():
        probs = F.softmax(model(ids).logits[0, pos], -1)
    top = torch.topk(probs, 4)
    assert [g[0] for g in guesses] == [bert_tok.decode([int(i)]) for i in top.indices]
    assert [g[1] for g in guesses] == pytest.approx(top.values.tolist(), rel=1e-5)
    with pytest.raises(ValueError, match="leading space"):
        fill_mask(model, bert_tok, text, " file")
    with pytest.raises(ValueError, match="tokens"):
        fill_mask(model, bert_tok, text, " Returnnumber")


def test_fastest_threads_picks_one_of_the_candidates_and_sets_it(data):
    model = _gpt()
    batch = {"input_ids": data.train_ids[:64].view(4, 16), "labels": data.train_ids[:64].view(4, 16)}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert fastest_threads(model, batch, candidates=[1]) == 1 == torch.get_num_threads()
    best = fastest_threads(model, batch)
    assert best in {1, os.cpu_count()} and torch.get_num_threads() == best
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="candidates"):
        fastest_threads(model, batch, candidates=[0])


def test_recipe_precision_reaches_the_training_loop():
    """PRECISION in notebook 04: the recipe's precision is the TrainConfig's; a wrong one is refused."""
    assert quick_gpt_recipe(precision="auto").train_config(10).precision == "auto"
    assert quick_gpt_recipe().train_config(10).precision == "fp32"
    with pytest.raises(ValueError, match="precision must be one of"):
        quick_gpt_recipe(precision="half")
