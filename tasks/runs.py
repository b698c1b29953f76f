"""An MLflow run's life: open or reopen it, end it FINISHED, FAILED or KILLED; the lock on
its output directory that says a process is training it; the tags that say where its code
came from, and the MLflow UI's address of a run.

Tracking-server outages are MLflow's to ride out: its HTTP requests retry refused
connections and 5xx replies with backoff (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``,
``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR``, ``MLFLOW_HTTP_REQUEST_TIMEOUT``). MLflow's "active
run" lives in a thread-local and Prefect runs each task in a worker thread, so every call
names its run explicitly.
"""

import fcntl
import json
import os
import platform
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import (
    MLFLOW_GIT_COMMIT,
    MLFLOW_GIT_DIRTY,
    MLFLOW_SOURCE_NAME,
    MLFLOW_SOURCE_TYPE,
)

from tasks.config import CHAMPION_ALIAS, installed_version

ERROR_TAG = "tfnn.error"
# One quick try for MLflow's requests, where an answer is not worth its retries (MLflow reads
# its HTTP settings from the environment at every request).
CHECK_TIMEOUT_SECONDS = 5
QUICK_MLFLOW = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": str(CHECK_TIMEOUT_SECONDS),
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
}
LOCK_FILE = "run.lock"
# The run options a resumed run keeps (where its model goes), recorded as tags.
OPTION_TAG_PREFIX = "tfnn.option."
KEPT_OPTIONS = ("model_name", "register_model")
# The MLflow UI as a browser reaches it, for the links to runs (mlflow_run_url).
MLFLOW_UI_URL_ENV = "TFNN_MLFLOW_UI_URL"


@contextmanager
def quick_mlflow(quick: bool = True) -> Iterator[None]:
    """In the block (if ``quick``), MLflow's requests get one try of ``CHECK_TIMEOUT_SECONDS``;
    the environment is restored after it."""
    saved = {name: os.environ.get(name) for name in QUICK_MLFLOW}
    os.environ.update(QUICK_MLFLOW if quick else {})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def option_tags(options) -> dict[str, str]:
    """``RunOptions``' ``KEPT_OPTIONS`` as the run's tags (JSON values)."""
    return {OPTION_TAG_PREFIX + name: json.dumps(getattr(options, name)) for name in KEPT_OPTIONS}


def recorded_options(tags: dict[str, str]) -> dict[str, object]:
    """The ``KEPT_OPTIONS`` a run was started with, from its tags (none before they were)."""
    return {
        name: json.loads(tags[OPTION_TAG_PREFIX + name])
        for name in KEPT_OPTIONS
        if OPTION_TAG_PREFIX + name in tags
    }


class ResumeError(ValueError):
    """A run cannot be resumed: it is finished, was started with other params, or another
    process is training it."""


def check_resumable(run: Run, params: dict[str, str]) -> None:
    """Raise ``ResumeError`` if ``run`` finished or holds a param that differs from ``params``."""
    run_id, held = run.info.run_id, run.data.params
    if run.info.status == "FINISHED":
        raise ResumeError(f"run {run_id} already finished; start a new run instead")
    differ = [f"{k}={held[k]} (now {v})" for k, v in params.items() if held.get(k, v) != v]
    if differ:
        raise ResumeError(
            f"run {run_id} was started with {', '.join(differ)}; "
            "resume it with the same configuration and library versions"
        )


def reopen(client: MlflowClient, run_id: str, params: dict[str, str]) -> tuple[str, dict]:
    """Check that run ``run_id`` can be resumed with ``params`` and clear its error; returns
    its experiment's id and the params it does not hold yet."""
    run = client.get_run(run_id)
    check_resumable(run, params)
    if ERROR_TAG in run.data.tags:
        client.delete_tag(run_id, ERROR_TAG)
    return run.info.experiment_id, {k: v for k, v in params.items() if k not in run.data.params}


def check_run_to_resume(run: Run, config_params: dict[str, str]) -> None:
    """``check_resumable`` with this machine's library versions added to ``config_params``
    (``TrainConfig.as_params()``), as ``tasks.tracking.tracked_run`` will reopen it."""
    check_resumable(run, {**config_params, **library_versions()})


@contextmanager
def hold_run_directory(directory: Path) -> Iterator[None]:
    """Hold the lock on a run's output ``directory`` (made if missing) for the block;
    ``ResumeError`` naming the holder if another process holds it. The kernel frees it when
    its holder ends, however it ends, so a killed run can be resumed at once."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK_FILE, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read(32).strip() or "?"
            raise ResumeError(
                f"run {directory.name} is still being trained by process {holder} (it holds "
                f"{(directory / LOCK_FILE).absolute()}); stop it, or wait for it to end"
            ) from None
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        yield


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


PACKAGE_VERSION_TAG = "tfnn.version"
CHECKOUT = Path(__file__).resolve().parents[1]
GIT_TIMEOUT_SECONDS = 5


def package_version() -> str:
    """The installed ``tfnn`` distribution's version, or ``unknown`` when it is not installed
    (run from a checkout on ``PYTHONPATH``)."""
    try:
        return version("tfnn")
    except PackageNotFoundError:
        return "unknown"


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(CHECKOUT), *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):  # no git, or a hung file system
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def code_version_tags(entry_point: str) -> dict[str, str]:
    """MLflow's standard source tags for code run from ``entry_point`` (``module:function``):
    in a git checkout, its commit and whether tracked files differ from it
    (``mlflow.source.git.commit``, ``mlflow.source.git.dirty``); always the package version
    (``tfnn.version``), which is all an installed wheel or an image without ``.git`` has."""
    tags = {
        MLFLOW_SOURCE_NAME: entry_point,
        MLFLOW_SOURCE_TYPE: "LOCAL",
        PACKAGE_VERSION_TAG: package_version(),
    }
    # Only this project's own checkout counts, not a repository it happens to sit inside.
    if (CHECKOUT / ".git").exists() and (commit := _git("rev-parse", "HEAD")):
        changed = _git("status", "--porcelain", "--untracked-files=no")
        tags[MLFLOW_GIT_COMMIT] = commit
        if changed is not None:
            tags[MLFLOW_GIT_DIRTY] = str(bool(changed)).lower()
    return tags


def mlflow_run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The MLflow UI's page of a run, when the tracking URI is a server that has a UI
    (``http(s)://``); None for a local store, which has no address to link to. The page is
    under ``$TFNN_MLFLOW_UI_URL`` when that is set: the address a browser opens, where the
    tracking URI is one only the worker's network knows (the compose stack's
    ``http://mlflow:5000``)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    base = os.environ.get(MLFLOW_UI_URL_ENV, "").strip() or tracking_uri
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
