"""Chapter 07: the lean decode loop (preallocated KV cache) gives exactly what the full forward gives."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from llm_course.infer.generation import generate
from llm_course.infer.static_cache import StaticCacheDecoder
from llm_course.models.gpt import GPT, GPTBlock, GPTConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def _gpt(seed: int = 0, T: int = 40) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=61, n_positions=T, n_embd=24, n_layer=3, n_head=3)).eval()
    with torch.no_grad():
        model.wte.weight.mul_(6)  # peaky logits, so that greedy choices are decisive
    return model


def _full_last_logits(model: GPT, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token logits by running the whole sequence through the ordinary forward (no cache)."""
    with torch.no_grad():
        if mask is None:
            return model(ids).logits[:, -1].float()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return model(ids, attention_mask=mask, position_ids=positions).logits[:, -1].float()


def test_every_step_equals_the_full_forward():
    model = _gpt()
    torch.manual_seed(1)
    ids = torch.randint(0, 61, (2, 5))
    decoder = StaticCacheDecoder(model, batch_size=2, max_length=20)
    logits = decoder.prefill(ids)
    for _ in range(12):
        torch.testing.assert_close(logits, _full_last_logits(model, ids), atol=1e-5, rtol=1e-5)
        nxt = torch.randint(0, 61, (2,))  # any token, not only the argmax: the cache must not care
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        logits = decoder.step(nxt)
    torch.testing.assert_close(logits, _full_last_logits(model, ids), atol=1e-5, rtol=1e-5)
    assert decoder.length == ids.shape[1]


def test_left_padded_rows_equal_their_unpadded_selves():
    model = _gpt(seed=2)
    short, long = torch.tensor([7, 8]), torch.tensor([1, 2, 3, 4, 5])
    ids = torch.stack([torch.cat([torch.zeros(3, dtype=torch.long), short]), long])
    mask = torch.tensor([[0, 0, 0, 1, 1], [1, 1, 1, 1, 1]])
    decoder = StaticCacheDecoder(model, 2, 15)
    logits = decoder.prefill(ids, mask)
    rows = [short[None], long[None]]
    for step in range(6):
        for r in range(2):  # each row, decoded through the padded batch, equals the row alone
            torch.testing.assert_close(logits[r], _full_last_logits(model, rows[r])[0], atol=1e-5, rtol=1e-5)
        nxt = torch.tensor([3 + step, 40 - step])
        rows = [torch.cat([rows[r], nxt[r].view(1, 1)], dim=1) for r in range(2)]
        logits = decoder.step(nxt)


def test_reorder_follows_the_surviving_rows():
    model = _gpt(seed=3)
    ids = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    decoder = StaticCacheDecoder(model, 3, 10)
    decoder.prefill(ids)
    index = torch.tensor([2, 2, 0])
    decoder.reorder(index)
    nxt = torch.tensor([11, 12, 13])
    expected = _full_last_logits(model, torch.cat([ids[index], nxt[:, None]], dim=1))
    torch.testing.assert_close(decoder.step(nxt), expected, atol=1e-5, rtol=1e-5)


class _Shifted(nn.Module):
    """A wrapped Linear (as LoRA or a quantized layer would be): the decoder must call it, not its weight."""

    def __init__(self, inner: nn.Linear) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) + 0.3


def test_wrapped_linear_layers_are_used():
    model = _gpt(seed=4)
    ids = torch.tensor([[5, 6, 7, 8]])
    plain = StaticCacheDecoder(model, 1, 8).prefill(ids)
    for block in model.h:
        block.attn.qkv_proj = _Shifted(block.attn.qkv_proj)
        block.mlp.down_proj = _Shifted(block.mlp.down_proj)
    assert StaticCacheDecoder.supports(model)
    decoder = StaticCacheDecoder(model, 1, 8)
    decoder.prefill(ids[:, :3])
    wrapped = decoder.step(ids[:, 3])
    torch.testing.assert_close(wrapped, _full_last_logits(model, ids), atol=1e-5, rtol=1e-5)
    assert (wrapped - plain).abs().max() > 1e-2  # the wrapper really changed the output


class _OtherBlock(GPTBlock):
    pass


def test_unsupported_models_fall_back_to_the_ordinary_forward():
    model = _gpt(seed=5)
    ids = torch.tensor([[1, 2, 3]])
    expected = generate(model, ids, max_new_tokens=10)
    assert StaticCacheDecoder.supports(model)
    model.h[1].__class__ = _OtherBlock  # a changed block: the lean step cannot know its forward
    assert not StaticCacheDecoder.supports(model)
    assert not StaticCacheDecoder.supports(model.to_hf())
    with pytest.raises(TypeError, match="standard GPTBlock"):
        StaticCacheDecoder(model, 1, 10)
    assert torch.equal(generate(model, ids, max_new_tokens=10), expected)  # same ids by the other path


def test_generate_with_and_without_the_lean_loop_agree_when_sampling():
    model = _gpt(seed=6)
    ids = torch.tensor([[0, 0, 9, 10], [1, 2, 3, 4]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    settings = dict(max_new_tokens=15, do_sample=True, top_k=20, top_p=0.9, temperature=0.8, seed=0,
                    repetition_penalty=1.2)
    lean = generate(model, ids, mask, **settings)
    recomputed = generate(model, ids, mask, use_cache=False, **settings)
    assert torch.equal(lean, recomputed)


def test_bad_input():
    model = _gpt(T=16)
    with pytest.raises(ValueError, match="n_positions=16"):
        StaticCacheDecoder(model, 1, 17)
    decoder = StaticCacheDecoder(model, 1, 4)
    decoder.prefill(torch.tensor([[1, 2, 3]]))
    decoder.step(torch.tensor([4]))
    with pytest.raises(ValueError, match="cache is full"):
        decoder.step(torch.tensor([5]))
    with pytest.raises(ValueError, match="does not fit"):
        StaticCacheDecoder(model, 2, 4).prefill(torch.tensor([[1, 2, 3]]))
    dropout_model = GPT(GPTConfig(vocab_size=61, n_positions=16, n_embd=24, n_layer=1, n_head=3, dropout=0.1))
    with pytest.raises(ValueError, match="eval"):
        StaticCacheDecoder(dropout_model.train(), 1, 8)
