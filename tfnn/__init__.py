"""tfnn: a small fully-connected neural network in TensorFlow 2, without Keras."""

from tfnn.activations import identity, relu, sigmoid, softmax, step_function, tanh
from tfnn.layers import Dense
from tfnn.losses import (
    cross_entropy_error,
    root_mean_squared_error,
    softmax_cross_entropy_from_logits,
    sum_squared_error,
)
from tfnn.network import Sequential, build_mlp
from tfnn.optimizers import SGD
from tfnn.training import EarlyStopping, History, NonFiniteLossError, Trainer, fit

__all__ = [
    "SGD",
    "Dense",
    "EarlyStopping",
    "History",
    "NonFiniteLossError",
    "Sequential",
    "Trainer",
    "build_mlp",
    "cross_entropy_error",
    "fit",
    "identity",
    "relu",
    "root_mean_squared_error",
    "sigmoid",
    "softmax",
    "softmax_cross_entropy_from_logits",
    "step_function",
    "sum_squared_error",
    "tanh",
]
