"""What a long run leaves behind: the tracking of each epoch (``EpochLogger``) keeps disk
flat however many epochs run, against a real MLflow store."""

import shutil
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from conftest import break_checkpoint, weights_of
from mlflow.tracking import MlflowClient

from tasks.epoch_logger import EpochLogger
from tasks.runs import ResumeError
from tfnn.mnist import load_dataset
from tfnn.network import build_mlp
from tfnn.optimizers import SGD
from tfnn.preprocessing import preprocess
from tfnn.training import fit


def sizes(directory: Path) -> dict[str, int]:
    return {str(f.relative_to(directory)): f.stat().st_size for f in directory.rglob("*.*")}


@pytest.fixture(scope="module")
def small_data(small_mnist_dir):
    arrays = load_dataset(str(small_mnist_dir))
    return (
        preprocess(arrays.train_images, arrays.train_labels),
        {"test": preprocess(arrays.test_images, arrays.test_labels)},
    )


def tracked_fit(tmp_path: Path, data, epochs: int) -> tuple[str, EpochLogger, Path]:
    """Train 784-8-10 for ``epochs`` full-batch epochs (one step each: far faster than their
    tracking), logged by an ``EpochLogger`` to a new run; returns the run id, the logger and
    the checkpoint folder."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name("long") or client.get_experiment(
        client.create_experiment("long")
    )
    run_id = client.create_run(experiment.experiment_id).info.run_id
    network = build_mlp([784, 8, 10], seed=0)
    checkpoints = tmp_path / run_id / "checkpoints"
    logger = EpochLogger(run_id, network, checkpoints, steps_per_epoch=1)
    fit(
        network,
        SGD(0.5),
        *data,
        epochs=epochs,
        batch_size=600,
        callbacks=[logger.history, logger],
    )
    return run_id, logger, checkpoints


def test_disk_grows_by_one_history_line_an_epoch(mlflow_store, tmp_path, small_data, monkeypatch):
    monkeypatch.setenv("TFNN_KEEP_CHECKPOINTS", "2")
    found = {}
    for epochs in (3, 30):
        run_id, logger, checkpoints = tracked_fit(tmp_path, small_data, epochs)
        artifacts = Path(urlparse(MlflowClient().get_run(run_id).info.artifact_uri).path)
        found[epochs] = sizes(checkpoints), sizes(artifacts), logger
    (local_3, uploaded_3, _), (local_30, uploaded_30, logger) = found[3], found[30]
    # Uploads overwrite checkpoints/latest and checkpoints/best: the same files, the same sizes
    # (the manifests may differ by a digit of the epoch).
    assert (
        sorted(uploaded_3)
        == sorted(uploaded_30)
        == [
            f"checkpoints/{folder}/{name}"
            for folder in ("best", "latest")
            for name in ("ckpt.data-00000-of-00001", "ckpt.index", "manifest.json")
        ]
    )
    for name, size in uploaded_30.items():
        assert abs(size - uploaded_3[name]) <= 2, name
    # Locally: the newest two checkpoints and the best, each the size of a 3-epoch run's.
    weights = {name: size for name, size in local_30.items() if "ckpt-" in name}
    assert sorted(weights) == ["best/ckpt-30.data-00000-of-00001", "best/ckpt-30.index"] + [
        f"ckpt-{epoch}.{part}" for epoch in (29, 30) for part in ("data-00000-of-00001", "index")
    ]
    assert sorted(weights.values()) == sorted(s for n, s in local_3.items() if "ckpt-" in n)
    # The history file grows by one line an epoch, of a size that does not depend on the epoch.
    lines = (Path(logger.checkpoint.directory) / "history.jsonl").read_text().splitlines()
    assert len(lines) == 30 and max(map(len, lines)) < 260
    assert local_30["history.jsonl"] == sum(len(line) + 1 for line in lines)

    # Every epoch's metrics were logged once, in order.
    logged = MlflowClient().get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in logged) == list(range(1, 31))
    assert [m.value for m in sorted(logged, key=lambda m: m.step)] == logger.history.train_loss


def trained_for(epochs: int, data) -> list:
    network = build_mlp([784, 8, 10], seed=0)
    fit(network, SGD(0.5), *data, epochs=epochs, batch_size=600)
    return weights_of(network)


def resumed_logger(run_id: str, checkpoints: Path) -> EpochLogger:
    return EpochLogger(run_id, build_mlp([784, 8, 10], seed=5), checkpoints, steps_per_epoch=1)


def test_a_broken_local_checkpoint_resumes_from_the_uploaded_one(
    mlflow_store, tmp_path, small_data
):
    run_id, _, checkpoints = tracked_fit(tmp_path, small_data, 3)
    break_checkpoint(checkpoints / "ckpt-3", "empty index")
    logger = resumed_logger(run_id, checkpoints)
    assert logger.resume() == 3
    assert "skipped: ckpt-3 (" in logger.fallback
    assert "from the run's checkpoints/latest artifact, after epoch 3" in logger.fallback
    for a, b in zip(weights_of(logger.network), trained_for(3, small_data)):
        np.testing.assert_array_equal(a, b)


def test_with_the_uploads_torn_too_it_resumes_from_an_older_local_one(
    mlflow_store, tmp_path, small_data
):
    run_id, _, checkpoints = tracked_fit(tmp_path, small_data, 3)
    break_checkpoint(checkpoints / "ckpt-3", "flipped bytes")
    artifacts = Path(urlparse(MlflowClient().get_run(run_id).info.artifact_uri).path)
    for folder in ("latest", "best"):  # its files no longer match its manifest
        break_checkpoint(artifacts / "checkpoints" / folder / "ckpt", "flipped bytes")
    logger = resumed_logger(run_id, checkpoints)
    assert logger.resume() == 2
    assert "from the newest intact, after epoch 2" in logger.fallback
    for a, b in zip(weights_of(logger.network), trained_for(2, small_data)):
        np.testing.assert_array_equal(a, b)
    assert len(logger.history.train_loss) == 2


def test_no_intact_checkpoint_anywhere_is_refused_in_one_line(mlflow_store, tmp_path, small_data):
    run_id, _, checkpoints = tracked_fit(tmp_path, small_data, 2)
    for epoch in (1, 2):
        break_checkpoint(checkpoints / f"ckpt-{epoch}", "deleted")
    artifacts = Path(urlparse(MlflowClient().get_run(run_id).info.artifact_uri).path)
    shutil.rmtree(artifacts / "checkpoints")
    with pytest.raises(ResumeError, match=rf"run {run_id}: no intact checkpoint") as refused:
        resumed_logger(run_id, checkpoints).resume()
    assert "\n" not in str(refused.value) and "ckpt-2 (" in str(refused.value)
