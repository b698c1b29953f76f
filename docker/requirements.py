"""Print one image's requirements from pyproject.toml for ``pip install -r`` (before the code is
copied, so editing it reinstalls nothing): ``worker`` (CPU client) or ``server`` (Prefect and the
``server`` extra, no TensorFlow)."""

import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
# The worker trains on mounted IDX files: the same versions without GPU wheels or MLflow's
# server, UI, scikit-learn and pyarrow; but infer_signature imports pandas and SciPy, which
# mlflow-skinny does not require. tensorflow-datasets serves only `tfds:`, unused by deployments.
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
