"""The task that writes a run's model card and description, and links its final metrics to
its logged model, so that MLflow's registry and *Models* views explain a model on their own."""

import mlflow
from mlflow.entities import Metric
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE
from prefect import task

from common.mlflow_client import RetryingClient
from common.model_card import CLASS_ACCURACY_PREFIX, SCORES, model_card, run_description
from common.source_info import mlflow_run_url


def _final_metrics(client: RetryingClient, run_id: str, names: list[str]) -> list[Metric]:
    return [metric for name in names for metric in client.get_metric_history(run_id, name)]


@task
def publish_model_card(
    run_id: str, model_uri: str, model_name: str | None = None, version: str | None = None
) -> str | None:
    """Describe run ``run_id`` (``mlflow.note.content``), log its final metrics again on its
    logged model ``model_uri`` (``models:/m-...``; same values, steps and times, so the run's
    own history does not change), and, when it was registered as ``version`` of
    ``model_name``, write the model card on that version and on the registered model (which
    shows its newest card). Returns the card (None when nothing was registered)."""
    client = RetryingClient()
    run = client.get_run(run_id)
    finals = [n for n in run.data.metrics if n in SCORES or n.startswith(CLASS_ACCURACY_PREFIX)]
    model_id = model_uri.removeprefix("models:/")
    linked = [
        Metric(m.key, m.value, m.timestamp, m.step, model_id=model_id)
        for m in _final_metrics(client, run_id, finals)
    ]
    client.log_batch(run_id, metrics=linked)
    client.set_tag(run_id, MLFLOW_RUN_NOTE, run_description(run))
    if not (model_name and version):
        return None
    plots = [a.path for a in client.list_artifacts(run_id, "plots")]
    url = mlflow_run_url(mlflow.get_tracking_uri(), run.info.experiment_id, run_id)
    card = model_card(run, model_name, version, url, plots)
    client.update_model_version(model_name, version, description=card)
    client.update_registered_model(model_name, description=card)
    return card
