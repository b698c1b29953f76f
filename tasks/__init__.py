"""Prefect tasks: thin, typed wrappers over tfnn plus the MLflow tracking they own."""
