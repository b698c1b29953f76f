"""The typed configs refuse, before anything starts, what would fail only after training."""

import re

import pytest
from pydantic import ValidationError

from cli.memory import available_memory, check_memory
from cli.preflight import check_tracking
from tasks.config import (
    MAX_EXPERIMENT_NAME_LENGTH,
    InputError,
    RunOptions,
    TrainConfig,
    describe_validation_error,
)


def refused(model, **fields) -> str:
    with pytest.raises(ValidationError) as error:
        model(**fields)
    return describe_validation_error(error.value)


@pytest.mark.parametrize("sizes", ["", "16,,16", "16,", ",16"])
def test_an_empty_layer_in_hidden_sizes_is_a_typo_not_a_smaller_network(sizes):
    assert refused(TrainConfig, hidden_sizes=sizes) == (
        "invalid configuration: hidden_sizes: expected units per layer separated by commas, "
        f"like 100,50 (got {sizes!r})"
    )
    assert TrainConfig(hidden_sizes=" 16, 8 ").hidden_sizes == (16, 8)
    assert TrainConfig(hidden_sizes=()).hidden_sizes == ()  # no hidden layer, said as such


@pytest.mark.parametrize("field", ["activation", "output_activation"])
def test_the_step_function_is_refused_for_training(field):
    assert refused(TrainConfig, **{field: "step"}).startswith(
        f"invalid configuration: {field}: the step function has no gradient, so SGD cannot "
        "train through it"
    )


@pytest.mark.parametrize("name", ["a/b", "team:model", "m@champion", ""])
def test_a_model_name_that_breaks_model_uris_is_refused(name):
    line = refused(RunOptions, model_name=name)
    assert line.startswith("invalid run options: model_name: ") and f"(got {name!r})" in line
    assert RunOptions(model_name="tfnn-mnist_v2.1").model_name == "tfnn-mnist_v2.1"


def test_the_experiment_name_limit_is_mlflows():
    from mlflow.utils.validation import MAX_EXPERIMENT_NAME_LENGTH as mlflows

    assert mlflows == MAX_EXPERIMENT_NAME_LENGTH
    line = refused(RunOptions, experiment="x" * (mlflows + 1))
    assert line.startswith("invalid run options: experiment: String should have at most 500")


def test_a_network_over_the_parameter_limit_is_refused_before_anything_starts():
    # By hand: 784*65536 + 65536 + 9 * (65536*65536 + 65536) + 65536*10 + 10 parameters.
    sizes = ",".join(["65536"] * 10)
    parameters = 784 * 65536 + 65536 + 9 * (65536 * 65536 + 65536) + 65536 * 10 + 10
    with pytest.raises(ValidationError) as refused:
        TrainConfig(hidden_sizes=sizes)
    assert f"makes a network of {parameters:,} parameters on MNIST" in str(refused.value)
    assert "more than the 100,000,000 allowed" in str(refused.value)
    # Two hidden layers of w units: (784+1)*w + (w+1)*w + (w+1)*10 = w*w + 796*w + 10.
    widest = max(w for w in range(9000, 11000) if w * w + 796 * w + 10 <= 100_000_000)
    assert TrainConfig(hidden_sizes=f"{widest},{widest}").hidden_sizes == (widest, widest)
    with pytest.raises(ValidationError):
        TrainConfig(hidden_sizes=f"{widest + 1},{widest + 1}")


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("TFNN_KEEP_CHECKPOINTS", "0", "TFNN_KEEP_CHECKPOINTS: expected a whole number >= 1"),
        ("TFNN_MODEL_WAIT_SECONDS", "nan", "TFNN_MODEL_WAIT_SECONDS='nan': expected a number"),
        ("TFNN_MODEL_WAIT_SECONDS", "-5", "TFNN_MODEL_WAIT_SECONDS='-5': expected a number"),
    ],
)
def test_settings_read_during_a_run_are_checked_before_it(
    variable, value, message, mlflow_store, monkeypatch
):
    # Read once the MLflow run exists, they are checked with the tracking store, first.
    monkeypatch.setenv(variable, value)
    with pytest.raises(InputError, match=re.escape(message)):
        check_tracking()


def test_a_training_step_that_cannot_fit_in_memory_is_refused():
    config = TrainConfig(hidden_sizes="1000,500", batch_size=100)
    # By hand: 785*1000 + 1001*500 + 501*10 = 1,290,510 parameters, weights and gradients;
    # 100 rows of 784+1000+500+10 units, pre-activation and activation, each with a gradient.
    needed = 4 * (2 * 1_290_510 + 4 * 100 * (784 + 1000 + 500 + 10))
    check_memory(config, available=needed)
    with pytest.raises(InputError) as refused:
        check_memory(config, available=needed - 1)
    assert str(refused.value).startswith(
        "hidden_sizes 1000,500 with batch_size 100: one training step needs at least 0.0 GiB"
    )
    # What this machine has: /proc/meminfo's MemAvailable, more than nothing, less than all.
    with open("/proc/meminfo") as meminfo:
        total = int(meminfo.readline().split()[1]) * 1024  # MemTotal comes first
    assert 0 < available_memory() <= total
