"""Shared fixtures: an isolated Prefect home and server, real MLflow stores in temporary
directories, and MNIST-format data (small synthetic files, or the real shared digits)."""

import os
import pty
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

# Before anything imports prefect: a private home, no telemetry, room for a slow start,
# and no servers inherited from the shell that runs the tests.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="tfnn-tests-prefect-")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("TFNN_DATA_DIR", None)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from servers import MLFLOW, free_port, start, stop, wait_for

from tasks.model import fit_arguments, network_for
from tfnn.idx import write_idx_images, write_idx_labels
from tfnn.mnist import load_dataset
from tfnn.preprocessing import preprocess, validation_split
from tfnn.serialization import weights_digest
from tfnn.training import fit

REAL_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
ROOT = Path(__file__).resolve().parents[1]


# Each epoch's metrics: their History name and their MLflow name, prefixed by split.
EPOCH_METRICS = {
    "train_loss": "train/loss",
    "train_accuracy": "train/accuracy",
    "val_loss": "val/loss",
    "val_accuracy": "val/accuracy",
    "test_loss": "test/loss",
    "test_accuracy": "test/accuracy",
    "epoch_seconds": "train/epoch_seconds",
}


def train_uninterrupted(config) -> tuple:
    """Train ``config`` with tfnn alone (no flow, tracking or checkpoints), the reference for
    runs that were interrupted: ``(History, weights_digest)``."""
    arrays = load_dataset(config.data_source)
    x, y = preprocess(arrays.train_images, arrays.train_labels)
    kept = len(validation_split(len(x), config.validation_fraction)[0])
    train, validation = (x[:kept], y[:kept]), (x[kept:], y[kept:])
    test = preprocess(arrays.test_images, arrays.test_labels)
    network = network_for(config, 784, 10)
    sets = ({"val": validation} if kept < len(x) else {}) | {"test": test}
    history = fit(network, train=train, evaluate=sets, **fit_arguments(config, "val" in sets))
    return history, weights_digest(network)


def run_each(cases, run) -> dict:
    """``{case: run(case)}``, four cases at a time (each case's command is a process of its
    own, so the suite's refusal tables take a quarter of the wall time)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(cases, pool.map(run, cases)))


def weights_of(network) -> list[np.ndarray]:
    """Copies of ``network``'s weights and biases, layer by layer."""
    return [w.numpy().copy() for w in network.all_weights]


def break_checkpoint(prefix: Path, how: str) -> None:
    """Damage the checkpoint files at ``prefix`` as a crash, a disk or a person would."""
    index = prefix.with_name(prefix.name + ".index")
    (data,) = prefix.parent.glob(prefix.name + ".data-*")
    if how == "empty index":
        index.write_bytes(b"")
    elif how == "flipped bytes":
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        data.write_bytes(bytes(raw))
    else:
        index.unlink()
        data.unlink()


def refusal(result: subprocess.CompletedProcess) -> str:
    """The one line of a command that refused (exit 2): its last line on stderr, the only
    one of tfnn's own, with no traceback."""
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("tfnn")]
    assert line == result.stderr.splitlines()[-1]
    assert "Traceback" not in result.stderr
    return line


def assert_weights_equal(network, expected: list[np.ndarray]) -> None:
    """``network``'s weights (a ``tfnn`` ``Sequential``) equal ``expected``, layer by layer."""
    assert len(network.all_weights) == len(expected)
    for got, want in zip(network.all_weights, expected):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


TERMINAL_CODE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_on_a_terminal(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    """Run ``command`` with stdout and stderr on a pseudo-terminal: (exit code, output)."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=terminal, stderr=terminal)
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the terminal closes when the process exits
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    return process.wait(timeout=600), output.decode(errors="replace")


def tfnn_command(*args: str) -> list[str]:
    """The ``tfnn`` console command of this checkout, to run in a subprocess."""
    return [sys.executable, "-m", "cli", *args]


def tfnn_env(**extra: str) -> dict[str, str]:
    """This process's environment (the test's MLflow store, a private Prefect home) with this
    checkout importable and ``extra`` on top, for a ``tfnn`` subprocess."""
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def run_tfnn(
    *args: str, cwd: Path, env: dict[str, str], timeout: float = 900
) -> subprocess.CompletedProcess:
    """``tfnn ARGS`` run to its end (``timeout`` seconds at most) in ``cwd``, its output
    captured as text."""
    return subprocess.run(
        tfnn_command(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def wait_for_file(pattern: str, directory: Path, process: subprocess.Popen, log: Path) -> None:
    """Wait (5 minutes at most) until ``directory`` holds a file matching ``pattern``; fail
    with the end of ``log`` if ``process`` ends first."""
    give_up = time.monotonic() + 300
    while not list(directory.glob(pattern)):
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < give_up, f"no {pattern} within 5 minutes"
        time.sleep(0.02)


def train_killed_after_epoch(epoch: int, flags: list[str], cwd: Path, env: dict[str, str]) -> str:
    """Run ``tfnn train FLAGS`` in ``cwd`` and SIGKILL it as soon as the checkpoint of
    ``epoch`` is written (the next epoch is training); returns the id of the run it left."""
    log = cwd / "killed.log"
    with open(log, "w") as output:
        process = subprocess.Popen(
            tfnn_command("train", *flags), cwd=cwd, env=env, stdout=output, stderr=output
        )
    try:
        wait_for_file(f"outputs/*/checkpoints/ckpt-{epoch}.index", cwd, process, log)
    finally:
        process.kill()
        process.wait()
    (run_dir,) = (cwd / "outputs").iterdir()
    return run_dir.name


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files of the slow lane first: the two workers take a file at a time, so the files
    that take minutes start early and the quick ones fill in, and both workers end together."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)  # stable: files stay in their order


# What no test may leave in the checkout: a run's directory, predictions, an MLflow store
# (MLflow's exit hook makes ./mlflow.db to end a run left active in the main thread).
LEFT_BEHIND = ("outputs", "mlflow.db", "mlruns", "predictions.csv")


@pytest.fixture(autouse=True)
def _leaves_the_checkout_clean():
    before = {name for name in LEFT_BEHIND if (ROOT / name).exists()}
    yield
    left = {name for name in LEFT_BEHIND if (ROOT / name).exists()} - before
    assert not left, f"the test left {sorted(left)} in the checkout {ROOT}"
    mlflow = sys.modules.get("mlflow")
    active = mlflow and mlflow.active_run()
    assert not active, f"the test left MLflow run {active.info.run_id} active"


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect server and database for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=300):
        yield


_STORE_TEMPLATE: list[Path] = []


def _store_template() -> Path:
    # Migrating a new SQLite store costs about 2 s; the suite migrates one and copies it.
    if not _STORE_TEMPLATE:
        from mlflow.tracking import MlflowClient

        database = Path(tempfile.mkdtemp(prefix="tfnn-store-template-")) / "mlflow.db"
        client = MlflowClient(f"sqlite:///{database}")
        client.search_experiments(max_results=1)
        client.search_registered_models(max_results=1)
        _STORE_TEMPLATE.append(database)
    return _STORE_TEMPLATE[0]


def assert_nothing_recorded(directory: Path) -> None:
    """The store that ``use_mlflow_store`` made in ``directory`` holds no experiment but the
    Default, no run, and no artifact."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{directory / 'mlflow.db'}")
    assert [e.name for e in client.search_experiments()] == ["Default"]
    assert client.search_runs(["0"]) == [] and not (directory / "mlruns").exists()


def use_mlflow_store(monkeypatch: pytest.MonkeyPatch, directory: Path) -> str:
    """Make ``directory`` the working directory and MLflow's store (SQLite + ./mlruns) there:
    a copy of a migrated store, its Default experiment's artifacts in ``directory``."""
    import mlflow

    monkeypatch.chdir(directory)
    database = directory / "mlflow.db"
    shutil.copyfile(_store_template(), database)
    with sqlite3.connect(database) as db:
        location = str(directory / "mlruns" / "0")
        db.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0", [location]
        )
    db.close()
    uri = f"sqlite:///{database}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    return uri


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` on a loopback port, its store in a temporary directory; its URL."""
    directory = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    command = [MLFLOW, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    command += ["--backend-store-uri", f"sqlite:///{directory / 'mlflow.db'}"]
    command += ["--artifacts-destination", str(directory / "artifacts"), "--serve-artifacts"]
    log = directory / "server.log"
    server = start(command, log, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(url + "/health", server, log)
        yield url
    finally:
        stop(server)


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> str:
    """A fresh local MLflow store (SQLite + ./mlruns) in a temporary working directory."""
    import mlflow

    yield use_mlflow_store(monkeypatch, tmp_path)
    mlflow.set_tracking_uri(None)


def synthetic_digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` learnable 28x28 uint8 "digits": class k is a bright 7x7 square at the k-th
    of ten fixed places, on noise. Labels cycle 0-9 so every class is present."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(count) % 10).astype(np.uint8)
    images = rng.integers(0, 60, size=(count, 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        row, column = 2 + 12 * (label // 5), 1 + 5 * (label % 5)
        images[i, row : row + 7, column : column + 7] = rng.integers(180, 256, size=(7, 7))
    return images, labels


def write_mnist_dir(directory: Path, train_count: int = 600, test_count: int = 200) -> Path:
    """Write the four canonical MNIST IDX files (gzip) of synthetic digits into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, count, seed in (("train", train_count, 1), ("t10k", test_count, 2)):
        images, labels = synthetic_digits(count, seed)
        write_idx_images(directory / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx_labels(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return directory


@pytest.fixture(scope="session")
def small_mnist_dir(tmp_path_factory) -> Path:
    """A directory of small synthetic MNIST-format files (600 train, 200 test)."""
    return write_mnist_dir(tmp_path_factory.mktemp("small-mnist"))


@pytest.fixture(scope="session")
def large_mnist_dir(tmp_path_factory) -> Path:
    """Synthetic MNIST-format files with 20k training digits: with 256 hidden units an epoch
    lasts long enough (about half a second) to kill or stop something in the middle of it."""
    return write_mnist_dir(tmp_path_factory.mktemp("large-mnist"), 20_000, 200)


@pytest.fixture(scope="session")
def real_mnist_dir() -> Path:
    """``../shared/data/mnist``: 10k real training digits and the official test set."""
    if not REAL_MNIST.is_dir():
        pytest.skip("../shared/data/mnist is absent (it is beside the project in CI)")
    return REAL_MNIST


def crafted_model(directory: Path, marker: Path) -> Path:
    """A local MLflow pyfunc model whose loading writes ``marker`` (as a hostile model could
    run anything) and that then predicts class 3 for every image."""
    import mlflow

    code = directory.parent / "crafted_loader.py"
    code.write_text(
        "from pathlib import Path\n"
        "import numpy as np\n"
        f"Path({str(marker)!r}).write_text('loaded')\n"
        "class _Model:\n"
        "    def predict(self, x, params=None):\n"
        "        return np.eye(10, dtype=np.float32)[np.full(len(x), 3)]\n"
        "def _load_pyfunc(path):\n"
        "    return _Model()\n"
    )
    mlflow.pyfunc.save_model(
        str(directory), loader_module="crafted_loader", code_paths=[str(code)], pip_requirements=[]
    )
    return directory
