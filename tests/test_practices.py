"""Chapter 09 (best practices): gradient checkpointing and mixed precision, checked by numbers.

Checkpointing must not change the gradients (against the same model without it, and against
transformers' own implementation), must shrink what autograd keeps, and must leave eval / generation
alone. Mixed precision: bf16 autocast on the CPU trains like fp32 within a measured tolerance; fp16 on the
CPU is a clear error; the manual's deprecated torch.cuda.amp spelling is detected.
"""

import math
import warnings
from pathlib import Path

import pytest
import torch

from llm_course.models.gpt import GPT, GPTConfig
from llm_course.train.finetuning_costs import saved_activation_bytes
from llm_course.train.practices import (
    MANUAL_AMP,
    activation_memory,
    amp_deprecation_warnings,
    autocast_context,
    checkpointing_report,
    compare_precisions,
    empty_cache_report,
    find_deprecated_amp,
    is_checkpointing,
    plot_loss_curves,
    precision_run,
    set_gradient_checkpointing,
)

CFG = dict(vocab_size=128, n_positions=32, n_embd=32, n_layer=4, n_head=4)


def tiny_gpt(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**CFG, **overrides}))


def batch_of(B=3, T=32, vocab=128, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(vocab, (B, T), generator=g)
    return {"input_ids": ids, "labels": ids.clone()}


def grads(model, batch, checkpointing):
    set_gradient_checkpointing(model, checkpointing)
    model.train().zero_grad(set_to_none=True)
    torch.manual_seed(123)  # same dropout masks both ways (checkpoint replays the RNG state)
    loss = model(**batch).loss
    loss.backward()
    out = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return loss.item(), out


# ---------------------------------------------------------------- checkpointing: correctness


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_course_gpt_checkpointed_gradients_equal_plain(dropout):
    model, batch = tiny_gpt(dropout=dropout), batch_of()
    loss_a, g_plain = grads(model, batch, False)
    loss_b, g_ckpt = grads(model, batch, True)
    assert model.is_gradient_checkpointing
    assert loss_a == pytest.approx(loss_b, abs=1e-6)
    assert g_plain.keys() == g_ckpt.keys()
    for name in g_plain:
        torch.testing.assert_close(g_ckpt[name], g_plain[name], atol=1e-6, rtol=1e-5, msg=name)
    assert any(g.abs().sum() > 0 for g in g_plain.values())  # the comparison is not of zeros


def test_transformers_gpt2_checkpointed_gradients_equal_plain_and_course_gpt():
    model, batch = tiny_gpt(), batch_of()
    hf = model.to_hf()
    hf.config.use_cache = False
    _, g_course = grads(model, batch, True)
    loss_plain, g_plain = grads(hf, batch, False)
    loss_ckpt, g_ckpt = grads(hf, batch, True)
    assert is_checkpointing(hf)
    assert loss_plain == pytest.approx(loss_ckpt, abs=1e-6)
    for name in g_plain:
        torch.testing.assert_close(g_ckpt[name], g_plain[name], atol=1e-6, rtol=1e-5, msg=name)
    # independent reference: the course GPT (checkpointed) has GPT-2's gradients, modulo Conv1D's transpose
    torch.testing.assert_close(g_course["h.2.mlp.up_proj.weight"].T, g_plain["transformer.h.2.mlp.c_fc.weight"],
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(g_course["wte.weight"], g_plain["transformer.wte.weight"], atol=1e-5, rtol=1e-4)
    set_gradient_checkpointing(hf, False)
    assert not is_checkpointing(hf)


def test_checkpointing_only_acts_in_training():
    model, batch = tiny_gpt(), batch_of()
    model.gradient_checkpointing_enable()
    with torch.no_grad():
        model.eval()
        eval_logits = model(**batch).logits
        model.gradient_checkpointing_disable()
        torch.testing.assert_close(model(**batch).logits, eval_logits, atol=0, rtol=0)
    model.gradient_checkpointing_enable()
    model.eval()  # eval mode with gradients on: checkpointing is off, so everything is saved
    eval_bytes, _ = saved_activation_bytes(model, batch)
    model.gradient_checkpointing_disable()
    plain_bytes, _ = saved_activation_bytes(model, batch)
    assert eval_bytes == plain_bytes
    # use_cache=True in train mode (generation-style call): no checkpoint, everything is saved, the cache comes back
    model.train().gradient_checkpointing_enable()
    cached_bytes, _ = saved_activation_bytes(model, {**batch, "use_cache": True})
    model.gradient_checkpointing_disable()
    assert cached_bytes == saved_activation_bytes(model, {**batch, "use_cache": True})[0]
    model.gradient_checkpointing_enable()
    out = model(batch["input_ids"], use_cache=True)
    assert out.past_key_values is not None and len(out.past_key_values) == CFG["n_layer"]
    assert saved_activation_bytes(model, batch)[0] < 0.6 * plain_bytes  # and train without cache: checkpointed


def test_saved_bytes_drop_below_0_6x_on_a_4_layer_model():
    model, batch = tiny_gpt(n_positions=64), batch_of(B=4, T=64)
    plain = activation_memory(model, batch, checkpointing=False)
    ckpt = activation_memory(model, batch, checkpointing=True)
    assert not model.is_gradient_checkpointing  # restored
    assert ckpt["saved_bytes"] < 0.6 * plain["saved_bytes"]
    assert plain["loss"] == pytest.approx(ckpt["loss"], abs=1e-6)
    # a lower bound from the shapes: checkpointing still keeps each block's input x, (B, T, C) float32
    B, T, C = 4, 64, CFG["n_embd"]
    assert ckpt["saved_bytes"] >= CFG["n_layer"] * B * T * C * 4
    assert plain["peak_bytes"] is None  # CPU: no allocator statistics


def test_checkpointing_report_fields_and_transformers_model():
    model, batch = tiny_gpt(), batch_of()
    report = checkpointing_report(model, batch, repeats=1)
    assert report["memory_ratio"] == pytest.approx(report["saved_bytes_checkpointed"] / report["saved_bytes_plain"])
    assert 0 < report["memory_ratio"] < 0.6
    assert report["seconds_plain"] > 0 and report["time_ratio"] > 0  # times are not asserted (noisy)
    hf = model.to_hf()
    hf.config.use_cache = False
    hf_report = checkpointing_report(hf, batch, repeats=1)
    assert hf_report["memory_ratio"] < 0.6
    assert hf_report["loss_plain"] == pytest.approx(report["loss_plain"], abs=1e-5)  # same weights, same loss
    # both keep the same things under checkpointing: block inputs, logits, loss
    assert hf_report["saved_bytes_checkpointed"] == report["saved_bytes_checkpointed"]


def test_checkpointing_bad_input():
    with pytest.raises(TypeError, match="gradient_checkpointing_enable"):
        set_gradient_checkpointing(torch.nn.Linear(2, 2), True)
    model = tiny_gpt()
    with pytest.raises(TypeError, match="input_ids"):
        activation_memory(model, torch.zeros(2, 3, dtype=torch.long), checkpointing=True)
    with pytest.raises(ValueError, match="labels"):
        activation_memory(model, {"input_ids": batch_of()["input_ids"]}, checkpointing=True)
    with pytest.raises(ValueError, match="repeats"):
        checkpointing_report(model, batch_of(), repeats=0)


# ---------------------------------------------------------------- mixed precision


def stream_batches(n, B=4, T=32, vocab=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(vocab, (B, T), generator=g)
        out.append({"input_ids": ids, "labels": ids})
    return out


def factory():
    return GPT(GPTConfig(**CFG))


def test_bf16_autocast_on_cpu_tracks_fp32():
    batches = stream_batches(5)
    fp32 = precision_run(factory, batches, "fp32")
    bf16 = precision_run(factory, batches, "bf16")
    assert len(fp32) == len(bf16) == 5
    assert all(math.isfinite(x) for x in fp32 + bf16)
    # same seed, same weights: the first loss is ln(V) for a fresh model in both
    assert fp32[0] == pytest.approx(math.log(128), abs=0.05)
    # measured (seeds 0, 1, 2): max |bf16 - fp32| over 5 steps 6e-5, 7e-5, 3e-4 nats; 5e-3 leaves ~15x room
    assert max(abs(a - b) for a, b in zip(fp32, bf16)) < 5e-3
    assert fp32 != bf16  # autocast really ran in bf16 (else the curves would be bitwise equal)
    assert precision_run(factory, batches, "fp32") == fp32  # and the runs are reproducible


def test_autocast_context_really_computes_in_bf16():
    x = torch.randn(4, 4)
    with autocast_context("bf16", "cpu"):
        assert (x @ x).dtype == torch.bfloat16
    with autocast_context("fp32", "cpu"):
        assert (x @ x).dtype == torch.float32


def test_compare_precisions_table_and_plot():
    result = compare_precisions(factory, stream_batches(3), precisions=["bf16"])
    assert list(result["losses"]) == ["fp32", "bf16"]  # fp32 is always the reference, run first
    fp32_row, bf16_row = result["rows"]
    assert fp32_row["max_abs_diff"] == 0 and fp32_row["time_ratio"] == 1
    diffs = [abs(a - b) for a, b in zip(result["losses"]["bf16"], result["losses"]["fp32"])]
    assert bf16_row["max_abs_diff"] == pytest.approx(max(diffs))
    import matplotlib

    matplotlib.use("Agg")
    ax = plot_loss_curves(result["losses"])
    assert [line.get_label() for line in ax.get_lines()] == ["fp32", "bf16"]
    with pytest.raises(ValueError, match="non-empty"):
        plot_loss_curves({})


def test_fp16_on_cpu_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA.*bf16"):
        precision_run(factory, stream_batches(1), "fp16", device="cpu")
    with pytest.raises(ValueError, match="CUDA"):
        autocast_context("fp16", "cpu")


def test_precision_bad_input():
    with pytest.raises(ValueError, match="precision must be one of"):
        precision_run(factory, stream_batches(1), "fp8")
    with pytest.raises(ValueError, match="empty"):
        precision_run(factory, [], "fp32")
    with pytest.raises(TypeError, match="list of batch dicts"):
        precision_run(factory, stream_batches(1)[0], "fp32")
    with pytest.raises(TypeError, match="model_factory"):
        precision_run(factory(), stream_batches(1), "fp32")
    with pytest.raises(ValueError, match="precision must be one of"):
        compare_precisions(factory, stream_batches(1), precisions=["float16"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 + GradScaler needs CUDA")
def test_fp16_with_grad_scaler_on_cuda_tracks_fp32():
    batches = stream_batches(5)
    fp32 = precision_run(factory, batches, "fp32", device="cuda")
    fp16 = precision_run(factory, batches, "fp16", device="cuda")
    assert all(math.isfinite(x) for x in fp16)
    assert max(abs(a - b) for a, b in zip(fp32, fp16)) < 0.05


# ---------------------------------------------------------------- the manual's AMP spelling


def test_manual_amp_spelling_is_deprecated_and_detected():
    messages = amp_deprecation_warnings()
    assert any("torch.cuda.amp.autocast" in m and "torch.amp.autocast('cuda'" in m for m in messages)
    assert any("torch.cuda.amp.GradScaler" in m and "torch.amp.GradScaler('cuda'" in m for m in messages)
    found = find_deprecated_amp(MANUAL_AMP["manual"])
    assert [old for old, _ in found] == ["from torch.cuda.amp import autocast, GradScaler"]
    assert find_deprecated_amp(MANUAL_AMP["current"]) == []
    code = "with torch.cuda.amp.autocast():\n    s = torch.cuda.amp.GradScaler()\nwith torch.cpu.amp.autocast(): pass"
    assert [fix for _, fix in find_deprecated_amp(code)] == [
        "torch.amp.autocast('cuda', ...)", "torch.amp.GradScaler('cuda', ...)", "torch.amp.autocast('cpu', ...)"]
    # the current spelling gives no deprecation warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        with torch.amp.autocast("cpu", dtype=torch.bfloat16):
            pass
        torch.amp.GradScaler("cuda", enabled=False)
    with pytest.raises(TypeError, match="string"):
        find_deprecated_amp(None)


MANUAL_TEXT = Path(__file__).resolve().parents[2] / "shared" / "manual" / "llm-manual-ru.md"


@pytest.mark.skipif(not MANUAL_TEXT.exists(), reason="the manual (../shared/manual) is not beside this checkout")
def test_manual_amp_is_quoted_as_written():
    """ERRATA 9: the notebook shows the manual's snippet, not a paraphrase of it."""
    assert MANUAL_AMP["manual"] in MANUAL_TEXT.read_text(encoding="utf-8")


def test_the_manuals_amp_forward_passes_no_labels_so_its_loss_is_none():
    """`outputs = model(inputs); loss = outputs.loss`: input ids only, so there is no loss to scale."""
    model = tiny_gpt().to_hf()
    inputs = batch_of()["input_ids"]
    assert "model(inputs)" in MANUAL_AMP["manual"] and "model(**batch)" in MANUAL_AMP["current"]
    assert model(inputs).loss is None
    assert torch.isfinite(model(input_ids=inputs, labels=inputs).loss)  # the current spelling's batch has labels


def test_empty_cache_report_needs_cuda_and_says_so():
    with pytest.raises(ValueError, match="needs a CUDA device, got 'cpu'.*no such cache"):
        empty_cache_report("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA GPU"):
            empty_cache_report("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_empty_cache_frees_cached_blocks_only():
    rows = {r["moment"]: r for r in empty_cache_report("cuda", megabytes=64)}
    before, held, still, deleted, emptied = rows.values()
    assert held["allocated MB"] - before["allocated MB"] == pytest.approx(64, abs=1)
    assert still["allocated MB"] == held["allocated MB"] and still["reserved MB"] == held["reserved MB"]
    assert deleted["allocated MB"] == pytest.approx(before["allocated MB"], abs=1)  # the tensor is gone...
    assert deleted["reserved MB"] >= before["reserved MB"] + 63  # ...but its block stays cached
    assert emptied["reserved MB"] <= deleted["reserved MB"] - 63  # empty_cache hands it back to the driver
    with pytest.raises(ValueError, match="megabytes"):
        empty_cache_report("cuda", megabytes=0)
