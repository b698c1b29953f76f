"""The data check of new data against the champion's recorded profile, digest and validation
accuracy, for ``tfnn check-data`` and the watch; TensorFlow loads only to score a champion."""

from __future__ import annotations

import time
from dataclasses import dataclass

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tasks.config import CHAMPION_ALIAS
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
from tasks.data_source import load_source
from tasks.runs import champion_version
from tfnn.errors import DataError
from tfnn.mnist import MnistArrays
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
