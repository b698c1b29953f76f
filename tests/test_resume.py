"""Resume after a crash: a real ``tfnn train`` process killed with SIGKILL in epoch 3 of 5,
then run again with ``--resume``, ends as the same MLflow run with every epoch logged once
and the weights of an uninterrupted run."""

import os
import signal
import subprocess
import time

from conftest import EPOCH_METRICS, tfnn_command, tfnn_env, train_uninterrupted
from mlflow.tracking import MlflowClient
from prefect.settings import PREFECT_API_URL

from tasks.config import TrainConfig
from tasks.tracking import WEIGHTS_TAG


def test_resume_after_sigkill_in_epoch_3(prefect_harness, mlflow_store, large_mnist_dir, tmp_path):
    flags = ["--data-dir", str(large_mnist_dir), "--epochs", "5", "--hidden-sizes", "256"]
    flags += ["--seed", "7", "--no-progress"]
    # The session's Prefect server, so that the subprocesses start no temporary one.
    env = tfnn_env(PREFECT_API_URL=PREFECT_API_URL.value())
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen(
            tfnn_command("train", *flags), cwd=tmp_path, env=env, stdout=log, stderr=log
        )
        # Epoch 2's checkpoint is written while epoch 3 trains: kill then.
        give_up = time.monotonic() + 300
        while not list(tmp_path.glob("outputs/*/checkpoints/ckpt-2.index")):
            assert process.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < give_up, "no checkpoint of epoch 2 within 5 minutes"
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    (run_dir,) = (tmp_path / "outputs").iterdir()
    run_id = run_dir.name
    client = MlflowClient()
    assert client.get_run(run_id).info.status == "RUNNING"
    assert not (run_dir / "checkpoints" / "ckpt-5.index").exists()

    resumed = subprocess.run(
        tfnn_command("train", *flags, "--resume", run_id),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
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
    assert uploaded == {f"checkpoints/epoch-{epoch:03d}" for epoch in range(1, 6)}
