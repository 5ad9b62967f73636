"""llm_course: the code behind the LLM course's notebooks.

Modules mirror the chapters (each function's docstring names the chapter that introduced it):

* 01 — :mod:`llm_course.text.tokenizer` (byte-level BPE), :mod:`llm_course.data` (offline corpora),
  :mod:`llm_course.models.intro` (bigram LM, parameter counts, zero-/few-shot), :mod:`llm_course.core.runtime`
* 02 — :mod:`llm_course.models.gpt`, :mod:`llm_course.models.bert`, :mod:`llm_course.models.t5` (shared: :mod:`llm_course.models.modeling`)
* 03 — :mod:`llm_course.nn.attention`, :mod:`llm_course.widgets`
* 04 — :mod:`llm_course.nn.objectives` (causal LM and MLM data), :mod:`llm_course.training` (the loop),
  :mod:`llm_course.train.pretraining` (the notebook's recipe), :mod:`llm_course.zoo` (shipped checkpoints)
* 05 — :mod:`llm_course.train.finetuning` (Trainer, the cost harness), :mod:`llm_course.train.instruct` (instruction tuning)
* 06 — :mod:`llm_course.train.lora` (LoRA, QLoRA), :mod:`llm_course.train.adapters`
* 07 — :mod:`llm_course.infer.generation` (decoding), :mod:`llm_course.infer.static_cache` (the lean decode loop),
  :mod:`llm_course.widgets.sampling_explorer`, :mod:`llm_course.nn.quantization` (int8, NF4), :mod:`llm_course.infer.onnx_export`
* 08 — :mod:`llm_course.apps.chat` (the chat bot), :mod:`llm_course.apps.classification` (likelihood scoring, LoRA on MiniLM),
  :mod:`llm_course.apps.summarization` (ROUGE, a T5 summarizer, TL;DR)
* 09 — :mod:`llm_course.train.practices` (checkpointing, mixed precision), :mod:`llm_course.infer.long_context`,
  :mod:`llm_course.train.monitoring`, :mod:`llm_course.train.distributed` (DDP), :mod:`llm_course.train.hpsearch` (Ray Tune)

Import what you need from its module (``from llm_course.text.tokenizer import ByteLevelBPETokenizer``);
this package imports nothing heavy on its own.
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
