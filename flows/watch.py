"""The data watch: notices new data, checks it once its files settle, and announces it as an
event; it never trains (the retrain's trigger on ``tfnn.data.changed`` does)."""

import os
import time

from prefect import flow
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import RunnerDeployment
from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
from prefect.types.entrypoint import EntrypointType

from tasks.config import RunOptions, default_data_source
from tasks.data_check import (
    CHANGED_EVENT,
    announce,
    check_new_data,
    read_watch_state,
    resource_id,
    save_watch_state,
    source_fingerprint,
)
from tasks.data_profile import CheckThresholds

WATCH_INTERVAL_ENV, WATCH_SETTLE_ENV = "TFNN_WATCH_INTERVAL", "TFNN_WATCH_SETTLE"
DEFAULT_WATCH_INTERVAL, DEFAULT_SETTLE_SECONDS = 60.0, 30.0


def watch_timing() -> tuple[float, float]:
    """``(interval, settle)`` seconds from ``$TFNN_WATCH_INTERVAL`` / ``$TFNN_WATCH_SETTLE``."""
    return (
        float(os.environ.get(WATCH_INTERVAL_ENV) or DEFAULT_WATCH_INTERVAL),
        float(os.environ.get(WATCH_SETTLE_ENV) or DEFAULT_SETTLE_SECONDS),
    )


@flow(name="watch-data", log_prints=True)
def watch_data_flow(
    data_source: str | None = None,
    model_name: str = RunOptions().model_name,
    settle_seconds: float = DEFAULT_SETTLE_SECONDS,
    thresholds: dict[str, float] | None = None,
    allow_test_change: bool = False,
) -> str:
    """Once files of ``data_source`` have changed and then stayed unchanged for ``settle_seconds``
    (a burst of writes is one change), check them against ``model_name``'s champion and emit
    ``tfnn.data.changed`` or ``tfnn.data.rejected``. Returns what it found, in words."""
    source = data_source or default_data_source()
    if source.startswith("tfds:"):
        return _say(f"{source}: a tensorflow-datasets source does not change; nothing to watch")
    fingerprint = source_fingerprint(source)
    state = read_watch_state(source)
    now = time.time()
    if fingerprint != state.get("fingerprint"):
        save_watch_state(source, {**state, "fingerprint": fingerprint, "since": now})
        return _say(f"{source}: files changed; waiting {settle_seconds:g} s for them to settle")
    if now - state["since"] < settle_seconds:
        return _say(f"{source}: settling ({now - state['since']:.0f} of {settle_seconds:g} s)")
    if state.get("checked_fingerprint") == fingerprint:
        return _say(f"{source}: unchanged")
    limits = CheckThresholds.from_environment(**(thresholds or {}))
    result = check_new_data(source, model_name, limits, allow_test_change)
    digest = result.profile and result.profile.digest
    state = {**state, "checked_fingerprint": fingerprint}
    if result.champion and digest and result.champion.digest == digest:
        outcome = f"{source}: the champion was trained on this data (digest {digest[:12]})"
    elif digest and digest == state.get("announced"):
        outcome = f"{source}: files rewritten with the same data (digest {digest[:12]})"
    else:
        event_id = announce(source, result.report.passed, result.payload())
        state["announced"] = digest
        verdict = "changed" if result.report.passed else "rejected"
        outcome = f"{source}: tfnn.data.{verdict} (event {event_id}): " + "; ".join(
            result.report.reasons or result.report.notes
        )
    save_watch_state(source, state)
    return _say(outcome)


def _say(text: str) -> str:
    print(text)
    return text


def data_changed_trigger(source: str) -> DeploymentEventTrigger:
    """Run on each ``tfnn.data.changed`` about ``source`` with its digest and event id (as a
    string: the server renders a lone expression to JSON, which has no UUID)."""
    return DeploymentEventTrigger(
        name="retrain on checked new data",
        expect={CHANGED_EVENT},
        match={"prefect.resource.id": resource_id(source)},
        parameters={
            "data_digest": "{{ event.payload.digest }}",
            "data_event_id": "{{ event.id | string }}",
        },
    )


def watch_deployment(
    source: str, model_name: str, interval: float, settle_seconds: float
) -> RunnerDeployment:
    """Every ``interval`` seconds; a run that would overlap a slow check is cancelled, so one
    change is never announced twice."""
    return watch_data_flow.to_deployment(
        "watch-data",
        interval=interval,
        parameters={
            "data_source": source,
            "model_name": model_name,
            "settle_seconds": settle_seconds,
        },
        entrypoint_type=EntrypointType.MODULE_PATH,
        concurrency_limit=ConcurrencyLimitConfig(
            limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW
        ),
    )
