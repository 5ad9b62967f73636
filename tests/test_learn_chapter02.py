"""llm_course.learn.chapter02: the references agree with the library and transformers, each checker rejects a
typical wrong answer (the manual's construction included), the numbers of the quiz and the exercises are what
the library computes, and the lesson shows its key lines checked. Issue 18."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llm_course.learn import chapter02 as ch02
from llm_course.learn.checker import Case, agree
from llm_course.learn.feedback import FAILED, NOT_ATTEMPTED
from llm_course.models.bert import BERT, BERTConfig
from llm_course.models.gpt import GPT, GPTConfig
from llm_course.models.manual_ch02 import ManualBERTModel, ManualCustomGPT, future_token_influence
from llm_course.models.t5 import relative_position_bucket

SENTENCE = "a sentence of several words explaining it"

# ---------------------------------------------------------------------------------------------------
# The references against the library and transformers
# ---------------------------------------------------------------------------------------------------


def test_pre_ln_block_is_the_librarys_gpt_block():
    assert agree(ch02.pre_ln_block, ch02.library_gpt_block, ch02.gpt_block_cases(np.random.default_rng(1)),
                 rtol=1e-6, atol=1e-6) >= 20


def test_pre_ln_blocks_chained_give_gpt2s_hidden_states():
    """An independent reference: transformers' GPT2Model, with the course GPT's weights."""
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=50, n_positions=16, n_embd=32, n_layer=3, n_head=4)).eval()
    hf = gpt.to_hf().eval()
    ids = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        x = gpt.wte(ids) + gpt.wpe(torch.arange(9))
        hidden = hf.transformer(ids, output_hidden_states=True).hidden_states  # embeddings, blocks 1..L-1, ln_f(L)
        for i, block in enumerate(gpt.h):
            x = ch02.pre_ln_block(x, *ch02.gpt_block_parts(block))
            if i + 1 < len(gpt.h):
                torch.testing.assert_close(x, hidden[i + 1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gpt.ln_f(x), hidden[-1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gpt.lm_head(gpt.ln_f(x)), gpt(ids).logits, rtol=1e-5, atol=1e-5)


def test_library_gpt_block_refuses_parts_of_two_blocks():
    cases = list(ch02.gpt_block_cases(np.random.default_rng(0)))
    x, attn, *_ = cases[0].args
    _, _, mlp, ln_1, ln_2 = cases[2].args
    with pytest.raises(ValueError, match="one block"):
        ch02.library_gpt_block(x, attn, mlp, ln_1, ln_2)
    assert "ln_1 of a GPTBlock, n_embd=16" in repr(ln_1)


def _transformers_bert_embeddings(input_ids, token_type_ids, weights):
    import transformers
    from transformers.models.bert.modeling_bert import BertEmbeddings

    (V, C), P, S = weights["word"].shape, len(weights["position"]), len(weights["segment"])
    emb = BertEmbeddings(transformers.BertConfig(vocab_size=V, hidden_size=C, max_position_embeddings=P,
                                                 type_vocab_size=S, layer_norm_eps=1e-12)).eval()
    with torch.no_grad():
        emb.word_embeddings.weight.copy_(weights["word"])
        emb.position_embeddings.weight.copy_(weights["position"])
        emb.token_type_embeddings.weight.copy_(weights["segment"])
        emb.LayerNorm.weight.copy_(weights["ln_weight"])
        emb.LayerNorm.bias.copy_(weights["ln_bias"])
        return emb(input_ids=input_ids, token_type_ids=token_type_ids)


def test_bert_embeddings_match_the_library_and_transformers():
    cases = list(ch02.bert_embedding_cases(np.random.default_rng(1)))
    assert agree(ch02.bert_embeddings, ch02.library_bert_embeddings, cases, rtol=1e-5, atol=1e-5) >= 20
    assert agree(ch02.bert_embeddings, _transformers_bert_embeddings, cases, rtol=1e-5, atol=1e-5) >= 20


def test_bert_embeddings_of_a_whole_library_bert():
    torch.manual_seed(0)
    bert = BERT(BERTConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=12)).eval()
    ids, tt = torch.randint(0, 40, (2, 7)), torch.tensor([[0, 0, 0, 1, 1, 1, 1]] * 2)
    seen = []
    bert.embeddings_ln.register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.no_grad():
        bert(ids, token_type_ids=tt)
    torch.testing.assert_close(ch02.bert_embeddings(ids, tt, ch02.bert_weights(bert)), seen[0], rtol=1e-5, atol=1e-5)


def test_t5_bucket_cases_agree_with_transformers():
    from transformers.models.t5.modeling_t5 import T5Attention

    cases = list(ch02.bucket_cases(np.random.default_rng(1)))
    assert agree(relative_position_bucket, T5Attention._relative_position_bucket, cases, rtol=0, atol=0) >= 30
    assert ch02.EXERCISES["t5_bucket"].reference is relative_position_bucket  # the library's own function


# ---------------------------------------------------------------------------------------------------
# Each checker rejects a typical wrong answer
# ---------------------------------------------------------------------------------------------------


def _post_ln(x, attn, mlp, ln_1, ln_2):
    x = ln_1(x + attn(x))  # the manual's nn.TransformerDecoderLayer (norm_first=False), and BERT
    return ln_2(x + mlp(x))


def _residual_from_the_normalised_stream(x, attn, mlp, ln_1, ln_2):
    h = ln_1(x)
    x = h + attn(h)
    h = ln_2(x)
    return h + mlp(h)


def _parallel(x, attn, mlp, ln_1, ln_2):
    return x + attn(ln_1(x)) + mlp(ln_2(x))  # GPT-J's parallel block, not GPT-2's


def _one_norm(x, attn, mlp, ln_1, ln_2):
    x = x + attn(ln_1(x))
    return x + mlp(ln_1(x))  # ln_1 twice


def _manual_bert_embeddings(input_ids, token_type_ids, weights):
    """The manual's BERTModel: a segment vector only when token_type_ids are given, and no LayerNorm."""
    x = weights["word"][input_ids] + weights["position"][: input_ids.shape[1]]
    if token_type_ids is not None:
        x = x + weights["segment"][token_type_ids]
    return x


def _no_segment_when_omitted(input_ids, token_type_ids, weights):
    x = weights["word"][input_ids] + weights["position"][: input_ids.shape[1]]
    if token_type_ids is not None:
        x = x + weights["segment"][token_type_ids]
    return F.layer_norm(x, x.shape[-1:], weights["ln_weight"], weights["ln_bias"], eps=1e-12)


def _layer_norm_without_its_weights(input_ids, token_type_ids, weights):
    tt = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
    x = weights["word"][input_ids] + weights["position"][: input_ids.shape[1]] + weights["segment"][tt]
    return F.layer_norm(x, x.shape[-1:], eps=1e-12)


def _bucket_without_the_cap(relative_position, bidirectional, num_buckets, max_distance):
    ret = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        ret += (relative_position > 0).long() * num_buckets
        n = relative_position.abs()
    else:
        n = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    large = max_exact + (torch.log(n.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).long()  # no cap at num_buckets - 1
    return ret + torch.where(n < max_exact, n, large)


def _bucket_abs_when_causal(relative_position, bidirectional, num_buckets, max_distance):
    if bidirectional:
        return relative_position_bucket(relative_position, True, num_buckets, max_distance)
    return relative_position_bucket(-relative_position.abs(), False, num_buckets, max_distance)  # future = past


def _bucket_query_minus_key(relative_position, bidirectional, num_buckets, max_distance):
    return relative_position_bucket(-relative_position, bidirectional, num_buckets, max_distance)


def _bucket_without_halving(relative_position, bidirectional, num_buckets, max_distance):
    if not bidirectional:
        return relative_position_bucket(relative_position, False, num_buckets, max_distance)
    past = relative_position_bucket(-relative_position.abs(), False, num_buckets, max_distance)
    return past + (relative_position > 0).long() * num_buckets  # up to 2 * num_buckets - 1


@pytest.mark.parametrize("name, wrong, words", [
    ("pre_ln_block", _post_ln, ["differs", "far from normalised"]),
    ("pre_ln_block", _residual_from_the_normalised_stream, ["differs", "far from normalised"]),
    ("pre_ln_block", _parallel, ["differs"]),
    ("pre_ln_block", _one_norm, ["differs"]),
    ("bert_embeddings", _manual_bert_embeddings, ["differs", "which the manual's BERTModel forgets"]),
    ("bert_embeddings", _no_segment_when_omitted, ["differs", "token_type_ids omitted"]),
    ("bert_embeddings", _layer_norm_without_its_weights, ["differs"]),
    ("t5_bucket", lambda rp, bi, nb, md: torch.zeros_like(rp), ["differs"]),  # the manual's T5: no position bias
    ("t5_bucket", _bucket_without_the_cap, ["differs", "beyond max_distance"]),
    ("t5_bucket", _bucket_abs_when_causal, ["differs", "a future one"]),
    ("t5_bucket", _bucket_query_minus_key, ["differs", "upper half"]),
    ("t5_bucket", _bucket_without_halving, ["differs"]),
    ("gpt_params", 236_288, ["untied"]),
    ("gpt_params", 100_096, ["embedding tables"]),
    ("bert_embedding_params", 23_835_648, ["1,536 short"]),
    ("width_param_ratio", 3.141, ["exclude_embeddings=True"]),
    ("width_param_ratio", 2.0, ["linearly"]),
    ("stream_scale", 1.0, ["same kind of block"]),
    ("stream_scale", 0.0972, ["BERT's over GPT's"]),
])
def test_each_chapter02_checker_rejects_a_typical_wrong_answer(name, wrong, words):
    result = ch02.EXERCISES.check(name, wrong, explanation=SENTENCE)
    assert result.status == FAILED
    for w in words:
        assert w in result.message, result.message


def _stub(*args):
    raise NotImplementedError()


@pytest.mark.parametrize("name", ["pre_ln_block", "bert_embeddings", "t5_bucket"])
def test_each_chapter02_checker_accepts_the_reference_and_reports_a_stub(name):
    result = ch02.EXERCISES.check(name, ch02.EXERCISES[name].reference)
    assert result.passed and "edge case" in result.message
    assert ch02.EXERCISES.check(name, _stub).status == NOT_ATTEMPTED


def test_the_manual_is_named_in_the_hints():
    assert "manual" in ch02.EXERCISES.hint("pre_ln_block") and "post-LN" in ch02.EXERCISES.hint("pre_ln_block")
    assert "manual" in ch02.EXERCISES.hint("bert_embeddings")


# ---------------------------------------------------------------------------------------------------
# The numbers: what the library measures
# ---------------------------------------------------------------------------------------------------


def _lesson_gpt(n_embd: int = 64) -> GPT:
    return GPT(GPTConfig(vocab_size=1000, n_positions=128, n_embd=n_embd, n_layer=2, n_head=4))


def _bert_base_embedding_params() -> int:
    bert = BERT(BERTConfig(num_hidden_layers=1))  # BERT-base's widths; the number of layers does not matter here
    parts = (bert.word_embeddings, bert.position_embeddings, bert.token_type_embeddings, bert.embeddings_ln)
    return sum(p.numel() for m in parts for p in m.parameters())


def _stream_scale(seed: int) -> float:
    """Exercise 7 as its solution does it."""
    torch.manual_seed(seed)
    x = 10 * torch.randn(2, 8, 64)
    gpt_block = _lesson_gpt().eval().h[0]
    bert_layer = BERT(BERTConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=256, max_position_embeddings=128)).eval().layers[0]
    with torch.no_grad():
        gpt_out = gpt_block(x, None, None, False, False)[0]
        bert_out = bert_layer(x, None, False)[0]
    return (gpt_out.std() / bert_out.std()).item()


def test_chapter02_predictions_and_experiment_ranges_hold_what_the_library_measures():
    assert ch02.EXERCISES.check("gpt_params", _lesson_gpt().num_parameters()).passed
    assert ch02.EXERCISES.check("bert_embedding_params", _bert_base_embedding_params()).passed
    ratio = _lesson_gpt(128).num_parameters(exclude_embeddings=True) / _lesson_gpt(64).num_parameters(
        exclude_embeddings=True)
    assert ch02.EXERCISES.check("width_param_ratio", ratio, explanation=SENTENCE).passed
    total = _lesson_gpt(128).num_parameters() / _lesson_gpt(64).num_parameters()
    assert "exclude_embeddings" in str(ch02.EXERCISES.check("width_param_ratio", total, explanation=SENTENCE))
    for seed in range(4):  # the range holds whatever the seed
        assert ch02.EXERCISES.check("stream_scale", _stream_scale(seed), explanation=SENTENCE).passed, seed


def test_chapter02_quiz_answers_are_what_the_library_computes():
    quiz = ch02.quiz()
    assert 3 <= len(quiz) <= 5

    # 1: the manual's GPT leaks although its self-attention mask is causal in PyTorch's convention
    torch.manual_seed(0)
    manual = ManualCustomGPT(50, d_model=32, n_heads=4, n_layers=1).eval()
    probe = torch.randint(0, 50, (1, 8))
    assert future_token_influence(manual, probe, 3, 50) > 1e-3
    assert torch.equal(manual.generate_causal_mask(5), torch.ones(5, 5).triu(1).bool())

    # 2: BERT-base's input layer
    assert quiz.answer(2, _bert_base_embedding_params()).passed and not quiz.answer(2, 30522 * 768).passed

    # 3: T5's encoder bucket of a key 20 positions after / before the query
    after, before = relative_position_bucket(torch.tensor([20, -20]), True, 32, 128).tolist()
    assert quiz.answer(3, after).passed and "before the query" in str(quiz.answer(3, before))

    # 4: a pre-LN block with silent branches is the identity; a post-LN one (BERT's) is not
    torch.manual_seed(0)
    block = _lesson_gpt().eval().h[0]
    layer = BERT(BERTConfig(vocab_size=50, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                            intermediate_size=256)).eval().layers[0]
    with torch.no_grad():
        for module in (block.attn.out_proj, block.mlp.down_proj, layer.attn.out_proj, layer.mlp.down_proj):
            module.weight.zero_()
            module.bias.zero_()
        x = 5 * torch.randn(2, 6, 64)
        assert torch.equal(block(x, None, None, False, False)[0], x)
        torch.testing.assert_close(layer(x, None, False)[0], layer.ln_2(layer.ln_1(x)))

    # 5: no token_type_ids = segment 0 everywhere (the course's BERT and transformers'), unlike the manual's
    torch.manual_seed(0)
    bert = BERT(BERTConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32)).eval()
    ids = torch.randint(1, 50, (1, 6))
    with torch.no_grad():
        zeros = torch.zeros_like(ids)
        assert torch.equal(bert(ids).last_hidden_state, bert(ids, token_type_ids=zeros).last_hidden_state)
        hf = bert.to_hf().eval()
        torch.testing.assert_close(hf(ids).logits, bert(ids).logits, rtol=1e-5, atol=1e-5)
        manual = ManualBERTModel(50, d_model=16, n_heads=2, n_layers=1).eval()
        assert torch.equal(manual(ids)[0], manual(ids, token_type_ids=None)[0])
        assert not torch.equal(manual(ids)[0], manual(ids, token_type_ids=torch.zeros_like(ids))[0])

    for number, right in [(1, "b"), (4, "a"), (5, "b")]:
        q = quiz.questions[number - 1]
        assert [quiz.answer(number, k).passed for k in q.letters] == [k == right for k in q.letters]


# ---------------------------------------------------------------------------------------------------
# The lesson
# ---------------------------------------------------------------------------------------------------


def test_chapter02_key_lines_are_on_the_page_and_checked():
    import nbformat

    from llm_course.chapters import find_chapter

    nb = nbformat.read(find_chapter("02").notebook(), as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    checks = {"pre_ln_block": "agree(pre_ln_block, chapter02.library_gpt_block",
              "bert_embeddings": "agree(bert_embeddings, chapter02.library_bert_embeddings",
              "t5_bucket": "agree(t5_bucket, relative_position_bucket"}
    for name, check in checks.items():
        where = next(i for i, s in enumerate(code) if f"def {name}(" in s)
        assert len(code[where].splitlines()) <= 30, f"{name}: a key-lines cell should be short enough to read"
        assert check in code[where + 1], f"the cell after {name}'s key lines must check it against the library"
    t5 = next(s for s in code if "agree(t5_bucket, relative_position_bucket" in s)
    assert "agree(t5_bucket, T5Attention._relative_position_bucket" in t5  # and against transformers
    assert "x = x + attn(ln_1(x))" in code[next(i for i, s in enumerate(code) if "def pre_ln_block(" in s)]


def test_agree_names_the_edge_case_a_wrong_block_fails_on():
    cases = [c for c in ch02.gpt_block_cases(np.random.default_rng(0)) if c.note][:1] + [
        Case(c.args) for c in list(ch02.gpt_block_cases(np.random.default_rng(0)))[4:6]]
    with pytest.raises(AssertionError, match="far from normalised"):
        agree(_post_ln, ch02.library_gpt_block, cases, rtol=1e-6, atol=1e-6)
