"""When the command reached each phase of its run, for ``benchmarks/bench_startup.py``.

With ``$TFNN_TIMINGS`` set to a path, ``mark(phase)`` records the wall-clock time the
command first reached ``phase`` and the command writes them there as JSON (``{phase: unix
seconds}``, plus ``exit`` once its threads have ended) when the interpreter exits. Without
it, ``mark`` does nothing and nothing is written.
"""

import atexit
import json
import os
import time

TIMINGS_ENV = "TFNN_TIMINGS"
_marks: dict[str, float] = {}


def mark(phase: str) -> None:
    """Record that the command reached ``phase`` now (the first time only)."""
    if not os.environ.get(TIMINGS_ENV):
        return
    if not _marks:
        # atexit runs after Python has joined the non-daemon threads: "exit" includes them.
        atexit.register(_write, os.environ[TIMINGS_ENV])
    _marks.setdefault(phase, time.time())


def _write(path: str) -> None:
    _marks["exit"] = time.time()
    with open(path, "w") as out:
        json.dump(_marks, out)
