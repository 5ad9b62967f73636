"""Applications of trained models: a chat bot, classification, summarization and translation. Chapter 08.

``chat`` (a bot with token-budgeted history and injection-safe prompts, a chat widget),
``chat_tuning`` (chat training data, tuning, the zoo's course-gpt-chat task) and ``chat_eval`` (reply loss
and reply language, per language); ``classification`` (label likelihood, generate-and-parse, an encoder
classifier); ``summarization`` (the docs summary task, ROUGE, T5 and TL;DR summarizers) and
``summarization_tuning`` (training a T5 summarizer, the zoo's course-t5-sum task); ``translation``
(English->Russian: chrF, the copy baseline, the instruction-tuned translator, the zoo's course-gpt-translate
task). Apps may import every layer below them (``core`` to ``zoo``); the ``*_TASK`` objects plug them into
the zoo, which does not import them.
"""
