"""Activations against the notebook's printed outputs and NumPy."""

import numpy as np
import pytest
import tensorflow as tf

from tfnn.activations import (
    ACTIVATIONS,
    get_activation,
    identity,
    relu,
    sigmoid,
    softmax,
    step_function,
    tanh,
)


def numpy_softmax_rows(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_step_function_matches_notebook():
    out = step_function(tf.constant([1, 0, 3, -3]))
    np.testing.assert_array_equal(out.numpy(), [1, 0, 1, 0])
    out = step_function(tf.constant([0.5, 0.0, -0.5, 2.0]))
    assert out.dtype == tf.float32
    np.testing.assert_array_equal(out.numpy(), [1.0, 0.0, 0.0, 1.0])


def test_sigmoid_matches_notebook():
    out = sigmoid(tf.constant([0, 1.0, -2.0]))
    np.testing.assert_allclose(out.numpy(), [0.5, 0.7310586, 0.11920292], rtol=1e-6)


def test_relu_matches_notebook():
    out = relu(tf.constant([-2.0, -1.0, 1.0, 2.0]))
    np.testing.assert_array_equal(out.numpy(), [0.0, 0.0, 1.0, 2.0])


def test_tanh_matches_notebook():
    out = tanh(tf.constant([-3.0, -1.0, 0.0, 1.0, 3.0]))
    expected = [-0.9950547, -0.7615942, 0.0, 0.7615942, 0.9950547]
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6, atol=1e-7)


def test_identity_matches_notebook():
    out = identity(tf.constant([1.0, 0.0, -1.0, -3.0]))
    np.testing.assert_array_equal(out.numpy(), [1.0, 0.0, -1.0, -3.0])


@pytest.mark.parametrize(
    ("logits", "expected"),
    [
        ([0.3, 2.9, 4.0], [0.01821127, 0.24519183, 0.73659694]),
        ([1010.0, 1000.0, 990.0], [9.999546e-01, 4.539787e-05, 2.061060e-09]),
    ],
)
def test_softmax_matches_notebook(logits, expected):
    np.testing.assert_allclose(softmax(tf.constant(logits)).numpy(), expected, rtol=1e-5)


def test_softmax_normalises_each_row_of_a_batch():
    logits = np.random.default_rng(0).normal(scale=3.0, size=(5, 4)).astype(np.float32)
    out = softmax(tf.constant(logits)).numpy()
    np.testing.assert_allclose(out.sum(axis=1), np.ones(5), rtol=1e-6)
    np.testing.assert_allclose(out, numpy_softmax_rows(logits.astype(np.float64)), rtol=1e-5)
    for row, probabilities in zip(logits, out):
        np.testing.assert_allclose(softmax(tf.constant(row)).numpy(), probabilities, rtol=1e-6)
    # The notebook divided by the sum over the whole batch; rows would then sum to 1/5 on average.
    whole_batch = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert not np.allclose(out, whole_batch)


# The notebook's formulas, by the names the command offers.
NUMPY_REFERENCES = {
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0.0),
    "identity": lambda x: x,
    "step": lambda x: (x > 0).astype(x.dtype),
    "softmax": numpy_softmax_rows,
}


def test_every_named_activation_has_a_reference():
    assert sorted(ACTIVATIONS) == sorted(NUMPY_REFERENCES)


@pytest.mark.parametrize("name", sorted(NUMPY_REFERENCES))
def test_activation_by_name_keeps_shape_and_dtype_and_matches_numpy(name):
    x = np.random.default_rng(1).normal(scale=4.0, size=(3, 7))
    out = get_activation(name)(tf.constant(x))
    assert out.dtype == tf.float64
    assert out.shape == (3, 7)
    np.testing.assert_allclose(out.numpy(), NUMPY_REFERENCES[name](x), rtol=1e-12, atol=1e-15)


def test_saturating_activations_are_exact_for_large_inputs():
    np.testing.assert_array_equal(tanh(tf.constant([100.0, -100.0])).numpy(), [1.0, -1.0])
    np.testing.assert_array_equal(sigmoid(tf.constant([-1000.0, 1000.0])).numpy(), [0.0, 1.0])


def test_no_nan_for_huge_inputs():
    huge = tf.constant([[3.0e38, -3.0e38, 1.0e30, -1.0e30, 0.0]])
    for function in (sigmoid, tanh, relu, softmax):
        assert np.isfinite(function(huge).numpy()).all(), function.__name__
    np.testing.assert_array_equal(softmax(huge).numpy(), [[1.0, 0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(tanh(huge).numpy(), [[1.0, -1.0, 1.0, -1.0, 0.0]])


def test_get_activation_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="unknown activation 'swish'") as info:
        get_activation("swish")
    for name in ACTIVATIONS:
        assert name in str(info.value)
