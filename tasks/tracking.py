"""MLflow tracking for a training run, always addressed by explicit run id.

MLflow's "active run" lives in a thread-local, and Prefect runs each task in a
worker thread, so nothing here relies on it: the flow opens the run, passes the
run id to every task, and every call goes through an ``MlflowClient``.

Logging survives tracking-server outages: every call that is safe to repeat goes
through ``RetryingClient``, which retries refused connections and 5xx replies with
backoff for up to ``$TFNN_TRACKING_RETRY_SECONDS`` (default 300).
"""

import json
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

import mlflow
import numpy as np
import tensorflow as tf
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import get_dataset_source_from_json
from mlflow.data.http_dataset_source import HTTPDatasetSource
from mlflow.entities import DatasetInput, InputTag, Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from prefect import runtime, task
from prefect.cache_policies import NONE
from prefect.exceptions import TerminationSignal

from tasks.data import PreparedData
from tasks.evaluate import Evaluation
from tfnn.network import Sequential
from tfnn.serialization import TrainingCheckpoint, save_network, weights_digest
from tfnn.training import EarlyStopping, History

# MLflow's own retries back off up to two minutes per attempt (about four minutes on a
# refused connection), which would outlast any budget of ours: keep two quick ones and
# let RetryingClient wait, unless the user chose otherwise.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
RETRY_SECONDS_ENV = "TFNN_TRACKING_RETRY_SECONDS"
DEFAULT_RETRY_SECONDS = 300.0
LIBRARIES = ("tensorflow", "numpy", "prefect", "mlflow")
WEIGHTS_TAG = "tfnn.weights_sha256"
T = TypeVar("T")

# Per-step losses are logged at most this many times an epoch, in the same batch as the
# epoch's metrics, so tracking cost stays flat however many steps an epoch has.
STEP_LOSS_POINTS_PER_EPOCH = 100
ERROR_TAG = "tfnn.error"
BEST_EPOCH_TAG = "tfnn.best_epoch"
VALIDATION_RULE = "last validation_fraction of the training split, whatever the seed"


def one_line(error: BaseException) -> str:
    """``Type: message`` on one line."""
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


class TrackingUnavailableError(ConnectionError):
    """The tracking server kept failing for the whole retry budget."""


class ResumeError(ValueError):
    """A run cannot be resumed: it is finished, or was started with other params."""


def _transient(error: MlflowException) -> bool:
    # MLflow reports a refused connection as INTERNAL_ERROR (HTTP 500), like a 5xx reply.
    status = error.get_http_status_code()
    return status >= 500 or status == 429


def retry_seconds() -> float:
    """``$TFNN_TRACKING_RETRY_SECONDS`` (default 300); ``ValueError`` unless a number >= 0."""
    text = os.environ.get(RETRY_SECONDS_ENV, str(DEFAULT_RETRY_SECONDS))
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds < math.inf:
        raise ValueError(f"{RETRY_SECONDS_ENV}={text!r}: expected a number of seconds >= 0")
    return seconds


def retry_tracking(call: Callable[[], T]) -> T:
    """Run ``call`` (MLflow requests that are safe to repeat), retrying transient failures
    with backoff (0.5 s doubling to 10 s) for up to ``$TFNN_TRACKING_RETRY_SECONDS``."""
    budget = retry_seconds()
    deadline, delay = time.monotonic() + budget, 0.5
    while True:
        try:
            return call()
        except MlflowException as error:
            if not _transient(error):
                raise
            if time.monotonic() + delay > deadline:
                raise TrackingUnavailableError(
                    f"MLflow tracking at {mlflow.get_tracking_uri()} still failing after "
                    f"{budget:g} s ({one_line(error)}); set {RETRY_SECONDS_ENV} to wait longer"
                ) from error
            time.sleep(delay)
            delay = min(2 * delay, 10.0)


class RetryingClient:
    """An ``MlflowClient`` whose every method call goes through ``retry_tracking``: use it for
    logging, never to create runs or experiments (a retry could create two)."""

    def __init__(self) -> None:
        self._client = MlflowClient()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._client, name)
        return lambda *args, **kwargs: retry_tracking(lambda: method(*args, **kwargs))


def library_versions() -> dict[str, str]:
    """The versions a run depends on, as MLflow params ``version.<library>``."""
    versions = {"python": platform.python_version()}
    versions |= {name: version(name) for name in LIBRARIES}
    return {f"version.{name}": value for name, value in versions.items()}


def check_resumable(run: Run, params: dict[str, str]) -> None:
    """Raise ``ResumeError`` if ``run`` finished or holds a param that differs from ``params``."""
    run_id, held = run.info.run_id, run.data.params
    if run.info.status == "FINISHED":
        raise ResumeError(f"run {run_id} already finished; start a new run instead")
    differ = [f"{k}={held[k]} (now {v})" for k, v in params.items() if held.get(k, v) != v]
    if differ:
        raise ResumeError(
            f"run {run_id} was started with {', '.join(differ)}; "
            "resume it with the same configuration and library versions"
        )


def _reopen(
    client: MlflowClient, run_id: str, params: dict[str, str], tags: dict[str, str]
) -> dict[str, str]:
    """Set a resumable run RUNNING again; returns the params it does not hold yet."""
    run = client.get_run(run_id)
    check_resumable(run, params)
    if ERROR_TAG in run.data.tags:
        client.delete_tag(run_id, ERROR_TAG)
    client.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])
    client.update_run(run_id, status="RUNNING")
    return {key: value for key, value in params.items() if key not in run.data.params}


@contextmanager
def tracked_run(
    params: dict[str, str],
    experiment: str,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    resume_run_id: str | None = None,
) -> Iterator[str]:
    """Open an MLflow run holding ``params`` (``TrainConfig.as_params()``) and the library
    versions; yield its id. With ``resume_run_id``, reopen that run instead (RUNNING again),
    refusing if it finished or its params differ.

    The run ends FINISHED only if the body completes; on any exception it ends
    FAILED (KILLED on Ctrl-C or SIGTERM, noted on the exception) with the reason in the
    ``tfnn.error`` tag, and the exception propagates so that Prefect marks the flow run
    Failed (Crashed) too.
    """
    client = MlflowClient()
    params = {**params, **library_versions()}
    tags = {
        "prefect.flow_run_id": str(runtime.flow_run.id),
        "prefect.flow_run_name": str(runtime.flow_run.name),
    }
    if resume_run_id:
        run_id, params = resume_run_id, _reopen(client, resume_run_id, params, tags)
    else:
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
    try:
        client.log_batch(run_id, params=[Param(key, value) for key, value in params.items()])
        yield run_id
    except BaseException as error:
        # Ctrl-C, or SIGTERM (Prefect turns it into TerminationSignal during a flow run).
        interrupted = isinstance(error, (KeyboardInterrupt, TerminationSignal))
        # The tracking server may be why the run failed: then the run stays RUNNING there,
        # to be resumed, and the original error is the one worth reporting.
        with suppress(MlflowException):
            client.set_tag(run_id, ERROR_TAG, "interrupted" if interrupted else one_line(error))
            client.set_terminated(run_id, "KILLED" if interrupted else "FAILED")
            if interrupted:  # the command's last line names the runs it killed
                error.add_note(
                    f"MLflow run {run_id} KILLED, continue it with tfnn train --resume {run_id}"
                )
        raise
    RetryingClient().set_terminated(run_id, "FINISHED")


def _dataset_source(source: str) -> DatasetSource:
    """MLflow's record of where the data came from: a tfds catalog page or a local directory."""
    scheme, _, name = source.partition(":")
    if scheme == "tfds":
        # MLflow has no resolver for "tfds:NAME" and would raise.
        return HTTPDatasetSource(f"https://www.tensorflow.org/datasets/catalog/{name}")
    # Built by type, not resolved from the string: MLflow registers two resolvers for local
    # paths and warns that the source "can be interpreted in multiple ways".
    return get_dataset_source_from_json(json.dumps({"uri": Path(source).as_uri()}), "local")


@task(cache_policy=NONE)
def log_dataset(run_id: str, data: PreparedData, num_parameters: int) -> None:
    """Record the data source, its digest and the parameter count, and the dataset as an input."""
    client = RetryingClient()
    client.log_batch(
        run_id,
        params=[
            Param("num_parameters", str(num_parameters)),
            Param("data_digest", data.digest),
            Param("num_train_examples", str(len(data.x_train))),
            Param("num_test_examples", str(len(data.x_test))),
            Param("num_validation_examples", str(len(data.x_val))),
            Param("validation_rule", VALIDATION_RULE),
        ],
    )
    inputs = []
    splits = {"training": (data.x_train, data.y_train)}
    if data.validation:
        splits["validation"] = data.validation
    splits["testing"] = (data.x_test, data.y_test)
    for context, (x, y) in splits.items():
        dataset = mlflow.data.from_numpy(
            x, targets=y, source=_dataset_source(data.source), name=f"{data.source}:{context}"
        )
        inputs.append(
            DatasetInput(dataset._to_mlflow_entity(), [InputTag("mlflow.data.context", context)])
        )
    try:
        client.log_inputs(run_id, datasets=inputs)
    except MlflowException as error:
        # MLflow's store looks a dataset up and then inserts it, so two runs logging a new
        # dataset at once (a sweep's configurations) race, and the loser's whole request is
        # refused by the unique constraint. By then the dataset exists: once more links it.
        if "unique constraint" not in str(error).lower():
            raise
        client.log_inputs(run_id, datasets=inputs)


class EpochLogger:
    """A ``tfnn.fit`` callback that tracks each epoch without slowing training down.

    After each epoch it snapshots the weights (a fast copy) and hands the rest to one
    background thread, in order: write a ``TrainingCheckpoint`` of the snapshot, log
    the epoch's metrics (``step=epoch``) with a sample of its step losses in one
    batch, and upload the checkpoint. Use it as a context manager: leaving waits for
    the queue, so every completed epoch is on disk and in MLflow, and re-raises the
    first tracking error (unless training itself already failed). With ``early_stopping``
    each checkpoint also holds its state, and ``resume`` restores it with the best epoch's
    weights (from that epoch's checkpoint).

    That order makes a crash recoverable by ``resume``: a local checkpoint may hold
    epochs whose metrics never reached MLflow (they are logged then), and an uploaded
    checkpoint may lag the metrics (those epochs are retrained but not logged again).
    """

    def __init__(
        self,
        run_id: str,
        network: Sequential,
        checkpoint_dir: str | Path,
        steps_per_epoch: int,
        early_stopping: EarlyStopping | None = None,
    ):
        self.client = RetryingClient()
        self.run_id = run_id
        self.network = network
        self.early_stopping = early_stopping
        self.history = History()
        self.logged_epochs = 0
        self.steps_per_epoch = steps_per_epoch
        self.stride = max(1, steps_per_epoch // STEP_LOSS_POINTS_PER_EPOCH)
        # The background thread checkpoints this twin, so training can go on
        # changing the real weights meanwhile.
        self._snapshot = Sequential.from_spec(network.spec())
        self.checkpoint = TrainingCheckpoint(self._snapshot, checkpoint_dir)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tfnn-tracking")
        self._pending: list[Future] = []
        self._tracking_failed = False

    def __enter__(self) -> "EpochLogger":
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        self._worker.shutdown(wait=True)
        if error_type is None:
            for done in self._pending:
                self._result(done)

    def __call__(self, epoch: int, metrics: dict[str, float], network: Sequential) -> None:
        for done in self._pending:
            if done.done():
                self._result(done)
        weights = [w.numpy() for w in network.all_weights]
        history = History(**{name: list(values) for name, values in vars(self.history).items()})
        stopping = self.early_stopping.state() if self.early_stopping else None
        self._pending.append(
            self._worker.submit(self._log_epoch, epoch, metrics, weights, history, stopping)
        )

    def resume(self) -> int:
        """Load the run's newest checkpoint into the network and ``history`` (from the
        checkpoint directory, else from the run's ``checkpoints/`` artifacts) and log the
        restored epochs MLflow lacks; returns how many epochs are complete (0: none)."""
        if tf.train.latest_checkpoint(self.checkpoint.directory) is None:
            self._download_checkpoint()
            # A new manager, since a manager reads the directory's state once, when made.
            self.checkpoint = TrainingCheckpoint(self._snapshot, self.checkpoint.directory)
        epoch, self.history = self.checkpoint.restore_latest()
        for variable, restored in zip(self.network.all_weights, self._snapshot.all_weights):
            variable.assign(restored)
        if self.early_stopping and epoch:
            self._resume_early_stopping()
        logged = self.client.get_metric_history(self.run_id, "train_loss")
        self.logged_epochs = max((metric.step for metric in logged), default=0)
        for missing in range(self.logged_epochs + 1, epoch + 1):
            self._log_metrics(missing, self.history.epoch_metrics(missing), self.history)
        self.logged_epochs = max(self.logged_epochs, epoch)
        if epoch:  # the crash may have come before this checkpoint's upload
            self._upload(epoch, self.checkpoint.manager.latest_checkpoint)
        return epoch

    def _resume_early_stopping(self) -> None:
        state = self.checkpoint.early_stopping_state()
        best, weights = int(state["best_epoch"]), None
        if self.early_stopping.restore_best and best:
            weights = self.checkpoint.weights_of(best)
            if weights is None:
                self._download_checkpoint(best)
                weights = self.checkpoint.weights_of(best)
            if weights is None:
                raise ResumeError(
                    f"run {self.run_id}: the checkpoint of its best epoch {best} is neither in "
                    f"{self.checkpoint.directory} nor in its artifacts; it cannot restore it"
                )
        self.early_stopping.load_state(state, weights)

    def _result(self, done: Future) -> None:
        try:
            done.result()
        except TrackingUnavailableError as error:
            raise TrackingUnavailableError(
                f"{error}; the checkpoints are kept in {self.checkpoint.directory}: "
                f"continue with tfnn train --resume {self.run_id}"
            ) from error

    def _log_epoch(
        self,
        epoch: int,
        metrics: dict[str, float],
        weights: list[np.ndarray],
        history: History,
        stopping: dict[str, float] | None,
    ) -> None:
        for variable, value in zip(self._snapshot.all_weights, weights):
            variable.assign(value)
        prefix = self.checkpoint.save(epoch, history, stopping)
        # After a tracking failure, epochs still queued are only checkpointed: the failure
        # is reported once, without waiting out the retries again, and resume logs the rest.
        if self._tracking_failed:
            return
        try:
            if epoch > self.logged_epochs:
                self._log_metrics(epoch, metrics, history)
            self._upload(epoch, prefix)
        except Exception:
            self._tracking_failed = True
            raise

    def _log_metrics(self, epoch: int, metrics: dict[str, float], history: History) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(name, value, now, epoch) for name, value in metrics.items()]
        first_step = (epoch - 1) * self.steps_per_epoch
        losses = history.step_loss[first_step : first_step + self.steps_per_epoch]
        batch += [
            Metric("step_loss", losses[i], now, first_step + i)
            for i in range(0, len(losses), self.stride)
        ]
        self.client.log_batch(self.run_id, metrics=batch)

    def _upload(self, epoch: int, prefix: str) -> None:
        # The state file goes last: an uploaded folder that holds it is complete.
        prefix = Path(prefix)
        for path in [*sorted(prefix.parent.glob(prefix.name + ".*")), prefix.parent / "checkpoint"]:
            self.client.log_artifact(self.run_id, str(path), f"checkpoints/epoch-{epoch:03d}")

    def _download_checkpoint(self, epoch: int | None = None) -> None:
        """Copy the newest complete uploaded checkpoint (or that of ``epoch``) into the
        checkpoint directory; an older epoch's leaves the directory's state file alone."""
        folders = [f.path for f in self.client.list_artifacts(self.run_id, "checkpoints")]
        if epoch is not None:
            folders = [folder for folder in folders if folder.endswith(f"epoch-{epoch:03d}")]
        for folder in sorted(folders, reverse=True):
            if any(
                Path(f.path).name == "checkpoint"
                for f in self.client.list_artifacts(self.run_id, folder)
            ):
                with tempfile.TemporaryDirectory() as tmp:
                    local = self.client.download_artifacts(self.run_id, folder, tmp)
                    ignore = shutil.ignore_patterns("checkpoint") if epoch else None
                    shutil.copytree(
                        local, self.checkpoint.directory, dirs_exist_ok=True, ignore=ignore
                    )
                return


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
