"""Sweep wall time: 8 configurations one after another against 2 local Dask workers.

Runs the same sweep flow twice in one process, on the shared real MNIST data (10,000
training and 10,000 test digits), with a temporary Prefect server and a fresh SQLite MLflow
store:

1. sequential: Prefect's thread pool with one thread, so configurations train one after
   another in this process (TensorFlow with its default threads);
2. dask: ``--dask-workers 2``, a local Dask cluster of two worker processes with one thread
   each, started and stopped inside the timed call, so its start-up (two fresh processes
   that import TensorFlow, MLflow and Prefect) counts against it.

The 8 configurations are the grid activation x hidden sizes x learning rate below. It prints
both wall times, their ratio against the 0.65 target and the machine's core count.

Run from the repository root:

    PYTHONPATH=. .venv/bin/python benchmarks/bench_sweep.py [--epochs 15] [--batch-size 16]
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data" / "mnist"
GRID = {
    "activation": ["relu", "tanh"],
    "hidden_sizes": [[512, 256], [1024]],
    "learning_rate": [0.1, 0.05],
}
TARGET = 0.65  # dask time over sequential time, at most


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15, help="epochs per configuration")
    parser.add_argument("--batch-size", type=int, default=16, help="examples per SGD step")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    return parser.parse_args(argv)


def timed_sweep(spec, runner, experiment: str) -> tuple[float, list[dict]]:
    """Seconds the sweep flow took with ``runner``, and its ranking."""
    from flows.sweep import sweep_flow

    started = time.perf_counter()
    result = sweep_flow.with_options(task_runner=runner)(spec, experiment, "outputs")
    return time.perf_counter() - started, result.ranking


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="tfnn-bench-sweep-"))
    os.chdir(workdir)
    os.environ["PREFECT_HOME"] = str(workdir / "prefect")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from mlflow.tracking import MlflowClient
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect.testing.utilities import prefect_test_harness

    from flows.sweep import sweep_task_runner
    from tasks.grid import SweepSpec

    spec = SweepSpec(
        base={
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "data_source": str(args.data_dir),
        },
        grid=GRID,
    )
    print(f"{len(spec.configurations())} configurations x {args.epochs} epochs on {args.data_dir}")
    MlflowClient().search_experiments()  # creates the store's tables outside the timings
    with prefect_test_harness(server_startup_timeout=300):
        sequential, ranking_a = timed_sweep(spec, ThreadPoolTaskRunner(max_workers=1), "bench-seq")
        print(f"sequential: {sequential:.1f} s", flush=True)
        dask, ranking_b = timed_sweep(spec, sweep_task_runner(dask_workers=2), "bench-dask")
        print(f"dask (2 workers, start-up included): {dask:.1f} s", flush=True)

    accuracy = {row["configuration"]: row["final_test_accuracy"] for row in ranking_a}
    print(f"\n{'configuration':<50} {'sequential':>10} {'dask':>10}")
    for row in ranking_b:
        name = row["configuration"]
        print(f"{name:<50} {accuracy[name]:>10.4f} {row['final_test_accuracy']:>10.4f}")
    ratio = dask / sequential
    verdict = "meets" if ratio <= TARGET else "misses"
    print(f"\ncores: {os.cpu_count()}")
    print(f"sequential {sequential:.1f} s, dask {dask:.1f} s")
    print(f"dask / sequential = {ratio:.3f} ({verdict} the target of at most {TARGET})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
