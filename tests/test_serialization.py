"""Saving and loading networks (JSON + npz, no pickle) and training checkpoints."""

import json

import numpy as np
import pytest
from conftest import break_checkpoint, weights_of

from tfnn.network import build_mlp
from tfnn.optimizers import SGD
from tfnn.serialization import (
    ARCHITECTURE_FILE,
    WEIGHTS_FILE,
    ModelFileError,
    NoIntactCheckpoint,
    TrainingCheckpoint,
    load_network,
    save_network,
)
from tfnn.training import History, fit


@pytest.fixture
def saved(tmp_path):
    """A trained-looking network (random biases too) saved into ``tmp_path / "model"``."""
    network = build_mlp([4, 6, 3], "tanh", "softmax", seed=3)
    for i, layer in enumerate(network.layers):
        layer.b.assign(np.linspace(-1, 1, layer.b.shape[0]) * (i + 1))
    return network, save_network(network, tmp_path / "model")


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 4)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, size=12)]
    return (x, y), {"test": (x[:4], y[:4])}


def test_round_trip_predicts_identically(saved):
    network, directory = saved
    loaded = load_network(directory)
    assert loaded.spec() == network.spec()
    for a, b in zip(weights_of(loaded), weights_of(network)):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(x).numpy(), network.predict(x).numpy())


def test_files_are_plain_json_and_npz_without_pickle(saved):
    network, directory = saved
    assert json.loads((directory / ARCHITECTURE_FILE).read_text()) == network.spec()
    with np.load(directory / WEIGHTS_FILE, allow_pickle=False) as arrays:
        assert sorted(arrays.files) == [
            "layer0/bias",
            "layer0/weight",
            "layer1/bias",
            "layer1/weight",
        ]
        for i, layer in enumerate(network.layers):
            assert arrays[f"layer{i}/weight"].dtype == np.float32
            np.testing.assert_array_equal(arrays[f"layer{i}/weight"], layer.w.numpy())
            np.testing.assert_array_equal(arrays[f"layer{i}/bias"], layer.b.numpy())


def test_pickled_arrays_are_refused(saved):
    network, directory = saved
    arrays = dict(zip(["layer0/weight", "layer0/bias"], weights_of(network)))
    arrays["layer1/weight"] = np.array([{"not": "numbers"}], dtype=object)
    np.savez(directory / WEIGHTS_FILE, **arrays)
    with pytest.raises(ModelFileError, match=WEIGHTS_FILE):
        load_network(directory)


def test_wrong_shape_weights_name_the_file_and_the_array(saved):
    _, directory = saved
    arrays = dict(np.load(directory / WEIGHTS_FILE))
    arrays["layer1/weight"] = arrays["layer1/weight"].T
    np.savez(directory / WEIGHTS_FILE, **arrays)
    with pytest.raises(ModelFileError, match=r"weights\.npz: layer1/weight has shape \(3, 6\)"):
        load_network(directory)


def test_missing_array_names_the_file_and_the_key(saved):
    _, directory = saved
    arrays = dict(np.load(directory / WEIGHTS_FILE))
    del arrays["layer0/bias"]
    np.savez(directory / WEIGHTS_FILE, **arrays)
    with pytest.raises(ModelFileError, match=r"weights\.npz: missing array 'layer0/bias'"):
        load_network(directory)


def test_truncated_weights_name_the_file(saved):
    _, directory = saved
    path = directory / WEIGHTS_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelFileError, match=r"weights\.npz: unreadable") as info:
        load_network(directory)
    assert str(path) in str(info.value)


def test_unknown_activation_names_the_architecture_file(saved):
    _, directory = saved
    path = directory / ARCHITECTURE_FILE
    spec = json.loads(path.read_text())
    spec["layers"][0]["activation"] = "swish"
    path.write_text(json.dumps(spec))
    with pytest.raises(ModelFileError, match="unknown activation 'swish'") as info:
        load_network(directory)
    assert str(path) in str(info.value)


def test_malformed_architecture_names_the_file(saved):
    _, directory = saved
    path = directory / ARCHITECTURE_FILE
    path.write_text("{not json")
    with pytest.raises(ModelFileError, match=r"architecture\.json: invalid architecture"):
        load_network(directory)


@pytest.mark.parametrize("missing", [ARCHITECTURE_FILE, WEIGHTS_FILE])
def test_missing_files_are_named(saved, missing):
    _, directory = saved
    (directory / missing).unlink()
    with pytest.raises(ModelFileError, match="no such file") as info:
        load_network(directory)
    assert str(directory / missing) in str(info.value)
    assert isinstance(info.value, ValueError)


def fit_checkpointed(network, checkpoint, problem, epochs, history=None):
    """``fit`` with batches of 4 (3 steps an epoch) saving ``checkpoint`` after every epoch,
    as ``EpochLogger`` does."""
    history = history or History()

    def save(epoch, metrics, network):
        checkpoint.save(epoch, history.epoch_record(epoch, steps_per_epoch=3))

    return fit(
        network,
        SGD(0.1),
        *problem,
        epochs=epochs,
        batch_size=4,
        seed=2,
        callbacks=[history, save],
    )


def test_checkpoint_restores_weights_epoch_and_history(tmp_path, problem):
    network = build_mlp([4, 5, 3], seed=0)
    history = fit_checkpointed(network, TrainingCheckpoint(network, tmp_path / "ckpt"), problem, 2)
    trained = weights_of(network)

    fresh = build_mlp([4, 5, 3], seed=9)
    epoch, restored = TrainingCheckpoint(fresh, tmp_path / "ckpt").restore_latest()
    assert epoch == 2
    assert restored == history
    for a, b in zip(weights_of(fresh), trained):
        np.testing.assert_array_equal(a, b)


def test_restored_checkpoint_resumes_like_uninterrupted_training(tmp_path, problem):
    uninterrupted = build_mlp([4, 5, 3], seed=0)
    full = fit(uninterrupted, SGD(0.1), *problem, epochs=3, batch_size=4, seed=2)

    crashed = build_mlp([4, 5, 3], seed=0)
    fit_checkpointed(crashed, TrainingCheckpoint(crashed, tmp_path), problem, 1)
    resumed = build_mlp([4, 5, 3], seed=1)
    checkpoint = TrainingCheckpoint(resumed, tmp_path)
    epoch, history = checkpoint.restore_latest()
    assert epoch == len(history.train_loss) == 1  # fit resumes after the history's last epoch
    history = fit_checkpointed(resumed, checkpoint, problem, 3, history)
    for a, b in zip(weights_of(resumed), weights_of(uninterrupted)):
        np.testing.assert_array_equal(a, b)
    assert history == full.__class__(**{**vars(full), "epoch_seconds": history.epoch_seconds})
    assert TrainingCheckpoint(resumed, tmp_path).restore_latest()[1] == history


def folder_bytes(directory) -> dict[str, int]:
    return {str(f.relative_to(directory)): f.stat().st_size for f in directory.rglob("*")}


def test_checkpoint_folder_does_not_grow_with_epochs_but_by_one_history_line(tmp_path, problem):
    sizes = {}
    for epochs in (3, 30):
        network = build_mlp([4, 5, 3], seed=0)
        directory = tmp_path / str(epochs)
        fit_checkpointed(network, TrainingCheckpoint(network, directory, keep=3), problem, epochs)
        sizes[epochs] = folder_bytes(directory)
    # The newest three and the best (index and data files each): same count, same sizes.
    weights = {
        epochs: sorted(size for name, size in found.items() if "ckpt-" in name)
        for epochs, found in sizes.items()
    }
    assert weights[3] == weights[30] and len(weights[30]) == (3 + 1) * 2
    # The manager's state files only name those checkpoints (longer numbers, a few bytes more).
    states = {n: found["checkpoint"] + found["best/checkpoint"] for n, found in sizes.items()}
    assert states[30] - states[3] < 100
    lines = (tmp_path / "30" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, 31))
    # Each line holds 3 step losses and 5 numbers: a few hundred bytes, not the whole history.
    assert max(map(len, lines)) < 400
    assert sizes[30]["history.jsonl"] == sum(len(line) + 1 for line in lines)


def test_retention_keeps_the_newest_k_and_the_best(tmp_path):
    network = build_mlp([4, 5, 3], seed=0)
    checkpoint = TrainingCheckpoint(network, tmp_path, keep=2)
    # Loss falls to its lowest at epoch 3, then rises: epoch 3 stays as the best.
    for epoch, loss in enumerate([0.9, 0.5, 0.2, 0.4, 0.6, 0.7], start=1):
        checkpoint.save(epoch, {"epoch": epoch, "train_loss": loss, "step_loss": [loss]})
    assert sorted(p.name for p in tmp_path.glob("ckpt-*.index")) == ["ckpt-5.index", "ckpt-6.index"]
    assert [p.name for p in (tmp_path / "best").glob("ckpt-*.index")] == ["ckpt-3.index"]
    assert checkpoint.best_epoch == 3
    # Resumed, the best is found again from the history, and a worse epoch does not replace it.
    resumed = TrainingCheckpoint(network, tmp_path, keep=2)
    assert resumed.restore_latest()[0] == 6 and resumed.best_epoch == 3
    resumed.save(7, {"epoch": 7, "train_loss": 0.3, "step_loss": [0.3]})
    assert [p.name for p in (tmp_path / "best").glob("ckpt-*.index")] == ["ckpt-3.index"]
    # A validation loss, when recorded, chooses instead of the train loss.
    checkpoint = TrainingCheckpoint(network, tmp_path / "val", keep=2)
    for epoch, (train_loss, val_loss) in enumerate([(0.9, 0.5), (0.5, 0.3), (0.2, 0.4)], 1):
        record = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss}
        checkpoint.save(epoch, {**record, "step_loss": [train_loss]})
    assert checkpoint.best_epoch == 2
    assert [p.name for p in (tmp_path / "val" / "best").glob("*.index")] == ["ckpt-2.index"]


def test_history_lines_past_the_checkpoint_are_dropped_on_restore(tmp_path, problem):
    network = build_mlp([4, 5, 3], seed=0)
    history = fit_checkpointed(network, TrainingCheckpoint(network, tmp_path), problem, 2)
    # A crash after epoch 3's line was appended, before its checkpoint, mid-way through 4's.
    with open(tmp_path / "history.jsonl", "a") as file:
        file.write(json.dumps({"epoch": 3, "train_loss": 1.0, "step_loss": [1.0]}) + "\n")
        file.write('{"epoch": 4, "train_lo')
    epoch, restored = TrainingCheckpoint(network, tmp_path).restore_latest()
    assert (epoch, restored) == (2, history)
    assert len((tmp_path / "history.jsonl").read_text().splitlines()) == 2


def test_a_checkpoint_without_its_history_is_refused(tmp_path, problem):
    network = build_mlp([4, 5, 3], seed=0)
    fit_checkpointed(network, TrainingCheckpoint(network, tmp_path), problem, 2)
    (tmp_path / "history.jsonl").unlink()
    with pytest.raises(ModelFileError, match="holds 0 of the 2 epochs"):
        TrainingCheckpoint(network, tmp_path).restore_latest()


def test_a_garbage_history_line_is_named_with_its_file(tmp_path, problem):
    network = build_mlp([4, 5, 3], seed=0)
    fit_checkpointed(network, TrainingCheckpoint(network, tmp_path), problem, 2)
    path = tmp_path / "history.jsonl"
    first, _ = path.read_text().splitlines()
    path.write_text(f"{first}\nnot json\n")
    with pytest.raises(ModelFileError, match=r"history.jsonl: line 2 is not an epoch record"):
        TrainingCheckpoint(network, tmp_path).restore_latest()


@pytest.mark.parametrize("how", ["empty index", "flipped bytes", "deleted"])
def test_an_unreadable_newest_checkpoint_falls_back_to_the_newest_intact(tmp_path, problem, how):
    network = build_mlp([4, 5, 3], seed=0)
    checkpoint = TrainingCheckpoint(network, tmp_path)
    history = fit_checkpointed(network, checkpoint, problem, 2)
    after_two = weights_of(network)
    fit_checkpointed(
        network,
        checkpoint,
        problem,
        3,
        History.from_records([history.epoch_record(e, steps_per_epoch=3) for e in (1, 2)]),
    )
    break_checkpoint(tmp_path / "ckpt-3", how)

    resumed = build_mlp([4, 5, 3], seed=1)
    checkpoint = TrainingCheckpoint(resumed, tmp_path)
    epoch, restored = checkpoint.restore_latest()
    assert (epoch, restored) == (2, history)
    assert len(checkpoint.skipped) == 1 and checkpoint.skipped[0].startswith("ckpt-3 (")
    for a, b in zip(weights_of(resumed), after_two):
        np.testing.assert_array_equal(a, b)
    # The intact one is the newest again, and epoch 3 trained again replaces the broken one.
    fit_checkpointed(resumed, checkpoint, problem, 3, restored)
    again = TrainingCheckpoint(build_mlp([4, 5, 3], seed=2), tmp_path)
    assert again.restore_latest()[0] == 3 and again.skipped == []


def test_a_folder_of_unreadable_checkpoints_is_refused_naming_them(tmp_path, problem):
    network = build_mlp([4, 5, 3], seed=0)
    fit_checkpointed(network, TrainingCheckpoint(network, tmp_path), problem, 2)
    break_checkpoint(tmp_path / "ckpt-1", "empty index")
    break_checkpoint(tmp_path / "ckpt-2", "flipped bytes")
    with pytest.raises(
        NoIntactCheckpoint, match=r"no checkpoint can be read: ckpt-2 \(.*ckpt-1 \("
    ):
        TrainingCheckpoint(network, tmp_path).restore_latest()


def test_no_checkpoint_restores_nothing(tmp_path):
    network = build_mlp([4, 5, 3], seed=0)
    before = weights_of(network)
    epoch, history = TrainingCheckpoint(network, tmp_path / "empty").restore_latest()
    assert epoch == 0
    assert history == History()
    for a, b in zip(weights_of(network), before):
        np.testing.assert_array_equal(a, b)
