"""New Prefect homes and new MLflow stores start from a kept, migrated database
(``common.kept_database``) instead of migrating their own: real private servers, real
MLflow stores, real SQLite files."""

import json
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import mlflow
import prefect
import pytest

from flows.cli import preflight
from tests.conftest import tfnn_env, use_mlflow_store

# Subprocesses, real servers or signals: the slow lane.
pytestmark = pytest.mark.slow

# Starts the command's private server for $PREFECT_HOME, asks it something, stops it.
SERVE = """
import json
from flows import lifetime
from prefect.client.orchestration import get_client

lifetime.start_prefect_server()
try:
    lifetime.wait_for_prefect_server()
    with get_client(sync_client=True) as client:
        answer = {"version": client.api_version(), "block_types": len(client.read_block_types())}
finally:
    lifetime.stop_prefect_server()
print(json.dumps(answer))
"""


def serve_once(home: Path, cache: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", SERVE],
        env=tfnn_env(PREFECT_HOME=str(home), TFNN_CACHE_DIR=str(cache)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def tables(database: Path) -> set[str]:
    with closing(sqlite3.connect(database)) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {name for (name,) in rows}


def migration(database: Path) -> str:
    with closing(sqlite3.connect(database)) as connection:
        return connection.execute("SELECT version_num FROM alembic_version").fetchone()[0]


def test_a_new_home_starts_from_the_kept_database(tmp_path):
    cache = tmp_path / "cache"
    kept = cache / f"prefect-{prefect.__version__}.db"
    first = serve_once(tmp_path / "first", cache)
    assert first["version"] == prefect.__version__ and first["block_types"] > 0
    # The first server migrated its database and kept a copy at the same migration.
    assert migration(kept) == migration(tmp_path / "first" / "prefect.db")
    assert tables(kept) == tables(tmp_path / "first" / "prefect.db")
    assert not list(cache.glob("*-wal")) and not list(cache.glob(".*"))  # whole, no litter
    with closing(sqlite3.connect(kept)) as connection, connection:
        connection.execute("CREATE TABLE tfnn_marker (x)")
    second = serve_once(tmp_path / "second", cache)
    assert second == first
    # The second home's database is the kept copy (the marker came with it), at the newest
    # migration, which the server found nothing to add to.
    assert "tfnn_marker" in tables(tmp_path / "second" / "prefect.db")
    assert migration(tmp_path / "second" / "prefect.db") == migration(kept)


def test_a_broken_kept_database_is_replaced_not_copied(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    kept = cache / f"prefect-{prefect.__version__}.db"
    kept.write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)  # a header and nothing else
    answer = serve_once(tmp_path / "home", cache)
    assert answer["version"] == prefect.__version__ and answer["block_types"] > 0
    assert migration(kept) == migration(tmp_path / "home" / "prefect.db")


def test_a_new_mlflow_store_starts_from_the_kept_one(mlflow_store, tmp_path, monkeypatch):
    # mlflow_store: MLflow's tracking URI set back when the test ends (stores of its own below).
    monkeypatch.setenv("TFNN_CACHE_DIR", str(tmp_path / "cache"))
    kept = tmp_path / "cache" / f"mlflow-{mlflow.__version__}.db"
    first, second = tmp_path / "first", tmp_path / "second"
    for directory in (first, second):
        directory.mkdir()
    use_mlflow_store(monkeypatch, first)
    preflight.check_tracking()
    assert migration(kept) == migration(first / "mlflow.db")
    assert tables(kept) == tables(first / "mlflow.db")
    # The kept store holds no experiment: the Default one records its store's directory.
    with closing(sqlite3.connect(kept)) as connection, connection:
        assert connection.execute("SELECT COUNT(*) FROM experiments").fetchone() == (0,)
        connection.execute("CREATE TABLE tfnn_marker (x)")
    use_mlflow_store(monkeypatch, second)
    preflight.check_tracking()
    assert "tfnn_marker" in tables(second / "mlflow.db")  # the kept copy
    client = mlflow.MlflowClient()
    (default,) = client.search_experiments()
    assert (default.experiment_id, default.name) == ("0", "Default")
    assert default.artifact_location == str(second / "mlruns" / "0")
    # The copy is a working store: a run in a new experiment, its metric read back.
    run = client.create_run(client.create_experiment("kept")).info.run_id
    client.log_metric(run, "loss", 0.25, step=3)
    assert [(m.value, m.step) for m in client.get_metric_history(run, "loss")] == [(0.25, 3)]
