"""The sampling explorer: see each sampling setting reshape the next-token distribution. Chapter 07.

Watch temperature, top-k, top-p and the repetition penalty reshape the next-token distribution, then
sample from it (chapter 07: generation strategies and inference).

``SamplingExplorer(model, tokenizer, prompt)`` is an ipywidgets UI: sliders for the four sampling
settings, a seed, and buttons to step one token, generate a continuation or reset. It shows
``llm_course.viz.distributions.distributions_figure``: one row of bars per stage of
``llm_course.infer.logits_processors.next_token_distributions`` (the repetition penalty, the temperature,
top-k, top-p, in transformers' order), on the same tokens, so every change can be seen. The model runs
once per text (``llm_course.infer.decode_step.next_token_logits``); a slider moves only the filters.

The explorer follows chapter 03's ``AttentionExplorer``: core ipywidgets only, figures rendered to PNG
bytes in an ``ipywidgets.Image`` (offline, ipywidgets 7.7 and 8), and every change is synchronous, so a
notebook or a test can drive it from Python (``explorer.temperature.value = 0.5``) and read what it
shows (``explorer.distributions``, ``explorer.kept_tokens``, ``explorer.entropy_bits``, ``explorer.png``).
"""

from __future__ import annotations

import html
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import ipywidgets as widgets
import torch
import torch.nn as nn
from matplotlib.figure import Figure

from llm_course.core.checks import check_float, check_int, check_positive_int
from llm_course.core.i18n import N_, tr
from llm_course.core.runtime import eval_mode
from llm_course.infer.decode_step import DecodeState, next_token_logits
from llm_course.infer.generation import generate
from llm_course.infer.logits_processors import GenerationConfig, next_token_distributions
from llm_course.models.modeling import context_length
from llm_course.text.encoding import encode_plain
from llm_course.viz.distributions import distributions_figure, entropy
from llm_course.viz.figures import figure_to_png
from llm_course.viz.tokens import is_byte_level, readable_labels, token_strings
from llm_course.widgets.base import Holdable

__all__ = ["DEFAULT_PROMPT", "SamplingExplorer"]

DEFAULT_PROMPT = "In Python, a list is"


# --------------------------------------------------------------------------------------
# The widget
# --------------------------------------------------------------------------------------

# control name -> (lowest, highest, integer?): the slider ranges, also what show() accepts
_RANGES: dict[str, tuple[float, float, bool]] = {
    "temperature": (0.05, 2.0, False),
    "top_k": (0, 100, True),
    "top_p": (0.05, 1.0, False),
    "repetition_penalty": (1.0, 2.0, False),
    "seed": (0, 2**31 - 1, True),
    "max_new_tokens": (1, 200, True),
}
# what a setting out of its range is told (core.checks adds the name, the range and the value)
_HINTS = {
    "temperature": "the logits are divided by it, so 0 is impossible; for the most likely token every time use "
                   "greedy decoding, generate(..., do_sample=False)",
    "top_k": "0 turns top-k off",
    "top_p": "1 turns top-p off",
    "repetition_penalty": "1 = no penalty",
}
# the controls' labels (English; shown through tr when the widget is built)
_LABELS = {
    "temperature": N_("temperature"),
    "top_k": N_("top k"),
    "top_p": N_("top p"),
    "repetition_penalty": N_("repetition penalty"),
    "max_new_tokens": N_("max new tokens"),
}
_LOGITS_CACHE = 32  # texts whose next-token logits are kept (one float per vocabulary token each)


def _check_setting(name: str, value: Any) -> float | int:
    """``value`` checked against the slider range of control ``name`` (``_RANGES``): an int or a float."""
    low, high, integer = _RANGES[name]
    check = check_int if integer else check_float
    return check(name, value, low, high, hint=_HINTS.get(name, ""))


def _default_eos(tokenizer: Any) -> int | None:
    """The tokenizer's end-of-text id: HF ``eos_token_id``, else the course's '<|endoftext|>'."""
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, int) and not isinstance(eos, bool):
        return eos
    special = getattr(tokenizer, "special_tokens", None)
    return special.get("<|endoftext|>") if isinstance(special, Mapping) else None


class SamplingExplorer(Holdable, widgets.VBox):
    """Interactive view of sampling: how each setting reshapes the next-token distribution. Chapter 07.

    ``SamplingExplorer(model, tokenizer, prompt)`` with the course's ``GPT`` and ``ByteLevelBPETokenizer``
    (``llm_course.zoo.loading.load_pretrained("course-gpt")``) or a transformers causal LM and its tokenizer.
    Controls: the prompt, sliders for ``temperature`` (0.05-2), ``top_k`` (0 = off, up to 100),
    ``top_p`` (0.05-1, 1 = off) and ``repetition_penalty`` (1-2), a ``seed`` and ``max_new_tokens``, and
    three buttons:

    * **step one token** draws one token from the distribution shown (the last row) and appends it to
      the prompt. The draws come from one random generator, seeded with ``seed`` when the prompt is
      typed, reset or the seed changes: k steps with unchanged settings give exactly the tokens of
      ``generation.generate(..., do_sample=True, max_new_tokens=k, seed=seed)`` (on the CPU).
    * **generate** writes a continuation of ``max_new_tokens`` tokens with
      ``generation.generate(do_sample=True, ...)`` and the current settings and seed (stopping at the
      tokenizer's end-of-text token, and at the end of the context window); the prompt is unchanged.
    * **reset** restores the prompt as it was before the steps, and clears the continuation.

    The figure has one row of bars per stage (``STAGES``), over the ``top_n`` tokens most likely after
    the repetition penalty (the model's own ranking when the penalty is 1), in that order, which is the
    order the filters rank them in; blue bars survive every filter, grey ones are removed. The prompt is
    encoded as plain text: typing '<|endoftext|>' does not produce the control token.

    Everything is synchronous, so it can be driven from code: set ``explorer.top_p.value = 0.9`` (as a
    browser does) or call ``explorer.show(temperature=0.7, top_k=40)``, ``explorer.step()``,
    ``explorer.generate()``, ``explorer.reset()``; then read ``distributions``, ``kept_tokens``,
    ``entropy_bits``, ``input_ids``, ``continuation``, ``png`` and ``error`` (the message shown instead
    of the figure, e.g. for an empty prompt or one longer than the context window). The model runs only
    when the text changes: its logits are cached, and a slider moves only the filters.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        prompt: str = DEFAULT_PROMPT,
        *,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        max_new_tokens: int = 30,
        top_n: int = 20,
        eos_token_id: int | None | str = "auto",
        dpi: int = 80,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a causal LM (a torch nn.Module), got {type(model).__name__}")
        if tokenizer is None or not hasattr(tokenizer, "decode"):
            raise TypeError("pass the model's tokenizer too: SamplingExplorer(model, tokenizer, prompt)")
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        check_positive_int("top_n", top_n, hint="how many tokens to draw")
        settings = {"temperature": temperature, "top_k": top_k, "top_p": top_p,
                    "repetition_penalty": repetition_penalty, "seed": seed, "max_new_tokens": max_new_tokens}
        settings = {name: _check_setting(name, value) for name, value in settings.items()}
        if eos_token_id != "auto" and eos_token_id is not None and (
                isinstance(eos_token_id, bool) or not isinstance(eos_token_id, int)):
            raise TypeError(f"eos_token_id must be a token id (int), None (never stop early) or 'auto' (the "
                            f"tokenizer's end-of-text token), got {eos_token_id!r}")

        self.model, self.tokenizer = model, tokenizer
        self.top_n, self.dpi = top_n, dpi
        self.eos_token_id: int | None = _default_eos(tokenizer) if eos_token_id == "auto" else eos_token_id
        self.context_length: int | None = context_length(model)
        self.original_prompt = prompt  # what reset() goes back to (the last prompt typed)
        self.error: str | None = None  # why there is no figure (shown instead of it)
        self.continuation: str = ""  # the text the last generate() wrote
        self.notice: str = ""  # a remark about the last step/generate (e.g. the context window is full)
        self._ids: list[int] = []  # the text the distribution is for: prompt + stepped tokens
        self._n_prompt = 0  # how many of _ids are the prompt's (the rest were stepped)
        self._distributions: dict[str, torch.Tensor] | None = None
        self._logits: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()
        self._generator = torch.Generator()
        self._continuation_settings = ""
        self._holding = 0  # > 0 while several controls change at once (redraw once, at the end)
        self._syncing = False  # True while the explorer itself writes the prompt box

        wide = {"description_width": "initial"}

        def slider(cls: type, name: str, step: float, **kwargs: Any) -> Any:
            low, high, _ = _RANGES[name]
            return cls(value=settings[name], min=low, max=high, step=step, description=tr(_LABELS[name]),
                       continuous_update=False, style=wide, **kwargs)

        self.prompt = widgets.Textarea(value=prompt, description=tr("prompt"), continuous_update=False, style=wide,
                                       layout=widgets.Layout(width="95%"))
        self.temperature = slider(widgets.FloatSlider, "temperature", 0.05, readout_format=".2f")
        self.top_k = slider(widgets.IntSlider, "top_k", 1)
        self.top_p = slider(widgets.FloatSlider, "top_p", 0.01, readout_format=".2f")
        self.repetition_penalty = slider(widgets.FloatSlider, "repetition_penalty", 0.05, readout_format=".2f")
        self.seed = widgets.BoundedIntText(value=settings["seed"], min=0, max=_RANGES["seed"][1],
                                           description=tr("seed"), style=wide, layout=widgets.Layout(width="160px"))
        self.max_new_tokens = slider(widgets.IntSlider, "max_new_tokens", 1)
        self.step_button = widgets.Button(description=tr("step one token"), icon="step-forward",
                                          tooltip=tr("sample one token from the distribution shown and append it"))
        self.generate_button = widgets.Button(description=tr("generate"), icon="play", button_style="primary",
                                              tooltip=tr("sample max_new_tokens tokens with these settings"))
        self.reset_button = widgets.Button(description=tr("reset"), icon="undo",
                                           tooltip=tr("back to the prompt before the steps"))
        self.text_html = widgets.HTML(value="")
        self.message = widgets.HTML(value="")
        self.image = widgets.Image(value=b"", format="png")

        super().__init__(children=[
            self.prompt,
            widgets.HBox([self.temperature, self.top_k]),
            widgets.HBox([self.top_p, self.repetition_penalty]),
            widgets.HBox([self.seed, self.max_new_tokens]),
            widgets.HBox([self.step_button, self.generate_button, self.reset_button]),
            self.text_html,
            self.message,
            self.image,
        ])

        self.prompt.observe(self._on_prompt, names="value")
        for control in (self.temperature, self.top_k, self.top_p, self.repetition_penalty):
            control.observe(self._on_setting, names="value")
        self.seed.observe(self._on_seed, names="value")
        self.step_button.on_click(lambda _button: self.step())
        self.generate_button.on_click(lambda _button: self.generate())
        self.reset_button.on_click(lambda _button: self.reset())

        self._set_text(prompt)
        self._render()

    # ---- what is shown ----------------------------------------------------------------

    @property
    def input_ids(self) -> list[int]:
        """The token ids the next-token distribution is for: the prompt plus the stepped tokens."""
        return list(self._ids)

    @property
    def text(self) -> str:
        """``input_ids`` decoded: the prompt plus the stepped tokens."""
        return self.tokenizer.decode(self._ids)

    @property
    def distributions(self) -> dict[str, torch.Tensor] | None:
        """``next_token_distributions`` for the current text and settings: stage -> (V,) probabilities
        (None while in error)."""
        return None if self._distributions is None else dict(self._distributions)

    @property
    def kept_tokens(self) -> list[int] | None:
        """The ids that can be sampled (nonzero final probability), most likely first (None while in error)."""
        if self._distributions is None:
            return None
        final = self._distributions["top-p"]
        kept = torch.nonzero(final > 0).flatten()
        order = torch.sort(final[kept], descending=True, stable=True).indices
        return kept[order].tolist()

    @property
    def entropy_bits(self) -> tuple[float, float] | None:
        """(before, after): the entropy in bits of the model's distribution and of the one sampled from."""
        if self._distributions is None:
            return None
        return entropy(self._distributions["model"]), entropy(self._distributions["top-p"])

    @property
    def shown_token_ids(self) -> list[int] | None:
        """The ids on the figure's x axis: the ``top_n`` most likely after the repetition penalty."""
        if self._distributions is None:
            return None
        ranked = self._distributions["repetition penalty"]
        order = torch.sort(ranked, descending=True, stable=True).indices
        return order[: self.top_n].tolist()

    @property
    def shown_labels(self) -> list[str] | None:
        """Readable labels of ``shown_token_ids`` ('·the' for ' the')."""
        ids = self.shown_token_ids
        return None if ids is None else self._token_labels(ids)

    @property
    def png(self) -> bytes:
        """The PNG bytes the image widget shows (empty while in error)."""
        return bytes(self.image.value)

    def generation_config(self, **overrides: Any) -> GenerationConfig:
        """The current settings as a ``GenerationConfig`` (sampling), with ``overrides`` applied."""
        settings = dict(
            do_sample=True,
            temperature=float(self.temperature.value),
            top_k=int(self.top_k.value) or None,
            top_p=float(self.top_p.value),
            repetition_penalty=float(self.repetition_penalty.value),
            max_new_tokens=int(self.max_new_tokens.value),
            seed=int(self.seed.value),
            eos_token_id=self.eos_token_id,
        )
        settings.update(overrides)
        return GenerationConfig(**settings)

    def figure(self) -> Figure | None:
        """The current view as a new Matplotlib figure (None while in error)."""
        if self._distributions is None:
            return None
        ids = self.shown_token_ids
        assert ids is not None
        return distributions_figure(self._distributions, ids, self._token_labels(ids), self.generation_config(),
                                    title=f"next token after “{self._tail()}”")

    # ---- actions ----------------------------------------------------------------------

    def step(self) -> int | None:
        """Sample one token from the distribution shown, append it to the text and return its id.

        The draw is ``torch.multinomial`` on the final probabilities with the explorer's generator, as
        ``generation.generate`` draws. Returns None (and changes nothing) while the prompt is in error or
        when the context window is full.
        """
        if self._distributions is None:
            return None
        if self.context_length is not None and len(self._ids) >= self.context_length:
            self.notice = tr("The context window is full ({context} tokens): the model cannot read a longer text. "
                             "Press reset or shorten the prompt.", context=self.context_length)
            self._render()
            return None
        probs = self._distributions["top-p"][None]  # (1, V), the same call generate() makes
        token = int(torch.multinomial(probs, 1, generator=self._generator)[0, 0])
        self._ids.append(token)
        self.continuation, self.notice = "", ""
        self._load()
        self._sync_prompt_box()
        self._render()
        return token

    def generate(self) -> str:
        """Continue the text with ``generation.generate`` and the current settings; return the new text.

        The prompt is not changed: the continuation is shown after it. When the text plus
        ``max_new_tokens`` does not fit the context window, only the tokens that fit are generated.
        """
        if self._distributions is None:
            return ""
        room = max_new = int(self.max_new_tokens.value)
        if self.context_length is not None:
            room = min(max_new, self.context_length - len(self._ids))
        if room <= 0:
            self.continuation = ""
            self.notice = tr("The context window ({context} tokens) is full: nothing can be generated.",
                             context=self.context_length)
            self._render()
            return ""
        config = self.generation_config(max_new_tokens=room)
        ids = generate(self.model, torch.tensor([self._ids]), config=config, tokenizer=self.tokenizer)
        new = ids[0, len(self._ids):].tolist()
        self.continuation = self.tokenizer.decode(new)
        self._continuation_settings = self._settings_text()
        self.notice = ""
        if room < max_new:
            self.notice = tr("Only {room} new tokens fit the context window of {context} tokens (asked for {asked}).",
                             room=room, context=self.context_length, asked=max_new)
        elif len(new) < max_new:
            self.notice = tr("Stopped after {count} tokens: the model wrote the end-of-text token.", count=len(new))
        self._render()
        return self.continuation

    def reset(self) -> None:
        """Back to the prompt before the steps; forget the continuation; restart the seed's random draws."""
        self._set_text(self.original_prompt)
        self._sync_prompt_box(self.original_prompt)
        self._render()

    def show(
        self,
        *,
        prompt: str | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        repetition_penalty: float | None = None,
        seed: int | None = None,
        max_new_tokens: int | None = None,
    ) -> SamplingExplorer:
        """Set several controls at once, redraw once, and return the explorer.

        A value outside a control's range raises a ValueError that names the range (a wrong type, a
        TypeError), and nothing changes. A prompt the model cannot read (empty, longer than the
        context window) is not raised: the widget shows the error, as when a student types it.
        """
        if prompt is not None and not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        given = {"temperature": temperature, "top_k": top_k, "top_p": top_p,
                 "repetition_penalty": repetition_penalty, "seed": seed, "max_new_tokens": max_new_tokens}
        values = {name: _check_setting(name, v) for name, v in given.items() if v is not None}  # may raise
        with self._hold():
            for name, value in values.items():
                getattr(self, name).value = value
            if prompt is not None:
                self.prompt.value = prompt
        # a new prompt has reset the text; otherwise the settings (and maybe the seed) changed
        if prompt is not None:
            self._set_text(prompt)
        else:
            self._update()
            if seed is not None:
                self._restart_sampler()
        self._render()
        return self

    # ---- internals --------------------------------------------------------------------

    def _settings_text(self) -> str:
        c = self.generation_config()
        return tr("temperature {temperature}, top-k {top_k}, top-p {top_p}, repetition penalty {penalty}, seed {seed}",
                  temperature=f"{c.temperature:g}", top_k=c.top_k or tr("off"), top_p=f"{c.top_p:g}",
                  penalty=f"{c.repetition_penalty:g}", seed=c.seed)

    def _restart_sampler(self) -> None:
        self._generator.manual_seed(int(self.seed.value))

    def _set_text(self, prompt: str) -> None:
        """A new prompt: encode it, drop the stepped tokens and the continuation, reseed the draws."""
        self.original_prompt = prompt
        self.continuation, self.notice = "", ""
        self._ids = encode_plain(self.tokenizer, prompt)  # special-token strings stay text; "" gives []
        self._n_prompt = len(self._ids)
        self._restart_sampler()
        self._load()

    def _load(self) -> None:
        """The model's logits for the current text (cached), or the reason there are none."""
        self.error = None
        if not self._ids:
            self.error = tr("the prompt is empty: type some text for the model to continue")
        elif self.context_length is not None and len(self._ids) > self.context_length:
            self.error = tr("the text is {length} tokens long, longer than the model's context window of {context} "
                            "tokens: shorten the prompt (or press reset)", length=len(self._ids),
                            context=self.context_length)
        if self.error is None:
            self._update()
        else:
            self._distributions = None

    def _next_token_logits(self) -> torch.Tensor:
        """(V,) logits for the token after ``_ids``: from the cache, or one forward pass."""
        key = tuple(self._ids)
        if key in self._logits:
            self._logits.move_to_end(key)
            return self._logits[key]
        device = next(self.model.parameters()).device
        ids = torch.tensor([self._ids], device=device)
        with eval_mode(self.model), torch.no_grad():
            logits = next_token_logits(self.model, ids, torch.ones_like(ids), DecodeState(), use_cache=False)
        logits = logits[0].cpu()  # (V,)
        self._logits[key] = logits
        while len(self._logits) > _LOGITS_CACHE:
            self._logits.popitem(last=False)
        return logits

    def _update(self) -> None:
        """The distributions for the current text and settings (a slider change lands here)."""
        if self.error is not None:
            return
        self._distributions = next_token_distributions(self._next_token_logits(), torch.tensor(self._ids),
                                                       self.generation_config())

    def _sync_prompt_box(self, text: str | None = None) -> None:
        """Show ``text`` (default: the current text) in the prompt box without re-encoding it."""
        self._syncing = True
        try:
            self.prompt.value = self.text if text is None else text
        finally:
            self._syncing = False

    def _token_labels(self, ids: Sequence[int]) -> list[str]:
        """Readable labels; ids the tokenizer does not have (a model's padded vocabulary) as '<id>'."""
        size = len(self.tokenizer)
        known = [i for i in ids if i < size]
        labels = dict(zip(known, readable_labels(self.tokenizer, token_strings(self.tokenizer, known),
                                                 is_byte_level(self.tokenizer))))
        return [labels.get(i, f"<{i}>") for i in ids]

    def _tail(self, tokens: int = 8) -> str:
        """The last few tokens of the text, decoded, on one line, for the figure's title."""
        text = self.tokenizer.decode(self._ids[-tokens:]).replace("\n", "↵")
        return ("…" if len(self._ids) > tokens else "") + text

    def _caption(self) -> str:
        """Entropy before and after, and how many tokens remain."""
        assert self._distributions is not None
        before, after = self.entropy_bits or (0.0, 0.0)
        vocab = int(self._distributions["model"].numel())
        kept = self.kept_tokens or []
        top = kept[0]
        p_top = float(self._distributions["top-p"][top])
        left = (N_("<b>after</b> the filters: H = {after} bits, <b>{count}</b> candidate left") if len(kept) == 1
                else N_("<b>after</b> the filters: H = {after} bits, <b>{count}</b> candidates left"))
        return (
            "<div>"
            + tr("<b>before</b> (the model): H = {before} bits over {vocab} tokens", before=f"{before:.2f}",
                 vocab=vocab)
            + " · " + tr(left, after=f"{after:.2f}", count=len(kept)) + " · "
            + tr("most likely: “{token}” {percent}%", token=html.escape(self._token_labels([top])[0]),
                 percent=f"{100 * p_top:.1f}")
            + "</div><div style='color: #555;'>"
            + tr("Rows: the distribution after each stage, applied top to bottom, over the {shown} most likely "
                 "tokens. Blue: can still be sampled; grey: removed by a filter. Red line: running total that "
                 "top-p cuts at p.", shown=min(self.top_n, vocab))
            + "</div>"
        )

    def _text_view(self) -> str:
        """The prompt, the stepped tokens (green) and the continuation (yellow), HTML-escaped."""
        if not self._ids:
            return ""
        prompt = self.tokenizer.decode(self._ids[: self._n_prompt])
        stepped = self.tokenizer.decode(self._ids[self._n_prompt:]) if len(self._ids) > self._n_prompt else ""
        parts = [html.escape(prompt)]
        if stepped:
            title = html.escape(tr("stepped tokens"), quote=True)
            parts.append(f"<span style='background: #c8e6c9;' title='{title}'>{html.escape(stepped)}</span>")
        if self.continuation:
            title = html.escape(tr("generated: {settings}", settings=self._continuation_settings), quote=True)
            parts.append(f"<span style='background: #ffe08a;' title='{title}'>"
                         f"{html.escape(self.continuation)}</span>")
        legend = []
        if stepped:
            legend.append(tr("{green}: {count} stepped token(s)",
                             green=f"<span style='background: #c8e6c9;'>{html.escape(tr('green'))}</span>",
                             count=len(self._ids) - self._n_prompt))
        if self.continuation:
            legend.append(tr("{yellow}: generated with {settings}",
                             yellow=f"<span style='background: #ffe08a;'>{html.escape(tr('yellow'))}</span>",
                             settings=html.escape(self._continuation_settings)))
        if self.notice:
            legend.append(f"<span style='color: #b00020;'>{html.escape(self.notice)}</span>")
        return (
            "<div style='font-family: monospace; white-space: pre-wrap; line-height: 1.6; border: 1px solid #ddd; "
            f"padding: 4px;'>{''.join(parts)}</div>"
            + (f"<div style='color: #555;'>{' · '.join(legend)}</div>" if legend else "")
        )

    def _render(self) -> None:
        """Draw the current state into the image, the caption and the text view."""
        if self._holding:
            return
        self.text_html.value = self._text_view()
        fig = self.figure()
        if fig is None:
            self.message.value = (
                f"<div style='color: #b00020;'><b>{html.escape(tr('Cannot show the next-token distribution:'))}"
                f"</b> {html.escape(self.error or '')}</div>"
            )
            self.image.value = b""
            return
        self.message.value = self._caption()
        self.image.value = figure_to_png(fig, dpi=self.dpi, tight=False)

    def _on_prompt(self, change: dict) -> None:
        if self._syncing or self._holding:
            return
        self._set_text(change["new"])
        self._render()

    def _on_setting(self, change: dict) -> None:
        if self._holding:
            return
        self._update()
        self._render()

    def _on_seed(self, change: dict) -> None:
        if self._holding:
            return
        self._restart_sampler()
