"""The flows' handle on an MLflow run, and the tasks that log what a run produced.

Every call names its run explicitly and goes through ``common.mlflow_client``'s
retrying client (see there why).
"""

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import mlflow
import numpy as np
import tensorflow as tf
from mlflow.entities import Metric
from mlflow.models import infer_signature
from prefect import get_run_logger, runtime, task
from prefect.cache_policies import NONE
from prefect.exceptions import TerminationSignal

from common.mlflow_client import RetryingClient, retry_tracking
from common.runs import mlflow_run
from tasks.data import PreparedData
from tasks.evaluate import Evaluation
from tfnn.network import Sequential
from tfnn.serialization import save_network, weights_digest
from tfnn.training import History, learning_failure

WEIGHTS_TAG = "tfnn.weights_sha256"
BEST_EPOCH_TAG = "tfnn.best_epoch"
WARNING_TAG = "tfnn.warning"


@contextmanager
def tracked_run(
    params: dict[str, str],
    experiment: str,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    resume_run_id: str | None = None,
    takeover: bool = False,
) -> Iterator[str]:
    """``common.runs.mlflow_run`` inside a Prefect flow run: the MLflow run is tagged with the
    flow run's id and name, and Ctrl-C or SIGTERM (Prefect's ``TerminationSignal``) ends it
    KILLED. A failure propagates, so that Prefect marks the flow run Failed (Crashed) too."""
    tags = {
        "prefect.flow_run_id": str(runtime.flow_run.id),
        "prefect.flow_run_name": str(runtime.flow_run.name),
    }
    with mlflow_run(
        params,
        experiment,
        tags,
        parent_run_id,
        run_name,
        resume_run_id,
        takeover,
        interruptions=(KeyboardInterrupt, TerminationSignal),
    ) as run_id:
        yield run_id


@task(cache_policy=NONE)
def flag_if_not_learning(run_id: str, history: History, data: PreparedData) -> str | None:
    """If the run learned nothing (``tfnn.training.learning_failure``, chance being the share
    of the commonest training class), tag it ``tfnn.warning`` and log a warning; returns
    the reason, or None."""
    chance = float(np.max(np.mean(data.y_train, axis=0)))
    reason = learning_failure(history, chance)
    if reason is not None:
        reason = f"run {run_id} did not learn: {reason}"
        RetryingClient().set_tag(run_id, WARNING_TAG, reason)
        get_run_logger().warning(reason)
    return reason


@task(cache_policy=NONE)
def log_trained_model(
    run_id: str, network: Sequential, data: PreparedData, best_epoch: int | None = None
) -> str:
    """Log the final weights (architecture JSON + npz) and an MLflow tensorflow model with a
    signature and an input example, and tag the run with ``weights_digest`` and the epoch of
    lowest ``val_loss`` (``tfnn.best_epoch``); returns the model's URI."""
    client = RetryingClient()
    with tempfile.TemporaryDirectory() as tmp:
        client.log_artifacts(run_id, str(save_network(network, tmp)), "weights")
    client.set_tag(run_id, WEIGHTS_TAG, weights_digest(network))
    if best_epoch is not None:
        client.set_tag(run_id, BEST_EPOCH_TAG, str(best_epoch))
    example = data.x_test[:5]
    info = retry_tracking(
        lambda: mlflow.tensorflow.log_model(
            network,
            name="model",
            run_id=run_id,
            signature=infer_signature(example, network.predict(example).numpy()),
            input_example=example,
            pip_requirements=[f"tensorflow=={tf.__version__}", f"numpy=={np.__version__}"],
        )
    )
    return info.model_uri


@task(cache_policy=NONE)
def log_evaluation(run_id: str, evaluation: Evaluation, plot_paths: list[str]) -> None:
    """Log the final test metrics (those a resumed run does not hold yet), the confusion
    matrix and the plots."""
    client = RetryingClient()
    held = client.get_run(run_id).data.metrics
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, now, 0) for k, v in evaluation.metrics().items() if k not in held],
    )
    client.log_dict(
        run_id,
        {"rows_true_columns_predicted": evaluation.confusion.tolist()},
        "confusion_matrix.json",
    )
    for path in plot_paths:
        client.log_artifact(run_id, path, "plots")


@task
def log_artifact(run_id: str, path: str, artifact_path: str | None = None) -> None:
    """Upload one local file to the run's artifacts."""
    RetryingClient().log_artifact(run_id, path, artifact_path)
