"""Tests for the attention explorer (chapter 03, ``llm_course/widgets.py``).

References, independent of the code under test:
* attention computed by hand from a model's weights (GPT-2 and BERT, layer 0);
* the same Hugging Face model run directly in 'eager' mode;
* for the course's GPT, BERT and T5: their ``to_hf()`` twins in ``transformers``.
Models are tiny and random (no downloads); tokenizers are built from small vocabularies.
The widget is driven by setting control values, as a browser would, and checked from
Python: ``current_weights``, ``current_row``, the PNG bytes and the HTML it shows.
"""

from __future__ import annotations

import copy
import io
import json
import math

import matplotlib.image
import numpy as np
import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.figure import Figure
from packaging.version import Version
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertModel,
    BertTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2Tokenizer,
    T5Config,
    T5ForConditionalGeneration,
    T5Tokenizer,
)

from llm_course.models.modeling import context_length

# transformers 5 builds GPT2/BERT/T5 tokenizers from a vocabulary in memory; 4.x (the floor, 4.50) needs the
# fast classes and a tokenizers object for that.
TRANSFORMERS_5 = Version(transformers.__version__).release >= (5,)
from llm_course.text.tokenizer import ByteLevelBPETokenizer, bytes_to_unicode
from llm_course.viz.attention_data import KINDS, collect_attentions
from llm_course.viz.figures import (
    figure_to_png,
    highlight_html,
    plot_head_grid,
    plot_heatmap,
    plot_token_attention,
)
from llm_course.viz.tokens import token_label
from llm_course.widgets.attention_explorer import AttentionExplorer

CORPUS = [
    "the cat sat on the mat",
    "a dog chased the cat around the house",
    "the quick brown fox jumps over the lazy dog",
    "кошка сидит на ковре",
] * 4
WORDS = "the cat sat on mat a dog chased quick brown fox jumps over lazy house around".split()
TEXT_A = "the cat sat on the mat"
TEXT_B = "a quick dog jumps over the lazy fox"
CONTEXT = 24  # every model's context length, so long texts are cheap to build


# --------------------------------------------------------------------------------------
# Tokenizers and models (tiny, random, built offline)
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2_tok() -> GPT2Tokenizer:
    """A real transformers GPT2Tokenizer (byte-level BPE) with merges learned on CORPUS."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=330, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        special_tokens=["<|endoftext|>"]))
    if not TRANSFORMERS_5:  # 4.x: the slow tokenizer needs files; the fast one takes the trained object
        return transformers.GPT2TokenizerFast(tokenizer_object=bpe, unk_token="<|endoftext|>",
                                              bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    merges = [tuple(m) for m in json.loads(bpe.to_str())["model"]["merges"]]
    return GPT2Tokenizer(vocab=bpe.get_vocab(), merges=merges)


@pytest.fixture(scope="module")
def bert_tok() -> BertTokenizer:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "##s", "."]
    if not TRANSFORMERS_5:  # 4.x: the same WordPiece tokenizer, built with the tokenizers library
        wp = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
        wp.normalizer = normalizers.BertNormalizer(lowercase=True)
        wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        wp.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                          special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
        wp.decoder = decoders.WordPiece()
        return transformers.BertTokenizerFast(tokenizer_object=wp, unk_token="[UNK]", pad_token="[PAD]",
                                              cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    return BertTokenizer(vocab={t: i for i, t in enumerate(vocab)})


@pytest.fixture(scope="module")
def t5_tok() -> T5Tokenizer:
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("▁" + w, -1.0) for w in WORDS]
    pieces += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz."] + [("▁", -3.0)]
    if not TRANSFORMERS_5:  # 4.x: the slow tokenizer needs sentencepiece; the same Unigram model, built directly
        uni = Tokenizer(models.Unigram(pieces, unk_id=2))
        uni.normalizer = normalizers.Strip(left=False, right=True)  # as transformers 5's: no token for a final space
        uni.pre_tokenizer = pre_tokenizers.Metaspace()
        uni.decoder = decoders.Metaspace()
        uni.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                           special_tokens=[("</s>", 1)])
        return transformers.T5TokenizerFast(tokenizer_object=uni, eos_token="</s>", unk_token="<unk>",
                                            pad_token="<pad>", extra_ids=0)
    return T5Tokenizer(vocab=pieces, extra_ids=0)


@pytest.fixture(scope="module")
def course_tok() -> ByteLevelBPETokenizer:
    return ByteLevelBPETokenizer.train(CORPUS, vocab_size=300)


def _peaky(model: torch.nn.Module, std: float) -> torch.nn.Module:
    """Larger random weights, so heads attend sharply and differ from each other."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, std)
    return model


@pytest.fixture(scope="module")
def gpt2(gpt2_tok) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(gpt2_tok), n_positions=CONTEXT, n_embd=32, n_layer=2, n_head=4,
                        bos_token_id=0, eos_token_id=0)
    model = _peaky(GPT2LMHeadModel(config), 0.3)
    assert model.config._attn_implementation == "sdpa"  # the default the explorer must handle
    return model.train()  # left in train mode (dropout on): the explorer must switch it off


@pytest.fixture(scope="module")
def bert(bert_tok) -> BertForMaskedLM:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(bert_tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=CONTEXT)
    return _peaky(BertForMaskedLM(config), 0.3).train()


@pytest.fixture(scope="module")
def t5(t5_tok) -> T5ForConditionalGeneration:
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(t5_tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=3,
                      num_heads=4, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return _peaky(T5ForConditionalGeneration(config), 0.3).train()


@pytest.fixture(scope="module")
def hf_models(gpt2, gpt2_tok, bert, bert_tok, t5, t5_tok) -> dict:
    return {"gpt2": (gpt2, gpt2_tok), "bert": (bert, bert_tok), "t5": (t5, t5_tok)}


def eager_reference(model: torch.nn.Module, tokenizer, text: str, decoder_ids: list[int] | None = None) -> dict:
    """The model's attentions computed directly: a copy in eager mode, eval, one forward."""
    ref = copy.deepcopy(model).eval()
    if hasattr(ref, "set_attn_implementation"):
        ref.set_attn_implementation("eager")
    ids = torch.tensor([tokenizer(text)["input_ids"] if callable(tokenizer) else tokenizer.encode(text)])
    kwargs = {"decoder_input_ids": torch.tensor([decoder_ids])} if decoder_ids is not None else {}
    with torch.no_grad():
        out = ref(input_ids=ids, output_attentions=True, **kwargs)
    fields = {k: f for k, (f, _) in KINDS.items()}
    result = {}
    for kind in (("encoder", "decoder", "cross") if decoder_ids is not None else ("self",)):
        result[kind] = torch.stack([a[0] for a in getattr(out, fields[kind])]).numpy()
    return result


# --------------------------------------------------------------------------------------
# The core: collect_attentions
# --------------------------------------------------------------------------------------


def test_sdpa_models_return_no_attentions_so_the_explorer_switches_to_eager(gpt2, gpt2_tok):
    """What transformers 5 does: sdpa attention gives an empty tuple (the reason for the switch). transformers
    4.50 (the floor) instead falls back to eager attention by itself and returns the weights."""
    ids = torch.tensor([gpt2_tok(TEXT_A)["input_ids"]])
    with torch.no_grad():
        out = gpt2.eval()(ids, output_attentions=True)
    gpt2.train()
    if TRANSFORMERS_5:
        assert not out.attentions
    else:
        assert len(out.attentions) == 2 and out.attentions[0].shape[-1] == len(ids[0])
    data = collect_attentions(gpt2, gpt2_tok, TEXT_A)
    assert data.attentions["self"].shape == (2, 4, len(ids[0]), len(ids[0]))
    # The model is left as it was found: sdpa, train mode.
    assert gpt2.config._attn_implementation == "sdpa"
    assert gpt2.training


def test_gpt2_layer0_matches_attention_computed_by_hand(gpt2, gpt2_tok):
    data = collect_attentions(gpt2, gpt2_tok, TEXT_A)
    ids = torch.tensor(gpt2_tok(TEXT_A)["input_ids"])
    T, H = len(ids), 4
    block = gpt2.transformer.h[0]
    with torch.no_grad():
        x = gpt2.transformer.wte(ids) + gpt2.transformer.wpe(torch.arange(T))
        q, k, _ = block.attn.c_attn(block.ln_1(x)).split(32, dim=-1)
        q = q.view(T, H, 8).transpose(0, 1)  # (H, T, D)
        k = k.view(T, H, 8).transpose(0, 1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(8)
        scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
        expected = torch.softmax(scores, dim=-1).numpy()
    np.testing.assert_allclose(data.attentions["self"][0], expected, atol=1e-5)
    assert data.attentions["self"][0].std() > 0.05  # peaky, not uniform: the comparison means something


def test_bert_layer0_matches_attention_computed_by_hand(bert, bert_tok):
    data = collect_attentions(bert, bert_tok, TEXT_A)
    ids = torch.tensor(bert_tok(TEXT_A)["input_ids"])
    T, H = len(ids), 4
    emb, att = bert.bert.embeddings, bert.bert.encoder.layer[0].attention.self
    with torch.no_grad():
        x = emb.word_embeddings(ids) + emb.position_embeddings(torch.arange(T)) + emb.token_type_embeddings(
            torch.zeros(T, dtype=torch.long))
        x = emb.LayerNorm(x)
        q = att.query(x).view(T, H, 8).transpose(0, 1)
        k = att.key(x).view(T, H, 8).transpose(0, 1)
        expected = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1).numpy()
    np.testing.assert_allclose(data.attentions["self"][0], expected, atol=1e-5)
    assert bert.training and bert.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("name", ["gpt2", "bert", "t5"])
def test_collect_equals_the_models_eager_attentions(hf_models, name):
    model, tok = hf_models[name]
    data = collect_attentions(model, tok, TEXT_B)
    ref = eager_reference(model, tok, TEXT_B, data.decoder_token_ids)
    assert sorted(data.attentions) == sorted(ref)
    for kind, weights in ref.items():
        assert data.attentions[kind].dtype == np.float32
        np.testing.assert_allclose(data.attentions[kind], weights, atol=1e-6)
    assert data.tokens == [token_label(t, data.byte_level) if t not in tok.all_special_tokens else t
                           for t in tok.convert_ids_to_tokens(data.token_ids)]


def test_bert_model_without_a_head(bert, bert_tok):
    """BertModel (no MLM head) returns the same kind of output; same weights, same maps."""
    base = BertModel(bert.config)
    base.load_state_dict(bert.bert.state_dict(), strict=False)  # BertForMaskedLM has no pooler
    data = collect_attentions(base, bert_tok, TEXT_B)
    np.testing.assert_allclose(data.attentions["self"], collect_attentions(bert, bert_tok, TEXT_B).attentions["self"],
                               atol=1e-6)
    np.testing.assert_allclose(data.attentions["self"], eager_reference(base, bert_tok, TEXT_B)["self"], atol=1e-6)


@pytest.mark.parametrize("name", ["gpt2", "bert", "t5"])
def test_rows_sum_to_one_and_causal_kinds_are_lower_triangular(hf_models, name):
    model, tok = hf_models[name]
    data = collect_attentions(model, tok, TEXT_B)
    causal = {"gpt2": {"self"}, "bert": set(), "t5": {"decoder"}}[name]
    for kind, w in data.attentions.items():
        np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
        assert (w >= 0).all()
        if kind in causal:
            assert np.count_nonzero(np.triu(w, 1)) == 0  # exactly zero: no token sees the future
        elif kind != "cross":
            assert np.triu(w, 1).sum() > 0.1  # bidirectional: plenty of weight on later tokens


@settings(max_examples=15, deadline=None)
@given(st.lists(st.sampled_from(WORDS + ["кошка", "\n", "!"]), min_size=1, max_size=8))
def test_any_text_gives_causal_distributions_labelled_by_its_tokens(gpt2, gpt2_tok, words):
    text = " ".join(words)
    data = collect_attentions(gpt2, gpt2_tok, text)
    T = len(gpt2_tok(text)["input_ids"])
    assert data.attentions["self"].shape == (2, 4, T, T) and len(data.tokens) == T
    np.testing.assert_allclose(data.attentions["self"].sum(-1), 1.0, atol=1e-5)
    assert np.count_nonzero(np.triu(data.attentions["self"], 1)) == 0
    if text.isascii():  # the labels spell the text, with visible spaces and newlines
        assert "".join(data.tokens) == text.replace(" ", "·").replace("\n", "↵")


def test_t5_kinds_shapes_and_decoder_input(t5, t5_tok):
    data = collect_attentions(t5, t5_tok, TEXT_A, decoder_text=TEXT_B)
    src, tgt = t5_tok(TEXT_A)["input_ids"], t5_tok(TEXT_B)["input_ids"]
    assert data.kinds == ["encoder", "decoder", "cross"]
    assert data.decoder_token_ids == [0] + tgt[:-1]  # the labels shifted right behind <pad>
    assert data.decoder_tokens[0] == "<pad>" and data.tokens[-1] == "</s>"
    S, T = len(src), len(tgt)
    assert data.attentions["encoder"].shape == (2, 4, S, S)
    assert data.attentions["decoder"].shape == (3, 4, T, T)  # num_decoder_layers=3
    assert data.attentions["cross"].shape == (3, 4, T, S)
    assert data.query_tokens("cross") == data.decoder_tokens and data.key_tokens("cross") == data.tokens
    # Default decoder text: the text itself.
    same = collect_attentions(t5, t5_tok, TEXT_A)
    assert same.decoder_token_ids == [0] + src[:-1]


def test_byte_level_labels_are_readable(gpt2, gpt2_tok):
    data = collect_attentions(gpt2, gpt2_tok, "the cat\nкошка")
    assert data.byte_level
    assert data.tokens[:2] == ["the", "·cat"]
    assert "↵" in "".join(data.tokens)
    assert not any(c in "".join(data.tokens) for c in "ĠĊ")
    # The labels spell the text (spaces as '·', newlines as '↵'); bytes of a letter split
    # across tokens show as escapes, so compare where the text is ASCII.
    assert "".join(data.tokens).startswith("the·cat↵")


def test_errors_in_the_core(gpt2, gpt2_tok, bert, bert_tok):
    with pytest.raises(ValueError, match=r"context length"):
        collect_attentions(gpt2, gpt2_tok, "the cat " * CONTEXT)
    with pytest.raises(ValueError, match=r"reads at most 24 tokens"):
        collect_attentions(bert, bert_tok, "the cat " * CONTEXT)
    with pytest.raises(ValueError, match=r"at most 3 tokens"):
        collect_attentions(gpt2, gpt2_tok, TEXT_A, max_length=3)
    with pytest.raises(ValueError, match="empty"):
        collect_attentions(gpt2, gpt2_tok, "")
    with pytest.raises(TypeError, match="str"):
        collect_attentions(gpt2, gpt2_tok, ["the", "cat"])
    with pytest.raises(TypeError, match="unsupported tokenizer"):
        collect_attentions(gpt2, object(), TEXT_A)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        collect_attentions("gpt2", gpt2_tok, TEXT_A)
    assert context_length(gpt2) == CONTEXT and context_length(bert) == CONTEXT


def test_t5_without_a_context_limit_is_capped(t5, t5_tok):
    assert context_length(t5) is None  # relative positions: no fixed context
    with pytest.raises(ValueError, match=r"reads at most 512 tokens"):
        collect_attentions(t5, t5_tok, "the " * 600)
    with pytest.raises(ValueError, match=r"decoder text is 601 tokens"):
        collect_attentions(t5, t5_tok, TEXT_A, decoder_text="the " * 600)


def test_model_that_hides_its_weights_gets_a_clear_error(gpt2, gpt2_tok):
    """A wrapper around an sdpa model cannot be switched to eager: say how to load it."""

    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, output_attentions=False):
            return self.inner(input_ids, output_attentions=output_attentions)

    if not TRANSFORMERS_5:  # 4.50 falls back to eager attention by itself: the wrapper's weights just work
        assert collect_attentions(Wrapper(gpt2), gpt2_tok, TEXT_A).attentions["self"].shape[0] == 2
        return
    with pytest.raises(ValueError, match=r"attn_implementation='eager'"):
        collect_attentions(Wrapper(gpt2), gpt2_tok, TEXT_A)


def test_weights_index_errors_name_the_valid_range(gpt2, gpt2_tok):
    data = collect_attentions(gpt2, gpt2_tok, TEXT_A)
    with pytest.raises(ValueError, match=r"layer must be an integer in \[0, 1\], got 2: the model has 2 self-att"):
        data.weights("self", 2)
    with pytest.raises(ValueError, match=r"head must be an integer in \[0, 3\], got -1: the model has 4 heads"):
        data.weights("self", 0, -1)
    with pytest.raises(ValueError, match=r"choose one of \['self'\]"):
        data.weights("cross", 0)
    with pytest.raises(TypeError, match="int"):
        data.weights("self", 0.5)


# --------------------------------------------------------------------------------------
# Token labels
# --------------------------------------------------------------------------------------


def test_token_label_examples():
    assert token_label("Ġthe", byte_level=True) == "·the"
    assert token_label("Ċ", byte_level=True) == "↵"
    assert token_label("Ð¿", byte_level=True) == "п"  # both bytes of a Cyrillic letter
    assert token_label("Ð", byte_level=True) == "\\xd0"  # half a letter: an escape, not '�'
    assert token_label("<|endoftext|>", byte_level=True) == "<|endoftext|>"
    assert token_label("▁the") == "·the"  # SentencePiece's space marker
    assert token_label("##ing") == "##ing"  # WordPiece is left alone
    assert token_label(b" the\t") == "·the→"
    with pytest.raises(TypeError):
        token_label(3)


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=20))
def test_token_label_inverts_gpt2_byte_alphabet(text):
    b2u = bytes_to_unicode()
    token = "".join(b2u[b] for b in text.encode("utf-8"))
    visible = {" ": "·", "▁": "·", "\n": "↵", "\t": "→", "\r": "\\r"}
    expected = "".join(visible.get(c, f"\\x{ord(c):02x}" if ord(c) < 32 or ord(c) == 127 else c) for c in text)
    assert token_label(token, byte_level=True) == expected


# --------------------------------------------------------------------------------------
# Plotting
# --------------------------------------------------------------------------------------


def test_plot_heatmap_draws_the_weights_with_token_labels():
    w = np.random.default_rng(0).dirichlet(np.ones(4), size=3).astype(np.float32)
    fig = Figure()
    ax = fig.add_subplot()
    image = plot_heatmap(ax, w, ["a", "b", "c"], ["w", "x", "y", "z"])
    np.testing.assert_array_equal(image.get_array(), w)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["w", "x", "y", "z"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="3 query and 4 key labels"):
        plot_heatmap(ax, w.T, ["a", "b", "c"], ["w", "x", "y", "z"])
    with pytest.raises(ValueError, match="matrix"):
        plot_heatmap(ax, w[0], ["a"], ["w", "x", "y", "z"])
    png = figure_to_png(fig)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_long_texts_label_every_kth_token_at_its_own_position():
    n = 200
    tokens = [f"t{i}" for i in range(n)]
    ax = Figure().add_subplot()
    plot_heatmap(ax, np.full((n, n), 1.0 / n), tokens, tokens, colorbar=False)
    ticks, labels = ax.get_xticks(), [t.get_text() for t in ax.get_xticklabels()]
    assert 50 <= len(labels) <= 96  # readable, not 200 overlapping labels
    assert labels == [f"t{int(i)}" for i in ticks]  # each label sits on its own token


def test_plot_head_grid_and_token_views():
    w = np.random.default_rng(1).dirichlet(np.ones(3), size=(5, 3)).astype(np.float32)  # 5 heads
    fig = Figure()
    axes = plot_head_grid(fig, w, ["a", "b", "c"], ["a", "b", "c"], selected_head=2, ncols=3)
    assert len(axes) == 5 and len(fig.axes) == 6  # one spare cell, hidden
    for h, ax in enumerate(axes):
        np.testing.assert_array_equal(ax.images[0].get_array(), w[h])
    assert axes[2].spines["top"].get_edgecolor()[:3] == (1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="heads, q_len, k_len"):
        plot_head_grid(Figure(), w[0], ["a"], ["a"])

    ax = Figure().add_subplot()
    bars = plot_token_attention(ax, w[0, 1], ["a", "b", "c"], query_index=1)
    np.testing.assert_allclose([b.get_height() for b in bars], w[0, 1])
    with pytest.raises(ValueError, match="one weight per key token"):
        plot_token_attention(ax, w[0], ["a", "b", "c"])

    page = highlight_html(np.array([0.0, 0.25, 0.75]), ["<s>", "b", "c"], query_index=2)
    assert "&lt;s&gt;" in page and "<s>" not in page  # tokens are escaped
    assert "rgba(255, 140, 0, 0.000)" in page and "rgba(255, 140, 0, 1.000)" in page
    assert 'title="0.2500"' in page
    with pytest.raises(ValueError):
        highlight_html(np.ones(2), ["a"])


# --------------------------------------------------------------------------------------
# The widget
# --------------------------------------------------------------------------------------


def _png_shape(png: bytes) -> tuple[int, ...]:
    return matplotlib.image.imread(io.BytesIO(png), format="png").shape


@pytest.fixture(scope="module")
def explorer(hf_models) -> AttentionExplorer:
    return AttentionExplorer(models=hf_models, texts=[TEXT_A, TEXT_B], dpi=50)


def test_explorer_starts_on_the_first_model_and_text(explorer, hf_models):
    gpt2, tok = hf_models["gpt2"]
    assert explorer.model_choice.value == "gpt2" and explorer.text.value == TEXT_A
    ref = eager_reference(gpt2, tok, TEXT_A)["self"]
    np.testing.assert_allclose(explorer.current_weights, ref[0, 0], atol=1e-6)
    assert explorer.png[:8] == b"\x89PNG\r\n\x1a\n" and len(_png_shape(explorer.png)) == 3
    assert explorer.error is None and "Causal" in explorer.message.value
    assert list(explorer.kind.options) == [("self-attention", "self")]
    assert explorer.layer.max == 1 and explorer.head.max == 3
    assert explorer.decoder_text.layout.display == "none"  # GPT-2 has no decoder text


@pytest.mark.parametrize("name", ["gpt2", "bert", "t5"])
def test_explorer_shows_the_models_attentions(explorer, hf_models, name):
    model, tok = hf_models[name]
    explorer.show(model=name, text=TEXT_B, view="head")
    ref = eager_reference(model, tok, TEXT_B, explorer.data.decoder_token_ids)
    assert explorer.data.kinds == list(ref)
    for kind, weights in ref.items():
        np.testing.assert_allclose(explorer.data.attentions[kind], weights, atol=1e-6)
        last = weights.shape[0] - 1
        explorer.show(kind=kind, layer=last, head=3)  # one redraw per call
        np.testing.assert_allclose(explorer.current_weights, weights[last, 3], atol=1e-6)
        np.testing.assert_allclose(explorer.current_layer_weights, weights[last], atol=1e-6)
        # The picture is drawn from exactly these weights.
        image = explorer.figure().axes[0].images[0]
        np.testing.assert_array_equal(image.get_array(), explorer.current_weights)
        causal = (name, kind) in {("gpt2", "self"), ("t5", "decoder")}
        assert ("Causal" in explorer.message.value) == causal


def test_every_control_changes_the_picture(explorer):
    explorer.show(model="gpt2", text=TEXT_A, kind="self", layer=0, head=0, view="head")
    seen = {explorer.png}
    weights = [explorer.current_weights]

    explorer.layer.value = 1  # as a browser would
    seen.add(explorer.png)
    weights.append(explorer.current_weights)
    explorer.head.value = 2
    seen.add(explorer.png)
    weights.append(explorer.current_weights)
    for a, b in zip(weights, weights[1:]):
        assert not np.allclose(a, b)
    assert len(seen) == 3

    explorer.text_choice.value = TEXT_B  # the example dropdown fills the text box
    assert explorer.text.value == TEXT_B
    assert explorer.current_weights.shape[0] == len(explorer.data.tokens) != len(weights[0])
    seen.add(explorer.png)
    explorer.text.value = "the lazy cat"  # typed by hand
    assert explorer.data.text == "the lazy cat"
    seen.add(explorer.png)
    assert len(seen) == 5
    assert explorer.layer.value == 1 and explorer.head.value == 2  # kept across texts

    head_png = explorer.png
    explorer.view.value = "grid"
    grid = explorer.png
    assert grid not in seen and _png_shape(grid)[1] > _png_shape(head_png)[1]  # 4 heads side by side
    assert len(explorer.figure().axes) == 4  # one small heatmap per head
    explorer.view.value = "head"
    assert explorer.png in seen  # same state, same picture


def test_png_is_a_pure_function_of_the_state(explorer):
    explorer.show(model="bert", text=TEXT_A, layer=1, head=3, view="head")
    first = explorer.png
    explorer.show(layer=0)
    assert explorer.png != first
    explorer.show(layer=1)
    assert explorer.png == first
    assert figure_to_png(explorer.figure(), dpi=explorer.dpi, tight=False) == first


def test_token_view_shows_one_row(explorer):
    explorer.show(model="gpt2", text=TEXT_A, layer=1, head=1, view="token")
    n = len(explorer.data.tokens)
    assert explorer.query.value == n - 1  # starts on the last token
    assert explorer.query.layout.display == "" and explorer.token_html.layout.display == ""
    explorer.query.value = 2
    np.testing.assert_array_equal(explorer.current_row, explorer.current_weights[2])
    assert np.count_nonzero(explorer.current_row[3:]) == 0  # causal: nothing after the query
    bars = explorer.figure().axes[0].patches
    np.testing.assert_allclose([b.get_height() for b in bars], explorer.current_row)
    page = explorer.token_html.value
    assert page.count("<span") == n and "·cat" in page
    assert f'title="{explorer.current_row[0]:.4f}"' in page
    before = explorer.png
    explorer.query.value = 4
    assert explorer.png != before and not np.allclose(explorer.current_row[:3], explorer.current_weights[2, :3])
    explorer.show(view="head")
    assert explorer.query.layout.display == "none" and explorer.token_html.layout.display == "none"


def test_t5_kinds_resize_the_controls(explorer, hf_models):
    explorer.show(model="t5", text=TEXT_A, decoder_text=TEXT_B, view="head")
    assert [k for _, k in explorer.kind.options] == ["encoder", "decoder", "cross"]
    assert explorer.decoder_text.layout.display == ""
    data = explorer.data
    explorer.kind.value = "encoder"
    assert explorer.layer.max == 1  # 2 encoder layers
    enc_png = explorer.png
    explorer.kind.value = "decoder"
    assert explorer.layer.max == 2  # 3 decoder layers
    assert len(explorer.query.options) == len(data.decoder_tokens)
    assert explorer.png != enc_png
    explorer.show(kind="cross", layer=2)
    assert explorer.current_weights.shape == (len(data.decoder_tokens), len(data.tokens))
    explorer.show(view="token", query=1)
    np.testing.assert_array_equal(explorer.current_row, data.attentions["cross"][2, explorer.head.value, 1])
    explorer.decoder_text.value = "the fox"  # retyped target: new decoder tokens
    assert explorer.data.decoder_token_ids == [0] + hf_models["t5"][1]("the fox")["input_ids"][:-1]
    explorer.show(model="gpt2")  # a model without cross-attention falls back to its own kind
    assert explorer.kind.value == "self" and explorer.decoder_text.layout.display == "none"


def test_invalid_choices_raise_and_change_nothing(explorer):
    explorer.show(model="gpt2", text=TEXT_A, layer=1, head=1, view="head")
    png, state = explorer.png, (explorer.layer.value, explorer.head.value, explorer.text.value)
    with pytest.raises(ValueError, match=r"layer must be an integer in \[0, 1\], got 99: the model has 2 self-att"):
        explorer.show(layer=99)
    with pytest.raises(ValueError, match=r"head must be an integer in \[0, 3\], got 4"):
        explorer.show(head=4)
    with pytest.raises(ValueError, match=r"choose one of \['self'\]"):
        explorer.show(kind="cross")
    with pytest.raises(ValueError, match="choose one of"):
        explorer.show(view="table")
    with pytest.raises(ValueError, match=r"unknown model 'llama'"):
        explorer.show(model="llama")
    with pytest.raises(ValueError, match=r"layer must be an integer in \[0, 1\], got 5"):
        explorer.show(text=TEXT_B, layer=5)  # the text is not applied either
    assert explorer.png == png
    assert (explorer.layer.value, explorer.head.value, explorer.text.value) == state


def test_a_text_longer_than_the_context_is_shown_as_an_error(explorer):
    explorer.show(model="gpt2", text=TEXT_A, view="head")
    long_text = "the cat " * CONTEXT
    explorer.text.value = long_text  # typed by a student: no exception, a message
    assert explorer.error is not None and "at most 24 tokens" in explorer.error
    assert "Cannot show attention" in explorer.message.value and "context length" in explorer.message.value
    assert explorer.png == b"" and explorer.current_weights is None
    explorer.show(head=1)  # other controls still work (checked against the model)
    with pytest.raises(ValueError, match=r"head must be an integer in \[0, 3\], got 9"):
        explorer.show(head=9)
    explorer.show(text=long_text + "more")  # via show(): shown, not raised
    assert "at most 24 tokens" in explorer.error
    explorer.text.value = ""
    assert "empty" in explorer.error
    explorer.text.value = TEXT_A  # back to normal
    assert explorer.error is None and explorer.png and explorer.current_weights is not None
    assert explorer.head.value == 1


def test_explorer_cache_is_bounded_in_bytes(gpt2, gpt2_tok, monkeypatch):
    import llm_course.widgets.attention_explorer as widgets_module

    ex = AttentionExplorer(gpt2, gpt2_tok, texts=[TEXT_A, TEXT_B, "the cat"], dpi=30)
    one = ex.data.nbytes
    assert one == 2 * 4 * len(ex.data.tokens) ** 2 * 4  # layers x heads x T x T float32
    ex.text_choice.value = TEXT_B
    assert len(ex._cache) == 2  # both texts kept: switching back does not rerun the model
    monkeypatch.setattr(widgets_module, "_CACHE_BYTES", one)
    ex.text_choice.value = "the cat"
    assert list(ex._cache) == [("GPT2LMHeadModel", "the cat", None)]  # only the newest fits


def test_explorer_with_one_model_and_bad_arguments(bert, bert_tok, gpt2):
    one = AttentionExplorer(bert, bert_tok, texts=[TEXT_A])
    assert list(one.models) == ["BertForMaskedLM"] and one.model_choice.layout.display == "none"
    assert one.data.tokens[0] == "[CLS]" and one.data.tokens[-1] == "[SEP]"
    assert "Causal" not in one.message.value
    with pytest.raises(ValueError, match="tokenizer"):
        AttentionExplorer(bert)
    with pytest.raises(ValueError, match="not both"):
        AttentionExplorer(bert, bert_tok, models={"b": (bert, bert_tok)})
    with pytest.raises(TypeError, match=r"\(model, tokenizer\) pair"):
        AttentionExplorer(models={"b": bert})
    with pytest.raises(ValueError, match="texts"):
        AttentionExplorer(bert, bert_tok, texts=[])
    with pytest.raises(ValueError, match="texts"):
        AttentionExplorer(bert, bert_tok, texts=[["the", "cat"]])
    assert AttentionExplorer(bert, bert_tok, texts="the cat", dpi=30).text_choice.options == ("the cat",)
    # The first example is too long: the explorer still opens, showing why.
    opened = AttentionExplorer(gpt2, bert_tok, texts=["the cat " * CONTEXT])
    assert opened.error and opened.png == b""


# --------------------------------------------------------------------------------------
# The course's own models (llm_course.models.gpt / bert / t5), checked against their HF twins
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def course_models(course_tok):
    from llm_course.models.bert import BERT, BERTConfig
    from llm_course.models.gpt import GPT, GPTConfig
    from llm_course.models.t5 import T5
    from llm_course.models.t5 import T5Config as CourseT5Config

    torch.manual_seed(0)
    vocab = course_tok.vocab_size
    gpt = _peaky(GPT(GPTConfig(vocab_size=vocab, n_positions=CONTEXT, n_embd=32, n_layer=2, n_head=4)), 0.3)
    bert = _peaky(BERT(BERTConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=CONTEXT)), 0.3)
    t5 = _peaky(T5(CourseT5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                   num_decoder_layers=3, num_heads=4)), 0.3)
    return {"GPT": gpt.train(), "BERT": bert.train(), "T5": t5.train()}


@pytest.mark.parametrize("name", ["GPT", "BERT", "T5"])
def test_course_models_match_their_transformers_twins(course_models, course_tok, name):
    model = course_models[name]
    data = collect_attentions(model, course_tok, TEXT_B)
    assert model.training  # restored
    twin = model.to_hf()
    ref = eager_reference(twin, course_tok, TEXT_B, data.decoder_token_ids)
    assert sorted(data.attentions) == sorted(ref)
    for kind, weights in ref.items():
        np.testing.assert_allclose(data.attentions[kind], weights, atol=1e-5)
        np.testing.assert_allclose(data.attentions[kind].sum(-1), 1.0, atol=1e-5)
    assert data.byte_level and "".join(data.tokens) == TEXT_B.replace(" ", "·")


def test_course_models_in_the_explorer(course_models, course_tok):
    pairs = {name: (m, course_tok) for name, m in course_models.items()}
    ex = AttentionExplorer(models=pairs, texts=[TEXT_A, "кошка сидит на ковре"])
    assert ex.data.tokens[:2] == ["the", "·cat"]
    ex.show(layer=1, head=3)
    gpt_weights = ex.current_weights
    assert np.count_nonzero(np.triu(gpt_weights, 1)) == 0 and "Causal" in ex.message.value
    ex.model_choice.value = "BERT"
    assert "Causal" not in ex.message.value and not np.allclose(ex.current_weights, gpt_weights)
    ex.show(model="T5", kind="decoder", layer=2, view="grid")
    assert ex.data.decoder_token_ids[0] == course_models["T5"].config.decoder_start_token_id
    assert np.count_nonzero(np.triu(ex.current_weights, 1)) == 0 and len(ex.figure().axes) == 4
    ex.text_choice.value = "кошка сидит на ковре"
    labels = "".join(ex.data.tokens)  # a tiny vocabulary: letters split into bytes
    assert labels.startswith("ко") and "·" in labels and not set("ÐÑĠ") & set(labels)  # not 'ÐºÐ¾Ñ'
    ex.show(model="GPT", text="the cat " * CONTEXT)
    assert "at most 24 tokens" in ex.error
