"""Train and retrain never train one registered model at once: two deployment runs served by
``tfnn schedule`` and triggered together against a real ``prefect server``."""

import subprocess
import time

import pytest
from conftest import tfnn_command, tfnn_env
from mlflow.tracking import MlflowClient
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings
from servers import VENV_BIN, free_port, start, stop, wait_for

from flows.train import model_limit_name, model_slot

# Subprocesses, real servers or signals: the slow lane.
pytestmark = pytest.mark.slow

MODEL = "guard-model"
SMALL = ["--epochs", "3", "--hidden-sizes", "16"]
# Crons that do not fire during the test: only the two runs it triggers run.
NEVER = ["--train-cron", "0 0 1 1 *", "--retrain-cron", "0 0 1 1 *"]


def test_triggered_train_and_retrain_do_not_overlap(small_mnist_dir, tmp_path):
    home, work = tmp_path / "prefect-home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    private = {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    server_log = tmp_path / "prefect-server.log"
    prefect = [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1"]
    server = start([*prefect, "--port", str(port)], server_log, **private)
    schedule_log = tmp_path / "schedule.log"
    serving = None
    try:
        wait_for(f"{api}/health", server, server_log)
        env = tfnn_env(
            **private,
            PREFECT_API_URL=api,
            MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}",
            # Both triggered runs are picked up by one poll, so that they run at once (one
            # waiting for the model) instead of one after the other by chance.
            PREFECT_RUNNER_POLL_FREQUENCY="1",
            # The data watch is served too; it must not announce the data (and so trigger a
            # third run) while the test runs.
            TFNN_WATCH_SETTLE="86400",
        )
        command = tfnn_command("schedule", "--data-dir", str(small_mnist_dir))
        with open(schedule_log, "wb") as log:
            # From its own directory, where the flow runs write their outputs.
            serving = subprocess.Popen(
                [*command, "--model-name", MODEL, *SMALL, *NEVER],
                env=env,
                cwd=work,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            deadline = time.monotonic() + 240
            while len(client.read_deployments()) < 3:
                assert serving.poll() is None, schedule_log.read_text()[-3000:]
                assert time.monotonic() < deadline, "tfnn schedule registered no deployments"
                time.sleep(1)
            served = {
                d.name: (d.global_concurrency_limit.limit, d.concurrency_options.collision_strategy)
                for d in client.read_deployments()
            }
            assert {name: (limit, how.value) for name, (limit, how) in served.items()} == {
                "scheduled-train": (1, "ENQUEUE"),
                "scheduled-retrain": (1, "ENQUEUE"),
                "watch-data": (1, "CANCEL_NEW"),
            }
            triggered = [
                run_deployment("train-mnist/scheduled-train", timeout=0),
                run_deployment("retrain-mnist/scheduled-retrain", timeout=0),
            ]
            deadline = time.monotonic() + 480
            while True:
                runs = [client.read_flow_run(run.id) for run in triggered]
                if all(run.state.is_final() for run in runs):
                    break
                assert serving.poll() is None, schedule_log.read_text()[-3000:]
                assert time.monotonic() < deadline, schedule_log.read_text()[-3000:]
                time.sleep(2)
            limit = client.read_global_concurrency_limit_by_name(model_limit_name(MODEL))
    finally:
        if serving is not None:
            stop(serving)
        stop(server)
    states = [run.state.type.value for run in runs]
    assert states == ["COMPLETED", "COMPLETED"], schedule_log.read_text()[-3000:]
    assert (limit.limit, limit.active_slots) == (1, 0)
    # Both flow runs were running at once, one of them waiting for the model ...
    (train_start, train_end), (retrain_start, retrain_end) = [
        (run.start_time, run.end_time) for run in runs
    ]
    assert train_start < retrain_end and retrain_start < train_end
    # ... yet their MLflow runs, which hold all the training, did not overlap.
    mlflow = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = mlflow.get_experiment_by_name("tfnn-mnist").experiment_id
    intervals = []
    for run in runs:
        [found] = mlflow.search_runs(
            [experiment], filter_string=f"tags.`prefect.root_flow_run_id` = '{run.id}'"
        )
        intervals.append((found.info.start_time, found.info.end_time))
    first, second = sorted(intervals)
    assert first[1] <= second[0]


def test_runs_started_by_hand_hold_no_slot(prefect_harness):
    """Outside a deployment the guard takes no slot: its model's limit is not even made."""
    name = "by-hand-model"

    @flow
    def by_hand() -> list[str]:
        with model_slot(name), get_client(sync_client=True) as client:
            return [limit.name for limit in client.read_global_concurrency_limits(limit=100)]

    assert model_limit_name(name) not in by_hand()
