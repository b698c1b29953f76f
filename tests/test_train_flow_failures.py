"""Training runs that fail: both the MLflow run and the Prefect flow run say FAILED with the
same one-line reason, and what was recorded before the failure is what the bare library
computes."""

import json
import math
import re
from pathlib import Path

import numpy as np
from conftest import assert_weights_equal
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client

from flows.train import train_flow
from tasks.config import RunOptions, TrainConfig
from tfnn.mnist import load_mnist_idx
from tfnn.network import Sequential, build_mlp
from tfnn.optimizers import SGD
from tfnn.preprocessing import preprocess
from tfnn.serialization import TrainingCheckpoint
from tfnn.training import fit


def failed_run(config: TrainConfig):
    """Run the flow expecting failure: (Prefect state, MLflow run, local checkpoint dir)."""
    state = train_flow(config, RunOptions(experiment="failures"), return_state=True)
    client = MlflowClient()
    (mlflow_run,) = client.search_runs(
        [client.get_experiment_by_name("failures").experiment_id],
        f"tags.`prefect.flow_run_id` = '{state.state_details.flow_run_id}'",
    )
    return state, mlflow_run, Path("outputs") / mlflow_run.info.run_id / "checkpoints"


def assert_failed_with_reason(state, mlflow_run) -> tuple[int, int]:
    """Both records FAILED with the same reason; returns the (epoch, step) it names."""
    assert state.is_failed()
    assert mlflow_run.info.status == "FAILED"
    reason = mlflow_run.data.tags["tfnn.error"]
    assert reason.startswith("NonFiniteLossError: training loss became ")
    match = re.search(r"at epoch (\d+), step (\d+)", reason)
    assert match, reason
    assert reason.split(": ", 1)[1] in state.message
    with get_client(sync_client=True) as prefect:
        assert prefect.read_flow_run(state.state_details.flow_run_id).state.is_failed()
    client = MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    assert client.search_runs(experiments, "attributes.status = 'RUNNING'") == []
    return int(match[1]), int(match[2])


def test_diverging_run_fails_in_mlflow_and_prefect(prefect_harness, mlflow_store, small_mnist_dir):
    # The example: lr = 1e6 on the notebook's network blows up within the first epoch.
    state, mlflow_run, checkpoints = failed_run(
        TrainConfig(learning_rate=1e6, epochs=2, data_source=str(small_mnist_dir))
    )
    epoch, step = assert_failed_with_reason(state, mlflow_run)
    assert epoch == 1 and 0 <= step < math.ceil(600 / 32)
    # Nothing of the failed epoch is recorded: no checkpoint, no epoch metric, no model; only
    # the profile of the data, logged before training started.
    client = MlflowClient()
    assert client.get_metric_history(mlflow_run.info.run_id, "train/loss") == []
    artifacts = [a.path for a in client.list_artifacts(mlflow_run.info.run_id)]
    assert artifacts == ["data_profile.json"]
    assert not list(checkpoints.glob("ckpt-*"))


def test_run_diverging_later_keeps_the_last_good_checkpoint(
    prefect_harness, mlflow_store, small_mnist_dir
):
    # A linear network on full batches grows its loss geometrically at this rate, so the
    # first epochs complete and the loss overflows a few epochs later.
    config = TrainConfig(
        hidden_sizes=(8,),
        activation="identity",
        output_activation="identity",
        loss="sum_squared_error",
        learning_rate=1.0,
        batch_size=600,
        epochs=12,
        validation_fraction=0,  # full batches of all 600 digits
        data_source=str(small_mnist_dir),
    )
    state, mlflow_run, checkpoints = failed_run(config)
    epoch, step = assert_failed_with_reason(state, mlflow_run)
    good = epoch - 1
    assert good >= 1 and step == 0

    client = MlflowClient()
    run_id = mlflow_run.info.run_id
    assert [m.step for m in client.get_metric_history(run_id, "test/loss")] == list(
        range(1, good + 1)
    )
    manifest = Path(client.download_artifacts(run_id, "checkpoints/latest/manifest.json"))
    assert json.loads(manifest.read_text())["epoch"] == good

    # The checkpoint kept on disk holds the weights the bare library has after `good` epochs.
    arrays = load_mnist_idx(small_mnist_dir)
    reference = build_mlp([784, 8, 10], "identity", "identity", "sum_squared_error", seed=42)
    fit(
        reference,
        SGD(1.0),
        preprocess(arrays.train_images, arrays.train_labels),
        {"test": preprocess(arrays.test_images, arrays.test_labels)},
        epochs=good,
        batch_size=600,
        seed=42,
    )
    restored = Sequential.from_spec(reference.spec())
    completed, history = TrainingCheckpoint(restored, checkpoints).restore_latest()
    assert completed == good and history.epochs == good
    assert all(np.isfinite(w.numpy()).all() for w in restored.all_weights)
    assert_weights_equal(restored, [w.numpy() for w in reference.all_weights])
