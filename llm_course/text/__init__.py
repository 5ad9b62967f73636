"""llm_course.text."""
