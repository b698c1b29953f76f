"""The docker-compose stack, checked without Docker: the compose specification's JSON
schema, the wiring the code relies on, the .env.example contract and prefect.yaml."""

import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from dotenv import dotenv_values
from mlflow.server.security_utils import is_allowed_host_header
from prefect.client.schemas.schedules import CronSchedule
from prefect.flows import load_flow_from_entrypoint
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools import validate

from flows.schedules import build_deployments
from tasks.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
CHECK_JSONSCHEMA = str(Path(sys.executable).with_name("check-jsonschema"))


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def check_compose(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHECK_JSONSCHEMA, "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
    )


def test_compose_file_follows_the_compose_specification(tmp_path):
    result = check_compose(ROOT / "docker-compose.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    # The same file with one invalid value must fail, or the check proves nothing.
    broken = (
        (ROOT / "docker-compose.yml")
        .read_text()
        .replace("condition: service_healthy", "condition: when_ready", 1)
    )
    (tmp_path / "docker-compose.yml").write_text(broken)
    assert check_compose(tmp_path / "docker-compose.yml").returncode != 0


def test_services_are_wired_as_the_code_expects():
    services = compose()["services"]
    assert set(services) == {"postgres", "mlflow", "prefect-server", "worker"}
    databases = re.findall(
        r"CREATE DATABASE (\w+);", (ROOT / "docker/postgres-init.sql").read_text()
    )

    mlflow = services["mlflow"]["command"]
    backend = urlsplit(option(mlflow, "--backend-store-uri"))
    assert (backend.scheme, backend.hostname, backend.port) == ("postgresql", "postgres", 5432)
    assert backend.path.lstrip("/") in databases
    assert "--serve-artifacts" in mlflow
    artifacts = option(mlflow, "--artifacts-destination")
    assert f"mlflow-artifacts:{artifacts}" in services["mlflow"]["volumes"]
    assert "mlflow-artifacts" in compose()["volumes"]

    prefect_db = urlsplit(
        services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    )
    assert (prefect_db.scheme, prefect_db.hostname) == ("postgresql+asyncpg", "postgres")
    assert prefect_db.path.lstrip("/") in databases and prefect_db.path != backend.path

    # The worker reaches both servers by service name and port, as MLflow's Host check allows.
    worker = services["worker"]["environment"]
    tracking = urlsplit(worker["MLFLOW_TRACKING_URI"])
    assert tracking.hostname == "mlflow" and str(tracking.port) == option(mlflow, "--port")
    allowed = option(mlflow, "--allowed-hosts").split(",")
    for host in (tracking.netloc, "localhost:5000", "127.0.0.1:5000"):
        assert is_allowed_host_header(allowed, host), host
    assert not is_allowed_host_header(allowed, "attacker.example:5000")
    api = urlsplit(worker["PREFECT_API_URL"])
    server = services["prefect-server"]["command"]
    assert (api.hostname, str(api.port), api.path) == (
        "prefect-server",
        option(server, "--port"),
        "/api",
    )
    # SOURCE:TARGET[:MODE], where SOURCE may be a ${VAR:?message} holding colons.
    volumes = [re.sub(r"\$\{[^}]*\}", "SOURCE", v) for v in services["worker"]["volumes"]]
    mounts = [volume.split(":")[1] for volume in volumes]
    assert worker["TFNN_DATA_DIR"] in mounts


def test_ports_healthchecks_and_start_order():
    services = compose()["services"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        for needed, condition in service.get("depends_on", {}).items():
            assert condition == {"condition": "service_healthy"}, name
            assert "healthcheck" in services[needed], needed
    assert set(services["worker"]["depends_on"]) == {"mlflow", "prefect-server"}
    assert set(services["mlflow"]["depends_on"]) == {"postgres"}


def test_env_example_defines_every_variable_and_no_secret_is_committed():
    text = (ROOT / "docker-compose.yml").read_text()
    used = set(re.findall(r"\$\{(\w+)", text))
    example = dotenv_values(ROOT / ".env.example")
    assert used <= set(example), f"missing from .env.example: {used - set(example)}"
    assert example["POSTGRES_PASSWORD"] == "change-me"
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", ".env"], cwd=ROOT, check=False
    ).returncode
    assert ignored == 0, ".env must be git-ignored"
    # Passwords reach services only through variables.
    assert "change-me" not in text


def test_prefect_yaml_deploys_the_scheduled_flows_to_the_worker_pool():
    services = compose()["services"]
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    worker_command = services["worker"]["command"][-1]
    # The values the worker deploys with: its environment, with .env.example's values.
    env = {
        **services["worker"]["environment"],
        **dotenv_values(ROOT / ".env.example"),
    }
    env = {k: v for k, v in env.items() if "${" not in str(v)}
    env["TFNN_DATA_DIR"] = services["worker"]["environment"]["TFNN_DATA_DIR"]

    def resolve(value):
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        if not isinstance(value, str):
            return value
        return re.sub(r"\{\{ \$(\w+) \}\}", lambda m: env[m.group(1)], value)

    served = {d.name: d for d in build_deployments(TrainConfig(), "0 2 * * *", "0 3 * * 0")}
    assert {d["name"] for d in spec["deployments"]} == set(served)
    for deployment in spec["deployments"]:
        assert f"--pool {deployment['work_pool']['name']}" in worker_command
        flow = load_flow_from_entrypoint(deployment["entrypoint"])
        assert deployment["entrypoint"] == served[deployment["name"]].entrypoint
        assert flow.name == served[deployment["name"]].flow_name
        parameters = resolve(deployment["parameters"])
        # What the server enforces when deploying, then what the flow run checks.
        schema = parameter_schema(flow).model_dump_for_openapi()
        validate(parameters, schema, raise_on_error=True, ignore_required=True)
        assert flow.validate_parameters(parameters)["config"].data_source == "/data/mnist"
        for schedule in deployment["schedules"]:
            CronSchedule(cron=resolve(schedule["cron"]))
    assert spec["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == (
        "/app"
    )


def test_dockerfile_installs_the_project_with_the_server_extra():
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = {line.split()[1] for line in dockerfile.splitlines() if line.startswith("COPY")}
    for package in ("tfnn", "tasks", "flows", "prefect.yaml"):
        assert package in copied
    assert 'pip install ".[server]"' in dockerfile
    assert "WORKDIR /app" in dockerfile
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'server = \["psycopg2-binary', pyproject)
