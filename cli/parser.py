"""The ``tfnn`` command's arguments, generated from ``TrainConfig`` and ``RunOptions``.

Flag values stay strings: the typed configs parse and validate them, naming the field, so
a flag, a flow parameter and a deployment's parameter are checked by the same rules.
Building the parser imports no TensorFlow, MLflow or Prefect.
"""

import argparse
import os
from importlib.metadata import PackageNotFoundError

from croniter import croniter  # the library Prefect's CronSchedule vendors
from pydantic import BaseModel

from cli.check_data import add_check_data_command
from tasks.config import (
    COMPARED_ACTIVATIONS,
    PREDICTIONS_FILE,
    RunOptions,
    TrainConfig,
    installed_version,
)
from tasks.grid import DEFAULT_MAX_CONCURRENCY

SUMMARY = (
    "The ``tfnn`` command: runs the flows with flags derived from ``TrainConfig`` and "
    "``RunOptions``."
)
EXIT_USAGE = 2
DASK_ADDRESS_ENV = "TFNN_DASK_ADDRESS"
LIBRARIES = ("tensorflow", "prefect", "mlflow")
# The run options each command that trains takes (sweep's --register NAME is its own flag).
OPTIONS = {
    "train": (
        "experiment",
        "output_dir",
        "model_name",
        "register_model",
        "progress",
        "resume",
    ),
    "compare": ("experiment", "output_dir", "model_name", "progress"),
    "retrain": ("experiment", "output_dir", "model_name", "progress", "margin", "warm_start"),
    "schedule": ("experiment", "output_dir", "model_name", "progress", "margin"),
    "sweep": ("experiment", "output_dir", "progress"),
}
_METAVARS = {"resume": "RUN_ID", "output_dir": "DIR", "model_name": "NAME"}
_FLAGS = {"register_model": "register"}  # shorter than the field's name: --no-register
TRAIN_CRON_ENV, RETRAIN_CRON_ENV = "TFNN_TRAIN_CRON", "TFNN_RETRAIN_CRON"
# Nightly training at 02:00 and a weekly retrain on Sunday at 03:00 (UTC).
DEFAULT_TRAIN_CRON, DEFAULT_RETRAIN_CRON = "0 2 * * *", "0 3 * * 0"


def given_fields(args: argparse.Namespace, model: type[BaseModel]) -> dict[str, object]:
    """The fields of ``model`` that flags in ``args`` set (flags not given are None)."""
    values = {name: getattr(args, name, None) for name in model.model_fields}
    return {name: value for name, value in values.items() if value is not None}


def _shown(default: object) -> str:
    if isinstance(default, tuple):
        return ",".join(map(str, default))
    return str(default)


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training configuration (defaults: the notebook's run)")
    for name, field in TrainConfig.model_fields.items():
        default = field.get_default(call_default_factory=True)
        switch = {"nargs": "?", "const": "true"} if field.annotation == bool | None else {}
        group.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            metavar=name.split("_")[-1].upper(),
            help=field.description + ("" if default is None else f" (default: {_shown(default)})"),
            **switch,
        )
    group.add_argument(
        "--data-dir",
        dest="data_source",
        metavar="DIR",
        help="directory holding the four MNIST IDX files (same as --data-source DIR)",
    )


def _add_option_flags(parser: argparse.ArgumentParser, names: tuple[str, ...]) -> None:
    group = parser.add_argument_group("run options")
    for name in names:
        field = RunOptions.model_fields[name]
        flag = _FLAGS.get(name, name).replace("_", "-")
        if field.annotation is bool:  # a switch away from the default
            negated = field.default is True
            group.add_argument(
                f"--no-{flag}" if negated else f"--{flag}",
                dest=name,
                action="store_const",
                const=not field.default,
                help=f"do not {field.description}" if negated else field.description,
            )
            continue
        shown = "" if field.default is None else f" (default: {field.default})"
        group.add_argument(
            f"--{flag}",
            dest=name,
            metavar=_METAVARS.get(name, name.upper()),
            help=field.description + shown,
        )


class _Parser(argparse.ArgumentParser):
    """Refuses bad flags in one line, like every other refusal: the usage is one ``--help``
    away (sub-commands' parsers are of this class too)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def _add_output_flags(parser: argparse.ArgumentParser, default) -> None:
    # On the command and on each sub-command, so they go before or after it.
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default,
        help="show Prefect's progress lines (INFO) on stderr too",
    )
    parser.add_argument(
        "--traceback",
        action="store_true",
        default=default,
        help="show the full traceback on failure",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tfnn", description=SUMMARY)
    _add_output_flags(parser, False)
    parser.add_argument("--version", action="version", version=_versions())
    commands = parser.add_subparsers(dest="command", required=True)
    helps = {
        "train": "train one network (the main job)",
        "compare": "train one network per hidden activation",
        "retrain": "train a challenger; promote it to champion only if it wins",
        "schedule": "serve the train and retrain deployments on cron schedules",
        "sweep": "train every configuration of a grid, concurrently or on a Dask cluster",
        "predict": "predict digits in PNG or IDX files to a CSV",
        "evaluate": "measure a saved network on a test set",
    }
    subparsers = {}
    for command, help_text in helps.items():
        subparsers[command] = commands.add_parser(command, help=help_text)
        _add_output_flags(subparsers[command], argparse.SUPPRESS)
        if command in OPTIONS:
            _add_config_flags(subparsers[command])
            _add_option_flags(subparsers[command], OPTIONS[command])
    subparsers["compare"].add_argument(
        "--activations",
        default=",".join(COMPARED_ACTIVATIONS),
        help=f"comma-separated (default: {','.join(COMPARED_ACTIVATIONS)})",
    )
    _add_schedule_flags(subparsers["schedule"])
    _add_sweep_flags(subparsers["sweep"])
    _add_predict_flags(subparsers["predict"])
    _add_evaluate_flags(subparsers["evaluate"])

    _add_output_flags(add_check_data_command(commands), argparse.SUPPRESS)
    return parser


def _versions() -> str:
    """This package's version and those of the services' libraries, read from their
    metadata: importing them would take seconds."""

    def installed(name: str) -> str:
        try:
            return installed_version(name)
        except PackageNotFoundError:
            return "not installed"

    libraries = "  ".join(f"{name} {installed(name)}" for name in LIBRARIES)
    return f"tfnn {installed('tfnn')} ({libraries})"


def _cron(text: str) -> str:
    # Prefect's CronSchedule takes croniter's rules, less its R and H fields.
    fields = text.casefold().split()
    if not croniter.is_valid(text) or "r" in fields or "h" in fields:
        raise argparse.ArgumentTypeError(
            f"invalid cron string {text!r}: use five fields, e.g. '0 2 * * *'"
        )
    return text


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def _add_schedule_flags(schedule: argparse.ArgumentParser) -> None:
    train_cron = os.environ.get(TRAIN_CRON_ENV) or DEFAULT_TRAIN_CRON
    retrain_cron = os.environ.get(RETRAIN_CRON_ENV) or DEFAULT_RETRAIN_CRON
    schedule.add_argument(
        "--train-cron",
        type=_cron,
        default=train_cron,
        help=f"when to train (default: $TFNN_TRAIN_CRON or {train_cron!r})",
    )
    schedule.add_argument(
        "--retrain-cron",
        type=_cron,
        default=retrain_cron,
        help=f"when to retrain (default: $TFNN_RETRAIN_CRON or {retrain_cron!r})",
    )


def _add_sweep_flags(sweep: argparse.ArgumentParser) -> None:
    sweep.description = (
        "Configuration flags set fields shared by every run (over the file's base); the grid "
        "and --vary list the values to combine. Configurations train concurrently, so none "
        "draws a progress bar."
    )
    sweep.add_argument("--grid", metavar="FILE", help="YAML or JSON file with base and grid")
    sweep.add_argument(
        "--vary",
        nargs="+",
        action="append",
        default=[],
        metavar="FIELD VALUE",
        help="a grid field and its values, e.g. --vary learning_rate 0.1 0.01 (repeatable; "
        "replaces that field's values from the file)",
    )
    sweep.add_argument(
        "--samples", type=_positive_int, help="train N configurations drawn from the grid"
    )
    sweep.add_argument(
        "--max-configurations",
        type=_positive_int,
        metavar="N",
        help="train up to N configurations (default: the file's max_configurations, else 1000)",
    )
    where = sweep.add_mutually_exclusive_group()
    where.add_argument(
        "--dask-address",
        metavar="ADDRESS",
        help=f"scheduler of an existing Dask cluster, e.g. tcp://host:8786 "
        f"(default: ${DASK_ADDRESS_ENV})",
    )
    where.add_argument(
        "--dask-workers", type=_positive_int, metavar="N", help="start a local N-process cluster"
    )
    where.add_argument(
        "--max-concurrency",
        type=_positive_int,
        metavar="K",
        help="without Dask: configurations trained at once in this process "
        f"(default: {DEFAULT_MAX_CONCURRENCY})",
    )
    model_name = RunOptions().model_name
    sweep.add_argument(
        "--register",
        nargs="?",
        const=model_name,
        metavar="NAME",
        help=f"register the best model under NAME (default: {model_name})",
    )


def _add_predict_flags(predict: argparse.ArgumentParser) -> None:
    predict.add_argument("--model", default=None, help="MLflow model URI (default: the champion)")
    predict.add_argument(
        "--images", nargs="+", required=True, help="PNG files and/or an IDX image file"
    )
    predict.add_argument("--labels", help="IDX label file: print the accuracy")
    predict.add_argument(
        "--output",
        default=PREDICTIONS_FILE,
        help=f"CSV file to write (default: {PREDICTIONS_FILE})",
    )
    predict.add_argument(
        "--trust-model",
        action="store_true",
        help="allow a --model that is not a models:/ or runs:/ URI of the tracking server "
        "(a local path, file:, s3:...): loading a model runs its code",
    )


def _add_evaluate_flags(evaluate: argparse.ArgumentParser) -> None:
    evaluate.add_argument(
        "--weights",
        required=True,
        metavar="DIR",
        help="directory holding architecture.json and weights.npz (a run's weights/ artifacts)",
    )
    evaluate.add_argument(
        "--data-dir",
        dest="data_source",
        metavar="DIR",
        help="directory holding the four MNIST IDX files (default: $TFNN_DATA_DIR, else tfds)",
    )
