"""llm_course.zoo."""
