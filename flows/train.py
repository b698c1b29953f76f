"""The training flow: load, preprocess, build, train, evaluate, plot, all tracked in MLflow.

One training at a time per registered model: deployment runs of train and retrain hold the
one slot of a global concurrency limit named after the model. Only deployment runs: a real
server's repossessor frees a killed run's slot when its lease (300 s) expires; a private one
never would."""

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar

from prefect import flow, runtime
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists

from tasks.config import RunOptions, TrainConfig
from tasks.pipeline import TrainResult, train_pipeline
from tasks.timeouts import FLOW_TIMEOUT_ENV, MODEL_WAIT_ENV, timeout_seconds

__all__ = ["TrainResult", "model_slot", "train_flow"]

LIMIT_PREFIX = "tfnn-model-"
# A retrain holds its model's slot while its training subflow runs in the same context.
_held: ContextVar[frozenset[str]] = ContextVar("tfnn_model_slots", default=frozenset())


def model_limit_name(model_name: str) -> str:
    """The global concurrency limit that guards ``model_name``."""
    return LIMIT_PREFIX + model_name


@contextmanager
def model_slot(model_name: str | None) -> Iterator[None]:
    """In a deployment's run, hold ``model_name``'s slot for the block (``TimeoutError`` after
    ``$TFNN_MODEL_WAIT_SECONDS``, 0: no limit), making the limit on first use. Nothing for
    None, a run started by hand, or a slot this context already holds."""
    if model_name is None or model_name in _held.get() or runtime.deployment.id is None:
        yield
        return
    name = model_limit_name(model_name)
    with get_client(sync_client=True) as client, suppress(ObjectAlreadyExists):
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    wait = timeout_seconds(MODEL_WAIT_ENV)
    with concurrency(name, occupy=1, timeout_seconds=wait, strict=True):
        token = _held.set(_held.get() | {model_name})
        try:
            yield
        finally:
            _held.reset(token)


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
