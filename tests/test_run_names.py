"""One name and one set of labels for one run, in both UIs (issue 23, points 4, 5 and 9):
the flow run is named after its configuration and its MLflow run after the flow run; the
flow runs carry activation, model and trigger tags; MLflow records who ran it and samples
system metrics often enough to draw a curve on a short run."""

import getpass
import time

import mlflow
import pytest
from mlflow.environment_variables import MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL
from mlflow.tracking import MlflowClient
from prefect import get_client

from flows.compare import compare_flow
from flows.train import train_flow
from tasks.config import RunOptions, TrainConfig
from tasks.tracking import expected_run_seconds, sampling_interval


def flow_run(flow_run_id):
    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def test_a_config_label_names_activation_sizes_and_rate():
    config = TrainConfig(hidden_sizes=(100, 50), learning_rate=0.1, data_source="x")
    assert config.label() == "relu-100x50-lr0.1"
    assert (
        TrainConfig(hidden_sizes=(), activation="tanh", learning_rate=0.01, data_source="x").label()
        == "tanh-linear-lr0.01"
    )


def test_compare_children_are_named_by_activation_in_both_uis(
    prefect_harness, mlflow_store, small_mnist_dir, tmp_path
):
    config = TrainConfig(hidden_sizes=(8,), epochs=1, data_source=str(small_mnist_dir))
    options = RunOptions(output_dir=str(tmp_path), model_name="names-model")
    state = compare_flow(config, ("relu", "tanh"), options, return_state=True)
    results = state.result()
    client = MlflowClient()
    parent = flow_run(state.state_details.flow_run_id)
    assert parent.name == "compare-relu-vs-tanh"
    assert {"trigger:cli", "model:names-model"} <= set(parent.tags)
    for activation, result in results.items():
        run = client.get_run(result.run_id)
        assert run.info.run_name == activation
        child = flow_run(run.data.tags["prefect.flow_run_id"])
        assert child.name == activation
        assert {f"activation:{activation}", "model:names-model", "trigger:cli"} <= set(child.tags)
        parent_run = client.get_run(run.data.tags["mlflow.parentRunId"])
        assert parent_run.info.run_name == parent.name


def test_a_train_flow_run_and_its_mlflow_run_share_the_configurations_name(
    prefect_harness, mlflow_store, small_mnist_dir, tmp_path
):
    config = TrainConfig(
        hidden_sizes=(8,), epochs=1, learning_rate=0.05, data_source=str(small_mnist_dir)
    )
    state = train_flow(
        config, RunOptions(output_dir=str(tmp_path), register_model=False), return_state=True
    )
    run = MlflowClient().get_run(state.result().run_id)
    assert flow_run(state.state_details.flow_run_id).name == "train-relu-8-lr0.05"
    assert run.info.run_name == "train-relu-8-lr0.05"
    assert run.data.tags["mlflow.user"] == getpass.getuser()


def test_the_sampling_interval_follows_the_expected_length(monkeypatch):
    monkeypatch.delenv(MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL.name, raising=False)
    with sampling_interval(30):  # under a minute: once a second, the shortest
        assert MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL.get() == 1.0
    with sampling_interval(240):  # 60 samples: every 4 s
        assert MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL.get() == 4.0
    with sampling_interval(3600):  # MLflow's default at most
        assert MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL.get() == 10.0
    assert not MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL.is_set()  # restored for the next run
    monkeypatch.setenv(MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL.name, "7")
    with sampling_interval(30):  # the user's setting wins
        assert MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL.get() == 7.0


def test_expected_length_is_overhead_plus_steps_times_their_cost():
    # By hand, the default 784-100-50-10 network on 60,000 digits: 5 epochs of 1,875 steps,
    # each 2 ms plus 6 * 32 * 84,060 multiply-adds at 3e10 a second, after 20 s of the rest.
    per_step = 0.002 + 6 * 32 * 84_060 / 3e10
    assert expected_run_seconds(TrainConfig(data_source="x")) == pytest.approx(20 + 9375 * per_step)
    assert expected_run_seconds(TrainConfig(epochs=1, data_source="x")) == pytest.approx(
        20 + 1875 * per_step
    )


def test_a_short_run_draws_a_system_metrics_curve(mlflow_store, monkeypatch):
    monkeypatch.delenv(MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL.name, raising=False)
    client = MlflowClient()
    run_id = client.create_run(client.create_experiment("sampling")).info.run_id
    with sampling_interval(30):
        mlflow.start_run(run_id=run_id, log_system_metrics=True)
    try:
        time.sleep(6.5)
    finally:
        mlflow.end_run()
    samples = client.get_metric_history(run_id, "system/cpu_utilization_percentage")
    # One a second (MLflow's default, 10 s, would give none in 6.5 s).
    assert len(samples) >= 4
    assert [m.step for m in samples] == list(range(len(samples)))
