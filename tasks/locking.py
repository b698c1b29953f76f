"""An exclusive lock on a file, so that one process creates a shared store and the others
wait and then open it."""

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def exclusive_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed) for the block; waits for
    other holders. Raises ``OSError`` if the file cannot be created (read-only directory).

    The kernel drops the lock when its holder exits, however it exits, so a killed
    process never leaves the store locked."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
