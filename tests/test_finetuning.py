"""Tests for llm_course.train.finetuning: Trainer fine-tuning (4.50 to 5.x), the manual's errors, the memory harness."""

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

pytestmark = pytest.mark.usefixtures("one_thread")

transformers = pytest.importorskip("transformers")
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel  # noqa: E402

from llm_course.train.finetuning import (
    ExampleDataset,
    _default_collator,
    lm_examples,
    trainer_finetune,
    trainer_history,
    training_arguments,
)
from llm_course.train.finetuning_costs import (
    comparison_table,
    count_parameters,
    measure_finetuning,
    plot_comparison,
    saved_activation_bytes,
)
from llm_course.train.manual_trainer import OLDEST_TRANSFORMERS, demonstrate_manual_errors, manual_error_expected
from llm_course.zoo.loading import checkpoint_dir


@pytest.fixture(scope="module")
def base_tokenizer():
    """The shipped course-gpt tokenizer (offline): GPT-2 style, no pad token."""
    return AutoTokenizer.from_pretrained(checkpoint_dir("course-gpt"))


@pytest.fixture(scope="module")
def tokenizer(base_tokenizer):
    """With a dedicated pad token (id 4096), so padding never hides the end-of-text token."""
    tok = copy.deepcopy(base_tokenizer)
    tok.add_special_tokens({"pad_token": "<|pad|>"})
    return tok


def tiny_gpt2(vocab_size: int, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=vocab_size, n_positions=64,
                        bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config)


def cycle_examples(first_id: int, n: int, length: int = 16, period: int = 24) -> list[dict]:
    """Examples cut from the periodic stream first_id, first_id+1, ..., first_id+period-1, first_id, ...:
    learnable (each token predicts the next), and disjoint in vocabulary from another first_id."""
    out = []
    for k in range(n):
        start = 5 * k
        out.append({"input_ids": [first_id + (start + j) % period for j in range(length)]})
    return out


# --------------------------------------------------------------------------------------------
# Trainer fine-tuning
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tokenizer, tmp_path_factory):
    """One short Trainer run on a learnable stream; eval examples from the same stream."""
    out = tmp_path_factory.mktemp("ft")
    model = tiny_gpt2(len(tokenizer))
    trainer, result = trainer_finetune(model, tokenizer, cycle_examples(10, 32), cycle_examples(12, 8), out,
                                       max_steps=24, lr=3e-3, batch_size=8, eval_steps=6, patience=3,
                                       disable_tqdm=True)
    return model, trainer, result, out


def test_trainer_lowers_eval_loss(trained):
    model, trainer, result, _ = trained
    evals = [loss for _, loss in trainer_history(trainer)["eval"]]
    assert len(evals) == 4  # steps 6, 12, 18, 24
    assert evals[0] > evals[-1] + 1.0, evals
    assert evals[0] < math.log(len(trainer.processing_class)) + 0.5  # started near chance (ln V)
    assert result.global_step == 24
    assert trainer.state.best_metric == pytest.approx(min(evals))


def test_checkpoints_are_safetensors_and_the_best_is_loaded(trained):
    model, trainer, _, out = trained
    checkpoints = sorted(Path(out).glob("checkpoint-*"))
    assert 1 <= len(checkpoints) <= 2  # save_total_limit=2
    for ckpt in checkpoints:
        names = {p.name for p in ckpt.iterdir()}
        assert "model.safetensors" in names
        assert not {"pytorch_model.bin", "model.bin", "pytorch_model.pt"} & names  # weights are never pickled
        assert {"trainer_state.json", "tokenizer.json", "config.json"} <= names
    best = Path(trainer.state.best_model_checkpoint)
    saved = load_file(best / "model.safetensors")
    state = model.state_dict()
    for name, tensor in saved.items():
        assert torch.equal(state[name], tensor), name
    # the tied head is not stored twice, and loading the best weights kept it tied
    assert "lm_head.weight" not in saved
    assert model.lm_head.weight is model.transformer.wte.weight


def test_early_stopping_keeps_the_best_model(tokenizer, tmp_path):
    """Train on one stream, evaluate on a stream with disjoint tokens: the held-out loss only rises, so
    patience=1 stops at the second evaluation, and the model that comes back is the first one."""
    from transformers.utils import logging as hf_logging

    model = tiny_gpt2(len(tokenizer))
    hf_logging.set_verbosity_info()
    try:
        trainer, result = trainer_finetune(model, tokenizer, cycle_examples(10, 32), cycle_examples(3000, 8),
                                           tmp_path, max_steps=60, lr=1e-2, batch_size=8, eval_steps=3, patience=1,
                                           disable_tqdm=True)
        assert hf_logging.get_verbosity() == hf_logging.INFO  # the notices were hidden only while it ran
    finally:
        hf_logging.set_verbosity_warning()
    evals = trainer_history(trainer)["eval"]
    assert result.global_step < 60  # stopped early
    assert [step for step, _ in evals] == [3, 6]
    assert evals[1][1] > evals[0][1]
    assert trainer.state.best_metric == pytest.approx(evals[0][1])
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-3")
    final = trainer.evaluate()["eval_loss"]  # the model in memory is the best one, not the last
    assert final == pytest.approx(evals[0][1], abs=1e-5)
    assert final < evals[1][1] - 1e-3


def test_trainer_finetune_checks_its_arguments(tokenizer, base_tokenizer, tmp_path):
    model = tiny_gpt2(len(tokenizer))
    data = cycle_examples(10, 4)
    with pytest.raises(ValueError, match="never be evaluated"):
        trainer_finetune(model, tokenizer, data, data, tmp_path, max_steps=5, eval_steps=10)
    with pytest.raises(ValueError, match="eval_dataset is required"):
        trainer_finetune(model, tokenizer, data, None, tmp_path)
    with pytest.raises(TypeError, match="eval_strategy"):
        trainer_finetune(model, tokenizer, data, data, tmp_path, evaluation_strategy="steps")
    with pytest.raises(TypeError, match="lr="):
        trainer_finetune(model, tokenizer, data, data, tmp_path, learning_rate=1e-3)
    with pytest.raises(TypeError, match="warmup_steps"):
        trainer_finetune(model, tokenizer, data, data, tmp_path, warmup_step=10)
    with pytest.raises(ValueError, match="pad token"):
        trainer_finetune(model, base_tokenizer, data, data, tmp_path)
    labelled = [{**ex, "labels": [-100] * 8 + ex["input_ids"][8:]} for ex in data]
    with pytest.raises(ValueError, match="own labels"):
        trainer_finetune(model, tokenizer, labelled, labelled, tmp_path)
    with pytest.raises(ValueError, match="empty"):
        trainer_finetune(model, tokenizer, [], data, tmp_path)
    with pytest.raises(TypeError, match="input_ids"):
        trainer_finetune(model, tokenizer, [{"text": "hi"}], data, tmp_path)
    from llm_course.models.gpt import GPT, GPTConfig

    with pytest.raises(TypeError, match="to_hf"):
        trainer_finetune(GPT(GPTConfig(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2)),
                         tokenizer, data, data, tmp_path)


def test_default_collator_labels_and_the_eos_pitfall(tokenizer, base_tokenizer):
    collate = _default_collator(tokenizer, {"input_ids": [1]})
    batch = collate([{"input_ids": [5, 6, 7]}, {"input_ids": [5, 0]}])
    assert batch["labels"].tolist() == [[5, 6, 7], [5, 0, -100]]  # eos (0) kept, padding ignored
    eos_as_pad = copy.deepcopy(base_tokenizer)
    eos_as_pad.pad_token = eos_as_pad.eos_token
    with pytest.warns(UserWarning, match="never trained to end"):
        collate = _default_collator(eos_as_pad, {"input_ids": [1]})
    assert collate([{"input_ids": [5, 0]}])["labels"].tolist() == [[5, -100]]  # the pitfall, shown


def test_lm_examples_blocks_and_dataset(tokenizer):
    texts = ["def add(a, b): return a + b", "A list is a mutable sequence."]
    examples = lm_examples(tokenizer, texts, block_size=5)
    stream = tokenizer.encode(texts[0]) + [0] + tokenizer.encode(texts[1]) + [0]
    assert [ex["input_ids"] for ex in examples] == [stream[i:i + 5] for i in range(0, len(stream) - 4, 5)]
    from llm_course.text.tokenizer import ByteLevelBPETokenizer

    course_tok = ByteLevelBPETokenizer.from_pretrained(checkpoint_dir("course-gpt"))
    assert lm_examples(course_tok, texts, block_size=5) == examples  # the same ids from the course tokenizer
    ds = ExampleDataset([{"input_ids": torch.tensor([1, 2])}])
    assert ds[0] == {"input_ids": [1, 2]} and len(ds) == 1


# --------------------------------------------------------------------------------------------
# The manual's code
# --------------------------------------------------------------------------------------------


def test_demonstrate_manual_errors_reports_the_real_failures(base_tokenizer):
    rows = demonstrate_manual_errors(base_tokenizer)
    assert len(rows) == 7
    assert all(r["fix"] and r["why"] for r in rows)
    # what fails is what the recorded version history says, on whichever transformers is installed
    assert [(r["error"] is not None) for r in rows] == [manual_error_expected(r) for r in rows]
    assert [r["fails_since"] for r in rows] == ["4.51", "5.0", "5.0"] + [OLDEST_TRANSFORMERS] * 4
    errors = [r["error"] or "" for r in rows]
    if manual_error_expected(rows[0]):
        assert errors[0].startswith("TypeError") and "evaluation_strategy" in errors[0]
    else:
        assert "evaluation_strategy" in rows[0]["warning"]
    if manual_error_expected(rows[1]):
        assert errors[1].startswith("TypeError") and "logging_dir" in errors[1]
    if manual_error_expected(rows[2]):
        assert errors[2].startswith("TypeError") and "'tokenizer'" in errors[2]
    else:
        assert "tokenizer" in rows[2]["warning"]  # 4.46-4.57: a FutureWarning, and it runs
    assert errors[3].startswith("ValueError") and "eval_dataset" in errors[3]
    assert errors[4].startswith("ValueError") and "padding token" in errors[4]
    assert errors[5].startswith("NameError")
    assert errors[6].startswith("ValueError") and "did not return a loss" in errors[6]


def test_manual_error_expected_compares_releases():
    row = {"fails_since": "5.0"}
    assert manual_error_expected(row, "5.0.0") and manual_error_expected(row, "5.0.0.dev0")
    assert manual_error_expected(row, "5.25.0") and not manual_error_expected(row, "4.57.1")
    assert manual_error_expected({"fails_since": "4.51"}, "4.51.0")
    assert not manual_error_expected({"fails_since": "4.51"}, "4.50.3")
    assert manual_error_expected({"fails_since": OLDEST_TRANSFORMERS}, "4.50.0")
    with pytest.raises(KeyError, match="demonstrate_manual_errors"):
        manual_error_expected({"error": None}, "5.0")


def test_oldest_transformers_matches_pyproject():
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert f'"transformers>={OLDEST_TRANSFORMERS}"' in text


def test_training_arguments_is_what_trainer_finetune_runs(tokenizer, tmp_path):
    data = cycle_examples(10, 8)
    settings = dict(max_steps=4, lr=1e-3, batch_size=4, eval_steps=2, seed=3, warmup_steps=1, weight_decay=0.01,
                    gradient_accumulation_steps=2)
    args = training_arguments(tmp_path / "a", **settings)
    assert (args.eval_strategy, args.save_strategy) == ("steps", "steps")
    assert args.save_steps == args.eval_steps == args.logging_steps == 2
    assert (args.warmup_steps, args.weight_decay, args.gradient_accumulation_steps) == (1, 0.01, 2)
    assert args.load_best_model_at_end and args.metric_for_best_model == "eval_loss" and not args.greater_is_better
    trainer, _ = trainer_finetune(tiny_gpt2(len(tokenizer)), tokenizer, data, data, tmp_path / "a", disable_tqdm=True,
                                  **settings)
    for name in ("learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps", "warmup_steps",
                 "weight_decay", "eval_strategy", "eval_steps", "save_steps", "bf16", "fp16", "seed"):
        assert getattr(trainer.args, name) == getattr(args, name), name
    with pytest.raises(TypeError, match="removed in 5"):
        training_arguments(tmp_path, logging_dir="./logs")
    with pytest.raises(TypeError, match="4.51"):
        training_arguments(tmp_path, evaluation_strategy="steps")


# --------------------------------------------------------------------------------------------
# The measurement harness
# --------------------------------------------------------------------------------------------


def batches(batch_size: int, vocab: int = 100, length: int = 32):
    def get_batch(i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        ids = torch.randint(0, vocab, (batch_size, length), generator=g)
        return {"input_ids": ids, "labels": ids}
    return get_batch


def tensor_bytes(tensors) -> int:
    seen = {}
    for t in tensors:
        seen[t.data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values())


def test_weights_bytes_are_the_tensors_bytes():
    model = tiny_gpt2(100)
    expected = tensor_bytes([*model.parameters(), *model.buffers()])
    r = measure_finetuning("full", model, batches(2), steps=2, lr=1e-3)
    assert r["weights_bytes"] == expected
    # a 4-bit weight kept as packed uint8 codes in a buffer counts as stored: half a byte per weight
    model.transformer.h[0].mlp.register_buffer("packed", torch.zeros(64 * 32 // 2, dtype=torch.uint8))
    r2 = measure_finetuning("full", model, batches(2), steps=2, lr=1e-3)
    assert r2["weights_bytes"] == expected + 64 * 32 // 2


def test_gradient_and_adam_bytes_follow_the_trainable_parameters():
    def run(trainable_blocks):
        model = tiny_gpt2(100)
        for p in model.parameters():
            p.requires_grad_(False)
        tensors = 0
        for i in trainable_blocks:
            for p in model.transformer.h[i].parameters():
                p.requires_grad_(True)
                tensors += 1
        return measure_finetuning("blocks", model, batches(2), steps=2, lr=1e-3), tensors

    both, n_both = run([0, 1])
    one, n_one = run([1])
    n = both["trainable_params"]
    assert one["trainable_params"] * 2 == n  # the two blocks are the same size
    assert both["gradient_bytes"] == 4 * n  # one fp32 gradient per trainable parameter
    assert both["optimizer_bytes"] == 8 * n + 4 * n_both  # exp_avg + exp_avg_sq, + a float32 step per tensor
    assert one["gradient_bytes"] * 2 == both["gradient_bytes"]
    assert one["optimizer_bytes"] * 2 == both["optimizer_bytes"]
    assert one["weights_bytes"] == both["weights_bytes"]  # frozen weights still take memory
    trainable, total = count_parameters(tiny_gpt2(100))
    assert trainable == total == both["total_params"]


def test_saved_activations_grow_linearly_with_the_batch():
    model = tiny_gpt2(100)
    small, loss = saved_activation_bytes(model, batches(4)(0))
    loss.backward()
    large, _ = saved_activation_bytes(model, batches(8)(0))
    assert 1.95 < large / small < 2.05
    # parameters saved by matmuls are weights, not activations: the count is the same when frozen
    for p in model.parameters():
        p.requires_grad_(False)
    model.lm_head.weight.requires_grad_(True)  # the tied embedding
    assert saved_activation_bytes(model, batches(4)(0))[0] <= small


class TwoLinear(nn.Module):
    """e = lin2(lin1(x)) - labels, loss = mean(sin e) + mean(cos e[:, :4]). What autograd keeps, by hand:
    x (for lin1's weight gradient; x needs none, so lin1's weight is not saved), h = lin1(x) and lin2's
    weight (a view of the parameter: a weight, not an activation), e for sin, and a view of e for cos
    (the same memory: counted once). Activations = x + h + e."""

    def __init__(self) -> None:
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(16, 12), nn.Linear(12, 8)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor):
        e = self.lin2(self.lin1(input_ids)) - labels

        class Out:
            loss = e.sin().mean() + e[:, :4].cos().mean()
        return Out()


def test_saved_activations_match_a_hand_count():
    model = TwoLinear()
    batch = {"input_ids": torch.randn(10, 16), "labels": torch.randn(10, 8)}
    nbytes, loss = saved_activation_bytes(model, batch)
    assert nbytes == 4 * 10 * (16 + 12 + 8)
    loss.backward()
    r = measure_finetuning("linear", model, lambda i: batch, steps=3, lr=1e-2)
    assert r["activation_bytes"] == nbytes
    assert r["total_bytes"] == r["weights_bytes"] + r["gradient_bytes"] + r["optimizer_bytes"] + nbytes
    n = 16 * 12 + 12 + 12 * 8 + 8
    assert r["weights_bytes"] == r["gradient_bytes"] == 4 * n
    assert r["optimizer_bytes"] == 8 * n + 4 * 4  # Adam: 2 moments + a step counter for each of 4 tensors


def test_measure_finetuning_trains_and_reports(tmp_path):
    model = tiny_gpt2(100)
    data = cycle_examples(10, 8, length=32)
    train = [{"input_ids": torch.tensor([ex["input_ids"] for ex in data]), "labels": torch.tensor(
        [ex["input_ids"] for ex in data])}]
    r = measure_finetuning("full", model, train, steps=12, lr=3e-3, evaluate_fn=train, warmup=2)
    assert r["eval_loss"] < r["eval_loss_before"] - 1.0
    assert r["train_loss_final"] < r["train_loss_first"]
    assert r["time_per_step_s"] > 0 and r["steps"] == 12
    assert r["rss_delta_bytes"] is None or isinstance(r["rss_delta_bytes"], int)
    r2 = measure_finetuning("again", model, train, steps=2, lr=1e-3, evaluate_fn=lambda m: {"loss": 1.5})
    assert r2["eval_loss"] == 1.5 and model.training
    table = comparison_table([r, r2])
    assert table.count("\n") == 3 and "| full |" in table and "| again |" in table
    import matplotlib

    matplotlib.use("Agg")
    fig = plot_comparison([r, r2])
    assert len(fig.axes) == 4
    assert fig.axes[0].get_yscale() == "log"
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_measure_finetuning_bad_input():
    model = tiny_gpt2(100)
    with pytest.raises(ValueError, match="warmup"):
        measure_finetuning("x", model, batches(2), steps=1, lr=1e-3)
    with pytest.raises(ValueError, match="lr"):
        measure_finetuning("x", model, batches(2), steps=2, lr=0)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        measure_finetuning("x", model, batches(2), steps=2, lr=1e-3)
    with pytest.raises(ValueError, match="empty"):
        comparison_table([])


# peft asks transformers for is_gradient_checkpointing, which transformers 5 deprecates: not ours to fix
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_the_same_tools_run_a_peft_lora_model(tokenizer, tmp_path):
    """LoRA from the peft library: the Trainer saves (and reloads) only the adapter, as safetensors, and the
    harness counts gradients and AdamW state for the LoRA matrices only."""
    peft = pytest.importorskip("peft")

    def lora_model(vocab_size: int):
        config = peft.LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True, lora_dropout=0.0)
        return peft.get_peft_model(tiny_gpt2(vocab_size), config)

    model = lora_model(len(tokenizer))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer, result = trainer_finetune(model, tokenizer, cycle_examples(10, 16), cycle_examples(12, 8), tmp_path,
                                       max_steps=4, lr=1e-2, eval_steps=2, disable_tqdm=True)
    assert result.global_step == 4
    for ckpt in Path(tmp_path).glob("checkpoint-*"):
        assert (ckpt / "adapter_model.safetensors").is_file()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)

    model = lora_model(100)
    r = measure_finetuning("lora", model, batches(4), steps=2, lr=1e-3)
    n_lora = 2 * (4 * 32 + 96 * 4)  # per layer: A (r x 32 in) + B (96 out x r), 2 layers
    assert r["trainable_params"] == n_lora
    assert r["gradient_bytes"] == 4 * n_lora
    assert r["optimizer_bytes"] == 8 * n_lora + 4 * 4  # 4 LoRA tensors, one step counter each
    assert r["weights_bytes"] == tensor_bytes([*model.parameters(), *model.buffers()])


def test_trainer_precision_parameter(tokenizer, tmp_path):
    """PRECISION in notebook 05: "auto" is fp32 on a CPU; bf16 reaches TrainingArguments; fp16 needs CUDA."""
    data = cycle_examples(10, 8)
    model = tiny_gpt2(len(tokenizer))
    trainer, _ = trainer_finetune(model, tokenizer, data, data, tmp_path / "bf16", max_steps=2, eval_steps=2,
                                  batch_size=4, disable_tqdm=True, precision="bf16")
    assert trainer.args.bf16 and not trainer.args.fp16
    if not torch.cuda.is_available():
        trainer, _ = trainer_finetune(model, tokenizer, data, data, tmp_path / "auto", max_steps=2, eval_steps=2,
                                      batch_size=4, disable_tqdm=True, precision="auto")
        assert not trainer.args.bf16 and not trainer.args.fp16
        with pytest.raises(ValueError, match="fp16 mixed precision needs a CUDA GPU"):
            trainer_finetune(model, tokenizer, data, data, tmp_path / "fp16", max_steps=2, eval_steps=2,
                             precision="fp16")


def test_measure_finetuning_in_bf16_shrinks_the_saved_activations():
    """PRECISION in notebook 06: under bf16 autocast the activations kept for backward shrink; the weights,
    gradients and AdamW state do not; "auto" is fp32 on a CPU; fp16 needs CUDA."""
    runs = {}
    for precision in ("fp32", "bf16", "auto"):
        torch.manual_seed(0)
        runs[precision] = measure_finetuning(precision, tiny_gpt2(100), batches(4), steps=3, lr=1e-3,
                                             precision=precision)
    fp32, bf16, auto = runs["fp32"], runs["bf16"], runs["auto"]
    assert (fp32["precision"], bf16["precision"], auto["precision"]) == ("fp32", "bf16", "fp32")
    ratio = bf16["activation_bytes"] / fp32["activation_bytes"]
    assert 0.4 < ratio < 0.8, ratio  # 0.72 here: matmul outputs are bf16; the loss's softmax, layer norms stay fp32
    for key in ("weights_bytes", "gradient_bytes", "optimizer_bytes"):
        assert bf16[key] == fp32[key], key
    assert auto["activation_bytes"] == fp32["activation_bytes"] and auto["train_loss_first"] == fp32["train_loss_first"]
    assert abs(bf16["train_loss_first"] - fp32["train_loss_first"]) < 0.05
    with pytest.raises(ValueError, match="fp16 mixed precision needs a CUDA GPU"):
        measure_finetuning("fp16", tiny_gpt2(100), batches(2), steps=2, lr=1e-3, precision="fp16")
