"""Weight initialisers: ``(shape, seed) -> float32 tensor``, deterministic for a given seed.

``shape`` is ``(fan_in, fan_out)``; ``seed`` is a pair of ints, as TensorFlow's
stateless random ops take it, so the same seed always gives the same weights.
"""

import math
from collections.abc import Callable

import tensorflow as tf

from tfnn.names import check_name

Initializer = Callable[[tuple[int, int], tuple[int, int]], tf.Tensor]


def notebook_normal(shape: tuple[int, int], seed: tuple[int, int]) -> tf.Tensor:
    """``N(0, 1) * 0.01``, the notebook's choice: fine for shallow nets, slow to start deep ones."""
    return tf.random.stateless_normal(shape, seed) * 0.01


def he_normal(shape: tuple[int, int], seed: tuple[int, int]) -> tf.Tensor:
    """``N(0, 2 / fan_in)`` (He et al. 2015): keeps the variance of relu activations steady."""
    return tf.random.stateless_normal(shape, seed, stddev=math.sqrt(2.0 / shape[0]))


def glorot_uniform(shape: tuple[int, int], seed: tuple[int, int]) -> tf.Tensor:
    """``U(-l, l)``, ``l = sqrt(6 / (fan_in + fan_out))`` (Glorot & Bengio 2010), Keras' default."""
    limit = math.sqrt(6.0 / (shape[0] + shape[1]))
    return tf.random.stateless_uniform(shape, seed, minval=-limit, maxval=limit)


INITIALIZERS: dict[str, Initializer] = {
    "notebook_normal": notebook_normal,
    "he_normal": he_normal,
    "glorot_uniform": glorot_uniform,
}


def get_initializer(name: str) -> Initializer:
    """The initialiser called ``name``; ValueError listing the known names otherwise."""
    return INITIALIZERS[check_name(name, INITIALIZERS, "initializer")]
