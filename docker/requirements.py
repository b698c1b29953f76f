"""Print the requirements of one image, from pyproject.toml, for ``pip install -r``:

- ``worker``: the project's dependencies, TensorFlow as ``tensorflow-cpu`` (the same
  version, pinned by constraints.txt, without the GPU wheels a CPU worker never loads) and
  MLflow as ``mlflow-skinny`` (the same version's client, without the server and UI) with
  pandas and SciPy, and no tensorflow-datasets (the worker reads the mounted IDX directory);
- ``server``: what the MLflow and Prefect servers run, no TensorFlow: the ``server`` extra
  and Prefect.

The image installs these before copying the code, so that editing the code does not
reinstall them."""

import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
# The worker is a client that trains on a mounted directory of IDX files: the same versions
# without what only servers, GPUs and downloads use. Full mlflow adds its server, UI,
# scikit-learn and pyarrow, none of which a run against a tracking server imports; pandas and
# SciPy it does import (mlflow.models.infer_signature, the model's signature), and
# mlflow-skinny does not require them.
# tensorflow-datasets (with pyarrow) only serves `tfds:` sources, which prefect.yaml's
# deployments never use: they read TFNN_DATA_DIR.
WORKER_INSTEAD = {"tensorflow": "tensorflow-cpu", "mlflow": "mlflow-skinny"}
WORKER_WITHOUT = {"tensorflow-datasets"}
WORKER_ALSO = ["pandas", "scipy"]


def requirements(image: str, pyproject: Path = PYPROJECT) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    dependencies = [Requirement(text) for text in project["dependencies"]]
    if image == "server":
        prefect = [str(r) for r in dependencies if r.name == "prefect"]
        return prefect + project["optional-dependencies"]["server"]
    if image == "worker":
        kept = [r for r in dependencies if r.name not in WORKER_WITHOUT]
        return [
            WORKER_INSTEAD[r.name] + str(r.specifier) if r.name in WORKER_INSTEAD else str(r)
            for r in kept
        ] + WORKER_ALSO
    raise ValueError(f"unknown image {image!r}: use worker or server")


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1])))
