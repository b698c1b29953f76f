"""The one MLflow client: every call that is safe to repeat survives tracking-server
outages, retrying refused connections and 5xx replies with backoff for up to
``$TFNN_TRACKING_RETRY_SECONDS`` (default 300).

MLflow's "active run" lives in a thread-local, and Prefect runs each task in a worker
thread, so nothing relies on it: every call names its run explicitly.
"""

import os
import platform
import time
from collections.abc import Callable
from typing import Any, TypeVar

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from common.config import CHAMPION_ALIAS
from common.errors import one_line
from common.timeouts import env_seconds
from common.versions import installed_version

RETRY_SECONDS_ENV = "TFNN_TRACKING_RETRY_SECONDS"
DEFAULT_RETRY_SECONDS = 300.0
HTTP_RETRIES_ENV = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
LIBRARIES = ("tensorflow", "numpy", "prefect", "mlflow")
# How MLflow's stores say "no such registered model, version or alias".
MISSING_CODES = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE")
T = TypeVar("T")


class TrackingUnavailableError(ConnectionError):
    """The tracking server kept failing for the whole retry budget."""


def cap_http_retries() -> None:
    """Keep MLflow's own HTTP retries to two quick ones, unless the user chose otherwise.

    MLflow backs off up to two minutes per attempt (about four minutes on a refused
    connection), which would outlast any budget of ours: ``retry_tracking`` does the waiting.
    MLflow reads the variable at every request, so this holds from the next one on."""
    os.environ.setdefault(HTTP_RETRIES_ENV, "2")


def _transient(error: MlflowException) -> bool:
    # MLflow reports a refused connection as INTERNAL_ERROR (HTTP 500), like a 5xx reply.
    status = error.get_http_status_code()
    return status >= 500 or status == 429


def retry_seconds() -> float:
    """``$TFNN_TRACKING_RETRY_SECONDS`` (default 300); ``ValueError`` unless a number >= 0."""
    return env_seconds(RETRY_SECONDS_ENV, DEFAULT_RETRY_SECONDS)


def retry_tracking(call: Callable[[], T]) -> T:
    """Run ``call`` (MLflow requests that are safe to repeat), retrying transient failures
    with backoff (0.5 s doubling to 10 s) for up to ``$TFNN_TRACKING_RETRY_SECONDS``."""
    budget = retry_seconds()
    deadline, delay = time.monotonic() + budget, 0.5
    while True:
        try:
            return call()
        except MlflowException as error:
            if not _transient(error):
                raise
            if time.monotonic() + delay > deadline:
                raise TrackingUnavailableError(
                    f"MLflow tracking at {mlflow.get_tracking_uri()} still failing after "
                    f"{budget:g} s ({one_line(error)}); set {RETRY_SECONDS_ENV} to wait longer"
                ) from error
            time.sleep(delay)
            delay = min(2 * delay, 10.0)


class RetryingClient:
    """An ``MlflowClient`` whose every method call goes through ``retry_tracking``.

    ``once`` is the same client without our retries: for calls that a retry could repeat
    (creating a run, an experiment, a registered model or a version)."""

    def __init__(self) -> None:
        cap_http_retries()
        self.once = MlflowClient()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.once, name)
        return lambda *args, **kwargs: retry_tracking(lambda: method(*args, **kwargs))


def champion_version(client: RetryingClient, model_name: str) -> ModelVersion | None:
    """The version that ``models:/<model_name>@champion`` points at; None when the model or
    its alias does not exist."""
    try:
        return client.get_model_version_by_alias(model_name, CHAMPION_ALIAS)
    except MlflowException as error:
        if error.error_code in MISSING_CODES:
            return None
        raise


def library_versions() -> dict[str, str]:
    """The versions a run depends on, as MLflow params ``version.<library>``."""
    versions = {"python": platform.python_version()}
    versions |= {name: installed_version(name) for name in LIBRARIES}
    return {f"version.{name}": value for name, value in versions.items()}
