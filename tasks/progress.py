"""A run's progress in Prefect, without opening MLflow: a progress artifact updated after
every epoch and one log line per epoch with its metrics."""

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from tfnn.network import Sequential

PROGRESS_KEY = "training-progress"


class EpochProgress:
    """A ``tfnn.fit`` callback (use it inside a Prefect task or flow run): after each epoch,
    set the ``training-progress`` artifact to the share of ``epochs`` done and log
    ``epoch E/N: name value ...``. A resumed run starts at ``completed_epochs``."""

    def __init__(self, epochs: int, completed_epochs: int = 0):
        self.epochs = epochs
        self.artifact_id = create_progress_artifact(
            100 * completed_epochs / epochs,
            key=PROGRESS_KEY,
            description=f"Epochs completed out of {epochs}",
        )

    def __call__(self, epoch: int, metrics: dict[str, float], network: Sequential) -> None:
        update_progress_artifact(self.artifact_id, 100 * epoch / self.epochs)
        values = " ".join(f"{name} {value:.4f}" for name, value in metrics.items())
        get_run_logger().info(f"epoch {epoch}/{self.epochs}: {values}")
