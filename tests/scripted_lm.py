"""A stand-in causal LM for tests of code around ``generate`` (chapters 07-08): it writes a fixed script."""

from types import SimpleNamespace

import torch
import torch.nn as nn


class ScriptedLM(nn.Module):
    """A causal LM that writes ``script`` token by token (each step's logits put the script's token first).

    Looks like a transformers model to ``generate`` (keyword inputs, an output with ``.logits``). It records
    every prompt it is given (``prompts``; their lengths: ``prompt_lengths``) and how many tokens it wrote
    for the last one (``steps``).
    """

    def __init__(self, script: list[int], vocab_size: int = 4096, n_positions: int = 256) -> None:
        super().__init__()
        self.script, self.vocab_size = list(script), vocab_size
        self.config = SimpleNamespace(n_positions=n_positions)
        self.dummy = nn.Parameter(torch.zeros(1))
        self.prompts: list[torch.Tensor] = []
        self.steps = 0

    @property
    def prompt_lengths(self) -> list[int]:
        return [p.shape[1] for p in self.prompts]

    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False, **kwargs):
        if past_key_values is None:  # a new prompt (the cache is empty)
            self.prompts.append(input_ids.clone())
            self.steps = 0
        token = self.script[min(self.steps, len(self.script) - 1)]
        self.steps += 1
        logits = torch.full((input_ids.shape[0], input_ids.shape[1], self.vocab_size), -10.0)
        logits[:, -1, token] = 10.0
        return SimpleNamespace(logits=logits, past_key_values=("cache",))
