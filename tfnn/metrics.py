"""Classification metrics over a whole evaluation set."""

import numpy as np
import tensorflow as tf


def correct_predictions(scores: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """int32 count of the rows whose arg-max of ``scores`` ``(n, classes)`` is the arg-max of
    the one-hot ``target`` ``(n, classes)``. The arg-max of the logits is that of every
    monotone output activation, so ``scores`` may be either; runs inside ``tf.function``."""
    hits = tf.equal(tf.argmax(scores, axis=1), tf.argmax(target, axis=1))
    return tf.reduce_sum(tf.cast(hits, tf.int32))


def accuracy(predicted_labels: np.ndarray, true_labels: np.ndarray) -> float:
    """Share of the predicted labels ``(n,)`` equal to the true labels ``(n,)``, in float64
    (a float32 mean would differ in the 8th digit from the share the counts give)."""
    return float(np.mean(np.asarray(predicted_labels) == np.asarray(true_labels)))


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
