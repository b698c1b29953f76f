"""Saving networks: an architecture JSON beside an ``.npz`` of weights, never pickle.

``architecture.json`` is ``Sequential.spec()``; ``weights.npz`` holds one float32 array
per weight, keyed ``layer{i}/weight`` and ``layer{i}/bias``. Mid-training checkpoints
use ``tf.train.Checkpoint`` and a history file instead (see ``TrainingCheckpoint``).
"""

import hashlib
import json
import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from tfnn.network import Sequential
from tfnn.training import History

ARCHITECTURE_FILE = "architecture.json"
WEIGHTS_FILE = "weights.npz"
MAX_ARCHITECTURE_BYTES = 1 << 20  # a spec is a few hundred bytes
HISTORY_FILE = "history.jsonl"
BEST_FOLDER = "best"
# One epoch's line holds its step losses: 60k steps take under 1 MiB.
MAX_HISTORY_LINE = 64 * 2**20


class ModelFileError(ValueError):
    """A saved network cannot be loaded: the message names the file and the problem."""


class NoIntactCheckpoint(ModelFileError):
    """A checkpoint folder holds checkpoints, but TensorFlow can read none of them."""


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
    """Everything needed to continue training after a crash, in a folder whose size does not
    grow with the epoch count but by one line per epoch.

    The weights, the completed epoch count and the early-stopping state
    (``EarlyStopping.state()``) go to ``ckpt-N`` files, written atomically by
    ``tf.train.CheckpointManager``: the newest ``keep`` stay, and the best epoch's stays in
    ``best/`` (best: the first of lowest ``val_loss`` when the records hold it, as early
    stopping's, else of lowest ``train_loss``). The history goes to ``history.jsonl``, one
    line per epoch appended before that epoch's checkpoint, and is read back up to the
    checkpoint's epoch.

    The shuffling state needs no saving: ``tfnn.training.epoch_order`` derives each
    epoch's order from the seed and the epoch number.
    """

    def __init__(self, network: Sequential, directory: str | Path, keep: int = 3):
        self.network = network
        self.directory = Path(directory)
        self.history_path = self.directory / HISTORY_FILE
        self.epoch = tf.Variable(0, dtype=tf.int64, name="epoch")
        # ``EarlyStopping.state()``: a resumed run stops where an uninterrupted one does.
        self.early_stopping = {
            "best_epoch": tf.Variable(0, dtype=tf.int64, name="best_epoch"),
            "best_val_loss": tf.Variable(np.inf, dtype=tf.float64, name="best_val_loss"),
            "epochs_waited": tf.Variable(0, dtype=tf.int64, name="epochs_waited"),
        }
        self.checkpoint = tf.train.Checkpoint(
            network=network, epoch=self.epoch, early_stopping=self.early_stopping
        )
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(self.directory), keep)
        self.best_manager = tf.train.CheckpointManager(
            self.checkpoint, str(self.directory / BEST_FOLDER), max_to_keep=1
        )
        self.best_epoch, self._best_loss = 0, math.inf
        self.skipped: list[str] = []  # the unreadable checkpoints restore_latest passed over

    def save(self, epoch: int, record: dict[str, Any], early_stopping: dict | None = None) -> str:
        """Record that ``epoch`` epochs are complete, appending ``record`` (the epoch's
        ``History.epoch_record``) to the history, with the ``EarlyStopping.state()`` if any;
        returns the checkpoint's path prefix. ``best_epoch`` tells whether this epoch
        became the best."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.history_path, "a") as history:
            history.write(_history_line(record))
        self.epoch.assign(epoch)
        for name, value in (early_stopping or {}).items():
            self.early_stopping[name].assign(value)
        prefix = self.manager.save(checkpoint_number=epoch)
        if _selection_loss(record) < self._best_loss:
            self.best_epoch, self._best_loss = epoch, _selection_loss(record)
            self.best_manager.save(checkpoint_number=epoch)
        return prefix

    def restore_latest(self) -> tuple[int, History]:
        """Load the newest intact checkpoint into the network: ``(completed epochs, history)``,
        or ``(0, empty History)`` when there is none. Newer ones that TensorFlow cannot read
        (truncated, bytes flipped, files deleted) are passed over and named in ``skipped``;
        ``NoIntactCheckpoint`` if every one is. Lines of later epochs (written just before a
        crash, or of a skipped checkpoint) are dropped from the history file, since they
        will be trained again."""
        self.skipped = []
        for prefix in reversed(self.manager.checkpoints):
            try:
                self.checkpoint.restore(prefix).assert_consumed()
                break
            except (tf.errors.OpError, AssertionError, ValueError) as error:
                reason = getattr(error, "message", str(error)).strip().splitlines()[0][:160]
                self.skipped.append(f"{Path(prefix).name} ({reason})")
        else:
            if self.skipped:
                raise NoIntactCheckpoint(
                    f"{self.directory}: no checkpoint can be read: {'; '.join(self.skipped)}"
                )
            return 0, History()
        epoch = int(self.epoch.numpy())
        records = self._read_history(epoch, prefix)
        self._rewrite_history(records)
        if self.skipped:  # the newest again, so that a resumed run's next save replaces them
            self.manager.save(checkpoint_number=epoch)
        return epoch, History.from_records(records)

    def adopt(self, prefix: str, records: list[dict[str, Any]], best_prefix: str | None) -> None:
        """Make the checkpoint at ``prefix`` (read from elsewhere, say downloaded) this
        folder's newest, with ``records`` as the history of its epochs, and the one at
        ``best_prefix`` (if any) its best."""
        if best_prefix is not None:
            self.checkpoint.restore(best_prefix).assert_consumed()
            self.best_manager.save(checkpoint_number=int(self.epoch.numpy()))
        self.checkpoint.restore(prefix).assert_consumed()
        epoch = int(self.epoch.numpy())
        self._rewrite_history(records[:epoch])
        self.manager.save(checkpoint_number=epoch)

    def _read_history(self, epochs: int, prefix: str) -> list[dict[str, Any]]:
        records: dict[int, dict[str, Any]] = {}
        try:
            with open(self.history_path) as history:
                number = 0
                while line := history.readline(MAX_HISTORY_LINE):
                    number += 1
                    if not line.endswith("\n"):
                        break  # cut short by a crash (or absurdly long): written again later
                    try:
                        record = json.loads(line)
                        record["step_loss"] = np.asarray(record["step_loss"], np.float32).tolist()
                        epoch = int(record["epoch"])
                    except (ValueError, TypeError, KeyError) as error:
                        raise ModelFileError(
                            f"{self.history_path}: line {number} is not an epoch record "
                            f"({error}); restore the file or start a new run"
                        ) from None
                    if epoch <= epochs:
                        records[epoch] = record
        except FileNotFoundError:
            pass
        if sorted(records) != list(range(1, epochs + 1)):
            raise ModelFileError(
                f"{self.history_path}: holds {len(records)} of the {epochs} epochs of the "
                f"checkpoint {prefix}; the history file is incomplete"
            )
        return [records[epoch] for epoch in range(1, epochs + 1)]

    def _rewrite_history(self, records: list[dict[str, Any]]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = self.history_path.with_suffix(".partial")
        partial.write_text("".join(map(_history_line, records)))
        partial.replace(self.history_path)
        losses = [_selection_loss(record) for record in records]
        self._best_loss = min(losses, default=math.inf)
        self.best_epoch = losses.index(self._best_loss) + 1 if losses else 0

    def early_stopping_state(self) -> dict[str, float]:
        """The ``EarlyStopping.state()`` of the checkpoint last saved or restored."""
        return {name: variable.numpy().item() for name, variable in self.early_stopping.items()}

    def weights_of(self, epoch: int) -> list[np.ndarray] | None:
        """The weights saved after ``epoch`` (among the newest or as the best), None when
        that checkpoint is not kept; the network is left as it was."""
        for folder in (self.directory, self.directory / BEST_FOLDER):
            path = folder / f"ckpt-{epoch}"
            if path.with_suffix(".index").exists():
                break
        else:
            return None
        current = [w.numpy() for w in self.network.all_weights]
        tf.train.Checkpoint(network=self.network).restore(str(path)).expect_partial()
        weights = [w.numpy() for w in self.network.all_weights]
        for variable, value in zip(self.network.all_weights, current):
            variable.assign(value)
        return weights


def _selection_loss(record: dict[str, Any]) -> float:
    # Validation when the run measures it; never the test set.
    return record.get("val_loss", record["train_loss"])


def _history_line(record: dict[str, Any]) -> str:
    # Step losses are float32: their shortest float32 form reads back to the same value
    # (via np.float32), in about half the characters of a double's.
    losses = [float(str(loss)) for loss in np.asarray(record["step_loss"], np.float32)]
    return json.dumps({**record, "step_loss": losses}) + "\n"
