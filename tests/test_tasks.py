"""Tasks on their own, for the cases the flows' tests on local IDX files cannot reach."""

import json
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from mlflow.tracking import MlflowClient

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


def test_runs_logging_the_same_new_dataset_at_once_both_record_it(mlflow_store):
    # MLflow's store checks whether a dataset exists and then inserts it, so two sweep
    # configurations logging a new dataset at the same moment race: the loser used to fail
    # with a unique-constraint error. Both must end up holding both inputs.
    client = MlflowClient()
    experiment = client.create_experiment("race")
    for attempt in range(12):
        data = prepared(f"/data/mnist-{attempt}")  # a dataset the store does not hold yet
        run_ids = [client.create_run(experiment).info.run_id for _ in range(2)]
        start = threading.Barrier(2)

        def log(run_id: str, data: PreparedData = data, start: threading.Barrier = start) -> None:
            start.wait()
            log_dataset.fn(run_id, data, num_parameters=1)

        with ThreadPoolExecutor(2) as pool:
            for done in [pool.submit(log, run_id) for run_id in run_ids]:
                done.result()
        for run_id in run_ids:
            inputs = client.get_run(run_id).inputs.dataset_inputs
            assert sorted(i.dataset.name for i in inputs) == [
                f"/data/mnist-{attempt}:testing",
                f"/data/mnist-{attempt}:training",
            ]
