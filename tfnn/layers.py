"""The dense layer: the notebook's ``SimpleLayer`` as a ``tf.Module``."""

import numbers

import tensorflow as tf

from tfnn.activations import get_activation
from tfnn.initializers import get_initializer


class Dense(tf.Module):
    """``y = activation(x @ w + b)``: ``x`` is ``(batch, input_dim)`` float32, ``y`` is
    ``(batch, units)``; ``w`` is ``(input_dim, units)`` and ``b`` is ``(units,)``, zeros at start.
    """

    def __init__(
        self,
        input_dim: int,
        units: int,
        activation: str = "relu",
        initializer: str = "he_normal",
        seed: tuple[int, int] = (0, 0),
        name: str | None = None,
    ):
        super().__init__(name=name)
        for field, value in (("input_dim", input_dim), ("units", units)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"Dense {field} must be a positive integer, got {value!r}")
        self.activation_name = activation
        self.activation = get_activation(activation)
        init = get_initializer(initializer)
        self.w = tf.Variable(init((int(input_dim), int(units)), seed), name="weight")
        self.b = tf.Variable(tf.zeros([units]), name="bias")

    @property
    def weights(self) -> list[tf.Variable]:
        """``[w, b]``, in the order gradients and saved files use."""
        return [self.w, self.b]

    def pre_activation(self, x: tf.Tensor) -> tf.Tensor:
        """``x @ w + b``, ``(batch, units)``: the logits when this is a softmax output layer."""
        return tf.matmul(x, self.w) + self.b

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        return self.activation(self.pre_activation(x))

    def __repr__(self) -> str:
        input_dim, units = self.w.shape
        return f"Dense({input_dim}, {units}, activation={self.activation_name!r})"
