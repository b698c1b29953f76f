"""The run's figures show the numbers they are given."""

from pathlib import Path

import numpy as np

from tasks import plots as figures
from tasks.plots import DIGITS_SHOWN, shown_digits


def test_step_loss_and_accuracy_figures_plot_the_history():
    (line,) = figures.step_loss_figure([2.3, 1.1, 0.5]).axes[0].lines
    np.testing.assert_array_equal(line.get_xdata(), [0, 1, 2])
    np.testing.assert_array_equal(line.get_ydata(), [2.3, 1.1, 0.5])

    train, validation, test = [0.5, 0.7, 0.8], [0.45, 0.72, 0.7], [0.5, 0.71, 0.69]
    axes = figures.accuracy_figure(train, validation, test, best_epoch=2).axes[0]
    lines = {line.get_label(): line for line in axes.lines}
    assert list(lines) == ["train", "validation", "best epoch 2", "test"]
    for name, values in (("train", train), ("validation", validation), ("test", test)):
        np.testing.assert_array_equal(lines[name].get_xdata(), [1, 2, 3])
        np.testing.assert_array_equal(lines[name].get_ydata(), values)
    np.testing.assert_array_equal(lines["best epoch 2"].get_xdata(), [2, 2])
    assert [text.get_text() for text in axes.get_legend().get_texts()] == list(lines)

    # No validation split: no validation line and no best epoch.
    axes = figures.accuracy_figure(train, [], test, best_epoch=None).axes[0]
    assert [line.get_label() for line in axes.lines] == ["train", "test"]


def test_confusion_figure_writes_each_count_in_its_cell():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 10, 500)
    predicted = np.where(rng.random(500) < 0.8, true, rng.integers(0, 10, 500))
    confusion = np.zeros((10, 10), dtype=int)
    np.add.at(confusion, (true, predicted), 1)  # row = true class, column = predicted

    axes = figures.confusion_figure(confusion).axes[0]
    np.testing.assert_array_equal(axes.images[0].get_array(), confusion)
    cells = {text.get_position(): text for text in axes.texts}
    assert len(cells) == 100
    for (row, column), count in np.ndenumerate(confusion):
        text = cells[(column, row)]
        assert text.get_text() == str(count)
        assert text.get_color() == ("white" if count > confusion.max() / 2 else "black")


def test_the_digits_shown_are_the_first_mistakes_then_correct_ones():
    true = np.array([3, 1, 4, 1, 5, 9, 2, 6])
    predicted = np.array([3, 7, 4, 1, 0, 9, 2, 6])
    np.testing.assert_array_equal(shown_digits(true, predicted), [1, 4, 0, 2, 3, 5, 6, 7])
    # Mistakes fill at most half: 30 mistakes, then 70 correct.
    true = np.arange(100) % 10
    predicted = np.where(np.arange(100) < 30, (true + 1) % 10, true)
    expected = [*range(DIGITS_SHOWN // 2), *range(30, 30 + DIGITS_SHOWN // 2)]
    np.testing.assert_array_equal(shown_digits(true, predicted), expected)


def test_digits_figure_labels_and_scales_each_tile():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    true, predicted = np.array([1, 2, 3, 4, 5, 6, 7]), np.array([1, 9, 3, 4, 0, 6, 7])
    axes = figures.digits_figure(images, true, predicted, columns=3).axes[0]
    labels = [(text.get_text(), text.get_color()) for text in axes.texts]
    pairs = zip(predicted, true, strict=True)
    assert labels == [(f"{p} ({t})", "tomato" if p != t else "white") for p, t in pairs]
    canvas = axes.images[0].get_array()
    assert canvas.shape == (3 * (14 + 28 + 2), 3 * (28 + 2))  # 3 rows of 3: label, digit, gap
    # The fifth digit (row 1, column 1), scaled to [0, 1] on its own.
    tile = canvas[44 + 14 : 44 + 14 + 28, 30 : 30 + 28]
    digit = images[4].astype(np.float64)
    np.testing.assert_allclose(tile, (digit - digit.min()) / (digit.max() - digit.min()), 1e-6)


def test_comparison_figure_draws_each_run_in_one_colour_on_both_axes():
    runs = {
        "relu": {"step_loss": [2.0, 1.0], "val_accuracy": [0.8, 0.9], "test_accuracy": [0.7, 0.85]},
        "tanh": {"step_loss": [2.1, 1.2], "val_accuracy": [], "test_accuracy": [0.6, 0.8]},
    }
    losses, accuracy = figures.comparison_figure(runs).axes
    assert [line.get_label() for line in losses.lines] == ["relu", "tanh"]
    # relu: validation solid and test dashed; tanh, without validation, test solid.
    assert [line.get_label() for line in accuracy.lines] == ["relu", "relu (test)", "tanh"]
    assert [line.get_linestyle() for line in accuracy.lines] == ["-", "--", "-"]
    np.testing.assert_allclose(accuracy.lines[1].get_ydata(), [0.7, 0.85])
    assert accuracy.lines[0].get_color() == losses.lines[0].get_color()


def test_save_writes_a_png_of_the_figures_size_making_its_directory(tmp_path):
    path = figures.save(figures.step_loss_figure([2.3, 1.1]), tmp_path / "plots" / "loss.png")
    header = Path(path).read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    # 7 x 4 inches at 100 dpi.
    width, height = int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
    assert (width, height) == (700, 400)
