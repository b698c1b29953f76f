"""The README's way to look at runs: `mlflow ui` on the local store shows what a training run
logged, as the run itself recorded it, and its pages (rendered by headless Chromium) group the
metrics by split and open the plots the model card links to."""

import html
import re
import shutil
import subprocess

import pytest
from mlflow.tracking import MlflowClient
from servers import MLFLOW, free_port, start, stop, wait_for

from flows.train import train_flow
from tasks.config import RunOptions, TrainConfig
from tasks.runs import mlflow_run_url

# Debian's chromium package (.ci/run installs it); the REST checks run without it.
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# Subprocesses, real servers or signals: the slow lane.
pytestmark = pytest.mark.slow


def test_mlflow_ui_serves_a_local_training_run(
    prefect_harness, mlflow_store, small_mnist_dir, tmp_path
):
    config = TrainConfig(hidden_sizes=(8,), epochs=2, data_source=str(small_mnist_dir))
    result = train_flow(config, RunOptions(register_model=False))
    local = MlflowClient()
    logged = local.get_run(result.run_id)

    port = free_port()
    # As in the README: from the directory that holds mlflow.db.
    command = [
        MLFLOW,
        "ui",
        "--backend-store-uri",
        "sqlite:///mlflow.db",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    log = tmp_path / "mlflow-ui.log"
    ui = start(command, log)
    try:
        wait_for(f"http://127.0.0.1:{port}/health", ui, log)
        served = MlflowClient(f"http://127.0.0.1:{port}")
        seen = served.get_run(result.run_id)
        history = served.get_metric_history(result.run_id, "train/loss")
        models = served.search_logged_models(experiment_ids=[seen.info.experiment_id])
        run_page = mlflow_run_url(
            f"http://127.0.0.1:{port}", seen.info.experiment_id, seen.info.run_id
        )
        # The run's charts, and a plot as the model card links it on a server.
        tabs = ("model-metrics", "artifactPath/plots/accuracy.png") if CHROMIUM else ()
        pages = {tab: rendered_text(f"{run_page}/{tab}") for tab in tabs}
    finally:
        stop(ui)
    assert seen.info.status == "FINISHED"
    assert seen.data.params == logged.data.params
    assert seen.data.metrics["test/final_accuracy"] == result.metrics["test/final_accuracy"]
    assert [(m.step, m.value) for m in history] == list(
        enumerate(result.history.train_loss, start=1)
    )
    # The experiment's Models tab lists the run's model.
    assert [m.model_id for m in models] == [result.model_uri.removeprefix("models:/")]

    if CHROMIUM is None:
        pytest.skip(
            "no Chromium to render the pages (apt-get install chromium); the REST checks passed"
        )
    # One chart section per split, the classes in their own: "test/class (10)" charts.
    sections = pages["model-metrics"]
    for section, charts in (("train", 4), ("val", 4), ("test", 4), ("test/class", 10)):
        assert f"\n{section}\n({charts})\n" in sections, section
    assert "\ntest_accuracy_class_0\n" not in sections
    # The card's plot link opens the run's artifact view on that plot.
    shown = pages["artifactPath/plots/accuracy.png"]
    assert "\nArtifacts\n" in shown and "\nplots/accuracy.png\n" in shown


def rendered_text(url: str) -> str:
    """The text of ``url``'s page once its scripts have run, one element's text a line."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=15000"]
    dom = subprocess.run(
        [CHROMIUM, *flags, "--window-size=1400,900", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    dom = re.sub(r"<(style|script)\b.*?</\1>", "", dom, flags=re.S)
    lines = (line.strip() for line in html.unescape(re.sub(r"<[^>]+>", "\n", dom)).splitlines())
    return "\n" + "\n".join(line for line in lines if line) + "\n"
