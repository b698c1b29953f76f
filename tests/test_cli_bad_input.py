"""Bad input, tried on purpose: the ``tfnn`` command, run as a subprocess with each bad
input, exits 2 with one line naming the problem, no traceback, and no MLflow run left
RUNNING or FINISHED. The cases run side by side, each in its own directory and stores."""

import gzip
import json
import re
import shutil
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import tfnn_command, tfnn_env
from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from tasks.config import TrainConfig
from tasks.tracking import library_versions
from tfnn.data import write_idx_images, write_idx_labels
from tfnn.network import build_mlp
from tfnn.serialization import ARCHITECTURE_FILE, WEIGHTS_FILE, save_network

TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"
# TensorFlow's C++ start-up log, written before its logging can be configured.
TF_STARTUP = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\)"
    r"|[IWE]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\]"
    r"|To enable the following instructions:"
)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def truncate(path: Path) -> None:
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-100]))


# What to break in a copy of the small data set (600 train, 200 test digits), and a
# fragment of the message that must name it.
BROKEN_DATA = {
    "missing directory": (lambda d: shutil.rmtree(d), "does not exist"),
    "missing file": (
        lambda d: (d / TEST_LABELS).unlink(),
        "t10k-labels-idx1-ubyte[.gz]: not found",
    ),
    "wrong magic number": (
        lambda d: write_idx_labels(d / TRAIN_IMAGES, np.zeros(600, np.uint8)),
        f"{TRAIN_IMAGES}: wrong magic number 0x00000801, expected 0x00000803",
    ),
    "truncated image file": (
        lambda d: truncate(d / TEST_IMAGES),
        f"{TEST_IMAGES}: truncated, header says 200 items",
    ),
    "image and label counts differ": (
        lambda d: write_idx_labels(d / TRAIN_LABELS, np.zeros(599, np.uint8)),
        f"{TRAIN_LABELS}: 599 labels but",
    ),
    "label 10": (
        lambda d: write_idx_labels(d / TEST_LABELS, np.full(200, 10, np.uint8)),
        f"{TEST_LABELS}: label 10 at index 0 is outside 0-9",
    ),
    "32x32 images": (
        lambda d: write_idx_images(d / TRAIN_IMAGES, np.zeros((600, 32, 32), np.uint8)),
        "images are 32x32, expected 28x28",
    ),
    "empty dataset": (
        lambda d: (
            write_idx_images(d / TEST_IMAGES, np.zeros((0, 28, 28), np.uint8)),
            write_idx_labels(d / TEST_LABELS, np.zeros(0, np.uint8)),
        ),
        f"{TEST_IMAGES}: empty set (0 images)",
    ),
    "not gzip but named .gz": (
        lambda d: (d / TRAIN_LABELS).write_bytes(b"<html>404 Not Found</html>"),
        "nor gzip data, despite the .gz name",
    ),
}
# Flags on top of a valid command, and the message fragment.
BAD_CONFIG = {
    "learning rate 0": (["--learning-rate", "0"], "learning_rate: Input should be greater than 0"),
    "learning rate -1": (
        ["--learning-rate", "-1"],
        "learning_rate: Input should be greater than 0",
    ),
    "learning rate abc": (
        ["--learning-rate", "abc"],
        "learning_rate: Input should be a valid number",
    ),
    "epochs 0": (["--epochs", "0"], "epochs: Input should be greater than or equal to 1"),
    "batch size 0": (
        ["--batch-size", "0"],
        "batch_size: Input should be greater than or equal to 1",
    ),
    "batch size above the dataset": (
        ["--batch-size", "601", "--validation-fraction", "0"],
        "batch_size: 601 is more than the 600 training examples",
    ),
    "batch size above the training split": (
        ["--batch-size", "541"],
        "batch_size: 541 is more than the 540 training examples in",
    ),
    "validation fraction 1": (
        ["--validation-fraction", "1"],
        "validation_fraction: Input should be less than 1",
    ),
    "validation fraction of no example": (
        ["--validation-fraction", "1e-17"],
        "validation_fraction: 1e-17 of the 600 training examples",
    ),
    "early stopping without validation": (
        ["--validation-fraction", "0", "--early-stopping-patience", "2"],
        "early_stopping_patience decides on the validation set: set validation_fraction > 0",
    ),
    "retrain without validation": (
        ["--validation-fraction", "0"],
        "validation_fraction: 0 leaves the retrain nothing to decide on",
    ),
    "hidden size 0": (
        ["--hidden-sizes", "0"],
        "hidden_sizes.0: Input should be greater than or equal",
    ),
    "unknown activation": (["--activation", "swish"], "activation: unknown activation 'swish'"),
    "unknown initialiser": (["--initializer", "zeros"], "initializer: unknown initializer 'zeros'"),
}
# Environment variables or flags that point at something unusable, and the fragment.
BAD_ENVIRONMENT = {
    "unreachable MLflow": (
        lambda d, port: ({"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}, []),
        "MLflow tracking at http://127.0.0.1:{port} is unreachable",
    ),
    "unwritable artifact directory": (
        lambda d, port: ({}, ["--output-dir", str(d / "a-file" / "outputs")]),
        "/a-file/outputs: cannot write checkpoints and plots there (Not a directory)",
    ),
    "unreachable Prefect": (
        lambda d, port: ({"PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}, []),
        "Prefect API at http://127.0.0.1:{port}/api is unreachable",
    ),
}


def _wrong_shapes(directory: Path) -> None:
    narrower = build_mlp([784, 8, 10], seed=1)
    arrays = {
        f"layer{i // 2}/{('weight', 'bias')[i % 2]}": w.numpy()
        for i, w in enumerate(narrower.all_weights)
    }
    np.savez(directory / WEIGHTS_FILE, **arrays)


def _unknown_activation(directory: Path) -> None:
    spec = json.loads((directory / ARCHITECTURE_FILE).read_text())
    spec["layers"][0]["activation"] = "swish"
    (directory / ARCHITECTURE_FILE).write_text(json.dumps(spec))


def _truncate_weights(directory: Path) -> None:
    weights = directory / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:1000])


# What to break in a saved 784-16-10 network, and the fragment.
BROKEN_MODEL = {
    "weights of the wrong shapes": (
        _wrong_shapes,
        "layer0/weight has shape (784, 8) but the architecture needs (784, 16)",
    ),
    "truncated weights file": (_truncate_weights, "unreadable (truncated or not an .npz file)"),
    "unknown activation in the architecture": (
        _unknown_activation,
        "architecture.json: invalid architecture: unknown activation 'swish'",
    ),
}
# A failed run recorded with the valid command's configuration; flags to resume it.
BAD_RESUME = {
    "resume an unknown run": (f"--resume {'0' * 32}", f"--resume {'0' * 32}: no such run"),
    "resume with another learning rate": (
        "--resume {run_id} --learning-rate 0.2",
        "--resume run {run_id} was started with learning_rate=0.1 (now 0.2)",
    ),
}
CASES = [*BROKEN_DATA, *BAD_CONFIG, *BAD_ENVIRONMENT, *BROKEN_MODEL, *BAD_RESUME]


def _failed_run(store: str, config: TrainConfig) -> str:
    """A FAILED run in ``store``, recorded as ``tfnn train`` records ``config``."""
    client = MlflowClient(store)
    run_id = client.create_run(client.create_experiment("tfnn-mnist")).info.run_id
    params = {**config.as_params(), **library_versions()}
    client.log_batch(run_id, params=[Param(key, value) for key, value in params.items()])
    client.set_terminated(run_id, "FAILED")
    return run_id


def _command(
    case: str, directory: Path, data: Path, store: str
) -> tuple[list[str], dict[str, str], str]:
    """The argv, extra environment and expected message fragment of ``case``."""
    valid = ["train", "--data-dir", str(data), "--epochs", "1", "--hidden-sizes", "8"]
    if case in BAD_RESUME:
        run_id = _failed_run(store, TrainConfig(data_source=str(data), epochs=1, hidden_sizes=(8,)))
        flags, fragment = (f.format(run_id=run_id) for f in BAD_RESUME[case])
        return [*valid, *flags.split()], {}, fragment
    if case in BROKEN_DATA:
        broken = Path(shutil.copytree(data, directory / "data"))
        BROKEN_DATA[case][0](broken)
        return ["train", "--data-dir", str(broken)], {}, BROKEN_DATA[case][1]
    if case in BAD_CONFIG:
        argv = [*valid, *BAD_CONFIG[case][0]]
        if case.startswith("retrain"):
            argv[0] = "retrain"
        return argv, {}, BAD_CONFIG[case][1]
    if case in BAD_ENVIRONMENT:
        (directory / "a-file").write_text("not a directory")
        port = closed_port()
        env, flags = BAD_ENVIRONMENT[case][0](directory, port)
        return [*valid, *flags], env, BAD_ENVIRONMENT[case][1].format(port=port)
    model = save_network(build_mlp([784, 16, 10], seed=0), directory / "model")
    BROKEN_MODEL[case][0](model)
    return ["evaluate", "--weights", str(model), "--data-dir", str(data)], {}, BROKEN_MODEL[case][1]


@pytest.fixture(scope="module")
def outcomes(small_mnist_dir, tmp_path_factory) -> dict[str, tuple]:
    """Every case run as its own ``tfnn`` process, four at a time: case -> (completed
    process, expected fragment, the case's MLflow database file)."""

    def run(case: str):
        directory = tmp_path_factory.mktemp("case")
        database = directory / "mlflow.db"
        store = f"sqlite:///{database}"
        argv, extra, fragment = _command(case, directory, small_mnist_dir, store)
        env = tfnn_env(
            **{"MLFLOW_TRACKING_URI": store, "PREFECT_HOME": str(directory / "prefect"), **extra}
        )
        result = subprocess.run(
            tfnn_command(*argv), cwd=directory, env=env, capture_output=True, text=True
        )
        return result, fragment, database

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(CASES, pool.map(run, CASES)))


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_refused_in_one_line(outcomes, case):
    result, fragment, database = outcomes[case]
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    ours = [line for line in result.stderr.splitlines() if not TF_STARTUP.match(line)]
    assert len(ours) == 1 and ours[0].startswith("tfnn: error: "), result.stderr[-2000:]
    assert fragment in ours[0]
    if database.exists():  # most cases are refused before the store is even opened
        client = MlflowClient(f"sqlite:///{database}")
        experiments = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(experiments)
        assert not [run for run in runs if run.info.status in ("RUNNING", "FINISHED")]
