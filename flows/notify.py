"""Failure alerts: a flow-run hook that sends one notification, with the reason and links to
both records, through the Prefect notification block named by ``$TFNN_NOTIFY_BLOCK``
(``BLOCK-TYPE/NAME``, e.g. ``slack-webhook/tfnn-alerts`` or ``custom-webhook/ops``)."""

import os
from contextlib import suppress

import mlflow
from mlflow.exceptions import MlflowException
from prefect import Flow
from prefect.blocks.core import Block
from prefect.client.schemas.objects import FlowRun, State

from tasks.runs import mlflow_run_url
from tasks.tracking import ROOT_FLOW_RUN_TAG, prefect_flow_run_url

NOTIFY_BLOCK_ENV = "TFNN_NOTIFY_BLOCK"


def _mlflow_link(flow_run_id: str) -> str:
    """The first MLflow run this flow run started (a retrain's challenger, a sweep's parent),
    as its UI address, or its id and store; the tracking server may be why the flow failed."""
    with suppress(MlflowException, OSError):
        found = mlflow.search_runs(
            filter_string=f"tags.`{ROOT_FLOW_RUN_TAG}` = '{flow_run_id}'",
            search_all_experiments=True,
            order_by=["attributes.start_time ASC"],
            max_results=1,
            output_format="list",
        )
        if not found:
            return "none (the flow failed before it opened an MLflow run)"
        info = found[0].info
        tracking_uri = mlflow.get_tracking_uri()
        return (
            mlflow_run_url(tracking_uri, info.experiment_id, info.run_id)
            or f"run {info.run_id} in {tracking_uri}"
        )
    return f"unknown (MLflow at {mlflow.get_tracking_uri()} did not answer)"


def failure_message(flow: Flow, flow_run: FlowRun, state: State) -> tuple[str, str]:
    """``(subject, body)`` of the alert: the flow, the run, its state and reason, both links."""
    subject = f"tfnn: {flow.name} run {flow_run.name} {state.name}"
    prefect_link = prefect_flow_run_url(str(flow_run.id)) or f"flow run {flow_run.id} (no UI)"
    body = (
        f"Flow {flow.name}, run {flow_run.name}: {state.name}.\n"
        f"Reason: {state.message or 'not given'}\n"
        f"Prefect: {prefect_link}\n"
        f"MLflow: {_mlflow_link(str(flow_run.id))}"
    )
    return subject, body


def notify_failure(flow: Flow, flow_run: FlowRun, state: State) -> None:
    """An ``on_failure``/``on_crashed`` hook: send ``failure_message`` through the block
    ``$TFNN_NOTIFY_BLOCK``; without one, nothing. A subflow (a retrain's training) sends
    nothing: the flow that started it fails too and reports once."""
    block_name = os.environ.get(NOTIFY_BLOCK_ENV, "").strip()
    if not block_name or flow_run.parent_task_run_id is not None:
        return
    subject, body = failure_message(flow, flow_run, state)
    Block.load(block_name).notify(body, subject=subject)


# For the flows' decorators: ``@flow(..., **FAILURE_HOOKS)``.
FAILURE_HOOKS = {"on_failure": [notify_failure], "on_crashed": [notify_failure]}
