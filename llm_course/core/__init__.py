"""The lowest layer: what every other module may need and nothing course-specific. Chapter 01.

``checks`` holds the argument checks with one rule (TypeError for a wrong type, ValueError for a value
out of range); ``runtime`` the device choice, seeding, ``eval_mode`` and moving a batch to a model's
device; ``deps`` the import of optional packages with an install hint (``require``); ``paths`` where the
shipped checkpoints and the data cache live. ``core`` imports nothing else from ``llm_course``.
"""
