"""Saving and loading networks (JSON + npz, no pickle) and training checkpoints."""

import json

import numpy as np
import pytest

from tfnn.network import build_mlp
from tfnn.optimizers import SGD
from tfnn.serialization import (
    ARCHITECTURE_FILE,
    WEIGHTS_FILE,
    ModelFileError,
    TrainingCheckpoint,
    load_network,
    save_network,
)
from tfnn.training import History, fit


def weights_of(network) -> list[np.ndarray]:
    return [w.numpy().copy() for w in network.all_weights]


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
    return (x, y), (x[:4], y[:4])


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


def test_checkpoint_restores_weights_epoch_and_history(tmp_path, problem):
    network = build_mlp([4, 5, 3], seed=0)
    checkpoint = TrainingCheckpoint(network, tmp_path / "ckpt")
    history = fit(network, SGD(0.1), *problem, epochs=1, batch_size=4, seed=2)
    checkpoint.save(1, history)
    history = fit(
        network,
        SGD(0.1),
        *problem,
        epochs=2,
        batch_size=4,
        seed=2,
        initial_epoch=1,
        history=history,
    )
    checkpoint.save(2, history)
    trained = weights_of(network)

    fresh = build_mlp([4, 5, 3], seed=9)
    epoch, restored = TrainingCheckpoint(fresh, tmp_path / "ckpt").restore_latest()
    assert epoch == 2
    assert restored == history
    for a, b in zip(weights_of(fresh), trained):
        np.testing.assert_array_equal(a, b)


def test_restored_checkpoint_resumes_like_uninterrupted_training(tmp_path, problem):
    uninterrupted = build_mlp([4, 5, 3], seed=0)
    full = fit(uninterrupted, SGD(0.1), *problem, epochs=3, batch_size=5, seed=4)

    crashed = build_mlp([4, 5, 3], seed=0)
    TrainingCheckpoint(crashed, tmp_path).save(
        1, fit(crashed, SGD(0.1), *problem, epochs=1, batch_size=5, seed=4)
    )
    resumed = build_mlp([4, 5, 3], seed=1)
    epoch, history = TrainingCheckpoint(resumed, tmp_path).restore_latest()
    history = fit(
        resumed,
        SGD(0.1),
        *problem,
        epochs=3,
        batch_size=5,
        seed=4,
        initial_epoch=epoch,
        history=history,
    )
    for a, b in zip(weights_of(resumed), weights_of(uninterrupted)):
        np.testing.assert_array_equal(a, b)
    assert history.step_loss == full.step_loss
    assert history.test_accuracy == full.test_accuracy


def test_no_checkpoint_restores_nothing(tmp_path):
    network = build_mlp([4, 5, 3], seed=0)
    before = weights_of(network)
    epoch, history = TrainingCheckpoint(network, tmp_path / "empty").restore_latest()
    assert epoch == 0
    assert history == History()
    for a, b in zip(weights_of(network), before):
        np.testing.assert_array_equal(a, b)
