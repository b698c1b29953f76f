"""The compose topology without Docker: a real ``mlflow server`` (its basic-auth app, SQLite,
proxied artifacts) and a real ``prefect server`` (with an auth string) on free loopback ports,
started with the compose file's commands and environments through the image's entrypoint,
their secrets read from files. The ``tfnn`` commands log in with the variables a user sets,
``prefect deploy`` and the worker through the entrypoint; the results are read back through
the servers' own clients, and clients without credentials are refused."""

import asyncio
import configparser
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import refusal as refused_line
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import FlowRunFilter
from prefect.exceptions import PrefectHTTPStatusError
from servers import VENV_BIN, free_port, start, stop, wait_for

from tfnn.mnist import load_mnist_idx
from tfnn.preprocessing import preprocess
from tfnn.serialization import load_network

# Subprocesses, real servers or signals: the slow lane.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# The image's entrypoint: loads a service's secrets from files, then runs its command.
ENTRYPOINT = str(ROOT / "docker/entrypoint.sh")
# A client's secrets; the worker's entrypoint reads them from files instead.
SECRET_VARIABLES = ("MLFLOW_TRACKING_PASSWORD", "PREFECT_API_AUTH_STRING")
NAME = "tfnn-mnist"
SMALL = ["--hidden-sizes", "16", "--epochs", "1", "--no-progress"]


def compose_service(name: str) -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"][name]


def replace_options(command: list[str], **values: str) -> list[str]:
    """``command`` with the value after each ``--flag`` replaced (``flag_name="v"``)."""
    command = list(command)
    for flag, value in values.items():
        command[command.index("--" + flag.replace("_", "-")) + 1] = value
    return command


def service_env(name: str, secrets: Path, **overrides: str) -> dict[str, str]:
    """A compose service's environment as a plain process gets it: the secret files it names
    under ``/run/secrets`` are read from ``secrets``, and ``overrides`` go on top."""
    env = {
        key: str(value).replace("/run/secrets", str(secrets))
        for key, value in compose_service(name)["environment"].items()
    }
    return {**env, **overrides}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Both servers, with authentication on; the environment that points a process at them
    and logs it in; and the secrets, to check that no command line holds one."""
    home = tmp_path_factory.mktemp("stack")
    mlflow_port, prefect_port = free_port(), free_port()
    secrets = home / "secrets"
    secrets.mkdir()
    values = {}
    for name in (
        "mlflow_db_password",
        "mlflow_admin_password",
        "mlflow_secret_key",
        "prefect_db_password",
        "prefect_auth_string",
    ):
        values[name] = f"{name}-{uuid.uuid4().hex}"
        (secrets / name).write_text(values[name] + "\n")
    # The compose file's MLflow auth settings, with the users' table in the SQLite store.
    store = f"sqlite:///{home / 'mlflow.db'}"
    auth = configparser.ConfigParser()
    auth.read(ROOT / "docker/mlflow-auth.ini")
    auth["mlflow"]["database_uri"] = store
    with open(home / "mlflow-auth.ini", "w") as out:
        auth.write(out)
    servers = []
    try:
        # The compose services' commands and environments, started through the image's
        # entrypoint on loopback, with SQLite instead of PostgreSQL.
        mlflow = replace_options(
            compose_service("mlflow")["command"],
            backend_store_uri=store,
            artifacts_destination=str(home / "artifacts"),
            host="127.0.0.1",
            port=str(mlflow_port),
        )
        servers.append(
            start(
                [ENTRYPOINT, *mlflow, "--workers", "1"],
                home / "mlflow.log",
                **service_env(
                    "mlflow", secrets, MLFLOW_AUTH_CONFIG_PATH=str(home / "mlflow-auth.ini")
                ),
            )
        )
        prefect = replace_options(
            compose_service("prefect-server")["command"], host="127.0.0.1", port=str(prefect_port)
        )
        prefect_env = {
            key: value
            for key, value in service_env(
                "prefect-server",
                secrets,
                PREFECT_HOME=str(home / "prefect-server"),
                PREFECT_SERVER_DATABASE_DRIVER="sqlite+aiosqlite",
                PREFECT_SERVER_DATABASE_NAME=str(home / "prefect.db"),
            ).items()
            if key not in ("PREFECT_SERVER_DATABASE_HOST", "PREFECT_SERVER_DATABASE_PORT")
        }
        servers.append(
            start([ENTRYPOINT, *prefect, "--no-ui"], home / "prefect.log", **prefect_env)
        )
        wait_for(f"http://127.0.0.1:{mlflow_port}/health", servers[0], home / "mlflow.log")
        wait_for(f"http://127.0.0.1:{prefect_port}/api/health", servers[1], home / "prefect.log")
        worker = compose_service("worker")["environment"]
        env = {
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
            "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
            # What a user exports to reach the stack: the worker's login.
            "MLFLOW_TRACKING_USERNAME": worker["MLFLOW_TRACKING_USERNAME"],
            "MLFLOW_TRACKING_PASSWORD": values["mlflow_admin_password"],
            "PREFECT_API_AUTH_STRING": values["prefect_auth_string"],
            "PREFECT_HOME": str(home / "prefect-client"),
            "PYTHONPATH": str(ROOT),
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        }
        # The worker's route: its secrets from files, loaded by the entrypoint.
        worker_env = {
            **{k: v for k, v in env.items() if k not in SECRET_VARIABLES},
            **{
                k: v
                for k, v in service_env("worker", secrets).items()
                if k == "TFNN_SECRETS" or k.endswith("_FILE")
            },
        }
        (home / "work").mkdir()
        yield home, env, worker_env, values
    finally:
        for server in servers:
            stop(server)


def run(command: list[str], env: dict[str, str], cwd: Path, **extra: str) -> str:
    """Run a command to completion against the stack; return its stdout."""
    result = subprocess.run(
        command,
        env={**os.environ, **env, **extra},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, f"{command[:4]} failed:\n{result.stderr[-3000:]}"
    return result.stdout


def tfnn(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", *args]


def prefect_call(env, read):
    async def call():
        login = env.get("PREFECT_API_AUTH_STRING")
        async with PrefectClient(api=env["PREFECT_API_URL"], auth_string=login) as client:
            return await read(client)

    return asyncio.run(call())


def deployments(env) -> dict:
    async def read(client):
        return {d.name: d for d in await client.read_deployments()}

    return prefect_call(env, read)


def refusal(command: list[str], env: dict[str, str], cwd: Path, drop: str) -> str:
    """Run ``command`` without the variable ``drop``; it must be refused in one line."""
    full = {k: v for k, v in {**os.environ, **env}.items() if k != drop}
    result = subprocess.run(command, env=full, cwd=cwd, capture_output=True, text=True, timeout=900)
    line = refused_line(result)
    assert line.startswith("tfnn: error: ")
    return line


def test_the_compose_topology_on_loopback(stack, small_mnist_dir, monkeypatch):
    home, env, worker_env, secrets = stack
    # This process reads the results back as the stack's user.
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(name, env[name])
    data = ["--data-dir", str(small_mnist_dir)]
    # The long-running `tfnn schedule` registers its deployments while `tfnn train` runs;
    # then it is stopped. `prefect deploy` (the worker's route) runs beside `tfnn retrain`.
    log = home / "schedule.log"
    serving = start(
        tfnn("schedule", *data, "--train-cron", "15 4 * * *"), log, home / "work", **env
    )
    try:
        trained = run(tfnn("train", *data, *SMALL), env, home / "work")
        deadline = time.monotonic() + 180
        while len(served := deployments(env)) < 2:
            assert serving.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "tfnn schedule registered no deployments"
            time.sleep(1)
    finally:
        stop(serving)
    # Stopped, `tfnn schedule` leaves its deployments paused (Prefect's serve does) and no
    # SCHEDULED run behind: the server deletes a paused deployment's scheduled runs.
    stopped = deployments(env)
    assert stopped["scheduled-train"].paused and stopped["scheduled-retrain"].paused
    left = prefect_call(
        env,
        lambda c: c.read_flow_runs(
            flow_run_filter=FlowRunFilter(state={"type": {"any_": ["SCHEDULED"]}})
        ),
    )
    assert left == []
    prefect = str(VENV_BIN / "prefect")
    run([ENTRYPOINT, prefect, "work-pool", "create", "tfnn", "--type", "process"], worker_env, ROOT)
    deploy_env = {"TFNN_DATA_DIR": str(small_mnist_dir), "TFNN_RETRAIN_CRON": "30 5 * * 1"}
    yaml_file = str(ROOT / "prefect.yaml")
    with open(home / "deploy.log", "wb") as out:
        deploy = subprocess.Popen(
            [ENTRYPOINT, prefect, "--no-prompt", "deploy", "--all", "--prefect-file", yaml_file],
            env={**os.environ, **worker_env, **deploy_env, "TFNN_TRAIN_CRON": "0 5 * * *"},
            # The deployments' runs work where it ran (the image's /app): here, not the checkout.
            cwd=home / "work",
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
    run([ENTRYPOINT, prefect, "worker", "start", "--pool", "tfnn", "--run-once"], worker_env, ROOT)
    workers = prefect_call(env, lambda c: c.read_workers_for_work_pool("tfnn"))
    assert len(workers) == 1

    # Deployments: first as `tfnn schedule` served them, then as prefect.yaml defines them.
    assert served["scheduled-train"].schedules[0].schedule.cron == "15 4 * * *"
    assert served["scheduled-retrain"].schedules[0].schedule.cron == "0 3 * * 0"
    assert served["scheduled-train"].parameters["config"]["data_source"] == str(small_mnist_dir)
    deployed = deployments(env)
    retrain = deployed["scheduled-retrain"]
    assert retrain.work_pool_name == "tfnn"
    assert retrain.entrypoint == "flows.retrain.retrain_flow"
    assert retrain.schedules[0].schedule.cron == "30 5 * * 1"
    # Only what differs from TrainConfig's and RunOptions' defaults (model name, margin: the
    # defaults, written once in tasks/config.py).
    assert retrain.parameters == {"config": {"data_source": str(small_mnist_dir)}}
    assert deployed["scheduled-train"].schedules[0].schedule.cron == "0 5 * * *"

    # MLflow: two finished runs, two versions. The train's is the first, so champion; the
    # retrain's challenger warm-started from it and was compared with it.
    assert f"registered: models:/{NAME}/1\nchampion: models:/{NAME}@champion" in trained
    assert "champion before: version 1  val_accuracy" in retrained
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name(NAME).experiment_id])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    versions = client.search_model_versions(f"name = '{NAME}'")
    assert sorted(str(v.version) for v in versions) == ["1", "2"]
    first, second = (client.get_model_version(NAME, v) for v in ("1", "2"))
    assert second.tags["tfnn.compared_with_version"] == "1"
    challenger = client.get_run(second.run_id)
    assert challenger.data.tags["tfnn.warm_start_from"] == f"runs:/{first.run_id}/weights"
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert str(champion.version) == ("2" if second.tags["tfnn.decision"] == "promoted" else "1")
    assert champion.tags["tfnn.decision"] == "promoted"
    champion_run = client.get_run(champion.run_id)
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
    assert champion_run.data.metrics["test/final_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    [epoch_one] = client.get_metric_history(champion.run_id, "test/accuracy")
    assert epoch_one.step == 1 and epoch_one.value == pytest.approx(accuracy, abs=1e-6)

    # Prefect: train, retrain and the retrain's challenger subflow, all Completed; each
    # MLflow run names its Prefect flow run.
    flow_runs = [r for r in prefect_call(env, lambda c: c.read_flow_runs()) if not r.deployment_id]
    assert len(flow_runs) == 3 and {r.state_type.value for r in flow_runs} == {"COMPLETED"}
    # The retrain's own run (its challenger subflow has the same options and a run name).
    [retrain_run] = [
        r
        for r in flow_runs
        if r.parameters.get("options", {}).get("warm_start") and not r.parameters.get("run_name")
    ]
    assert retrain_run.parameters["options"]["margin"] == 0.005
    assert {r.data.tags["prefect.flow_run_id"] for r in runs} < {str(r.id) for r in flow_runs}

    # Without credentials nothing moves: not the champion, not a deployment; the command
    # refuses in one line before any run starts.
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    with pytest.raises(MlflowException) as refused:
        client.set_registered_model_alias(NAME, "champion", "1")
    assert refused.value.get_http_status_code() == 401
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-" + env["MLFLOW_TRACKING_PASSWORD"])
    with pytest.raises(MlflowException) as refused:
        client.set_registered_model_alias(NAME, "champion", "1")
    assert refused.value.get_http_status_code() == 401
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", env["MLFLOW_TRACKING_PASSWORD"])
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "2"
    anonymous = {k: v for k, v in env.items() if k != "PREFECT_API_AUTH_STRING"}
    with pytest.raises(PrefectHTTPStatusError) as refused:
        prefect_call(anonymous, lambda c: c.delete_deployment(deployed["scheduled-train"].id))
    assert refused.value.response.status_code == 401
    assert set(deployments(env)) == {"scheduled-train", "scheduled-retrain", "watch-data"}
    for drop, named in (
        ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"),
        ("PREFECT_API_AUTH_STRING", "PREFECT_API_AUTH_STRING"),
    ):
        line = refusal(tfnn("train", *data, *SMALL), env, home / "work", drop)
        assert "(HTTP 401)" in line and named in line, line
    assert len(client.search_runs([client.get_experiment_by_name(NAME).experiment_id])) == 2

    # No secret is on any process's command line, nor in the servers' logs.
    command_lines = [
        path.read_bytes() for path in Path("/proc").glob("[0-9]*/cmdline") if path.exists()
    ]
    for secret in secrets.values():
        assert not any(secret.encode() in line for line in command_lines), secret
        for log in ("mlflow.log", "prefect.log"):
            assert secret not in (home / log).read_text(errors="replace"), (log, secret)

    # A scheduled train run by a process worker (no image, no pull step: in the directory
    # `prefect deploy` ran in): started by hand here, as the schedule's next run would be.
    flow_run = prefect_call(
        env, lambda c: c.create_flow_run_from_deployment(deployed["scheduled-train"].id)
    )
    run([ENTRYPOINT, prefect, "worker", "start", "--pool", "tfnn", "--run-once"], worker_env, ROOT)
    done = prefect_call(env, lambda c: c.read_flow_run(flow_run.id))
    assert done.state_type.value == "COMPLETED", done.state
    assert done.name == "train-relu-100x50-lr0.1"
    assert {"trigger:manual", f"model:{NAME}", "activation:relu"} <= set(done.tags)
    [trained_by_worker] = client.search_runs(
        [client.get_experiment_by_name(NAME).experiment_id],
        f"tags.`prefect.flow_run_id` = '{flow_run.id}'",
    )
    assert trained_by_worker.info.status == "FINISHED"
    assert (home / "work" / "outputs" / trained_by_worker.info.run_id / "plots").is_dir()
    assert not (ROOT / "outputs" / trained_by_worker.info.run_id).exists()
    assert trained_by_worker.info.run_name == done.name
    assert trained_by_worker.data.params["data_source"] == str(small_mnist_dir)
    [version] = client.search_model_versions(f"run_id = '{trained_by_worker.info.run_id}'")
    assert (version.name, str(version.version)) == (NAME, "3")
