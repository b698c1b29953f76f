"""The sweep flow: every configuration of a grid as a concurrent task and MLflow child run (on
threads or Dask) under a parent run that ranks them. Each task loads its own data, so only
configurations and small results cross the network."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, runtime, task
from prefect.cache_policies import NONE
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from tasks.config import RunOptions, TrainConfig
from tasks.grid import DEFAULT_MAX_CONCURRENCY, SweepSpec
from tasks.pipeline import TrainResult, train_pipeline
from tasks.plots import plot_comparison
from tasks.registry import crown_if_first, register_model
from tasks.reports import publish_model_card
from tasks.sweep import (
    portable_tracking_uri,
    prepare_worker,
    rank_configurations,
    sweep_params,
)
from tasks.timeouts import FLOW_TIMEOUT_ENV, timeout_seconds
from tasks.tracking import log_artifact, tag_flow_run, tracked_run


@dataclass(frozen=True)
class SweepResult:
    """The parent MLflow run, the ranking (best first) and each configuration's outcome."""

    parent_run_id: str
    ranking: list[dict[str, Any]]
    outcomes: dict[str, TrainResult | BaseException]


def sweep_task_runner(
    dask_address: str | None = None,
    dask_workers: int | None = None,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
) -> TaskRunner:
    """A Dask runner for an existing cluster or a local one of ``dask_workers`` processes,
    else Prefect's thread pool of ``max_concurrency`` threads."""
    if dask_address or dask_workers:
        from prefect_dask import DaskTaskRunner

        if dask_address:
            return DaskTaskRunner(address=dask_address)
        return DaskTaskRunner(
            cluster_class="distributed.LocalCluster",
            cluster_kwargs={"n_workers": dask_workers, "threads_per_worker": 1, "processes": True},
        )
    return ThreadPoolTaskRunner(max_workers=max_concurrency)


@task(cache_policy=NONE)
def train_configuration(
    config: TrainConfig,
    name: str,
    options: RunOptions,
    parent_run_id: str,
    tracking_uri: str,
) -> TrainResult:
    """Train one configuration as a child of ``parent_run_id``, wherever the runner puts it."""
    prepare_worker(tracking_uri)
    return train_pipeline(config, options, parent_run_id, name)


def sweep_run_name() -> str:
    """``sweep-of-N``: N configurations (or samples of the grid), in both UIs."""
    spec = SweepSpec.model_validate(runtime.flow_run.parameters["spec"])
    return f"sweep-of-{min(spec.samples or spec.size(), spec.size())}"


@flow(
    name="sweep-mnist",
    flow_run_name=sweep_run_name,
    log_prints=True,
    timeout_seconds=timeout_seconds(FLOW_TIMEOUT_ENV),
)
def sweep_flow(
    spec: SweepSpec,
    options: RunOptions = RunOptions(register_model=False),  # noqa: B008 - frozen, shown as the default
) -> SweepResult:
    """Train every configuration of ``spec`` under one parent MLflow run holding the ranking,
    a comparison plot and the best's tags; ``options.register_model`` registers the best."""
    # Validated before anything trains: a bad grid fails here, naming the configuration.
    configurations = spec.configurations()
    if any(config.validation_fraction == 0 for config in configurations.values()):
        raise ValueError("a sweep ranks on validation: every validation_fraction must be > 0")
    output_dir = str(Path(options.output_dir).resolve())
    # Only the best is registered, here; concurrent configurations draw no progress bar.
    each = options.model_copy(
        update={"output_dir": output_dir, "register_model": False, "progress": False}
    )
    tracking_uri = portable_tracking_uri()
    with tracked_run(sweep_params(spec, configurations), options.experiment) as parent_id:
        tag_flow_run(model=options.model_name)
        futures = {
            name: train_configuration.submit(config, name, each, parent_id, tracking_uri)
            for name, config in configurations.items()
        }
        # Failed configurations come back as their exceptions and do not stop the others.
        outcomes = {name: future.result(raise_on_failure=False) for name, future in futures.items()}
        ranking = rank_configurations(parent_id, configurations, outcomes, spec.varied())
        figure = plot_comparison(
            {n: r.history for n, r in outcomes.items() if not isinstance(r, BaseException)},
            str(Path(output_dir) / parent_id / "comparison.png"),
        )
        log_artifact(parent_id, figure, "plots")
        best = ranking[0]
        model_uri = outcomes[best["configuration"]].model_uri
        if options.register_model:
            version = register_model(options.model_name, model_uri, best["run_id"])
            crown_if_first(options.model_name, version, best["run_id"])
            publish_model_card(best["run_id"], options.model_name, version)
    return SweepResult(parent_id, ranking, outcomes)
