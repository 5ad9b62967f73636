"""llm_course.core."""
