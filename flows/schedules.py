"""Deployments of the train and retrain flows on cron schedules, served by one process.

``tfnn schedule`` runs ``serve_schedules``; the compose stack instead deploys
``prefect.yaml`` to a work pool that a worker polls.
"""

from prefect import serve
from prefect.deployments.runner import RunnerDeployment

from flows.crons import DEFAULT_RETRAIN_CRON, DEFAULT_TRAIN_CRON, default_crons
from flows.retrain import retrain_flow
from flows.train import DEFAULT_MODEL_NAME, train_flow
from flows.watch import data_changed_trigger
from tasks.config import TrainConfig

__all__ = [
    "DEFAULT_RETRAIN_CRON",
    "DEFAULT_TRAIN_CRON",
    "build_deployments",
    "default_crons",
    "serve_schedules",
]


def build_deployments(
    config: TrainConfig,
    train_cron: str,
    retrain_cron: str,
    model_name: str = DEFAULT_MODEL_NAME,
    margin: float = 0.0,
) -> list[RunnerDeployment]:
    """The ``scheduled-train`` and ``scheduled-retrain`` deployments; a bad cron raises. The
    retrain also runs on each ``tfnn.data.changed`` event about ``config.data_source``."""
    config_json = config.model_dump(mode="json")
    return [
        train_flow.to_deployment(
            "scheduled-train",
            cron=train_cron,
            parameters={"config": config_json, "registered_model_name": model_name},
        ),
        retrain_flow.to_deployment(
            "scheduled-retrain",
            cron=retrain_cron,
            parameters={"config": config_json, "model_name": model_name, "margin": margin},
            triggers=[data_changed_trigger(config.data_source)],  # flows/watch.py
        ),
    ]


def serve_schedules(deployments: list[RunnerDeployment]) -> None:
    """Register ``deployments`` and run their scheduled flow runs until interrupted."""
    serve(*deployments)
