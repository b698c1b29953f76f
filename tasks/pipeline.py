"""A training run's steps, in order: the one place that wires them. The training flow calls
it, and so does a sweep's task for each configuration (its steps then run as task runs
nested in that task)."""

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from prefect import runtime

from tasks.config import RunOptions, TrainConfig
from tasks.data import load_data, log_dataset, prepare_data
from tasks.data_check import record_data_profile
from tasks.evaluate import evaluate
from tasks.model import build_network, log_trained_model
from tasks.plots import plot_run
from tasks.registry import WARM_START_TAG, crown_if_first, register_model
from tasks.reports import publish_model_card, publish_summary
from tasks.runs import hold_run_directory, option_tags
from tasks.tracking import (
    expected_run_seconds,
    flag_if_not_learning,
    log_evaluation,
    tag_flow_run,
    tracked_run,
)
from tasks.training import RESUMED_FROM_TAG, train
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
    # What a resume skipped and used, for the command to tell (the train task tags the run).
    resumed_from: str | None = None
    # Whether the registered version became champion, as its model's first (FIRST_CHAMPION).
    champion: bool = False


def train_pipeline(
    config: TrainConfig,
    options: RunOptions,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    warm_start_from: str | None = None,
) -> TrainResult:
    """Train ``config`` in one MLflow run (a child of ``parent_run_id`` if given; with
    ``options.resume``, that run continued from its newest checkpoint): load, prepare, build
    (from ``warm_start_from``'s weights if given), train, evaluate, plot, log the model,
    register it (unless ``options`` says not to or the run learned nothing), describe it."""
    tags = option_tags(options) | ({WARM_START_TAG: warm_start_from} if warm_start_from else {})
    with ExitStack() as held:
        # A resumed run's directory is locked before its MLflow run is reopened.
        if options.resume:
            held.enter_context(hold_run_directory(Path(options.output_dir) / options.resume))
        run_id = held.enter_context(
            tracked_run(
                config.as_params(),
                options.experiment,
                parent_run_id,
                run_name,
                options.resume,
                tags,
                expected_run_seconds(config),
            )
        )
        if runtime.task_run.id is None:  # the training flow's own run, not a sweep's task
            tag_flow_run(activation=config.activation, model=options.model_name)
        run_dir = Path(options.output_dir) / run_id
        if not options.resume:
            held.enter_context(hold_run_directory(run_dir))
        arrays = load_data(config.data_source)
        data = prepare_data(arrays, config.validation_fraction)
        record_data_profile(run_id, arrays)  # what the data check compares new data with
        network = build_network(config, data.input_dim, data.num_classes, warm_start_from)
        log_dataset(run_id, data, network.num_parameters)
        history = train(network, data, config, run_id, str(run_dir), options)
        warning = flag_if_not_learning(run_id, history, data)
        evaluation = evaluate(network, data)
        plots = plot_run(history, evaluation, data, str(run_dir / "plots"))
        model_uri = log_trained_model(run_id, network, data, history)
        log_evaluation(run_id, evaluation, plots, model_uri)
        version, champion = None, False
        if options.registered_model_name and warning is None:
            version = register_model(options.registered_model_name, model_uri, run_id)
            champion = crown_if_first(options.registered_model_name, version, run_id)
        publish_model_card(run_id, version and options.registered_model_name, version)
        publish_summary(run_id, model_uri, history, evaluation)
    resumed = options.resume and MlflowClient().get_run(run_id).data.tags.get(RESUMED_FROM_TAG)
    return TrainResult(
        run_id, model_uri, history, evaluation.metrics(), version, warning, resumed, champion
    )
