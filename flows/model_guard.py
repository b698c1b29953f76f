"""One training at a time per registered model: train and retrain flows (scheduled, deployed
or started by hand against the same Prefect server) hold a slot of a global concurrency limit
of 1 named after the model, so a scheduled train and retrain never overlap on it."""

import functools
import inspect
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from typing import TypeVar

from prefect import runtime
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

LIMIT_PREFIX = "tfnn-model-"
WAIT_SECONDS_ENV = "TFNN_MODEL_WAIT_SECONDS"
# A retrain holds its model's slot while its training subflow runs in the same context.
F = TypeVar("F", bound=Callable)
_held: ContextVar[frozenset[str]] = ContextVar("tfnn_model_slots", default=frozenset())


def model_limit_name(model_name: str) -> str:
    """The global concurrency limit that guards ``model_name``."""
    return LIMIT_PREFIX + model_name


def wait_seconds() -> float | None:
    """How long a flow waits for its model's slot: ``$TFNN_MODEL_WAIT_SECONDS`` (default:
    as long as the other run takes)."""
    text = os.environ.get(WAIT_SECONDS_ENV, "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{WAIT_SECONDS_ENV}={text!r}: expected a number of seconds") from None


def ensure_model_limit(model_name: str) -> str:
    """Create the model's limit (1 slot) on the Prefect server unless it exists; its name."""
    name = model_limit_name(model_name)
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            # Another run may create it meanwhile.
            with suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1)
                )
    return name


@contextmanager
def model_slot(model_name: str | None) -> Iterator[None]:
    """Hold ``model_name``'s slot while the body runs, waiting for it while another flow run
    trains that model (``TimeoutError`` after ``$TFNN_MODEL_WAIT_SECONDS``). Nothing for
    None (no registered model) or a slot this context already holds."""
    if model_name is None or model_name in _held.get():
        yield
        return
    name = ensure_model_limit(model_name)
    with concurrency(name, occupy=1, timeout_seconds=wait_seconds(), strict=True):
        token = _held.set(_held.get() | {model_name})
        try:
            yield
        finally:
            _held.reset(token)


def one_run_per_model(model_of: Callable[[dict], str | None]) -> Callable[[F], F]:
    """Decorate a flow function (under ``@flow``) so that each run started by a deployment
    holds the slot of the model that ``model_of(arguments)`` names (see ``model_slot``)
    while it runs.

    Only deployment runs: they run against a real Prefect server, whose repossessor frees
    the slot of a run that was killed once its lease (300 s) expires. A private or test
    server runs no repossessor, so a run killed there (SIGKILL) would hold the slot for
    ever and its own ``--resume`` would wait on it."""

    def decorate(function: F) -> F:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def guarded(*args, **kwargs):
            if runtime.deployment.id is None:
                return function(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            with model_slot(model_of(bound.arguments)):
                return function(*args, **kwargs)

        return guarded  # type: ignore[return-value]

    return decorate
