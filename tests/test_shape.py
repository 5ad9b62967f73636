"""``ModelShape``: the one type that sizes every model, recipe and config (chapters 01, 04, 09).

References: transformers' own configs and models (parameter counts on the meta device) and the
closed-form count of chapter 01."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import BertConfig

from llm_course.models.bert import BERT
from llm_course.models.gpt import GPT
from llm_course.models.intro import GPT_SHAPES, gpt_param_count
from llm_course.models.shape import ModelShape
from llm_course.train.distributed import DataParallelConfig
from llm_course.train.recipe import PretrainRecipe
from llm_course.zoo.recipes import ZOO

SHAPE_FIELDS = ("vocab_size", "n_layer", "n_head", "n_embd", "block_size")


def test_every_recipe_and_config_is_a_model_shape_with_the_same_five_fields():
    for cls in (PretrainRecipe, DataParallelConfig):
        assert issubclass(cls, ModelShape)
        assert tuple(f.name for f in dataclasses.fields(cls))[:5] == SHAPE_FIELDS  # defined once, in ModelShape
    assert all(isinstance(shape, ModelShape) for shape in GPT_SHAPES.values())
    assert isinstance(ZOO["course-gpt"], PretrainRecipe) and isinstance(ZOO["course-bert"], PretrainRecipe)


def test_gpt_config_counts_the_parameters_of_the_closed_form():
    shape = ModelShape(vocab_size=300, n_layer=2, n_head=2, n_embd=32, block_size=16)
    config = shape.gpt_config()
    assert (config.vocab_size, config.n_layer, config.n_head, config.n_embd, config.n_positions) == (300, 2, 2, 32, 16)
    assert config.dropout == 0.0 and shape.gpt_config(vocab_size=512, dropout=0.1).vocab_size == 512
    with torch.device("meta"):
        closed_form = 2 * (12 * 32**2 + 13 * 32) + (300 + 16) * 32 + 2 * 32  # blocks, embeddings, final norm
        assert GPT(config).num_parameters() == gpt_param_count(2, 32, 300, 16) == closed_form


def test_bert_config_matches_transformers_bert_of_the_same_shape():
    shape = ModelShape(vocab_size=300, n_layer=2, n_head=4, n_embd=64, block_size=32)
    ours = shape.bert_config()
    hf = BertConfig(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=256, max_position_embeddings=32, pad_token_id=0)
    for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "max_position_embeddings", "pad_token_id"):
        assert getattr(ours, name) == getattr(hf, name), name
    with torch.device("meta"):
        assert isinstance(BERT(ours), BERT) and ours.hidden_dropout_prob == ours.attention_probs_dropout_prob == 0.0


@pytest.mark.parametrize("bad, error, match", [
    (dict(n_layer=0), ValueError, "n_layer must be a positive integer, got 0"),
    (dict(block_size=1), ValueError, "block_size"),
    (dict(n_embd=130, n_head=4), ValueError, "divisible"),
    (dict(n_head=2.0), TypeError, "n_head must be a positive integer, got float"),
    (dict(vocab_size=True), TypeError, "vocab_size must be an integer >= 2, got bool"),
])
def test_bad_shapes_name_the_field_with_the_rule(bad, error, match):
    with pytest.raises(error, match=match):
        ModelShape(**bad)
    with pytest.raises(error, match=match):
        PretrainRecipe(**bad)  # the recipe checks its shape the same way


def test_shape_is_keyword_only_and_frozen():
    with pytest.raises(TypeError):
        ModelShape(4096, 4)  # positional numbers are easy to swap: n_layer or n_head?
    with pytest.raises(dataclasses.FrozenInstanceError):
        ModelShape().n_layer = 8
