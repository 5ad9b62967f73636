"""llm_course.widgets: interactive ipywidgets explorers for the notebooks. Chapters 03 and 07.

One module per widget: ``attention_explorer`` (chapter 03, attention heads) and ``sampling_explorer``
(chapter 07, sampling settings), on a shared base (``base``). They draw the figures of ``llm_course.viz``
and may import from every layer below them (the top layer but for the command line).
"""
