"""MLflow tracking for a training run, always addressed by explicit run id.

MLflow's "active run" lives in a thread-local, and Prefect runs each task in a
worker thread, so nothing here relies on it: the flow opens the run, passes the
run id to every task, and every call goes through an ``MlflowClient``.

Logging survives tracking-server outages: every call that is safe to repeat goes
through ``RetryingClient``, which retries refused connections and 5xx replies with
backoff for up to ``$TFNN_TRACKING_RETRY_SECONDS`` (default 300).
"""

import hashlib
import json
import math
import os
import platform
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import mlflow
import numpy as np
import tensorflow as tf
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import get_dataset_source_from_json
from mlflow.data.http_dataset_source import HTTPDatasetSource
from mlflow.entities import DatasetInput, InputTag, Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from prefect import get_run_logger, runtime, task
from prefect.cache_policies import NONE
from prefect.exceptions import TerminationSignal

from common.system_metrics import system_metrics
from common.timeouts import UPLOAD_TIMEOUT_ENV, timeout_seconds
from common.versions import installed_version
from tasks.data import PreparedData
from tasks.evaluate import Evaluation
from tasks.links import link_mlflow_run, run_context_tags
from tfnn.network import Sequential
from tfnn.serialization import TrainingCheckpoint, save_network, weights_digest
from tfnn.training import EarlyStopping, History, learning_failure

# MLflow's own retries back off up to two minutes per attempt (about four minutes on a
# refused connection), which would outlast any budget of ours: keep two quick ones and
# let RetryingClient wait, unless the user chose otherwise.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
RETRY_SECONDS_ENV = "TFNN_TRACKING_RETRY_SECONDS"
DEFAULT_RETRY_SECONDS = 300.0
LIBRARIES = ("tensorflow", "numpy", "prefect", "mlflow")
WEIGHTS_TAG = "tfnn.weights_sha256"
T = TypeVar("T")

# Per-step losses are logged at most this many times an epoch, in the same batch as the
# epoch's metrics, so tracking cost stays flat however many steps an epoch has.
STEP_LOSS_POINTS_PER_EPOCH = 100
ERROR_TAG = "tfnn.error"
BEST_EPOCH_TAG = "tfnn.best_epoch"
VALIDATION_RULE = "last validation_fraction of the training split, whatever the seed"
WARNING_TAG = "tfnn.warning"
KEEP_CHECKPOINTS_ENV = "TFNN_KEEP_CHECKPOINTS"
DEFAULT_KEEP_CHECKPOINTS = 3
# Epochs that may wait for the tracking thread: one being tracked and one queued.
MAX_PENDING_EPOCHS = 2
CHECKPOINT_PREFIX = "ckpt"  # uploaded checkpoints' fixed file names: ckpt.index, ckpt.data-*
CHECKPOINT_MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 2**20
LEASE_TAG = "tfnn.lease"
LEASE_SECONDS_ENV = "TFNN_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS = 30.0
# A lease not renewed for this many periods belongs to a process that is gone (or cut off).
LEASE_PERIODS = 3


def one_line(error: BaseException) -> str:
    """``Type: message`` on one line."""
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


class TrackingUnavailableError(ConnectionError):
    """The tracking server kept failing for the whole retry budget."""


class ResumeError(ValueError):
    """A run cannot be resumed: it is finished, or was started with other params."""


def _transient(error: MlflowException) -> bool:
    # MLflow reports a refused connection as INTERNAL_ERROR (HTTP 500), like a 5xx reply.
    status = error.get_http_status_code()
    return status >= 500 or status == 429


def retry_seconds() -> float:
    """``$TFNN_TRACKING_RETRY_SECONDS`` (default 300); ``ValueError`` unless a number >= 0."""
    text = os.environ.get(RETRY_SECONDS_ENV, str(DEFAULT_RETRY_SECONDS))
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds < math.inf:
        raise ValueError(f"{RETRY_SECONDS_ENV}={text!r}: expected a number of seconds >= 0")
    return seconds


def retry_tracking(call: Callable[[], T]) -> T:
    """Run ``call`` (MLflow requests that are safe to repeat), retrying transient failures
    with backoff (0.5 s doubling to 10 s) for up to ``$TFNN_TRACKING_RETRY_SECONDS``."""
    budget = retry_seconds()
    deadline, delay = time.monotonic() + budget, 0.5
    while True:
        try:
            return call()
        except MlflowException as error:
            if not _transient(error):
                raise
            if time.monotonic() + delay > deadline:
                raise TrackingUnavailableError(
                    f"MLflow tracking at {mlflow.get_tracking_uri()} still failing after "
                    f"{budget:g} s ({one_line(error)}); set {RETRY_SECONDS_ENV} to wait longer"
                ) from error
            time.sleep(delay)
            delay = min(2 * delay, 10.0)


class RetryingClient:
    """An ``MlflowClient`` whose every method call goes through ``retry_tracking``: use it for
    logging, never to create runs or experiments (a retry could create two)."""

    def __init__(self) -> None:
        self._client = MlflowClient()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._client, name)
        return lambda *args, **kwargs: retry_tracking(lambda: method(*args, **kwargs))


def library_versions() -> dict[str, str]:
    """The versions a run depends on, as MLflow params ``version.<library>``."""
    versions = {"python": platform.python_version()}
    versions |= {name: installed_version(name) for name in LIBRARIES}
    return {f"version.{name}": value for name, value in versions.items()}


def check_resumable(run: Run, params: dict[str, str], takeover: bool = False) -> None:
    """Raise ``ResumeError`` if ``run`` finished, holds a param that differs from ``params``,
    or is still held by a live process (see ``lease_holder``; ``takeover`` ignores that)."""
    run_id, held = run.info.run_id, run.data.params
    if run.info.status == "FINISHED":
        raise ResumeError(f"run {run_id} already finished; start a new run instead")
    differ = [f"{k}={held[k]} (now {v})" for k, v in params.items() if held.get(k, v) != v]
    if differ:
        raise ResumeError(
            f"run {run_id} was started with {', '.join(differ)}; "
            "resume it with the same configuration and library versions"
        )
    holder = None if takeover else lease_holder(run)
    if holder:
        raise ResumeError(
            f"run {run_id} is still being trained by {holder}; if that process is dead, "
            "wait for its lease to expire or add --takeover"
        )


def lease_seconds() -> float:
    """How often a live run renews its lease: ``$TFNN_LEASE_SECONDS`` (default 30)."""
    return float(os.environ.get(LEASE_SECONDS_ENV, DEFAULT_LEASE_SECONDS))


def lease_holder(run: Run) -> str | None:
    """Who holds ``run``'s lease (``pid P on HOST, renewed S s ago, expires in E s``), or
    None when nobody does: the run is not RUNNING, its lease is older than
    ``LEASE_PERIODS`` renewals, or its holder is a dead process on this host."""
    text = run.data.tags.get(LEASE_TAG)
    if run.info.status != "RUNNING" or not text:
        return None
    lease = json.loads(text)
    age = time.time() - lease["renewed"]
    expires_in = LEASE_PERIODS * lease["period"] - age
    if expires_in <= 0:
        return None
    if lease["host"] == socket.gethostname():
        # Dead, or this very process, whose run ended (failed) without releasing it.
        if not _alive(lease["pid"]):
            return None
        if lease["pid"] == os.getpid() and run.info.run_id not in _leases:
            return None
    return (
        f"pid {lease['pid']} on {lease['host']} (lease renewed {age:.0f} s ago, "
        f"expires in {expires_in:.0f} s)"
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class LeaseLostError(RuntimeError):
    """Another process took this run over (``--takeover``): this one must stop writing."""


class RunLease:
    """The claim of this process on an MLflow run: the ``tfnn.lease`` tag (host, pid, time),
    renewed every ``period`` seconds by a daemon thread, so that a run whose process died
    can be told from one still training. If another process takes the run over, the thread
    stops renewing and ``lost`` says so."""

    def __init__(self, run_id: str, period: float):
        self.run_id, self.period = run_id, period
        self.client = MlflowClient()
        self.lease = {"host": socket.gethostname(), "pid": os.getpid(), "id": uuid.uuid4().hex}
        self.lost: str | None = None
        self._renew()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._keep, name="tfnn-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        lease = {**self.lease, "renewed": time.time(), "period": self.period}
        self.client.set_tag(self.run_id, LEASE_TAG, json.dumps(lease))

    def _keep(self) -> None:
        while not self._stopped.wait(self.period):
            try:
                held = json.loads(self.client.get_run(self.run_id).data.tags.get(LEASE_TAG, "{}"))
                if held.get("id", self.lease["id"]) != self.lease["id"]:
                    self.lost = f"pid {held['pid']} on {held['host']} took run {self.run_id} over"
                    return
                self._renew()
            except Exception:
                # The tracking server is away: the run's own logging reports that, and
                # renewing goes on when it is back.
                pass

    def close(self) -> None:
        self._stopped.set()
        self._thread.join()


_leases: dict[str, RunLease] = {}


def check_lease(run_id: str) -> None:
    """Raise ``LeaseLostError`` if another process took run ``run_id`` over from this one."""
    lease = _leases.get(run_id)
    if lease is not None and lease.lost:
        raise LeaseLostError(f"{lease.lost}; this process stops writing to it")


def _reopen(
    client: MlflowClient,
    run_id: str,
    params: dict[str, str],
    tags: dict[str, str],
    takeover: bool = False,
) -> dict[str, str]:
    """Set a resumable run RUNNING again; returns the params it does not hold yet."""
    run = client.get_run(run_id)
    check_resumable(run, params, takeover)
    if ERROR_TAG in run.data.tags:
        client.delete_tag(run_id, ERROR_TAG)
    client.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])
    client.update_run(run_id, status="RUNNING")
    return {key: value for key, value in params.items() if key not in run.data.params}


@contextmanager
def tracked_run(
    params: dict[str, str],
    experiment: str,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    resume_run_id: str | None = None,
    takeover: bool = False,
) -> Iterator[str]:
    """Open an MLflow run holding ``params`` (``TrainConfig.as_params()``) and the library
    versions; yield its id. With ``resume_run_id``, reopen that run instead (RUNNING again),
    refusing if it finished, its params differ, or another live process holds its lease
    (unless ``takeover``). While the body runs, this process holds the run's lease.

    The run ends FINISHED only if the body completes; on any exception it ends
    FAILED (KILLED on Ctrl-C or SIGTERM, noted on the exception) with the reason in the
    ``tfnn.error`` tag, and the exception propagates so that Prefect marks the flow run
    Failed (Crashed) too.
    """
    client = MlflowClient()
    params = {**params, **library_versions()}
    tags = {
        "prefect.flow_run_id": str(runtime.flow_run.id),
        "prefect.flow_run_name": str(runtime.flow_run.name),
        **run_context_tags(),
    }
    if resume_run_id:
        run_id = resume_run_id
        params = _reopen(client, resume_run_id, params, tags, takeover)
    else:
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
    lease = _leases[run_id] = RunLease(run_id, lease_seconds())
    link_mlflow_run(run_id)
    try:
        client.log_batch(run_id, params=[Param(key, value) for key, value in params.items()])
        with system_metrics(run_id, resumed=resume_run_id is not None):
            yield run_id
        check_lease(run_id)
    except BaseException as error:
        lease.close()
        del _leases[run_id]
        if isinstance(error, LeaseLostError):
            raise  # the run is another process's now: leave its state alone
        # Ctrl-C, or SIGTERM (Prefect turns it into TerminationSignal during a flow run).
        interrupted = isinstance(error, (KeyboardInterrupt, TerminationSignal))
        # The tracking server may be why the run failed: then the run stays RUNNING there,
        # to be resumed, and the original error is the one worth reporting.
        with suppress(MlflowException):
            client.set_tag(run_id, ERROR_TAG, "interrupted" if interrupted else one_line(error))
            client.set_terminated(run_id, "KILLED" if interrupted else "FAILED")
            if interrupted:  # the command's last line names the runs it killed
                error.add_note(
                    f"MLflow run {run_id} KILLED, continue it with tfnn train --resume {run_id}"
                )
        raise
    lease.close()
    del _leases[run_id]
    RetryingClient().set_terminated(run_id, "FINISHED")


def _dataset_source(source: str) -> DatasetSource:
    """MLflow's record of where the data came from: a tfds catalog page or a local directory."""
    scheme, _, name = source.partition(":")
    if scheme == "tfds":
        # MLflow has no resolver for "tfds:NAME" and would raise.
        return HTTPDatasetSource(f"https://www.tensorflow.org/datasets/catalog/{name}")
    # Built by type, not resolved from the string: MLflow registers two resolvers for local
    # paths and warns that the source "can be interpreted in multiple ways".
    return get_dataset_source_from_json(json.dumps({"uri": Path(source).as_uri()}), "local")


@task(cache_policy=NONE)
def log_dataset(run_id: str, data: PreparedData, num_parameters: int) -> None:
    """Record the data source, its digest and the parameter count, and the dataset as an input."""
    client = RetryingClient()
    client.log_batch(
        run_id,
        params=[
            Param("num_parameters", str(num_parameters)),
            Param("data_digest", data.digest),
            Param("num_train_examples", str(len(data.x_train))),
            Param("num_test_examples", str(len(data.x_test))),
            Param("num_validation_examples", str(len(data.x_val))),
            Param("validation_rule", VALIDATION_RULE),
        ],
    )
    inputs = []
    splits = {"training": (data.x_train, data.y_train)}
    if data.validation:
        splits["validation"] = data.validation
    splits["testing"] = (data.x_test, data.y_test)
    for context, (x, y) in splits.items():
        dataset = mlflow.data.from_numpy(
            x, targets=y, source=_dataset_source(data.source), name=f"{data.source}:{context}"
        )
        inputs.append(
            DatasetInput(dataset._to_mlflow_entity(), [InputTag("mlflow.data.context", context)])
        )
    try:
        client.log_inputs(run_id, datasets=inputs)
    except MlflowException as error:
        # MLflow's store looks a dataset up and then inserts it, so two runs logging a new
        # dataset at once (a sweep's configurations) race, and the loser's whole request is
        # refused by the unique constraint. By then the dataset exists: once more links it.
        if "unique constraint" not in str(error).lower():
            raise
        client.log_inputs(run_id, datasets=inputs)


def keep_checkpoints() -> int:
    """How many of the newest checkpoints a run keeps locally: ``$TFNN_KEEP_CHECKPOINTS``
    (default 3), besides the best epoch's."""
    text = os.environ.get(KEEP_CHECKPOINTS_ENV, str(DEFAULT_KEEP_CHECKPOINTS))
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{KEEP_CHECKPOINTS_ENV}: expected a whole number >= 1, got {text!r}")
    return int(text)


class EpochLogger:
    """A ``tfnn.fit`` callback that tracks each epoch without slowing training down.

    After each epoch it snapshots the weights (a fast copy) and the epoch's record, and
    hands them to one background thread, in order: write a ``TrainingCheckpoint`` of the
    snapshot, log the epoch's metrics (``step=epoch``) with a sample of its step losses in
    one batch, and upload the checkpoint to ``checkpoints/latest/`` (and ``checkpoints/best/``
    when it is the best so far), overwriting the previous one. At most
    ``MAX_PENDING_EPOCHS`` epochs wait for that thread: past that, training waits too, so a
    slow tracking server slows training rather than filling memory. Use it as a context
    manager: leaving waits for the queue, so every completed epoch is on disk and in MLflow,
    and re-raises the first tracking error (unless training itself already failed).
    With ``early_stopping`` each checkpoint also holds its state, and ``resume`` restores it
    with the best epoch's weights (from the best checkpoint).

    That order makes a crash recoverable by ``resume``: a local checkpoint may hold
    epochs whose metrics never reached MLflow (they are logged then), and an uploaded
    checkpoint may lag the metrics (those epochs are retrained but not logged again).
    """

    def __init__(
        self,
        run_id: str,
        network: Sequential,
        checkpoint_dir: str | Path,
        steps_per_epoch: int,
        early_stopping: EarlyStopping | None = None,
    ):
        self.client = RetryingClient()
        self.run_id = run_id
        self.network = network
        self.early_stopping = early_stopping
        self.history = History()
        self.logged_epochs = 0
        self.steps_per_epoch = steps_per_epoch
        self.stride = max(1, steps_per_epoch // STEP_LOSS_POINTS_PER_EPOCH)
        # The background thread checkpoints this twin, so training can go on
        # changing the real weights meanwhile.
        self._snapshot = Sequential.from_spec(network.spec())
        self.checkpoint = TrainingCheckpoint(self._snapshot, checkpoint_dir, keep_checkpoints())
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tfnn-tracking")
        self._free_slots = threading.Semaphore(MAX_PENDING_EPOCHS)
        self._pending: list[Future] = []
        self.peak_pending = 0  # the most epochs that ever waited for the background thread
        self._tracking_failed = False

    def __enter__(self) -> "EpochLogger":
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        self._worker.shutdown(wait=True)
        if error_type is None:
            for done in self._pending:
                self._result(done)

    def __call__(self, epoch: int, metrics: dict[str, float], network: Sequential) -> None:
        check_lease(self.run_id)
        self._free_slots.acquire()  # back-pressure: wait while the queue is full
        for done in [future for future in self._pending if future.done()]:
            self._pending.remove(done)
            self._result(done)
        weights = [w.numpy() for w in network.all_weights]
        record = self.history.epoch_record(epoch, self.steps_per_epoch)
        stopping = self.early_stopping.state() if self.early_stopping else None
        future = self._worker.submit(self._log_epoch, epoch, metrics, weights, record, stopping)
        future.add_done_callback(lambda _: self._free_slots.release())
        self._pending.append(future)
        self.peak_pending = max(self.peak_pending, len(self._pending))

    def resume(self) -> int:
        """Load the run's newest checkpoint into the network and ``history`` (from the
        checkpoint directory, else from the run's ``checkpoints/`` artifacts and metrics) and
        log the restored epochs MLflow lacks; returns how many epochs are complete (0: none)."""
        if self.checkpoint.manager.latest_checkpoint is None:
            with tempfile.TemporaryDirectory() as tmp:
                self._adopt_uploaded_checkpoint(Path(tmp))
        epoch, self.history = self.checkpoint.restore_latest()
        for variable, restored in zip(self.network.all_weights, self._snapshot.all_weights):
            variable.assign(restored)
        if self.early_stopping and epoch:
            self._resume_early_stopping()
        logged = self.client.get_metric_history(self.run_id, "train_loss")
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

    def _result(self, done: Future) -> None:
        try:
            done.result()
        except TrackingUnavailableError as error:
            raise TrackingUnavailableError(
                f"{error}; the checkpoints are kept in {self.checkpoint.directory}: "
                f"continue with tfnn train --resume {self.run_id}"
            ) from error

    def _log_epoch(
        self,
        epoch: int,
        metrics: dict[str, float],
        weights: list[np.ndarray],
        record: dict,
        stopping: dict[str, float] | None,
    ) -> None:
        for variable, value in zip(self._snapshot.all_weights, weights):
            variable.assign(value)
        prefix = self.checkpoint.save(epoch, record, stopping)
        # After a tracking failure, epochs still queued are only checkpointed: the failure
        # is reported once, without waiting out the retries again, and resume logs the rest.
        if self._tracking_failed:
            return
        try:
            if epoch > self.logged_epochs:
                self._log_metrics(epoch, metrics, record["step_loss"])
            self._upload(epoch, prefix, "latest")
            if self.checkpoint.best_epoch == epoch:
                self._upload(epoch, prefix, "best")
        except Exception:
            self._tracking_failed = True
            raise

    def _log_metrics(self, epoch: int, metrics: dict[str, float], losses: list[float]) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(name, value, now, epoch) for name, value in metrics.items()]
        first_step = (epoch - 1) * self.steps_per_epoch
        batch += [
            Metric("step_loss", losses[i], now, first_step + i)
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

    def _adopt_uploaded_checkpoint(self, tmp: Path) -> None:
        """Make the run's uploaded checkpoints the local ones, with the history of their
        epochs rebuilt from the run's metrics (the step losses: the logged sample)."""
        best = self._download("best", tmp)
        latest = self._download("latest", tmp) or best
        if latest is None:
            return
        self.checkpoint.adopt(latest[0], self._records_from_metrics(latest[1]), best and best[0])
        # A new manager, since a manager reads the directory's state once, when made.
        self.checkpoint = TrainingCheckpoint(
            self._snapshot, self.checkpoint.directory, keep_checkpoints()
        )

    def _records_from_metrics(self, epochs: int) -> list[dict]:
        records = [{"epoch": epoch, "step_loss": []} for epoch in range(1, epochs + 1)]
        for name in (f.name for f in fields(History) if f.name != "step_loss"):
            for metric in self.client.get_metric_history(self.run_id, name):
                if 1 <= metric.step <= epochs:
                    records[metric.step - 1][name] = metric.value
        steps = sorted(
            (m.step, m.value) for m in self.client.get_metric_history(self.run_id, "step_loss")
        )
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


@task(cache_policy=NONE)
def flag_if_not_learning(run_id: str, history: History, data: PreparedData) -> str | None:
    """If the run learned nothing (``tfnn.training.learning_failure``, chance being the share
    of the commonest training class), tag it ``tfnn.warning`` and log a warning; returns
    the reason, or None."""
    chance = float(np.max(np.mean(data.y_train, axis=0)))
    reason = learning_failure(history, chance)
    if reason is not None:
        reason = f"run {run_id} did not learn: {reason}"
        RetryingClient().set_tag(run_id, WARNING_TAG, reason)
        get_run_logger().warning(reason)
    return reason


@task(cache_policy=NONE, timeout_seconds=timeout_seconds(UPLOAD_TIMEOUT_ENV))
def log_trained_model(
    run_id: str, network: Sequential, data: PreparedData, best_epoch: int | None = None
) -> str:
    """Log the final weights (architecture JSON + npz) and an MLflow tensorflow model with a
    signature and an input example, and tag the run with ``weights_digest`` and the epoch of
    lowest ``val_loss`` (``tfnn.best_epoch``); returns the model's URI."""
    client = RetryingClient()
    with tempfile.TemporaryDirectory() as tmp:
        client.log_artifacts(run_id, str(save_network(network, tmp)), "weights")
    client.set_tag(run_id, WEIGHTS_TAG, weights_digest(network))
    if best_epoch is not None:
        client.set_tag(run_id, BEST_EPOCH_TAG, str(best_epoch))
    example = data.x_test[:5]
    info = retry_tracking(
        lambda: mlflow.tensorflow.log_model(
            network,
            name="model",
            run_id=run_id,
            signature=infer_signature(example, network.predict(example).numpy()),
            input_example=example,
            pip_requirements=[f"tensorflow=={tf.__version__}", f"numpy=={np.__version__}"],
        )
    )
    return info.model_uri


@task(cache_policy=NONE)
def log_evaluation(run_id: str, evaluation: Evaluation, plot_paths: list[str]) -> None:
    """Log the final test metrics (those a resumed run does not hold yet), the confusion
    matrix and the plots."""
    client = RetryingClient()
    held = client.get_run(run_id).data.metrics
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, now, 0) for k, v in evaluation.metrics().items() if k not in held],
    )
    client.log_dict(
        run_id,
        {"rows_true_columns_predicted": evaluation.confusion.tolist()},
        "confusion_matrix.json",
    )
    for path in plot_paths:
        client.log_artifact(run_id, path, "plots")


@task
def log_artifact(run_id: str, path: str, artifact_path: str | None = None) -> None:
    """Upload one local file to the run's artifacts."""
    RetryingClient().log_artifact(run_id, path, artifact_path)
