"""What holding out a validation split costs and buys, with the default configuration
(784-100-50-10 relu, He initialisation, SGD lr 0.1, batch 32, 5 epochs) on the shared MNIST.

1. Accuracy: for each seed, the test accuracy of the weights a run keeps, trained with
   ``validation_fraction`` 0.1 (the last 1,000 of the 10,000 training digits held out;
   ``restore_best`` keeps the epoch of lowest val_loss) and with 0 (all 10,000 digits, the
   last epoch's weights, as the notebook). Mean and sample sd over the seeds, side by side.
2. Cost: the validation pass (one compiled evaluation of the held-out digits, timed warm,
   median of 20) as a share of the mean epoch time of the 0.1 runs (epochs 2-5: the first
   traces the graphs). Target: <= 5%.

Run from the repository root:

    PYTHONPATH=. .venv/bin/python benchmarks/bench_validation.py [--seeds 10] [--data-dir DIR]
"""

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from tasks.config import TrainConfig
from tfnn.mnist import load_mnist_idx
from tfnn.network import build_mlp
from tfnn.optimizers import SGD
from tfnn.preprocessing import preprocess, validation_split
from tfnn.training import EarlyStopping, Trainer, fit

ROOT = Path(__file__).resolve().parents[1]


def train_once(config: TrainConfig, arrays, fraction: float) -> tuple[float, list[float], Trainer]:
    """``(test accuracy of the kept weights, epoch seconds, a compiled evaluation of the
    trained network)`` of one run."""
    x, y = preprocess(arrays.train_images, arrays.train_labels)
    test = preprocess(arrays.test_images, arrays.test_labels)
    kept = len(validation_split(len(x), fraction)[0])
    network = build_mlp(
        config.layer_sizes(784, 10), initializer=config.initializer, seed=config.seed
    )
    optimizer = SGD(config.learning_rate)
    history = fit(
        network,
        optimizer,
        (x[:kept], y[:kept]),
        ({"val": (x[kept:], y[kept:])} if fraction else {}) | {"test": test},
        epochs=config.epochs,
        batch_size=config.batch_size,
        seed=config.seed,
        callbacks=[EarlyStopping(0, restore_best=True)] if fraction else [],
    )
    # fit's own evaluation, compiled afresh: the timing below is of warm calls only.
    trainer = Trainer(network, optimizer)
    trainer.evaluate(x[kept:], y[kept:])
    return float(network.accuracy(*test)), history.epoch_seconds, trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 (default: 10)")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    args = parser.parse_args()
    arrays = load_mnist_idx(args.data_dir)
    accuracy = {0.1: [], 0.0: []}
    epoch_seconds, validation_seconds = [], []
    for seed in range(args.seeds):
        config = TrainConfig(seed=seed, data_source=args.data_dir)
        for fraction in accuracy:
            test_accuracy, seconds, trainer = train_once(config, arrays, fraction)
            accuracy[fraction].append(test_accuracy)
            if fraction:
                epoch_seconds += seconds[1:]
                x, y = preprocess(arrays.train_images[-1000:], arrays.train_labels[-1000:])
                for _ in range(20):
                    started = time.perf_counter()
                    trainer.evaluate(x, y)[0].numpy()
                    validation_seconds.append(time.perf_counter() - started)
        print(
            f"seed {seed}: test accuracy {accuracy[0.1][-1]:.4f} (fraction 0.1, best epoch) "
            f"vs {accuracy[0.0][-1]:.4f} (fraction 0, last epoch)",
            flush=True,
        )
    print()
    print(f"{'validation_fraction':<22}{'mean':>8}{'sd':>8}  test accuracy over {args.seeds} seeds")
    for fraction, values in accuracy.items():
        sd = statistics.stdev(values) if len(values) > 1 else float("nan")
        print(f"{fraction:<22}{np.mean(values):>8.4f}{sd:>8.4f}")
    difference = np.subtract(accuracy[0.1], accuracy[0.0])
    print(f"{'0.1 - 0 (paired)':<22}{difference.mean():>+8.4f}")
    epoch, validation = statistics.mean(epoch_seconds), statistics.median(validation_seconds)
    print()
    print(
        f"validation pass {validation * 1000:.1f} ms vs epoch {epoch * 1000:.0f} ms: "
        f"{validation / epoch:.1%} of an epoch (target <= 5%)"
    )


if __name__ == "__main__":
    main()
