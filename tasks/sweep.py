"""Tasks around a sweep: ready a worker to train one configuration, rank the configurations
on the parent MLflow run and tag it with the best."""

import json
import time
from pathlib import Path
from typing import Any

import mlflow
import tensorflow as tf
from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE
from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE

from tasks.config import TrainConfig
from tasks.grid import SweepSpec
from tasks.reports import ranking_note
from tasks.runs import ERROR_TAG

BEST_TAG_PREFIX = "tfnn.best."
SQLITE_LOCK_TIMEOUT_S = 60
# Every sweep decision is on validation: the test accuracy is only reported.
RANKED_BY = "val/final_accuracy"


def portable_tracking_uri() -> str:
    """The MLflow tracking URI as other processes (Dask workers) should use it: a relative
    SQLite path made absolute, and a longer wait for SQLite's write lock."""
    uri = mlflow.get_tracking_uri()
    if not uri.startswith("sqlite:///"):
        return uri
    if not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    # Several worker processes write one SQLite file; SQLite's default 5 s wait for the
    # write lock can run out under load and fail a run with "database is locked".
    return uri if "?" in uri else uri + f"?timeout={SQLITE_LOCK_TIMEOUT_S}"


def prepare_worker(tracking_uri: str) -> None:
    """Point MLflow at the sweep's store and, on a Dask worker, keep TensorFlow to one thread
    per pool."""
    mlflow.set_tracking_uri(tracking_uri)
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return  # not on a Dask worker: threads of one process share TensorFlow's pool
    # Dask already runs one configuration per worker thread; TensorFlow's default pools (a
    # thread per core for each op, and another per core to run ops side by side) in every
    # worker would oversubscribe the cores. With one of each, two workers on two cores train
    # as fast as one alone (benchmarks/README.md).
    if tf.config.threading.get_intra_op_parallelism_threads() != 1:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(1)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # TensorFlow already ran something in this worker
            get_run_logger().warning("TensorFlow had started on this worker; keeping its threads")


def sweep_params(spec: SweepSpec, configurations: dict[str, TrainConfig]) -> dict[str, str]:
    """The parent run's params: the shared fields, each grid field's values as a JSON list,
    the number of configurations and, when sampled, the sample's seed."""
    shared = next(iter(configurations.values())).as_params()
    params = {**shared, **{field: json.dumps(values) for field, values in spec.grid.items()}}
    params["num_configurations"] = str(len(configurations))
    if spec.samples is not None:
        params["sample_seed"] = str(spec.seed)
    return params


class SweepFailedError(RuntimeError):
    """Every configuration of the sweep failed."""


@task(cache_policy=NONE)
def rank_configurations(
    parent_run_id: str,
    configurations: dict[str, TrainConfig],
    outcomes: dict[str, Any],
    varied: list[str],
) -> list[dict[str, Any]]:
    """Rank by the validation accuracy of each configuration's selected weights, failed ones
    last with their reason; log the table to the parent run (``ranking.json``) and to
    Prefect, and tag the parent with the winner (``tfnn.best.*``, ``val/best_accuracy``, its
    description). Test accuracy is shown, never ranked on. ``outcomes`` maps each name to
    its ``TrainResult`` or the exception it failed with. Returns the rows, best first."""
    client = MlflowClient()
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    children = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'")
    child_by_name = {run.info.run_name: run for run in children}
    failed = [name for name, outcome in outcomes.items() if isinstance(outcome, BaseException)]
    finished = sorted(
        (name for name in outcomes if name not in failed),
        key=lambda name: -outcomes[name].metrics[RANKED_BY],
    )
    rows = []
    for rank, name in enumerate(finished + failed, 1):
        outcome, child = outcomes[name], child_by_name.get(name)
        ok = name in finished
        params = configurations[name].as_params()
        rows.append(
            {
                "rank": rank if ok else None,
                "configuration": name,
                **{field: params[field] for field in varied},
                "status": "FINISHED" if ok else "FAILED",
                "val_accuracy": outcome.metrics[RANKED_BY] if ok else None,
                "best_epoch": outcome.history.best_epoch if ok else None,
                "test_accuracy": outcome.metrics["test/final_accuracy"] if ok else None,
                "test_loss": outcome.metrics["test/final_loss"] if ok else None,
                "run_id": outcome.run_id if ok else (child.info.run_id if child else None),
                # A configuration may fail before its MLflow run exists (say, MLflow unreachable).
                "error": "" if ok else (child.data.tags[ERROR_TAG] if child else repr(outcome)),
            }
        )
    client.log_table(
        parent_run_id, {key: [row[key] for row in rows] for key in rows[0]}, "ranking.json"
    )
    create_table_artifact(
        key="sweep-ranking",
        table=rows,
        description="Configurations by validation accuracy (test accuracy shown, not ranked on)",
    )
    if not finished:
        raise SweepFailedError(f"all {len(outcomes)} configurations failed; see ranking.json")
    _tag_best(client, parent_run_id, rows, configurations[rows[0]["configuration"]], outcomes)
    return rows


def _tag_best(
    client: MlflowClient,
    parent_run_id: str,
    rows: list[dict[str, Any]],
    config: TrainConfig,
    outcomes: dict[str, Any],
) -> None:
    """The parent's ``tfnn.best.*`` tags, best metrics and description, in one request."""
    best = rows[0]
    tags = {
        **config.as_params(),
        "configuration": best["configuration"],
        "run_id": best["run_id"],
        "model_uri": outcomes[best["configuration"]].model_uri,
        "val_accuracy": str(best["val_accuracy"]),
        "best_epoch": str(best["best_epoch"]),
        "test_accuracy": str(best["test_accuracy"]),
    }
    now = int(time.time() * 1000)
    client.log_batch(
        parent_run_id,
        metrics=[
            Metric("val/best_accuracy", best["val_accuracy"], now, 0),
            Metric("test/best_accuracy", best["test_accuracy"], now, 0),
        ],
        tags=[RunTag(BEST_TAG_PREFIX + key, value) for key, value in tags.items()]
        + [RunTag(MLFLOW_RUN_NOTE, ranking_note(rows))],
    )
