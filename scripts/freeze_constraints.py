"""Print ``constraints.txt``: the installed version of every distribution that
``tfnn[dev]`` needs (its dependencies, all extras, and theirs), from the environment that ran
the tests. Run it with the venv's Python from the project root:
``.venv/bin/python scripts/freeze_constraints.py > constraints.txt``."""

import re
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
HEADER = """\
# The versions CI tested (scripts/freeze_constraints.py). Reproducible install:
#   pip install -c constraints.txt -e '.[dev]'
# The worker image installs tensorflow-cpu, the same TensorFlow without the GPU wheels.
"""


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def needed() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = project["optional-dependencies"]
    pending = [Requirement(text) for text in project["dependencies"]]
    pending += [Requirement(text) for group in groups.values() for text in group]
    versions: dict[str, str] = {}
    extras_seen: dict[str, set[str]] = {}
    while pending:
        requirement = pending.pop()
        if normalize(requirement.name) == "tfnn":
            continue  # its own extras are all listed above
        try:
            dist = distribution(requirement.name)
        except PackageNotFoundError:
            continue  # a dependency of another platform
        name = normalize(dist.metadata["Name"])
        extras = extras_seen.get(name)
        if extras is not None and set(requirement.extras) <= extras:
            continue
        extras = extras_seen[name] = (extras or set()) | set(requirement.extras)
        versions[name] = dist.version
        for text in dist.requires or []:
            sub = Requirement(text)
            environments = [{"extra": extra} for extra in extras | {""}]
            if sub.marker is None or any(sub.marker.evaluate(env) for env in environments):
                pending.append(sub)
    return versions


if __name__ == "__main__":
    versions = needed()
    versions["tensorflow-cpu"] = versions["tensorflow"]
    print(HEADER + "".join(f"{name}=={versions[name]}\n" for name in sorted(versions)), end="")
