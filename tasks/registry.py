"""Tasks that keep the MLflow model registry: versions, the ``champion`` alias and the
decisions that move it. Every call names its model, version and run explicitly.

A retrain is identified by its *key*: a hash of the training configuration (less the data
path), the data digest, whether it warm-starts and the promotion margin.

Rule for "nothing new": a retrain is skipped when the current champion was itself produced
by a retrain with the same key, or when a version with the same key was already compared
against the current champion. Only a new champion, new data, a new configuration or a new
margin trains again.
"""

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from prefect import task
from prefect.cache_policies import NONE

from tasks.config import CHAMPION_ALIAS, TrainConfig
from tasks.data import PreparedData
from tasks.locking import exclusive_lock
from tasks.runs import champion_version
from tasks.timeouts import REGISTRY_TIMEOUT_ENV, timeout_seconds
from tfnn.metrics import accuracy
from tfnn.serving import predict_in_batches

DECISION_TAG, DECISION_REASON_TAG = "tfnn.decision", "tfnn.decision_reason"
KEY_TAG = "tfnn.retrain_key"
COMPARED_WITH_TAG = "tfnn.compared_with_version"
WARM_START_TAG = "tfnn.warm_start_from"
# The one rule that moves the alias without a comparison: a model with no champion takes
# its first registered version (from train, compare, sweep or retrain alike).
FIRST_CHAMPION = "no champion yet: the first registered version becomes champion"


@dataclass(frozen=True)
class Champion:
    """The version the ``champion`` alias points at, and the run that trained it."""

    version: str
    run_id: str


@dataclass(frozen=True)
class Decision:
    """The outcome of a retrain: ``action`` is ``promoted``, ``kept`` or ``skipped``."""

    model_name: str
    action: str
    reason: str
    key: str
    champion_version: str | None = None
    challenger_version: str | None = None
    # Decided on the validation accuracy; the test accuracy is recorded for information.
    champion_val_accuracy: float | None = None
    challenger_val_accuracy: float | None = None
    champion_test_accuracy: float | None = None
    challenger_test_accuracy: float | None = None
    challenger_run_id: str | None = None

    def tags(self) -> dict[str, str]:
        """The decision as MLflow tags (scores with all their digits)."""
        values = {
            DECISION_TAG: self.action,
            DECISION_REASON_TAG: self.reason,
            "tfnn.champion_val_accuracy": self.champion_val_accuracy,
            "tfnn.challenger_val_accuracy": self.challenger_val_accuracy,
            "tfnn.champion_test_accuracy": self.champion_test_accuracy,
            "tfnn.challenger_test_accuracy": self.challenger_test_accuracy,
            COMPARED_WITH_TAG: self.champion_version or "none",
            KEY_TAG: self.key,
        }
        return {key: str(value) for key, value in values.items() if value is not None}


def retrain_key(config: TrainConfig, data_digest: str, warm_start: bool, margin: float) -> str:
    """Sha256 hex of what a retrain trains from and decides by; the data path is left out,
    its digest counts."""
    params = {k: v for k, v in config.as_params().items() if k != "data_source"}
    text = json.dumps([params, data_digest, warm_start, margin], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def decide(
    champion_accuracy: float | None, challenger_accuracy: float, margin: float
) -> tuple[bool, str]:
    """``(promote, reason)``: promote when there is no champion, or when the challenger is
    strictly better by at least ``margin`` (so a tie never moves the alias)."""
    if champion_accuracy is None:
        return True, FIRST_CHAMPION
    gain = challenger_accuracy - champion_accuracy
    comparison = (
        f"challenger validation accuracy {challenger_accuracy:.4f} vs champion "
        f"{champion_accuracy:.4f} "
        f"(gain {gain:+.4f}, margin {margin:.4f})"
    )
    if gain > 0 and gain >= margin:
        return True, f"{comparison}: the challenger beats the champion by the margin"
    return False, f"{comparison}: the challenger does not beat the champion by the margin"


@task(timeout_seconds=timeout_seconds(REGISTRY_TIMEOUT_ENV))
def register_model(name: str, model_uri: str, run_id: str) -> str:
    """Register the logged model ``models:/<model_id>`` of run ``run_id`` as a new version of
    ``name`` (created if needed), note it on the run (``tfnn.registered_model``); returns the
    version number once it is READY."""
    client = MlflowClient()
    try:
        client.create_registered_model(name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    # A resumed run that had registered before it was stopped keeps that version. Not
    # retried: a retry after a lost reply would make a second version.
    earlier = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    created = (
        earlier[0]
        if earlier
        else client.create_model_version(
            name, model_uri, run_id=run_id, model_id=model_uri.removeprefix("models:/")
        )
    )
    version = client.get_model_version(name, created.version)
    if version.status != "READY":
        raise RuntimeError(f"model {name!r} version {version.version} is {version.status}")
    client.set_tag(run_id, "tfnn.registered_model", f"{name}/{version.version}")
    return str(version.version)


@task(timeout_seconds=timeout_seconds(REGISTRY_TIMEOUT_ENV))
def crown_if_first(name: str, version: str, run_id: str) -> bool:
    """Point ``name``'s ``champion`` alias at ``version`` if the model has no champion yet
    (``FIRST_CHAMPION``), and tag the version and its run with that decision; returns whether
    ``version`` is the champion so (a resumed run's may be already). Under the promotion
    lock, so that of two first versions one wins."""
    client = MlflowClient()
    decision = {DECISION_TAG: "promoted", DECISION_REASON_TAG: FIRST_CHAMPION}
    with promotion_lock():
        now = champion_version(client, name)
        if now is not None and str(now.version) != version:
            return False
        # Tagged before the alias moves: a champion always carries its decision.
        tag_version_and_run(client, name, version, run_id, decision)
        if now is None:
            client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
    return True


@task(timeout_seconds=timeout_seconds(REGISTRY_TIMEOUT_ENV))
def find_champion(name: str) -> Champion | None:
    """The version that ``models:/<name>@champion`` points at, or None when there is none."""
    version = champion_version(MlflowClient(), name)
    return version and Champion(str(version.version), version.run_id)


@task
def already_decided(name: str, key: str, champion: Champion | None) -> str | None:
    """The reason a retrain with ``key`` has nothing new against ``champion``, else None."""
    if champion is None:
        return None
    query = f"name = '{name}' and tags.`{KEY_TAG}` = '{key}'"
    for version in MlflowClient().search_model_versions(query):
        if str(version.version) == champion.version:
            return f"nothing new: champion version {champion.version} came from this retrain"
        if version.tags.get(COMPARED_WITH_TAG) == champion.version:
            return (
                f"nothing new: version {version.version} from this retrain was already "
                f"compared with champion version {champion.version}"
            )
    return None


@task(cache_policy=NONE)
def challenge(
    name: str,
    champion: Champion | None,
    challenger_version: str,
    challenger_run_id: str,
    data: PreparedData,
    margin: float,
    key: str,
) -> Decision:
    """Score champion and challenger, loaded from the registry as they would be served, on
    the same validation examples of the current data (those the challenger was not trained
    on), and decide on them whether the challenger becomes champion; their test accuracy is
    only recorded."""
    if data.validation is None:
        raise ValueError("a retrain decides on validation: set validation_fraction > 0")
    splits = {
        "val": (data.x_val, data.y_val.argmax(axis=1)),
        "test": (data.x_test, data.test_labels),
    }
    scores = {}
    for version in filter(None, (champion and champion.version, challenger_version)):
        uri = f"models:/{name}/{version}"
        model = mlflow.pyfunc.load_model(uri)
        for split, (x, labels) in splits.items():
            predicted = predict_in_batches(model, x).argmax(axis=1)
            scores[version, split] = accuracy(predicted, labels)
    champion_accuracy = {
        split: scores[champion.version, split] if champion else None for split in splits
    }
    promote, reason = decide(champion_accuracy["val"], scores[challenger_version, "val"], margin)
    return Decision(
        model_name=name,
        action="promoted" if promote else "kept",
        reason=reason,
        key=key,
        champion_version=champion.version if champion else None,
        challenger_version=challenger_version,
        champion_val_accuracy=champion_accuracy["val"],
        challenger_val_accuracy=scores[challenger_version, "val"],
        champion_test_accuracy=champion_accuracy["test"],
        challenger_test_accuracy=scores[challenger_version, "test"],
        challenger_run_id=challenger_run_id,
    )


@contextmanager
def promotion_lock() -> Iterator[None]:
    """Held while a promotion reads the champion and moves it. A local SQLite store is locked
    beside its file, so retrains started together on one machine take turns. MLflow has no
    compare-and-set of an alias: against a tracking server the check is made just before the
    move, and the stack's deployments run one training per model at a time."""
    uri = mlflow.get_tracking_uri()
    if not uri.startswith("sqlite:///"):
        yield
        return
    with exclusive_lock(f"{Path(uri.removeprefix('sqlite:///').split('?')[0]).absolute()}.lock"):
        yield


@task(timeout_seconds=timeout_seconds(REGISTRY_TIMEOUT_ENV))
def record_decision(decision: Decision) -> Decision:
    """Tag the challenger's run and version with the decision, then, on promotion, move the
    ``champion`` alias to the (already READY) challenger, compare-and-set: only if it still
    points at the version compared with. If another retrain moved it meanwhile, the
    challenger is kept, and the decision returned says so. The alias moves after the tags,
    so a champion always carries the decision that made it one.

    The retrain key, which makes a repeat a no-op, is written last: a retrain killed before
    the alias moved is not mistaken for one already decided, so its winner is not lost.
    """
    client = MlflowClient()
    where = (client, decision.model_name, decision.challenger_version, decision.challenger_run_id)
    with promotion_lock():
        move = False
        if decision.action == "promoted":
            now = champion_version(client, decision.model_name)
            now = now and str(now.version)
            move = now == decision.champion_version
            if not move and now != decision.challenger_version:  # there: crowned as the first
                decision = replace(
                    decision,
                    action="kept",
                    reason=f"the champion moved to version {now} while this challenger was "
                    f"compared with version {decision.champion_version or 'none'}: kept; "
                    f"retrain again to compare with version {now}",
                )
        tags = decision.tags()
        key = tags.pop(KEY_TAG)
        tag_version_and_run(*where, tags)
        if move:
            client.set_registered_model_alias(
                decision.model_name, CHAMPION_ALIAS, decision.challenger_version
            )
    tag_version_and_run(*where, {KEY_TAG: key})
    return decision


def tag_version_and_run(
    client: MlflowClient, name: str, version: str, run_id: str, tags: dict[str, str]
) -> None:
    """Set ``tags`` on version ``version`` of ``name`` and on its run, one tag at a time in
    order: a process killed midway leaves the earlier ones on both."""
    for tag, value in tags.items():
        client.set_tag(run_id, tag, value)
        client.set_model_version_tag(name, version, tag, value)
