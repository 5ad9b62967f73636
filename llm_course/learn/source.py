"""Show a package function's source in a notebook, syntax-highlighted: one source of truth. Chapter 01 on.

A notebook that retyped a library function would drift from it; ``show_source(bpe_merge_steps)`` shows
the lines the package really runs, with the file and line numbers they come from. In a notebook the
code is highlighted (Pygments, through IPython's display); without a front end it is printed as text.
"""

from __future__ import annotations

import inspect
import sys
import types
from pathlib import Path

__all__ = ["SourceCode", "source_of", "show_source"]

_SHOWABLE = (types.FunctionType, types.MethodType, type, types.ModuleType, types.BuiltinFunctionType)


class SourceCode:
    """A piece of source code and where it comes from; displays highlighted in a notebook. Chapter 01.

    ``str(code)`` is the plain text (a header line, then the code); in Jupyter the rich display is
    HTML highlighted by Pygments, with the same header.
    """

    def __init__(self, code: str, where: str) -> None:
        self.code = code
        self.where = where

    def __str__(self) -> str:
        return f"# {self.where}\n{self.code}"

    __repr__ = __str__

    def _repr_html_(self) -> str:
        from html import escape

        try:
            from pygments import highlight
            from pygments.formatters import HtmlFormatter
            from pygments.lexers import PythonLexer
        except ImportError:  # Pygments ships with IPython; without it, plain preformatted text
            return f"<p><code>{escape(self.where)}</code></p><pre>{escape(self.code)}</pre>"
        formatter = HtmlFormatter(noclasses=True, nobackground=True)
        return f"<p><code>{escape(self.where)}</code></p>" + highlight(self.code, PythonLexer(), formatter)


def source_of(obj: object) -> SourceCode:
    """The source of a function, method, class or module, with its file and line numbers. Chapter 01.

    TypeError for anything else (an instance, a number, a string: pass the function itself, e.g.
    ``source_of(BigramLM.next_token_probs)``); ValueError when Python has no source for it (a built-in
    or C function, or code typed into a notebook cell).
    """
    if isinstance(obj, property):
        obj = obj.fget
    if isinstance(obj, (staticmethod, classmethod)):
        obj = obj.__func__
    if not isinstance(obj, _SHOWABLE):
        raise TypeError(f"show_source needs a function, method, class or module, got {type(obj).__name__} "
                        f"{obj!r:.60}: pass the object itself, without calling it "
                        "(show_source(f), not show_source(f()))")
    target = obj.__func__ if isinstance(obj, types.MethodType) else obj
    try:
        lines, start = inspect.getsourcelines(target)
        path = inspect.getsourcefile(target)
    except (OSError, TypeError) as exc:
        raise ValueError(f"no Python source is available for {getattr(obj, '__qualname__', obj)!r} ({exc}): "
                         "built-in and C functions have none") from exc
    start = max(start, 1)
    where = f"{_short_path(path)}, lines {start}-{start + len(lines) - 1}"
    return SourceCode("".join(lines).rstrip("\n"), where)


def show_source(obj: object) -> None:
    """Show ``obj``'s source: highlighted in a notebook, printed as text without a front end. Chapter 01.

    ``show_source(bpe_merge_steps)`` in a cell displays the function exactly as the package defines it.
    See :func:`source_of` for what may be shown and the errors.
    """
    code = source_of(obj)
    ipython = sys.modules.get("IPython")
    if ipython is not None and ipython.get_ipython() is not None:
        from IPython.display import display

        display(code)
    else:
        print(code)


def _short_path(path: str | None) -> str:
    """``llm_course/text/tokenizer.py`` for the package's files; the full path for others."""
    if not path:
        return "<unknown file>"
    p = Path(path).resolve()
    parts = p.parts
    if "llm_course" in parts:
        return "/".join(parts[len(parts) - 1 - parts[::-1].index("llm_course"):])
    return str(p)
