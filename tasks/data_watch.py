"""Tasks of the data watch (fingerprint, check, state in a Prefect Variable, events) and of the
runs that record their data. No TensorFlow import: the watch starts a process every minute."""

import hashlib
import json
import time
from pathlib import Path

from mlflow.tracking import MlflowClient
from prefect import task
from prefect.cache_policies import NONE
from prefect.events import emit_event
from prefect.variables import Variable

from tasks.data_check import CheckResult, check_data
from tasks.data_profile import PROFILE_ARTIFACT, CheckThresholds, DataProfile, profile_of
from tfnn.mnist import MNIST_FILES, MnistArrays

CHANGED_EVENT, REJECTED_EVENT = "tfnn.data.changed", "tfnn.data.rejected"


def resource_id(source: str) -> str:
    return f"tfnn.data.{source}"


def _state_name(source: str) -> str:
    # Variable names allow letters, digits, dashes and underscores only.
    return "tfnn_data_watch_" + hashlib.sha256(source.encode()).hexdigest()[:16]


@task
def source_fingerprint(source: str) -> str:
    """Sha256 hex of the MNIST files' names, sizes and mtimes in ``source``: no file is read."""
    entries = []
    for name in MNIST_FILES:
        for candidate in (f"{name}.gz", name):
            path = Path(source) / candidate
            try:
                stat = path.stat()
            except OSError:
                continue
            entries.append([candidate, stat.st_size, stat.st_mtime_ns])
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


@task(cache_policy=NONE)
def check_new_data(
    source: str, model_name: str, thresholds: CheckThresholds, allow_test_change: bool = False
) -> CheckResult:
    return check_data(source, model_name, thresholds, allow_test_change)


@task
def read_watch_state(source: str) -> dict:
    """What the watch last saw and announced for ``source`` (empty the first time)."""
    return dict(Variable.get(_state_name(source), default=None) or {})


@task
def save_watch_state(source: str, state: dict) -> None:
    """Keep ``state`` for the next watch run on the Prefect server, which outlives processes."""
    Variable.set(_state_name(source), state, overwrite=True)


@task
def announce(source: str, passed: bool, payload: dict) -> str:
    """Emit ``tfnn.data.changed`` (``passed``) or ``tfnn.data.rejected``; returns its id."""
    event = emit_event(
        CHANGED_EVENT if passed else REJECTED_EVENT,
        resource={"prefect.resource.id": resource_id(source), "prefect.resource.name": source},
        payload={**payload, "source": source, "announced_at": time.time()},
    )
    if event is None:
        raise RuntimeError("Prefect did not emit the event: is PREFECT_API_URL a server?")
    return str(event.id)


DATA_EVENT_TAG = "tfnn.data_event"
DATA_DIGEST_TAG = "tfnn.data_event_digest"


@task(cache_policy=NONE)
def record_data_profile(run_id: str, arrays: MnistArrays) -> DataProfile:
    """Log the profile of the data run ``run_id`` trains on as its ``data_profile.json``."""
    profile = profile_of(arrays)
    MlflowClient().log_text(run_id, profile.to_json(), PROFILE_ARTIFACT)
    return profile


@task
def tag_data_event(run_id: str, event_id: str, digest: str | None) -> None:
    """Note on run ``run_id`` the ``tfnn.data.changed`` event that started it."""
    client = MlflowClient()
    client.set_tag(run_id, DATA_EVENT_TAG, event_id)
    if digest:
        client.set_tag(run_id, DATA_DIGEST_TAG, digest)


def changed_since_check(checked_digest: str | None, digest: str) -> str | None:
    """Why a retrain for checked data ``checked_digest`` must not train on ``digest``."""
    if checked_digest and checked_digest != digest:
        return (
            f"the data changed since the check passed digest {checked_digest[:12]} (now "
            f"{digest[:12]}): not trained on unchecked data; the watch will check it"
        )
    return None


def data_change(event_id: str | None, digest: str | None, source: str) -> str | None:
    """The data change a retrain answers, in words; None when no event started it."""
    if not event_id:
        return None
    return f"the data change of `{source}` to digest `{digest}` (event `{event_id}`)"
