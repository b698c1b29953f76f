"""Tasks that draw a run's figures as PNG files with matplotlib.

Figures are made with ``matplotlib.figure.Figure``, not pyplot: they are written to files and
never shown, so they need no display, no backend choice and no global figure to close (the
way matplotlib advises for servers), and pyplot is not imported at all.
"""

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from prefect import task
from prefect.cache_policies import NONE

from tasks.data import PreparedData
from tasks.evaluate import Evaluation
from tfnn.training import History

DIGITS_SHOWN = 24


def _save(figure: Figure, path: Path) -> str:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return str(path)


def plot_step_loss(history: History, path: Path) -> str:
    """The notebook's plot: train loss at every step."""
    figure = Figure(figsize=(7, 4))
    axes = figure.subplots()
    axes.plot(history.step_loss, linewidth=0.6)
    axes.set(xlabel="step", ylabel="train loss", title="Train loss per step")
    return _save(figure, path)


def plot_accuracy(history: History, path: Path) -> str:
    """Train, validation and test accuracy after each epoch, the best validation epoch marked."""
    epochs = np.arange(1, history.epochs + 1)
    figure = Figure(figsize=(7, 4))
    axes = figure.subplots()
    axes.plot(epochs, history.train_accuracy, "o-", label="train")
    if history.val_accuracy:
        axes.plot(epochs, history.val_accuracy, "^-", label="validation")
        axes.axvline(
            history.best_epoch,
            color="grey",
            linestyle=":",
            label=f"best epoch {history.best_epoch}",
        )
    axes.plot(epochs, history.test_accuracy, "s-", label="test")
    axes.set(xlabel="epoch", ylabel="accuracy", title="Accuracy per epoch", xticks=epochs)
    axes.legend()
    return _save(figure, path)


def plot_confusion(confusion: np.ndarray, path: Path) -> str:
    """The confusion matrix with counts; rows are true classes."""
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
    return _save(figure, path)


def plot_digits(images: np.ndarray, true: np.ndarray, predicted: np.ndarray, path: Path) -> str:
    """Test digits labelled ``predicted (true)``: the first mistakes in red, then correct ones.
    One image of tiles on one axes: a grid of subplots costs matplotlib a second."""
    wrong = np.flatnonzero(predicted != true)[: DIGITS_SHOWN // 2]
    right = np.flatnonzero(predicted == true)[: DIGITS_SHOWN - len(wrong)]
    shown = np.concatenate([wrong, right])
    rows, columns = 4, DIGITS_SHOWN // 4
    height, width = images.shape[1:3]
    label_band, gap = height // 2, 2  # room above each tile for its label
    tile_height, tile_width = label_band + height + gap, width + gap
    canvas = np.zeros((rows * tile_height, columns * tile_width), dtype=np.float32)
    figure = Figure(figsize=(9, 6.5))
    axes = figure.subplots()
    for position, index in enumerate(shown):
        row, column = divmod(position, columns)
        top, left = row * tile_height + label_band, column * tile_width
        image = images[index].reshape(height, width).astype(np.float32)
        span = image.max() - image.min()
        canvas[top : top + height, left : left + width] = (image - image.min()) / (span or 1)
        axes.text(
            left + width / 2,
            top - 2,
            f"{predicted[index]} ({true[index]})",
            ha="center",
            va="bottom",
            fontsize=9,
            color="tomato" if predicted[index] != true[index] else "white",
        )
    axes.imshow(canvas, cmap="gray", vmin=0, vmax=1)
    axes.axis("off")
    axes.set_title("Test digits: predicted (true); mistakes in red")
    return _save(figure, path)


@task(cache_policy=NONE)
def plot_run(
    history: History, evaluation: Evaluation, data: PreparedData, directory: str
) -> list[str]:
    """Write the run's four PNG figures into ``directory``; returns their paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    return [
        plot_step_loss(history, out / "train_loss.png"),
        plot_accuracy(history, out / "accuracy.png"),
        plot_confusion(evaluation.confusion, out / "confusion_matrix.png"),
        plot_digits(
            data.test_images, data.test_labels, evaluation.predicted_labels, out / "test_digits.png"
        ),
    ]


@task(cache_policy=NONE)
def plot_comparison(histories: dict[str, History], path: str) -> str:
    """Step loss and accuracy per epoch of several runs, labelled by name, on one figure:
    validation accuracy solid and test accuracy dashed in the run's colour (test solid
    when a run has no validation split)."""
    figure = Figure(figsize=(12, 4.5))
    losses, accuracy = figure.subplots(1, 2)
    for name, history in histories.items():
        (line,) = losses.plot(history.step_loss, linewidth=0.6, label=name)
        epochs = np.arange(1, history.epochs + 1)
        if history.val_accuracy:
            accuracy.plot(epochs, history.val_accuracy, "o-", color=line.get_color(), label=name)
        test_style = (
            {"linestyle": "--", "label": f"{name} (test)"}
            if history.val_accuracy
            else {"label": name}
        )
        accuracy.plot(
            epochs, history.test_accuracy, marker="s", color=line.get_color(), **test_style
        )
    losses.set(xlabel="step", ylabel="train loss", title="Train loss per step")
    accuracy.set(
        xlabel="epoch",
        ylabel="accuracy",
        title="Validation (solid) and test (dashed) accuracy per epoch",
    )
    losses.legend()
    accuracy.legend()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return _save(figure, Path(path))
