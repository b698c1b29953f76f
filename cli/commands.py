"""One handler per command, each ``handler(args, inputs) -> result lines``: it runs the flow
and words its result. Flows and TensorFlow are imported inside, by the command that uses them.
"""

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

from tasks.config import CLASS_ACCURACY_PREFIX, RunOptions, TrainConfig
from tasks.grid import SweepSpec


@dataclass(frozen=True)
class Inputs:
    """What the flags asked for, typed and validated before anything starts."""

    config: TrainConfig | None = None
    options: RunOptions | None = None
    activations: tuple[str, ...] = ()
    spec: SweepSpec | None = None
    thresholds: object = None  # check-data's CheckThresholds


class DidNotLearn(Exception):
    """Runs finished but learned nothing, or the data check refused the data: the command
    prints its lines, a warning per such run, and exits 1."""

    def __init__(self, lines: list[str], warnings: list[str]):
        super().__init__("; ".join(warnings))
        self.lines, self.warnings = lines, warnings


def _result_lines(results: dict, options: RunOptions) -> list[str]:
    """Each run's final metrics, run id and model (and registered version), labelled by name
    when there are several; ``DidNotLearn`` if any run learned nothing."""
    lines = []
    for name, result in results.items():
        label = f"[{name}] " if name else ""
        metrics = "  ".join(
            f"{key}={value:.4f}"
            for key, value in result.metrics.items()
            if not key.startswith(CLASS_ACCURACY_PREFIX)
        )
        lines.append(f"{label}{metrics}")
        lines.append(f"{label}mlflow run id: {result.run_id}  model: {result.model_uri}")
        if result.model_version:
            lines.append(f"{label}registered: models:/{options.model_name}/{result.model_version}")
        if result.champion:
            lines.append(
                f"{label}champion: models:/{options.model_name}@champion, the first version"
            )
    warnings = [f"{r.warning}; not registered" for r in results.values() if r.warning]
    if warnings:
        raise DidNotLearn(lines, warnings)
    return lines


def train(args: argparse.Namespace, inputs: Inputs) -> list[str]:
    from flows.train import train_flow

    result = train_flow(inputs.config, inputs.options)
    if result.resumed_from:
        print(f"tfnn: warning: run {result.run_id}: {result.resumed_from}", file=sys.stderr)
    return _result_lines({"": result}, inputs.options)


def compare(args: argparse.Namespace, inputs: Inputs) -> list[str]:
    from flows.compare import compare_flow

    results = compare_flow(inputs.config, inputs.activations, inputs.options)
    return _result_lines(results, inputs.options)


def retrain(args: argparse.Namespace, inputs: Inputs) -> list[str]:
    from flows.retrain import retrain_flow

    return decision_lines(retrain_flow(inputs.config, inputs.options))


def decision_lines(decision) -> list[str]:
    """A retrain's result: the decision and why, the challenger's run, version and scores
    beside the champion's (validation decides; test is for information), the champion."""

    def score(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    lines = [f"{decision.action}: {decision.reason}"]
    if decision.challenger_run_id:
        lines.append(
            f"challenger: mlflow run id {decision.challenger_run_id}  version "
            f"{decision.challenger_version or '-'}  val_accuracy "
            f"{score(decision.challenger_val_accuracy)}  test_accuracy "
            f"{score(decision.challenger_test_accuracy)}"
        )
    if decision.champion_val_accuracy is not None:
        lines.append(
            f"champion before: version {decision.champion_version}  val_accuracy "
            f"{score(decision.champion_val_accuracy)}  test_accuracy "
            f"{score(decision.champion_test_accuracy)}"
        )
    return [*lines, f"champion: models:/{decision.model_name}@champion"]


def schedule(args: argparse.Namespace, inputs: Inputs) -> list[str]:
    from flows.schedules import build_deployments, serve_schedules
    from flows.watch import watch_deployment, watch_timing

    deployments = build_deployments(
        inputs.config, args.train_cron, args.retrain_cron, inputs.options
    )
    deployments.append(
        watch_deployment(inputs.config.data_source, inputs.options.model_name, *watch_timing())
    )
    serve_schedules(deployments)
    return []


def sweep(args: argparse.Namespace, inputs: Inputs) -> list[str]:
    import os

    from cli.parser import DASK_ADDRESS_ENV
    from flows.sweep import sweep_flow, sweep_task_runner
    from tasks.grid import DEFAULT_MAX_CONCURRENCY

    explicit = args.dask_workers or args.max_concurrency
    runner = sweep_task_runner(
        args.dask_address or (None if explicit else os.environ.get(DASK_ADDRESS_ENV)),
        args.dask_workers,
        args.max_concurrency or DEFAULT_MAX_CONCURRENCY,
    )
    result = sweep_flow.with_options(task_runner=runner)(inputs.spec, inputs.options)
    lines = [f"{'rank':>4}  {'val_acc':>8}  {'test_acc':>8}  configuration"]
    for row in result.ranking:
        score = (
            f"{row['val_accuracy']:>8.4f}  {row['test_accuracy']:>8.4f}"
            if row["rank"]
            else f"{'FAILED':>8}  {'':>8}"
        )
        lines.append(f"{row['rank'] or '-':>4}  {score}  {row['configuration']}  {row['error']}")
    lines.append(
        f"mlflow parent run id: {result.parent_run_id}  best run id: {result.ranking[0]['run_id']}"
    )
    return lines


def predict(args: argparse.Namespace, inputs: Inputs) -> list[str]:
    from flows.predict import predict_flow

    predictions = predict_flow(args.images, args.output, args.model, args.labels, args.trust_model)
    lines = [f"{len(predictions.predicted_labels)} predictions by {args.model} in {args.output}"]
    if predictions.accuracy is not None:
        lines.append(f"accuracy={predictions.accuracy:.4f}")
    return lines


def evaluate(args: argparse.Namespace, inputs: Inputs) -> list[str]:
    from tasks.config import default_data_source
    from tasks.evaluate import evaluate_saved_network

    loss, accuracy = evaluate_saved_network(args.weights, args.data_source or default_data_source())
    return [f"test_loss={loss:.4f}  test_accuracy={accuracy:.4f}"]


def check_data(args: argparse.Namespace, inputs: Inputs) -> list[str]:
    from cli.check_data import run_check_data

    lines, passed = run_check_data(args, inputs.thresholds)
    if not passed:
        raise DidNotLearn(lines, [])
    return lines


HANDLERS: dict[str, Callable[[argparse.Namespace, Inputs], list[str]]] = {
    "check-data": check_data,
    "train": train,
    "compare": compare,
    "retrain": retrain,
    "schedule": schedule,
    "sweep": sweep,
    "predict": predict,
    "evaluate": evaluate,
}
