"""One training at a time per registered model: train and retrain flow runs started by
deployments against the same Prefect server hold the one slot of a global concurrency limit
named after the model (Prefect's ``concurrency``), so a scheduled train and retrain never
overlap on it. The deployments' own ``concurrency_limit`` keeps each from overlapping itself.

Only deployment runs: they run against a real Prefect server, whose repossessor frees the
slot of a run that was killed once its lease (300 s) expires. A private or test server runs
no repossessor, so a run killed there (SIGKILL) would hold the slot for ever and its own
``--resume`` would wait on it.
"""

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
    """In a deployment's flow run, hold ``model_name``'s slot for the block, waiting while
    another flow run trains that model (``TimeoutError`` after ``$TFNN_MODEL_WAIT_SECONDS``;
    unset or 0: as long as it takes). The limit (1 slot) is made on first use. Nothing for
    None (no registered model), a run started by hand, or a slot this context holds."""
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
