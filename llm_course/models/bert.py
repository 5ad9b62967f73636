"""BERT: a bidirectional transformer encoder with a masked-language-model head. Chapter 02.

The same architecture as ``transformers.BertForMaskedLM`` (plus BERT's pooler), to 1e-5:

    input_ids (B, T) -> token + segment (token_type) + position embeddings -> LayerNorm   (B, T, C)
                     -> num_hidden_layers blocks:  x = LN(x + attn(x))     every token sees every token
                                                   x = LN(x + mlp(x))
                     -> last_hidden_state (B, T, C)
                        |-> MLM head: dense -> GELU -> LayerNorm -> tied decoder -> logits (B, T, V)
                        |-> pooler: tanh(dense(hidden state of the first token, [CLS])) -> (B, C)

Unlike GPT it is **post-LayerNorm** (the norm comes after the residual addition, as in the original
Transformer and BERT) and has **no causal mask**: each token sees the whole sentence, which is what
masked-token prediction needs. The only mask is the **padding mask**: keys that are padding are hidden
from every query, so adding padding does not change the real tokens' outputs (a test checks it).

Where the manual goes wrong (ERRATA section 2): it turns ``attention_mask`` into an additive float
mask of shape (B, 1, 1, T) and passes it as ``src_key_padding_mask``, which wants a (B, T) boolean "is
padding" mask; PyTorch rejects it, and without a mask the padding is attended to
(``llm_course.models.manual_ch02`` reproduces both).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from llm_course.core.checks import check_choice, check_index, check_positive_int
from llm_course.models.modeling import (
    NameMap,
    PretrainedMixin,
    check_attention_mask,
    check_input_ids,
    state_from_hf,
    state_to_hf,
)
from llm_course.nn.attention import (
    ACTIVATIONS,
    FeedForward,
    MultiHeadAttention,
    padding_mask,
)

__all__ = ["BERTConfig", "BERT", "MaskedLMOutput"]


@dataclass
class BERTConfig:
    """Hyper-parameters of ``BERT`` (names as in ``transformers.BertConfig``). Chapter 02.

    hidden_size: width C. intermediate_size: MLP width (4C in BERT). type_vocab_size: number of
    segments (sentence A / B). pad_token_id: the padding token (its embedding gets no gradient).
    hidden_act: "gelu" (exact, as BERT) or another name from ``llm_course.nn.attention.ACTIVATIONS``.
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    hidden_act: str = "gelu"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            check_positive_int(f"BERTConfig.{name}", getattr(self, name))
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads}): each head gets hidden_size // num_attention_heads channels"
            )
        check_choice("BERTConfig.hidden_act", self.hidden_act, sorted(ACTIVATIONS))
        check_index("BERTConfig.pad_token_id", self.pad_token_id, self.vocab_size, hint="a token id")


@dataclass
class MaskedLMOutput:
    """What ``BERT.forward`` returns (field names as in ``transformers``). Chapter 02.

    loss: cross-entropy over the positions whose label is not -100 (if ``labels`` given).
    logits: (B, T, V). last_hidden_state: (B, T, C). pooler_output: (B, C).
    attentions: one (B, H, T, T) tensor per layer if ``output_attentions``.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class BERTLayer(nn.Module):
    """One post-LayerNorm encoder block: ``LN(x + attn(x))`` then ``LN(x + mlp(x))``. Chapter 02."""

    def __init__(self, config: BERTConfig) -> None:
        super().__init__()
        c = config
        self.attn = MultiHeadAttention(c.hidden_size, c.num_attention_heads, dropout=c.attention_probs_dropout_prob)
        self.ln_1 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.mlp = FeedForward(c.hidden_size, c.intermediate_size, activation=c.hidden_act)
        self.ln_2 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None, need_weights: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, T, C) -> (B, T, C) and the attention weights (or None)."""
        a = self.attn(x, attn_mask=attn_mask, need_weights=need_weights)  # no causal mask: bidirectional
        x = self.ln_1(x + self.dropout(a.output))
        x = self.ln_2(x + self.dropout(self.mlp(x)))
        return x, a.weights


class BERTMLMHead(nn.Module):
    """Predicts the masked tokens: dense -> act -> LayerNorm -> decoder tied to the embeddings. Chapter 02."""

    def __init__(self, config: BERTConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACTIVATIONS[config.hidden_act]
        self.ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)  # weight tied by BERT.__init__

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> logits (B, T, V)."""
        return self.decoder(self.ln(self.act(self.dense(hidden))))


class BERT(PretrainedMixin, nn.Module):
    """A BERT encoder with its masked-LM head and pooler. Chapter 02 (architectures).

    ``model(input_ids, attention_mask=None, token_type_ids=None, labels=None, output_attentions=False)``
    -> ``MaskedLMOutput``. ``labels``: (B, T) with the original token at masked positions and -100
    elsewhere (no shift: BERT predicts the token at the same position).
    """

    config_class = BERTConfig
    model_type = "bert"
    tied_weights = ("mlm_head.decoder.weight",)

    def __init__(self, config: BERTConfig) -> None:
        super().__init__()
        if not isinstance(config, BERTConfig):
            raise TypeError(
                "BERT needs an llm_course.models.bert.BERTConfig, "
                f"got {type(config).__module__}.{type(config).__name__}; "
                "to start from a transformers BertForMaskedLM use BERT.from_hf(model)"
            )
        c = self.config = config
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.embeddings_ln = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)
        self.layers = nn.ModuleList([BERTLayer(c) for _ in range(c.num_hidden_layers)])
        self.pooler = nn.Linear(c.hidden_size, c.hidden_size)
        self.mlm_head = BERTMLMHead(c)
        self.mlm_head.decoder.weight = self.word_embeddings.weight  # tied, as in BERT
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> MaskedLMOutput:
        """MLM logits, hidden states and pooled [CLS] vector for a (B, T) batch of token ids.

        attention_mask: (B, T), 1 = real token, 0 = padding. Pad on the right (as BERT's tokenizer does):
        positions count from the first column, so left padding shifts the real tokens' positions.
        token_type_ids: (B, T) segment ids (0 for sentence A, 1 for B); zeros if omitted.
        """
        c = self.config
        input_ids = check_input_ids(input_ids, c.vocab_size)
        B, T = input_ids.shape
        if T > c.max_position_embeddings:
            raise ValueError(
                f"sequence too long: {T} tokens, but max_position_embeddings={c.max_position_embeddings}; "
                "truncate the input (tokenizer(..., truncation=True, max_length=...))"
            )
        check_attention_mask(attention_mask, (B, T), "batch, seq_len")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        else:
            token_type_ids = check_input_ids(token_type_ids, c.type_vocab_size, name="token_type_ids")
            if token_type_ids.shape != input_ids.shape:
                raise ValueError(
                    f"token_type_ids has shape {tuple(token_type_ids.shape)}, input_ids {tuple(input_ids.shape)}"
                )

        positions = torch.arange(T, device=input_ids.device)
        x = (self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
             + self.position_embeddings(positions))
        x = self.dropout(self.embeddings_ln(x))  # (B, T, C)

        # (B, 1, 1, T) boolean: every query of every head ignores the padded keys
        attn_mask = padding_mask(attention_mask) if attention_mask is not None else None
        attentions = []
        for layer in self.layers:
            x, weights = layer(x, attn_mask, output_attentions)
            attentions.append(weights)

        logits = self.mlm_head(x)  # (B, T, V)
        pooled = torch.tanh(self.pooler(x[:, 0]))  # (B, C): the [CLS] token's summary of the sequence
        loss = None
        if labels is not None:
            if labels.shape != input_ids.shape:
                raise ValueError(f"labels must have shape {tuple(input_ids.shape)}, got {tuple(labels.shape)}")
            loss = F.cross_entropy(logits.reshape(-1, c.vocab_size).float(), labels.reshape(-1), ignore_index=-100)
        return MaskedLMOutput(
            loss=loss, logits=logits, last_hidden_state=x, pooler_output=pooled,
            attentions=tuple(attentions) if output_attentions else None,
        )

    # ---------------------------------------------------------------- transformers conversion

    def _hf_names(self) -> NameMap:
        """(our name, BertForMaskedLM name(s), transpose?) for every tensor but the tied decoder and pooler.

        Our ``qkv_proj`` is BERT's separate query, key and value layers stacked along dim 0.
        """
        names: NameMap = [
            ("word_embeddings.weight", ("bert.embeddings.word_embeddings.weight",), False),
            ("position_embeddings.weight", ("bert.embeddings.position_embeddings.weight",), False),
            ("token_type_embeddings.weight", ("bert.embeddings.token_type_embeddings.weight",), False),
            ("embeddings_ln.weight", ("bert.embeddings.LayerNorm.weight",), False),
            ("embeddings_ln.bias", ("bert.embeddings.LayerNorm.bias",), False),
        ]
        for i in range(self.config.num_hidden_layers):
            ours, hf = f"layers.{i}.", f"bert.encoder.layer.{i}."
            for p in ("weight", "bias"):
                qkv = tuple(f"{hf}attention.self.{part}.{p}" for part in ("query", "key", "value"))
                names.append((f"{ours}attn.qkv_proj.{p}", qkv, False))
                for a, b in [("attn.out_proj", "attention.output.dense"), ("ln_1", "attention.output.LayerNorm"),
                             ("mlp.up_proj", "intermediate.dense"), ("mlp.down_proj", "output.dense"),
                             ("ln_2", "output.LayerNorm")]:
                    names.append((f"{ours}{a}.{p}", (f"{hf}{b}.{p}",), False))
        names += [
            ("mlm_head.dense.weight", ("cls.predictions.transform.dense.weight",), False),
            ("mlm_head.dense.bias", ("cls.predictions.transform.dense.bias",), False),
            ("mlm_head.ln.weight", ("cls.predictions.transform.LayerNorm.weight",), False),
            ("mlm_head.ln.bias", ("cls.predictions.transform.LayerNorm.bias",), False),
            ("mlm_head.decoder.bias", ("cls.predictions.bias",), False),
        ]
        return names

    def to_hf(self):
        """A ``transformers.BertForMaskedLM`` with the same weights and logits. Chapter 02.

        ``BertForMaskedLM`` has no pooler (it is built with ``add_pooling_layer=False``), so the pooler
        is **not** carried over; ``BertForPreTraining`` would have one, next to a next-sentence head
        that this model lacks.
        """
        from transformers import BertConfig, BertForMaskedLM

        c = self.config
        hf_act = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}[c.hidden_act]
        hf = BertForMaskedLM(BertConfig(
            vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
            num_attention_heads=c.num_attention_heads, intermediate_size=c.intermediate_size,
            max_position_embeddings=c.max_position_embeddings, type_vocab_size=c.type_vocab_size,
            hidden_dropout_prob=c.hidden_dropout_prob, attention_probs_dropout_prob=c.attention_probs_dropout_prob,
            layer_norm_eps=c.layer_norm_eps, pad_token_id=c.pad_token_id, hidden_act=hf_act,
        ))
        state = state_to_hf(self.state_dict(), self._hf_names())
        state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"]
        state["cls.predictions.decoder.bias"] = state["cls.predictions.bias"]
        hf.load_state_dict(state, strict=True)
        return hf.to(self.word_embeddings.weight.device).train(self.training)

    @classmethod
    def from_hf(cls, hf_model) -> BERT:
        """Build a ``BERT`` from ``BertForMaskedLM`` or ``BertForPreTraining``. Chapter 02.

        ``BertForMaskedLM`` has no pooler, so ours keeps its fresh random initialisation (train it or
        ignore ``pooler_output``); ``BertForPreTraining`` has one and it is copied.
        """
        from transformers import BertForMaskedLM, BertForPreTraining

        if not isinstance(hf_model, (BertForMaskedLM, BertForPreTraining)):
            raise TypeError(
                f"from_hf expects a transformers BertForMaskedLM or BertForPreTraining, got {type(hf_model).__name__}"
            )
        hc = hf_model.config
        acts = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                "relu": "relu", "silu": "silu"}
        if hc.hidden_act not in acts:
            raise ValueError(f"hidden_act {hc.hidden_act!r} is not supported; use one of {sorted(acts)}")
        config = BERTConfig(
            vocab_size=hc.vocab_size, hidden_size=hc.hidden_size, num_hidden_layers=hc.num_hidden_layers,
            num_attention_heads=hc.num_attention_heads, intermediate_size=hc.intermediate_size,
            max_position_embeddings=hc.max_position_embeddings, type_vocab_size=hc.type_vocab_size,
            hidden_dropout_prob=float(hc.hidden_dropout_prob),
            attention_probs_dropout_prob=float(hc.attention_probs_dropout_prob),
            layer_norm_eps=hc.layer_norm_eps, pad_token_id=hc.pad_token_id if hc.pad_token_id is not None else 0,
            hidden_act=acts[hc.hidden_act],
        )
        model = cls(config)
        hf_state = hf_model.state_dict()
        state = state_from_hf(hf_state, model._hf_names())
        if "bert.pooler.dense.weight" in hf_state:
            state["pooler.weight"] = hf_state["bert.pooler.dense.weight"].clone()
            state["pooler.bias"] = hf_state["bert.pooler.dense.bias"].clone()
        model.load_state_dict(state, strict=False)  # the tied decoder weight (and maybe the pooler) stay
        return model.to(hf_state["bert.embeddings.word_embeddings.weight"].device).train(hf_model.training)
