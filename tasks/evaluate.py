"""The task that measures a trained network on the test set."""

from dataclasses import dataclass

import numpy as np
from prefect import task
from prefect.cache_policies import NONE

from tasks.config import CLASS_ACCURACY_PREFIX, InputError
from tasks.data import PreparedData, load_source
from tfnn.metrics import accuracy, confusion_matrix, per_class_accuracy
from tfnn.network import Sequential
from tfnn.preprocessing import preprocess
from tfnn.serialization import load_network


@dataclass(frozen=True, eq=False)
class Evaluation:
    """Test-set results (confusion rows are true classes) and the same weights' validation
    loss and accuracy (None without a validation split)."""

    test_loss: float
    test_accuracy: float
    predicted_labels: np.ndarray
    confusion: np.ndarray
    class_accuracy: np.ndarray
    val_loss: float | None = None
    val_accuracy: float | None = None

    def metrics(self) -> dict[str, float]:
        """Final metrics by MLflow name (``val/final_loss``..., ``test/class/<k>``)."""
        metrics = {}
        if self.val_loss is not None:
            metrics = {"val/final_loss": self.val_loss, "val/final_accuracy": self.val_accuracy}
        metrics |= {"test/final_loss": self.test_loss, "test/final_accuracy": self.test_accuracy}
        for k, value in enumerate(self.class_accuracy):
            metrics[f"{CLASS_ACCURACY_PREFIX}{k}"] = float(value)
        return metrics


@task(cache_policy=NONE)
def evaluate(network: Sequential, data: PreparedData) -> Evaluation:
    """``network``'s test and validation scores, measured once on the weights that are logged."""
    predicted = network.predict(data.x_test).numpy().argmax(axis=1)
    confusion = confusion_matrix(data.test_labels, predicted, data.num_classes)
    return Evaluation(
        test_loss=float(network.loss(data.x_test, data.y_test)),
        test_accuracy=accuracy(predicted, data.test_labels),
        predicted_labels=predicted,
        confusion=confusion,
        class_accuracy=per_class_accuracy(confusion),
        val_loss=float(network.loss(data.x_val, data.y_val)) if data.validation else None,
        val_accuracy=(
            accuracy(network.predict(data.x_val).numpy().argmax(axis=1), data.y_val.argmax(axis=1))
            if data.validation
            else None
        ),
    )


def evaluate_saved_network(weights_dir: str, data_source: str) -> tuple[float, float]:
    """Test loss and accuracy of the network in ``weights_dir`` (a run's ``weights/``) on
    ``data_source``; ``InputError`` if it does not fit the data's pixels and classes."""
    network = load_network(weights_dir)
    arrays = load_source(data_source)
    x, y = preprocess(arrays.test_images, arrays.test_labels)
    shape = (network.input_dim, int(network.layers[-1].w.shape[1]))
    if shape != (x.shape[1], y.shape[1]):
        raise InputError(
            f"{weights_dir}: the network maps {shape[0]} inputs to {shape[1]} outputs but "
            f"the data has {x.shape[1]} pixels and {y.shape[1]} classes"
        )
    return float(network.loss(x, y)), float(network.accuracy(x, y))
