"""Training throughput on MNIST: ``tfnn.fit`` against Keras ``model.fit``, side by side.

Trains the notebook's network (784-100-50-10, relu, softmax output, cross-entropy, SGD with
learning rate 0.1, batches of 32) both ways in one process, so that the machine's load
weighs on both alike, and prints examples per second and their ratio. An epoch is every
training step plus the test-set pass that follows it, for both. The first epoch traces the
graphs, so it is shown as warm-up and left out of the mean.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_training.py [--epochs 3]
"""

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import tensorflow as tf

import tfnn
from tfnn.mnist import load_mnist_idx
from tfnn.preprocessing import preprocess

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO / ".." / "shared" / "data" / "mnist"
SIZES = [784, 100, 50, 10]
LEARNING_RATE = 0.1
BATCH_SIZE = 32
TARGET = 2.0  # tfnn's throughput over Keras' on a 2-core CPU


def summarise(name: str, epoch_seconds: list[float], examples: int, accuracy: float) -> dict:
    """Examples/s from the mean of the epochs after the first (warm-up) one."""
    mean = statistics.fmean(epoch_seconds[1:])
    return {
        "method": name,
        "examples_per_second": examples / mean,
        "epoch_seconds_mean": mean,
        "warmup_seconds": epoch_seconds[0],
        "test_accuracy": accuracy,
    }


def bench_tfnn(train, test, epochs: int, seed: int) -> dict:
    network = tfnn.build_mlp(SIZES, initializer="he_normal", seed=seed)
    history = tfnn.fit(
        network,
        tfnn.SGD(LEARNING_RATE),
        train,
        {"test": test},
        epochs=epochs,
        batch_size=BATCH_SIZE,
        seed=seed,
    )
    return summarise("tfnn.fit", history.epoch_seconds, len(train[0]), history.test_accuracy[-1])


def bench_keras(train, test, epochs: int, seed: int) -> tuple[dict, str]:
    import keras  # only the benchmark uses Keras; tfnn never imports it

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((SIZES[0],)),
            keras.layers.Dense(SIZES[1], activation="relu"),
            keras.layers.Dense(SIZES[2], activation="relu"),
            keras.layers.Dense(SIZES[3], activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(LEARNING_RATE),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    # Keras ends an epoch after its validation pass, as tfnn does.
    starts, seconds = [], []
    timer = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: starts.append(time.perf_counter()),
        on_epoch_end=lambda epoch, logs: seconds.append(time.perf_counter() - starts[-1]),
    )
    history = model.fit(
        *train,
        batch_size=BATCH_SIZE,
        epochs=epochs,
        validation_data=test,
        shuffle=True,
        verbose=0,
        callbacks=[timer],
    )
    settings = (
        f"Keras {keras.__version__}: jit_compile={bool(model.jit_compile)} (resolved from "
        f"'auto'), steps_per_execution={model.steps_per_execution}"
    )
    accuracy = history.history["val_accuracy"][-1]
    return summarise("keras model.fit", seconds, len(train[0]), accuracy), settings


def environment() -> str:
    """The versions and thread settings behind the figures, and how busy the machine was."""
    threads = tf.config.threading
    return (
        f"TensorFlow {tf.__version__}, Python {platform.python_version()}, "
        f"nproc {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'}, "
        f"inter-op threads "
        f"{threads.get_inter_op_parallelism_threads()}, intra-op threads "
        f"{threads.get_intra_op_parallelism_threads()} (0 = TF default), "
        f"load average before the runs {os.getloadavg()[0]:.2f}"
    )


def print_report(env: str, settings: str, results: list[dict]) -> None:
    print(f"\n{env}\n{settings}")
    print(
        "Epoch = the training steps + the test-set pass; examples/s = train examples / epoch s.\n"
    )
    header = f"{'method':<22}{'examples/s':>12}{'epoch s':>10}{'warm-up s':>11}{'test acc':>10}"
    print(f"{header}\n{'-' * len(header)}")
    for r in results:
        print(
            f"{r['method']:<22}{r['examples_per_second']:>12,.0f}{r['epoch_seconds_mean']:>10.3f}"
            f"{r['warmup_seconds']:>11.3f}{r['test_accuracy']:>10.4f}"
        )
    ratio = results[0]["examples_per_second"] / results[1]["examples_per_second"]
    verdict = "PASS" if ratio >= TARGET else "FAIL"
    print(f"\ntfnn / keras {ratio:>7.2f}x   (target >= {TARGET:g}x)  {verdict}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="the first is warm-up (default 3)")
    parser.add_argument(
        "--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="the four MNIST IDX files"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2: the first epoch is warm-up")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mnist = load_mnist_idx(args.data_dir)
    train = preprocess(mnist.train_images, mnist.train_labels)
    test = preprocess(mnist.test_images, mnist.test_labels)
    env = environment()
    print(f"MNIST from {mnist.source}: {len(train[0])} train, {len(test[0])} test examples")
    print("running tfnn ...", flush=True)
    ours = bench_tfnn(train, test, args.epochs, args.seed)
    print("running keras ...", flush=True)
    keras_result, settings = bench_keras(train, test, args.epochs, args.seed)
    print_report(env, settings, [ours, keras_result])
    return 0


if __name__ == "__main__":
    sys.exit(main())
