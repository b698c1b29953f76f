"""Plain stochastic gradient descent, kept as an object so the training loop can swap it."""

from collections.abc import Iterable

import tensorflow as tf


class SGD:
    """``var -= learning_rate * grad`` for every ``(grad, var)`` pair."""

    def __init__(self, learning_rate: float = 0.01):
        if not learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
        self.learning_rate = float(learning_rate)

    def apply_gradients(self, grads_and_vars: Iterable[tuple[tf.Tensor, tf.Variable]]) -> None:
        for grad, var in grads_and_vars:
            var.assign_sub(self.learning_rate * grad)

    def __repr__(self) -> str:
        return f"SGD(learning_rate={self.learning_rate})"
