"""Reproducible runs: one configuration, seed and data set give identical metrics and
bit-identical weights, and the MLflow record holds what it takes to repeat the run."""

import hashlib
import platform
from pathlib import Path

import mlflow
import numpy as np
import prefect
import tensorflow as tf
from conftest import EPOCH_METRICS, train_uninterrupted
from mlflow.tracking import MlflowClient

from flows.train import train_flow
from tasks.config import RunOptions, TrainConfig
from tasks.model import WEIGHTS_TAG
from tfnn.mnist import load_dataset

COMPARED = [key for key in EPOCH_METRICS.values() if key != "train/epoch_seconds"]
COMPARED += ["train/step_loss", "test/final_loss", "test/final_accuracy"]


def sha256_of_saved_weights(directory: Path, layers: int) -> str:
    """The digest ``WEIGHTS_TAG`` documents, over ``weights.npz`` in ``all_weights`` order."""
    digest = hashlib.sha256()
    with np.load(directory / "weights.npz") as saved:
        for key in (f"layer{i}/{part}" for i in range(layers) for part in ("weight", "bias")):
            digest.update(f"{saved[key].shape}{saved[key].dtype.str};".encode())
            digest.update(saved[key].tobytes())
    return digest.hexdigest()


def test_two_runs_with_one_seed_are_identical(
    prefect_harness, mlflow_store, small_mnist_dir, tmp_path
):
    config = TrainConfig(
        hidden_sizes=(32,), epochs=3, batch_size=20, seed=11, data_source=str(small_mnist_dir)
    )
    results = [
        train_flow(config, RunOptions(experiment="repro", output_dir=str(tmp_path / name)))
        for name in ("one", "two")
    ]
    client = MlflowClient()
    first, second = (client.get_run(result.run_id) for result in results)

    for name in COMPARED:
        one, two = (
            sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, name))
            for run in (first, second)
        )
        assert one and one == two, name
    for run in (first, second):
        saved = client.download_artifacts(run.info.run_id, "weights", str(tmp_path / "download"))
        assert run.data.tags[WEIGHTS_TAG] == sha256_of_saved_weights(Path(saved), layers=2)
    digest = first.data.tags[WEIGHTS_TAG]
    assert second.data.tags[WEIGHTS_TAG] == digest
    assert train_uninterrupted(config)[1] == digest
    reseeded = TrainConfig(**{**config.model_dump(), "seed": 12})
    assert train_uninterrupted(reseeded)[1] != digest

    # The record alone repeats the run: configuration, data and library versions.
    params = first.data.params
    assert TrainConfig(**TrainConfig.fields_from_params(params)) == config
    assert params["data_digest"] == load_dataset(str(small_mnist_dir)).digest()
    assert params["version.python"] == platform.python_version()
    assert params["version.tensorflow"] == tf.__version__
    assert params["version.numpy"] == np.__version__
    assert params["version.prefect"] == prefect.__version__
    assert params["version.mlflow"] == mlflow.__version__
