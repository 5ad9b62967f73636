"""The course's table of contents: chapters, their notebooks, the manual's sections, and where the code is.

Chapter 01 (course set-up). The README's tables, ``llm-course run NN``, ``llm-course modules NN`` and the
tests all read these lists, so a new notebook only has to be named ``notebooks/NN_<topic>.ipynb``.

``LAYERS`` is the package's architecture, lowest layer first: a module imports only from its own layer
and the ones below it (``tests/test_layers.py`` checks every import). ``Chapter.modules`` names the
modules whose code a chapter teaches, so a student finds a chapter's code in one step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["Chapter", "CHAPTERS", "Layer", "LAYERS", "notebooks_dir", "find_chapter", "chapter_of", "chapters_of"]


@dataclass(frozen=True)
class Chapter:
    """One chapter: its number, English title and the manual's (Russian) section title."""

    number: str
    title: str
    manual_section: str
    modules: tuple[str, ...] = ()  # the modules whose code the chapter teaches (dotted, under llm_course)

    def notebook(self, root: Path | None = None) -> Path | None:
        """The chapter's notebook (``notebooks/NN_*.ipynb``), or None if it is not written yet."""
        found = sorted((root or notebooks_dir()).glob(f"{self.number}_*.ipynb"))
        return found[0] if found else None


CHAPTERS: tuple[Chapter, ...] = (
    Chapter("01", "Introduction and tokenization", "1. Введение в большие языковые модели",
            ("core.runtime", "core.deps", "core.paths", "core.checks", "core.i18n", "text.tokenizer", "text.corpora",
             "text.dialogs", "text.manpages", "text.translations", "text.translation_data", "text.bilingual",
             "text.encoding", "text.tasks",
             "models.shape", "models.intro", "learn.source",
             "learn.feedback", "learn.quiz", "learn.checker", "learn.assignments", "learn.chapter01")),
    Chapter("02", "Architectures: GPT, BERT, T5", "2. Архитектуры LLM",
            ("models.modeling", "models.gpt", "models.bert", "models.t5", "models.manual_ch02", "learn.chapter02")),
    Chapter("03", "Attention", "3. Трансформеры и механизмы внимания",
            ("nn.attention", "viz.tokens", "viz.attention_data", "viz.figures", "widgets.base",
             "widgets.attention_explorer", "learn.chapter03")),
    Chapter("04", "Pretraining", "4. Предварительное обучение",
            ("nn.objectives", "nn.evaluation", "train.loop", "train.checkpoints", "train.liveplot", "train.recipe",
             "train.pretraining", "train.masked_lm", "zoo.recipes", "zoo.loading", "zoo.build", "learn.chapter04")),
    Chapter("05", "Fine-tuning and instruction tuning", "5. Тонкая настройка (Fine-tuning)",
            ("train.finetuning", "train.manual_trainer", "train.instructions", "train.instruct", "learn.chapter05")),
    Chapter("06", "Parameter-efficient fine-tuning: LoRA, QLoRA, adapters", "6. Извлечение параметров (LoRA и PEFT)",
            ("train.lora", "train.qlora", "train.adapters", "train.finetuning_costs", "learn.chapter06")),
    Chapter("07", "Inference: decoding, quantization, ONNX", "7. Инференс и оптимизация",
            ("infer.logits_processors", "infer.decode_step", "infer.beam_search", "infer.generation",
             "viz.distributions", "infer.static_cache", "nn.quant_formats", "nn.quantization", "infer.onnx_export",
             "infer.onnx_cache", "infer.compiled", "widgets.sampling_explorer", "learn.chapter07")),
    Chapter("08", "Applications: chat bot, classification, summarization", "8. Практические примеры",
            ("apps.chat", "apps.chat_tuning", "apps.chat_eval", "apps.classification", "apps.summarization",
             "apps.summarization_tuning", "apps.translation", "learn.chapter08")),
    Chapter("09", "Best practices, measured", "9. Лучшие практики",
            ("train.precision", "train.practices", "infer.long_context", "infer.long_documents", "train.monitoring",
             "train.trainer_monitoring", "train.distributed", "train.hpsearch", "learn.chapter09")),
)


@dataclass(frozen=True)
class Layer:
    """One layer of the package: a subpackage of ``llm_course`` ("" for the top-level modules)."""

    name: str
    holds: str


# Lowest first: each layer may import from itself and the layers above it in this list, never below.
LAYERS: tuple[Layer, ...] = (
    Layer("core", "checks, device and seeds, optional dependencies, paths"),
    Layer("text", "the tokenizer, offline corpora, synthetic tasks"),
    Layer("nn", "attention, training objectives, quantization"),
    Layer("models", "GPT, BERT, T5, the manual's chapter-02 models, save/load in transformers' format"),
    Layer("viz", "figures without ipywidgets: token labels, attention data, plots"),
    Layer("infer", "generation, the static cache, ONNX, long inputs"),
    Layer("train", "the loop, precision, checkpoints, pretraining, fine-tuning, SFT, PEFT, monitoring, DDP, search"),
    Layer("zoo", "the shipped checkpoints: recipes, loading, making them"),
    Layer("apps", "the chat bot, classification, summarization"),
    Layer("widgets", "the ipywidgets explorers (attention, sampling)"),
    Layer("learn", "library source on the page, questions with feedback, exercise checkers, nbgrader notebooks"),
    Layer("", "the command line, the benchmark runner and the README's tables"),
)


def notebooks_dir() -> Path:
    """The ``notebooks/`` folder of the checkout this package was installed from."""
    return Path(__file__).resolve().parent.parent / "notebooks"


def find_chapter(number: str | int) -> Chapter:
    """The chapter for ``"4"``, ``"04"`` or ``4``; a ValueError listing the chapters otherwise."""
    key = str(number).strip()
    if key.isdigit():
        key = f"{int(key):02d}"
    for ch in CHAPTERS:
        if ch.number == key:
            return ch
    known = ", ".join(c.number for c in CHAPTERS)
    raise ValueError(f"unknown chapter {number!r}: the course has chapters {known}")


def chapters_of(module: str) -> list[Chapter]:
    """The chapters that teach a module (``"train.loop"`` or ``"llm_course.train.loop"``)."""
    key = module.removeprefix("llm_course.")
    return [ch for ch in CHAPTERS if key in ch.modules]


def chapter_of(notebook: str | Path) -> Chapter:
    """The chapter a notebook file belongs to, from its ``NN_`` prefix."""
    name = Path(notebook).name
    return find_chapter(name.split("_", 1)[0])
