"""The run's figures show the numbers they are given, and the helper process that draws them
draws what this process would, names what failed, and ends with the process that started it."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from common import figure_process, figures
from common.figure_process import FigureError, FigureProcess
from tasks.plots import DIGITS_SHOWN, shown_digits

# Subprocesses, real servers or signals: the slow lane.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


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


def every_figure(directory: Path) -> list[tuple[str, str, dict]]:
    rng = np.random.default_rng(2)
    history = {"step_loss": list(np.linspace(2.3, 0.3, 50)), "val_accuracy": [0.8, 0.9]}
    history["test_accuracy"] = [0.79, 0.88]
    arguments = {
        "step_loss": {"step_loss": history["step_loss"]},
        "accuracy": {
            "train": [0.8, 0.9],
            "validation": [0.78, 0.91],
            "test": [0.79, 0.88],
            "best_epoch": 2,
        },
        "confusion": {"confusion": rng.integers(0, 90, (10, 10))},
        "digits": {
            "images": rng.integers(0, 256, (24, 28, 28), dtype=np.uint8),
            "true": rng.integers(0, 10, 24),
            "predicted": rng.integers(0, 10, 24),
        },
        "comparison": {"runs": {"relu": history, "tanh": {**history, "val_accuracy": []}}},
    }
    return [(name, str(directory / f"{name}.png"), arguments[name]) for name in figures.FIGURES]


def test_the_helper_draws_the_same_files_as_this_process(tmp_path):
    here = every_figure(tmp_path / "here")
    for name, path, arguments in here:
        figures.draw(name, path, arguments)
    there = every_figure(tmp_path / "helper")
    assert figure_process.draw(there) == [path for _, path, _ in there]
    for (_, mine, _), (_, helpers, _) in zip(here, there, strict=True):
        assert Path(helpers).read_bytes() == Path(mine).read_bytes(), helpers


def test_a_figure_that_fails_is_named_and_the_helper_goes_on(tmp_path):
    (tmp_path / "a-file").write_text("")
    good, _, confusion, *_ = every_figure(tmp_path)
    bad = ("confusion", str(tmp_path / "a-file" / "c.png"), confusion[2])
    figure_process.start()
    helper = figure_process._process.process.pid
    with pytest.raises(FigureError, match=r"^figure c\.png: (NotADirectory|FileExists)Error: "):
        figure_process.draw([good, bad])
    unknown = ("pie", str(tmp_path / "pie.png"), {})
    with pytest.raises(FigureError, match=r"^figure pie\.png: KeyError: 'pie'$"):
        figure_process.draw([unknown])
    assert figure_process.draw([good]) == [good[1]]
    assert figure_process._process.process.pid == helper


def test_a_relative_path_is_this_processs(tmp_path, monkeypatch):
    figure_process.start()  # in another working directory
    monkeypatch.chdir(tmp_path)
    name, _, arguments = every_figure(tmp_path)[0]
    assert figure_process.draw([(name, "plots/loss.png", arguments)]) == ["plots/loss.png"]
    assert (tmp_path / "plots" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class ExitOnArrival:
    """Unpickled in the helper, this ends it (code 3) in the middle of a request."""

    def __reduce__(self):
        return os._exit, (3,)


def test_a_helper_that_dies_is_named_and_started_again(tmp_path):
    call = every_figure(tmp_path)[0]
    with pytest.raises(FigureError, match=r"^the figure process failed: it exited with code 3 "):
        figure_process.draw([("step_loss", call[1], {"step_loss": ExitOnArrival()})])
    assert figure_process.draw([call]) == [call[1]]
    # One that died between requests is replaced before the next.
    helper = figure_process._process.process
    helper.kill()
    helper.wait()
    assert figure_process.draw([call]) == [call[1]]
    assert figure_process._process.process.pid != helper.pid


def test_a_request_interrupted_midway_leaves_no_answer_behind(tmp_path):
    figure_process.stop()
    first, second, *_ = every_figure(tmp_path)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)  # while the new helper imports matplotlib
        with pytest.raises(KeyboardInterrupt):
            figure_process.draw([first])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    # The next request gets its own answer, from a new helper.
    assert figure_process.draw([second]) == [second[1]]
    assert Path(second[1]).exists()


def test_a_silent_helper_is_stopped_after_its_time(tmp_path):
    helper = FigureProcess()
    try:
        # Its first answer waits for matplotlib's import: far more than 10 ms.
        with pytest.raises(FigureError, match=r"failed: TimeoutError: no answer within 0\.01 s$"):
            helper.draw(every_figure(tmp_path)[:1], timeout=0.01)
        assert helper.process.returncode == -signal.SIGKILL
    finally:
        helper.close()


def ended(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie nobody has reaped yet counts)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_the_helper_ends_with_the_process_that_started_it():
    started = (
        "import time; from common import figure_process; figure_process.start(); "
        "print(figure_process._process.process.pid, flush=True); time.sleep(600)"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", started], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    helper = int(parent.stdout.readline())
    assert not ended(helper)
    parent.kill()  # SIGKILL: no exit handler runs; the helper's stdin closes with the process
    parent.wait()
    deadline = time.monotonic() + 60
    while not ended(helper):
        assert time.monotonic() < deadline, f"helper {helper} outlived its parent by 60 s"
        time.sleep(0.1)
    parent.stdout.close()
