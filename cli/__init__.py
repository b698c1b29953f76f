"""The ``tfnn`` command: runs the flows with flags derived from ``TrainConfig`` and ``RunOptions``.

Exit codes: 0 success, 1 the run failed or learned nothing, 2 input refused before any run
started (flags, data, grid, model files, unreachable services), 130 / 143 interrupted by
SIGINT / SIGTERM (the MLflow run KILLED, its checkpoints kept). stdout holds only the
result lines; errors are one line on stderr, ``--traceback`` shows the full stack.
"""

import argparse
import os
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

from cli.commands import HANDLERS, DidNotLearn, Inputs
from cli.output import (
    StatusLine,
    quiet_tracebacks,
    set_output_environment,
    start_tensorflow_quietly,
)
from cli.parser import OPTIONS, build_parser, given_fields

__all__ = ["build_parser", "main"]

EXIT_FAILED, EXIT_USAGE = 1, 2
# Commands whose inputs (data, output directory, services) are checked before anything runs.
_CHECKED = {"train", "compare", "retrain", "schedule"}
# Commands that start no run and need no Prefect: failing is refusing their input.
_STARTS_NO_RUN = {"evaluate"}
_NO_PREFECT = {"evaluate", "check-data"}


def _refusals() -> tuple[type[BaseException], ...]:
    """The errors that mean "bad input, nothing started": exit 2 with one line. Only the
    modules already imported can have raised theirs."""
    from pydantic import ValidationError

    from tasks.config import InputError
    from tfnn.errors import DataError

    kinds = [ValidationError, InputError, DataError]
    if "tfnn.serialization" in sys.modules:  # it imports TensorFlow
        kinds.append(sys.modules["tfnn.serialization"].ModelFileError)
    return tuple(kinds)


def _error_line(error: BaseException) -> str:
    from pydantic import ValidationError

    from tasks.config import describe_validation_error, one_line

    if isinstance(error, ValidationError):
        return f"tfnn: error: {describe_validation_error(error)}"
    return f"tfnn: error: {one_line(error, typed=False)}"


def read_inputs(
    args: argparse.Namespace,
    recorded: dict[str, str] | None = None,
    recorded_options: dict[str, object] | None = None,
) -> Inputs:
    """The flags as typed configs, checked as far as flags alone allow (no service, no
    TensorFlow): ``ValidationError`` or ``InputError`` otherwise. ``recorded``: a resumed
    run's configuration, which flags given override; ``recorded_options``: the run options it
    was started with, which a flag may not change."""
    from tasks.config import InputError, RunOptions, TrainConfig

    if args.command == "check-data":
        from cli.check_data import check_data_inputs

        return Inputs(thresholds=check_data_inputs(args))
    if args.command not in OPTIONS:
        return Inputs()
    given = given_fields(args, RunOptions)
    for name, value in (recorded_options or {}).items():
        if given.setdefault(name, value) != value:
            raise InputError(
                f"--resume {given['resume']}: the run was started with {name} {value!r}, "
                f"not {given[name]!r}; leave out that flag, or start a new run"
            )
    options = RunOptions(**given)
    if args.command == "sweep":
        return _sweep_inputs(args, options)
    if options.resume and recorded is None:  # the configuration is the run's: read it later
        return Inputs(options=options)
    config = TrainConfig(**{**(recorded or {}), **given_fields(args, TrainConfig)})
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
    return Inputs(config, options, activations)


def _sweep_inputs(args: argparse.Namespace, options) -> Inputs:
    from tasks.config import TrainConfig
    from tasks.grid import SweepError, SweepSpec, load_sweep_file

    spec = load_sweep_file(args.grid) if args.grid else SweepSpec()
    grid = {}
    for field, *values in args.vary:
        if not values:
            raise SweepError(f"--vary {field}: give at least one value")
        grid[field] = values
    spec = spec.with_overrides(
        given_fields(args, TrainConfig), grid, args.samples, args.max_configurations
    )
    unranked = [name for name, c in spec.configurations().items() if c.validation_fraction == 0]
    if unranked:
        raise SweepError(
            f"configuration {unranked[0]}: validation_fraction 0 leaves nothing to rank "
            "on (never the test set); use a fraction > 0"
        )
    registered = {"register_model": True, "model_name": args.register} if args.register else {}
    return Inputs(
        options=options.model_copy(update={"register_model": False, **registered}), spec=spec
    )


def check_inputs(
    args: argparse.Namespace, inputs: Inputs, wait_for_server: Callable[[], None] | None = None
) -> Inputs:
    """Refuse bad data, an unwritable output directory, unreachable services, a run that
    cannot be resumed, unreadable images and unknown models before any run starts (raises
    one of ``_refusals()``); a resumed run's configuration is read here."""
    from cli import preflight
    from cli.memory import check_memory

    if args.command in _CHECKED:
        resume, output_dir = inputs.options.resume, inputs.options.output_dir
        if resume:  # the configuration is the run's: read it first
            preflight.check_run_free(resume, output_dir)
            preflight.check_tracking()
            inputs = read_inputs(args, *preflight.check_resume(resume, args.experiment))
            preflight.check_resumed_config(resume, inputs.config)
        preflight.check_data(inputs.config)
        check_memory(inputs.config)
        preflight.check_output_dir(output_dir)
        if not resume:
            preflight.check_tracking()
        if args.command == "retrain":
            preflight.check_champion(inputs.options.model_name)
    if args.command == "predict":
        from flows.predict import DEFAULT_MODEL_URI

        args.model = args.model or DEFAULT_MODEL_URI
        preflight.check_predict(args.images, args.labels, args.output, args.model, args.trust_model)
    if wait_for_server:
        wait_for_server()  # its start-up timeout
    elif args.command not in _NO_PREFECT:
        preflight.check_orchestration()
    return inputs


def _terminate(signum: int, frame) -> None:
    """SIGTERM unwinds the command as Ctrl-C does, through Prefect's ``TerminationSignal``
    (the flow run Crashed, the MLflow run KILLED); Prefect's own handler sends the signal
    again once it has unwound the flow run, which this ignores."""
    from prefect.exceptions import TerminationSignal

    if not isinstance(sys.exc_info()[1], TerminationSignal):
        raise TerminationSignal(signum)


def _interrupt_signal(error: BaseException) -> int | None:
    if isinstance(error, KeyboardInterrupt):
        return signal.SIGINT
    exceptions = sys.modules.get("prefect.exceptions")
    if exceptions is not None and isinstance(error, exceptions.TerminationSignal):
        return error.signal
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; SIGINT and SIGTERM end it with one line naming the runs they killed
    and the exit code 128 + the signal number."""
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        with ExitStack() as services:
            return _main(argv, services)
    except BaseException as error:
        signum = _interrupt_signal(error)
        if signum is None:
            raise
        runs = "; ".join(getattr(error, "__notes__", [])) or "no run was started"
        print(f"tfnn: interrupted by {signal.Signals(signum).name}: {runs}", file=sys.stderr)
        return 128 + signum
    finally:
        signal.signal(signal.SIGTERM, previous)


def check_prefect_home() -> None:
    """``InputError`` unless Prefect can keep its settings and database in ``PREFECT_HOME``
    (default ``~/.prefect``): checked before Prefect is imported, which warns in several lines
    and goes on."""
    from tasks.config import InputError

    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    try:
        home.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=home):
            pass
    except OSError as error:
        raise InputError(
            f"{home}: Prefect cannot keep its settings there ({error.strerror}); set "
            "PREFECT_HOME to a writable directory"
        ) from None


def _main(argv: Sequence[str] | None, services: ExitStack) -> int:
    args = build_parser().parse_args(argv)
    set_output_environment(args.verbose)
    # Flags are refused before Prefect's server starts or TensorFlow loads: a typo costs
    # nothing. A resumed run's configuration needs its MLflow run, so it is checked later.
    try:
        inputs = read_inputs(args)
        check_prefect_home()
    except _refusals() as error:
        print(_error_line(error), file=sys.stderr)
        return EXIT_USAGE
    wait_for_server = None
    if args.command not in _NO_PREFECT:
        from cli.prefect_server import prefect_api

        # it starts while the rest imports and checks the input
        wait_for_server = services.enter_context(prefect_api())
    # On a terminal, a line saying what happens until the bar starts, and after it.
    progress = inputs.options is not None and inputs.options.progress
    status = StatusLine(progress and args.command != "schedule" and not args.verbose)
    status.announce("loading TensorFlow")
    start_tensorflow_quietly()
    import tfnn.serialization  # noqa: F401 - its ModelFileError is a refusal

    try:
        with status.showing("starting Prefect's server, checking the input"):
            inputs = check_inputs(args, inputs, wait_for_server)
    except _refusals() as error:
        if args.traceback:  # the stack too; the exit code stays a refusal's
            traceback.print_exc()
        print(_error_line(error), file=sys.stderr)
        return EXIT_USAGE

    if not args.traceback:
        quiet_tracebacks()
    try:
        with status.showing("loading MLflow and the flow"):
            lines = HANDLERS[args.command](args, inputs)
    except DidNotLearn as flagged:
        print("\n".join(flagged.lines))
        for warning in flagged.warnings:
            print(f"tfnn: warning: {warning}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as error:
        if args.traceback:
            traceback.print_exc()
        print(_error_line(error), file=sys.stderr)
        refused = args.command in _STARTS_NO_RUN and isinstance(error, _refusals())
        return EXIT_USAGE if refused else EXIT_FAILED
    if lines:
        print("\n".join(lines))
    return 0
