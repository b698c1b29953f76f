"""The run's figures as PNG files, made with ``matplotlib.figure.Figure``, not pyplot: never
shown, they need no display, backend or global figure to close (as matplotlib advises)."""

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from prefect import task
from prefect.cache_policies import NONE

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
    """Write the run's four figures into ``directory``; returns their paths."""
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
    """Several runs' ``comparison_figure`` written to ``path``; returns it."""
    runs = {
        name: {
            "step_loss": history.step_loss,
            "val_accuracy": history.val_accuracy,
            "test_accuracy": history.test_accuracy,
        }
        for name, history in histories.items()
    }
    return save(comparison_figure(runs), path)


def step_loss_figure(step_loss: Sequence[float]) -> Figure:
    """The notebook's plot: train loss at every step."""
    figure = Figure(figsize=(7, 4))
    axes = figure.subplots()
    axes.plot(step_loss, linewidth=0.6)
    axes.set(xlabel="step", ylabel="train loss", title="Train loss per step")
    return figure


def accuracy_figure(
    train: Sequence[float],
    validation: Sequence[float],
    test: Sequence[float],
    best_epoch: int | None,
) -> Figure:
    """Accuracy per epoch, with ``best_epoch`` (lowest validation loss, from 1) marked."""
    epochs = np.arange(1, len(train) + 1)
    figure = Figure(figsize=(7, 4))
    axes = figure.subplots()
    axes.plot(epochs, train, "o-", label="train")
    if len(validation):
        axes.plot(epochs, validation, "^-", label="validation")
        axes.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch {best_epoch}")
    axes.plot(epochs, test, "s-", label="test")
    axes.set(xlabel="epoch", ylabel="accuracy", title="Accuracy per epoch", xticks=epochs)
    axes.legend()
    return figure


def confusion_figure(confusion: np.ndarray) -> Figure:
    """The confusion matrix ``(classes, classes)`` with its counts; rows are true classes."""
    figure = Figure(figsize=(6, 5.5))
    axes = figure.subplots()
    image = axes.imshow(confusion, cmap="Blues")
    classes = np.arange(len(confusion))
    axes.set(
        xticks=classes, yticks=classes, xlabel="predicted", ylabel="true", title="Confusion matrix"
    )
    threshold = confusion.max() / 2
    for (row, column), count in np.ndenumerate(confusion):
        axes.text(
            column,
            row,
            count,
            ha="center",
            va="center",
            fontsize=7,
            color="white" if count > threshold else "black",
        )
    figure.colorbar(image, ax=axes)
    return figure


def digits_figure(
    images: np.ndarray, true: np.ndarray, predicted: np.ndarray, columns: int = 6
) -> Figure:
    """Digits ``images`` ``(n, 28, 28)`` in rows of ``columns``, labelled ``predicted (true)``,
    red where they differ; tiles of one image on one axes, as subplots are slow."""
    rows = -(-len(images) // columns)
    height, width = images.shape[1:3]
    label_band, gap = height // 2, 2  # room above each tile for its label
    tile_height, tile_width = label_band + height + gap, width + gap
    canvas = np.zeros((rows * tile_height, columns * tile_width), dtype=np.float32)
    figure = Figure(figsize=(9, 6.5))
    axes = figure.subplots()
    for position, (image, label, guess) in enumerate(zip(images, true, predicted, strict=True)):
        row, column = divmod(position, columns)
        top, left = row * tile_height + label_band, column * tile_width
        image = image.astype(np.float32)
        span = image.max() - image.min()
        canvas[top : top + height, left : left + width] = (image - image.min()) / (span or 1)
        axes.text(
            left + width / 2,
            top - 2,
            f"{guess} ({label})",
            ha="center",
            va="bottom",
            fontsize=9,
            color="tomato" if guess != label else "white",
        )
    axes.imshow(canvas, cmap="gray", vmin=0, vmax=1)
    axes.axis("off")
    axes.set_title("Test digits: predicted (true); mistakes in red")
    return figure


def comparison_figure(runs: Mapping[str, Mapping[str, Sequence[float]]]) -> Figure:
    """Step loss and accuracy of runs (name -> ``step_loss``, ``val_accuracy``,
    ``test_accuracy``): test dashed in the run's colour, solid if it has no validation."""
    figure = Figure(figsize=(12, 4.5))
    losses, accuracy = figure.subplots(1, 2)
    for name, run in runs.items():
        (line,) = losses.plot(run["step_loss"], linewidth=0.6, label=name)
        epochs = np.arange(1, len(run["test_accuracy"]) + 1)
        if len(run["val_accuracy"]):
            accuracy.plot(epochs, run["val_accuracy"], "o-", color=line.get_color(), label=name)
            test_style = {"linestyle": "--", "label": f"{name} (test)"}
        else:
            test_style = {"label": name}
        accuracy.plot(
            epochs, run["test_accuracy"], marker="s", color=line.get_color(), **test_style
        )
    losses.set(xlabel="step", ylabel="train loss", title="Train loss per step")
    accuracy.set(
        xlabel="epoch",
        ylabel="accuracy",
        title="Validation (solid) and test (dashed) accuracy per epoch",
    )
    losses.legend()
    accuracy.legend()
    return figure


def save(figure: Figure, path: str | Path) -> str:
    """Write ``figure`` to the PNG file ``path``, making its directory; returns ``str(path)``."""
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return str(path)
