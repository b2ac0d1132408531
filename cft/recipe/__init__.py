"""Recipes: the pydantic schema, cross-field rules, YAML loading with line numbers, `--set` overrides."""
