"""llm_course.train."""
