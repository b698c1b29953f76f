"""tfnn's MLflow model writer against MLflow's own: ``tasks.tf_flavor.save_model`` must write
the directory ``mlflow.tensorflow.save_model`` writes for the same network and arguments, and
MLflow's loaders must read it back to the network's own predictions."""

import os
from pathlib import Path

import mlflow
import numpy as np
import pytest
import tensorflow as tf
import yaml
from mlflow.models import Model, infer_signature

from tasks import tf_flavor
from tfnn.network import build_mlp

# Written at save time, so never the same twice.
UNSTABLE = {"utc_time_created", "model_uuid", "model_size_bytes"}


@pytest.fixture
def saved_both_ways(tmp_path):
    network = build_mlp([4, 6, 3], "tanh", "softmax", seed=3)
    example = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    arguments = {
        "signature": infer_signature(example, network.predict(example).numpy()),
        "input_example": example,
        "pip_requirements": [f"tensorflow=={tf.__version__}", f"numpy=={np.__version__}"],
    }
    mlflow.tensorflow.save_model(network, str(tmp_path / "mlflow"), **arguments)
    tf_flavor.save_model(network, str(tmp_path / "tfnn"), Model(), **arguments)
    return network, example, tmp_path / "mlflow", tmp_path / "tfnn"


def files_under(directory: Path) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(folder, name), directory)
        for folder, _, names in os.walk(directory)
        for name in names
    )


def test_the_directory_is_the_one_mlflow_writes(saved_both_ways):
    _, _, theirs, ours = saved_both_ways
    assert files_under(ours) == files_under(theirs)
    assert "tf2model/saved_model.pb" in files_under(ours)
    their_model, our_model = (yaml.safe_load((d / "MLmodel").read_text()) for d in (theirs, ours))
    for key in UNSTABLE:
        assert our_model.pop(key) and their_model.pop(key)
    assert our_model == their_model
    assert our_model["flavors"]["tensorflow"]["model_type"] == "tf2-module"
    for name in (
        "requirements.txt",
        "conda.yaml",
        "python_env.yaml",
        "input_example.json",
        "serving_input_example.json",
    ):
        assert (ours / name).read_text() == (theirs / name).read_text(), name
    assert (ours / "requirements.txt").read_text().splitlines() == [
        f"mlflow=={mlflow.__version__}",
        f"tensorflow=={tf.__version__}",
        f"numpy=={np.__version__}",
    ]


def test_mlflow_loads_it_back_to_the_networks_predictions(saved_both_ways):
    network, example, _, ours = saved_both_ways
    expected = network.predict(example).numpy()
    module = mlflow.tensorflow.load_model(str(ours))
    np.testing.assert_allclose(module(example).numpy(), expected, rtol=1e-6)
    through_pyfunc = mlflow.pyfunc.load_model(str(ours)).predict(example)
    np.testing.assert_allclose(np.asarray(through_pyfunc), expected, rtol=1e-6)


def test_a_saved_model_that_predicts_otherwise_is_refused(saved_both_ways):
    network, example, _, ours = saved_both_ways
    tf_flavor.check_predictions(network, str(ours / "tf2model"), example)  # the same network
    network.layers[-1].b.assign_add(np.full(3, [0.0, 0.0, 5.0], np.float32))  # now it differs
    with pytest.raises(ValueError, match="predicts other values than the network"):
        tf_flavor.check_predictions(network, str(ours / "tf2model"), example)
