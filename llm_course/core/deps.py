"""Offline data for the whole course: English prose, dialogs and checkable synthetic tasks.

Split from the former ``llm_course.data``; see the package docstring."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ['MissingDependencyError', 'require']


# ----------------------------------------------------------------------------------------
# Errors and small shared helpers
# ----------------------------------------------------------------------------------------


class MissingDependencyError(ModuleNotFoundError):
    """An optional package the course needs is not installed. Chapter 01 (data).

    It is a ``ModuleNotFoundError`` (hence an ``ImportError``), so ``except ImportError``
    catches it, and its message is the exact command that fixes it, e.g.
    ``chatterbot-corpus is not installed: pip install chatterbot-corpus``.
    """

    def __init__(self, package: str, module: str | None = None) -> None:
        super().__init__(f"{package} is not installed: pip install {package}", name=module or package)
        self.package = package


def require(module: str, package: str | None = None) -> ModuleType:
    """Import ``module`` or raise ``MissingDependencyError`` naming the pip ``package``. Chapter 01.

    Only a missing ``module`` itself is translated: if the module is installed but one of
    *its* imports fails, that original error is re-raised unchanged, since "pip install X"
    would be the wrong advice.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name is not None and err.name != module and not module.startswith(err.name + "."):
            raise
        raise MissingDependencyError(package or module, module) from err
