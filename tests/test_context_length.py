"""Chapter 02: ``llm_course.models.modeling.context_length``, the one answer to "how long an input can this
model read?" that decoding (chapter 07), the attention explorer (chapter 03) and the apps (chapter 08) share.

Each expected value is the size of the model's own position table (``wpe`` / ``position_embeddings``): a
longer input would index past it. T5's relative position buckets have no table, so no limit (None).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch.nn as nn
from transformers import GPT2Config, GPT2LMHeadModel, T5Config, T5ForConditionalGeneration

from llm_course.models.bert import BERT, BERTConfig
from llm_course.models.gpt import GPT, GPTConfig
from llm_course.models.modeling import context_length
from llm_course.models.t5 import T5
from llm_course.models.t5 import T5Config as CourseT5Config


def test_course_models_read_their_position_tables():
    gpt = GPT(GPTConfig(vocab_size=50, n_positions=37, n_embd=16, n_layer=1, n_head=2))
    assert context_length(gpt) == 37 == gpt.wpe.num_embeddings
    bert = BERT(BERTConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=29))
    assert context_length(bert) == 29 == bert.position_embeddings.num_embeddings
    t5 = T5(CourseT5Config(vocab_size=50, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2))
    assert context_length(t5) is None  # relative positions: no table, no limit


def test_transformers_models():
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=24, n_embd=16, n_layer=1, n_head=2))
    assert context_length(gpt2) == 24 == gpt2.transformer.wpe.num_embeddings
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=50, d_model=16, d_kv=8, d_ff=32, num_layers=1,
                                             num_heads=2))
    assert context_length(t5) is None


@pytest.mark.parametrize("config, expected", [
    (SimpleNamespace(block_size=64), 64),  # nanoGPT's name
    (SimpleNamespace(max_seq_len=128), 128),
    (SimpleNamespace(n_positions=0, max_position_embeddings=16), 16),  # 0 is not a limit
    (SimpleNamespace(n_positions=True), None),  # a flag is not a length
    (SimpleNamespace(n_positions="1024"), None),
    (None, None),
])
def test_config_fields(config, expected):
    model = nn.Linear(1, 1)
    if config is not None:
        model.config = config
    assert context_length(model) == expected
