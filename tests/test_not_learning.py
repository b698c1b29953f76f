"""A run that learned nothing finishes but is flagged and not registered: a real ``tfnn train``
whose learning rate is far too high for the network to learn, yet not high enough to diverge."""

import pytest
from conftest import run_tfnn, tfnn_env, train_uninterrupted
from mlflow.tracking import MlflowClient
from prefect.settings import PREFECT_API_URL

from flows.retrain import retrain_flow
from tasks.config import TrainConfig
from tasks.tracking import WARNING_TAG

# Subprocesses, real servers or signals: the slow lane.
pytestmark = pytest.mark.slow


def test_a_run_at_chance_is_flagged_and_not_registered(
    prefect_harness, mlflow_store, small_mnist_dir, tmp_path
):
    # At lr 10 the first steps blow the loss up to ~1e9 and kill the relus: the loss then falls
    # back to ~2.5 but accuracy stays at the 10% of always answering one class.
    flags = ["--data-dir", str(small_mnist_dir), "--learning-rate", "10", "--epochs", "2"]
    finished = run_tfnn(
        "train",
        *flags,
        "--no-progress",
        cwd=tmp_path,
        env=tfnn_env(PREFECT_API_URL=PREFECT_API_URL.value()),
    )
    assert finished.returncode == 1, finished.stderr[-3000:]
    warnings = [line for line in finished.stderr.splitlines() if line.startswith("tfnn: ")]
    (run_line,) = [line for line in finished.stdout.splitlines() if "mlflow run id" in line]
    run_id = run_line.split()[3]
    # The bare library on the same configuration, judged on validation (the default split);
    # the synthetic labels cycle 0-9, so the commonest class is 10% of the training part.
    config = TrainConfig(learning_rate=10, epochs=2, data_source=str(small_mnist_dir))
    accuracy = train_uninterrupted(config)[0].val_accuracy[-1]
    assert accuracy < 0.15
    assert warnings == [
        f"tfnn: warning: run {run_id} did not learn: val_accuracy {accuracy:.4f} is at chance "
        "(commonest class: 0.1000); not registered"
    ]
    assert "registered:" not in finished.stdout

    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"  # its record is complete, to look at
    assert run.data.tags[WARNING_TAG] == warnings[0].removeprefix("tfnn: warning: ").removesuffix(
        "; not registered"
    )
    assert run.data.metrics["val/accuracy"] == accuracy
    assert client.search_model_versions("name='tfnn-mnist'") == []


def test_a_retrain_whose_challenger_learned_nothing_promotes_nothing(
    prefect_harness, mlflow_store, small_mnist_dir
):
    config = TrainConfig(learning_rate=10, epochs=2, data_source=str(small_mnist_dir))
    decision = retrain_flow(config)
    client = MlflowClient()
    reason = client.get_run(decision.challenger_run_id).data.tags[WARNING_TAG]
    assert (decision.action, decision.reason) == ("kept", reason)
    assert reason.startswith(f"run {decision.challenger_run_id} did not learn: ")
    assert decision.challenger_version is None
    assert client.search_model_versions("name='tfnn-mnist'") == []
