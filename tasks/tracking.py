"""MLflow tracking for a training run, always addressed by explicit run id.

MLflow's "active run" lives in a thread-local, and Prefect runs each task in a
worker thread, so nothing here relies on it: the flow opens the run, passes the
run id to every task, and every call goes through an ``MlflowClient``.
"""

import json
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import mlflow
import numpy as np
import tensorflow as tf
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import get_dataset_source_from_json
from mlflow.data.http_dataset_source import HTTPDatasetSource
from mlflow.entities import DatasetInput, InputTag, Metric, Param
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from prefect import runtime, task
from prefect.cache_policies import NONE

from tasks.data import PreparedData
from tasks.evaluate import Evaluation
from tfnn.network import Sequential
from tfnn.serialization import TrainingCheckpoint, save_network
from tfnn.training import History

# Per-step losses are logged at most this many times an epoch, in the same batch as the
# epoch's metrics, so tracking cost stays flat however many steps an epoch has.
STEP_LOSS_POINTS_PER_EPOCH = 100
ERROR_TAG = "tfnn.error"


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


@contextmanager
def tracked_run(
    params: dict[str, str],
    experiment: str,
    parent_run_id: str | None = None,
    run_name: str | None = None,
) -> Iterator[str]:
    """Open an MLflow run holding ``params`` (``TrainConfig.as_params()``); yield its id.

    The run ends FINISHED only if the body completes; on any exception it ends
    FAILED (KILLED on Ctrl-C) with the reason in the ``tfnn.error`` tag, and the
    exception propagates so that Prefect marks the flow run Failed too.
    """
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    tags = {
        "prefect.flow_run_id": str(runtime.flow_run.id),
        "prefect.flow_run_name": str(runtime.flow_run.name),
    }
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
    try:
        client.log_batch(run_id, params=[Param(key, value) for key, value in params.items()])
        yield run_id
    except KeyboardInterrupt:
        client.set_tag(run_id, ERROR_TAG, "interrupted")
        client.set_terminated(run_id, "KILLED")
        raise
    except BaseException as error:
        client.set_tag(run_id, ERROR_TAG, _one_line(error))
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")


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
    client = MlflowClient()
    client.log_batch(
        run_id,
        params=[
            Param("num_parameters", str(num_parameters)),
            Param("data_digest", data.digest),
            Param("num_train_examples", str(len(data.x_train))),
            Param("num_test_examples", str(len(data.x_test))),
        ],
    )
    inputs = []
    for context, (x, y) in (
        ("training", (data.x_train, data.y_train)),
        ("testing", (data.x_test, data.y_test)),
    ):
        dataset = mlflow.data.from_numpy(
            x, targets=y, source=_dataset_source(data.source), name=f"{data.source}:{context}"
        )
        inputs.append(
            DatasetInput(dataset._to_mlflow_entity(), [InputTag("mlflow.data.context", context)])
        )
    client.log_inputs(run_id, datasets=inputs)


class EpochLogger:
    """A ``tfnn.fit`` callback that tracks each epoch without slowing training down.

    After each epoch it snapshots the weights (a fast copy) and hands the rest to one
    background thread, in order: write a ``TrainingCheckpoint`` of the snapshot, log
    the epoch's metrics (``step=epoch``) with a sample of its step losses in one
    batch, and upload the checkpoint. Use it as a context manager: leaving waits for
    the queue, so every completed epoch is on disk and in MLflow, and re-raises the
    first tracking error (unless training itself already failed).
    """

    def __init__(
        self,
        run_id: str,
        network: Sequential,
        checkpoint_dir: str | Path,
        history: History,
        steps_per_epoch: int,
    ):
        self.client = MlflowClient()
        self.run_id = run_id
        self.history = history
        self.steps_per_epoch = steps_per_epoch
        self.stride = max(1, steps_per_epoch // STEP_LOSS_POINTS_PER_EPOCH)
        # The background thread checkpoints this twin, so training can go on
        # changing the real weights meanwhile.
        self._snapshot = Sequential.from_spec(network.spec())
        self.checkpoint = TrainingCheckpoint(self._snapshot, checkpoint_dir)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tfnn-tracking")
        self._pending: list[Future] = []

    def __enter__(self) -> "EpochLogger":
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        self._worker.shutdown(wait=True)
        if error_type is None:
            for done in self._pending:
                done.result()

    def __call__(self, epoch: int, metrics: dict[str, float], network: Sequential) -> None:
        for done in self._pending:
            if done.done() and done.exception() is not None:
                raise done.exception()
        weights = [w.numpy() for w in network.all_weights]
        history = History(**{name: list(values) for name, values in vars(self.history).items()})
        self._pending.append(self._worker.submit(self._log_epoch, epoch, metrics, weights, history))

    def _log_epoch(
        self, epoch: int, metrics: dict[str, float], weights: list[np.ndarray], history: History
    ) -> None:
        for variable, value in zip(self._snapshot.all_weights, weights):
            variable.assign(value)
        prefix = Path(self.checkpoint.save(epoch, history))
        now = int(time.time() * 1000)
        batch = [Metric(name, value, now, epoch) for name, value in metrics.items()]
        first_step = (epoch - 1) * self.steps_per_epoch
        losses = history.step_loss[first_step:]
        batch += [
            Metric("step_loss", losses[i], now, first_step + i)
            for i in range(0, len(losses), self.stride)
        ]
        self.client.log_batch(self.run_id, metrics=batch)
        for path in [prefix.parent / "checkpoint", *prefix.parent.glob(prefix.name + ".*")]:
            self.client.log_artifact(self.run_id, str(path), f"checkpoints/epoch-{epoch:03d}")


@task(cache_policy=NONE)
def log_trained_model(run_id: str, network: Sequential, data: PreparedData) -> str:
    """Log the final weights (architecture JSON + npz) and an MLflow tensorflow model with a
    signature and an input example; returns the model's URI."""
    client = MlflowClient()
    with tempfile.TemporaryDirectory() as tmp:
        client.log_artifacts(run_id, str(save_network(network, tmp)), "weights")
    example = data.x_test[:5]
    info = mlflow.tensorflow.log_model(
        network,
        name="model",
        run_id=run_id,
        signature=infer_signature(example, network(example).numpy()),
        input_example=example,
        pip_requirements=[f"tensorflow=={tf.__version__}", f"numpy=={np.__version__}"],
    )
    return info.model_uri


@task(cache_policy=NONE)
def log_evaluation(run_id: str, evaluation: Evaluation, plot_paths: list[str]) -> None:
    """Log the final test metrics, the confusion matrix and the plots."""
    client = MlflowClient()
    now = int(time.time() * 1000)
    client.log_batch(
        run_id, metrics=[Metric(k, v, now, 0) for k, v in evaluation.metrics().items()]
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
    MlflowClient().log_artifact(run_id, path, artifact_path)
