"""What the command says: stdout holds exactly its result lines; stderr holds nothing on
success unless ``--verbose`` asks for Prefect's INFO lines, which reach the Prefect server
either way."""

import re
import subprocess

import pytest
from conftest import TERMINAL_CODE, run_on_a_terminal, tfnn_command, tfnn_env
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.settings import PREFECT_API_URL

# Subprocesses, real servers or signals: the slow lane.
pytestmark = pytest.mark.slow

METRICS = re.compile(
    r"val/final_loss=\d\.\d{4}  val/final_accuracy=\d\.\d{4}  "
    r"test/final_loss=\d\.\d{4}  test/final_accuracy=\d\.\d{4}"
)
RUN = re.compile(r"mlflow run id: (\w{32})  model: (models:/m-\w+)")
FIRST_VERSION_LINE = "champion: models:/tfnn-mnist@champion, the first version"


def train_command(data_dir, *flags: str) -> list[str]:
    return tfnn_command(
        "train", "--data-dir", str(data_dir), "--epochs", "1", "--hidden-sizes", "8", *flags
    )


def train_env(directory) -> dict[str, str]:
    """The session's Prefect server, which outlives the command, and a store in ``directory``."""
    return tfnn_env(
        PREFECT_API_URL=PREFECT_API_URL.value(),
        MLFLOW_TRACKING_URI=f"sqlite:///{directory / 'mlflow.db'}",
    )


def flow_run_log_messages(run_id: str) -> list[str]:
    """The messages the Prefect server holds for the flow run behind MLflow run ``run_id``."""
    from mlflow.tracking import MlflowClient

    flow_run_id = MlflowClient().get_run(run_id).data.tags["prefect.flow_run_id"]
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200
        )
    return [log.message for log in logs]


@pytest.fixture(scope="module")
def runs(prefect_harness, small_mnist_dir, tmp_path_factory, mlflow_server):
    """A quiet and a verbose run with pipes for output, and a run on a terminal without a
    progress bar (exit code, what the terminal shows), in one store; a quiet run against an
    MLflow server."""
    directory = tmp_path_factory.mktemp("output")
    env = train_env(directory)
    served = {**env, "MLFLOW_TRACKING_URI": mlflow_server}
    results = {
        name: subprocess.run(
            train_command(small_mnist_dir, *flags),
            cwd=directory,
            env=run_env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        for name, flags, run_env in (
            ("quiet", (), env),
            ("verbose", ("-v", "--no-register"), env),
            ("servers", (), served),
        )
    }
    # A configured server's first-run telemetry notice is Prefect's to show, not ours.
    results["no progress"] = run_on_a_terminal(
        train_command(small_mnist_dir, "--no-progress"), directory, {**env, "DO_NOT_TRACK": "1"}
    )
    return results, directory


def test_stdout_is_exactly_the_result_lines(runs):
    results, _ = runs
    quiet = results["quiet"]
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    metrics, run, registered, champion = quiet.stdout.splitlines()
    assert METRICS.fullmatch(metrics) and RUN.fullmatch(run)
    assert registered == "registered: models:/tfnn-mnist/1"
    assert champion == FIRST_VERSION_LINE
    # No MLflow "View run" links, no Prefect lines: nothing but warnings and errors, of
    # which a clean run has none.
    assert quiet.stderr == ""


def test_against_an_mlflow_server_stderr_stays_empty(runs):
    served = runs[0]["servers"]
    assert served.returncode == 0, served.stderr[-3000:]
    metrics, run, registered, champion = served.stdout.splitlines()
    assert METRICS.fullmatch(metrics) and RUN.fullmatch(run)
    assert registered == "registered: models:/tfnn-mnist/1"  # in the server's registry
    assert champion == FIRST_VERSION_LINE
    # Not MLflow's INFO line that a server's registry adds to every registration ("Waiting
    # up to 300 seconds for model version to finish creation").
    assert served.stderr == ""


def test_predict_through_a_pipe_draws_no_download_bars(runs, small_mnist_dir, mlflow_server):
    # Loading the model from the server's registry downloads its artifacts, which MLflow
    # shows as tqdm bars on stderr; off a terminal they would only fill a log.
    results, directory = runs
    assert results["servers"].returncode == 0
    images, labels = (
        small_mnist_dir / f"t10k-{kind}-idx{n}-ubyte.gz"
        for kind, n in (("images", 3), ("labels", 1))
    )
    flags = ["--images", str(images), "--labels", str(labels)]
    predicted = subprocess.run(
        tfnn_command(
            "predict",
            "--model",
            "models:/tfnn-mnist/1",
            *flags,
            "--output",
            str(directory / "predictions.csv"),
        ),
        cwd=directory,
        env={**train_env(directory), "MLFLOW_TRACKING_URI": mlflow_server},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert predicted.stdout.startswith("200 predictions by models:/tfnn-mnist/1")
    assert predicted.stderr == ""


def test_verbose_shows_prefect_info_lines_and_the_server_gets_them_anyway(runs, monkeypatch):
    results, directory = runs
    verbose, quiet = results["verbose"], results["quiet"]
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    # --no-register: the metrics and run lines only.
    metrics, run = verbose.stdout.splitlines()
    assert METRICS.fullmatch(metrics) and RUN.fullmatch(run)
    info = [line for line in verbose.stderr.splitlines() if "| INFO    |" in line]
    assert any("Finished in state Completed()" in line for line in info), verbose.stderr
    assert not [line for line in verbose.stderr.splitlines() if line not in info]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{directory / 'mlflow.db'}")
    for result in (quiet, verbose):
        run_id = RUN.fullmatch(result.stdout.splitlines()[1]).group(1)
        messages = flow_run_log_messages(run_id)
        assert any(m.startswith("Finished in state Completed()") for m in messages), messages


def test_no_progress_draws_no_bar_on_a_terminal(runs):
    results, _ = runs
    code, output = results["no progress"]
    assert code == 0, output
    # What the terminal shows is the three result lines of v2, not the champion (test_cli.py
    # sees the bar without the flag); the quiet run's configuration and seed: its numbers.
    lines = [TERMINAL_CODE.sub("", line).strip() for line in output.splitlines()]
    metrics, _, registered = [line for line in lines if line]
    assert metrics == results["quiet"].stdout.splitlines()[0]
    assert registered == "registered: models:/tfnn-mnist/2"
    assert "epoch 1/1" not in output


@pytest.mark.parametrize("command", ["train", "compare", "retrain", "schedule", "sweep"])
def test_every_command_that_trains_takes_no_progress(command):
    # Parsing only: the flag is part of each command's generated options.
    from cli import build_parser

    args = build_parser().parse_args([command, "--no-progress"])
    assert args.progress is False
