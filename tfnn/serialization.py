"""Saving networks: an architecture JSON beside an ``.npz`` of weights, never pickle.

``architecture.json`` is ``Sequential.spec()``; ``weights.npz`` holds one float32 array
per weight, keyed ``layer{i}/weight`` and ``layer{i}/bias``. Mid-training checkpoints
use ``tf.train.Checkpoint`` instead (see ``TrainingCheckpoint``).
"""

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfnn.network import Sequential
from tfnn.training import History

ARCHITECTURE_FILE = "architecture.json"
WEIGHTS_FILE = "weights.npz"
MAX_ARCHITECTURE_BYTES = 1 << 20  # a spec is a few hundred bytes


class ModelFileError(ValueError):
    """A saved network cannot be loaded: the message names the file and the problem."""


def _weight_keys(network: Sequential) -> list[str]:
    return [f"layer{i}/{part}" for i in range(len(network.layers)) for part in ("weight", "bias")]


def weights_digest(network: Sequential) -> str:
    """Sha256 hex of every weight's shape, dtype and bytes, in ``all_weights`` order: equal
    digests mean bit-identical networks."""
    h = hashlib.sha256()
    for w in network.all_weights:
        array = w.numpy()
        h.update(f"{array.shape}{array.dtype.str};".encode())
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def save_network(network: Sequential, directory: str | Path) -> Path:
    """Write ``architecture.json`` and ``weights.npz`` for ``network`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ARCHITECTURE_FILE).write_text(json.dumps(network.spec(), indent=2) + "\n")
    arrays = {key: w.numpy() for key, w in zip(_weight_keys(network), network.all_weights)}
    np.savez(directory / WEIGHTS_FILE, **arrays)
    return directory


def load_network(directory: str | Path) -> Sequential:
    """Rebuild the network saved by ``save_network`` in ``directory``."""
    directory = Path(directory)
    spec_path, weights_path = directory / ARCHITECTURE_FILE, directory / WEIGHTS_FILE
    try:
        with open(spec_path, "rb") as file:
            text = file.read(MAX_ARCHITECTURE_BYTES + 1)
    except FileNotFoundError:
        raise ModelFileError(
            f"{spec_path}: no such file; save the network with save_network"
        ) from None
    except OSError as error:
        raise ModelFileError(f"{spec_path}: cannot read ({error.strerror or error})") from None
    if len(text) > MAX_ARCHITECTURE_BYTES:
        raise ModelFileError(
            f"{spec_path}: larger than {MAX_ARCHITECTURE_BYTES} bytes; not an architecture"
        )
    try:
        network = Sequential.from_spec(json.loads(text))  # checks sizes before building
    except RecursionError:
        raise ModelFileError(f"{spec_path}: invalid architecture: nested too deeply") from None
    except (ValueError, KeyError, TypeError) as error:
        raise ModelFileError(f"{spec_path}: invalid architecture: {error}") from None
    try:
        with zipfile.ZipFile(weights_path) as archive:
            # As the archive declares them: the zip reader never inflates past these sizes.
            declared = sum(member.file_size for member in archive.infolist())
        # float64 arrays are accepted (and cast): 8 bytes a parameter, plus .npy headers.
        if declared > 8 * network.num_parameters + (1 << 20):
            raise ModelFileError(
                f"{weights_path}: {declared} bytes of arrays, far more than the "
                f"{network.num_parameters} parameters of {spec_path.name} need"
            )
        with np.load(weights_path, allow_pickle=False) as saved:
            arrays = {key: saved[key] for key in _weight_keys(network) if key in saved.files}
    except ModelFileError:
        raise
    except FileNotFoundError:
        raise ModelFileError(
            f"{weights_path}: no such file; save the network with save_network"
        ) from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise ModelFileError(
            f"{weights_path}: unreadable (truncated or not an .npz file): {error}"
        ) from None
    for key, variable in zip(_weight_keys(network), network.all_weights):
        if key not in arrays:
            raise ModelFileError(f"{weights_path}: missing array {key!r} for {spec_path.name}")
        if arrays[key].shape != tuple(variable.shape):
            raise ModelFileError(
                f"{weights_path}: {key} has shape {arrays[key].shape} but the architecture "
                f"needs {tuple(variable.shape)}"
            )
        variable.assign(arrays[key].astype(np.float32))
    return network


class TrainingCheckpoint:
    """Everything needed to continue training after a crash: weights, the completed epoch
    count, the history so far and the early-stopping state (``EarlyStopping.state()``), written
    atomically by ``tf.train.CheckpointManager``.

    The shuffling state needs no saving: ``tfnn.training.epoch_order`` derives each
    epoch's order from the seed and the epoch number.
    """

    def __init__(self, network: Sequential, directory: str | Path, max_to_keep: int | None = None):
        self.network = network
        self.directory = Path(directory)
        self.epoch = tf.Variable(0, dtype=tf.int64, name="epoch")
        self.history_json = tf.Variable("{}", dtype=tf.string, name="history")
        # ``EarlyStopping.state()``: a resumed run stops where an uninterrupted one does.
        self.early_stopping = {
            "best_epoch": tf.Variable(0, dtype=tf.int64, name="best_epoch"),
            "best_val_loss": tf.Variable(np.inf, dtype=tf.float64, name="best_val_loss"),
            "epochs_waited": tf.Variable(0, dtype=tf.int64, name="epochs_waited"),
        }
        checkpoint = tf.train.Checkpoint(
            network=network,
            epoch=self.epoch,
            history=self.history_json,
            early_stopping=self.early_stopping,
        )
        self.manager = tf.train.CheckpointManager(checkpoint, str(self.directory), max_to_keep)

    def save(self, epoch: int, history: History, early_stopping: dict | None = None) -> str:
        """Record that ``epoch`` epochs are complete, with the ``EarlyStopping.state()`` if
        any; returns the checkpoint's path prefix."""
        self.epoch.assign(epoch)
        for name, value in (early_stopping or {}).items():
            self.early_stopping[name].assign(value)
        self.history_json.assign(json.dumps(history.__dict__))
        return self.manager.save(checkpoint_number=epoch)

    def restore_latest(self) -> tuple[int, History]:
        """Load the newest checkpoint into the network: ``(completed epochs, history)``,
        or ``(0, empty History)`` when there is none."""
        latest = self.manager.latest_checkpoint
        if latest is None:
            return 0, History()
        self.manager.checkpoint.restore(latest).assert_consumed()
        return int(self.epoch.numpy()), History(**json.loads(self.history_json.numpy().decode()))

    def early_stopping_state(self) -> dict[str, float]:
        """The ``EarlyStopping.state()`` of the checkpoint last saved or restored."""
        return {name: variable.numpy().item() for name, variable in self.early_stopping.items()}

    def weights_of(self, epoch: int) -> list[np.ndarray] | None:
        """The weights saved after ``epoch``, None when that checkpoint is not kept; the
        network is left as it was."""
        path = self.directory / f"ckpt-{epoch}"
        if not path.with_suffix(".index").exists():
            return None
        current = [w.numpy() for w in self.network.all_weights]
        tf.train.Checkpoint(network=self.network).restore(str(path)).expect_partial()
        weights = [w.numpy() for w in self.network.all_weights]
        for variable, value in zip(self.network.all_weights, current):
            variable.assign(value)
        return weights
