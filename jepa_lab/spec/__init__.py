"""Specs: pydantic models of experiments and studies, and reading them from YAML with FILE:LINE
errors. pydantic and PyYAML only: importing a spec never imports torch (the ground floor)."""
