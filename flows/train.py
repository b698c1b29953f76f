"""The training flow: load, preprocess, build, train, evaluate, plot, all tracked in MLflow."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prefect import Task, flow

from tasks.config import TrainConfig
from tasks.data import load_data, prepare_data
from tasks.data_check import record_data_profile
from tasks.evaluate import evaluate
from tasks.lineage import log_dataset
from tasks.model import build_network
from tasks.plots import plot_run
from tasks.registry import download_weights, register_model
from tasks.reporting import publish_summary
from tasks.tracking import (
    flag_if_not_learning,
    log_evaluation,
    log_trained_model,
    tracked_run,
)
from tasks.training import train
from tfnn.training import History

DEFAULT_EXPERIMENT = "tfnn-mnist"
DEFAULT_OUTPUT_DIR = "outputs"
DEFAULT_MODEL_NAME = "tfnn-mnist"


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


@flow(name="train-mnist", log_prints=True)
def train_flow(
    config: TrainConfig = TrainConfig(),  # noqa: B008 - frozen, and Prefect shows it as the default
    experiment: str = DEFAULT_EXPERIMENT,
    output_dir: str = DEFAULT_OUTPUT_DIR,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    show_progress: bool = False,
    registered_model_name: str | None = DEFAULT_MODEL_NAME,
    warm_start_from: str | None = None,
    resume_run_id: str | None = None,
    takeover: bool = False,
) -> TrainResult:
    """Train the configured network on MNIST and record everything in one MLflow run.

    The model is registered as a new version of ``registered_model_name`` (unless None, or
    the run learned nothing). ``warm_start_from`` (e.g. ``runs:/<run_id>/weights``) starts from
    a saved network's weights; ``resume_run_id`` continues that run from its newest checkpoint
    (``takeover``: even if another process seems to hold it).
    """
    return run_training(
        config,
        experiment,
        output_dir,
        parent_run_id=parent_run_id,
        run_name=run_name,
        show_progress=show_progress,
        registered_model_name=registered_model_name,
        warm_start_from=warm_start_from,
        resume_run_id=resume_run_id,
        takeover=takeover,
    )


def run_training(
    config: TrainConfig,
    experiment: str,
    output_dir: str,
    *,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    show_progress: bool = False,
    registered_model_name: str | None = None,
    warm_start_from: str | None = None,
    resume_run_id: str | None = None,
    takeover: bool = False,
    as_tasks: bool = True,
) -> TrainResult:
    """The training flow's steps, each a Prefect task run, or with ``as_tasks=False`` each a
    plain call inside whatever task or flow runs this (a sweep's configuration task: one task
    run instead of a dozen, which is most of a small configuration's orchestration cost).
    Either way the MLflow run records the same things."""

    def step(task: Task) -> Callable:
        return task if as_tasks else task.fn

    with tracked_run(
        config.as_params(), experiment, parent_run_id, run_name, resume_run_id, takeover
    ) as run_id:
        run_dir = Path(output_dir) / run_id
        arrays = step(load_data)(config.data_source)
        data = step(prepare_data)(arrays, config.validation_fraction)
        step(record_data_profile)(run_id, arrays)  # what the data check compares new data with
        initial = (
            step(download_weights)(run_id, warm_start_from, str(run_dir / "warm_start"))
            if warm_start_from
            else None
        )
        network = step(build_network)(config, data.input_dim, data.num_classes, initial)
        step(log_dataset)(run_id, data, network.num_parameters)
        history = step(train)(
            network,
            data,
            config,
            run_id,
            str(run_dir / "checkpoints"),
            show_progress,
            resume=resume_run_id is not None,
        )
        warning = step(flag_if_not_learning)(run_id, history, data)
        evaluation = step(evaluate)(network, data)
        plots = step(plot_run)(history, evaluation, data, str(run_dir / "plots"))
        step(log_evaluation)(run_id, evaluation, plots)
        model_uri = step(log_trained_model)(run_id, network, data, history.best_epoch)
        version = (
            step(register_model)(registered_model_name, model_uri, run_id)
            if registered_model_name and warning is None
            else None
        )
        step(publish_summary)(run_id, model_uri, history, evaluation)
    return TrainResult(run_id, model_uri, history, evaluation.metrics(), version, warning)
