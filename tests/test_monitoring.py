"""Chapter 09: monitoring: TensorBoard scalars read back exactly, NaN/Inf and exploding-gradient alarms."""

from __future__ import annotations

import importlib.util
import math
import os
import shlex
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_course.core.deps import MissingDependencyError
from llm_course.models.gpt import GPT, GPTConfig
from llm_course.nn.evaluation import model_loss
from llm_course.train.loop import NonFiniteLossError, TrainConfig, train
from llm_course.train.monitoring import (
    DivergenceDetector,
    DivergenceWarning,
    ExplodingGradientError,
    TensorBoardLogger,
    plot_scalars,
    read_scalars,
    tensorboard_command,
    wandb_offline_logger,
)
from llm_course.train.trainer_monitoring import gradient_norm_timing, manual_monitor_gradients

V, T = 64, 16
DATA = torch.randint(0, V - 1, (2000,), generator=torch.Generator().manual_seed(7))  # token V-1 never occurs


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=V, n_positions=T, n_embd=32, n_layer=1, n_head=4, dropout=0.0))


def get_batch(i: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(i)
    starts = torch.randint(0, len(DATA) - T, (4,), generator=g)
    x = torch.stack([DATA[s : s + T] for s in starts])
    return {"input_ids": x, "labels": x}


def cfg(**kw) -> TrainConfig:
    base = dict(max_steps=12, lr=3e-3, min_lr=3e-4, warmup_steps=2, eval_interval=4, eval_steps=2,
                log_interval=0, progress=False, live_plot=False, seed=0, device="cpu")
    return TrainConfig(**{**base, **kw})


def at_step(model: torch.nn.Module, param: torch.nn.Parameter, step: int, fn) -> None:
    """Replace ``param``'s gradient by ``fn(grad)`` during update number ``step`` (one micro-batch per step)."""
    calls = {"n": 0}

    def hook(grad: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return fn(grad) if calls["n"] == step else grad

    param.register_hook(hook)


# --------------------------------------------------------------------------------------------
# TensorBoard with the course loop
# --------------------------------------------------------------------------------------------


def test_logged_scalars_read_back_equal_the_history(tmp_path):
    log_dir = tmp_path / "tb" / "run1"
    with TensorBoardLogger(log_dir) as tb:
        result = train(tiny_gpt(), get_batch, cfg(), evaluate=get_batch, callbacks=[tb])
    scalars = read_scalars(log_dir)
    assert set(scalars) == {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_sec",
                            "eval/loss", "eval/perplexity"}
    for key in ("loss", "lr", "grad_norm", "tokens_per_sec"):  # exact floats (float64), same steps
        assert scalars[f"train/{key}"] == [(h["step"], h[key]) for h in result.history]
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, 13))
    assert scalars["eval/loss"] == [(e["step"], e["loss"]) for e in result.evals]
    assert [s for s, _ in scalars["eval/loss"]] == [4, 8, 12]
    assert scalars["eval/perplexity"] == [(e["step"], e["perplexity"]) for e in result.evals]
    # the learning rate really follows the schedule: warmup to 3e-3 at step 2, then decay
    assert scalars["train/lr"][1] == (2, 3e-3) and scalars["train/lr"][-1][1] == pytest.approx(3e-4)


def test_resumed_run_replaces_the_steps_after_its_checkpoint(tmp_path):
    """A run 'crashes' at step 10 with its checkpoint at step 8; the resumed run logs 9..12 over the same
    directory. TensorBoard's reader drops the crashed run's steps 9-10, so the curve is the resumed history."""

    def crash_at_10(record, result):
        if record["step"] == 10:
            raise KeyboardInterrupt  # what the notebook's stop button does; train() returns what it has

    c = cfg(checkpoint_dir=tmp_path / "ckpt", checkpoint_interval=4)
    with TensorBoardLogger(tmp_path / "tb") as tb:
        first = train(tiny_gpt(), get_batch, c, callbacks=[tb, crash_at_10])
    assert first.stopped_early and first.step == 10
    with TensorBoardLogger(tmp_path / "tb") as tb:
        resumed = train(tiny_gpt(), get_batch, c, callbacks=[tb], resume_from=tmp_path / "ckpt")
    assert [h["step"] for h in resumed.history] == list(range(1, 13))
    scalars = read_scalars(tmp_path / "tb")
    assert scalars["train/loss"] == [(h["step"], h["loss"]) for h in resumed.history]  # 12 points, not 14
    # steps 9-10 come from the resumed run: its timings, not the first run's (exact resume: same losses)
    assert scalars["train/tokens_per_sec"][8:10] == [(h["step"], h["tokens_per_sec"]) for h in resumed.history[8:10]]
    assert resumed.history[8]["tokens_per_sec"] != first.history[8]["tokens_per_sec"]


def test_read_scalars_reads_classic_float32_scalars_and_refuses_a_parent(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    values = [1 / 3, math.pi, 1e-7]
    with SummaryWriter(str(tmp_path / "runs" / "a")) as w:  # float32 simple_value, as most writers do
        for step, v in enumerate(values, start=1):
            w.add_scalar("train/loss", v, step)
    got = read_scalars(tmp_path / "runs" / "a")
    assert got == {"train/loss": [(s, float(np.float32(v))) for s, v in enumerate(values, start=1)]}
    assert got["train/loss"][0][1] != 1 / 3  # float32, unlike TensorBoardLogger's float64
    with pytest.raises(FileNotFoundError, match=r"holds runs \['a'\]"):
        read_scalars(tmp_path / "runs")


def test_plot_scalars_draws_the_logged_numbers(tmp_path):
    scalars = {"train/loss": [(1, 4.0), (2, 3.5), (3, 3.0)], "eval/loss": [(3, 3.2)],
               "train/grad_norm": [(1, 1.0), (2, 50.0), (3, 1.2)], "train/lr": [(1, 1e-3), (2, 1e-3), (3, 5e-4)]}
    fig = plot_scalars(scalars)
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    assert set(panels) == {"loss", "grad_norm", "lr"}
    lines = {line.get_label(): line for line in panels["loss"].get_lines()}
    assert set(lines) == {"train/loss", "eval/loss"}  # held-out loss drawn on the training curve
    assert list(lines["train/loss"].get_ydata()) == [4.0, 3.5, 3.0]
    assert list(lines["eval/loss"].get_xdata()) == [3]
    assert panels["grad_norm"].get_yscale() == "log"
    only = plot_scalars(scalars, tags=["train/lr"])
    assert [ax.get_title() for ax in only.axes if ax.get_visible()] == ["lr"]


def test_tensorboard_command_for_terminal_and_notebook():
    cmd = tensorboard_command("runs/my tb", notebook=False)
    assert shlex.split(cmd, comments=True) == ["tensorboard", "--logdir", "runs/my tb"]
    assert tensorboard_command("runs/ch09", notebook=True) == "%load_ext tensorboard\n%tensorboard --logdir runs/ch09"
    assert tensorboard_command("runs/ch09").startswith("tensorboard --logdir")  # pytest is not a notebook


# --------------------------------------------------------------------------------------------
# NaN / Inf
# --------------------------------------------------------------------------------------------


def test_injected_nan_loss_stops_the_course_loop_at_its_step(tmp_path):
    model = tiny_gpt()
    calls = {"n": 0}

    def poison(module, args, output):  # the 5th forward pass (update 5) returns a NaN loss
        calls["n"] += module.training
        if module.training and calls["n"] == 5:
            output.loss = output.loss * float("nan")
        return output

    model.register_forward_hook(poison)
    tb, detector = TensorBoardLogger(tmp_path / "tb"), DivergenceDetector()
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 5") as err:
        train(model, get_batch, cfg(), callbacks=[tb, detector])
    assert err.value.step == 5
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the NaN never reached the weights
    assert [s for s, _ in read_scalars(tmp_path / "tb")["train/loss"]] == [1, 2, 3, 4]  # logged up to it


def test_injected_nan_gradient_stops_the_course_loop_at_its_step():
    model = tiny_gpt()
    at_step(model, model.h[0].mlp.up_proj.weight, 6, lambda g: torch.full_like(g, float("nan")))
    with pytest.raises(NonFiniteLossError, match=r"gradient norm is nan at step 6 \(loss \d") as err:
        train(model, get_batch, cfg(), callbacks=[DivergenceDetector()])
    assert err.value.step == 6
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("loss, grad_norm, kind, pattern", [
    (float("nan"), 1.0, "nonfinite_loss", r"training loss is nan at step 3\b"),
    (2.5, float("inf"), "nonfinite_grad", r"gradient norm is inf at step 3 \(loss 2\.5000\)"),
    (2.5, float("nan"), "nonfinite_grad", r"gradient norm is nan at step 3\b"),
])
def test_detector_names_the_step_and_value_of_a_nonfinite_number(loss, grad_norm, kind, pattern):
    detector = DivergenceDetector()
    assert detector({"step": 1, "loss": 3.0, "grad_norm": 1.0}) is False
    assert detector.check(2, 2.9, 1.1) is None
    with pytest.raises(NonFiniteLossError, match=pattern) as err:
        detector({"step": 3, "loss": loss, "grad_norm": grad_norm})
    assert err.value.step == 3
    assert [a.kind for a in detector.alerts] == [kind]


# --------------------------------------------------------------------------------------------
# Exploding gradients
# --------------------------------------------------------------------------------------------


def test_exploding_gradient_stops_the_course_loop_at_the_spike():
    model = tiny_gpt()
    at_step(model, model.wte.weight, 9, lambda g: g * 1e4)  # one bad batch's gradient, x10^4
    detector = DivergenceDetector(max_grad_ratio=10, min_steps=5)
    with pytest.warns(DivergenceWarning, match=r"training stopped: exploding gradient at step 9: norm"):
        result = train(model, get_batch, cfg(max_steps=20), callbacks=[detector])
    assert result.stopped_early and result.step == 9
    (alert,) = detector.alerts
    assert alert.kind == "grad_spike" and alert.step == 9
    assert alert.value == result.history[-1]["grad_norm"]
    norms_before = [h["grad_norm"] for h in result.history[:-1]]
    assert alert.median == float(np.median(norms_before))  # the median of the 8 earlier steps
    assert alert.value > 10 * alert.median
    assert f"{alert.value:.4g}" in alert.message


def test_exploding_gradient_raise_mode_carries_the_history():
    model = tiny_gpt()
    at_step(model, model.wte.weight, 7, lambda g: g * 1e4)
    with pytest.raises(ExplodingGradientError, match="step 7") as err:
        train(model, get_batch, cfg(), callbacks=[DivergenceDetector(min_steps=3, on_spike="raise")])
    assert err.value.step == 7 and err.value.grad_norm > 10 * err.value.median
    assert [h["step"] for h in err.value.result.history] == list(range(1, 8))


def test_no_alarm_on_a_normal_run():
    detector = DivergenceDetector(max_grad_ratio=10, min_steps=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DivergenceWarning)
        result = train(tiny_gpt(), get_batch, cfg(max_steps=30, eval_interval=30), callbacks=[detector])
    assert not result.stopped_early and result.step == 30 and detector.alerts == []
    assert len(detector.norms) == 30


@settings(max_examples=60, deadline=None)
@given(norms=st.lists(st.floats(1e-3, 1e3), min_size=1, max_size=40),
       ratio=st.floats(1.5, 20), window=st.integers(1, 10), min_steps=st.integers(1, 10))
def test_spike_rule_matches_the_running_median(norms, ratio, window, min_steps):
    min_steps = min(min_steps, window)
    detector = DivergenceDetector(max_grad_ratio=ratio, window=window, min_steps=min_steps, on_spike="warn")
    for i, norm in enumerate(norms):
        previous = norms[max(0, i - window):i]  # every norm is kept, spikes included
        expected = len(previous) >= min_steps and norm > ratio * float(np.median(previous))
        assert (detector.check(i + 1, 1.0, norm) is not None) == expected


def test_zero_median_still_flags_a_spike():
    detector = DivergenceDetector(min_steps=2, on_spike="warn")
    assert detector.check(1, 1.0, 0.0) is None and detector.check(2, 1.0, 0.0) is None  # e.g. all frozen
    assert "infx the median 0" in detector.check(3, 1.0, 0.5).message


def test_warn_mode_trains_on():
    detector = DivergenceDetector(min_steps=2, on_spike="warn")
    for step, norm in enumerate([1.0, 1.1, 0.9, 50.0, 1.0], start=1):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert detector({"step": step, "loss": 1.0, "grad_norm": norm}) is False
        assert len(caught) == (step == 4)
    assert [a.step for a in detector.alerts] == [4]


# --------------------------------------------------------------------------------------------
# Hugging Face Trainer
# --------------------------------------------------------------------------------------------


class InOrder(torch.utils.data.IterableDataset):
    """Examples in a fixed order (the Trainer does not shuffle an IterableDataset); 2 per step."""

    def __init__(self, poison_step: int | None = None) -> None:
        self.poison_step = poison_step

    def __iter__(self):
        for i in range(10_000):
            x = DATA[(i * T) % (len(DATA) - T):][:T].clone()
            if self.poison_step is not None and i // 2 + 1 == self.poison_step:
                x[3] = V - 1  # the one token whose embedding row is NaN (it occurs nowhere else)
            yield {"input_ids": x, "labels": x.clone()}


def tiny_trainer(tmp_path, callbacks, max_steps=6, poison_step=None, eval_dataset=None, **args):
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=T, n_embd=16, n_layer=1, n_head=2,
                                       tie_word_embeddings=False, bos_token_id=0, eos_token_id=0))
    if poison_step is not None:
        with torch.no_grad():
            model.transformer.wte.weight[V - 1] = float("nan")
    settings = dict(output_dir=str(tmp_path / "out"), max_steps=max_steps, per_device_train_batch_size=2,
                    learning_rate=1e-3, logging_steps=1, report_to="none", use_cpu=True, disable_tqdm=True,
                    save_strategy="no", seed=0)
    trainer = Trainer(model=model, args=TrainingArguments(**{**settings, **args}),
                      train_dataset=InOrder(poison_step), eval_dataset=eval_dataset, callbacks=callbacks)
    return trainer, model


def test_trainer_hides_a_nan_loss_without_the_callback(tmp_path):
    """The failure the callback exists for: the Trainer's log stays finite while the weights turn to NaN."""
    trainer, model = tiny_trainer(tmp_path, [], poison_step=3)
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)  # logging_nan_inf_filter at work
    assert not torch.isfinite(model.transformer.h[0].mlp.c_fc.weight).all()  # ... yet training broke


def test_trainer_callback_stops_on_a_nan_loss_before_the_update(tmp_path):
    from llm_course.train.trainer_monitoring import MonitorCallback

    trainer, model = tiny_trainer(tmp_path, [MonitorCallback(tmp_path / "tb")], poison_step=3)
    with pytest.raises(NonFiniteLossError, match=r"non-finite gradient at step 3 \(first in \S+") as err:
        trainer.train()
    assert err.value.step == 3 and trainer.state.global_step == 2
    assert "the weights ['transformer.wte.weight'] already hold NaN/Inf values" in str(err.value)
    finite = [torch.isfinite(p).all() for n, p in model.named_parameters() if n != "transformer.wte.weight"]
    assert all(finite)  # the update with NaN gradients was never applied
    assert [s for s, _ in read_scalars(tmp_path / "tb")["train/loss"]] == [1, 2]


def test_trainer_callback_stops_on_a_nan_gradient(tmp_path):
    from llm_course.train.trainer_monitoring import MonitorCallback

    trainer, model = tiny_trainer(tmp_path, [MonitorCallback()])
    at_step(model, model.transformer.h[0].attn.c_attn.weight, 4, lambda g: torch.full_like(g, float("inf")))
    with pytest.raises(NonFiniteLossError, match=r"step 4 \(first in transformer\.h\.0\.attn\.c_attn\.weight"):
        trainer.train()
    assert trainer.state.global_step == 3


def test_trainer_callback_stops_on_an_exploding_gradient_and_logs_like_the_course_loop(tmp_path):
    from llm_course.train.trainer_monitoring import MonitorCallback

    callback = MonitorCallback(tmp_path / "tb", DivergenceDetector(max_grad_ratio=10, min_steps=4))
    trainer, model = tiny_trainer(tmp_path, [callback], max_steps=20, include_num_input_tokens_seen=True)
    at_step(model, model.transformer.wte.weight, 7, lambda g: g * 1e4)
    with pytest.warns(DivergenceWarning, match=r"exploding gradient at step 7"):
        trainer.train()
    assert trainer.state.global_step == 7  # should_training_stop: the run ended at the spike
    logs = [e for e in trainer.state.log_history if "loss" in e]
    (alert,) = callback.detector.alerts
    assert alert.value == logs[-1]["grad_norm"] and alert.value > 10 * alert.median
    scalars = read_scalars(tmp_path / "tb")
    assert scalars["train/loss"] == [(e["step"], e["loss"]) for e in logs]
    assert scalars["train/grad_norm"] == [(e["step"], e["grad_norm"]) for e in logs]
    assert scalars["train/lr"] == [(e["step"], e["learning_rate"]) for e in logs]
    assert [s for s, _ in scalars["train/tokens_per_sec"]] == list(range(1, 8))
    assert all(v > 0 for _, v in scalars["train/tokens_per_sec"])


def test_trainer_callback_logs_eval_loss(tmp_path):
    from llm_course.train.trainer_monitoring import MonitorCallback

    val = [{"input_ids": DATA[i : i + T], "labels": DATA[i : i + T]} for i in range(0, 4 * T, T)]
    trainer, _ = tiny_trainer(tmp_path, [MonitorCallback(tmp_path / "tb")], max_steps=4, eval_dataset=val,
                              eval_strategy="steps", eval_steps=2)
    trainer.train()
    evals = [(e["step"], e["eval_loss"]) for e in trainer.state.log_history if "eval_loss" in e]
    scalars = read_scalars(tmp_path / "tb")
    assert [s for s, _ in evals] == [2, 4] and scalars["eval/loss"] == evals
    assert scalars["eval/perplexity"] == [(s, math.exp(v)) for s, v in evals]


# --------------------------------------------------------------------------------------------
# wandb (optional, offline) and bad input
# --------------------------------------------------------------------------------------------


def test_wandb_missing_gives_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` fail as if not installed
    monkeypatch.delenv("WANDB_MODE", raising=False)
    with pytest.raises(MissingDependencyError, match=r"wandb is not installed: pip install wandb"):
        wandb_offline_logger(run_dir=tmp_path)
    assert "WANDB_MODE" not in __import__("os").environ


def test_wandb_runs_offline_and_logs_the_same_scalars(monkeypatch, tmp_path):
    calls = []

    class Run:
        def log(self, values, step):
            calls.append((step, values))

    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: calls.append(kw) or Run()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    logger = wandb_offline_logger("ch09", tmp_path / "wb", config={"lr": 1e-3})
    assert __import__("os").environ["WANDB_MODE"] == "offline"
    assert calls[0] == {"project": "ch09", "dir": str(tmp_path / "wb"), "mode": "offline", "config": {"lr": 1e-3}}
    logger({"step": 3, "loss": 2.0, "lr": 1e-3, "grad_norm": 0.5, "tokens_per_sec": 100.0,
            "eval": {"loss": 2.1, "perplexity": math.exp(2.1), "tokens": 64}})
    assert calls[1] == (3, {"train/loss": 2.0, "train/lr": 1e-3, "train/grad_norm": 0.5,
                            "train/tokens_per_sec": 100.0, "eval/loss": 2.1, "eval/perplexity": math.exp(2.1)})
    with pytest.raises(TypeError, match="always runs offline"):
        wandb_offline_logger(mode="online")


@pytest.mark.parametrize("kwargs, pattern", [
    ({"max_grad_ratio": 1.0}, "max_grad_ratio must be a finite number > 1"),
    ({"max_grad_ratio": 0.5}, "max_grad_ratio must be a finite number > 1"),
    ({"max_grad_ratio": float("inf")}, "max_grad_ratio"),
    ({"max_grad_ratio": float("nan")}, "max_grad_ratio"),
    ({"window": 0}, "window must be a positive integer"),
    ({"window": 5, "min_steps": 6}, r"min_steps \(6\) cannot exceed window \(5\)"),
    ({"on_spike": "explode"}, "on_spike must be one of"),
])
def test_detector_bad_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        DivergenceDetector(**kwargs)


@pytest.mark.parametrize("kwargs, pattern", [
    ({"max_grad_ratio": True}, "max_grad_ratio must be a finite number > 1, got bool"),
    ({"max_grad_ratio": "10"}, "max_grad_ratio"),
    ({"min_steps": 2.5}, "min_steps must be a positive integer, got float"),
])
def test_detector_bad_argument_types(kwargs, pattern):
    with pytest.raises(TypeError, match=pattern):
        DivergenceDetector(**kwargs)


def test_bad_log_dirs_and_tags(tmp_path):
    from llm_course.train.trainer_monitoring import MonitorCallback

    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    for fn in (TensorBoardLogger, read_scalars, tensorboard_command):
        with pytest.raises(ValueError, match="is a file"):
            fn(a_file)
    with pytest.raises(TypeError, match="log_dir must be a path"):
        TensorBoardLogger(123)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_scalars(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no TensorBoard event files"):
        read_scalars(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"no scalars tagged \['train/los'\]; available: \['train/loss'\]"):
        plot_scalars({"train/loss": [(1, 1.0)]}, tags=["train/los"])
    with pytest.raises(ValueError, match="no scalars to plot"):
        plot_scalars({})
    with pytest.raises(TypeError, match="detector must be a DivergenceDetector"):
        MonitorCallback(detector="strict")


def test_every_public_name_says_its_chapter():
    import llm_course.train.monitoring as monitoring
    import llm_course.train.trainer_monitoring as trainer_monitoring

    for module in (monitoring, trainer_monitoring):
        for name in module.__all__:
            obj = getattr(module, name)  # MonitorCallback is built on first access (transformers import)
            if callable(obj):
                assert "Chapter 09" in (obj.__doc__ or ""), name
    assert issubclass(trainer_monitoring.MonitorCallback, __import__("transformers").TrainerCallback)
    assert trainer_monitoring.MonitorCallback.__qualname__ == "MonitorCallback"


def test_manual_monitor_gradients_measures_too_late(tmp_path):
    """Called from a Trainer callback, the manual's function sees cleared or clipped gradients: a 10^4 spike
    is invisible to it, while the Trainer's logged grad_norm (before clipping) shows it."""
    from transformers import TrainerCallback

    seen: dict[str, list[float]] = {"step_end": [], "pre_optimizer": []}

    class Manual(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
            seen["pre_optimizer"].append(manual_monitor_gradients(model))

        def on_step_end(self, args, state, control, model=None, **kw):
            seen["step_end"].append(manual_monitor_gradients(model))

    trainer, model = tiny_trainer(tmp_path, [Manual()], max_steps=5, max_grad_norm=1.0)
    at_step(model, model.transformer.wte.weight, 4, lambda g: g * 1e4)
    trainer.train()
    logged = [e["grad_norm"] for e in trainer.state.log_history if "grad_norm" in e]
    assert seen["step_end"] == [0.0] * 5  # the optimizer step zeroed the gradients before on_step_end
    assert logged[3] > 1000 and all(n < 10 for i, n in enumerate(logged) if i != 3)
    assert all(n <= 1.0 + 1e-5 for n in seen["pre_optimizer"])  # after clipping: the spike reads as 1.0
    assert seen["pre_optimizer"][3] == pytest.approx(1.0, rel=1e-5)


MANUAL_TEXT = Path(__file__).resolve().parents[2] / "shared" / "manual" / "llm-manual-ru.md"


@pytest.mark.skipif(not MANUAL_TEXT.exists(), reason="the manual (../shared/manual) is not beside this checkout")
def test_manual_monitor_gradients_is_the_manuals_code():
    import inspect

    body = inspect.getsource(manual_monitor_gradients).split('"""')[-1]  # the code after the docstring
    manual = MANUAL_TEXT.read_text(encoding="utf-8")
    for line in body.strip().splitlines():
        line = line.split("  # noqa")[0]  # a linter's directive (the unused `name` is the manual's) is not code
        assert line.strip() in manual, line


def test_gradient_norm_timing_against_an_independent_norm():
    """The manual's reading is right only before clipping; after clipping a 10^4 spike reads as max_norm,
    after zero_grad 0.0. The course's number (clip_grad_norm_'s return) is the norm before clipping."""
    torch.manual_seed(0)
    model = tiny_gpt()
    ids = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(3))
    model_loss(model, {"input_ids": ids, "labels": ids}).backward()
    reference = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in model.parameters() if p.grad is not None))
    n_grads = sum(p.grad is not None for p in model.parameters())
    model.zero_grad(set_to_none=True)
    weights = [p.detach().clone() for p in model.parameters()]
    r = gradient_norm_timing(model, {"input_ids": ids, "labels": ids}, max_grad_norm=1.0, spike=1e4)
    assert r["course"] == pytest.approx(1e4 * reference, rel=1e-4)
    assert r["manual, before clipping"] == pytest.approx(1e4 * reference, rel=1e-4)
    assert r["manual, after clipping"] == pytest.approx(1.0, rel=1e-4)
    assert r["manual, after zero_grad"] == 0.0
    assert r["item_calls"] == n_grads > 1
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))  # no step was taken
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="'input_ids' and 'labels'"):
        gradient_norm_timing(model, {"input_ids": ids})
    with pytest.raises(ValueError, match="spike must be a finite number > 0"):
        gradient_norm_timing(model, {"input_ids": ids, "labels": ids}, spike=0)


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb is not installed (pip install wandb)")
def test_real_wandb_writes_an_offline_run_folder(monkeypatch, tmp_path):
    """The real package, offline: no login, no network; the run is a local folder `wandb sync` can upload."""
    monkeypatch.setenv("WANDB_MODE", "online")  # overridden: the logger always runs offline
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    import wandb

    try:
        logger = wandb_offline_logger("ch09-test", tmp_path / "wb", config={"lr": 1e-3})
        for step in (1, 2, 3):
            logger({"step": step, "loss": 1.0 / step, "lr": 1e-3, "grad_norm": 0.5, "eval": {"loss": 2.0}})
        logger.finish()
    finally:
        wandb.teardown()  # stops wandb's service process (wandb-core), which otherwise outlives the test
    assert os.environ["WANDB_MODE"] == "offline"
    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb")), runs
