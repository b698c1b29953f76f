"""Helpers for tests that start real servers as processes on free loopback ports."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
MLFLOW = str(VENV_BIN / "mlflow")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(command: list[str], log: Path, cwd: Path | None = None, **env: str) -> subprocess.Popen:
    """Start a server process in ``cwd`` with ``env`` added, its output going to ``log``; the
    venv's scripts come first on PATH, as in an activated venv (``mlflow models serve`` runs
    ``uvicorn``)."""
    path = f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"
    with open(log, "wb") as out:
        return subprocess.Popen(
            command,
            env={**os.environ, "PATH": path, **env},
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_for(url: str, process: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Poll ``url`` until it answers 200; fail early, showing the log, if ``process`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{process.args[:3]} exited with {process.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
