"""Tasks that draw a run's figures as PNG files (``common.figures``) from the numbers they
pick out of a run."""

from pathlib import Path

import numpy as np
from prefect import task
from prefect.cache_policies import NONE

from common.figures import (
    accuracy_figure,
    comparison_figure,
    confusion_figure,
    digits_figure,
    save,
    step_loss_figure,
)
from tasks.data import PreparedData
from tasks.evaluate import Evaluation
from tfnn.training import History

DIGITS_SHOWN = 24


def shown_digits(true: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Indices of the test digits to show: the first mistakes (up to half), then the first
    correct ones, ``DIGITS_SHOWN`` in all (fewer if the test set is smaller)."""
    wrong = np.flatnonzero(predicted != true)[: DIGITS_SHOWN // 2]
    right = np.flatnonzero(predicted == true)[: DIGITS_SHOWN - len(wrong)]
    return np.concatenate([wrong, right])


@task(cache_policy=NONE)
def plot_run(
    history: History, evaluation: Evaluation, data: PreparedData, directory: str
) -> list[str]:
    """Write the run's four PNG figures into ``directory``; returns their paths."""
    out = Path(directory)
    shown = shown_digits(data.test_labels, evaluation.predicted_labels)
    accuracy = accuracy_figure(
        history.train_accuracy, history.val_accuracy, history.test_accuracy, history.best_epoch
    )
    digits = digits_figure(
        data.test_images[shown], data.test_labels[shown], evaluation.predicted_labels[shown]
    )
    return [
        save(step_loss_figure(history.step_loss), out / "train_loss.png"),
        save(accuracy, out / "accuracy.png"),
        save(confusion_figure(evaluation.confusion), out / "confusion_matrix.png"),
        save(digits, out / "test_digits.png"),
    ]


@task(cache_policy=NONE)
def plot_comparison(histories: dict[str, History], path: str) -> str:
    """Step loss and accuracy per epoch of several runs, labelled by name, on one figure
    (``common.figures.comparison_figure``); returns its path."""
    runs = {
        name: {
            "step_loss": history.step_loss,
            "val_accuracy": history.val_accuracy,
            "test_accuracy": history.test_accuracy,
        }
        for name, history in histories.items()
    }
    return save(comparison_figure(runs), path)
