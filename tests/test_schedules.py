"""Deployments with cron schedules, and the command-line checks of the new commands."""

import pytest
import yaml
from conftest import ROOT
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools import validate

from cli import build_parser, main
from flows.retrain import retrain_flow
from flows.schedules import build_deployments
from flows.train import train_flow
from flows.watch import watch_deployment
from tasks.config import RunOptions, TrainConfig


def test_deployments_carry_the_crons_and_a_parameter_set_the_flows_accept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # started outside the checkout, as `tfnn schedule` may be
    config = TrainConfig(hidden_sizes=(32,), epochs=2, data_source="/data/mnist")
    options = RunOptions(model_name="digits", margin=0.02)
    train, retrain = build_deployments(config, "*/10 * * * *", "0 6 * * 1", options)
    assert (train.name, train.flow_name) == ("scheduled-train", "train-mnist")
    assert (retrain.name, retrain.flow_name) == ("scheduled-retrain", "retrain-mnist")
    # By module, as the installed package holds them: not a path relative to the directory.
    assert (train.entrypoint, retrain.entrypoint) == (
        "flows.train.train_flow",
        "flows.retrain.retrain_flow",
    )
    watch = watch_deployment("/data/mnist", "digits", interval=60, settle_seconds=30)
    assert watch.entrypoint == "flows.watch.watch_data_flow"
    assert [s.schedule.cron for s in train.schedules] == ["*/10 * * * *"]
    assert [s.schedule.cron for s in retrain.schedules] == ["0 6 * * 1"]
    # The timezone of prefect.yaml's schedules, which the compose stack deploys.
    deployed = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    zones = {s["timezone"] for d in deployed for s in d["schedules"] if "cron" in s}
    assert {s.schedule.timezone for s in [*train.schedules, *retrain.schedules]} == zones == {"UTC"}
    for deployment, flow in ((train, train_flow), (retrain, retrain_flow)):
        # The server's type check at registration, then the flow run's own validation.
        schema = parameter_schema(flow).model_dump_for_openapi()
        validate(deployment.parameters, schema, raise_on_error=True, ignore_required=True)
        parameters = flow.validate_parameters(deployment.parameters)
        assert (parameters["config"], parameters["options"]) == (config, options)
        # Only what differs from the flows' defaults, so the defaults live in one place.
        assert deployment.parameters["options"] == {"model_name": "digits", "margin": 0.02}


def test_crons_default_from_the_environment(monkeypatch):
    monkeypatch.setenv("TFNN_TRAIN_CRON", "5 1 * * *")
    monkeypatch.delenv("TFNN_RETRAIN_CRON", raising=False)
    args = build_parser().parse_args(["schedule"])
    # The retrain's default, as prefect.yaml and docs/operations.md give it: Sundays at 03:00.
    assert (args.train_cron, args.retrain_cron) == ("5 1 * * *", "0 3 * * 0")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["schedule", "--train-cron", "61 * * * *"], "invalid cron string '61 * * * *'"),
        (["retrain", "--margin", "-0.1"], "margin: Input should be greater than or equal to 0"),
        (["retrain", "--margin", "high"], "margin: Input should be a valid number"),
    ],
)
def test_bad_flags_exit_2_with_one_line(argv, message, capsys):
    # argparse refuses what its own types check (SystemExit); RunOptions the rest.
    try:
        code = main(argv)
    except SystemExit as stopped:
        code = stopped.code
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("tfnn") and ": error: " in error and message in error


def test_a_bad_cron_in_the_environment_is_refused_too(monkeypatch, capsys):
    monkeypatch.setenv("TFNN_RETRAIN_CRON", "every sunday")
    with pytest.raises(SystemExit) as stopped:
        main(["schedule"])
    assert stopped.value.code == 2
    assert "invalid cron string 'every sunday'" in capsys.readouterr().err
