"""The training flow: load, preprocess, build, train, evaluate, plot, all tracked in MLflow."""

from prefect import flow

from common.config import RunOptions, TrainConfig
from common.timeouts import FLOW_TIMEOUT_ENV, timeout_seconds
from flows.model_guard import one_run_per_model
from flows.notify import FAILURE_HOOKS
from tasks.data import load_data, prepare_data
from tasks.data_check import record_data_profile
from tasks.evaluate import evaluate
from tasks.lineage import log_dataset
from tasks.model import build_network
from tasks.model_card import publish_model_card
from tasks.pipeline import TrainResult, run_directory
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

__all__ = ["TrainResult", "train_flow"]


@flow(
    name="train-mnist",
    log_prints=True,
    timeout_seconds=timeout_seconds(FLOW_TIMEOUT_ENV),
    **FAILURE_HOOKS,
)
@one_run_per_model(lambda arguments: arguments["options"].registered_model_name)
def train_flow(
    config: TrainConfig = TrainConfig(),  # noqa: B008 - frozen, and Prefect shows it as the default
    options: RunOptions = RunOptions(),  # noqa: B008 - the same
    parent_run_id: str | None = None,
    run_name: str | None = None,
    warm_start_from: str | None = None,
) -> TrainResult:
    """Train the configured network on MNIST and record everything in one MLflow run.

    The model becomes a new version of ``options.model_name`` (unless ``options.register_model``
    is off or the run learned nothing); ``options.resume`` continues that run from its
    newest checkpoint. ``warm_start_from`` (e.g. ``runs:/<run_id>/weights``) starts from a
    saved network's weights. ``tasks.pipeline.train_pipeline`` makes the same calls.
    """
    with tracked_run(
        config.as_params(),
        options.experiment,
        parent_run_id,
        run_name,
        options.resume,
        options.takeover,
    ) as run_id:
        run_dir = run_directory(options, run_id)
        arrays = load_data(config.data_source)
        data = prepare_data(arrays, config.validation_fraction)
        record_data_profile(run_id, arrays)  # what the data check compares new data with
        initial = (
            download_weights(run_id, warm_start_from, str(run_dir / "warm_start"))
            if warm_start_from
            else None
        )
        network = build_network(config, data.input_dim, data.num_classes, initial)
        log_dataset(run_id, data, network.num_parameters)
        history = train(
            network,
            data,
            config,
            run_id,
            str(run_dir / "checkpoints"),
            options.progress,
            resume=options.resume is not None,
        )
        warning = flag_if_not_learning(run_id, history, data)
        evaluation = evaluate(network, data)
        plots = plot_run(history, evaluation, data, str(run_dir / "plots"))
        model_uri = log_trained_model(run_id, network, data, history.best_epoch)
        log_evaluation(run_id, evaluation, plots, model_uri)
        version = (
            register_model(options.registered_model_name, model_uri, run_id)
            if options.registered_model_name and warning is None
            else None
        )
        publish_model_card(run_id, version and options.registered_model_name, version)
        publish_summary(run_id, model_uri, history, evaluation)
    return TrainResult(run_id, model_uri, history, evaluation.metrics(), version, warning)
