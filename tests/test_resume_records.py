"""A resumed run finishes what its first process recorded: the same registered version and
logged model (never a second), into the model its run options named. Each run is left as a
SIGKILL after its last step leaves it: RUNNING, with everything written before."""

import re

from mlflow.tracking import MlflowClient

from cli import main
from flows.train import train_flow
from tasks.config import RunOptions, TrainConfig

RUN_ID = re.compile(r"mlflow run id: (\w+)")


def stopped(run_id: str) -> None:
    """What a process killed at that point leaves: the run RUNNING."""
    MlflowClient().update_run(run_id, status="RUNNING")


def test_a_run_stopped_after_registering_keeps_its_version_when_resumed(
    prefect_harness, mlflow_store, small_mnist_dir
):
    config = TrainConfig(epochs=2, hidden_sizes=(8,), data_source=str(small_mnist_dir))
    options = RunOptions(experiment="resumed", model_name="once")
    first = train_flow(config, options)
    client = MlflowClient()
    assert first.model_version == "1"
    stopped(first.run_id)
    client.update_model_version("once", "1", description="")  # killed before the card

    resumed = train_flow(config, options.model_copy(update={"resume": first.run_id}))
    assert resumed.run_id == first.run_id and resumed.model_uri == first.model_uri
    assert resumed.model_version == "1"
    assert [str(v.version) for v in client.search_model_versions("name = 'once'")] == ["1"]
    experiment = client.get_experiment_by_name("resumed").experiment_id
    logged = client.search_logged_models([experiment])
    assert [m.model_id for m in logged] == [first.model_uri.removeprefix("models:/")]
    assert client.get_model_version("once", "1").description  # the card, written now
    assert client.get_run(first.run_id).info.status == "FINISHED"


def test_a_resumed_run_keeps_the_run_options_it_was_started_with(
    prefect_harness, mlflow_store, small_mnist_dir, capsys
):
    flags = ["--data-dir", str(small_mnist_dir), "--epochs", "2", "--hidden-sizes", "8"]
    assert main(["train", *flags, "--no-register", "--model-name", "kept", "--no-progress"]) == 0
    run_id = RUN_ID.search(capsys.readouterr().out)[1]
    stopped(run_id)

    assert main(["train", "--resume", run_id, "--model-name", "other"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"tfnn: error: --resume {run_id}: the run was started with model_name")

    assert main(["train", "--resume", run_id, "--no-progress"]) == 0
    client = MlflowClient()
    assert client.get_run(run_id).info.status == "FINISHED"
    # Started with --no-register: resumed, it registers nothing either.
    assert client.search_registered_models() == []
