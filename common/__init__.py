"""What tasks and flows share that is not a task: typed configs, the MLflow client, runs, locks."""
