"""GPT: a decoder-only transformer language model, written out. Chapter 02 (architectures).

The same architecture as GPT-2 (and what ``transformers.GPT2LMHeadModel`` computes, to 1e-5; the
tests check it both ways of conversion):

    input_ids (B, T) -> token embedding + learned position embedding  (B, T, C)
                     -> n_layer blocks:  x = x + attn(ln_1(x))      causal self-attention
                                         x = x + mlp(ln_2(x))       position-wise MLP
                     -> ln_f -> lm_head (weights tied to the token embedding) -> logits (B, T, V)

It is **pre-LayerNorm** (the norm sits at the start of each branch, GPT-2 style), every position can
only attend to itself and the past (a causal mask), and the output projection reuses the token
embedding matrix ("tied" embeddings), which saves V*C parameters.

Where the manual goes wrong (ERRATA section 2): it builds GPT from ``nn.TransformerDecoderLayer(x, x,
tgt_mask=...)``, whose *cross*-attention looks at ``memory=x`` with no mask, so every position sees the
future. ``llm_course.models.manual_ch02`` reproduces it and the tests show the leak.

What the three chapter-02 models share (``save_pretrained`` / ``from_pretrained``, ``num_parameters``,
input checks, weight renaming for conversion) lives in ``llm_course.models.modeling``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from llm_course.core.checks import check_fraction, check_positive_int
from llm_course.models.modeling import (
    NameMap,
    PretrainedMixin,
    check_attention_mask,
    check_input_ids,
    state_from_hf,
    state_to_hf,
)
from llm_course.nn.attention import (
    FeedForward,
    KVCache,
    MultiHeadAttention,
    padding_mask,
)

__all__ = [
    "GPTConfig",
    "GPT",
    "CausalLMOutput",
    "causal_lm_loss",
]

# --------------------------------------------------------------------------------------------
# The GPT model
# --------------------------------------------------------------------------------------------


@dataclass
class GPTConfig:
    """Hyper-parameters of ``GPT`` (names as in GPT-2's config). Chapter 02 (architectures).

    vocab_size: number of tokens. n_positions: longest sequence (learned position embeddings).
    n_embd: model width C. n_layer: number of blocks. n_head: attention heads (must divide n_embd).
    dropout: one rate for embeddings, attention weights and residual branches.
    bias: biases in Linear and LayerNorm (GPT-2 has them; ``bias=False`` cannot be converted to it).
    """

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    dropout: float = 0.0
    layer_norm_epsilon: float = 1e-5
    bias: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            check_positive_int(f"GPTConfig.{name}", getattr(self, name))
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}): each head gets "
                "n_embd // n_head channels"
            )
        check_fraction("GPTConfig.dropout", self.dropout)

    def to_dict(self) -> dict:
        """The fields as a plain dict, as a transformers config gives them. peft reads a model's config with
        ``config.to_dict()`` (peft before 0.18 knows no other way; peft 0.18+ needs transformers 4.53+)."""
        return dataclasses.asdict(self)


@dataclass
class CausalLMOutput:
    """What ``GPT.forward`` returns (field names as in ``transformers``). Chapter 02.

    loss: mean next-token cross-entropy if ``labels`` were given. logits: (B, T, V).
    past_key_values: one (keys, values) pair per layer, each (B, H, T_total, D), if ``use_cache``.
    attentions: one (B, H, T, T_total) tensor per layer if ``output_attentions``.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    past_key_values: tuple[KVCache, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Next-token cross-entropy; labels are shifted **once**, here. Chapter 02 (architectures).

    The logits at position t predict token t+1, so ``labels`` (usually ``input_ids`` with padding set to
    -100) are compared as ``logits[:, :-1]`` vs ``labels[:, 1:]``. The manual shifts the labels by hand
    *and* lets the model shift again (ERRATA section 4): pass ``labels=input_ids`` unshifted.
    """
    if labels.shape != logits.shape[:2]:
        raise ValueError(
            f"labels must have the same shape as input_ids {tuple(logits.shape[:2])}, got {tuple(labels.shape)}; "
            "pass labels=input_ids (unshifted: the model shifts them)"
        )
    # The target of position t is labels[t + 1]; the last position has no next token, so it gets
    # ignore_index. (Shifting the labels, not slicing the logits, avoids copying the big logits tensor.)
    shift_labels = F.pad(labels[:, 1:], (0, 1), value=ignore_index)  # (B, T)
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(), shift_labels.reshape(-1), ignore_index=ignore_index
    )


class GPTBlock(nn.Module):
    """One pre-LayerNorm transformer block: causal self-attention, then an MLP. Chapter 02."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        c = config
        self.ln_1 = nn.LayerNorm(c.n_embd, eps=c.layer_norm_epsilon, bias=c.bias)
        self.attn = MultiHeadAttention(c.n_embd, c.n_head, bias=c.bias, dropout=c.dropout)
        self.ln_2 = nn.LayerNorm(c.n_embd, eps=c.layer_norm_epsilon, bias=c.bias)
        self.mlp = FeedForward(c.n_embd, 4 * c.n_embd, activation="gelu_tanh", bias=c.bias)
        self.dropout = nn.Dropout(c.dropout)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None,
        past_key_value: KVCache | None,
        use_cache: bool,
        need_weights: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None, KVCache | None]:
        """x: (B, T, C) -> (B, T, C), plus this layer's attention weights and cache entry."""
        a = self.attn(
            self.ln_1(x), attn_mask=attn_mask, is_causal=True,
            past_key_value=past_key_value, use_cache=use_cache, need_weights=need_weights,
        )
        x = x + self.dropout(a.output)  # residual connection around attention
        x = x + self.dropout(self.mlp(self.ln_2(x)))  # residual connection around the MLP
        return x, a.weights, a.present_key_value


class GPT(PretrainedMixin, nn.Module):
    """A GPT-2-style decoder-only language model. Chapter 02 (architectures).

    ``model(input_ids, attention_mask=None, labels=None, past_key_values=None, use_cache=False,
    output_attentions=False)`` -> ``CausalLMOutput``. Module names follow GPT-2 (wte, wpe, h, ln_f) so
    the conversion to and from ``GPT2LMHeadModel`` reads as a dictionary.

    ``gradient_checkpointing_enable()`` (chapter 09) makes training keep only each block's input and
    recompute the rest of the block during the backward pass: less activation memory, more compute.
    """

    config_class = GPTConfig
    model_type = "gpt"
    tied_weights = ("lm_head.weight",)

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(
                f"GPT needs an llm_course.models.gpt.GPTConfig, got {type(config).__module__}.{type(config).__name__}; "
                "to start from a transformers GPT2LMHeadModel use GPT.from_hf(model)"
            )
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # token embeddings
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)  # learned position embeddings
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([GPTBlock(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied: the output layer *is* the embedding matrix
        self.gradient_checkpointing = False  # chapter 09: see gradient_checkpointing_enable
        self.apply(self._init_weights)
        # GPT-2's scaled init: each residual branch adds to the stream, so shrink their output layers
        for name, p in self.named_parameters():
            if name.endswith(("attn.out_proj.weight", "mlp.down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        past_key_values: tuple[KVCache, ...] | None = None,
        use_cache: bool = False,
        output_attentions: bool = False,
        position_ids: torch.Tensor | None = None,
    ) -> CausalLMOutput:
        """Logits for every position (and the loss if ``labels`` are given).

        input_ids: (B, T). attention_mask: (B, T_past + T), 1 = real token, 0 = padding (HF convention:
        it covers the cached tokens too). labels: (B, T), usually ``input_ids`` with -100 on padding;
        shifted inside. past_key_values: from a previous call with ``use_cache=True``; then input_ids
        holds only the new tokens. position_ids: (B, T) or (1, T); by default T_past, ..., T_past + T - 1
        (with left padding, pass ``attention_mask.cumsum(-1) - 1`` clamped at 0 so that every sequence
        starts at position 0, as ``generate`` does in transformers).
        """
        input_ids = check_input_ids(input_ids, self.config.vocab_size)
        B, T = input_ids.shape
        past_length = 0
        if past_key_values is not None:
            if len(past_key_values) != self.config.n_layer:
                raise ValueError(
                    f"past_key_values has {len(past_key_values)} entries but the model has {self.config.n_layer} "
                    "layers; pass back the past_key_values of the previous call unchanged"
                )
            past_length = past_key_values[0][0].shape[2]
        if past_length + T > self.config.n_positions:
            cached = f" ({past_length} cached + {T} new)" if past_length else ""
            raise ValueError(
                f"sequence too long: {past_length + T} tokens{cached}, but the model has only "
                f"n_positions={self.config.n_positions} position embeddings; truncate the input "
                "(e.g. keep the last n_positions tokens) or build the model with a larger n_positions"
            )
        check_attention_mask(attention_mask, (B, past_length + T), "batch, cached + new tokens")

        if position_ids is None:  # positions of the new tokens: past_length, ..., past_length + T - 1
            positions = torch.arange(past_length, past_length + T, device=input_ids.device)[None]
        else:
            positions = check_input_ids(position_ids, self.config.n_positions, name="position_ids")
            if positions.shape[1] != T or positions.shape[0] not in (1, B):
                raise ValueError(f"position_ids must have shape ({B}, {T}) or (1, {T}), got {tuple(positions.shape)}")
        x = self.drop(self.wte(input_ids) + self.wpe(positions))  # (B, T, C)

        # The causal mask is built by the attention (is_causal=True); padding adds a (B, 1, 1, Tk) mask.
        attn_mask = padding_mask(attention_mask) if attention_mask is not None else None
        presents, attentions = [], []
        for i, block in enumerate(self.h):
            past = past_key_values[i] if past_key_values is not None else None
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled() and not use_cache:
                # chapter 09: keep only x; re-run the block in the backward pass (same RNG, so same dropout)
                x, weights, present = checkpoint(block, x, attn_mask, past, use_cache, output_attentions,
                                                 use_reentrant=False)
            else:
                x, weights, present = block(x, attn_mask, past, use_cache, output_attentions)
            presents.append(present)
            attentions.append(weights)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)

        loss = causal_lm_loss(logits, labels) if labels is not None else None
        return CausalLMOutput(
            loss=loss,
            logits=logits,
            past_key_values=tuple(presents) if use_cache else None,
            attentions=tuple(attentions) if output_attentions else None,
        )

    # ---------------------------------------------------------------- gradient checkpointing (chapter 09)

    def gradient_checkpointing_enable(self) -> None:
        """Recompute each block in the backward pass instead of storing its activations. Chapter 09.

        As ``transformers``' method of the same name, with ``use_reentrant=False``. It acts only while
        training (``model.train()``, gradients on, ``use_cache=False``); eval and generation are unchanged.
        """
        self.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        """Store the activations again (the default). Chapter 09."""
        self.gradient_checkpointing = False

    @property
    def is_gradient_checkpointing(self) -> bool:
        """Whether ``gradient_checkpointing_enable`` is on. Chapter 09."""
        return self.gradient_checkpointing

    # ---------------------------------------------------------------- transformers conversion

    def _hf_names(self) -> NameMap:
        """(our name, (GPT2LMHeadModel name,), transpose?) for every stored tensor.

        GPT-2 uses ``Conv1D`` layers, which store their weight as (in, out): the transpose of
        ``nn.Linear``'s (out, in). Biases and LayerNorms need no change. GPT-2's ``c_attn`` is a fused
        q/k/v projection like ours.
        """
        names: NameMap = [("wte.weight", ("transformer.wte.weight",), False),
                          ("wpe.weight", ("transformer.wpe.weight",), False)]
        for i in range(self.config.n_layer):
            ours, hf = f"h.{i}.", f"transformer.h.{i}."
            pairs = [
                ("ln_1", "ln_1", False), ("attn.qkv_proj", "attn.c_attn", True), ("attn.out_proj", "attn.c_proj", True),
                ("ln_2", "ln_2", False), ("mlp.up_proj", "mlp.c_fc", True), ("mlp.down_proj", "mlp.c_proj", True),
            ]
            for a, b, transpose in pairs:
                names.append((f"{ours}{a}.weight", (f"{hf}{b}.weight",), transpose))
                names.append((f"{ours}{a}.bias", (f"{hf}{b}.bias",), False))
        names += [("ln_f.weight", ("transformer.ln_f.weight",), False),
                  ("ln_f.bias", ("transformer.ln_f.bias",), False)]
        return names

    def to_hf(self):
        """A ``transformers.GPT2LMHeadModel`` with the same weights (and the same logits). Chapter 02."""
        from transformers import GPT2Config, GPT2LMHeadModel

        c = self.config
        if not c.bias:
            raise ValueError("GPT-2 has biases everywhere; a GPTConfig(bias=False) model cannot be converted")
        hf_config = GPT2Config(
            vocab_size=c.vocab_size, n_positions=c.n_positions, n_embd=c.n_embd, n_layer=c.n_layer,
            n_head=c.n_head, n_inner=None, activation_function="gelu_new", resid_pdrop=c.dropout,
            embd_pdrop=c.dropout, attn_pdrop=c.dropout, layer_norm_epsilon=c.layer_norm_epsilon,
            bos_token_id=None, eos_token_id=None, tie_word_embeddings=True,
        )
        hf = GPT2LMHeadModel(hf_config)
        state = state_to_hf(self.state_dict(), self._hf_names())
        state["lm_head.weight"] = state["transformer.wte.weight"]
        hf.load_state_dict(state, strict=True)
        return hf.to(self.wte.weight.device).train(self.training)

    @classmethod
    def from_hf(cls, hf_model) -> GPT:
        """Build a ``GPT`` from a ``transformers.GPT2LMHeadModel`` (weights copied). Chapter 02."""
        from transformers import GPT2LMHeadModel

        if not isinstance(hf_model, GPT2LMHeadModel):
            raise TypeError(f"from_hf expects a transformers GPT2LMHeadModel, got {type(hf_model).__name__}")
        hc = hf_model.config
        unsupported = {
            "activation_function in (gelu_new, gelu_pytorch_tanh)":
                hc.activation_function in ("gelu_new", "gelu_pytorch_tanh"),
            "n_inner == 4 * n_embd": hc.n_inner in (None, 4 * hc.n_embd),
            "scale_attn_weights": bool(hc.scale_attn_weights),
            "not scale_attn_by_inverse_layer_idx": not hc.scale_attn_by_inverse_layer_idx,
            "not add_cross_attention": not hc.add_cross_attention,
        }
        failed = [k for k, ok in unsupported.items() if not ok]
        if failed:
            raise ValueError(f"this GPT2 config cannot be represented by GPT: it needs {failed}")
        hf_state = hf_model.state_dict()
        if not torch.equal(hf_state["lm_head.weight"], hf_state["transformer.wte.weight"]):
            raise ValueError("GPT ties lm_head to the token embedding; this GPT2 model has an untied lm_head")
        config = GPTConfig(
            vocab_size=hc.vocab_size, n_positions=hc.n_positions, n_embd=hc.n_embd, n_layer=hc.n_layer,
            n_head=hc.n_head, dropout=float(hc.resid_pdrop), layer_norm_epsilon=hc.layer_norm_epsilon, bias=True,
        )
        model = cls(config)
        state = state_from_hf(hf_state, model._hf_names())
        model.load_state_dict(state, strict=False)  # lm_head.weight is the tied wte.weight
        return model.to(hf_state["transformer.wte.weight"].device).train(hf_model.training)
