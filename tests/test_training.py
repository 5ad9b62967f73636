"""Chapter 04: the training loop: optimizer groups, schedule, accumulation, checkpoints, exact resume."""

from __future__ import annotations

import math
import pickle
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

from llm_course.models.gpt import GPT, GPTConfig
from llm_course.nn.evaluation import estimate_loss
from llm_course.train import loop, precision
from llm_course.train.checkpoints import (
    CHECKPOINT_NAME,
    load_checkpoint,
    save_checkpoint,
)
from llm_course.train.liveplot import LossPlot, in_notebook
from llm_course.train.loop import (
    NonFiniteLossError,
    TrainConfig,
    configure_optimizer,
    lr_at,
    train,
)

V, T = 64, 16
DATA = torch.randint(0, V, (3000,), generator=torch.Generator().manual_seed(123))


def tiny_gpt(seed: int = 0, dropout: float = 0.1, n_embd: int = 32, n_layer: int = 2) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=V, n_positions=T, n_embd=n_embd, n_layer=n_layer, n_head=4, dropout=dropout))


def random_windows(generator: torch.Generator, batch_size: int = 4):
    """A local get_batch(i): random windows of DATA drawn from ``generator`` (like objectives.random_blocks)."""

    def get_batch(i: int) -> dict[str, torch.Tensor]:
        starts = torch.randint(0, len(DATA) - T, (batch_size,), generator=generator)
        x = torch.stack([DATA[s : s + T] for s in starts])
        return {"input_ids": x, "labels": x}

    return get_batch


def fixed_val_batch(i: int) -> dict[str, torch.Tensor]:
    return random_windows(torch.Generator().manual_seed(1000 + i))(i)


def quiet(**kw) -> TrainConfig:
    base = dict(max_steps=20, lr=3e-3, min_lr=3e-4, warmup_steps=min(4, kw.get("max_steps", 20)), eval_interval=5,
                eval_steps=2, log_interval=0, progress=False, live_plot=False, device="cpu", seed=0)
    return TrainConfig(**{**base, **kw})


def params_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------------
# Config, optimizer groups, schedule
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw, word", [
    (dict(max_steps=0), "max_steps"), (dict(warmup_steps=50, max_steps=10), "warmup_steps"),
    (dict(lr=0.0), "lr"), (dict(min_lr=1.0, lr=0.1), "min_lr"), (dict(betas=(0.9, 1.5)), "betas"),
    (dict(grad_accum_steps=0), "grad_accum_steps"), (dict(grad_clip=-1.0), "grad_clip"),
    (dict(chars_per_token=0.0), "chars_per_token"), (dict(seed=-1), "seed"),
])
def test_config_rejects_bad_values(kw, word):
    with pytest.raises(ValueError, match=word):
        TrainConfig(**kw)


@pytest.mark.parametrize("kw, word", [
    (dict(eval_steps=1.5), "eval_steps"), (dict(max_steps=True), "max_steps"), (dict(lr="3e-4"), "lr"),
    (dict(seed=1.0), "seed"),
])
def test_config_rejects_bad_types(kw, word):
    with pytest.raises(TypeError, match=f"TrainConfig.{word} must be"):
        TrainConfig(**kw)


def test_optimizer_groups_decay_matrices_only_and_count_tied_weights_once():
    model = tiny_gpt()
    opt = configure_optimizer(model, weight_decay=0.1, lr=1e-3, betas=(0.9, 0.95))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decay_names = {names[id(p)] for p in decay["params"]}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    # every Linear weight and embedding decays; every bias and LayerNorm parameter does not
    matrices = (nn.Linear, nn.Embedding)
    linear_or_embedding = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, matrices)}
    linear_or_embedding.discard("lm_head.weight")  # tied: it *is* wte.weight, listed under that name
    assert decay_names == linear_or_embedding
    assert all(n.endswith("bias") or ".ln_" in n or n.startswith("ln_f") for n in no_decay_names)
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    all_params = decay["params"] + no_decay["params"]
    assert len({id(p) for p in all_params}) == len(all_params)  # nothing twice
    assert model.lm_head.weight is model.wte.weight and any(p is model.wte.weight for p in decay["params"])
    assert sum(p.numel() for p in all_params) == model.num_parameters()
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["lr"] == 1e-3


def test_optimizer_skips_frozen_parameters_and_uses_fused_kernel_on_cpu():
    model = tiny_gpt()
    model.wpe.weight.requires_grad_(False)
    opt = configure_optimizer(model, 0.1, 1e-3)
    assert all(p is not model.wpe.weight for g in opt.param_groups for p in g["params"])
    assert opt.defaults["fused"] is True  # torch >= 2.4 has the fused AdamW kernel on the CPU
    assert not configure_optimizer(model, 0.1, 1e-3, fused=False).defaults["fused"]


def test_optimizer_falls_back_when_fused_is_unavailable(monkeypatch):
    real = torch.optim.AdamW

    def no_fused(*args, fused=None, **kw):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
        return real(*args, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", no_fused)
    assert not configure_optimizer(tiny_gpt(), 0.1, 1e-3).defaults["fused"]  # fused=None: falls back
    with pytest.raises(ValueError, match="fused AdamW is not available"):
        configure_optimizer(tiny_gpt(), 0.1, 1e-3, fused=True)


def test_lr_schedule_closed_form_endpoints_and_midpoint():
    cfg = TrainConfig(max_steps=110, warmup_steps=10, lr=1e-3, min_lr=1e-4)
    assert lr_at(0, cfg) == 0.0
    assert lr_at(5, cfg) == pytest.approx(0.5e-3)  # halfway through the warmup
    assert lr_at(10, cfg) == pytest.approx(1e-3)  # the peak, exactly at warmup_steps
    assert lr_at(60, cfg) == pytest.approx((1e-3 + 1e-4) / 2)  # halfway through the cosine
    assert lr_at(110, cfg) == pytest.approx(1e-4) and lr_at(500, cfg) == pytest.approx(1e-4)
    assert lr_at(0, TrainConfig(max_steps=10, warmup_steps=0, lr=1e-3, min_lr=0.0)) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="step"):
        lr_at(-1, cfg)


@settings(max_examples=20, deadline=None)
@given(max_steps=st.integers(1, 120), warmup_frac=st.floats(0, 1), min_ratio=st.floats(0, 1))
def test_lr_schedule_matches_transformers_cosine_with_min_lr(max_steps, warmup_frac, min_ratio):
    warmup = int(warmup_frac * max_steps)
    cfg = TrainConfig(max_steps=max_steps, warmup_steps=warmup, lr=1e-3, min_lr=1e-3 * min_ratio)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = get_cosine_with_min_lr_schedule_with_warmup(opt, warmup, max_steps, min_lr=cfg.min_lr)
    ours = [lr_at(s, cfg) for s in range(max_steps + 1)]
    theirs = []
    for _ in range(max_steps + 1):
        theirs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-15)
    after = ours[warmup:]
    assert all(a >= b - 1e-15 for a, b in zip(after, after[1:]))  # never increases after the warmup


# --------------------------------------------------------------------------------------------
# The loop: accumulation, clipping, history, evaluation
# --------------------------------------------------------------------------------------------


def _spy_on_adamw_step(monkeypatch) -> list[list[torch.Tensor]]:
    """Record (copies of) the gradients AdamW receives at every step."""
    seen, real_step = [], torch.optim.AdamW.step

    def spying_step(self, *args, **kw):
        seen.append([p.grad.clone() for g in self.param_groups for p in g["params"] if p.grad is not None])
        return real_step(self, *args, **kw)

    monkeypatch.setattr(torch.optim.AdamW, "step", spying_step)
    return seen


def test_grad_accumulation_equals_one_big_batch(monkeypatch):
    big = random_windows(torch.Generator().manual_seed(5), batch_size=8)
    batches = [big(s) for s in range(3)]  # one 8-row batch per step

    def whole(i):
        return batches[i]

    def quarters(i):  # micro-batch i: a quarter (2 rows) of step i // 4's batch
        step, k = divmod(i, 4)
        return {key: v[2 * k : 2 * k + 2] for key, v in batches[step].items()}

    def model():  # no biases: a key bias gets an exactly-zero gradient (softmax ignores it), and Adam
        torch.manual_seed(0)  # turns the float noise of a zero gradient into a full-size step
        return GPT(GPTConfig(vocab_size=V, n_positions=T, n_embd=32, n_layer=2, n_head=4, bias=False))

    grads = _spy_on_adamw_step(monkeypatch)
    results, models = [], []
    for accum, source in [(1, whole), (4, quarters)]:
        models.append(model())
        cfg = quiet(max_steps=3, warmup_steps=0, grad_accum_steps=accum, lr=1e-3, grad_clip=None)
        results.append(train(models[-1], source, cfg))
    (a, b), (ma, mb) = results, models
    assert len(grads) == 6
    for step in range(3):  # the gradients AdamW received at each step
        for g1, g4 in zip(grads[step], grads[3 + step]):
            torch.testing.assert_close(g1, g4, atol=1e-6, rtol=0)
    np.testing.assert_allclose(a.losses, b.losses, rtol=1e-6)
    np.testing.assert_allclose([h["grad_norm"] for h in a.history], [h["grad_norm"] for h in b.history], rtol=1e-6)
    for (name, p), q in zip(ma.named_parameters(), mb.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0, msg=name)
    assert max((p - q).abs().max().item() for p, q in zip(ma.parameters(), model().parameters())) > 1e-3  # trained
    # without dividing each micro-batch's loss by 4, the accumulated gradient would be 4x too large
    assert a.history[0]["grad_norm"] > 0.01


def test_history_records_lr_and_the_pre_clip_gradient_norm(monkeypatch):
    grads = _spy_on_adamw_step(monkeypatch)  # what the optimizer receives, after clipping
    batch = random_windows(torch.Generator().manual_seed(1))(0)
    ref = tiny_gpt(dropout=0.0)
    ref(**batch).loss.backward()
    first_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in ref.parameters()])).item()

    cfg = quiet(max_steps=5, grad_clip=0.05)
    result = train(tiny_gpt(dropout=0.0), lambda i: batch, cfg)
    assert [h["step"] for h in result.history] == [1, 2, 3, 4, 5]
    assert [h["lr"] for h in result.history] == [lr_at(s, cfg) for s in range(1, 6)]
    assert result.history[0]["grad_norm"] == pytest.approx(first_norm, rel=1e-5)  # measured before clipping
    assert all(h["grad_norm"] > 0.05 for h in result.history)
    seen = [torch.linalg.vector_norm(torch.stack([g.norm() for g in step])).item() for step in grads]
    np.testing.assert_allclose(seen, 0.05, rtol=1e-4)  # ... and the optimizer got clipped gradients
    assert all(h["tokens_per_sec"] > 0 for h in result.history)


def test_evaluation_points_perplexity_and_bits_per_char():
    cfg = quiet(max_steps=12, eval_interval=5, chars_per_token=3.5)
    result = train(tiny_gpt(), random_windows(torch.Generator().manual_seed(0)), cfg, evaluate=fixed_val_batch)
    assert [e["step"] for e in result.evals] == [5, 10, 12]  # every eval_interval, and the last step
    for e in result.evals:
        assert e["perplexity"] == pytest.approx(math.exp(e["loss"]))
        assert e["bits_per_char"] == pytest.approx(e["loss"] / (3.5 * math.log(2)))
        assert e["tokens"] == 2 * 4 * (T - 1)  # eval_steps batches of 4 rows, T - 1 targets each
    assert result.evals[0]["loss"] == pytest.approx(math.log(V), abs=0.1)  # near uniform this early


def test_estimate_loss_is_the_token_weighted_mean_of_an_independent_cross_entropy():
    model = tiny_gpt().train()
    rows = DATA[: 5 * T].reshape(5, T)
    labels = rows.clone()
    labels[4, 6:] = -100  # the last row is short: fewer scored tokens
    batches = [{"input_ids": rows[:3], "labels": labels[:3]}, {"input_ids": rows[3:], "labels": labels[3:]}]
    metrics = estimate_loss(model, batches, n_chars=1000)
    assert model.training  # mode restored
    with torch.no_grad():
        logits = model.eval()(rows).logits
    targets = F.pad(labels[:, 1:], (0, 1), value=-100)
    nats = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-100, reduction="sum").item()
    n = int((targets != -100).sum())
    assert metrics["tokens"] == n == 4 * (T - 1) + 5  # the short row scores positions 1..5
    assert metrics["loss"] == pytest.approx(nats / n, rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(nats / n), rel=1e-5)
    assert metrics["bits_per_char"] == pytest.approx(nats / (1000 * math.log(2)), rel=1e-5)
    assert estimate_loss(model, batches, num_batches=1)["tokens"] == 3 * (T - 1)  # the first batch only
    assert estimate_loss(model, batches, num_batches=9) == estimate_loss(model, batches)  # at most the list
    with pytest.raises(ValueError, match="num_batches"):
        estimate_loss(model, fixed_val_batch)
    with pytest.raises(TypeError, match="one-shot iterator"):
        estimate_loss(model, iter(batches), 1)


# --------------------------------------------------------------------------------------------
# Reproducibility: same seed, exact resume
# --------------------------------------------------------------------------------------------


def test_same_seed_gives_bitwise_identical_losses_and_another_seed_does_not():
    runs = [train(tiny_gpt(), random_windows(torch.Generator().manual_seed(0)), quiet(max_steps=6, seed=s)).losses
            for s in (7, 7, 8)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]  # dropout masks come from the seeded RNG


def test_resumed_run_gives_exactly_the_losses_of_an_uninterrupted_one(tmp_path):
    cfg = quiet(max_steps=20, checkpoint_dir=tmp_path / "run", checkpoint_interval=5)
    gen = torch.Generator().manual_seed(0)
    full_model = tiny_gpt(dropout=0.1)
    full = train(full_model, random_windows(gen), cfg, evaluate=fixed_val_batch, generator=gen)

    gen = torch.Generator().manual_seed(0)
    stopped = train(tiny_gpt(dropout=0.1), random_windows(gen), cfg, evaluate=fixed_val_batch, generator=gen,
                    callbacks=[lambda record, result: record["step"] == 12])
    assert stopped.stopped_early and stopped.step == 12 and stopped.checkpoint == tmp_path / "run" / CHECKPOINT_NAME

    # A fresh process would start with other weights, another data generator and other global RNG states.
    torch.manual_seed(999), random.seed(999), np.random.seed(999)
    gen = torch.Generator().manual_seed(42)
    resumed_model = tiny_gpt(seed=5, dropout=0.1)
    resumed = train(resumed_model, random_windows(gen), cfg, evaluate=fixed_val_batch, generator=gen,
                    resume_from=tmp_path / "run")
    assert len(resumed.losses) == 20 and resumed.step == 20
    assert resumed.losses == full.losses  # bitwise, including steps 13..20 computed after the resume
    assert resumed.evals == full.evals
    for (name, p), q in zip(full_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(p, q), name


def test_resume_fast_forwards_an_iterable_of_batches(tmp_path):
    batches = [random_windows(torch.Generator().manual_seed(s))(0) for s in range(4)]  # re-iterable: epochs
    cfg = quiet(max_steps=10, grad_accum_steps=2, checkpoint_dir=tmp_path, checkpoint_interval=3)
    full = train(tiny_gpt(), batches, cfg)
    train(tiny_gpt(), batches, cfg, callbacks=[lambda r, res: r["step"] == 3])
    resumed = train(tiny_gpt(seed=1), batches, cfg, resume_from=tmp_path / CHECKPOINT_NAME)
    assert resumed.losses == full.losses
    with pytest.raises(ValueError, match="ran out of batches after 4"):
        train(tiny_gpt(), iter(batches), quiet(max_steps=5))


# --------------------------------------------------------------------------------------------
# Checkpoint files
# --------------------------------------------------------------------------------------------


def _trained(tmp_path, steps: int = 2):
    model = tiny_gpt()
    opt = configure_optimizer(model, 0.1, 1e-3)
    batch = random_windows(torch.Generator().manual_seed(0))(0)
    for _ in range(steps):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def test_checkpoint_round_trips_weights_optimizer_and_every_rng(tmp_path):
    model, opt = _trained(tmp_path)
    gen = torch.Generator().manual_seed(3)
    gen.manual_seed(3), torch.randint(0, 10, (5,), generator=gen)
    path = save_checkpoint(tmp_path / "c.safetensors", model, opt, step=2, extra={"note": "hi"}, generator=gen)
    with open(path, "rb") as f:  # a safetensors file: 8-byte header length, then a JSON header
        header_len = int.from_bytes(f.read(8), "little")
        assert f.read(1) == b"{" and header_len < path.stat().st_size
    expected = (torch.rand(3), random.random(), np.random.rand(), torch.rand(3, generator=gen))

    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    new_gen = torch.Generator().manual_seed(77)
    new_model = tiny_gpt(seed=9)
    new_opt = configure_optimizer(new_model, 0.1, 1e-3)
    ckpt = load_checkpoint(path, new_model, new_opt, generator=new_gen)
    assert ckpt.step == 2 and ckpt.extra == {"note": "hi"}
    got = (torch.rand(3), random.random(), np.random.rand(), torch.rand(3, generator=new_gen))
    assert torch.equal(got[0], expected[0]) and got[1:3] == expected[1:3] and torch.equal(got[3], expected[3])
    for (name, p), q in zip(model.state_dict().items(), new_model.state_dict().values()):
        assert torch.equal(p, q), name
    assert new_model.lm_head.weight is new_model.wte.weight  # still tied
    a, b = opt.state_dict(), new_opt.state_dict()
    assert a["param_groups"] == b["param_groups"] and a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(a["state"][i][key], b["state"][i][key]), (i, key)


def test_a_crash_while_saving_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    import safetensors.torch

    model, opt = _trained(tmp_path)
    path = save_checkpoint(tmp_path / "c.safetensors", model, opt, step=2)
    before = params_of(model)
    model2, opt2 = _trained(tmp_path, steps=4)

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\x00" * 100)  # half a file ...
        raise OSError("No space left on device")  # ... then the disk fills up

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, model2, opt2, step=4)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]  # no temporary file left over
    fresh = tiny_gpt(seed=3)
    assert load_checkpoint(path, fresh, configure_optimizer(fresh, 0.1, 1e-3)).step == 2
    for name, p in fresh.state_dict().items():
        assert torch.equal(p, before[name]), name


def test_load_checkpoint_errors_are_clear(tmp_path):
    model, opt = _trained(tmp_path)
    good = save_checkpoint(tmp_path / "good.safetensors", model, opt, step=2)
    data = good.read_bytes()

    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nope.safetensors", model)
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.safetensors", model)
    (tmp_path / "noise.safetensors").write_bytes(b"\x07" * 64)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "noise.safetensors", model)

    # pickles are refused without being opened: the zip format of torch.save and a raw pickle
    torch.save(model.state_dict(), tmp_path / "model.pt")
    (tmp_path / "old.bin").write_bytes(pickle.dumps({"step": 1}, protocol=2))
    for name in ("model.pt", "old.bin"):
        with pytest.raises(ValueError, match=r"pickle.*arbitrary code.*weights_only=True"):
            load_checkpoint(tmp_path / name, model)

    model.save_pretrained(tmp_path / "pretrained")  # weights only: not a training checkpoint
    with pytest.raises(ValueError, match="from_pretrained"):
        load_checkpoint(tmp_path / "pretrained" / "model.safetensors", model)

    wider = tiny_gpt(n_embd=48)
    before = params_of(wider)
    with pytest.raises(ValueError, match="shapes do not match"):
        load_checkpoint(good, wider)
    assert all(torch.equal(v, before[k]) for k, v in wider.state_dict().items())  # left untouched
    with pytest.raises(ValueError, match="different model"):
        load_checkpoint(good, tiny_gpt(n_layer=3))
    with pytest.raises(ValueError, match="parameter groups do not match"):
        load_checkpoint(good, model, torch.optim.AdamW(model.parameters()))  # one group, not two
    with pytest.raises(ValueError, match="no data-generator state"):
        load_checkpoint(good, model, generator=torch.Generator())


# --------------------------------------------------------------------------------------------
# Failures and stopping
# --------------------------------------------------------------------------------------------


class Toy(nn.Module):
    """A one-parameter 'model' whose loss can be made non-finite at a chosen call."""

    def __init__(self, bad_call: int, kind: str) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0]))
        self.calls, self.bad_call, self.kind = 0, bad_call, kind

    def forward(self, input_ids, labels=None):
        self.calls += 1
        x = input_ids.float().mean()
        loss = (self.w - 0.5 * x).pow(2).sum()
        if self.calls == self.bad_call:
            if self.kind == "nan":
                loss = loss * float("nan")
            else:  # finite loss, infinite gradient: d/dw sqrt(w - w) = 1 / (2 sqrt(0))
                loss = loss + torch.sqrt(self.w - self.w.detach()).sum()
        return SimpleNamespace(loss=loss)


@pytest.mark.parametrize("kind, what", [("nan", "training loss is nan"), ("inf_grad", "gradient norm is inf")])
def test_non_finite_loss_or_gradient_stops_with_the_step(tmp_path, kind, what):
    model = Toy(bad_call=5, kind=kind)  # with grad_accum_steps=2, call 5 is the first micro-batch of step 3
    weights = {}
    cfg = quiet(max_steps=10, grad_accum_steps=2, checkpoint_dir=tmp_path, checkpoint_interval=1, grad_clip=None)
    with pytest.raises(NonFiniteLossError, match=f"{what} at step 3") as info:
        train(model, lambda i: {"input_ids": torch.ones(2, 3, dtype=torch.long)}, cfg,
              callbacks=[lambda r, res: weights.__setitem__(r["step"], model.w.item())])
    assert info.value.step == 3
    assert [h["step"] for h in info.value.result.history] == [1, 2]  # what ran before, still plottable
    assert model.w.item() == weights[2]  # the bad step did not touch the weights
    assert load_checkpoint(tmp_path, Toy(0, kind), restore_rng=False).step == 2


def test_bad_inputs_fail_early_with_a_message():
    with pytest.raises(TypeError, match=r"get_batch\(0\) must be a dict"):
        train(tiny_gpt(), lambda i: DATA[:T], quiet(max_steps=1))
    with pytest.raises(ValueError, match="returned no loss"):
        train(tiny_gpt(), lambda i: {"input_ids": DATA[:T][None]}, quiet(max_steps=1))
    with pytest.raises(TypeError, match="TrainConfig"):
        train(tiny_gpt(), fixed_val_batch, {"max_steps": 1})
    with pytest.raises(TypeError, match="callable get_batch"):
        train(tiny_gpt(), 42, quiet(max_steps=1))
    with pytest.raises(TypeError, match="re-iterable"):
        train(tiny_gpt(), fixed_val_batch, quiet(max_steps=1), evaluate=iter([fixed_val_batch(0)]))
    with pytest.raises(TypeError, match="torch.Generator"):
        train(tiny_gpt(), fixed_val_batch, quiet(max_steps=1), generator=0)


def test_keyboard_interrupt_returns_what_was_recorded():
    def interrupt(record, result):
        if record["step"] == 3:
            raise KeyboardInterrupt

    model = tiny_gpt()
    result = train(model, fixed_val_batch, quiet(max_steps=10), callbacks=[interrupt])
    assert result.stopped_early and result.step == 3 and len(result.losses) == 3
    assert not model.training  # left in eval mode, ready to generate


# --------------------------------------------------------------------------------------------
# Progress bar and live plot
# --------------------------------------------------------------------------------------------


def test_live_plot_is_a_no_op_outside_a_notebook_and_updates_in_place_inside(monkeypatch):
    import IPython.display

    shown = []

    class Handle:
        def update(self, obj):
            shown.append(("update", obj))

    def fake_display(obj, display_id=None):
        shown.append(("display", obj, display_id))
        return Handle()

    monkeypatch.setattr(IPython.display, "display", fake_display)
    assert not in_notebook()
    train(tiny_gpt(), fixed_val_batch, quiet(max_steps=4, live_plot=True))
    assert shown == []  # pytest is not a notebook

    plot = LossPlot(every=2, enabled=True)
    monkeypatch.setattr(loop, "LossPlot", lambda every, enabled: plot)
    result = train(tiny_gpt(), fixed_val_batch, quiet(max_steps=4, log_interval=2), evaluate=fixed_val_batch)
    assert shown[0][0] == "display" and shown[0][2] is True  # shown once with a display id ...
    assert len(shown) >= 3 and all(s[0] == "update" for s in shown[1:])  # ... then replaced in place
    assert all(s[1].data.startswith(b"\x89PNG") for s in shown)
    assert len(result.history) == 4


def test_progress_bar_and_log_lines(capsys):
    train(tiny_gpt(), fixed_val_batch, quiet(max_steps=4, progress=True, log_interval=2))
    assert "training" in capsys.readouterr().err
    train(tiny_gpt(), fixed_val_batch, quiet(max_steps=4, progress=False, log_interval=2), evaluate=fixed_val_batch)
    out = capsys.readouterr()
    text = out.out + out.err
    assert "step 2/4: loss" in text and "held-out loss" in text


# --------------------------------------------------------------------------------------------
# Precision: the PRECISION parameter of the notebooks (bf16 / fp16 on a GPU, fp32 on a CPU)
# --------------------------------------------------------------------------------------------


def _matmul_dtypes(model: nn.Module) -> list[torch.dtype]:
    """Record the output dtype of every nn.Linear call (to see what autocast really did)."""
    seen: list[torch.dtype] = []
    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    return seen


def test_bf16_training_computes_in_bf16_and_follows_fp32():
    fp32 = train(tiny_gpt(dropout=0.0), random_windows(torch.Generator().manual_seed(0)), quiet(max_steps=12))
    model = tiny_gpt(dropout=0.0)
    seen = _matmul_dtypes(model)
    bf16 = train(model, random_windows(torch.Generator().manual_seed(0)), quiet(max_steps=12, precision="bf16"))
    assert bf16.precision == "bf16" and fp32.precision == "fp32"
    assert seen and set(seen[: len(seen) // 2]) == {torch.bfloat16}  # the training forwards ran in bf16
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the weights stay fp32
    diffs = [abs(a - b) for a, b in zip(fp32.losses, bf16.losses)]
    assert max(diffs) < 0.05, diffs  # same curve within bf16's rounding
    assert max(diffs) > 0  # and really a different computation


def test_auto_precision_is_fp32_on_the_cpu_and_bf16_or_fp16_on_a_gpu(monkeypatch):
    a = train(tiny_gpt(), random_windows(torch.Generator().manual_seed(0)), quiet(max_steps=4, precision="auto"))
    b = train(tiny_gpt(), random_windows(torch.Generator().manual_seed(0)), quiet(max_steps=4))
    assert a.precision == "fp32" and a.losses == b.losses
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert precision.resolve_precision("auto", "cuda") == "bf16"  # A100 / H100 / L4
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert precision.resolve_precision("auto", "cuda") == "fp16"  # Colab's free T4
    assert precision.resolve_precision("auto", "mps") == "fp32"


def test_precision_errors_are_clear():
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(precision="float16")
    with pytest.raises(ValueError, match="fp16 mixed precision needs a CUDA GPU.*precision='bf16'"):
        train(tiny_gpt(), random_windows(torch.Generator().manual_seed(0)), quiet(max_steps=2, precision="fp16"))


def test_fp16_grad_scaler_skips_an_overflowing_step_and_goes_on(monkeypatch):
    """The fp16 path (a T4 on Colab), run on the CPU: loss scaling, and an overflow skipped, not fatal."""
    monkeypatch.setattr(precision, "check_precision", lambda precision, device: None)  # allow fp16 on the CPU
    model = tiny_gpt(dropout=0.0)
    seen = _matmul_dtypes(model)
    weights: dict[int, dict[str, torch.Tensor]] = {}
    overflow = {"now": False}
    # an overflow in the scaled gradient, at step 3 only
    model.wte.weight.register_hook(lambda g: torch.full_like(g, float("inf")) if overflow["now"] else g)

    def watch(record, result):
        weights[record["step"]] = params_of(model)
        overflow["now"] = record["step"] == 2  # poison the next step

    get_batch = random_windows(torch.Generator().manual_seed(0))
    result = train(model, get_batch, quiet(max_steps=6, precision="fp16", grad_clip=1.0), callbacks=[watch])
    assert result.precision == "fp16" and torch.float16 in seen
    assert result.skipped_steps == 1 and result.history[2].get("skipped") is True
    assert all("skipped" not in h for i, h in enumerate(result.history) if i != 2)
    # the skipped step left every weight as it was; the steps around it changed them
    assert all(torch.equal(weights[3][k], weights[2][k]) for k in weights[2])
    assert any(not torch.equal(weights[4][k], weights[3][k]) for k in weights[3])
    assert all(math.isfinite(h["loss"]) for h in result.history) and len(result.history) == 6
    # the logged gradient norm is the true one (unscaled), not 65536 times it
    fp32 = train(tiny_gpt(dropout=0.0), random_windows(torch.Generator().manual_seed(0)), quiet(max_steps=1))
    assert result.history[0]["grad_norm"] == pytest.approx(fp32.history[0]["grad_norm"], rel=0.05)
