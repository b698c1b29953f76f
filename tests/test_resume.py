"""Resume after a crash: a real ``tfnn train`` process killed with SIGKILL in epoch 3 of 5,
then run again with ``--resume``, ends as the same MLflow run with every epoch logged once
and the weights of an uninterrupted run. A run whose process is alive cannot be resumed."""

import json
import os
import signal
import socket
import subprocess
import time
import uuid

import pytest
from conftest import (
    EPOCH_METRICS,
    run_tfnn,
    tfnn_command,
    tfnn_env,
    train_killed_after_epoch,
    train_uninterrupted,
    wait_for_file,
)
from mlflow.tracking import MlflowClient
from prefect.settings import PREFECT_API_URL

from common.config import TrainConfig
from common.runs import (
    LEASE_TAG,
    RENEWED_TAG,
    LeaseLostError,
    ResumeError,
    check_lease,
    check_resumable,
)
from tasks.tracking import WEIGHTS_TAG, tracked_run

# Subprocesses, real servers or signals: the slow lane.
pytestmark = pytest.mark.slow


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
    for name in EPOCH_METRICS:
        logged = sorted((m.step, m.value) for m in client.get_metric_history(run_id, name))
        assert [step for step, _ in logged] == [1, 2, 3, 4, 5], name
        if name != "epoch_seconds":
            assert [value for _, value in logged] == getattr(history, name), name
    steps_per_epoch = len(history.step_loss) // 5
    stride = steps_per_epoch // 100
    step_losses = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "step_loss"))
    expected = [
        (step, history.step_loss[step])
        for epoch in range(5)
        for step in range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch, stride)
    ]
    assert step_losses == expected
    uploaded = {f.path for f in client.list_artifacts(run_id, "checkpoints")}
    assert uploaded == {"checkpoints/latest", "checkpoints/best"}


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
            # A lease that outlasts this test, so that only the holder's death can free it.
            env={**env, "TFNN_LEASE_SECONDS": "600"},
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
    assert line.startswith(f"tfnn: error: --resume run {run_dir.name} is still being trained by ")
    assert f"pid {first.pid} on {socket.gethostname()}" in line
    assert line.endswith("if that process is dead, wait for its lease to expire or add --takeover")

    # SIGKILLed, it renews nothing, and being on this host its death is seen at once.
    resumed = run_tfnn("train", "--resume", run_dir.name, "--no-progress", cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    client = MlflowClient()
    run = client.get_run(run_dir.name)
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss")) == list(
        range(1, 6)
    )
    experiments = [e.experiment_id for e in client.search_experiments()]
    models = client.search_logged_models(experiments)
    assert [m.source_run_id for m in models] == [run.info.run_id]
    versions = client.search_model_versions("name='tfnn-mnist'")
    assert [(str(v.version), v.run_id) for v in versions] == [("1", run.info.run_id)]


def write_lease(client, run_id: str, host: str, pid: int, age: float, period: float = 30) -> None:
    """Another process takes run ``run_id``: ``age`` seconds ago, not renewed since."""
    lease = {"host": host, "pid": pid, "id": uuid.uuid4().hex, "taken": time.time() - age}
    client.set_tag(run_id, LEASE_TAG, json.dumps({**lease, "period": period}))


def test_a_lease_held_elsewhere_refuses_until_it_expires_or_takeover(mlflow_store):
    client = MlflowClient()
    run_id = client.create_run(client.create_experiment("lease")).info.run_id
    run = client.get_run(run_id)
    check_resumable(run, {})  # a run without a lease (started before leases) resumes

    # Renewed 10 s ago on another machine, every 30 s: held for another 80 s.
    write_lease(client, run_id, "elsewhere", 1, age=10)
    with pytest.raises(
        ResumeError, match=r"pid 1 on elsewhere \(lease renewed 10 s ago, expires in 80 s\)"
    ):
        check_resumable(client.get_run(run_id), {})
    check_resumable(client.get_run(run_id), {}, takeover=True)
    # A renewal by the holder before it, landing just after the takeover, does not count.
    stale = {"id": uuid.uuid4().hex, "renewed": time.time()}
    client.set_tag(run_id, RENEWED_TAG, json.dumps(stale))
    with pytest.raises(ResumeError, match=r"lease renewed 10 s ago, expires in 80 s"):
        check_resumable(client.get_run(run_id), {})
    # Not renewed for three periods: its holder is gone.
    write_lease(client, run_id, "elsewhere", 1, age=91)
    check_resumable(client.get_run(run_id), {})
    # On this machine a dead holder is seen as dead at once, a live one holds.
    dead = subprocess.Popen(["true"])
    dead.wait()
    write_lease(client, run_id, socket.gethostname(), dead.pid, age=1)
    check_resumable(client.get_run(run_id), {})
    with subprocess.Popen(["sleep", "30"]) as alive:
        try:
            write_lease(client, run_id, socket.gethostname(), alive.pid, age=1)
            with pytest.raises(ResumeError, match=f"pid {alive.pid} on"):
                check_resumable(client.get_run(run_id), {})
        finally:
            alive.kill()


def test_a_lease_is_renewed_and_a_takeover_stops_its_holder(mlflow_store, monkeypatch):
    client = MlflowClient()
    monkeypatch.setenv("TFNN_LEASE_SECONDS", "0.2")
    with (
        pytest.raises(LeaseLostError, match="pid 1 on elsewhere took run"),
        tracked_run({}, "renew") as run_id,
    ):
        first = json.loads(client.get_run(run_id).data.tags[LEASE_TAG])
        assert (first["host"], first["pid"]) == (socket.gethostname(), os.getpid())
        time.sleep(0.6)
        renewed = json.loads(client.get_run(run_id).data.tags[RENEWED_TAG])
        assert (renewed["id"], renewed["renewed"] > first["taken"]) == (first["id"], True)
        check_lease(run_id)  # still ours
        # Another process takes the run over: this one stops renewing and writing. Its
        # renewals keep going right up to the takeover, which none of them overwrites.
        write_lease(client, run_id, "elsewhere", 1, age=0)
        time.sleep(0.6)
        check_lease(run_id)
    run = client.get_run(run_id)
    assert json.loads(run.data.tags[LEASE_TAG])["host"] == "elsewhere"
    assert run.info.status == "RUNNING"  # left to the process that holds it now
