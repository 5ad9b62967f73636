"""The model zoo: the course's own pretrained checkpoints, how each was made, and loading them. Chapters 04 and 08.

``recipes`` is the registry (``ZOO``: each shipped checkpoint's ``PretrainRecipe`` or ``TunedRecipe``,
and the ``ZooTask`` protocol that an application implements to make a tuned one), ``loading`` finds,
reads and loads checkpoints (a zoo name, a folder or a Hub id; ``read_recipe``, ``read_metrics``,
``load_pretrained``), and ``build`` makes and re-scores them (``llm-course zoo train|eval``). The zoo
may import ``core``, ``text``, ``nn``, ``models`` and ``train``; it never imports ``apps``: the chat
and summarization checkpoints are made by a task that the caller (the CLI, a test) passes in.
"""
