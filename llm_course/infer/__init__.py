"""llm_course.infer."""
