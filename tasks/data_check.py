"""Tasks of the data check that training and retraining run: record the data profile, and
name the data change that started a retrain."""

from mlflow.tracking import MlflowClient
from prefect import task
from prefect.cache_policies import NONE

from common.data_profile import PROFILE_ARTIFACT, DataProfile, profile_of
from tfnn.mnist import MnistArrays

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
    """Why a retrain started for data ``checked_digest`` must not train on ``digest``: the
    data changed after the check passed it (the watch checks the new data first)."""
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
