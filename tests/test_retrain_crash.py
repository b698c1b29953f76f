"""A retrain killed with SIGKILL never leaves the registry half-updated: while a real
``tfnn retrain`` process runs and after it is killed, ``models:/tfnn-mnist@champion`` points
at a READY, promoted version whose served predictions are those of its saved weights."""

import os
import signal
import subprocess
import tempfile
import time

import mlflow
import numpy as np
import pytest
from conftest import tfnn_command, tfnn_env
from mlflow.tracking import MlflowClient
from prefect.settings import PREFECT_API_URL

from flows.retrain import retrain_flow
from tasks.config import RunOptions, TrainConfig
from tfnn.mnist import load_mnist_idx
from tfnn.preprocessing import preprocess
from tfnn.serialization import load_network

# Subprocesses, real servers or signals: the slow lane.
pytestmark = pytest.mark.slow

NAME = "tfnn-mnist"


def challenger_checkpointed(client, outputs):
    """The challenger is training: its first epoch's checkpoint is on disk."""
    return bool(list(outputs.glob("*/checkpoints/ckpt-1.index")))


def challenger_registered(client, outputs):
    """The challenger is version 2, not yet scored against the champion."""
    return len(client.search_model_versions(f"name = '{NAME}'")) == 2


def decision_recording(client, outputs):
    """The decision is being written on version 2; the alias moves right after."""
    versions = client.search_model_versions(f"name = '{NAME}' and version_number = 2")
    return bool(versions) and "tfnn.decision" in versions[0].tags


class ChampionWatch:
    """Checks the champion alias each time it is polled, loading the served model whenever
    the alias has moved to a version not yet checked."""

    def __init__(self, client, x_test):
        self.client = client
        self.x_test = x_test
        self.checked = set()

    def check(self) -> str:
        """Assert the invariant; returns the champion's version."""
        version = self.client.get_model_version_by_alias(NAME, "champion")
        number = str(version.version)
        assert version.status == "READY"
        # The decision is recorded before the alias moves, so a champion is always a
        # version that was scored and promoted.
        assert version.tags["tfnn.decision"] == "promoted"
        if number not in self.checked:
            served = mlflow.pyfunc.load_model(f"models:/{NAME}@champion").predict(self.x_test)
            if str(self.client.get_model_version_by_alias(NAME, "champion").version) != number:
                return self.check()  # moved while loading: check the new one
            weights = mlflow.artifacts.download_artifacts(
                f"runs:/{version.run_id}/weights", dst_path=tempfile.mkdtemp()
            )
            expected = load_network(weights).predict(self.x_test).numpy()
            np.testing.assert_allclose(np.sum(served, axis=1), 1.0, atol=1e-5)
            np.testing.assert_allclose(served, expected, atol=1e-6)
            self.checked.add(number)
        return number


@pytest.mark.parametrize(
    "kill_when", [challenger_checkpointed, challenger_registered, decision_recording]
)
def test_champion_stays_complete_when_retrain_is_killed(
    prefect_harness, mlflow_store, small_mnist_dir, large_mnist_dir, tmp_path, kill_when
):
    client = MlflowClient()
    arrays = load_mnist_idx(small_mnist_dir)
    x_test = preprocess(arrays.test_images[:20], arrays.test_labels[:20])[0]
    # A weak first champion (tiny, one epoch: about 40% on the test digits), so that the
    # challenger wins; weaker still, at chance, it would not be registered at all.
    weak = TrainConfig(hidden_sizes=(4,), epochs=1, data_source=str(small_mnist_dir))
    first = retrain_flow(weak, RunOptions(output_dir=str(tmp_path / "champion-outputs")))
    assert (first.action, first.challenger_version) == ("promoted", "1")
    watch = ChampionWatch(client, x_test)
    assert watch.check() == "1"

    outputs = tmp_path / "retrain-outputs"
    flags = ["--data-dir", str(large_mnist_dir), "--epochs", "3", "--hidden-sizes", "256"]
    flags += ["--output-dir", str(outputs), "--no-progress"]
    env = tfnn_env(PREFECT_API_URL=PREFECT_API_URL.value())
    log_path = tmp_path / "retrain.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            tfnn_command("retrain", *flags), cwd=tmp_path, env=env, stdout=log, stderr=log
        )
        give_up = time.monotonic() + 300
        next_check = 0.0
        while not kill_when(client, outputs):
            assert process.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < give_up, f"no {kill_when.__name__} within 5 minutes"
            # The moment to kill is looked for often, the champion checked every 0.2 s.
            if time.monotonic() >= next_check:
                watch.check()
                next_check = time.monotonic() + 0.2
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    champion = watch.check()

    versions = {str(v.version): v for v in client.search_model_versions(f"name = '{NAME}'")}
    assert all(v.status == "READY" for v in versions.values())
    (challenger_run,) = [
        run
        for run in client.search_runs([client.get_run(first.challenger_run_id).info.experiment_id])
        if run.info.run_id != first.challenger_run_id
    ]
    if kill_when is challenger_checkpointed:
        assert set(versions) == {"1"} and champion == "1"
        assert challenger_run.info.status == "RUNNING"
        assert not list(outputs.glob("*/checkpoints/ckpt-3.index"))  # killed mid-training
    else:
        assert versions["2"].run_id == challenger_run.info.run_id
        # Killed mid-flow the run is left RUNNING (to be seen as unfinished); it only ends
        # FINISHED once its model version is READY and tagged on the run.
        assert challenger_run.info.status in ("RUNNING", "FINISHED")
        if challenger_run.info.status == "FINISHED":
            assert challenger_run.data.tags["tfnn.registered_model"] == f"{NAME}/2"
    if kill_when is decision_recording:
        # Killed around the alias move: either side of it is complete (checked above).
        assert versions["2"].tags["tfnn.decision"] == "promoted"
