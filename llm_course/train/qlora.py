"""QLoRA: LoRA adapters on a frozen 4-bit NF4 base, from scratch and with the libraries. Chapter 06.

**QLoRA** (Dettmers et al. 2023) goes one step further than LoRA (``llm_course.train.lora``): the frozen
base is stored in 4-bit NF4 (``llm_course.nn.quantization``, chapter 07), dequantized on the fly in each
forward, and the LoRA matrices stay in float. ``apply_qlora`` does it from scratch on a CPU;
``bitsandbytes_qlora`` is the library recipe (CUDA only): ``BitsAndBytesConfig`` 4-bit NF4 load,
``prepare_model_for_kbit_training``, ``LoraConfig`` + ``get_peft_model``.

Where the manual goes wrong (ERRATA section 6): its QLoRA calls ``prepare_model_for_kbit_training`` on a
model that was never quantized: the ``BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", ...)``
load is missing, so it is plain LoRA on a float model. ``bitsandbytes_qlora`` loads in 4 bits first.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from llm_course.core.deps import MissingDependencyError, require
from llm_course.core.runtime import eval_mode
from llm_course.nn.quantization import NF4Linear, quantize_nf4, quantized_linear_names
from llm_course.train.lora import apply_lora, check_lora_hyperparameters, lora_targets, peft_lora_config

__all__ = ["apply_qlora", "bitsandbytes_qlora"]


# --------------------------------------------------------------------------------------------
# QLoRA from scratch: NF4 base + LoRA
# --------------------------------------------------------------------------------------------


def apply_qlora(model: nn.Module, target_modules: str | Sequence[str] | None = None, r: int = 8,
                alpha: float = 16, dropout: float = 0.0, block_size: int = 64,
                double_quant: bool = True) -> list[str]:
    """QLoRA on a CPU: quantize the model's Linear layers to NF4, then LoRA on the targets. Chapter 06.

    In place; returns the wrapped names. Every ``nn.Linear`` becomes a frozen ``NF4Linear``
    (``quantize_nf4``: blocks of ``block_size``, double quantization; a tied lm_head stays float), and
    each target becomes ``LoRALinear(NF4Linear)``: the forward dequantizes the 4-bit weight and adds the
    float32 low-rank update; only ``lora_A`` / ``lora_B`` get gradients. Targets must be ``nn.Linear``
    layers (the course's models; for GPT-2's Conv1D use ``GPT.from_hf`` first). Checked before changing
    anything. The model's train/eval mode is kept.
    """
    names, _ = lora_targets(model, target_modules, r, alpha, dropout, "apply_qlora")
    quantizable = set(quantized_linear_names(model))
    for name in names:
        if name not in quantizable and not isinstance(model.get_submodule(name), NF4Linear):
            layer = model.get_submodule(name)
            raise TypeError(f"apply_qlora quantizes nn.Linear layers, but target {name!r} is a "
                            f"{type(layer).__name__}; convert the model first (GPT.from_hf(model) for GPT-2) or "
                            "use apply_lora for LoRA without quantization")
    with eval_mode(model):  # quantize_nf4 leaves the model in eval mode; keep the mode it came in
        quantize_nf4(model, block_size=block_size, double_quant=double_quant, inplace=True)
    return apply_lora(model, names, r, alpha, dropout)


# --------------------------------------------------------------------------------------------
# QLoRA with the libraries: bitsandbytes and peft
# --------------------------------------------------------------------------------------------


def _bitsandbytes_installed() -> bool:
    """Whether the bitsandbytes package can be imported (looked up without importing it)."""
    return importlib.util.find_spec("bitsandbytes") is not None


def bitsandbytes_qlora(model_name_or_path: str, target_modules: str | Sequence[str] | None = None, r: int = 8,
                       alpha: float = 16, dropout: float = 0.05, compute_dtype: torch.dtype = torch.bfloat16) -> Any:
    """QLoRA with the libraries (CUDA + bitsandbytes): a 4-bit NF4 model with LoRA adapters. Chapter 06.

    1. ``BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
       bnb_4bit_compute_dtype=compute_dtype)``: the load config the manual forgets.
    2. ``AutoModelForCausalLM.from_pretrained(..., quantization_config=..., device_map="auto")``: the
       weights are quantized to NF4 as they are loaded onto the GPU.
    3. ``peft.prepare_model_for_kbit_training``: freezes the base, casts LayerNorms to float32, enables
       gradient checkpointing and input gradients; meaningful only on a model that *is* quantized.
    4. ``get_peft_model(model, peft_lora_config(...))``: LoRA on the (checked) target modules.

    Returns the ``PeftModel``. Without a CUDA GPU or without bitsandbytes it raises a clear error before
    loading anything (``apply_qlora`` is the same recipe from scratch, on a CPU).
    """
    if not isinstance(model_name_or_path, str) or not model_name_or_path:
        raise TypeError(f"model_name_or_path must be a Hub id or a local folder (str), got {model_name_or_path!r}")
    check_lora_hyperparameters(r, alpha, dropout)
    if not isinstance(compute_dtype, torch.dtype) or not compute_dtype.is_floating_point:
        raise TypeError(f"compute_dtype must be a float torch.dtype (torch.bfloat16 or torch.float16), "
                        f"got {compute_dtype!r}")
    cpu_hint = "Or use llm_course.train.qlora.apply_qlora(model): QLoRA written out (NF4 + LoRA), which runs on a CPU."
    if not torch.cuda.is_available():
        raise RuntimeError("bitsandbytes_qlora needs a CUDA GPU (bitsandbytes' 4-bit kernels), and "
                           "torch.cuda.is_available() is False here. Run it on a CUDA machine (e.g. Colab) after "
                           f"`pip install bitsandbytes`. {cpu_hint}")
    if not _bitsandbytes_installed():
        error = MissingDependencyError("bitsandbytes")  # "bitsandbytes is not installed: pip install bitsandbytes"
        error.add_note(cpu_hint)
        raise error
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    peft = require("peft")
    quantization_config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",  # the default is "fp4"
        bnb_4bit_use_double_quant=True,  # quantize the block scales too: 4.127 bits per weight
        bnb_4bit_compute_dtype=compute_dtype,  # dequantize to this dtype for each matmul
    )
    import transformers
    from packaging.version import Version

    # transformers 4.56 renamed from_pretrained's torch_dtype= to dtype=; 4.50-4.55 only know torch_dtype
    dtype_kwarg = "dtype" if Version(transformers.__version__).release >= (4, 56) else "torch_dtype"
    model = AutoModelForCausalLM.from_pretrained(model_name_or_path, quantization_config=quantization_config,
                                                 device_map="auto", **{dtype_kwarg: compute_dtype})
    model = peft.prepare_model_for_kbit_training(model)
    config = peft_lora_config(model, r=r, alpha=alpha, dropout=dropout, target_modules=target_modules)
    return peft.get_peft_model(model, config)
