"""The README's library example runs as written, on small MNIST-format files."""

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def test_library_example_runs(small_mnist_dir):
    (example,) = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    namespace = {}
    exec(example.replace("path/to/mnist", str(small_mnist_dir)), namespace)
    probabilities = namespace["probabilities"].numpy()
    assert probabilities.shape == (5, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    # The synthetic digits are easy: five epochs learn them (independent of the README's claim).
    assert namespace["history"].test_accuracy[-1] > 0.9
