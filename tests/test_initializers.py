"""Initialisers: shapes, seeding, and sample statistics against the distributions' theory."""

import math

import numpy as np
import pytest

from tfnn.initializers import (
    INITIALIZERS,
    get_initializer,
    glorot_uniform,
    he_normal,
    notebook_normal,
)

# 1,000,000 samples: the sample std is within about 0.1% of the true one.
LARGE = (2000, 500)


@pytest.mark.parametrize("name", ["notebook_normal", "he_normal", "glorot_uniform"])
def test_shape_dtype_and_seeding(name):
    init = get_initializer(name)
    weights = init((3, 5), (7, 1)).numpy()
    assert weights.shape == (3, 5)
    assert weights.dtype == np.float32
    np.testing.assert_array_equal(weights, init((3, 5), (7, 1)).numpy())
    assert not np.array_equal(weights, init((3, 5), (7, 2)).numpy())
    assert not np.array_equal(weights, init((3, 5), (8, 1)).numpy())
    assert len(np.unique(weights)) == weights.size


def fraction_within_one_std(sample: np.ndarray, std: float) -> float:
    return float(np.mean(np.abs(sample) < std))


@pytest.mark.parametrize(
    ("init", "expected_std"),
    [(notebook_normal, 0.01), (he_normal, math.sqrt(2.0 / LARGE[0]))],
)
def test_normal_initialisers_have_the_theoretical_distribution(init, expected_std):
    sample = init(LARGE, (0, 0)).numpy().astype(np.float64)
    standard_error = expected_std / math.sqrt(sample.size)
    assert abs(sample.mean()) < 5 * standard_error
    np.testing.assert_allclose(sample.std(), expected_std, rtol=0.005)
    # A normal puts erf(1/sqrt(2)) = 68.27% of its mass within one standard deviation.
    np.testing.assert_allclose(
        fraction_within_one_std(sample, expected_std), math.erf(1 / math.sqrt(2)), atol=0.003
    )


def test_he_normal_scales_with_fan_in():
    narrow = he_normal((50, 20000), (0, 0)).numpy().std()
    wide = he_normal((5000, 200), (0, 0)).numpy().std()
    np.testing.assert_allclose([narrow, wide], [math.sqrt(2 / 50), math.sqrt(2 / 5000)], rtol=0.005)


def test_glorot_uniform_stays_within_its_limit_with_uniform_variance():
    limit = math.sqrt(6.0 / (LARGE[0] + LARGE[1]))
    sample = glorot_uniform(LARGE, (0, 0)).numpy().astype(np.float64)
    # The bounds are float32, so compare against the limit rounded to float32.
    assert sample.min() >= -np.float32(limit)
    assert sample.max() <= np.float32(limit)
    # With 10^6 draws the extremes come within 10^-5 of the limit.
    assert sample.min() < -0.9999 * limit
    assert sample.max() > 0.9999 * limit
    np.testing.assert_allclose(sample.var(), limit**2 / 3, rtol=0.01)
    assert abs(sample.mean()) < 5 * limit / math.sqrt(3 * sample.size)


def test_get_initializer_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="unknown initializer 'orthogonal'") as info:
        get_initializer("orthogonal")
    for name in INITIALIZERS:
        assert name in str(info.value)
