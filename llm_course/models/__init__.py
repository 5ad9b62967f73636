"""The models, written out: chapter 02's architectures and what sizes them. Chapters 01 and 02.

``gpt`` (decoder-only, GPT-2's weights), ``bert`` (encoder, masked LM) and ``t5`` (encoder-decoder)
convert to and from transformers; ``modeling`` holds what they share (save/load, input checks, weight
renaming, ``context_length``); ``shape`` is ``ModelShape``, the five numbers that every recipe and
config uses to size a model; ``manual_ch02`` reproduces the manual's models with their defects and
``intro`` is chapter 01's bigram model, parameter counting and pretrained sentence encoder. Models
may import ``core``, ``text`` and ``nn`` (attention, objectives), nothing that trains or applies them.
"""
