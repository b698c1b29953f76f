"""The sequential network: the notebook's ``SimpleSequenceNetwork`` as a ``tf.Module``."""

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import tensorflow as tf

from tfnn.layers import Dense
from tfnn.losses import get_loss, softmax_cross_entropy_from_logits
from tfnn.metrics import correct_predictions
from tfnn.names import MAX_LAYERS, MAX_PARAMETERS, MAX_UNITS

SPEC_FORMAT = "tfnn.sequential/1"
# What ``from_spec`` builds at most: a spec comes from a file, and an absurd one (units=1e9
# is terabytes) must be refused before anything is allocated. MNIST networks are far inside.
# The limits live in tfnn.names, where TrainConfig reads them without TensorFlow.


class Sequential(tf.Module):
    """Layers applied in order, with a loss. Inputs are ``(batch, input_dim)`` float32."""

    def __init__(
        self, layers: Sequence[Dense], loss: str = "cross_entropy_error", name: str | None = None
    ):
        super().__init__(name=name)
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        for before, after in pairwise(layers):
            if before.w.shape[1] != after.w.shape[0]:
                raise ValueError(
                    f"layer sizes do not chain: {before!r} outputs {before.w.shape[1]} "
                    f"but {after!r} takes {after.w.shape[0]}"
                )
        self.layers = list(layers)
        self.loss_name = loss
        self.loss_function = get_loss(loss)
        # Softmax followed by cross-entropy is computed from the logits in one stable
        # kernel; the unfused pair underflows to log(1e-7) once a probability hits 0.
        self.fused_softmax_cross_entropy = (
            self.layers[-1].activation_name == "softmax" and loss == "cross_entropy_error"
        )

    @property
    def all_weights(self) -> list[tf.Variable]:
        """``[w0, b0, w1, b1, ...]``: every layer's weights, input layer first."""
        return [weight for layer in self.layers for weight in layer.weights]

    @property
    def num_parameters(self) -> int:
        """How many numbers the network learns: the sizes of all weights and biases."""
        return sum(int(w.shape.num_elements()) for w in self.all_weights)

    @property
    def input_dim(self) -> int:
        return int(self.layers[0].w.shape[0])

    def logits(self, x: tf.Tensor) -> tf.Tensor:
        """The last layer's pre-activation, ``(batch, outputs)``."""
        for layer in self.layers[:-1]:
            x = layer(x)
        return self.layers[-1].pre_activation(x)

    def predict(self, x: tf.Tensor) -> tf.Tensor:
        """The network's output, ``(batch, outputs)``: class probabilities for softmax."""
        for layer in self.layers:
            x = layer(x)
        return x

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="x")])
    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        # Compiled with a signature so a SavedModel (and MLflow's tensorflow flavour)
        # can serve it; training calls the plain Python methods inside its own graph.
        return self.predict(x)

    def loss_from_logits(self, logits: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
        """The loss of ``(batch, outputs)`` logits against one-hot or real ``target``."""
        if self.fused_softmax_cross_entropy:
            return softmax_cross_entropy_from_logits(logits, target)
        return self.loss_function(self.layers[-1].activation(logits), target)

    def loss(self, x: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
        """Scalar loss of the predictions for ``x`` against ``target``."""
        return self.loss_from_logits(self.logits(x), target)

    def accuracy(self, x: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
        """Fraction of rows whose arg-max prediction equals the arg-max of one-hot ``target``."""
        return tf.cast(correct_predictions(self.predict(x), target), tf.float32) / tf.cast(
            tf.shape(x)[0], tf.float32
        )

    def gradient(self, x: tf.Tensor, target: tf.Tensor) -> list[tf.Tensor]:
        """d loss / d weight for every weight, in ``all_weights`` order."""
        with tf.GradientTape() as tape:
            loss = self.loss(x, target)
        return tape.gradient(loss, self.all_weights)

    def spec(self) -> dict[str, Any]:
        """A JSON-able description that ``from_spec`` rebuilds (weights not included)."""
        return {
            "format": SPEC_FORMAT,
            "loss": self.loss_name,
            "layers": [
                {
                    "input_dim": int(layer.w.shape[0]),
                    "units": int(layer.w.shape[1]),
                    "activation": layer.activation_name,
                }
                for layer in self.layers
            ],
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "Sequential":
        """A network of the described shape with fresh weights; ``ValueError`` if ``spec``
        is malformed or exceeds ``MAX_LAYERS``, ``MAX_UNITS`` or ``MAX_PARAMETERS``."""
        check_spec(spec)
        layers = [
            Dense(layer["input_dim"], layer["units"], layer["activation"], name=f"dense_{i}")
            for i, layer in enumerate(spec["layers"])
        ]
        return cls(layers, loss=spec["loss"])

    def __repr__(self) -> str:
        inner = ", ".join(repr(layer) for layer in self.layers)
        return f"Sequential([{inner}], loss={self.loss_name!r})"


def check_spec(spec: Any) -> int:
    """Check a ``Sequential.spec()``-shaped value against the format and the size limits
    without building anything; returns its parameter count, or raises ``ValueError``."""
    if not isinstance(spec, dict):
        raise ValueError(f"expected a JSON object, got {type(spec).__name__}")
    if spec.get("format") != SPEC_FORMAT:
        raise ValueError(f"architecture format must be {SPEC_FORMAT!r}, got {spec.get('format')!r}")
    if not isinstance(spec.get("loss"), str):
        raise ValueError(f"loss must be a string, got {spec.get('loss')!r}")
    layers = spec.get("layers")
    if not isinstance(layers, list) or not 1 <= len(layers) <= MAX_LAYERS:
        count = len(layers) if isinstance(layers, list) else type(layers).__name__
        raise ValueError(f"layers must be a list of 1 to {MAX_LAYERS} layers, got {count}")
    parameters = 0
    for i, layer in enumerate(layers):
        if not isinstance(layer, dict) or not isinstance(layer.get("activation"), str):
            raise ValueError(f"layer {i}: expected input_dim, units and an activation name")
        for field in ("input_dim", "units"):
            value = layer.get(field)
            if type(value) is not int or not 1 <= value <= MAX_UNITS:
                raise ValueError(
                    f"layer {i}: {field} must be a whole number from 1 to {MAX_UNITS}, "
                    f"got {value!r}"
                )
        parameters += (layer["input_dim"] + 1) * layer["units"]
    if parameters > MAX_PARAMETERS:
        raise ValueError(f"{parameters} parameters, more than the {MAX_PARAMETERS} allowed")
    return parameters


def build_mlp(
    sizes: Sequence[int],
    hidden_activation: str = "relu",
    output_activation: str = "softmax",
    loss: str = "cross_entropy_error",
    initializer: str = "he_normal",
    seed: int = 0,
) -> Sequential:
    """A multilayer perceptron ``sizes[0] -> ... -> sizes[-1]``, e.g. ``[784, 100, 50, 10]``.

    Layer ``i`` is initialised with the stateless seed ``(seed, i)``, so a seed fixes
    every weight.
    """
    if len(sizes) < 2:
        raise ValueError(f"sizes needs an input and an output size, got {list(sizes)}")
    last = len(sizes) - 2
    layers = [
        Dense(
            fan_in,
            fan_out,
            output_activation if i == last else hidden_activation,
            initializer,
            seed=(seed, i),
            name=f"dense_{i}",
        )
        for i, (fan_in, fan_out) in enumerate(pairwise(sizes))
    ]
    return Sequential(layers, loss=loss)
