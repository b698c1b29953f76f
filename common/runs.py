"""An MLflow run's life: open or reopen it, end it FINISHED, FAILED or KILLED; and the lock
on its output directory that says a process is training it. Runs are always addressed by
explicit id (see ``common.mlflow_client``)."""

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from mlflow.entities import Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from common.errors import one_line
from common.mlflow_client import library_versions

ERROR_TAG = "tfnn.error"
LOCK_FILE = "run.lock"


class ResumeError(ValueError):
    """A run cannot be resumed: it is finished, was started with other params, or another
    process is training it."""


def check_resumable(run: Run, params: dict[str, str]) -> None:
    """Raise ``ResumeError`` if ``run`` finished or holds a param that differs from ``params``."""
    run_id, held = run.info.run_id, run.data.params
    if run.info.status == "FINISHED":
        raise ResumeError(f"run {run_id} already finished; start a new run instead")
    differ = [f"{k}={held[k]} (now {v})" for k, v in params.items() if held.get(k, v) != v]
    if differ:
        raise ResumeError(
            f"run {run_id} was started with {', '.join(differ)}; "
            "resume it with the same configuration and library versions"
        )


def check_run_to_resume(run: Run, config_params: dict[str, str]) -> None:
    """``check_resumable`` with this machine's library versions added to ``config_params``
    (``TrainConfig.as_params()``), as ``tracked_run`` will reopen it."""
    check_resumable(run, {**config_params, **library_versions()})


@contextmanager
def hold_run_directory(directory: Path) -> Iterator[None]:
    """Hold the lock on a run's output ``directory`` (made if missing) for the block;
    ``ResumeError`` naming the holder if another process holds it. The kernel frees it when
    its holder ends, however it ends, so a killed run can be resumed at once."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK_FILE, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read(32).strip() or "?"
            raise ResumeError(
                f"run {directory.name} is still being trained by process {holder} (it holds "
                f"{(directory / LOCK_FILE).absolute()}); stop it, or wait for it to end"
            ) from None
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        yield


def _reopen(
    client: MlflowClient, run_id: str, params: dict[str, str], tags: dict[str, str]
) -> dict[str, str]:
    """Set a resumable run RUNNING again; returns the params it does not hold yet."""
    run = client.get_run(run_id)
    check_resumable(run, params)
    if ERROR_TAG in run.data.tags:
        client.delete_tag(run_id, ERROR_TAG)
    client.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])
    client.update_run(run_id, status="RUNNING")
    return {key: value for key, value in params.items() if key not in run.data.params}


@contextmanager
def mlflow_run(
    params: dict[str, str],
    experiment: str,
    tags: dict[str, str],
    parent_run_id: str | None = None,
    run_name: str | None = None,
    resume_run_id: str | None = None,
    interruptions: tuple[type[BaseException], ...] = (KeyboardInterrupt,),
) -> Iterator[str]:
    """Open an MLflow run tagged ``tags`` holding ``params`` (``TrainConfig.as_params()``) and
    the library versions; yield its id. With ``resume_run_id``, reopen that run instead
    (RUNNING again), refusing if it finished or its params differ.

    The run ends FINISHED only if the body completes; on any exception it ends FAILED
    (KILLED on one of ``interruptions``, noted on the exception) with the reason in the
    ``tfnn.error`` tag, and the exception propagates.
    """
    client = MlflowClient()
    params = {**params, **library_versions()}
    tags = dict(tags)
    if resume_run_id:
        run_id = resume_run_id
        params = _reopen(client, resume_run_id, params, tags)
    else:
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
    try:
        client.log_batch(run_id, params=[Param(key, value) for key, value in params.items()])
        yield run_id
    except BaseException as error:
        interrupted = isinstance(error, interruptions)
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
    client.set_terminated(run_id, "FINISHED")
