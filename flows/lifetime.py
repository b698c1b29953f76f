"""What the ``tfnn`` command owns while it runs: its private Prefect server and its signals.

Prefect's own ephemeral server is a child in the command's process group: a terminal's
Ctrl-C kills it before the flow can report anything, and SIGTERM or SIGKILL of the command
leave it running. So, with no ``PREFECT_API_URL`` configured, the command starts the same
server itself (``start_prefect_server``), in its own session so that a terminal's signals
reach only the command, dying with the command even on SIGKILL (Linux's parent-death
signal), and stopped when the command's ``main`` returns. It starts as soon as the arguments
are parsed, booting while the input is checked, and is waited for only when needed.

SIGINT and SIGTERM unwind the command (``handles_interrupts``): the MLflow run ends KILLED,
the Prefect flow run Crashed, checkpoints written so far stay, and the command prints one
line and exits 128 + the signal number.

Run as ``python -m flows.lifetime SOCKET_FD PIPE_FD PARENT_PID``, this module is that server.
"""

import atexit
import functools
import logging
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack, suppress
from pathlib import Path

from flows import timings

# The environment Prefect gives its ephemeral server: no UI, ephemeral-mode services.
_SERVER_ENV = {
    "PREFECT_UI_ENABLED": "0",
    "PREFECT__SERVER_EPHEMERAL": "1",
    "PREFECT__SERVER_FINAL": "1",
}
_START_LOCK = "tfnn-server-start.lock"
_STOP_SECONDS = 5.0
_server: "PrefectServer | None" = None
_server_ready = False
_exit_code: int | None = None  # what the command's main returned


class PrefectServer:
    """A Prefect API server process listening on a loopback socket this process bound, so its
    URL is known (and connections queue) before the server has even imported Prefect."""

    def __init__(self) -> None:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        self.url = f"http://127.0.0.1:{listener.getsockname()[1]}/api"
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | _SERVER_ENV
        # The server writes a byte here once it holds the start lock: the start-up timeout
        # counts from then, not while other servers of this Prefect home start.
        self._locked, locked = os.pipe()
        fds = [listener.fileno(), locked]
        with listener:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "flows.lifetime", *map(str, fds), str(os.getpid())],
                pass_fds=fds,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        os.close(locked)
        self.settings = ExitStack()  # this process's Prefect settings while the server runs

    def wait(self, timeout: float) -> None:
        """Return once the server answers its health check; raise ``RuntimeError`` naming its
        database if it exits or stays silent for ``timeout`` seconds."""
        deadline = None
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"Prefect's temporary server exited with code {self.process.returncode} "
                    f"({self._last_log_line()}); its database is {_database()}"
                )
            if deadline is None:
                # Each server holding the lock is bounded by its own command's timeout.
                if select.select([self._locked], [], [], 0.2)[0]:
                    deadline = time.monotonic() + timeout
                continue
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"Prefect's temporary server did not start within {timeout:g} s "
                    "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        """Ask the server to shut down; kill it if it has not within a few seconds."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        os.close(self._locked)

    def _last_log_line(self) -> str:
        """The server's last error (``SomeError: message``), else its last line."""
        self._log.seek(0)
        lines = [line.strip() for line in self._log.read().decode(errors="replace").splitlines()]
        errors = [line for line in lines if re.match(r"[\w.]+(Error|Exception): ", line)]
        return (errors or [line for line in lines if line] or ["no output"])[-1]


def _database() -> str:
    """The Prefect database the server opens (its password hidden)."""
    from flows.prefect_database import database_url

    url = database_url()
    return url.database if url.drivername.startswith("sqlite") else url.render_as_string()


def start_prefect_server() -> None:
    """Start a private Prefect server and point this process (and its children) at it, unless
    a Prefect API is configured already."""
    global _server
    if _server is not None or os.environ.get("PREFECT_API_URL"):
        return
    # Started before this process imports Prefect (seconds) to read its settings: the server
    # boots meanwhile. A URL from a profile or a settings file stops it again at once.
    server = PrefectServer()
    from prefect.settings import get_current_settings

    if get_current_settings().api.url:
        server.stop()
        return
    _server = server
    # The environment reaches threads that Prefect starts outside this context and child
    # processes (Dask workers, `serve`'s flow runs); the settings reach this thread.
    os.environ["PREFECT_API_URL"] = _server.url
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        temporary_settings,
    )

    # No flow-run heartbeats: only a proactive automation acts on them (marks a silent run
    # crashed), which an ephemeral-mode server does not run, and their thread holds every
    # flow's end for up to a second.
    updates = {PREFECT_API_URL: _server.url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    _server.settings.enter_context(temporary_settings(updates=updates))


def stop_prefect_server() -> None:
    """Send Prefect's pending logs and events to the private server, then stop it and point
    this process back where it pointed before."""
    global _server, _server_ready
    if _server is None:
        return
    if "prefect.logging.handlers" in sys.modules:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        for worker in (APILogWorker, EventsWorker):
            worker.drain_all(timeout=_STOP_SECONDS)
    _server.settings.close()
    os.environ.pop("PREFECT_API_URL", None)
    _server.stop()
    _server, _server_ready = None, False


def wait_for_prefect_server() -> None:
    """Wait until the private server (if any) answers; raise ``InputError`` if it cannot."""
    from prefect.settings import get_current_settings

    from common.errors import InputError

    global _server_ready
    if _server is None or _server_ready:
        return
    timeout = get_current_settings().server.ephemeral.startup_timeout_seconds
    try:
        _server.wait(timeout)
    except RuntimeError as error:
        raise InputError(str(error)) from None
    _server_ready = True


def check_prefect_api() -> None:
    """Refuse (``InputError``) a Prefect API that does not answer: the private server gets its
    start-up timeout; a configured one, the preflight's quick health and login checks. The
    private server's own health check is enough: asking it again costs a second."""
    from flows.cli.preflight import check_orchestration

    if _server is not None:
        wait_for_prefect_server()
    else:
        check_orchestration()
    timings.mark("prefect_ready")


def _on_sigterm(signum: int, frame) -> None:
    """Raise Prefect's ``TerminationSignal``, as Prefect's own handler does during a flow run.
    That handler re-sends SIGTERM to the process (to this handler) once it has unwound the
    flow run: that second one is ignored, so the first, which names the killed runs, ends
    the command."""
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


def handles_interrupts(main: Callable[..., int]) -> Callable[..., int]:
    """Make the command ``main`` turn SIGINT and SIGTERM into one line on stderr (naming the
    runs they killed and how to resume them) and the exit code 128 + the signal number, and
    stop the private Prefect server when it returns."""

    @functools.wraps(main)
    def guarded(*args, **kwargs) -> int:
        global _exit_code
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            _exit_code = main(*args, **kwargs)
            return _exit_code
        except BaseException as error:
            signum = _interrupt_signal(error)
            if signum is None:
                raise
            runs = "; ".join(getattr(error, "__notes__", [])) or "no run was started"
            name = signal.Signals(signum).name
            print(f"tfnn: interrupted by {name}: {runs}", file=sys.stderr)
            _exit_code = 128 + signum
            return _exit_code
        finally:
            stop_prefect_server()
            timings.mark("stopped")
            signal.signal(signal.SIGTERM, previous)

    return guarded


def exit_without_finalizing() -> None:
    """Once the command has returned its exit code, Python has joined its threads and run
    every exit handler registered after this call (MLflow's, Prefect's log and event workers'
    drains, temporary directories' clean-up), end the process there: the interpreter's
    finalization, tearing down TensorFlow's and everyone's modules object by object, takes
    seconds and leaves nothing behind that matters. Call it first thing, and only in the
    process the command owns (not when a test calls ``main`` in its own process)."""
    atexit.register(_end_now)


def _end_now() -> None:
    if _exit_code is None:  # an exception escaped main: Python reports it and ends as usual
        return
    logging.shutdown()  # registered before this: it would have run after
    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):  # a closed pipe: nothing more to say
            stream.flush()
    os._exit(_exit_code)


def _die_with_parent(parent: int) -> None:
    # Linux's PR_SET_PDEATHSIG (1): the kernel kills this process when the thread that started
    # it ends, even by SIGKILL. The parent may already be gone by the time this runs.
    import ctypes

    with suppress(OSError, AttributeError):  # not Linux: the parent stops it at exit
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def _build_routes(port: int) -> None:
    """FastAPI builds a router's routes on the first request that reaches it: the command's
    first calls to a fresh server waited most of a second for that. A path that no route
    matches builds them all, now, while the command is still importing TensorFlow."""
    with suppress(OSError):  # the expected 404, or a server already stopping
        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/tfnn-build-routes", timeout=30)


def _serve(fd: int, locked: int, parent: int) -> int:
    """Serve Prefect's API on the listening socket ``fd``. Servers sharing a Prefect home
    start one at a time (then write to the pipe ``locked``): starting migrates the database,
    and concurrent migrations of one SQLite file corrupt it."""
    import fcntl
    import threading

    import uvicorn
    from prefect.settings import get_current_settings

    from flows import prefect_database

    _die_with_parent(parent)
    home = Path(get_current_settings().home)
    home.mkdir(parents=True, exist_ok=True)
    config = uvicorn.Config(
        "prefect.server.api.server:create_app",
        factory=True,
        log_level="error",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    lock = open(home / _START_LOCK, "a")  # noqa: SIM115 - released by another thread
    fcntl.flock(lock, fcntl.LOCK_EX)
    os.write(locked, b"1")
    os.close(locked)
    prefect_database.prepare()  # a new home's database: copied, not migrated again

    def unlock_once_started() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        fcntl.flock(lock, fcntl.LOCK_UN)
        if server.started:
            _build_routes(listening.getsockname()[1])

    listening = socket.socket(fileno=fd)
    threading.Thread(target=unlock_once_started, daemon=True).start()
    server.run(sockets=[listening])
    return 0 if server.started else 3


if __name__ == "__main__":
    sys.exit(_serve(*map(int, sys.argv[1:4])))
