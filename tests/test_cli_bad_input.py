"""Bad input, tried on purpose: the ``tfnn`` command, given each bad input, exits 2 with one
line naming the problem, no traceback, and no MLflow run left RUNNING or FINISHED.

Each case runs in a directory and stores of its own, through ``cli.main`` in this process
(under the suite's Prefect server). One case of each kind, and the one that needs a process
of its own (a ``PREFECT_API_URL`` Prefect reads when it starts), also run as real ``tfnn``
processes, four at a time, whose whole stderr is counted."""

import gzip
import json
import logging
import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import crafted_model, run_each, tfnn_command, tfnn_env, write_mnist_dir
from mlflow.entities import Param
from mlflow.tracking import MlflowClient
from servers import free_port

from cli import main
from cli.output import TF_STARTUP
from tasks.config import TrainConfig
from tasks.runs import library_versions
from tfnn.idx import write_idx_images, write_idx_labels
from tfnn.network import build_mlp
from tfnn.serialization import ARCHITECTURE_FILE, WEIGHTS_FILE, save_network

TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"


def truncate(path: Path) -> None:
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-100]))


def gzip_bomb(path: Path) -> None:
    """The labels the header announces, then 64 MiB of zeros: 64 kB compressed."""
    labels = gzip.decompress(path.read_bytes())
    with gzip.open(path, "wb") as file:
        file.write(labels)
        for _ in range(64):
            file.write(bytes(1 << 20))


def huge_png_header(path: Path, width: int, height: int) -> None:
    """A PNG signature and a valid IHDR chunk declaring ``width`` x ``height`` 8-bit gray."""
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))
    )


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
    "gzip bomb": (
        lambda d: gzip_bomb(d / TRAIN_LABELS),
        f"{TRAIN_LABELS}: more than 1048575 bytes after the 600 items",
    ),
    "header dimensions overflow": (
        lambda d: (d / TEST_IMAGES).write_bytes(
            gzip.compress(struct.pack(">4I", 0x803, 2**32 - 1, 2**32 - 1, 2**32 - 1))
        ),
        f"{TEST_IMAGES}: the header declares 4294967295x4294967295x4294967295 = ",
    ),
    "symlink loop": (
        lambda d: (shutil.rmtree(d), d.symlink_to(d)),
        "data: cannot resolve the path (Symlink loop",
    ),
    "a FIFO as a data file": (
        lambda d: ((d / TRAIN_LABELS).unlink(), os.mkfifo(d / TRAIN_LABELS)),
        f"{TRAIN_LABELS}: not a regular file",
    ),
    "a symlink to /dev/zero as a data file": (
        lambda d: ((d / TEST_LABELS).unlink(), (d / TEST_LABELS).symlink_to("/dev/zero")),
        f"{TEST_LABELS}: not a regular file",
    ),
    # The directory is renamed: a path whose bytes are not UTF-8 (Python: surrogates).
    "directory name not UTF-8": (
        lambda d: d.rename(d.with_name("d\udcff")),
        "is not valid UTF-8; rename it",
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
    "seed beyond int64": (
        ["--seed", "99999999999999999999"],
        "seed: Input should be less than 9223372036854775808",
    ),
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
    "unsupported tracking scheme": (
        lambda d, port: ({"MLFLOW_TRACKING_URI": "ftp://x"}, []),
        "MLFLOW_TRACKING_URI=ftp://x: the scheme 'ftp' is not one MLflow can track to",
    ),
    "store that is a directory": (
        lambda d, port: ({"MLFLOW_TRACKING_URI": f"sqlite:///{d / 'a-dir.db'}"}, []),
        "a-dir.db is a directory, not a SQLite file",
    ),
    "unwritable Prefect home": (
        lambda d, port: ({"PREFECT_HOME": str(d / "a-file" / "prefect")}, []),
        "/a-file/prefect: Prefect cannot keep its settings there (Not a directory); set "
        "PREFECT_HOME",
    ),
    "experiment name over MLflow's limit": (
        lambda d, port: ({}, ["--experiment", "x" * 501]),
        "experiment: String should have at most 500 characters",
    ),
    "upload time limit not a number": (
        lambda d, port: ({"TFNN_UPLOAD_TIMEOUT_SECONDS": "abc"}, []),
        "TFNN_UPLOAD_TIMEOUT_SECONDS='abc': expected a number of seconds >= 0 (0: no limit)",
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


def _billion_units(directory: Path) -> None:
    spec = json.loads((directory / ARCHITECTURE_FILE).read_text())
    spec["layers"][0]["units"] = spec["layers"][1]["input_dim"] = 10**9
    (directory / ARCHITECTURE_FILE).write_text(json.dumps(spec))


def _weights_bomb(directory: Path) -> None:
    with np.load(directory / WEIGHTS_FILE) as saved:
        arrays = {key: saved[key] for key in saved.files}
    # 64 MB of zeros that compress to 64 kB, beside the 12,730 parameters.
    np.savez_compressed(directory / WEIGHTS_FILE, padding=np.zeros(8 << 20), **arrays)


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
    "architecture nested 100,000 deep": (
        lambda d: (d / ARCHITECTURE_FILE).write_text("[" * 100_000 + "]" * 100_000),
        "architecture.json: invalid architecture: nested too deeply",
    ),
    "architecture of 10^9 units": (
        _billion_units,
        "layer 0: units must be a whole number from 1 to 65536, got 1000000000",
    ),
    "weights file inflating far past the architecture": (
        _weights_bomb,
        "bytes of arrays, far more than the 12730 parameters of architecture.json need",
    ),
}
# A failed run recorded with the valid command's configuration; flags to resume it.
BAD_RESUME = {
    "resume an unknown run": (f"--resume {'0' * 32}", f"--resume {'0' * 32}: no such run"),
    "resume with another learning rate": (
        "--resume {run_id} --learning-rate 0.2",
        "--resume run {run_id} was started with learning_rate=0.1 (now 0.2)",
    ),
    "resume in another experiment": (
        "--resume {run_id} --experiment other",
        "--resume {run_id}: the run is in experiment 'tfnn-mnist', not 'other'",
    ),
}
# tfnn predict: flags after ``predict`` (relative to the case's directory, which holds the
# test images, a crafted model and an existing directory), and the fragment.
BAD_PREDICT = {
    "predict a file that is not a PNG": (
        "--images not.png --labels one-label",
        "not.png: not a PNG image",
    ),
    "predict a PNG declaring 10^10 pixels": (
        "--images huge.png",
        "huge.png: 100000x100000 pixels, more than the 16777216 allowed",
    ),
    "predict a missing image": ("--images missing.png", "missing.png: cannot read"),
    "predict with labels of another count": (
        f"--images test-images --labels {TRAIN_LABELS}",
        f"{TRAIN_LABELS}: 600 labels for 200 images",
    ),
    "predict into a directory": ("--images test-images --output a-dir", "is a directory"),
    "predict with a model file": (
        "--images test-images --model crafted-model",
        "--model crafted-model: not a models:/ or runs:/ URI of the tracking server; "
        "loading a model file runs its code (pyfunc models are unpickled), so pass "
        "--trust-model",
    ),
    "predict with a file: model URI": (
        "--images test-images --model file:crafted-model",
        "--model file:crafted-model: not a models:/ or runs:/ URI",
    ),
    "predict with a model the registry lacks": (
        "--images test-images --model models:/tfnn-mnist/7",
        "--model models:/tfnn-mnist/7: cannot be loaded from the tracking server",
    ),
    "predict with the champion and none registered": (
        "--images test-images",
        "--model models:/tfnn-mnist@champion: cannot be loaded from the tracking server",
    ),
}
BAD_SWEEP = {
    "sweep of 1600 configurations": (
        ["--vary", "seed", *map(str, range(40)), "--vary", "epochs", *map(str, range(1, 41))],
        "the sweep would train 1600 configurations, more than max_configurations (1000); "
        "train a random sample",
    ),
}
CASES = [
    *BROKEN_DATA,
    *BAD_CONFIG,
    *BAD_ENVIRONMENT,
    *BROKEN_MODEL,
    *BAD_RESUME,
    *BAD_PREDICT,
    *BAD_SWEEP,
]


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
        renamed = BROKEN_DATA[case][0](broken)
        broken = renamed if isinstance(renamed, Path) else broken
        return ["train", "--data-dir", str(broken)], {}, BROKEN_DATA[case][1]
    if case in BAD_PREDICT:
        (directory / "not.png").write_bytes(b"\x89PNG but not really")
        huge_png_header(directory / "huge.png", 100_000, 100_000)
        (directory / "a-dir").mkdir()
        shutil.copy(data / TEST_IMAGES, directory / "test-images")
        shutil.copy(data / TRAIN_LABELS, directory / TRAIN_LABELS)
        write_idx_labels(directory / "one-label", np.zeros(1, np.uint8))
        crafted_model(directory / "crafted-model", directory / "marker")
        flags, fragment = BAD_PREDICT[case]
        return ["predict", *flags.split()], {}, fragment
    if case in BAD_SWEEP:
        flags, fragment = BAD_SWEEP[case]
        return ["sweep", "--data-dir", str(data), *flags], {}, fragment
    if case in BAD_CONFIG:
        argv = [*valid, *BAD_CONFIG[case][0]]
        if case.startswith("retrain"):
            argv[0] = "retrain"
        return argv, {}, BAD_CONFIG[case][1]
    if case in BAD_ENVIRONMENT:
        (directory / "a-file").write_text("not a directory")
        (directory / "a-dir.db").mkdir()
        port = free_port()  # nothing listens there
        env, flags = BAD_ENVIRONMENT[case][0](directory, port)
        return [*valid, *flags], env, BAD_ENVIRONMENT[case][1].format(port=port)
    model = save_network(build_mlp([784, 16, 10], seed=0), directory / "model")
    BROKEN_MODEL[case][0](model)
    return ["evaluate", "--weights", str(model), "--data-dir", str(data)], {}, BROKEN_MODEL[case][1]


# Run as ``tfnn`` processes too: one case of each table, and "unreachable Prefect", whose
# ``PREFECT_API_URL`` this process's Prefect (under the suite's server) would not read.
IN_A_PROCESS = [
    "missing directory",
    "learning rate abc",
    "unreachable MLflow",
    "unreachable Prefect",
    "weights of the wrong shapes",
    "resume with another learning rate",
    "predict with a model the registry lacks",
    "sweep of 1600 configurations",
]


def assert_refused(code: int, stderr: str, fragment: str, database: Path) -> None:
    """Exit 2, one ``tfnn: error:`` line holding ``fragment``, the crafted model never
    loaded, and no run left RUNNING or FINISHED in the case's store."""
    assert not (database.parent / "marker").exists()  # the crafted model never loaded
    assert code == 2, stderr[-2000:]
    assert "Traceback" not in stderr
    ours = [line for line in stderr.splitlines() if not TF_STARTUP.match(line)]
    assert len(ours) == 1 and ours[0].startswith("tfnn: error: "), stderr[-2000:]
    assert fragment in ours[0]
    if database.exists():  # most cases are refused before the store is even opened
        client = MlflowClient(f"sqlite:///{database}")
        experiments = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(experiments)
        assert not [run for run in runs if run.info.status in ("RUNNING", "FINISHED")]


def main_in(directory: Path, argv: list[str], env: dict[str, str], monkeypatch) -> int:
    """``tfnn ARGV`` through ``cli.main`` in ``directory`` with ``env`` set, this process's
    environment restored afterwards (the command sets defaults in it)."""
    monkeypatch.chdir(directory)
    # What MLFLOW_LOGGING_LEVEL=WARNING makes of MLflow's logger when the command imports it.
    monkeypatch.setattr(logging.getLogger("mlflow"), "level", logging.WARNING)
    saved = dict(os.environ)
    os.environ.update(env)
    mlflow.set_tracking_uri(None)  # MLFLOW_TRACKING_URI, as the command reads it
    try:
        return main(argv)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        mlflow.set_tracking_uri(None)


@pytest.mark.parametrize("case", [case for case in CASES if case != "unreachable Prefect"])
def test_bad_input_is_refused_in_one_line(
    case, small_mnist_dir, tmp_path, monkeypatch, capfd, prefect_harness
):
    database = tmp_path / "mlflow.db"
    argv, extra, fragment = _command(case, tmp_path, small_mnist_dir, f"sqlite:///{database}")
    capfd.readouterr()  # what making the case printed (MLflow creating a resume's store)
    code = main_in(
        tmp_path, argv, {"MLFLOW_TRACKING_URI": f"sqlite:///{database}", **extra}, monkeypatch
    )
    assert_refused(code, capfd.readouterr().err, fragment, database)


@pytest.fixture(scope="module")
def commands(small_mnist_dir, tmp_path_factory, prefect_harness) -> dict[str, tuple]:
    """The ``IN_A_PROCESS`` cases, each run as its own ``tfnn`` process, four at a time:
    case -> (exit code, stderr, expected fragment, the case's MLflow database file). The
    first starts its own Prefect server in a new home, as on a new machine; the others use
    the suite's server, as with ``PREFECT_API_URL`` set."""
    from prefect.settings import PREFECT_API_URL

    suite_server = {"PREFECT_API_URL": PREFECT_API_URL.value()}

    def run(case: str):
        directory = tmp_path_factory.mktemp("case")
        database = directory / "mlflow.db"
        store = f"sqlite:///{database}"
        argv, extra, fragment = _command(case, directory, small_mnist_dir, store)
        server = {} if case == IN_A_PROCESS[0] else suite_server
        prefect = {"PREFECT_HOME": str(directory / "prefect"), **server}
        env = tfnn_env(**{"MLFLOW_TRACKING_URI": store, **prefect, **extra})
        result = subprocess.run(
            tfnn_command(*argv), cwd=directory, env=env, capture_output=True, text=True, timeout=600
        )
        return result.returncode, result.stderr, fragment, database

    return run_each(IN_A_PROCESS, run)


@pytest.mark.slow
@pytest.mark.parametrize("case", IN_A_PROCESS)
def test_the_command_refuses_bad_input_in_one_line(commands, case):
    assert_refused(*commands[case])


def test_a_network_and_batch_too_big_for_memory_are_refused_before_the_run(
    tmp_path, monkeypatch, capfd, prefect_harness
):
    # 60,000 rows of 784 + 65,536 + 10 units: about 60 GiB for one step's activations.
    data = write_mnist_dir(tmp_path / "data", train_count=60_000, test_count=10)
    flags = ["--data-dir", str(data), "--hidden-sizes", "65536", "--batch-size", "60000"]
    flags += ["--validation-fraction", "0"]
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    assert main_in(tmp_path, ["train", *flags], env, monkeypatch) == 2
    (line,) = capfd.readouterr().err.splitlines()
    assert line.startswith(
        "tfnn: error: hidden_sizes 65536 with batch_size 60000: one training step needs at "
        "least 59.7 GiB"
    )
    assert not (tmp_path / "mlflow.db").exists()
