"""Real MNIST with the notebook's hyperparameters: 784-100-50-10 relu/softmax, cross-entropy,
SGD lr 0.1, batch 32, 5 epochs. Skipped only when ../shared/data/mnist is absent.

The shared folder holds the first 10,000 training digits (the notebook trained on 60,000)
and the full 10,000-digit test set, so 5 epochs here are 1,565 steps: fewer than the
notebook's first epoch, after which it printed test accuracy 0.9364. The defaults' floor
(seed 42: 0.94) is asserted once, on a real run of the training flow
(``tests/test_train_flow.py``).
"""

import numpy as np
import pytest

from tfnn.mnist import load_mnist_idx
from tfnn.network import build_mlp
from tfnn.optimizers import SGD
from tfnn.preprocessing import preprocess
from tfnn.training import fit


@pytest.fixture(scope="module")
def mnist(real_mnist_dir):
    arrays = load_mnist_idx(real_mnist_dir)
    train = preprocess(arrays.train_images, arrays.train_labels)
    test = preprocess(arrays.test_images, arrays.test_labels)
    return train, {"test": test}


def train_like_the_notebook(mnist, initializer: str, seed: int):
    network = build_mlp([784, 100, 50, 10], "relu", "softmax", initializer=initializer, seed=seed)
    history = fit(network, SGD(0.1), *mnist, epochs=5, batch_size=32, seed=seed)
    return network, history


# Over seeds 0-19 and 42 the final test accuracy measured 0.925-0.948 (mean 0.939) with
# TensorFlow 2.21 as first installed; with the current wheels seed 2 measures 0.890, 0.928,
# 0.929, 0.881, 0.918 per epoch (the same on the code before the validation split). At lr 0.1
# the epoch-to-epoch swing reaches 0.05, so: some epoch reaches 0.92, and the last stays
# above 0.90.
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_he_normal_reaches_the_accuracy_floor(mnist, seed):
    network, history = train_like_the_notebook(mnist, "he_normal", seed)
    x_test, y_test = mnist[1]["test"]
    predicted = network.predict(x_test).numpy().argmax(1)
    accuracy = np.mean(predicted == y_test.argmax(1))
    np.testing.assert_allclose(history.test_accuracy[-1], accuracy, rtol=1e-6)
    assert max(history.test_accuracy) >= 0.92
    assert accuracy >= 0.90
    assert history.train_loss[-1] < 0.25 * history.train_loss[0]


def test_notebook_initialisation_behaves_like_the_notebook(mnist):
    _, notebook = train_like_the_notebook(mnist, "notebook_normal", seed=0)
    _, he = train_like_the_notebook(mnist, "he_normal", seed=0)
    assert notebook.test_accuracy[-1] >= 0.85
    # As in the notebook's printout, every epoch improves test accuracy and training loss.
    assert all(np.diff(notebook.test_accuracy) > 0)
    assert all(np.diff(notebook.train_loss) < 0)
    # N(0, 0.01^2) weights start slowly: the notebook's first epoch averaged 0.74 train
    # accuracy against 0.98 in the second, and an epoch here is a sixth as long. He
    # initialisation does better on the same budget.
    assert notebook.train_accuracy[0] < 0.5 * notebook.train_accuracy[-1]
    assert he.test_accuracy[-1] > notebook.test_accuracy[-1] + 0.01
