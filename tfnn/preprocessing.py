"""From raw MNIST arrays to the network's input: scale, flatten, one-hot, hold out."""

import math

import numpy as np

from tfnn.errors import DataError
from tfnn.mnist import NUM_CLASSES


def preprocess(
    images: np.ndarray, labels: np.ndarray, num_classes: int = NUM_CLASSES
) -> tuple[np.ndarray, np.ndarray]:
    """Scale and flatten images, one-hot encode labels, as the notebook does.

    images (n, 28, 28) uint8 -> (n, 784) float32 in [0, 1]; labels (n,) int -> (n, 10) float32.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    if len(images) != len(labels):
        raise DataError(f"preprocess: {len(images)} images but {len(labels)} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"preprocess: labels span {labels.min()}-{labels.max()}, expected 0-{num_classes - 1}"
        )
    return flatten_and_scale(images), np.eye(num_classes, dtype=np.float32)[labels]


def validation_split(num_examples: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """``(train_rows, validation_rows)``: the last ``fraction`` of ``num_examples`` rows held out,
    as Keras' ``validation_split`` does (``floor(n * (1 - fraction))`` rows are kept for
    training). A pure function of the size and the fraction, never of a seed, so every run on
    the same data holds out the same examples."""
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    kept = math.floor(num_examples * (1 - fraction))
    return np.arange(kept), np.arange(kept, num_examples)


def flatten_and_scale(images: np.ndarray) -> np.ndarray:
    """images (n, 28, 28) uint8 -> (n, 784) float32 in [0, 1], the network's input."""
    images = np.asarray(images)
    return images.reshape(len(images), -1).astype(np.float32) / np.float32(255)
