"""Train and retrain deployments on cron schedules, served by one process (``tfnn schedule``);
the compose stack deploys ``prefect.yaml`` to a work pool instead."""

from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron
from prefect.types.entrypoint import EntrypointType

from flows.retrain import retrain_flow
from flows.train import train_flow
from flows.watch import data_changed_trigger
from tasks.config import RunOptions, TrainConfig

# As prefect.yaml says: a cron means the same hour wherever the server runs.
TIMEZONE = "UTC"


def build_deployments(
    config: TrainConfig,
    train_cron: str,
    retrain_cron: str,
    options: RunOptions = RunOptions(),  # noqa: B008 - frozen
) -> list[RunnerDeployment]:
    """The ``scheduled-train`` and ``scheduled-retrain`` deployments (a bad cron raises), one run
    at a time each; the retrain also runs on ``tfnn.data.changed`` about ``config.data_source``.
    Parameters hold only what differs from the flows' defaults."""
    parameters = {
        "config": config.model_dump(mode="json"),
        "options": options.model_dump(mode="json", exclude_defaults=True),
    }
    one_at_a_time = ConcurrencyLimitConfig(limit=1, collision_strategy="ENQUEUE")
    # By module, as installed, not by a path relative to where the command started.
    by_module = EntrypointType.MODULE_PATH
    return [
        train_flow.to_deployment(
            "scheduled-train",
            schedules=[Cron(train_cron, timezone=TIMEZONE)],
            parameters=parameters,
            concurrency_limit=one_at_a_time,
            entrypoint_type=by_module,
        ),
        retrain_flow.to_deployment(
            "scheduled-retrain",
            schedules=[Cron(retrain_cron, timezone=TIMEZONE)],
            parameters=parameters,
            concurrency_limit=one_at_a_time,
            entrypoint_type=by_module,
            triggers=[data_changed_trigger(config.data_source)],
        ),
    ]


def serve_schedules(deployments: list[RunnerDeployment]) -> None:
    """Register ``deployments`` and run their scheduled flow runs until interrupted."""
    serve(*deployments)
