"""``tfnn predict`` loads only the tracking server's models unless told to trust a model file
(loading a pyfunc model runs its code), and writes file names a spreadsheet cannot run."""

import csv
import subprocess

import numpy as np
import pytest
from conftest import crafted_model, synthetic_digits, tfnn_command, tfnn_env
from PIL import Image

from tasks.predict import Digits, Predictions, write_predictions

# Subprocesses, real servers or signals: the slow lane.
pytestmark = pytest.mark.slow

# File names a spreadsheet would run as formulas, and how the CSV must show them (OWASP).
FORMULA_NAMES = {
    '=HYPERLINK("evil.example","click").png': '\'=HYPERLINK("evil.example","click").png',
    "+1.png": "'+1.png",
    "-1.png": "'-1.png",
    "@SUM(A1).png": "'@SUM(A1).png",
    "\ttab.png": "'\ttab.png",
    "seven.png": "seven.png",
}


def read_rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_a_model_file_loads_only_with_trust_model(tmp_path):
    model, marker = crafted_model(tmp_path / "model", tmp_path / "marker"), tmp_path / "marker"
    images, _ = synthetic_digits(len(FORMULA_NAMES), seed=3)
    for name, image in zip(FORMULA_NAMES, images):
        Image.fromarray(image, "L").save(tmp_path / name)

    def run(*flags: str) -> subprocess.CompletedProcess:
        home = tmp_path / ("trusted" if flags else "refused")
        home.mkdir()
        env = tfnn_env(
            MLFLOW_TRACKING_URI=f"sqlite:///{home / 'mlflow.db'}", PREFECT_HOME=str(home)
        )
        # Absolute paths: argparse would take "-1.png" for an option.
        paths = [str(tmp_path / name) for name in FORMULA_NAMES]
        argv = ["predict", "--model", str(model), "--images", *paths, "--output"]
        return subprocess.run(
            tfnn_command(*argv, str(home / "out.csv"), *flags),
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    refused = run()
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"--model {model}: not a models:/ or runs:/ URI" in refused.stderr
    assert "--trust-model" in refused.stderr
    assert not marker.exists() and not (tmp_path / "refused" / "out.csv").exists()

    trusted = run("--trust-model")
    assert trusted.returncode == 0, trusted.stderr[-3000:]
    assert marker.read_text() == "loaded"
    rows = read_rows(tmp_path / "trusted" / "out.csv")
    # The paths as given: absolute, so no cell starts as a formula (the quoting of those
    # that would is the next test's).
    assert [row["image"] for row in rows] == [str(tmp_path / name) for name in FORMULA_NAMES]
    assert {row["predicted"] for row in rows} == {"3"}  # the crafted model's answer
    assert all(float(row["p3"]) == 1.0 for row in rows)


def test_cells_a_spreadsheet_would_run_start_with_a_quote(tmp_path):
    names = [*FORMULA_NAMES, "=1+1", "a=b.png", "'quoted.png"]
    probabilities = np.full((len(names), 10), 0.1, np.float32)
    digits = Digits(np.zeros((len(names), 28, 28), np.uint8), names, None)
    predictions = Predictions(probabilities, probabilities.argmax(1), None)
    path = write_predictions.fn(str(tmp_path / "p.csv"), digits, predictions)
    written = [row["image"] for row in read_rows(path)]
    assert written == [*FORMULA_NAMES.values(), "'=1+1", "a=b.png", "'quoted.png"]
