"""The command's temporary Prefect server, when no Prefect API is configured.

Prefect's own temporary server runs the same app, but in the command's process group: a
terminal's Ctrl-C stops it before the flow run is marked Crashed, and a killed command leaves
it running. This one has a session of its own and stops when its stdin, a pipe from the
command, closes: when the command ends, however it ends.
"""

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO

from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_UI_URL,
    get_current_settings,
    temporary_settings,
)

from tasks.config import InputError
from tasks.locking import exclusive_lock

# Prefect's API app under uvicorn, as Prefect runs it, and a thread that stops it (SIGTERM:
# uvicorn's graceful exit) once its stdin closes.
_SERVER = """
import os, signal, sys, threading
def watch():
    sys.stdin.buffer.read()
    os.kill(os.getpid(), signal.SIGTERM)
threading.Thread(target=watch, daemon=True).start()
from functools import partial
import uvicorn
from prefect.server.api.server import create_app
# ephemeral: no UI, scheduler or other services, so it starts faster
uvicorn.run(partial(create_app, ephemeral=True), factory=True, host="127.0.0.1",
            port=int(sys.argv[1]), log_level="error", lifespan="on")
"""
# Its errors go to its log, whose last error a failed start is reported by.
_ENV = {"PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING"}
_STOP_SECONDS = 5


@contextmanager
def prefect_api() -> Iterator[Callable[[], None] | None]:
    """Start a server when no Prefect API is configured, point this process and its children
    (Dask workers) at it, and give the function that waits until it answers (None when an API
    is configured); Prefect's pending logs and events are sent before it stops."""
    settings = get_current_settings()
    if settings.api.url:
        yield None
        return
    home = Path(settings.home)
    home.mkdir(parents=True, exist_ok=True)
    with ExitStack() as held:
        starting = held.enter_context(ExitStack())
        # A new home's first server migrates its database: two at once would break it.
        starting.enter_context(exclusive_lock(home / "tfnn-server-start.lock"))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        url = f"http://127.0.0.1:{port}/api"
        log = held.enter_context(tempfile.TemporaryFile())
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | _ENV
        process = subprocess.Popen(
            [sys.executable, "-c", _SERVER, str(port)],
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        held.callback(_stop, process)
        for name in ("PREFECT_API_URL", "PREFECT_UI_URL"):
            held.callback(os.environ.pop, name, None)
        os.environ["PREFECT_API_URL"] = url
        # No UI to link to: the server has none, and it is gone once the command ends.
        os.environ["PREFECT_UI_URL"] = ""
        held.enter_context(temporary_settings(updates={PREFECT_API_URL: url, PREFECT_UI_URL: ""}))

        def wait() -> None:
            """Return once the server answers; ``InputError`` naming its last error if it
            exits or stays silent for ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``."""
            deadline = time.monotonic() + settings.server.ephemeral.startup_timeout_seconds
            with starting:
                while process.poll() is None and time.monotonic() < deadline:
                    try:
                        with urllib.request.urlopen(url + "/health", timeout=2):
                            return
                    except OSError:
                        time.sleep(0.2)
            raise InputError(
                f"Prefect's temporary server did not start ({_last_error(log)}); its home is "
                f"{home}: move its database aside, or set PREFECT_HOME to another directory "
                "or PREFECT_API_URL to a running server"
            )

        try:
            yield wait
        finally:
            for worker in (APILogWorker, EventsWorker):
                worker.drain_all(timeout=_STOP_SECONDS)


def _last_error(log: IO[bytes]) -> str:
    """The server log's last exception line, else its last line."""
    log.seek(0)
    lines = [line.strip() for line in log.read().decode(errors="replace").splitlines()]
    errors = [line for line in lines if re.match(r"[\w.]+(Error|Exception): ", line)]
    return (errors or [line for line in lines if line] or ["no answer"])[-1]


def _stop(process: subprocess.Popen) -> None:
    process.stdin.close()
    try:
        process.wait(timeout=_STOP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
