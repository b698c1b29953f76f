"""The ``tfnn.fit`` callback that checkpoints each epoch and logs it to MLflow, so that a
crashed run can be resumed."""

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import fields
from pathlib import Path

from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tasks.runs import ResumeError
from tfnn.network import Sequential
from tfnn.serialization import NoIntactCheckpoint, TrainingCheckpoint
from tfnn.training import EarlyStopping, History

# Per-step losses are logged at most this many times an epoch, in the same batch as the
# epoch's metrics, so tracking cost stays flat however many steps an epoch has.
STEP_LOSS_POINTS_PER_EPOCH = 100
KEEP_CHECKPOINTS_ENV = "TFNN_KEEP_CHECKPOINTS"
DEFAULT_KEEP_CHECKPOINTS = 3
CHECKPOINT_PREFIX = "ckpt"  # uploaded checkpoints' fixed file names: ckpt.index, ckpt.data-*
CHECKPOINT_MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 2**20


def mlflow_metric(name: str) -> str:
    """The MLflow name of a ``History`` metric: its split as a prefix (``train_loss`` ->
    ``train/loss``), so that MLflow draws one chart section per split; ``step_loss`` and
    ``epoch_seconds`` are training's (``train/step_loss``)."""
    split, _, rest = name.partition("_")
    return f"{split}/{rest}" if split in ("train", "val", "test") else f"train/{name}"


def keep_checkpoints() -> int:
    """How many of the newest checkpoints a run keeps locally: ``$TFNN_KEEP_CHECKPOINTS``
    (default 3), besides the best epoch's."""
    text = os.environ.get(KEEP_CHECKPOINTS_ENV, str(DEFAULT_KEEP_CHECKPOINTS))
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{KEEP_CHECKPOINTS_ENV}: expected a whole number >= 1, got {text!r}")
    return int(text)


class EpochLogger:
    """A ``tfnn.fit`` callback that records each epoch, so that a crashed run can be resumed.

    After each epoch: write a ``TrainingCheckpoint`` (``tf.train.CheckpointManager`` keeps
    the newest ``TFNN_KEEP_CHECKPOINTS`` and the best), log the epoch's metrics
    (``step=epoch``) with a sample of its step losses in one batch, and upload the checkpoint
    to ``checkpoints/latest/`` (and ``checkpoints/best/`` when it is the best so far),
    overwriting the previous one. Metrics are logged before the upload and synchronously,
    not with MLflow's asynchronous logging: an uploaded checkpoint must never hold epochs
    whose metrics MLflow lacks, since a resume rebuilds their history from those metrics.
    With ``early_stopping`` each checkpoint also holds its state, and ``resume`` restores it
    with the best epoch's weights (from the best checkpoint).

    A crash is recoverable by ``resume``: a local checkpoint may hold epochs whose metrics
    never reached MLflow (they are logged then), and an uploaded checkpoint may lag the
    metrics (those epochs are retrained but not logged again).
    """

    def __init__(
        self,
        run_id: str,
        network: Sequential,
        checkpoint_dir: str | Path,
        steps_per_epoch: int,
        early_stopping: EarlyStopping | None = None,
    ):
        self.client = MlflowClient()
        self.run_id = run_id
        self.network = network
        self.early_stopping = early_stopping
        self.history = History()
        self.logged_epochs = 0
        self.steps_per_epoch = steps_per_epoch
        self.stride = max(1, steps_per_epoch // STEP_LOSS_POINTS_PER_EPOCH)
        self.checkpoint = TrainingCheckpoint(network, checkpoint_dir, keep_checkpoints())
        self.fallback: str | None = None  # set by resume when it skipped a checkpoint

    def __call__(self, epoch: int, metrics: dict[str, float], network: Sequential) -> None:
        record = self.history.epoch_record(epoch, self.steps_per_epoch)
        stopping = self.early_stopping.state() if self.early_stopping else None
        prefix = self.checkpoint.save(epoch, record, stopping)
        try:
            if epoch > self.logged_epochs:
                self._log_metrics(epoch, metrics, record["step_loss"])
            self._upload(epoch, prefix, "latest")
            if self.checkpoint.best_epoch == epoch:
                self._upload(epoch, prefix, "best")
        except MlflowException as error:  # after MLflow's own retries
            raise MlflowException(
                f"{error.message}; the checkpoints are kept in {self.checkpoint.directory}: "
                f"continue with tfnn train --resume {self.run_id}"
            ) from error

    def resume(self) -> int:
        """Load the run's newest checkpoint into the network and ``history`` (from the
        checkpoint directory, else from the run's ``checkpoints/`` artifacts and metrics) and
        log the restored epochs MLflow lacks; returns how many epochs are complete (0: none).
        Unreadable checkpoints are passed over for the newest intact one, local or uploaded,
        and ``fallback`` says which were skipped and which was used."""
        epoch, self.history = self._restore_newest_intact()
        if self.early_stopping and epoch:
            self._resume_early_stopping()
        logged = self.client.get_metric_history(self.run_id, mlflow_metric("train_loss"))
        self.logged_epochs = max((metric.step for metric in logged), default=0)
        for missing in range(self.logged_epochs + 1, epoch + 1):
            first = (missing - 1) * self.steps_per_epoch
            losses = self.history.step_loss[first : first + self.steps_per_epoch]
            self._log_metrics(missing, self.history.epoch_metrics(missing), losses)
        self.logged_epochs = max(self.logged_epochs, epoch)
        if epoch:  # the crash may have come before this checkpoint's upload
            self._upload(epoch, self.checkpoint.manager.latest_checkpoint, "latest")
            best = self.checkpoint.best_manager.latest_checkpoint
            if best:
                self._upload(self.checkpoint.best_epoch, best, "best")
        return epoch

    def _restore_newest_intact(self) -> tuple[int, History]:
        try:
            epoch, history = self.checkpoint.restore_latest()
        except NoIntactCheckpoint:
            epoch, history = 0, History()
        skipped = self.checkpoint.skipped
        if epoch and not skipped:
            return epoch, history
        with tempfile.TemporaryDirectory() as tmp:
            uploaded = self._adopt_uploaded_checkpoint(Path(tmp), newer_than=epoch)
        if uploaded:
            epoch, history = self.checkpoint.restore_latest()
        if skipped and not epoch:
            raise ResumeError(
                f"run {self.run_id}: no intact checkpoint, neither in the artifacts nor in "
                f"{self.checkpoint.directory} ({'; '.join(skipped)}); start a new run"
            )
        if skipped:
            used = "the run's checkpoints/latest artifact" if uploaded else "the newest intact"
            self.fallback = (
                f"checkpoints that cannot be read were skipped: {'; '.join(skipped)}; "
                f"resumed from {used}, after epoch {epoch}"
            )
        return epoch, history

    def _resume_early_stopping(self) -> None:
        state = self.checkpoint.early_stopping_state()
        best, weights = int(state["best_epoch"]), None
        if self.early_stopping.restore_best and best:
            # Kept as the best checkpoint, locally or (adopted from) in the artifacts.
            weights = self.checkpoint.weights_of(best)
            if weights is None:
                raise ResumeError(
                    f"run {self.run_id}: the checkpoint of its best epoch {best} is neither in "
                    f"{self.checkpoint.directory} nor in its artifacts; it cannot restore it"
                )
        self.early_stopping.load_state(state, weights)

    def _log_metrics(self, epoch: int, metrics: dict[str, float], losses: list[float]) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(mlflow_metric(k), value, now, epoch) for k, value in metrics.items()]
        first_step = (epoch - 1) * self.steps_per_epoch
        batch += [
            Metric(mlflow_metric("step_loss"), losses[i], now, first_step + i)
            for i in range(0, len(losses), self.stride)
        ]
        self.client.log_batch(self.run_id, metrics=batch)

    def _upload(self, epoch: int, prefix: str, name: str) -> None:
        """Upload the checkpoint at ``prefix`` to ``checkpoints/<name>/``, over the previous
        one, under fixed file names, so the run's artifacts hold two checkpoints however long
        it trains. The manifest (epoch and digests) goes last: files that match it are one
        complete checkpoint, and a torn upload is detected on download."""
        prefix = Path(prefix)
        with tempfile.TemporaryDirectory() as staging:
            digests = {}
            for path in sorted(prefix.parent.glob(prefix.name + ".*")):
                staged = Path(staging) / (CHECKPOINT_PREFIX + path.name.removeprefix(prefix.name))
                shutil.copyfile(path, staged)
                digests[staged.name] = _sha256(staged)
                self.client.log_artifact(self.run_id, str(staged), f"checkpoints/{name}")
            manifest = Path(staging) / CHECKPOINT_MANIFEST
            manifest.write_text(json.dumps({"epoch": epoch, "sha256": digests}))
            self.client.log_artifact(self.run_id, str(manifest), f"checkpoints/{name}")

    def _download(self, name: str, into: Path) -> tuple[str, int] | None:
        """The uploaded checkpoint ``checkpoints/<name>/`` as ``(local prefix, epoch)``, or
        None when it is absent or torn (its files do not match its manifest)."""
        folder = f"checkpoints/{name}"
        listed = self.client.list_artifacts(self.run_id, folder)
        listed = {Path(f.path).name: f.file_size for f in listed}
        if listed.get(CHECKPOINT_MANIFEST, MAX_MANIFEST_BYTES + 1) > MAX_MANIFEST_BYTES:
            return None
        local = Path(self.client.download_artifacts(self.run_id, folder, str(into / name)))
        manifest = json.loads((local / CHECKPOINT_MANIFEST).read_text())
        for file, digest in manifest["sha256"].items():
            if not (local / file).is_file() or _sha256(local / file) != digest:
                return None
        return str(local / CHECKPOINT_PREFIX), int(manifest["epoch"])

    def _adopt_uploaded_checkpoint(self, tmp: Path, newer_than: int) -> bool:
        """Make the run's uploaded checkpoints the local ones if they hold more than
        ``newer_than`` epochs, with the history of their epochs rebuilt from the run's
        metrics (the step losses: the logged sample); whether it did."""
        best = self._download("best", tmp)
        latest = self._download("latest", tmp) or best
        if latest is None or latest[1] <= newer_than:
            return False
        self.checkpoint.adopt(latest[0], self._records_from_metrics(latest[1]), best and best[0])
        # A new manager, since a manager reads the directory's state once, when made.
        self.checkpoint = TrainingCheckpoint(
            self.network, self.checkpoint.directory, keep_checkpoints()
        )
        return True

    def _records_from_metrics(self, epochs: int) -> list[dict]:
        records = [{"epoch": epoch, "step_loss": []} for epoch in range(1, epochs + 1)]
        for name in (f.name for f in fields(History) if f.name != "step_loss"):
            for metric in self.client.get_metric_history(self.run_id, mlflow_metric(name)):
                if 1 <= metric.step <= epochs:
                    records[metric.step - 1][name] = metric.value
        logged = self.client.get_metric_history(self.run_id, mlflow_metric("step_loss"))
        steps = sorted((m.step, m.value) for m in logged)
        for step, value in steps:
            epoch = step // self.steps_per_epoch + 1
            if epoch <= epochs:
                records[epoch - 1]["step_loss"].append(value)
        return records


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()
