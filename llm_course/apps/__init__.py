"""llm_course.apps."""
