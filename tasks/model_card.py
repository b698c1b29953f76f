"""The task that writes a run's model card and description, so that MLflow's registry and
run views explain a model on their own."""

import mlflow
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE
from prefect import task

from common.model_card import model_card, run_description
from common.source_info import mlflow_run_url


@task
def publish_model_card(
    run_id: str, model_name: str | None = None, version: str | None = None
) -> str | None:
    """Describe run ``run_id`` (``mlflow.note.content``) and, when its model was registered
    as ``version`` of ``model_name``, write the model card on that version and on the
    registered model (which shows its newest card). Returns the card (None when nothing was
    registered)."""
    client = MlflowClient()
    run = client.get_run(run_id)
    client.set_tag(run_id, MLFLOW_RUN_NOTE, run_description(run))
    if not (model_name and version):
        return None
    plots = [a.path for a in client.list_artifacts(run_id, "plots")]
    url = mlflow_run_url(mlflow.get_tracking_uri(), run.info.experiment_id, run_id)
    card = model_card(run, model_name, version, url, plots)
    client.update_model_version(model_name, version, description=card)
    client.update_registered_model(model_name, description=card)
    return card
