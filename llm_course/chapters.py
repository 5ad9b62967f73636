"""The course's table of contents: chapter numbers, notebooks and the manual's sections.

Chapter 01 (course set-up). The README's table, ``llm-course run NN`` and the tests all read
this one list, so a new notebook only has to be named ``notebooks/NN_<topic>.ipynb``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["Chapter", "CHAPTERS", "notebooks_dir", "find_chapter", "chapter_of"]


@dataclass(frozen=True)
class Chapter:
    """One chapter: its number, English title and the manual's (Russian) section title."""

    number: str
    title: str
    manual_section: str

    def notebook(self, root: Path | None = None) -> Path | None:
        """The chapter's notebook (``notebooks/NN_*.ipynb``), or None if it is not written yet."""
        found = sorted((root or notebooks_dir()).glob(f"{self.number}_*.ipynb"))
        return found[0] if found else None


CHAPTERS: tuple[Chapter, ...] = (
    Chapter("01", "Introduction and tokenization", "1. Введение в большие языковые модели"),
    Chapter("02", "Architectures: GPT, BERT, T5", "2. Архитектуры LLM"),
    Chapter("03", "Attention", "3. Трансформеры и механизмы внимания"),
    Chapter("04", "Pretraining", "4. Предварительное обучение"),
    Chapter("05", "Fine-tuning and instruction tuning", "5. Тонкая настройка (Fine-tuning)"),
    Chapter("06", "Parameter-efficient fine-tuning: LoRA, QLoRA, adapters", "6. Извлечение параметров (LoRA и PEFT)"),
    Chapter("07", "Inference: decoding, quantization, ONNX", "7. Инференс и оптимизация"),
    Chapter("08", "Applications: chat bot, classification, summarization", "8. Практические примеры"),
    Chapter("09", "Best practices, measured", "9. Лучшие практики"),
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


def chapter_of(notebook: str | Path) -> Chapter:
    """The chapter a notebook file belongs to, from its ``NN_`` prefix."""
    name = Path(notebook).name
    return find_chapter(name.split("_", 1)[0])
