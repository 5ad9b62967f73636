"""The public seams every measuring module shares: eval_mode, module_device, to_device (core.runtime),
model_loss and the one held-out loss, estimate_loss with its token counter (nn.evaluation). Chapter 04."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from llm_course.core.runtime import eval_mode, module_device, to_device, train_mode
from llm_course.nn.evaluation import count_labels, estimate_loss, model_loss
from llm_course.nn.objectives import IGNORE_INDEX, count_targets

V, D = 11, 8


class TinyMaskedLM(nn.Module):
    """Embedding -> dropout -> Linear; loss over *unshifted* labels, as a masked LM scores them."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.drop, self.head = nn.Embedding(V, D), nn.Dropout(0.5), nn.Linear(D, V)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> SimpleNamespace:
        logits = self.head(self.drop(self.emb(input_ids)))  # (B, T, V)
        loss = None if labels is None else F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX)
        return SimpleNamespace(logits=logits, loss=loss)


def _mlm_batches() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    batches = []
    for rows in (3, 2):  # two batches of different sizes and different numbers of masked positions
        ids = torch.randint(0, V, (rows, 6), generator=g)
        labels = torch.full_like(ids, IGNORE_INDEX)
        keep = torch.rand(ids.shape, generator=g) < 0.4
        keep[0, 0] = True  # position 0 scored: count_targets (causal, shifted) would miss it
        labels[keep] = ids[keep]
        batches.append({"input_ids": ids, "labels": labels})
    return batches


# --------------------------------------------------------------------------------------------
# eval_mode
# --------------------------------------------------------------------------------------------


def test_eval_mode_switches_every_submodule_off_and_restores_each_ones_own_mode():
    model = TinyMaskedLM().train()
    model.head.eval()  # mixed modes, e.g. a frozen part kept in eval mode
    before = {name: m.training for name, m in model.named_modules()}
    assert before[""] and before["drop"] and not before["head"]
    with eval_mode(model) as same:
        assert same is model
        assert not any(m.training for m in model.modules())
        ids = torch.arange(6)[None]
        torch.testing.assert_close(model(ids).logits, model(ids).logits)  # dropout off: deterministic
    assert {name: m.training for name, m in model.named_modules()} == before
    # a plain model.train(was_training) would have set head back to training: eval_mode does not
    assert not model.head.training


def test_eval_mode_restores_the_modes_when_the_block_raises():
    model = TinyMaskedLM().train()
    model.drop.eval()
    with pytest.raises(RuntimeError, match="boom"), eval_mode(model):
        assert not model.training
        raise RuntimeError("boom")
    assert model.training and model.emb.training and not model.drop.training


def test_eval_mode_keeps_an_eval_model_in_eval_mode():
    model = TinyMaskedLM().eval()
    with eval_mode(model):
        pass
    assert not any(m.training for m in model.modules())


def test_train_mode_is_the_twin_of_eval_mode():
    model = TinyMaskedLM().eval()
    model.drop.train()  # mixed again: only the dropout in train mode
    with pytest.raises(RuntimeError, match="boom"), train_mode(model):
        assert all(m.training for m in model.modules())
        raise RuntimeError("boom")
    assert not model.training and model.drop.training and not model.head.training


def test_eval_mode_rejects_what_is_not_a_module():
    with pytest.raises(TypeError, match="torch.nn.Module, got str"), eval_mode("model"):
        pass


# --------------------------------------------------------------------------------------------
# module_device, to_device, model_loss
# --------------------------------------------------------------------------------------------


def test_module_device_reads_parameters_then_buffers_then_defaults_to_the_cpu():
    assert module_device(nn.Linear(2, 2)) == torch.device("cpu")
    only_buffer = nn.Module()
    only_buffer.register_buffer("x", torch.zeros(1, device="meta"))
    assert module_device(only_buffer) == torch.device("meta")
    assert module_device(nn.ReLU()) == torch.device("cpu")  # nothing to ask: the CPU
    with pytest.raises(TypeError, match="torch.nn.Module"):
        module_device(torch.zeros(1))


def test_to_device_moves_tensors_keeps_the_rest_and_copies_the_dict():
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "note": "kept"}
    moved = to_device(batch, "meta")
    assert moved["input_ids"].device == torch.device("meta") and moved["note"] == "kept"
    assert batch["input_ids"].device == torch.device("cpu")  # the input is not changed
    with pytest.raises(TypeError, match=r"get_batch\(3\) must be a dict like .* got Tensor"):
        to_device(torch.ones(2), "cpu", "get_batch(3)")
    with pytest.raises(TypeError, match=r"got a dict with keys \['ids'\]"):
        to_device({"ids": torch.ones(1)}, "cpu")


def test_model_loss_is_the_models_loss_or_a_clear_error():
    model, batch = TinyMaskedLM().eval(), _mlm_batches()[0]
    assert model_loss(model, batch) == model(**batch).loss
    with pytest.raises(ValueError, match="needs 'labels'|need 'labels'"):
        model_loss(model, {"input_ids": batch["input_ids"]})


# --------------------------------------------------------------------------------------------
# estimate_loss with a token counter
# --------------------------------------------------------------------------------------------


def test_count_labels_counts_every_scored_position_count_targets_the_shifted_ones():
    labels = torch.tensor([[5, IGNORE_INDEX, 3], [IGNORE_INDEX, 2, IGNORE_INDEX]])
    assert count_labels(labels) == 3  # unshifted: position 0 counts
    assert count_targets(labels) == 2  # causal LM: position 0 is never a target
    with pytest.raises(TypeError, match="torch.Tensor"):
        count_labels([5, 3])


def test_masked_lm_loss_with_count_labels_is_the_mean_over_all_masked_positions():
    model, batches = TinyMaskedLM().train(), _mlm_batches()
    metrics = estimate_loss(model, batches, count_tokens=count_labels)
    assert model.training  # its mode is restored
    # independent reference: one cross-entropy summed over every masked position of every batch
    with torch.no_grad():
        model.eval()
        nats = sum(F.cross_entropy(model(b["input_ids"]).logits.transpose(1, 2), b["labels"],
                                   ignore_index=IGNORE_INDEX, reduction="sum").item() for b in batches)
    n = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in batches)
    assert metrics["tokens"] == n
    assert metrics["loss"] == pytest.approx(nats / n, rel=1e-6)
    assert metrics["perplexity"] == pytest.approx(math.exp(nats / n), rel=1e-6)
    # the zoo's recorded masked-LM metric was this exact float sum: it must not move by one ulp
    with torch.no_grad():
        total = sum(float(model(**b).loss) * int((b["labels"] != IGNORE_INDEX).sum()) for b in batches)
    assert metrics["loss"] == total / n
    # the causal default counts one position fewer per row that scores position 0: a different mean
    assert estimate_loss(model, batches)["tokens"] < n


def test_estimate_loss_rejects_a_count_tokens_that_is_not_a_function():
    with pytest.raises(TypeError, match="count_tokens must be a function"):
        estimate_loss(TinyMaskedLM(), _mlm_batches(), count_tokens=3)
