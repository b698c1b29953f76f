"""The training flow: load, preprocess, build, train, evaluate, plot, all tracked in MLflow."""

from prefect import flow, runtime

from flows.model_guard import model_slot
from tasks.config import RunOptions, TrainConfig
from tasks.pipeline import TrainResult, train_pipeline
from tasks.timeouts import FLOW_TIMEOUT_ENV, timeout_seconds

__all__ = ["TrainResult", "train_flow"]


def train_run_name() -> str:
    """The flow (and MLflow) run's name: ``run_name``, or ``train-relu-100x50-lr0.1``."""
    parameters = runtime.flow_run.parameters
    config = TrainConfig.model_validate(parameters.get("config", TrainConfig()))
    return parameters.get("run_name") or f"train-{config.label()}"


@flow(
    name="train-mnist",
    flow_run_name=train_run_name,
    log_prints=True,
    timeout_seconds=timeout_seconds(FLOW_TIMEOUT_ENV),
)
def train_flow(
    config: TrainConfig = TrainConfig(),  # noqa: B008 - frozen, and Prefect shows it as the default
    options: RunOptions = RunOptions(),  # noqa: B008 - the same
    parent_run_id: str | None = None,
    run_name: str | None = None,
    warm_start_from: str | None = None,
) -> TrainResult:
    """Train on MNIST in one MLflow run, registering the model unless told not to or it learned
    nothing; ``warm_start_from`` (e.g. ``runs:/<run_id>/weights``) starts from saved weights."""
    with model_slot(options.registered_model_name):
        return train_pipeline(config, options, parent_run_id, run_name, warm_start_from)
