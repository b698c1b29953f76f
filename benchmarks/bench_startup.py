"""How long the ``tfnn`` command takes to start, next to ``import tensorflow`` and to a bare
script doing the same training.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_startup.py [--repeat 3] [--rounds 5]
        [--root DIR] [--data-dir DIR] [--no-train] [--baseline DIR]

Part one: ``--help``, ``--version`` and a refusal (the median of ``--repeat`` runs) beside
``python -c "import tensorflow"``; they import none of TensorFlow, MLflow or Prefect.

Part two (needs an IDX directory, ``--data-dir`` or ``$TFNN_DATA_DIR``): one epoch of the
default configuration, side by side in one run,

- a bare script: imports tfnn, loads the IDX directory with tfnn's loader, ``tfnn.fit``;
- ``tfnn train --epochs 1`` on embedded defaults (a fresh working directory, its own
  ``PREFECT_HOME``, the local MLflow store, the command's own Prefect server);
- the same against a ``prefect server start`` and an ``mlflow server`` this script starts
  on loopback ports (and stops at the end), through ``PREFECT_API_URL`` and
  ``MLFLOW_TRACKING_URI``;
- each command twice in the same place: its first run there creates the Prefect and MLflow
  databases (or, against servers, the experiment and registered model); the next run, like
  every later run of a person's, finds them;
- with ``--baseline DIR``, both commands of that checkout as well (before and after a
  change, measured under the same load);
- all of it ``--rounds`` times, interleaved, and each figure the median of its rounds: one
  run of a command on this kind of shared machine moves by seconds.

Target (issue 22): a next run at most 2.0x the bare script. Every command runs in a fresh
interpreter (``python -m cli`` of the
checkout at ``--root``, default this one), so each pays its imports.
"""

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve(stack: ExitStack, argv: list[str], env: dict[str, str], url: str, log: Path) -> None:
    """Start a server in its own session, stopped (its whole group) when ``stack`` closes,
    and wait until ``url`` answers."""
    with open(log, "wb") as out:
        process = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def stop() -> None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    stack.callback(stop)
    deadline = time.monotonic() + 180
    while True:
        if process.poll() is not None:
            sys.exit(f"{argv[1:4]} exited:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"{url} did not answer within 180 s")
        time.sleep(0.3)


def start_servers(stack: ExitStack, directory: Path, env: dict[str, str]) -> dict[str, str]:
    """A Prefect and an MLflow server on loopback ports; the environment that uses them."""
    prefect_port, mlflow_port = free_port(), free_port()
    prefect_url = f"http://127.0.0.1:{prefect_port}/api"
    mlflow_url = f"http://127.0.0.1:{mlflow_port}"
    bin_dir = Path(sys.executable).parent
    prefect_env = {**env, "PREFECT_HOME": str(directory / "prefect-server")}
    prefect_env.pop("PREFECT_API_URL", None)
    prefect = [str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1"]
    serve(
        stack,
        [*prefect, "--port", str(prefect_port)],
        prefect_env,
        prefect_url + "/health",
        directory / "prefect-server.log",
    )
    mlflow = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1"]
    mlflow += ["--port", str(mlflow_port), "--workers", "1", "--serve-artifacts"]
    mlflow += ["--backend-store-uri", f"sqlite:///{directory / 'mlflow-server.db'}"]
    mlflow += ["--artifacts-destination", str(directory / "mlflow-artifacts")]
    serve(
        stack,
        mlflow,
        {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        mlflow_url + "/health",
        directory / "mlflow-server.log",
    )
    return {**env, "PREFECT_API_URL": prefect_url, "MLFLOW_TRACKING_URI": mlflow_url}


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
) -> None:
    sys.path.insert(0, str(root))
    from tasks.config import TrainConfig  # pydantic only: no TensorFlow here

    config = TrainConfig().model_dump(mode="json")
    command = [sys.executable, "-m", "cli", "train", "--data-dir", str(data_dir)]
    command += ["--epochs", "1"]
    env = {k: v for k, v in env.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    # The checkouts whose command is timed, each in its own directory and Prefect home.
    checkouts = {"": root} | ({", baseline": baseline} if baseline else {})
    results: dict[str, list[tuple[float, float]]] = {"bare script (tfnn.fit)": []}
    bare = [sys.executable, "-c", BARE, str(data_dir), json.dumps(config)]
    with ExitStack() as stack:
        (scratch / "servers").mkdir()
        served = start_servers(stack, scratch / "servers", env)
        # Rounds interleave the commands, so that a slow minute of this shared machine
        # slows all of them; each figure is the median of its rounds.
        for round_ in range(rounds):
            (scratch / f"bare-{round_}").mkdir()
            results["bare script (tfnn.fit)"].append(
                timed_run(bare, env, scratch / f"bare-{round_}")
            )
            for suffix, checkout in checkouts.items():
                tag = f"{round_}{suffix.removeprefix(', ')}"
                # Embedded: the local SQLite store in a fresh working directory, a fresh
                # Prefect home; then again in the same place, as a person's next run there.
                work = scratch / f"embedded-{tag}"
                work.mkdir()
                embedded = {**env, "PYTHONPATH": str(checkout), "PREFECT_HOME": str(work / "ph")}
                # Servers: this round's own experiment and model, so its first run creates them.
                names = ["--experiment", f"bench-{tag}", "--model-name", f"bench-{tag}"]
                client = {**served, "PYTHONPATH": str(checkout)}
                client["PREFECT_HOME"] = str(work / "prefect-client")
                for mode, argv, mode_env in (
                    ("embedded", command, embedded),
                    ("servers", command + names, client),
                ):
                    for which in RUNS:
                        label = f"tfnn train, {mode} ({which}{suffix})"
                        results.setdefault(label, []).append(timed_run(argv, mode_env, work))
    medians = {name: median_run(runs) for name, runs in results.items()}
    reference = medians["bare script (tfnn.fit)"][0]
    targets = {"embedded": 2.0, "servers": 2.0}
    print(f"\none epoch of the default configuration on {data_dir}, median of {rounds} rounds")
    if baseline:
        print(f"baseline checkout: {baseline}")
    # CPU seconds vary less with the machine's load than wall seconds do.
    print(f"{'command':<46}{'seconds':>9}{'/ bare':>9}{'target':>9}{'CPU s':>9}  every round")
    for name, (took, cpu) in medians.items():
        mode = next((mode for mode in targets if f", {mode} (next" in name), None)
        target = f"{targets[mode]:.1f}" if mode else ""
        each = " ".join(f"{run[0]:.1f}" for run in results[name])
        print(f"{name:<46}{took:>9.2f}{took / reference:>9.2f}{target:>9}{cpu:>9.1f}  {each}")
    print(f"load at the end: {os.getloadavg()[0]:.2f} (1 min)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
        bench_training(root, baseline, args.data_dir.resolve(), env, Path(scratch), args.rounds)


if __name__ == "__main__":
    main()
