"""Time limits on the steps that can hang on a network (a dataset download, a model upload,
a registry call) and on whole flows, each set by an environment variable in seconds
(``0``: no limit). Read when the tasks are defined, i.e. when the command imports them."""

import math
import os

DATA_TIMEOUT_ENV = "TFNN_DATA_TIMEOUT_SECONDS"
UPLOAD_TIMEOUT_ENV = "TFNN_UPLOAD_TIMEOUT_SECONDS"
REGISTRY_TIMEOUT_ENV = "TFNN_REGISTRY_TIMEOUT_SECONDS"
FLOW_TIMEOUT_ENV = "TFNN_FLOW_TIMEOUT_SECONDS"
# How long a deployment's run waits for its model's slot (flows.train's model_slot).
MODEL_WAIT_ENV = "TFNN_MODEL_WAIT_SECONDS"
DEFAULTS = {
    DATA_TIMEOUT_ENV: 1800.0,  # one attempt at downloading MNIST on a slow line
    UPLOAD_TIMEOUT_ENV: 1800.0,
    REGISTRY_TIMEOUT_ENV: 600.0,
    FLOW_TIMEOUT_ENV: 0.0,  # training time grows with the data: no limit unless asked
    MODEL_WAIT_ENV: 0.0,  # as long as the other run takes
}


def timeout_seconds(env: str) -> float | None:
    """``$env`` (default ``DEFAULTS[env]``) as a Prefect ``timeout_seconds``: None for 0;
    ``ValueError`` naming the variable unless it is a number >= 0."""
    text = os.environ.get(env, "").strip() or str(DEFAULTS[env])
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds < math.inf:
        raise ValueError(f"{env}={text!r}: expected a number of seconds >= 0 (0: no limit)")
    return seconds or None


def check_timeouts() -> None:
    """``ValueError`` naming the first timeout variable that is not a number >= 0."""
    for env in DEFAULTS:
        timeout_seconds(env)
