"""The model MLflow serves (``tfnn.serving.GuardedNetwork``), logged to and loaded from a
real MLflow store as ``mlflow models serve`` loads it: the network's probabilities for
pixel rows, a clear refusal for anything else."""

import mlflow
import numpy as np
import pytest
from mlflow.models import Model, infer_signature

from tfnn.network import build_mlp
from tfnn.serving import GuardedNetwork, predict_in_batches


@pytest.fixture
def served(mlflow_store):
    network = build_mlp([784, 8, 10], seed=0)
    x = np.random.default_rng(0).random((7, 784), dtype=np.float32)
    with mlflow.start_run() as run:
        info = Model.log(
            artifact_path=None,
            name="model",
            flavor=mlflow.tensorflow,
            model=GuardedNetwork(network, max_rows=3),
            run_id=run.info.run_id,
            signature=infer_signature(x, network.predict(x).numpy()),
            pip_requirements=["tensorflow"],  # not inferred: that takes seconds
        )
    return mlflow.pyfunc.load_model(info.model_uri), network, x


def test_pixel_rows_get_the_networks_probabilities_in_batches(served):
    model, network, x = served
    np.testing.assert_array_equal(model.predict(x[:3]), network.predict(x[:3]).numpy())
    # 7 rows in requests of at most 3: the same as the network on all 7 at once.
    together = network.predict(x).numpy()
    np.testing.assert_allclose(predict_in_batches(model, x, rows=3), together, atol=1e-7)
    assert predict_in_batches(model, x[:0], rows=3).shape == (0, 10)


@pytest.mark.parametrize(
    "value, message",
    [
        (np.nan, "input holds NaN or infinity"),
        (-np.inf, "input holds NaN or infinity"),
        (-1e30, r"input values must lie in \[0, 1\]"),
        (1.5, r"input values must lie in \[0, 1\]"),
    ],
)
def test_what_is_not_pixels_is_refused(served, value, message):
    model, _, x = served
    bad = x[:2].copy()
    bad[1, 100] = value
    with pytest.raises(Exception, match=message):
        model.predict(bad)


def test_an_over_long_request_is_refused(served):
    model, _, x = served
    with pytest.raises(Exception, match="a request holds at most 3 rows; split the batch"):
        model.predict(x[:4])
