"""The README's way to look at runs: `mlflow ui` on the local store shows what a run logged."""

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from servers import MLFLOW, free_port, start, stop, wait_for

# Subprocesses, real servers or signals: the slow lane.
pytestmark = pytest.mark.slow


def test_mlflow_ui_serves_the_local_store(mlflow_store, tmp_path):
    local = MlflowClient()
    run_id = local.create_run(local.create_experiment("tfnn-mnist")).info.run_id
    local.log_batch(
        run_id, metrics=[Metric("test_accuracy", 0.93, 0, 1)], params=[Param("epochs", "5")]
    )
    local.set_terminated(run_id, "FINISHED")

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
        seen = MlflowClient(f"http://127.0.0.1:{port}").get_run(run_id)
    finally:
        stop(ui)
    assert seen.info.status == "FINISHED"
    assert seen.data.params == {"epochs": "5"}
    assert seen.data.metrics == {"test_accuracy": 0.93}
