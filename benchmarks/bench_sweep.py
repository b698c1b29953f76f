"""Sweep wall time: 8 small configurations one after another against 2 local Dask workers.

Runs the same sweep flow three times in one process, on the shared real MNIST data (10,000
training and 10,000 test digits), with a temporary Prefect server and a fresh SQLite MLflow
store:

1. sequential: Prefect's thread pool with one thread, so configurations train one after
   another in this process (TensorFlow with its default threads, as ``tfnn train`` runs);
2. dask-workers: ``--dask-workers 2``, a local Dask cluster of two worker processes with one
   thread each, started and stopped inside the timed call, so its start-up (two fresh
   processes that import TensorFlow, MLflow and Prefect) counts against it;
3. dask-address: the same two-worker cluster started, and its imports done, before the timer
   (``--dask-address``, a cluster that is already running).

The 8 configurations are small networks: activation x hidden sizes x learning rate below.
It prints the three wall times, their ratios against the 0.65 target, the machine's core
count and the CPU seconds the two running workers spent on the sweep, which bound what they
can gain: on two cores their sweep takes at least half those seconds.

Run from the repository root:

    PYTHONPATH=. .venv/bin/python benchmarks/bench_sweep.py [--epochs 10] [--batch-size 32]
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
    "hidden_sizes": [[64], [100, 50]],
    "learning_rate": [0.1, 0.05],
}
TARGET = 0.65  # dask time over sequential time, at most


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="epochs per configuration")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per SGD step")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    return parser.parse_args(argv)


def import_pipeline() -> None:
    """Run on each worker of the pre-started cluster: what a first task would import."""
    import flows.sweep  # noqa: F401


def timed_sweep(spec, runner, experiment: str) -> tuple[float, list[dict]]:
    """Seconds the sweep flow took with ``runner``, and its ranking."""
    from flows.sweep import sweep_flow
    from tasks.config import RunOptions

    started = time.perf_counter()
    result = sweep_flow.with_options(task_runner=runner)(
        spec, RunOptions(experiment=experiment, register_model=False)
    )
    return time.perf_counter() - started, result.ranking


def process_cpu_seconds() -> float:
    """CPU seconds this process has used, all threads; run on each worker."""
    return time.process_time()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="tfnn-bench-sweep-"))
    os.chdir(workdir)
    os.environ["PREFECT_HOME"] = str(workdir / "prefect")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from distributed import Client, LocalCluster
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
    count = len(spec.configurations())
    print(f"{count} configurations, {args.epochs} epochs, batch {args.batch_size}: {args.data_dir}")
    MlflowClient().search_experiments()  # creates the store's tables outside the timings
    with prefect_test_harness(server_startup_timeout=300):
        sequential, ranking = timed_sweep(spec, ThreadPoolTaskRunner(max_workers=1), "bench-seq")
        print(f"sequential: {sequential:.1f} s", flush=True)
        started, _ = timed_sweep(spec, sweep_task_runner(dask_workers=2), "bench-dask-workers")
        print(f"dask-workers 2 (start-up included): {started:.1f} s", flush=True)
        with (
            LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster,
            Client(cluster) as client,
        ):
            client.run(import_pipeline)
            before = sum(client.run(process_cpu_seconds).values())
            running, _ = timed_sweep(
                spec, sweep_task_runner(dask_address=cluster.scheduler_address), "bench-address"
            )
            worker_cpu = sum(client.run(process_cpu_seconds).values()) - before
        print(f"dask-address (2 workers already running): {running:.1f} s", flush=True)

    print(f"\n{'configuration':<56} {'test accuracy':>13}")
    for row in ranking:
        print(f"{row['configuration']:<56} {row['test_accuracy']:>13.4f}")
    print(f"\ncores: {os.cpu_count()}")
    print(
        f"the dask-address workers used {worker_cpu:.1f} CPU s ({worker_cpu / count:.2f} a "
        f"configuration): two cores need at least {worker_cpu / 2:.1f} s for that, "
        f"{worker_cpu / 2 / sequential:.3f} of the sequential time"
    )
    for label, seconds in (("dask-workers 2", started), ("dask-address", running)):
        ratio = seconds / sequential
        verdict = "meets" if ratio <= TARGET else "misses"
        print(
            f"{label:<15} {seconds:6.1f} s / sequential {sequential:.1f} s = {ratio:.3f} "
            f"({verdict} the target of at most {TARGET})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
