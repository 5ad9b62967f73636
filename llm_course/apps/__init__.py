"""Applications of trained models: a chat bot, classification and summarization. Chapter 08.

``chat`` (a bot with token-budgeted history and injection-safe prompts, a chat widget) and
``chat_tuning`` (chat training data, tuning, the zoo's course-gpt-chat task); ``classification``
(label likelihood, generate-and-parse, an encoder classifier); ``summarization`` (the docs summary
task, ROUGE, T5 and TL;DR summarizers) and ``summarization_tuning`` (training a T5 summarizer, the
zoo's course-t5-sum task). Apps may import every layer below them (``core`` to ``zoo``); the
``*_TASK`` objects plug them into the zoo, which does not import them.
"""
