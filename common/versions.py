"""Installed versions from package metadata (light: imports nothing it reports on)."""

from importlib.metadata import PackageNotFoundError, version

# The same library under another distribution name: the worker image installs
# tensorflow-cpu, TensorFlow without the GPU wheels, and mlflow-skinny, MLflow's client.
ALIASES = {"tensorflow": ("tensorflow", "tensorflow-cpu"), "mlflow": ("mlflow", "mlflow-skinny")}


def installed_version(name: str) -> str:
    """The version of distribution ``name`` (or of its alias), ``PackageNotFoundError`` if
    none is installed."""
    for candidate in ALIASES.get(name, (name,)):
        try:
            return version(candidate)
        except PackageNotFoundError:
            continue
    raise PackageNotFoundError(name)
