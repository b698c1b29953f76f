"""Links between a run's two records: the Prefect flow run's UI page on the MLflow run, and
the MLflow run's UI page on the Prefect flow run."""

import mlflow
from prefect import runtime
from prefect.artifacts import create_link_artifact
from prefect.context import FlowRunContext
from prefect.utilities.urls import url_for

from common.source_info import code_version_tags, mlflow_run_url

FLOW_RUN_URL_TAG = "prefect.flow_run_url"
ROOT_FLOW_RUN_TAG = "prefect.root_flow_run_id"


def prefect_flow_run_url(flow_run_id: str) -> str | None:
    """The Prefect UI's page of a flow run, when a UI exists (``PREFECT_UI_URL``, which
    Prefect derives from ``PREFECT_API_URL``); None for a run without a server."""
    return url_for("flow-run", obj_id=flow_run_id)


def run_context_tags() -> dict[str, str]:
    """Tags for the MLflow run of the current flow run: its Prefect UI page (when there is a
    UI), the flow run that started it all (a retrain's or sweep's, found by the failure hook),
    and the code version (``common.source_info.code_version_tags``)."""
    flow_run_id = str(runtime.flow_run.id)
    tags = {ROOT_FLOW_RUN_TAG: str(runtime.flow_run.root_flow_run_id)}
    if url := prefect_flow_run_url(flow_run_id):
        tags[FLOW_RUN_URL_TAG] = url
    context = FlowRunContext.get()
    entry_point = (
        f"{context.flow.fn.__module__}:{context.flow.fn.__name__}" if context else "unknown"
    )
    return tags | code_version_tags(entry_point)


def link_mlflow_run(run_id: str) -> str | None:
    """On the current flow (or task) run, a link artifact to MLflow run ``run_id``'s UI page,
    when the tracking URI is a server with a UI; returns the URL (None without one)."""
    client = mlflow.MlflowClient()
    experiment_id = client.get_run(run_id).info.experiment_id
    url = mlflow_run_url(mlflow.get_tracking_uri(), experiment_id, run_id)
    if url:
        create_link_artifact(
            url, link_text=f"MLflow run {run_id}", key="mlflow-run", description="The MLflow run"
        )
    return url
