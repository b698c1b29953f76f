"""Help, the version and refusals of bad flags load none of TensorFlow, MLflow or Prefect.

Each command runs in a fresh interpreter (a subprocess) that then reports which heavy
packages its ``sys.modules`` holds: importing them is what made ``tfnn --help`` take seconds.
"""

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_each, tfnn_env

# Subprocesses, real servers or signals: the slow lane.
pytestmark = pytest.mark.slow

HEAVY = ("tensorflow", "mlflow", "prefect", "pandas", "sqlalchemy", "keras")
# Runs the command in-process, then prints its exit code and which of the WATCHED modules
# (or packages, by their top-level name) it loaded.
PROBE = """
import json, sys
from cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as stop:
    code = stop.code
names = set(sys.modules) | {name.split(".")[0] for name in sys.modules}
print("PROBE " + json.dumps([code, sorted(names & set(WATCHED))]))
"""


def run_probe(
    argv: list[str], watched: tuple[str, ...], cwd: Path, env: dict[str, str], timeout: float
) -> tuple[int, list[str], list[str], str]:
    """``tfnn ARGV`` in a fresh interpreter: its exit code, the ``watched`` modules it
    loaded, its stderr lines and its stdout."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE.replace("WATCHED", repr(watched)), *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    report = [line for line in result.stdout.splitlines() if line.startswith("PROBE ")]
    assert report, result.stderr[-3000:]
    code, loaded = json.loads(report[-1].removeprefix("PROBE "))
    return code, loaded, result.stderr.splitlines(), result.stdout


HELP = {
    "help": ["--help"],
    "train help": ["train", "--help"],
    "schedule help": ["schedule", "--help"],
    "sweep help": ["sweep", "--help"],
    "check-data help": ["check-data", "--help"],
    "version": ["--version"],
}
REFUSALS = {
    "negative learning rate": (["train", "--learning-rate", "-1"], "learning_rate"),
    "unknown activation": (["train", "--activation", "swish"], "unknown activation 'swish'"),
    "unknown loss": (["train", "--loss", "hinge"], "unknown loss 'hinge'"),
    "unknown initializer": (["train", "--initializer", "zeros"], "unknown initializer"),
    "too many units": (["train", "--hidden-sizes", "100000"], "hidden_sizes"),
    "too many parameters": (
        ["train", "--hidden-sizes", ",".join(["65536"] * 10)],
        "parameters on MNIST, more than the 100,000,000 allowed",
    ),
    "validation fraction": (["train", "--validation-fraction", "2"], "validation_fraction"),
    "retrain without validation": (
        ["retrain", "--validation-fraction", "0"],
        "validation_fraction: 0",
    ),
    "compare activation": (["compare", "--activations", "relu,swish"], "'swish'"),
    "bad cron": (["schedule", "--train-cron", "61 * * * *"], "invalid cron string"),
    "hashed cron": (["schedule", "--retrain-cron", "H * * * *"], "invalid cron string"),
    "unknown flag": (["train", "--bogus"], "unrecognized arguments: --bogus"),
    "no command": ([], "required: command"),
    "bad margin": (
        ["retrain", "--margin", "-1"],
        "margin: Input should be greater than or equal to 0",
    ),
    "sweep bad vary": (["sweep", "--vary", "activation", "swish"], "unknown activation"),
    "grid not YAML": (["sweep", "--grid", "{grid}/broken.yaml"], "not valid YAML"),
    "grid bad value": (["sweep", "--grid", "{grid}/negative.yaml"], "learning_rate"),
    "check-data bad threshold": (
        ["check-data", "--data-dir", "{grid}", "--max-shrink", "-1"],
        "--max-shrink: must be a number >= 0",
    ),
    "check-data no directory": (["check-data", "--data-dir", "{grid}/absent"], "not a directory"),
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, tuple[int, list[str], list[str], str]]:
    """Per case: exit code, heavy packages loaded, stderr lines and stdout."""
    directory = tmp_path_factory.mktemp("startup")
    (directory / "broken.yaml").write_text("grid: [unclosed\n")
    (directory / "negative.yaml").write_text("grid:\n  learning_rate: [0.1, -1]\n")
    env = tfnn_env(PREFECT_HOME=str(directory / "prefect"), MLFLOW_TRACKING_URI="sqlite://")
    cases = {**HELP, **{name: argv for name, (argv, _) in REFUSALS.items()}}

    def run(case: str) -> tuple[int, list[str], list[str], str]:
        argv = [arg.format(grid=directory) for arg in cases[case]]
        return run_probe(argv, HEAVY, directory, env, 120)

    return run_each(cases, run)


@pytest.mark.parametrize("case", HELP)
def test_help_and_version_load_no_heavy_package(outcomes, case):
    code, loaded, stderr, stdout = outcomes[case]
    assert (code, loaded, stderr) == (0, [], [])
    assert "usage: tfnn" in stdout or stdout.startswith("tfnn ")


def test_version_names_the_installed_libraries(outcomes):
    stdout = outcomes["version"][3]
    for package in ("tfnn", "tensorflow", "prefect", "mlflow"):
        assert f"{package} {importlib.metadata.version(package)}" in stdout


@pytest.mark.parametrize("case", REFUSALS)
def test_refusal_is_one_line_and_loads_no_heavy_package(outcomes, case):
    code, loaded, stderr, _ = outcomes[case]
    assert code == 2, stderr
    assert loaded == [], stderr
    assert len(stderr) == 1 and stderr[0].startswith("tfnn"), stderr
    assert ": error: " in stderr[0] and REFUSALS[case][1] in stderr[0]


def test_registries_hold_exactly_the_names_config_checks():
    from tfnn import activations, initializers, losses, names, network

    assert tuple(activations.ACTIVATIONS) == names.ACTIVATION_NAMES
    assert tuple(losses.LOSSES) == names.LOSS_NAMES
    assert tuple(initializers.INITIALIZERS) == names.INITIALIZER_NAMES
    assert (network.MAX_LAYERS, network.MAX_UNITS) == (names.MAX_LAYERS, names.MAX_UNITS)


def test_lazy_package_still_exports_its_names():
    import tfnn
    from tfnn import build_mlp
    from tfnn.network import build_mlp as defined

    assert build_mlp is defined is tfnn.build_mlp
    # Each name is the object its module defines, whichever module that is.
    modules = [importlib.import_module(f"tfnn.{m}") for m in ("activations", "layers", "losses")]
    modules += [importlib.import_module(f"tfnn.{m}") for m in ("network", "optimizers", "training")]
    for name in tfnn.__all__:
        (defined,) = {id(vars(m)[name]) for m in modules if name in vars(m)}
        assert id(getattr(tfnn, name)) == defined, name
    assert set(tfnn.__all__) <= set(dir(tfnn))
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        tfnn.missing  # noqa: B018 - the lookup is what is tested
