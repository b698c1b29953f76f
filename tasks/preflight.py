"""Checks the ``tfnn`` command makes before it starts Prefect and an MLflow run, so that
bad input is refused within seconds, in one line, and leaves no run behind.

Only the checks of services import MLflow and Prefect (seconds of start-up), so bad
data is refused without them.
"""

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.config import TrainConfig
from tasks.locking import exclusive_lock
from tfnn.data import check_tfds_source, load_dataset


class InputError(ValueError):
    """Input refused before any run started; the message names the problem and the way out."""


@contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    # A check's outcome is its one line: not MLflow's table creation or urllib3's retries.
    levels = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def check_data(config: TrainConfig) -> None:
    """Read a directory data source (raising ``DataError``) and check that a batch fits in it.

    The run reads the directory again rather than receive arrays through Prefect: that
    costs well under a second. A ``tfds:`` source is only checked to be prepared or
    downloadable, since downloading is the run's job.
    """
    if config.data_source.startswith("tfds:"):
        check_tfds_source(config.data_source.removeprefix("tfds:"))
        return
    examples = len(load_dataset(config.data_source).train_labels)
    if config.batch_size > examples:
        raise InputError(
            f"batch_size: {config.batch_size} is more than the {examples} training examples "
            f"in {config.data_source}; use at most {examples}"
        )


def check_output_dir(directory: str) -> None:
    """Create ``directory`` if needed and write a scratch file there."""
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise InputError(
            f"{directory}: cannot write checkpoints and plots there ({error.strerror}); "
            "pass --output-dir DIR naming a writable directory"
        ) from None


# A check waits this long for a service to answer; the run itself keeps the services' own
# bounded timeouts (MLFLOW_HTTP_REQUEST_TIMEOUT, PREFECT_API_REQUEST_TIMEOUT).
CHECK_TIMEOUT_SECONDS = 5
_checked_stores: set[str] = set()


def check_tracking() -> None:
    """Open the MLflow tracking store and ask it for one experiment.

    A local SQLite store is created (or migrated) by its first user: under an exclusive
    lock beside the file, so that commands starting together in one directory create it
    once and the others wait, instead of all migrating it at once and breaking it. A
    server gets ``CHECK_TIMEOUT_SECONDS`` to answer, without retries."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if uri in _checked_stores:
        return
    database = _sqlite_file(uri)
    if database is None:
        _ask_tracking_server(uri)
    else:
        try:
            with exclusive_lock(f"{database}.lock"):
                _open_store(database)
        except OSError as error:  # the lock file: _open_store reports its own errors
            raise InputError(
                f"{database}: the MLflow store needs a writable directory ({error.strerror}); "
                "run from a writable directory or set MLFLOW_TRACKING_URI"
            ) from None
    _checked_stores.add(uri)


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:`` tracking URI (None for other stores)."""
    from sqlalchemy.engine import make_url

    if not uri.startswith("sqlite:"):
        return None
    database = make_url(uri).database
    return Path(database).absolute() if database and database != ":memory:" else None


def _open_store(database: Path) -> None:
    from mlflow.tracking import MlflowClient

    from tasks.tracking import one_line

    try:
        with _quiet("mlflow", "alembic"):
            client = MlflowClient()
            client.search_experiments(max_results=1)
            client.search_registered_models(max_results=1)  # the registry's own store
    except Exception as error:  # alembic, SQLAlchemy and MLflow errors alike
        raise InputError(
            f"MLflow store {database} cannot be opened ({one_line(error)}); move it aside or "
            "set MLFLOW_TRACKING_URI"
        ) from None


def _ask_tracking_server(uri: str) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from tasks.tracking import one_line  # also caps MLflow's own HTTP retries

    quick = {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(CHECK_TIMEOUT_SECONDS),
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    }
    try:
        with _quiet("mlflow", "urllib3"), _environment(quick):
            MlflowClient().search_experiments(max_results=1)
    except MlflowException as error:
        raise InputError(
            f"MLflow tracking at {uri} is unreachable or did not answer within "
            f"{CHECK_TIMEOUT_SECONDS} s ({one_line(error)}); start it or set MLFLOW_TRACKING_URI"
        ) from None


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    # MLflow reads its HTTP settings from the environment at every request.
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def check_orchestration() -> None:
    """Ask the Prefect API for its health (``CHECK_TIMEOUT_SECONDS``, no retries), when
    ``PREFECT_API_URL`` names one."""
    from prefect.client.orchestration import get_client
    from prefect.settings import (
        PREFECT_API_REQUEST_TIMEOUT,
        PREFECT_API_URL,
        PREFECT_CLIENT_MAX_RETRIES,
        temporary_settings,
    )

    from tasks.tracking import one_line

    url = PREFECT_API_URL.value()
    if not url:
        return
    quick = {PREFECT_API_REQUEST_TIMEOUT: CHECK_TIMEOUT_SECONDS, PREFECT_CLIENT_MAX_RETRIES: 0}
    with temporary_settings(updates=quick), get_client(sync_client=True) as client:
        error = client.api_healthcheck()
    if error is not None:
        raise InputError(
            f"Prefect API at {url} is unreachable or did not answer within "
            f"{CHECK_TIMEOUT_SECONDS} s ({one_line(error)}); "
            "start it (prefect server start) or unset PREFECT_API_URL"
        )


def resumed_config_fields(run_id: str) -> dict[str, str]:
    """The configuration recorded by MLflow run ``run_id`` (strings, for ``TrainConfig``)."""
    return TrainConfig.fields_from_params(_resumed_run(run_id).data.params)


def check_resume(run_id: str, config: TrainConfig) -> None:
    """Check that run ``run_id`` is unfinished and was started with ``config`` and this
    machine's library versions, as resuming it will."""
    from tasks.tracking import ResumeError, check_resumable, library_versions

    try:
        check_resumable(_resumed_run(run_id), {**config.as_params(), **library_versions()})
    except ResumeError as error:
        raise InputError(f"--resume {error}") from None


def _resumed_run(run_id: str):
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from tasks.tracking import one_line

    check_tracking()  # the run's store may not exist yet, or be unreachable
    try:
        return MlflowClient().get_run(run_id)
    except MlflowException as error:
        raise InputError(
            f"--resume {run_id}: no such run at {mlflow.get_tracking_uri()} ({one_line(error)})"
        ) from None
