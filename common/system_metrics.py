"""System metrics (CPU, memory, disk, network, GPU where present) of a run, sampled by
MLflow's own ``SystemMetricsMonitor`` into the run's *System metrics* tab (``system/*``)."""

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from mlflow.exceptions import MlflowException
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

SYSTEM_METRICS_ENV = "TFNN_SYSTEM_METRICS"
_OFF = ("0", "false", "no", "off")
# The monitor announces its start and stop, and warns when the tracking server is away
# (the run's own logging reports that), on stderr through MLflow's handler: a command's
# stderr is for what went wrong.
logging.getLogger("mlflow.system_metrics").setLevel(logging.ERROR)


def system_metrics_enabled() -> bool:
    """On unless ``$TFNN_SYSTEM_METRICS`` is ``0``, ``false``, ``no`` or ``off``."""
    return os.environ.get(SYSTEM_METRICS_ENV, "1").strip().lower() not in _OFF


@contextmanager
def system_metrics(run_id: str, resumed: bool = False) -> Iterator[None]:
    """Sample system metrics into run ``run_id`` while the body runs, every
    ``$MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` seconds (MLflow's setting, default 10);
    a resumed run continues its steps after the last one logged. One sample is logged when
    the body ends, so a run shorter than the interval has its figures too."""
    if not system_metrics_enabled():
        yield
        return
    monitor = SystemMetricsMonitor(run_id, resume_logging=resumed)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()
        # The monitor's loop drops the sample it was collecting when told to stop. Best
        # effort: a tracking outage is reported by the run's own logging, not by this.
        with suppress(MlflowException):
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()
