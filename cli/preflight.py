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

from tasks.config import TrainConfig, check_utf8
from tasks.data_source import check_tfds_source, load_source
from tasks.config import InputError, one_line
from cli.locking import exclusive_lock
from tfnn.errors import DataError
from tfnn.idx import load_idx_images, load_idx_labels
from tfnn.png import check_png
from tfnn.preprocessing import validation_split


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


def _check_utf8(flag: str, path: str) -> None:
    try:
        check_utf8(path)
    except ValueError as error:
        raise InputError(f"{flag} {error}") from None


def check_data(config: TrainConfig) -> None:
    """Read a directory data source (raising ``DataError``) and check that a batch fits in it.

    The run reads the directory again rather than receive arrays through Prefect: that
    costs well under a second. A ``tfds:`` source is only checked to be prepared or
    downloadable, since downloading is the run's job.
    """
    if config.data_source.startswith("tfds:"):
        check_tfds_source(config.data_source.removeprefix("tfds:"))
        return
    examples = len(load_source(config.data_source).train_labels)
    train_rows, validation_rows = validation_split(examples, config.validation_fraction)
    if config.validation_fraction > 0 and len(validation_rows) == 0:
        raise InputError(
            f"validation_fraction: {config.validation_fraction} of the {examples} training "
            f"examples in {config.data_source} is no example; use at least {1 / examples:.2g}"
        )
    if config.batch_size > len(train_rows):
        held_out = f" after holding out {len(validation_rows)} for validation" * bool(
            len(validation_rows)
        )
        raise InputError(
            f"batch_size: {config.batch_size} is more than the {len(train_rows)} training "
            f"examples in {config.data_source}{held_out}; use at most {len(train_rows)}"
        )


def check_output_dir(directory: str) -> None:
    """Create ``directory`` if needed and write a scratch file there."""
    _check_utf8("--output-dir", directory)
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
    server gets ``CHECK_TIMEOUT_SECONDS`` to answer, without retries. Also checks the
    ``TFNN_*_TIMEOUT_SECONDS`` variables."""
    import mlflow

    from tasks.timeouts import check_timeouts

    try:
        check_timeouts()
    except ValueError as error:
        raise InputError(str(error)) from None
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
    if not uri.startswith("sqlite:"):
        return None  # nothing else needs SQLAlchemy (0.2-0.3 s of import) in this process
    from sqlalchemy.engine import make_url

    database = make_url(uri).database
    return Path(database).absolute() if database and database != ":memory:" else None


def _open_store(database: Path) -> None:
    from mlflow.tracking import MlflowClient

    try:
        with _quiet("mlflow", "alembic"):
            client = MlflowClient()
            client.search_experiments(max_results=1)
            client.search_registered_models(max_results=1)  # the registry's own store
    except Exception as error:  # alembic, SQLAlchemy and MLflow errors alike
        raise InputError(
            f"MLflow store {database} cannot be opened ({one_line(error)}); "
            "move it aside or "
            "set MLFLOW_TRACKING_URI"
        ) from None


def _ask_tracking_server(uri: str) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    quick = {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(CHECK_TIMEOUT_SECONDS),
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    }
    try:
        with _quiet("mlflow", "urllib3"), _environment(quick):
            MlflowClient().search_experiments(max_results=1)
    except MlflowException as error:
        if error.get_http_status_code() in (401, 403):
            raise InputError(
                f"MLflow tracking at {uri} refused the login "
                f"(HTTP {error.get_http_status_code()}); set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD to an MLflow user's name and password"
            ) from None
        raise InputError(
            f"MLflow tracking at {uri} is unreachable or did not answer within "
            f"{CHECK_TIMEOUT_SECONDS} s ({one_line(error)}); "
            "start it or set MLFLOW_TRACKING_URI"
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
    check_orchestration_login(url)


def check_orchestration_login(url: str) -> None:
    """Make one request that needs the auth string: the health check needs none."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError

    try:
        with get_client(sync_client=True) as client:
            client.hello()
    except PrefectHTTPStatusError as refused:
        status = refused.response.status_code
        if status not in (401, 403):
            raise
        raise InputError(
            f"Prefect API at {url} refused the request (HTTP {status}); "
            "set PREFECT_API_AUTH_STRING to the server's auth string"
        ) from None


def check_predict_inputs(images: list[str], labels: str | None, output: str) -> None:
    """Read the IDX files and the PNG headers ``tfnn predict`` will read (without TensorFlow),
    check that labels match the images one for one, and that ``output`` can be written."""
    for flag, paths in (("--images", images), ("--labels", [labels or ""]), ("--output", [output])):
        for path in paths:
            _check_utf8(flag, path)
    count = 0
    for path in images:
        if Path(path).suffix.lower() == ".png":
            check_png(path)
            count += 1
        else:
            count += len(load_idx_images(path))
    found = len(load_idx_labels(labels)) if labels else count
    if found != count:
        raise DataError(f"{labels}: {found} labels for {count} images; pass matching files")
    target = Path(output)
    if target.is_dir():
        raise InputError(f"--output {output}: is a directory; name a CSV file")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=target.parent):
            pass
    except OSError as error:
        raise InputError(
            f"--output {output}: cannot write there ({error.strerror}); name a writable file"
        ) from None


def check_predict(
    images: list[str], labels: str | None, output: str, model_uri: str, trust_model: bool
) -> None:
    """Refuse unreadable images or labels, an unwritable output, an untrusted model URI and
    a model the tracking server does not have before the flow starts."""
    from tasks.predict import UntrustedModelError, check_model_uri, is_tracked_model_uri

    check_predict_inputs(images, labels, output)
    try:
        check_model_uri(model_uri, trust_model)
    except UntrustedModelError as error:
        raise InputError(str(error)) from None
    check_tracking()
    if is_tracked_model_uri(model_uri):
        check_model(model_uri)


def check_model(model_uri: str) -> None:
    """Check that the registered version, alias, logged model or run that ``model_uri``
    names exists on the tracking server."""
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository
    from mlflow.store.artifact.utils.models import get_model_name_and_version
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    try:
        with _quiet("mlflow"):
            if model_uri.startswith("runs:"):
                client.get_run(RunsArtifactRepository.parse_runs_uri(model_uri)[0])
            else:
                found = get_model_name_and_version(client, model_uri)
                if len(found) == 1:
                    client.get_logged_model(found[0])
                else:
                    client.get_model_version(*found)
    except MlflowException as error:
        raise InputError(
            f"--model {model_uri}: not found on the tracking server "
            f"({one_line(error)}); "
            "name a registered model version or alias, a logged model or a run"
        ) from None


def resumed_config_fields(run_id: str) -> dict[str, str]:
    """The configuration recorded by MLflow run ``run_id`` (strings, for ``TrainConfig``)."""
    return TrainConfig.fields_from_params(_resumed_run(run_id).data.params)


def check_resume(
    run_id: str, config: TrainConfig, experiment: str | None = None, output_dir: str = "outputs"
) -> None:
    """Check that run ``run_id`` is unfinished, in ``experiment`` if one is named, was
    started with ``config`` and this machine's library versions, and that no process is
    training it (holding its directory under ``output_dir``)."""
    from mlflow.tracking import MlflowClient

    from tasks.runs import ResumeError, check_run_to_resume, hold_run_directory

    run = _resumed_run(run_id)
    if experiment is not None:
        held = MlflowClient().get_experiment(run.info.experiment_id).name
        if held != experiment:
            raise InputError(
                f"--resume {run_id}: the run is in experiment {held!r}, not {experiment!r}; "
                "leave out --experiment to resume it where it is"
            )
    try:
        check_run_to_resume(run, config.as_params())
        with hold_run_directory(Path(output_dir) / run_id):
            pass
    except ResumeError as error:
        raise InputError(f"--resume {error}") from None


# The command reads a resumed run once: for its configuration and for its checks.
_resumed_runs: dict = {}


def _resumed_run(run_id: str):
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if run_id in _resumed_runs:
        return _resumed_runs[run_id]
    check_tracking()  # the run's store may not exist yet, or be unreachable
    try:
        run = _resumed_runs[run_id] = MlflowClient().get_run(run_id)
    except MlflowException as error:
        raise InputError(
            f"--resume {run_id}: no such run at {mlflow.get_tracking_uri()} ({one_line(error)})"
        ) from None
    return run
