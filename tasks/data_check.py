"""The data check of new data against the champion's recorded profile, digest and validation
accuracy, for ``tfnn check-data`` and the watch, and the watch's tasks (fingerprint, state in a
Prefect Variable, events). TensorFlow loads only to score a champion: the watch starts a
process every minute."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from prefect import task
from prefect.cache_policies import NONE
from prefect.events import emit_event
from prefect.variables import Variable

from tasks.config import CHAMPION_ALIAS
from tasks.data import load_source
from tasks.data_profile import (
    MAX_PROFILE_BYTES,
    PROFILE_ARTIFACT,
    CheckReport,
    CheckThresholds,
    DataProfile,
    accuracy_reason,
    compare_profiles,
    profile_of,
)
from tasks.runs import champion_version
from tfnn.errors import DataError
from tfnn.mnist import MNIST_FILES, MnistArrays
from tfnn.preprocessing import flatten_and_scale

# Enough examples to see a 5-point accuracy drop (its standard error at 10k is under 0.5
# points) while a 60k set costs one batch of predictions.
MAX_ACCURACY_EXAMPLES = 10_000


@dataclass(frozen=True)
class ChampionRecord:
    """What the champion's run recorded about its data: None where it recorded nothing."""

    version: str
    run_id: str
    digest: str | None
    profile: DataProfile | None
    val_accuracy: float | None


def find_champion_record(model_name: str) -> ChampionRecord | None:
    """The champion of ``model_name`` with its run's data digest, profile and validation
    accuracy; None when there is no champion."""
    client = MlflowClient()
    version = champion_version(client, model_name)
    if version is None:
        return None
    run = client.get_run(version.run_id)
    profile = None
    try:
        text = mlflow.artifacts.load_text(f"runs:/{version.run_id}/{PROFILE_ARTIFACT}")
    except (MlflowException, OSError):
        text = None  # trained before profiles were recorded
    if text is not None and len(text) <= MAX_PROFILE_BYTES:
        profile = DataProfile.from_json(text)
    return ChampionRecord(
        str(version.version),
        version.run_id,
        run.data.params.get("data_digest"),
        profile,
        run.data.metrics.get("val/final_accuracy"),
    )


def champion_accuracy(model_name: str, arrays: MnistArrays) -> float:
    """The champion's accuracy on (at most ``MAX_ACCURACY_EXAMPLES``, evenly spaced) training
    examples of ``arrays``, loaded from the registry as it is served."""
    rows = np.linspace(0, len(arrays.train_labels) - 1, MAX_ACCURACY_EXAMPLES).astype(int)
    rows = np.unique(rows)
    model = mlflow.pyfunc.load_model(f"models:/{model_name}@{CHAMPION_ALIAS}")
    predicted = np.asarray(model.predict(flatten_and_scale(arrays.train_images[rows])))
    return float(np.mean(predicted.argmax(axis=1) == arrays.train_labels[rows]))


@dataclass(frozen=True)
class CheckResult:
    """A check's report, the new data's profile and the champion (None: unreadable / none)."""

    report: CheckReport
    profile: DataProfile | None
    champion: ChampionRecord | None
    seconds: float

    def payload(self) -> dict:
        """The check as an event payload: digest, counts and the report."""
        profile = self.profile
        return {
            "digest": profile.digest if profile else None,
            "train_examples": profile.train.count if profile else None,
            "test_examples": profile.test.count if profile else None,
            "passed": self.report.passed,
            "reasons": list(self.report.reasons),
            "notes": list(self.report.notes),
            "champion_version": self.champion.version if self.champion else None,
        }


def check_data(
    source: str,
    model_name: str,
    thresholds: CheckThresholds = CheckThresholds(),  # noqa: B008 - frozen
    allow_test_change: bool = False,
    arrays: MnistArrays | None = None,
) -> CheckResult:
    """Check the data at ``source`` (or the already loaded ``arrays``) against the champion of
    ``model_name``: malformed files, then ``compare_profiles``, then the champion's accuracy
    on the new training examples."""
    start = time.perf_counter()
    try:
        arrays = arrays or load_source(source)
    except DataError as error:
        report = CheckReport(reasons=(f"malformed data: {error}",))
        return CheckResult(report, None, None, time.perf_counter() - start)
    profile = profile_of(arrays)
    notes = [
        f"{profile.train.count} training and {profile.test.count} test examples, digest "
        f"{profile.digest[:12]}; train pixels mean {profile.train.pixel_mean:.1f} std "
        f"{profile.train.pixel_std:.1f}"
    ]
    champion = find_champion_record(model_name)
    reasons = []
    if champion is None:
        notes.append(f"no champion of {model_name!r}: only the files' format was checked")
    elif champion.digest == profile.digest:  # no rule can fail, and the model need not load
        notes.append(f"the champion (version {champion.version}) was trained on exactly this data")
    else:
        notes.append(f"compared with champion version {champion.version} (run {champion.run_id})")
        if champion.profile is None:
            notes.append("the champion's run recorded no data profile: profile rules skipped")
        else:
            reasons += compare_profiles(profile, champion.profile, thresholds, allow_test_change)
        if champion.val_accuracy is None:
            notes.append("the champion's run recorded no validation accuracy: label rule skipped")
        else:
            accuracy = champion_accuracy(model_name, arrays)
            notes.append(
                f"champion accuracy on the new training examples {accuracy:.4f} "
                f"(recorded validation accuracy {champion.val_accuracy:.4f})"
            )
            reason = accuracy_reason(accuracy, champion.val_accuracy, thresholds)
            reasons += [reason] if reason else []
    report = CheckReport(tuple(reasons), tuple(notes))
    return CheckResult(report, profile, champion, time.perf_counter() - start)


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
