"""What tracking costs: the tracked flow's epochs against the bare library loop's, and where
the main command's wall time goes.

1. In this one process, alternately for ``--rounds`` rounds, the default configuration
   (784-100-50-10 relu, He initialisation, SGD lr 0.1, batch 32, 5 epochs, seed 42) on the
   same data is trained
   - bare: ``tfnn.fit`` with no callbacks;
   - tracked: ``train_flow`` on Prefect's ephemeral server and a local MLflow store, so the
     ``train`` task runs ``fit`` with the ``EpochLogger`` (checkpoint, metrics and uploads
     after every epoch, in a background thread).
   The first epoch traces the graphs and is left out of both. Two per-epoch times are
   compared: ``fit``'s own epoch timer (for the tracked run, the ``epoch_seconds`` metric it
   logged to MLflow), and the wall time of the whole call (``fit`` for bare, the ``train``
   task's Prefect start and end for tracked, so the callbacks and the final flush of the
   tracking queue count) less the first epoch. Target: tracked / bare <= 1.10.
2. The main job, ``tfnn train --data-dir DIR`` (run as ``python -m cli``, the same
   ``main``), in a fresh directory with nothing configured: its wall time, split by the
   flow's and tasks' start and end times in the Prefect database it leaves behind.

Run from the repository root:

    PYTHONPATH=. .venv/bin/python benchmarks/bench_tracking_overhead.py [--rounds 2]
"""

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

# Before prefect is imported: a private Prefect home (and so a fresh ephemeral server),
# as the command gets with nothing configured.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="bench-prefect-")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.pop("PREFECT_API_URL", None)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import mlflow
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from flows.train import train_flow
from tasks.config import RunOptions, TrainConfig
from tasks.data import load_data, prepare_data
from tasks.model import fit_arguments, network_for
from tfnn.training import fit

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data" / "mnist"
TARGET = 1.10


def per_epoch(total_seconds: float, epoch_seconds: list[float]) -> float:
    """Mean seconds of the epochs after the first (which traces the graphs)."""
    return (total_seconds - epoch_seconds[0]) / (len(epoch_seconds) - 1)


def bare_run(config: TrainConfig, data) -> tuple[float, float]:
    """(fit's per-epoch time, wall per-epoch time) of tfnn.fit with no callbacks."""
    network = network_for(config, data.input_dim, data.num_classes)
    started = time.perf_counter()
    history = fit(
        network,
        train=(data.x_train, data.y_train),
        evaluate={"test": (data.x_test, data.y_test)},
        **fit_arguments(config, validation=False),
    )
    wall = time.perf_counter() - started
    seconds = history.epoch_seconds
    return statistics.mean(seconds[1:]), per_epoch(wall, seconds)


def tracked_run(config: TrainConfig, directory: Path) -> tuple[float, float]:
    """(logged epoch_seconds per epoch, train task's wall per epoch) of the tracked flow."""
    state = train_flow(
        config, RunOptions(experiment="bench", output_dir=str(directory)), return_state=True
    )
    result = state.result()
    logged = [
        m.value for m in MlflowClient().get_metric_history(result.run_id, "train/epoch_seconds")
    ]
    with get_client(sync_client=True) as prefect:
        task_runs = prefect.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            )
        )
    (train,) = [run for run in task_runs if run.name.rsplit("-", 1)[0] == "train"]
    wall = (train.end_time - train.start_time).total_seconds()
    return statistics.mean(logged[1:]), per_epoch(wall, logged)


def _utc(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp).replace(tzinfo=UTC).timestamp()


def command_phases(data_dir: Path) -> dict[str, float]:
    """Seconds of each phase of ``tfnn train --data-dir data_dir`` run in a fresh directory."""
    directory = Path(tempfile.mkdtemp(prefix="bench-command-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env |= {"PYTHONPATH": str(REPO), "PREFECT_HOME": str(directory / "prefect-home")}
    command = [sys.executable, "-m", "cli", "train", "--data-dir", str(data_dir)]
    started = time.time()
    subprocess.run(command, cwd=directory, env=env, check=True, capture_output=True, timeout=900)
    ended = time.time()
    # The ephemeral server is gone; its SQLite database keeps every run's start and end (UTC).
    database = sqlite3.connect(directory / "prefect-home" / "prefect.db")
    ((flow_start, flow_end),) = database.execute("select start_time, end_time from flow_run")
    tasks = {
        name.rsplit("-", 1)[0]: (_utc(start), _utc(end))
        for name, start, end in database.execute("select name, start_time, end_time from task_run")
    }
    flow_start, flow_end = _utc(flow_start), _utc(flow_end)
    first_task = min(start for start, _ in tasks.values())
    train_start, train_end = tasks["train"]
    return {
        "whole command": ended - started,
        "start-up: imports, ephemeral Prefect server": flow_start - started,
        "MLflow store creation and run start": first_task - flow_start,
        "load, preprocess, build, log dataset": train_start - first_task,
        "training (train task, 5 epochs)": train_end - train_start,
        "evaluate, plots, model, summaries": flow_end - train_end,
        "shut-down: server stop, exit": ended - flow_end,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--rounds", type=int, default=2, help="bare/tracked pairs to run")
    args = parser.parse_args()

    config = TrainConfig(data_source=str(args.data_dir.resolve()))
    data = prepare_data.fn(load_data.fn(config.data_source))
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")
    print(f"{len(data.x_train)} training / {len(data.x_test)} test examples; {config}")

    store = Path(tempfile.mkdtemp(prefix="bench-mlflow-"))
    os.chdir(store)
    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    bare, tracked = [], []
    for _ in range(args.rounds):
        bare.append(bare_run(config, data))
        tracked.append(tracked_run(config, store / "outputs"))
    print("\nper-epoch seconds, epochs 2-5   fit's epoch timer   whole call (wall)")
    for name, runs in (("bare tfnn.fit", bare), ("tracked train task", tracked)):
        for i, (timer, wall) in enumerate(runs, 1):
            print(f"  {name:<16} round {i}       {timer:8.3f}           {wall:8.3f}")
    for i, column in enumerate(("fit's epoch timer", "whole call (wall)")):
        bare_median = statistics.median(b[i] for b in bare)
        tracked_median = statistics.median(t[i] for t in tracked)
        ratio = tracked_median / bare_median
        verdict = "meets" if ratio <= TARGET else "misses"
        print(
            f"tracked / bare ({column}, medians): {ratio:.3f} ({verdict} <= {TARGET}); "
            f"tracking adds {1000 * (tracked_median - bare_median):.0f} ms an epoch"
        )

    print("\nthe main job: tfnn train --data-dir", args.data_dir)
    for phase, seconds in command_phases(args.data_dir).items():
        print(f"  {phase:<45} {seconds:7.1f} s")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
