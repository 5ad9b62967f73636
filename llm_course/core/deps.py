"""Optional dependencies: import a package the course can live without, or say how to install it. Chapter 01.

The course runs on torch, transformers and a few small packages; others (ray, wandb, peft, torchao,
chatterbot-corpus, ...) are needed by one section each. ``require("wandb")`` imports such a package or
raises ``MissingDependencyError``, an ``ImportError`` whose message is the exact fix
(``wandb is not installed: pip install wandb``), so a notebook can catch it and skip that section.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingDependencyError", "require"]


class MissingDependencyError(ModuleNotFoundError):
    """An optional package the course needs is not installed. Chapter 01.

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
