"""Chapter 07: ONNX export with dynamic axes, ONNX Runtime logits and greedy ids against PyTorch."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from transformers import GPT2Config, GPT2LMHeadModel

from llm_course.core.deps import MissingDependencyError
from llm_course.infer.generation import generate
from llm_course.infer.onnx_export import (
    LogitsOnly,
    OnnxCausalLM,
    available_providers,
    check_onnx_logits,
    execution_providers,
    export_onnx,
    quantize_onnx_int8,
    tensorrt_session,
    tensorrt_status,
)
from llm_course.models.gpt import GPT, GPTConfig

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

CONFIG = GPTConfig(vocab_size=97, n_positions=24, n_embd=32, n_layer=2, n_head=4)


def _ids(B: int, T: int, seed: int, vocab: int = CONFIG.vocab_size) -> torch.Tensor:
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(CONFIG).eval()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory) -> OnnxCausalLM:
    """One export (the current, dynamo-based exporter) shared by the tests."""
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "gpt.onnx")
    return OnnxCausalLM(path, intra_op_num_threads=1)


def test_graph_has_dynamic_batch_and_sequence_axes(exported):
    (inp,), (out,) = exported.session.get_inputs(), exported.session.get_outputs()
    assert (inp.name, out.name) == ("input_ids", "logits")  # one input, one output: no cache, no dict
    assert isinstance(inp.shape[0], str) and isinstance(inp.shape[1], str)  # symbolic, not fixed numbers
    assert out.shape[2] == CONFIG.vocab_size
    assert exported.n_positions == CONFIG.n_positions and exported.vocab_size == CONFIG.vocab_size
    assert exported.providers == ["CPUExecutionProvider"]


@pytest.mark.parametrize("B,T", [(1, 5), (4, 24), (3, 1)])  # the export traced (2, 8): other sizes must work
def test_onnx_logits_match_pytorch(model, exported, B, T):
    ids = _ids(B, T, seed=B * 100 + T)
    assert exported(ids).shape == (B, T, CONFIG.vocab_size)
    assert check_onnx_logits(model, exported, ids, atol=1e-4) <= 1e-4


def test_check_onnx_logits_detects_a_different_model(model, exported):
    other = GPT(CONFIG).eval()  # fresh random weights
    with pytest.raises(ValueError, match="differ from PyTorch"):
        check_onnx_logits(other, exported, _ids(2, 6, seed=3))


def test_onnx_greedy_ids_equal_pytorch_greedy(model, exported):
    prompt = _ids(3, 4, seed=7)
    # 30 new tokens: past n_positions=24, so both must slide the window the same way
    expected = generate(model, prompt, max_new_tokens=30, slide_context=True)
    got = exported.generate(prompt, 30)
    assert got.shape == (3, 34)
    assert torch.equal(got, expected)


def test_onnxruntime_int8_quantization(model, exported, tmp_path):
    path = quantize_onnx_int8(exported.path, tmp_path / "gpt-int8.onnx")
    q = OnnxCausalLM(path, intra_op_num_threads=1)
    assert q.n_positions == CONFIG.n_positions  # the metadata survives
    assert path.stat().st_size < 0.75 * exported.path.stat().st_size  # int8 weights (embeddings stay float)
    ids = _ids(2, 16, seed=4)
    ref = exported(ids)
    assert (q(ids) - ref).abs().max() < 0.05 * ref.abs().max()  # 8-bit weights saturate on AVX2: 20%
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul"}  # integer matrix products
    with pytest.raises(FileNotFoundError, match="export_onnx"):
        quantize_onnx_int8(tmp_path / "missing.onnx", tmp_path / "out.onnx")


def test_numpy_input_and_bad_input(exported):
    ids = _ids(2, 5, seed=1)
    torch.testing.assert_close(exported(ids.numpy().astype(np.int32)), exported(ids))
    with pytest.raises(ValueError, match="sequence too long.*n_positions=24"):
        exported(_ids(1, 25, seed=0))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        exported(torch.tensor([[1, CONFIG.vocab_size]]))
    with pytest.raises(TypeError, match="integer"):
        exported(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="batch, seq_len"):
        exported(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="max_new_tokens must be a non-negative integer, got -1"):
        exported.generate(ids, -1)
    with pytest.raises(TypeError, match="max_new_tokens must be a non-negative integer, got bool"):
        exported.generate(ids, True)


def test_export_bad_input(tmp_path, model):
    with pytest.raises(TypeError, match="GPT2LMHeadModel"):
        export_onnx(nn.Linear(3, 3), tmp_path / "x.onnx")
    with pytest.raises(TypeError, match="LogitsOnly wraps"):
        LogitsOnly(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="more than the model's n_positions"):
        export_onnx(model, tmp_path / "x.onnx", example_input_ids=_ids(1, 30, seed=0))
    with pytest.raises(TypeError, match="example_input_ids must be a .* tensor of token ids, got list"):
        export_onnx(model, tmp_path / "x.onnx", example_input_ids=[[1, 2, 3]])
    with pytest.raises(ValueError, match=r"example_input_ids must have shape \(batch, seq_len\), got \(3,\)"):
        export_onnx(model, tmp_path / "x.onnx", example_input_ids=torch.tensor([1, 2, 3]))
    with pytest.raises(FileNotFoundError, match="export_onnx"):
        OnnxCausalLM(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="intra_op_num_threads"):
        OnnxCausalLM(tmp_path / "missing.onnx", intra_op_num_threads=0)


def test_missing_package_is_a_clear_error(tmp_path, model, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(MissingDependencyError, match="pip install onnxruntime"):
        available_providers()
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(MissingDependencyError, match="pip install onnxscript"):
        export_onnx(model, tmp_path / "x.onnx")


def test_execution_providers():
    assert execution_providers("cpu") == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in available_providers():
        with pytest.raises(ValueError, match="pip install onnxruntime-gpu"):
            execution_providers("cuda")
    else:  # pragma: no cover - only on a machine with onnxruntime-gpu
        assert execution_providers("cuda")[-1] == "CPUExecutionProvider"
    with pytest.raises(ValueError, match="device must be one of"):
        execution_providers("tpu")


def test_tensorrt_status_names_what_is_missing(monkeypatch, tmp_path):
    """Each missing piece (GPU, TensorRT, onnxruntime's provider) is named, with what to install."""
    import importlib.util

    import llm_course.infer.onnx_export as ox

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ready, why = tensorrt_status()
    assert not ready and "no CUDA GPU" in why
    with pytest.raises(RuntimeError, match="TensorRT cannot run here: no CUDA GPU"):
        tensorrt_session(tmp_path / "gpt.onnx")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorrt" else real_find_spec(name, *a))
    ready, why = tensorrt_status()
    assert not ready and "pip install tensorrt" in why
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    monkeypatch.setattr(ox, "available_providers", lambda: ["CPUExecutionProvider"])
    ready, why = tensorrt_status()
    assert not ready and "pip install onnxruntime-gpu" in why and "CPUExecutionProvider" in why


@pytest.mark.skipif(not tensorrt_status()[0], reason="needs a CUDA GPU, TensorRT and onnxruntime-gpu")
def test_tensorrt_logits_match_pytorch(model, exported):  # pragma: no cover - only where TensorRT runs
    session = tensorrt_session(exported.path)
    x = _ids(2, 9, seed=3)
    assert check_onnx_logits(model, session, x, atol=5e-2) <= 5e-2  # TF32 matmuls: not 1e-5
    assert session.generate(x[:1], 8).shape == (1, 17)


def test_legacy_torchscript_exporter(model, tmp_path):
    """dynamo=False: the deprecated exporter (dynamic_axes) still gives a graph with dynamic axes."""
    ort_model = OnnxCausalLM(export_onnx(model, tmp_path / "legacy.onnx", dynamo=False), intra_op_num_threads=1)
    for B, T in [(1, 3), (3, 24)]:
        assert check_onnx_logits(model, ort_model, _ids(B, T, seed=T)) <= 1e-4


def test_transformers_gpt2_through_the_wrapper(model, tmp_path):
    """A GPT2LMHeadModel returns a dict with the KV cache; LogitsOnly leaves the logits only."""
    hf = model.to_hf().eval()
    assert isinstance(hf, GPT2LMHeadModel)
    path = export_onnx(hf, tmp_path / "gpt2.onnx")
    ort_model = OnnxCausalLM(path, intra_op_num_threads=1)
    for B, T in [(1, 3), (5, 24)]:
        assert check_onnx_logits(hf, ort_model, _ids(B, T, seed=T)) <= 1e-4
    prompt = _ids(2, 3, seed=5)
    assert torch.equal(ort_model.generate(prompt, 8), generate(model, prompt, max_new_tokens=8))
    # a GPT2 built directly from a config (not converted) works the same
    torch.manual_seed(1)
    raw = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                                     bos_token_id=None, eos_token_id=None)).eval()
    assert LogitsOnly(raw)(_ids(2, 5, seed=0, vocab=50)).shape == (2, 5, 50)
