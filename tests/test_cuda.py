"""The course's CUDA code paths, checked by numbers on a real GPU (skipped without one).

Everything the notebooks do on a GPU and the CPU test suite cannot reach: mixed precision in the training
loop (bf16, fp16 with a GradScaler) against fp32, checkpoints written on the GPU and read on the CPU, the
fused attention kernels against the written-out attention (masks, fully masked rows), greedy decoding on
the GPU against the CPU (shipped course-gpt, with and without the KV cache, the lean static-cache loop,
transformers' GPT-2), NF4 / QLoRA on the GPU and against bitsandbytes, chapter 09's CUDA memory figures,
and ONNX Runtime / TensorRT. Run by ``benchmarks/gpu_check.sh`` on a GPU machine; every tolerance is
stated next to its assert. Optional packages (bitsandbytes, onnxruntime) are imported inside their tests.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from llm_course.core.runtime import describe_device, get_device
from llm_course.infer.generation import generate
from llm_course.infer.onnx_export import (
    OnnxCausalLM,
    available_providers,
    check_onnx_logits,
    execution_providers,
    export_onnx,
    tensorrt_session,
    tensorrt_status,
)
from llm_course.infer.static_cache import StaticCacheDecoder
from llm_course.models.gpt import GPT, GPTConfig
from llm_course.nn.attention import (
    MultiHeadAttention,
    fast_scaled_dot_product_attention,
    padding_mask,
    scaled_dot_product_attention,
)
from llm_course.nn.quant_formats import NF4_CODE, nf4_dequantize, nf4_quantize
from llm_course.nn.quantization import NF4Linear, quantize_nf4
from llm_course.train.checkpoints import load_checkpoint, save_checkpoint
from llm_course.train.loop import TrainConfig, configure_optimizer, train
from llm_course.train.practices import activation_memory, checkpointing_report, compare_precisions
from llm_course.train.precision import autocast_context, check_precision, resolve_precision
from llm_course.train.qlora import apply_qlora, bitsandbytes_qlora
from llm_course.zoo.loading import checkpoint_dir, load_pretrained

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (torch.cuda.is_available() is False)")

DEVICE = "cuda"


def tiny_gpt(seed: int = 0, **overrides) -> nn.Module:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**dict(vocab_size=64, n_positions=32, n_embd=64, n_layer=2, n_head=4), **overrides}))


def pattern_batches(n: int, batch: int = 8, length: int = 32, vocab: int = 64) -> list[dict[str, torch.Tensor]]:
    """Batches of a learnable text: each row counts up by a row-specific step (mod vocab) from a random start."""
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        start = torch.randint(0, vocab, (batch, 1), generator=g)
        step = torch.randint(1, 4, (batch, 1), generator=g)
        ids = (start + step * torch.arange(length)) % vocab  # (B, T)
        out.append({"input_ids": ids, "labels": ids})
    return out


def train_run(precision: str, steps: int = 30, device: str = DEVICE, **cfg):
    model = tiny_gpt()
    batches = pattern_batches(steps)
    config = TrainConfig(max_steps=steps, lr=3e-3, min_lr=3e-4, warmup_steps=3, eval_interval=steps,
                         log_interval=0, progress=False, live_plot=False, device=device, precision=precision, **cfg)
    return model, train(model, lambda i: batches[i % len(batches)], config)


# ------------------------------------------------------------------------------ devices (chapter 01)


def test_get_device_and_describe_device(monkeypatch):
    monkeypatch.delenv("LLM_COURSE_DEVICE", raising=False)
    assert get_device("cuda") == torch.device("cuda")
    assert get_device("auto").type == DEVICE  # auto prefers CUDA
    assert get_device(torch.device("cuda:0")) == torch.device("cuda:0")
    text = describe_device(torch.device(DEVICE))
    props = torch.cuda.get_device_properties(0)
    assert text.startswith(f"cuda: {props.name}, ")
    assert f"{props.total_memory / 2**30:.1f} GiB" in text
    assert text.endswith("bf16=yes" if torch.cuda.is_bf16_supported() else "bf16=no")


# ------------------------------------------------------------------------------ precision (chapters 04, 09)


def test_precision_resolution_and_autocast_dtypes_on_cuda():
    device = torch.device(DEVICE)
    assert resolve_precision("auto", device) == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    assert resolve_precision("fp16", DEVICE) == "fp16"  # allowed on CUDA (a ValueError on the CPU)
    check_precision("fp16", device)
    with pytest.raises(ValueError, match="precision must be one of"):
        check_precision("half", device)
    a = torch.randn(8, 8, device=DEVICE)
    for precision, dtype in [("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)]:
        with autocast_context(precision, DEVICE):
            assert (a @ a).dtype == dtype, precision
    assert (a @ a).dtype == torch.float32  # nothing leaks out of the with block


@pytest.fixture(scope="module")
def fp32_run():
    model, result = train_run("fp32")
    return result.losses


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_train_in_mixed_precision_on_cuda_tracks_fp32(precision, fp32_run):
    model, result = train_run(precision)
    losses = result.losses
    assert result.precision == precision and len(losses) == 30
    assert all(math.isfinite(x) for x in losses)
    # decreasing: the last 5 steps' mean is well below the first 5 (fp32 goes from ~4.2 to ~1 here)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0
    # close to fp32 step by step: bf16 keeps 8 significant bits, fp16 11; the weights and AdamW stay fp32.
    # Measured on the CPU in bf16: max |diff| 5e-4 over these 30 steps. One update skipped by fp16's
    # GradScaler would shift the curve by a step: fp32's own curve against itself shifted differs by 0.19.
    diffs = [abs(a - b) for a, b in zip(losses, fp32_run)]
    tolerance = 0.1 if result.skipped_steps == 0 else 0.3
    assert max(diffs) < tolerance, (precision, max(diffs), result.skipped_steps)
    assert abs(losses[-1] - fp32_run[-1]) < 0.05
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    if precision == "fp16":
        # the GradScaler skips an update only when the scaled gradients overflow; it records each one
        assert result.skipped_steps == sum(1 for h in result.history if h.get("skipped"))
        assert result.skipped_steps <= 2
    else:
        assert result.skipped_steps == 0


def test_checkpoint_written_on_cuda_loads_on_cpu_and_resumes_on_cuda(tmp_path):
    # a run checkpointed every 5 steps, and an uninterrupted one of 10 steps
    model, first = train_run("fp32", steps=10, checkpoint_dir=tmp_path / "full", checkpoint_interval=5)
    assert next(model.parameters()).device.type == DEVICE and first.checkpoint.is_file()

    # the file written on the GPU loads into a CPU model, bit for bit
    cpu_model = tiny_gpt(seed=123)  # other weights, to be overwritten
    cpu_opt = configure_optimizer(cpu_model, 0.1, 1e-3)
    ckpt = load_checkpoint(first.checkpoint, cpu_model, cpu_opt, restore_rng=False)
    assert ckpt.step == 10
    for (name, a), b in zip(model.state_dict().items(), cpu_model.state_dict().values()):
        assert b.device.type == "cpu"
        assert torch.equal(a.cpu(), b), name
    state = next(iter(cpu_opt.state.values()))
    assert state["exp_avg"].device.type == "cpu" and float(state["step"]) == 10

    # a CPU-made checkpoint loads onto the GPU model too
    path = save_checkpoint(tmp_path / "cpu.safetensors", cpu_model, cpu_opt, step=10)
    gpu_model = tiny_gpt(seed=7).to(DEVICE)
    gpu_opt = configure_optimizer(gpu_model, 0.1, 1e-3)
    load_checkpoint(path, gpu_model, gpu_opt, restore_rng=False)
    assert all(torch.equal(a.cpu(), b) for a, b in zip(gpu_model.state_dict().values(),
                                                       cpu_model.state_dict().values()))
    assert next(iter(gpu_opt.state.values()))["exp_avg"].device.type == DEVICE

    # stopped after 5 steps and resumed on the GPU: the same losses as the run that never stopped
    batches = pattern_batches(10)
    cfg = dict(lr=3e-3, min_lr=3e-4, warmup_steps=3, eval_interval=10, log_interval=0, progress=False,
               live_plot=False, device=DEVICE, checkpoint_dir=tmp_path / "half")

    def stop_at_5(record, result):  # a callback that stops the run (train saves a checkpoint first)
        return record["step"] == 5

    half = train(tiny_gpt(), lambda i: batches[i], TrainConfig(max_steps=10, **cfg), callbacks=[stop_at_5])
    assert half.step == 5 and half.stopped_early
    # the same config (the learning rate is a function of the step and max_steps), other initial weights
    resumed = train(tiny_gpt(seed=99), lambda i: batches[i], TrainConfig(max_steps=10, **cfg),
                    resume_from=tmp_path / "half")
    assert resumed.step == 10
    # seed_everything asks for deterministic algorithms; 1e-5 allows for a non-deterministic CUDA reduction
    torch.testing.assert_close(torch.tensor(resumed.losses), torch.tensor(first.losses), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------ attention (chapter 03)


def _attention_module(dtype=torch.float32):
    torch.manual_seed(0)
    return MultiHeadAttention(64, 4).to(DEVICE, dtype).eval()


# fused (SDPA) vs written-out: fp32 agrees to float rounding; bf16 to its 8 bits (outputs are O(0.5); the
# written-out path rounds scores and weights to bf16, the fused kernels accumulate in fp32). A wrong mask
# moves outputs by O(0.1-1).
TOLERANCES = {torch.float32: 2e-5, torch.bfloat16: 4e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fused_attention_matches_written_out_attention_on_cuda(dtype):
    mha = _attention_module(dtype)
    torch.manual_seed(1)
    x = torch.randn(3, 12, 64, device=DEVICE, dtype=dtype)
    # left padding: row 1 has 4 padding tokens, row 2 has 9; row 0 none
    attention_mask = torch.ones(3, 12, dtype=torch.long, device=DEVICE)
    attention_mask[1, :4] = 0
    attention_mask[2, :9] = 0
    bias = torch.randn(1, 4, 12, 12, device=DEVICE, dtype=dtype)  # a T5-style additive bias, per head
    cases = {
        "causal": dict(is_causal=True),
        "causal + padding": dict(is_causal=True, attn_mask=padding_mask(attention_mask)),
        "padding": dict(attn_mask=padding_mask(attention_mask)),
        "additive bias": dict(attn_mask=bias),
    }
    with torch.no_grad():
        for name, kwargs in cases.items():
            fused = mha(x, **kwargs)
            explicit = mha(x, need_weights=True, **kwargs)
            assert fused.weights is None and explicit.weights is not None
            assert fused.output.dtype == dtype and torch.isfinite(fused.output).all(), name
            torch.testing.assert_close(fused.output, explicit.output, atol=TOLERANCES[dtype], rtol=0, msg=name)
            torch.testing.assert_close(explicit.weights.float().sum(-1)[0], torch.ones(4, 12, device=DEVICE),
                                       atol=1e-2, rtol=0)  # every row of row 0 sums to 1

    # left padding under a causal mask: a padding query sees only padding keys, i.e. nothing. Its attention
    # output is 0 on both paths, so the module returns out_proj(0) = out_proj's bias, exactly.
    kwargs = dict(is_causal=True, attn_mask=padding_mask(attention_mask))
    with torch.no_grad():
        for need_weights in (False, True):
            out = mha(x, need_weights=need_weights, **kwargs).output
            expected = mha.out_proj.bias.expand(9, 64)
            torch.testing.assert_close(out[2, :9], expected, atol=0, rtol=0)
            torch.testing.assert_close(out[1, :4], expected[:4], atol=0, rtol=0)
    # and the bf16 answer is the fp32 one to bf16's precision
    if dtype == torch.bfloat16:
        ref = _attention_module(torch.float32)
        with torch.no_grad():
            torch.testing.assert_close(mha(x, **kwargs).output.float(), ref(x.float(), **kwargs).output,
                                       atol=6e-2, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
def test_fully_masked_rows_give_zeros_and_finite_gradients_on_cuda(dtype):
    fast = fast_scaled_dot_product_attention
    explicit = scaled_dot_product_attention
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 6, 16, device=DEVICE, dtype=dtype, requires_grad=True) for _ in range(3))
    mask = torch.ones(2, 1, 6, 6, dtype=torch.bool, device=DEVICE)
    mask[0, :, 2] = False  # query 2 of batch 0 may see no key
    for attend in (fast, explicit):
        out, _ = attend(q, k, v, attn_mask=mask)
        assert torch.isfinite(out).all(), attend.__name__
        assert torch.equal(out[0, :, 2], torch.zeros_like(out[0, :, 2])), attend.__name__
        out.float().sum().backward()
        for t in (q, k, v):
            assert torch.isfinite(t.grad).all(), attend.__name__
            t.grad = None
    tol = 2e-6 if dtype == torch.float32 else 2e-2
    with torch.no_grad():
        torch.testing.assert_close(fast(q, k, v, attn_mask=mask)[0], explicit(q, k, v, attn_mask=mask)[0],
                                   atol=tol, rtol=0)


def test_pytorch_sdpa_returns_zeros_for_fully_masked_rows_on_cuda():
    """attention.py's docstring: PyTorch's kernels return zeros for such rows since torch 2.5 (NaN on 2.4)."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 4, 16, device=DEVICE) for _ in range(3))
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool, device=DEVICE)
    mask[0, 0, 1] = False
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.equal(out[0, :, 1], torch.zeros_like(out[0, :, 1])), out[0, :, 1]


def test_fused_attention_runs_on_the_flash_kernel_in_bf16():
    """Causal self-attention without a mask is what the flash kernel takes; the course's call must qualify."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    mha = _attention_module(torch.bfloat16)
    x = torch.randn(2, 128, 64, device=DEVICE, dtype=torch.bfloat16)
    with torch.no_grad():
        explicit = mha(x, is_causal=True, need_weights=True).output
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):  # an error if flash cannot run this call
            flash = mha(x, is_causal=True).output
    torch.testing.assert_close(flash, explicit, atol=2e-2, rtol=0)


# ------------------------------------------------------------------------------ generation (chapter 07)


@pytest.fixture(scope="module")
def course_gpt():
    model, tok = load_pretrained("course-gpt")
    return model, tok


def _same_greedy_ids(cpu_model, ids_cpu: torch.Tensor, ids_gpu: torch.Tensor, prompt_length: int,
                     margin: float = 1e-3) -> None:
    """GPU and CPU greedy ids are equal, or part ways only where the CPU's two best logits are within ``margin``
    (a near tie that float rounding may break either way)."""
    ids_gpu = ids_gpu.cpu()
    assert ids_gpu.shape == ids_cpu.shape
    if torch.equal(ids_gpu, ids_cpu):
        return
    for row in range(ids_cpu.shape[0]):
        differ = (ids_cpu[row] != ids_gpu[row]).nonzero()
        if len(differ) == 0:
            continue
        t = int(differ[0])
        assert t >= prompt_length
        with torch.no_grad():
            logits = cpu_model(ids_cpu[row : row + 1, :t]).logits[0, -1]
        gap = float(logits[ids_cpu[row, t]] - logits[ids_gpu[row, t]])
        assert gap < margin, f"row {row} differs at position {t} though the CPU's choice wins by {gap:.4f}"


def test_greedy_generation_on_cuda_matches_cpu(course_gpt):
    import copy

    model, tok = course_gpt
    prompt = torch.tensor([tok.encode("Once upon a time, there was a little")])
    on_cpu = generate(model, prompt, max_new_tokens=24)
    gpu_model = copy.deepcopy(model).to(DEVICE)
    for use_cache in (True, False):  # True: the static-cache loop; False: the whole text every step
        ids = generate(gpu_model, prompt.to(DEVICE), max_new_tokens=24, use_cache=use_cache)
        assert ids.device.type == DEVICE and ids.shape == (1, prompt.shape[1] + 24)
        _same_greedy_ids(model, on_cpu, ids, prompt.shape[1])

    # a left-padded batch of two prompts on the GPU: each row as on the CPU
    a, b = tok.encode("The cat sat"), tok.encode("In the morning the sun was shining and")
    width = max(len(a), len(b))
    batch = torch.tensor([[0] * (width - len(a)) + a, b])
    mask = torch.tensor([[0] * (width - len(a)) + [1] * len(a), [1] * len(b)])
    on_cpu = generate(model, batch, mask, max_new_tokens=16)
    on_gpu = generate(gpu_model, batch.to(DEVICE), mask.to(DEVICE), max_new_tokens=16)
    _same_greedy_ids(model, on_cpu, on_gpu, width)


def test_static_cache_steps_match_the_full_forward_on_cuda(course_gpt):
    import copy

    model, tok = course_gpt
    gpu_model = copy.deepcopy(model).to(DEVICE)
    ids = torch.tensor([tok.encode("A small dog ran to the park and")], device=DEVICE)
    decoder = StaticCacheDecoder(gpu_model, 1, ids.shape[1] + 12)
    assert decoder.keys.device.type == DEVICE
    logits = decoder.prefill(ids)
    for _ in range(12):
        with torch.no_grad():
            full = gpu_model(ids).logits[:, -1].float()
        torch.testing.assert_close(logits, full, atol=1e-4, rtol=1e-4)  # fp32: rounding only
        next_id = logits.argmax(-1)
        ids = torch.cat([ids, next_id[:, None]], dim=1)
        logits = decoder.step(next_id)

    # fp16 weights: the cache takes the weights' dtype; steps agree with the fp16 full forward to fp16 rounding
    half = copy.deepcopy(model).to(DEVICE, torch.float16)
    decoder = StaticCacheDecoder(half, 1, ids.shape[1])
    assert decoder.keys.dtype == torch.float16
    decoder.prefill(ids[:, :8])
    for t in range(8, ids.shape[1]):
        step = decoder.step(ids[:, t])
        with torch.no_grad():
            full = half(ids[:, : t + 1]).logits[:, -1].float()
        torch.testing.assert_close(step, full, atol=5e-2, rtol=1e-2)


def test_transformers_gpt2_generates_the_course_models_ids_on_cuda(course_gpt):
    """The same checkpoint as transformers' GPT2LMHeadModel (its own KV cache) on the GPU: the same greedy ids."""
    model, tok = course_gpt
    hf, _ = load_pretrained("course-gpt", as_course_model=False, device=DEVICE)
    assert type(hf).__name__ == "GPT2LMHeadModel" and next(hf.parameters()).device.type == DEVICE
    prompt = torch.tensor([tok.encode("Once upon a time")])
    on_cpu = generate(model, prompt, max_new_tokens=20)
    on_gpu = generate(hf, prompt.to(DEVICE), max_new_tokens=20)
    _same_greedy_ids(model, on_cpu, on_gpu, prompt.shape[1])


# ------------------------------------------------------------------------------ NF4 and QLoRA (chapters 06, 07)





def test_nf4_on_cuda_matches_the_cpu():
    torch.manual_seed(0)
    w = torch.randn(96, 200) * 0.02  # 19200 values: 300 blocks of 64, the last one padded
    for double_quant in (False, True):
        cpu = nf4_quantize(w, 64, double_quant=double_quant)
        gpu = nf4_quantize(w.to(DEVICE), 64, double_quant=double_quant)
        assert gpu.packed.device.type == DEVICE
        assert torch.equal(gpu.packed.cpu(), cpu.packed)  # the same 4-bit codes
        a, b = nf4_dequantize(cpu), nf4_dequantize(gpu).cpu()
        if double_quant:  # the absmax mean is a float sum (order differs on the GPU): one int8 step at most
            step = float(cpu.absmax_scale.max()) * 1.01
            assert float((a - b).abs().max()) <= step
        else:
            assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_nf4_linear_on_cuda_is_a_linear_with_the_dequantized_weight(dtype):
    torch.manual_seed(0)
    linear = nn.Linear(128, 48)
    layer = NF4Linear.from_linear(linear).to(DEVICE)
    x = torch.randn(4, 7, 128, device=DEVICE, dtype=dtype)
    out = layer(x)
    assert out.dtype == dtype and out.shape == (4, 7, 48)
    expected = F.linear(x, layer.dequantized_weight(dtype), layer.bias.to(dtype))
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    # against the float layer: NF4's error only. 4 bits leave ~9% relative error in a Gaussian-ish weight
    # (measured on the CPU: 0.092 for the weight, 0.087-0.092 for the output); bf16 adds under 1%
    ref = linear.to(DEVICE)(x.float()).detach()
    assert float((out.float() - ref).norm() / ref.norm()) < 0.15


def test_qlora_from_scratch_trains_on_cuda_like_on_the_cpu():
    batches = pattern_batches(15)

    def run(device: str) -> tuple[list[float], nn.Module]:
        model = tiny_gpt()
        names = apply_qlora(model, r=4, alpha=8)
        model.to(device).train()
        assert names and all(isinstance(model.get_submodule(n).base_layer, NF4Linear) for n in names)
        trainable = [p for p in model.parameters() if p.requires_grad]
        assert trainable and all(p.device.type == device for p in trainable)
        opt = torch.optim.AdamW(trainable, lr=3e-2)
        losses = []
        for batch in batches:
            loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        return losses, model

    gpu_losses, gpu_model = run(DEVICE)
    cpu_losses, _ = run("cpu")
    # the adapters learn, slowly: rank 4 on a frozen random 4-bit base (measured on the CPU: 4.19 -> 4.04)
    assert sum(gpu_losses[-5:]) / 5 < gpu_losses[0] - 0.07
    # same NF4 codes, same adapters: the two devices agree to float rounding, growing a little per step
    assert abs(gpu_losses[0] - cpu_losses[0]) < 1e-4
    assert max(abs(a - b) for a, b in zip(gpu_losses, cpu_losses)) < 1e-2
    assert all(b.device.type == DEVICE for b in gpu_model.buffers())


def _bnb():
    bnb = pytest.importorskip("bitsandbytes")
    return bnb


# (480, 160): rows of 160 values are not a whole number of 64-value blocks (course-gpt's c_attn is this shape).
# bitsandbytes 0.50.2's CPU backend gets this case wrong (errors up to 0.9 * max|w|, measured); the course does not.
@pytest.mark.parametrize("shape", [(256, 512), (480, 160)], ids=["rows-of-whole-blocks", "rows-across-blocks"])
def test_nf4_code_and_codes_match_bitsandbytes(shape):
    """quantization.py's claims: NF4_CODE are bitsandbytes' 16 values, packed in bitsandbytes' nibble order,
    with the same per-block absmax (blocks of 64, no double quantization)."""
    bnb = _bnb()
    torch.testing.assert_close(bnb.functional.get_4bit_type("nf4", device=DEVICE).cpu(), NF4_CODE, atol=1e-7, rtol=0)
    torch.manual_seed(0)
    w = torch.randn(*shape, device=DEVICE) * 0.02
    packed, state = bnb.functional.quantize_4bit(w, blocksize=64, compress_statistics=False, quant_type="nf4")
    ours = nf4_quantize(w, 64)
    theirs = packed.reshape(-1)
    same = (theirs == ours.packed).float().mean().item()
    # a value within a rounding error of a midpoint between two codes may go either way: allow 1 in 10^4
    assert same > 0.9999, f"only {same:.5f} of the packed bytes agree"
    torch.testing.assert_close(state.absmax.float(), ours.absmax, atol=0, rtol=1e-6)
    deq_theirs = bnb.functional.dequantize_4bit(packed, state, quant_type="nf4")
    deq_ours = nf4_dequantize(ours)
    close = ((deq_theirs - deq_ours).abs() <= 1e-6).float().mean().item()
    assert close > 0.9999, f"only {close:.5f} of the dequantized values agree"


def test_nf4_linear_matches_bitsandbytes_linear4bit():
    bnb = _bnb()
    torch.manual_seed(0)
    linear = nn.Linear(256, 64)
    ours = NF4Linear.from_linear(linear, block_size=64, double_quant=False).to(DEVICE)
    theirs = bnb.nn.Linear4bit(256, 64, bias=True, compute_dtype=torch.float32, compress_statistics=False,
                               quant_type="nf4")
    theirs.weight = bnb.nn.Params4bit(linear.weight.data.clone(), requires_grad=False, blocksize=64,
                                      compress_statistics=False, quant_type="nf4")
    theirs.bias = nn.Parameter(linear.bias.data.clone(), requires_grad=False)
    theirs = theirs.to(DEVICE)  # bitsandbytes quantizes on the move to the GPU
    x = torch.randn(5, 256, device=DEVICE)
    with torch.no_grad():
        # same weights to a few flipped codes at most (previous test), same float32 matmul
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-4, rtol=0)  # measured on the CPU: 0.0
    # with double quantization each library quantizes the absmax constants its own way (ours: int8 around
    # their mean; bitsandbytes: 8-bit dynamic code): the outputs still agree to well within NF4's own error
    ours_dq = NF4Linear.from_linear(linear, block_size=64, double_quant=True).to(DEVICE)
    with torch.no_grad():
        ref = linear.to(DEVICE)(x)
        err = float((ours_dq(x) - theirs(x)).abs().max())
        nf4_err = float((theirs(x) - ref).abs().max())
    assert err < 0.05 * nf4_err + 1e-4, (err, nf4_err)  # measured on the CPU: 3e-4 vs 0.19


def test_bitsandbytes_qlora_loads_course_gpt_in_4bit_and_trains_one_step(course_gpt):
    """qlora.bitsandbytes_qlora: a 4-bit NF4 model (double quantization) with LoRA on c_attn; one training step
    changes only the adapters; the 4-bit model's loss is the float model's to NF4's error."""
    bnb = _bnb()
    model, tok = course_gpt
    peft_model = bitsandbytes_qlora(str(checkpoint_dir("course-gpt")), r=4, alpha=8, dropout=0.0,
                                    compute_dtype=torch.float32)
    four_bit = [m for m in peft_model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert four_bit, "no layer was loaded in 4 bits"
    for m in four_bit:
        assert m.weight.quant_state.quant_type == "nf4" and m.weight.quant_state.nested  # double quant
        assert m.weight.device.type == DEVICE
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)

    # layer 0's c_attn: bitsandbytes' codes stand for the float Conv1D weight, transposed (transformers
    # transposes GPT-2's (in, out) weights before quantizing), to NF4's error: at most half the widest gap
    # between NF4 values (0.152) times the block's absmax; the course's own NF4 is off by 0.11 * max|w| here
    hf, _ = load_pretrained("course-gpt", as_course_model=False)
    ref = hf.transformer.h[0].attn.c_attn.weight.detach().T.to(DEVICE)  # (out, in) = (480, 160)
    layer = peft_model.base_model.model.transformer.h[0].attn.c_attn.base_layer
    deq = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state, quant_type="nf4")
    assert deq.shape == ref.shape
    assert float((deq.float() - ref).abs().max()) <= 0.16 * float(ref.abs().max())

    ids = torch.tensor([tok.encode("Once upon a time, there was a little girl who liked to play in the park.")])
    with torch.no_grad():
        float_loss = model(input_ids=ids, labels=ids).loss.item()
        course_nf4_loss = quantize_nf4(model)(input_ids=ids, labels=ids).loss.item()  # a copy, model unchanged
    gpu_ids = ids.to(DEVICE)
    peft_model.train()
    loss = peft_model(input_ids=gpu_ids, labels=gpu_ids).loss
    # a fresh adapter (B = 0) adds nothing: this is the 4-bit base model's loss, the same recipe as the course's
    # quantize_nf4 (blocks of 64, double quantization). Measured on the CPU: float 4.778, course NF4 4.766.
    assert math.isfinite(loss.item())
    assert abs(loss.item() - course_nf4_loss) < 0.05, (loss.item(), course_nf4_loss, float_loss)
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_B" in n}
    base_before = four_bit[0].weight.data.clone()
    loss.backward()
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-3)
    opt.step()
    after = dict(peft_model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)  # lora_B moved off zero
    assert torch.equal(four_bit[0].weight.data, base_before)  # the 4-bit base is frozen
    with torch.no_grad():
        assert peft_model(input_ids=gpu_ids, labels=gpu_ids).loss.item() < loss.item()  # one step helped


# ------------------------------------------------------------------------------ chapter 09 practices





def test_activation_memory_and_checkpointing_report_on_cuda():
    model = tiny_gpt(n_layer=4, n_positions=128, n_embd=128).to(DEVICE)
    ids = torch.randint(0, 64, (8, 128), device=DEVICE)
    batch = {"input_ids": ids, "labels": ids}
    plain = activation_memory(model, batch, checkpointing=False)
    ckpt = activation_memory(model, batch, checkpointing=True)
    assert plain["peak_bytes"] is not None and plain["peak_bytes"] > 0  # measured on CUDA (None on the CPU)
    assert ckpt["peak_bytes"] < plain["peak_bytes"]  # checkpointing lowers the allocator's peak
    assert ckpt["saved_bytes"] <= 0.5 * plain["saved_bytes"]
    assert abs(ckpt["loss"] - plain["loss"]) < 1e-5  # same forward
    report = checkpointing_report(model, batch, repeats=1)
    assert report["peak_ratio"] is not None and 0 < report["peak_ratio"] < 1
    assert report["memory_ratio"] <= 0.5
    assert all(p.grad is None for p in model.parameters())  # gradients were zeroed


def test_compare_precisions_on_cuda_includes_fp16_by_default():
    batches = pattern_batches(8, batch=4)
    out = compare_precisions(lambda: tiny_gpt(), batches, device=DEVICE)
    assert list(out["losses"]) == ["fp32", "bf16", "fp16"]
    rows = {r["precision"]: r for r in out["rows"]}
    assert rows["fp32"]["max_abs_diff"] == 0 and rows["fp32"]["time_ratio"] == 1
    # bf16: 8 significant bits, fp16: 11 (with the GradScaler); 8 steps from the same weights
    assert rows["bf16"]["max_abs_diff"] < 0.1 and rows["fp16"]["max_abs_diff"] < 0.05
    assert all(math.isfinite(x) for losses in out["losses"].values() for x in losses)


# ------------------------------------------------------------------------------ ONNX Runtime and TensorRT


def test_tensorrt_status_on_this_gpu_is_clear():
    ready, why = tensorrt_status()
    if ready:
        assert torch.cuda.get_device_name() in why and "TensorRT" in why
        return
    # a GPU is present, so the reason is the next missing piece, with what to install
    assert "no CUDA GPU" not in why
    assert "pip install tensorrt" in why or "pip install onnxruntime-gpu" in why, why
    with pytest.raises(RuntimeError, match="TensorRT cannot run here"):
        tensorrt_session("never-read.onnx")


def test_onnx_export_of_a_cuda_model_and_cuda_execution_provider(tmp_path):
    for package in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(package)
    model = tiny_gpt().to(DEVICE).eval()
    path = export_onnx(model, tmp_path / "gpt.onnx")
    assert next(model.parameters()).device.type == DEVICE  # exported on the CPU, put back on the GPU
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))
    # the GPU model's logits vs ONNX Runtime on the CPU: float32 both, different kernels
    assert check_onnx_logits(model, OnnxCausalLM(path), ids, atol=1e-3) <= 1e-3
    if "CUDAExecutionProvider" not in available_providers():
        with pytest.raises(ValueError, match="pip install onnxruntime-gpu"):
            execution_providers("cuda")
        pytest.skip("this onnxruntime build has no CUDAExecutionProvider (the plain CPU wheel)")
    session = OnnxCausalLM(path, providers=execution_providers("cuda"))
    assert session.providers[0] == "CUDAExecutionProvider"
    assert check_onnx_logits(model, session, ids, atol=1e-3) <= 1e-3
