"""Honest model selection: the validation split, early stopping on it, the best epoch's
weights, and sweeps and retrains that decide on validation even where the test set would
decide otherwise. Expected values come from hand rules, the logged histories and NumPy."""

from pathlib import Path

import mlflow
import numpy as np
import pytest
import tensorflow as tf
from conftest import (
    EPOCH_METRICS,
    run_tfnn,
    synthetic_digits,
    tfnn_env,
    train_killed_after_epoch,
    train_uninterrupted,
)
from mlflow.tracking import MlflowClient
from prefect.settings import PREFECT_API_URL

from flows.retrain import retrain_flow
from flows.sweep import sweep_flow, sweep_task_runner
from flows.train import train_flow
from tasks.config import RunOptions, TrainConfig
from tasks.data import prepare_data
from tasks.grid import SweepSpec
from tasks.model import BEST_EPOCH_TAG, WEIGHTS_TAG
from tfnn.idx import write_idx_images, write_idx_labels
from tfnn.mnist import load_mnist_idx
from tfnn.network import Sequential
from tfnn.preprocessing import preprocess, validation_split
from tfnn.serialization import load_network, weights_digest

NAME = "tfnn-mnist"


def write_digits_dir(
    directory: Path, train_count: int, label_noise: float = 0.0, shift_test_labels: bool = False
) -> Path:
    """IDX files of ``conftest.synthetic_digits``: a share ``label_noise`` of the training
    labels (validation part included) redrawn at random, so a small network overfits; with
    ``shift_test_labels`` every test label is ``(true + 1) % 10``, so a network that learned
    the digits scores 0 on the test set and one that learned nothing does better there."""
    directory.mkdir(parents=True, exist_ok=True)
    images, labels = synthetic_digits(train_count, 3)
    rng = np.random.default_rng(4)
    noisy = rng.random(train_count) < label_noise
    labels[noisy] = rng.integers(0, 10, noisy.sum())
    test_images, test_labels = synthetic_digits(200, 2)
    if shift_test_labels:
        test_labels = (test_labels + 1) % 10
    write_idx_images(directory / "train-images-idx3-ubyte.gz", images)
    write_idx_labels(directory / "train-labels-idx1-ubyte.gz", labels)
    write_idx_images(directory / "t10k-images-idx3-ubyte.gz", test_images)
    write_idx_labels(directory / "t10k-labels-idx1-ubyte.gz", test_labels)
    return directory


def predicted_stop(val_loss: list[float], patience: int) -> tuple[int, int]:
    """``(stop epoch, best epoch)`` by the rule stated in the README, from a logged history:
    stop after ``patience`` epochs without a val_loss below the lowest so far."""
    best, waited = 0, 0
    for epoch, loss in enumerate(val_loss, 1):
        if best == 0 or loss < val_loss[best - 1]:
            best, waited = epoch, 0
        else:
            waited += 1
        if waited == patience:
            return epoch, best
    return len(val_loss), best


def logged(client: MlflowClient, run_id: str, name: str) -> list[float]:
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, name))
    assert [step for step, _ in history] == list(range(1, len(history) + 1)), name
    return [value for _, value in history]


def checkpoint_digest(client: MlflowClient, run_id: str, name: str, epoch: int, spec: dict) -> str:
    """The weights digest of the uploaded ``checkpoints/<name>/``, checked to be ``epoch``'s."""
    network, saved_epoch = Sequential.from_spec(spec), tf.Variable(0, dtype=tf.int64)
    folder = Path(client.download_artifacts(run_id, f"checkpoints/{name}"))
    checkpoint = tf.train.Checkpoint(network=network, epoch=saved_epoch)
    checkpoint.restore(str(folder / "ckpt")).expect_partial()  # the early-stopping state aside
    assert int(saved_epoch) == epoch
    return weights_digest(network)


# --- the split ---------------------------------------------------------------------------------


def test_validation_rows_are_the_last_fraction_of_the_training_split(small_mnist_dir):
    # Keras' rule by hand: floor(600 * 0.9) = 540 rows train, rows 540-599 validate.
    train_rows, validation_rows = validation_split(600, 0.1)
    assert list(train_rows) == list(range(540)) and list(validation_rows) == list(range(540, 600))
    assert list(validation_split(600, 0.25)[1]) == list(range(450, 600))
    assert len(validation_split(600, 0.0)[1]) == 0
    arrays = load_mnist_idx(small_mnist_dir)
    data = prepare_data.fn(arrays, 0.1)
    x, y = preprocess(arrays.train_images, arrays.train_labels)
    np.testing.assert_array_equal(data.x_val, x[540:])
    np.testing.assert_array_equal(data.y_val, y[540:])
    np.testing.assert_array_equal(data.x_train, x[:540])
    full = prepare_data.fn(arrays, 0.0)
    assert full.validation is None and len(full.x_train) == 600


def test_two_seeds_hold_out_the_same_examples_and_another_fraction_others(
    prefect_harness, mlflow_store, small_mnist_dir
):
    client = MlflowClient()

    def validation_input(seed: int, fraction: float):
        config = TrainConfig(
            hidden_sizes=(8,),
            epochs=1,
            seed=seed,
            validation_fraction=fraction,
            data_source=str(small_mnist_dir),
        )
        run = client.get_run(train_flow(config, RunOptions(register_model=False)).run_id)
        contexts = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
        assert sorted(contexts) == ["testing", "training", "validation"]
        assert run.data.params["validation_rule"].startswith("last validation_fraction")
        return run.data.params["num_validation_examples"], contexts["validation"].digest

    seed_0, seed_1 = validation_input(0, 0.1), validation_input(1, 0.1)
    assert seed_0 == seed_1 and seed_0[0] == "60"
    other = validation_input(0, 0.2)
    assert other[0] == "120" and other[1] != seed_0[1]


# --- early stopping and the best epoch ----------------------------------------------------------


def test_an_overfitting_run_stops_where_its_val_loss_says_with_that_epochs_weights(
    prefect_harness, mlflow_store, tmp_path
):
    # 150 training digits with 30% wrong labels: the network memorises them and val_loss rises.
    data_dir = write_digits_dir(tmp_path / "noisy", 200, label_noise=0.3)
    patience = 3
    config = TrainConfig(
        hidden_sizes=(64,),
        learning_rate=0.5,
        batch_size=10,
        epochs=30,
        seed=0,
        validation_fraction=0.25,
        early_stopping_patience=patience,
        data_source=str(data_dir),
    )
    result = train_flow(config)
    client = MlflowClient()
    run = client.get_run(result.run_id)
    val_loss = logged(client, result.run_id, "val/loss")
    stop, best = predicted_stop(val_loss, patience)
    assert len(val_loss) == stop < config.epochs  # it did stop early, where predicted
    assert best < stop
    for key in EPOCH_METRICS.values():
        assert len(logged(client, result.run_id, key)) == stop, key
    assert run.data.tags[BEST_EPOCH_TAG] == str(best)

    # The logged weights, the model and the registered version are the best epoch's.
    spec = load_network(client.download_artifacts(result.run_id, "weights")).spec()
    digest = checkpoint_digest(client, result.run_id, "best", best, spec)
    assert run.data.tags[WEIGHTS_TAG] == digest
    assert run.data.tags[WEIGHTS_TAG] != checkpoint_digest(
        client, result.run_id, "latest", stop, spec
    )
    listed = [a.path for a in client.list_artifacts(result.run_id, "checkpoints")]
    assert listed == ["checkpoints/best", "checkpoints/latest"]
    network = load_network(client.download_artifacts(result.run_id, "weights"))
    assert weights_digest(network) == run.data.tags[WEIGHTS_TAG]
    registered = mlflow.pyfunc.load_model(f"models:/{NAME}/{result.model_version}")
    arrays = load_mnist_idx(data_dir)
    x_test, _ = preprocess(arrays.test_images, arrays.test_labels)
    np.testing.assert_allclose(
        registered.predict(x_test), network.predict(x_test).numpy(), atol=1e-6
    )
    # The final scores are measured once, on those weights.
    accuracy = np.mean(network.predict(x_test).numpy().argmax(1) == arrays.test_labels)
    assert run.data.metrics["test/final_accuracy"] == pytest.approx(accuracy)
    assert run.data.metrics["val/final_loss"] == pytest.approx(val_loss[best - 1], rel=1e-5)


@pytest.mark.slow
def test_sigkill_mid_run_with_early_stopping_resumes_to_the_same_stop_and_weights(
    prefect_harness, mlflow_store, tmp_path
):
    # 2250 noisy training digits: an epoch lasts long enough to kill in the middle of one,
    # and this configuration stops early at epoch 6 with epoch 3 best (left to the test to
    # check, against the library alone).
    data_dir = write_digits_dir(tmp_path / "noisy", 3000, label_noise=0.4)
    flags = ["--data-dir", str(data_dir), "--epochs", "30", "--hidden-sizes", "256"]
    flags += ["--learning-rate", "0.1", "--batch-size", "8", "--seed", "0"]
    flags += ["--validation-fraction", "0.25", "--early-stopping-patience", "3", "--no-progress"]
    env = tfnn_env(PREFECT_API_URL=PREFECT_API_URL.value())
    kill_after = 4  # after the best epoch and before the stop: the best comes from a checkpoint
    run_id = train_killed_after_epoch(kill_after, flags, tmp_path, env)
    client = MlflowClient()
    assert client.get_run(run_id).info.status == "RUNNING"

    resumed = run_tfnn("train", *flags, "--resume", run_id, cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run = client.get_run(run_id)
    config = TrainConfig(**TrainConfig.fields_from_params(run.data.params))
    history, digest = train_uninterrupted(config)
    stop, best = predicted_stop(history.val_loss, 3)
    assert best < kill_after < stop == history.epochs < config.epochs
    assert run.data.tags[WEIGHTS_TAG] == digest
    assert run.data.tags[BEST_EPOCH_TAG] == str(best)
    for name, key in EPOCH_METRICS.items():
        values = logged(client, run_id, key)
        assert len(values) == stop, name
        if name != "epoch_seconds":
            assert values == getattr(history, name), name


# --- decisions on validation, where the test set would choose otherwise --------------------------


@pytest.fixture(scope="module")
def shifted_test_dir(tmp_path_factory) -> Path:
    return write_digits_dir(tmp_path_factory.mktemp("shifted"), 600, shift_test_labels=True)


# A network that learns the digits, and one whose learning rate leaves it little better than
# its random start (28% on validation; one that learned nothing would not be registered):
# validation prefers the first, the shifted test labels the second.
LEARNS, LEARNS_LITTLE = "0.5", "0.003"


def test_a_sweep_ranks_on_validation_where_test_would_rank_the_other_way(
    prefect_harness, mlflow_store, shifted_test_dir
):
    spec = SweepSpec(
        base={"epochs": 2, "hidden_sizes": [16], "data_source": str(shifted_test_dir)},
        grid={"learning_rate": [LEARNS_LITTLE, LEARNS]},
    )
    result = sweep_flow.with_options(task_runner=sweep_task_runner(max_concurrency=2))(spec)
    first, second = result.ranking
    assert first["configuration"] == f"learning_rate={LEARNS}"
    assert first["val_accuracy"] > second["val_accuracy"]
    assert first["test_accuracy"] < second["test_accuracy"]  # test would flip it
    tags = MlflowClient().get_run(result.parent_run_id).data.tags
    assert tags["tfnn.best.learning_rate"] == LEARNS
    assert float(tags["tfnn.best.val_accuracy"]) == first["val_accuracy"]
    # The ranked score, recomputed with NumPy from the logged weights on rows 540-599.
    arrays = load_mnist_idx(shifted_test_dir)
    x, _ = preprocess(arrays.train_images, arrays.train_labels)
    network = load_network(MlflowClient().download_artifacts(first["run_id"], "weights"))
    accuracy = np.mean(network.predict(x[540:]).numpy().argmax(1) == arrays.train_labels[540:])
    assert first["val_accuracy"] == pytest.approx(accuracy)


def test_a_retrain_promotes_on_validation_where_test_would_keep_the_champion(
    prefect_harness, mlflow_store, shifted_test_dir
):
    config = TrainConfig(epochs=2, hidden_sizes=(16,), data_source=str(shifted_test_dir))
    champion = retrain_flow(config.model_copy(update={"learning_rate": float(LEARNS_LITTLE)}))
    assert champion.action == "promoted"
    challenger = retrain_flow(config.model_copy(update={"learning_rate": float(LEARNS)}))
    assert challenger.challenger_val_accuracy > challenger.champion_val_accuracy
    assert challenger.challenger_test_accuracy < challenger.champion_test_accuracy
    assert challenger.action == "promoted"
    version = MlflowClient().get_model_version_by_alias(NAME, "champion")
    assert str(version.version) == challenger.challenger_version
    # The scores, recomputed with NumPy from each version's weights on the validation rows.
    arrays = load_mnist_idx(shifted_test_dir)
    x, _ = preprocess(arrays.train_images, arrays.train_labels)
    tags = MlflowClient().get_run(challenger.challenger_run_id).data.tags
    for role, run_id in (
        ("champion", champion.challenger_run_id),
        ("challenger", challenger.challenger_run_id),
    ):
        network = load_network(MlflowClient().download_artifacts(run_id, "weights"))
        predicted = network.predict(x[540:]).numpy().argmax(1)
        accuracy = np.mean(predicted == arrays.train_labels[540:])
        assert float(tags[f"tfnn.{role}_val_accuracy"]) == pytest.approx(accuracy)
        assert f"tfnn.{role}_test_accuracy" in tags
