"""The champion served by ``mlflow models serve`` and the ``tfnn predict`` command, both
checked against the champion's saved weights run in-process by tfnn."""

import csv
import json
import tempfile
import urllib.error
import urllib.request

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image
from servers import MLFLOW, free_port, start, stop, wait_for

from cli import main
from flows.retrain import retrain_flow
from tasks.config import TrainConfig
from tfnn.errors import DataError
from tfnn.idx import load_idx_images, load_idx_labels
from tfnn.png import load_png_images
from tfnn.preprocessing import flatten_and_scale
from tfnn.serialization import load_network

# Subprocesses, real servers or signals: the slow lane.
pytestmark = pytest.mark.slow

NAME = "tfnn-mnist"


@pytest.fixture(scope="module")
def champion(prefect_harness, small_mnist_dir, tmp_path_factory):
    """A store whose ``tfnn-mnist@champion`` exists, and the champion as a tfnn network."""
    home = tmp_path_factory.mktemp("champion-store")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(home)
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        config = TrainConfig(hidden_sizes=(16,), epochs=1, data_source=str(small_mnist_dir))
        decision = retrain_flow(config)
        weights = MlflowClient().download_artifacts(
            decision.challenger_run_id, "weights", tempfile.mkdtemp()
        )
        yield uri, load_network(weights)
        mlflow.set_tracking_uri(None)


def invoke(port: int, rows: list) -> tuple[int, str]:
    """POST ``rows`` to the served model: its HTTP status and body."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps({"inputs": rows}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_served_champion_answers_like_the_network_in_process(champion, small_mnist_dir, tmp_path):
    uri, network = champion
    x = flatten_and_scale(load_idx_images(small_mnist_dir / "t10k-images-idx3-ubyte.gz")[:20])
    port, log = free_port(), tmp_path / "serve.log"
    # The README's command, on a free loopback port.
    command = f"models serve -m models:/{NAME}@champion --env-manager local -p {port} -h 127.0.0.1"
    server = start(
        [MLFLOW, *command.split()],
        log,
        MLFLOW_TRACKING_URI=uri,
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/ping", server, log)
        status, body = invoke(port, x.tolist())
        assert status == 200, body
        served = np.asarray(json.loads(body)["predictions"])
        # What is not a batch of pixel rows is refused, not answered with probabilities.
        refused = {}
        for name, value in [("nan", np.nan), ("inf", np.inf), ("-1e30", -1e30), ("2", 2.0)]:
            bad = x[:2].copy()
            bad[1, 300] = value
            refused[name] = invoke(port, bad.tolist())
        refused["0-255 pixels"] = invoke(port, (x[:3] * 255).tolist())  # real digits, unscaled
        refused["rows"] = invoke(port, np.zeros((10_001, 784)).tolist())
    finally:
        stop(server)
    assert served.shape == (20, 10)
    np.testing.assert_allclose(served, network.predict(x).numpy(), atol=1e-6)
    for name, (status, body) in refused.items():
        assert status == 400, (name, body[:300])
    for name in ("nan", "inf"):
        assert "input holds NaN or infinity" in refused[name][1]
    for name in ("-1e30", "2", "0-255 pixels"):
        assert "input values must lie in [0, 1]" in refused[name][1]
    assert "a request holds at most 10000 rows; split the batch" in refused["rows"][1]


def read_csv(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_predict_command_on_idx_files(champion, small_mnist_dir, tmp_path, capsys):
    _, network = champion
    images = small_mnist_dir / "t10k-images-idx3-ubyte.gz"
    labels = small_mnist_dir / "t10k-labels-idx1-ubyte.gz"
    output = tmp_path / "predictions.csv"
    argv = ["predict", "--images", str(images), "--labels", str(labels), "--output", str(output)]
    assert main(argv) == 0
    expected = network.predict(flatten_and_scale(load_idx_images(images))).numpy()
    true = load_idx_labels(labels)
    rows = read_csv(output)
    assert len(rows) == len(true)
    assert [row["image"] for row in rows[:2]] == [f"{images}:0", f"{images}:1"]
    got = np.array([[float(row[f"p{k}"]) for k in range(10)] for row in rows])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert [int(row["predicted"]) for row in rows] == expected.argmax(1).tolist()
    assert [int(row["label"]) for row in rows] == true.tolist()
    accuracy = np.mean(expected.argmax(1) == true)
    assert f"accuracy={accuracy:.4f}" in capsys.readouterr().out


def test_predict_command_on_png_files(champion, small_mnist_dir, tmp_path):
    _, network = champion
    digits = load_idx_images(small_mnist_dir / "t10k-images-idx3-ubyte.gz")[:3]
    # Written by Pillow: gray 28x28, RGB with equal channels, and gray at twice the size.
    Image.fromarray(digits[0], "L").save(tmp_path / "gray.png")
    Image.fromarray(np.stack([digits[1]] * 3, axis=-1), "RGB").save(tmp_path / "rgb.png")
    Image.fromarray(np.kron(digits[2], np.ones((2, 2), np.uint8)), "L").save(tmp_path / "big.png")
    (tmp_path / "other").mkdir()
    Image.fromarray(digits[0], "L").save(tmp_path / "other" / "big.png")
    names = ("gray.png", "rgb.png", "big.png", "other/big.png")  # two big.png: told apart
    paths = [str(tmp_path / name) for name in names]
    digits = digits[[0, 1, 2, 0]]
    np.testing.assert_array_equal(load_png_images(paths), digits)

    output = tmp_path / "out" / "png.csv"
    argv = ["predict", "--model", f"models:/{NAME}/1", "--images", *paths, "--output", str(output)]
    assert main(argv) == 0
    rows = read_csv(output)
    expected = network.predict(flatten_and_scale(digits)).numpy()
    assert [row["image"] for row in rows] == paths  # as given, not the basenames
    assert "label" not in rows[0]
    got = np.array([[float(row[f"p{k}"]) for k in range(10)] for row in rows])
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_predict_command_refuses_mismatched_labels(champion, small_mnist_dir, tmp_path, capsys):
    images = small_mnist_dir / "t10k-images-idx3-ubyte.gz"
    labels = small_mnist_dir / "train-labels-idx1-ubyte.gz"  # 600 labels for 200 images
    output = tmp_path / "never.csv"
    argv = ["predict", "--images", str(images), "--labels", str(labels), "--output", str(output)]
    assert main(argv) == 2  # refused before the flow starts
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("tfnn: error:") and "600 labels for 200 images" in error
    assert not output.exists()


def test_a_file_that_is_not_a_png_is_named(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(DataError, match=r"notes\.png: not a PNG image$"):
        load_png_images([tmp_path / "notes.png"])
    with pytest.raises(DataError, match=r"missing\.png: cannot read: No such file"):
        load_png_images([tmp_path / "missing.png"])
