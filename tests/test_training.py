"""tfnn.fit against NumPy-computed SGD steps, plus its bookkeeping, determinism and resume."""

import math

import numpy as np
import pytest
from conftest import weights_of

from tfnn.network import build_mlp
from tfnn.optimizers import SGD
from tfnn.training import (
    Callback,
    EarlyStopping,
    History,
    NonFiniteLossError,
    epoch_order,
    fit,
    learning_failure,
)


def numpy_loss_and_logits(weights: list[np.ndarray], x: np.ndarray, target: np.ndarray):
    """Mean softmax cross-entropy of a relu MLP, float64, by log-sum-exp."""
    a = x.astype(np.float64)
    for i, (w, b) in enumerate(zip(weights[::2], weights[1::2])):
        a = a @ w + b
        if i < len(weights) // 2 - 1:
            a = np.maximum(a, 0.0)
    shifted = a - a.max(1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    return float(np.mean(-(target * log_probabilities).sum(1))), a


def numpy_gradient(weights: list[np.ndarray], x: np.ndarray, target: np.ndarray, h: float = 1e-6):
    """Central finite differences of ``numpy_loss_and_logits``: independent of any backprop."""
    grads = []
    for k, weight in enumerate(weights):
        grad = np.zeros_like(weight)
        for index in np.ndindex(weight.shape):
            shifted = [w.copy() for w in weights]
            shifted[k][index] += h
            plus, _ = numpy_loss_and_logits(shifted, x, target)
            shifted[k][index] -= 2 * h
            minus, _ = numpy_loss_and_logits(shifted, x, target)
            grad[index] = (plus - minus) / (2 * h)
        grads.append(grad)
    return grads


@pytest.fixture
def tiny_problem():
    """10 training and 6 test rows, 3 features, 2 classes."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3)).astype(np.float32)
    y = np.eye(2, dtype=np.float32)[(x[:, 0] - x[:, 2] > 0).astype(int)]
    return (x[:10], y[:10]), {"test": (x[10:], y[10:])}


def separable_blobs(n: int, seed: int):
    """Points labelled by the side of the line x0 + x1 = 0, none closer than 0.5 to it."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-3, 3, size=(4 * n, 2))
    x = x[np.abs(x.sum(1)) > 0.5 * math.sqrt(2)][:n]
    return x.astype(np.float32), np.eye(2, dtype=np.float32)[(x.sum(1) > 0).astype(int)]


def test_fit_learns_a_separable_problem():
    train, test = separable_blobs(200, seed=1), separable_blobs(100, seed=2)
    network = build_mlp([2, 8, 2], seed=0)
    initial_loss = float(network.loss(*train))
    history = fit(network, SGD(0.1), train, {"test": test}, epochs=15, batch_size=16, seed=0)
    assert history.train_loss[-1] < 0.1 * initial_loss
    assert history.test_loss[-1] < 0.1 * initial_loss
    assert all(b <= a * 1.05 for a, b in zip(history.train_loss, history.train_loss[1:]))
    assert history.train_accuracy[-1] >= 0.99
    assert history.test_accuracy[-1] >= 0.99
    predicted = network.predict(test[0]).numpy().argmax(1)
    assert np.mean(predicted == test[1].argmax(1)) == pytest.approx(history.test_accuracy[-1])


def test_one_full_batch_epoch_is_one_numpy_sgd_step(tiny_problem):
    train, sets = tiny_problem
    network = build_mlp([3, 4, 2], seed=1)
    before = [w.astype(np.float64) for w in weights_of(network)]
    history = fit(network, SGD(0.5), train, sets, epochs=1, batch_size=10)
    loss, _ = numpy_loss_and_logits(before, *train)
    expected = [w - 0.5 * g for w, g in zip(before, numpy_gradient(before, *train))]
    assert len(history.step_loss) == 1
    np.testing.assert_allclose(history.step_loss[0], loss, rtol=1e-5)
    for got, want in zip(weights_of(network), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_minibatches_follow_epoch_order_and_match_numpy_sgd(tiny_problem):
    train, sets = tiny_problem
    test = sets["test"]
    network = build_mlp([3, 4, 2], seed=2)
    weights = [w.astype(np.float64) for w in weights_of(network)]
    history = fit(network, SGD(0.3), train, sets, epochs=1, batch_size=4, seed=5)

    order = epoch_order(10, seed=5, epoch=1).numpy()
    losses, correct = [], 0
    for start in range(0, 10, 4):  # batches of 4, 4 and the last partial batch of 2
        x, y = train[0][order[start : start + 4]], train[1][order[start : start + 4]]
        loss, logits = numpy_loss_and_logits(weights, x, y)
        losses.append(loss)
        correct += int(np.sum(logits.argmax(1) == y.argmax(1)))
        weights = [w - 0.3 * g for w, g in zip(weights, numpy_gradient(weights, x, y))]

    np.testing.assert_allclose(history.step_loss, losses, rtol=1e-5)
    np.testing.assert_allclose(history.train_loss, [np.mean(losses)], rtol=1e-5)
    assert history.train_accuracy == [correct / 10]
    for got, want in zip(weights_of(network), weights):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    test_loss, test_logits = numpy_loss_and_logits(weights, *test)
    np.testing.assert_allclose(history.test_loss, [test_loss], rtol=1e-5)
    test_hits = np.mean(test_logits.argmax(1) == test[1].argmax(1))
    np.testing.assert_allclose(history.test_accuracy, [test_hits], rtol=1e-6)


@pytest.mark.parametrize(("batch_size", "steps_per_epoch"), [(1, 10), (3, 4), (4, 3), (10, 1)])
def test_history_lengths(tiny_problem, batch_size, steps_per_epoch):
    history = fit(build_mlp([3, 4, 2]), SGD(0.1), *tiny_problem, epochs=3, batch_size=batch_size)
    assert len(history.step_loss) == 3 * steps_per_epoch
    for per_epoch in (
        history.train_loss,
        history.train_accuracy,
        history.test_loss,
        history.test_accuracy,
        history.epoch_seconds,
    ):
        assert len(per_epoch) == 3
    assert history.epochs == 3
    for epoch in range(3):
        epoch_steps = history.step_loss[epoch * steps_per_epoch : (epoch + 1) * steps_per_epoch]
        # An epoch's train_loss is the plain mean of its step losses, short batch included.
        np.testing.assert_allclose(history.train_loss[epoch], np.mean(epoch_steps), rtol=1e-6)


def test_epoch_callbacks_get_epoch_metrics_and_network(tiny_problem):
    network, calls = build_mlp([3, 4, 2]), []

    def record(epoch, metrics, net):
        calls.append((epoch, dict(metrics), net))

    history = fit(network, SGD(0.1), *tiny_problem, epochs=3, batch_size=4, callbacks=[record])
    assert [epoch for epoch, _, _ in calls] == [1, 2, 3]
    assert all(net is network for _, _, net in calls)
    for epoch, metrics, _ in calls:
        assert metrics == {
            "train_loss": history.train_loss[epoch - 1],
            "train_accuracy": history.train_accuracy[epoch - 1],
            "test_loss": history.test_loss[epoch - 1],
            "test_accuracy": history.test_accuracy[epoch - 1],
            "epoch_seconds": history.epoch_seconds[epoch - 1],
        }


class StepRecorder(Callback):
    """Every chunk of steps ``fit`` reports, after every ``steps_per_call`` steps."""

    def __init__(self, steps_per_call, on_steps=None):
        self.steps_per_call, self.chunks = steps_per_call, []
        self.record = on_steps or (lambda epoch, first, losses: None)

    def on_steps(self, epoch, first_step, losses):
        self.chunks.append((epoch, first_step, losses.copy()))
        self.record(epoch, first_step, losses)


def test_step_callback_chunks_cover_every_step_once(tiny_problem):
    recorder = StepRecorder(steps_per_call=2)
    history = fit(
        build_mlp([3, 4, 2]), SGD(0.1), *tiny_problem, epochs=2, batch_size=2, callbacks=[recorder]
    )
    chunks = recorder.chunks
    assert [(epoch, first, len(losses)) for epoch, first, losses in chunks] == [
        (1, 0, 2),
        (1, 2, 2),
        (1, 4, 1),
        (2, 0, 2),
        (2, 2, 2),
        (2, 4, 1),
    ]
    np.testing.assert_array_equal(
        np.concatenate([losses for _, _, losses in chunks]), history.step_loss
    )


def test_same_seed_is_bitwise_reproducible_and_another_seed_is_not(tiny_problem):
    def train(seed):
        network = build_mlp([3, 4, 2], seed=0)
        fit(network, SGD(0.1), *tiny_problem, epochs=3, batch_size=3, seed=seed)
        return weights_of(network)

    first, again, other = train(1), train(1), train(2)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, c) for a, c in zip(first, other))


def test_epoch_order_is_a_seeded_permutation():
    order = epoch_order(100, seed=3, epoch=1).numpy()
    np.testing.assert_array_equal(np.sort(order), np.arange(100))
    np.testing.assert_array_equal(order, epoch_order(100, seed=3, epoch=1).numpy())
    assert not np.array_equal(order, epoch_order(100, seed=3, epoch=2).numpy())
    assert not np.array_equal(order, epoch_order(100, seed=4, epoch=1).numpy())
    assert not np.array_equal(order, np.arange(100))


def test_resumed_training_equals_uninterrupted_training(tiny_problem):
    uninterrupted = build_mlp([3, 4, 2], seed=0)
    full = fit(uninterrupted, SGD(0.2), *tiny_problem, epochs=4, batch_size=3, seed=7)

    resumed, epochs_seen = build_mlp([3, 4, 2], seed=0), []
    partial = fit(resumed, SGD(0.2), *tiny_problem, epochs=2, batch_size=3, seed=7)
    history = fit(
        resumed,
        SGD(0.2),
        *tiny_problem,
        epochs=4,
        batch_size=3,
        seed=7,
        callbacks=[partial, lambda epoch, metrics, net: epochs_seen.append(epoch)],
    )
    assert epochs_seen == [3, 4] and history is partial
    for a, b in zip(weights_of(uninterrupted), weights_of(resumed)):
        np.testing.assert_array_equal(a, b)
    for name in ("step_loss", "train_loss", "train_accuracy", "test_loss", "test_accuracy"):
        assert getattr(history, name) == getattr(full, name), name


def test_non_finite_loss_stops_before_the_bad_update():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(64, 3)) * 100).astype(np.float32)  # unscaled on purpose
    y = np.eye(2, dtype=np.float32)[(x[:, 0] > 0).astype(int)]
    network = build_mlp([3, 8, 2], seed=0)
    snapshots = [weights_of(network)]
    with pytest.raises(NonFiniteLossError) as info:
        fit(
            network,
            SGD(1e6),
            (x, y),
            {"test": (x, y)},
            epochs=5,
            batch_size=8,
            callbacks=[StepRecorder(1, lambda *_: snapshots.append(weights_of(network)))],
        )
    error = info.value
    assert not math.isfinite(error.loss)
    assert f"epoch {error.epoch}, step {error.step}" in str(error)
    # Every step before the failing one completed and was reported.
    assert len(snapshots) - 1 == (error.epoch - 1) * 8 + error.step
    for weights, last_good in zip(weights_of(network), snapshots[-1]):
        assert np.isfinite(weights).all()
        np.testing.assert_array_equal(weights, last_good)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0, "batch_size": 2}, "epochs must be >= 1"),
        ({"epochs": 1, "batch_size": 0}, "batch_size must be between 1 and .*10.*got 0"),
        ({"epochs": 1, "batch_size": 11}, "batch_size must be between 1 and .*10.*got 11"),
        (
            {"epochs": 1, "batch_size": 2, "callbacks": [StepRecorder(0)]},
            "steps_per_call must be >= 1",
        ),
    ],
)
def test_bad_arguments_are_rejected(tiny_problem, kwargs, message):
    with pytest.raises(ValueError, match=message):
        fit(build_mlp([3, 4, 2]), SGD(0.1), *tiny_problem, **kwargs)


def test_empty_sets_and_bad_learning_rates_are_rejected(tiny_problem):
    train, sets = tiny_problem
    empty = (train[0][:0], train[1][:0])
    for given, evaluate in ((empty, sets), (train, {"test": empty}), (train, {"val": empty})):
        with pytest.raises(ValueError, match="must not be empty"):
            fit(build_mlp([3, 4, 2]), SGD(0.1), given, evaluate, epochs=1, batch_size=1)
    with pytest.raises(ValueError, match=r"'val' and 'test'.*'validation'"):
        fit(build_mlp([3, 4, 2]), SGD(0.1), train, {"validation": train}, epochs=1, batch_size=1)
    for learning_rate in (0.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="learning_rate must be > 0"):
            SGD(learning_rate)


def test_history_epoch_metrics_counts_epochs_from_one():
    history = History(
        step_loss=[9.0],
        train_loss=[1.0, 2.0],
        train_accuracy=[0.1, 0.2],
        test_loss=[3.0, 4.0],
        test_accuracy=[0.3, 0.4],
        epoch_seconds=[5.0, 6.0],
    )
    assert history.epochs == 2
    assert history.epoch_metrics(2) == {
        "train_loss": 2.0,
        "train_accuracy": 0.2,
        "test_loss": 4.0,
        "test_accuracy": 0.4,
        "epoch_seconds": 6.0,
    }


def test_epoch_records_rebuild_the_history_one_epoch_each():
    history = History(
        step_loss=[3.0, 2.0, 1.5, 1.0],
        train_loss=[2.5, 1.25],
        train_accuracy=[0.5, 0.75],
        test_loss=[2.0, 1.0],
        test_accuracy=[0.6, 0.8],
        epoch_seconds=[0.1, 0.2],
    )
    # Right after epoch 2, its record holds its entries and its last 2 step losses.
    assert history.epoch_record(2, steps_per_epoch=2) == {
        "epoch": 2,
        "train_loss": 1.25,
        "train_accuracy": 0.75,
        "test_loss": 1.0,
        "test_accuracy": 0.8,
        "epoch_seconds": 0.2,
        "step_loss": [1.5, 1.0],
    }
    first = History(**{name: values[:1] for name, values in vars(history).items()})
    first.step_loss = [3.0, 2.0]
    records = [first.epoch_record(1, 2), history.epoch_record(2, 2)]
    assert History.from_records(records) == history


@pytest.mark.parametrize(
    ("train_loss", "train_accuracy", "flagged"),
    [
        ([2.3, 0.9, 0.5], [0.6, 0.8, 0.9], None),  # learned
        ([2.3, 2.4, 2.31], [0.6, 0.8, 0.9], "train loss 2.31 did not fall below epoch 1's 2.3"),
        ([5e9, 2.5], [0.095, 0.08], "train_accuracy 0.0800 is at chance"),  # the case
        ([2.3, 2.2], [0.1, 0.16], None),  # 6 points above the commonest class's 10%
        ([2.3], [0.12], "train_accuracy 0.1200 is at chance"),
        ([2.3], [0.5], None),  # one epoch: no loss to compare with
    ],
)
def test_learning_failure_flags_a_rising_loss_or_chance_accuracy(
    train_loss, train_accuracy, flagged
):
    history = History(train_loss=train_loss, train_accuracy=train_accuracy)
    reason = learning_failure(history, chance_accuracy=0.1)
    if flagged is None:
        assert reason is None
    else:
        assert reason.startswith(flagged)


@pytest.mark.parametrize("restore_best", [True, False])
def test_early_stopping_stops_by_its_rule_and_keeps_the_best_epochs_weights(restore_best):
    # 40 random training points with random labels: nothing to learn, so val_loss soon rises.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 50)]
    network = build_mlp([6, 32, 3], seed=0)
    snapshots = []
    history = fit(
        network,
        SGD(0.5),
        (x[:40], y[:40]),
        {"val": (x[40:], y[40:]), "test": (x[40:], y[40:])},
        epochs=50,
        batch_size=4,
        callbacks=[
            EarlyStopping(patience=2, restore_best=restore_best),
            lambda epoch, metrics, net: snapshots.append([w.numpy() for w in net.all_weights]),
        ],
    )
    # By hand: the first epoch of lowest val_loss, and the stop two epochs without a new one.
    losses = history.val_loss
    best = 1 + min(range(len(losses)), key=lambda i: (losses[i], i))
    assert history.best_epoch == best
    assert len(losses) == best + 2 < 50
    assert all(loss >= losses[best - 1] for loss in losses[best:])
    kept = snapshots[best - 1] if restore_best else snapshots[-1]
    for got, want in zip(network.all_weights, kept):
        np.testing.assert_array_equal(got.numpy(), want)


def test_early_stopping_needs_a_validation_set():
    network = build_mlp([2, 2], seed=0)
    data = (np.zeros((4, 2), np.float32), np.eye(2, dtype=np.float32)[[0, 1, 0, 1]])
    with pytest.raises(ValueError, match="needs a validation set"):
        fit(
            network,
            SGD(0.1),
            data,
            {"test": data},
            epochs=1,
            batch_size=2,
            callbacks=[EarlyStopping(1)],
        )
