"""The checks the ``tfnn`` command makes before any run starts, so that bad input is refused
within seconds, in one line (an ``InputError`` or ``DataError``), and leaves no run behind:
the data and the output directory, the services, a run to resume, and predict's files.

A service check gets ``CHECK_TIMEOUT_SECONDS`` and no retries; the run itself keeps the
services' own timeouts and retries (``MLFLOW_HTTP_REQUEST_*``, ``PREFECT_API_REQUEST_TIMEOUT``).
"""

import logging
import os
import tempfile
from contextlib import ExitStack
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.models import get_model_info
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.exceptions import PrefectHTTPStatusError
from prefect.settings import (
    PREFECT_API_REQUEST_TIMEOUT,
    PREFECT_API_URL,
    PREFECT_CLIENT_MAX_RETRIES,
    temporary_settings,
)

from tasks.config import CHAMPION_ALIAS, InputError, TrainConfig, check_utf8, one_line
from tasks.data import check_tfds_source, load_source
from tasks.epoch_logger import keep_checkpoints
from tasks.locking import exclusive_lock
from tasks.predict import check_model_uri, is_tracked_model_uri
from tasks.runs import (
    CHECK_TIMEOUT_SECONDS,
    ResumeError,
    champion_version,
    check_run_to_resume,
    hold_run_directory,
    quick_mlflow,
    recorded_options,
)
from tasks.timeouts import check_timeouts
from tfnn.errors import DataError
from tfnn.idx import load_idx_images, load_idx_labels
from tfnn.png import check_png
from tfnn.preprocessing import validation_split

# The stores MLflow's tracking accepts: its REST server, SQLAlchemy databases and files.
TRACKING_SCHEMES = ("http", "https", "databricks", "sqlite", "postgresql", "mysql", "mssql", "file")


def _path(flag: str, path: str) -> Path:
    try:
        check_utf8(path)
    except ValueError as error:
        raise InputError(f"{flag} {error}") from None
    return Path(path)


def _writable(directory: Path, refusal: str) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise InputError(refusal.format(reason=error.strerror)) from None


def check_data(config: TrainConfig) -> None:
    """Read a directory data source (``DataError`` if it is unusable) and check that a batch
    fits in its training split; a ``tfds:`` source is only checked to be prepared or
    downloadable, since downloading is the run's job."""
    if config.data_source.startswith("tfds:"):
        check_tfds_source(config.data_source.removeprefix("tfds:"))
        return
    examples = len(load_source(config.data_source).train_labels)
    train_rows, validation_rows = validation_split(examples, config.validation_fraction)
    where = f"training examples in {config.data_source}"
    if config.validation_fraction > 0 and len(validation_rows) == 0:
        raise InputError(
            f"validation_fraction: {config.validation_fraction} of the {examples} {where} is "
            f"no example; use at least {1 / examples:.2g}"
        )
    if config.batch_size > len(train_rows):
        held_out = f" after holding out {len(validation_rows)} for validation" * (
            len(validation_rows) > 0
        )
        raise InputError(
            f"batch_size: {config.batch_size} is more than the {len(train_rows)} "
            f"{where}{held_out}; use at most {len(train_rows)}"
        )


def check_output_dir(directory: str) -> None:
    """Create ``directory`` if needed and write a scratch file there."""
    _writable(
        _path("--output-dir", directory),
        f"{directory}: cannot write checkpoints and plots there ({{reason}}); "
        "pass --output-dir DIR naming a writable directory",
    )


def check_tracking() -> None:
    """Check the ``TFNN_*`` variables and ask the MLflow store for one experiment and one
    registered model. A local SQLite store is created here by its first user, under a lock
    beside the file, so that commands started together create it once."""
    try:
        check_timeouts()
        keep_checkpoints()
    except ValueError as error:
        raise InputError(str(error)) from None
    uri = mlflow.get_tracking_uri()
    scheme = uri.partition("://")[0].partition("+")[0] if "://" in uri else "file"
    if scheme not in TRACKING_SCHEMES:
        raise InputError(
            f"MLFLOW_TRACKING_URI={uri}: the scheme {scheme!r} is not one MLflow can track to; "
            "use http(s)://HOST:PORT, sqlite:///FILE, a database URL or a directory"
        )
    if not uri.startswith("sqlite:///"):
        try:
            with quick_mlflow():
                MlflowClient().search_experiments(max_results=1)
        except MlflowException as error:
            if error.get_http_status_code() in (401, 403):
                raise InputError(
                    f"MLflow tracking at {uri} refused the login (HTTP "
                    f"{error.get_http_status_code()}); set MLFLOW_TRACKING_USERNAME and "
                    "MLFLOW_TRACKING_PASSWORD to an MLflow user's name and password"
                ) from None
            raise InputError(
                f"MLflow tracking at {uri} is unreachable or did not answer within "
                f"{CHECK_TIMEOUT_SECONDS} s ({one_line(error)}); start it or set "
                "MLFLOW_TRACKING_URI"
            ) from None
        return
    _check_sqlite_store(uri)


def _check_sqlite_store(uri: str) -> None:
    database = Path(uri.removeprefix("sqlite:///").split("?")[0]).absolute()
    if database.is_dir():  # SQLite would retry opening it for minutes
        raise InputError(
            f"MLflow store {database} is a directory, not a SQLite file; move it aside or set "
            "MLFLOW_TRACKING_URI"
        )
    with ExitStack() as held:
        try:
            held.enter_context(exclusive_lock(f"{database}.lock"))
        except OSError as error:
            raise InputError(
                f"{database}: the MLflow store needs a writable directory ({error.strerror}); "
                "run from a writable directory or set MLFLOW_TRACKING_URI"
            ) from None
        creating = database.with_name(database.name + ".creating")
        try:
            logging.getLogger("alembic").setLevel(logging.ERROR)  # its table creation log
            if not database.exists():
                # Migrated beside it, then renamed into place: a creation killed or out of
                # disk leaves no store, never half of one that every later run trips on.
                creating.unlink(missing_ok=True)
                _open_store(f"sqlite:///{creating}")
                os.replace(creating, database)
            _open_store(uri)
        except Exception as error:  # alembic, SQLAlchemy and MLflow errors alike
            creating.unlink(missing_ok=True)
            raise InputError(
                f"MLflow store {database} cannot be opened ({one_line(error)}); move it aside "
                "or set MLFLOW_TRACKING_URI"
            ) from None


def _open_store(uri: str) -> None:
    client = MlflowClient(uri)
    client.search_experiments(max_results=1)
    client.search_registered_models(max_results=1)  # the registry's tables


def check_orchestration() -> None:
    """Ask the Prefect API that ``PREFECT_API_URL`` names for its health, then make one
    request that needs the auth string (the health check needs none)."""
    url = PREFECT_API_URL.value()
    quick = {PREFECT_API_REQUEST_TIMEOUT: CHECK_TIMEOUT_SECONDS, PREFECT_CLIENT_MAX_RETRIES: 0}
    with temporary_settings(updates=quick), get_client(sync_client=True) as client:
        error = client.api_healthcheck()
        if error is not None:
            raise InputError(
                f"Prefect API at {url} is unreachable or did not answer within "
                f"{CHECK_TIMEOUT_SECONDS} s ({one_line(error)}); start it (prefect server "
                "start) or unset PREFECT_API_URL"
            )
        try:
            client.hello()
        except PrefectHTTPStatusError as refused:
            if refused.response.status_code not in (401, 403):
                raise
            raise InputError(
                f"Prefect API at {url} refused the request (HTTP "
                f"{refused.response.status_code}); set PREFECT_API_AUTH_STRING to the "
                "server's auth string"
            ) from None


def check_resume(run_id: str, experiment: str | None) -> tuple[dict[str, str], dict[str, object]]:
    """The configuration (strings, for ``TrainConfig``) and the run options that MLflow run
    ``run_id`` recorded, after checking that it exists, is unfinished, and is in ``experiment``
    if one is named."""
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException as error:
        raise InputError(
            f"--resume {run_id}: no such run at {mlflow.get_tracking_uri()} ({one_line(error)})"
        ) from None
    held = MlflowClient().get_experiment(run.info.experiment_id).name
    if experiment is not None and held != experiment:
        raise InputError(
            f"--resume {run_id}: the run is in experiment {held!r}, not {experiment!r}; "
            "leave out --experiment to resume it where it is"
        )
    try:
        check_run_to_resume(run, {})
    except ResumeError as error:
        raise InputError(f"--resume {error}") from None
    return TrainConfig.fields_from_params(run.data.params), recorded_options(run.data.tags)


def check_run_free(run_id: str, output_dir: str) -> None:
    """``InputError`` naming the process that holds run ``run_id``'s directory (checked before
    the store is opened, whose lock the live run may hold)."""
    directory = Path(output_dir) / run_id
    if not directory.is_dir():
        return
    try:
        with hold_run_directory(directory):
            pass
    except ResumeError as error:
        raise InputError(f"--resume {error}") from None


def check_resumed_config(run_id: str, config: TrainConfig) -> None:
    """``InputError`` if flags changed the configuration that run ``run_id`` was started with."""
    try:
        check_run_to_resume(MlflowClient().get_run(run_id), config.as_params())
    except ResumeError as error:
        raise InputError(f"--resume {error}") from None


def check_champion(model_name: str) -> None:
    """``InputError`` if ``model_name`` has a champion whose model cannot be read (its run's
    artifacts deleted): a retrain would train and register a challenger, then fail."""
    version = champion_version(MlflowClient(), model_name)
    if version is None:
        return
    uri = f"models:/{model_name}@{CHAMPION_ALIAS}"
    try:
        get_model_info(uri)
    except (MlflowException, OSError) as error:
        raise InputError(
            f"{uri}: the champion (version {version.version}) cannot be loaded "
            f"({one_line(error)}); restore its artifacts, or point the alias at another version"
        ) from None


def check_predict(
    images: list[str], labels: str | None, output: str, model_uri: str, trust_model: bool
) -> None:
    """Read the IDX files and PNG headers ``tfnn predict`` will read (without TensorFlow),
    check that labels match the images one for one, that ``output`` can be written, and that
    the model is trusted and, on the tracking server, exists."""
    count = 0
    for path in images:
        if _path("--images", path).suffix.lower() == ".png":
            check_png(path)
            count += 1
        else:
            count += len(load_idx_images(path))
    found = len(load_idx_labels(str(_path("--labels", labels)))) if labels else count
    if found != count:
        raise DataError(f"{labels}: {found} labels for {count} images; pass matching files")
    target = _path("--output", output)
    if target.is_dir():
        raise InputError(f"--output {output}: is a directory; name a CSV file")
    _writable(target.parent, f"--output {output}: cannot write there ({{reason}}); name a file")
    check_model_uri(model_uri, trust_model)  # an InputError if untrusted
    check_tracking()
    try:
        if is_tracked_model_uri(model_uri):
            get_model_info(model_uri)
    except MlflowException as error:
        raise InputError(
            f"--model {model_uri}: cannot be loaded from the tracking server "
            f"({one_line(error)}); name a registered model version or alias, a logged model "
            "or a run whose artifacts exist"
        ) from None
