"""Chapter 07: the cached ONNX graph (past_key_values in, present out) against PyTorch's cached decoding."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from llm_course.core.deps import MissingDependencyError
from llm_course.infer.generation import generate
from llm_course.infer.onnx_cache import CachedStep, OnnxCachedLM, cache_names, export_onnx_cached
from llm_course.infer.onnx_export import export_onnx
from llm_course.models.gpt import GPT, GPTConfig

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

CONFIG = GPTConfig(vocab_size=97, n_positions=40, n_embd=32, n_layer=2, n_head=4)


def _ids(B: int, T: int, seed: int) -> torch.Tensor:
    return torch.randint(0, CONFIG.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(CONFIG).eval()


@pytest.fixture(scope="module")
def cached(model, tmp_path_factory) -> OnnxCachedLM:
    """One dynamo export of the course GPT's cached step, shared by the tests."""
    return OnnxCachedLM(export_onnx_cached(model, tmp_path_factory.mktemp("kv") / "gpt-kv.onnx"),
                        intra_op_num_threads=1)


def test_graph_inputs_and_outputs_are_optimums(cached):
    inputs = {i.name: i.shape for i in cached.session.get_inputs()}
    outputs = {o.name: o.shape for o in cached.session.get_outputs()}
    assert list(inputs) == ["input_ids", "past_key_values.0.key", "past_key_values.0.value",
                            "past_key_values.1.key", "past_key_values.1.value"]
    assert list(outputs) == ["logits", "present.0.key", "present.0.value", "present.1.key", "present.1.value"]
    assert (list(inputs), list(outputs)) == cache_names(2)
    # batch, seq and past are symbols (dynamic); heads and head size are numbers
    past_shape, present_shape = inputs["past_key_values.0.key"], outputs["present.0.key"]
    assert all(isinstance(d, str) for d in inputs["input_ids"])
    assert isinstance(past_shape[0], str) and isinstance(past_shape[2], str) and past_shape[1::2] == [4, 8]
    assert present_shape[1] == 4 and present_shape[3] == 8 and isinstance(present_shape[2], str)
    assert outputs["logits"][2] == CONFIG.vocab_size


def test_prefill_and_steps_match_the_full_forward(model, cached):
    """Prompt through an empty cache, then one token at a time: every logit equals PyTorch's full forward."""
    ids = _ids(2, 12, seed=1)
    logits, past = cached.step(ids[:, :7].numpy(), cached.empty_past(2))
    assert logits.shape == (2, 7, CONFIG.vocab_size)
    assert [p.shape for p in past] == [(2, 4, 7, 8)] * 4
    steps = [logits]
    for t in range(7, 12):
        logits, past = cached.step(ids[:, t:t + 1].numpy(), past)
        steps.append(logits)
    assert past[0].shape == (2, 4, 12, 8)
    with torch.no_grad():
        ref = model(ids).logits.numpy()
    np.testing.assert_allclose(np.concatenate(steps, axis=1), ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("batch,prompt_len,new", [(1, 5, 20), (3, 9, 12)])
def test_generate_gives_pytorch_cached_ids(model, cached, batch, prompt_len, new):
    prompt = _ids(batch, prompt_len, seed=prompt_len)
    ours = cached.generate(prompt, new)
    ref = generate(model, prompt, max_new_tokens=new)  # PyTorch, KV cache on
    assert ours.shape == (batch, prompt_len + new)
    assert torch.equal(ours, ref)


def test_hf_gpt2_through_the_same_wrapper(model, tmp_path):
    """transformers' GPT2LMHeadModel (same weights) exported by the same code: same ids as its own generate."""
    hf = model.to_hf().eval()
    session = OnnxCachedLM(export_onnx_cached(hf, tmp_path / "gpt2-kv.onnx"), intra_op_num_threads=1)
    assert session.n_layer == 2 and session.n_head == 4 and session.head_dim == 8
    prompt = _ids(2, 6, seed=3)
    ref = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=15, min_new_tokens=15,
                      do_sample=False, pad_token_id=0)
    assert torch.equal(session.generate(prompt, 15), ref)


def test_torchscript_exporter_for_the_course_gpt(model, tmp_path):
    session = OnnxCachedLM(export_onnx_cached(model, tmp_path / "ts.onnx", dynamo=False))
    prompt = _ids(1, 4, seed=4)
    assert torch.equal(session.generate(prompt, 10), generate(model, prompt, max_new_tokens=10))
    with pytest.raises(ValueError, match="use dynamo=True"):
        export_onnx_cached(model.to_hf(), tmp_path / "hf-ts.onnx", dynamo=False)


def test_clear_errors(model, cached, tmp_path, monkeypatch):
    with pytest.raises(TypeError, match="GPT2LMHeadModel"):
        CachedStep(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="LongTensor"):
        cached.generate(torch.zeros(1, 3), 2)
    with pytest.raises(ValueError, match="n_positions=40"):
        cached.generate(_ids(1, 30, seed=0), 11)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        cached.generate(torch.tensor([[1, 200]]), 1)
    with pytest.raises(FileNotFoundError, match="export_onnx_cached"):
        OnnxCachedLM(tmp_path / "missing.onnx")
    plain = export_onnx(model, tmp_path / "plain.onnx", dynamo=False)  # the graph without a cache
    with pytest.raises(ValueError, match="not a cached graph"):
        OnnxCachedLM(plain)
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if the exporter's translator were missing
    with pytest.raises(MissingDependencyError, match="pip install onnxscript"):
        export_onnx_cached(model, tmp_path / "x.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the runtime were missing
    with pytest.raises(MissingDependencyError, match="pip install onnxruntime"):
        OnnxCachedLM(plain)


def test_same_ids_as_optimums_export(model, tmp_path):
    """Optimum's ONNX Runtime export of the same weights: its names are ours, its ids are ours and PyTorch's.

    optimum.onnxruntime (optimum-onnx 0.1.0) needs transformers<4.58, so this runs in the third environment
    (`make optimum-env`, then `.venv-optimum/bin/python -m pytest tests/test_onnx_cache.py`) and is skipped
    in the main one."""
    import transformers

    ort_models = pytest.importorskip(
        "optimum.onnxruntime", reason=f"optimum-onnx is not installed (it needs transformers<4.58, this is "
        f"{transformers.__version__}): make optimum-env, then run this file with .venv-optimum/bin/python -m pytest")
    hf = model.to_hf().eval()
    hf.save_pretrained(tmp_path / "hf")  # a transformers folder, as a student would hand it to Optimum
    theirs = ort_models.ORTModelForCausalLM.from_pretrained(tmp_path / "hf", export=True, use_cache=True)
    ours = OnnxCachedLM(export_onnx_cached(hf, tmp_path / "ours.onnx"), intra_op_num_threads=1)
    # the cache goes in and out under the same names; Optimum's graph also takes attention_mask and position_ids
    their_inputs = [i.name for i in theirs.session.get_inputs()]
    their_outputs = [o.name for o in theirs.session.get_outputs()]
    assert their_outputs == ours.output_names
    assert [n for n in their_inputs if n not in ("attention_mask", "position_ids")] == ours.input_names
    prompt = _ids(2, 6, seed=5)
    ref = theirs.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=20, min_new_tokens=20,
                          do_sample=False, pad_token_id=0)
    assert ref.shape == (2, 26)
    assert torch.equal(ours.generate(prompt, 20), ref)
    assert torch.equal(generate(model, prompt, max_new_tokens=20), ref)  # and PyTorch's cached decoding
