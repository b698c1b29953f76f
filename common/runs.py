"""An MLflow run's life: open or reopen it, hold its lease while training, end it
FINISHED, FAILED or KILLED. Runs are always addressed by explicit id (see
``common.mlflow_client``)."""

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from mlflow.entities import Param, Run, RunTag
from mlflow.exceptions import MlflowException

from common.errors import one_line
from common.mlflow_client import RetryingClient, library_versions

ERROR_TAG = "tfnn.error"
# Who holds a run: written only when a process takes the run (starts or reopens it), so
# that a holder's renewal can never overwrite another process's takeover (MLflow has no
# compare-and-set: a renewal is a read, then a write, and a takeover can land in between).
LEASE_TAG = "tfnn.lease"
# When the holder last renewed: its lease id and the time, written every period.
RENEWED_TAG = "tfnn.lease.renewed"
LEASE_SECONDS_ENV = "TFNN_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS = 30.0
# A lease not renewed for this many periods belongs to a process that is gone (or cut off).
LEASE_PERIODS = 3


class ResumeError(ValueError):
    """A run cannot be resumed: it is finished, or was started with other params."""


class LeaseLostError(RuntimeError):
    """Another process took this run over (``--takeover``): this one must stop writing."""


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


# Runs the command checked before starting its flow, with the params and takeover they
# were checked with: reopening one of them reads and checks it no second time.
_checked: dict[str, tuple[Run, dict[str, str], bool]] = {}


def check_run_to_resume(run: Run, config_params: dict[str, str], takeover: bool = False) -> None:
    """``check_resumable`` with this machine's library versions added to ``config_params``
    (``TrainConfig.as_params()``), as ``tracked_run`` will reopen it; a run that passes is
    reopened by this process without being read or checked again."""
    params = {**config_params, **library_versions()}
    check_resumable(run, params, takeover)
    _checked[run.info.run_id] = (run, params, takeover)


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
    renewed = json.loads(run.data.tags.get(RENEWED_TAG, "{}"))
    # A renewal by an earlier holder (written as the run was taken over) does not count.
    if renewed.get("id") == lease.get("id"):
        age = time.time() - renewed["renewed"]
    else:
        age = time.time() - lease.get("taken", lease.get("renewed", 0))
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


class RunLease:
    """The claim of this process on an MLflow run: the ``tfnn.lease`` tag (host, pid, id,
    time taken), renewed every ``period`` seconds in ``tfnn.lease.renewed`` by a daemon
    thread, so that a run whose process died can be told from one still training. If
    another process takes the run over, the thread stops renewing and ``lost`` says so."""

    def __init__(self, run_id: str, period: float):
        self.run_id, self.period = run_id, period
        # One attempt per renewal: the next period is the retry.
        self.client = RetryingClient().once
        self.lease = {"host": socket.gethostname(), "pid": os.getpid(), "id": uuid.uuid4().hex}
        self.lost: str | None = None
        self.client.set_tag(
            run_id, LEASE_TAG, json.dumps({**self.lease, "taken": time.time(), "period": period})
        )
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._keep, name="tfnn-lease", daemon=True)
        self._thread.start()

    def _keep(self) -> None:
        while not self._stopped.wait(self.period):
            try:
                held = json.loads(self.client.get_run(self.run_id).data.tags.get(LEASE_TAG, "{}"))
                if held.get("id", self.lease["id"]) != self.lease["id"]:
                    self.lost = f"pid {held['pid']} on {held['host']} took run {self.run_id} over"
                    return
                renewed = {"id": self.lease["id"], "renewed": time.time()}
                self.client.set_tag(self.run_id, RENEWED_TAG, json.dumps(renewed))
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
    client: RetryingClient,
    run_id: str,
    params: dict[str, str],
    tags: dict[str, str],
    takeover: bool = False,
) -> dict[str, str]:
    """Set a resumable run RUNNING again; returns the params it does not hold yet."""
    checked = _checked.pop(run_id, None)
    if checked is not None and checked[1:] == (params, takeover):
        run = checked[0]
    else:
        run = client.once.get_run(run_id)
        check_resumable(run, params, takeover)
    if ERROR_TAG in run.data.tags:
        client.once.delete_tag(run_id, ERROR_TAG)
    client.once.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])
    client.once.update_run(run_id, status="RUNNING")
    return {key: value for key, value in params.items() if key not in run.data.params}


@contextmanager
def mlflow_run(
    params: dict[str, str],
    experiment: str,
    tags: dict[str, str],
    parent_run_id: str | None = None,
    run_name: str | None = None,
    resume_run_id: str | None = None,
    takeover: bool = False,
    interruptions: tuple[type[BaseException], ...] = (KeyboardInterrupt,),
) -> Iterator[str]:
    """Open an MLflow run tagged ``tags`` holding ``params`` (``TrainConfig.as_params()``) and
    the library versions; yield its id. With ``resume_run_id``, reopen that run instead
    (RUNNING again), refusing if it finished, its params differ, or another live process
    holds its lease (unless ``takeover``). While the body runs, this process holds the run's
    lease.

    The run ends FINISHED only if the body completes; on any exception it ends FAILED
    (KILLED on one of ``interruptions``, noted on the exception) with the reason in the
    ``tfnn.error`` tag, and the exception propagates.
    """
    client = RetryingClient()
    params = {**params, **library_versions()}
    tags = dict(tags)
    if resume_run_id:
        run_id = resume_run_id
        params = _reopen(client, resume_run_id, params, tags, takeover)
    else:
        found = client.once.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.once.create_experiment(experiment)
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run_id = client.once.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
    lease = _leases[run_id] = RunLease(run_id, lease_seconds())
    try:
        client.once.log_batch(run_id, params=[Param(key, value) for key, value in params.items()])
        yield run_id
        check_lease(run_id)
    except BaseException as error:
        lease.close()
        del _leases[run_id]
        if isinstance(error, LeaseLostError):
            raise  # the run is another process's now: leave its state alone
        interrupted = isinstance(error, interruptions)
        # The tracking server may be why the run failed: then the run stays RUNNING there,
        # to be resumed, and the original error is the one worth reporting.
        with suppress(MlflowException):
            client.once.set_tag(
                run_id, ERROR_TAG, "interrupted" if interrupted else one_line(error)
            )
            client.once.set_terminated(run_id, "KILLED" if interrupted else "FAILED")
            if interrupted:  # the command's last line names the runs it killed
                error.add_note(
                    f"MLflow run {run_id} KILLED, continue it with tfnn train --resume {run_id}"
                )
        raise
    lease.close()
    del _leases[run_id]
    client.set_terminated(run_id, "FINISHED")
