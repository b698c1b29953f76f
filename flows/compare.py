"""The notebook's second experiment: the same network with different hidden activations."""

from pathlib import Path

from prefect import flow

from flows.train import (
    DEFAULT_EXPERIMENT,
    DEFAULT_MODEL_NAME,
    DEFAULT_OUTPUT_DIR,
    TrainResult,
    train_flow,
)
from tasks.config import TrainConfig
from tasks.plots import plot_comparison
from tasks.tracking import log_artifact, tracked_run


@flow(name="compare-activations", log_prints=True)
def compare_flow(
    config: TrainConfig = TrainConfig(),  # noqa: B008 - frozen, and Prefect shows it as the default
    activations: tuple[str, ...] = ("relu", "tanh"),
    experiment: str = DEFAULT_EXPERIMENT,
    output_dir: str = DEFAULT_OUTPUT_DIR,
    registered_model_name: str | None = DEFAULT_MODEL_NAME,
) -> dict[str, TrainResult]:
    """Train one child run per activation under one parent MLflow run, and plot them together;
    each child's model becomes a version of ``registered_model_name`` (unless None)."""
    # Validated here, so a bad name is refused before anything trains.
    variants = {
        name: TrainConfig(**{**config.model_dump(), "activation": name}) for name in activations
    }
    params = {**config.as_params(), "activation": ",".join(activations)}
    with tracked_run(
        params, experiment, run_name="compare " + " vs ".join(activations)
    ) as parent_id:
        results = {
            name: train_flow(
                variant,
                experiment,
                output_dir,
                parent_run_id=parent_id,
                run_name=name,
                registered_model_name=registered_model_name,
            )
            for name, variant in variants.items()
        }
        figure = plot_comparison(
            {name: result.history for name, result in results.items()},
            str(Path(output_dir) / parent_id / "comparison.png"),
        )
        log_artifact(parent_id, figure, "plots")
    return results
