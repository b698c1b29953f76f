"""The flows' handle on an MLflow run, and the tasks that log what a run produced.

Every call names its run explicitly (see ``tasks.runs`` why).
"""

import getpass
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import mlflow
import mlflow.tensorflow
import numpy as np
from mlflow.entities import Metric, Param
from mlflow.environment_variables import MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_USER
from prefect import get_client, get_run_logger, runtime, task
from prefect.artifacts import create_link_artifact
from prefect.cache_policies import NONE
from prefect.context import FlowRunContext
from prefect.exceptions import TerminationSignal
from prefect.utilities.urls import url_for

from tasks.config import MNIST_CLASSES, MNIST_PIXELS, TrainConfig, one_line
from tasks.data import PreparedData
from tasks.evaluate import Evaluation
from tasks.runs import (
    ERROR_TAG,
    code_version_tags,
    library_versions,
    mlflow_run_url,
    quick_mlflow,
    reopen,
)
from tfnn.names import parameter_count
from tfnn.training import History, learning_failure

# Links between a run's two records: the Prefect flow run's UI page on the MLflow run, and
# the MLflow run's UI page on the Prefect flow run.
FLOW_RUN_URL_TAG = "prefect.flow_run_url"
FLOW_RUN_NAME_TAG = "prefect.flow_run_name"
ROOT_FLOW_RUN_TAG = "prefect.root_flow_run_id"

SYSTEM_METRICS_ENV = "TFNN_SYSTEM_METRICS"
_OFF = ("0", "false", "no", "off")
WARNING_TAG = "tfnn.warning"


@contextmanager
def tracked_run(
    params: dict[str, str],
    experiment: str,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    resume_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    expected_seconds: float | None = None,
) -> Iterator[str]:
    """Open an MLflow run for the current Prefect flow run (or reopen ``resume_run_id``) and
    yield its id. It holds ``params`` and the library versions, is named after the flow run,
    tagged with the user, both runs' links and the code version, and samples system metrics
    about ``SYSTEM_METRICS_SAMPLES`` times over ``expected_seconds``. It ends FINISHED if the
    body completes; else FAILED, or KILLED on Ctrl-C or SIGTERM (Prefect's
    ``TerminationSignal``), with the reason in ``tfnn.error``; the exception propagates."""
    client = MlflowClient()
    params = {**params, **library_versions()}
    tags = {
        **(tags or {}),
        MLFLOW_USER: user_name(),  # MLflow's own lookup fails on a uid with no passwd entry
        "prefect.flow_run_id": str(runtime.flow_run.id),
        FLOW_RUN_NAME_TAG: str(runtime.flow_run.name),
        **run_context_tags(),
    }
    if resume_run_id:
        experiment_id, params = reopen(client, resume_run_id, params)
    else:
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    # Active in this thread only to carry MLflow's system metrics monitor; every call still
    # names its run. nested: a subflow's run opens inside its parent's.
    with sampling_interval(expected_seconds):
        run_id = mlflow.start_run(
            run_id=resume_run_id,
            experiment_id=None if resume_run_id else experiment_id,
            run_name=None if resume_run_id else run_name or str(runtime.flow_run.name),
            nested=True,
            parent_run_id=parent_run_id,
            tags=tags,
            log_system_metrics=os.environ.get(SYSTEM_METRICS_ENV, "1").lower() not in _OFF,
        ).info.run_id
    try:
        client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
        link_mlflow_run(run_id, experiment_id)
        yield run_id
    except BaseException as error:
        end_failed_run(client, run_id, error)
        raise
    mlflow.end_run()


def end_failed_run(client: MlflowClient, run_id: str, error: BaseException) -> None:
    """End run ``run_id`` FAILED with ``error`` in ``tfnn.error``, or KILLED if Ctrl-C or
    SIGTERM (Prefect's ``TerminationSignal``) stopped it, noting that on ``error``."""
    interrupted = isinstance(error, KeyboardInterrupt | TerminationSignal)
    # The tracking server may be why the run failed (MLflow's retries are spent): then one
    # quick try each, not another round of retries. If it stays away, the run stays RUNNING
    # there, to be resumed, and the original error is the one worth reporting.
    quick = isinstance(error, MlflowException)
    with quick_mlflow(quick):
        try:
            client.set_tag(run_id, ERROR_TAG, "interrupted" if interrupted else one_line(error))
        except MlflowException:
            quick = True
    # Off this thread's run stack in any case: MLflow's exit hook ends a run left there as
    # FINISHED. ``end_run`` takes it off before it asks the server.
    with suppress(MlflowException), quick_mlflow(quick):
        mlflow.end_run("KILLED" if interrupted else "FAILED")
    if interrupted:  # the command's last line names the runs it killed
        error.add_note(f"MLflow run {run_id} KILLED, continue it with tfnn train --resume {run_id}")


SYSTEM_METRICS_SAMPLES = 60
SAMPLING_INTERVAL_BOUNDS = (1.0, 10.0)  # seconds; MLflow's default is the upper one


# How long a run takes on a 2-core CPU, roughly (benchmarks/weight.py's machine): a fixed
# part (start-up, evaluation, upload) and, per SGD step, 2 ms plus its multiply-adds.
RUN_OVERHEAD_SECONDS, STEP_SECONDS, FLOP_PER_SECOND = 20.0, 0.002, 3e10
MNIST_TRAIN_EXAMPLES = 60_000  # the most a source here holds; the data is not loaded yet


def expected_run_seconds(config: TrainConfig) -> float:
    """A rough length of a run of ``config`` on a full MNIST training split."""
    steps = config.epochs * math.ceil(MNIST_TRAIN_EXAMPLES / config.batch_size)
    flop = 6 * config.batch_size * parameter_count(config.layer_sizes(MNIST_PIXELS, MNIST_CLASSES))
    return RUN_OVERHEAD_SECONDS + steps * (STEP_SECONDS + flop / FLOP_PER_SECOND)


@contextmanager
def sampling_interval(expected_seconds: float | None) -> Iterator[None]:
    """While MLflow starts a run's system metrics monitor, sample about
    ``SYSTEM_METRICS_SAMPLES`` times over ``expected_seconds``, within
    ``SAMPLING_INTERVAL_BOUNDS``; ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``, when set, wins."""
    if expected_seconds is None or MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL.is_set():
        yield
        return
    low, high = SAMPLING_INTERVAL_BOUNDS
    mlflow.set_system_metrics_sampling_interval(
        min(max(expected_seconds / SYSTEM_METRICS_SAMPLES, low), high)
    )
    try:
        yield
    finally:
        mlflow.set_system_metrics_sampling_interval(None)


def user_name() -> str:
    """Who runs this, as MLflow's own runs record it (``mlflow.user``)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container's uid with no passwd entry
        return "unknown"


def tag_flow_run(**labels: str) -> None:
    """Tag the current Prefect flow run ``name:value`` for each label, and with what started
    the run it belongs to (``trigger:cli``, ``trigger:schedule``, ``trigger:data-event`` or
    ``trigger:manual``, a deployment run started by hand), so that the flow runs page filters
    by them."""
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(runtime.flow_run.id)
        root = (
            run
            if run.parent_task_run_id is None
            else client.read_flow_run(runtime.flow_run.root_flow_run_id)
        )
        if root.parameters.get("data_event_id"):
            trigger = "data-event"
        elif root.deployment_id is None:
            trigger = "cli"
        else:
            trigger = "schedule" if root.auto_scheduled else "manual"
        tags = {*run.tags, f"trigger:{trigger}", *(f"{k}:{v}" for k, v in labels.items())}
        client.update_flow_run(run.id, tags=sorted(tags))


@task(cache_policy=NONE)
def flag_if_not_learning(run_id: str, history: History, data: PreparedData) -> str | None:
    """If the run learned nothing (``tfnn.training.learning_failure``, chance being the share
    of the commonest training class), tag it ``tfnn.warning`` and log a warning; returns
    the reason, or None."""
    chance = float(np.max(np.mean(data.y_train, axis=0)))
    reason = learning_failure(history, chance)
    if reason is not None:
        reason = f"run {run_id} did not learn: {reason}"
        MlflowClient().set_tag(run_id, WARNING_TAG, reason)
        get_run_logger().warning(reason)
    return reason


@task(cache_policy=NONE)
def log_evaluation(
    run_id: str, evaluation: Evaluation, plot_paths: list[str], model_uri: str
) -> None:
    """Log the final scores (those a resumed run does not hold yet), linked to the logged
    model ``model_uri`` (``models:/m-...``) as well, so that MLflow's *Models* view ranks
    models by them; then the confusion matrix and the plots."""
    client = MlflowClient()
    held = client.get_run(run_id).data.metrics
    now = int(time.time() * 1000)
    model_id = model_uri.removeprefix("models:/")
    finals = [
        Metric(k, v, now, 0, model_id=model_id)
        for k, v in evaluation.metrics().items()
        if k not in held
    ]
    client.log_batch(run_id, metrics=finals)
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
    MlflowClient().log_artifact(run_id, path, artifact_path)


def run_context_tags() -> dict[str, str]:
    """Tags for the MLflow run of the current flow run: its Prefect UI page (when there is a
    UI), the flow run that started it all (a retrain's or sweep's),
    and the code version (``tasks.runs.code_version_tags``)."""
    flow_run_id = str(runtime.flow_run.id)
    tags = {ROOT_FLOW_RUN_TAG: str(runtime.flow_run.root_flow_run_id)}
    if url := url_for("flow-run", obj_id=flow_run_id):  # None without a UI
        tags[FLOW_RUN_URL_TAG] = url
    context = FlowRunContext.get()
    entry_point = (
        f"{context.flow.fn.__module__}:{context.flow.fn.__name__}" if context else "unknown"
    )
    return tags | code_version_tags(entry_point)


def link_mlflow_run(run_id: str, experiment_id: str) -> None:
    """On the current flow run, a link artifact to MLflow run ``run_id``'s UI page, when the
    tracking URI is a server with a UI."""
    if url := mlflow_run_url(mlflow.get_tracking_uri(), experiment_id, run_id):
        create_link_artifact(
            url, link_text=f"MLflow run {run_id}", key="mlflow-run", description="The MLflow run"
        )
