"""Tracking outages against a real ``mlflow server`` on loopback: stopped in the middle of
a run and started again on the same port, the run finishes with every metric and artifact
on the server; stopped for longer than the retry budget, the run fails naming its local
checkpoints, and resuming it later finishes it."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
from conftest import EPOCH_METRICS, train_uninterrupted
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from servers import free_port

from flows.train import train_flow
from tasks.config import RunOptions, TrainConfig
from tasks.model import WEIGHTS_TAG

# Subprocesses, real servers or signals: the slow lane.
pytestmark = pytest.mark.slow


class MlflowServer:
    """``mlflow server`` with a SQLite store and served artifacts under ``directory``, on a
    fixed loopback port so that it can be stopped and started again where clients expect it."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--workers", "1", "--serve-artifacts"]
        command += ["--backend-store-uri", f"sqlite:///{self.directory / 'mlflow.db'}"]
        command += ["--artifacts-destination", str(self.directory / "artifacts")]
        with open(self.directory / "server.log", "a") as log:
            self.process = subprocess.Popen(
                command,
                env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() ends its workers too
            )
        give_up = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2):
                    return
            except OSError:
                assert self.process.poll() is None, (self.directory / "server.log").read_text()
                assert time.monotonic() < give_up, "mlflow server did not start in 3 minutes"
                time.sleep(0.2)

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    if server.process.poll() is None:
        server.stop()


@pytest.fixture
def tracking_at(mlflow_server, tmp_path, monkeypatch) -> MlflowClient:
    """Point this process's tracking at the server; work in a temporary directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    mlflow.set_tracking_uri(mlflow_server.url)
    yield MlflowClient(mlflow_server.url)
    mlflow.set_tracking_uri(None)


def stop_server_when(server: MlflowServer, ready, down_seconds: float | None) -> threading.Thread:
    """A thread that stops ``server`` once ``ready(client)`` holds, then starts it again
    ``down_seconds`` later (never, if None). Its ``outage`` list records what it did."""
    client = MlflowClient(server.url)

    def watch() -> None:
        give_up = time.monotonic() + 300
        while not ready(client) and time.monotonic() < give_up:
            time.sleep(0.05)
        server.stop()
        thread.outage.append("stopped")
        if down_seconds is not None:
            time.sleep(down_seconds)
            server.start()
            thread.outage.append("started")

    thread = threading.Thread(target=watch, daemon=True)
    thread.outage = []
    thread.start()
    return thread


def running_run_with(client: MlflowClient, experiment: str, artifact: str) -> bool:
    """True once a RUNNING run of ``experiment`` holds the ``artifact`` file."""
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id]) if found else []
    return any(
        run.info.status == "RUNNING"
        and any(
            f.path == artifact
            for f in client.list_artifacts(run.info.run_id, Path(artifact).parent.as_posix())
        )
        for run in runs
    )


def assert_complete(client: MlflowClient, run_id: str, config: TrainConfig) -> None:
    """The run FINISHED with each epoch's metrics once, every artifact, and the weights of
    an uninterrupted run."""
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    history, digest = train_uninterrupted(config)
    assert run.data.tags[WEIGHTS_TAG] == digest
    for name, key in EPOCH_METRICS.items():
        logged = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert [step for step, _ in logged] == list(range(1, config.epochs + 1)), name
        if name != "epoch_seconds":
            assert [value for _, value in logged] == getattr(history, name), name
    assert len(client.get_metric_history(run_id, "test/final_accuracy")) == 1
    artifacts = {f.path for f in client.list_artifacts(run_id)}
    assert {"checkpoints", "weights", "plots", "confusion_matrix.json"} <= artifacts
    assert {f.path for f in client.list_artifacts(run_id, "checkpoints")} == {
        "checkpoints/latest",
        "checkpoints/best",
    }
    names = {Path(f.path).name for f in client.list_artifacts(run_id, "checkpoints/latest")}
    assert names == {"ckpt.index", "ckpt.data-00000-of-00001", "manifest.json"}
    manifest = Path(client.download_artifacts(run_id, "checkpoints/latest/manifest.json"))
    assert json.loads(manifest.read_text())["epoch"] == config.epochs
    plots = {Path(f.path).name for f in client.list_artifacts(run_id, "plots")}
    assert plots == {"train_loss.png", "accuracy.png", "confusion_matrix.png", "test_digits.png"}
    assert {Path(f.path).name for f in client.list_artifacts(run_id, "weights")} == {
        "architecture.json",
        "weights.npz",
    }


def large_config(data_dir: Path) -> TrainConfig:
    return TrainConfig(hidden_sizes=(256,), epochs=5, seed=3, data_source=str(data_dir))


def test_run_survives_a_server_outage(prefect_harness, mlflow_server, tracking_at, large_mnist_dir):
    config = large_config(large_mnist_dir)
    watcher = stop_server_when(
        mlflow_server,
        lambda client: running_run_with(client, "outage", "checkpoints/latest/manifest.json"),
        down_seconds=5,
    )
    result = train_flow(config, RunOptions(experiment="outage"))
    watcher.join()
    assert watcher.outage == ["stopped", "started"]
    assert_complete(tracking_at, result.run_id, config)


def test_outage_past_the_budget_fails_then_resumes(
    prefect_harness, mlflow_server, tracking_at, large_mnist_dir, monkeypatch
):
    config = large_config(large_mnist_dir)
    # MLflow's own retries, cut to one quick one.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    watcher = stop_server_when(
        mlflow_server,
        lambda client: running_run_with(client, "stays-away", "checkpoints/latest/manifest.json"),
        down_seconds=None,
    )
    with pytest.raises(MlflowException) as failure:
        train_flow(config, RunOptions(experiment="stays-away"))
    watcher.join()
    # Off MLflow's run stack of this thread (the flow's), whose exit hook would otherwise end
    # the failed run as FINISHED once the server is back.
    assert mlflow.active_run() is None
    (run_dir,) = Path("outputs").iterdir()
    checkpoints = run_dir / "checkpoints"
    message = str(failure.value)
    assert f"{mlflow_server.url}/api/2.0/mlflow/" in message  # MLflow's, naming the request
    assert f"the checkpoints are kept in {checkpoints}" in message
    assert f"tfnn train --resume {run_dir.name}" in message
    assert (checkpoints / "checkpoint").is_file() and list(checkpoints.glob("ckpt-*.index"))

    mlflow_server.start()
    # Nothing could end it while the server was away: it waits, RUNNING, to be resumed.
    assert tracking_at.get_run(run_dir.name).info.status == "RUNNING"
    # Without the local checkpoints, resuming starts from those uploaded before the outage.
    shutil.rmtree(checkpoints)
    result = train_flow(config, RunOptions(experiment="stays-away", resume=run_dir.name))
    assert result.run_id == run_dir.name
    assert_complete(tracking_at, result.run_id, config)
