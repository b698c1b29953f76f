"""Resume after a crash: a real ``tfnn train`` process killed with SIGKILL in epoch 3 of 5,
then run again with ``--resume``, ends as the same MLflow run with every epoch logged once
and the weights of an uninterrupted run. Killed at any point of its registration, it ends
with one logged model and one version. A run whose process is alive cannot be resumed."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import tensorflow as tf
from conftest import (
    EPOCH_METRICS,
    break_checkpoint,
    run_tfnn,
    tfnn_command,
    tfnn_env,
    train_killed_after_epoch,
    train_uninterrupted,
    wait_for_file,
)
from mlflow.entities import LoggedModelStatus
from mlflow.tracking import MlflowClient
from prefect.settings import PREFECT_API_URL

from tasks.config import TrainConfig
from tasks.model import WEIGHTS_TAG
from tasks.runs import ResumeError, check_resumable, hold_run_directory

# Subprocesses, real servers or signals: the slow lane.
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_resume_after_sigkill_in_epoch_3(prefect_harness, mlflow_store, large_mnist_dir, tmp_path):
    flags = ["--data-dir", str(large_mnist_dir), "--epochs", "5", "--hidden-sizes", "256"]
    flags += ["--seed", "7", "--no-progress"]
    # The session's Prefect server, so that the subprocesses start no temporary one.
    env = tfnn_env(PREFECT_API_URL=PREFECT_API_URL.value())
    # Epoch 2's checkpoint is written while epoch 3 trains: killed then.
    run_id = train_killed_after_epoch(2, flags, tmp_path, env)
    client = MlflowClient()
    assert client.get_run(run_id).info.status == "RUNNING"
    assert not (tmp_path / "outputs" / run_id / "checkpoints" / "ckpt-5.index").exists()

    resumed = run_tfnn("train", *flags, "--resume", run_id, cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"mlflow run id: {run_id}" in resumed.stdout

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert [r.info.run_id for r in client.search_runs([run.info.experiment_id])] == [run_id]
    config = TrainConfig(**TrainConfig.fields_from_params(run.data.params))
    history, digest = train_uninterrupted(config)
    assert run.data.tags[WEIGHTS_TAG] == digest
    for name, key in EPOCH_METRICS.items():
        logged = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert [step for step, _ in logged] == [1, 2, 3, 4, 5], name
        if name != "epoch_seconds":
            assert [value for _, value in logged] == getattr(history, name), name
    steps_per_epoch = len(history.step_loss) // 5
    stride = steps_per_epoch // 100
    step_losses = sorted(
        (m.step, m.value) for m in client.get_metric_history(run_id, "train/step_loss")
    )
    expected = [
        (step, history.step_loss[step])
        for epoch in range(5)
        for step in range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch, stride)
    ]
    assert step_losses == expected
    uploaded = {f.path for f in client.list_artifacts(run_id, "checkpoints")}
    assert uploaded == {"checkpoints/latest", "checkpoints/best"}


def test_a_broken_newest_checkpoint_resumes_from_the_newest_intact(
    prefect_harness, mlflow_store, large_mnist_dir, tmp_path
):
    flags = ["--data-dir", str(large_mnist_dir), "--epochs", "3", "--hidden-sizes", "32"]
    flags += ["--seed", "3", "--no-progress"]
    env = tfnn_env(PREFECT_API_URL=PREFECT_API_URL.value())
    run_id = train_killed_after_epoch(2, flags, tmp_path, env)
    # The newest the checkpoint manager lists (the kill may come before it lists epoch 2's).
    newest = tf.train.get_checkpoint_state(tmp_path / "outputs" / run_id / "checkpoints")
    newest = Path(newest.model_checkpoint_path)
    break_checkpoint(newest, "empty index")

    resumed = run_tfnn("train", *flags, "--resume", run_id, cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # An older local checkpoint, or the upload if it was made before the kill.
    (warning,) = resumed.stderr.splitlines()
    skipped = f"checkpoints that cannot be read were skipped: {newest.name} ("
    assert warning.startswith(f"tfnn: warning: run {run_id}: {skipped}")
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    history, digest = train_uninterrupted(
        TrainConfig(**TrainConfig.fields_from_params(run.data.params))
    )
    assert run.data.tags[WEIGHTS_TAG] == digest
    logged = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "train/loss"))
    assert logged == list(enumerate(history.train_loss, start=1))


def test_a_live_run_is_not_resumed_until_its_process_dies(
    prefect_harness, mlflow_store, large_mnist_dir, tmp_path
):
    flags = ["--data-dir", str(large_mnist_dir), "--epochs", "5", "--hidden-sizes", "256"]
    flags += ["--no-progress"]
    env = tfnn_env(PREFECT_API_URL=PREFECT_API_URL.value())
    log = tmp_path / "first.log"
    with open(log, "w") as output:
        first = subprocess.Popen(
            tfnn_command("train", *flags),
            cwd=tmp_path,
            env=env,
            stdout=output,
            stderr=output,
        )
    try:
        wait_for_file("outputs/*/checkpoints/ckpt-1.index", tmp_path, first, log)
        # Paused, it stays alive mid-training however long the refused command takes to start.
        first.send_signal(signal.SIGSTOP)
        (run_dir,) = (tmp_path / "outputs").iterdir()
        refused = run_tfnn(
            "train", "--resume", run_dir.name, "--no-progress", cwd=tmp_path, env=env
        )
        assert first.poll() is None
    finally:
        first.kill()
        first.wait()
    assert refused.returncode == 2, refused.stderr
    assert "Traceback" not in refused.stderr
    (line,) = [line for line in refused.stderr.splitlines() if line.startswith("tfnn")]
    assert line == (
        f"tfnn: error: --resume run {run_dir.name} is still being trained by process "
        f"{first.pid} (it holds {run_dir / 'run.lock'}); stop it, or wait for it to end"
    )

    # SIGKILLed, it holds nothing: the kernel freed its lock.
    resumed = run_tfnn("train", "--resume", run_dir.name, "--no-progress", cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    client = MlflowClient()
    run = client.get_run(run_dir.name)
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss")) == list(
        range(1, 6)
    )
    experiments = [e.experiment_id for e in client.search_experiments()]
    models = client.search_logged_models(experiments)
    assert [m.source_run_id for m in models] == [run.info.run_id]
    versions = client.search_model_versions("name='tfnn-mnist'")
    assert [(str(v.version), v.run_id) for v in versions] == [("1", run.info.run_id)]


def test_a_run_directory_is_held_by_one_process_and_freed_by_its_death(tmp_path):
    directory = tmp_path / "outputs" / "run-1"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from tasks.runs import "
            "hold_run_directory\n"
            "with hold_run_directory(Path(sys.argv[1])):\n    print('held', flush=True); "
            "time.sleep(600)",
            str(directory),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(ResumeError) as refused, hold_run_directory(directory):
            pass
        assert str(refused.value) == (
            f"run run-1 is still being trained by process {holder.pid} (it holds "
            f"{directory / 'run.lock'}); stop it, or wait for it to end"
        )
    finally:
        holder.kill()  # SIGKILL: nothing of its own frees the lock, the kernel does
        holder.wait()
    with hold_run_directory(directory):
        assert (directory / "run.lock").read_text() == str(os.getpid())


def test_a_finished_run_or_one_with_other_params_is_not_resumed(mlflow_store):
    client = MlflowClient()
    run_id = client.create_run(client.create_experiment("resume")).info.run_id
    client.log_param(run_id, "epochs", "5")
    check_resumable(client.get_run(run_id), {"epochs": "5"})
    with pytest.raises(ResumeError, match=r"was started with epochs=5 \(now 6\)"):
        check_resumable(client.get_run(run_id), {"epochs": "6"})
    client.set_terminated(run_id, "FINISHED")
    with pytest.raises(ResumeError, match="already finished; start a new run instead"):
        check_resumable(client.get_run(run_id), {"epochs": "5"})


def _registration_state(client: MlflowClient, model_name: str) -> str | None:
    """How far a run's registration has got: ``pending`` (its logged model begun),
    ``ready`` (logged, not yet a version) or ``registered``; None before any of it."""
    if client.search_registered_models() and client.search_model_versions(f"name='{model_name}'"):
        return "registered"
    experiments = [e.experiment_id for e in client.search_experiments()]
    models = client.search_logged_models(experiments)
    if any(m.status == LoggedModelStatus.READY for m in models):
        return "ready"
    return "pending" if models else None


@pytest.mark.parametrize("kill_at", ["pending", "ready", "registered"])
def test_a_run_killed_while_registering_ends_with_one_logged_model_and_one_version(
    kill_at, prefect_harness, mlflow_store, small_mnist_dir, tmp_path
):
    flags = ["--data-dir", str(small_mnist_dir), "--epochs", "1", "--hidden-sizes", "8"]
    flags += ["--no-progress"]
    env = tfnn_env(PREFECT_API_URL=PREFECT_API_URL.value())
    client = MlflowClient()
    log = tmp_path / "killed.log"
    with open(log, "w") as output:
        process = subprocess.Popen(
            tfnn_command("train", *flags), cwd=tmp_path, env=env, stdout=output, stderr=output
        )
    try:
        give_up = time.monotonic() + 300
        while _registration_state(client, "tfnn-mnist") != kill_at:
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < give_up, f"never {kill_at} within 5 minutes"
            time.sleep(0.01)
    finally:
        process.kill()
        process.wait()
    (run_dir,) = (tmp_path / "outputs").iterdir()
    run_id = run_dir.name
    if kill_at == "pending":  # killed while the model was being saved and uploaded
        [model] = client.search_logged_models([client.get_run(run_id).info.experiment_id])
        assert model.status == LoggedModelStatus.PENDING

    resumed = run_tfnn("train", *flags, "--resume", run_id, cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    [model] = client.search_logged_models([run.info.experiment_id])
    assert (model.source_run_id, model.status) == (run_id, LoggedModelStatus.READY)
    assert [o.model_id for o in run.outputs.model_outputs] == [model.model_id]
    [version] = client.search_model_versions("name='tfnn-mnist'")
    assert (str(version.version), version.run_id) == ("1", run_id)
    assert version.source == f"models:/{model.model_id}" and version.description  # the card
    assert str(client.get_model_version_by_alias("tfnn-mnist", "champion").version) == "1"
    served = mlflow.pyfunc.load_model("models:/tfnn-mnist@champion")
    assert served.metadata.model_id == model.model_id
