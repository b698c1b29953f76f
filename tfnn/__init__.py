"""tfnn: a small fully-connected neural network in TensorFlow 2, without Keras.

Its names load on first use (PEP 562), so that importing a TensorFlow-free module such as
``tfnn.names`` or the data readers (``tfnn.idx``, ``tfnn.mnist``) does not import TensorFlow.
"""

import importlib

_MODULES = {
    "identity": "activations",
    "relu": "activations",
    "sigmoid": "activations",
    "softmax": "activations",
    "step_function": "activations",
    "tanh": "activations",
    "Dense": "layers",
    "cross_entropy_error": "losses",
    "root_mean_squared_error": "losses",
    "softmax_cross_entropy_from_logits": "losses",
    "sum_squared_error": "losses",
    "Sequential": "network",
    "build_mlp": "network",
    "SGD": "optimizers",
    "Callback": "training",
    "EarlyStopping": "training",
    "History": "training",
    "NonFiniteLossError": "training",
    "Trainer": "training",
    "fit": "training",
}

__all__ = sorted(_MODULES)


def __getattr__(name: str):
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"tfnn.{_MODULES[name]}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
