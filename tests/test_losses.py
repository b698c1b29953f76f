"""Losses against the notebook's printed outputs and NumPy (argument order: y_pred, y_true)."""

import numpy as np
import pytest
import tensorflow as tf

from tfnn.activations import softmax
from tfnn.losses import (
    LOSSES,
    cross_entropy_error,
    get_loss,
    root_mean_squared_error,
    softmax_cross_entropy_from_logits,
    sum_squared_error,
)

# The notebook's example: x1 is a prediction, y1 and y2 one-hot targets.
Y1 = [0.0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
Y2 = [0.0, 0, 0, 0, 0, 0, 0, 1, 0, 0]
X1 = [0.1, 0.05, 0.6, 0.0, 0.05, 0.1, 0.0, 0.1, 0.0, 0.0]


def numpy_log_softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean over rows of ``-sum(labels * log_softmax(logits))`` by log-sum-exp in float64."""
    logits = logits.astype(np.float64)
    peak = logits.max(axis=1, keepdims=True)
    log_sum_exp = peak + np.log(np.exp(logits - peak).sum(axis=1, keepdims=True))
    return float(np.mean(-(labels * (logits - log_sum_exp)).sum(axis=1)))


@pytest.mark.parametrize(
    ("y_pred", "y_true", "expected"),
    [([X1], [Y1], 0.0975), (X1, Y2, 0.59749997), ([X1, X1], [Y1, Y2], 0.34749997)],
)
def test_sum_squared_error_matches_notebook(y_pred, y_true, expected):
    loss = sum_squared_error(tf.constant(y_pred), tf.constant(y_true))
    assert loss.shape == ()
    assert loss.dtype == tf.float32
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize(
    ("y_pred", "y_true", "expected"),
    [(X1, Y1, 0.5108254), ([X1], [Y2], 2.3025842), ([X1, X1], [Y1, Y2], 1.4067048)],
)
def test_cross_entropy_error_matches_notebook(y_pred, y_true, expected):
    loss = cross_entropy_error(tf.constant(y_pred), tf.constant(y_true))
    assert loss.shape == ()
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-6)


def test_cross_entropy_error_takes_prediction_first():
    # log(0 + 1e-7) only appears if the one-hot target were taken as the prediction.
    swapped = cross_entropy_error(tf.constant(Y1), tf.constant(X1))
    assert swapped.numpy() > 5.0
    assert cross_entropy_error(tf.constant(X1), tf.constant(Y1)).numpy() < 1.0


def test_root_mean_squared_error_matches_notebook():
    y_true = [[100.0], [160], [60]]
    y_pred = [[80.0], [100], [100]]
    loss = root_mean_squared_error(tf.constant(y_pred), tf.constant(y_true))
    np.testing.assert_allclose(loss.numpy(), 43.204937, rtol=1e-6)
    np.testing.assert_allclose(loss.numpy(), np.sqrt((20**2 + 60**2 + 40**2) / 3), rtol=1e-6)


def test_batched_losses_match_numpy():
    rng = np.random.default_rng(0)
    y_pred = rng.dirichlet(np.ones(6), size=8)
    y_true = np.eye(6)[rng.integers(0, 6, size=8)]
    args = tf.constant(y_pred, tf.float32), tf.constant(y_true, tf.float32)
    np.testing.assert_allclose(
        sum_squared_error(*args).numpy(),
        np.mean(0.5 * ((y_pred - y_true) ** 2).sum(axis=1)),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        cross_entropy_error(*args).numpy(),
        np.mean(-(y_true * np.log(y_pred + 1e-7)).sum(axis=1)),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        root_mean_squared_error(*args).numpy(), np.sqrt(np.mean((y_pred - y_true) ** 2)), rtol=1e-5
    )


def test_fused_softmax_cross_entropy_agrees_with_unfused_on_moderate_logits():
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=2.0, size=(16, 10)).astype(np.float32)
    labels = np.eye(10, dtype=np.float32)[rng.integers(0, 10, size=16)]
    fused = softmax_cross_entropy_from_logits(tf.constant(logits), tf.constant(labels)).numpy()
    unfused = cross_entropy_error(softmax(tf.constant(logits)), tf.constant(labels)).numpy()
    np.testing.assert_allclose(fused, unfused, rtol=1e-5)
    np.testing.assert_allclose(fused, numpy_log_softmax_cross_entropy(logits, labels), rtol=1e-6)


def test_fused_softmax_cross_entropy_for_one_example():
    logits, label = [0.3, 2.9, 4.0], [0.0, 1.0, 0.0]
    fused = softmax_cross_entropy_from_logits(tf.constant(logits), tf.constant(label))
    # -log(0.24519183), the notebook's softmax of these logits.
    np.testing.assert_allclose(fused.numpy(), -np.log(0.24519183), rtol=1e-6)


def test_fused_softmax_cross_entropy_is_exact_for_huge_logits():
    logits = np.array([[1010.0, 1000.0, 990.0], [1.0e4, 0.0, -1.0e4]], np.float32)
    labels = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]], np.float32)
    expected = numpy_log_softmax_cross_entropy(logits, labels)  # (20.0000454 + 20000) / 2
    fused = softmax_cross_entropy_from_logits(tf.constant(logits), tf.constant(labels)).numpy()
    assert np.isfinite(fused)
    np.testing.assert_allclose(fused, expected, rtol=1e-6)
    # The unfused pair clips each underflowing probability at 1e-7: about 16 per row.
    unfused = cross_entropy_error(softmax(tf.constant(logits)), tf.constant(labels)).numpy()
    assert abs(unfused - expected) > 1000.0


def test_get_loss_returns_the_named_function_and_rejects_unknown_names():
    assert get_loss("cross_entropy_error") is cross_entropy_error
    assert get_loss("sum_squared_error") is sum_squared_error
    assert get_loss("root_mean_squared_error") is root_mean_squared_error
    with pytest.raises(ValueError, match="unknown loss 'hinge'") as info:
        get_loss("hinge")
    for name in LOSSES:
        assert name in str(info.value)
