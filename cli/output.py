"""What the command lets reach the terminal: its result lines on stdout; warnings, errors
and (with ``--verbose``) Prefect's INFO lines on stderr; nothing of TensorFlow's C++ start-up
log or MLflow's links."""

import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

# TensorFlow's C++ start-up log: absl writes it before TF_CPP_MIN_LOG_LEVEL applies (the
# missing CUDA driver, the CPU's instruction sets, cuInit's failure on a CPU-only machine).
TF_STARTUP = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\)"
    r"|[IWE]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\]"
    r"|To enable the following instructions:"
)


def set_output_environment(verbose: bool) -> None:
    """Before TensorFlow, MLflow or Prefect is imported: they read these once. A user's own
    settings win, except that ``--verbose`` always shows Prefect's INFO lines."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    # The ephemeral server's telemetry heartbeat races the flow for its SQLite database
    # and logs "database is locked" tracebacks.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if not os.environ.get("PREFECT_API_URL"):
        # The private server collects nothing (above), so Prefect's first-run notice on a
        # terminal that it collects usage data would be untrue.
        os.environ.setdefault("DO_NOT_TRACK", "1")
    # stdout is the command's result: not MLflow's "View run" links.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # Nor MLflow's INFO lines on stderr (against a server, the registry's "Waiting up to
    # 300 seconds for model version to finish creation" on every registration).
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # Off a terminal, MLflow's tqdm bars for artifact downloads (a retrain loading the
    # champion, predict loading its model) would only fill a log with frames.
    if not sys.stderr.isatty():
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # Only the terminal's handler: the API handler still sends every flow-run log line to
    # the Prefect server (and UI).
    if verbose:
        os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = "INFO"
    else:
        # A failed run is told in the one line of the command; Prefect's engine would repeat
        # it in three ERROR records.
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")


def start_tensorflow_quietly() -> None:
    """Import TensorFlow and initialise its devices with the process's stderr captured, then
    write back whatever is not TensorFlow's C++ start-up log (nothing else is lost).

    ``TF_CPP_MIN_LOG_LEVEL`` cannot do it: absl writes those lines before it applies."""
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
            sys.stderr.writelines(line for line in lines if not TF_STARTUP.match(line))


class _NoTracebacks(logging.Filter):
    """Prefect logs a failed run's traceback; the command prints one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info = record.exc_text = None
        if "Traceback (most recent call last)" in str(record.msg):
            record.msg = str(record.msg).split("\nTraceback", 1)[0]
        return True


def quiet_tracebacks() -> None:
    """Keep tracebacks out of every log handler (``--traceback`` shows the command's own)."""
    import prefect  # noqa: F401 - sets up its logging: its console handler is on the root logger

    loggers = [logging.getLogger(), *logging.root.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):  # placeholders have none
            handler.addFilter(_NoTracebacks())
    # Prefect may configure its handlers again later; the run loggers keep their filters.
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addFilter(_NoTracebacks())


class _StepHandler(logging.Handler):
    """Shows on a status line the run's steps as Prefect logs them ending. Each is drawn at
    once: between two refreshes of the spinner, a quick step would be replaced unseen."""

    def __init__(self, spinner, live):
        super().__init__(logging.INFO)
        self.spinner, self.live = spinner, live

    def show(self, text: str) -> None:
        self.spinner.update(text=text)
        self.live.refresh()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.name == "prefect.task_runs" and message.startswith("Finished in state"):
            self.show(f"{getattr(record, 'task_name', 'a step')} done")
        elif record.name == "prefect.task_runs" and message.startswith("epoch "):
            self.show(f"training: {message.split(':', 1)[0]} done")
        elif record.name == "prefect.flow_runs" and message.startswith("Beginning flow run"):
            self.show(f"flow run {getattr(record, 'flow_run_name', '')} started")


class StatusLine:
    """On a terminal, one line on stderr saying what the command is doing while nothing else
    moves: start-up, then each step of the run as it ends (training's bar draws beneath
    it). Nothing when stderr is not a terminal or when not ``enabled``."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()

    def announce(self, text: str) -> None:
        """Show ``text`` (without a spinner) until the first ``showing``: for what comes
        before rich and Prefect are imported, such as TensorFlow's start-up, whose output is
        captured from the file descriptor a spinner would draw on."""
        if self.enabled:
            sys.stderr.write(f"{text}\r")  # the cursor stays on the line, to clear it
            sys.stderr.flush()

    @contextmanager
    def showing(self, text: str) -> Iterator[None]:
        """Show ``text`` (then the steps as they end) for the block."""
        if not self.enabled:
            yield
            return
        sys.stderr.write("\x1b[2K")  # clear what announce wrote (a terminal's control code)
        import prefect  # noqa: F401 - sets up its logging first, which would drop a handler
        import rich
        from rich.live import Live
        from rich.spinner import Spinner

        rich.reconfigure(stderr=True)  # the console the training bar draws on too
        loggers = [logging.getLogger(n) for n in ("prefect.flow_runs", "prefect.task_runs")]
        # What rich's console.status() draws, with a Live of our own to refresh on each step.
        spinner = Spinner("dots", text, style="status.spinner")
        console = rich.get_console()
        with Live(spinner, console=console, refresh_per_second=12.5, transient=True) as live:
            handler = _StepHandler(spinner, live)
            for logger in loggers:
                logger.addHandler(handler)
            try:
                yield
            finally:
                for logger in loggers:
                    logger.removeHandler(handler)
