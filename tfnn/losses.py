"""Loss functions. Every loss takes ``(y_pred, y_true)`` in that order, as the notebook does.

``y_pred`` and ``y_true`` have the same shape: ``(classes,)`` for one example or
``(batch, classes)`` for a batch. Each returns a float32 scalar, averaged over the batch.
"""

from collections.abc import Callable

import tensorflow as tf

from tfnn.names import check_name

Loss = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]

# The notebook's guard against log(0); kept so cross_entropy_error reproduces its values.
_LOG_EPSILON = 1e-7


def _as_batch(y_pred: tf.Tensor, y_true: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    y_pred = tf.convert_to_tensor(y_pred, tf.float32)
    y_true = tf.convert_to_tensor(y_true, tf.float32)
    if y_pred.shape.rank == 1:
        return y_pred[tf.newaxis], y_true[tf.newaxis]
    return y_pred, y_true


def sum_squared_error(y_pred: tf.Tensor, y_true: tf.Tensor) -> tf.Tensor:
    """``0.5 * sum((y_pred - y_true)^2)`` per example, averaged over the batch."""
    y_pred, y_true = _as_batch(y_pred, y_true)
    return tf.reduce_mean(0.5 * tf.reduce_sum(tf.square(y_pred - y_true), axis=-1))


def cross_entropy_error(y_pred: tf.Tensor, y_true: tf.Tensor) -> tf.Tensor:
    """``-sum(y_true * log(y_pred + 1e-7))`` per example, averaged; ``y_pred`` are probabilities."""
    y_pred, y_true = _as_batch(y_pred, y_true)
    per_example = -tf.reduce_sum(y_true * tf.math.log(y_pred + _LOG_EPSILON), axis=-1)
    return tf.reduce_mean(per_example)


def root_mean_squared_error(y_pred: tf.Tensor, y_true: tf.Tensor) -> tf.Tensor:
    """``sqrt(mean((y_pred - y_true)^2))`` over every element."""
    y_pred, y_true = _as_batch(y_pred, y_true)
    return tf.sqrt(tf.reduce_mean(tf.square(y_pred - y_true)))


def softmax_cross_entropy_from_logits(logits: tf.Tensor, y_true: tf.Tensor) -> tf.Tensor:
    """``cross_entropy_error(softmax(logits), y_true)`` fused: stable for any logits.

    Computing softmax first and then the log loses everything once a probability
    underflows to 0; the fused kernel works with log-probabilities throughout.
    """
    logits, y_true = _as_batch(logits, y_true)
    return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=y_true, logits=logits))


LOSSES: dict[str, Loss] = {
    "sum_squared_error": sum_squared_error,
    "cross_entropy_error": cross_entropy_error,
    "root_mean_squared_error": root_mean_squared_error,
}


def get_loss(name: str) -> Loss:
    """The loss called ``name``; ValueError listing the known names otherwise."""
    return LOSSES[check_name(name, LOSSES, "loss")]
