"""Training throughput on MNIST: tfnn.fit against the notebook's eager loop and Keras.

Trains the notebook's network (784-100-50-10, relu hidden layers, softmax output,
cross-entropy, SGD with learning rate 0.1, batches of 32) on the real MNIST data three
ways in one process and prints examples per second for each:

1. tfnn: ``build_mlp`` + ``fit``, whose epoch runs as one ``tf.function`` loop;
2. the notebook: its ``SimpleLayer``, ``SimpleSequenceNetwork`` and ``fit`` over
   ``tf.data``, copied below and run eagerly as written;
3. Keras: the same architecture through ``keras.Sequential`` and ``model.fit`` with
   default settings.

What is timed is the same for all three: an epoch is every training step over the training
set plus the pass over the test set that follows it, and examples/s is the number of
training examples divided by the epoch's seconds (the shared data holds 10,000 of each).
tfnn and Keras trace their graphs during their first epoch, so that epoch is reported as
warm-up and left out; their examples/s comes from the mean of the later epochs. The
notebook loop traces nothing, so its single timed epoch counts as it is.

Run from the repository root:

    PYTHONPATH=. .venv/bin/python benchmarks/bench_training.py [--epochs 3] [--json out.json]
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import tensorflow as tf

import tfnn
from tfnn.mnist import load_mnist_idx
from tfnn.preprocessing import preprocess

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO / ".." / "shared" / "data" / "mnist"
SIZES = [784, 100, 50, 10]
LEARNING_RATE = 0.1
BATCH_SIZE = 32
# Targets for a 2-core CPU: tfnn's throughput over each other method's.
TARGETS = {"keras": 2.0, "notebook": 10.0}


# --- The notebook, as written --------------------------------------------------------------
# Copied from the notebook (shared/seed/000_163b018358d7d46d.txt); only whitespace and the
# comments (translated) differ. Note its softmax normalises over the whole batch, not per
# row, and everything runs eagerly, op by op, from Python.


def relu(x: tf.Tensor):
    return tf.maximum(0.0, x)


def softmax(x: tf.Tensor):
    e = tf.exp(x - tf.reduce_max(x))
    s = tf.reduce_sum(e)
    return e / s


def cross_entropy_error(x: tf.Tensor, y: tf.Tensor):
    delta = tf.constant(1e-7)  # noqa: F841 (unused in the notebook too)
    if tf.rank(x) == 1:
        x = tf.reshape(x, (1, tf.size(x)))
        y = tf.reshape(y, (1, tf.size(y)))
    batch_size = x.shape[0]
    return -tf.reduce_sum(y * tf.math.log(x + 1e-7)) / batch_size


class SimpleLayer:
    def __init__(self, input_dim, units, activation):
        # Weights from a normal distribution, as a Variable so they can be updated.
        self.w = tf.Variable(tf.random.normal([input_dim, units]) * 0.01, name="weight")
        # Bias starts at 0.
        self.b = tf.Variable(tf.zeros([units]), name="bais")
        self.activation = activation

    @property
    def weights(self):
        return [self.w, self.b]

    def forward(self, x):
        y = x @ self.w + self.b
        return self.activation(y)

    def __call__(self, x):
        return self.forward(x)


class SimpleSequenceNetwork:
    def __init__(self, layers, loss_function, lr=0.01):
        self.layers = layers
        self.loss_function = loss_function
        self.lr = lr

    def predict(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def loss(self, x, target):
        y = self.predict(x)
        return self.loss_function(y, target)

    def accuracy(self, x, target):
        y = self.predict(x)
        y = tf.argmax(y, axis=1)
        target = tf.argmax(target, axis=1)

        accuracy = tf.math.count_nonzero(y == target) / x.shape[0]
        return accuracy

    @property
    def all_weights(self):
        return tf.nest.flatten([layer.weights for layer in self.layers])

    # The gradient of the loss with respect to every weight.
    def gradient(self, x, target):
        with tf.GradientTape() as tape:
            tape.watch(x)
            z = self.loss(x, target)
        return tape.gradient(z, self.all_weights)

    # Plain gradient descent (SGD) on every weight.
    def update_variables_by_sdg(self, grads):
        for grad, val in zip(grads, self.all_weights, strict=False):
            val.assign_sub(self.lr * grad)

    # Compute the gradients and update the weights.
    def training(self, x, target):
        grads = self.gradient(x, target)
        self.update_variables_by_sdg(grads)


def notebook_fit(
    network, train_ds: tf.data.Dataset, test_ds: tf.data.Dataset, epochs=20, batch_size=32
):
    history_train_loss, history_train_accuracy, history_test_accuracy = [], [], []
    for _epoch in range(1, epochs + 1):
        train_loss, train_accuracy, test_accuracy = [], [], []
        for X_batch, y_batch in train_ds.shuffle(1000).batch(batch_size).prefetch(1):
            network.training(X_batch, y_batch)
            train_loss.append(network.loss(X_batch, y_batch))
            train_accuracy.append(network.accuracy(X_batch, y_batch))
        for X_batch, y_batch in test_ds.shuffle(1000).batch(batch_size).prefetch(1):
            test_accuracy.append(network.accuracy(X_batch, y_batch))

        print(
            "train acc, test acc, train loss | {:.4}, {:.4}, {:.4}".format(  # noqa: UP032
                tf.reduce_mean(train_accuracy).numpy(),
                tf.reduce_mean(test_accuracy).numpy(),
                tf.reduce_mean(train_loss).numpy(),
            )
        )
        history_train_loss.extend(train_loss)
        history_train_accuracy.extend(train_accuracy)
        history_test_accuracy.extend(test_accuracy)
    return {
        "train_loss": np.array(history_train_loss),
        "train_accuracy": np.array(history_train_accuracy),
        "test_accuracy": np.array(history_test_accuracy),
    }


# --- The three measurements ----------------------------------------------------------------


def summarise(
    name: str,
    epoch_seconds: list[float],
    warmup_epochs: int,
    num_train: int,
    test_accuracy: float,
    **extra,
) -> dict:
    """Examples/s from the mean of the epochs after the first ``warmup_epochs``."""
    timed = epoch_seconds[warmup_epochs:]
    mean = statistics.fmean(timed)
    return {
        "method": name,
        "examples_per_second": num_train / mean,
        "epoch_seconds_mean": mean,
        "epoch_seconds": epoch_seconds,
        "warmup_epochs": warmup_epochs,
        "timed_epochs": len(timed),
        "test_accuracy": test_accuracy,
        **extra,
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
    return summarise("tfnn.fit", history.epoch_seconds, 1, len(train[0]), history.test_accuracy[-1])


def bench_keras(train, test, epochs: int, seed: int) -> dict:
    import keras  # only the benchmark uses Keras; tfnn never imports it

    class EpochTimer(keras.callbacks.Callback):
        """Seconds per epoch; Keras ends an epoch after its validation pass, as tfnn does."""

        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.started)

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
    timer = EpochTimer()
    history = model.fit(
        *train,
        batch_size=BATCH_SIZE,
        epochs=epochs,
        validation_data=test,
        shuffle=True,
        verbose=0,
        callbacks=[timer],
    )
    return summarise(
        "keras model.fit",
        timer.seconds,
        1,
        len(train[0]),
        history.history["val_accuracy"][-1],
        keras_version=keras.__version__,
        jit_compile=bool(model.jit_compile),
        steps_per_execution=model.steps_per_execution,
    )


def bench_notebook(train, test, max_steps: int | None) -> dict:
    """One epoch of the notebook's fit (optionally only its first ``max_steps`` batches)."""
    np.random.seed(42)
    tf.random.set_seed(42)
    # The notebook maps and caches tfds' uint8 images; these arrays are already preprocessed.
    train_ds = tf.data.Dataset.from_tensor_slices(train)
    test_ds = tf.data.Dataset.from_tensor_slices(test)
    num_train = len(train[0])
    if max_steps is not None:
        num_train = min(num_train, max_steps * BATCH_SIZE)
        train_ds = train_ds.take(num_train)
    network = SimpleSequenceNetwork(
        [SimpleLayer(784, 100, relu), SimpleLayer(100, 50, relu), SimpleLayer(50, 10, softmax)],
        cross_entropy_error,
        lr=LEARNING_RATE,
    )
    print("  notebook fit: ", end="", flush=True)
    started = time.perf_counter()
    history = notebook_fit(network, train_ds, test_ds, epochs=1, batch_size=BATCH_SIZE)
    seconds = time.perf_counter() - started
    return summarise(
        "notebook eager loop",
        [seconds],
        0,
        num_train,
        float(history["test_accuracy"].mean()),
        train_examples=num_train,
    )


# --- Report ---------------------------------------------------------------------------------


def environment() -> dict:
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        # 0 means TensorFlow chooses (by default, from the number of cores).
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "devices": [d.name for d in tf.config.list_physical_devices()],
        # Other processes on the machine make the figures noisy; this says how busy it was.
        "load_average_1min": os.getloadavg()[0],
    }


def print_report(env: dict, results: list[dict], ratios: dict) -> None:
    print(
        f"\nTensorFlow {env['tensorflow']}, Python {env['python']}, nproc {env['nproc']} "
        f"(os.cpu_count {env['cpu_count']}), inter-op threads {env['inter_op_threads']}, "
        f"intra-op threads {env['intra_op_threads']} (0 = TF default)"
    )
    print(f"{env['date']}, load average before the runs {env['load_average_1min']:.2f}")
    for r in results:
        if "jit_compile" in r:
            print(
                f"Keras {r['keras_version']}: jit_compile={r['jit_compile']} (resolved from "
                f"'auto'), steps_per_execution={r['steps_per_execution']}"
            )
    print(
        "Epoch = training over the train set + the test-set pass; examples/s = train "
        "examples / epoch s.\n"
    )
    header = f"{'method':<22}{'examples/s':>12}{'epoch s':>10}{'warm-up s':>11}{'test acc':>10}"
    print(header)
    print("-" * len(header))
    for r in results:
        warmup = r["epoch_seconds"][0] if r["warmup_epochs"] else float("nan")
        warmup_text = "-" if np.isnan(warmup) else f"{warmup:.3f}"
        print(
            f"{r['method']:<22}{r['examples_per_second']:>12,.0f}"
            f"{r['epoch_seconds_mean']:>10.3f}{warmup_text:>11}{r['test_accuracy']:>10.4f}"
        )
    print()
    for other, ratio in ratios.items():
        target = TARGETS[other]
        verdict = "PASS" if ratio >= target else "FAIL"
        print(f"tfnn / {other:<9}{ratio:>7.2f}x   (target >= {target:g}x)  {verdict}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--epochs",
        type=int,
        default=3,
        help="epochs for tfnn and Keras; the first is warm-up (default 3)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="directory with the four MNIST IDX files (default %(default)s)",
    )
    parser.add_argument(
        "--notebook-steps",
        type=int,
        default=None,
        help="time only the first N batches of the notebook's epoch (default: the whole epoch)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
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

    results = []
    for label, run in (
        ("tfnn", lambda: bench_tfnn(train, test, args.epochs, args.seed)),
        ("keras", lambda: bench_keras(train, test, args.epochs, args.seed)),
        ("notebook", lambda: bench_notebook(train, test, args.notebook_steps)),
    ):
        print(f"running {label} ...", flush=True)
        results.append(run())
    tfnn_rate = results[0]["examples_per_second"]
    ratios = {
        "keras": tfnn_rate / results[1]["examples_per_second"],
        "notebook": tfnn_rate / results[2]["examples_per_second"],
    }
    print_report(env, results, ratios)
    if args.json:
        report = {
            "environment": env,
            "settings": {
                "sizes": SIZES,
                "learning_rate": LEARNING_RATE,
                "batch_size": BATCH_SIZE,
                "epochs": args.epochs,
                "seed": args.seed,
            },
            "results": results,
            "ratios": {f"tfnn_over_{k}": v for k, v in ratios.items()},
            "targets": {f"tfnn_over_{k}": v for k, v in TARGETS.items()},
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
