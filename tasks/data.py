"""Tasks that load, preprocess and record MNIST: ``tfnn.mnist`` plus a probe of the tfds
download host (offline, tfds retries for minutes) and the way out, in the command's flags,
when the source is missing; and the run's record of where its data came from."""

import json
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import get_dataset_source_from_json
from mlflow.data.http_dataset_source import HTTPDatasetSource
from mlflow.entities import Dataset, DatasetInput, InputTag, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from prefect import task
from prefect.cache_policies import NONE

from tasks.timeouts import DATA_TIMEOUT_ENV, timeout_seconds
from tfnn.errors import DataError, MissingSourceError
from tfnn.mnist import MnistArrays, load_dataset, tfds_builder
from tfnn.preprocessing import preprocess, validation_split

DATA_DIR_HINT = (
    "pass a local directory holding the four MNIST IDX files instead "
    "(--data-dir DIR or the TFNN_DATA_DIR environment variable)"
)
TFDS_HOST = "storage.googleapis.com"


def tfds_reachable(host: str = TFDS_HOST, port: int = 443, timeout: float = 3.0) -> bool:
    """True if a TCP connection to tfds' download host opens within `timeout` seconds."""
    ok = []

    def probe():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                ok.append(True)
        except OSError:
            pass

    # A thread bounds the DNS lookup too, which the socket timeout does not cover.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(ok)


def check_tfds_source(name: str, data_dir: str | Path | None = None):
    """The tfds builder of ``name`` if prepared or downloadable; else DataError (no download)."""
    builder = tfds_builder(name, data_dir)
    if not builder.is_prepared() and not tfds_reachable():
        raise DataError(
            f"tfds:{name}: tensorflow-datasets cannot download {name!r} "
            f"({TFDS_HOST} unreachable); {DATA_DIR_HINT}"
        )
    return builder


def load_source(source: str) -> MnistArrays:
    """``tfnn.mnist.load_dataset``, failing fast if tfds cannot download, naming the way out."""
    if source.startswith("tfds:") and source != "tfds:":
        check_tfds_source(source.removeprefix("tfds:"))
    try:
        return load_dataset(source)
    except MissingSourceError as error:
        raise DataError(f"{error}; {DATA_DIR_HINT}") from None


@dataclass(frozen=True, eq=False)
class PreparedData:
    """Model-ready splits: ``x`` float32 ``(n, 784)`` in [0, 1], ``y`` one-hot ``(n, 10)``.
    The validation split (empty without one) is the last examples of the training split."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    test_labels: np.ndarray
    test_images: np.ndarray
    source: str
    digest: str
    x_val: np.ndarray = field(default_factory=lambda: np.zeros((0, 784), np.float32))
    y_val: np.ndarray = field(default_factory=lambda: np.zeros((0, 10), np.float32))

    @property
    def validation(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(x_val, y_val)``, or None when no examples are held out."""
        return (self.x_val, self.y_val) if len(self.x_val) else None

    @property
    def evaluation_sets(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``tfnn.fit``'s ``evaluate``: ``val`` (if any examples are held out) and ``test``."""
        held_out = {"val": (self.x_val, self.y_val)} if len(self.x_val) else {}
        return held_out | {"test": (self.x_test, self.y_test)}

    @property
    def input_dim(self) -> int:
        return self.x_train.shape[1]

    @property
    def num_classes(self) -> int:
        return self.y_train.shape[1]


def _download_may_succeed_on_retry(task, task_run, state) -> bool:
    # Only a tfds download can fail transiently; a bad directory or an offline
    # machine fails the same way every time, so it fails at once.
    error = state.result(raise_on_failure=False)
    return (
        isinstance(error, DataError)
        and str(error).startswith("tfds:")
        and "unreachable" not in str(error)
    )


@task(
    retries=2,
    retry_delay_seconds=[5, 30],
    retry_condition_fn=_download_may_succeed_on_retry,
    timeout_seconds=timeout_seconds(DATA_TIMEOUT_ENV),
)
def load_data(source: str) -> MnistArrays:
    """MNIST as uint8 arrays from ``tfds:NAME`` or a directory of IDX files."""
    return load_source(source)


@task(cache_policy=NONE)
def prepare_data(arrays: MnistArrays, validation_fraction: float = 0.0) -> PreparedData:
    """Flatten, scale and one-hot as the notebook does, holding out the last
    ``validation_fraction`` of the training split."""
    x, y = preprocess(arrays.train_images, arrays.train_labels)
    x_test, y_test = preprocess(arrays.test_images, arrays.test_labels)
    # The held-out rows are the last ones: slices, not copies.
    kept = len(validation_split(len(x), validation_fraction)[0])
    return PreparedData(
        x[:kept],
        y[:kept],
        x_test,
        y_test,
        test_labels=arrays.test_labels,
        test_images=arrays.test_images,
        source=arrays.source,
        digest=arrays.digest(),
        x_val=x[kept:],
        y_val=y[kept:],
    )


VALIDATION_RULE = "last validation_fraction of the training split, whatever the seed"


def _dataset_source(source: str) -> DatasetSource:
    scheme, _, name = source.partition(":")
    if scheme == "tfds":
        # MLflow has no resolver for "tfds:NAME" and would raise.
        return HTTPDatasetSource(f"https://www.tensorflow.org/datasets/catalog/{name}")
    # By type: MLflow's two local-path resolvers warn it "can be interpreted in multiple ways".
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
            DatasetInput(Dataset(**dataset.to_dict()), [InputTag("mlflow.data.context", context)])
        )
    try:
        client.log_inputs(run_id, datasets=inputs)
    except MlflowException as error:
        # Two runs logging a new dataset at once race in MLflow's look-up-then-insert; the
        # loser is refused by the unique constraint, but the dataset exists by then.
        if "unique constraint" not in str(error).lower():
            raise
        client.log_inputs(run_id, datasets=inputs)
