"""One training at a time per registered model: deployment runs of train and retrain hold the one
slot of a global concurrency limit named after the model. Only deployment runs: a real server's
repossessor frees a killed run's slot when its lease (300 s) expires; a private one never would."""

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar

from prefect import runtime
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists

from tasks.timeouts import MODEL_WAIT_ENV, timeout_seconds

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
