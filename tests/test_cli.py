"""The ``tfnn`` command: refusing bad input before any work, reporting a run, and the README's
main job on embedded defaults (a local MLflow store and Prefect's ephemeral server)."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    TERMINAL_CODE,
    assert_nothing_recorded,
    run_on_a_terminal,
    run_tfnn,
    tfnn_command,
    tfnn_env,
    wait_for_file,
)
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from cli import main
from cli.commands import decision_lines
from flows.train import train_flow
from tasks.registry import Decision

REPO = Path(__file__).resolve().parents[1]
RUN_ID_LINE = re.compile(r"mlflow run id: (\w+)  model: (\S+)")
METRICS_LINE = re.compile(
    r"val/final_loss=\S+  val/final_accuracy=\S+  test/final_loss=\S+  test/final_accuracy=\S+"
)


def flow_run_count() -> int:
    with get_client(sync_client=True) as prefect:
        return len(prefect.read_flow_runs(limit=200))


@pytest.mark.parametrize(
    ("flags", "field", "problem"),
    [
        (["--learning-rate", "0"], "learning_rate", "greater than 0"),
        (["--learning-rate", "-0.1"], "learning_rate", "greater than 0"),
        (["--learning-rate", "inf"], "learning_rate", "must be a finite number"),
        (["--epochs", "0"], "epochs", "greater than or equal to 1"),
        (["--batch-size", "0"], "batch_size", "greater than or equal to 1"),
        (["--hidden-sizes", "100,0"], "hidden_sizes.1", "greater than or equal to 1"),
        (["--activation", "swish"], "activation", "unknown activation 'swish': use one of"),
        (["--initializer", "zeros"], "initializer", "unknown initializer 'zeros': use one of"),
        (["--epochs", "five"], "epochs", "valid integer"),
    ],
)
@pytest.mark.parametrize("command", ["train", "compare"])
def test_bad_flag_is_refused_before_any_work(
    command, flags, field, problem, prefect_harness, mlflow_store, tmp_path, capsys
):
    runs_before = flow_run_count()
    # A data directory that does not exist: loading it would fail with a data error instead.
    code = main([command, "--data-dir", str(tmp_path / "absent"), *flags])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.endswith("\n")
    assert err.startswith(f"tfnn: error: invalid configuration: {field}: ")
    assert problem in err
    assert_nothing_recorded(tmp_path)
    assert flow_run_count() == runs_before


def test_compare_refuses_an_unknown_activation_in_its_list(prefect_harness, mlflow_store, capsys):
    runs_before = flow_run_count()
    assert main(["compare", "--activations", "relu,swish"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "tfnn: error: invalid configuration: activation: unknown activation 'swish': use one of "
        "step, sigmoid, relu, tanh, identity, softmax (got 'swish')\n"
    )
    assert flow_run_count() == runs_before


def test_flow_parameter_validation_refuses_a_bad_config(prefect_harness, mlflow_store, tmp_path):
    state = train_flow(
        config={"learning_rate": 0, "data_source": str(tmp_path / "absent")}, return_state=True
    )
    assert state.is_failed()
    assert state.message.startswith("Validation of flow parameters failed")
    error = state.result(raise_on_failure=False)
    assert "learning_rate" in str(error) and "greater than 0" in str(error)
    with get_client(sync_client=True) as prefect:
        flow_run_id = state.state_details.flow_run_id
        assert prefect.read_flow_run(flow_run_id).state.is_failed()
        tasks = prefect.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    assert tasks == []
    assert_nothing_recorded(tmp_path)


def test_train_prints_final_metrics_and_run_id(
    prefect_harness, mlflow_store, small_mnist_dir, capsys
):
    code = main(
        ["train", "--data-dir", str(small_mnist_dir), "--epochs", "2", "--hidden-sizes", "8"]
    )
    out, err = capsys.readouterr()
    assert code == 0
    metrics_line, run_line, registered_line, champion_line = out.splitlines()[-4:]
    run_id, model_uri = RUN_ID_LINE.fullmatch(run_line).groups()
    version = MlflowClient().search_model_versions(f"run_id = '{run_id}'")[0]
    assert registered_line == f"registered: models:/{version.name}/{version.version}"
    assert champion_line == f"champion: models:/{version.name}@champion, the first version"
    printed = dict(pair.split("=") for pair in metrics_line.split())
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "2" and run.data.params["hidden_sizes"] == "8"
    # Every final metric the run logged (validation and test), rounded as printed.
    assert METRICS_LINE.fullmatch(metrics_line)
    for name, value in printed.items():
        assert float(value) == round(run.data.metrics[name], 4), name
    assert model_uri.startswith("models:/")
    # Not a terminal, so no progress bar.
    assert "epoch 1/2" not in out + err and "━" not in out + err


@pytest.mark.slow
def test_failed_run_exits_1_with_one_line_and_no_traceback(small_mnist_dir, tmp_path):
    # The real command in its own process: Prefect's console handler is on the root logger,
    # where capsys does not look, and it printed two tracebacks (81 lines) here.
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = tfnn_env(MLFLOW_TRACKING_URI=store, PREFECT_HOME=str(tmp_path / "prefect"))
    flags = ["--data-dir", str(small_mnist_dir), "--hidden-sizes", "8", "--no-register"]
    result = run_tfnn("train", *flags, "--learning-rate", "1e30", cwd=tmp_path, env=env)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    # One line: neither Prefect's engine records of the same error nor TensorFlow's start-up.
    (line,) = result.stderr.splitlines()
    assert re.fullmatch(
        r"tfnn: error: training loss became nan at epoch 1, step \d+: "
        r"lower the learning rate or check the inputs",
        line,
    )
    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("tfnn-mnist").experiment_id])
    assert run.info.status == "FAILED"


@pytest.mark.slow
def test_traceback_shows_the_stack_and_keeps_the_exit_codes(small_mnist_dir, tmp_path):
    env = tfnn_env(
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
        PREFECT_HOME=str(tmp_path / "prefect"),
    )
    small = ["--hidden-sizes", "8", "--no-register", "--epochs", "1"]
    refused = run_tfnn(
        "--traceback",
        "train",
        "--data-dir",
        str(tmp_path / "absent"),
        *small,
        cwd=tmp_path,
        env=env,
    )
    failed = run_tfnn(
        "--traceback",
        "train",
        "--data-dir",
        str(small_mnist_dir),
        *small,
        "--learning-rate",
        "1e30",
        cwd=tmp_path,
        env=env,
    )
    for result, code in ((refused, 2), (failed, 1)):
        assert result.returncode == code, result.stderr[-3000:]
        assert "Traceback (most recent call last)" in result.stderr
        assert result.stderr.splitlines()[-1].startswith("tfnn: error: ")


@pytest.mark.slow
def test_main_job_on_embedded_defaults(small_mnist_dir, tmp_path):
    # The README's command in a fresh directory with no servers configured: MLflow's local
    # store appears in the working directory and Prefect runs its ephemeral server.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env |= {"PYTHONPATH": str(REPO), "PREFECT_HOME": str(tmp_path / "prefect-home")}
    command = [sys.executable, "-m", "cli", "train", "--data-dir", str(small_mnist_dir)]
    code, output = run_on_a_terminal(
        [*command, "--epochs", "2", "--hidden-sizes", "8"], tmp_path, env
    )
    assert code == 0, output
    # The flow's last words; Prefect only logs its server's shutdown after them. The
    # progress bar's cursor codes (invisible on a terminal) may precede them on the line.
    lines = [TERMINAL_CODE.sub("", line).strip() for line in output.splitlines()]
    (printed,) = [i for i, line in enumerate(lines) if RUN_ID_LINE.fullmatch(line)]
    run_id, _ = RUN_ID_LINE.fullmatch(lines[printed]).groups()
    assert METRICS_LINE.fullmatch(lines[printed - 1])
    assert lines[printed + 1] == "registered: models:/tfnn-mnist/1"
    assert lines[printed + 2] == "champion: models:/tfnn-mnist@champion, the first version"
    assert all("Stopping temporary server" in line for line in lines[printed + 3 :])
    # On a terminal the progress bar shows epochs and the loss.
    assert re.search(r"epoch 2/2 loss \d+\.\d{4}", output)
    # Before the bar and after it, a status line says what is happening.
    plain = TERMINAL_CODE.sub("", output)
    shown = [
        "loading TensorFlow",
        "starting Prefect's server, checking the input",
        "loading MLflow and the flow",
        "build_network done",
        "training: epoch 2/2 done",
        "evaluate done",
        "register_model done",
    ]
    assert [plain.find(text) for text in shown] == sorted(plain.find(text) for text in shown)
    assert -1 not in [plain.find(text) for text in shown]
    assert "Traceback" not in output and "| ERROR" not in output and "Warning:" not in output

    assert (tmp_path / "mlflow.db").is_file()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    # The temporary server, without a UI and gone now, is not linked as the run's page.
    assert "prefect.flow_run_url" not in run.data.tags
    assert "Prefect flow run [" not in run.data.tags["mlflow.note.content"]
    artifacts = Path(run.info.artifact_uri)
    assert artifacts.is_relative_to(tmp_path / "mlruns")
    assert (artifacts / "weights" / "weights.npz").is_file()
    assert (tmp_path / "outputs" / run_id / "checkpoints" / "checkpoint").is_file()
    assert [m.step for m in client.get_metric_history(run_id, "test/accuracy")] == [1, 2]
    assert run.data.tags["prefect.flow_run_id"]


def test_offline_tfds_default_is_refused_before_any_run(tmp_path, monkeypatch, capsys):
    # The default source with no network and nothing downloaded: refused at once with the way
    # out, instead of tfds retrying for minutes inside a run. (The probe is replaced so the
    # test means the same on a machine that is online.)
    import tasks.data

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setattr(tasks.data, "tfds_reachable", lambda: False)
    assert main(["train", "--data-source", "tfds:mnist"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("tfnn: error: tfds:mnist: tensorflow-datasets cannot download")
    assert "--data-dir DIR" in line
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


def test_a_retrain_prints_the_challengers_run_version_and_both_scores():
    decision = Decision(
        "m",
        "promoted",
        "0.9700 > 0.9600 + margin 0",
        "key",
        champion_version="3",
        challenger_version="4",
        champion_val_accuracy=0.96,
        challenger_val_accuracy=0.97,
        champion_test_accuracy=0.955,
        challenger_test_accuracy=0.9612,
        challenger_run_id="r" * 32,
    )
    assert decision_lines(decision) == [
        "promoted: 0.9700 > 0.9600 + margin 0",
        f"challenger: mlflow run id {'r' * 32}  version 4  val_accuracy 0.9700  "
        "test_accuracy 0.9612",
        "champion before: version 3  val_accuracy 0.9600  test_accuracy 0.9550",
        "champion: models:/m@champion",
    ]
    skipped = Decision("m", "skipped", "nothing new", "key", champion_version="3")
    assert decision_lines(skipped) == ["skipped: nothing new", "champion: models:/m@champion"]


@pytest.mark.slow
@pytest.mark.parametrize("after_seconds", [0.0, 3.0, 6.0])
def test_a_prefect_home_killed_while_first_migrated_serves_the_next_run(
    small_mnist_dir, tmp_path, after_seconds
):
    # SIGKILL while the temporary server first migrates a new PREFECT_HOME (about 13 s here):
    # Prefect's migrations commit one by one, so the next run finishes the database.
    env = tfnn_env(
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
        PREFECT_HOME=str(tmp_path / "prefect"),
    )
    flags = ["--data-dir", str(small_mnist_dir), "--epochs", "1", "--hidden-sizes", "8"]
    flags += ["--no-progress"]
    log = tmp_path / "killed.log"
    with open(log, "w") as output:
        first = subprocess.Popen(
            tfnn_command("train", *flags), cwd=tmp_path, env=env, stdout=output, stderr=output
        )
    try:
        wait_for_file("prefect/prefect.db", tmp_path, first, log)
        time.sleep(after_seconds)
        assert first.poll() is None, log.read_text()[-2000:]  # killed before it ended
    finally:
        first.kill()
        first.wait()
    again = run_tfnn("train", *flags, cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "registered: models:/tfnn-mnist/1" in again.stdout
