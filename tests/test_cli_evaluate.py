"""``tfnn evaluate``: the test metrics of a saved network, checked against NumPy."""

import subprocess

import numpy as np
import pytest
from conftest import tfnn_command, tfnn_env

from tfnn.mnist import load_dataset
from tfnn.network import build_mlp
from tfnn.optimizers import SGD
from tfnn.preprocessing import preprocess
from tfnn.serialization import save_network
from tfnn.training import fit

# Subprocesses, real servers or signals: the slow lane.
pytestmark = pytest.mark.slow


def test_evaluate_prints_the_saved_networks_test_metrics(small_mnist_dir, tmp_path):
    arrays = load_dataset(str(small_mnist_dir))
    x_train, y_train = preprocess(arrays.train_images, arrays.train_labels)
    x, y = preprocess(arrays.test_images, arrays.test_labels)
    network = build_mlp([784, 16, 10], seed=5)
    fit(
        network,
        SGD(0.05),
        (x_train[:100], y_train[:100]),
        {"test": (x, y)},
        epochs=1,
        batch_size=50,
    )
    saved = save_network(network, tmp_path / "model")

    result = subprocess.run(
        tfnn_command("evaluate", "--weights", str(saved), "--data-dir", str(small_mnist_dir)),
        env=tfnn_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    printed = dict(item.split("=") for item in result.stdout.split())

    with np.load(saved / "weights.npz") as w:
        hidden = np.maximum(x @ w["layer0/weight"] + w["layer0/bias"], 0)
        logits = hidden @ w["layer1/weight"] + w["layer1/bias"]
    log_probabilities = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    loss = -(y * log_probabilities).sum(axis=1).mean()
    accuracy = (logits.argmax(axis=1) == arrays.test_labels).mean()
    assert abs(float(printed["test_loss"]) - loss) < 1e-4
    assert abs(float(printed["test_accuracy"]) - accuracy) < 1e-4
    assert 0.1 < accuracy < 1.0  # trained a little: neither chance nor perfect
