"""Dense, Sequential and build_mlp against NumPy forward passes and float64 NumPy gradients."""

import json
import re
from itertools import pairwise

import numpy as np
import pytest
import tensorflow as tf

from tfnn.layers import Dense
from tfnn.losses import cross_entropy_error
from tfnn.network import Sequential, build_mlp, check_spec


def numpy_softmax(a: np.ndarray) -> np.ndarray:
    e = np.exp(a - a.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


NUMPY_ACTIVATIONS = {
    "relu": lambda a: np.maximum(a, 0.0),
    "sigmoid": lambda a: 1.0 / (1.0 + np.exp(-a)),
    "tanh": np.tanh,
    "identity": lambda a: a,
    "step": lambda a: (a > 0).astype(a.dtype),
    "softmax": numpy_softmax,
}


def float64_weights(network: Sequential) -> list[np.ndarray]:
    return [w.numpy().astype(np.float64) for w in network.all_weights]


def numpy_forward(network: Sequential, x: np.ndarray, weights=None) -> np.ndarray:
    """The network's output computed by NumPy in float64 from its (or the given) weights."""
    weights = float64_weights(network) if weights is None else weights
    a = x.astype(np.float64)
    for layer, w, b in zip(network.layers, weights[::2], weights[1::2]):
        a = NUMPY_ACTIVATIONS[layer.activation_name](a @ w + b)
    return a


def numpy_relu_softmax_cross_entropy_gradient(
    weights: list[np.ndarray], x: np.ndarray, target: np.ndarray
) -> tuple[float, list[np.ndarray]]:
    """Loss and hand-derived backprop of mean cross-entropy for relu hidden layers, softmax out."""
    inputs, pre_activations, a = [], [], x
    for w, b in zip(weights[::2], weights[1::2]):
        inputs.append(a)
        pre_activations.append(a @ w + b)
        a = np.maximum(pre_activations[-1], 0.0)
    logits = pre_activations[-1]
    log_probabilities = logits - logits.max(1, keepdims=True)
    log_probabilities -= np.log(np.exp(log_probabilities).sum(1, keepdims=True))
    loss = float(np.mean(-(target * log_probabilities).sum(1)))
    delta = (np.exp(log_probabilities) - target) / len(x)  # d loss / d logits
    grads = []
    for i in reversed(range(len(inputs))):
        grads[:0] = [inputs[i].T @ delta, delta.sum(0)]
        if i:
            delta = (delta @ weights[2 * i].T) * (pre_activations[i - 1] > 0)
    return loss, grads


@pytest.fixture
def classification_batch():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 4)).astype(np.float32)
    target = np.eye(3, dtype=np.float32)[[0, 2, 1, 1, 0, 2]]
    return x, target


# --- Dense ----------------------------------------------------------------------------------


def test_dense_weights_have_the_documented_shapes():
    layer = Dense(4, 3, "relu", seed=(1, 2))
    assert layer.w.shape == (4, 3)
    assert layer.b.shape == (3,)
    np.testing.assert_array_equal(layer.b.numpy(), np.zeros(3))
    assert layer.weights[0] is layer.w
    assert layer.weights[1] is layer.b
    assert len(layer.weights) == 2
    assert {id(v) for v in layer.trainable_variables} == {id(layer.w), id(layer.b)}


@pytest.mark.parametrize("activation", sorted(NUMPY_ACTIVATIONS))
def test_dense_forward_equals_numpy(activation):
    layer = Dense(5, 4, activation, initializer="glorot_uniform", seed=(3, 0))
    layer.b.assign([0.5, -0.25, 0.0, 1.0])
    x = np.random.default_rng(2).normal(size=(7, 5)).astype(np.float32)
    w, b = layer.w.numpy().astype(np.float64), layer.b.numpy().astype(np.float64)
    np.testing.assert_allclose(layer.pre_activation(x).numpy(), x @ w + b, rtol=1e-5, atol=1e-6)
    expected = NUMPY_ACTIVATIONS[activation](x.astype(np.float64) @ w + b)
    out = layer(tf.constant(x))
    assert out.shape == (7, 4)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_dense_reproduces_the_notebooks_first_layer():
    layer = Dense(2, 2, "identity")
    layer.w.assign([[0.00327469, -0.00842626], [0.00319434, -0.01407552]])
    a1 = layer(tf.constant([[10.0, 20.0]]))
    # The printed weights are rounded to 5e-9; 10 and 20 times that error is at most 1.5e-7.
    np.testing.assert_allclose(a1.numpy(), [[0.09663358, -0.36577296]], rtol=0, atol=1.5e-7)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_dim": 3, "units": 0}, "units must be a positive integer"),
        ({"input_dim": 3, "units": -2}, "units must be a positive integer"),
        ({"input_dim": 3, "units": 2.0}, "units must be a positive integer"),
        ({"input_dim": 3, "units": "2"}, "units must be a positive integer"),
        ({"input_dim": 3, "units": True}, "units must be a positive integer"),
        ({"input_dim": 0, "units": 2}, "input_dim must be a positive integer"),
        ({"input_dim": 3, "units": 2, "activation": "swish"}, "unknown activation 'swish'"),
        ({"input_dim": 3, "units": 2, "initializer": "ones"}, "unknown initializer 'ones'"),
    ],
)
def test_dense_rejects_bad_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Dense(**kwargs)


# --- Sequential and build_mlp ---------------------------------------------------------------


def test_build_mlp_layers_and_weight_order():
    network = build_mlp([4, 5, 3, 2], hidden_activation="tanh", output_activation="softmax")
    assert [(layer.w.shape[0], layer.w.shape[1]) for layer in network.layers] == [
        (4, 5),
        (5, 3),
        (3, 2),
    ]
    assert [layer.activation_name for layer in network.layers] == ["tanh", "tanh", "softmax"]
    expected = [v for layer in network.layers for v in (layer.w, layer.b)]
    assert len(network.all_weights) == 6
    assert all(got is want for got, want in zip(network.all_weights, expected))
    assert network.input_dim == 4


def test_build_mlp_seed_fixes_every_weight():
    first, again = build_mlp([4, 5, 2], seed=3), build_mlp([4, 5, 2], seed=3)
    other = build_mlp([4, 5, 2], seed=4)
    for a, b, c in zip(first.all_weights[::2], again.all_weights[::2], other.all_weights[::2]):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
        assert not np.array_equal(a.numpy(), c.numpy())
    # Layers are seeded separately: equal-shaped layers do not share weights.
    square = build_mlp([3, 3, 3], seed=0)
    assert not np.array_equal(square.layers[0].w.numpy(), square.layers[1].w.numpy())


@pytest.mark.parametrize(
    ("hidden", "output", "loss"),
    [
        ("relu", "softmax", "cross_entropy_error"),
        ("tanh", "sigmoid", "sum_squared_error"),
        ("sigmoid", "identity", "root_mean_squared_error"),
    ],
)
def test_predict_and_call_equal_numpy_forward(hidden, output, loss):
    network = build_mlp([4, 6, 5, 3], hidden, output, loss, seed=1)
    x = np.random.default_rng(3).normal(size=(8, 4)).astype(np.float32)
    expected = numpy_forward(network, x)
    np.testing.assert_allclose(network.predict(x).numpy(), expected, rtol=1e-5, atol=1e-6)
    compiled = network(tf.constant(x))
    np.testing.assert_allclose(compiled.numpy(), expected, rtol=1e-5, atol=1e-6)
    # The signature takes any batch size.
    np.testing.assert_allclose(network(tf.constant(x[:1])).numpy(), expected[:1], rtol=1e-5)


def test_saved_model_serves_the_predictions(tmp_path):
    network = build_mlp([4, 5, 3], seed=2)
    x = np.random.default_rng(4).normal(size=(3, 4)).astype(np.float32)
    tf.saved_model.save(network, str(tmp_path / "model"))
    served = tf.saved_model.load(str(tmp_path / "model"))(tf.constant(x))
    np.testing.assert_allclose(served.numpy(), numpy_forward(network, x), rtol=1e-5)


def test_softmax_cross_entropy_loss_is_fused_and_agrees_with_unfused(classification_batch):
    x, target = classification_batch
    network = build_mlp([4, 5, 3], seed=0)
    assert network.fused_softmax_cross_entropy
    expected, _ = numpy_relu_softmax_cross_entropy_gradient(float64_weights(network), x, target)
    loss = network.loss(tf.constant(x), tf.constant(target))
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-6)
    unfused = cross_entropy_error(network.predict(x), target)
    np.testing.assert_allclose(loss.numpy(), unfused.numpy(), rtol=1e-5)


def test_fused_loss_stays_exact_when_softmax_underflows():
    network = build_mlp([1, 1, 2], seed=0)
    network.layers[0].w.assign([[1.0]])
    network.layers[1].w.assign([[100.0, -100.0]])
    x, target = np.array([[50.0]], np.float32), np.array([[0.0, 1.0]], np.float32)
    # Logits are (5000, -5000): the true loss is 10000, the unfused pair gives -log(1e-7).
    np.testing.assert_allclose(network.loss(x, target).numpy(), 10000.0, rtol=1e-6)
    np.testing.assert_allclose(
        cross_entropy_error(network.predict(x), target).numpy(), -np.log(1e-7), rtol=1e-5
    )


def test_other_losses_are_applied_to_the_output():
    network = build_mlp([4, 5, 3], "tanh", "sigmoid", "sum_squared_error", seed=0)
    assert not network.fused_softmax_cross_entropy
    x = np.random.default_rng(5).normal(size=(6, 4)).astype(np.float32)
    target = np.random.default_rng(6).random(size=(6, 3)).astype(np.float32)
    expected = np.mean(0.5 * ((numpy_forward(network, x) - target) ** 2).sum(1))
    np.testing.assert_allclose(network.loss(x, target).numpy(), expected, rtol=1e-5)


def test_accuracy_equals_numpy_argmax(classification_batch):
    x, target = classification_batch
    network = build_mlp([4, 5, 3], seed=5)
    predicted = numpy_forward(network, x).argmax(1)
    expected = np.mean(predicted == target.argmax(1))
    assert 0 < expected < 1  # the check is only meaningful with hits and misses
    np.testing.assert_allclose(network.accuracy(x, target).numpy(), expected, rtol=1e-6)


def test_gradient_equals_numpy_backprop(classification_batch):
    x, target = classification_batch
    network = build_mlp([4, 5, 4, 3], seed=0)
    for layer in network.layers:  # non-zero biases exercise their gradients fully
        layer.b.assign(tf.random.stateless_normal(layer.b.shape, (9, 9)) * 0.1)
    _, expected = numpy_relu_softmax_cross_entropy_gradient(float64_weights(network), x, target)
    grads = network.gradient(tf.constant(x), tf.constant(target))
    assert [g.shape for g in grads] == [w.shape for w in network.all_weights]
    for got, want in zip(grads, expected):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-6)


def test_gradient_equals_finite_differences_for_regression():
    network = build_mlp([3, 4, 2], "tanh", "identity", "root_mean_squared_error", seed=7)
    rng = np.random.default_rng(8)
    x = rng.normal(size=(5, 3)).astype(np.float32)
    target = rng.normal(size=(5, 2)).astype(np.float32)

    def numpy_loss(weights):
        return np.sqrt(np.mean((numpy_forward(network, x, weights) - target) ** 2))

    weights = float64_weights(network)
    grads = network.gradient(tf.constant(x), tf.constant(target))
    h = 1e-6
    for k, (weight, grad) in enumerate(zip(weights, grads)):
        estimate = np.zeros_like(weight)
        for index in np.ndindex(weight.shape):
            plus = [w.copy() for w in weights]
            minus = [w.copy() for w in weights]
            plus[k][index] += h
            minus[k][index] -= h
            estimate[index] = (numpy_loss(plus) - numpy_loss(minus)) / (2 * h)
        np.testing.assert_allclose(grad.numpy(), estimate, rtol=1e-3, atol=1e-5)


def test_spec_round_trip():
    network = build_mlp([4, 6, 3], "tanh", "softmax", "cross_entropy_error", seed=0)
    spec = json.loads(json.dumps(network.spec()))
    assert spec == {
        "format": "tfnn.sequential/1",
        "loss": "cross_entropy_error",
        "layers": [
            {"input_dim": 4, "units": 6, "activation": "tanh"},
            {"input_dim": 6, "units": 3, "activation": "softmax"},
        ],
    }
    rebuilt = Sequential.from_spec(spec)
    assert rebuilt.spec() == spec
    assert [w.shape for w in rebuilt.all_weights] == [w.shape for w in network.all_weights]
    assert rebuilt.fused_softmax_cross_entropy


def test_from_spec_rejects_another_format():
    spec = build_mlp([2, 2]).spec() | {"format": "keras"}
    with pytest.raises(ValueError, match="architecture format"):
        Sequential.from_spec(spec)


def _layers(*sizes):
    return [{"input_dim": a, "units": b, "activation": "relu"} for a, b in pairwise(sizes)]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        # (784 + 1) * 65536 + (65536 + 1) * 65536 = 51,445,760 + 4,295,032,832: 17 GB of float32.
        ({"layers": _layers(784, 65536, 65536)}, "4346478592 parameters, more than the 100000000"),
        ({"layers": _layers(784, 10**9)}, "units must be a whole number from 1 to 65536"),
        ({"layers": _layers(784, 0)}, "units must be a whole number from 1 to 65536, got 0"),
        ({"layers": _layers(784, 2.5)}, "got 2.5"),
        ({"layers": _layers(*[4] * 66)}, "layers must be a list of 1 to 64 layers, got 65"),
        ({"layers": "many"}, "layers must be a list of 1 to 64 layers, got str"),
        ({"layers": [[4, 2, "relu"]]}, "layer 0: expected input_dim, units and an activation"),
        ({"loss": None}, "loss must be a string"),
    ],
)
def test_from_spec_checks_sizes_before_building(change, problem):
    spec = build_mlp([2, 2]).spec() | change
    with pytest.raises(ValueError, match=re.escape(problem)):
        Sequential.from_spec(spec)
    assert check_spec(build_mlp([784, 100, 10]).spec()) == 785 * 100 + 101 * 10


def test_bad_networks_are_rejected():
    with pytest.raises(ValueError, match="layer sizes do not chain"):
        Sequential([Dense(4, 5), Dense(6, 2)])
    with pytest.raises(ValueError, match="at least one layer"):
        Sequential([])
    with pytest.raises(ValueError, match="unknown loss"):
        Sequential([Dense(4, 2)], loss="hinge")
    with pytest.raises(ValueError, match="input and an output size"):
        build_mlp([784])
