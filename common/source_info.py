"""Where a run's code came from, and where its records can be seen: the standard
``mlflow.source.*`` tags, and the MLflow UI's address of a run."""

import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from mlflow.utils.mlflow_tags import (
    MLFLOW_GIT_COMMIT,
    MLFLOW_GIT_DIRTY,
    MLFLOW_SOURCE_NAME,
    MLFLOW_SOURCE_TYPE,
)

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
    (``http(s)://``); None for a local store, which has no address to link to."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
