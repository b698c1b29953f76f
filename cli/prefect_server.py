"""The command's temporary Prefect server, when no Prefect API is configured.

Prefect's own temporary server (``prefect.server.api.server.SubprocessASGIServer``) runs the
same app, but in the command's process group, so a terminal's Ctrl-C stops it before the
flow run can be marked Crashed, and a killed command leaves it running. This one runs in a
session of its own and reads a pipe from the command: when the command ends, however it
ends, the pipe closes and the server stops.
"""

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

from cli.locking import exclusive_lock
from tasks.config import InputError

# The server: Prefect's API app under uvicorn, as Prefect's temporary server runs it, and a
# thread that asks it to stop (SIGTERM, uvicorn's graceful exit) once its stdin closes.
_SERVER = """
import os, signal, sys, threading
def watch():
    sys.stdin.buffer.read()
    os.kill(os.getpid(), signal.SIGTERM)
threading.Thread(target=watch, daemon=True).start()
import uvicorn
uvicorn.run("prefect.server.api.server:create_app", factory=True, host="127.0.0.1",
            port=int(sys.argv[1]), log_level="error", lifespan="on")
"""
# Its log goes to a file, whose last error a failed start is reported by: keep its errors in
# it, whatever the command's own console shows.
_ENV = {
    "PREFECT_UI_ENABLED": "0",
    "PREFECT__SERVER_EPHEMERAL": "1",
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
}
_STOP_SECONDS = 5


class PrefectServer:
    """A Prefect API server on a free loopback port; ``url`` is its API address."""

    def __init__(self) -> None:

        settings = get_current_settings()
        self.timeout = settings.server.ephemeral.startup_timeout_seconds
        home = Path(settings.home)
        home.mkdir(parents=True, exist_ok=True)
        # A new home's first server migrates its SQLite database: two at once would break it.
        self._lock = ExitStack()
        self._lock.enter_context(exclusive_lock(home / "tfnn-server-start.lock"))
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}/api"
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | _ENV
        self.process = subprocess.Popen(
            [sys.executable, "-c", _SERVER, str(port)],
            stdin=subprocess.PIPE,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    def wait(self) -> None:
        """Return once the server answers; ``InputError`` if it exits or stays silent for
        ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``."""
        deadline = time.monotonic() + self.timeout
        try:
            while self.process.poll() is None and time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(self.url + "/health", timeout=2):
                        return
                except OSError:
                    time.sleep(0.2)
        finally:
            self._lock.close()
        self._log.seek(0)
        lines = [line.strip() for line in self._log.read().decode(errors="replace").splitlines()]
        # Its last error (``SomeError: message``), else its last line.
        errors = [line for line in lines if re.match(r"[\w.]+(Error|Exception): ", line)]
        reason = (errors or [line for line in lines if line] or ["no answer"])[-1]
        home = os.environ.get("PREFECT_HOME", "~/.prefect")
        raise InputError(
            f"Prefect's temporary server did not start ({reason}); its home is {home}: move "
            "its database aside, or set PREFECT_HOME to another directory or PREFECT_API_URL "
            "to a running server"
        )

    def stop(self) -> None:
        """Stop the server (killed if it has not stopped within a few seconds)."""
        self.process.stdin.close()
        try:
            self.process.wait(timeout=_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()
        self._lock.close()


@contextmanager
def prefect_api() -> Iterator[PrefectServer | None]:
    """A temporary server for the block when no Prefect API is configured (None when one
    is), this process and its children pointed at it; Prefect's pending logs and events
    are sent before it stops."""

    if get_current_settings().api.url:
        yield None
        return
    server = PrefectServer()
    # The environment reaches the threads Prefect starts and child processes (Dask workers).
    os.environ["PREFECT_API_URL"] = server.url
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.url}):
            try:
                yield server
            finally:
                for worker in (APILogWorker, EventsWorker):
                    worker.drain_all(timeout=_STOP_SECONDS)
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
