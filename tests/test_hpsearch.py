"""Tests for llm_course.train.hpsearch (chapter 09: hyperparameter search with Ray Tune and ASHA)."""

from __future__ import annotations

import importlib.util
import math
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from llm_course.core.deps import MissingDependencyError
from llm_course.models.gpt import GPT, GPTConfig
from llm_course.text.tokenizer import ByteLevelBPETokenizer
from llm_course.train import hpsearch
from llm_course.zoo.loading import checkpoint_dir

pytestmark = pytest.mark.usefixtures("one_thread")

HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason='Ray is not installed: pip install "ray[tune]" to run this test')

CONFIGS = [  # from hopeless (lr 1e-6: the loss barely moves) to good (lr 1e-2)
    {"lr": 1e-2, "batch_size": 8, "weight_decay": 0.0},
    {"lr": 1e-6, "batch_size": 4, "weight_decay": 0.1},
    {"lr": 3e-3, "batch_size": 4, "weight_decay": 0.2},
    {"lr": 3e-6, "batch_size": 8, "weight_decay": 0.0},
]


@pytest.fixture(scope="module")
def job() -> hpsearch.FineTuneJob:
    """A tiny GPT (1 layer, width 32) and 48 + 12 instruction examples: a trial takes well under a second."""
    tok = ByteLevelBPETokenizer.from_pretrained(checkpoint_dir("course-gpt"))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_positions=128, n_embd=32, n_layer=1, n_head=2))
    return hpsearch.make_job(model, tok, n_train=48, n_eval=12)


def run_trial(trainable, config, job, max_steps=8, report_every=2) -> list[dict]:
    reports: list[dict] = []
    trainable(config, job, max_steps=max_steps, report_every=report_every, seed=0, report=reports.append)
    return reports


# --------------------------------------------------------------------------------------------
# Without Ray: a clear error, and the module imports fine
# --------------------------------------------------------------------------------------------


def test_module_imports_without_ray(monkeypatch):
    """A fresh copy of the module loads while `import ray` fails: Ray is only needed to run a search."""
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ModuleNotFoundError
    spec = importlib.util.spec_from_file_location("llm_course._hpsearch_without_ray", hpsearch.__file__)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    assert module.search_space(lr=[1e-3]).params["lr"] == ("choice", (1e-3,))


def test_missing_ray_is_a_clear_error(monkeypatch, job):
    for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingDependencyError, match=r'pip install ray\[tune\]'):
        hpsearch.run_search(job, num_samples=2, max_steps=4, report_every=2)
    with pytest.raises(MissingDependencyError, match=r"ray\[tune\]"):
        hpsearch.finetune_trial(CONFIGS[0], job, max_steps=2, report_every=1)  # no report= given: ray.tune.report
    with pytest.raises(ImportError):  # it is an ImportError too
        hpsearch.search_space().to_tune()


# --------------------------------------------------------------------------------------------
# The search space
# --------------------------------------------------------------------------------------------


def test_default_space():
    space = hpsearch.search_space()
    assert space.params == {"lr": ("loguniform", (1e-4, 3e-2)), "batch_size": ("choice", (4, 8, 16)),
                            "weight_decay": ("uniform", (0.0, 0.3))}


@pytest.mark.parametrize("kwargs, error, match", [
    ({"batch_size": []}, ValueError, "'batch_size' has no values"),
    ({"lr": []}, ValueError, "'lr' has no values"),
    ({"lr": ()}, ValueError, "'lr' has no values"),
    ({"lr": (1e-2, 1e-4)}, ValueError, "inverted"),
    ({"weight_decay": (0.1, 0.1)}, ValueError, "low < high"),
    ({"lr": (0.0, 1e-3)}, ValueError, "> 0"),
    ({"lr": [1e-3, -1e-3]}, ValueError, "> 0"),
    ({"weight_decay": (-0.1, 0.1)}, ValueError, ">= 0"),
    ({"batch_size": [0, 8]}, ValueError, "each batch_size value must be a positive integer, got 0"),
    ({"lr": (1e-4, 1e-3, 1e-2)}, ValueError, "use a list"),
    ({"batch_size": (4, 32)}, TypeError, "list the choices"),
    ({"batch_size": [4.0, 8]}, TypeError, "integer, got float"),
    ({"lr": [True]}, TypeError, "each lr value must be a finite number > 0, got bool"),
    ({"lr": [float("nan")]}, ValueError, "finite"),
    ({"lr": 1e-3}, TypeError, "a list of choices or a"),
])
def test_bad_space_is_a_clear_error(kwargs, error, match):
    with pytest.raises(error, match=match):
        hpsearch.search_space(**kwargs)


@needs_ray
def test_space_to_tune_domains():
    from ray.tune.search.sample import Categorical, Float

    space = hpsearch.search_space(lr=(1e-4, 1e-2), batch_size=[2, 4], weight_decay=[0.0, 0.1])
    domains = space.to_tune()
    assert isinstance(domains["lr"], Float) and (domains["lr"].lower, domains["lr"].upper) == (1e-4, 1e-2)
    assert isinstance(domains["lr"].get_sampler(), Float._LogUniform)
    assert isinstance(domains["batch_size"], Categorical) and domains["batch_size"].categories == [2, 4]
    assert domains["weight_decay"].categories == [0.0, 0.1]
    samples = [domains["lr"].sample(random_state=np.random.default_rng(i)) for i in range(200)]
    assert all(1e-4 <= s <= 1e-2 for s in samples)
    assert 0.3 < np.mean(np.log10(samples) < -3) < 0.7  # log-uniform: half of them below the log-midpoint 1e-3


# --------------------------------------------------------------------------------------------
# The job and the trainables, run on their own: data comes in through the arguments
# --------------------------------------------------------------------------------------------


def test_make_job_copies_the_model_and_checks_input(job):
    tok = ByteLevelBPETokenizer.from_pretrained(checkpoint_dir("course-gpt"))
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_positions=128, n_embd=32, n_layer=1, n_head=2))
    small = hpsearch.make_job(model, tok, n_train=4, n_eval=2)
    before = model.wte.weight.detach().clone()
    run_trial(hpsearch.finetune_trial, CONFIGS[0], small, max_steps=2, report_every=1)
    assert torch.equal(model.wte.weight, before)  # the search trains copies, never the model itself
    assert len(small.train_encoded) == 4 and len(small.eval_encoded) == 2
    assert all(-100 in ex["labels"] and ex["labels"][-1] == small.pad_token_id for ex in small.train_encoded)
    with pytest.raises(TypeError, match="course llm_course.models.gpt.GPT"):
        hpsearch.make_job(torch.nn.Linear(2, 2), tok)
    with pytest.raises(ValueError, match="n_train"):
        hpsearch.make_job(model, tok, n_train=0)


def test_trial_reports_after_every_evaluation(job):
    reports = run_trial(hpsearch.finetune_trial, CONFIGS[0], job, max_steps=8, report_every=2)
    assert [r["step"] for r in reports] == [2, 4, 6, 8]
    losses = [r["eval_loss"] for r in reports]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.1  # lr 1e-2 learns within 8 steps


def test_trial_gets_its_data_from_its_arguments(job):
    """The same function with another job's data gives other numbers: nothing comes from a global."""
    tok = ByteLevelBPETokenizer.from_pretrained(checkpoint_dir("course-gpt"))
    torch.manual_seed(1)
    other_model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_positions=128, n_embd=32, n_layer=1, n_head=2))
    other = hpsearch.make_job(other_model, tok, n_train=48, n_eval=12, seed=1)
    a = run_trial(hpsearch.finetune_trial, CONFIGS[0], job, max_steps=4)
    b = run_trial(hpsearch.finetune_trial, CONFIGS[0], job, max_steps=4)
    c = run_trial(hpsearch.finetune_trial, CONFIGS[0], other, max_steps=4)
    assert a == b  # deterministic: a trial is a pure function of (config, data, seed)
    assert [r["eval_loss"] for r in a] != pytest.approx([r["eval_loss"] for r in c], abs=1e-3)
    with pytest.raises(TypeError, match="FineTuneJob"):
        hpsearch.finetune_trial(CONFIGS[0], {"train": []}, report=print)


def test_manual_trial_reports_once_at_the_end_with_the_same_training(job):
    every = run_trial(hpsearch.finetune_trial, CONFIGS[2], job, max_steps=6, report_every=2)
    once = run_trial(hpsearch.manual_trial, CONFIGS[2], job, max_steps=6, report_every=2)
    assert [r["step"] for r in once] == [6]
    # evaluating in between changes nothing in the training: the final losses are identical
    assert once[0]["eval_loss"] == pytest.approx(every[-1]["eval_loss"], rel=1e-6)


# --------------------------------------------------------------------------------------------
# ASHA's decisions on these reports: Ray's own scheduler, replayed without starting Ray
# --------------------------------------------------------------------------------------------


def asha_reference(curves: list[list[tuple[int, float]]], rungs: list[int], rf: int) -> list[int]:
    """The step at which each trial ends under asynchronous successive halving, trials run one after the
    other: at each rung a trial stops unless its loss is at most the (1 - 1/rf) quantile of the losses
    earlier trials had there (ASHA's rule, numpy's linear percentile)."""
    recorded: dict[int, list[float]] = {r: [] for r in rungs}
    ends = []
    for curve in curves:
        end = curve[-1][0]
        for step, loss in curve:
            if step in recorded:
                earlier = list(recorded[step])  # the losses of the trials before this one
                recorded[step].append(loss)
                if earlier and -loss < np.percentile([-v for v in earlier], (1 - 1 / rf) * 100):
                    end = step
                    break
        ends.append(end)
    return ends


def replay_asha(reports: list[list[dict]], max_t: int, grace: int, rf: int) -> list[int]:
    """Feed each trial's reports, in turn, to a real ASHAScheduler; the step at which it said STOP (or the end)."""
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    scheduler = ASHAScheduler(time_attr="step", metric="eval_loss", mode="min", max_t=max_t,
                              grace_period=grace, reduction_factor=rf)
    ends = []
    for i, trial_reports in enumerate(reports):
        trial = SimpleNamespace(trial_id=f"t{i}")
        scheduler.on_trial_add(None, trial)
        end = trial_reports[-1]["step"]
        for r in trial_reports:
            if scheduler.on_trial_result(None, trial, r) == TrialScheduler.STOP and r["step"] < max_t:
                end = r["step"]
                break
        ends.append(end)
    return ends


@needs_ray
def test_asha_stops_weak_trials_only_when_they_report_during_training(job):
    max_t, grace, rf = 8, 2, 2  # rungs at steps 2 and 4
    every = [run_trial(hpsearch.finetune_trial, c, job, max_steps=max_t, report_every=2) for c in CONFIGS]
    once = [run_trial(hpsearch.manual_trial, c, job, max_steps=max_t, report_every=2) for c in CONFIGS]

    ends = replay_asha(every, max_t, grace, rf)
    curves = [[(r["step"], r["eval_loss"]) for r in t] for t in every]
    assert ends == asha_reference(curves, rungs=[2, 4], rf=rf)  # Ray's ASHA does what the rule says
    assert ends[0] == max_t  # the first (and best) trial has nobody to lose against
    assert ends[1] == 2 and ends[3] == 2  # the two tiny learning rates are stopped at the first rung
    assert sum(e < max_t for e in ends) >= 2

    # The manual's trainable: one report, after all 8 steps; ASHA's verdict comes too late to save any
    assert replay_asha(once, max_t, grace, rf) == [max_t] * len(CONFIGS)


# --------------------------------------------------------------------------------------------
# The result's summary, table and plot
# --------------------------------------------------------------------------------------------


def make_result() -> hpsearch.SearchResult:
    def trial(i, lr, curve):
        return {"trial": i, "lr": lr, "batch_size": 8, "weight_decay": 0.1, "steps": curve[-1][0],
                "eval_loss": curve[-1][1], "best_eval_loss": min(v for _, v in curve),
                "stopped_early": curve[-1][0] < 30, "seconds": curve[-1][0] / 10, "curve": curve}

    trials = [trial(0, 1e-2, [(10, 3.0), (20, 2.5), (30, 2.0)]), trial(1, 1e-5, [(10, 5.0)]),
              trial(2, 3e-3, [(10, 3.5), (20, 3.2), (30, 3.1)]), trial(3, 1e-4, [(10, 4.0), (20, 3.9)])]
    return hpsearch.SearchResult(trials, max_steps=30, report_every=10, single_report=False,
                                 scheduler={"time_attr": "step", "max_t": 30, "grace_period": 10,
                                            "reduction_factor": 2}, wall_seconds=12.0, num_cpus=2)


def test_summary_counts_stopped_trials_and_saved_steps():
    s = make_result().summary()
    assert (s["trials"], s["stopped_early"], s["stopped_fraction"]) == (4, 2, 0.5)
    assert (s["steps_run"], s["steps_if_all_finished"]) == (90, 120)
    assert s["steps_saved_ratio"] == pytest.approx(120 / 90)
    assert s["trial_seconds"] == pytest.approx(9.0)
    assert s["trial_seconds_if_all_finished"] == pytest.approx(12.0)  # 3 s per 30-step trial, 4 trials
    assert s["best_config"] == {"lr": 1e-2, "batch_size": 8, "weight_decay": 0.1} and s["best_eval_loss"] == 2.0
    assert s["best_config_by_train_loss"] is None  # these trials carry no training loss


def test_the_manuals_choice_by_training_loss_can_pick_the_overfitting_trial():
    result = make_result()
    for t, train_loss in zip(result.trials, [1.5, 4.0, 0.9, 3.0]):  # trial 2 fits its batches best...
        t["train_loss"] = train_loss
    s = result.summary()
    assert s["best_config"]["lr"] == 1e-2 and s["best_eval_loss"] == 2.0  # ...trial 0 generalizes best
    assert s["best_config_by_train_loss"] == {"lr": 3e-3, "batch_size": 8, "weight_decay": 0.1}
    assert s["eval_loss_of_best_by_train_loss"] == 3.1


def test_a_gpu_request_on_a_machine_without_one_is_refused_not_left_pending():
    """The manual's resources_per_trial={"cpu": 2, "gpu": 1}: Tune would keep every trial PENDING forever."""
    assert hpsearch.MANUAL_RESOURCES == {"cpu": 2, "gpu": 1}
    with pytest.raises(ValueError, match=r"1 GPU per trial, but the cluster has 0.*PENDING forever"):
        hpsearch.check_trial_resources(hpsearch.MANUAL_RESOURCES, available={"CPU": 2.0, "memory": 1e9})
    with pytest.raises(ValueError, match=r"4 CPU per trial, but the cluster has 2"):
        hpsearch.check_trial_resources({"cpu": 4}, available={"CPU": 2.0})
    assert hpsearch.check_trial_resources(hpsearch.MANUAL_RESOURCES, available={"CPU": 8.0, "GPU": 1.0})
    with pytest.raises(TypeError, match="non-empty dict"):
        hpsearch.check_trial_resources({}, available={"CPU": 2.0})
    with pytest.raises(ValueError, match=r"resources\['cpu'\] must be a finite number >= 0, got -1"):
        hpsearch.check_trial_resources({"cpu": -1}, available={"CPU": 2.0})


def test_plot_trials_draws_stopped_trials_shorter_and_grey():
    ax = hpsearch.plot_trials(make_result())
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert [list(line.get_xdata()) for line in dashed] == [[10], [10, 20]]  # the two stopped trials
    assert {line.get_color() for line in dashed} == {"0.6"}
    ends = [(line.get_xdata()[0], line.get_ydata()[0]) for line in ax.get_lines() if line.get_marker() == "x"]
    assert ends == [(10, 5.0), (20, 3.9)]  # each stopped trial ends in an x at its last report
    solid = [line for line in ax.get_lines() if line.get_linestyle() == "-"]
    assert [list(line.get_xdata()) for line in solid] == [[10, 20, 30], [10, 20, 30]]
    assert solid[0].get_linewidth() > solid[1].get_linewidth()  # the best trial is drawn thick
    assert "2 of 4 trials stopped early; 90 of 120 steps run" == ax.get_title()
    assert [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == ":"] == [10, 20]  # the rungs


@pytest.mark.skipif(importlib.util.find_spec("pandas") is None, reason="pandas is not installed (ray[tune] brings it)")
def test_results_table_sorted_by_loss():
    table = hpsearch.results_table(make_result())
    assert list(table["trial"]) == [0, 2, 3, 1]
    assert "curve" not in table.columns and list(table["stopped_early"]) == [False, False, True, True]


# --------------------------------------------------------------------------------------------
# A real search: Ray processes, Tuner, with_parameters, ASHA
# --------------------------------------------------------------------------------------------


def test_run_search_checks_arguments_before_starting_ray(job):
    with pytest.raises(ValueError, match="report_every"):
        hpsearch.run_search(job, max_steps=4, report_every=8)
    with pytest.raises(ValueError, match="grace_period"):
        hpsearch.run_search(job, max_steps=4, report_every=2, grace_period=4)
    with pytest.raises(TypeError, match="search_space"):
        hpsearch.run_search(job, space={"lr": [1e-3]})
    with pytest.raises(TypeError, match="FineTuneJob"):
        hpsearch.run_search([1, 2, 3])
    with pytest.raises(ValueError, match="num_samples"):
        hpsearch.run_search(job, num_samples=0)


@pytest.fixture(scope="module")
def ray_session():
    if not HAVE_RAY:
        pytest.skip('Ray is not installed: pip install "ray[tune]" to run the search tests')
    import ray

    try:
        hpsearch.start_ray(num_cpus=2)
    except hpsearch.RayStartError as err:  # Ray's 15 s agent deadline on an overloaded machine
        pytest.skip(f"Ray's processes did not start on this busy machine: {err}")
    yield ray
    ray.shutdown()


@needs_ray
def test_real_search_stops_trials_early_and_manual_version_does_not(job, ray_session, tmp_path):
    """Ray processes, Tuner, with_parameters and ASHA for real. One trial at a time (cpus_per_trial=2 of the
    session's 2 CPUs), so ASHA's decisions do not depend on timing and can be checked against the rule."""
    space = hpsearch.search_space(lr=[1e-6, 1e-2], batch_size=[4, 8], weight_decay=(0.0, 0.2))
    kwargs = dict(num_samples=4, max_steps=8, report_every=2, reduction_factor=2, seed=0, cpus_per_trial=2)
    asha = hpsearch.run_search(job, space, storage_path=tmp_path, **kwargs)
    assert asha.errors == [] and len(asha.trials) == 4
    for t in asha.trials:
        assert [step for step, _ in t["curve"]] == list(range(2, t["steps"] + 1, 2))  # a report every 2 steps
        assert t["stopped_early"] == (t["steps"] < 8)
    assert [t["steps"] for t in asha.trials] == asha_reference([t["curve"] for t in asha.trials], [2, 4], rf=2)
    s = asha.summary()
    assert s["stopped_early"] >= 1 and s["steps_run"] < 4 * 8
    assert s["best_config"]["lr"] == 1e-2
    assert (tmp_path / "hpsearch").is_dir() and asha.storage_path == str(tmp_path / "hpsearch")

    manual = hpsearch.run_search(job, space, single_report=True, **kwargs)
    assert manual.summary()["stopped_early"] == 0
    assert [t["steps"] for t in manual.trials] == [8] * 4 and all(len(t["curve"]) == 1 for t in manual.trials)
    # the same seed draws the same configs, so the two searches compare like with like
    assert [(t["lr"], t["batch_size"]) for t in manual.trials] == [(t["lr"], t["batch_size"]) for t in asha.trials]
    with pytest.raises(ValueError, match="already running"):
        hpsearch.run_search(job, space, num_cpus=1, **kwargs)
    assert all(math.isfinite(t["train_loss"]) for t in manual.trials)
    with pytest.raises(ValueError, match="3 CPU per trial, but the cluster has 2"):  # not pending forever
        hpsearch.run_search(job, space, **{**kwargs, "cpus_per_trial": 3})


LEAN = {"MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536",
        "MALLOC_TRIM_THRESHOLD_": "65536"}


@needs_ray
def test_rays_worker_processes_inherit_the_lean_allocator_settings_and_this_process_keeps_its_own(ray_session):
    import os

    @ray_session.remote(num_cpus=1)
    def environment():
        return {name: os.environ.get(name) for name in LEAN}

    assert ray_session.get(environment.remote()) == LEAN       # a worker the raylet started after ray.init
    assert not any(os.environ.get(name) == value for name, value in LEAN.items() if name != "OMP_NUM_THREADS")


def test_lean_ray_processes_sets_only_what_is_unset_and_restores_it(monkeypatch):
    import os

    for name in LEAN:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")     # the user's own choice is kept
    with hpsearch._lean_ray_processes():
        assert {name: os.environ[name] for name in LEAN} == {**LEAN, "MALLOC_ARENA_MAX": "4"}
    assert [name for name in LEAN if name in os.environ] == ["MALLOC_ARENA_MAX"]
    assert os.environ["MALLOC_ARENA_MAX"] == "4"
    with hpsearch._lean_ray_processes(enabled=False):
        assert "MALLOC_MMAP_THRESHOLD_" not in os.environ


@pytest.mark.skipif(importlib.util.find_spec("rfc3987_syntax") is None, reason="rfc3987_syntax is not installed here")
def test_fast_start_hides_the_slow_import_from_child_processes_only(monkeypatch):
    import os
    import subprocess

    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    probe = "import sys\ntry:\n    import rfc3987_syntax\nexcept ImportError as e:\n    sys.exit(str(e))"
    with hpsearch._fast_ray_processes():
        assert os.environ["PYTHONPATH"].endswith(os.pathsep + "/somewhere")  # the user's path is kept
        child = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert child.returncode == 1 and "hides rfc3987_syntax" in child.stderr
    assert os.environ["PYTHONPATH"] == "/somewhere"  # restored for everything started later
    assert importlib.util.find_spec("rfc3987_syntax") is not None  # this process is untouched
