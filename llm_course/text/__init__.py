"""llm_course.text: text before it meets a model. Chapter 01 (introduction and tokenization).

The course's byte-level BPE tokenizer (``tokenizer``), encoding plain text with any tokenizer and what a
script costs in tokens (``encoding``), the offline corpora it trains on (``corpora``: the standard
library's documentation; ``dialogs``: chatterbot-corpus; ``manpages``: Russian manual pages; ``bilingual``:
both languages with a held-out part each), English->Russian pairs from translation catalogues
(``translations``; the pairs the package ships: ``translation_data``) and labelled or checkable examples (``tasks``).
The second-lowest layer: it imports only from ``llm_course.core``.
"""
