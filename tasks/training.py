"""The task that trains a network with tfnn's manual loop, logging to MLflow as it goes."""

import math
import sys
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import rich
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NONE
from rich.console import Console
from rich.progress import Progress

from tasks.config import RunOptions, TrainConfig
from tasks.data import PreparedData
from tasks.epoch_logger import EpochLogger
from tasks.model import fit_arguments
from tfnn.network import Sequential
from tfnn.training import Callback, History, fit

# A run's progress in Prefect, without opening MLflow: a progress artifact updated after
# every epoch and one log line per epoch with its metrics.
PROGRESS_KEY = "training-progress"
# Set when a resume skipped checkpoints it could not read: which, and which one it used.
RESUMED_FROM_TAG = "tfnn.resumed_from"


@task(cache_policy=NONE)
def train(
    network: Sequential,
    data: PreparedData,
    config: TrainConfig,
    run_id: str,
    run_dir: str,
    options: RunOptions,
) -> History:
    """Train ``network`` in place with SGD; after every epoch log metrics and a checkpoint.
    ``options.progress`` draws a bar on stderr when it is a terminal.

    With a validation split, training stops early after ``early_stopping_patience`` epochs
    without a lower ``val_loss`` (if > 0) and, with ``restore_best``, ends with the weights
    of the epoch of lowest ``val_loss``.

    Checkpoints go to ``run_dir/checkpoints`` (kept there if the run fails) and to the run's
    ``checkpoints/`` artifacts. With ``options.resume``, training continues after the newest
    checkpoint (see ``EpochLogger.resume``), exactly as an uninterrupted run would.
    """
    steps_per_epoch = math.ceil(len(data.x_train) / config.batch_size)
    sets = data.evaluation_sets
    arguments = fit_arguments(config, validation="val" in sets)
    early_stopping = next(iter(arguments["callbacks"]), None)
    checkpoints = str(Path(run_dir) / "checkpoints")
    logger = EpochLogger(run_id, network, checkpoints, steps_per_epoch, early_stopping)
    completed_epochs = logger.resume() if options.resume else 0
    if logger.fallback:  # in the Prefect UI, and on the MLflow run for the command to tell
        get_run_logger().warning(logger.fallback)
        logger.client.set_tag(run_id, RESUMED_FROM_TAG, logger.fallback)
    arguments["callbacks"] += [
        logger.history,
        logger,
        EpochProgress(config.epochs, completed_epochs),
    ]
    with ExitStack() as bar:
        # Off a terminal a bar would only leave its last frame in a log.
        if options.progress and sys.stderr.isatty():
            # The command's console (stderr, beneath its status line), else one on stderr.
            console = rich.get_console() if rich.get_console().stderr else Console(stderr=True)
            progress = bar.enter_context(Progress(console=console))
            arguments["callbacks"].append(ProgressBar(progress, config.epochs, steps_per_epoch))
        return fit(network, train=(data.x_train, data.y_train), evaluate=sets, **arguments)


class ProgressBar(Callback):
    """A ``tfnn.fit`` callback drawing a rich progress bar of the run's steps (on stderr:
    stdout is the command's result), refreshed about 20 times an epoch (each refresh ends a
    compiled chunk of steps). Its loss is the epoch's running mean, which becomes the
    ``train_loss`` MLflow logs, not the last batch's."""

    def __init__(self, progress: Progress, epochs: int, steps_per_epoch: int):
        self.progress, self.epochs = progress, epochs
        self.bar = progress.add_task("training", total=epochs * steps_per_epoch)
        self.steps_per_call = max(1, steps_per_epoch // 20)
        self.epoch_losses: list[float] = []

    def on_steps(self, epoch: int, first_step: int, losses: np.ndarray) -> None:
        if first_step == 0:
            self.epoch_losses = []
        self.epoch_losses.extend(losses.tolist())
        mean = float(np.mean(self.epoch_losses))
        description = f"epoch {epoch}/{self.epochs} loss {mean:.4f}"
        self.progress.update(self.bar, advance=len(losses), description=description)


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
