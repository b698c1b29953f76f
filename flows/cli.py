"""The ``tfnn`` command: runs the flows with flags derived from ``TrainConfig``.

Exit codes: 0 success, 1 the run failed, 2 bad command-line input. Errors are one
line on stderr; ``--traceback`` shows the full stack.
"""

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from pydantic import ValidationError

EXIT_FAILED, EXIT_USAGE = 1, 2


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    from tasks.config import TrainConfig

    group = parser.add_argument_group("training configuration (defaults: the notebook's run)")
    for name, field in TrainConfig.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, tuple):
            default = ",".join(map(str, default))
        # Values stay strings here: TrainConfig parses and validates them, naming the field.
        group.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            metavar=name.split("_")[-1].upper(),
            help=f"{field.description} (default: {default})",
        )
    group.add_argument(
        "--data-dir",
        dest="data_source",
        metavar="DIR",
        help="directory holding the four MNIST IDX files (same as --data-source DIR)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfnn", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--traceback", action="store_true", help="show the full traceback on failure"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train one network (the main job)")
    compare = commands.add_parser("compare", help="train one network per hidden activation")
    compare.add_argument(
        "--activations", default="relu,tanh", help="comma-separated (default: relu,tanh)"
    )
    for command in (train, compare):
        _add_config_flags(command)
        command.add_argument("--experiment", default="tfnn-mnist", help="MLflow experiment name")
        command.add_argument("--output-dir", default="outputs", help="local checkpoints and plots")
        command.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _config_from(args: argparse.Namespace):
    from tasks.config import TrainConfig

    values = {name: getattr(args, name) for name in TrainConfig.model_fields}
    return TrainConfig(**{name: value for name, value in values.items() if value is not None})


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


class _NoTracebacks(logging.Filter):
    """Prefect logs a failed run's traceback; the command prints one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info = record.exc_text = None
        if "Traceback (most recent call last)" in str(record.msg):
            record.msg = str(record.msg).split("\nTraceback", 1)[0]
        return True


def _quiet_tracebacks() -> None:
    for handler in logging.getLogger("prefect").handlers:
        handler.addFilter(_NoTracebacks())


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    # The ephemeral server's telemetry heartbeat races the flow for its SQLite database
    # and logs "database is locked" tracebacks; a user's own setting still wins.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    args = build_parser().parse_args(argv)
    from tasks.config import describe_validation_error

    try:
        config = _config_from(args)
        activations = (
            tuple(a.strip() for a in args.activations.split(","))
            if args.command == "compare"
            else ()
        )
        from tasks.config import TrainConfig

        for name in activations:
            TrainConfig(**{**config.model_dump(), "activation": name})
    except ValidationError as error:
        print(f"tfnn: error: {describe_validation_error(error)}", file=sys.stderr)
        return EXIT_USAGE

    from flows.compare import compare_flow
    from flows.train import train_flow

    if not args.traceback:
        _quiet_tracebacks()
    show_progress = sys.stderr.isatty() and not args.no_progress
    try:
        if args.command == "train":
            results = {
                "": train_flow(
                    config, args.experiment, args.output_dir, show_progress=show_progress
                )
            }
        else:
            results = compare_flow(config, activations, args.experiment, args.output_dir)
    except Exception as error:
        if args.traceback:
            raise
        print(f"tfnn: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_FAILED
    for name, result in results.items():
        label = f"[{name}] " if name else ""
        metrics = "  ".join(
            f"{key}={value:.4f}"
            for key, value in result.metrics.items()
            if not key.startswith("test_accuracy_class")
        )
        print(f"{label}{metrics}")
        print(f"{label}mlflow run id: {result.run_id}  model: {result.model_uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
