"""A training run as plain calls of the tasks' functions, in the training flow's order.

A sweep runs each configuration as one task that calls ``train_pipeline``: one task run
instead of a dozen, which is most of a small configuration's orchestration cost. The MLflow
run records the same things as the training flow's.
"""

from dataclasses import dataclass
from pathlib import Path

from common.config import RunOptions, TrainConfig
from tasks.data import load_data, prepare_data
from tasks.data_check import record_data_profile
from tasks.evaluate import evaluate
from tasks.lineage import log_dataset
from tasks.model import build_network
from tasks.model_card import publish_model_card
from tasks.plots import plot_run
from tasks.registry import register_model
from tasks.reporting import publish_summary
from tasks.tracking import (
    flag_if_not_learning,
    log_evaluation,
    log_trained_model,
    tracked_run,
)
from tasks.training import train
from tfnn.training import History


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced: its MLflow ids, its history and its final metrics, the
    registered model version (None when the run registered nothing), and why it is not
    worth registering (None when it learned)."""

    run_id: str
    model_uri: str
    history: History
    metrics: dict[str, float]
    model_version: str | None = None
    warning: str | None = None


def run_directory(options: RunOptions, run_id: str) -> Path:
    """Where run ``run_id`` keeps its local checkpoints, plots and warm-start weights."""
    return Path(options.output_dir) / run_id


def train_pipeline(
    config: TrainConfig,
    options: RunOptions,
    parent_run_id: str | None = None,
    run_name: str | None = None,
) -> TrainResult:
    """Train ``config`` afresh in one MLflow run (a child of ``parent_run_id`` if given),
    inside whatever task calls this."""
    with tracked_run(config.as_params(), options.experiment, parent_run_id, run_name) as run_id:
        run_dir = run_directory(options, run_id)
        arrays = load_data.fn(config.data_source)
        data = prepare_data.fn(arrays, config.validation_fraction)
        record_data_profile.fn(run_id, arrays)
        network = build_network.fn(config, data.input_dim, data.num_classes)
        log_dataset.fn(run_id, data, network.num_parameters)
        history = train.fn(
            network,
            data,
            config,
            run_id,
            str(run_dir / "checkpoints"),
            options.progress,
        )
        warning = flag_if_not_learning.fn(run_id, history, data)
        evaluation = evaluate.fn(network, data)
        plots = plot_run.fn(history, evaluation, data, str(run_dir / "plots"))
        model_uri = log_trained_model.fn(run_id, network, data, history.best_epoch)
        log_evaluation.fn(run_id, evaluation, plots, model_uri)
        version = (
            register_model.fn(options.registered_model_name, model_uri, run_id)
            if options.registered_model_name and warning is None
            else None
        )
        publish_model_card.fn(run_id, version and options.registered_model_name, version)
        publish_summary.fn(run_id, model_uri, history, evaluation)
    return TrainResult(run_id, model_uri, history, evaluation.metrics(), version, warning)
