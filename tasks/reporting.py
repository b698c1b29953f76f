"""Prefect artifacts that summarise a run and point at its MLflow record."""

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE

from tasks.evaluate import Evaluation
from tasks.registry import Decision
from tfnn.training import History


@task(cache_policy=NONE)
def publish_summary(run_id: str, model_uri: str, history: History, evaluation: Evaluation) -> None:
    """A markdown artifact of the final metrics and MLflow run, and a table of epoch metrics."""
    rows = "\n".join(f"| {name} | {value:.4f} |" for name, value in evaluation.metrics().items())
    create_markdown_artifact(
        key="training-summary",
        description="Final metrics of the training run and where MLflow keeps it",
        markdown=(
            f"# Training run `{run_id}`\n\n"
            f"MLflow run id: `{run_id}`  \nModel: `{model_uri}`\n\n"
            f"| metric | value |\n|---|---|\n{rows}\n"
        ),
    )
    # Rounded as the UI shows them: a float's 17 digits overflow the page.
    rounded = (
        {"epoch": epoch, **{k: round(v, 4) for k, v in history.epoch_metrics(epoch).items()}}
        for epoch in range(1, history.epochs + 1)
    )
    create_table_artifact(
        key="epoch-metrics", description="Metrics after each epoch", table=[*rounded]
    )


@task
def publish_decision(decision: Decision, cause: str | None = None) -> None:
    """A markdown artifact of the retrain's decision, scores, reason and ``cause`` (if any)."""

    def score(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    create_markdown_artifact(
        key="retrain-decision",
        description=f"Retrain decision for {decision.model_name}: {decision.action}",
        markdown=(
            f"# Retrain of `{decision.model_name}`: {decision.action}\n\n"
            f"{decision.reason}\n\n"
            f"{f'Started by {cause}' if cause else ''}\n\n"
            "| | version | validation accuracy (decides) | test accuracy |\n|---|---|---|---|\n"
            f"| champion before | {decision.champion_version or '-'} | "
            f"{score(decision.champion_val_accuracy)} | "
            f"{score(decision.champion_test_accuracy)} |\n"
            f"| challenger | {decision.challenger_version or '-'} | "
            f"{score(decision.challenger_val_accuracy)} | "
            f"{score(decision.challenger_test_accuracy)} |\n\n"
            f"Challenger MLflow run id: `{decision.challenger_run_id or '-'}`\n"
        ),
    )
