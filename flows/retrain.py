"""The retrain flow: train a challenger and move the ``champion`` alias only if it wins."""

from prefect import flow
from pydantic import NonNegativeFloat

from flows.train import DEFAULT_EXPERIMENT, DEFAULT_MODEL_NAME, DEFAULT_OUTPUT_DIR, train_flow
from tasks.config import TrainConfig
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
from tasks.reporting import publish_decision


@flow(name="retrain-mnist", log_prints=True)
def retrain_flow(
    config: TrainConfig = TrainConfig(),  # noqa: B008 - frozen, and Prefect shows it as the default
    model_name: str = DEFAULT_MODEL_NAME,
    margin: NonNegativeFloat = 0.0,
    warm_start: bool = False,
    experiment: str = DEFAULT_EXPERIMENT,
    output_dir: str = DEFAULT_OUTPUT_DIR,
    data_digest: str | None = None,
    data_event_id: str | None = None,
) -> Decision:
    """Train a challenger (fresh, or from the champion's weights with ``warm_start``), score
    it and the champion on the same validation examples of the current data, and promote it
    only if its validation accuracy is higher by at least ``margin``. With nothing new since
    the last decision it trains nothing. Started by a ``tfnn.data.changed`` event
    (``data_event_id``), it trains only on the data the check passed (``data_digest``)."""
    if config.validation_fraction == 0:
        raise ValueError("a retrain decides on validation: set validation_fraction > 0")
    data = prepare_data(load_data(config.data_source), config.validation_fraction)
    champion = find_champion(model_name)
    key = retrain_key(config, data.digest, warm_start, margin)
    skip_reason = changed_since_check(data_digest, data.digest) or already_decided(
        model_name, key, champion
    )
    if skip_reason:
        decision = Decision(
            model_name, "skipped", skip_reason, key, champion_version=champion and champion.version
        )
    else:
        challenger = train_flow(
            config,
            experiment,
            output_dir,
            run_name="challenger",
            registered_model_name=model_name,
            warm_start_from=f"runs:/{champion.run_id}/weights" if warm_start and champion else None,
        )
        if data_event_id:
            tag_data_event(challenger.run_id, data_event_id, data_digest)
        if challenger.warning:  # not registered, so not a candidate
            decision = Decision(
                model_name,
                "kept",
                challenger.warning,
                key,
                champion_version=champion and champion.version,
                challenger_run_id=challenger.run_id,
            )
        else:
            decision = challenge(
                model_name,
                champion,
                challenger.model_version,
                challenger.run_id,
                data,
                margin,
                key,
            )
            record_decision(decision)
    publish_decision(decision, data_change(data_event_id, data_digest, data.source))
    print(f"{decision.action}: {decision.reason}")
    return decision
