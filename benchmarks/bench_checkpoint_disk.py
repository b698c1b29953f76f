"""Disk a tracked run uses per epoch: the checkpoint folder and the run's artifacts after a
short and a longer run of the default network, side by side.

    python benchmarks/bench_checkpoint_disk.py [--data-dir DIR] [--epochs 2,8]

What grows is the history file (one line an epoch: its metrics and step losses); the
checkpoints (the newest ``$TFNN_KEEP_CHECKPOINTS`` and the best) and the uploaded
``checkpoints/latest`` and ``checkpoints/best`` stay the same size.
"""

import argparse
import math
import os
import tempfile
from pathlib import Path
from urllib.parse import urlparse

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import mlflow
from mlflow.tracking import MlflowClient

from tasks.config import TrainConfig
from tasks.epoch_logger import EpochLogger
from tasks.model import fit_arguments, network_for
from tfnn.mnist import load_dataset
from tfnn.preprocessing import preprocess
from tfnn.training import fit

REAL_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def folder_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())


def tracked_run(epochs: int, data, workdir: Path) -> tuple[int, int, int]:
    """(checkpoint folder bytes, history file bytes, artifact bytes) after ``epochs``."""
    config = TrainConfig()
    client = MlflowClient()
    run_id = client.create_run(client.create_experiment(f"disk-{epochs}")).info.run_id
    network = network_for(config, 784, 10)
    steps = math.ceil(len(data[0][0]) / config.batch_size)
    checkpoints = workdir / run_id / "checkpoints"
    logger = EpochLogger(run_id, network, checkpoints, steps)
    fit(
        network,
        train=data[0],
        evaluate={"test": data[1]},
        **fit_arguments(config.model_copy(update={"epochs": epochs}), validation=False)
        | {"callbacks": [logger.history, logger]},
    )
    artifacts = Path(urlparse(client.get_run(run_id).info.artifact_uri).path)
    history = (checkpoints / "history.jsonl").stat().st_size
    return folder_bytes(checkpoints), history, folder_bytes(artifacts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(REAL_MNIST))
    parser.add_argument("--epochs", default="2,8", help="two epoch counts, comma-separated")
    args = parser.parse_args()
    short, long = (int(n) for n in args.epochs.split(","))
    arrays = load_dataset(args.data_dir)
    data = (
        preprocess(arrays.train_images, arrays.train_labels),
        preprocess(arrays.test_images, arrays.test_labels),
    )
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        os.chdir(workdir)
        mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
        results = {n: tracked_run(n, data, workdir) for n in (short, long)}
    print(f"default network, {len(data[0][0])} training digits, batch 32")
    print(f"{'epochs':>8} {'checkpoints/':>14} {'of which history':>18} {'artifacts':>12}")
    for n, (local, history, uploaded) in results.items():
        print(f"{n:>8} {local:>14,} {history:>18,} {uploaded:>12,}")
    (local_a, _, up_a), (local_b, _, up_b) = results[short], results[long]
    print(f"per epoch: local {(local_b - local_a) / (long - short):,.0f} B, ", end="")
    print(f"artifacts {(up_b - up_a) / (long - short):,.0f} B")


if __name__ == "__main__":
    main()
