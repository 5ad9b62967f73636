"""llm_course.viz."""
