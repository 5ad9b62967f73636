"""llm_course.nn."""
