"""Prefect flows: they wire tasks together and hold no numerical code."""
