"""Classification metrics over a whole evaluation set."""

import numpy as np
import tensorflow as tf


def confusion_matrix(
    true_labels: np.ndarray, predicted_labels: np.ndarray, num_classes: int
) -> np.ndarray:
    """``(num_classes, num_classes)`` int64 counts: row = true class, column = predicted class."""
    return tf.math.confusion_matrix(
        true_labels, predicted_labels, num_classes=num_classes, dtype=tf.int64
    ).numpy()


def per_class_accuracy(matrix: np.ndarray) -> np.ndarray:
    """Recall of each class from a confusion matrix, ``(num_classes,)`` float64; NaN for an
    absent class."""
    totals = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.diag(matrix) / totals
