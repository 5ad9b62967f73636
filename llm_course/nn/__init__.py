"""Building blocks that need no model class: attention, objectives, measuring, quantization. Chapters 02-07.

``attention`` is scaled dot-product and multi-head attention with its masks and KV cache (chapter 03);
``objectives`` turns text into training signals (causal and masked LM batches, ``IGNORE_INDEX``,
perplexity, bits per character; chapter 04); ``evaluation`` measures a model's loss (``model_loss``,
``estimate_loss``: one held-out loss for the whole course); ``quant_formats`` quantizes one tensor (int8,
NF4) and ``quantization`` swaps a model's layers for 8- or 4-bit ones (chapter 07). ``nn`` may import
``core`` and ``text``.
"""
