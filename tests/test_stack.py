"""The compose topology without Docker: a real ``mlflow server`` (SQLite, proxied artifacts,
the compose file's allowed hosts) and a real ``prefect server`` on free loopback ports; the
``tfnn`` commands and ``prefect deploy`` run against them as separate processes, and the
results are read back through the servers' own clients."""

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import PrefectClient
from servers import VENV_BIN, free_port, start, stop, wait_for

from tfnn.data import load_mnist_idx, preprocess
from tfnn.serialization import load_network

ROOT = Path(__file__).resolve().parents[1]
NAME = "tfnn-mnist"
SMALL = ["--hidden-sizes", "16", "--epochs", "1", "--no-progress"]


def compose_allowed_hosts() -> str:
    command = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["mlflow"]
    command = command["command"]
    return command[command.index("--allowed-hosts") + 1]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Both servers, and the environment that points a process at them."""
    home = tmp_path_factory.mktemp("stack")
    mlflow_port, prefect_port = free_port(), free_port()
    servers = []
    try:
        # The compose services' commands, on loopback, with SQLite instead of PostgreSQL.
        mlflow = (
            f"server --workers 1 --backend-store-uri sqlite:///{home / 'mlflow.db'} "
            f"--serve-artifacts --artifacts-destination {home / 'artifacts'} "
            f"--host 127.0.0.1 --port {mlflow_port} --allowed-hosts {compose_allowed_hosts()}"
        )
        servers.append(start([str(VENV_BIN / "mlflow"), *mlflow.split()], home / "mlflow.log"))
        prefect = f"server start --no-ui --host 127.0.0.1 --port {prefect_port}"
        servers.append(
            start(
                [str(VENV_BIN / "prefect"), *prefect.split()],
                home / "prefect.log",
                PREFECT_HOME=str(home / "prefect-server"),
                PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home / 'prefect.db'}",
            )
        )
        wait_for(f"http://127.0.0.1:{mlflow_port}/health", servers[0], home / "mlflow.log")
        wait_for(f"http://127.0.0.1:{prefect_port}/api/health", servers[1], home / "prefect.log")
        env = {
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
            "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
            "PREFECT_HOME": str(home / "prefect-client"),
            "PYTHONPATH": str(ROOT),
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        }
        (home / "work").mkdir()
        yield home, env
    finally:
        for server in servers:
            stop(server)


def run(command: list[str], env: dict[str, str], cwd: Path, **extra: str) -> str:
    """Run a command to completion against the stack; return its stdout."""
    result = subprocess.run(
        command, env={**os.environ, **env, **extra}, cwd=cwd, capture_output=True, text=True
    )
    assert result.returncode == 0, f"{command[:4]} failed:\n{result.stderr[-3000:]}"
    return result.stdout


def tfnn(*args: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", *args]


def prefect_call(env, read):
    async def call():
        async with PrefectClient(api=env["PREFECT_API_URL"]) as client:
            return await read(client)

    return asyncio.run(call())


def deployments(env) -> dict:
    async def read(client):
        return {d.name: d for d in await client.read_deployments()}

    return prefect_call(env, read)


def test_the_compose_topology_on_loopback(stack, small_mnist_dir):
    home, env = stack
    data = ["--data-dir", str(small_mnist_dir)]
    # The long-running `tfnn schedule` registers its deployments while `tfnn train` runs;
    # then it is stopped. `prefect deploy` (the worker's route) runs beside `tfnn retrain`.
    log = home / "schedule.log"
    serving = start(tfnn("schedule", *data, "--train-cron", "15 4 * * *"), log, **env)
    try:
        trained = run(tfnn("train", *data, *SMALL), env, home / "work")
        deadline = time.monotonic() + 180
        while len(served := deployments(env)) < 2:
            assert serving.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "tfnn schedule registered no deployments"
            time.sleep(1)
    finally:
        stop(serving)
    prefect = str(VENV_BIN / "prefect")
    run([prefect, "work-pool", "create", "tfnn", "--type", "process"], env, ROOT)
    deploy_env = {"TFNN_DATA_DIR": str(small_mnist_dir), "TFNN_RETRAIN_CRON": "30 5 * * 1"}
    with open(home / "deploy.log", "wb") as out:
        deploy = subprocess.Popen(
            [prefect, "--no-prompt", "deploy", "--all"],
            env={**os.environ, **env, **deploy_env, "TFNN_TRAIN_CRON": "0 5 * * *"},
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            retrain_flags = ["--margin", "0.005", "--warm-start"]
            retrained = run(tfnn("retrain", *data, *SMALL, *retrain_flags), env, home / "work")
        finally:
            deploy.wait(timeout=300)
    assert deploy.returncode == 0, (home / "deploy.log").read_text()[-3000:]
    # The compose worker's last command, polling once: it joins the pool on the server.
    run([prefect, "worker", "start", "--pool", "tfnn", "--run-once"], env, ROOT)
    workers = prefect_call(env, lambda c: c.read_workers_for_work_pool("tfnn"))
    assert len(workers) == 1

    # Deployments: first as `tfnn schedule` served them, then as prefect.yaml defines them.
    assert served["scheduled-train"].schedules[0].schedule.cron == "15 4 * * *"
    assert served["scheduled-retrain"].schedules[0].schedule.cron == "0 3 * * 0"
    assert served["scheduled-train"].parameters["config"]["data_source"] == str(small_mnist_dir)
    deployed = deployments(env)
    retrain = deployed["scheduled-retrain"]
    assert retrain.work_pool_name == "tfnn"
    assert retrain.entrypoint == "flows/retrain.py:retrain_flow"
    assert retrain.schedules[0].schedule.cron == "30 5 * * 1"
    assert retrain.parameters == {
        "config": {"data_source": str(small_mnist_dir)},
        "model_name": NAME,
        "margin": 0.0,
    }
    assert deployed["scheduled-train"].schedules[0].schedule.cron == "0 5 * * *"

    # MLflow: two finished runs, two versions, the retrain's challenger is champion.
    assert f"registered: models:/{NAME}/1" in trained
    # With no champion, a warm start starts fresh and the margin does not apply.
    assert "promoted: no champion yet" in retrained
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name(NAME).experiment_id])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    versions = client.search_model_versions(f"name = '{NAME}'")
    assert sorted(str(v.version) for v in versions) == ["1", "2"]
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert str(champion.version) == "2" and champion.tags["tfnn.decision"] == "promoted"
    challenger = client.get_run(champion.run_id)
    assert challenger.data.tags["tfnn.decision"] == "promoted"
    assert "tfnn.warm_start_from" not in challenger.data.tags
    # Artifacts went through the server into its artifacts destination; the accuracy the
    # run logged is what the downloaded weights score.
    listed = {a.path for a in client.list_artifacts(champion.run_id)}
    assert {"weights", "plots", "checkpoints"} <= listed
    assert len(list((home / "artifacts").rglob("weights.npz"))) == 2
    weights = client.download_artifacts(champion.run_id, "weights", tempfile.mkdtemp())
    network = load_network(weights)
    arrays = load_mnist_idx(small_mnist_dir)
    x_test, _ = preprocess(arrays.test_images, arrays.test_labels)
    accuracy = np.mean(network.predict(x_test).numpy().argmax(1) == arrays.test_labels)
    assert challenger.data.metrics["final_test_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    [epoch_one] = client.get_metric_history(champion.run_id, "test_accuracy")
    assert epoch_one.step == 1 and epoch_one.value == pytest.approx(accuracy, abs=1e-6)

    # Prefect: train, retrain and the retrain's challenger subflow, all Completed; each
    # MLflow run names its Prefect flow run.
    flow_runs = [r for r in prefect_call(env, lambda c: c.read_flow_runs()) if not r.deployment_id]
    assert len(flow_runs) == 3 and {r.state_type.value for r in flow_runs} == {"COMPLETED"}
    [retrain_run] = [r for r in flow_runs if r.parameters.get("warm_start")]
    assert retrain_run.parameters["margin"] == 0.005
    assert {r.data.tags["prefect.flow_run_id"] for r in runs} < {str(r.id) for r in flow_runs}
