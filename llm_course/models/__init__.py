"""llm_course.models."""
