"""Where the course's files live: the shipped checkpoints and the cache of built data. Chapters 01 and 04.

The lowest layer (``llm_course.core``) imports nothing else from the package, so any module may ask
where the shipped checkpoints are (``CHECKPOINTS_DIR``) without importing the model zoo.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CHECKPOINTS_DIR", "cache_dir"]

# The model zoo's shipped folders (course-gpt, course-bert, ...): package data, see llm_course.zoo.
CHECKPOINTS_DIR = Path(__file__).resolve().parent.parent / "checkpoints"


def cache_dir() -> Path:
    """Where built data is cached: ``$LLM_COURSE_CACHE`` or ``~/.cache/llm_course``. Chapter 01.

    The folder is created if needed.
    """
    env = os.environ.get("LLM_COURSE_CACHE")
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "llm_course"
    path.mkdir(parents=True, exist_ok=True)
    return path
