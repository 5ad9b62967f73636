"""llm_course.viz: figures of what a model computes, with Matplotlib and no ipywidgets. Chapters 03 and 07.

Readable token labels (``tokens``), attention weights collected from one forward pass
(``attention_data``), attention heatmaps and bars (``figures``) and next-token distributions after each
sampling filter (``distributions``). Notebooks, HTML reports and the widgets draw with them. It imports
from ``core``, ``text``, ``nn`` and ``models``, never from ``infer`` or the layers above.
"""
