"""Tasks on their own, for the cases the flows' tests on local IDX files cannot reach."""

import json
import warnings

import numpy as np
from mlflow.tracking import MlflowClient
from sqlalchemy import event
from sqlalchemy.engine import Engine

from tasks.data import PreparedData
from tasks.lineage import log_dataset
from tfnn.mnist import MnistArrays
from tfnn.preprocessing import preprocess


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
