"""llm_course: the code behind the LLM course's notebooks.

The package is a stack of layers, one subpackage each, lowest first; a module imports only from its
own layer and the layers below it (``tests/test_layers.py`` checks every import):

* :mod:`llm_course.core` — checks, device and seeds, optional dependencies, paths
* :mod:`llm_course.text` — the byte-level BPE tokenizer, offline corpora, synthetic tasks
* :mod:`llm_course.nn` — attention, training objectives, held-out loss, quantization
* :mod:`llm_course.models` — GPT, BERT, T5, the manual's chapter-02 models, save/load
* :mod:`llm_course.viz` — figures without ipywidgets: token labels, attention data, distributions
* :mod:`llm_course.infer` — generation, the static KV cache, ONNX, long inputs
* :mod:`llm_course.train` — the loop, precision, checkpoints, pretraining, fine-tuning, PEFT, DDP, search
* :mod:`llm_course.zoo` — the shipped checkpoints: recipes, loading, making them
* :mod:`llm_course.apps` — the chat bot, classification, summarization
* :mod:`llm_course.widgets` — the ipywidgets explorers (attention, sampling)
* top level — :mod:`llm_course.cli`, :mod:`llm_course.report`, :mod:`llm_course.benchtools`,
  :mod:`llm_course.chapters` (which modules each chapter teaches: ``llm_course.chapters.CHAPTERS``)

Import what you need from its module (``from llm_course.text.tokenizer import ByteLevelBPETokenizer``);
this package and its subpackages import nothing heavy on their own.
"""

import logging
import warnings

__version__ = "0.1.0"

# transformers imports torchao whenever it is installed; on a CPU-only machine torchao then logs a
# "Failed to load ..." warning for each of its CUDA-only kernels, and torch logs enum-registration
# notices. Neither means anything is wrong; keep them out of students' notebooks.
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
# peft (chapter 06) still calls transformers' old ``is_gradient_checkpointing``; the warning is for peft.
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
