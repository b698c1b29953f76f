"""``tfnn.mnist`` plus a probe of the tfds download host (offline, tfds retries for minutes) and
the way out, in the command's flags, when the source is missing."""

import socket
import threading
from pathlib import Path

from tfnn.errors import DataError, MissingSourceError
from tfnn.mnist import MnistArrays, load_dataset, tfds_builder

DATA_DIR_HINT = (
    "pass a local directory holding the four MNIST IDX files instead "
    "(--data-dir DIR or the TFNN_DATA_DIR environment variable)"
)
TFDS_HOST = "storage.googleapis.com"


def tfds_reachable(host: str = TFDS_HOST, port: int = 443, timeout: float = 3.0) -> bool:
    """True if a TCP connection to tfds' download host opens within `timeout` seconds."""
    ok = []

    def probe():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                ok.append(True)
        except OSError:
            pass

    # A thread bounds the DNS lookup too, which the socket timeout does not cover.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(ok)


def check_tfds_source(name: str, data_dir: str | Path | None = None):
    """The tfds builder of ``name`` if prepared or downloadable; else DataError (no download)."""
    builder = tfds_builder(name, data_dir)
    if not builder.is_prepared() and not tfds_reachable():
        raise DataError(
            f"tfds:{name}: tensorflow-datasets cannot download {name!r} "
            f"({TFDS_HOST} unreachable); {DATA_DIR_HINT}"
        )
    return builder


def load_source(source: str) -> MnistArrays:
    """``tfnn.mnist.load_dataset``, failing fast if tfds cannot download, naming the way out."""
    if source.startswith("tfds:") and source != "tfds:":
        check_tfds_source(source.removeprefix("tfds:"))
    try:
        return load_dataset(source)
    except MissingSourceError as error:
        raise DataError(f"{error}; {DATA_DIR_HINT}") from None
