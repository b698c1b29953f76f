"""The training loop: the notebook's ``fit``, compiled so an epoch runs as one graph.

The notebook runs every step eagerly from Python, paying interpreter and dispatch
overhead on every tiny matmul. Here the steps of an epoch (or of a chunk of it,
when a step callback wants progress) run inside one ``tf.function`` loop, and
Python only sees the per-step losses when the chunk ends.
"""

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf

from tfnn.metrics import correct_predictions
from tfnn.network import Sequential
from tfnn.optimizers import SGD

# A plain function ``(epoch, metrics, network)`` is a callback too: its ``on_epoch_end``.
EpochFunction = Callable[[int, dict[str, float], Sequential], None]


class Callback:
    """What ``fit`` calls as it trains; override what you need. Epochs count from 1, steps
    from 0 within their epoch.

    ``steps_per_call``: call ``on_steps`` after every this many steps (None: once an epoch);
    each call ends a compiled chunk of steps, so ask for no more than a progress bar needs.
    ``stop_training``: ``fit`` ends once a callback's turns true (checked after each epoch).
    """

    steps_per_call: int | None = None
    needs_validation = False

    @property
    def stop_training(self) -> bool:
        return False

    def on_steps(self, epoch: int, first_step: int, losses: np.ndarray) -> None:
        """After a chunk of steps: ``losses`` holds each step's training loss."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], network: Sequential) -> None:
        """After each epoch, with its metrics (``History.epoch_metrics``)."""

    def on_train_end(self, network: Sequential) -> None:
        """Once training ends, however many epochs it ran."""


class _EpochFunction(Callback):
    def __init__(self, function: EpochFunction):
        self.on_epoch_end = function


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the weights are those before that step."""

    def __init__(self, epoch: int, step: int, loss: float):
        super().__init__(
            f"training loss became {loss} at epoch {epoch}, step {step}: "
            "lower the learning rate or check the inputs"
        )
        self.epoch, self.step, self.loss = epoch, step, loss

    def __reduce__(self):
        # Rebuilt from its fields, so it survives pickling (Dask sends it between processes).
        return type(self), (self.epoch, self.step, self.loss)


@dataclass
class History(Callback):
    """What training measured, as plain lists (one entry per step or per epoch). ``fit``
    records into the History among its callbacks, first (a new one if none is given): pass
    the history of an interrupted run to continue it after its last epoch."""

    step_loss: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    # Empty when training had no validation set (or no test set).
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)

    @property
    def epochs(self) -> int:
        return len(self.train_loss)

    @property
    def best_epoch(self) -> int | None:
        """The first epoch (from 1) of lowest validation loss; None without validation."""
        return int(np.argmin(self.val_loss)) + 1 if self.val_loss else None

    def on_steps(self, epoch: int, first_step: int, losses: np.ndarray) -> None:
        self.step_loss.extend(losses.tolist())

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], network: Sequential) -> None:
        for name, value in metrics.items():
            getattr(self, name).append(value)

    def epoch_metrics(self, epoch: int) -> dict[str, float]:
        """The per-epoch values of epoch ``epoch`` (counted from 1) by name, those measured."""
        return {
            name: values[epoch - 1]
            for name, values in vars(self).items()
            if name != "step_loss" and values
        }

    def epoch_record(self, epoch: int, steps_per_epoch: int) -> dict[str, Any]:
        """Epoch ``epoch``'s entry of every per-epoch list by name (lists that are empty, such
        as ones a run does not measure, are left out), and under ``step_loss`` the last
        ``steps_per_epoch`` step losses: call it when epoch ``epoch`` has just ended. Costs
        one epoch's worth, however long the history."""
        record: dict[str, Any] = {"epoch": epoch}
        for name, values in vars(self).items():
            if name != "step_loss" and len(values) >= epoch:
                record[name] = values[epoch - 1]
        record["step_loss"] = self.step_loss[-steps_per_epoch:]
        return record

    @classmethod
    def from_records(cls, records: Iterable[dict[str, Any]]) -> "History":
        """The history whose epochs are ``records`` (``epoch_record``'s), in order."""
        history = cls()
        for record in records:
            for name, value in record.items():
                if name == "step_loss":
                    history.step_loss.extend(value)
                elif name != "epoch":
                    getattr(history, name).append(value)
        return history


class EarlyStopping(Callback):
    """Watches the validation loss after each epoch: remembers the best epoch (the first of
    lowest loss) and, with ``restore_best``, a copy of its weights, which it puts back in the
    network when training ends; ``stopped`` (and training with it) once ``patience`` epochs
    (0: never) passed without a new best. Needs ``fit``'s ``validation``.

    ``best_epoch``, ``best_val_loss`` and ``epochs_waited`` are the whole state a resumed
    run needs, with the best epoch's weights (``best_weights``) when it restores them.
    """

    def __init__(self, patience: int = 0, restore_best: bool = True):
        if patience < 0:
            raise ValueError(f"patience must be >= 0, got {patience}")
        self.patience, self.restore_best = patience, restore_best
        self.best_epoch, self.best_val_loss, self.epochs_waited = 0, math.inf, 0
        self.best_weights: list[np.ndarray] | None = None

    needs_validation = True

    @property
    def stopped(self) -> bool:
        return self.patience > 0 and self.epochs_waited >= self.patience

    stop_training = stopped

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], network: Sequential) -> None:
        self.update(epoch, metrics["val_loss"], network)

    def on_train_end(self, network: Sequential) -> None:
        if self.best_weights is not None:
            for variable, value in zip(network.all_weights, self.best_weights):
                variable.assign(value)

    def update(self, epoch: int, val_loss: float, network: Sequential) -> None:
        """Record epoch ``epoch``'s validation loss for ``network``'s current weights."""
        if val_loss < self.best_val_loss:
            self.best_epoch, self.best_val_loss, self.epochs_waited = epoch, val_loss, 0
            if self.restore_best:
                # A copy, not a reference: training goes on changing the variables.
                self.best_weights = [w.numpy() for w in network.all_weights]
        else:
            self.epochs_waited += 1

    def state(self) -> dict[str, float]:
        """The state to checkpoint (weights aside)."""
        return {
            "best_epoch": self.best_epoch,
            "best_val_loss": self.best_val_loss,
            "epochs_waited": self.epochs_waited,
        }

    def load_state(self, state: dict[str, float], best_weights: list[np.ndarray] | None) -> None:
        """Continue from a checkpointed ``state()`` and the best epoch's weights."""
        self.best_epoch = int(state["best_epoch"])
        self.best_val_loss = float(state["best_val_loss"])
        self.epochs_waited = int(state["epochs_waited"])
        self.best_weights = best_weights


class Trainer:
    """Compiled training and evaluation for one network and optimizer.

    Building the graphs costs a second or two, so a ``Trainer`` is made once and its
    ``run_steps`` reused for every epoch.
    """

    def __init__(self, network: Sequential, optimizer: SGD):
        self.network = network
        self.optimizer = optimizer
        self.run_steps = tf.function(self._run_steps)
        self.evaluate = tf.function(self._evaluate)

    def _run_steps(self, x, y, order, first_step, num_steps, batch_size):
        """Run ``num_steps`` SGD steps over the rows ``order[first_step * batch_size:]``.

        Returns ``(losses, correct)``: the float32 loss of every step run, and the int32
        number of correctly classified training rows. Stops early, before updating,
        at the first non-finite loss, so ``losses`` can be shorter than ``num_steps``.
        """
        network, variables = self.network, self.network.all_weights
        n = tf.shape(order)[0]
        losses = tf.TensorArray(tf.float32, size=0, dynamic_size=True)
        correct = tf.constant(0, tf.int32)
        for i in tf.range(num_steps):
            start = (first_step + i) * batch_size
            rows = order[start : tf.minimum(start + batch_size, n)]
            x_batch, y_batch = tf.gather(x, rows), tf.gather(y, rows)
            with tf.GradientTape() as tape:
                logits = network.logits(x_batch)
                loss = network.loss_from_logits(logits, y_batch)
            losses = losses.write(i, loss)
            if not tf.math.is_finite(loss):
                break
            grads = tape.gradient(loss, variables)
            self.optimizer.apply_gradients(zip(grads, variables))
            correct += correct_predictions(logits, y_batch)
        return losses.stack(), correct

    def _evaluate(self, x, y):
        """``(loss, accuracy)`` of the network on all of ``x``, ``y``."""
        logits = self.network.logits(x)
        accuracy = tf.cast(correct_predictions(logits, y), tf.float32) / tf.cast(
            tf.shape(x)[0], tf.float32
        )
        return self.network.loss_from_logits(logits, y), accuracy


def epoch_order(num_examples: int, seed: int, epoch: int) -> tf.Tensor:
    """The shuffled row order of ``epoch``: a pure function of the seed and the epoch,
    so a run resumed at any epoch shuffles exactly as an uninterrupted one."""
    return tf.random.experimental.stateless_shuffle(tf.range(num_examples), seed=[seed, epoch])


def fit(
    network: Sequential,
    optimizer: SGD,
    train: tuple[np.ndarray, np.ndarray],
    evaluate: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    epochs: int,
    batch_size: int,
    seed: int = 0,
    callbacks: Sequence[Callback | EpochFunction] = (),
) -> History:
    """Train ``network`` with minibatch ``optimizer`` steps, up to epoch ``epochs``.

    ``train`` and each set of ``evaluate`` are ``(x, y)`` pairs: ``x`` float32
    ``(n, input_dim)``, ``y`` float32 ``(n, outputs)``. Each epoch visits the training rows in
    a fresh order fixed by ``(seed, epoch)``, in batches of ``batch_size`` (the last may be
    smaller). After each epoch the sets of ``evaluate`` are measured, ``"val"`` (validation:
    what decisions such as early stopping use) and ``"test"`` (reported), and every callback's
    ``on_epoch_end`` is called, in order (an ``EarlyStopping`` before the callbacks that record
    its state). Returns the ``History`` among ``callbacks``, continued after its last epoch,
    or a new one. Raises ``NonFiniteLossError`` naming the epoch and step where the loss
    stopped being finite.
    """
    x_train, y_train = (tf.convert_to_tensor(a, tf.float32) for a in train)
    sets = {n: [tf.convert_to_tensor(a, tf.float32) for a in xy] for n, xy in evaluate.items()}
    callbacks = [c if isinstance(c, Callback) else _EpochFunction(c) for c in callbacks]
    history = next((c for c in callbacks if isinstance(c, History)), None) or History()
    callbacks = [history] + [c for c in callbacks if c is not history]
    num_examples = int(x_train.shape[0])
    _check_fit_arguments(num_examples, sets, epochs, batch_size, callbacks)
    trainer = Trainer(network, optimizer)
    steps_per_epoch = math.ceil(num_examples / batch_size)
    chunk = min([c.steps_per_call for c in callbacks if c.steps_per_call] or [steps_per_epoch])

    for epoch in range(history.epochs + 1, epochs + 1):
        if any(c.stop_training for c in callbacks):
            break  # a run resumed after the epoch it stopped at
        started = time.perf_counter()
        order = epoch_order(num_examples, seed, epoch)
        epoch_losses, correct = [], 0
        for first in range(0, steps_per_epoch, chunk):
            count = min(chunk, steps_per_epoch - first)
            losses, chunk_correct = trainer.run_steps(
                x_train,
                y_train,
                order,
                tf.constant(first),
                tf.constant(count),
                tf.constant(batch_size),
            )
            losses = losses.numpy()
            bad = np.flatnonzero(~np.isfinite(losses))
            if bad.size:
                raise NonFiniteLossError(epoch, first + int(bad[0]), float(losses[bad[0]]))
            epoch_losses.append(losses)
            correct += int(chunk_correct)
            for callback in callbacks:
                callback.on_steps(epoch, first, losses)
        metrics = {
            "train_loss": float(np.concatenate(epoch_losses).mean()),
            "train_accuracy": correct / num_examples,
        }
        for name in ("val", "test"):
            if name in sets:
                loss, accuracy = trainer.evaluate(*sets[name])
                metrics |= {f"{name}_loss": float(loss), f"{name}_accuracy": float(accuracy)}
        metrics["epoch_seconds"] = time.perf_counter() - started
        for callback in callbacks:
            callback.on_epoch_end(epoch, metrics, network)
    for callback in callbacks:
        callback.on_train_end(network)
    return history


def _check_fit_arguments(
    num_train: int, sets: dict, epochs: int, batch_size: int, callbacks: list[Callback]
) -> None:
    if num_train == 0 or any(int(x.shape[0]) == 0 for x, _ in sets.values()):
        raise ValueError("the training and evaluation sets must not be empty")
    if unknown := set(sets) - {"val", "test"}:
        raise ValueError(f"evaluate names 'val' and 'test' sets, got {sorted(unknown)}")
    if "val" not in sets and any(c.needs_validation for c in callbacks):
        raise ValueError("early stopping needs a validation set (evaluate['val'])")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if not 1 <= batch_size <= num_train:
        raise ValueError(
            f"batch_size must be between 1 and the training set size {num_train}, got {batch_size}"
        )
    for callback in callbacks:
        if callback.steps_per_call is not None and callback.steps_per_call < 1:
            raise ValueError(f"steps_per_call must be >= 1, got {callback.steps_per_call}")


def learning_failure(history: History, chance_accuracy: float, margin: float = 0.05) -> str | None:
    """Why the run recorded in ``history`` learned nothing, or None if it learned.

    It learned nothing when its last epoch's train loss is not below its first epoch's
    (a one-epoch run has nothing to compare with), or when its last accuracy on data it may
    select on (validation when measured, else training) is within ``margin`` of
    ``chance_accuracy``, the share of the commonest class.
    """
    first, last = history.train_loss[0], history.train_loss[-1]
    if history.epochs > 1 and not last < first:
        return f"train loss {last:.4g} did not fall below epoch 1's {first:.4g}"
    name = "val_accuracy" if history.val_accuracy else "train_accuracy"
    accuracy = getattr(history, name)[-1]
    if accuracy <= chance_accuracy + margin:
        return f"{name} {accuracy:.4f} is at chance (commonest class: {chance_accuracy:.4f})"
    return None
