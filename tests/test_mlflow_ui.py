"""The README's way to look at runs: `mlflow ui` on the local store shows what a training run
logged, as the run itself recorded it."""

import pytest
from mlflow.tracking import MlflowClient
from servers import MLFLOW, free_port, start, stop, wait_for

from flows.train import train_flow
from tasks.config import RunOptions, TrainConfig

# Subprocesses, real servers or signals: the slow lane.
pytestmark = pytest.mark.slow


def test_mlflow_ui_serves_a_local_training_run(
    prefect_harness, mlflow_store, small_mnist_dir, tmp_path
):
    config = TrainConfig(hidden_sizes=(8,), epochs=2, data_source=str(small_mnist_dir))
    result = train_flow(config, RunOptions(register_model=False))
    local = MlflowClient()
    logged = local.get_run(result.run_id)

    port = free_port()
    # As in the README: from the directory that holds mlflow.db.
    command = [
        MLFLOW,
        "ui",
        "--backend-store-uri",
        "sqlite:///mlflow.db",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    log = tmp_path / "mlflow-ui.log"
    ui = start(command, log)
    try:
        wait_for(f"http://127.0.0.1:{port}/health", ui, log)
        served = MlflowClient(f"http://127.0.0.1:{port}")
        seen = served.get_run(result.run_id)
        history = served.get_metric_history(result.run_id, "train/loss")
        models = served.search_logged_models(experiment_ids=[seen.info.experiment_id])
    finally:
        stop(ui)
    assert seen.info.status == "FINISHED"
    assert seen.data.params == logged.data.params
    assert seen.data.metrics["test/final_accuracy"] == result.metrics["test/final_accuracy"]
    assert [(m.step, m.value) for m in history] == list(
        enumerate(result.history.train_loss, start=1)
    )
    # The experiment's Models tab lists the run's model.
    assert [m.model_id for m in models] == [result.model_uri.removeprefix("models:/")]
