"""``tfnn check-data``: the data check alone, without Prefect or a run. Exit codes: 0 the
data passes, 1 refused (the report says why), 2 bad input."""

import argparse
import os
from dataclasses import fields
from pathlib import Path

from tasks.config import DATA_DIR_ENV, RunOptions

DEFAULT_MODEL_NAME = RunOptions().model_name


def add_check_data_command(commands) -> argparse.ArgumentParser:
    """Register ``check-data`` and its flags, one per ``CheckThresholds`` field."""
    from tasks.data_profile import CheckThresholds, env_name

    parser = commands.add_parser(
        "check-data", help="check new data against the champion's before it is trained on"
    )
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        default=os.environ.get(DATA_DIR_ENV),
        help=f"directory holding the four MNIST IDX files (default: ${DATA_DIR_ENV})",
    )
    parser.add_argument(
        "--model-name", default=DEFAULT_MODEL_NAME, help="registered model whose champion to use"
    )
    parser.add_argument(
        "--allow-test-change",
        action="store_true",
        help="accept a changed test split (its scores are then not comparable with the champion's)",
    )
    group = parser.add_argument_group("thresholds")
    for f in fields(CheckThresholds):
        group.add_argument(
            "--" + f.name.replace("_", "-"),
            type=float,
            metavar="X",
            help=f"{f.metadata['help']} (default: ${env_name(f.name)} or {f.default})",
        )
    return parser


def check_data_inputs(args: argparse.Namespace):
    """The thresholds (flags over ``$TFNN_CHECK_*``) and the data directory, checked before
    anything heavy loads; ``InputError`` otherwise."""
    from tasks.config import InputError
    from tasks.data_profile import CheckThresholds

    try:
        thresholds = CheckThresholds.from_environment(
            **{f.name: getattr(args, f.name) for f in fields(CheckThresholds)}
        )
    except ValueError as error:
        raise InputError(str(error)) from None
    if not args.data_dir:
        raise InputError(f"no data: pass --data-dir DIR or set ${DATA_DIR_ENV}")
    if not Path(args.data_dir).is_dir():
        raise InputError(
            f"{args.data_dir}: not a directory; pass the directory holding the four MNIST IDX files"
        )
    return thresholds


def run_check_data(args: argparse.Namespace, thresholds) -> tuple[list[str], bool]:
    """Check ``args.data_dir`` against the champion's data: the report's lines, and whether
    the data passes."""
    from tasks.data_check import check_data

    # The report is the command's output: no download bars.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    result = check_data(args.data_dir, args.model_name, thresholds, args.allow_test_change)
    return [*result.report.lines(), f"  checked in {result.seconds:.2f} s"], result.report.passed
