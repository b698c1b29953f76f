"""``tfnn check-data``: the data check alone, without Prefect or a run.

Exit codes: 0 the data passes, 1 refused (the report says why), 2 bad input (one line).
The parser imports nothing heavy: ``--help`` and refused flags cost no TensorFlow or MLflow.
"""

import argparse
import os
import sys
from dataclasses import fields

from tasks.config import DATA_DIR_ENV, RunOptions

EXIT_REFUSED, EXIT_USAGE = 1, 2
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


def run_check_data(args: argparse.Namespace) -> int:
    """Check ``args.data_dir``, print the report; the exit code."""
    from pathlib import Path

    from tasks.data_profile import CheckThresholds

    try:
        thresholds = CheckThresholds.from_environment(
            **{f.name: getattr(args, f.name) for f in fields(CheckThresholds)}
        )
    except ValueError as error:
        print(f"tfnn check-data: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if not args.data_dir:
        print(
            f"tfnn check-data: error: no data: pass --data-dir DIR or set ${DATA_DIR_ENV}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if not Path(args.data_dir).is_dir():
        print(
            f"tfnn check-data: error: {args.data_dir}: not a directory; pass the directory "
            "holding the four MNIST IDX files",
            file=sys.stderr,
        )
        return EXIT_USAGE
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # The report is the command's output: no download bars or TensorFlow start-up chatter.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from cli.output import start_tensorflow_quietly
    from tasks.data_watch import check_data

    start_tensorflow_quietly()

    try:
        result = check_data(args.data_dir, args.model_name, thresholds, args.allow_test_change)
    except Exception as error:  # the tracking store or the model: not the data's fault
        if args.traceback:
            raise
        print(f"tfnn check-data: error: {' '.join(str(error).split())}", file=sys.stderr)
        return EXIT_REFUSED
    print("\n".join(result.report.lines()))
    print(f"  checked in {result.seconds:.2f} s")
    return 0 if result.report.passed else EXIT_REFUSED
