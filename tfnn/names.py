"""The names and limits a configuration may use, importable without TensorFlow.

Checking a command's flags must not pay for importing TensorFlow, so the registries in
``activations``, ``losses`` and ``initializers`` are built against these names (a test holds
their keys equal) and ``network`` enforces these limits.
"""

from collections.abc import Iterable
from itertools import pairwise

ACTIVATION_NAMES = ("step", "sigmoid", "relu", "tanh", "identity", "softmax")
LOSS_NAMES = ("sum_squared_error", "cross_entropy_error", "root_mean_squared_error")
INITIALIZER_NAMES = ("notebook_normal", "he_normal", "glorot_uniform")

MAX_LAYERS = 64
MAX_UNITS = 1 << 16
MAX_PARAMETERS = 100_000_000  # 400 MB of float32 weights


def check_name(name: str, known: Iterable[str], kind: str) -> str:
    """``name`` if it is among ``known``; ValueError naming the ``kind`` and the known names."""
    known = tuple(known)
    if name not in known:
        raise ValueError(f"unknown {kind} {name!r}: use one of {', '.join(known)}")
    return name


def parameter_count(sizes: Iterable[int]) -> int:
    """How many weights and biases a dense network of layer ``sizes`` (input first) has."""
    return sum((a + 1) * b for a, b in pairwise(sizes))


def training_step_bytes(sizes: Iterable[int], batch_size: int) -> int:
    """A lower bound on the memory one SGD step of a float32 network of layer ``sizes``
    (input first) takes: its weights and their gradients, and for each layer of a batch of
    ``batch_size`` the pre-activation, the activation and the gradients of both."""
    sizes = list(sizes)
    return 4 * (2 * parameter_count(sizes) + 4 * batch_size * sum(sizes))
