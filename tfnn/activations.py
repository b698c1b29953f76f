"""Activation functions: plain functions of a tensor, applied element-wise or per row.

Each one maps a float tensor of any shape to a tensor of the same shape and dtype.
They are written with TensorFlow's numerically stable kernels, so unlike the
notebook's hand-written formulas they never overflow: ``tanh(100) == 1``,
``sigmoid(-1000) == 0`` and ``softmax([1010, 1000, 990])`` is finite.
"""

from collections.abc import Callable

import tensorflow as tf

from tfnn.names import check_name

Activation = Callable[[tf.Tensor], tf.Tensor]


def step_function(x: tf.Tensor) -> tf.Tensor:
    """1 where ``x > 0``, else 0, in ``x``'s dtype (the notebook returns uint8)."""
    x = tf.convert_to_tensor(x)
    return tf.cast(x > 0, x.dtype)


def sigmoid(x: tf.Tensor) -> tf.Tensor:
    """``1 / (1 + exp(-x))``, computed without overflow for large ``|x|``."""
    return tf.math.sigmoid(x)


def relu(x: tf.Tensor) -> tf.Tensor:
    """``max(0, x)``."""
    return tf.nn.relu(x)


def tanh(x: tf.Tensor) -> tf.Tensor:
    """Hyperbolic tangent; the notebook's ``(e^x - e^-x) / (e^x + e^-x)`` is NaN past |x| ~ 89."""
    return tf.math.tanh(x)


def identity(x: tf.Tensor) -> tf.Tensor:
    """``x`` unchanged: the output activation for regression."""
    return tf.convert_to_tensor(x)


def softmax(x: tf.Tensor) -> tf.Tensor:
    """Softmax over the last axis, each row separately (the notebook normalised the batch)."""
    return tf.nn.softmax(x, axis=-1)


ACTIVATIONS: dict[str, Activation] = {
    "step": step_function,
    "sigmoid": sigmoid,
    "relu": relu,
    "tanh": tanh,
    "identity": identity,
    "softmax": softmax,
}


def get_activation(name: str) -> Activation:
    """The activation called ``name``; ValueError listing the known names otherwise."""
    return ACTIVATIONS[check_name(name, ACTIVATIONS, "activation")]
