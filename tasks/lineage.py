"""The task that records a run's data: where it came from, its digest and its splits."""

import json
from pathlib import Path

import mlflow
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import get_dataset_source_from_json
from mlflow.data.http_dataset_source import HTTPDatasetSource
from mlflow.entities import Dataset, DatasetInput, InputTag, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from prefect import task
from prefect.cache_policies import NONE

from tasks.data import PreparedData

VALIDATION_RULE = "last validation_fraction of the training split, whatever the seed"


def _dataset_source(source: str) -> DatasetSource:
    scheme, _, name = source.partition(":")
    if scheme == "tfds":
        # MLflow has no resolver for "tfds:NAME" and would raise.
        return HTTPDatasetSource(f"https://www.tensorflow.org/datasets/catalog/{name}")
    # By type: MLflow's two local-path resolvers warn it "can be interpreted in multiple ways".
    return get_dataset_source_from_json(json.dumps({"uri": Path(source).as_uri()}), "local")


@task(cache_policy=NONE)
def log_dataset(run_id: str, data: PreparedData, num_parameters: int) -> None:
    """Record the data source, its digest and the parameter count, and the dataset as an input."""
    client = MlflowClient()
    client.log_batch(
        run_id,
        params=[
            Param("num_parameters", str(num_parameters)),
            Param("data_digest", data.digest),
            Param("num_train_examples", str(len(data.x_train))),
            Param("num_test_examples", str(len(data.x_test))),
            Param("num_validation_examples", str(len(data.x_val))),
            Param("validation_rule", VALIDATION_RULE),
        ],
    )
    inputs = []
    splits = {"training": (data.x_train, data.y_train)}
    if data.validation:
        splits["validation"] = data.validation
    splits["testing"] = (data.x_test, data.y_test)
    for context, (x, y) in splits.items():
        dataset = mlflow.data.from_numpy(
            x, targets=y, source=_dataset_source(data.source), name=f"{data.source}:{context}"
        )
        inputs.append(
            DatasetInput(Dataset(**dataset.to_dict()), [InputTag("mlflow.data.context", context)])
        )
    try:
        client.log_inputs(run_id, datasets=inputs)
    except MlflowException as error:
        # Two runs logging a new dataset at once race in MLflow's look-up-then-insert; the
        # loser is refused by the unique constraint, but the dataset exists by then.
        if "unique constraint" not in str(error).lower():
            raise
        client.log_inputs(run_id, datasets=inputs)
