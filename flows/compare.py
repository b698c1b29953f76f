"""The notebook's second experiment: the same network with different hidden activations."""

from pathlib import Path

from prefect import flow, runtime

from flows.train import TrainResult, train_flow
from tasks.config import COMPARED_ACTIVATIONS, RunOptions, TrainConfig
from tasks.plots import plot_comparison
from tasks.sweep import rank_configurations
from tasks.tracking import log_artifact, tag_flow_run, tracked_run


def compare_run_name() -> str:
    """``compare-relu-vs-tanh``, in both UIs."""
    return "compare-" + "-vs-".join(
        runtime.flow_run.parameters.get("activations", COMPARED_ACTIVATIONS)
    )


@flow(name="compare-activations", flow_run_name=compare_run_name, log_prints=True)
def compare_flow(
    config: TrainConfig = TrainConfig(),  # noqa: B008 - frozen, and Prefect shows it as the default
    activations: tuple[str, ...] = COMPARED_ACTIVATIONS,
    options: RunOptions = RunOptions(),  # noqa: B008 - frozen, and Prefect shows it as the default
) -> dict[str, TrainResult]:
    """One child run per activation under one parent MLflow run, plotted together and ranked on
    validation as a sweep is; each child's model is registered unless not registering."""
    # Validated here, so a bad name is refused before anything trains.
    variants = {
        name: TrainConfig(**{**config.model_dump(), "activation": name}) for name in activations
    }
    params = {**config.as_params(), "activation": ",".join(activations)}
    with tracked_run(params, options.experiment) as parent_id:
        tag_flow_run(model=options.model_name)
        results = {
            name: train_flow(variant, options, parent_run_id=parent_id, run_name=name)
            for name, variant in variants.items()
        }
        figure = plot_comparison(
            {name: result.history for name, result in results.items()},
            str(Path(options.output_dir) / parent_id / "comparison.png"),
        )
        log_artifact(parent_id, figure, "plots")
        # The parent tells the result, ranked on validation as a sweep's is.
        rank_configurations(parent_id, variants, results, ["activation"])
    return results
