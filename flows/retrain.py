"""The retrain flow: train a challenger and move the ``champion`` alias only if it wins."""

from prefect import flow, runtime

from flows.train import model_slot, train_flow
from tasks.config import RunOptions, TrainConfig
from tasks.data import load_data, prepare_data
from tasks.data_check import changed_since_check, data_change, tag_data_event
from tasks.registry import (
    Decision,
    already_decided,
    challenge,
    find_champion,
    record_decision,
    retrain_key,
)
from tasks.reports import publish_decision, publish_model_card
from tasks.timeouts import FLOW_TIMEOUT_ENV, timeout_seconds
from tasks.tracking import tag_flow_run


def retrain_run_name() -> str:
    """``retrain-relu-100x50-lr0.1``: the configuration the challenger trains."""
    config = TrainConfig.model_validate(runtime.flow_run.parameters.get("config", TrainConfig()))
    return f"retrain-{config.label()}"


@flow(
    name="retrain-mnist",
    flow_run_name=retrain_run_name,
    log_prints=True,
    timeout_seconds=timeout_seconds(FLOW_TIMEOUT_ENV),
)
def retrain_flow(
    config: TrainConfig = TrainConfig(),  # noqa: B008 - frozen, and Prefect shows it as the default
    options: RunOptions = RunOptions(),  # noqa: B008 - frozen, and Prefect shows it as the default
    data_digest: str | None = None,
    data_event_id: str | None = None,
) -> Decision:
    """Train a challenger (from the champion's weights with ``options.warm_start``) and promote
    it only if its validation accuracy on the champion's examples beats it by ``options.margin``.
    Nothing new since the last decision: no training. From a ``tfnn.data.changed`` event
    (``data_event_id``), it trains only on the checked data (``data_digest``)."""
    if config.validation_fraction == 0:
        raise ValueError("a retrain decides on validation: set validation_fraction > 0")
    tag_flow_run(model=options.model_name)
    with model_slot(options.model_name):
        data = prepare_data(load_data(config.data_source), config.validation_fraction)
        champion = find_champion(options.model_name)
        key = retrain_key(config, data.digest, options.warm_start, options.margin)
        skip_reason = changed_since_check(data_digest, data.digest) or already_decided(
            options.model_name, key, champion
        )
        if skip_reason:
            decision = Decision(
                options.model_name, "skipped", skip_reason, key, champion and champion.version
            )
        else:
            decision = _challenge(config, options, data, champion, key, data_event_id, data_digest)
        publish_decision(decision, data_change(data_event_id, data_digest, data.source))
    print(f"{decision.action}: {decision.reason}")
    return decision


def _challenge(config, options, data, champion, key, data_event_id, data_digest) -> Decision:
    """Train the challenger (a subflow) and decide between it and ``champion``."""
    model_name = options.model_name
    warm_start = options.warm_start and champion
    challenger = train_flow(
        config,
        # A challenger is always a registered version: the decision compares versions.
        options.model_copy(update={"register_model": True}),
        run_name="challenger",
        warm_start_from=f"runs:/{champion.run_id}/weights" if warm_start else None,
    )
    if data_event_id:
        tag_data_event(challenger.run_id, data_event_id, data_digest)
    if challenger.warning:  # not registered, so not a candidate
        return Decision(
            model_name,
            "kept",
            challenger.warning,
            key,
            champion_version=champion and champion.version,
            challenger_run_id=challenger.run_id,
        )
    decision = challenge(
        model_name, champion, challenger.model_version, challenger.run_id, data, options.margin, key
    )
    decision = record_decision(decision)
    # The card written at registration did not know the decision yet.
    publish_model_card(challenger.run_id, model_name, challenger.model_version)
    return decision
