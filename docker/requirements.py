"""Print the requirements of one image, from pyproject.toml, for ``pip install -r``:

- ``worker``: the project's dependencies, TensorFlow as ``tensorflow-cpu`` (the same
  version, pinned by constraints.txt, without the GPU wheels a CPU worker never loads);
- ``server``: what the MLflow and Prefect servers run, no TensorFlow: the ``server`` extra
  and Prefect.

The image installs these before copying the code, so that editing the code does not
reinstall them."""

import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def requirements(image: str, pyproject: Path = PYPROJECT) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    dependencies = [Requirement(text) for text in project["dependencies"]]
    if image == "server":
        prefect = [str(r) for r in dependencies if r.name == "prefect"]
        return prefect + project["optional-dependencies"]["server"]
    if image == "worker":
        return [
            "tensorflow-cpu" + str(r.specifier) if r.name == "tensorflow" else str(r)
            for r in dependencies
        ]
    raise ValueError(f"unknown image {image!r}: use worker or server")


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1])))
