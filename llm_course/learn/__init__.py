"""Learning tools: library code on the page, questions with feedback, exercise checkers. Chapter 01 on.

``llm_course.learn`` sits above ``widgets`` and below the top-level modules: it may use any layer of
the package (a chapter's checkers compare a student's function with the library's), and nothing in
the package imports it.

* :mod:`llm_course.learn.source`: ``show_source(obj)`` shows a package function's source, highlighted,
  so a notebook shows library code from the one source of truth instead of a copy.
* :mod:`llm_course.learn.quiz`: multiple-choice and numeric questions with immediate feedback, as a
  widget (JupyterLab, Colab's ipywidgets 7.7) or as a plain call, ``quiz.answer(2, "b")``.
* :mod:`llm_course.learn.checker`: exercise checkers: a student's function against the reference on
  generated inputs, with a time limit, never crashing on the student's code.
* :mod:`llm_course.learn.assignments`: the student notebook generated from the solutions with nbgrader.
* :mod:`llm_course.learn.chapter01` (one per chapter): that chapter's questions and exercises.
"""
