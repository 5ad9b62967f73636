"""T5: an encoder-decoder ("text-to-text") transformer, written out. Chapter 02 (architectures).

The same architecture as ``transformers.T5ForConditionalGeneration`` (to 1e-5, tests check it):

    encoder:  input_ids (B, S) -> shared embedding -> num_layers blocks, each
                  x = x + self_attn(RMSNorm(x))         bidirectional, + relative position bias
                  x = x + ff(RMSNorm(x))
              -> RMSNorm -> encoder_last_hidden_state (B, S, C)
    decoder:  decoder_input_ids (B, T) -> the same shared embedding -> num_decoder_layers blocks, each
                  x = x + self_attn(RMSNorm(x))         causal, + relative position bias
                  x = x + cross_attn(RMSNorm(x), enc)   queries from the decoder, keys/values from the encoder
                  x = x + ff(RMSNorm(x))
              -> RMSNorm -> * d_model**-0.5 -> lm_head (tied to the shared embedding) -> logits (B, T, V)

What makes it T5 and not the original Transformer:

* **No position embeddings.** Each attention adds a learned bias that depends only on the (bucketed)
  distance between query and key: ``RelativePositionBias``. One table per stack, computed by the first
  layer and shared by all layers, as in T5. So there is no maximum length.
* **No 1/sqrt(d) scaling** of the scores (T5 folds it into the initialisation of the weights), and
  **no biases** anywhere. **RMSNorm** (scale only, no mean subtraction, no bias) instead of LayerNorm.
* The LM head is **tied** to the embedding, and the decoder output is multiplied by ``d_model**-0.5``
  before it (``scale_decoder_outputs``).

Where the manual goes wrong (ERRATA section 2): ``T5EncoderLayer`` / ``T5DecoderLayer`` are never
defined, there is no relative position bias, the decoder has no causal mask, and the encoder's padding
mask is reused for the decoder's self-attention.
"""

from __future__ import annotations

import math
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
    FeedForward,
    MultiHeadAttention,
    causal_mask,
    combine_masks,
    padding_mask,
)

__all__ = [
    "T5Config",
    "T5",
    "Seq2SeqLMOutput",
    "EncoderOutput",
    "RMSNorm",
    "RelativePositionBias",
    "relative_position_bucket",
]

# feed_forward_proj -> (activation, gated?), as transformers' T5Config reads it
_FEED_FORWARD = {"relu": ("relu", False), "gated-gelu": ("gelu_tanh", True), "gated-silu": ("silu", True)}

# One entry per decoder layer: (self-attention keys, values, cross-attention keys, values)
T5LayerCache = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass
class T5Config:
    """Hyper-parameters of ``T5`` (names as in ``transformers.T5Config``). Chapter 02.

    d_model: width C. d_kv: dims per head (the attention's inner width is num_heads * d_kv, which need
    not equal d_model). d_ff: feed-forward width. num_decoder_layers defaults to num_layers.
    relative_attention_num_buckets / _max_distance: the relative position buckets (see
    ``relative_position_bucket``). feed_forward_proj: "relu" (T5) or "gated-gelu" (T5 v1.1, Flan-T5).
    scale_decoder_outputs: multiply the decoder output by d_model**-0.5 before the tied LM head.
    """

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: int | None = None
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"
    scale_decoder_outputs: bool = True
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0

    def __post_init__(self) -> None:
        if self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_layers
        for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
                     "relative_attention_num_buckets", "relative_attention_max_distance"):
            check_positive_int(f"T5Config.{name}", getattr(self, name))
        if self.relative_attention_max_distance <= self.relative_attention_num_buckets // 2:
            raise ValueError(
                f"relative_attention_max_distance ({self.relative_attention_max_distance}) must be larger than "
                f"relative_attention_num_buckets // 2 ({self.relative_attention_num_buckets // 2}): the exact "
                "buckets already cover that far, so there would be no room for the logarithmic ones"
            )
        check_choice("T5Config.feed_forward_proj", self.feed_forward_proj, sorted(_FEED_FORWARD))
        for name in ("pad_token_id", "eos_token_id", "decoder_start_token_id"):
            check_index(f"T5Config.{name}", getattr(self, name), self.vocab_size, hint="a token id")


@dataclass
class EncoderOutput:
    """The encoder's result, reusable across decoding steps (``T5.encode``). Chapter 02."""

    last_hidden_state: torch.Tensor
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class Seq2SeqLMOutput:
    """What ``T5.forward`` returns (field names as in ``transformers``). Chapter 02.

    loss: cross-entropy over labels that are not -100. logits: (B, T, V).
    past_key_values: per decoder layer (self keys, self values, cross keys, cross values) if use_cache.
    encoder_last_hidden_state: (B, S, C). encoder_attentions: per layer (B, H, S, S);
    decoder_attentions: (B, H, T, T_total); cross_attentions: (B, H, T, S) (only if output_attentions).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    past_key_values: tuple[T5LayerCache, ...] | None = None
    encoder_last_hidden_state: torch.Tensor | None = None
    encoder_attentions: tuple[torch.Tensor, ...] | None = None
    decoder_attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None


class RMSNorm(nn.Module):
    """Root-mean-square norm: ``x / rms(x) * weight``; no mean subtraction, no bias. Chapter 02.

    Cheaper than LayerNorm and, in practice, as good (T5, Llama). Computed in float32 for stability.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., C) -> (..., C)."""
        variance = x.float().pow(2).mean(dim=-1, keepdim=True)  # mean of squares = rms**2
        return self.weight * (x.float() * torch.rsqrt(variance + self.eps)).to(x.dtype)


def relative_position_bucket(
    relative_position: torch.Tensor, bidirectional: bool = True, num_buckets: int = 32, max_distance: int = 128
) -> torch.Tensor:
    """Map ``key_pos - query_pos`` to a bucket id in [0, num_buckets), as T5 does. Chapter 02.

    Small distances get a bucket each (exact); larger ones share logarithmically wider buckets up to
    ``max_distance``, beyond which everything falls in the last bucket. ``bidirectional`` (the encoder)
    spends half the buckets on keys after the query; the causal decoder only looks back, so all its
    buckets describe the past.
    """
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).long() * num_buckets  # keys to the right use the upper half
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)  # only the past counts; the future maps to 0
    max_exact = num_buckets // 2
    if max_distance <= max_exact:
        raise ValueError(f"max_distance ({max_distance}) must exceed the {max_exact} exact buckets")
    is_small = distance < max_exact
    # log-spaced buckets between max_exact and max_distance (clamp the log's argument to avoid log(0))
    log_ratio = torch.log(distance.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact)
    large = (max_exact + (log_ratio * (num_buckets - max_exact)).long()).clamp(max=num_buckets - 1)
    return buckets + torch.where(is_small, distance, large)


class RelativePositionBias(nn.Module):
    """A learned bias per (distance bucket, head), added to the attention scores. Chapter 02.

    ``forward(query_length, key_length, past_length)`` -> (1, H, Tq, Tk), the float mask that T5 adds
    to every layer's scores (it broadcasts over the batch).
    """

    def __init__(self, num_buckets: int, max_distance: int, n_head: int, bidirectional: bool) -> None:
        super().__init__()
        self.num_buckets, self.max_distance, self.bidirectional = num_buckets, max_distance, bidirectional
        self.embedding = nn.Embedding(num_buckets, n_head)

    def forward(
        self, query_length: int, key_length: int, past_length: int = 0, device: torch.device | None = None
    ) -> torch.Tensor:
        """Bias for queries at positions past_length.. past_length+Tq-1 and keys at 0..Tk-1."""
        device = device or self.embedding.weight.device
        query_pos = torch.arange(past_length, past_length + query_length, device=device)[:, None]  # (Tq, 1)
        key_pos = torch.arange(key_length, device=device)[None, :]  # (1, Tk)
        bucket = relative_position_bucket(key_pos - query_pos, self.bidirectional, self.num_buckets, self.max_distance)
        return self.embedding(bucket).permute(2, 0, 1).unsqueeze(0)  # (Tq, Tk, H) -> (1, H, Tq, Tk)


class T5Block(nn.Module):
    """One pre-RMSNorm block: self-attention, (decoder only) cross-attention, feed-forward. Chapter 02."""

    def __init__(self, config: T5Config, is_decoder: bool) -> None:
        super().__init__()
        c = config
        act, gated = _FEED_FORWARD[c.feed_forward_proj]
        attn_kwargs = dict(head_dim=c.d_kv, bias=False, dropout=c.dropout_rate, scale=1.0)  # T5: no 1/sqrt(d)
        self.ln_self = RMSNorm(c.d_model, c.layer_norm_epsilon)
        self.self_attn = MultiHeadAttention(c.d_model, c.num_heads, **attn_kwargs)
        self.is_decoder = is_decoder
        if is_decoder:
            self.ln_cross = RMSNorm(c.d_model, c.layer_norm_epsilon)
            self.cross_attn = MultiHeadAttention(c.d_model, c.num_heads, cross_attention=True, **attn_kwargs)
        self.ln_ff = RMSNorm(c.d_model, c.layer_norm_epsilon)
        self.ff = FeedForward(c.d_model, c.d_ff, activation=act, bias=False, gated=gated, dropout=c.dropout_rate)
        self.dropout = nn.Dropout(c.dropout_rate)

    def forward(
        self,
        x: torch.Tensor,
        self_mask: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        cross_mask: torch.Tensor | None = None,
        past_key_value: T5LayerCache | None = None,
        use_cache: bool = False,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, T5LayerCache | None]:
        """x: (B, T, C) -> (B, T, C), self-attention weights, cross-attention weights, cache entry.

        ``self_mask`` is the float mask of the stack: position bias plus -inf where causal/padding forbid.
        """
        past_self = past_key_value[:2] if past_key_value is not None else None
        a = self.self_attn(self.ln_self(x), attn_mask=self_mask, past_key_value=past_self,
                           use_cache=use_cache, need_weights=need_weights)
        x = x + self.dropout(a.output)
        cross_weights, present = None, a.present_key_value
        if self.is_decoder:
            past_cross = past_key_value[2:] if past_key_value is not None else None
            c = self.cross_attn(self.ln_cross(x), context=encoder_hidden_states, attn_mask=cross_mask,
                                past_key_value=past_cross, use_cache=use_cache, need_weights=need_weights)
            x = x + self.dropout(c.output)
            cross_weights = c.weights
            present = (*a.present_key_value, *c.present_key_value) if use_cache else None
        x = x + self.dropout(self.ff(self.ln_ff(x)))
        return x, a.weights, cross_weights, present


class T5Stack(nn.Module):
    """The encoder or the decoder: blocks, one shared relative position bias, a final RMSNorm. Chapter 02."""

    def __init__(self, config: T5Config, is_decoder: bool) -> None:
        super().__init__()
        n_layer = config.num_decoder_layers if is_decoder else config.num_layers
        self.is_decoder = is_decoder
        self.relative_bias = RelativePositionBias(
            config.relative_attention_num_buckets, config.relative_attention_max_distance, config.num_heads,
            bidirectional=not is_decoder,
        )
        self.blocks = nn.ModuleList([T5Block(config, is_decoder) for _ in range(n_layer)])
        self.final_ln = RMSNorm(config.d_model, config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        past_key_values: tuple[T5LayerCache, ...] | None = None,
        use_cache: bool = False,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, list, list, list]:
        """x: embedded tokens (B, T, C) -> hidden states (B, T, C), self/cross weights, cache."""
        B, T, _ = x.shape
        past_length = past_key_values[0][0].shape[2] if past_key_values is not None else 0
        key_length = past_length + T
        # The float mask every layer adds to its scores: bias (1, H, T, Tk), plus -inf for padded keys
        # (B, 1, 1, Tk) and, in the decoder, for future keys (T, Tk).
        bias = self.relative_bias(T, key_length, past_length, device=x.device)
        self_mask = combine_masks(
            bias,
            padding_mask(attention_mask) if attention_mask is not None else None,
            causal_mask(T, x.device, key_length=key_length) if self.is_decoder else None,
        )
        cross_mask = padding_mask(encoder_attention_mask) if encoder_attention_mask is not None else None

        x = self.dropout(x)
        self_weights, cross_weights, presents = [], [], []
        for i, block in enumerate(self.blocks):
            past = past_key_values[i] if past_key_values is not None else None
            x, w_self, w_cross, present = block(
                x, self_mask, encoder_hidden_states, cross_mask, past, use_cache, output_attentions
            )
            self_weights.append(w_self)
            cross_weights.append(w_cross)
            presents.append(present)
        return self.dropout(self.final_ln(x)), self_weights, cross_weights, presents


class T5(PretrainedMixin, nn.Module):
    """A T5 encoder-decoder with a tied LM head. Chapter 02 (architectures).

    ``model(input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
    labels=None, encoder_outputs=None, past_key_values=None, use_cache=False, output_attentions=False)``
    -> ``Seq2SeqLMOutput``. With ``labels`` and no ``decoder_input_ids``, the decoder input is the labels
    shifted right behind ``decoder_start_token_id`` (teacher forcing), as in transformers.
    """

    config_class = T5Config
    model_type = "t5"
    tied_weights = ("lm_head.weight",)

    def __init__(self, config: T5Config) -> None:
        super().__init__()
        if not isinstance(config, T5Config):
            raise TypeError(
                f"T5 needs an llm_course.models.t5.T5Config, got {type(config).__module__}.{type(config).__name__}; "
                "to start from a transformers T5ForConditionalGeneration use T5.from_hf(model)"
            )
        self.config = config
        self.shared = nn.Embedding(config.vocab_size, config.d_model)  # encoder and decoder share it
        self.encoder = T5Stack(config, is_decoder=False)
        self.decoder = T5Stack(config, is_decoder=True)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.lm_head.weight = self.shared.weight  # tied
        self._init_weights()

    def _init_weights(self) -> None:
        """T5's initialisation: since scores are not divided by sqrt(d), the query weights are smaller."""
        c = self.config
        nn.init.normal_(self.shared.weight, std=1.0)
        for module in self.modules():
            if isinstance(module, MultiHeadAttention):
                inner = c.num_heads * c.d_kv
                if module.cross_attention:
                    nn.init.normal_(module.q_proj.weight, std=(c.d_model * c.d_kv) ** -0.5)
                    nn.init.normal_(module.kv_proj.weight, std=c.d_model**-0.5)
                else:
                    nn.init.normal_(module.qkv_proj.weight, std=c.d_model**-0.5)
                    nn.init.normal_(module.qkv_proj.weight[:inner], std=(c.d_model * c.d_kv) ** -0.5)
                nn.init.normal_(module.out_proj.weight, std=inner**-0.5)
            elif isinstance(module, FeedForward):
                for layer in (module.up_proj, module.gate_proj):
                    if layer is not None:
                        nn.init.normal_(layer.weight, std=c.d_model**-0.5)
                nn.init.normal_(module.down_proj.weight, std=c.d_ff**-0.5)
            elif isinstance(module, RelativePositionBias):
                nn.init.normal_(module.embedding.weight, std=c.d_model**-0.5)

    def shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """Decoder inputs for teacher forcing: [start, y1, ..., y_{T-1}], -100 replaced by padding."""
        shifted = labels.new_full(labels.shape, self.config.decoder_start_token_id)
        shifted[:, 1:] = labels[:, :-1]
        return shifted.masked_fill(shifted == -100, self.config.pad_token_id)

    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, output_attentions: bool = False
    ) -> EncoderOutput:
        """Run the encoder once; pass the result as ``encoder_outputs`` to every decoding step."""
        input_ids = check_input_ids(input_ids, self.config.vocab_size)
        check_attention_mask(attention_mask, tuple(input_ids.shape), "batch, source length")
        hidden, weights, _, _ = self.encoder(
            self.shared(input_ids), attention_mask, output_attentions=output_attentions
        )
        return EncoderOutput(hidden, tuple(weights) if output_attentions else None)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        encoder_outputs: EncoderOutput | None = None,
        past_key_values: tuple[T5LayerCache, ...] | None = None,
        use_cache: bool = False,
        output_attentions: bool = False,
    ) -> Seq2SeqLMOutput:
        """Encode ``input_ids`` (B, S) (or reuse ``encoder_outputs``), decode ``decoder_input_ids`` (B, T).

        attention_mask: (B, S) for the source; it masks both the encoder's self-attention and the
        decoder's cross-attention. decoder_attention_mask: (B, T_past + T) for the target (the decoder
        also always applies its causal mask). With ``past_key_values``, decoder_input_ids holds only
        the new tokens.
        """
        c = self.config
        if encoder_outputs is None:
            if input_ids is None:
                raise ValueError("pass input_ids (the source tokens) or encoder_outputs from model.encode(...)")
            encoder_outputs = self.encode(input_ids, attention_mask, output_attentions)
        elif not isinstance(encoder_outputs, EncoderOutput):
            raise TypeError(
                f"encoder_outputs must be the EncoderOutput of model.encode(), got {type(encoder_outputs).__name__}"
            )
        enc = encoder_outputs.last_hidden_state
        check_attention_mask(attention_mask, tuple(enc.shape[:2]), "batch, source length")

        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("pass decoder_input_ids, or labels (then the decoder input is labels shifted right)")
            decoder_input_ids = self.shift_right(labels)
        decoder_input_ids = check_input_ids(decoder_input_ids, c.vocab_size, name="decoder_input_ids")
        if decoder_input_ids.shape[0] != enc.shape[0]:
            raise ValueError(
                f"decoder_input_ids has batch size {decoder_input_ids.shape[0]}, the source {enc.shape[0]}"
            )
        B, T = decoder_input_ids.shape
        if past_key_values is not None and len(past_key_values) != c.num_decoder_layers:
            raise ValueError(
                f"past_key_values has {len(past_key_values)} entries, the decoder {c.num_decoder_layers} layers"
            )
        past_length = past_key_values[0][0].shape[2] if past_key_values is not None else 0
        check_attention_mask(decoder_attention_mask, (B, past_length + T), "batch, cached + new target tokens")

        hidden, self_w, cross_w, presents = self.decoder(
            self.shared(decoder_input_ids), decoder_attention_mask, enc, attention_mask,
            past_key_values, use_cache, output_attentions,
        )
        if c.scale_decoder_outputs:
            hidden = hidden * c.d_model**-0.5  # the tied head sees rescaled states (T5's convention)
        logits = self.lm_head(hidden)  # (B, T, V)

        loss = None
        if labels is not None:
            if labels.shape != decoder_input_ids.shape:
                raise ValueError(f"labels must have shape {tuple(decoder_input_ids.shape)}, got {tuple(labels.shape)}")
            loss = F.cross_entropy(logits.reshape(-1, c.vocab_size).float(), labels.reshape(-1), ignore_index=-100)
        return Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            past_key_values=tuple(presents) if use_cache else None,
            encoder_last_hidden_state=enc,
            encoder_attentions=encoder_outputs.attentions if output_attentions else None,
            decoder_attentions=tuple(self_w) if output_attentions else None,
            cross_attentions=tuple(cross_w) if output_attentions else None,
        )

    # ---------------------------------------------------------------- transformers conversion

    def _hf_names(self) -> NameMap:
        """(our name, T5ForConditionalGeneration name(s), transpose?) for every tensor but the tied ones."""
        c = self.config
        _, gated = _FEED_FORWARD[c.feed_forward_proj]
        names: NameMap = [("shared.weight", ("shared.weight",), False)]
        for stack, n_layer in (("encoder", c.num_layers), ("decoder", c.num_decoder_layers)):
            names.append((f"{stack}.relative_bias.embedding.weight",
                          (f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",), False))
            for i in range(n_layer):
                ours, hf = f"{stack}.blocks.{i}.", f"{stack}.block.{i}.layer."
                sa = f"{hf}0.SelfAttention."
                names += [
                    (f"{ours}ln_self.weight", (f"{hf}0.layer_norm.weight",), False),
                    (f"{ours}self_attn.qkv_proj.weight", (f"{sa}q.weight", f"{sa}k.weight", f"{sa}v.weight"), False),
                    (f"{ours}self_attn.out_proj.weight", (f"{sa}o.weight",), False),
                ]
                ff = 1
                if stack == "decoder":
                    ca, ff = f"{hf}1.EncDecAttention.", 2
                    names += [
                        (f"{ours}ln_cross.weight", (f"{hf}1.layer_norm.weight",), False),
                        (f"{ours}cross_attn.q_proj.weight", (f"{ca}q.weight",), False),
                        (f"{ours}cross_attn.kv_proj.weight", (f"{ca}k.weight", f"{ca}v.weight"), False),
                        (f"{ours}cross_attn.out_proj.weight", (f"{ca}o.weight",), False),
                    ]
                dense = f"{hf}{ff}.DenseReluDense."
                names.append((f"{ours}ln_ff.weight", (f"{hf}{ff}.layer_norm.weight",), False))
                if gated:  # transformers: act(wi_0(x)) * wi_1(x)
                    names += [(f"{ours}ff.gate_proj.weight", (f"{dense}wi_0.weight",), False),
                              (f"{ours}ff.up_proj.weight", (f"{dense}wi_1.weight",), False)]
                else:
                    names.append((f"{ours}ff.up_proj.weight", (f"{dense}wi.weight",), False))
                names.append((f"{ours}ff.down_proj.weight", (f"{dense}wo.weight",), False))
            names.append((f"{stack}.final_ln.weight", (f"{stack}.final_layer_norm.weight",), False))
        return names

    def to_hf(self):
        """A ``transformers.T5ForConditionalGeneration`` with the same weights and logits. Chapter 02."""
        from transformers import T5Config as HFT5Config
        from transformers import T5ForConditionalGeneration

        c = self.config
        hf = T5ForConditionalGeneration(HFT5Config(
            vocab_size=c.vocab_size, d_model=c.d_model, d_kv=c.d_kv, d_ff=c.d_ff, num_layers=c.num_layers,
            num_decoder_layers=c.num_decoder_layers, num_heads=c.num_heads,
            relative_attention_num_buckets=c.relative_attention_num_buckets,
            relative_attention_max_distance=c.relative_attention_max_distance, dropout_rate=c.dropout_rate,
            layer_norm_epsilon=c.layer_norm_epsilon, feed_forward_proj=c.feed_forward_proj,
            tie_word_embeddings=c.scale_decoder_outputs,  # transformers reads "tied" as "scale the outputs"
            pad_token_id=c.pad_token_id, eos_token_id=c.eos_token_id, decoder_start_token_id=c.decoder_start_token_id,
        ))
        state = state_to_hf(self.state_dict(), self._hf_names())
        for tied in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"):
            state[tied] = state["shared.weight"]
        hf.load_state_dict(state, strict=True)
        return hf.to(self.shared.weight.device).train(self.training)

    @classmethod
    def from_hf(cls, hf_model) -> T5:
        """Build a ``T5`` from a ``transformers.T5ForConditionalGeneration`` (weights copied). Chapter 02."""
        from transformers import T5ForConditionalGeneration

        if not isinstance(hf_model, T5ForConditionalGeneration):
            raise TypeError(f"from_hf expects a transformers T5ForConditionalGeneration, got {type(hf_model).__name__}")
        hc = hf_model.config
        if hc.feed_forward_proj not in _FEED_FORWARD:
            raise ValueError(
                f"feed_forward_proj {hc.feed_forward_proj!r} is not supported; use one of {sorted(_FEED_FORWARD)}"
            )
        hf_state = hf_model.state_dict()
        if not torch.equal(hf_state["lm_head.weight"], hf_state["shared.weight"]):
            raise ValueError("T5 ties lm_head to the shared embedding; this model's lm_head differs from it")
        start = getattr(hc, "decoder_start_token_id", None)
        config = T5Config(
            vocab_size=hc.vocab_size, d_model=hc.d_model, d_kv=hc.d_kv, d_ff=hc.d_ff, num_layers=hc.num_layers,
            num_decoder_layers=hc.num_decoder_layers, num_heads=hc.num_heads,
            relative_attention_num_buckets=hc.relative_attention_num_buckets,
            relative_attention_max_distance=hc.relative_attention_max_distance, dropout_rate=float(hc.dropout_rate),
            layer_norm_epsilon=hc.layer_norm_epsilon, feed_forward_proj=hc.feed_forward_proj,
            # transformers 5 names it; transformers 4 scales exactly when the embeddings are tied
            scale_decoder_outputs=bool(getattr(hc, "scale_decoder_outputs", getattr(hc, "tie_word_embeddings", True))),
            pad_token_id=hc.pad_token_id if hc.pad_token_id is not None else 0,
            eos_token_id=hc.eos_token_id if isinstance(hc.eos_token_id, int) else 1,
            decoder_start_token_id=start if start is not None else (hc.pad_token_id or 0),
        )
        model = cls(config)
        model.load_state_dict(state_from_hf(hf_state, model._hf_names()), strict=False)  # lm_head is tied
        return model.to(hf_state["shared.weight"].device).train(hf_model.training)
