"""The ``tfnn`` command: runs the flows with flags derived from ``TrainConfig``.

Exit codes: 0 success, 1 the run failed or learned nothing, 2 input refused before any run
started (flags, data, model files, unreachable services), 130 / 143 interrupted by SIGINT /
SIGTERM (the MLflow run KILLED, its checkpoints kept). Errors are one line on stderr;
``--traceback`` shows the full stack.
"""

import argparse
import logging
import os
import re
import sys
import tempfile
from collections.abc import Sequence

from pydantic import ValidationError

from flows import lifetime, timings
from flows.check_data import add_check_data_command, run_check_data
from flows.crons import default_crons, is_valid_cron

EXIT_FAILED, EXIT_USAGE = 1, 2
DEFAULT_EXPERIMENT = "tfnn-mnist"
DASK_ADDRESS_ENV = "TFNN_DASK_ADDRESS"
LIBRARIES = ("tensorflow", "prefect", "mlflow")


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    from tasks.config import TrainConfig

    group = parser.add_argument_group("training configuration (defaults: the notebook's run)")
    for name, field in TrainConfig.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, tuple):
            default = ",".join(map(str, default))
        # Values stay strings here: TrainConfig parses and validates them, naming the field.
        switch = {"nargs": "?", "const": "true"} if field.annotation == bool | None else {}
        group.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            metavar=name.split("_")[-1].upper(),
            help=f"{field.description}" + ("" if default is None else f" (default: {default})"),
            **switch,
        )
    group.add_argument(
        "--data-dir",
        dest="data_source",
        metavar="DIR",
        help="directory holding the four MNIST IDX files (same as --data-source DIR)",
    )


class _Parser(argparse.ArgumentParser):
    """Refuses bad flags in one line, like every other refusal: the usage is one ``--help``
    away (sub-commands' parsers are of this class too)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tfnn", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--traceback", action="store_true", help="show the full traceback on failure"
    )
    parser.add_argument("--version", action="version", version=_versions())
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
    train.add_argument(
        "--takeover",
        action="store_true",
        help="with --resume: take the run over even if its lease says another process still "
        "trains it (use only when that process is dead)",
    )
    train.add_argument(
        "--no-register", action="store_true", help="do not register the model in the registry"
    )
    retrain = commands.add_parser(
        "retrain", help="train a challenger; promote it to champion only if it wins"
    )
    retrain.add_argument(
        "--margin",
        type=_non_negative,
        default=0.0,
        help="validation accuracy the challenger must gain over the champion "
        "(default: 0, a tie keeps)",
    )
    retrain.add_argument(
        "--warm-start", action="store_true", help="start from the champion's weights"
    )
    schedule = commands.add_parser(
        "schedule", help="serve the train and retrain deployments on cron schedules"
    )
    train_cron, retrain_cron = default_crons()
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
    schedule.add_argument(
        "--margin", type=_non_negative, default=0.0, help="the retrain's promotion margin"
    )
    for command in (train, compare, retrain, schedule):
        _add_config_flags(command)
        command.add_argument(
            "--experiment",
            help=f"MLflow experiment name (default: {DEFAULT_EXPERIMENT}; resumed: the run's)",
        )
        command.add_argument("--output-dir", default="outputs", help="local checkpoints and plots")
        command.add_argument("--no-progress", action="store_true", help="no progress bar")
        command.add_argument("--model-name", default="tfnn-mnist", help="registered model name")

    add_check_data_command(commands)  # flows/check_data.py
    predict = commands.add_parser("predict", help="predict digits in PNG or IDX files to a CSV")
    predict.add_argument("--model", default=None, help="MLflow model URI (default: the champion)")
    predict.add_argument(
        "--images", nargs="+", required=True, help="PNG files and/or an IDX image file"
    )
    predict.add_argument("--labels", help="IDX label file: print the accuracy")
    predict.add_argument("--output", default="predictions.csv", help="CSV file to write")
    predict.add_argument(
        "--trust-model",
        action="store_true",
        help="allow a --model that is not a models:/ or runs:/ URI of the tracking server "
        "(a local path, file:, s3:...): loading a model runs its code",
    )
    _add_sweep_command(commands)
    _add_evaluate_command(commands)
    return parser


def _versions() -> str:
    """This package's version and those of the services' libraries, read from their
    metadata: importing them would take seconds."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    libraries = "  ".join(f"{name} {installed(name)}" for name in LIBRARIES)
    return f"tfnn {installed('tfnn')} ({libraries})"


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def _cron(text: str) -> str:
    if not is_valid_cron(text):
        raise argparse.ArgumentTypeError(
            f"invalid cron string {text!r}: use five fields, e.g. '0 2 * * *'"
        )
    return text


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def _add_sweep_command(commands) -> None:
    sweep = commands.add_parser(
        "sweep",
        help="train every configuration of a grid, concurrently or on a Dask cluster",
        description="Configuration flags set fields shared by every run (over the file's "
        "base); the grid and --vary list the values to combine.",
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
        help="without Dask: configurations trained at once in this process (default: 2)",
    )
    sweep.add_argument(
        "--register",
        nargs="?",
        const="tfnn-mnist",
        metavar="NAME",
        help="register the best model under NAME (default: tfnn-mnist)",
    )
    _add_config_flags(sweep)
    sweep.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment name")
    sweep.add_argument("--output-dir", default="outputs", help="local checkpoints and plots")


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


def _evaluate(args: argparse.Namespace) -> list[str]:
    """The test loss and accuracy of a saved network."""
    from common.data_source import load_source
    from tasks.config import default_data_source
    from tasks.preflight import InputError
    from tfnn.preprocessing import preprocess
    from tfnn.serialization import load_network

    network = load_network(args.weights)
    arrays = load_source(args.data_source or default_data_source())
    x, y = preprocess(arrays.test_images, arrays.test_labels)
    shape = (network.input_dim, int(network.layers[-1].w.shape[1]))
    if shape != (x.shape[1], y.shape[1]):
        raise InputError(
            f"{args.weights}: the network maps {shape[0]} inputs to {shape[1]} outputs but "
            f"the data has {x.shape[1]} pixels and {y.shape[1]} classes"
        )
    loss, accuracy = float(network.loss(x, y)), float(network.accuracy(x, y))
    return [f"test_loss={loss:.4f}  test_accuracy={accuracy:.4f}"]


def _config_from(args: argparse.Namespace, recorded: dict[str, str]):
    """The configuration of ``args``: flags given win over ``recorded`` (a resumed run's)."""
    from tasks.config import TrainConfig

    values = {name: getattr(args, name) for name in TrainConfig.model_fields}
    given = {name: value for name, value in values.items() if value is not None}
    return TrainConfig(**{**recorded, **given})


def _checked_config(args: argparse.Namespace, recorded: dict[str, str]):
    """The run's configuration and, for ``compare``, its activations; ``ValidationError`` or
    ``InputError`` for values no run can use."""
    from tasks.config import TrainConfig
    from tasks.preflight import InputError

    config = _config_from(args, recorded)
    activations = ()
    if args.command == "compare":
        activations = tuple(a.strip() for a in args.activations.split(","))
    for name in activations:
        TrainConfig(**{**config.model_dump(), "activation": name})
    if args.command in ("retrain", "schedule") and config.validation_fraction == 0:
        raise InputError(
            "validation_fraction: 0 leaves the retrain nothing to decide on (it never "
            "decides on the test set); use a fraction > 0"
        )
    return config, activations


def _check_inputs(args: argparse.Namespace, config) -> None:
    """Refuse bad data, an unwritable output directory, unreachable services and a run that
    cannot be resumed before any run starts (raises ``InputError`` or ``DataError``)."""
    from tasks import preflight

    preflight.check_data(config)
    preflight.check_output_dir(args.output_dir)
    preflight.check_tracking()
    timings.mark("mlflow_ready")
    lifetime.check_prefect_api()
    if getattr(args, "resume", None):
        preflight.check_resume(args.resume, config, args.experiment, args.takeover)
    elif getattr(args, "takeover", False):
        raise preflight.InputError("--takeover: only with --resume RUN_ID")


def _check_predict(args: argparse.Namespace) -> None:
    """Refuse unreadable images or labels, an unwritable output, an untrusted model URI and
    a model the tracking server does not have before the flow starts."""
    from tasks import preflight

    preflight.check_predict_inputs(args.images, args.labels, args.output)
    from tasks.predict import UntrustedModelError, check_model_uri, is_tracked_model_uri

    if args.model:
        try:
            check_model_uri(args.model, args.trust_model)
        except UntrustedModelError as error:
            raise preflight.InputError(str(error)) from None
    preflight.check_tracking()
    # The command's own server may still be starting: its start-up timeout applies, not the
    # few seconds a configured server gets to answer.
    lifetime.check_prefect_api()
    if not args.model:
        from flows.predict import DEFAULT_MODEL_URI

        args.model = DEFAULT_MODEL_URI
    if is_tracked_model_uri(args.model):
        preflight.check_model(args.model)


# TensorFlow's C++ start-up log: absl writes it before TF_CPP_MIN_LOG_LEVEL applies (the
# missing CUDA driver, the CPU's instruction sets, cuInit's failure on a CPU-only machine).
_TF_STARTUP = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\)"
    r"|[IWE]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\]"
    r"|To enable the following instructions:"
)


def _start_tensorflow_quietly() -> None:
    """Import TensorFlow and initialise its devices with the process's stderr captured, then
    write back whatever is not TensorFlow's C++ start-up log (nothing else is lost)."""
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # the devices' start-up logs here, not mid-run
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.writelines(line for line in lines if not _TF_STARTUP.match(line))


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
    import prefect  # noqa: F401 - sets up its logging: its console handler is on the root logger

    loggers = [logging.getLogger(), *logging.root.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):  # placeholders have none
            handler.addFilter(_NoTracebacks())


def _train(args: argparse.Namespace, config, activations: tuple[str, ...]) -> list[str]:
    from flows.compare import compare_flow
    from flows.train import train_flow

    timings.mark("flow_imported")
    if args.command == "train":
        model_name = None if args.no_register else args.model_name
        show_progress = sys.stderr.isatty() and not args.no_progress
        result = train_flow(
            config,
            args.experiment,
            args.output_dir,
            show_progress=show_progress,
            registered_model_name=model_name,
            resume_run_id=args.resume,
            takeover=args.takeover,
        )
        results = {"": result}
    else:
        results = compare_flow(
            config, activations, args.experiment, args.output_dir, args.model_name
        )
    lines = []
    for name, result in results.items():
        label = f"[{name}] " if name else ""
        metrics = "  ".join(
            f"{key}={value:.4f}"
            for key, value in result.metrics.items()
            if not key.startswith("test_accuracy_class")
        )
        lines.append(f"{label}{metrics}")
        lines.append(f"{label}mlflow run id: {result.run_id}  model: {result.model_uri}")
        if result.model_version:
            lines.append(f"{label}registered: models:/{args.model_name}/{result.model_version}")
    warnings = [f"{r.warning}; not registered" for r in results.values() if r.warning]
    if warnings:
        raise DidNotLearn(lines, warnings)
    return lines


class DidNotLearn(Exception):
    """Runs finished but learned nothing: the command prints its lines, a warning per such
    run, and exits 1."""

    def __init__(self, lines: list[str], warnings: list[str]):
        super().__init__("; ".join(warnings))
        self.lines, self.warnings = lines, warnings


def _retrain(args: argparse.Namespace, config, activations: tuple[str, ...]) -> list[str]:
    from flows.retrain import retrain_flow

    decision = retrain_flow(
        config, args.model_name, args.margin, args.warm_start, args.experiment, args.output_dir
    )
    return [
        f"{decision.action}: {decision.reason}",
        f"champion: models:/{args.model_name}@champion",
    ]


def _schedule(args: argparse.Namespace, config, activations: tuple[str, ...]) -> list[str]:
    from flows.schedules import build_deployments, serve_schedules
    from flows.watch import watch_deployment, watch_timing

    deployments = build_deployments(
        config, args.train_cron, args.retrain_cron, args.model_name, args.margin
    )
    deployments.append(watch_deployment(config.data_source, args.model_name, *watch_timing()))
    serve_schedules(deployments)
    return []


def _predict(args: argparse.Namespace, config, activations: tuple[str, ...]) -> list[str]:
    from flows.predict import DEFAULT_MODEL_URI, predict_flow

    model_uri = args.model or DEFAULT_MODEL_URI
    predictions = predict_flow(args.images, args.output, model_uri, args.labels, args.trust_model)
    lines = [f"{len(predictions.predicted_labels)} predictions by {model_uri} in {args.output}"]
    if predictions.accuracy is not None:
        lines.append(f"accuracy={predictions.accuracy:.4f}")
    return lines


_COMMANDS = {
    "train": _train,
    "compare": _train,
    "retrain": _retrain,
    "schedule": _schedule,
    "predict": _predict,
}
# Commands whose inputs (data, output directory, services) are checked before anything runs.
_CHECKED = {"train", "compare", "retrain", "schedule"}


@lifetime.handles_interrupts
def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:  # the process's own command line: this process is the command
        lifetime.exit_without_finalizing()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    # The ephemeral server's telemetry heartbeat races the flow for its SQLite database
    # and logs "database is locked" tracebacks; a user's own setting still wins.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    args = build_parser().parse_args(argv)
    timings.mark("parsed")
    if args.command == "sweep":
        return _sweep(args)
    if args.command == "check-data":
        return run_check_data(args)
    from tasks import preflight
    from tasks.config import describe_validation_error
    from tfnn.errors import DataError

    config, activations = None, ()
    resume = getattr(args, "resume", None)
    # Flags are refused before Prefect's server starts or TensorFlow loads: a typo costs
    # nothing. A resumed run's configuration needs its MLflow run, so it is checked below.
    try:
        if args.command in _CHECKED and not resume:
            config, activations = _checked_config(args, {})
    except ValidationError as error:
        print(f"tfnn: error: {describe_validation_error(error)}", file=sys.stderr)
        return EXIT_USAGE
    except preflight.InputError as error:
        print(f"tfnn: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_USAGE

    if args.command != "evaluate":  # it starts while the rest imports and checks the input
        lifetime.start_prefect_server()
    _start_tensorflow_quietly()
    timings.mark("tensorflow")
    from tfnn.serialization import ModelFileError

    try:
        if args.command == "evaluate":  # no run to start: all of it is checking files
            print("\n".join(_evaluate(args)))
            return 0
        if args.command in _CHECKED:
            if resume:
                recorded = preflight.resumed_config_fields(resume)
                config, activations = _checked_config(args, recorded)
            _check_inputs(args, config)
            # Only now: a resumed run stays in its own experiment unless another was named.
            args.experiment = args.experiment or DEFAULT_EXPERIMENT
        if args.command == "predict":
            _check_predict(args)
        lifetime.wait_for_prefect_server()
    except ValidationError as error:
        print(f"tfnn: error: {describe_validation_error(error)}", file=sys.stderr)
        return EXIT_USAGE
    except (preflight.InputError, DataError, ModelFileError) as error:
        if args.traceback:
            raise
        print(f"tfnn: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_USAGE

    if not args.traceback:
        _quiet_tracebacks()
    try:
        lines = _COMMANDS[args.command](args, config, activations)
        timings.mark("flow_done")
    except DidNotLearn as flagged:
        print("\n".join(flagged.lines))
        for warning in flagged.warnings:
            print(f"tfnn: warning: {warning}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as error:
        if args.traceback:
            raise
        print(f"tfnn: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_FAILED
    print("\n".join(lines))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from tasks.config import TrainConfig
    from tasks.grid import SweepError, SweepSpec, load_sweep_file
    from tasks.preflight import InputError

    try:
        spec = load_sweep_file(args.grid) if args.grid else SweepSpec()
        base = {name: getattr(args, name) for name in TrainConfig.model_fields}
        grid = {}
        for field, *values in args.vary:
            if not values:
                raise SweepError(f"--vary {field}: give at least one value")
            grid[field] = values
        spec = spec.with_overrides(
            {name: value for name, value in base.items() if value is not None},
            grid,
            args.samples,
            args.max_configurations,
        )
        configurations = spec.configurations()
        unranked = [name for name, c in configurations.items() if c.validation_fraction == 0]
        if unranked:
            raise SweepError(
                f"configuration {unranked[0]}: validation_fraction 0 leaves nothing to rank "
                "on (never the test set); use a fraction > 0"
            )
        lifetime.start_prefect_server()  # only now: a refused grid costs no server
        lifetime.wait_for_prefect_server()
    except (SweepError, InputError) as error:
        print(f"tfnn: error: {error}", file=sys.stderr)
        return EXIT_USAGE

    _start_tensorflow_quietly()
    from flows.sweep import DEFAULT_MAX_CONCURRENCY, sweep_flow, sweep_task_runner

    explicit = args.dask_workers or args.max_concurrency
    runner = sweep_task_runner(
        args.dask_address or (None if explicit else os.environ.get(DASK_ADDRESS_ENV)),
        args.dask_workers,
        args.max_concurrency or DEFAULT_MAX_CONCURRENCY,
    )
    if not args.traceback:
        _quiet_tracebacks()
    print(f"sweep of {len(configurations)} configurations", file=sys.stderr)
    try:
        result = sweep_flow.with_options(task_runner=runner)(
            spec, args.experiment, args.output_dir, args.register
        )
    except Exception as error:
        if args.traceback:
            raise
        print(f"tfnn: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{'rank':>4}  {'val_acc':>8}  {'test_acc':>8}  configuration")
    for row in result.ranking:
        score = (
            f"{row['final_val_accuracy']:>8.4f}  {row['final_test_accuracy']:>8.4f}"
            if row["rank"]
            else f"{'FAILED':>8}  {'':>8}"
        )
        print(f"{row['rank'] or '-':>4}  {score}  {row['configuration']}  {row['error']}")
    print(
        f"mlflow parent run id: {result.parent_run_id}  best run id: {result.ranking[0]['run_id']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
