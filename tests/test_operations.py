"""What operations people look for in MLflow and Prefect, on real stores and servers: system
metrics, the code version, model cards, links both ways, progress, failure alerts."""

import json
import re
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import mlflow
import numpy as np
import pytest
from conftest import ROOT, use_mlflow_store
from mlflow.tracking import MlflowClient
from prefect import flow
from prefect.automations import Automation
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.deployments import run_deployment
from prefect.flow_engine import run_flow
from prefect.logging.handlers import APILogHandler
from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings
from servers import VENV_BIN, free_port, start, stop, wait_for

from flows.alerts import install_failure_alert
from flows.train import train_flow
from tasks.config import RunOptions, TrainConfig
from tasks.registry import FIRST_CHAMPION
from tasks.tracking import tracked_run
from tfnn.mnist import load_mnist_idx
from tfnn.preprocessing import preprocess

# Subprocesses, real servers or signals: the slow lane.
pytestmark = pytest.mark.slow

SYSTEM_KEYS = ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes")
EPOCHS = 2


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()


def small_config(data_dir: Path) -> TrainConfig:
    return TrainConfig(hidden_sizes=(16,), epochs=EPOCHS, seed=3, data_source=str(data_dir))


@pytest.fixture(scope="module")
def local_run(prefect_harness, small_mnist_dir, tmp_path_factory):
    """One registered training run in a local SQLite store, with system metrics sampled
    every half second."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_mlflow_store(monkeypatch, tmp_path_factory.mktemp("ops-local"))
        monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")
        state = train_flow(
            small_config(small_mnist_dir), RunOptions(model_name="ops-model"), return_state=True
        )
        result = state.result()
        client = MlflowClient()
        yield result, str(state.state_details.flow_run_id), client, client.get_run(result.run_id)
    mlflow.set_tracking_uri(None)


def test_finished_run_has_system_metrics(local_run):
    _, _, client, run = local_run
    for key in SYSTEM_KEYS:
        history = client.get_metric_history(run.info.run_id, key)
        assert history, key
        assert [m.step for m in history] == list(range(len(history)))
    assert 0 <= run.data.metrics["system/cpu_utilization_percentage"] <= 100


def test_code_version_is_the_checkouts_commit(local_run):
    tags = local_run[3].data.tags
    assert tags["mlflow.source.git.commit"] == git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    assert tags["mlflow.source.git.dirty"] == str(dirty).lower()
    assert tags["mlflow.source.name"] == "flows.train:train_flow"


def test_model_card_names_the_data_digest_and_the_scores(local_run, small_mnist_dir):
    result, _, client, run = local_run
    # Independent of the run's record: the digest of the files, and the registered model's
    # accuracy on the test set measured here.
    arrays = load_mnist_idx(small_mnist_dir)
    x_test, _ = preprocess(arrays.test_images, arrays.test_labels)
    model = mlflow.pyfunc.load_model(f"models:/ops-model/{result.model_version}")
    accuracy = float(
        np.mean(np.asarray(model.predict(x_test)).argmax(axis=1) == arrays.test_labels)
    )
    card = client.get_model_version("ops-model", result.model_version).description
    assert arrays.digest() in card
    assert f"| test | {accuracy:.4f} |" in card
    assert f"| validation | {run.data.metrics['val/final_accuracy']:.4f} |" in card
    # The model's first version: its champion, by the first-version rule.
    assert f"**promoted**: {FIRST_CHAMPION}" in card
    assert "# ops-model\n\n" in client.get_registered_model("ops-model").description
    # A paragraph is one line, as the UI wraps it: every line ends a sentence or a clause,
    # or is a heading, a table row or a list item.
    for line in card.splitlines():
        assert not line or line[0] in "#|-" or line.endswith((".", ":", ")")), line
    # On a local store the run and plots are named, not linked: there is no page to open.
    assert f"MLflow run `{run.info.run_id}`" in card
    assert f"- `runs:/{run.info.run_id}/plots/accuracy.png`" in card
    note = run.data.tags["mlflow.note.content"]
    assert arrays.digest() in note and f"test accuracy {accuracy:.4f}" in note


def test_the_logged_model_carries_the_final_metrics_only(local_run):
    result, _, client, run = local_run
    model = client.get_logged_model(result.model_uri.removeprefix("models:/"))
    on_model = {metric.key: metric.value for metric in model.metrics}
    finals = {k: v for k, v in run.data.metrics.items() if "/final_" in k}
    assert set(finals) == {
        "val/final_loss",
        "val/final_accuracy",
        "test/final_loss",
        "test/final_accuracy",
    }
    # Those and the per-class test accuracies: no step loss, epoch or system metric.
    classes = {f"test/class/{k}": run.data.metrics[f"test/class/{k}"] for k in range(10)}
    assert on_model == finals | classes
    # The run lists it as its output, made at the step after its last update.
    [output] = client.get_run(run.info.run_id).outputs.model_outputs
    assert (output.model_id, output.step) == (model.model_id, len(result.history.step_loss))
    # Linking logged nothing twice on the run.
    assert len(client.get_metric_history(run.info.run_id, "test/final_accuracy")) == 1


def test_progress_artifact_and_one_log_line_per_epoch(local_run):
    _, flow_run_id, client, run = local_run
    with get_client(sync_client=True) as prefect:
        progress = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
                key=ArtifactFilterKey(any_=["training-progress"]),
            )
        )
        # Prefect ships log lines from a background worker: send what it holds, then give
        # the server a moment to store them.
        APILogHandler().flush()
        log_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        deadline = time.monotonic() + 30
        while True:
            logs = prefect.read_logs(log_filter=log_filter)
            lines = [log.message for log in logs if log.message.startswith("epoch ")]
            if len(lines) >= EPOCHS or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    assert [artifact.data for artifact in progress] == [100.0]
    assert len(lines) == EPOCHS
    for epoch, line in enumerate(lines, start=1):
        loss = client.get_metric_history(run.info.run_id, "val/loss")[epoch - 1].value
        assert line.startswith(f"epoch {epoch}/{EPOCHS}: ")
        assert f"val_loss {loss:.4f}" in line


def test_resumed_run_continues_its_system_metrics(prefect_harness, mlflow_store, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.3")
    params = {"purpose": "resume"}

    @flow
    def crash() -> None:
        with tracked_run(params, "ops-resume") as run_id:
            crash.run_id = run_id
            time.sleep(1)
            raise RuntimeError("killed")

    @flow
    def resume(run_id: str) -> None:
        with tracked_run(params, "ops-resume", resume_run_id=run_id):
            time.sleep(1)

    assert crash(return_state=True).is_failed()
    client = MlflowClient()
    before = client.get_metric_history(crash.run_id, SYSTEM_KEYS[0])
    assert before
    resume(crash.run_id)
    run = client.get_run(crash.run_id)
    assert run.info.status == "FINISHED"
    for key in SYSTEM_KEYS:
        steps = [m.step for m in client.get_metric_history(crash.run_id, key)]
        # The resumed monitor goes on after the crashed one's last step: none logged twice.
        assert steps == list(range(len(steps)))
        assert len(steps) > len(before)


class Receiver(BaseHTTPRequestHandler):
    """Keeps every POST body it receives in ``received``."""

    received: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        length = min(int(self.headers["Content-Length"]), 2**20)
        Receiver.received.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def receiving_alerts(block_name: str) -> HTTPServer:
    """A loopback HTTP receiver, serving, and a webhook block ``block_name`` that posts there."""
    receiver = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    CustomWebhookNotificationBlock(
        name=block_name,
        url=f"http://127.0.0.1:{receiver.server_port}/alert",
        json_data={"subject": "{{subject}}", "body": "{{body}}"},
        allow_private_urls=True,
    ).save(block_name, overwrite=True)
    return receiver


def test_links_both_ways_against_real_servers(
    prefect_harness, mlflow_server, small_mnist_dir, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    try:
        state = train_flow(
            small_config(small_mnist_dir), RunOptions(model_name="ops-server"), return_state=True
        )
        served = MlflowClient()
        run = served.get_run(state.result().run_id)
        card = served.get_model_version("ops-server", state.result().model_version).description
        # The logged model lives in the run's experiment, which the Models tab searches.
        models = served.search_logged_models(experiment_ids=[run.info.experiment_id])
    finally:
        mlflow.set_tracking_uri(None)
    assert [m.model_id for m in models] == [state.result().model_uri.removeprefix("models:/")]
    assert models[0].experiment_id == run.info.experiment_id
    # On a server the card links the run's page and each plot in its Artifacts tab, and
    # the server holds what each plot link names.
    page = f"{mlflow_server}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    assert f"MLflow run [{run.info.run_id}]({page})" in card
    plots = re.findall(r"^- \[(plots/[a-z_]+\.png)\]\((\S+)\)$", card, re.MULTILINE)
    assert len(plots) == 4
    for path, link in plots:
        assert link == f"{page}/artifactPath/{path}"
        query = urllib.parse.urlencode({"path": path, "run_uuid": run.info.run_id})
        with urllib.request.urlopen(f"{mlflow_server}/get-artifact?{query}", timeout=30) as got:
            assert got.read(8) == b"\x89PNG\r\n\x1a\n"
    flow_run_id = str(state.state_details.flow_run_id)
    ui = PREFECT_UI_URL.value()
    assert ui.startswith("http://127.0.0.1:")
    assert run.data.tags["prefect.flow_run_url"] == f"{ui}/runs/flow-run/{flow_run_id}"
    # The run's description links the flow run's page by the name both runs share.
    page = f"[train-relu-16-lr0.1]({ui}/runs/flow-run/{flow_run_id})"
    assert f"Trained by Prefect flow run {page}." in run.data.tags["mlflow.note.content"]
    with get_client(sync_client=True) as prefect:
        links = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
                key=ArtifactFilterKey(any_=["mlflow-run"]),
            )
        )
    url = f"{mlflow_server}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    # Prefect keeps a link artifact as the markdown of the link.
    assert [link.data for link in links] == [f"[MLflow run {run.info.run_id}]({url})"]


def test_failure_alert_automation_notifies_once_per_failed_deployment_run(mlflow_store, tmp_path):
    """The automation of flows/failure_alert.yaml on a real `prefect server start`: a failed
    run of a deployment alerts once through a webhook block; a failed run by hand does not."""
    home, port = tmp_path / "prefect-home", free_port()
    api, log = f"http://127.0.0.1:{port}/api", tmp_path / "prefect-server.log"
    private = {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    prefect = [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1"]
    server = start(
        [*prefect, "--port", str(port)], log, **private, PREFECT_UI_URL=f"http://127.0.0.1:{port}"
    )
    receiver = None
    missing = tmp_path / "no-such-data"
    try:
        wait_for(f"{api}/health", server, log)
        with temporary_settings({PREFECT_API_URL: api}):
            receiver = receiving_alerts("ops-test-alerts")
            Receiver.received.clear()
            alert = install_failure_alert("custom-webhook/ops-test-alerts")
            assert Automation.read(name="tfnn failure alert").id == alert.id
            train_flow.to_deployment("alert-test").apply()
            scheduled = run_deployment("train-mnist/alert-test", timeout=0)
            parameters = {"config": small_config(missing), "options": RunOptions()}
            by_deployment = run_flow(train_flow, scheduled, parameters, return_type="state")
            by_hand = train_flow(small_config(missing), return_state=True)
            deadline = time.monotonic() + 90
            while not Receiver.received and time.monotonic() < deadline:
                time.sleep(0.5)
            time.sleep(10)  # time for a second alert, the by-hand run's, if one were sent
    finally:
        if receiver:
            receiver.shutdown()
            receiver.server_close()
        stop(server)
    assert by_deployment.is_failed() and by_hand.is_failed()
    assert len(Receiver.received) == 1, Receiver.received
    [message] = Receiver.received
    assert message["subject"] == f"tfnn: train-mnist run {scheduled.name} Failed"
    body = message["body"]
    assert f"run {scheduled.name} of deployment alert-test: Failed." in body
    assert str(missing) in body  # the reason
    assert f"Prefect: http://127.0.0.1:{port}/runs/flow-run/{scheduled.id}" in body
    assert f"prefect.flow_run_id = {scheduled.id}" in body
