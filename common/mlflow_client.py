"""What the pipeline asks of MLflow beyond ``MlflowClient``'s own calls.

Tracking-server outages are MLflow's to ride out: its HTTP requests retry refused
connections and 5xx replies with backoff (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``,
``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR``, ``MLFLOW_HTTP_REQUEST_TIMEOUT``). MLflow's "active
run" lives in a thread-local and Prefect runs each task in a worker thread, so every call
names its run explicitly.
"""

import platform

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from common.config import CHAMPION_ALIAS
from common.versions import installed_version

LIBRARIES = ("tensorflow", "numpy", "prefect", "mlflow")
# How MLflow's stores say "no such registered model, version or alias".
MISSING_CODES = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE")


def champion_version(client: MlflowClient, model_name: str) -> ModelVersion | None:
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
