"""llm_course.widgets."""
