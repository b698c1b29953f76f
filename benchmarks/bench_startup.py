"""How long the ``tfnn`` command takes to answer ``--help``, ``--version`` and a refusal,
next to ``import tensorflow``.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_startup.py [--repeat 3] [--root DIR]

Every command runs in a fresh interpreter (``python -m flows.cli`` of the checkout at
``--root``, default this one), so each pays its imports; the figure is the median of
``--repeat`` runs and the ratio compares it with ``python -c "import tensorflow"``.
"""

import argparse
import os
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


def seconds(argv: list[str], env: dict[str, str], root: Path, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        # In the checkout: ``-m`` looks in the working directory before PYTHONPATH.
        subprocess.run(argv, cwd=root, env=env, capture_output=True, timeout=300)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        # A private Prefect home: a command that starts a server must not touch the user's.
        env = {**os.environ, "PYTHONPATH": str(args.root), "PREFECT_HOME": home}
        env["TF_CPP_MIN_LOG_LEVEL"] = "2"
        importing = [sys.executable, "-c", "import tensorflow"]
        reference = seconds(importing, env, args.root, args.repeat)
        print(f"checkout: {args.root}  (median of {args.repeat} runs)")
        print(f"{'command':<32}{'seconds':>9}{'/ import tensorflow':>21}")
        print(f"{'python -c ' + repr('import tensorflow'):<32}{reference:>9.2f}{1:>21.2f}")
        for name, argv in COMMANDS.items():
            took = seconds([sys.executable, "-m", "flows.cli", *argv], env, args.root, args.repeat)
            print(f"{name:<32}{took:>9.2f}{took / reference:>21.2f}")


if __name__ == "__main__":
    main()
