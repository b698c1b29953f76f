"""Tasks that load and preprocess MNIST."""

from dataclasses import dataclass, field

import numpy as np
from prefect import task
from prefect.cache_policies import NONE

from tasks.data_source import load_source
from tasks.timeouts import DATA_TIMEOUT_ENV, timeout_seconds
from tfnn.errors import DataError
from tfnn.mnist import MnistArrays
from tfnn.preprocessing import preprocess, validation_split


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
