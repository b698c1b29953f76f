"""Tasks on their own, for the cases the flows' tests on local IDX files cannot reach."""

import io
import json
import warnings

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image
from rich.console import Console
from rich.progress import Progress
from sqlalchemy import event
from sqlalchemy.engine import Engine

from tasks.data import PreparedData, log_dataset
from tasks.predict import load_digits
from tasks.training import ProgressBar
from tfnn.idx import write_idx_images
from tfnn.mnist import MnistArrays
from tfnn.network import build_mlp
from tfnn.optimizers import SGD
from tfnn.preprocessing import preprocess
from tfnn.training import fit


def prepared(source: str) -> PreparedData:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    labels = np.arange(6, dtype=np.uint8)
    x, y = preprocess(images, labels)
    digest = MnistArrays(images, labels, images, labels, source).digest()
    return PreparedData(x, y, x, y, labels, images, source=source, digest=digest)


def test_log_dataset_records_a_tfds_source_as_its_catalog_page(mlflow_store):
    # tfds:mnist is the default source; MLflow cannot resolve "tfds:" strings by itself.
    client = MlflowClient()
    run_id = client.create_run(client.create_experiment("tasks")).info.run_id
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        log_dataset.fn(run_id, prepared("tfds:mnist"), num_parameters=7850)
    run = client.get_run(run_id)
    assert run.data.params["num_parameters"] == "7850"
    assert run.data.params["num_train_examples"] == "6"
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert sorted(inputs) == ["testing", "training"]
    for context, dataset in inputs.items():
        assert dataset.name == f"tfds:mnist:{context}"
        assert dataset.source_type == "http"
        assert json.loads(dataset.source) == {
            "url": "https://www.tensorflow.org/datasets/catalog/mnist"
        }


def test_a_run_that_loses_the_race_to_create_a_dataset_still_records_it(mlflow_store):
    # MLflow's store checks whether a dataset exists and then inserts it, so two sweep
    # configurations logging a new dataset at once race, and the loser's request fails on
    # the unique constraint. The race is forced here: just before the first run's insert,
    # the second run logs the same dataset through another connection of the real store.
    client = MlflowClient()
    experiment = client.create_experiment("race")
    data = prepared("/data/mnist-race")
    loser, winner = (client.create_run(experiment).info.run_id for _ in range(2))
    raced = []

    def win_first(connection, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("INSERT INTO DATASETS") and not raced:
            raced.append(statement)
            log_dataset.fn(winner, data, num_parameters=1)

    event.listen(Engine, "before_cursor_execute", win_first)
    try:
        log_dataset.fn(loser, data, num_parameters=1)
    finally:
        event.remove(Engine, "before_cursor_execute", win_first)
    assert raced  # the winner's insert went in between the loser's lookup and its insert
    for run_id in (loser, winner):
        inputs = client.get_run(run_id).inputs.dataset_inputs
        assert sorted(i.dataset.name for i in inputs) == [
            "/data/mnist-race:testing",
            "/data/mnist-race:training",
        ]


def test_the_progress_bar_shows_the_epochs_running_mean_loss():
    # The number MLflow logs as train_loss, not the last batch's.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 3)).astype(np.float32)
    y = np.eye(2, dtype=np.float32)[(x[:, 0] > 0).astype(int)]
    with Progress(console=Console(file=io.StringIO())) as progress:
        bar = ProgressBar(progress, epochs=2, steps_per_epoch=10)
        history = fit(
            build_mlp([3, 4, 2], seed=0),
            SGD(0.5),
            (x, y),
            {"test": (x, y)},
            epochs=2,
            batch_size=3,
            callbacks=[bar],
        )
    [shown] = progress.tasks
    assert shown.completed == 20
    epoch, loss = shown.description.removeprefix("epoch ").split(" loss ")
    assert epoch == "2/2"
    assert float(loss) == pytest.approx(history.train_loss[-1], abs=1e-4)
    assert f"{history.step_loss[-1]:.4f}" != loss  # the last batch's is another number


def test_digits_are_named_by_their_paths_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for folder in ("first", "second"):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.zeros((28, 28), np.uint8), "L").save(tmp_path / folder / "a.png")
    idx = tmp_path / "few-images-idx3-ubyte"
    write_idx_images(idx, np.zeros((2, 28, 28), np.uint8))
    digits = load_digits.fn(["first/a.png", "./second/a.png", str(idx)])
    assert digits.names == ["first/a.png", "./second/a.png", f"{idx}:0", f"{idx}:1"]
