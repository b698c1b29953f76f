"""The flows' handle on an MLflow run, and the tasks that log what a run produced.

Every call names its run explicitly (see ``tasks.runs`` why).
"""

import getpass
import math
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import mlflow
import mlflow.tensorflow
import numpy as np
import tensorflow as tf
from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric
from mlflow.environment_variables import MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL
from mlflow.exceptions import MlflowException
from mlflow.models import Model, infer_signature
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_USER
from prefect import get_client, get_run_logger, runtime, task
from prefect.artifacts import create_link_artifact
from prefect.cache_policies import NONE
from prefect.context import FlowRunContext
from prefect.exceptions import TerminationSignal
from prefect.utilities.urls import url_for

from tasks.config import MNIST_CLASSES, MNIST_PIXELS, TrainConfig
from tasks.data import PreparedData
from tasks.evaluate import Evaluation
from tasks.runs import code_version_tags, mlflow_run, mlflow_run_url
from tasks.timeouts import UPLOAD_TIMEOUT_ENV, timeout_seconds
from tfnn.names import parameter_count
from tfnn.network import Sequential
from tfnn.serialization import save_network, weights_digest
from tfnn.serving import GuardedNetwork
from tfnn.training import History, learning_failure

# Links between a run's two records: the Prefect flow run's UI page on the MLflow run, and
# the MLflow run's UI page on the Prefect flow run.
FLOW_RUN_URL_TAG = "prefect.flow_run_url"
FLOW_RUN_NAME_TAG = "prefect.flow_run_name"
ROOT_FLOW_RUN_TAG = "prefect.root_flow_run_id"

SYSTEM_METRICS_ENV = "TFNN_SYSTEM_METRICS"
_OFF = ("0", "false", "no", "off")
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
    tags: dict[str, str] | None = None,
    expected_seconds: float | None = None,
) -> Iterator[str]:
    """``tasks.runs.mlflow_run`` inside a Prefect flow run: the MLflow run is tagged with the
    flow run's id and name, and Ctrl-C or SIGTERM (Prefect's ``TerminationSignal``) ends it
    KILLED. A failure propagates, so that Prefect marks the flow run Failed (Crashed) too.
    The run is named after the flow run unless ``run_name`` says otherwise, and gets the
    user, the flow run's UI page and the code version (``run_context_tags``); the flow run
    gets a link to the run's UI page, and the run system metrics while it is open, sampled
    about ``SYSTEM_METRICS_SAMPLES`` times over ``expected_seconds`` (``sampling_interval``)."""
    tags = {
        **(tags or {}),
        MLFLOW_USER: user_name(),
        "prefect.flow_run_id": str(runtime.flow_run.id),
        FLOW_RUN_NAME_TAG: str(runtime.flow_run.name),
        **run_context_tags(),
    }
    with mlflow_run(
        params,
        experiment,
        tags,
        parent_run_id,
        run_name or str(runtime.flow_run.name),  # one name in both UIs
        resume_run_id,
        interruptions=(KeyboardInterrupt, TerminationSignal),
    ) as run_id:
        link_mlflow_run(run_id)
        # The run is active in this thread only to carry MLflow's system metrics monitor;
        # every call still names the run. nested: a subflow's run opens inside its parent's.
        with sampling_interval(expected_seconds):
            mlflow.start_run(
                run_id=run_id, nested=True, log_system_metrics=system_metrics_enabled()
            )
        try:
            yield run_id
        except BaseException:
            # mlflow_run sets the final status (KILLED or FAILED); if the tracking server is
            # away, the body's own error is the one worth reporting.
            with suppress(MlflowException):
                mlflow.end_run("FAILED")
            raise
        mlflow.end_run()


def system_metrics_enabled() -> bool:
    """MLflow samples the run's CPU, memory, disk and network (``system/*``, every
    ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` seconds) unless ``$TFNN_SYSTEM_METRICS`` is
    ``0``, ``false``, ``no`` or ``off``."""
    return os.environ.get(SYSTEM_METRICS_ENV, "1").strip().lower() not in _OFF


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


@task(cache_policy=NONE, timeout_seconds=timeout_seconds(UPLOAD_TIMEOUT_ENV))
def log_trained_model(
    run_id: str, network: Sequential, data: PreparedData, history: History
) -> str:
    """Log the final weights (architecture JSON + npz) and an MLflow tensorflow model with a
    signature and an input example, and tag the run with ``weights_digest`` and the epoch of
    lowest ``val_loss`` (``tfnn.best_epoch``); returns the model's URI."""
    client = MlflowClient()
    with tempfile.TemporaryDirectory() as tmp:
        client.log_artifacts(run_id, str(save_network(network, tmp)), "weights")
    client.set_tag(run_id, WEIGHTS_TAG, weights_digest(network))
    if history.best_epoch is not None:
        client.set_tag(run_id, BEST_EPOCH_TAG, str(history.best_epoch))
    # In the run's experiment: a logged model made without one lands in experiment 0.
    experiment_id = client.get_run(run_id).info.experiment_id
    # A resumed run keeps the model its first process logged, or finishes the one that
    # process had begun (stopped before it was READY): a run never holds two.
    earlier = client.search_logged_models([experiment_id], f"source_run_id = '{run_id}'")
    if ready := [m for m in earlier if m.status == LoggedModelStatus.READY]:
        return f"models:/{ready[0].model_id}"
    model = (
        earlier[0]
        if earlier
        else mlflow.initialize_logged_model(
            name="model", source_run_id=run_id, experiment_id=experiment_id
        )
    )
    # Saved and uploaded step by step rather than by Model.log, which also copies the run's
    # metrics of one step (the first batch's train/step_loss) onto the model: its metrics are
    # the final scores only, linked by log_evaluation.
    example = data.x_test[:5]
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.tensorflow.save_model(
            GuardedNetwork(network),  # refuses non-pixel input and over-long requests
            f"{tmp}/model",
            signature=infer_signature(example, network.predict(example).numpy()),
            input_example=example,
            pip_requirements=[f"tensorflow=={tf.__version__}", f"numpy=={np.__version__}"],
            mlflow_model=Model(
                artifact_path=model.artifact_location,
                run_id=run_id,
                model_id=model.model_id,
                model_uuid=model.model_id,
            ),
        )
        client.log_model_artifacts(model.model_id, f"{tmp}/model")
    outputs = client.get_run(run_id).outputs
    if model.model_id not in {o.model_id for o in (outputs.model_outputs if outputs else [])}:
        # The run's "Logged models"; the model is the one after its last update.
        output = LoggedModelOutput(model.model_id, step=len(history.step_loss))
        client.log_outputs(run_id, [output])
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    return f"models:/{model.model_id}"


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


def prefect_flow_run_url(flow_run_id: str) -> str | None:
    """The Prefect UI's page of a flow run, when a UI exists (``PREFECT_UI_URL``, which
    Prefect derives from ``PREFECT_API_URL``); None for a run without a server."""
    return url_for("flow-run", obj_id=flow_run_id)


def run_context_tags() -> dict[str, str]:
    """Tags for the MLflow run of the current flow run: its Prefect UI page (when there is a
    UI), the flow run that started it all (a retrain's or sweep's),
    and the code version (``tasks.runs.code_version_tags``)."""
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
    client = MlflowClient()
    experiment_id = client.get_run(run_id).info.experiment_id
    url = mlflow_run_url(mlflow.get_tracking_uri(), experiment_id, run_id)
    if url:
        create_link_artifact(
            url, link_text=f"MLflow run {run_id}", key="mlflow-run", description="The MLflow run"
        )
    return url
