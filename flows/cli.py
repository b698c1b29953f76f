"""The ``tfnn`` command: runs the flows with flags derived from ``TrainConfig``.

Exit codes: 0 success, 1 the run failed, 2 input refused before any run started (flags,
data, model files, unreachable services). Errors are one line on stderr; ``--traceback``
shows the full stack.
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
    train.add_argument(
        "--resume",
        metavar="RUN_ID",
        help="continue this MLflow run from its newest checkpoint (configuration: the run's)",
    )
    for command in (train, compare):
        _add_config_flags(command)
        command.add_argument("--experiment", default="tfnn-mnist", help="MLflow experiment name")
        command.add_argument("--output-dir", default="outputs", help="local checkpoints and plots")
        command.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_evaluate_command(commands)
    return parser


def _add_evaluate_command(commands) -> None:
    evaluate = commands.add_parser("evaluate", help="measure a saved network on a test set")
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


def _evaluate(args: argparse.Namespace) -> None:
    """Print the test loss and accuracy of a saved network."""
    from tasks.config import default_data_source
    from tasks.preflight import InputError
    from tfnn.data import load_dataset, preprocess
    from tfnn.serialization import load_network

    network = load_network(args.weights)
    arrays = load_dataset(args.data_source or default_data_source())
    x, y = preprocess(arrays.test_images, arrays.test_labels)
    shape = (network.input_dim, int(network.layers[-1].w.shape[1]))
    if shape != (x.shape[1], y.shape[1]):
        raise InputError(
            f"{args.weights}: the network maps {shape[0]} inputs to {shape[1]} outputs but "
            f"the data has {x.shape[1]} pixels and {y.shape[1]} classes"
        )
    loss, accuracy = float(network.loss(x, y)), float(network.accuracy(x, y))
    print(f"test_loss={loss:.4f}  test_accuracy={accuracy:.4f}")


def _config_from(args: argparse.Namespace, recorded: dict[str, str]):
    """The configuration of ``args``: flags given win over ``recorded`` (a resumed run's)."""
    from tasks.config import TrainConfig

    values = {name: getattr(args, name) for name in TrainConfig.model_fields}
    given = {name: value for name, value in values.items() if value is not None}
    return TrainConfig(**{**recorded, **given})


def _check_inputs(args: argparse.Namespace, config) -> None:
    """Refuse bad data, an unwritable output directory, unreachable services and a run that
    cannot be resumed before any run starts (raises ``InputError`` or ``DataError``)."""
    from tasks import preflight

    preflight.check_data(config)
    preflight.check_output_dir(args.output_dir)
    preflight.check_tracking()
    preflight.check_orchestration()
    if getattr(args, "resume", None):
        preflight.check_resume(args.resume, config)


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
    args = build_parser().parse_args(argv)
    from tasks import preflight
    from tasks.config import describe_validation_error
    from tfnn.data import DataError
    from tfnn.serialization import ModelFileError

    try:
        if args.command == "evaluate":
            _evaluate(args)
            return 0
        resume = getattr(args, "resume", None)
        config = _config_from(args, preflight.resumed_config_fields(resume) if resume else {})
        activations = (
            tuple(a.strip() for a in args.activations.split(","))
            if args.command == "compare"
            else ()
        )
        from tasks.config import TrainConfig

        for name in activations:
            TrainConfig(**{**config.model_dump(), "activation": name})
        _check_inputs(args, config)
    except ValidationError as error:
        print(f"tfnn: error: {describe_validation_error(error)}", file=sys.stderr)
        return EXIT_USAGE
    except (preflight.InputError, DataError, ModelFileError) as error:
        if args.traceback:
            raise
        print(f"tfnn: error: {_one_line(error)}", file=sys.stderr)
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
                    config,
                    args.experiment,
                    args.output_dir,
                    show_progress=show_progress,
                    resume_run_id=resume,
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
