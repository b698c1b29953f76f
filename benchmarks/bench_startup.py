"""How long the ``tfnn`` command takes to start, next to ``import tensorflow`` and to a bare
script doing the same training (issue 22's start-up figures).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_startup.py [--repeat 3] [--rounds 5]
        [--root DIR] [--data-dir DIR] [--no-train] [--baseline DIR]

Part one: ``--help``, ``--version`` and a refusal beside ``python -c "import tensorflow"``;
they must import none of TensorFlow, MLflow or Prefect.

Part two (needs ``--data-dir`` or ``$TFNN_DATA_DIR``): one epoch of the default configuration
by a bare script (tfnn's loader and ``tfnn.fit``) and by ``tfnn train --epochs 1`` on
embedded defaults, twice in a fresh directory and ``PREFECT_HOME``: the first run creates the
Prefect and MLflow databases, the next finds them, as a person's later runs do. With
``--baseline DIR`` another checkout's command runs alongside, under the same load. Every
command runs in a fresh interpreter, ``--rounds`` times interleaved, and each figure is the
median of its rounds, because single runs on a shared machine move by seconds.
"""

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = {
    "tfnn --help": ["--help"],
    "tfnn train --help": ["train", "--help"],
    "tfnn --version": ["--version"],
    "tfnn train --learning-rate -1": ["train", "--learning-rate", "-1"],
}
# Each command twice in one place: the first run creates the Prefect and MLflow databases
# (migrations, seconds), the next finds them, as every later run of a person's does.
RUNS = ("first run", "next run")
BARE_NAME = "bare script (tfnn.fit)"
TARGET = 2.0  # a next run's time over the bare script's (issue 22)
# The bare script: the same data, configuration and training loop, no tracking.
BARE = """
import sys, json
import tfnn
from tfnn.mnist import load_dataset
from tfnn.preprocessing import preprocess, validation_split
from tfnn.optimizers import SGD

c = json.loads(sys.argv[2])
arrays = load_dataset(sys.argv[1])
x, y = preprocess(arrays.train_images, arrays.train_labels)
x_test, y_test = preprocess(arrays.test_images, arrays.test_labels)
kept = len(validation_split(len(x), c["validation_fraction"])[0])
network = tfnn.build_mlp(
    [x.shape[1], *c["hidden_sizes"], y.shape[1]], hidden_activation=c["activation"],
    output_activation=c["output_activation"], loss=c["loss"], initializer=c["initializer"],
    seed=c["seed"],
)
tfnn.fit(
    network, SGD(c["learning_rate"]), (x[:kept], y[:kept]),
    {"val": (x[kept:], y[kept:]), "test": (x_test, y_test)}, epochs=1,
    batch_size=c["batch_size"], seed=c["seed"],
)
"""


def seconds(argv: list[str], env: dict[str, str], cwd: Path, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, cwd=cwd, env=env, capture_output=True, timeout=300)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_seconds() -> float:
    """User and system CPU time of this script's ended children (and theirs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_run(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Wall seconds of one run that must succeed, and the CPU seconds it and its children
    (such as its Prefect server) used."""
    cpu = cpu_seconds()
    start = time.time()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, timeout=600)
    end = time.time()
    if done.returncode != 0:
        sys.exit(f"{argv[2:]} failed ({done.returncode}):\n{done.stderr.decode()[-3000:]}")
    return end - start, cpu_seconds() - cpu


def median_run(runs: list[tuple[float, float]]) -> tuple[float, float]:
    """The run of median wall time."""
    return sorted(runs, key=lambda run: run[0])[len(runs) // 2]


def bench_training(
    root: Path,
    baseline: Path | None,
    data_dir: Path,
    env: dict[str, str],
    scratch: Path,
    rounds: int,
) -> dict[str, list[tuple[float, float]]]:
    """Every round's (wall, CPU) seconds of the bare script and of each checkout's command."""
    sys.path.insert(0, str(root))
    from tasks.config import TrainConfig  # pydantic only: no TensorFlow here

    config = TrainConfig().model_dump(mode="json")
    command = [sys.executable, "-m", "cli", "train", "--data-dir", str(data_dir)]
    command += ["--epochs", "1"]
    env = {k: v for k, v in env.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    # The checkouts whose command is timed, each in its own directory and Prefect home.
    checkouts = {"": root} | ({", baseline": baseline} if baseline else {})
    results: dict[str, list[tuple[float, float]]] = {BARE_NAME: []}
    bare = [sys.executable, "-c", BARE, str(data_dir), json.dumps(config)]
    # Rounds interleave the commands, so that a slow minute of this shared machine slows
    # all of them.
    for round_ in range(rounds):
        (scratch / f"bare-{round_}").mkdir()
        results[BARE_NAME].append(timed_run(bare, env, scratch / f"bare-{round_}"))
        for suffix, checkout in checkouts.items():
            # The local SQLite store in a fresh working directory, a fresh Prefect home;
            # then again in the same place, as a person's next run there.
            work = scratch / f"embedded-{round_}{suffix.removeprefix(', ')}"
            work.mkdir()
            embedded = {**env, "PYTHONPATH": str(checkout), "PREFECT_HOME": str(work / "ph")}
            for which in RUNS:
                label = f"tfnn train, embedded ({which}{suffix})"
                results.setdefault(label, []).append(timed_run(command, embedded, work))
    return results


def report(results: dict[str, list[tuple[float, float]]], data_dir: Path, rounds: int) -> None:
    medians = {name: median_run(runs) for name, runs in results.items()}
    reference = medians[BARE_NAME][0]
    print(f"\none epoch of the default configuration on {data_dir}, median of {rounds} rounds")
    # CPU seconds vary less with the machine's load than wall seconds do.
    print(f"{'command':<46}{'seconds':>9}{'/ bare':>9}{'target':>9}{'CPU s':>9}  every round")
    for name, (took, cpu) in medians.items():
        target = f"{TARGET:.1f}" if "(next" in name else ""
        each = " ".join(f"{run[0]:.1f}" for run in results[name])
        print(f"{name:<46}{took:>9.2f}{took / reference:>9.2f}{target:>9}{cpu:>9.1f}  {each}")
    print(f"load at the end: {os.getloadavg()[0]:.2f} (1 min)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each quick command")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("TFNN_DATA_DIR"))
    parser.add_argument("--no-train", action="store_true", help="only the quick commands")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the training runs")
    parser.add_argument(
        "--baseline", type=Path, help="another checkout whose train command is timed alongside"
    )
    args = parser.parse_args()
    root = args.root.resolve()
    with tempfile.TemporaryDirectory() as scratch:
        # A private Prefect home: a command that starts a server must not touch the user's.
        env = {**os.environ, "PYTHONPATH": str(root), "PREFECT_HOME": f"{scratch}/prefect"}
        env["TF_CPP_MIN_LOG_LEVEL"] = "2"
        print(f"checkout: {root}  load: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs")
        importing = [sys.executable, "-c", "import tensorflow"]
        reference = seconds(importing, env, root, args.repeat)
        print(f"(median of {args.repeat} runs)")
        print(f"{'command':<32}{'seconds':>9}{'/ import tensorflow':>21}")
        print(f"{'python -c ' + repr('import tensorflow'):<32}{reference:>9.2f}{1:>21.2f}")
        # In the checkout: ``-m`` looks in the working directory before PYTHONPATH.
        for name, argv in COMMANDS.items():
            took = seconds([sys.executable, "-m", "cli", *argv], env, root, args.repeat)
            print(f"{name:<32}{took:>9.2f}{took / reference:>21.2f}")
        if args.no_train:
            return
        if args.data_dir is None:
            sys.exit("the training comparison needs --data-dir DIR (or $TFNN_DATA_DIR)")
        # The commands run in the scratch directory: PYTHONPATH must find the checkout.
        shutil.rmtree(f"{scratch}/prefect", ignore_errors=True)
        baseline = args.baseline.resolve() if args.baseline else None
        if baseline:
            print(f"baseline checkout: {baseline}")
        data_dir = args.data_dir.resolve()
        results = bench_training(root, baseline, data_dir, env, Path(scratch), args.rounds)
        report(results, data_dir, args.rounds)


if __name__ == "__main__":
    main()
