"""Figures drawn by a helper process, on another core, while this one goes on.

Drawing a run's four figures is about a second of matplotlib, and importing matplotlib a
third of one, all of it holding Python's GIL: a thread would only take turns with the flow.
A helper process (``python -m common.figure_process``) imports matplotlib as it starts and
then draws what ``draw`` sends it (``common.figures``), while the flow exports the model;
the ``tfnn`` command starts it before it imports TensorFlow. This process never imports
matplotlib.

The helper reads requests on its stdin and answers on its stdout, each a pickle behind its
8-byte length: a list of ``(figure, path, arguments)`` in, ``("ok", paths)`` or ``("error",
"one line")`` out. It ends when its stdin closes, which happens when this process ends, even
by SIGKILL; it is in a session of its own, so a terminal's Ctrl-C reaches only the command.
"""

import atexit
import io
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from pathlib import Path

from common.errors import one_line

_LENGTH = struct.Struct("!Q")
_MAX_MESSAGE = 256 * 2**20  # a request carries numbers for a few figures: far less
_REPLY_SECONDS = 300.0  # four figures take a second; a helper silent this long is stuck
_STOP_SECONDS = 5.0
# (a name in common.figures.FIGURES, the PNG file's path, the figure function's arguments)
FigureCall = tuple[str, str, Mapping]


class FigureError(RuntimeError):
    """A figure could not be drawn (the message names it), or the helper process died."""


class FigureProcess:
    """One helper process; ``draw`` sends it figures to draw and waits for their paths."""

    def __init__(self) -> None:
        # The helper imports ``common`` from where this process found it (-P: not from the
        # working directory, which may hold a ``common`` of its own).
        root = str(Path(__file__).resolve().parent.parent)
        path = os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH"))))
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self.process = subprocess.Popen(
            [sys.executable, "-P", "-m", "common.figure_process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env={**os.environ, "PYTHONPATH": path},
            start_new_session=True,
        )

    def draw(self, calls: Sequence[FigureCall], timeout: float = _REPLY_SECONDS) -> list[str]:
        """Draw ``calls`` in the helper; their paths, or ``FigureError``."""
        # The helper's working directory is this process's when it started.
        absolute = [(name, os.path.abspath(path), arguments) for name, path, arguments in calls]
        try:
            _write(self.process.stdin, absolute)
            status, value = _read(self.process.stdout, timeout)
        except (OSError, EOFError, TimeoutError) as error:
            if isinstance(error, TimeoutError):
                self.process.kill()
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=_STOP_SECONDS)
            reason = self._last_words(error)
            self.close()
            raise FigureError(f"the figure process failed: {reason}") from None
        except BaseException:  # interrupted mid-exchange: its answer would meet the next call
            self.process.kill()
            self.close()
            raise
        if status != "ok":
            raise FigureError(value)
        return [path for _, path, _ in calls]

    def close(self) -> None:
        """End the helper now. Between requests it holds no work, so it is killed: waiting
        for it to see its stdin close would wait for its matplotlib import, when a command
        that refused its input ends right after starting it."""
        with suppress(OSError):  # a helper that died: nothing to tell it
            self.process.stdin.close()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.process.stdout.close()
        self._log.close()

    def _last_words(self, error: BaseException) -> str:
        """Why the helper failed: the timeout, or its exit code and last line of output."""
        if isinstance(error, TimeoutError) or self.process.returncode is None:
            return one_line(error)
        self._log.seek(0)
        lines = self._log.read().decode(errors="replace").splitlines()
        last = next((line.strip() for line in reversed(lines) if line.strip()), "no output")
        return f"it exited with code {self.process.returncode} ({last})"


def _write(pipe, message) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    pipe.write(_LENGTH.pack(len(data)) + data)  # a buffered pipe writes it all
    pipe.flush()


def _read(pipe, timeout: float | None = None):
    """The next message on ``pipe``; ``EOFError`` if it closed, ``TimeoutError`` if none
    came within ``timeout`` seconds."""
    (length,) = _LENGTH.unpack(_read_exactly(pipe, _LENGTH.size, timeout))
    if length > _MAX_MESSAGE:
        raise EOFError(f"a message of {length} bytes, more than the {_MAX_MESSAGE} allowed")
    return pickle.loads(_read_exactly(pipe, length, timeout))


def _read_exactly(pipe, size: int, timeout: float | None) -> bytes:
    """``size`` bytes from the file descriptor of ``pipe`` (never through its buffer, so
    that ``select`` sees what is waiting)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    chunks, missing = [], size
    while missing:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([pipe], [], [], left)[0]:
                raise TimeoutError(f"no answer within {timeout:g} s")
        chunk = os.read(pipe.fileno(), min(missing, 2**20))
        if not chunk:
            raise EOFError("the pipe closed")
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


_lock = threading.Lock()  # one request at a time: tasks draw from several threads
_process: FigureProcess | None = None


def _running() -> FigureProcess:
    global _process
    if _process is None or _process.process.poll() is not None:
        if _process is not None:
            _process.close()
        _process = FigureProcess()
    return _process


def start() -> None:
    """Start the helper now (if it is not running), so that it has imported matplotlib by
    the time the first figure is drawn."""
    with _lock:
        _running()


def draw(calls: Sequence[FigureCall]) -> list[str]:
    """Draw each ``(figure, path, arguments)`` of ``calls`` (``common.figures.draw``) in the
    helper process, starting it if needed; returns the paths. ``FigureError`` if one fails,
    naming it; a helper that died is started again by the next call."""
    with _lock:
        return _running().draw(calls)


@atexit.register
def stop() -> None:
    """End the helper process, if one runs."""
    global _process
    with _lock:
        if _process is not None:
            _process.close()
            _process = None


def _serve() -> int:
    """The helper: draw each request's figures, answer, until stdin closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the command handles Ctrl-C
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # the pipe carries replies only
    from matplotlib.figure import Figure

    from common import figures

    # Agg and the font load with the first text drawn: now, while the command imports.
    warm = Figure(figsize=(1, 1))
    warm.text(0.5, 0.5, "0")
    warm.savefig(io.BytesIO(), format="png")
    while True:
        try:
            calls = _read(requests)
        except EOFError:
            return 0
        paths, failure = [], None
        for name, path, arguments in calls:
            try:
                paths.append(figures.draw(name, path, arguments))
            except Exception as error:
                failure = f"figure {Path(path).name}: {one_line(error)}"
                break
        try:
            _write(replies, ("error", failure) if failure else ("ok", paths))
        except BrokenPipeError:  # the process that asked has ended
            return 0


if __name__ == "__main__":
    code = _serve()
    sys.stderr.flush()
    os._exit(code)  # unloading matplotlib and NumPy would only keep its parent waiting
